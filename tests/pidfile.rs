//! RUN_ROOT/CHAIN.pid and the upgrade, against the real binary: the pidfile holds the PID and
//! the flock (as `flock -n` and `lslocks` see it); a stale pidfile is taken over and the PID in it never signalled; a planted symlink
//! is refused; relaunching upgrades (in a cooldown, in a task, past stop_grace) with no task
//! skipped or doubled and run ids that keep increasing; --no-kill-concurrent; twenty launches at
//! once leave exactly one running.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

const ONE_TASK: &str = r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "1h"
fail_cooldown = "1h"
"#;

fn flock_n_succeeds(path: &std::path::Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(path)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

fn make_run_root(env: &TestEnv) {
    fs::create_dir(&env.run_root).unwrap();
    fs::set_permissions(&env.run_root, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn pidfile_holds_the_pid_and_the_lock_for_the_whole_life() {
    let env = TestEnv::new(ONE_TASK);
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    let pidfile = env.pidfile("a");
    assert_eq!(
        fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", runner.pid)
    );
    let meta = fs::symlink_metadata(&pidfile).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert!(
        !flock_n_succeeds(&pidfile),
        "`flock -n {} true` succeeded while the chain runs",
        pidfile.display()
    );
    // lslocks(8) names the holder: a FLOCK WRITE lock held by the chain's PID on the pidfile.
    let out = Command::new("lslocks")
        .args(["--noheadings", "--raw", "--output", "PID,TYPE,MODE,PATH"])
        .output()
        .expect("lslocks (util-linux) is needed");
    assert!(out.status.success(), "lslocks: {out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "{} FLOCK WRITE {}",
        runner.pid,
        fs::canonicalize(&pidfile).unwrap().display()
    );
    assert!(
        listed.lines().any(|l| l.trim() == want),
        "lslocks does not show `{want}`:\n{listed}"
    );
    env.wait_lines_while(&mut runner, "out", 1);
    env.assert_running(&mut runner, "a");

    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    assert!(pidfile.exists(), "the pidfile was removed");
    assert!(lock_holders(&pidfile).is_empty());
    assert!(flock_n_succeeds(&pidfile));
}

/// A pidfile naming an unrelated live process (no lock holder) is taken over; that process is
/// never signalled, not by the launch, not by `stop`, not by `kick`.
#[test]
fn stale_pidfile_naming_an_unrelated_live_process_is_taken_over_without_signalling_it() {
    let env = TestEnv::new(ONE_TASK);
    make_run_root(&env);
    let mut bystander = env.spawn_command({
        let mut c = env.command_for("sleep");
        c.arg("1000");
        c
    });
    fs::write(env.pidfile("a"), format!("{}\n", bystander.pid)).unwrap();

    // Looking commands find no running instance and signal nobody.
    let stop = env.sub(&["stop", "a"]);
    stop.assert_code(0);
    let _ = env.sub(&["kick", "a"]);
    assert!(
        bystander.try_status().is_none(),
        "the unrelated process named in a stale pidfile was signalled by stop/kick: {:?}",
        bystander.try_status()
    );

    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    assert!(
        bystander.try_status().is_none(),
        "the unrelated process named in a stale pidfile was signalled: {:?}",
        bystander.try_status()
    );
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    assert!(bystander.try_status().is_none());
    assert!(is_running(bystander.pid));
}

#[test]
fn stale_pidfile_with_a_dead_pid_or_garbage_is_taken_over_silently() {
    for stale in ["999999999\n", "not a pid", "", "\n\n"] {
        let env = TestEnv::new(ONE_TASK);
        make_run_root(&env);
        fs::write(env.pidfile("a"), stale).unwrap();
        // Even --no-kill-concurrent starts: the lock, not the text, decides.
        let mut runner = env.spawn(&["--no-kill-concurrent", "a"]);
        env.wait_running(&mut runner, "a");
        env.wait_lines_while(&mut runner, "out", 1);
        runner.signal(libc::SIGTERM);
        runner.assert_exit(0);
        assert_eq!(env.lines("out"), vec!["a 1"], "stale pidfile {stale:?}");
    }
}

#[test]
fn pidfile_planted_as_a_symlink_is_refused_and_its_target_untouched() {
    let env = TestEnv::new(ONE_TASK);
    make_run_root(&env);
    let victim = env.path("victim");
    fs::write(&victim, "precious\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim, env.pidfile("a")).unwrap();

    for args in [&["a"][..], &["--once", "a"][..]] {
        let done = env.run(args);
        assert!(
            matches!(done.code(), Some(c) if c != 0),
            "{args:?}: a symlinked pidfile was not refused: {:?}\nstderr:\n{}",
            done.status,
            done.stderr
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(fs::symlink_metadata(env.pidfile("a"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            env.read("out"),
            "",
            "a task ran despite the planted symlink"
        );
    }

    // A dangling symlink: its target is not created.
    let missing = env.path("created-through-symlink");
    symlink(&missing, env.pidfile("b")).unwrap();
    env.write_config("[tasks.b]\ncommand = 'echo b >> \"$T/out\"'\n");
    let done = env.run(&["--once", "b"]);
    assert!(matches!(done.code(), Some(c) if c != 0));
    assert!(
        !missing.exists(),
        "the pidfile was created through a symlink"
    );
    assert_eq!(env.read("out"), "");
}

/// Every line is "a N" / "b N" alternating a, b, a, b with N = 1, 1, 2, 2, 3, ...
fn assert_alternating(lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let mut it = line.split_whitespace();
        let expected = format!("{} {}", ["a", "b"][i % 2], i / 2 + 1);
        let got = format!("{} {}", it.next().unwrap(), it.next().unwrap());
        assert_eq!(
            got, expected,
            "line {i}: a task was skipped or run twice: {lines:#?}"
        );
    }
}

#[test]
fn relaunch_during_a_cooldown_upgrades_and_keeps_the_due_time() {
    let env = TestEnv::new(&format!(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "2s"
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "100ms"
"#
    ));
    let mut old = env.spawn(&["a", "b"]);
    env.wait_running(&mut old, "a_b");
    env.wait_lines_while(&mut old, "out", 1);

    let mut new = env.spawn(&["a", "b"]);
    old.assert_exit(0);
    env.wait_running(&mut new, "a_b");
    let lines = env.wait_lines_while(&mut new, "out", 3);
    let stamps = stamped(&lines);
    let gap = stamps[1].1 - stamps[0].1;
    // The stamps are the tasks' own, each taken a moment after its start (a loaded machine may
    // stretch that moment for one and not the other): 0.3 s of slack. Not keeping the due time
    // would run b at once (the new instance takes over within moments of a's run).
    assert!(
        gap >= 1.7,
        "b ran {gap:.2}s after a, before a's 2s cooldown was due: {lines:#?}"
    );
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
    assert_alternating(&env.lines("out"));
}

#[test]
fn relaunch_during_a_task_lets_it_finish_and_continues_with_the_next() {
    let env = TestEnv::new(
        r#"
[defaults]
stop_grace = "1h"
success_cooldown = "0s"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID start" >> "$T/out"; while [ ! -e "$T/go" ]; do sleep 0.02; done; rm -f "$T/go"; echo "a $RUN_CHAIN_RUN_ID end" >> "$T/out"'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#,
    );
    let mut old = env.spawn(&["a", "b"]);
    env.wait_running(&mut old, "a_b");
    env.wait_lines_while(&mut old, "out", 1);
    // The new instance records itself as the newest launch (CHAIN.next), then asks the old
    // one to hand over while a runs.
    let mut new = launch_and_wait_recorded(&env, "a_b", &["a", "b"]);
    assert!(
        old.try_status().is_none(),
        "the old instance exited while its task was running within stop_grace: {:?}\nstderr:\n{}",
        old.try_status(),
        old.stderr()
    );
    assert_eq!(env.lines("out"), vec!["a 1 start"]);

    fs::write(env.path("go"), "").unwrap();
    old.assert_exit(0);
    env.wait_running(&mut new, "a_b");
    env.wait_lines_while(&mut new, "out", 4);
    new.signal(libc::SIGQUIT);
    new.assert_exit(0);
    let lines = env.lines("out");
    assert_eq!(
        lines[..4],
        ["a 1 start", "a 1 end", "b 1", "a 2 start"],
        "{lines:#?}"
    );
}

#[test]
fn relaunch_during_a_task_past_stop_grace_stops_it_and_runs_it_again_first() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; echo $$ > "$T/a$RUN_CHAIN_RUN_ID.pid"; exec sleep 1000'
stop_grace = "500ms"
kill_grace = "200ms"
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#,
    );
    let mut old = env.spawn(&["a", "b"]);
    env.wait_running(&mut old, "a_b");
    let first_task = wait_pid_file(&env.path("a1.pid"));
    let mut new = env.spawn(&["a", "b"]);
    old.assert_exit(0);
    assert!(
        !is_running(first_task),
        "the old instance exited but left its task running"
    );
    env.wait_running(&mut new, "a_b");
    let second_task = wait_pid_file(&env.path("a2.pid"));
    assert_eq!(
        env.lines("out"),
        vec!["a 1", "a 2"],
        "the interrupted task must run again first"
    );
    new.signal(libc::SIGQUIT);
    new.assert_exit(0);
    wait_until("the second run is gone", || !is_running(second_task));
}

#[test]
fn run_ids_keep_increasing_across_relaunches() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "100ms"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 2);
    for _ in 0..3 {
        let mut next = env.spawn(&["a"]);
        runner.assert_exit(0);
        env.wait_running(&mut next, "a");
        let have = env.lines("out").len();
        env.wait_lines_while(&mut next, "out", have + 2);
        runner = next;
    }
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let lines = env.lines("out");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("a {}", i + 1), "run ids: {lines:#?}");
    }
}

