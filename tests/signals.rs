//! Signals and the `stop` / `kick` subcommands, against the real binary with real signals:
//! SIGTERM (graceful, within stop_grace, then the group is stopped and the next launch reruns
//! the task), SIGINT (twice: at once), SIGQUIT, SIGHUP (reload; a bad config keeps the old one,
//! and so does one that moves run_root), SIGUSR1 (end the cooldown).

mod common;

use common::*;
use std::fs;
use std::time::{Duration, Instant};

/// A task that records its start, waits for `$T/go`, lingers half a second (so that a stop
/// request that raced the go file still finds it running), and records its end.
const GATED: &str = r#"command = 'echo "$RUN_CHAIN_TASK $RUN_CHAIN_RUN_ID start" >> "$T/out"; while [ ! -e "$T/go" ]; do sleep 0.02; done; sleep 0.5; echo "$RUN_CHAIN_TASK $RUN_CHAIN_RUN_ID end" >> "$T/out"'"#;

fn gated_env() -> TestEnv {
    TestEnv::new(&format!(
        r#"
[defaults]
stop_grace = "1h"
kill_grace = "300ms"
success_cooldown = "0s"
fail_cooldown = "0s"

[tasks.a]
{GATED}

[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#
    ))
}

fn wait_no_leftovers(env: &TestEnv) {
    wait_until("no process of this chain (guardian, task) is left", || {
        env.marked_processes().is_empty()
    });
}

/// Sends `sig` now and then again every 300 ms until `cond` holds (for signals whose effect
/// depends on the state they land in, like a kick that must land in a cooldown).
fn signal_until(runner: &mut Runner, sig: i32, what: &str, mut cond: impl FnMut() -> bool) {
    let mut last: Option<Instant> = None;
    let pid = runner.pid;
    runner.wait_for(what, || {
        if cond() {
            return true;
        }
        if last.map(|t| t.elapsed() > Duration::from_millis(300)) != Some(false) {
            send_signal(pid, sig);
            last = Some(Instant::now());
        }
        false
    });
}

#[test]
fn sigterm_in_a_cooldown_exits_0_at_once() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo a >> "$T/out"'
success_cooldown = "1h"
stop_grace = "1h"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    runner.signal(libc::SIGTERM);
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    wait_no_leftovers(&env);
    assert_eq!(env.lines("out"), vec!["a"]);
}

#[test]
fn sigterm_mid_task_lets_the_task_finish_within_stop_grace() {
    let env = gated_env();
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_lines_while(&mut runner, "out", 1);
    runner.signal(libc::SIGTERM);
    runner.signal(libc::SIGTERM); // repeating it changes nothing
    fs::write(env.path("go"), "").unwrap();
    runner.assert_exit(0);
    assert_eq!(
        env.lines("out"),
        vec!["a 1 start", "a 1 end"],
        "the task must finish undisturbed and nothing may start after it"
    );
    wait_no_leftovers(&env);
}

#[test]
fn sigterm_mid_task_past_stop_grace_stops_it_and_the_next_launch_reruns_it_first() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; sleep 1000 & echo $! > "$T/sleep$RUN_CHAIN_RUN_ID.pid"; echo $$ > "$T/a$RUN_CHAIN_RUN_ID.pid"; wait'
stop_grace = "500ms"
kill_grace = "200ms"
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#,
    );
    let mut runner = env.spawn(&["a", "b"]);
    let task = wait_pid_file(&env.path("a1.pid"));
    let sleep = wait_pid_file(&env.path("sleep1.pid"));
    let start = Instant::now();
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "the task was stopped after {took:?}, before its stop_grace of 500ms"
    );
    assert!(!is_running(task), "run-chain exited, its task still runs");
    assert!(
        !is_running(sleep),
        "run-chain exited, its task's child still runs"
    );
    wait_no_leftovers(&env);

    // Interrupted is not a failure (no 1h fail_cooldown): the next launch runs a again, first.
    let mut next = env.spawn(&["a", "b"]);
    let task2 = wait_pid_file(&env.path("a2.pid"));
    assert_eq!(env.lines("out"), vec!["a 1", "a 2"]);
    next.signal(libc::SIGQUIT);
    next.assert_exit(0);
    wait_until("the second run is gone", || !is_running(task2));
}

