//! The record of a run whose run-chain was SIGKILLed (issue 17, point 4), against the real
//! binary: the guardian, which ends the run's process group, records the run `interrupted`
//! with the moment the group ended and what it did, at once, with no relaunch; while nobody
//! has recorded the end (the guardian killed too), every command reads the run `interrupted`
//! with no stop, never `running`; the next launch keeps the guardian's record, and closes
//! with its own time and an "end not known" error only what nobody recorded.
//!
//! Every wait is on a condition with a deadline. Times are compared with the wall clock
//! stamps the task writes itself (`date +%s.%N`), with loose upper bounds (a loaded
//! machine only makes the guardian later).

mod common;

use common::*;
use serde_json::Value;
use std::fs;

/// A task that takes a second (or what `$T/linger` says) over SIGTERM (so that the recorded end is measurably not the
/// moment run-chain died), stamping the wall time at which it exits; `stubborn` ignores
/// SIGTERM, so only the guardian's SIGKILL after the kill grace (600 ms) ends it.
const CONFIG: &str = r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"
kill_grace = "20s"
stop_grace = "1h"

[tasks.slow]
command = '''trap 'sleep $(cat "$T/linger" 2>/dev/null || echo 1); date +%s.%N > "$T/ended$RUN_CHAIN_RUN_ID"; exit 3' TERM; echo $$ > "$T/slow$RUN_CHAIN_RUN_ID.pid"; sleep 1000 & wait'''

[tasks.stubborn]
command = 'trap "" TERM; echo $$ > "$T/stubborn$RUN_CHAIN_RUN_ID.pid"; while :; do sleep 0.05; done'
kill_grace = "600ms"
"#;

/// What the guardian records as the run's error (its start; the signals follow).
const GUARDIAN_ENDED: &str =
    "run-chain was killed (or crashed) during the run; its guardian ended the process group";

/// Seconds since the epoch, written by the task with `date +%s.%N`.
fn stamp(env: &TestEnv, name: &str) -> f64 {
    let mut value = None;
    wait_until(&format!("{name} holds a time stamp"), || {
        value = env
            .read(name)
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0);
        value.is_some()
    });
    value.unwrap()
}

/// The run `id` in `history TASK --json`.
fn run_of(env: &TestEnv, task: &str, id: u64) -> Value {
    let runs = env.history(task, &["--limit", "1000"]);
    runs.iter()
        .find(|r| run_id(r) == id)
        .cloned()
        .unwrap_or_else(|| panic!("no run {id} of {task} in {runs:#?}"))
}

/// The guardian of run-chain `pid`: its child named `run-chain-guard`.
fn guardian_of(pid: i32) -> i32 {
    let mut found = None;
    wait_until(&format!("run-chain {pid} has a guardian"), || {
        found = fs::read_dir("/proc").ok().and_then(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|p| {
                    proc_ppid(*p) == Some(pid)
                        && fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "run-chain-guard")
                })
        });
        found.is_some()
    });
    found.unwrap()
}

/// Launches chain `task` (one task), waits until its run `id` is recorded running and its
/// task wrote its PID; returns the runner and the task's PID.
fn launch_until_running(env: &TestEnv, task: &str, id: u64) -> (Runner, i32) {
    let mut runner = env.spawn(&[task]);
    env.wait_running(&mut runner, task);
    let pid = wait_pid_file(&env.path(&format!("{task}{id}.pid")));
    env.wait_history(
        task,
        &[],
        &format!("run {id} of {task} is recorded running"),
        |r| {
            r.first()
                .is_some_and(|r| run_id(r) == id && outcome(r) == "running")
        },
    );
    (runner, pid)
}

/// No command shows a run of `chain` (one task, `task`) running, and the chain is down.
fn assert_nothing_running(env: &TestEnv, chain: &str, task: &str) {
    let text = env.sub(&["history", task]);
    assert!(
        !text.stdout.contains("running"),
        "history shows a run running while no instance of the chain is alive:\n{}",
        text.stdout
    );
    let doc = env.status_json();
    let entry = chain_entry(&doc, chain).unwrap_or_else(|| panic!("no {chain} in {doc:#}"));
    assert_eq!(entry["up"], Value::Bool(false), "{entry:#}");
    assert_eq!(entry["now"]["state"], "down", "{entry:#}");
    let text = env.sub(&["status"]);
    assert!(
        text.stdout.contains(&format!("{chain}: down")) && !text.stdout.contains("running"),
        "status:\n{}",
        text.stdout
    );
    let metrics = env.sub(&["metrics"]).stdout;
    let running = format!("run_chain_running{{chain=\"{chain}\",task=\"{task}\"}} ");
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&running))
        .unwrap_or_else(|| panic!("no {running} in the metrics:\n{metrics}"));
    assert!(line.ends_with(" 0"), "{line}");
}