#[test]
fn no_kill_concurrent_exits_75_and_leaves_the_running_instance_alone() {
    let env = TestEnv::new(ONE_TASK);
    let mut runner = env.spawn(&["--no-kill-concurrent", "a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    let done = env.run(&["--no-kill-concurrent", "a"]);
    done.assert_code(75);
    env.assert_running(&mut runner, "a");
    assert_eq!(env.lines("out"), vec!["a 1"]);
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

/// Twenty launches of one chain at the same instant, ten rounds (each round also racing the
/// survivor of the last): exactly one ends up running, every other exits 75 (superseded or
/// refused) or 0 (handed over), and the task, in its 1h cooldown, never runs twice.
#[test]
fn twenty_launches_at_once_leave_exactly_one_running() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "1h"
stop_grace = "10s"
"#,
    );
    // RUN_CHAIN_TEST_ROUNDS=200 makes it a stress test.
    let rounds = std::env::var("RUN_CHAIN_TEST_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut all: Vec<Runner> = Vec::new();
    for round in 0..rounds {
        let go = env.path(&format!("go{round}"));
        for _ in 0..20 {
            // Each launch waits for the go file, then execs run-chain (same PID).
            let mut cmd = env.command_for("sh");
            cmd.arg("-c")
                .arg("while [ ! -e \"$0\" ]; do sleep 0.01; done; exec \"$@\"")
                .arg(&go)
                .arg(bin())
                .arg("-c")
                .arg(&env.config)
                .arg("--run-root")
                .arg(&env.run_root)
                .arg("a");
            all.push(env.spawn_command(cmd));
        }
        fs::write(&go, "").unwrap();
        wait_until_explained(
            DEADLINE,
            &format!("round {round}: exactly one instance left, holding the lock"),
            || {
                let alive: Vec<i32> = all
                    .iter_mut()
                    .filter_map(|r| r.try_status().is_none().then_some(r.pid))
                    .collect();
                let holders = lock_holders(&env.pidfile("a"));
                let text = fs::read_to_string(env.pidfile("a")).unwrap_or_default();
                if alive.len() == 1 && holders == alive && text == format!("{}\n", alive[0]) {
                    return Ok(());
                }
                let mut why = format!(
                    "alive {alive:?}, lock holders {holders:?}, pidfile {text:?}, next {:?}\n",
                    fs::read_to_string(env.run_root.join("a.next")).unwrap_or_default()
                );
                let named = text.trim().parse::<i32>().ok();
                for r in all.iter_mut() {
                    let status = r.try_status();
                    why += &format!("{} {status:?}\n", r.pid);
                    let mentions_named = named.is_some_and(|n| r.stderr().contains(&n.to_string()));
                    if alive.contains(&r.pid) || Some(r.pid) == named || mentions_named {
                        why += &format!("--- {} stderr:\n{}\n", r.pid, r.stderr());
                    }
                }
                Err(why)
            },
        );
        for r in all.iter_mut() {
            if let Some(status) = r.try_status() {
                assert!(
                    matches!(status.code(), Some(0) | Some(75)),
                    "round {round}: launch {} exited with {status:?}; stderr:\n{}",
                    r.pid,
                    r.stderr()
                );
            }
        }
    }
    let survivor = all
        .iter_mut()
        .find_map(|r| r.try_status().is_none().then_some(r))
        .unwrap();
    let survivor_pid = survivor.pid;
    // Nothing else of this chain runs: only the survivor and its own children (its guardian).
    wait_until("only the survivor and its children remain", || {
        env.marked_processes()
            .iter()
            .all(|&p| p == survivor_pid || proc_ppid(p) == Some(survivor_pid))
    });
    assert_eq!(
        env.lines("out"),
        vec!["a 1"],
        "a task in its cooldown was run again by a handover"
    );
    survivor.signal(libc::SIGTERM);
    survivor.assert_exit(0);
}

const GATED_AB: &str = r#"
[defaults]
stop_grace = "1h"
success_cooldown = "0s"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID start" >> "$T/out"; while [ ! -e "$T/go" ]; do sleep 0.02; done; rm -f "$T/go"; echo "a $RUN_CHAIN_RUN_ID end" >> "$T/out"'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "1h"
"#;

/// Launches the chain again and waits until the new launch has recorded itself as the newest
/// (RUN_ROOT/CHAIN.next changed), i.e. it is waiting for the running instance to hand over.
fn launch_and_wait_recorded(env: &TestEnv, chain: &str, args: &[&str]) -> Runner {
    let next = env.run_root.join(format!("{chain}.next"));
    let before = fs::read(&next).ok();
    let mut runner = env.spawn(args);
    runner.wait_for("the new launch records itself in CHAIN.next", || {
        fs::read(&next).ok() != before
    });
    runner
}

#[test]
fn an_older_waiting_launch_is_superseded_by_a_newer_one_and_exits_75() {
    let env = TestEnv::new(GATED_AB);
    let mut old = env.spawn(&["a", "b"]);
    env.wait_running(&mut old, "a_b");
    env.wait_lines_while(&mut old, "out", 1);
    let mut waiting = launch_and_wait_recorded(&env, "a_b", &["a", "b"]);
    let mut newest = launch_and_wait_recorded(&env, "a_b", &["a", "b"]);

    waiting.assert_exit(75);
    assert!(
        waiting.stderr().contains(&newest.pid.to_string()),
        "the superseded launch must say which newer PID superseded it:\n{}",
        waiting.stderr()
    );
    // The old instance still runs its task, undisturbed, within its 1h stop_grace.
    env.assert_running(&mut old, "a_b");

    fs::write(env.path("go"), "").unwrap();
    old.assert_exit(0);
    env.wait_running(&mut newest, "a_b");
    env.wait_lines_while(&mut newest, "out", 3);
    assert_eq!(env.lines("out"), vec!["a 1 start", "a 1 end", "b 1"]);
    newest.signal(libc::SIGTERM);
    newest.assert_exit(0);
}

#[test]
fn a_waiting_launch_stops_at_once_on_sigterm_or_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let env = TestEnv::new(GATED_AB);
        let mut old = env.spawn(&["a", "b"]);
        env.wait_running(&mut old, "a_b");
        env.wait_lines_while(&mut old, "out", 1);
        let mut waiting = launch_and_wait_recorded(&env, "a_b", &["a", "b"]);
        waiting.signal(sig);
        // Far within the old task's 1h stop_grace.
        waiting.wait_exit();
        env.assert_running(&mut old, "a_b");
        assert_eq!(env.lines("out"), vec!["a 1 start"]);
        old.signal(libc::SIGTERM);
        fs::write(env.path("go"), "").unwrap();
        old.assert_exit(0);
        assert_eq!(env.lines("out"), vec!["a 1 start", "a 1 end"]);
    }
}

