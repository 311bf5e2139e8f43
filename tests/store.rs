//! The record store (`RUN_ROOT/runs.db`) through the commands that read it, against the real
//! binary: every outcome recorded with its fields, the kept output tail, `history` (newest first,
//! limits, `--chain`), `log` (a run still going, an earlier run, an unknown one), run ids across
//! relaunches, `interrupted` runs (upgrade past stop_grace, SIGKILL mid-task), pruning that never
//! lowers a counter, and store faults that never stop the chain: a garbage file at start, a
//! database locked by another process, a full file system.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// The run ids of a history, in its order.
fn ids(runs: &[Value]) -> Vec<u64> {
    runs.iter().map(run_id).collect()
}

/// The single run of a task in a `--once` chain.
fn only_run(env: &TestEnv, task: &str) -> Value {
    let runs = env.history(task, &[]);
    assert_eq!(runs.len(), 1, "history of {task}: {runs:#?}");
    runs.into_iter().next().unwrap()
}

fn is_sigkill(v: &Value) -> bool {
    v.as_i64() == Some(9)
        || v.as_str().is_some_and(|s| {
            let s = s.to_ascii_uppercase();
            s == "SIGKILL" || s == "KILL" || s == "9"
        })
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// The times of a completed run: RFC 3339 UTC, in order, near the present, and agreeing with
/// its duration and latency.
fn check_times(run: &Value) {
    for key in ["scheduled", "start", "stop"] {
        let s = run[key].as_str().unwrap_or_else(|| panic!("{key}: {run}"));
        assert!(
            s.ends_with('Z') || s.ends_with("+00:00"),
            "{key} = {s:?} is not a UTC RFC 3339 time"
        );
    }
    let (sched, start, stop) = (
        time_of(run, "scheduled"),
        time_of(run, "start"),
        time_of(run, "stop"),
    );
    assert!(
        (start - epoch_now()).abs() < 600.0,
        "start {start} is far from now {}: not UTC? {run}",
        epoch_now()
    );
    assert!(sched <= start + 0.002, "scheduled after start: {run}");
    assert!(start <= stop + 0.002, "start after stop: {run}");
    let duration = run["duration_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("duration_seconds: {run}"));
    let latency = run["latency_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("latency_seconds: {run}"));
    assert!(duration >= 0.0 && latency >= -0.002, "{run}");
    assert!(
        (duration - (stop - start)).abs() < 0.5,
        "duration_seconds {duration} disagrees with stop - start = {}: {run}",
        stop - start
    );
    assert!(
        (latency - (start - sched)).abs() < 0.5,
        "latency_seconds {latency} disagrees with start - scheduled = {}: {run}",
        start - sched
    );
}

/// The text that task `big` prints: 100 lines of 51 bytes.
fn big_output() -> String {
    (0..100).map(|i| format!("line {i:045}\n")).collect()
}

#[test]
fn every_outcome_is_recorded_with_its_fields_output_and_instance() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
kill_grace = "200ms"

[tasks.ok]
command = 'printf "hello\nworld\n"; for f in /proc/$$/fd/*; do readlink "$f"; done > "$T/fds"; exit 0'
[tasks.fail]
command = 'echo bad; exit 3'
[tasks.sig]
command = 'kill -KILL $$'
[tasks.slow]
command = 'exec sleep 30'
timeout = "300ms"
[tasks.missing]
argv = ["/nonexistent/run-chain-test-program"]
[tasks.big]
command = 'i=0; while [ $i -lt 100 ]; do printf "line %045d\n" $i; i=$((i+1)); done'
keep_output = "1KiB"
"#,
    );
    let mut runner = env.spawn(&[
        "--once", "--name", "rec", "ok", "fail", "sig", "slow", "missing", "big",
    ]);
    runner.assert_exit(1);
    let pid = runner.pid;
    let check = env.sub(&["check"]);
    check.assert_code(0);

    let host = hostname();
    for task in ["ok", "fail", "sig", "slow", "missing", "big"] {
        let run = only_run(&env, task);
        assert_eq!(run["chain"], "rec", "{run}");
        assert_eq!(run["task"], task, "{run}");
        assert_eq!(run_id(&run), 1, "{run}");
        assert_eq!(run["host"], host.as_str(), "{run}");
        check_times(&run);
        let inst = &run["instance"];
        assert_eq!(
            inst["pid"].as_i64(),
            Some(pid as i64),
            "instance pid: {run}"
        );
        let version = inst["version"].as_str().unwrap_or_default();
        assert!(
            version.contains(env!("CARGO_PKG_VERSION")),
            "instance version {version:?} does not name {}",
            env!("CARGO_PKG_VERSION")
        );
        let digest = inst["config_digest"].as_str().unwrap_or_default();
        assert!(
            !digest.is_empty() && check.stdout.contains(digest),
            "config_digest {digest:?} is not the digest `check` prints:\n{}",
            check.stdout
        );
    }

    let ok = only_run(&env, "ok");
    assert_eq!(outcome(&ok), "ok");
    assert_eq!(ok["exit_code"].as_i64(), Some(0), "{ok}");
    assert!(ok["signal"].is_null(), "{ok}");
    assert_eq!(ok["output_bytes"].as_u64(), Some(12), "{ok}");
    assert_eq!(ok["output_cut"], false, "{ok}");
    let log = env.sub(&["log", "ok"]);
    log.assert_code(0);
    assert_eq!(log.stdout, "hello\nworld\n");
    let fds = env.read("fds");
    assert!(
        !fds.is_empty() && !fds.contains("runs.db"),
        "a task inherited a descriptor of the store:\n{fds}"
    );

    let fail = only_run(&env, "fail");
    assert_eq!(outcome(&fail), "failed");
    assert_eq!(fail["exit_code"].as_i64(), Some(3), "{fail}");
    assert!(fail["signal"].is_null(), "{fail}");
    let log = env.sub(&["log", "fail", "1"]);
    log.assert_code(0);
    assert_eq!(log.stdout, "bad\n");

    let sig = only_run(&env, "sig");
    assert_eq!(outcome(&sig), "signal");
    assert!(
        is_sigkill(&sig["signal"]),
        "signal should be SIGKILL: {sig}"
    );
    assert!(
        sig["exit_code"].is_null(),
        "a run killed by a signal has no exit code: {sig}"
    );

    let slow = only_run(&env, "slow");
    assert_eq!(outcome(&slow), "timeout", "{slow}");
    assert!(
        slow["duration_seconds"].as_f64().unwrap() >= 0.29,
        "a 300ms timeout: {slow}"
    );

    let missing = only_run(&env, "missing");
    assert_eq!(outcome(&missing), "spawn-error", "{missing}");

    // keep_output = 1KiB: the last 1024 bytes are kept, the count is of everything printed.
    let big = only_run(&env, "big");
    let text = big_output();
    assert_eq!(
        big["output_bytes"].as_u64(),
        Some(text.len() as u64),
        "{big}"
    );
    assert_eq!(big["output_cut"], true, "{big}");
    let log = env.sub(&["log", "big"]);
    log.assert_code(0);
    assert_eq!(log.stdout, text[text.len() - 1024..], "the kept tail");

    // The store: WAL, mode 0600 (the database and its companions).
    assert_eq!(
        env.sql("PRAGMA journal_mode"),
        vec![vec![Value::from("wal")]]
    );
    let mut seen = 0;
    for entry in fs::read_dir(&env.run_root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("runs.db") {
            seen += 1;
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        }
    }
    assert!(seen >= 1, "no runs.db in RUN_ROOT");
}

#[test]
fn history_is_newest_first_with_a_default_limit_of_20_and_knows_its_tasks() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; [ "$RUN_CHAIN_RUN_ID" -lt 25 ] || exec sleep 1000'
success_cooldown = "0s"
[tasks.b]
command = 'true'
"#,
    );
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 25);
    let runs = env.wait_history("a", &[], "history shows run 25 running", |runs| {
        runs.first().map(run_id) == Some(25)
    });
    assert_eq!(
        ids(&runs),
        (6..=25).rev().collect::<Vec<_>>(),
        "default limit 20"
    );
    let newest = &runs[0];
    assert_eq!(outcome(newest), "running", "{newest}");
    assert!(newest["stop"].is_null(), "{newest}");
    assert!(newest["duration_seconds"].is_null(), "{newest}");
    assert!(newest["exit_code"].is_null(), "{newest}");
    time_of(newest, "start");
    for run in &runs[1..] {
        assert_eq!(outcome(run), "ok", "{run}");
        check_times(run);
    }
    // Newest first also by time.
    for w in runs.windows(2) {
        assert!(time_of(&w[0], "start") >= time_of(&w[1], "start"));
    }

    assert_eq!(ids(&env.history("a", &["--limit", "3"])), vec![25, 24, 23]);
    assert_eq!(env.history("a", &["--limit", "100"]).len(), 25);
    assert_eq!(
        ids(&env.history("a", &["--chain", "a", "--limit", "2"])),
        vec![25, 24]
    );

    // A task of the config that never ran: an empty array.
    assert_eq!(env.history("b", &[]), Vec::<Value>::new());
    // A task that is neither in the config nor in the store: usage error.
    let nosuch = env.sub(&["history", "nosuch", "--json"]);
    nosuch.assert_code(64);
    assert!(
        !nosuch.stderr.trim().is_empty(),
        "exit 64 without a message"
    );

    // The table for people.
    let table = env.sub(&["history", "a", "--limit", "3"]);
    table.assert_code(0);
    assert!(
        table.stdout.contains("24") && table.stdout.contains("running"),
        "history table:\n{}",
        table.stdout
    );
    env.assert_running_on_device(&mut runner, "a");
}

