//! Process hygiene, against the real binary and real process trees: a run leaves nothing
//! behind (backgrounded children, TERM-ignoring children, escaped grandchildren), a timeout
//! ends the whole group, a SIGKILLed run-chain leaves no orphan, and tasks inherit no
//! descriptor beyond 0, 1, 2.

mod common;

use common::*;
use std::fs;

/// `check.sh NAME`: appends "NAME gone" or "NAME alive" to $T/out, for the PID in $T/NAME.pid
/// (a zombie counts as gone: it runs no code).
const CHECK_SH: &str = r#"P=$(cat "$T/$1.pid")
S=$(awk '/^State:/{print $2}' /proc/$P/status 2>/dev/null)
case "$S" in ""|Z|X) echo "$1 gone" ;; *) echo "$1 alive" ;; esac >> "$T/out"
"#;

/// `tree.sh PREFIX [stubborn]`: a task with a child shell and a grandchild `sleep`; writes
/// their PIDs to $T/PREFIX.{task,child,gc}.pid, then waits. "stubborn" ignores SIGTERM (and so
/// do its descendants), so only SIGKILL ends it.
const TREE_SH: &str = r#"[ "$2" = stubborn ] && trap '' TERM
sh -c 'sleep 1000 & echo $! > "$T/$1.gc.pid"; wait' sh "$1" &
echo $! > "$T/$1.child.pid"
echo $$ > "$T/$1.task.pid"
wait
"#;

fn with_scripts(config: &str) -> TestEnv {
    let env = TestEnv::new(config);
    fs::write(env.path("check.sh"), CHECK_SH).unwrap();
    fs::write(env.path("tree.sh"), TREE_SH).unwrap();
    env
}

/// Waits for the three PIDs of a tree.sh run.
fn tree_pids(env: &TestEnv, prefix: &str) -> [i32; 3] {
    ["task", "child", "gc"].map(|k| wait_pid_file(&env.path(&format!("{prefix}.{k}.pid"))))
}

/// Not running, and not left as an unreaped zombie child of run-chain.
fn wait_gone_and_reaped(pid: i32, runner_pid: i32, what: &str) {
    wait_until(&format!("{what} (pid {pid}) is gone"), || !is_running(pid));
    wait_until(
        &format!("{what} (pid {pid}) is not a zombie left unreaped by run-chain"),
        || !(proc_state(pid) == Some('Z') && proc_ppid(pid) == Some(runner_pid)),
    );
}