/// A holder that does not hand over (here: stopped with SIGSTOP) is killed once the new
/// instance's stop_grace + kill_grace and a margin have passed; the new one then takes over.
#[test]
fn a_holder_that_does_not_hand_over_is_killed_after_the_grace() {
    let env = TestEnv::new(
        r#"
[defaults]
stop_grace = "500ms"
kill_grace = "200ms"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "1h"
"#,
    );
    let mut old = env.spawn(&["a"]);
    env.wait_running(&mut old, "a");
    env.wait_lines_while(&mut old, "out", 1);
    old.signal(libc::SIGSTOP);
    let mut new = env.spawn(&["a"]);
    let status = old.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the stuck holder should have been SIGKILLed: {status:?}"
    );
    env.wait_running(&mut new, "a");
    // The old instance may have been stopped before it recorded the end of run 1 (the task's
    // line is written before run-chain sees the task exit); then the new one runs a again, once.
    // Otherwise it carries on with a's 1h cooldown. Either way it settles in that cooldown:
    // look at the lines only then, so that a run still to come is not missed.
    let new_pid = new.pid;
    env.wait_chain_status("a", "the new instance settles in a's cooldown", |c| {
        c["pid"].as_i64() == Some(new_pid as i64) && c["now"]["state"] == "cooldown"
    });
    let lines = env.lines("out");
    assert!(
        lines == ["a 1"] || lines == ["a 1", "a 2"],
        "run ids must continue, and a may run again at most once: {lines:?}"
    );
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
}

