//! Fuzzing the config parser and the command line (issue 7, point 14): no input makes run-chain
//! panic, and every rejection is a clean exit 78 (config) or 64 (usage) with a message.
//!
//! Deterministic: a small xorshift generator, seeded. Every case has its own seed (derived from
//! the run's seed and the case number), so a failure names the case and shows its input, and
//! the same `RUN_CHAIN_FUZZ_SEED` replays it. Settings (environment):
//! - `RUN_CHAIN_FUZZ_CASES`: in-process cases per fuzz target (default 20,000; `scripts/fuzz`
//!   runs a million);
//! - `RUN_CHAIN_FUZZ_BIN_CASES`: cases through the real binary (default 200);
//! - `RUN_CHAIN_FUZZ_SEED`: the run's seed (default fixed, so CI is reproducible);
//! - `RUN_CHAIN_FUZZ_SAVE`: a folder where every failing input is written in full.
//!
//! What is checked:
//! - `Config::parse` on configs built from a model of the real key set (valid ones must parse
//!   and resolve as the model says; a valid one with exactly one fault injected must be
//!   rejected naming that key), on mutations of them (junk keys and values, unicode, NUL, deep
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
use run_chain::cli::{Cli, Command as Sub};
use run_chain::config::{check_name, parse_duration, parse_size, Config};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The generator and the harness.
// ---------------------------------------------------------------------------------------------

/// xorshift64*: small, fast, good enough to explore inputs; deterministic from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability num/den.
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// One of `words`.
    fn word(&mut self, words: &[&'static str]) -> &'static str {
        words[self.below(words.len())]
    }

    /// lo..=hi.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (self.next() as u128 % span) as i128) as i64
    }
}

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

fn cases() -> u64 {
    env_number("RUN_CHAIN_FUZZ_CASES", 20_000)
}

fn run_seed() -> u64 {
    env_number("RUN_CHAIN_FUZZ_SEED", 0x5EED_C4A1)
}

/// The seed of one case of one target: replayable on its own.
fn case_seed(target: &str, case: u64) -> u64 {
    let mut h = run_seed() ^ 0xcbf2_9ce4_8422_2325;
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One failing case: what went wrong, and the input.
struct Failure {
    case: u64,
    what: String,
    input: String,
}

/// Runs `cases` cases of `target` on every core (threads with the 8 MiB stack of a main
/// thread, as run-chain parses its config on its main thread); each case returns `Err` with
/// what went wrong and the input. Panics, listing the first failures, if any case failed.
fn fuzz(target: &str, cases: u64, check: impl Fn(&mut Rng) -> Result<(), (String, String)> + Sync) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let failures: Mutex<(u64, Vec<Failure>)> = Mutex::new((0, Vec::new()));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (check, failures) = (&check, &failures);
            std::thread::Builder::new()
                .name(format!("fuzz-{target}-{t}"))
                .stack_size(8 << 20)
                .spawn_scoped(s, move || {
                    let mut case = t;
                    while case < cases {
                        let mut rng = Rng::new(case_seed(target, case));
                        if let Err((what, input)) = check(&mut rng) {
                            let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                            f.0 += 1;
                            if f.1.len() < 5 {
                                f.1.push(Failure { case, what, input });
                            }
                        }
                        case += threads;
                    }
                })
                .expect("spawn a fuzz thread");
        }
    });
    let (count, list) = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "fuzz {target}: {cases} cases, {count} failed, {:.1} s (seed {:#x})",
        start.elapsed().as_secs_f64(),
        run_seed()
    );
    if count == 0 {
        return;
    }
    let mut report = format!(
        "fuzz {target}: {count} of {cases} cases failed (RUN_CHAIN_FUZZ_SEED={:#x}); the first:\n",
        run_seed()
    );
    for f in &list {
        let shown: String = f.input.chars().take(3000).collect();
        let cut = if shown.len() < f.input.len() {
            " (cut)"
        } else {
            ""
        };
        let _ = writeln!(
            report,
            "--- case {}: {}\ninput{cut}: {shown:?}",
            f.case, f.what
        );
        if let Ok(dir) = std::env::var("RUN_CHAIN_FUZZ_SAVE") {
            let _ = std::fs::create_dir_all(&dir);
            let file = Path::new(&dir).join(format!("{target}-{}.txt", f.case));
            let _ = std::fs::write(&file, &f.input);
            let _ = writeln!(report, "(saved to {})", file.display());
        }
    }
    panic!("{report}");
}

/// The text of a panic payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

// ---------------------------------------------------------------------------------------------
// A model of a config file: sections of `key = value` lines, rendered as TOML.
// ---------------------------------------------------------------------------------------------

const DURATION_KEYS: &[&str] = &[
    "success_cooldown",
    "fail_cooldown",
    "non_recoverable_downtime",
    "timeout",
    "stop_grace",
    "kill_grace",
    "keep_runs_for",
];
const TASK_KEYS: &[&str] = &["command", "argv", "cwd", "env", "nice", "group"];
const EMAIL_KEYS: &[&str] = &[
    "to",
    "from",
    "smtp",
    "tls",
    "ca_file",
    "password_file",
    "password_env",
    "sendmail",
    "max_alerts_per_hour",
];
const TOP_KEYS: &[&str] = &["run_root", "defaults", "email", "tasks", "groups"];

/// Every key of the real key set, for junk placement.
fn all_keys() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vec::new();
    v.extend(DURATION_KEYS);
    v.extend(["keep_runs_max", "keep_output", "max_running"]);
    v.extend(TASK_KEYS);
    v.extend(EMAIL_KEYS);
    v.extend(TOP_KEYS);
    v
}

/// Keys that are not in the key set (typos, case, unicode, injection attempts).
const JUNK_KEYS: &[&str] = &[
    "sucess_cooldown",
    "Command",
    "cmd",
    "tiemout",
    "succes_cooldown",
    "commands",
    "arg",
    "env_vars",
    "max-running",
    "keep_run_max",
    "password",
    "smtp_password",
    "ṫimeout",
    "time\u{200b}out",
    "🦀",
    "a.b",
    "x y",
    "",
    "\u{0}",
    "\n",
    "tasks",
    "[",
];

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

fn toml_array(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Clone)]
struct Section {
    /// Rendered table header without brackets (`tasks.a`), or None for the top level.
    header: Option<String>,
    entries: Vec<(String, String)>,
}

#[derive(Clone, Default)]
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
#[derive(Clone, Default)]
struct Expect {
    tasks: Vec<String>,
    groups: Vec<String>,
    email: bool,
    /// success_cooldown per task, as resolved (own, then [defaults], then built in).
    success_cooldown: Vec<(String, Duration)>,
}

