//! The loop, against the real binary: task order, success/fail cooldowns chosen by the outcome
//! (non-zero exit, signal, missing program, missing cwd), `--once`, the task's environment,
//! stdin, working directory, niceness, and output passed through unchanged.

mod common;

use common::*;
use std::fs;
use std::process::Stdio;

/// How much earlier than its cooldown a gap between two tasks' own stamps may look: each stamp
/// is taken a moment after its task started, a moment that a loaded machine may stretch for
/// one task and not the next. (A wrongly chosen cooldown of zero makes a gap of about zero.)
const STAMP_SLACK: f64 = 0.3;

/// Gaps between consecutive stamps.
fn gaps(stamps: &[(String, f64)]) -> Vec<f64> {
    stamps.windows(2).map(|w| w[1].1 - w[0].1).collect()
}

#[test]
fn tasks_run_in_order_for_ever() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"

[tasks.a]
command = 'echo a >> "$T/out"'
[tasks.b]
argv = ["sh", "-c", "echo b >> \"$T/out\""]
[tasks.c]
command = 'echo c >> "$T/out"'
"#,
    );
    let mut runner = env.spawn(&["a", "b", "c"]);
    env.wait_lines_while(&mut runner, "out", 10);
    env.assert_running(&mut runner, "a_b_c");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let lines = env.lines("out");
    assert!(lines.len() >= 10);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, ["a", "b", "c"][i % 3], "order broken: {lines:?}");
    }
}

#[test]
fn success_and_fail_cooldowns_follow_the_outcome() {
    // ok: success_cooldown 1.2s, fail_cooldown 0s; bad: the other way round. Choosing the
    // wrong cooldown for either outcome makes a gap of about zero.
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.ok]
command = 'echo "ok {STAMP}" >> "$T/out"'
success_cooldown = "1200ms"
fail_cooldown = "0s"

[tasks.bad]
command = 'echo "bad {STAMP}" >> "$T/out"; exit 3'
success_cooldown = "0s"
fail_cooldown = "1200ms"
"#
    ));
    let mut runner = env.spawn(&["ok", "bad"]);
    let lines = env.wait_lines_while(&mut runner, "out", 5);
    let stamps = stamped(&lines[..5]);
    let words: Vec<&str> = stamps.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(words, ["ok", "bad", "ok", "bad", "ok"]);
    for (i, gap) in gaps(&stamps).into_iter().enumerate() {
        assert!(
            gap >= 1.2 - STAMP_SLACK,
            "gap {i} after {:?} was {gap:.2}s, expected its cooldown of 1.2s: {lines:?}",
            stamps[i].0
        );
    }
}

/// Every kind of failure (non-zero exit, killed by a signal, program missing, cwd missing) is
/// followed by the task's fail_cooldown, and the chain goes on.
#[test]
fn every_kind_of_failure_takes_the_fail_cooldown() {
    let failures = [
        ("nonzero-exit", "command = 'exit 7'"),
        ("killed-by-signal", "command = 'kill -KILL $$'"),
        (
            "missing-program",
            "argv = [\"/nonexistent/run-chain-test-program\", \"x\"]",
        ),
        (
            "missing-cwd",
            "command = 'true'\ncwd = \"/nonexistent/run-chain-test-dir\"",
        ),
    ];
    let mut running = Vec::new();
    for (what, task) in failures {
        let env = TestEnv::new(&format!(
            r#"
[tasks.mark]
command = 'echo "mark {STAMP}" >> "$T/out"'
success_cooldown = "0s"
fail_cooldown = "1h"

[tasks.x]
{task}
success_cooldown = "0s"
fail_cooldown = "1200ms"
"#
        ));
        let runner = env.spawn(&["mark", "x"]);
        running.push((what, env, runner));
    }
    for (what, env, runner) in running.iter_mut() {
        let lines = env.wait_lines_while(runner, "out", 3);
        let stamps = stamped(&lines[..3]);
        for gap in gaps(&stamps) {
            assert!(
                gap >= 1.2 - STAMP_SLACK,
                "{what}: mark ran again {gap:.2}s after the last, expected x's fail_cooldown of 1.2s"
            );
        }
        env.assert_running(runner, "mark_x");
    }
}