/// Relaunching under the same --name with a changed task list continues with the next task
/// that is still in the list.
#[test]
fn relaunch_with_a_changed_task_list_continues_with_the_next_task_still_listed() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "1s"
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
[tasks.c]
command = 'echo "c $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#,
    );
    let mut old = env.spawn(&["--name", "ch", "a", "b", "c"]);
    env.wait_running(&mut old, "ch");
    env.wait_lines_while(&mut old, "out", 1);
    let mut new = env.spawn(&["--name", "ch", "a", "c"]);
    old.assert_exit(0);
    env.wait_running(&mut new, "ch");
    env.wait_lines_while(&mut new, "out", 2);
    assert_eq!(env.lines("out"), vec!["a 1", "c 1"]);
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
}

/// An instance just stopped is no "newer launch": while its parent has not reaped it yet (a
/// zombie, still named in CHAIN.next), `--once` and `--no-kill-concurrent` start the chain.
/// They exited 75 ("being taken over by a newer launch") until the zombie was reaped.
#[test]
fn a_stopped_instance_not_yet_reaped_does_not_block_once() {
    let env = TestEnv::new(ONE_TASK);
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    env.sub(&["stop", "a"]).assert_code(0);
    // Not reaped yet: the test, its parent, has not waited for it.
    let state = fs::read_to_string(format!("/proc/{}/stat", runner.pid)).unwrap();
    assert!(state.contains(") Z "), "expected a zombie: {state}");
    env.run(&["--once", "a"]).assert_code(0);
    env.run(&["--once", "--no-kill-concurrent", "a"])
        .assert_code(0);
    assert_eq!(env.lines("out"), ["a 1", "a 2", "a 3"]);
    runner.assert_exit(0);
}