/// SIGKILLs run-chain during run 1 of `slow`, then waits until the task (which takes a
/// second over SIGTERM) and the guardian are gone. Returns the wall time of the kill and
/// the task's own stamp of its exit.
fn kill_during_slow(env: &TestEnv) -> (f64, f64) {
    let (mut runner, task) = launch_until_running(env, "slow", 1);
    let killed_at = epoch_now();
    runner.signal(libc::SIGKILL);
    runner.wait_exit();
    wait_until(&format!("the task (pid {task}) is gone"), || {
        !is_running(task)
    });
    wait_until(
        "nothing of the killed chain (guardian included) runs",
        || env.marked_processes().is_empty(),
    );
    (killed_at, stamp(env, "ended1"))
}

/// (1) SIGKILL of run-chain mid-task, no relaunch: the guardian has recorded the run
/// `interrupted`, its stop when the group ended (the task took a second over SIGTERM), the
/// duration to it, and what happened; `status` shows the chain down, nothing shows a run
/// running.
#[test]
fn the_guardian_records_the_end_of_the_run_it_ended_without_a_relaunch() {
    let env = TestEnv::new(CONFIG);
    let (killed_at, ended) = kill_during_slow(&env);
    let r = run_of(&env, "slow", 1);
    assert_eq!(outcome(&r), "interrupted", "{r:#}");
    let stop = time_of(&r, "stop");
    // The group ended when the task did: after the second it took over SIGTERM, and
    // within the guardian's polling (10 ms) of it (a loaded machine may add some).
    assert!(
        stop >= ended - 0.005 && stop >= killed_at + 0.9,
        "stop {stop:.3} is before the task's exit at {ended:.3} (killed at {killed_at:.3}): {r:#}"
    );
    assert!(
        stop <= ended + 2.0,
        "stop {stop:.3} is long after the task's exit at {ended:.3}: {r:#}"
    );
    let duration = r["duration_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no duration: {r:#}"));
    let start = time_of(&r, "start");
    assert!(
        (duration - (stop - start)).abs() < 0.002,
        "duration {duration} is not stop - start: {r:#}"
    );
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(GUARDIAN_ENDED)
            && error.contains("SIGTERM")
            && !error.contains("SIGKILL"),
        "error {error:?}: {r:#}"
    );
    let text = env.sub(&["history", "slow"]).stdout;
    assert!(text.contains("interrupted"), "history:\n{text}");
    assert_nothing_running(&env, "slow", "slow");
    // Counted as the next launch counts an interrupted run.
    let doc = env.status_json();
    let task = task_entry(chain_entry(&doc, "slow").unwrap(), "slow")
        .cloned()
        .unwrap_or_else(|| panic!("no task slow in {doc:#}"));
    assert_eq!(task["runs"], 1, "{task:#}");
    assert_eq!(task["interrupted"], 1, "{task:#}");
}

/// (3) The next launch after (1) keeps the guardian's record (stop, duration, error), and
/// runs the task again under a new id.
#[test]
fn the_next_launch_keeps_the_guardians_record() {
    let env = TestEnv::new(CONFIG);
    kill_during_slow(&env);
    let before = run_of(&env, "slow", 1);
    assert_eq!(outcome(&before), "interrupted", "{before:#}");
    let (mut runner, _) = launch_until_running(&env, "slow", 2);
    let after = run_of(&env, "slow", 1);
    for key in ["outcome", "start", "stop", "duration_seconds", "error"] {
        assert_eq!(
            after[key], before[key],
            "{key} changed at the relaunch: {after:#}"
        );
    }
    let doc = env.status_json();
    let task = task_entry(chain_entry(&doc, "slow").unwrap(), "slow").cloned();
    assert_eq!(
        task.as_ref().map(|t| t["interrupted"].clone()),
        Some(Value::from(1)),
        "counted twice? {doc:#}"
    );
    runner.signal(libc::SIGQUIT);
    runner.assert_exit(0);
}