/// Safe: for the real binary (harmless commands, tiny durations, paths inside the test's dir,
/// SMTP only to a refused local port). Wild: anything valid.
#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Safe,
    Wild,
}

const VALID_DURATIONS: &[(&str, u64)] = &[
    ("90s", 90_000),
    ("15m", 900_000),
    ("1h 30m", 5_400_000),
    ("0s", 0),
    ("0", 0),
    ("30d", 2_592_000_000),
    ("500ms", 500),
    ("2h", 7_200_000),
    (" 5s ", 5_000),
    ("1h30m", 5_400_000),
    ("1day", 86_400_000),
    ("3 weeks", 1_814_400_000),
];
const SAFE_COOLDOWNS: &[(&str, u64)] = &[("0s", 0), ("0", 0), ("1ms", 1), ("10ms", 10)];

fn valid_name(rng: &mut Rng) -> String {
    const FIRST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    const REST: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.";
    let len = if rng.chance(1, 50) {
        100
    } else {
        1 + rng.below(12)
    };
    let mut s = String::new();
    s.push(*rng.pick(FIRST) as char);
    for _ in 1..len {
        s.push(*rng.pick(REST) as char);
    }
    if run_chain::cli::RESERVED_NAMES.contains(&s.as_str()) {
        s.push('x');
    }
    s
}

/// Any string: ASCII, unicode, controls, NUL, long.
fn wild_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "0",
        " ",
        "é",
        "日本",
        "🦀",
        "\u{202e}",
        "\u{feff}",
        "\u{10ffff}",
        "\0",
        "\r\n",
        "\t",
        "\\",
        "\"",
        "'",
        "$(id)",
        "`x`",
        "%s%n",
        "../",
        "/",
        "=",
        "@",
        "\u{7f}",
        "\u{1b}[31m",
    ];
    let n = if rng.chance(1, 1000) {
        5_000 + rng.below(20_000)
    } else {
        rng.below(12)
    };
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(rng.word(PIECES));
    }
    s
}

/// A string with no NUL and not blank (what text values need to be valid).
fn wild_text(rng: &mut Rng) -> String {
    let s: String = wild_string(rng).replace('\0', "");
    if s.trim().is_empty() {
        format!("x{s}")
    } else {
        s
    }
}

fn duration_value(rng: &mut Rng, flavour: Flavour, key: &str) -> (String, Option<u64>) {
    let (text, ms) = match (flavour, key) {
        (_, "timeout") => {
            if rng.chance(1, 3) {
                return (toml_str(rng.word(&["none", "NONE", " none "])), None);
            }
            *rng.pick(&[("1h", 3_600_000), ("5s", 5_000), ("90s", 90_000)])
        }
        (Flavour::Safe, "success_cooldown" | "fail_cooldown") => *rng.pick(SAFE_COOLDOWNS),
        (Flavour::Safe, "stop_grace" | "kill_grace") => {
            *rng.pick(&[("1s", 1_000), ("100ms", 100), ("0s", 0)])
        }
        // Zero makes no sense here (a downtime alert at every instant): no oracle either way.
        (_, "non_recoverable_downtime") => *rng.pick(&[("6h", 0), ("1s", 0), ("1day", 0)]),
        _ => *rng.pick(VALID_DURATIONS),
    };
    (toml_str(text), Some(ms))
}

fn size_value(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => rng.range(0, 64 << 20).to_string(),
        1 => toml_str(rng.word(&["64KiB", "1MiB", "100", "2 KB", "0", "64MiB", "1K", "3M"])),
        _ => toml_str(&format!("{}", rng.range(0, 65_536))),
    }
}

/// The [defaults] keys (or a task's share of them), valid; returns success_cooldown if set.
fn timing_entries(
    rng: &mut Rng,
    flavour: Flavour,
    entries: &mut Vec<(String, String)>,
    force_cooldowns: bool,
) -> Option<u64> {
    let mut success = None;
    for key in DURATION_KEYS {
        let forced = force_cooldowns && (*key == "success_cooldown" || *key == "fail_cooldown");
        if forced || rng.chance(1, 3) {
            let (v, ms) = duration_value(rng, flavour, key);
            if *key == "success_cooldown" {
                success = ms;
            }
            entries.push((key.to_string(), v));
        }
    }
    if rng.chance(1, 4) {
        let max = if rng.chance(1, 2) {
            1_000_000
        } else {
            i64::MAX
        };
        entries.push(("keep_runs_max".into(), rng.range(1, max).to_string()));
    }
    if rng.chance(1, 4) {
        entries.push(("keep_output".into(), size_value(rng)));
    }
    success
}