#[test]
fn history_and_log_take_a_chain() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "$RUN_CHAIN_NAME $RUN_CHAIN_RUN_ID"'
[tasks.b]
command = 'true'
"#,
    );
    env.run(&["--once", "--name", "one", "a"]).assert_code(0);
    env.run(&["--once", "--name", "two", "a"]).assert_code(0);
    env.run(&["--once", "--name", "two", "a"]).assert_code(0);

    let all = env.history("a", &[]);
    let mut pairs: Vec<(String, u64)> = all
        .iter()
        .map(|r| (r["chain"].as_str().unwrap().to_owned(), run_id(r)))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![("one".into(), 1), ("two".into(), 1), ("two".into(), 2)],
        "{all:#?}"
    );
    let two = env.history("a", &["--chain", "two"]);
    assert_eq!(ids(&two), vec![2, 1]);
    assert!(two.iter().all(|r| r["chain"] == "two"), "{two:#?}");
    let one = env.history("a", &["--chain", "one"]);
    assert_eq!(ids(&one), vec![1]);
    assert_eq!(one[0]["chain"], "one");

    let log = |args: &[&str]| {
        let done = env.sub(args);
        done.assert_code(0);
        done.stdout
    };
    assert_eq!(log(&["log", "a", "--chain", "one"]), "one 1\n");
    assert_eq!(log(&["log", "a", "--chain", "two"]), "two 2\n");
    assert_eq!(log(&["log", "a", "1", "--chain", "two"]), "two 1\n");

    // A chain with no run of the task (mistyped): 64, naming it and the chains that have it.
    for (args, elsewhere) in [
        (
            &["history", "a", "--chain", "tow"][..],
            "it has runs in chains one, two",
        ),
        (
            &["history", "a", "--chain", "tow", "--json"],
            "it has runs in chains one, two",
        ),
        (
            &["log", "a", "--chain", "tow"],
            "it has runs in chains one, two",
        ),
        (
            &["log", "a", "1", "--chain", "tow"],
            "it is recorded in chains one, two",
        ),
        (
            &["log", "a", "2", "--chain", "one"],
            "it is recorded in chain two",
        ),
        (&["log", "a", "3", "--chain", "two"], ""),
    ] {
        let done = env.sub(args);
        done.assert_code(64);
        assert_eq!(done.stdout, "", "{args:?}");
        let chain = args[args.iter().position(|a| *a == "--chain").unwrap() + 1];
        assert!(
            done.stderr.contains(&format!("chain {chain:?}")) && done.stderr.contains(elsewhere),
            "{args:?}: {}",
            done.stderr
        );
        assert_eq!(
            done.stderr.contains("; it "),
            !elsewhere.is_empty(),
            "{}",
            done.stderr
        );
    }
    // A task of the config that has run nowhere yet: an empty history, with --chain or not.
    for extra in [&[][..], &["--chain", "two"]] {
        assert_eq!(env.history("b", extra), Vec::<Value>::new(), "{extra:?}");
    }
}