#[test]
fn single_sigint_is_graceful_like_sigterm() {
    let env = gated_env();
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_lines_while(&mut runner, "out", 1);
    runner.signal(libc::SIGINT);
    fs::write(env.path("go"), "").unwrap();
    runner.assert_exit(0);
    assert_eq!(env.lines("out"), vec!["a 1 start", "a 1 end"]);
}

#[test]
fn second_sigint_stops_the_task_at_once() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo $$ > "$T/a.pid"; exec sleep 1000'
stop_grace = "1h"
kill_grace = "300ms"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    let task = wait_pid_file(&env.path("a.pid"));
    runner.signal(libc::SIGINT);
    assert!(is_running(task));
    // A second SIGINT (resent until it lands: two SIGINTs sent back to back may merge into one
    // pending signal) stops the task at once, far within its 1h stop_grace.
    let mut status = None;
    let mut last = Instant::now();
    wait_until("run-chain exits after a second SIGINT", || {
        status = runner.try_status();
        if status.is_none() && last.elapsed() > Duration::from_millis(300) {
            runner.signal(libc::SIGINT);
            last = Instant::now();
        }
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "{}", runner.stderr());
    assert!(!is_running(task));
    wait_no_leftovers(&env);
}

#[test]
fn sigquit_stops_the_task_at_once_escalating_to_sigkill_and_exits_0() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'trap "" TERM; sleep 1000 & echo $! > "$T/sleep.pid"; echo $$ > "$T/a.pid"; wait'
stop_grace = "1h"
kill_grace = "300ms"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    let task = wait_pid_file(&env.path("a.pid"));
    let sleep = wait_pid_file(&env.path("sleep.pid"));
    runner.signal(libc::SIGQUIT);
    runner.assert_exit(0);
    assert!(!is_running(task), "the task survived SIGQUIT");
    assert!(!is_running(sleep), "the task's child survived SIGQUIT");
    wait_no_leftovers(&env);
}

#[test]
fn sigquit_in_a_cooldown_exits_0() {
    let env =
        TestEnv::new("[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\nsuccess_cooldown = \"1h\"\n");
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 1);
    runner.signal(libc::SIGQUIT);
    runner.assert_exit(0);
}

#[test]
fn sigusr1_ends_a_long_cooldown() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#,
    );
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_lines_while(&mut runner, "out", 1);
    signal_until(&mut runner, libc::SIGUSR1, "a kick starts b", || {
        env.lines("out").len() >= 2
    });
    assert_eq!(env.lines("out")[..2], ["a 1", "b 1"]);
    env.assert_running(&mut runner, "a_b");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

#[test]
fn kick_subcommand_ends_the_cooldown() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#,
    );
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_running(&mut runner, "a_b");
    env.wait_lines_while(&mut runner, "out", 1);
    let mut last: Option<Instant> = None;
    runner.wait_for("`run-chain kick a_b` starts b", || {
        if env.lines("out").len() >= 2 {
            return true;
        }
        if last.map(|t| t.elapsed() > Duration::from_millis(300)) != Some(false) {
            env.sub(&["kick", "a_b"]).assert_code(0);
            last = Some(Instant::now());
        }
        false
    });
    assert_eq!(env.lines("out")[..2], ["a 1", "b 1"]);
    env.assert_running(&mut runner, "a_b");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

fn versioned(version: &str, cooldown: &str) -> String {
    format!(
        "[tasks.a]\ncommand = 'echo {version} >> \"$T/out\"'\nsuccess_cooldown = \"{cooldown}\"\n"
    )
}