#[test]
fn once_runs_each_task_once_keeps_cooldowns_between_and_none_after_the_last() {
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"

[tasks.a]
command = 'echo "a {STAMP}" >> "$T/out"'
success_cooldown = "1s"
[tasks.b]
command = 'echo "b {STAMP}" >> "$T/out"'
[tasks.c]
command = 'echo "c {STAMP}" >> "$T/out"'
success_cooldown = "1h"
"#
    ));
    env.run(&["--once", "a", "b", "c"]).assert_code(0);
    let stamps = stamped(&env.lines("out"));
    let words: Vec<&str> = stamps.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(words, ["a", "b", "c"]);
    let gap = stamps[1].1 - stamps[0].1;
    assert!(
        gap >= 1.0 - STAMP_SLACK,
        "a's success_cooldown of 1s not kept: {gap:.2}s"
    );
}

#[test]
fn once_with_a_failed_task_runs_the_rest_and_exits_1() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "100ms"

[tasks.a]
command = 'echo a >> "$T/out"'
[tasks.bad]
command = 'echo bad >> "$T/out"; exit 1'
[tasks.c]
command = 'echo c >> "$T/out"'
[tasks.lastbad]
command = 'echo lastbad >> "$T/out"; exit 2'
fail_cooldown = "1h"
"#,
    );
    env.run(&["--once", "a", "bad", "c"]).assert_code(1);
    assert_eq!(env.lines("out"), vec!["a", "bad", "c"]);
    // A failing last task: no fail_cooldown (1h) after it either.
    env.run(&["--once", "a", "lastbad"]).assert_code(1);
    assert_eq!(env.lines("out"), vec!["a", "bad", "c", "a", "lastbad"]);
    // A missing program counts as a failure.
    let env =
        TestEnv::new("[tasks.gone]\nargv = [\"/nonexistent/prog\"]\nfail_cooldown = \"1h\"\n");
    env.run(&["--once", "gone"]).assert_code(1);
}

#[test]
fn once_starts_from_the_first_task_and_refuses_while_the_chain_runs() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = 'echo a >> "$T/out"'
success_cooldown = "1h"
[tasks.b]
command = 'echo b >> "$T/out"'
"#,
    );
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_running(&mut runner, "a_b");
    env.wait_lines_while(&mut runner, "out", 1);

    // The chain runs: --once exits 75 and touches nothing.
    let done = env.run(&["--once", "a", "b"]);
    done.assert_code(75);
    env.assert_running(&mut runner, "a_b");
    assert_eq!(env.lines("out"), vec!["a"]);

    // Stopped in its cooldown before b, the chain's position is b; --once still starts at a
    // (with a's cooldown shortened, as --once keeps the cooldowns between tasks).
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    env.write_config(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = 'echo a >> "$T/out"'
[tasks.b]
command = 'echo b >> "$T/out"'
"#,
    );
    env.run(&["--once", "a", "b"]).assert_code(0);
    assert_eq!(env.lines("out"), vec!["a", "a", "b"]);
}

#[test]
fn task_environment_and_run_ids() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = 'echo "$RUN_CHAIN_NAME $RUN_CHAIN_TASK $RUN_CHAIN_RUN_ID $FROM_CONFIG $FROM_PARENT $SHADOW" >> "$T/out"'
env = { FROM_CONFIG = "cfg-value", SHADOW = "from-config" }
[tasks.b]
argv = ["sh", "-c", "echo \"$RUN_CHAIN_NAME $RUN_CHAIN_TASK $RUN_CHAIN_RUN_ID ${FROM_CONFIG:-unset} $FROM_PARENT $SHADOW\" >> \"$T/out\""]
"#,
    );
    let once = |args: &[&str]| {
        let mut cmd = env.run_command(args);
        cmd.env("FROM_PARENT", "parent-value")
            .env("SHADOW", "from-parent");
        env.finish_command(cmd).assert_code(0);
    };
    once(&["--once", "a", "b"]);
    once(&["--once", "a", "b"]);
    once(&["--once", "--name", "other", "a"]);
    assert_eq!(
        env.lines("out"),
        vec![
            "a_b a 1 cfg-value parent-value from-config",
            "a_b b 1 unset parent-value from-parent",
            "a_b a 2 cfg-value parent-value from-config",
            "a_b b 2 unset parent-value from-parent",
            "other a 1 cfg-value parent-value from-config",
        ]
    );
}