#[test]
fn log_shows_what_a_running_run_printed_so_far_and_any_earlier_run() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "first $RUN_CHAIN_RUN_ID"; while [ ! -e "$T/go$RUN_CHAIN_RUN_ID" ]; do sleep 0.05; done; echo "second $RUN_CHAIN_RUN_ID"'
success_cooldown = "0s"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    let log_now = |args: &[&str]| {
        let done = env.sub(args);
        match done.code() {
            Some(0) => Ok(done.stdout),
            _ => Err(format!("{done:?}")),
        }
    };
    // Flushed to the store (about once a second) while it runs; the task waits for the test, so
    // only a flush while it runs can show its output. (The full deadline: a loaded machine.)
    wait_until_explained(
        DEADLINE,
        "`log a` shows what the running run 1 printed",
        || match log_now(&["log", "a"]) {
            Ok(s) if s == "first 1\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let running = env.history("a", &[]);
    assert_eq!(ids(&running), vec![1]);
    assert_eq!(outcome(&running[0]), "running");

    fs::write(env.path("go1"), "").unwrap();
    wait_until_explained(
        DEADLINE,
        "`log a` shows what the running run 2 printed",
        || match log_now(&["log", "a"]) {
            Ok(s) if s == "first 2\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(
        log_now(&["log", "a", "1"]).unwrap(),
        "first 1\nsecond 1\n",
        "the whole output of the finished run 1"
    );
    let unknown = env.sub(&["log", "a", "7"]);
    unknown.assert_code(64);
    assert!(
        !unknown.stderr.trim().is_empty(),
        "exit 64 without a message"
    );
    env.assert_running_on_device(&mut runner, "a");
}

#[test]
fn run_ids_increase_across_relaunches_and_cut_runs_are_recorded_interrupted() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo $$ > "$T/a$RUN_CHAIN_RUN_ID.pid"; exec sleep 1000'
stop_grace = "300ms"
kill_grace = "200ms"
success_cooldown = "0s"
fail_cooldown = "1h"
"#,
    );
    let mut first = env.spawn(&["a"]);
    let task1 = wait_pid_file(&env.path("a1.pid"));
    let runs = env.wait_history("a", &[], "run 1 is recorded running", |r| {
        ids(r) == [1] && outcome(&r[0]) == "running"
    });
    assert!(runs[0]["stop"].is_null());

    // An upgrade past stop_grace cuts run 1: interrupted.
    let mut second = env.spawn(&["a"]);
    first.assert_exit(0);
    assert!(!is_running(task1));
    let task2 = wait_pid_file(&env.path("a2.pid"));
    let runs = env.wait_history("a", &[], "run 1 interrupted, run 2 running", |r| {
        ids(r) == [2, 1] && outcome(&r[0]) == "running" && outcome(&r[1]) == "interrupted"
    });
    assert_eq!(runs[1]["instance"]["pid"].as_i64(), Some(first.pid as i64));
    assert_eq!(runs[0]["instance"]["pid"].as_i64(), Some(second.pid as i64));
    time_of(&runs[1], "stop");
    assert!(
        runs[1]["duration_seconds"].as_f64().unwrap() >= 0.29,
        "run 1 went on for its stop_grace of 300ms: {}",
        runs[1]
    );

    // run-chain SIGKILLed mid-task: the next launch closes the open run as interrupted.
    second.signal(libc::SIGKILL);
    second.wait_exit();
    wait_until("the guardian ends run 2", || !is_running(task2));
    let mut third = env.spawn(&["a"]);
    wait_pid_file(&env.path("a3.pid"));
    let runs = env.wait_history("a", &[], "run 2 interrupted, run 3 running", |r| {
        ids(r) == [3, 2, 1]
            && outcome(&r[0]) == "running"
            && outcome(&r[1]) == "interrupted"
            && outcome(&r[2]) == "interrupted"
    });
    time_of(&runs[1], "stop");
    assert_eq!(runs[0]["instance"]["pid"].as_i64(), Some(third.pid as i64));

    // Interrupted is not a failure.
    let status = env.status_json();
    let chain = chain_entry(&status, "a").unwrap_or_else(|| panic!("{status:#}"));
    let task = task_entry(chain, "a").unwrap_or_else(|| panic!("{chain:#}"));
    assert_eq!(task["failures"].as_u64(), Some(0), "{task:#}");
    assert!(task["streak"].is_null(), "{task:#}");
    env.assert_running_on_device(&mut third, "a");
}

