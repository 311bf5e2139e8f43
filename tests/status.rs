//! `status`, against the real binary: every chain in RUN_ROOT, up or down as the lock decides
//! (stopped, SIGKILLed), what it does now (running since, cooling down until), per task the
//! last outcome, last success and the failure streak (carried across a relaunch); it works
//! while chains write and never takes a chain's lock.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

fn flock_n_succeeds(path: &std::path::Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(path)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

fn chain_of(doc: &Value, chain: &str) -> Value {
    chain_entry(doc, chain)
        .unwrap_or_else(|| panic!("no chain {chain} in status: {doc:#}"))
        .clone()
}

fn task_of(chain: &Value, task: &str) -> Value {
    task_entry(chain, task)
        .unwrap_or_else(|| panic!("no task {task} in: {chain:#}"))
        .clone()
}

#[test]
fn status_shows_every_chain_up_or_down_and_what_it_does_now() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
stop_grace = "1h"
kill_grace = "200ms"
[tasks.busy]
command = 'echo $$ > "$T/busy.pid"; exec sleep 1000'
[tasks.idle]
command = 'echo idle >> "$T/idle"'
[tasks.gone]
command = 'echo gone >> "$T/gone"'
[tasks.dead]
command = 'echo $$ > "$T/dead.pid"; exec sleep 1000'
"#,
    );
    let mut busy = env.spawn(&["busy"]);
    let mut idle = env.spawn(&["idle"]);
    let mut gone = env.spawn(&["gone"]);
    let mut dead = env.spawn(&["dead"]);
    wait_pid_file(&env.path("busy.pid"));
    env.wait_lines_while(&mut idle, "idle", 1);
    env.wait_lines_while(&mut gone, "gone", 1);
    let dead_task = wait_pid_file(&env.path("dead.pid"));
    env.wait_running(&mut dead, "dead");
    env.wait_chain_status("gone", "gone is recorded cooling down", |c| {
        c["now"]["state"] == "cooldown"
    });
    gone.signal(libc::SIGTERM);
    gone.assert_exit(0);
    env.wait_history("dead", &[], "dead's run is recorded running", |r| {
        r.len() == 1 && outcome(&r[0]) == "running"
    });
    dead.signal(libc::SIGKILL);
    dead.wait_exit();
    wait_until("the guardian ends dead's task", || !is_running(dead_task));
    let idle_entry = env.wait_chain_status("idle", "idle is recorded cooling down", |c| {
        c["now"]["state"] == "cooldown"
    });
    let busy_entry = env.wait_chain_status("busy", "busy is recorded running", |c| {
        c["now"]["state"] == "running"
    });

    let doc = env.status_json();
    let root = doc["run_root"]
        .as_str()
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(
        fs::canonicalize(root).unwrap(),
        fs::canonicalize(&env.run_root).unwrap()
    );
    let mut names: Vec<&str> = doc["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chain"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["busy", "dead", "gone", "idle"]);

    // busy: up, running its task since the run's recorded start.
    assert_eq!(busy_entry["up"], true, "{busy_entry:#}");
    assert_eq!(busy_entry["pid"].as_i64(), Some(busy.pid as i64));
    let now = &busy_entry["now"];
    assert_eq!(now["task"], "busy", "{now:#}");
    assert_eq!(now["run_id"].as_u64(), Some(1), "{now:#}");
    let runs = env.wait_history("busy", &[], "busy's run 1 is recorded", |r| r.len() == 1);
    let run = &runs[0];
    assert!(
        (time_of(now, "since") - time_of(run, "start")).abs() < 1.0,
        "running since {} but the run started {}",
        now["since"],
        run["start"]
    );
    task_of(&busy_entry, "busy");

    // idle: up, cooling down for about an hour; its one run succeeded.
    assert_eq!(idle_entry["up"], true, "{idle_entry:#}");
    assert_eq!(idle_entry["pid"].as_i64(), Some(idle.pid as i64));
    let left = time_of(&idle_entry["now"], "until") - epoch_now();
    assert!(
        (3000.0..3700.0).contains(&left),
        "cooling down until {} ({left:.0}s from now), expected about 1h",
        idle_entry["now"]["until"]
    );
    let t = task_of(&idle_entry, "idle");
    assert_eq!(t["runs"].as_u64(), Some(1), "{t:#}");
    assert_eq!(t["ok"].as_u64(), Some(1), "{t:#}");
    assert_eq!(t["failures"].as_u64(), Some(0), "{t:#}");
    assert_eq!(t["last"]["run_id"].as_u64(), Some(1), "{t:#}");
    assert_eq!(t["last"]["outcome"], "ok", "{t:#}");
    assert_eq!(t["last"]["exit_code"].as_i64(), Some(0), "{t:#}");
    let last_stop = time_of(&t["last"], "stop");
    let last_success = time_of(&t, "last_success");
    assert!(
        (last_success - last_stop).abs() < 1.0
            || (last_success - time_of(&t["last"], "start")).abs() < 1.0,
        "last_success is not the time of the one successful run: {t:#}"
    );
    assert!(t["streak"].is_null(), "{t:#}");

    // gone (stopped) and dead (SIGKILLed, its run left open): down.
    for name in ["gone", "dead"] {
        let c = chain_of(&doc, name);
        assert_eq!(c["up"], false, "{c:#}");
        assert_eq!(c["now"]["state"], "down", "{c:#}");
    }
    assert_eq!(
        task_of(&chain_of(&doc, "gone"), "gone")["last"]["outcome"],
        "ok"
    );

    // status never took a lock.
    assert!(
        !flock_n_succeeds(&env.pidfile("busy")),
        "busy's lock is free after status"
    );
    env.assert_running_on_device(&mut busy, "busy");
    env.assert_running_on_device(&mut idle, "idle");

    // The table for people.
    let table = env.sub(&["status"]);
    table.assert_code(0);
    for name in ["busy", "dead", "gone", "idle"] {
        assert!(
            table.stdout.contains(name),
            "{name} missing from:\n{}",
            table.stdout
        );
    }
}

