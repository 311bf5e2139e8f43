//! Prometheus metrics against the real binary: `run-chain metrics` over a RUN_ROOT with several
//! chains (successes, failures, a signal, a spawn error, a timeout, a task running now, a chain
//! stopped mid-run), checked value by value, against `history`, and by `promtool check metrics`
//! (a missing promtool fails the test: see `peer_binary`); a chain killed mid-run shows
//! no run in progress; counters that never fall when runs are pruned; the `exporter` over plain
//! HTTP (200 with the text format at `/metrics`, 404 elsewhere, a clean stop on SIGTERM and
//! SIGINT, exit 64 on a bad `--listen`; the default address 127.0.0.1:9464, in a network
//! namespace of the test's own); and a real Prometheus server (same Debian package as
//! promtool, which scripts/test unpacks without installing it) scraping the exporter and
//! answering a query.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The text exposition: a small parser, and `promtool check metrics`.
// ---------------------------------------------------------------------------------------------

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition, with the text it came from (shown when an assertion fails).
struct Exposition {
    text: String,
    samples: Vec<Sample>,
    /// family -> TYPE
    types: BTreeMap<String, String>,
    /// families with a HELP line
    helps: BTreeSet<String>,
}

/// Parses `{k="v",...}` starting after the `{`; returns the labels and the rest after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim().to_owned();
        let after = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value without '\"'")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("dangling escape".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.clone(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        s = &after[end + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        }
    }
}

fn parse(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition {
        text: text.to_owned(),
        samples: Vec::new(),
        types: BTreeMap::new(),
        helps: BTreeSet::new(),
    };
    for line in text.lines() {
        let bad = |why: &str| format!("{why} in line {line:?}");
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                return Err(bad("malformed TYPE"));
            };
            if exp.types.insert(name.into(), kind.into()).is_some() {
                return Err(bad("a second TYPE"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().ok_or_else(|| bad("HELP"))?;
            exp.helps.insert(name.into());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = line[..name_end].to_owned();
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(|e| bad(&e))?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("no value"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| bad("a value that is no number"))?;
        exp.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(exp)
}

impl Exposition {
    /// The value of the sample `name` with exactly these labels, if there is one (panics if
    /// there are several: a series must be unique).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
            .collect();
        assert!(
            found.len() <= 1,
            "series {name}{want:?} appears {} times:\n{}",
            found.len(),
            self.text
        );
        found.first().copied()
    }

    /// Like `get`, panicking (with the whole text) if the series is absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{}", self.text))
    }

    /// The family a sample belongs to (a summary's `_sum` and `_count` belong to it).
    fn family_of(&self, name: &str) -> String {
        for suffix in ["_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some("summary") {
                    return base.to_owned();
                }
            }
        }
        name.to_owned()
    }
}

/// `chain` and `task` labels.
fn ct<'a>(chain: &'a str, task: &'a str) -> [(&'a str, &'a str); 2] {
    [("chain", chain), ("task", task)]
}

/// `chain`, `task` and one more label.
fn ct3<'a>(chain: &'a str, task: &'a str, k: &'a str, v: &'a str) -> [(&'a str, &'a str); 3] {
    [("chain", chain), ("task", task), (k, v)]
}

/// `run-chain -c CONFIG --run-root RUN_ROOT metrics`: the text, or why not.
fn try_metrics(env: &TestEnv) -> Result<Exposition, String> {
    let done = env.run(&["metrics"]);
    if done.code() != Some(0) {
        return Err(format!(
            "metrics exited {:?}\nstdout:\n{}\nstderr:\n{}",
            done.status, done.stdout, done.stderr
        ));
    }
    parse(&done.stdout).map_err(|e| format!("{e}\nstdout:\n{}", done.stdout))
}

fn metrics(env: &TestEnv) -> Exposition {
    try_metrics(env).unwrap_or_else(|e| panic!("run-chain metrics: {e}"))
}

/// Where `name` (promtool or prometheus, from Debian's package `prometheus`) is: `$var` when it
/// is set (scripts/test sets it to the copy it unpacked), else that copy in cargo's target
/// directory (TARGET/peers/prometheus/usr/bin), else `name` in PATH. Found nowhere, the test
/// fails (the suite requires both programs) and says to run scripts/test.
fn peer_binary(var: &str, name: &str) -> PathBuf {
    let how = "run scripts/test, which unpacks Debian's package `prometheus` (without installing \
               it) into cargo's target directory, TARGET/peers/prometheus";
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{var}={} is not a file: {how}",
            path.display()
        );
        return path;
    }
    // bin() is TARGET/debug/run-chain, or TARGET/TRIPLE/debug/run-chain.
    let unpacked = Path::new(bin())
        .ancestors()
        .skip(2)
        .take(2)
        .map(|dir| dir.join("peers/prometheus/usr/bin").join(name));
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name));
    unpacked
        .chain(in_path)
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found ({var} unset, not in TARGET/peers/prometheus, not in PATH): {how}")
        })
}