#[test]
fn pruning_keeps_the_newest_runs_and_counters_never_fall() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
keep_runs_max = 5
[tasks.gate]
command = '[ "$(wc -l < "$T/out")" -lt 12 ] || exec sleep 1000'
"#,
    );
    let mut runner = env.spawn(&["a", "gate"]);
    env.wait_lines_while(&mut runner, "out", 12);
    let runs = env.wait_history(
        "a",
        &["--limit", "100"],
        "only the 5 newest runs are kept",
        |r| ids(r) == [12, 11, 10, 9, 8],
    );
    assert!(runs.iter().all(|r| outcome(r) == "ok"), "{runs:#?}");

    let chain = env.wait_chain_status("a_gate", "status counts 12 runs of a", |c| {
        task_entry(c, "a").is_some_and(|t| t["runs"].as_u64() == Some(12))
    });
    let task = task_entry(&chain, "a").unwrap();
    assert_eq!(task["ok"].as_u64(), Some(12), "{task:#}");
    assert_eq!(task["failures"].as_u64(), Some(0), "{task:#}");
    assert_eq!(run_id(&task["last"]), 12, "{task:#}");
    assert_eq!(env.lines("out").len(), 12);
    env.assert_running_on_device(&mut runner, "a_gate");
}

/// CHAIN.state lost (removed, or unreadable): the run ids go on from what the store knows, so
/// that no id is given twice and no stored run is replaced by a new one of the same id; with
/// the older runs pruned, from the series' counter.
#[test]
fn run_ids_go_on_from_the_store_when_the_chain_state_is_lost() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
keep_runs_max = 2
"#,
    );
    let once = |env: &TestEnv| {
        env.run(&["--name", "c", "--once", "a", "b"]).assert_code(0);
    };
    for _ in 0..3 {
        once(&env);
    }
    let state = env.run_root.join("c.state");
    assert!(state.exists());
    fs::remove_file(&state).unwrap();
    once(&env);
    fs::write(&state, "not a state file\n").unwrap();
    once(&env);
    let want: Vec<String> = (1..=5)
        .flat_map(|i| [format!("a {i}"), format!("b {i}")])
        .collect();
    assert_eq!(env.lines("out"), want, "the ids each run was given");
    let a = env.history("a", &["--chain", "c"]);
    assert_eq!(ids(&a), [5, 4, 3, 2, 1], "{a:#?}");
    assert!(a.iter().all(|r| outcome(r) == "ok"), "{a:#?}");
    let b = env.history("b", &["--chain", "c"]);
    assert_eq!(ids(&b), [5, 4], "{b:#?}");
    let chain = env.wait_chain_status("c", "status counts 5 runs of each task", |c| {
        ["a", "b"]
            .iter()
            .all(|t| task_entry(c, t).is_some_and(|t| t["runs"].as_u64() == Some(5)))
    });
    assert_eq!(run_id(&task_entry(&chain, "b").unwrap()["last"]), 5);
}