#[test]
fn stdin_is_dev_null() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'readlink /proc/self/fd/0 > "$T/stdin"; cat > "$T/cat"; echo done >> "$T/out"'
"#,
    );
    // run-chain's own stdin is a pipe that stays open: a task that inherited it would block.
    let mut cmd = env.run_command(&["--once", "a"]);
    cmd.stdin(Stdio::piped());
    let done = env.finish_command(cmd);
    done.assert_code(0);
    assert_eq!(env.read("stdin").trim(), "/dev/null");
    assert_eq!(env.read("cat"), "");
    assert_eq!(env.lines("out"), vec!["done"]);
}

#[test]
fn cwd_defaults_to_the_config_folder_and_relative_cwd_is_resolved_from_it() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.here]
command = 'pwd -P >> "$T/out"'
[tasks.sub]
command = 'pwd -P >> "$T/out"'
cwd = "sub/dir"
[tasks.abs]
argv = ["sh", "-c", "pwd -P >> \"$T/out\""]
cwd = "/usr"
"#,
    );
    fs::create_dir_all(env.path("sub/dir")).unwrap();
    // run-chain itself runs in "/" (see TestEnv::bare_command).
    env.run(&["--once", "here", "sub", "abs"]).assert_code(0);
    let root = fs::canonicalize(env.root()).unwrap();
    assert_eq!(
        env.lines("out"),
        vec![
            root.display().to_string(),
            root.join("sub/dir").display().to_string(),
            fs::canonicalize("/usr").unwrap().display().to_string(),
        ]
    );
}

#[test]
fn nice_is_added_to_run_chains_own_niceness() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.plain]
command = 'nice >> "$T/out"'
[tasks.nicer]
command = 'nice >> "$T/out"'
nice = 5
"#,
    );
    env.run(&["--once", "plain", "nicer"]).assert_code(0);
    let own = own_niceness();
    assert_eq!(
        env.lines("out"),
        vec![own.to_string(), (own + 5).min(19).to_string()]
    );
}

#[test]
fn output_passes_through_unchanged() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.a]
command = "printf 'out-line\\n'; printf 'err-line\\n' >&2; printf 'no-newline-tail'"
[tasks.b]
argv = ["sh", "-c", "printf 'B-out\\n'; printf 'B-err-no-newline' >&2"]
"#,
    );
    let done = env.run(&["--once", "a", "b"]);
    done.assert_code(0);
    // run-chain logs on stderr only: its stdout is exactly the tasks' stdout.
    assert_eq!(done.stdout, "out-line\nno-newline-tailB-out\n");
    assert!(
        done.stderr.contains("err-line\n"),
        "task stderr not passed through:\n{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("B-err-no-newline"),
        "a stderr chunk without newline was lost:\n{}",
        done.stderr
    );
}

#[test]
fn large_output_passes_through_complete() {
    let env = TestEnv::new(
        r#"
[tasks.big]
command = "head -c 5000000 /dev/zero | tr '\\0' x; printf END"
"#,
    );
    let done = env.run(&["--once", "big"]);
    done.assert_code(0);
    assert_eq!(done.stdout.len(), 5_000_003);
    assert!(done.stdout.ends_with("xxxEND"));
    assert!(done.stdout[..5_000_000].bytes().all(|b| b == b'x'));
}

/// Output reaches run-chain's stdout/stderr while the task still runs, even without a newline.
#[test]
fn output_passes_through_as_it_comes() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = 'printf partial-chunk; printf err-chunk >&2; echo $$ > "$T/a.pid"; exec sleep 1000'
kill_grace = "200ms"
"#,
    );
    let mut runner = env.spawn(&["a"]);
    let pid = wait_pid_file(&env.path("a.pid"));
    let (out, err) = (runner.stdout.clone(), runner.stderr.clone());
    runner.wait_for(
        "the task's first chunks reach run-chain's stdout and stderr",
        || {
            fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("partial-chunk")
                && fs::read_to_string(&err)
                    .unwrap_or_default()
                    .contains("err-chunk")
        },
    );
    assert!(is_running(pid), "the task ended early");
    runner.signal(libc::SIGQUIT);
    runner.assert_exit(0);
    wait_until("the task is gone", || !is_running(pid));
}

#[test]
fn logs_a_line_at_each_runs_start_and_end() {
    let env = TestEnv::new(
        r#"
[tasks.logtask]
command = "true"
"#,
    );
    let done = env.run(&["--once", "--name", "logchain", "logtask"]);
    done.assert_code(0);
    let lines: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("logtask") && l.contains("logchain"))
        .collect();
    assert!(
        lines.len() >= 2,
        "expected a log line at the run's start and one at its end naming chain and task:\n{}",
        done.stderr
    );
}