#[test]
fn status_of_an_empty_run_root_lists_no_chains() {
    let env = TestEnv::new("[tasks.a]\ncommand = 'true'\n");
    env.make_run_root();
    let doc = env.status_json();
    assert_eq!(doc["chains"], Value::Array(vec![]), "{doc:#}");
    env.sub(&["status"]).assert_code(0);
}

/// The task's exit code comes from `$T/rc`; each cooldown is 1h and the test kicks it.
#[test]
fn the_failure_streak_counts_failures_since_the_last_success_across_a_relaunch() {
    let env = TestEnv::new(
        r#"
[tasks.x]
command = 'echo "x $RUN_CHAIN_RUN_ID" >> "$T/out"; exit $(cat "$T/rc")'
success_cooldown = "1h"
fail_cooldown = "1h"
"#,
    );
    let set_rc = |rc: i32| fs::write(env.path("rc"), format!("{rc}\n")).unwrap();
    // Waits until run `n` is over and the chain cools down; returns x's status entry.
    let settled = |n: u64| -> Value {
        let c = env.wait_chain_status("x", &format!("run {n} over, cooling down"), |c| {
            c["now"]["state"] == "cooldown"
                && task_entry(c, "x").is_some_and(|t| t["last"]["run_id"].as_u64() == Some(n))
        });
        task_of(&c, "x")
    };
    // Kicks until run `n` starts (again every second, in case a kick landed before the
    // cooldown began).
    let kick_to = |n: usize| {
        let mut last: Option<Instant> = None;
        wait_until(&format!("a kick starts run {n}"), || {
            if env.lines("out").len() >= n {
                return true;
            }
            if last.map(|t| t.elapsed() > Duration::from_secs(1)) != Some(false) {
                env.sub(&["kick", "x"]).assert_code(0);
                last = Some(Instant::now());
            }
            false
        });
    };

    set_rc(0);
    let mut runner = env.spawn(&["x"]);
    let t = settled(1);
    assert!(t["streak"].is_null(), "{t:#}");
    let first_success = time_of(&t, "last_success");

    set_rc(3);
    kick_to(2);
    let t = settled(2);
    let failed = &env.history("x", &["--limit", "1"])[0];
    assert_eq!(outcome(failed), "failed");
    let streak = &t["streak"];
    assert_eq!(streak["failures"].as_u64(), Some(1), "{t:#}");
    let since = time_of(streak, "since");
    assert!(
        since >= time_of(failed, "start") - 1.0 && since <= time_of(failed, "stop") + 1.0,
        "the streak should start with run 2 ({} .. {}): {t:#}",
        failed["start"],
        failed["stop"]
    );
    assert_eq!(time_of(&t, "last_success"), first_success, "{t:#}");
    assert_eq!(t["last"]["outcome"], "failed");
    assert_eq!(t["last"]["exit_code"].as_i64(), Some(3));

    kick_to(3);
    let t = settled(3);
    assert_eq!(t["streak"]["failures"].as_u64(), Some(2), "{t:#}");
    assert_eq!(time_of(&t["streak"], "since"), since, "{t:#}");

    // A relaunch (during the cooldown) carries the streak over.
    let mut next = env.spawn(&["x"]);
    runner.assert_exit(0);
    env.wait_running(&mut next, "x");
    let c = env.wait_chain_status("x", "the new instance is up", |c| {
        c["pid"].as_i64() == Some(next.pid as i64) && c["now"]["state"] == "cooldown"
    });
    let t = task_of(&c, "x");
    assert_eq!(t["streak"]["failures"].as_u64(), Some(2), "{t:#}");
    assert_eq!(time_of(&t["streak"], "since"), since, "{t:#}");
    assert_eq!(env.lines("out").len(), 3, "the relaunch ran x again");

    kick_to(4);
    let t = settled(4);
    assert_eq!(t["streak"]["failures"].as_u64(), Some(3), "{t:#}");
    assert_eq!(time_of(&t["streak"], "since"), since, "{t:#}");

    set_rc(0);
    kick_to(5);
    let t = settled(5);
    assert!(t["streak"].is_null(), "a success ends the streak: {t:#}");
    assert!(time_of(&t, "last_success") > first_success, "{t:#}");
    assert_eq!(t["runs"].as_u64(), Some(5), "{t:#}");
    assert_eq!(t["ok"].as_u64(), Some(2), "{t:#}");
    assert_eq!(t["failures"].as_u64(), Some(3), "{t:#}");
    env.assert_running_on_device(&mut next, "x");
}