// ---- store faults: the chain keeps its schedule ----

const TICKING: &str = r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "100ms"
fail_cooldown = "100ms"
"#;

fn ticking() -> String {
    TICKING.replace("{STAMP}", STAMP)
}

/// The longest a 100ms-cooldown chain may take between two runs while its store fails. A run
/// takes milliseconds, and a write the store refuses costs at most its busy timeout (250 ms);
/// the bound leaves room for a loaded machine, and stays below the 5 s that a write waiting out
/// SQLite's (rusqlite's) default busy timeout would take.
/// Starts a python3 process that holds BEGIN EXCLUSIVE on the store until `$T/release`
/// exists (then it rolls back, closes and writes `$T/released`); returns once it holds it.
/// Runs a Python script as another process on the store: `argv[1]` is runs.db, then each of
/// `files` as a path in the test's directory.
fn python_on_the_store(env: &TestEnv, script: &str, files: &[&str]) -> Runner {
    env.spawn_command({
        let mut c = env.command_for("python3");
        c.arg("-c").arg(script).arg(env.db_path());
        for f in files {
            c.arg(env.path(f));
        }
        c
    })
}

fn lock_the_store(env: &TestEnv) -> Runner {
    const LOCKER: &str = r#"
import os, sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
with open(sys.argv[2], "w") as f:
    f.write("locked\n")
while not os.path.exists(sys.argv[3]):
    time.sleep(0.02)
con.execute("ROLLBACK")
con.close()
with open(sys.argv[4], "w") as f:
    f.write("released\n")
"#;
    let mut locker = python_on_the_store(env, LOCKER, &["locked", "release", "released"]);
    locker.wait_for("python3 holds BEGIN EXCLUSIVE on runs.db", || {
        env.path("locked").exists()
    });
    locker
}

const MAX_GAP: f64 = 4.0;