/// A valid document, and what it must resolve to.
fn gen_valid(rng: &mut Rng, flavour: Flavour) -> (Doc, Expect) {
    let mut doc = Doc::default();
    let mut expect = Expect::default();
    let mut top = Section {
        header: None,
        entries: Vec::new(),
    };
    if rng.chance(1, 3) {
        let root = match flavour {
            Flavour::Safe => rng.pick(&["var/run", "r", "run-here"]).to_string(),
            Flavour::Wild => wild_text(rng),
        };
        top.entries.push(("run_root".into(), toml_str(&root)));
    }
    doc.sections.push(top);

    let mut default_success = None;
    if rng.chance(1, 2) || flavour == Flavour::Safe {
        let mut s = Section {
            header: Some("defaults".into()),
            entries: Vec::new(),
        };
        default_success = timing_entries(rng, flavour, &mut s.entries, flavour == Flavour::Safe);
        doc.sections.push(s);
    }

    let groups: Vec<String> = (0..rng.below(3)).map(|_| valid_name(rng)).collect();
    for g in &groups {
        if expect.groups.contains(g) {
            continue;
        }
        expect.groups.push(g.clone());
        // Small: whether a huge max_running is refused is for its own test (below).
        let max = rng.range(1, 4);
        doc.sections.push(Section {
            header: Some(format!("groups.{}", toml_key(g))),
            entries: vec![("max_running".into(), max.to_string())],
        });
    }

    let n_tasks = match flavour {
        Flavour::Safe => 1 + rng.below(3),
        Flavour::Wild => rng.below(5),
    };
    for _ in 0..n_tasks {
        let name = valid_name(rng);
        if expect.tasks.contains(&name) {
            continue;
        }
        let mut entries = Vec::new();
        if rng.chance(1, 2) {
            let cmd = match flavour {
                Flavour::Safe => rng
                    .pick(&[
                        "true",
                        "exit 3",
                        "echo out; echo err >&2",
                        "printf 'no newline'",
                        "kill -9 $$",
                        "echo \"$RUN_CHAIN_TASK $RUN_CHAIN_RUN_ID\"",
                    ])
                    .to_string(),
                Flavour::Wild => wild_text(rng),
            };
            entries.push(("command".into(), toml_str(&cmd)));
        } else {
            let argv: Vec<String> = match flavour {
                Flavour::Safe => rng
                    .pick(&[
                        &["true"][..],
                        &["false"],
                        &["/nonexistent/prog", "x"],
                        &["sh", "-c", "exit 2"],
                    ])
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                Flavour::Wild => {
                    let mut v = vec![wild_text(rng)];
                    for _ in 0..rng.below(4) {
                        v.push(wild_string(rng).replace('\0', ""));
                    }
                    v
                }
            };
            entries.push(("argv".into(), toml_array(&argv)));
        }
        if rng.chance(1, 3) {
            let cwd = match flavour {
                Flavour::Safe => rng
                    .pick(&[".", "/", "/nonexistent-run-chain-dir", "sub"])
                    .to_string(),
                Flavour::Wild => wild_text(rng),
            };
            entries.push(("cwd".into(), toml_str(&cwd)));
        }
        if rng.chance(1, 3) {
            let mut parts = Vec::new();
            for i in 0..rng.below(3) {
                let k = match flavour {
                    Flavour::Safe => format!("V{i}"),
                    Flavour::Wild => {
                        let k = wild_text(rng).replace('=', "");
                        if k.is_empty() || k.starts_with("RUN_CHAIN_") {
                            format!("K{i}")
                        } else {
                            format!("{k}{i}")
                        }
                    }
                };
                let v = wild_string(rng).replace('\0', "");
                parts.push(format!("{} = {}", toml_str(&k), toml_str(&v)));
            }
            entries.push(("env".into(), format!("{{ {} }}", parts.join(", "))));
        }
        if rng.chance(1, 4) {
            entries.push(("nice".into(), rng.range(0, 19).to_string()));
        }
        if !expect.groups.is_empty() && rng.chance(1, 2) {
            let g = rng.pick(&expect.groups).clone();
            entries.push(("group".into(), toml_str(&g)));
        }
        let own_success = timing_entries(rng, flavour, &mut entries, flavour == Flavour::Safe);
        let resolved = own_success.or(default_success).unwrap_or(15 * 60 * 1000);
        expect
            .success_cooldown
            .push((name.clone(), Duration::from_millis(resolved)));
        expect.tasks.push(name.clone());
        doc.sections.push(Section {
            header: Some(format!("tasks.{}", toml_key(&name))),
            entries,
        });
    }

    if rng.chance(1, 3) {
        expect.email = true;
        let mut e = Vec::new();
        let n_to = 1 + rng.below(2);
        let to: Vec<String> = (0..n_to).map(|i| format!("admin{i}@example.com")).collect();
        e.push(("to".into(), toml_array(&to)));
        if rng.chance(1, 2) {
            e.push(("from".into(), toml_str("run-chain@example.com")));
        }
        match rng.below(3) {
            0 => {
                let url = match flavour {
                    Flavour::Safe => "smtp://127.0.0.1:1",
                    Flavour::Wild => *rng.pick(&[
                        "smtp://127.0.0.1:25",
                        "smtps://user@mail.example.com:465",
                        "smtp://[::1]:587/",
                        "smtp://host",
                    ]),
                };
                e.push(("smtp".into(), toml_str(url)));
                e.push((
                    "tls".into(),
                    toml_str(rng.word(&["opportunistic", "required", "none"])),
                ));
            }
            1 => {
                let path = match flavour {
                    Flavour::Safe => *rng.pick(&["/bin/true", "/nonexistent/sendmail"]),
                    Flavour::Wild => "/usr/sbin/sendmail",
                };
                e.push(("sendmail".into(), toml_str(path)));
            }
            _ => {}
        }
        if rng.chance(1, 4) {
            e.push(("ca_file".into(), toml_str("/nonexistent/ca.pem")));
        }
        match rng.below(3) {
            0 => e.push((
                "password_file".into(),
                toml_str("/nonexistent/smtp-password"),
            )),
            1 => e.push(("password_env".into(), toml_str("RUN_CHAIN_FUZZ_PW"))),
            _ => {}
        }
        if rng.chance(1, 3) {
            e.push((
                "max_alerts_per_hour".into(),
                rng.range(1, u32::MAX as i64).to_string(),
            ));
        }
        doc.sections.push(Section {
            header: Some("email".into()),
            entries: e,
        });
    }
    // Sections in any order: TOML does not care, and neither may run-chain.
    if rng.chance(1, 3) && doc.sections.len() > 2 {
        let i = 1 + rng.below(doc.sections.len() - 1);
        let j = 1 + rng.below(doc.sections.len() - 1);
        doc.sections.swap(i, j);
    }
    (doc, expect)
}

