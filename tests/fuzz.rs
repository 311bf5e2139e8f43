//! Property tests of the config parser and the command line (issue 7, point 14; proptest since
//! issue 18): no input makes run-chain panic, and every rejection is a clean exit 78 (config) or
//! 64 (usage) with a message.
//!
//! The inputs come from proptest strategies that know the config's real key set, its near
//! misses and the text that breaks parsers (see the model below). A failing case is shrunk by
//! proptest to a minimal input, which the failure prints in full with the run's seed: the same
//! `RUN_CHAIN_FUZZ_SEED` replays it. Settings (environment):
//! - `RUN_CHAIN_FUZZ_CASES`: cases per in-process property (default 20,000; `scripts/fuzz`
//!   runs a million);
//! - `RUN_CHAIN_FUZZ_BIN_CASES`: cases through the real binary (default 200);
//! - `RUN_CHAIN_FUZZ_SEED`: the run's seed (default fixed, so CI is reproducible);
//! - `RUN_CHAIN_FUZZ_SAVE`: a folder where the minimal input of every failure is written in
//!   full (as Rust debug text).
//!
//! No `proptest-regressions/` files (failure persistence is off): the seed is fixed, so CI
//! replays the same cases anyway, and what a property finds is pinned down as a named test at
//! the end of this file, with why it matters, as proptest's file of seeds would not say.
//!
//! What is checked:
//! - `Config::parse` on configs built from a model of the real key set (valid ones must parse
//!   and resolve as the model says; a valid one with exactly one fault injected must be
//!   rejected naming that key), on edits of them (junk keys and values, unicode, NUL, deep
//!   nesting, long strings, duplicated tables, truncation, random bytes) and on random bytes:
//!   never a panic; every `Err` has exit code 78 and a message naming the file;
//! - `check_name`, `parse_duration`, `parse_size` on random text, against exact oracles;
//! - `Cli::try_parse_from` on random argv from the real flags, subcommands and junk: never a
//!   panic, every error renders;
//! - the real binary on random argv and random config files: exit status 0, 1 (`--once` with a
//!   failed task), 64 or 78 (70 or 75 only from `mail-test`, as documented), a message on
//!   stderr for every non-zero status, never a panic (101) nor a signal.

mod common;

use clap::{CommandFactory, Parser};
use common::*;
use proptest::collection::vec;
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::string::string_regex;
use proptest::test_runner::{RngAlgorithm, RngSeed, TestCaseResult, TestRunner};
use run_chain::cli::{Cli, Command as Sub, RESERVED_NAMES};
use run_chain::config::{check_name, check_task_name, parse_duration, parse_size, Config, Program};
use std::cell::RefCell;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::catch_unwind;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The harness: proptest runners, seeded, on every core.
// ---------------------------------------------------------------------------------------------

fn env_number(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => {
            let v = v.replace(['_', ','], "");
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{var}={v:?} is not a whole number"))
        }
        Err(_) => default,
    }
}

fn cases() -> u32 {
    u32::try_from(env_number("RUN_CHAIN_FUZZ_CASES", 20_000)).unwrap_or(u32::MAX)
}

fn run_seed() -> u64 {
    env_number("RUN_CHAIN_FUZZ_SEED", 0x5EED_C4A1)
}

/// A property's cases are split over this many runners, each seeded from the run's seed, the
/// property and its number, and run on as many threads as there are cores: the same seed
/// gives the same cases on any machine.
const SHARDS: u64 = 8;

/// A runner for `cases` cases of shard `shard` of `target`, shrinking a failure in at most
/// `max_shrink_iters` steps.
fn runner(target: &str, shard: u64, cases: u32, max_shrink_iters: u32) -> TestRunner {
    let mut seed = run_seed() ^ 0xcbf2_9ce4_8422_2325;
    for b in target.bytes().chain(shard.to_le_bytes()) {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::XorShift,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    })
}

/// Checks the property `test` on `cases` inputs from `strategy()`, on every core (threads with
/// the 8 MiB stack of a main thread, as run-chain parses its config on its main thread).
/// Panics with the minimal failing input of each shard that failed.
fn check<S: Strategy>(
    target: &str,
    cases: u32,
    strategy: impl Fn() -> S + Sync,
    test: impl Fn(S::Value) -> TestCaseResult + Sync,
) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads.min(SHARDS) {
            let (strategy, test, next, failures) = (&strategy, &test, &next, &failures);
            std::thread::Builder::new()
                .name(format!("fuzz-{target}-{t}"))
                .stack_size(8 << 20)
                .spawn_scoped(s, move || loop {
                    let shard = next.fetch_add(1, Ordering::Relaxed);
                    if shard >= SHARDS {
                        break;
                    }
                    let all = u64::from(cases);
                    let n = (all * (shard + 1) / SHARDS - all * shard / SHARDS) as u32;
                    if let Err(e) = runner(target, shard, n, 4096).run(&strategy(), test) {
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.push((shard, e.to_string()));
                    }
                })
                .expect("spawn a fuzz thread");
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort();
    eprintln!(
        "fuzz {target}: {cases} cases, {} of {SHARDS} shards failed, {:.1} s (seed {:#x})",
        failures.len(),
        start.elapsed().as_secs_f64(),
        run_seed()
    );
    if failures.is_empty() {
        return;
    }
    let mut report = format!(
        "fuzz {target}: failed (RUN_CHAIN_FUZZ_SEED={:#x} replays it):\n",
        run_seed()
    );
    for (shard, text) in &failures {
        let shown: String = text.chars().take(20_000).collect();
        let cut = if shown.len() < text.len() {
            " (cut)"
        } else {
            ""
        };
        let _ = writeln!(report, "--- shard {shard}{cut}: {shown}");
        if let Ok(dir) = std::env::var("RUN_CHAIN_FUZZ_SAVE") {
            let _ = std::fs::create_dir_all(&dir);
            let file = Path::new(&dir).join(format!("{target}-{shard}.txt"));
            let _ = std::fs::write(&file, text);
            let _ = writeln!(report, "(saved to {})", file.display());
        }
    }
    panic!("{report}");
}

fn fail<T>(why: impl Into<String>) -> Result<T, TestCaseError> {
    Err(TestCaseError::fail(why.into()))
}

/// One of `items`.
fn pick<T: Clone + std::fmt::Debug + 'static>(
    items: &'static [T],
) -> impl Strategy<Value = T> + Clone {
    select(items)
}

/// `Some` value of `s` with probability `p` (proptest's `weighted` wants `p` < 1).
fn maybe<S: Strategy + 'static>(p: f64, s: S) -> BoxedStrategy<Option<S::Value>> {
    if p >= 1.0 {
        s.prop_map(Some).boxed()
    } else {
        weighted(p, s).boxed()
    }
}

fn regex(re: &str) -> impl Strategy<Value = String> {
    string_regex(re).expect("a valid regex")
}

// ---------------------------------------------------------------------------------------------
// A model of a config file: sections of `key = value` lines, rendered as TOML.
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const DURATION_KEYS: &[&str] = &[
    "success_cooldown", "fail_cooldown", "non_recoverable_downtime", "timeout", "stop_grace",
    "kill_grace", "keep_runs_for",
];
const TASK_KEYS: &[&str] = &["command", "argv", "cwd", "env", "nice", "group"];
#[rustfmt::skip]
const EMAIL_KEYS: &[&str] = &[
    "to", "from", "smtp", "tls", "ca_file", "password_file", "password_env", "sendmail",
    "max_alerts_per_hour",
];
#[rustfmt::skip]
const OTHER_KEYS: &[&str] = &[
    "keep_runs_max", "keep_output", "max_running", "run_root", "defaults", "email", "tasks",
    "groups",
];

/// Keys that are not in the key set (typos, case, unicode, injection attempts).
#[rustfmt::skip]
const JUNK_KEYS: &[&str] = &[
    "sucess_cooldown", "Command", "cmd", "tiemout", "succes_cooldown", "commands", "arg",
    "env_vars", "max-running", "keep_run_max", "password", "smtp_password", "ṫimeout",
    "time\u{200b}out", "🦀", "x y", "a.b", "", "\u{0}", "\n", "tasks", "[",
];

/// The junk keys that an unknown-key fault may add (each is named in the rejection).
const UNKNOWN_KEYS: &[&str] = JUNK_KEYS.split_at(16).0;

/// A TOML basic string holding `s` exactly (control characters escaped).
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare where possible, else quoted.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        toml_str(k)
    }
}

fn toml_array(items: &[impl AsRef<str>]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Clone, Debug)]
struct Section {
    /// Rendered table header without brackets (`tasks.a`), or None for the top level.
    header: Option<String>,
    entries: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default)]
struct Doc {
    sections: Vec<Section>,
}

impl Doc {
    fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            if let Some(h) = &s.header {
                let _ = writeln!(out, "\n[{h}]");
            }
            for (k, v) in &s.entries {
                let _ = writeln!(out, "{} = {v}", toml_key(k));
            }
        }
        out
    }

    fn section_mut(&mut self, header: &str) -> Option<&mut Section> {
        self.sections
            .iter_mut()
            .find(|s| s.header.as_deref() == Some(header))
    }

    fn top_mut(&mut self) -> &mut Section {
        if self.sections.first().map(|s| s.header.is_none()) != Some(true) {
            self.sections.insert(
                0,
                Section {
                    header: None,
                    entries: Vec::new(),
                },
            );
        }
        &mut self.sections[0]
    }

    fn task_headers(&self) -> Vec<String> {
        self.sections
            .iter()
            .filter_map(|s| s.header.clone())
            .filter(|h| h.starts_with("tasks."))
            .collect()
    }
}