/// (2) run-chain and its guardian both SIGKILLed: nobody records the end. Until the next
/// launch the run reads `interrupted` with no stop (and nothing shows it running); the next
/// launch closes it with its own time and an error saying the end is not known.
#[test]
fn a_run_nobody_recorded_reads_interrupted_until_the_next_launch_closes_it() {
    let env = TestEnv::new(CONFIG);
    let (mut runner, task) = launch_until_running(&env, "slow", 1);
    let guardian = guardian_of(runner.pid);
    // The guardian first: it would act on run-chain's death at once.
    send_signal(guardian, libc::SIGKILL);
    wait_until("the guardian is gone", || !is_running(guardian));
    runner.signal(libc::SIGKILL);
    runner.wait_exit();
    // Nobody ends the group now: the test does.
    unsafe { libc::kill(-task, libc::SIGKILL) };
    wait_until("nothing of the killed chain runs", || {
        env.marked_processes().is_empty()
    });

    let r = run_of(&env, "slow", 1);
    assert_eq!(outcome(&r), "interrupted", "{r:#}");
    assert_eq!(r["stop"], Value::Null, "{r:#}");
    assert_eq!(r["duration_seconds"], Value::Null, "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("not recorded")),
        "{r:#}"
    );
    assert_nothing_running(&env, "slow", "slow");
    // Nothing was written: it reads so, the store still has it open.
    let open = env.sql("SELECT COUNT(*) FROM runs WHERE outcome IS NULL");
    assert_eq!(open, vec![vec![Value::from(1)]]);

    let launched = epoch_now();
    let (mut runner, _) = launch_until_running(&env, "slow", 2);
    let running = epoch_now();
    let r = run_of(&env, "slow", 1);
    assert_eq!(outcome(&r), "interrupted", "{r:#}");
    let stop = time_of(&r, "stop");
    assert!(
        stop >= launched - 0.002 && stop <= running + 0.002,
        "stop {stop:.3} is not the relaunch's time ({launched:.3}..{running:.3}): {r:#}"
    );
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("end was not recorded") && error.contains("next launched"),
        "error {error:?}: {r:#}"
    );
    runner.signal(libc::SIGQUIT);
    runner.assert_exit(0);
}

/// A task that ignores SIGTERM: the guardian sends SIGKILL after the kill grace and says so;
/// the stop is then (the kill grace after run-chain's death).
#[test]
fn a_run_that_needed_sigkill_is_recorded_so() {
    let env = TestEnv::new(CONFIG);
    let (mut runner, task) = launch_until_running(&env, "stubborn", 1);
    let killed_at = epoch_now();
    runner.signal(libc::SIGKILL);
    runner.wait_exit();
    wait_until("nothing of the killed chain runs", || {
        !is_running(task) && env.marked_processes().is_empty()
    });
    let gone_at = epoch_now();
    let r = run_of(&env, "stubborn", 1);
    assert_eq!(outcome(&r), "interrupted", "{r:#}");
    let stop = time_of(&r, "stop");
    assert!(
        stop >= killed_at + 0.6 && stop <= gone_at + 0.002,
        "stop {stop:.3}: killed at {killed_at:.3}, the kill grace is 600ms, all gone by {gone_at:.3}: {r:#}"
    );
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(GUARDIAN_ENDED)
            && error.ends_with("then SIGKILL after the kill grace of 600ms"),
        "error {error:?}: {r:#}"
    );
    assert_nothing_running(&env, "stubborn", "stubborn");
}

/// A relaunch right after the SIGKILL holds the lock while it waits for the dead instance's
/// guardian to end the run's group (here 5 s: the task takes them over SIGTERM): meanwhile
/// `status` shows the new instance `starting`, not the dead instance's run `running`, and
/// `history` does not show that run running either.
#[test]
fn a_relaunch_waiting_for_the_old_guardian_shows_starting_not_the_dead_run() {
    let env = TestEnv::new(CONFIG);
    fs::write(env.path("linger"), "5\n").unwrap();
    let (mut old, _) = launch_until_running(&env, "slow", 1);
    let guardian = guardian_of(old.pid);
    old.signal(libc::SIGKILL);
    old.wait_exit();
    let mut new = env.spawn(&["slow"]);
    env.wait_running(&mut new, "slow");
    let doc = env.status_json();
    let runs = env.history("slow", &[]);
    assert!(
        is_running(guardian),
        "the old guardian ended before status was read: the machine is too slow for this test"
    );
    let entry = chain_entry(&doc, "slow").unwrap_or_else(|| panic!("no slow in {doc:#}"));
    assert_eq!(entry["up"], Value::Bool(true), "{entry:#}");
    assert_eq!(entry["pid"], Value::from(new.pid), "{entry:#}");
    assert_eq!(entry["now"]["state"], "starting", "{entry:#}");
    assert!(
        runs.iter().all(|r| outcome(r) != "running"),
        "history shows the dead instance's run running: {runs:#?}"
    );
    // Done: the new instance stops while it waits; the old task ends in its 5 s.
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
    wait_until("nothing of the chain runs", || {
        env.marked_processes().is_empty()
    });
}