/// CPU seconds (user + system) a live process has used, from /proc/PID/stat.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from 3 after the comm, in clock ticks.
    let ticks: u64 = f[14 - 3].parse::<u64>().unwrap() + f[15 - 3].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A launch waiting for the running instance to hand over sleeps until something happens: it
/// read CHAIN.next, which woke its own watch of RUN_ROOT, and so spun at full CPU for the whole
/// stop_grace of the old instance's task.
#[test]
fn a_launch_waiting_for_the_hand_over_does_not_spin() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; exec sleep 1000'
stop_grace = "3s"
kill_grace = "1s"
success_cooldown = "1h"
fail_cooldown = "1h"
"#,
    );
    let mut old = env.spawn(&["a"]);
    env.wait_running(&mut old, "a");
    env.wait_lines_while(&mut old, "out", 1);
    let started = std::time::Instant::now();
    let mut new = env.spawn(&["a"]);
    old.assert_exit(0);
    env.wait_running(&mut new, "a");
    let waited = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(new.pid);
    assert!(
        waited >= 2.9,
        "the hand-over took {waited:.2}s, less than the 3s stop_grace"
    );
    assert!(
        cpu < 0.5,
        "the waiting launch used {cpu:.2}s of CPU over a {waited:.2}s wait"
    );
    env.wait_lines_while(&mut new, "out", 2);
    new.signal(libc::SIGQUIT);
    new.assert_exit(0);
}