/// Pipes `text` to `promtool check metrics`: Ok only if it exits 0 and prints nothing at all
/// (lint warnings count as failures). A missing promtool fails the test: it is a requirement of
/// the suite.
fn promtool_check(text: &str) -> Result<(), String> {
    let promtool = peer_binary("RUN_CHAIN_PROMTOOL", "promtool");
    let mut child = match Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run {} ({e}): it is required by this suite; run scripts/test",
            promtool.display()
        ),
    };
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for promtool");
    writer.join().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} check metrics: {:?}, said:\n{said}\non this input:\n{text}",
            promtool.display(),
            out.status
        ))
    }
}

fn assert_promtool_clean(text: &str) {
    if let Err(e) = promtool_check(text) {
        panic!("{e}");
    }
}

/// Collects unmet expectations about an exposition, so that a wait can report all of them.
struct Expect<'a> {
    m: &'a Exposition,
    problems: Vec<String>,
}

impl<'a> Expect<'a> {
    fn new(m: &'a Exposition) -> Self {
        Expect {
            m,
            problems: Vec::new(),
        }
    }

    fn eq(&mut self, name: &str, labels: &[(&str, &str)], want: f64) {
        match self.m.get(name, labels) {
            Some(v) if v == want => {}
            got => self
                .problems
                .push(format!("{name}{labels:?}: expected {want}, got {got:?}")),
        }
    }

    fn at_least(&mut self, name: &str, labels: &[(&str, &str)], want: f64) {
        match self.m.get(name, labels) {
            Some(v) if v >= want => {}
            got => self
                .problems
                .push(format!("{name}{labels:?}: expected >= {want}, got {got:?}")),
        }
    }

    fn present(&mut self, name: &str, labels: &[(&str, &str)]) {
        if self.m.get(name, labels).is_none() {
            self.problems.push(format!("{name}{labels:?}: missing"));
        }
    }

    fn absent(&mut self, name: &str, labels: &[(&str, &str)]) {
        if let Some(v) = self.m.get(name, labels) {
            self.problems
                .push(format!("{name}{labels:?}: expected no series, got {v}"));
        }
    }

    fn result(self) -> Result<(), String> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unmet:\n  {}\nmetrics:\n{}",
                self.problems.join("\n  "),
                self.m.text
            ))
        }
    }
}

/// Polls `run-chain metrics` until `check` finds nothing amiss; returns that exposition.
fn wait_metrics(
    env: &TestEnv,
    what: &str,
    mut check: impl FnMut(&mut Expect) -> Result<(), String>,
) -> Exposition {
    let mut last = None;
    wait_until_explained(DEADLINE, what, || {
        let m = try_metrics(env)?;
        let mut e = Expect::new(&m);
        check(&mut e)?;
        e.result()?;
        last = Some(m);
        Ok(())
    });
    last.unwrap()
}

const RESULTS: [&str; 6] = [
    "ok",
    "failed",
    "timeout",
    "signal",
    "spawn-error",
    "interrupted",
];

const QUANTILES: [&str; 5] = ["0.01", "0.1", "0.5", "0.9", "0.99"];

/// Every family of the contract, with its type.
const FAMILIES: [(&str, &str); 16] = [
    ("run_chain_build_info", "gauge"),
    ("run_chain_up", "gauge"),
    ("run_chain_runs_total", "counter"),
    ("run_chain_run_duration_seconds", "summary"),
    ("run_chain_run_latency_seconds", "summary"),
    ("run_chain_last_exit_code", "gauge"),
    ("run_chain_last_scheduled_time_seconds", "gauge"),
    ("run_chain_last_start_time_seconds", "gauge"),
    ("run_chain_last_stop_time_seconds", "gauge"),
    ("run_chain_last_success_time_seconds", "gauge"),
    ("run_chain_streak_start_time_seconds", "gauge"),
    ("run_chain_consecutive_failures", "gauge"),
    ("run_chain_running", "gauge"),
    ("run_chain_running_start_time_seconds", "gauge"),
    ("run_chain_alerts_total", "counter"),
    ("run_chain_scrape_duration_seconds", "gauge"),
];

/// Every family has HELP and its TYPE; every sample belongs to a typed family.
fn assert_families(m: &Exposition) {
    for (name, kind) in FAMILIES {
        assert_eq!(
            m.types.get(name).map(String::as_str),
            Some(kind),
            "TYPE of {name}:\n{}",
            m.text
        );
        assert!(m.helps.contains(name), "no HELP for {name}:\n{}", m.text);
    }
    for s in &m.samples {
        let family = m.family_of(&s.name);
        assert!(
            m.types.contains_key(&family),
            "sample {} has no TYPE line for its family {family}",
            s.name
        );
        assert!(
            s.name.starts_with("run_chain_"),
            "sample {} lacks the run_chain_ prefix",
            s.name
        );
    }
    assert_eq!(
        m.value(
            "run_chain_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let scrape = m.value("run_chain_scrape_duration_seconds", &[]);
    assert!(
        (0.0..30.0).contains(&scrape),
        "scrape duration {scrape} out of range"
    );
}

/// Asserts that `got` is within `tol` of `want`.
fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, expected {want} (within {tol})"
    );
}