/// Injects exactly one fault into a valid doc; returns the strings its rejection must name.
fn inject_fault(rng: &mut Rng, doc: &mut Doc) -> Vec<String> {
    let tasks = doc.task_headers();
    // A section where a timing key may go: [defaults] or a task.
    let timing_section = |rng: &mut Rng, doc: &mut Doc| -> String {
        if !tasks.is_empty() && rng.chance(1, 2) {
            rng.pick(&tasks).clone()
        } else {
            if doc.section_mut("defaults").is_none() {
                doc.sections.push(Section {
                    header: Some("defaults".into()),
                    entries: Vec::new(),
                });
            }
            "defaults".into()
        }
    };
    let set = |doc: &mut Doc, section: &str, key: &str, value: String| {
        let s = doc.section_mut(section).expect("section exists");
        s.entries.retain(|(k, _)| k != key);
        s.entries.push((key.to_owned(), value));
    };
    loop {
        match rng.below(20) {
            0 => {
                let sec = timing_section(rng, doc);
                let key = *rng.pick(DURATION_KEYS);
                let bad = *rng.pick(&[
                    "soon",
                    "15",
                    "-1s",
                    "",
                    "1x",
                    "h",
                    "1 fortnight",
                    "\0",
                    "99999999999999999999999999s",
                    "1.5.h",
                    "15 minutes please",
                    "∞",
                ]);
                set(doc, &sec, key, toml_str(bad));
                return vec![key.into()];
            }
            1 => {
                // A duration of the wrong type.
                let sec = timing_section(rng, doc);
                let key = *rng.pick(DURATION_KEYS);
                let bad = *rng.pick(&["5", "1.5", "true", "[\"1s\"]", "{ s = 1 }", "-3"]);
                set(doc, &sec, key, bad.into());
                return vec![key.into()];
            }
            2 => {
                let sec = timing_section(rng, doc);
                set(
                    doc,
                    &sec,
                    "timeout",
                    toml_str(rng.word(&["0s", "0", "0ms"])),
                );
                return vec!["timeout".into()];
            }
            3 => {
                let sec = timing_section(rng, doc);
                let bad = *rng.pick(&[
                    "0",
                    "-1",
                    "-9223372036854775808",
                    "\"100\"",
                    "1.0",
                    "9223372036854775808",
                ]);
                set(doc, &sec, "keep_runs_max", bad.into());
                return vec!["keep_runs_max".into()];
            }
            4 => {
                let sec = timing_section(rng, doc);
                let bad = rng
                    .pick(&[
                        "\"lots\"",
                        "\"1.5MiB\"",
                        "67108865",
                        "\"65MiB\"",
                        "-1",
                        "\"99999999999999999999\"",
                        "\"18446744073709551615G\"",
                        "\"-5\"",
                        "\"1 TiB\"",
                        "\"\"",
                        "true",
                    ])
                    .to_string();
                set(doc, &sec, "keep_output", bad);
                return vec!["keep_output".into()];
            }
            5 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                let bad = *rng.pick(&["20", "-21", "9223372036854775807", "\"5\"", "1.5"]);
                set(doc, &sec, "nice", bad.into());
                return vec!["nice".into()];
            }
            6 => {
                // An unknown key, anywhere.
                let junk = *rng.pick(&JUNK_KEYS[..JUNK_KEYS.len() - 3]);
                if junk.is_empty() || junk == "a.b" || junk == "\u{0}" {
                    continue;
                }
                let i = rng.below(doc.sections.len());
                let header = doc.sections[i].header.clone();
                if header.as_deref() == Some("email") || header.as_deref() == Some("defaults") {
                    doc.sections[i].entries.push((junk.into(), "1".into()));
                } else if let Some(h) = header {
                    if h.starts_with("groups.") {
                        doc.sections[i].entries.push((junk.into(), "1".into()));
                    } else {
                        doc.sections[i].entries.push((junk.into(), toml_str("x")));
                    }
                } else {
                    doc.sections[i].entries.push((junk.into(), "1".into()));
                }
                return vec![junk.into()];
            }
            7 => {
                // A task with a bad or reserved name.
                let bad = rng
                    .pick(&[
                        "..",
                        "a/b",
                        ".hidden",
                        "check",
                        "mail-test",
                        "help",
                        "a b",
                        "ä",
                        "a\0b",
                        "",
                    ])
                    .to_string();
                let bad = if rng.chance(1, 6) {
                    "x".repeat(300)
                } else {
                    bad
                };
                doc.sections.push(Section {
                    header: Some(format!("tasks.{}", toml_str(&bad))),
                    entries: vec![("command".into(), toml_str("true"))],
                });
                return vec![format!("tasks.{bad}")];
            }
            8 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                set(doc, &sec, "group", toml_str("no-such-group-zz"));
                return vec!["no-such-group-zz".into(), "group".into()];
            }
            9 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                let s = doc.section_mut(&sec).unwrap();
                let has_command = s.entries.iter().any(|(k, _)| k == "command");
                if has_command {
                    s.entries
                        .push(("argv".into(), toml_array(&["true".into()])));
                } else {
                    s.entries.push(("command".into(), toml_str("true")));
                }
                return vec![key_path(&sec), "not both".into()];
            }
            10 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                let s = doc.section_mut(&sec).unwrap();
                s.entries.retain(|(k, _)| k != "command" && k != "argv");
                return vec![key_path(&sec), "neither".into()];
            }
            11 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                let s = doc.section_mut(&sec).unwrap();
                s.entries.retain(|(k, _)| k != "command" && k != "argv");
                let (key, bad) = *rng.pick(&[
                    ("command", "\"\""),
                    ("command", "\"   \""),
                    ("command", "\"a\\u0000b\""),
                    ("argv", "[]"),
                    ("argv", "[\"\"]"),
                    ("argv", "[\"sh\", \"a\\u0000\"]"),
                    ("argv", "\"true\""),
                    ("command", "[\"true\"]"),
                ]);
                s.entries.push((key.into(), bad.into()));
                return vec![key.into()];
            }
            12 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                let bad = *rng.pick(&[
                    "{ \"A=B\" = \"1\" }",
                    "{ \"RUN_CHAIN_TASK\" = \"x\" }",
                    "{ \"\" = \"x\" }",
                    "{ A = \"a\\u0000\" }",
                    "{ A = 1 }",
                ]);
                set(doc, &sec, "env", bad.into());
                return vec!["env".into()];
            }
            13 if !tasks.is_empty() => {
                let sec = rng.pick(&tasks).clone();
                set(doc, &sec, "cwd", "\"\"".into());
                return vec!["cwd".into()];
            }
            14 => {
                let bad = *rng.pick(&["\"\"", "\"   \"", "5"]);
                doc.top_mut().entries.retain(|(k, _)| k != "run_root");
                doc.top_mut().entries.push(("run_root".into(), bad.into()));
                return vec!["run_root".into()];
            }
            15 => {
                // A bad group.
                // (name, max_running, what the rejection names: a wrong type is shown by
                // TOML's own message, which quotes the line, not the table).
                let (name, max, needle) = *rng.pick(&[
                    ("g0", "0", "groups.g0.max_running"),
                    ("g1", "-1", "groups.g1.max_running"),
                    ("g2", "4294967296", "groups.g2.max_running"),
                    ("g3", "\"1\"", "max_running"),
                    ("..", "1", "groups.."),
                    ("a/b", "1", "groups.a/b"),
                    (".g", "1", "groups..g"),
                ]);
                doc.sections.push(Section {
                    header: Some(format!("groups.{}", toml_str(name))),
                    entries: vec![("max_running".into(), max.into())],
                });
                return vec![needle.into()];
            }
            16 => {
                // A bad [email] section (replacing any).
                doc.sections
                    .retain(|s| s.header.as_deref() != Some("email"));
                let to = toml_array(&["admin@example.com".into()]);
                let (needle, entries): (&str, Vec<(&str, String)>) = match rng.below(9) {
                    0 => ("email.to", vec![("to", "[]".into())]),
                    1 => (
                        "email.to",
                        vec![("to", toml_array(&["not an address".into()]))],
                    ),
                    2 => ("email.from", vec![("to", to), ("from", toml_str("@x"))]),
                    3 => (
                        "email.smtp",
                        vec![("to", to), ("smtp", toml_str("http://x"))],
                    ),
                    4 => (
                        "email.smtp",
                        vec![("to", to), ("smtp", toml_str("smtp://u:pw@x"))],
                    ),
                    5 => (
                        "not both",
                        vec![
                            ("to", to),
                            ("smtp", toml_str("smtp://h")),
                            ("sendmail", toml_str("/s")),
                        ],
                    ),
                    6 => (
                        "not both",
                        vec![
                            ("to", to),
                            ("password_file", toml_str("/p")),
                            ("password_env", toml_str("P")),
                        ],
                    ),
                    7 => ("email.tls", vec![("to", to), ("tls", toml_str("maybe"))]),
                    _ => (
                        "email.max_alerts_per_hour",
                        vec![("to", to), ("max_alerts_per_hour", "0".into())],
                    ),
                };
                doc.sections.push(Section {
                    header: Some("email".into()),
                    entries: entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                });
                return vec![needle.into()];
            }
            17 if !tasks.is_empty() => {
                // The same table twice.
                let sec = rng.pick(&tasks).clone();
                doc.sections.push(Section {
                    header: Some(sec.clone()),
                    entries: vec![("nice".into(), "1".into())],
                });
                let name = sec
                    .trim_start_matches("tasks.")
                    .trim_matches('"')
                    .to_owned();
                return vec!["duplicate".into(), name];
            }
            18 => {
                // An unknown section.
                let (header, needle) = *rng.pick(&[
                    ("task.a", "task"),
                    ("default", "default"),
                    ("mail", "mail"),
                    ("group.g", "group"),
                ]);
                doc.sections.push(Section {
                    header: Some(header.into()),
                    entries: vec![("command".into(), toml_str("true"))],
                });
                return vec![needle.into()];
            }
            19 => {
                // A key of the wrong section: a task key in [defaults], an email key in a task.
                let sec = timing_section(rng, doc);
                let key = if sec == "defaults" {
                    *rng.pick(TASK_KEYS)
                } else {
                    *rng.pick(&["to", "smtp", "max_running", "run_root"])
                };
                let s = doc.section_mut(&sec).unwrap();
                if s.entries.iter().any(|(k, _)| k == key) {
                    continue;
                }
                s.entries.push((key.into(), toml_str("x")));
                return vec![key.into()];
            }
            _ => continue,
        }
    }
}

