//! `run-chain run-now CHAIN TASK` against the real binary (issue 19): the request goes to
//! the running chain over its control channel in RUN_ROOT, the chain answers, runs TASK out
//! of turn and goes back to its order; refusals (75), unknown names (64), a pending request
//! carried over an upgrade, and the `trigger` of every run in `history`. The tasks append to
//! a ledger (`$T/out`); the tests wait on it, never sleep.

mod common;

use common::*;

/// Three tasks with an hour's cooldown: nothing runs by the schedule during a test once the
/// first task has run. `a` waits for `$T/go-a` when `$T/hold-a` exists (a task that runs
/// while the test acts).
const CONFIG: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
stop_grace = "1h"

[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; if [ -e "$T/hold-a" ]; then while [ ! -e "$T/go-a" ]; do sleep 0.02; done; fi'

[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'

[tasks.c]
command = 'echo "c $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#;

fn ledger(env: &TestEnv) -> Vec<String> {
    env.lines("out")
}

/// The one run of `runs` with this id.
fn run_of(runs: &[serde_json::Value], id: u64) -> &serde_json::Value {
    runs.iter()
        .find(|r| r["run_id"] == id)
        .unwrap_or_else(|| panic!("no run {id} in {runs:#?}"))
}

/// In a cooldown, TASK runs at once; then the chain goes back to its order (b, the task that
/// was due next, not a, which follows c in the order); the runs say why they ran.
#[test]
fn run_now_in_a_cooldown_runs_at_once_then_the_order_goes_on() {
    let env = TestEnv::new(CONFIG);
    let mut chain = env.spawn(&["--name", "abc", "a", "b", "c"]);
    env.wait_running(&mut chain, "abc");
    env.wait_lines_while(&mut chain, "out", 1);
    // a is recorded, the chain is in a's cooldown.
    env.wait_history("a", &[], "a's run recorded", |r| {
        r.first().is_some_and(|r| r["outcome"] == "ok")
    });
    let done = env.sub(&["run-now", "abc", "c"]);
    done.assert_code(0);
    assert_eq!(done.stdout, "1\n", "the run id reserved: {}", done.stderr);
    assert!(done.stderr.contains("now"), "{}", done.stderr);
    env.wait_lines_while(&mut chain, "out", 2);
    let runs = env.wait_history("c", &[], "c's manual run recorded", |r| {
        r.first().is_some_and(|r| r["outcome"] == "ok")
    });
    let c = run_of(&runs, 1);
    assert_eq!(c["trigger"], "manual", "{c:#}");
    let by = c["requested_by"].as_str().unwrap_or_default();
    assert!(by.contains("(no tty)") || by.contains(" on "), "{c:#}");
    // Back to the order: the kick ends c's cooldown and b runs, not a.
    env.sub(&["kick", "abc"]).assert_code(0);
    let lines = env.wait_lines_while(&mut chain, "out", 3);
    assert_eq!(lines, ["a 1", "c 1", "b 1"]);
    let a = env.history("a", &[]);
    assert_eq!(a[0]["trigger"], "schedule", "{a:#?}");
    assert!(a[0].get("requested_by").is_none(), "{a:#?}");
    let b = env.wait_history("b", &[], "b's kicked run", |r| {
        r.first().is_some_and(|r| r["outcome"] == "ok")
    });
    assert_eq!(b[0]["trigger"], "kick", "{b:#?}");
    // The table shows it too.
    let table = env.sub(&["history", "c"]);
    assert!(table.stdout.contains("manual ("), "{}", table.stdout);
    let m = env.sub(&["metrics"]);
    assert!(
        m.stdout.contains(
            "run_chain_runs_by_trigger_total{chain=\"abc\",task=\"c\",trigger=\"manual\"} 1"
        ),
        "{}",
        m.stdout
    );
    chain.signal(libc::SIGTERM);
    chain.assert_exit(0);
}

/// While a task runs: TASK is queued (history says `queued`) and runs right after it, not
/// after its hour of cooldown. A run-now of the running task, or a second request, is
/// refused with 75 and says why.
#[test]
fn run_now_while_a_task_runs_is_queued_then_runs_right_after_it() {
    let env = TestEnv::new(CONFIG);
    std::fs::write(env.path("hold-a"), "").unwrap();
    let mut chain = env.spawn(&["--name", "abc", "a", "b", "c"]);
    env.wait_running(&mut chain, "abc");
    env.wait_lines_while(&mut chain, "out", 1);
    let done = env.sub(&["run-now", "abc", "c"]);
    done.assert_code(0);
    assert_eq!(done.stdout, "1\n", "{}", done.stderr);
    assert!(done.stderr.contains("queued"), "{}", done.stderr);
    // Recorded as the chain's store writes go (not at once).
    let c = env.wait_history("c", &[], "c queued", |r| !r.is_empty());
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0]["outcome"], "queued", "{c:#?}");
    assert_eq!(c[0]["trigger"], "manual", "{c:#?}");
    // `status` shows the request under the chain (CHAIN.state holds it before the answer).
    let st = env.status_json();
    let q = &st["chains"][0]["queued"];
    assert_eq!(
        (&q["task"], &q["run_id"]),
        (&"c".into(), &1.into()),
        "{st:#}"
    );
    let text = env.sub(&["status"]);
    assert!(
        text.stdout.contains("  queued: c (run 1), asked by "),
        "{}",
        text.stdout
    );
    // The running task: refused, clearly.
    let r = env.sub(&["run-now", "abc", "a"]);
    r.assert_code(75);
    assert!(
        r.stderr.contains("task a of chain abc is running now"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    // A request is pending already: refused.
    let r = env.sub(&["run-now", "abc", "b"]);
    r.assert_code(75);
    assert!(
        r.stderr.contains("already pending (c run 1)"),
        "{}",
        r.stderr
    );
    // `log` of the task shows nothing queued as its latest run.
    assert_eq!(ledger(&env), ["a 1"]);
    std::fs::write(env.path("go-a"), "").unwrap();
    let lines = env.wait_lines_while(&mut chain, "out", 2);
    assert_eq!(lines, ["a 1", "c 1"]);
    let c = env.wait_history("c", &[], "c ran", |r| {
        r.first().is_some_and(|r| r["outcome"] == "ok")
    });
    assert_eq!(c.len(), 1, "the queued row became the run: {c:#?}");
    assert_eq!(c[0]["trigger"], "manual");
    // No more is due for an hour.
    chain.signal(libc::SIGTERM);
    chain.assert_exit(0);
    assert_eq!(ledger(&env), ["a 1", "c 1"]);
}

/// Unknown chain or task: 64, naming what exists; a chain that is not running: 75.
#[test]
fn run_now_of_an_unknown_chain_or_task_is_a_usage_error() {
    let env = TestEnv::new(CONFIG);
    let r = env.sub(&["run-now", "nosuch", "a"]);
    r.assert_code(64);
    assert!(
        r.stderr.contains("no chain named \"nosuch\""),
        "{}",
        r.stderr
    );
    let mut chain = env.spawn(&["--name", "abc", "a", "b"]);
    env.wait_running(&mut chain, "abc");
    env.wait_lines_while(&mut chain, "out", 1);
    let r = env.sub(&["run-now", "abc", "c"]);
    r.assert_code(64);
    assert!(
        r.stderr
            .contains("chain abc has no task named \"c\"; its tasks: a, b"),
        "{}",
        r.stderr
    );
    let r = env.sub(&["run-now", "xyz", "a"]);
    r.assert_code(64);
    assert!(r.stderr.contains("the chains there: abc"), "{}", r.stderr);
    chain.signal(libc::SIGTERM);
    chain.assert_exit(0);
    let r = env.sub(&["run-now", "abc", "b"]);
    r.assert_code(75);
    assert!(
        r.stderr.contains("chain abc is not running"),
        "{}",
        r.stderr
    );
    assert_eq!(ledger(&env), ["a 1"]);
}

/// A request pending when the chain is upgraded (relaunched) is carried over in CHAIN.state:
/// the new instance runs it, once, with the run id reserved, as a manual run.
#[test]
fn a_pending_request_survives_an_upgrade_and_runs_once() {
    let env = TestEnv::new(CONFIG);
    std::fs::write(env.path("hold-a"), "").unwrap();
    let mut old = env.spawn(&["--name", "abc", "a", "b", "c"]);
    env.wait_running(&mut old, "abc");
    env.wait_lines_while(&mut old, "out", 1);
    env.sub(&["run-now", "abc", "c"]).assert_code(0);
    // The upgrade: the new launch asks the old one to hand over; a is let run (stop_grace).
    let mut new = env.spawn(&["--name", "abc", "a", "b", "c"]);
    wait_until("the old instance is asked to hand over", || {
        old.stderr().contains("SIGTERM")
    });
    // While the old instance hands over, it refuses, and says who takes over.
    let r = env.sub(&["run-now", "abc", "b"]);
    r.assert_code(75);
    assert!(
        r.stderr.contains("is stopping") && r.stderr.contains("is taking over"),
        "{}",
        r.stderr
    );
    std::fs::write(env.path("go-a"), "").unwrap();
    old.assert_exit(0);
    env.wait_running(&mut new, "abc");
    let lines = env.wait_lines_while(&mut new, "out", 2);
    assert_eq!(lines, ["a 1", "c 1"]);
    let c = env.wait_history("c", &[], "c ran", |r| {
        r.first().is_some_and(|r| r["outcome"] == "ok")
    });
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0]["trigger"], "manual");
    assert_eq!(c[0]["instance"]["pid"], new.pid, "{c:#?}");
    // Then the order: b (kicked), and c is not run again.
    env.sub(&["kick", "abc"]).assert_code(0);
    let lines = env.wait_lines_while(&mut new, "out", 3);
    assert_eq!(lines, ["a 1", "c 1", "b 1"]);
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
    assert_eq!(ledger(&env), ["a 1", "c 1", "b 1"]);
}

#[test]
fn run_now_has_help() {
    let env = TestEnv::new(CONFIG);
    let h = env.sub(&["run-now", "--help"]);
    h.assert_code(0);
    assert!(
        h.stdout.contains("out of turn")
            && h.stdout.contains("<CHAIN>")
            && h.stdout.contains("<TASK>"),
        "{}",
        h.stdout
    );
}