/// The key path that run-chain's messages use for a rendered header: `tasks."a.b"` is
/// `tasks.a.b`.
fn key_path(header: &str) -> String {
    let (table, name) = header.split_once('.').unwrap_or((header, ""));
    let name = if name.starts_with('"') {
        toml::from_str::<toml::Table>(&format!("k = {name}"))
            .ok()
            .and_then(|t| t["k"].as_str().map(str::to_owned))
            .unwrap_or_else(|| name.to_owned())
    } else {
        name.to_owned()
    };
    format!("{table}.{name}")
}

/// What a valid doc should resolve to (checked on `Ok`).
#[derive(Clone, Debug, Default)]
struct Expect {
    tasks: Vec<String>,
    groups: Vec<String>,
    email: bool,
    /// success_cooldown per task, as resolved (own, then [defaults], then built in).
    success_cooldown: Vec<(String, Duration)>,
}

/// Safe: for the real binary (harmless commands, tiny durations, paths inside the test's dir,
/// SMTP only to a refused local port). Wild: anything valid.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavour {
    Safe,
    Wild,
}

#[rustfmt::skip]
const VALID_DURATIONS: &[(&str, u64)] = &[
    ("90s", 90_000), ("15m", 900_000), ("1h 30m", 5_400_000), ("0s", 0), ("0", 0),
    ("30d", 2_592_000_000), ("500ms", 500), ("2h", 7_200_000), (" 5s ", 5_000),
    ("1h30m", 5_400_000), ("1day", 86_400_000), ("3 weeks", 1_814_400_000),
];
const SAFE_COOLDOWNS: &[(&str, u64)] = &[("0s", 0), ("0", 0), ("1ms", 1), ("10ms", 10)];

/// The units of a duration, each spelling with its length in milliseconds.
#[rustfmt::skip]
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1), ("msec", 1), ("millis", 1), ("s", 1_000), ("sec", 1_000), ("secs", 1_000),
    ("second", 1_000), ("seconds", 1_000), ("m", 60_000), ("min", 60_000), ("mins", 60_000),
    ("minute", 60_000), ("minutes", 60_000), ("h", 3_600_000), ("hr", 3_600_000),
    ("hrs", 3_600_000), ("hour", 3_600_000), ("hours", 3_600_000), ("d", 86_400_000),
    ("day", 86_400_000), ("days", 86_400_000), ("w", 604_800_000), ("week", 604_800_000),
    ("weeks", 604_800_000),
];

/// A duration in any unit, with or without a space, and its length in milliseconds.
fn odd_duration(max: u64) -> impl Strategy<Value = (String, u64)> {
    (0..=max, pick(DURATION_UNITS), pick(&["", " "]))
        .prop_map(|(n, (unit, ms), space)| (format!("{n}{space}{unit}"), n * ms))
}

/// A valid task or group name: 1 to 12 characters, now and then 100 (the longest allowed);
/// never a reserved one.
fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![
        49 => regex("[a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,11}"),
        1 => regex("[a-zA-Z0-9_-][a-zA-Z0-9_.-]{99}"),
    ]
    .prop_map(|s| {
        if RESERVED_NAMES.contains(&s.as_str()) {
            s + "x"
        } else {
            s
        }
    })
}

#[rustfmt::skip]
const WILD_PIECES: &[&str] = &[
    "a", "Z", "0", " ", "é", "日本", "🦀", "\u{202e}", "\u{feff}", "\u{10ffff}", "\0", "\r\n", "\t",
    "\\", "\"", "'", "$(id)", "`x`", "%s%n", "../", "/", "=", "@", "\u{7f}", "\u{1b}[31m",
];

/// Any string: ASCII, unicode, controls, NUL, any character at all, now and then a long one.
fn wild_string() -> impl Strategy<Value = String> {
    prop_oneof![
        900 => vec(pick(WILD_PIECES), 0..12).prop_map(|v| v.concat()),
        100 => vec(any::<char>(), 0..12).prop_map(String::from_iter),
        1 => vec(pick(WILD_PIECES), 5_000..25_000).prop_map(|v| v.concat()),
    ]
}

/// A string with no NUL and not blank (what text values need to be valid).
fn wild_text() -> impl Strategy<Value = String> {
    wild_string().prop_map(|s| {
        let s = s.replace('\0', "");
        if s.trim().is_empty() {
            format!("x{s}")
        } else {
            s
        }
    })
}

/// A valid value of the duration `key`, rendered, and its length in ms (None: `none`).
fn duration_value(flavour: Flavour, key: &str) -> BoxedStrategy<(String, Option<u64>)> {
    let of = |items: &'static [(&'static str, u64)]| {
        pick(items)
            .prop_map(|(text, ms)| (toml_str(text), Some(ms)))
            .boxed()
    };
    match (flavour, key) {
        (_, "timeout") => prop_oneof![
            1 => pick(&["none", "NONE", " none "]).prop_map(|t| (toml_str(t), None)),
            2 => of(&[("1h", 3_600_000), ("5s", 5_000), ("90s", 90_000)]),
        ]
        .boxed(),
        (Flavour::Safe, "success_cooldown" | "fail_cooldown") => of(SAFE_COOLDOWNS),
        (Flavour::Safe, "stop_grace" | "kill_grace") => {
            of(&[("1s", 1_000), ("100ms", 100), ("0s", 0)])
        }
        // Zero makes no sense here (a downtime alert at every instant): no oracle either way.
        (_, "non_recoverable_downtime") => of(&[("6h", 0), ("1s", 0), ("1day", 0)]),
        _ => prop_oneof![
            2 => of(VALID_DURATIONS),
            1 => odd_duration(100_000).prop_map(|(text, ms)| (toml_str(&text), Some(ms))),
        ]
        .boxed(),
    }
}

fn size_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..=64i64 << 20).prop_map(|n| n.to_string()),
        pick(&["64KiB", "1MiB", "100", "2 KB", "0", "64MiB", "1K", "3M"]).prop_map(toml_str),
        (0..=65_536u32).prop_map(|n| toml_str(&n.to_string())),
    ]
}

/// The [defaults] keys (or a task's share of them), valid, and success_cooldown if set.
fn timing_entries(
    flavour: Flavour,
    force_cooldowns: bool,
) -> impl Strategy<Value = (Vec<(String, String)>, Option<u64>)> {
    let durations: Vec<_> = DURATION_KEYS
        .iter()
        .map(|&key| {
            let forced = force_cooldowns && matches!(key, "success_cooldown" | "fail_cooldown");
            let p = if forced { 1.0 } else { 1.0 / 3.0 };
            maybe(
                p,
                duration_value(flavour, key).prop_map(move |(v, ms)| (key, v, ms)),
            )
        })
        .collect();
    let keep_runs_max = prop_oneof![1..=1_000_000i64, 1..=i64::MAX];
    (
        durations,
        weighted(0.25, keep_runs_max),
        weighted(0.25, size_value()),
    )
        .prop_map(|(durations, keep_runs_max, keep_output)| {
            let mut entries = Vec::new();
            let mut success = None;
            for (key, v, ms) in durations.into_iter().flatten() {
                if key == "success_cooldown" {
                    success = ms;
                }
                entries.push((key.to_owned(), v));
            }
            if let Some(n) = keep_runs_max {
                entries.push(("keep_runs_max".into(), n.to_string()));
            }
            if let Some(s) = keep_output {
                entries.push(("keep_output".into(), s));
            }
            (entries, success)
        })
}

/// A task before it is placed in a doc: its name, keys, group (an index into the doc's
/// groups, if it has any) and own success_cooldown.
#[derive(Clone, Debug)]
struct TaskDraft {
    name: String,
    entries: Vec<(String, String)>,
    group: Option<Index>,
    success: Option<u64>,
}

const SAFE_COMMANDS: &[&str] = &[
    "true",
    "exit 3",
    "echo out; echo err >&2",
    "printf 'no newline'",
    "kill -9 $$",
    "echo \"$RUN_CHAIN_TASK $RUN_CHAIN_RUN_ID\"",
];
const SAFE_ARGVS: &[&[&str]] = &[
    &["true"],
    &["false"],
    &["/nonexistent/prog", "x"],
    &["sh", "-c", "exit 2"],
];

fn task_draft(flavour: Flavour) -> impl Strategy<Value = TaskDraft> {
    let (program, cwd, env_key) = match flavour {
        Flavour::Safe => (
            prop_oneof![
                pick(SAFE_COMMANDS).prop_map(|c| ("command", toml_str(c))),
                pick(SAFE_ARGVS).prop_map(|a| ("argv", toml_array(a))),
            ]
            .boxed(),
            pick(&[".", "/", "/nonexistent-run-chain-dir", "sub"])
                .prop_map(str::to_owned)
                .boxed(),
            Just(None).boxed(),
        ),
        Flavour::Wild => (
            prop_oneof![
                wild_text().prop_map(|c| ("command", toml_str(&c))),
                (wild_text(), vec(wild_string(), 0..4)).prop_map(|(first, rest)| {
                    let mut argv = vec![first];
                    argv.extend(rest.iter().map(|a| a.replace('\0', "")));
                    ("argv", toml_array(&argv))
                }),
            ]
            .boxed(),
            wild_text().boxed(),
            wild_text().prop_map(|k| Some(k.replace('=', ""))).boxed(),
        ),
    };
    let env = vec((env_key, wild_string()), 0..3).prop_map(|vars| {
        let parts: Vec<String> = vars
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let k = match k {
                    None => format!("V{i}"),
                    Some(k) if k.is_empty() || k.starts_with("RUN_CHAIN_") => format!("K{i}"),
                    Some(k) => format!("{k}{i}"),
                };
                format!("{} = {}", toml_str(&k), toml_str(&v.replace('\0', "")))
            })
            .collect();
        format!("{{ {} }}", parts.join(", "))
    });
    (
        valid_name(),
        program,
        weighted(1.0 / 3.0, cwd),
        weighted(1.0 / 3.0, env),
        weighted(0.25, 0..=19i64),
        weighted(0.5, any::<Index>()),
        timing_entries(flavour, flavour == Flavour::Safe),
    )
        .prop_map(
            |(name, (key, program), cwd, env, nice, group, (timing, success))| {
                let mut entries = vec![(key.to_owned(), program)];
                if let Some(cwd) = cwd {
                    entries.push(("cwd".into(), toml_str(&cwd)));
                }
                if let Some(env) = env {
                    entries.push(("env".into(), env));
                }
                if let Some(nice) = nice {
                    entries.push(("nice".into(), nice.to_string()));
                }
                entries.extend(timing);
                TaskDraft {
                    name,
                    entries,
                    group,
                    success,
                }
            },
        )
}