/// The run ids a task wrote to `out` ("a ID ..." lines).
fn out_ids(env: &TestEnv) -> Vec<u64> {
    env.lines("out")
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

/// Waits until history holds every run the task wrote to `out` (up to `upto` lines), with run
/// ids contiguous from 1 and every run but the newest completed.
fn wait_store_caught_up(env: &TestEnv, upto: usize) -> Vec<Value> {
    let want: BTreeSet<u64> = out_ids(env)[..upto].iter().copied().collect();
    assert_eq!(
        want,
        (1..=upto as u64).collect(),
        "the task's own record of its run ids"
    );
    let runs = env.wait_history(
        "a",
        &["--limit", "100000"],
        &format!("history holds all of runs 1..={upto}"),
        |runs| {
            let have: BTreeSet<u64> = ids(runs).into_iter().collect();
            want.is_subset(&have)
                && runs.iter().skip(1).all(|r| outcome(r) == "ok")
                && runs
                    .first()
                    .is_some_and(|r| matches!(outcome(r), "ok" | "running"))
        },
    );
    let got = ids(&runs);
    let n = got.len() as u64;
    assert_eq!(
        got,
        (1..=n).rev().collect::<Vec<_>>(),
        "run ids are not contiguous"
    );
    runs
}

/// Problems (error or warn lines) that `runner` logged after byte `from` of its stderr.
fn problems_since(runner: &Runner, from: usize) -> Vec<String> {
    let text = runner.stderr();
    TestEnv::logged_problems(text.get(from..).unwrap_or_default())
}

fn about_the_store(line: &str) -> bool {
    let l = line.to_lowercase();
    ["runs.db", "store", "database", "sqlite"]
        .iter()
        .any(|w| l.contains(w))
}

#[test]
fn a_garbage_store_at_start_is_moved_aside_and_a_fresh_one_records_runs() {
    let env = TestEnv::new(&ticking());
    env.make_run_root();
    let garbage = "this is not an SQLite database, just text\n".repeat(200);
    fs::write(env.db_path(), &garbage).unwrap();
    fs::set_permissions(env.db_path(), fs::Permissions::from_mode(0o600)).unwrap();

    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 4);
    wait_store_caught_up(&env, 3);
    env.assert_running_on_device(&mut runner, "a");

    let aside: Vec<_> = fs::read_dir(&env.run_root)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("runs.db.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "expected one runs.db.corrupt-* file");
    assert_eq!(
        fs::read_to_string(aside[0].path()).unwrap(),
        garbage,
        "the garbage file was not moved aside intact"
    );
    let warned = TestEnv::logged_problems(&runner.stderr());
    assert!(
        warned.iter().any(|l| l.to_lowercase().contains("corrupt")),
        "no warning about the corrupt store:\n{}",
        runner.stderr()
    );
}

#[test]
fn a_store_locked_by_another_process_never_stalls_the_chain() {
    let env = TestEnv::new(&ticking());
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 2);
    wait_store_caught_up(&env, 2);

    let mut locker = lock_the_store(&env);
    let stderr_from = runner.stderr().len();
    let locked_at = Instant::now();
    let n0 = env.lines("out").len();
    // Hold the lock for at least 4 s and 15 runs of the task.
    runner.wait_for("15 more runs while the store is locked", || {
        env.lines("out").len() >= n0 + 15 && locked_at.elapsed() >= Duration::from_secs(4)
    });
    assert!(
        locker.try_status().is_none(),
        "the locker exited early: {}",
        locker.stderr()
    );
    let during = stamped(&env.lines("out")[n0..]);
    let max_gap = during
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max);
    assert!(
        max_gap < MAX_GAP,
        "with a 100ms cooldown the task waited {max_gap:.2}s between runs while the store was locked"
    );

    fs::write(env.path("release"), "").unwrap();
    locker.wait_for("python3 releases the lock", || {
        env.path("released").exists()
    });
    locker.assert_exit(0);
    let problems = problems_since(&runner, stderr_from);
    assert!(
        !problems.is_empty() && problems.iter().any(|l| about_the_store(l)),
        "no error about the locked store was logged:\n{}",
        runner.stderr()
    );
    assert!(
        problems.len() <= 2,
        "one clear error expected, not one per run ({} runs during the lock):\n{}",
        env.lines("out").len() - n0,
        problems.join("\n")
    );

    let n1 = env.lines("out").len();
    env.wait_lines_while(&mut runner, "out", n1 + 2);
    wait_store_caught_up(&env, n1 + 1);
    env.assert_running_on_device(&mut runner, "a");
}