/// Compares every series of (chain, task) with its `history`: runs by result, counts and sums
/// of the summaries, the last times, and the run in progress.
fn assert_agrees_with_history(env: &TestEnv, m: &Exposition, chain: &str, task: &str) {
    let runs = env.history(task, &["--chain", chain, "--limit", "100000"]);
    let l = ct(chain, task);
    let done: Vec<&Value> = runs.iter().filter(|r| outcome(r) != "running").collect();
    let ctx = format!("{chain}/{task}, history:\n{runs:#?}\nmetrics:\n{}", m.text);
    for result in RESULTS {
        let want = done.iter().filter(|r| outcome(r) == result).count() as f64;
        assert_eq!(
            m.value("run_chain_runs_total", &ct3(chain, task, "result", result)),
            want,
            "runs_total result={result} of {ctx}"
        );
    }
    for (family, key) in [
        ("run_chain_run_duration_seconds", "duration_seconds"),
        ("run_chain_run_latency_seconds", "latency_seconds"),
    ] {
        assert_eq!(
            m.value(&format!("{family}_count"), &l),
            done.len() as f64,
            "{family}_count against the completed runs of {ctx}"
        );
        let sum: f64 = done.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).sum();
        assert_near(
            &format!("{family}_sum of {chain}/{task}"),
            m.value(&format!("{family}_sum"), &l),
            sum,
            0.0015 * (done.len() as f64 + 1.0),
        );
        for q in QUANTILES {
            let v = m.get(family, &ct3(chain, task, "quantile", q));
            if done.is_empty() {
                assert_eq!(v, None, "{family} quantile {q} without a completed run");
            } else {
                let v = v.unwrap_or_else(|| panic!("no {family} quantile {q} of {ctx}"));
                let (lo, hi) = done
                    .iter()
                    .map(|r| r[key].as_f64().unwrap_or(0.0))
                    .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
                assert!(
                    v >= lo - 0.0015 && v <= hi + 0.0015,
                    "{family} quantile {q} = {v} outside the recent runs [{lo}, {hi}] of {ctx}"
                );
            }
        }
    }
    if let Some(last) = done.first() {
        for (family, key) in [
            ("run_chain_last_scheduled_time_seconds", "scheduled"),
            ("run_chain_last_start_time_seconds", "start"),
            ("run_chain_last_stop_time_seconds", "stop"),
        ] {
            assert_near(
                &format!("{family} of {chain}/{task}"),
                m.value(family, &l),
                time_of(last, key),
                0.0015,
            );
        }
    }
    match done.iter().find(|r| outcome(r) == "ok") {
        Some(ok) => assert_near(
            &format!("last success of {chain}/{task}"),
            m.value("run_chain_last_success_time_seconds", &l),
            time_of(ok, "stop"),
            0.0015,
        ),
        None => assert_eq!(
            m.get("run_chain_last_success_time_seconds", &l),
            None,
            "a last success time without a success: {ctx}"
        ),
    }
    let running = runs.first().filter(|r| outcome(r) == "running");
    let up = m.value("run_chain_up", &[("chain", chain)]) == 1.0;
    match running {
        Some(r) if up => {
            assert_eq!(m.value("run_chain_running", &l), 1.0, "running: {ctx}");
            assert_near(
                &format!("running start time of {chain}/{task}"),
                m.value("run_chain_running_start_time_seconds", &l),
                time_of(r, "start"),
                0.0015,
            );
        }
        _ => assert_eq!(m.value("run_chain_running", &l), 0.0, "running: {ctx}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A store with every kind of run: values, history, promtool.
// ---------------------------------------------------------------------------------------------

const MANY: &str = r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"
kill_grace = "200ms"
stop_grace = "0s"

[email]
to = ["a@b.c"]

[tasks.good]
command = 'exit 0'
[tasks.bad]
command = 'echo boom; exit 3'
[tasks.sig]
command = 'kill -9 $$'
[tasks.missing]
argv = ["/nonexistent/run-chain-test-program"]
[tasks.slow]
command = 'exec sleep 30'
timeout = "300ms"
[tasks.sleeper]
command = 'exec sleep 1000'
"#;

/// Waits until the run of `task` in `chain` is in progress (the store says so).
fn wait_task_running(env: &TestEnv, chain: &str, task: &str) {
    env.wait_history(
        task,
        &["--chain", chain],
        &format!("{task} runs in chain {chain}"),
        |runs| runs.first().is_some_and(|r| outcome(r) == "running"),
    );
}

/// The .eml files in RUN_ROOT/mail whose headers name this task and alert kind.
fn mails_for(env: &TestEnv, chain: &str, task: &str, kind: &str) -> usize {
    let Ok(rd) = fs::read_dir(env.run_root.join("mail")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|text| {
            let headers = text.split("\r\n\r\n").next().unwrap_or_default();
            let headers = headers.split("\n\n").next().unwrap_or_default();
            let has = |h: &str| headers.lines().any(|l| l.trim_end() == h);
            has(&format!("X-Run-Chain-Alert: {kind}"))
                && has(&format!("X-Run-Chain-Task: {task}"))
                && has(&format!("X-Run-Chain-Chain: {chain}"))
        })
        .count()
}

#[test]
fn metrics_of_a_store_with_every_outcome_pass_promtool_and_agree_with_history() {
    let env = TestEnv::new(MANY);
    // Chains that run through once and exit: each leaves one run, and is down.
    let mut once: Vec<Runner> = [("killed", "sig"), ("nospawn", "missing"), ("late", "slow")]
        .iter()
        .map(|(chain, task)| env.spawn(&["--once", "--name", chain, task]))
        .collect();
    // Chains that stay up: `mixed` runs good then bad and sits in bad's 1h fail cooldown;
    // `busy` runs its sleeper now.
    let mut mixed = env.spawn(&["--name", "mixed", "good", "bad"]);
    let mut busy = env.spawn(&["--name", "busy", "sleeper"]);
    // A chain stopped while its task ran: one interrupted run, and down.
    let mut halted = env.spawn(&["--name", "halted", "sleeper"]);
    for r in &mut once {
        r.assert_exit(1);
    }
    wait_task_running(&env, "halted", "sleeper");
    env.sub(&["stop", "halted", "--now"]).assert_code(0);
    halted.assert_exit(0);
    wait_task_running(&env, "busy", "sleeper");
    env.wait_history("bad", &["--chain", "mixed"], "bad failed once", |runs| {
        runs.len() == 1 && outcome(&runs[0]) == "failed"
    });
    env.wait_running(&mut mixed, "mixed");
    env.wait_running(&mut busy, "busy");

    let series = [
        ("mixed", "good"),
        ("mixed", "bad"),
        ("killed", "sig"),
        ("nospawn", "missing"),
        ("late", "slow"),
        ("busy", "sleeper"),
        ("halted", "sleeper"),
    ];
    let m = wait_metrics(&env, "the metrics show every chain's runs", |e| {
        for (chain, up) in [
            ("mixed", 1.0),
            ("busy", 1.0),
            ("killed", 0.0),
            ("nospawn", 0.0),
            ("late", 0.0),
            ("halted", 0.0),
        ] {
            e.eq("run_chain_up", &[("chain", chain)], up);
        }
        for (chain, task, result) in [
            ("mixed", "good", Some("ok")),
            ("mixed", "bad", Some("failed")),
            ("killed", "sig", Some("signal")),
            ("nospawn", "missing", Some("spawn-error")),
            ("late", "slow", Some("timeout")),
            ("busy", "sleeper", None),
            ("halted", "sleeper", Some("interrupted")),
        ] {
            for r in RESULTS {
                let want = if result == Some(r) { 1.0 } else { 0.0 };
                e.eq("run_chain_runs_total", &ct3(chain, task, "result", r), want);
            }
        }
        e.eq("run_chain_last_exit_code", &ct("killed", "sig"), 137.0);
        e.eq("run_chain_last_exit_code", &ct("nospawn", "missing"), 127.0);
        e.eq("run_chain_last_exit_code", &ct("mixed", "bad"), 3.0);
        e.eq("run_chain_last_exit_code", &ct("mixed", "good"), 0.0);
        for (chain, task) in series {
            let running = if (chain, task) == ("busy", "sleeper") {
                1.0
            } else {
                0.0
            };
            e.eq("run_chain_running", &ct(chain, task), running);
        }
        e.present(
            "run_chain_running_start_time_seconds",
            &ct("busy", "sleeper"),
        );
        for (chain, task) in [
            ("mixed", "bad"),
            ("killed", "sig"),
            ("nospawn", "missing"),
            ("late", "slow"),
        ] {
            e.eq("run_chain_consecutive_failures", &ct(chain, task), 1.0);
            e.present("run_chain_streak_start_time_seconds", &ct(chain, task));
            e.at_least(
                "run_chain_alerts_total",
                &ct3(chain, task, "kind", "first-failure"),
                1.0,
            );
        }
        e.eq("run_chain_consecutive_failures", &ct("mixed", "good"), 0.0);
        e.absent("run_chain_streak_start_time_seconds", &ct("mixed", "good"));
        e.present("run_chain_last_success_time_seconds", &ct("mixed", "good"));
        e.absent("run_chain_last_success_time_seconds", &ct("mixed", "bad"));
        for kind in ["first-failure", "new-failure", "downtime", "recovered"] {
            e.eq(
                "run_chain_alerts_total",
                &ct3("mixed", "good", "kind", kind),
                0.0,
            );
        }
        // A timeout of 300ms is the duration of that run.
        e.at_least(
            "run_chain_run_duration_seconds",
            &ct3("late", "slow", "quantile", "0.5"),
            0.29,
        );
        Ok(())
    });

    assert_promtool_clean(&m.text);
    assert_families(&m);
    // Exactly one first-failure for the failing task, and it is the one mailed (as a .eml).
    assert_eq!(
        m.value(
            "run_chain_alerts_total",
            &ct3("mixed", "bad", "kind", "first-failure")
        ),
        1.0,
        "{}",
        m.text
    );
    wait_until(
        "the first-failure mail of mixed/bad is in RUN_ROOT/mail",
        || mails_for(&env, "mixed", "bad", "first-failure") == 1,
    );
    for (chain, task) in series {
        assert_agrees_with_history(&env, &m, chain, task);
    }
    // Every chain of the store appears, and no other.
    let chains: BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|s| s.name == "run_chain_up")
        .map(|s| s.labels["chain"].as_str())
        .collect();
    assert_eq!(
        chains,
        ["busy", "halted", "killed", "late", "mixed", "nospawn"]
            .into_iter()
            .collect(),
        "{}",
        m.text
    );
    // The metrics command only looks: the chains still run, untouched.
    env.assert_running(&mut mixed, "mixed");
    env.assert_running(&mut busy, "busy");
}

/// A chain killed outright (SIGKILL, so it records nothing more) while its task ran: nothing
/// runs any more, so the task is not running and has no "running since" time.
#[test]
fn a_crashed_chain_shows_no_run_in_progress() {
    let env = TestEnv::new(MANY);
    let mut crash = env.spawn(&["--name", "crash", "sleeper"]);
    env.wait_running(&mut crash, "crash");
    wait_task_running(&env, "crash", "sleeper");
    wait_metrics(&env, "the sleeper runs", |e| {
        e.eq("run_chain_up", &[("chain", "crash")], 1.0);
        e.eq("run_chain_running", &ct("crash", "sleeper"), 1.0);
        e.present(
            "run_chain_running_start_time_seconds",
            &ct("crash", "sleeper"),
        );
        Ok(())
    });
    crash.signal(libc::SIGKILL);
    crash.wait_exit();
    let m = wait_metrics(&env, "the crashed chain is down", |e| {
        e.eq("run_chain_up", &[("chain", "crash")], 0.0);
        Ok(())
    });
    assert_promtool_clean(&m.text);
    assert_eq!(
        m.value("run_chain_running", &ct("crash", "sleeper")),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "run_chain_running_start_time_seconds",
            &ct("crash", "sleeper")
        ),
        None,
        "run_chain_running is 0 (the chain is down) but run_chain_running_start_time_seconds \
         still claims a run in progress:\n{}",
        m.text
    );
}