/// A valid [email] section.
fn email(flavour: Flavour) -> impl Strategy<Value = Vec<(String, String)>> {
    let (url, sendmail) = match flavour {
        Flavour::Safe => (
            Just("smtp://127.0.0.1:1").boxed(),
            pick(&["/bin/true", "/nonexistent/sendmail"]).boxed(),
        ),
        Flavour::Wild => (
            pick(&[
                "smtp://127.0.0.1:25",
                "smtps://user@mail.example.com:465",
                "smtp://[::1]:587/",
                "smtp://host",
            ])
            .boxed(),
            Just("/usr/sbin/sendmail").boxed(),
        ),
    };
    let transport = prop_oneof![
        (url, pick(&["opportunistic", "required", "none"]))
            .prop_map(|(url, tls)| vec![("smtp", toml_str(url)), ("tls", toml_str(tls))]),
        sendmail.prop_map(|path| vec![("sendmail", toml_str(path))]),
        Just(vec![]),
    ];
    let password = prop_oneof![
        Just(Some(("password_file", "/nonexistent/smtp-password"))),
        Just(Some(("password_env", "RUN_CHAIN_FUZZ_PW"))),
        Just(None),
    ];
    (
        1..=2usize,
        any::<bool>(),
        transport,
        proptest::bool::weighted(0.25),
        password,
        weighted(1.0 / 3.0, 1..=i64::from(u32::MAX)),
    )
        .prop_map(|(n_to, from, transport, ca_file, password, max_alerts)| {
            let to: Vec<String> = (0..n_to).map(|i| format!("admin{i}@example.com")).collect();
            let mut e = vec![("to", toml_array(&to))];
            if from {
                e.push(("from", toml_str("run-chain@example.com")));
            }
            e.extend(transport);
            if ca_file {
                e.push(("ca_file", toml_str("/nonexistent/ca.pem")));
            }
            if let Some((key, value)) = password {
                e.push((key, toml_str(value)));
            }
            if let Some(n) = max_alerts {
                e.push(("max_alerts_per_hour", n.to_string()));
            }
            e.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        })
}

/// A valid document, and what it must resolve to.
fn valid_doc(flavour: Flavour) -> impl Strategy<Value = (Doc, Expect)> {
    let root = match flavour {
        Flavour::Safe => pick(&["var/run", "r", "run-here"])
            .prop_map(str::to_owned)
            .boxed(),
        Flavour::Wild => wild_text().boxed(),
    };
    let (p_defaults, n_tasks) = match flavour {
        Flavour::Safe => (1.0, 1..4usize),
        Flavour::Wild => (0.5, 0..5usize),
    };
    (
        weighted(1.0 / 3.0, root),
        maybe(
            p_defaults,
            timing_entries(flavour, flavour == Flavour::Safe),
        ),
        // Small max_running: whether a huge one is refused is for its own test (below).
        vec((valid_name(), 1..=4i64), 0..3),
        vec(task_draft(flavour), n_tasks),
        weighted(1.0 / 3.0, email(flavour)),
        // Sections in any order: TOML does not care, and neither may run-chain.
        weighted(1.0 / 3.0, (any::<Index>(), any::<Index>())),
    )
        .prop_map(|(root, defaults, groups, tasks, email, swap)| {
            let mut doc = Doc::default();
            let mut expect = Expect::default();
            let mut top = Vec::new();
            if let Some(root) = root {
                top.push(("run_root".into(), toml_str(&root)));
            }
            doc.sections.push(Section {
                header: None,
                entries: top,
            });
            let mut default_success = None;
            if let Some((entries, success)) = defaults {
                default_success = success;
                doc.sections.push(Section {
                    header: Some("defaults".into()),
                    entries,
                });
            }
            for (g, max) in groups {
                if expect.groups.contains(&g) {
                    continue;
                }
                doc.sections.push(Section {
                    header: Some(format!("groups.{}", toml_key(&g))),
                    entries: vec![("max_running".into(), max.to_string())],
                });
                expect.groups.push(g);
            }
            for t in tasks {
                if expect.tasks.contains(&t.name) {
                    continue;
                }
                let mut entries = t.entries;
                if let (Some(i), false) = (t.group, expect.groups.is_empty()) {
                    entries.push(("group".into(), toml_str(i.get::<String>(&expect.groups))));
                }
                let resolved = t.success.or(default_success).unwrap_or(15 * 60 * 1000);
                expect
                    .success_cooldown
                    .push((t.name.clone(), Duration::from_millis(resolved)));
                doc.sections.push(Section {
                    header: Some(format!("tasks.{}", toml_key(&t.name))),
                    entries,
                });
                expect.tasks.push(t.name);
            }
            if let Some(entries) = email {
                expect.email = true;
                doc.sections.push(Section {
                    header: Some("email".into()),
                    entries,
                });
            }
            if let (Some((i, j)), n @ 3..) = (swap, doc.sections.len()) {
                doc.sections.swap(1 + i.index(n - 1), 1 + j.index(n - 1));
            }
            (doc, expect)
        })
}

impl Doc {
    fn set(&mut self, section: &str, key: &str, value: String) {
        if let Some(s) = self.section_mut(section) {
            s.entries.retain(|(k, _)| k != key);
            s.entries.push((key.to_owned(), value));
        }
    }

    /// The header of task `i`; a doc without tasks gets one first (a valid one).
    fn task(&mut self, i: Index) -> String {
        let tasks = self.task_headers();
        if tasks.is_empty() {
            self.sections.push(Section {
                header: Some("tasks.fault-target".into()),
                entries: vec![("command".into(), toml_str("true"))],
            });
            return "tasks.fault-target".into();
        }
        i.get(&tasks).clone()
    }

    /// A section where a timing key may go: task `i` if there is one, else [defaults].
    fn timing_section(&mut self, i: Option<Index>) -> String {
        let tasks = self.task_headers();
        match i {
            Some(i) if !tasks.is_empty() => i.get(&tasks).clone(),
            _ => {
                if self.section_mut("defaults").is_none() {
                    self.sections.push(Section {
                        header: Some("defaults".into()),
                        entries: Vec::new(),
                    });
                }
                "defaults".into()
            }
        }
    }
}

