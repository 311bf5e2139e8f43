//! `kick` and `stop` carry who asked to the chain (issue 19, "every action is logged and
//! recorded with its source"), against the real binary: the CLI and the console ask over the
//! chain's control channel (RUN_ROOT/CHAIN.ctl); the chain logs the source, and the run a
//! kick starts records `trigger = kick` with `requested_by`. A kick by `kill -USR1` records
//! no source; with the channel gone, `kick` and `stop` fall back to the signals. The tasks
//! append to a ledger (`$T/out`); the tests wait on it, never sleep.

mod common;
mod console_support;

use common::*;
use console_support::*;

/// Two tasks with an hour's cooldown: nothing runs by the schedule once the first has run.
/// `a` waits for `$T/go-a` when `$T/hold-a` exists (a task that runs while the test acts).
const CONFIG: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
stop_grace = "1h"

[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; if [ -e "$T/hold-a" ]; then while [ ! -e "$T/go-a" ]; do sleep 0.02; done; fi'

[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"'
"#;

/// The run of `task` with this id, once recorded with an outcome other than running.
fn ended_run(env: &TestEnv, task: &str, id: u64) -> serde_json::Value {
    let runs = env.wait_history(task, &[], &format!("{task} run {id} recorded"), |r| {
        r.iter()
            .any(|r| r["run_id"] == id && r["outcome"] != "running")
    });
    runs.into_iter()
        .find(|r| r["run_id"] == id)
        .unwrap_or_else(|| panic!("no run {id} of {task}"))
}

fn ctl_of(env: &TestEnv, chain: &str) -> std::path::PathBuf {
    env.run_root.join(format!("{chain}.ctl"))
}

/// A chain started and in the cooldown after `a`'s first run, its channel up.
fn chain_in_cooldown(env: &TestEnv) -> Runner {
    let mut chain = env.spawn(&["--name", "ab", "a", "b"]);
    env.wait_running(&mut chain, "ab");
    env.wait_lines_while(&mut chain, "out", 1);
    ended_run(env, "a", 1);
    env.wait_chain_status("ab", "ab cools down", |c| c["now"]["state"] == "cooldown");
    wait_until("the control socket is there", || ctl_of(env, "ab").exists());
    chain
}

/// The CLI's kick: the run it starts is `kick (USER on TTY)`, and the chain's log says who
/// kicked; then a kick by `kill -USR1` records no source; then `stop` from the CLI: the
/// chain's log names who asked, and it exits 0 as on SIGTERM.
#[test]
fn a_cli_kick_and_stop_carry_their_source_and_a_signal_kick_has_none() {
    let env = TestEnv::new(CONFIG);
    let mut chain = chain_in_cooldown(&env);
    let k = env.sub(&["kick", "ab"]);
    k.assert_code(0);
    assert!(k.stdout.contains("kicked chain ab"), "{}", k.stdout);
    env.wait_lines_while(&mut chain, "out", 2);
    let b = ended_run(&env, "b", 1);
    assert_eq!(b["trigger"], "kick", "{b:#}");
    let by = b["requested_by"].as_str().unwrap_or_default().to_string();
    assert!(by.contains("(no tty)") || by.contains(" on "), "{b:#}");
    assert!(
        chain.stderr().contains(&format!("ab: kicked by {by}")),
        "{}",
        chain.stderr()
    );
    let table = env.sub(&["history", "b"]);
    assert!(
        table.stdout.contains(&format!("kick ({by})")),
        "{}",
        table.stdout
    );

    // kill -USR1 by hand: still a kick, with no source.
    env.wait_chain_status("ab", "ab cools down after b", |c| {
        c["now"]["state"] == "cooldown"
    });
    chain.signal(libc::SIGUSR1);
    env.wait_lines_while(&mut chain, "out", 3);
    let a = ended_run(&env, "a", 2);
    assert_eq!(a["trigger"], "kick", "{a:#}");
    assert!(a.get("requested_by").is_none(), "{a:#}");

    let s = env.sub(&["stop", "ab"]);
    s.assert_code(0);
    assert!(s.stdout.contains("stopped"), "{}", s.stdout);
    chain.assert_exit(0);
    let log = chain.stderr();
    assert!(
        log.contains(&format!("ab: stop asked by {by}: stopping")),
        "{log}"
    );
    assert!(
        !log.contains("SIGTERM"),
        "the stop came over the channel: {log}"
    );
}

/// A kick while a task runs does nothing, and its source does not go to a later run; `stop
/// --now` from the CLI cuts the running task (interrupted) and the log names who asked.
#[test]
fn a_kick_during_a_run_is_not_carried_and_stop_now_names_its_source() {
    let env = TestEnv::new(CONFIG);
    std::fs::write(env.path("hold-a"), "").unwrap();
    let mut chain = env.spawn(&["--name", "ab", "a", "b"]);
    env.wait_running(&mut chain, "ab");
    env.wait_lines_while(&mut chain, "out", 1);
    wait_until("the control socket is there", || {
        ctl_of(&env, "ab").exists()
    });
    env.sub(&["kick", "ab"]).assert_code(0);
    wait_until("the kick is logged", || {
        chain.stderr().contains("not in a cooldown; nothing to end")
    });
    std::fs::write(env.path("go-a"), "").unwrap();
    ended_run(&env, "a", 1);
    env.wait_chain_status("ab", "ab cools down", |c| c["now"]["state"] == "cooldown");
    assert_eq!(
        env.lines("out"),
        ["a 1"],
        "the kick during a's run started b"
    );

    // stop --now while a runs.
    std::fs::remove_file(env.path("go-a")).unwrap();
    env.sub(&["kick", "ab"]).assert_code(0);
    env.wait_lines_while(&mut chain, "out", 2);
    // b ran (kicked), then a waits in its cooldown: kick again to have a running.
    ended_run(&env, "b", 1);
    env.wait_chain_status("ab", "ab cools down after b", |c| {
        c["now"]["state"] == "cooldown"
    });
    env.sub(&["kick", "ab"]).assert_code(0);
    env.wait_chain_status("ab", "ab runs a", |c| c["now"]["state"] == "running");
    let s = env.sub(&["stop", "--now", "ab"]);
    s.assert_code(0);
    chain.assert_exit(0);
    let a = ended_run(&env, "a", 2);
    assert_eq!(a["outcome"], "interrupted", "{a:#}");
    let log = chain.stderr();
    assert!(
        log.contains("ab: stop --now asked by ") && !log.contains("SIGQUIT"),
        "{log}"
    );
}

/// The console's kick and stop: the run records `web 127.0.0.1:PORT`, the chain logs it.
#[test]
fn a_web_kick_and_stop_carry_the_peer() {
    let env = TestEnv::new(CONFIG);
    let mut chain = chain_in_cooldown(&env);
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let host = addr.to_string();
    let origin = format!("http://{host}");
    let token = action_token(addr, "ab", "kick");
    let body = format!("token={token}");
    let post = |action: &str| {
        request(
            addr,
            "POST",
            &format!("/chain/ab/{action}"),
            &[
                ("Host", host.as_str()),
                ("Origin", origin.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(post("kick").status, 303);
    env.wait_lines_while(&mut chain, "out", 2);
    let b = ended_run(&env, "b", 1);
    assert_eq!(b["trigger"], "kick", "{b:#}");
    let by = b["requested_by"].as_str().unwrap_or_default().to_string();
    assert!(by.starts_with("web 127.0.0.1:"), "{b:#}");
    assert!(
        chain.stderr().contains(&format!("ab: kicked by {by}")),
        "{}",
        chain.stderr()
    );
    assert_eq!(post("stop").status, 303);
    chain.assert_exit(0);
    let log = chain.stderr();
    assert!(log.contains("ab: stop asked by web 127.0.0.1:"), "{log}");
}

/// With the control socket gone (as with an older instance), `kick` and `stop` still work,
/// by the signals: the kicked run has no source, the stop is a SIGTERM, exit status 0.
#[test]
fn without_the_control_socket_kick_and_stop_fall_back_to_the_signals() {
    let env = TestEnv::new(CONFIG);
    let mut chain = chain_in_cooldown(&env);
    std::fs::remove_file(ctl_of(&env, "ab")).unwrap();
    env.sub(&["kick", "ab"]).assert_code(0);
    env.wait_lines_while(&mut chain, "out", 2);
    let b = ended_run(&env, "b", 1);
    assert_eq!(b["trigger"], "kick", "{b:#}");
    assert!(b.get("requested_by").is_none(), "{b:#}");
    assert!(chain.stderr().contains("ab: SIGUSR1: ending the cooldown"));
    let s = env.sub(&["stop", "ab"]);
    s.assert_code(0);
    assert!(s.stdout.contains("stopped"), "{}", s.stdout);
    chain.assert_exit(0);
    let log = chain.stderr();
    assert!(log.contains("ab: SIGTERM: stopping"), "{log}");
    assert!(!log.contains("stop asked by"), "{log}");
}

/// A control socket that refuses `kick` and `stop` (as an older instance does: `bad-request`)
/// or never answers (a chain held up): `kick` and `stop` signal the chain instead, as before.
/// The socket here is the test's own, put in the chain's place.
#[test]
fn a_socket_that_refuses_or_does_not_answer_falls_back_to_the_signals() {
    use std::io::{Read, Write};
    let env = TestEnv::new(CONFIG);
    let mut chain = chain_in_cooldown(&env);
    let path = ctl_of(&env, "ab");
    std::fs::remove_file(&path).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        // The first client gets no answer (its connection is held until the second one
        // comes), the second an older instance's refusal.
        let (silent, _) = listener.accept().unwrap();
        let (mut old, _) = listener.accept().unwrap();
        let mut line = [0u8; 256];
        let _ = old.read(&mut line);
        let _ = old.write_all(b"refused bad-request expected: run-now TASK BY\n");
        drop(silent);
    });
    let k = env.sub(&["kick", "ab"]);
    k.assert_code(0);
    env.wait_lines_while(&mut chain, "out", 2);
    let b = ended_run(&env, "b", 1);
    assert_eq!(b["trigger"], "kick", "{b:#}");
    assert!(b.get("requested_by").is_none(), "{b:#}");
    let s = env.sub(&["stop", "ab"]);
    s.assert_code(0);
    chain.assert_exit(0);
    peer.join().unwrap();
    let log = chain.stderr();
    assert!(log.contains("ab: SIGUSR1: ending the cooldown"), "{log}");
    assert!(log.contains("ab: SIGTERM: stopping"), "{log}");
}