/// An instance killed during a run (SIGKILL: no hand-over) leaves the run to its guardian,
/// which sends it SIGTERM and waits up to its kill_grace. A relaunch at once must not start the
/// task again while that run still lives: it waits for the guardian. It started run 2 at once,
/// beside run 1 (which was still shutting down, as its TERM handler takes 2 s). (The task
/// writes nothing to its output: the pipes' reader died with run-chain, and a write there
/// would end it at once by SIGPIPE.)
#[test]
fn a_relaunch_after_a_kill_waits_for_the_old_run_to_end() {
    relaunch_after_a_kill(&["a"]);
}

/// The same after a killed `--once` instance of a chain that had never run (its CHAIN.state has
/// no boot id of the chain's own: the guardian's is recorded apart).
#[test]
fn a_relaunch_after_a_killed_once_waits_for_the_old_run_to_end() {
    relaunch_after_a_kill(&["--once", "a"]);
}

fn relaunch_after_a_kill(first: &[&str]) {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = '''
exec 9>"$T/lock" >/dev/null 2>&1
if ! flock -n 9; then echo "OVERLAP $RUN_CHAIN_RUN_ID" >> "$T/events"; exit 3; fi
trap 'sleep 2; echo "END $RUN_CHAIN_RUN_ID" >> "$T/events"; exit 0' TERM
echo "START $RUN_CHAIN_RUN_ID" >> "$T/events"
while :; do sleep 0.1; done
'''
stop_grace = "1h"
kill_grace = "30s"
success_cooldown = "1h"
fail_cooldown = "1h"
"#,
    );
    let mut old = env.spawn(first);
    env.wait_running(&mut old, "a");
    env.wait_lines_while(&mut old, "events", 1);
    old.signal(libc::SIGKILL);
    old.wait_exit();
    let mut new = env.spawn(&["a"]);
    env.wait_lines_while(&mut new, "events", 3);
    assert_eq!(env.lines("events"), ["START 1", "END 1", "START 2"]);
    let runs = env.wait_history("a", &[], "run 1 interrupted, run 2 running", |r| {
        r.len() == 2 && r[1]["outcome"] == "interrupted"
    });
    assert!(
        runs[1]["duration_seconds"].as_f64().unwrap_or(0.0) >= 1.9,
        "run 1 lasted until its TERM handler ended: {:#}",
        runs[1]
    );
    new.signal(libc::SIGQUIT);
    new.assert_exit(0);
}

/// Whether a runner's stderr (its file) says `what` by now.
fn said(stderr: &std::path::Path, what: &str) -> bool {
    fs::read_to_string(stderr)
        .unwrap_or_default()
        .contains(what)
}

/// Starts chain `a` (whose task keeps running), waits for its first line in `out`, launches
/// it again and waits until the new launch has asked the old instance to hand over: the new
/// launch is then waiting. Returns (old, new).
fn old_running_and_new_waiting(env: &TestEnv) -> (Runner, Runner) {
    let mut old = env.spawn(&["a"]);
    env.wait_running(&mut old, "a");
    env.wait_lines_while(&mut old, "out", 1);
    let mut new = env.spawn(&["a"]);
    let new_err = new.stderr.clone();
    new.wait_for("the new launch has asked the old one to hand over", || {
        said(&new_err, "asking it to hand over")
    });
    (old, new)
}