#[test]
fn status_history_and_log_work_while_chains_write() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.w]
command = 'head -c 20000 /dev/zero | tr "\0" w; echo'
[tasks.v]
command = 'head -c 20000 /dev/zero | tr "\0" v; echo'
"#,
    );
    let mut w = env.spawn(&["w"]);
    let mut v = env.spawn(&["v"]);
    env.wait_running(&mut w, "w");
    env.wait_running(&mut v, "v");
    let runs_of = |doc: &Value, chain: &str| {
        chain_entry(doc, chain)
            .and_then(|c| task_entry(c, chain))
            .and_then(|t| t["runs"].as_u64())
            .unwrap_or(0)
    };
    let first = env.wait_chain_status("w", "w has runs", |c| {
        task_entry(c, "w").is_some_and(|t| t["runs"].as_u64() > Some(0))
    });
    let start_runs = task_of(&first, "w")["runs"].as_u64().unwrap();
    env.wait_history("v", &[], "v has a recorded run", |r| !r.is_empty());
    let mut calls = 0;
    let mut seen_runs = start_runs;
    // Every call must succeed while both chains keep writing, until w has 20 more runs.
    w.wait_for("20 more runs of w, read all along", || {
        calls += 1;
        let doc = env.status_json();
        assert_eq!(doc["chains"].as_array().map(Vec::len), Some(2), "{doc:#}");
        let runs = runs_of(&doc, "w");
        assert!(
            runs >= seen_runs,
            "the run counter fell: {seen_runs} -> {runs}"
        );
        seen_runs = runs;
        let hist = env.history("v", &["--limit", "5"]);
        assert!(!hist.is_empty(), "v's history emptied");
        let log = env.sub(&["log", "w"]);
        log.assert_code(0);
        calls >= 10 && runs >= start_runs + 20
    });
    for (runner, chain) in [(&mut w, "w"), (&mut v, "v")] {
        assert!(
            !flock_n_succeeds(&env.pidfile(chain)),
            "{chain}'s lock is free"
        );
        env.assert_running_on_device(runner, chain);
        assert!(
            TestEnv::logged_problems(&runner.stderr()).is_empty(),
            "{chain} logged problems while read:\n{}",
            runner.stderr()
        );
    }
}

/// A run killed by a signal reads the same in `status` and `history`: by the signal's name.
#[test]
fn a_signal_outcome_is_named_alike_in_status_and_history() {
    let env = TestEnv::new("[tasks.k]\ncommand = 'kill -KILL $$'\n");
    env.run(&["--once", "k"]).assert_code(1);
    for args in [&["status"][..], &["history", "k"]] {
        let done = env.sub(args);
        done.assert_code(0);
        assert!(
            done.stdout.contains("signal (SIGKILL)"),
            "{args:?}:\n{}",
            done.stdout
        );
    }
}