const MUTATION_TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "\n",
    "\r\n",
    "\\",
    "\\u0000",
    "\\U0010FFFF",
    "\\uD800",
    "{",
    "}",
    ",",
    "#",
    ".",
    " ",
    "tasks.",
    "\n[tasks.a]\n",
    "\n[defaults]\n",
    "\n[email]\n",
    "\n[groups.g]\n",
    "\n[[tasks]]\n",
    "\ncommand = \"x\"\n",
    "\nargv = []\n",
    "1e400",
    "nan",
    "-inf",
    "-0",
    "0x7f",
    "0o777",
    "0b1",
    "1_000",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999999999",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "true",
    "é",
    "\u{202e}",
    "\u{feff}",
    "\0",
    "\t",
    "\u{10FFFF}",
    "🦀",
    "\"1h\"",
    "\"-5s\"",
    "\"none\"",
    "\"64KiB\"",
    "\"..\"",
    "\"a/b\"",
];

/// Text that nests `depth` levels deep, in one of TOML's ways.
fn deep(rng: &mut Rng, depth: usize) -> String {
    match rng.below(4) {
        0 => format!("\nx = {}{}\n", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("\nx = {}1{}\n", "{ a = ".repeat(depth), " }".repeat(depth)),
        2 => format!("\n{} = 1\n", vec!["a"; depth].join(".")),
        _ => format!("\n[{}]\n", vec!["t"; depth].join(".")),
    }
}

/// A random edit of `text` (1 to 4 operations), always valid UTF-8.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(13) {
            0 if !s.is_empty() => {
                let end = (at + 1 + rng.below(20)).min(s.len());
                let at = at.min(end);
                s.drain(at..end);
            }
            1 | 2 => {
                let tok = rng.pick(MUTATION_TOKENS);
                s.splice(at..at, tok.chars());
            }
            3 => {
                // Duplicate a line.
                let text: String = s.iter().collect();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let line = lines[rng.below(lines.len())];
                    let ins = format!("\n{line}\n");
                    s.splice(at..at, ins.chars());
                }
            }
            4 => {
                // Swap two lines.
                let text: String = s.iter().collect();
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.len() > 1 {
                    let (i, j) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(i, j);
                    s = lines.join("\n").chars().collect();
                }
            }
            5 => s.truncate(at),
            6 => {
                // Random bytes.
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                let ins = String::from_utf8_lossy(&bytes).into_owned();
                s.splice(at..at, ins.chars());
            }
            7 => {
                // A junk or real key with a junk value, on its own line.
                let keys = all_keys();
                let key = if rng.chance(1, 2) {
                    rng.pick(&keys).to_string()
                } else {
                    rng.pick(JUNK_KEYS).to_string()
                };
                let value = match rng.below(4) {
                    0 => rng.pick(MUTATION_TOKENS).to_string(),
                    1 => toml_str(&wild_string(rng)),
                    2 => rng.range(i64::MIN, i64::MAX).to_string(),
                    _ => toml_str(rng.word(&["1h", "-1s", "0", "none", "64KiB", ""])),
                };
                let ins = format!("\n{} = {value}\n", toml_key(&key));
                s.splice(at..at, ins.chars());
            }
            8 if rng.chance(1, 40) => {
                let depth = *rng.pick(&[10, 100, 1_000, 10_000]);
                let ins = deep(rng, depth);
                s.splice(at..at, ins.chars());
            }
            9 if rng.chance(1, 40) => {
                let n = *rng.pick(&[1_000, 100_000]);
                let ins = format!("\ncommand = \"{}\"\n", "x".repeat(n));
                s.splice(at..at, ins.chars());
            }
            10 => {
                // Replace the value on a random line.
                let text: String = s.iter().collect();
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    if let Some(eq) = lines[i].find('=') {
                        let v = match rng.below(3) {
                            0 => rng.pick(MUTATION_TOKENS).to_string(),
                            1 => toml_str(&wild_string(rng)),
                            _ => rng.range(i64::MIN, i64::MAX).to_string(),
                        };
                        lines[i] = format!("{}= {v}", &lines[i][..eq]);
                        s = lines.join("\n").chars().collect();
                    }
                }
            }
            11 => {
                // Duplicate a whole section.
                let text: String = s.iter().collect();
                let starts: Vec<usize> = text.match_indices("\n[").map(|(i, _)| i).collect();
                if !starts.is_empty() {
                    let i = rng.below(starts.len());
                    let from = starts[i];
                    let to = starts.get(i + 1).copied().unwrap_or(text.len());
                    let dup = text[from..to].to_owned();
                    s = format!("{text}{dup}").chars().collect();
                }
            }
            _ => {
                // Change one character.
                if at < s.len() {
                    s[at] = *rng.pick(&['[', ']', '"', '=', '\n', '.', '0', 'x', '\0', '\u{85}']);
                }
            }
        }
    }
    s.into_iter().collect()
}