#[test]
fn backgrounded_processes_are_gone_before_the_next_task_starts() {
    let env = with_scripts(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
kill_grace = "300ms"

[tasks.bg]
command = 'sleep 1000 & echo $! > "$T/bg.pid"; exit 0'
[tasks.check_bg]
command = 'sh "$T/check.sh" bg'
[tasks.stubborn]
command = '(trap "" TERM; exec sleep 1000) & echo $! > "$T/stubborn.pid"; exit 0'
[tasks.check_stubborn]
command = 'sh "$T/check.sh" stubborn'
success_cooldown = "1h"
"#,
    );
    let mut runner = env.spawn(&["bg", "check_bg", "stubborn", "check_stubborn"]);
    let lines = env.wait_lines_while(&mut runner, "out", 2);
    assert_eq!(
        lines,
        vec!["bg gone", "stubborn gone"],
        "a backgrounded process of a run was still running when the next task started"
    );
    let bg = read_pid(&env.path("bg.pid")).unwrap();
    let stubborn = read_pid(&env.path("stubborn.pid")).unwrap();
    wait_gone_and_reaped(bg, runner.pid, "backgrounded sleep");
    wait_gone_and_reaped(stubborn, runner.pid, "TERM-ignoring backgrounded sleep");
    env.assert_running(&mut runner, "bg_check_bg_stubborn_check_stubborn");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

#[test]
fn escaped_grandchild_with_its_own_session_is_ended_after_the_run() {
    let env = with_scripts(
        r#"
[defaults]
success_cooldown = "0s"
kill_grace = "300ms"

[tasks.esc]
command = 'setsid sleep 1000 & echo $! > "$T/esc.pid"; exit 0'
success_cooldown = "1h"
"#,
    );
    let mut runner = env.spawn(&["esc"]);
    let pid = wait_pid_file(&env.path("esc.pid"));
    runner.wait_for("the escaped grandchild (setsid sleep) is ended", || {
        !is_running(pid)
    });
    env.assert_running(&mut runner, "esc");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

fn timeout_kills_the_tree(mode: &str) {
    // The timeout leaves tree.sh time to start its child and grandchild and write their PIDs
    // (which the test waits for), even on a loaded machine.
    let (timeout, fail_cooldown) = (2.0, 1.0);
    let env = with_scripts(&format!(
        r#"
[tasks.tree]
command = 'echo "tree {STAMP}" >> "$T/out"; exec sh "$T/tree.sh" tree {mode}'
timeout = "2s"
kill_grace = "300ms"
success_cooldown = "0s"
fail_cooldown = "1s"

[tasks.next]
command = 'echo "next {STAMP}" >> "$T/out"'
success_cooldown = "1h"
"#
    ));
    let mut runner = env.spawn(&["tree", "next"]);
    let pids = tree_pids(&env, "tree");
    let lines = env.wait_lines_while(&mut runner, "out", 2);
    // The next task starts only once the whole group is gone.
    for (pid, what) in pids.iter().zip(["task", "child", "grandchild"]) {
        assert!(
            !is_running(*pid),
            "the timed-out task's {what} (pid {pid}) still runs while the next task started"
        );
    }
    let stamps = stamped(&lines[..2]);
    assert_eq!(stamps[0].0, "tree");
    assert_eq!(stamps[1].0, "next");
    // The starts run-chain recorded (the tasks' own stamps come a moment after each start,
    // which a loaded machine may stretch).
    let tree = env.history("tree", &[]);
    assert_eq!(tree.len(), 1, "{tree:#?}");
    assert_eq!(outcome(&tree[0]), "timeout", "{tree:#?}");
    let next = env.wait_history("next", &[], "next's run is recorded", |r| !r.is_empty());
    let gap = time_of(&next[0], "start") - time_of(&tree[0], "start");
    assert!(
        gap >= timeout + fail_cooldown - 0.05,
        "next started {gap:.3}s after tree; expected timeout {timeout}s + fail_cooldown \
         {fail_cooldown}s"
    );
    for (pid, what) in pids.iter().zip(["task", "child", "grandchild"]) {
        wait_gone_and_reaped(*pid, runner.pid, what);
    }
    env.assert_running(&mut runner, "tree_next");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

#[test]
fn timeout_kills_the_whole_group_including_the_grandchild() {
    timeout_kills_the_tree("plain");
}

#[test]
fn timeout_escalates_to_sigkill_for_a_group_that_ignores_sigterm() {
    timeout_kills_the_tree("stubborn");
}

#[test]
fn timeout_none_disables_a_default_timeout() {
    let env = TestEnv::new(
        r#"
[defaults]
timeout = "300ms"
success_cooldown = "0s"
fail_cooldown = "0s"
kill_grace = "200ms"

[tasks.patient]
command = 'sleep 1; echo patient >> "$T/out"'
timeout = "none"

[tasks.hasty]
command = 'sleep 10; echo hasty >> "$T/out"'
"#,
    );
    env.run(&["--once", "patient"]).assert_code(0);
    env.run(&["--once", "hasty"]).assert_code(1);
    assert_eq!(env.lines("out"), vec!["patient"]);
}

fn sigkill_leaves_no_orphan(mode: &str) {
    let env = with_scripts(&format!(
        r#"
[tasks.tree]
command = 'exec sh "$T/tree.sh" tree {mode}'
kill_grace = "300ms"
stop_grace = "1h"
"#
    ));
    let mut runner = env.spawn(&["tree"]);
    env.wait_running(&mut runner, "tree");
    let pids = tree_pids(&env, "tree");
    for pid in pids {
        assert!(is_running(pid));
    }
    runner.signal(libc::SIGKILL);
    runner.wait_exit();
    for (pid, what) in pids.iter().zip(["task", "child", "grandchild"]) {
        wait_until(
            &format!("the task's {what} (pid {pid}) is gone after run-chain was SIGKILLed"),
            || !is_running(*pid),
        );
    }
    wait_until(
        "no process of this chain (guardian included) is left running",
        || env.marked_processes().is_empty(),
    );
}

#[test]
fn sigkill_of_run_chain_mid_task_leaves_no_orphan() {
    sigkill_leaves_no_orphan("plain");
}

#[test]
fn sigkill_of_run_chain_mid_task_leaves_no_orphan_even_if_it_ignores_sigterm() {
    sigkill_leaves_no_orphan("stubborn");
}

/// Descriptors in `ls -l /proc/.../fd` listings other than 0, 1, 2 and the directory `ls`
/// itself opened to list them.
fn foreign_descriptors(listing: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in listing.lines().filter(|l| l.contains(" -> ")) {
        let (left, target) = line.split_once(" -> ").unwrap();
        let fd = left.split_whitespace().last().unwrap_or_default();
        let is_ls_dir = target.starts_with("/proc/")
            && target.ends_with("/fd")
            && target["/proc/".len()..target.len() - 3]
                .bytes()
                .all(|b| b.is_ascii_digit());
        if !matches!(fd, "0" | "1" | "2") && !is_ls_dir {
            bad.push(line.to_owned());
        }
    }
    bad
}

fn assert_clean_listings(stdout: &str, min_listings: usize) {
    let listings = stdout.matches("total ").count();
    assert!(
        listings >= min_listings,
        "expected {min_listings} fd listings in run-chain's stdout:\n{stdout}"
    );
    assert!(
        stdout.contains(" 0 -> /dev/null"),
        "fd 0 is not /dev/null:\n{stdout}"
    );
    let bad = foreign_descriptors(stdout);
    assert!(
        bad.is_empty(),
        "tasks inherited descriptors beyond 0, 1, 2: {bad:#?}\nfull listing:\n{stdout}"
    );
}

#[test]
fn tasks_inherit_no_descriptors_beyond_stdio() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"

[tasks.shell]
command = 'ls -l /proc/$$/fd'
[tasks.direct]
argv = ["ls", "-l", "/proc/self/fd"]
"#,
    );
    let done = env.run(&["--once", "shell", "direct"]);
    done.assert_code(0);
    assert_clean_listings(&done.stdout, 2);
}

/// The same after an upgrade: the new instance (which waited on the old one, took the lock,
/// loaded the carried-over state) leaks nothing to its tasks either.
#[test]
fn tasks_inherit_no_descriptors_in_the_loop_and_after_an_upgrade() {
    let env = TestEnv::new(
        r#"
[tasks.direct]
argv = ["ls", "-l", "/proc/self/fd"]
success_cooldown = "300ms"
"#,
    );
    let mut first = env.spawn(&["direct"]);
    env.wait_running(&mut first, "direct");
    let out1 = first.stdout.clone();
    first.wait_for("the first instance ran the task", || {
        fs::read_to_string(&out1)
            .unwrap_or_default()
            .contains("total ")
    });
    let mut second = env.spawn(&["direct"]);
    env.wait_running(&mut second, "direct");
    first.assert_exit(0);
    let out2 = second.stdout.clone();
    second.wait_for("the second instance ran the task twice", || {
        fs::read_to_string(&out2)
            .unwrap_or_default()
            .matches("total ")
            .count()
            >= 2
    });
    second.signal(libc::SIGTERM);
    second.assert_exit(0);
    assert_clean_listings(&first.stdout(), 1);
    assert_clean_listings(&second.stdout(), 2);
}