#[test]
fn a_full_file_system_never_stalls_the_chain_and_pending_records_are_written_after() {
    require_root("mounts a small tmpfs as RUN_ROOT to fill it");
    let env = TestEnv::new(
        &r#"
[tasks.a]
command = 'head -c 16384 /dev/zero | tr "\0" x; echo "a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "100ms"
fail_cooldown = "100ms"
keep_output = "16KiB"
"#
        .replace("{STAMP}", STAMP),
    );
    env.make_run_root();
    let _tmpfs = Tmpfs::mount(&env.run_root, "8m");
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 2);
    wait_store_caught_up(&env, 2);

    let stderr_from = runner.stderr().len();
    let filler = env.run_root.join("filler");
    let filled = fill_file_system(&filler);
    assert!(filled > 0);
    let n0 = env.lines("out").len();
    runner.wait_for("10 more runs while the file system is full", || {
        env.lines("out").len() >= n0 + 10
    });
    let during = stamped(&env.lines("out")[n0..]);
    let max_gap = during
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max);
    assert!(
        max_gap < MAX_GAP,
        "with a 100ms cooldown the task waited {max_gap:.2}s between runs while the disk was full"
    );
    let problems = problems_since(&runner, stderr_from);
    assert!(
        problems.iter().any(|l| about_the_store(l)),
        "no error about the store on a full disk was logged:\n{}",
        runner.stderr()
    );
    assert!(
        problems.len() <= 3,
        "one clear error expected, not one per run ({} runs while full):\n{}",
        env.lines("out").len() - n0,
        problems.join("\n")
    );
    let full_run = out_ids(&env)[n0 + 5];

    fs::remove_file(&filler).unwrap();
    let n1 = env.lines("out").len();
    env.wait_lines_while(&mut runner, "out", n1 + 2);
    let runs = wait_store_caught_up(&env, n1 + 1);
    for run in runs.iter().filter(|r| outcome(r) == "ok") {
        assert_eq!(run["output_bytes"].as_u64(), Some(16384), "{run}");
    }
    let log = env.sub(&["log", "a", &full_run.to_string()]);
    log.assert_code(0);
    assert!(
        log.stdout.len() == 16384 && log.stdout.bytes().all(|b| b == b'x'),
        "the output of run {full_run}, recorded while the disk was full, was not kept ({} bytes)",
        log.stdout.len()
    );
    env.assert_running_on_device(&mut runner, "a");
}

/// No connection checkpoints the WAL when it closes (that made every exit slow), so the
/// WAL must stay bounded by other means: many short instances (`--once` from cron), each
/// far from the commit count that triggers a checkpoint, must not let it grow for ever.
/// 300 instances of two runs each write about 10 MB of WAL frames (600 with
/// RUN_CHAIN_LONG, 20 MB); a chain that opens the store when no other process has it
/// open cuts a WAL over 2 MiB back to nothing, so it must end at 5 MiB or less.
#[test]
fn the_wal_stays_bounded_across_many_short_instances() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = 'printf "%0200d\n" 0'
[tasks.b]
command = 'printf "%0200d\n" 0'
"#,
    );
    let instances = scaled(300, 600);
    for _ in 0..instances {
        env.run(&["--once", "a", "b"]).assert_code(0);
    }
    let wal = env.run_root.join("runs.db-wal");
    let wal_bytes = fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let runs = env.sub(&["history", "a", "--json", "--limit", "100000"]);
    runs.assert_code(0);
    assert_eq!(
        runs.json().as_array().map(|a| a.len()),
        Some(instances),
        "every run recorded"
    );
    assert!(
        wal_bytes <= 5 << 20,
        "the WAL grew to {wal_bytes} bytes over {instances} short instances"
    );
}