/// Files the config claims to come from: their display form must be in every message.
const CONFIG_PATHS: &[&str] = &[
    "/etc/run-chain/tasks.toml",
    "tasks.toml",
    "./relative dir/tâsks.toml",
    "/tmp/with\"quote/and spaces/tasks.toml",
    "/srv/日本/x.toml",
];

/// The config text of a case: a valid model, one fault, mutations, or random bytes.
enum Kind {
    Valid(Expect),
    Fault(Vec<String>),
    Mutated,
    Random,
}

fn gen_config(rng: &mut Rng, flavour: Flavour) -> (String, Kind) {
    match rng.below(10) {
        0..=2 => {
            let (doc, expect) = gen_valid(rng, flavour);
            (doc.render(), Kind::Valid(expect))
        }
        3..=5 => {
            let (mut doc, _) = gen_valid(rng, flavour);
            let needles = inject_fault(rng, &mut doc);
            (doc.render(), Kind::Fault(needles))
        }
        6..=8 => {
            let (doc, _) = gen_valid(rng, flavour);
            (mutate(rng, &doc.render()), Kind::Mutated)
        }
        _ => {
            let n = rng.below(300);
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.chance(1, 2) {
                        *rng.pick(b"[]=\"'.\n abcdefghijklmnopqrstuvwxyz0123456789{},#")
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            (String::from_utf8_lossy(&bytes).into_owned(), Kind::Random)
        }
    }
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
        if run_chain::config::check_task_name(name).is_err() {
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
            run_chain::config::Program::Shell(s) => {
                if s.trim().is_empty() || s.contains('\0') {
                    return Err(format!("task {name:?}: command {s:?}"));
                }
            }
            run_chain::config::Program::Argv(v) => {
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

fn check_config_case(rng: &mut Rng) -> Result<(), (String, String)> {
    let flavour = if rng.chance(1, 2) {
        Flavour::Wild
    } else {
        Flavour::Safe
    };
    let (text, kind) = gen_config(rng, flavour);
    let file = PathBuf::from(rng.pick(CONFIG_PATHS));
    let fail = |what: String| Err((what, text.clone()));
    let result = match catch_unwind(AssertUnwindSafe(|| Config::parse(&text, &file))) {
        Ok(r) => r,
        Err(p) => return fail(format!("Config::parse panicked: {}", panic_text(&*p))),
    };
    match (&result, &kind) {
        (Err(e), _) => {
            let msg = e.to_string();
            if e.exit_code() != 78 {
                return fail(format!("exit code {} for {msg:?}", e.exit_code()));
            }
            if msg.trim().is_empty() {
                return fail("an empty error message".into());
            }
            if !msg.contains(&file.display().to_string()) {
                return fail(format!("the message does not name {file:?}: {msg:?}"));
            }
            if let Kind::Valid(_) = kind {
                return fail(format!("a valid config was rejected: {msg}"));
            }
            if let Kind::Fault(needles) = &kind {
                for n in needles {
                    if !msg.contains(n.as_str()) {
                        return fail(format!(
                            "the rejection does not name {n:?} (the injected fault): {msg}"
                        ));
                    }
                }
                if msg.contains("pw@") {
                    return fail(format!(
                        "the message repeats a password from the URL: {msg}"
                    ));
                }
            }
        }
        (Ok(c), _) => {
            if let Err(why) = check_ok_invariants(c, &file) {
                return fail(format!("accepted, but {why}"));
            }
            match &kind {
                Kind::Fault(needles) => {
                    return fail(format!("a config with a fault ({needles:?}) was accepted"))
                }
                Kind::Valid(expect) => {
                    let mut want = expect.tasks.clone();
                    want.sort();
                    let got: Vec<String> = c.tasks.keys().cloned().collect();
                    if got != want {
                        return fail(format!("tasks {got:?}, expected {want:?}"));
                    }
                    let mut want = expect.groups.clone();
                    want.sort();
                    let got: Vec<String> = c.groups.keys().cloned().collect();
                    if got != want {
                        return fail(format!("groups {got:?}, expected {want:?}"));
                    }
                    if c.email.is_some() != expect.email {
                        return fail(format!("email {:?}, expected {}", c.email, expect.email));
                    }
                    for (name, d) in &expect.success_cooldown {
                        let got = c.tasks[name].timing.success_cooldown;
                        if got != *d {
                            return fail(format!(
                                "task {name}: success_cooldown {got:?}, expected {d:?}"
                            ));
                        }
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
    fuzz("config", cases(), check_config_case);
}

/// The generator itself: its valid configs are valid, and each kind of case occurs.
#[test]
fn the_generator_makes_valid_configs_and_every_kind_of_case() {
    let mut counts = [0usize; 4];
    for case in 0..2_000 {
        let mut rng = Rng::new(case_seed("generator", case));
        let flavour = if case % 2 == 0 {
            Flavour::Safe
        } else {
            Flavour::Wild
        };
        let (text, kind) = gen_config(&mut rng, flavour);
        counts[match kind {
            Kind::Valid(_) => 0,
            Kind::Fault(_) => 1,
            Kind::Mutated => 2,
            Kind::Random => 3,
        }] += 1;
        if let Kind::Valid(_) = kind {
            if let Err(e) = Config::parse(&text, Path::new("/t.toml")) {
                panic!("generated a config that does not parse: {e}\n{text}");
            }
        }
    }
    assert!(counts.iter().all(|n| *n > 100), "{counts:?}");
}

fn random_text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "9",
        "0",
        "_",
        "-",
        ".",
        "/",
        " ",
        "..",
        "é",
        "🦀",
        "\0",
        "\n",
        "s",
        "m",
        "h",
        "ms",
        "d",
        "KiB",
        "MiB",
        "GiB",
        "KB",
        "B",
        "K",
        "1",
        "18446744073709551615",
        "+",
        "e",
        "\t",
        "\u{a0}",
        "٣",
    ];
    let n = if rng.chance(1, 50) {
        rng.below(400)
    } else {
        rng.below(8)
    };
    (0..n).map(|_| *rng.pick(PIECES)).collect()
}

#[test]
fn names_durations_and_sizes_never_panic_and_match_their_definitions() {
    fuzz("small-parsers", cases(), |rng| {
        let text = random_text(rng);
        let fail = |what: String| Err((what, text.clone()));
        let r = catch_unwind(|| (check_name(&text), parse_duration(&text), parse_size(&text)));
        let (name, duration, size) = match r {
            Ok(r) => r,
            Err(p) => return fail(format!("panicked: {}", panic_text(&*p))),
        };
        // SPEC: 1-100 characters of letters, digits, `_`, `-` and `.`, not starting with `.`.
        let want = !text.is_empty()
            && text.len() <= 100
            && !text.starts_with('.')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if name.is_ok() != want {
            return fail(format!("check_name said {name:?}"));
        }
        if let Err(m) = &name {
            if m.is_empty() {
                return fail("check_name: an empty reason".into());
            }
        }
        if let Err(m) = &duration {
            if !m.contains("duration") {
                return fail(format!(
                    "parse_duration: {m:?} does not say what was expected"
                ));
            }
        }
        if let Err(m) = &size {
            if !m.contains("size") {
                return fail(format!("parse_size: {m:?} does not say what was expected"));
            }
        }
        // Known shapes, known values.
        let n = rng.range(0, u32::MAX as i64) as u64;
        let (unit, mult) = *rng.pick(&[
            ("", 1u64),
            ("B", 1),
            ("K", 1024),
            ("KiB", 1024),
            ("KB", 1000),
            ("kB", 1000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
        ]);
        let sz = format!("{n}{}{unit}", if rng.chance(1, 2) { " " } else { "" });
        if parse_size(&sz) != Ok(n * mult) {
            return fail(format!("parse_size({sz:?}) = {:?}", parse_size(&sz)));
        }
        let big = format!("{}{unit}", u64::MAX);
        if !unit.is_empty() && mult > 1 && parse_size(&big).is_ok() {
            return fail(format!("parse_size({big:?}) overflowed into a value"));
        }
        let secs = rng.range(0, u32::MAX as i64) as u64;
        let d = format!("{secs}s");
        if parse_duration(&d) != Ok(Duration::from_secs(secs)) {
            return fail(format!("parse_duration({d:?}) = {:?}", parse_duration(&d)));
        }
        Ok(())
    });
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
                    Err(p) => bad.push(format!(
                        "panicked ({}) on {:?}…",
                        panic_text(&*p),
                        &text[..text.len().min(80)]
                    )),
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
        .unwrap()
        .join()
        .unwrap();
    assert!(outcome.is_empty(), "{outcome:#?}");
}

// ---------------------------------------------------------------------------------------------
// (b) The command line.
// ---------------------------------------------------------------------------------------------

/// The real flags and subcommands, and junk.
const FLAGS: &[&str] = &[
    "-c",
    "--config",
    "--run-root",
    "--name",
    "--no-kill-concurrent",
    "--once",
    "--json",
    "--chain",
    "--limit",
    "--now",
    "--listen",
    "--help",
    "-h",
    "--version",
    "-V",
    "--",
    "-",
    "--config=",
    "--name=",
    "--limit=3",
    "-cX",
    "--no-such-flag",
    "-z",
    "--once=yes",
    "--json=false",
    "---",
];
const SUBCOMMANDS: &[&str] = &[
    "check",
    "status",
    "history",
    "log",
    "stop",
    "kick",
    "metrics",
    "exporter",
    "mail-test",
    "help",
    "CHECK",
    "mail_test",
];
const VALUES: &[&str] = &[
    "a",
    "b",
    "send_mail",
    "0",
    "1",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "abc",
    "",
    " ",
    "..",
    "a/b",
    ".hidden",
    "é",
    "🦀",
    "127.0.0.1:0",
    "tasks.toml",
    "-",
];

fn random_arg(rng: &mut Rng) -> OsString {
    match rng.below(10) {
        0..=2 => OsString::from(*rng.pick(FLAGS)),
        3..=4 => OsString::from(*rng.pick(SUBCOMMANDS)),
        5..=7 => OsString::from(*rng.pick(VALUES)),
        8 => {
            // Invalid UTF-8.
            let mut v = b"x".to_vec();
            v.extend((0..1 + rng.below(4)).map(|_| 0x80 | rng.next() as u8));
            OsString::from_vec(v)
        }
        _ => {
            if rng.chance(1, 20) {
                OsString::from("x".repeat(10_000))
            } else {
                OsString::from(wild_string(rng).replace('\0', ""))
            }
        }
    }
}

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn command_line_parsing_never_panics_and_errors_render() {
    fuzz("cli", cases(), |rng| {
        let mut argv = vec![OsString::from("run-chain")];
        for _ in 0..rng.below(9) {
            argv.push(random_arg(rng));
        }
        let shown = format!("{argv:?}");
        let fail = |what: String| Err((what, shown.clone()));
        let r = catch_unwind(|| {
            let r = Cli::try_parse_from(argv.clone());
            let rendered = r.as_ref().err().map(|e| (e.kind(), e.to_string()));
            (r.is_ok(), rendered)
        });
        match r {
            Err(p) => fail(format!("Cli::try_parse_from panicked: {}", panic_text(&*p))),
            Ok((false, Some((kind, text)))) if text.trim().is_empty() => {
                fail(format!("an empty message for {kind:?}"))
            }
            Ok(_) => Ok(()),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// (c) The real binary.
// ---------------------------------------------------------------------------------------------

/// A well-formed command line: the run mode or a subcommand, with sensible arguments.
fn well_formed_argv(rng: &mut Rng, env: &TestEnv, tasks: &[String]) -> Vec<OsString> {
    let task = |rng: &mut Rng| -> String {
        if !tasks.is_empty() && rng.chance(7, 8) {
            rng.pick(tasks).clone()
        } else {
            rng.word(&["a", "undefined_task", "check"]).to_owned()
        }
    };
    let chain = |rng: &mut Rng| -> String {
        if !tasks.is_empty() && rng.chance(2, 3) {
            let n = 1 + rng.below(tasks.len());
            tasks[..n].join("_")
        } else {
            rng.word(&["a", "fuzzed", "..", "a/b", ".x"]).to_owned()
        }
    };
    let mut argv: Vec<String> = Vec::new();
    if rng.chance(1, 3) {
        argv.push("-c".into());
        argv.push(env.config.display().to_string());
    }
    if rng.chance(1, 3) {
        argv.push("--run-root".into());
        argv.push(env.run_root.display().to_string());
    }
    match rng.below(14) {
        0..=4 => {
            argv.push("--once".into());
            if rng.chance(1, 3) {
                argv.push("--name".into());
                argv.push(chain(rng));
            }
            if rng.chance(1, 4) {
                argv.push("--no-kill-concurrent".into());
            }
            argv.push("--".into());
            let mut names: Vec<String> = tasks.to_vec();
            if names.is_empty() || rng.chance(1, 8) {
                names.push(task(rng));
            }
            for i in (1..names.len()).rev() {
                names.swap(i, rng.below(i + 1));
            }
            names.truncate(1 + rng.below(names.len()));
            argv.extend(names);
        }
        5 => argv.push("check".into()),
        6 => {
            argv.push("status".into());
            if rng.chance(1, 2) {
                argv.push("--json".into());
            }
        }
        7 => {
            argv.push("history".into());
            argv.push(task(rng));
            if rng.chance(1, 3) {
                argv.push("--chain".into());
                argv.push(chain(rng));
            }
            if rng.chance(1, 3) {
                argv.push("--limit".into());
                argv.push(rng.word(&["1", "0", "5", "18446744073709551615"]).into());
            }
            if rng.chance(1, 2) {
                argv.push("--json".into());
            }
        }
        8 => {
            argv.push("log".into());
            argv.push(task(rng));
            if rng.chance(1, 2) {
                argv.push(rng.word(&["1", "2", "0", "99999"]).into());
            }
            if rng.chance(1, 3) {
                argv.push("--chain".into());
                argv.push(chain(rng));
            }
        }
        9 => {
            argv.push(rng.word(&["stop", "kick"]).into());
            argv.push(chain(rng));
            if rng.chance(1, 3) {
                argv.push("--now".into());
            }
        }
        10 => argv.push("metrics".into()),
        11 => argv.push("mail-test".into()),
        12 => argv.push(rng.word(&["--help", "--version", "-h", "-V"]).into()),
        _ => {
            argv.push("help".into());
            argv.push(rng.word(SUBCOMMANDS).into());
        }
    }
    argv.into_iter().map(OsString::from).collect()
}

/// A random command line for the binary that ends on its own: the run mode always with
/// `--once` (and one task unless every cooldown is tiny), never `exporter`.
fn binary_argv(rng: &mut Rng, env: &TestEnv, tasks: &[String], multi_ok: bool) -> Vec<OsString> {
    let config = env.config.clone().into_os_string();
    let mut argv: Vec<OsString> = if rng.chance(3, 4) {
        well_formed_argv(rng, env, tasks)
    } else {
        Vec::new()
    };
    let extra = if argv.is_empty() {
        1 + rng.below(6)
    } else if rng.chance(1, 5) {
        1
    } else {
        0
    };
    for _ in 0..extra {
        let a = match rng.below(12) {
            0 | 1 => {
                if !tasks.is_empty() && rng.chance(3, 4) {
                    OsString::from(rng.pick(tasks))
                } else {
                    OsString::from(*rng.pick(VALUES))
                }
            }
            2 => OsString::from(*rng.pick(SUBCOMMANDS)),
            3 => OsString::from(*rng.pick(FLAGS)),
            4 => OsString::from(*rng.pick(VALUES)),
            5 => random_arg(rng),
            6 => {
                argv.push("-c".into());
                rng.pick(&[
                    config.clone(),
                    env.path("missing.toml").into_os_string(),
                    env.root().as_os_str().to_owned(),
                    env.path("empty.toml").into_os_string(),
                ])
                .clone()
            }
            7 => {
                argv.push("--run-root".into());
                rng.pick(&[
                    env.run_root.clone().into_os_string(),
                    env.path("other-root").into_os_string(),
                    env.config.clone().into_os_string(),
                ])
                .clone()
            }
            8 => {
                argv.push("--name".into());
                OsString::from(*rng.pick(VALUES))
            }
            9 => "--once".into(),
            10 => "--json".into(),
            _ => "--no-kill-concurrent".into(),
        };
        let at = rng.below(argv.len() + 1);
        argv.insert(at, a);
    }
    if !argv.is_empty() && rng.chance(1, 10) {
        argv.remove(rng.below(argv.len()));
    }
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
    let cases = env_number("RUN_CHAIN_FUZZ_BIN_CASES", 200);
    let env = TestEnv::new("");
    std::fs::create_dir_all(env.path("sub")).unwrap();
    std::fs::create_dir_all(env.path("cwd")).unwrap();
    std::fs::write(env.path("empty.toml"), "").unwrap();
    let start = Instant::now();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for case in 0..cases {
        let mut rng = Rng::new(case_seed("binary", case));
        // Half the configs valid, so that the commands get past the config to their work.
        let (text, kind) = if rng.chance(1, 2) {
            let (doc, expect) = gen_valid(&mut rng, Flavour::Safe);
            (doc.render(), Kind::Valid(expect))
        } else {
            gen_config(&mut rng, Flavour::Safe)
        };
        // Unmutated configs set every cooldown tiny: several tasks may run. A mutation may
        // have lost a cooldown (the default is 15 minutes): then one task, no cooldown after.
        let multi_ok = matches!(kind, Kind::Valid(_) | Kind::Fault(_));
        env.write_config(&text);
        let tasks: Vec<String> = Config::parse(&text, &env.config)
            .map(|c| c.tasks.keys().cloned().collect())
            .unwrap_or_default();
        let argv = binary_argv(&mut rng, &env, &tasks, multi_ok);
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
        if !inside || rng.chance(1, 2) {
            cmd.env("RUN_ROOT", &env.run_root);
        }
        if rng.chance(7, 8) {
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
            .entry(format!("{:?}", code.or(status.signal().map(|s| -s))))
            .or_default() += 1;
        let shown = || {
            format!(
                "case {case} (RUN_CHAIN_FUZZ_SEED={:#x}): run-chain {argv:?}\nexit {status:?}\nconfig:\n{text}\nstdout:\n{}\nstderr:\n{}",
                run_seed(),
                done.stdout,
                done.stderr
            )
        };
        assert!(status.signal().is_none(), "killed by a signal: {}", shown());
        assert!(code != Some(101), "panicked: {}", shown());
        assert!(allowed, "an undocumented exit status: {}", shown());
        // Trivial tasks, cooldowns of at most 10 ms, kill_grace at most 1 s: a few seconds is
        // plenty; the bound is loose so that a loaded machine never reaches it.
        assert!(
            took < Duration::from_secs(20),
            "took {took:?}, for trivial work: {}",
            shown()
        );
        if code != Some(0) {
            assert!(
                !done.stderr.trim().is_empty(),
                "a non-zero exit with nothing on stderr: {}",
                shown()
            );
        }
        assert!(
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
    }
    eprintln!(
        "fuzz binary: {cases} cases, {:.1} s, exit statuses {codes:?}",
        start.elapsed().as_secs_f64()
    );
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