/// A valid doc with exactly one fault, and the strings its rejection must name.
fn faulty_doc(flavour: Flavour) -> impl Strategy<Value = (Doc, Vec<String>)> {
    let doc = || valid_doc(flavour).prop_map(|(doc, _)| doc);
    let timing = || weighted(0.5, any::<Index>());
    let task = any::<Index>;
    let to = || toml_array(&["admin@example.com"]);
    // (name, max_running, what the rejection names: a wrong type is shown by TOML's own
    // message, which quotes the line, not the table).
    const BAD_GROUPS: &[(&str, &str, &str)] = &[
        ("g0", "0", "groups.g0.max_running"),
        ("g1", "-1", "groups.g1.max_running"),
        ("g2", "4294967296", "groups.g2.max_running"),
        ("g3", "\"1\"", "max_running"),
        ("..", "1", "groups.."),
        ("a/b", "1", "groups.a/b"),
        (".g", "1", "groups..g"),
    ];
    const BAD_PROGRAMS: &[(&str, &str)] = &[
        ("command", "\"\""),
        ("command", "\"   \""),
        ("command", "\"a\\u0000b\""),
        ("argv", "[]"),
        ("argv", "[\"\"]"),
        ("argv", "[\"sh\", \"a\\u0000\"]"),
        ("argv", "\"true\""),
        ("command", "[\"true\"]"),
    ];
    // (Only in a task?, the keys, bad values for them, as TOML.)
    type BadValues = (bool, &'static [&'static str], &'static [&'static str]);
    #[rustfmt::skip]
    const BAD_VALUES: &[BadValues] = &[
        (false, DURATION_KEYS, &[
            "\"soon\"", "\"15\"", "\"-1s\"", "\"\"", "\"1x\"", "\"h\"", "\"1 fortnight\"", "\"\\u0000\"",
            "\"99999999999999999999999999s\"", "\"1.5.h\"", "\"15 minutes please\"", "\"∞\"",
            // The wrong type.
            "5", "1.5", "true", "[\"1s\"]", "{ s = 1 }", "-3",
        ]),
        (false, &["timeout"], &["\"0s\"", "\"0\"", "\"0ms\""]),
        (false, &["keep_runs_max"], &[
            "0", "-1", "-9223372036854775808", "\"100\"", "1.0", "9223372036854775808",
        ]),
        (false, &["keep_output"], &[
            "\"lots\"", "\"1.5MiB\"", "67108865", "\"65MiB\"", "-1", "\"99999999999999999999\"",
            "\"18446744073709551615G\"", "\"-5\"", "\"1 TiB\"", "\"\"", "true",
        ]),
        (true, &["nice"], &["20", "-21", "9223372036854775807", "\"5\"", "1.5"]),
        (true, &["env"], &[
            "{ \"A=B\" = \"1\" }", "{ \"RUN_CHAIN_TASK\" = \"x\" }", "{ \"\" = \"x\" }",
            "{ A = \"a\\u0000\" }", "{ A = 1 }",
        ]),
        (true, &["cwd"], &["\"\""]),
    ];
    // One key set to a bad value (in a task, or in a task or [defaults]).
    let bad_value = (
        doc(),
        timing(),
        task(),
        pick(BAD_VALUES),
        any::<Index>(),
        any::<Index>(),
    )
        .prop_map(|(mut doc, at, t, (task_only, keys, values), k, v)| {
            let sec = if task_only {
                doc.task(t)
            } else {
                doc.timing_section(at)
            };
            let key = *k.get(keys);
            doc.set(&sec, key, v.get(values).to_string());
            (doc, vec![key.into()])
        })
        .boxed();
    let faults: Vec<BoxedStrategy<(Doc, Vec<String>)>> = vec![
        // An unknown key, anywhere.
        (doc(), any::<Index>(), pick(UNKNOWN_KEYS))
            .prop_map(|(mut doc, at, junk)| {
                let i = at.index(doc.sections.len());
                let s = &mut doc.sections[i];
                let task = s.header.as_deref().is_some_and(|h| h.starts_with("tasks."));
                let value = if task { toml_str("x") } else { "1".into() };
                s.entries.push((junk.into(), value));
                (doc, vec![junk.into()])
            })
            .boxed(),
        // A task with a bad or reserved name.
        (
            doc(),
            prop_oneof![
                5 => pick(&[
                    "..", "a/b", ".hidden", "check", "mail-test", "help", "a b", "ä", "a\0b", "",
                ]).prop_map(str::to_owned),
                1 => Just("x".repeat(300)),
            ],
        )
            .prop_map(|(mut doc, bad)| {
                doc.sections.push(Section {
                    header: Some(format!("tasks.{}", toml_str(&bad))),
                    entries: vec![("command".into(), toml_str("true"))],
                });
                (doc, vec![format!("tasks.{bad}")])
            })
            .boxed(),
        (doc(), task())
            .prop_map(|(mut doc, t)| {
                let sec = doc.task(t);
                doc.set(&sec, "group", toml_str("no-such-group-zz"));
                (doc, vec!["no-such-group-zz".into(), "group".into()])
            })
            .boxed(),
        // Both command and argv.
        (doc(), task())
            .prop_map(|(mut doc, t)| {
                let sec = doc.task(t);
                let s = doc.section_mut(&sec).expect("the task exists");
                if s.entries.iter().any(|(k, _)| k == "command") {
                    s.entries.push(("argv".into(), toml_array(&["true"])));
                } else {
                    s.entries.push(("command".into(), toml_str("true")));
                }
                (doc, vec![key_path(&sec), "not both".into()])
            })
            .boxed(),
        // Neither.
        (doc(), task())
            .prop_map(|(mut doc, t)| {
                let sec = doc.task(t);
                let s = doc.section_mut(&sec).expect("the task exists");
                s.entries.retain(|(k, _)| k != "command" && k != "argv");
                (doc, vec![key_path(&sec), "neither".into()])
            })
            .boxed(),
        (doc(), task(), pick(BAD_PROGRAMS))
            .prop_map(|(mut doc, t, (key, bad))| {
                let sec = doc.task(t);
                let s = doc.section_mut(&sec).expect("the task exists");
                s.entries.retain(|(k, _)| k != "command" && k != "argv");
                s.entries.push((key.into(), bad.into()));
                (doc, vec![key.into()])
            })
            .boxed(),
        (doc(), pick(&["\"\"", "\"   \"", "5"]))
            .prop_map(|(mut doc, bad)| {
                let top = doc.top_mut();
                top.entries.retain(|(k, _)| k != "run_root");
                top.entries.push(("run_root".into(), bad.into()));
                (doc, vec!["run_root".into()])
            })
            .boxed(),
        (doc(), pick(BAD_GROUPS))
            .prop_map(|(mut doc, (name, max, needle))| {
                // Replacing a valid group of that name (else the rejection is of a duplicate).
                let valid = format!("groups.{name}");
                doc.sections.retain(|s| s.header.as_deref() != Some(&valid));
                doc.sections.push(Section {
                    header: Some(format!("groups.{}", toml_str(name))),
                    entries: vec![("max_running".into(), max.into())],
                });
                (doc, vec![needle.into()])
            })
            .boxed(),
        // A bad [email] section (replacing any).
        (
            doc(),
            prop_oneof![
                Just(("email.to", vec![("to", "[]".into())])),
                Just(("email.to", vec![("to", toml_array(&["not an address"]))])),
                Just(("email.from", vec![("to", to()), ("from", toml_str("@x"))])),
                Just((
                    "email.smtp",
                    vec![("to", to()), ("smtp", toml_str("http://x"))]
                )),
                Just((
                    "email.smtp",
                    vec![("to", to()), ("smtp", toml_str("smtp://u:pw@x"))]
                )),
                Just((
                    "not both",
                    vec![
                        ("to", to()),
                        ("smtp", toml_str("smtp://h")),
                        ("sendmail", toml_str("/s")),
                    ]
                )),
                Just((
                    "not both",
                    vec![
                        ("to", to()),
                        ("password_file", toml_str("/p")),
                        ("password_env", toml_str("P")),
                    ]
                )),
                Just(("email.tls", vec![("to", to()), ("tls", toml_str("maybe"))])),
                Just((
                    "email.max_alerts_per_hour",
                    vec![("to", to()), ("max_alerts_per_hour", "0".into())]
                )),
            ],
        )
            .prop_map(|(mut doc, (needle, entries))| {
                doc.sections
                    .retain(|s| s.header.as_deref() != Some("email"));
                doc.sections.push(Section {
                    header: Some("email".into()),
                    entries: entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                });
                (doc, vec![needle.into()])
            })
            .boxed(),
        // The same table twice.
        (doc(), task())
            .prop_map(|(mut doc, t)| {
                let sec = doc.task(t);
                doc.sections.push(Section {
                    header: Some(sec.clone()),
                    entries: vec![("nice".into(), "1".into())],
                });
                let name = sec
                    .trim_start_matches("tasks.")
                    .trim_matches('"')
                    .to_owned();
                (doc, vec!["duplicate".into(), name])
            })
            .boxed(),
        // An unknown section.
        (
            doc(),
            pick(&[
                ("task.a", "task"),
                ("default", "default"),
                ("mail", "mail"),
                ("group.g", "group"),
            ]),
        )
            .prop_map(|(mut doc, (header, needle))| {
                doc.sections.push(Section {
                    header: Some(header.into()),
                    entries: vec![("command".into(), toml_str("true"))],
                });
                (doc, vec![needle.into()])
            })
            .boxed(),
        // A key of the wrong section: a task key in [defaults], an email key in a task.
        (doc(), timing(), any::<Index>())
            .prop_map(|(mut doc, at, k)| {
                let sec = doc.timing_section(at);
                let key = if sec == "defaults" {
                    *k.get(TASK_KEYS)
                } else {
                    *k.get(&["to", "smtp", "max_running", "run_root"])
                };
                doc.set(&sec, key, toml_str("x"));
                (doc, vec![key.into()])
            })
            .boxed(),
    ];
    let faults = faults.into_iter().map(|f| (1, f));
    proptest::strategy::Union::new_weighted(std::iter::once((8, bad_value)).chain(faults).collect())
}

#[rustfmt::skip]
const MUTATION_TOKENS: &[&str] = &[
    "[", "]", "[[", "]]", "=", "\"", "'", "'''", "\"\"\"", "\n", "\r\n", "\\", "\\u0000",
    "\\U0010FFFF", "\\uD800", "{", "}", ",", "#", ".", " ", "tasks.", "\n[tasks.a]\n",
    "\n[defaults]\n", "\n[email]\n", "\n[groups.g]\n", "\n[[tasks]]\n", "\ncommand = \"x\"\n",
    "\nargv = []\n", "1e400", "nan", "-inf", "-0", "0x7f", "0o777", "0b1", "1_000",
    "9223372036854775808", "-9223372036854775809", "99999999999999999999999999",
    "1979-05-27T07:32:00Z", "07:32:00", "true", "é", "\u{202e}", "\u{feff}", "\0", "\t",
    "\u{10FFFF}", "🦀", "\"1h\"", "\"-5s\"", "\"none\"", "\"64KiB\"", "\"..\"", "\"a/b\"",
];

/// One edit of a config's text; `Index`es are positions (in characters, lines or sections).
#[derive(Clone, Debug)]
enum Edit {
    Delete(Index, usize),
    Insert(Index, String),
    DuplicateLine(Index, Index),
    SwapLines(Index, Index),
    Truncate(Index),
    ReplaceValue(Index, String),
    DuplicateSection(Index),
    SetChar(Index, char),
}