// ---------------------------------------------------------------------------------------------
// Pruning never lowers a counter.
// ---------------------------------------------------------------------------------------------

#[test]
fn counters_never_fall_when_runs_are_pruned() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
keep_runs_max = 3

[tasks.flip]
command = '[ $((RUN_CHAIN_RUN_ID % 2)) -eq 0 ]'
"#,
    );
    let l = ct("pruned", "flip");
    for i in 1..=8u64 {
        let want_code = if i % 2 == 0 { 0 } else { 1 };
        env.run(&["--once", "--name", "pruned", "flip"])
            .assert_code(want_code);
        let runs = env.history("flip", &["--limit", "100"]);
        let ids: Vec<u64> = runs.iter().map(run_id).collect();
        let kept: Vec<u64> = (i.saturating_sub(2).max(1)..=i).rev().collect();
        assert_eq!(ids, kept, "after run {i}, history keeps the newest 3");
        let m = metrics(&env);
        let ctx = format!("after run {i} (history {ids:?}):\n{}", m.text);
        let ok = (i / 2) as f64;
        let failed = (i - i / 2) as f64;
        assert_eq!(
            m.value(
                "run_chain_runs_total",
                &ct3("pruned", "flip", "result", "ok")
            ),
            ok,
            "ok {ctx}"
        );
        assert_eq!(
            m.value(
                "run_chain_runs_total",
                &ct3("pruned", "flip", "result", "failed")
            ),
            failed,
            "failed {ctx}"
        );
        for family in [
            "run_chain_run_duration_seconds",
            "run_chain_run_latency_seconds",
        ] {
            assert_eq!(
                m.value(&format!("{family}_count"), &l),
                i as f64,
                "{family}_count {ctx}"
            );
        }
        let last_code = if i % 2 == 0 { 0.0 } else { 1.0 };
        assert_eq!(m.value("run_chain_last_exit_code", &l), last_code, "{ctx}");
        assert_eq!(
            m.value("run_chain_consecutive_failures", &l),
            if i % 2 == 0 { 0.0 } else { 1.0 },
            "{ctx}"
        );
        if i == 8 {
            assert_promtool_clean(&m.text);
            // The sum covers all 8 runs: at least what the 3 kept ones took.
            let kept_sum: f64 = runs
                .iter()
                .map(|r| r["duration_seconds"].as_f64().unwrap())
                .sum();
            let sum = m.value("run_chain_run_duration_seconds_sum", &l);
            assert!(
                sum + 0.0015 >= kept_sum,
                "sum {sum} < kept {kept_sum}: {ctx}"
            );
            // The quantiles come from the window of recent runs (the newest 100, pruned
            // or not), which holds the runs still kept: its extremes bound theirs.
            let mut kept_d: Vec<f64> = runs
                .iter()
                .map(|r| r["duration_seconds"].as_f64().unwrap())
                .collect();
            kept_d.sort_by(f64::total_cmp);
            let q01 = m.value(
                "run_chain_run_duration_seconds",
                &ct3("pruned", "flip", "quantile", "0.01"),
            );
            let q99 = m.value(
                "run_chain_run_duration_seconds",
                &ct3("pruned", "flip", "quantile", "0.99"),
            );
            assert!(
                q01 <= kept_d[0] + 0.0015,
                "q0.01 {q01} > shortest kept {}",
                kept_d[0]
            );
            assert!(
                q99 + 0.0015 >= kept_d[kept_d.len() - 1],
                "q0.99 {q99} < longest kept {}",
                kept_d[kept_d.len() - 1]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The exporter over HTTP.
// ---------------------------------------------------------------------------------------------

/// A response to a plain HTTP/1.0 request.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET PATH HTTP/1.0` to `addr` over a std TcpStream, read to the end (HTTP/1.0: the server
/// closes the connection after the response).
fn http_get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {raw:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let proto = parts.next().unwrap_or_default();
    if !proto.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A port that was free a moment ago on 127.0.0.1. Another test's server, or a connection's
/// ephemeral port, may take it before whoever it is meant for binds it: see `start_exporter`
/// and `start_prometheus`, which try another port then.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many ports a server is tried on before a test gives up.
const PORT_TRIES: usize = 5;

/// Starts `run-chain exporter --listen 127.0.0.1:PORT` and waits until it answers. It counts as
/// answering only once it has logged that it serves (after its bind) and still runs, so that
/// whatever else may have taken the port meanwhile is never taken for it; if it could not
/// listen there, another port is tried.
fn start_exporter(env: &TestEnv) -> (Runner, SocketAddr) {
    let mut failures = Vec::new();
    for _ in 0..PORT_TRIES {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut exporter = env.spawn(&["exporter", "--listen", &addr.to_string()]);
        let mut serving = false;
        wait_until(&format!("the exporter answers at {addr}, or exits"), || {
            if exporter.try_status().is_some() {
                return true;
            }
            serving = exporter.stderr().contains("exporter: serving")
                && http_get(addr, "/metrics").is_ok();
            serving
        });
        if serving && exporter.try_status().is_none() {
            return (exporter, addr);
        }
        let stderr = exporter.stderr();
        assert!(
            stderr.contains("already in use"),
            "the exporter at {addr} exited ({:?}) for another reason than its port; stderr:\n{stderr}",
            exporter.try_status()
        );
        failures.push(format!("{addr}: {stderr}"));
    }
    panic!("the exporter could not listen on {PORT_TRIES} free ports: {failures:#?}");
}

/// Starts Prometheus (with `config`) on a free port of 127.0.0.1 and waits until it is ready
/// (`/-/ready` answers 200 while it runs); another port is tried if that one was taken.
fn start_prometheus(env: &TestEnv, program: &Path, config: &Path) -> (Runner, SocketAddr) {
    let program = program
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", program.display()));
    let mut failures = Vec::new();
    for attempt in 0..PORT_TRIES {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let storage = env.path(&format!("prometheus-data-{attempt}"));
        let mut cmd = env.command_for(program);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={addr}"));
        let mut prometheus = env.spawn_command(cmd);
        let mut ready = false;
        // Prometheus is a large program to start on a loaded machine: twice the deadline.
        wait_until_for(
            2 * DEADLINE,
            &format!("Prometheus at {addr} is ready, or exits"),
            || {
                if prometheus.try_status().is_some() {
                    return true;
                }
                ready = http_get(addr, "/-/ready").is_ok_and(|r| r.status == 200);
                ready
            },
        );
        if ready && prometheus.try_status().is_none() {
            return (prometheus, addr);
        }
        let stderr = prometheus.stderr();
        assert!(
            stderr.contains("address already in use"),
            "{program} at {addr} exited ({:?}) for another reason than its port; stderr:\n{stderr}",
            prometheus.try_status()
        );
        failures.push(format!("{addr}: {stderr}"));
    }
    panic!("Prometheus could not listen on {PORT_TRIES} free ports: {failures:#?}");
}

/// The lines of an exposition without the scrape duration (which differs between scrapes).
fn without_scrape_duration(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("run_chain_scrape_duration_seconds"))
        .collect()
}

/// Waits (within the deadline) for `runner` to exit; returns the exit code.
fn exit_code(runner: &mut Runner, what: &str) -> Option<i32> {
    wait_until(what, || runner.try_status().is_some());
    runner.code()
}

#[test]
fn exporter_serves_metrics_404s_elsewhere_and_stops_on_sigterm() {
    let env = TestEnv::new(MANY);
    env.run(&["--once", "--name", "pair", "good", "bad"])
        .assert_code(1);
    let (mut exporter, addr) = start_exporter(&env);

    let resp = http_get(addr, "/metrics").unwrap();
    assert_eq!(resp.status, 200, "{resp:#?}");
    let ctype = resp.header("Content-Type").unwrap_or_default();
    assert!(
        ctype.starts_with("text/plain"),
        "Content-Type {ctype:?}: {resp:#?}"
    );
    assert!(
        ctype.contains("version=0.0.4"),
        "Content-Type {ctype:?} lacks the text format version"
    );
    assert_promtool_clean(&resp.body);
    let m = parse(&resp.body).unwrap();
    assert_families(&m);
    assert_eq!(
        m.value("run_chain_runs_total", &ct3("pair", "good", "result", "ok")),
        1.0
    );
    assert_eq!(
        m.value(
            "run_chain_runs_total",
            &ct3("pair", "bad", "result", "failed")
        ),
        1.0
    );
    assert_eq!(m.value("run_chain_up", &[("chain", "pair")]), 0.0);
    // The same text as `run-chain metrics` (the store does not change), but for the scrape time.
    let once = env.run(&["metrics"]);
    once.assert_code(0);
    assert_eq!(
        without_scrape_duration(&resp.body),
        without_scrape_duration(&once.stdout),
        "the exporter and `metrics` disagree"
    );
    // A query string does not change the path.
    let resp = http_get(addr, "/metrics?x=1").unwrap();
    assert_eq!(resp.status, 200, "{resp:#?}");

    for path in ["/nope", "/", "/metrics/", "/metricsx"] {
        let resp = http_get(addr, path).unwrap();
        assert_eq!(resp.status, 404, "GET {path}: {resp:#?}");
    }
    // Still serving after the 404s.
    assert_eq!(http_get(addr, "/metrics").unwrap().status, 200);

    exporter.signal(libc::SIGTERM);
    let code = exit_code(&mut exporter, "the exporter exits on SIGTERM");
    assert_eq!(
        code,
        Some(0),
        "exporter exit on SIGTERM; stderr:\n{}",
        exporter.stderr()
    );
    wait_until("the port is closed", || http_get(addr, "/metrics").is_err());
}

#[test]
fn exporter_of_an_empty_run_root_stops_on_sigint_and_rejects_a_bad_listen() {
    let env = TestEnv::new(MANY);
    // No chain has run: no store yet. Still a valid exposition.
    let (mut exporter, addr) = start_exporter(&env);
    let resp = http_get(addr, "/metrics").unwrap();
    assert_eq!(resp.status, 200, "{resp:#?}");
    assert_promtool_clean(&resp.body);
    let m = parse(&resp.body).unwrap();
    assert!(
        m.samples
            .iter()
            .all(|s| s.name == "run_chain_build_info"
                || s.name == "run_chain_scrape_duration_seconds"),
        "an empty RUN_ROOT shows only the exporter's own series:\n{}",
        resp.body
    );
    // A second exporter on the same address: 75 (as a chain already running), saying why.
    let second = env.run(&["exporter", "--listen", &addr.to_string()]);
    second.assert_code(75);
    assert!(
        second.stderr.contains(&addr.to_string()) && second.stderr.contains("already in use"),
        "{}",
        second.stderr
    );
    exporter.signal(libc::SIGINT);
    let code = exit_code(&mut exporter, "the exporter exits on SIGINT");
    assert_eq!(
        code,
        Some(0),
        "exporter exit on SIGINT; stderr:\n{}",
        exporter.stderr()
    );

    for bad in ["nonsense", "127.0.0.1", "127.0.0.1:http", ":"] {
        let done = env.run(&["exporter", "--listen", bad]);
        done.assert_code(64);
        assert!(
            done.stderr.contains("--listen") || done.stderr.contains(bad),
            "the error for --listen {bad:?} should say what is wrong:\n{}",
            done.stderr
        );
    }
}

/// Without `--listen`, the exporter serves at SPEC's default address, 127.0.0.1:9464. The test
/// runs it in a network namespace of its own (`unshare --net`, as root; its loopback brought
/// up with `ip`), so the fixed port cannot clash with another test's server or with whatever
/// else the machine runs; a thread of the test joins that namespace (setns) to scrape it.
#[test]
fn exporter_listens_on_127_0_0_1_9464_by_default() {
    require_root("unshare --net: a network namespace of the test's own for the fixed port");
    let env = TestEnv::new(MANY);
    env.run(&["--once", "--name", "pair", "good", "bad"])
        .assert_code(1);
    let mut cmd = env.command_for("unshare");
    cmd.args([
        "--net",
        "--",
        "sh",
        "-c",
        r#"ip link set lo up && exec "$@""#,
        "sh",
    ])
    .arg(bin())
    .arg("-c")
    .arg(&env.config)
    .arg("--run-root")
    .arg(&env.run_root)
    .arg("exporter");
    let mut exporter = env.spawn_command(cmd);
    let pid = exporter.pid;
    // The namespace is the exporter's once `sh` has exec'd it (same PID): wait for its log.
    wait_until("the exporter says it serves, or exits", || {
        exporter.try_status().is_some() || exporter.stderr().contains("exporter: serving")
    });
    assert!(
        exporter.try_status().is_none(),
        "the exporter exited: {:?}\n{}",
        exporter.try_status(),
        exporter.stderr()
    );
    assert!(
        exporter.stderr().contains("127.0.0.1:9464"),
        "the exporter does not name the default address:\n{}",
        exporter.stderr()
    );
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).expect("open the exporter's netns");
    let scraped = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns with a descriptor we own; it moves only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let addr: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let mut last = Err(String::new());
        wait_until("the exporter answers at 127.0.0.1:9464", || {
            last = http_get(addr, "/metrics");
            last.is_ok()
        });
        last
    })
    .join()
    .expect("the scraping thread panicked")
    .unwrap();
    assert_eq!(scraped.status, 200, "{scraped:#?}");
    let m = parse(&scraped.body).unwrap();
    assert_eq!(
        m.value("run_chain_runs_total", &ct3("pair", "good", "result", "ok")),
        1.0
    );
    exporter.signal(libc::SIGTERM);
    let code = exit_code(&mut exporter, "the exporter exits on SIGTERM");
    assert_eq!(code, Some(0), "stderr:\n{}", exporter.stderr());
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus server scraping the exporter.
// ---------------------------------------------------------------------------------------------

/// Percent-encodes a query parameter.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_exporter_and_answers_a_query() {
    // From the same Debian package as promtool; the suite requires it.
    let program = peer_binary("RUN_CHAIN_PROMETHEUS", "prometheus");
    let env = TestEnv::new(MANY);
    env.run(&["--once", "--name", "pair", "good", "bad"])
        .assert_code(1);
    let (mut exporter, exporter_addr) = start_exporter(&env);

    let config = env.path("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: run-chain\n    static_configs:\n      - targets: ['{exporter_addr}']\n"
        ),
    )
    .unwrap();
    let (mut prometheus, prom_addr) = start_prometheus(&env, &program, &config);

    let query = url_encode(r#"run_chain_runs_total{chain="pair",task="good",result="ok"}"#);
    let path = format!("/api/v1/query?query={query}");
    let mut answer = Value::Null;
    wait_until_explained(
        DEADLINE,
        &format!("Prometheus at {prom_addr} returns a value for {path}"),
        || {
            if let Some(status) = prometheus.try_status() {
                panic!(
                    "{} exited ({status:?}); stderr:\n{}",
                    program.display(),
                    prometheus.stderr()
                );
            }
            if let Some(status) = exporter.try_status() {
                panic!(
                    "the exporter exited ({status:?}); stderr:\n{}",
                    exporter.stderr()
                );
            }
            let resp = http_get(prom_addr, &path)?;
            if resp.status != 200 {
                return Err(format!("{resp:#?}"));
            }
            let doc: Value = serde_json::from_str(&resp.body)
                .map_err(|e| format!("query answer is not JSON ({e}): {resp:#?}"))?;
            if doc["status"] != "success"
                || doc["data"]["result"]
                    .as_array()
                    .is_none_or(|r| r.is_empty())
            {
                return Err(format!(
                    "answer: {doc:#}\nprometheus stderr:\n{}",
                    prometheus.stderr()
                ));
            }
            answer = doc;
            Ok(())
        },
    );
    let result = &answer["data"]["result"][0];
    assert_eq!(
        result["metric"]["__name__"], "run_chain_runs_total",
        "{answer:#}"
    );
    assert_eq!(result["metric"]["chain"], "pair", "{answer:#}");
    assert_eq!(result["metric"]["task"], "good", "{answer:#}");
    assert_eq!(result["metric"]["job"], "run-chain", "{answer:#}");
    assert_eq!(
        result["metric"]["instance"],
        exporter_addr.to_string().as_str(),
        "{answer:#}"
    );
    assert_eq!(result["value"][1], "1", "{answer:#}");

    prometheus.signal(libc::SIGKILL);
    prometheus.wait_exit();
    exporter.signal(libc::SIGTERM);
    exporter.assert_exit(0);
}