/// In a cooldown a chain writes its run's records on its own thread when the write can be
/// made at once, and hands them to its writer thread when another process holds the store
/// (which waits and retries): either way every run is recorded once, in order, nothing
/// lost. Six chains with 100 ms cooldowns share one RUN_ROOT while a python3 process takes
/// the store's write lock for spells of a few ms (so that both ways are taken), until each
/// has run 30 times; after a stop, each chain's history is its run ids 1..=N, all ok, where
/// N is how many times its task ran, and `status` counts N runs.
#[test]
fn chains_sharing_a_store_record_every_run_once_while_another_process_takes_its_lock() {
    let env = TestEnv::new(
        r#"
[tasks.t]
command = 'echo "$RUN_CHAIN_NAME $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "100ms"
fail_cooldown = "100ms"
"#,
    );
    const CHAINS: usize = 6;
    const RUNS: usize = 30;
    let names: Vec<String> = (1..=CHAINS).map(|i| format!("c{i}")).collect();
    let mut runners: Vec<Runner> = names
        .iter()
        .map(|n| env.spawn(&["--name", n, "t"]))
        .collect();
    // The store exists once the first run of each chain is in it.
    for n in &names {
        env.wait_history("t", &["--chain", n], &format!("{n} recorded a run"), |r| {
            !r.is_empty()
        });
    }
    const LOCKER: &str = r#"
import os, random, sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
spells = 0
while not os.path.exists(sys.argv[2]):
    con.execute("BEGIN IMMEDIATE")
    time.sleep(random.uniform(0.001, 0.008))
    con.execute("COMMIT")
    spells += 1
    time.sleep(random.uniform(0.001, 0.008))
with open(sys.argv[3], "w") as f:
    f.write(f"{spells}\n")
"#;
    let mut locker = python_on_the_store(&env, LOCKER, &["stop-locking", "spells"]);
    let per_chain = |lines: &[String]| -> Vec<Vec<u64>> {
        names
            .iter()
            .map(|n| {
                lines
                    .iter()
                    .filter_map(|l| l.split_once(' '))
                    .filter(|(c, _)| c == n)
                    .map(|(_, id)| id.trim().parse::<u64>().expect("a run id"))
                    .collect()
            })
            .collect()
    };
    wait_until_for(
        Duration::from_secs(120),
        &format!("each of {CHAINS} chains ran {RUNS} times"),
        || {
            per_chain(&env.lines("out"))
                .iter()
                .all(|ids| ids.len() >= RUNS)
        },
    );
    fs::write(env.path("stop-locking"), "").unwrap();
    locker.wait_for("python3 stops taking the lock", || {
        env.path("spells").exists()
    });
    locker.assert_exit(0);
    let spells: u64 = env.read("spells").trim().parse().expect("a count");
    assert!(spells >= 20, "the lock was taken only {spells} times");
    for r in &runners {
        r.signal(libc::SIGTERM);
    }
    for r in &mut runners {
        r.assert_exit(0);
    }
    let ran = per_chain(&env.lines("out"));
    let status = env.sub(&["status", "--json"]);
    status.assert_code(0);
    let status = status.json();
    for (n, ids_ran) in names.iter().zip(&ran) {
        let want: Vec<u64> = (1..=ids_ran.len() as u64).collect();
        let mut sorted = ids_ran.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, want, "{n}: the task's own record of its run ids");
        let runs = env.history("t", &["--chain", n, "--limit", "100000"]);
        let mut recorded = ids(&runs);
        recorded.reverse();
        assert_eq!(recorded, want, "{n}: run ids in history (oldest first)");
        assert!(
            runs.iter().all(|r| outcome(r) == "ok"),
            "{n}: a run not ok: {runs:#?}"
        );
        let counted = status["chains"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["chain"] == n.as_str()))
            .and_then(|c| c["tasks"].as_array())
            .and_then(|ts| ts.iter().find(|t| t["task"] == "t"))
            .and_then(|t| t["runs"].as_u64());
        assert_eq!(counted, Some(want.len() as u64), "{n}: runs in status");
    }
}

/// A chain stopped while another process holds the store's write lock says once, at its
/// exit, how many records it could not write: the last try is made once, on the writer
/// thread, before the chain releases its lock (it was made a second time, on the main
/// thread, as the chain's state was dropped).
#[test]
fn a_chain_stopped_while_the_store_is_locked_reports_its_unwritten_records_once() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "100ms"
fail_cooldown = "100ms"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 2);
    env.wait_history("a", &[], "a run recorded", |r| !r.is_empty());
    let mut locker = lock_the_store(&env);
    let n0 = env.lines("out").len();
    env.wait_lines_while(&mut runner, "out", n0 + 3);
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    fs::write(env.path("release"), "").unwrap();
    locker.assert_exit(0);
    let stderr = runner.stderr();
    let reports = stderr
        .lines()
        .filter(|l| l.contains("not written to the store"))
        .count();
    assert_eq!(
        reports, 1,
        "the unwritten records were to be reported once:\n{stderr}"
    );
}