#[test]
fn sighup_applies_a_changed_config() {
    let env = TestEnv::new(&versioned("v1", "200ms"));
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    env.write_config(&versioned("v2", "200ms"));
    runner.signal(libc::SIGHUP);
    runner.wait_for("the reloaded command runs", || {
        env.lines("out").iter().filter(|l| *l == "v2").count() >= 2
    });
    env.assert_running(&mut runner, "a");
    let lines = env.lines("out");
    let first_v2 = lines.iter().position(|l| l == "v2").unwrap();
    assert!(lines[..first_v2].iter().all(|l| l == "v1"), "{lines:?}");
    assert!(
        lines[first_v2..].iter().all(|l| l == "v2"),
        "the old config came back: {lines:?}"
    );
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

#[test]
fn sighup_reloads_at_once_even_mid_cooldown() {
    let env = TestEnv::new(&versioned("v1", "1h"));
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    env.write_config(&versioned("v2", "1h"));
    let logged = runner.stderr().len();
    runner.signal(libc::SIGHUP);
    // run-chain logs the reload; wait for that line before the kick.
    let err = runner.stderr.clone();
    runner.wait_for("the reload is logged", || {
        let text = fs::read_to_string(&err).unwrap_or_default();
        text.len() > logged && text[logged..].contains("SIGHUP: reloaded")
    });
    signal_until(
        &mut runner,
        libc::SIGUSR1,
        "a kick runs the task again",
        || env.lines("out").len() >= 2,
    );
    assert_eq!(env.lines("out")[..2], ["v1", "v2"]);
    env.assert_running(&mut runner, "a");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

/// Seconds from now until the chain's cooldown ends, as `status --json` says.
fn cooldown_left(chain: &serde_json::Value) -> f64 {
    time_of(&chain["now"], "until") - epoch_now()
}

/// A reload that lengthens the cooldown in progress moves its end in CHAIN.state at once:
/// `status` shows the new end, and a relaunch keeps it (it came back to the old end: a resumed
/// due time is only ever capped, so a shortened cooldown would not show this).
#[test]
fn sighup_moves_the_end_of_the_cooldown_in_status_and_across_a_relaunch() {
    let env = TestEnv::new(&versioned("v1", "1h"));
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    let c = env.wait_chain_status("a", "a 1 h cooldown in status", |c| {
        c["now"]["until"].is_string() && cooldown_left(c) > 3000.0
    });
    assert!(cooldown_left(&c) <= 3600.0, "{c:#}");
    env.write_config(&versioned("v1", "2h"));
    runner.signal(libc::SIGHUP);
    let c = env.wait_chain_status("a", "the cooldown ends 2 h after the run", |c| {
        c["now"]["until"].is_string() && cooldown_left(c) > 6600.0
    });
    assert!(cooldown_left(&c) <= 7200.0, "{c:#}");

    // A relaunch carries on with the reloaded end of the cooldown, not the old one.
    let mut second = env.spawn(&["a"]);
    runner.assert_exit(0);
    env.wait_running(&mut second, "a");
    let c = env.wait_chain_status("a", "the new instance in its cooldown", |c| {
        c["pid"].as_i64() == Some(second.pid as i64) && c["now"]["until"].is_string()
    });
    let left = cooldown_left(&c);
    assert!((6600.0..=7200.0).contains(&left), "{left:.0}s left: {c:#}");
    assert_eq!(env.lines("out"), ["v1"]);
    second.signal(libc::SIGTERM);
    second.assert_exit(0);
}

#[test]
fn sighup_with_a_bad_config_logs_it_and_keeps_the_old_one() {
    let env = TestEnv::new(&versioned("v1", "200ms"));
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    env.write_config(
        "[tasks.a]\ncommand = 'echo bad >> \"$T/out\"'\nbogus_key_xyz = 1\nsuccess_cooldown = \"200ms\"\n",
    );
    runner.signal(libc::SIGHUP);
    let err = runner.stderr.clone();
    runner.wait_for("the bad config is logged, naming the key", || {
        fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("bogus_key_xyz")
    });
    let have = env.lines("out").len();
    env.wait_lines_while(&mut runner, "out", have + 2);
    env.assert_running(&mut runner, "a");
    assert!(
        env.lines("out").iter().all(|l| l == "v1"),
        "{:?}",
        env.lines("out")
    );

    // A good config later still applies.
    env.write_config(&versioned("v3", "200ms"));
    runner.signal(libc::SIGHUP);
    runner.wait_for("the next good config applies", || {
        env.lines("out").iter().any(|l| l == "v3")
    });
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

#[test]
fn stop_subcommand_waits_for_the_task_and_returns_after_the_exit() {
    let env = gated_env();
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_running(&mut runner, "a_b");
    env.wait_lines_while(&mut runner, "out", 1);
    let mut stop = env.spawn_command(env.sub_command(&["stop", "a_b"]));
    fs::write(env.path("go"), "").unwrap();
    stop.assert_exit(0);
    assert!(
        runner.try_status().is_some(),
        "`stop` returned before the chain's process exited"
    );
    assert_eq!(runner.try_status().unwrap().code(), Some(0));
    assert_eq!(env.lines("out"), vec!["a 1 start", "a 1 end"]);
    wait_no_leftovers(&env);
}

#[test]
fn stop_now_stops_the_task_at_once() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo $$ > "$T/a.pid"; exec sleep 1000'
stop_grace = "1h"
kill_grace = "300ms"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    let task = wait_pid_file(&env.path("a.pid"));
    env.sub(&["stop", "a", "--now"]).assert_code(0);
    assert!(
        runner.try_status().is_some(),
        "`stop --now` returned before the chain's process exited"
    );
    assert_eq!(runner.try_status().unwrap().code(), Some(0));
    assert!(!is_running(task), "the task survived `stop --now`");
    wait_no_leftovers(&env);
}

#[test]
fn stop_subcommand_in_a_cooldown_and_when_not_running() {
    let env =
        TestEnv::new("[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\nsuccess_cooldown = \"1h\"\n");
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    env.sub(&["stop", "a"]).assert_code(0);
    assert_eq!(runner.try_status().map(|s| s.code()), Some(Some(0)));
    assert!(env.pidfile("a").exists(), "the pidfile was removed");

    let done = env.sub(&["stop", "a"]);
    done.assert_code(0);
    let said = format!("{}{}", done.stdout, done.stderr).to_lowercase();
    assert!(
        said.contains("not running"),
        "`stop` of a chain that does not run must say so:\n{said}"
    );
}

/// A config whose `run_root` is `root`, with one task `a` that appends "a RUN_ID VERSION" to
/// `$T/out`, 1 h cooldowns.
fn config_in(root: &std::path::Path, version: &str) -> String {
    format!(
        r#"run_root = "{}"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID {version}" >> "$T/out"'
success_cooldown = "1h"
fail_cooldown = "1h"
"#,
        root.display()
    )
}

/// Launches chain `a` with the config's own run_root (no --run-root, no RUN_ROOT) and waits
/// for its first run.
fn launch_with_the_configs_run_root(env: &TestEnv) -> Runner {
    let mut cmd = env.bare_command();
    cmd.arg("-c").arg(&env.config).arg("a");
    let mut chain = env.spawn_command(cmd);
    env.wait_lines_while(&mut chain, "out", 1);
    chain
}

/// A SIGHUP after an edit that moves `run_root` (the chain's RUN_ROOT coming from the config)
/// is refused whole: a running chain cannot move (its lock, state and store stay where they
/// are), and with the edit applied `status`, `stop` and `kick` would look in the new place and
/// a launch would start a second instance there. The warning said "takes effect at the next
/// launch" and the rest of the edit was applied.
#[test]
fn a_reload_that_would_move_the_chain_to_another_run_root_is_refused() {
    let env = TestEnv::new("");
    env.write_config(&config_in(&env.run_root, "v1"));
    // No --run-root, no RUN_ROOT: the config decides.
    let mut chain = launch_with_the_configs_run_root(&env);
    env.write_config(&config_in(&env.path("other-root"), "v2"));
    chain.signal(libc::SIGHUP);
    let err = chain.stderr.clone();
    chain.wait_for("the reload refused", || {
        fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("a running chain cannot move, so the config is not reloaded")
    });
    // The rest of the edit is not applied either: the next run is still v1.
    chain.signal(libc::SIGUSR1);
    env.wait_lines_while(&mut chain, "out", 2);
    assert_eq!(env.lines("out"), ["a 1 v1", "a 2 v1"]);
    assert_eq!(lock_holders(&env.pidfile("a")), [chain.pid]);
    // The error says how to move it, and that way works: `stop` given the old RUN_ROOT.
    let said = fs::read_to_string(&err).unwrap_or_default();
    let hint = format!("run-chain --run-root {} stop a", env.run_root.display());
    assert!(said.contains(&hint), "{said}");
    let stop = env.finish_command({
        let mut cmd = env.bare_command();
        cmd.arg("-c")
            .arg(&env.config)
            .arg("--run-root")
            .arg(&env.run_root)
            .args(["stop", "a"]);
        cmd
    });
    stop.assert_code(0);
    chain.assert_exit(0);
}

/// A SIGHUP after an upgrade applies a changed cooldown to the cooldown carried over from the
/// old instance, counted from the end of the run, as it does for a cooldown of the chain's own:
/// the carried-over cooldown kept its old due time (1 h) whatever the reload said.
#[test]
fn sighup_after_a_relaunch_applies_a_changed_cooldown_to_the_carried_over_one() {
    let config = |cooldown: &str| {
        format!(
            r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "{cooldown}"
fail_cooldown = "1h"
"#
        )
    };
    let env = TestEnv::new(&config("1h"));
    let mut old = env.spawn(&["a"]);
    env.wait_lines_while(&mut old, "out", 1);
    env.wait_chain_status("a", "the old instance in its cooldown", |c| {
        c["now"]["state"] == "cooldown"
    });
    let mut new = env.spawn(&["a"]);
    old.assert_exit(0);
    env.wait_chain_status("a", "the new instance in the carried-over cooldown", |c| {
        c["pid"] == new.pid && c["now"]["state"] == "cooldown"
    });
    env.write_config(&config("1s"));
    new.signal(libc::SIGHUP);
    // Due 1 s after run 1 ended, which is already past: run 2 starts at once.
    env.wait_lines_while(&mut new, "out", 2);
    assert_eq!(env.lines("out"), ["a 1", "a 2"]);
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
}

/// The same RUN_ROOT spelled another way (here through a symlink) is no move: the reload is
/// applied. Compared as strings, it was refused whole, the rest of the edit with it.
#[test]
fn a_reload_naming_the_same_run_root_another_way_is_applied() {
    let env = TestEnv::new("");
    env.write_config(&config_in(&env.run_root, "v1"));
    let mut chain = launch_with_the_configs_run_root(&env);
    let link = env.path("root-link");
    std::os::unix::fs::symlink(&env.run_root, &link).unwrap();
    env.write_config(&config_in(&link, "v2"));
    chain.signal(libc::SIGHUP);
    let err = chain.stderr.clone();
    chain.wait_for("the reload", || {
        fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("SIGHUP: reloaded")
    });
    chain.signal(libc::SIGUSR1);
    env.wait_lines_while(&mut chain, "out", 2);
    assert_eq!(env.lines("out"), ["a 1 v1", "a 2 v2"]);
    chain.signal(libc::SIGTERM);
    chain.assert_exit(0);
}