/// `stop` during an upgrade (a launch waiting for the old instance to hand over) stops the
/// chain: the waiting launch is asked to give up too. It took the lock as the old instance
/// exited, and the chain went on although `stop` had said "stopped".
#[test]
fn stop_during_a_hand_over_stops_the_waiting_launch_too() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; exec sleep 1000'
stop_grace = "2s"
kill_grace = "1s"
success_cooldown = "1h"
fail_cooldown = "1h"
"#,
    );
    let (mut old, mut new) = old_running_and_new_waiting(&env);
    let stop = env.sub(&["stop", "a"]);
    stop.assert_code(0);
    assert!(
        stop.stderr
            .contains(&format!("(PID {}) to give up", new.pid)),
        "{}",
        stop.stderr
    );
    old.assert_exit(0);
    new.assert_exit(0);
    assert!(
        flock_n_succeeds(&env.pidfile("a")),
        "the chain is still running"
    );
    assert_eq!(env.lines("out"), ["a 1"], "the task ran again");
    let status = env.sub(&["status"]);
    assert!(status.stdout.contains("a: down"), "{}", status.stdout);
}

/// A SIGHUP sent to a launch while it waits for the old instance to hand over is not lost: the
/// new instance reads the config again before its first run (as a running chain does on
/// SIGHUP). It was dropped, and the new instance ran the config it had validated at launch.
#[test]
fn a_sighup_to_a_launch_waiting_to_take_over_is_acted_on_once_it_runs() {
    let config = |version: &str| {
        format!(
            r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID {version}" >> "$T/out"; exec sleep 1000'
stop_grace = "5s"
kill_grace = "1s"
success_cooldown = "1h"
fail_cooldown = "1h"
"#
        )
    };
    let env = TestEnv::new(&config("v1"));
    let (mut old, mut new) = old_running_and_new_waiting(&env);
    let new_err = new.stderr.clone();
    let logged = |what: &str| said(&new_err, what);
    env.write_config(&config("v2"));
    new.signal(libc::SIGHUP);
    // The new launch cannot run before the old instance has exited (5 s of stop_grace):
    // with the old one still there, the signal came while it waited.
    assert!(
        is_running(old.pid),
        "the old instance had already exited: the signal did not come during the wait"
    );
    old.assert_exit(0);
    env.wait_lines_while(&mut new, "out", 2);
    assert_eq!(
        env.lines("out"),
        ["a 1 v1", "a 2 v2"],
        "the interrupted task ran again with the config as it was when SIGHUP came"
    );
    assert!(
        logged("SIGHUP while waiting to run") && logged("SIGHUP: reloaded"),
        "{}",
        fs::read_to_string(&new_err).unwrap_or_default()
    );
    new.signal(libc::SIGQUIT);
    new.assert_exit(0);
}

/// A SIGUSR1 (kick) sent to a launch while it waits for the old instance's running task does
/// nothing, as a kick during a run does: the old task ends within its stop_grace, the new
/// instance carries on with the cooldown after it, and that cooldown is not skipped.
#[test]
fn a_kick_to_a_launch_waiting_during_a_run_does_not_skip_the_next_cooldown() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'echo "start $RUN_CHAIN_RUN_ID" >> "$T/out"; sleep 10; echo "end $RUN_CHAIN_RUN_ID" >> "$T/out"'
stop_grace = "60s"
success_cooldown = "1h"
fail_cooldown = "1h"
"#,
    );
    let (mut old, mut new) = old_running_and_new_waiting(&env);
    let new_err = new.stderr.clone();
    let logged = |what: &str| said(&new_err, what);
    new.signal(libc::SIGUSR1);
    assert!(
        is_running(old.pid),
        "the old instance had already exited: the kick did not come during the wait"
    );
    old.assert_exit(0);
    let entry = env.wait_chain_status("a", "the new instance runs, in the cooldown", |c| {
        c["pid"] == new.pid && c["now"]["state"] == "cooldown"
    });
    assert_eq!(
        env.lines("out"),
        ["start 1", "end 1"],
        "the kick made the new instance skip the cooldown: {entry:#}"
    );
    let until = time_of(&entry["now"], "until");
    assert!(
        until > epoch_now() + 3000.0,
        "the cooldown after run 1 (1h) is kept: {entry:#}"
    );
    assert!(
        logged("SIGUSR1 while waiting to run: nothing to end"),
        "{}",
        fs::read_to_string(&new_err).unwrap_or_default()
    );
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
}