/// A junk value: a token, any string, any integer.
fn junk_value() -> impl Strategy<Value = String> {
    prop_oneof![
        pick(MUTATION_TOKENS).prop_map(str::to_owned),
        wild_string().prop_map(|s| toml_str(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// Text that nests `depth` levels deep, in each of TOML's ways.
fn deep(shape: usize, depth: usize) -> String {
    match shape {
        0 => format!("\nx = {}{}\n", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("\nx = {}1{}\n", "{ a = ".repeat(depth), " }".repeat(depth)),
        2 => format!("\n{} = 1\n", vec!["a"; depth].join(".")),
        _ => format!("\n[{}]\n", vec!["t"; depth].join(".")),
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<Index>;
    let key = prop_oneof![
        1 => pick(DURATION_KEYS),
        1 => pick(TASK_KEYS),
        1 => pick(EMAIL_KEYS),
        1 => pick(OTHER_KEYS),
        2 => pick(JUNK_KEYS),
    ];
    let value = prop_oneof![
        3 => junk_value(),
        1 => pick(&["1h", "-1s", "0", "none", "64KiB", ""]).prop_map(toml_str),
    ];
    let inserted = prop_oneof![
        80 => pick(MUTATION_TOKENS).prop_map(str::to_owned),
        // Random bytes.
        40 => vec(any::<u8>(), 1..=16).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        // A junk or real key with a junk value, on its own line.
        40 => (key, value).prop_map(|(k, v)| format!("\n{} = {v}\n", toml_key(k))),
        1 => (0..4usize, pick(&[10, 100, 1_000, 10_000])).prop_map(|(s, d)| deep(s, d)),
        1 => pick(&[1_000, 100_000]).prop_map(|n| format!("\ncommand = \"{}\"\n", "x".repeat(n))),
    ];
    prop_oneof![
        40 => (at(), 1..=20usize).prop_map(|(a, n)| Edit::Delete(a, n)),
        162 => (at(), inserted).prop_map(|(a, s)| Edit::Insert(a, s)),
        40 => (at(), at()).prop_map(|(a, l)| Edit::DuplicateLine(a, l)),
        40 => (at(), at()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        40 => at().prop_map(Edit::Truncate),
        40 => (at(), junk_value()).prop_map(|(l, v)| Edit::ReplaceValue(l, v)),
        40 => at().prop_map(Edit::DuplicateSection),
        118 => (at(), pick(&['[', ']', '"', '=', '\n', '.', '0', 'x', '\0', '\u{85}']))
            .prop_map(|(a, c)| Edit::SetChar(a, c)),
    ]
}

/// `text` with `edits` applied, in order; always valid UTF-8.
fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for e in edits {
        let text: String = s.iter().collect();
        let mut lines: Vec<&str> = text.lines().collect();
        match e {
            Edit::Delete(at, n) => {
                let at = at.index(s.len() + 1);
                s.drain(at..(at + n).min(s.len()));
            }
            Edit::Insert(at, ins) => {
                let at = at.index(s.len() + 1);
                s.splice(at..at, ins.chars());
            }
            Edit::DuplicateLine(at, line) if !lines.is_empty() => {
                let at = at.index(s.len() + 1);
                let ins = format!("\n{}\n", line.get(&lines));
                s.splice(at..at, ins.chars());
            }
            Edit::SwapLines(i, j) if lines.len() > 1 => {
                let n = lines.len();
                lines.swap(i.index(n), j.index(n));
                s = lines.join("\n").chars().collect();
            }
            Edit::Truncate(at) => s.truncate(at.index(s.len() + 1)),
            Edit::ReplaceValue(line, v) if !lines.is_empty() => {
                let i = line.index(lines.len());
                if let Some(eq) = lines[i].find('=') {
                    let mut owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                    owned[i] = format!("{}= {v}", &lines[i][..eq]);
                    s = owned.join("\n").chars().collect();
                }
            }
            Edit::DuplicateSection(i) => {
                let starts: Vec<usize> = text.match_indices("\n[").map(|(i, _)| i).collect();
                if !starts.is_empty() {
                    let i = i.index(starts.len());
                    let to = starts.get(i + 1).copied().unwrap_or(text.len());
                    s.extend(text[starts[i]..to].chars());
                }
            }
            Edit::SetChar(at, c) if !s.is_empty() => {
                let at = at.index(s.len());
                s[at] = *c;
            }
            _ => {}
        }
    }
    s.into_iter().collect()
}

/// Files the config claims to come from: their display form must be in every message.
#[rustfmt::skip]
const CONFIG_PATHS: &[&str] = &[
    "/etc/run-chain/tasks.toml", "tasks.toml", "./relative dir/tâsks.toml",
    "/tmp/with\"quote/and spaces/tasks.toml", "/srv/日本/x.toml",
];

/// What a case's config text is: a valid model, one fault, edits, or random bytes.
#[derive(Clone, Debug)]
enum Kind {
    Valid(Expect),
    Fault(Vec<String>),
    Edited,
    Random,
}

#[derive(Clone, Debug)]
struct Case {
    text: String,
    kind: Kind,
}

fn config_case(flavour: Flavour) -> impl Strategy<Value = Case> {
    let text_bytes = b"[]=\"'.\n abcdefghijklmnopqrstuvwxyz0123456789{},#";
    prop_oneof![
        3 => valid_doc(flavour).prop_map(|(doc, expect)| Case {
            text: doc.render(),
            kind: Kind::Valid(expect),
        }),
        3 => faulty_doc(flavour).prop_map(|(doc, needles)| Case {
            text: doc.render(),
            kind: Kind::Fault(needles),
        }),
        3 => (valid_doc(flavour), vec(edit(), 1..=4)).prop_map(|((doc, _), edits)| Case {
            text: apply_edits(&doc.render(), &edits),
            kind: Kind::Edited,
        }),
        1 => vec(prop_oneof![select(&text_bytes[..]), any::<u8>()], 0..300).prop_map(|b| Case {
            text: String::from_utf8_lossy(&b).into_owned(),
            kind: Kind::Random,
        }),
    ]
}

/// A config case of either flavour, and the file it claims to come from.
fn any_config_case() -> impl Strategy<Value = (Case, &'static str)> {
    (
        prop_oneof![config_case(Flavour::Safe), config_case(Flavour::Wild)],
        pick(CONFIG_PATHS),
    )
}

/// What must hold of any `Ok` config.
fn check_ok_invariants(c: &Config, file: &Path) -> Result<(), String> {
    if c.file != file {
        return Err(format!("config.file is {:?}, not {file:?}", c.file));
    }
    for (name, t) in &c.tasks {
        if name != &t.name {
            return Err(format!("task {name:?} is named {:?}", t.name));
        }
        if check_task_name(name).is_err() {
            return Err(format!("accepted a bad task name {name:?}"));
        }
        if let Some(g) = &t.group {
            if !c.groups.contains_key(g) {
                return Err(format!("task {name:?} uses undefined group {g:?}"));
            }
        }
        if t.keep_output > 64 << 20 {
            return Err(format!("task {name:?}: keep_output {}", t.keep_output));
        }
        if t.keep_runs_max == 0 {
            return Err(format!("task {name:?}: keep_runs_max 0"));
        }
        if matches!(t.nice, Some(n) if !(-20..=19).contains(&n)) {
            return Err(format!("task {name:?}: nice {:?}", t.nice));
        }
        if t.timing.timeout == Some(Duration::ZERO) {
            return Err(format!("task {name:?}: a zero timeout"));
        }
        match &t.program {
            Program::Shell(s) => {
                if s.trim().is_empty() || s.contains('\0') {
                    return Err(format!("task {name:?}: command {s:?}"));
                }
            }
            Program::Argv(v) => {
                if v.is_empty() || v[0].is_empty() || v.iter().any(|a| a.contains('\0')) {
                    return Err(format!("task {name:?}: argv {v:?}"));
                }
            }
        }
        for (k, v) in &t.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(format!("task {name:?}: env {k:?} = {v:?}"));
            }
        }
    }
    for (name, g) in &c.groups {
        if check_name(name).is_err() || g.max_running == 0 {
            return Err(format!("group {name:?} max_running {}", g.max_running));
        }
    }
    if let Some(e) = &c.email {
        if e.to.is_empty() || e.max_alerts_per_hour == 0 {
            return Err(format!("email {e:?}"));
        }
        if e.smtp.is_some() && e.sendmail.is_some() {
            return Err("email with both smtp and sendmail".into());
        }
    }
    Ok(())
}

/// The property of `Config::parse` on one case (a panic fails it too: proptest catches it).
fn check_config(case: &Case, file: &Path) -> TestCaseResult {
    let result = Config::parse(&case.text, file);
    match (&result, &case.kind) {
        (Err(e), kind) => {
            let msg = e.to_string();
            if e.exit_code() != 78 {
                return fail(format!("exit code {} for {msg:?}", e.exit_code()));
            }
            if msg.trim().is_empty() {
                return fail("an empty error message");
            }
            if !msg.contains(&file.display().to_string()) {
                return fail(format!("the message does not name {file:?}: {msg:?}"));
            }
            if let Kind::Valid(_) = kind {
                return fail(format!("a valid config was rejected: {msg}"));
            }
            if let Kind::Fault(needles) = kind {
                if let Some(n) = needles.iter().find(|n| !msg.contains(n.as_str())) {
                    return fail(format!(
                        "the rejection does not name {n:?} (the injected fault): {msg}"
                    ));
                }
                if msg.contains("pw@") {
                    return fail(format!(
                        "the message repeats a password from the URL: {msg}"
                    ));
                }
            }
        }
        (Ok(c), kind) => {
            if let Err(why) = check_ok_invariants(c, file) {
                return fail(format!("accepted, but {why}"));
            }
            match kind {
                Kind::Fault(needles) => {
                    return fail(format!("a config with a fault ({needles:?}) was accepted"))
                }
                Kind::Valid(expect) => {
                    let mut want = expect.tasks.clone();
                    want.sort();
                    let got: Vec<String> = c.tasks.keys().cloned().collect();
                    prop_assert_eq!(got, want, "tasks");
                    let mut want = expect.groups.clone();
                    want.sort();
                    let got: Vec<String> = c.groups.keys().cloned().collect();
                    prop_assert_eq!(got, want, "groups");
                    prop_assert_eq!(c.email.is_some(), expect.email, "email {:?}", c.email);
                    for (name, d) in &expect.success_cooldown {
                        let got = c.tasks[name].timing.success_cooldown;
                        prop_assert_eq!(got, *d, "task {}: success_cooldown", name);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (a) Config::parse, and the small parsers.
// ---------------------------------------------------------------------------------------------

#[test]
fn config_parse_never_panics_and_every_rejection_is_exit_78_naming_the_file() {
    check("config", cases(), any_config_case, |(case, file)| {
        check_config(&case, Path::new(file))
    });
}

/// The generator itself: its valid configs are valid, and each kind of case occurs.
#[test]
fn the_generator_makes_valid_configs_and_every_kind_of_case() {
    let counts: [AtomicUsize; 4] = Default::default();
    check("generator", 2_000, any_config_case, |(case, _)| {
        let kind = match case.kind {
            Kind::Valid(_) => 0,
            Kind::Fault(_) => 1,
            Kind::Edited => 2,
            Kind::Random => 3,
        };
        counts[kind].fetch_add(1, Ordering::Relaxed);
        if kind == 0 {
            if let Err(e) = Config::parse(&case.text, Path::new("/t.toml")) {
                return fail(format!("generated a config that does not parse: {e}"));
            }
        }
        Ok(())
    });
    let counts = counts.map(|n| n.into_inner());
    assert!(counts.iter().all(|n| *n > 100), "{counts:?}");
}

#[rustfmt::skip]
const TEXT_PIECES: &[&str] = &[
    "a", "Z", "9", "0", "_", "-", ".", "/", " ", "..", "é", "🦀", "\0", "\n", "s", "m", "h", "ms",
    "d", "KiB", "MiB", "GiB", "KB", "B", "K", "1", "18446744073709551615", "+", "e", "\t",
    "\u{a0}", "٣",
];

/// Text for the small parsers: pieces of names, numbers and units, now and then a long one;
/// any characters; names of 1 to 101 characters.
fn small_parser_text() -> impl Strategy<Value = String> {
    prop_oneof![
        49 => vec(pick(TEXT_PIECES), 0..8).prop_map(|v| v.concat()),
        1 => vec(pick(TEXT_PIECES), 0..400).prop_map(|v| v.concat()),
        10 => any::<String>(),
        10 => regex("[.]?[a-zA-Z0-9_.-]{0,101}"),
        5 => pick(RESERVED_NAMES).prop_map(str::to_owned),
    ]
}

#[rustfmt::skip]
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1), ("B", 1), ("K", 1024), ("KiB", 1024), ("KB", 1000), ("kB", 1000), ("M", 1 << 20),
    ("MiB", 1 << 20), ("MB", 1_000_000), ("G", 1 << 30), ("GiB", 1 << 30), ("GB", 1_000_000_000),
];

#[test]
fn names_durations_and_sizes_never_panic_and_match_their_definitions() {
    let strategy = || {
        (
            small_parser_text(),
            (0..=u64::from(u32::MAX), pick(SIZE_UNITS), any::<bool>()),
            odd_duration(u64::from(u32::MAX)),
        )
    };
    check(
        "small-parsers",
        cases(),
        strategy,
        |(text, (n, (unit, mult), space), (duration, ms))| {
            let (name, task_name) = (check_name(&text), check_task_name(&text));
            // SPEC: 1-100 characters of letters, digits, `_`, `-` and `.`, not starting with
            // `.`; a task's name is not a reserved one either.
            let want = !text.is_empty()
                && text.len() <= 100
                && !text.starts_with('.')
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            prop_assert_eq!(name.is_ok(), want, "check_name said {:?}", name);
            let reserved = RESERVED_NAMES.contains(&text.as_str());
            prop_assert_eq!(
                task_name.is_ok(),
                want && !reserved,
                "check_task_name said {:?}",
                task_name
            );
            if let Err(m) = &name {
                prop_assert!(!m.is_empty(), "check_name: an empty reason");
            }
            if let Err(m) = parse_duration(&text) {
                prop_assert!(
                    m.contains("duration"),
                    "parse_duration: {:?} does not say what was expected",
                    m
                );
            }
            if let Err(m) = parse_size(&text) {
                prop_assert!(
                    m.contains("size"),
                    "parse_size: {:?} does not say what was expected",
                    m
                );
            }
            // Known shapes, known values.
            let sz = format!("{n}{}{unit}", if space { " " } else { "" });
            prop_assert_eq!(parse_size(&sz), Ok(n * mult), "parse_size({:?})", sz);
            let big = format!("{}{unit}", u64::MAX);
            if mult > 1 {
                prop_assert!(
                    parse_size(&big).is_err(),
                    "parse_size({:?}) overflowed into a value",
                    big
                );
            }
            prop_assert_eq!(
                parse_duration(&duration),
                Ok(Duration::from_millis(ms)),
                "parse_duration({:?})",
                duration
            );
            Ok(())
        },
    );
}

/// Deep nesting, huge and long inputs, each shape on its own (the random cases meet them only
/// now and then): a clean 78 or a config, never a stack overflow, at the depth a main thread
/// can take (8 MiB).
#[test]
fn deep_nesting_and_huge_inputs_are_rejected_cleanly() {
    let file = Path::new("/etc/run-chain/tasks.toml");
    let mut inputs: Vec<String> = Vec::new();
    for depth in [100, 1_000, 10_000, 100_000, 1_000_000] {
        inputs.push(format!("x = {}{}\n", "[".repeat(depth), "]".repeat(depth)));
        inputs.push(format!(
            "x = {}1{}\n",
            "{ a = ".repeat(depth),
            " }".repeat(depth)
        ));
        inputs.push(format!("{} = 1\n", vec!["a"; depth].join(".")));
        inputs.push(format!("[{}]\n", vec!["t"; depth].join(".")));
        inputs.push(format!("[tasks.a]\nargv = {}\n", "[".repeat(depth)));
        inputs.push(format!("[tasks.{}]\ncommand = \"x\"\n", "a".repeat(depth)));
    }
    inputs.push(format!(
        "[tasks.a]\ncommand = \"{}\"\n[tasks.a]\n",
        "x".repeat(8 << 20)
    ));
    inputs.push("[tasks.a]\n".repeat(100_000));
    inputs.push("[[tasks]]\n".repeat(10_000));
    let outcome = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let mut bad = Vec::new();
            for text in &inputs {
                match catch_unwind(|| Config::parse(text, file)) {
                    Err(_) => bad.push(format!("panicked on {:?}…", &text[..text.len().min(80)])),
                    Ok(Err(e)) => {
                        let m = e.to_string();
                        if e.exit_code() != 78 || !m.contains("/etc/run-chain/tasks.toml") {
                            bad.push(format!("{} {m:?}", e.exit_code()));
                        }
                    }
                    Ok(Ok(_)) => {}
                }
            }
            bad
        })
        .expect("spawn a thread")
        .join()
        .expect("the thread ends");
    assert!(outcome.is_empty(), "{outcome:#?}");
}

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// (b) The command line.
// ---------------------------------------------------------------------------------------------

/// The real flags and subcommands, and junk.
#[rustfmt::skip]
const FLAGS: &[&str] = &[
    "-c", "--config", "--run-root", "--name", "--no-kill-concurrent", "--once", "--json",
    "--chain", "--limit", "--now", "--listen", "--help", "-h", "--version", "-V", "--", "-",
    "--config=", "--name=", "--limit=3", "-cX", "--no-such-flag", "-z", "--once=yes",
    "--json=false", "---",
];
#[rustfmt::skip]
const SUBCOMMANDS: &[&str] = &[
    "check", "status", "history", "log", "stop", "kick", "metrics", "exporter", "mail-test",
    "help", "CHECK", "mail_test",
];
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "a", "b", "send_mail", "0", "1", "-1", "18446744073709551615", "18446744073709551616", "abc",
    "", " ", "..", "a/b", ".hidden", "é", "🦀", "127.0.0.1:0", "tasks.toml", "-",
];

fn random_arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        3 => pick(FLAGS).prop_map(OsString::from),
        2 => pick(SUBCOMMANDS).prop_map(OsString::from),
        3 => pick(VALUES).prop_map(OsString::from),
        // Invalid UTF-8.
        1 => vec(any::<u8>(), 1..5).prop_map(|v| {
            let mut bytes = b"x".to_vec();
            bytes.extend(v.iter().map(|b| 0x80 | b));
            OsString::from_vec(bytes)
        }),
        1 => prop_oneof![
            19 => wild_string().prop_map(|s| OsString::from(s.replace('\0', ""))),
            1 => Just(OsString::from("x".repeat(10_000))),
        ],
    ]
}

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn command_line_parsing_never_panics_and_errors_render() {
    check(
        "cli",
        cases(),
        || vec(random_arg(), 0..9),
        |args| {
            let argv = std::iter::once(OsString::from("run-chain")).chain(args);
            if let Err(e) = Cli::try_parse_from(argv) {
                prop_assert!(
                    !e.to_string().trim().is_empty(),
                    "an empty message for {:?}",
                    e.kind()
                );
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// (c) The real binary.
// ---------------------------------------------------------------------------------------------

/// A task named on the command line: one of the config's (7 in 8, if it has any) or another.
#[derive(Clone, Debug)]
struct TaskPick(Option<Index>, &'static str);

fn task_pick() -> impl Strategy<Value = TaskPick> {
    (
        weighted(7.0 / 8.0, any::<Index>()),
        pick(&["a", "undefined_task", "check"]),
    )
        .prop_map(|(i, other)| TaskPick(i, other))
}

/// A chain's name: the names of the config's first tasks, joined (2 in 3), or another.
#[derive(Clone, Debug)]
struct ChainPick(Option<Index>, &'static str);

fn chain_pick() -> impl Strategy<Value = ChainPick> {
    (
        weighted(2.0 / 3.0, any::<Index>()),
        pick(&["a", "fuzzed", "..", "a/b", ".x"]),
    )
        .prop_map(|(i, other)| ChainPick(i, other))
}

/// An argument of a well-formed command line, before the config's tasks are known.
#[derive(Clone, Debug)]
enum Arg {
    Lit(&'static str),
    Task(TaskPick),
    Chain(ChainPick),
    Config,
    RunRoot,
    /// The tasks of `--once`: the config's, in any order, with another one (1 in 8 or if none),
    /// cut to at least one.
    Tasks {
        other: Option<TaskPick>,
        order: Vec<Index>,
        keep: Index,
    },
}

/// An argument added anywhere (after the well-formed ones, if any).
#[derive(Clone, Debug)]
enum Extra {
    Arg(OsString),
    /// One of the config's tasks (3 in 4, if it has any) or a value.
    TaskOr(Option<Index>, &'static str),
    /// `-c` (at the end), and a config file (anywhere): the config, a missing one, a folder,
    /// an empty one.
    Config(Index),
    /// `--run-root` (at the end), and a folder (anywhere): RUN_ROOT, another, a file.
    RunRoot(Index),
    /// `--name` (at the end), and a value (anywhere).
    Name(&'static str),
}

/// A well-formed command line: the run mode or a subcommand, with sensible arguments.
fn well_formed_argv() -> impl Strategy<Value = Vec<Arg>> {
    use Arg::Lit;
    let once = (
        weighted(1.0 / 3.0, chain_pick()),
        proptest::bool::weighted(0.25),
        weighted(1.0 / 8.0, task_pick()),
        vec(any::<Index>(), 8),
        any::<Index>(),
    )
        .prop_map(|(name, no_kill, other, order, keep)| {
            let mut v = vec![Lit("--once")];
            if let Some(c) = name {
                v.extend([Lit("--name"), Arg::Chain(c)]);
            }
            if no_kill {
                v.push(Lit("--no-kill-concurrent"));
            }
            v.extend([Lit("--"), Arg::Tasks { other, order, keep }]);
            v
        });
    let history = (
        task_pick(),
        weighted(1.0 / 3.0, chain_pick()),
        weighted(1.0 / 3.0, pick(&["1", "0", "5", "18446744073709551615"])),
        any::<bool>(),
    )
        .prop_map(|(task, chain, limit, json)| {
            let mut v = vec![Lit("history"), Arg::Task(task)];
            if let Some(c) = chain {
                v.extend([Lit("--chain"), Arg::Chain(c)]);
            }
            if let Some(n) = limit {
                v.extend([Lit("--limit"), Lit(n)]);
            }
            if json {
                v.push(Lit("--json"));
            }
            v
        });
    let log = (
        task_pick(),
        weighted(0.5, pick(&["1", "2", "0", "99999"])),
        weighted(1.0 / 3.0, chain_pick()),
    )
        .prop_map(|(task, n, chain)| {
            let mut v = vec![Lit("log"), Arg::Task(task)];
            v.extend(n.map(Lit));
            if let Some(c) = chain {
                v.extend([Lit("--chain"), Arg::Chain(c)]);
            }
            v
        });
    let stop = (
        pick(&["stop", "kick"]),
        chain_pick(),
        proptest::bool::weighted(1.0 / 3.0),
    )
        .prop_map(|(verb, chain, now)| {
            let mut v = vec![Lit(verb), Arg::Chain(chain)];
            if now {
                v.push(Lit("--now"));
            }
            v
        });
    let form = prop_oneof![
        5 => once,
        1 => Just(vec![Lit("check")]),
        1 => any::<bool>().prop_map(|json| {
            let mut v = vec![Lit("status")];
            if json {
                v.push(Lit("--json"));
            }
            v
        }),
        1 => history,
        1 => log,
        1 => stop,
        1 => Just(vec![Lit("metrics")]),
        1 => Just(vec![Lit("mail-test")]),
        1 => pick(&["--help", "--version", "-h", "-V"]).prop_map(|f| vec![Lit(f)]),
        1 => pick(SUBCOMMANDS).prop_map(|s| vec![Lit("help"), Lit(s)]),
    ];
    (
        proptest::bool::weighted(1.0 / 3.0),
        proptest::bool::weighted(1.0 / 3.0),
        form,
    )
        .prop_map(|(config, run_root, form)| {
            let mut v = Vec::new();
            if config {
                v.extend([Lit("-c"), Arg::Config]);
            }
            if run_root {
                v.extend([Lit("--run-root"), Arg::RunRoot]);
            }
            v.extend(form);
            v
        })
}

fn extra() -> impl Strategy<Value = Extra> {
    let lit = |items: &'static [&'static str]| pick(items).prop_map(|s| Extra::Arg(s.into()));
    prop_oneof![
        2 => (weighted(0.75, any::<Index>()), pick(VALUES)).prop_map(|(i, v)| Extra::TaskOr(i, v)),
        1 => lit(SUBCOMMANDS),
        1 => lit(FLAGS),
        1 => lit(VALUES),
        1 => random_arg().prop_map(Extra::Arg),
        1 => any::<Index>().prop_map(Extra::Config),
        1 => any::<Index>().prop_map(Extra::RunRoot),
        1 => pick(VALUES).prop_map(Extra::Name),
        3 => lit(&["--once", "--json", "--no-kill-concurrent"]),
    ]
}

/// A case through the binary: a config, a command line, and what goes in the environment.
#[derive(Clone, Debug)]
struct BinaryCase {
    config: Case,
    /// A well-formed command line (3 in 4) and extra arguments at random places (1 to 6 with
    /// none well formed, else 1 in 5), then one argument dropped (1 in 10).
    argv: Option<Vec<Arg>>,
    extras: Vec<(Index, Extra)>,
    drop: Option<Index>,
    run_root_env: bool,
    config_env: bool,
}

fn binary_case() -> impl Strategy<Value = BinaryCase> {
    // Half the configs valid, so that the commands get past the config to their work.
    let config = prop_oneof![
        valid_doc(Flavour::Safe).prop_map(|(doc, expect)| Case {
            text: doc.render(),
            kind: Kind::Valid(expect),
        }),
        config_case(Flavour::Safe),
    ];
    let argv = prop_oneof![
        3 => (well_formed_argv(), weighted(0.2, (any::<Index>(), extra())))
            .prop_map(|(argv, extra)| (Some(argv), Vec::from_iter(extra))),
        1 => vec((any::<Index>(), extra()), 1..=6).prop_map(|extras| (None, extras)),
    ];
    (
        config,
        argv,
        weighted(0.1, any::<Index>()),
        any::<bool>(),
        proptest::bool::weighted(7.0 / 8.0),
    )
        .prop_map(
            |(config, (argv, extras), drop, run_root_env, config_env)| BinaryCase {
                config,
                argv,
                extras,
                drop,
                run_root_env,
                config_env,
            },
        )
}

impl TaskPick {
    fn get(&self, tasks: &[String]) -> String {
        match &self.0 {
            Some(i) if !tasks.is_empty() => i.get(tasks).clone(),
            _ => self.1.to_owned(),
        }
    }
}

impl ChainPick {
    fn get(&self, tasks: &[String]) -> String {
        match &self.0 {
            Some(i) if !tasks.is_empty() => tasks[..=i.index(tasks.len())].join("_"),
            _ => self.1.to_owned(),
        }
    }
}

/// The command line of `case` for a config with `tasks`, that ends on its own: the run mode
/// always with `--once` (and one task unless every cooldown is tiny), never `exporter`.
fn binary_argv(case: &BinaryCase, env: &TestEnv, tasks: &[String]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    for arg in case.argv.iter().flatten() {
        match arg {
            Arg::Lit(s) => argv.push(s.into()),
            Arg::Task(t) => argv.push(t.get(tasks).into()),
            Arg::Chain(c) => argv.push(c.get(tasks).into()),
            Arg::Config => argv.push(env.config.clone().into()),
            Arg::RunRoot => argv.push(env.run_root.clone().into()),
            Arg::Tasks { other, order, keep } => {
                let mut names = tasks.to_vec();
                if names.is_empty() || other.is_some() {
                    let other = other.clone().unwrap_or(TaskPick(None, "a"));
                    names.push(other.get(tasks));
                }
                for i in (1..names.len()).rev() {
                    names.swap(i, order[i % order.len()].index(i + 1));
                }
                names.truncate(1 + keep.index(names.len()));
                argv.extend(names.into_iter().map(OsString::from));
            }
        }
    }
    for (at, extra) in &case.extras {
        let arg = match extra {
            Extra::Arg(a) => a.clone(),
            Extra::TaskOr(Some(i), _) if !tasks.is_empty() => i.get(tasks).into(),
            Extra::TaskOr(_, value) => value.into(),
            Extra::Config(i) => {
                argv.push("-c".into());
                let choices = [
                    env.config.clone(),
                    env.path("missing.toml"),
                    env.root().to_owned(),
                    env.path("empty.toml"),
                ];
                i.get(&choices).clone().into()
            }
            Extra::RunRoot(i) => {
                argv.push("--run-root".into());
                let choices = [
                    env.run_root.clone(),
                    env.path("other-root"),
                    env.config.clone(),
                ];
                i.get(&choices).clone().into()
            }
            Extra::Name(value) => {
                argv.push("--name".into());
                value.into()
            }
        };
        let at = at.index(argv.len() + 1);
        argv.insert(at, arg);
    }
    if let (Some(i), false) = (&case.drop, argv.is_empty()) {
        argv.remove(i.index(argv.len()));
    }
    // Unedited configs set every cooldown tiny: several tasks may run. An edit may have lost a
    // cooldown (the default is 15 minutes): then one task, no cooldown after.
    let multi_ok = matches!(case.config.kind, Kind::Valid(_) | Kind::Fault(_));
    // Classify it as run-chain will, and make the run mode end.
    let mut full = vec![OsString::from("run-chain")];
    full.extend(argv.iter().cloned());
    match Cli::try_parse_from(&full) {
        // Never let a random --run-root create folders outside the test's folder.
        Ok(cli)
            if cli.common.run_root.as_ref().is_some_and(|r| {
                !r.starts_with(env.root())
                    && (r.is_absolute() || r.to_string_lossy().contains(".."))
            }) =>
        {
            vec!["check".into()]
        }
        Ok(cli) => match &cli.command {
            None if !cli.run.tasks.is_empty() => {
                let mut out: Vec<OsString> = vec!["--once".into()];
                let keep = if multi_ok { cli.run.tasks.len() } else { 1 };
                // Rebuild: flags first, then the tasks (so that `--once` cannot be taken as a
                // value).
                if let Some(c) = &cli.common.config {
                    out.push("-c".into());
                    out.push(c.clone().into_os_string());
                }
                if let Some(r) = &cli.common.run_root {
                    out.push("--run-root".into());
                    out.push(r.clone().into_os_string());
                }
                if let Some(n) = &cli.run.name {
                    out.push(format!("--name={n}").into());
                }
                if cli.run.no_kill_concurrent {
                    out.push("--no-kill-concurrent".into());
                }
                out.push("--".into());
                out.extend(cli.run.tasks.iter().take(keep).map(OsString::from));
                out
            }
            Some(Sub::Exporter { .. }) => vec!["metrics".into()],
            _ => argv,
        },
        // A usage error: run-chain exits 64 before doing anything.
        Err(_) => argv,
    }
}

#[test]
fn the_binary_exits_0_1_64_or_78_with_a_message_never_a_panic_or_a_signal() {
    let cases = u32::try_from(env_number("RUN_CHAIN_FUZZ_BIN_CASES", 200)).unwrap_or(u32::MAX);
    let env = TestEnv::new("");
    std::fs::create_dir_all(env.path("sub")).expect("create sub/");
    std::fs::create_dir_all(env.path("cwd")).expect("create cwd/");
    std::fs::write(env.path("empty.toml"), "").expect("write empty.toml");
    let start = Instant::now();
    let codes = RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    // One runner, one case at a time: the cases share the test's folder. A failure is shrunk
    // in at most 200 steps (each runs the binary).
    let result = runner("binary", 0, cases, 200).run(&binary_case(), |case| {
        let text = &case.config.text;
        env.write_config(text);
        let tasks: Vec<String> = Config::parse(text, &env.config)
            .map(|c| c.tasks.keys().cloned().collect())
            .unwrap_or_default();
        let argv = binary_argv(&case, &env, &tasks);
        let mut cmd = env.bare_command();
        // Relative paths on the command line land in the test's folder.
        cmd.current_dir(env.path("cwd"))
            .args(&argv)
            .env("RUN_CHAIN_FUZZ_PW", "not-a-secret");
        // RUN_ROOT: the config's own run_root only where it stays inside the test's folder.
        let own_root = text.parse::<toml::Table>().ok().and_then(|t| {
            t.get("run_root")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
        let inside = own_root
            .as_deref()
            .is_some_and(|r| !r.starts_with('/') && !r.contains(".."));
        if !inside || case.run_root_env {
            cmd.env("RUN_ROOT", &env.run_root);
        }
        if case.config_env {
            cmd.env("RUN_CHAIN_CONFIG", &env.config);
        }
        let t0 = Instant::now();
        let done = env.finish_command(cmd);
        let took = t0.elapsed();
        let status = done.status;
        let code = status.code();
        let is_mail_test = argv.iter().any(|a| a == "mail-test");
        let allowed = match code {
            Some(0 | 1 | 64 | 78) => true,
            Some(70 | 75) => is_mail_test,
            _ => false,
        };
        *codes
            .borrow_mut()
            .entry(format!("{:?}", code.or(status.signal().map(|s| -s))))
            .or_default() += 1;
        let shown = || {
            format!(
                "run-chain {argv:?}\nexit {status:?}\nconfig:\n{text}\nstdout:\n{}\nstderr:\n{}",
                done.stdout, done.stderr
            )
        };
        prop_assert!(status.signal().is_none(), "killed by a signal: {}", shown());
        prop_assert!(code != Some(101), "panicked: {}", shown());
        prop_assert!(allowed, "an undocumented exit status: {}", shown());
        // Trivial tasks, cooldowns of at most 10 ms, kill_grace at most 1 s: a few seconds is
        // plenty; the bound is loose so that a loaded machine never reaches it.
        prop_assert!(
            took < Duration::from_secs(20),
            "took {:?}, for trivial work: {}",
            took,
            shown()
        );
        if code != Some(0) {
            prop_assert!(
                !done.stderr.trim().is_empty(),
                "a non-zero exit with nothing on stderr: {}",
                shown()
            );
        }
        prop_assert!(
            !done.stderr.contains("panicked at"),
            "a panic message on stderr: {}",
            shown()
        );
        // The guardian leaves when run-chain has gone: give it its moment.
        wait_until_explained(DEADLINE, "no process is left behind", || {
            let left = env.marked_processes();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}\n{}", shown()))
            }
        });
        Ok(())
    });
    eprintln!(
        "fuzz binary: {cases} cases, {:.1} s, exit statuses {:?}",
        start.elapsed().as_secs_f64(),
        codes.borrow()
    );
    if let Err(e) = result {
        panic!(
            "fuzz binary: failed (RUN_CHAIN_FUZZ_SEED={:#x} replays it): {e}",
            run_seed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the fuzzer found, pinned down on its own.
// ---------------------------------------------------------------------------------------------

/// `non_recoverable_downtime = "0s"`: every instant is a whole multiple of zero, so the downtime
/// alert would be due at every instant. Refuse it (exit 78 naming the key), as a zero timeout is.
/// Seen accepted: the chain then queues a downtime alert every few milliseconds until the hourly
/// cap, and spins on the CPU in its cooldown after that.
#[test]
fn a_zero_non_recoverable_downtime_is_refused() {
    for (section, key) in [
        (
            "[defaults]\nnon_recoverable_downtime = \"0s\"\n[tasks.a]\ncommand = 'exit 3'\n",
            "defaults.non_recoverable_downtime",
        ),
        (
            "[tasks.a]\ncommand = 'exit 3'\nnon_recoverable_downtime = \"0\"\n",
            "tasks.a.non_recoverable_downtime",
        ),
    ] {
        let env = TestEnv::new(section);
        let done = env.sub(&["check"]);
        done.assert_code(78);
        assert!(
            done.stderr.contains(key) && done.stderr.contains(&env.config.display().to_string()),
            "the error does not name the file and {key}:\n{}",
            done.stderr
        );
        let done = env.run(&["--once", "a"]);
        done.assert_code(78);
        assert!(
            !env.run_root.exists(),
            "RUN_ROOT created despite the bad config"
        );
    }
}

/// A group with a huge `max_running` (the config accepts up to 2^32 - 1): either refused as a
/// bad config, or run with a handful of slot files. Seen: one file per slot is opened, until
/// the descriptor limit (some 20,000 files left in RUN_ROOT/groups/), then "running without a
/// slot", i.e. the group is no longer enforced; and again on every run.
#[test]
fn a_huge_max_running_neither_floods_run_root_nor_drops_the_group() {
    let env = TestEnv::new(
        "[groups.g]\nmax_running = 100000\n\n[tasks.a]\ncommand = 'echo ran >> \"$T/out\"'\ngroup = \"g\"\n",
    );
    let done = env.run(&["--once", "a"]);
    match done.code() {
        Some(78) => {
            assert!(
                done.stderr.contains("groups.g.max_running"),
                "a refusal must name groups.g.max_running:\n{}",
                done.stderr
            );
            assert_eq!(env.read("out"), "");
        }
        _ => {
            done.assert_code(0);
            assert_eq!(env.lines("out"), vec!["ran"]);
            let problems = TestEnv::logged_problems(&done.stderr);
            assert!(problems.is_empty(), "problems logged: {problems:#?}");
            let files = std::fs::read_dir(env.run_root.join("groups"))
                .map(|rd| rd.count())
                .unwrap_or(0);
            assert!(
                files <= 10,
                "one run of a group task left {files} files in RUN_ROOT/groups/"
            );
        }
    }
}
