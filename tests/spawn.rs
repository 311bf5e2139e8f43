//! Starting a task's first process (src/spawn.rs, src/process.rs `spawn`), against the real
//! binary:
//! - an `argv` program is looked up like `execvp` does: in the task's own PATH when its `env`
//!   sets one, else in run-chain's PATH; a non-executable file earlier in PATH is passed over;
//! - a program that cannot be run (missing, not executable) or a missing `cwd` is a run with
//!   outcome `spawn-error` whose error names what failed and why, and `--once` exits 1;
//! - the process leads its own process group, has /dev/null as stdin and pipes as stdout and
//!   stderr, no blocked and no ignored signal (SIGPIPE included), the configured niceness, and
//!   run-chain's environment with the task's `env` and the run's identity on top (one entry
//!   per name, the SMTP `password_env` variable removed);
//! - run-chain started with stdin, stdout and stderr closed still captures a task's output;
//! - SIGPIPE ends a pipeline's writer as in a shell, and a task killed by it is recorded so.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Writes `text` to `path` (creating its folder) with permission bits `mode`.
fn write_file(path: &Path, text: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A `#!/bin/sh` script that appends "NAME ARGS... PATH=$PATH" to $T/ran (builtins only, so it
/// needs no PATH of its own).
fn tool_script(name: &str) -> String {
    format!("#!/bin/sh\necho \"{name} $* PATH=$PATH\" >> \"$T/ran\"\n")
}

/// Makes `cmd` start run-chain with every signal at its default action and none blocked, so
/// that whatever a task finds ignored or blocked comes from run-chain, not from the shell or
/// harness that runs the tests (a `nohup`, a CI runner ignoring SIGHUP).
fn with_default_signals(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls (sigaction, sigprocmask) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for sig in 1..=libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    // Signals reserved by libc refuse: nothing to reset there.
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
            // glibc refuses its own two signals (32, 33) whatever the action; a harness may
            // still have left them ignored (cargo's does): the kernel takes SIG_DFL for them
            // (an all-zero kernel sigaction: SIG_DFL, no flags, empty mask).
            for sig in [32, 33] {
                let act = [0u64; 4];
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    act.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// `run-chain ARGS...` (see `TestEnv::run_command`) with default signal dispositions.
fn command(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.run_command(args);
    with_default_signals(&mut cmd);
    cmd
}

/// The one recorded run of `task`.
fn only_run(env: &TestEnv, task: &str) -> serde_json::Value {
    let runs = env.history(task, &[]);
    assert_eq!(runs.len(), 1, "expected one run of {task}: {runs:#?}");
    runs.into_iter().next().expect("one run")
}

/// The `error` string of a run; panics if it has none.
fn error_of(run: &serde_json::Value) -> &str {
    run["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {run:#}"))
}

/// Runs `run-chain --once TASK` for a task that cannot be started: asserts exit status 1 (a
/// failed task), one run with outcome `spawn-error`, and returns its error.
fn spawn_error_of(env: &TestEnv, task: &str) -> String {
    let done = env.finish_command(command(env, &["--once", task]));
    done.assert_code(1);
    let run = only_run(env, task);
    assert_eq!(outcome(&run), "spawn-error", "{run:#}");
    assert!(
        run["exit_code"].is_null() || run["exit_code"].as_i64() == Some(127),
        "a run that never started has no exit code of its own (or the shell's 127): {run:#}"
    );
    assert!(
        run["signal"].is_null(),
        "a run that never started was not killed by a signal: {run:#}"
    );
    let error = error_of(&run).to_owned();
    assert!(
        done.stderr.contains(&error),
        "the error {error:?} is not in run-chain's log:\n{}",
        done.stderr
    );
    error
}

/// The `Sig*` line `field` ("SigBlk", "SigIgn") of a /proc/PID/status text, as a mask.
fn sig_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} line in:\n{status}"));
    let hex = line[field.len() + 1..].trim();
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{field} {hex:?} is not hex: {e}"))
}

/// Names of the signals in `mask` (bit N-1 is signal N), for messages.
fn signal_names(mask: u64) -> Vec<String> {
    (1..=64)
        .filter(|n| mask & (1u64 << (n - 1)) != 0)
        .map(|n: i32| {
            // SAFETY: strsignal returns a pointer to a static or thread-local string.
            let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(n)) };
            format!("{n} ({})", name.to_string_lossy())
        })
        .collect()
}

/// Asserts that no signal is blocked or ignored in the /proc/PID/status text `status`.
fn assert_no_signal_blocked_or_ignored(status: &str, what: &str) {
    for field in ["SigBlk", "SigIgn"] {
        let mask = sig_mask(status, field);
        assert_eq!(
            mask,
            0,
            "{what}: {field} is {mask:016x}, signals {:?}\n{status}",
            signal_names(mask)
        );
    }
}

/// Fields of a `/proc/PID/stat` line after the `(comm)` field, numbered as in proc(5)
/// (`stat_field(s, 5)` is the process group).
fn stat_field(stat: &str, n: usize) -> i64 {
    assert!(n >= 3, "fields 1 and 2 are the pid and comm");
    let close = stat
        .rfind(')')
        .unwrap_or_else(|| panic!("no (comm) in stat line {stat:?}"));
    let field = stat[close + 1..]
        .split_whitespace()
        .nth(n - 3)
        .unwrap_or_else(|| panic!("no field {n} in stat line {stat:?}"));
    field
        .parse()
        .unwrap_or_else(|e| panic!("field {n} {field:?} of {stat:?} is not a number: {e}"))
}

/// `KEY=VALUE` entries of a NUL-separated environment block.
fn environ_entries(block: &str) -> Vec<(String, String)> {
    block
        .split('\0')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .unwrap_or_else(|| panic!("environment entry without '=': {e:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The values of `key` in `entries`, in order (more than one means a duplicated entry).
fn values_of<'a>(entries: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The PATH search.
// ---------------------------------------------------------------------------------------------

#[test]
fn argv_program_is_looked_up_in_the_tasks_own_path() {
    let env = TestEnv::new("");
    let bin = env.path("bin");
    env.write_config(&format!(
        r#"
[tasks.t]
argv = ["mytool", "arg-one", "arg two"]
env = {{ PATH = "{}" }}
"#,
        bin.display()
    ));
    write_file(&bin.join("mytool"), &tool_script("mytool"), 0o755);
    // run-chain's own PATH does not hold the tool: only the task's PATH can find it.
    let mut cmd = command(&env, &["--once", "t"]);
    cmd.env("PATH", "/usr/bin:/bin");
    env.finish_command(cmd).assert_code(0);
    assert_eq!(
        env.lines("ran"),
        vec![format!("mytool arg-one arg two PATH={}", bin.display())],
        "the task's PATH was not used to find `mytool` (or not passed to it)"
    );
    let run = only_run(&env, "t");
    assert_eq!(outcome(&run), "ok", "{run:#}");
    assert_eq!(run["exit_code"].as_i64(), Some(0), "{run:#}");
}

/// As execvp: a file the kernel cannot exec (a script without `#!`) is run by /bin/sh,
/// whether it was found through PATH or given by path.
#[test]
fn a_script_without_a_shebang_is_run_by_the_shell() {
    let env = TestEnv::new("");
    let bin = env.path("bin");
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "0s"

[tasks.by_path]
argv = ["noshebang", "one", "two words"]
env = {{ PATH = "{}" }}

[tasks.by_name]
argv = ["{}/noshebang", "three"]
"#,
        bin.display(),
        bin.display()
    ));
    write_file(
        &bin.join("noshebang"),
        "echo \"ran $# $*\" >> \"$T/ran\"\n",
        0o755,
    );
    env.finish_command(command(&env, &["--once", "by_path", "by_name"]))
        .assert_code(0);
    assert_eq!(
        env.lines("ran"),
        vec!["ran 2 one two words".to_string(), "ran 1 three".to_string()],
        "the script's arguments, as the shell saw them"
    );
    for task in ["by_path", "by_name"] {
        let run = only_run(&env, task);
        assert_eq!(outcome(&run), "ok", "{run:#}");
    }
}

#[test]
fn argv_program_is_looked_up_in_run_chains_path_when_the_task_sets_none() {
    let env = TestEnv::new(
        r#"
[tasks.t]
argv = ["owntool", "x"]
"#,
    );
    let own = env.path("ownbin");
    write_file(&own.join("owntool"), &tool_script("owntool"), 0o755);
    let path = format!("/nonexistent-dir:{}:/usr/bin:/bin", own.display());
    let mut cmd = command(&env, &["--once", "t"]);
    cmd.env("PATH", &path);
    env.finish_command(cmd).assert_code(0);
    assert_eq!(
        env.lines("ran"),
        vec![format!("owntool x PATH={path}")],
        "run-chain's own PATH was not used to find `owntool`"
    );
}

#[test]
fn path_search_passes_over_a_non_executable_file_to_a_later_executable_one() {
    let env = TestEnv::new("");
    let (empty, noexec, bin) = (env.path("empty"), env.path("noexec"), env.path("bin"));
    fs::create_dir_all(&empty).expect("create the empty PATH folder");
    // Not executable by anyone (root included: execve wants at least one execute bit).
    write_file(
        &noexec.join("mytool"),
        "#!/bin/sh\necho wrong-one >> \"$T/ran\"\n",
        0o644,
    );
    write_file(&bin.join("mytool"), &tool_script("mytool"), 0o755);
    let path = format!("{}:{}:{}", empty.display(), noexec.display(), bin.display());
    env.write_config(&format!(
        r#"
[tasks.t]
argv = ["mytool"]
env = {{ PATH = "{path}" }}
"#
    ));
    env.finish_command(command(&env, &["--once", "t"]))
        .assert_code(0);
    assert_eq!(
        env.lines("ran"),
        vec![format!("mytool  PATH={path}")],
        "the executable `mytool` later in PATH was not run"
    );
    assert_eq!(outcome(&only_run(&env, "t")), "ok");
}

// ---------------------------------------------------------------------------------------------
// 2. Spawn errors.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_missing_program_given_by_path_is_a_spawn_error_naming_it() {
    let env = TestEnv::new(
        r#"
[tasks.gone]
argv = ["/nonexistent/x", "arg"]
fail_cooldown = "1h"
"#,
    );
    let error = spawn_error_of(&env, "gone");
    assert!(
        error.starts_with("cannot run /nonexistent/x: ")
            && error.contains("No such file or directory"),
        "error: {error:?}"
    );
}

#[test]
fn a_missing_program_searched_in_path_is_a_spawn_error_naming_it() {
    let env = TestEnv::new("");
    // A PATH of several folders, one holding a file of another name only.
    let dir = env.path("bin");
    write_file(&dir.join("other-tool"), &tool_script("other-tool"), 0o755);
    env.write_config(&format!(
        r#"
[tasks.gone]
argv = ["no-such-program-xyz"]
env = {{ PATH = "/nonexistent-dir:{}:/usr/bin:/bin" }}
fail_cooldown = "1h"

[tasks.gone_own_path]
argv = ["no-such-program-xyz"]
fail_cooldown = "1h"
"#,
        dir.display()
    ));
    for task in ["gone", "gone_own_path"] {
        let error = spawn_error_of(&env, task);
        assert!(
            error.starts_with("cannot run no-such-program-xyz: ")
                && error.contains("No such file or directory"),
            "{task}: error: {error:?}"
        );
    }
    assert_eq!(env.read("ran"), "", "another program was run");
}

#[test]
fn a_program_without_execute_permission_is_a_spawn_error_permission_denied() {
    let env = TestEnv::new("");
    let noexec = env.path("noexec");
    let script = noexec.join("plain-file");
    write_file(&script, "#!/bin/sh\necho ran >> \"$T/ran\"\n", 0o644);
    env.write_config(&format!(
        r#"
[tasks.by_path]
argv = ["{}"]
fail_cooldown = "1h"

[tasks.by_search]
argv = ["plain-file"]
env = {{ PATH = "/nonexistent-dir:{}" }}
fail_cooldown = "1h"
"#,
        script.display(),
        noexec.display()
    ));
    let error = spawn_error_of(&env, "by_path");
    assert!(
        error.starts_with(&format!("cannot run {}: ", script.display()))
            && error.contains("Permission denied"),
        "by_path: error: {error:?}"
    );
    // As execvp: a candidate refused with EACCES is remembered and reported when no later
    // candidate runs, rather than the ENOENT of the other folders.
    let error = spawn_error_of(&env, "by_search");
    assert!(
        error.starts_with("cannot run plain-file: ") && error.contains("Permission denied"),
        "by_search: error: {error:?}"
    );
    assert_eq!(env.read("ran"), "", "the non-executable file was run");
}

#[test]
fn a_missing_cwd_is_a_spawn_error_naming_the_cwd() {
    let env = TestEnv::new(
        r#"
[tasks.nowhere]
command = 'echo ran >> "$T/ran"'
cwd = "/nonexistent/run-chain-spawn-cwd"
fail_cooldown = "1h"
"#,
    );
    let error = spawn_error_of(&env, "nowhere");
    assert!(
        error.starts_with("cannot change into cwd /nonexistent/run-chain-spawn-cwd: ")
            && error.contains("No such file or directory"),
        "error: {error:?}"
    );
    assert_eq!(env.read("ran"), "", "the command ran without its cwd");
}

/// A chain whose task never starts, run for many rounds: every child that failed to exec is
/// reaped (no zombie piles up) and no descriptor leaks per failed start. The fail_cooldown is
/// short but not zero: with "0s", a chain whose every start fails never goes back to its wait
/// (signals are not acted on, the store is not written until it exits), a known issue of the
/// loop, not of the spawner.
#[test]
fn spawn_errors_leave_no_zombie_and_no_descriptor_behind() {
    let env = TestEnv::new(
        r#"
[tasks.gone]
argv = ["/nonexistent/x"]
success_cooldown = "0s"
fail_cooldown = "20ms"
"#,
    );
    let mut runner = env.spawn_command(command(&env, &["gone"]));
    env.wait_running(&mut runner, "gone");
    let runs_at_least =
        |n: u64| move |runs: &[serde_json::Value]| runs.first().is_some_and(|r| run_id(r) >= n);
    env.wait_history("gone", &["--limit", "1"], "10 runs", runs_at_least(10));
    let fds_before = fd_count(runner.pid).expect("run-chain's descriptors");
    let latest = run_id(&env.history("gone", &["--limit", "1"])[0]);
    env.wait_history(
        "gone",
        &["--limit", "1"],
        "100 more runs",
        runs_at_least(latest + 100),
    );
    env.assert_running(&mut runner, "gone");
    let fds_after = fd_count(runner.pid).expect("run-chain's descriptors");
    // A failed start that leaked its two pipes would add 400 descriptors; the store, the
    // outbox and the mailer may open a few more of their own meanwhile.
    assert!(
        fds_after <= fds_before + 16,
        "run-chain's descriptors grew from {fds_before} to {fds_after} over 100 failed starts: \
         {:?}",
        fs::read_dir(format!("/proc/{}/fd", runner.pid))
            .map(|d| d
                .flatten()
                .map(|e| fs::read_link(e.path()).unwrap_or_default())
                .collect::<Vec<_>>())
            .unwrap_or_default()
    );
    let zombies = zombie_children(runner.pid);
    wait_zombies_reaped(runner.pid, &zombies);
    let runs = env.history("gone", &["--limit", "5"]);
    for run in &runs {
        assert_eq!(outcome(run), "spawn-error", "{run:#}");
        assert!(
            error_of(run).starts_with("cannot run /nonexistent/x: "),
            "{run:#}"
        );
    }
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

/// run-chain killed (SIGKILL) in the first moments of a run, before its writer thread
/// wrote the run's start: the next instance still records that run, as `interrupted`
/// (CHAIN.state names it; it was written before the spawn).
#[test]
fn a_run_whose_instance_was_killed_at_once_is_recorded_interrupted_by_the_next() {
    let env = TestEnv::new(
        r#"
[tasks.killer]
command = 'if [ "$RUN_CHAIN_RUN_ID" = 1 ]; then kill -KILL $PPID; sleep 5; fi; echo "run $RUN_CHAIN_RUN_ID" >> "$T/ran"'
"#,
    );
    let first = env.run(&["--once", "killer"]);
    assert_eq!(
        first.status.signal(),
        Some(libc::SIGKILL),
        "the first instance was to be killed by its task: {:?}",
        first.status
    );
    env.run(&["--once", "killer"]).assert_code(0);
    let runs = env.history("killer", &[]);
    let by_id: Vec<(u64, String)> = runs
        .iter()
        .map(|r| (run_id(r), outcome(r).to_string()))
        .collect();
    assert_eq!(
        by_id,
        vec![(2, "ok".to_string()), (1, "interrupted".to_string())],
        "{runs:#?}"
    );
}

/// A task that kills run-chain the moment it starts still dies with it: the task's first
/// process tells the guardian its group itself, before it execs, so there is no moment
/// when run-chain is gone and the guardian does not know the group (4 of 8 such tasks
/// survived before).
#[test]
fn a_task_that_kills_run_chain_at_once_does_not_outlive_it() {
    let env = TestEnv::new(
        r#"
[tasks.assassin]
command = 'echo $$ > "$T/task.pid"; kill -KILL $PPID; exec sleep 60'
kill_grace = "200ms"
"#,
    );
    for round in 0..3 {
        let _ = fs::remove_file(env.path("task.pid"));
        let done = env.run(&["--once", "assassin"]);
        assert_eq!(
            done.status.signal(),
            Some(libc::SIGKILL),
            "round {round}: {:?}",
            done.status
        );
        let pid: i32 = fs::read_to_string(env.path("task.pid"))
            .expect("the task wrote its pid")
            .trim()
            .parse()
            .expect("a pid");
        // Gone, or a zombie whose parent (init) has not reaped it yet.
        let alive = || {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        if !poll_until(std::time::Duration::from_secs(30), || !alive()) {
            // SAFETY: kill with a PID we read; the test cleans up what it asserts about.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("round {round}: the task (pid {pid}) outlived run-chain by 30 s");
        }
    }
}

/// A program that cannot start, with no fail_cooldown: the chain retries it as fast as it
/// can, but each retry is its own turn of the loop. Before, the retries ran inside one event
/// for ever: SIGTERM went unheard, nothing reached the store, and the clock stood still.
#[test]
fn an_unstartable_task_without_cooldown_still_hears_sigterm_and_records_its_runs() {
    let env = TestEnv::new(
        r#"
[tasks.gone]
argv = ["/nonexistent/x"]
success_cooldown = "0s"
fail_cooldown = "0s"
"#,
    );
    let mut runner = env.spawn_command(command(&env, &["gone"]));
    env.wait_running(&mut runner, "gone");
    env.wait_history("gone", &["--limit", "1"], "50 runs recorded", |runs| {
        runs.first().is_some_and(|r| run_id(r) >= 50)
    });
    // The runs are stamped with the clock of their own turn, not one frozen instant.
    let first = env.history("gone", &["--limit", "1"]);
    env.wait_history("gone", &["--limit", "1"], "a later run", |runs| {
        runs.first()
            .is_some_and(|r| r["start"] != first[0]["start"])
    });
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let runs = env.history("gone", &["--limit", "3"]);
    for run in &runs {
        assert_eq!(outcome(run), "spawn-error", "{run:#}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The task's process.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_task_leads_its_own_process_group() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"

[tasks.shell]
command = 'cat /proc/$$/stat > "$T/shell.stat"'

[tasks.direct]
argv = ["cat", "/proc/self/stat"]
"#,
    );
    let done = env.finish_command(command(&env, &["--once", "shell", "direct"]));
    done.assert_code(0);
    let me = std::process::id() as i64;
    // SAFETY: getpgrp has no arguments and cannot fail.
    let my_group = unsafe { libc::getpgrp() } as i64;
    let instance = only_run(&env, "shell")["instance"]["pid"]
        .as_i64()
        .expect("instance pid in the run record");
    for (what, stat) in [("shell", env.read("shell.stat")), ("direct", done.stdout)] {
        let stat = stat.trim().to_owned();
        let pid: i64 = stat
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no pid in stat line {stat:?}"));
        let (ppid, pgrp) = (stat_field(&stat, 4), stat_field(&stat, 5));
        assert_eq!(
            pgrp, pid,
            "{what}: the task (pid {pid}) does not lead its process group: {stat:?}"
        );
        assert_eq!(
            ppid, instance,
            "{what}: the task is not run-chain's child: {stat:?}"
        );
        assert_ne!(pgrp, instance, "{what}: the task is in run-chain's group");
        assert_ne!(pgrp, my_group, "{what}: the task is in the test's group");
        assert_ne!(pid, me);
    }
}

#[test]
fn the_tasks_stdin_is_dev_null_and_its_stdout_and_stderr_are_pipes() {
    let env = TestEnv::new(
        r#"
[tasks.fds]
command = 'L=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2); echo "$L" > "$T/fds"; cat > "$T/cat"'
"#,
    );
    // run-chain's own stdin is a pipe that stays open: a task that inherited it would block.
    let mut cmd = command(&env, &["--once", "fds"]);
    cmd.stdin(std::process::Stdio::piped());
    env.finish_command(cmd).assert_code(0);
    let fds = env.lines("fds");
    assert_eq!(fds.len(), 3, "fds: {fds:?}");
    assert_eq!(fds[0], "/dev/null", "stdin: {fds:?}");
    assert!(
        fds[1].starts_with("pipe:") && fds[2].starts_with("pipe:"),
        "stdout and stderr are not pipes: {fds:?}"
    );
    assert_ne!(
        fds[1], fds[2],
        "stdout and stderr are the same pipe: {fds:?}"
    );
    assert_eq!(env.read("cat"), "", "stdin gave data");
}

/// Each process reads its own status (`cat /proc/self/status`, run directly or exec'd by the
/// shell): a shell's /proc/$$/status read by one of its children is no evidence, as dash
/// blocks every signal around its wait for a child (try `sh -c 'grep SigBlk /proc/$$/status'`).
#[test]
fn the_task_has_no_blocked_and_no_ignored_signal() {
    let env = TestEnv::new(
        r#"
[tasks.direct]
argv = ["cat", "/proc/self/status"]
success_cooldown = "0s"

[tasks.shell]
command = 'exec cat /proc/self/status > "$T/status.$RUN_CHAIN_NAME.$RUN_CHAIN_RUN_ID"'
success_cooldown = "0s"
"#,
    );
    let done = env.finish_command(command(&env, &["--once", "direct", "shell"]));
    done.assert_code(0);
    assert_no_signal_blocked_or_ignored(&done.stdout, "argv task (cat), --once");
    assert_no_signal_blocked_or_ignored(&env.read("status.direct_shell.1"), "shell task, --once");

    // In the loop, where run-chain waits in ppoll between runs and handles signals.
    let finished_runs = |runs: &[serde_json::Value]| -> Vec<u64> {
        runs.iter()
            .filter(|r| outcome(r) == "ok")
            .map(run_id)
            .collect()
    };
    let mut runner = env.spawn_command(command(&env, &["--name", "loop", "shell"]));
    env.wait_running(&mut runner, "loop");
    env.wait_history(
        "shell",
        &["--chain", "loop"],
        "3 runs in the loop",
        |runs| finished_runs(runs).len() >= 3,
    );
    // Signals run-chain handles (SIGUSR1: end the cooldown; SIGHUP: reload the config)
    // arrive between or during runs: the runs after them must not inherit a changed
    // disposition or mask either.
    runner.signal(libc::SIGUSR1);
    runner.signal(libc::SIGHUP);
    let latest = run_id(&env.history("shell", &["--limit", "1", "--chain", "loop"])[0]);
    env.wait_history(
        "shell",
        &["--chain", "loop"],
        "two more runs after SIGUSR1 and SIGHUP",
        |runs| finished_runs(runs).iter().any(|id| *id >= latest + 2),
    );
    env.assert_running(&mut runner, "loop");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let ids = finished_runs(&env.history("shell", &["--chain", "loop"]));
    assert!(ids.len() >= 5, "only runs {ids:?} of the loop finished");
    for id in ids {
        let name = format!("status.loop.{id}");
        assert_no_signal_blocked_or_ignored(&env.read(&name), &format!("shell task, {name}"));
    }
}

#[test]
fn nice_is_added_to_run_chains_niceness() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"

[tasks.plain]
command = 'cut -d" " -f19 /proc/$$/stat > "$T/plain"'

[tasks.nicer]
command = 'cut -d" " -f19 /proc/$$/stat > "$T/nicer"; nice > "$T/nicer.cmd"'
nice = 5

[tasks.direct]
argv = ["cat", "/proc/self/stat"]
nice = 5
"#,
    );
    let done = env.finish_command(command(&env, &["--once", "plain", "nicer", "direct"]));
    done.assert_code(0);
    let own = own_niceness();
    let want = (own + 5).min(19);
    assert_eq!(env.read("plain").trim(), own.to_string(), "without `nice`");
    assert_eq!(
        env.read("nicer").trim(),
        want.to_string(),
        "stat field 19 with nice = 5"
    );
    assert_eq!(
        env.read("nicer.cmd").trim(),
        want.to_string(),
        "`nice` with nice = 5"
    );
    assert_eq!(
        stat_field(done.stdout.trim(), 19),
        i64::from(want),
        "argv task with nice = 5: {}",
        done.stdout
    );
}

/// A negative `nice` raises the priority: allowed to root, a spawn error naming the value
/// for anyone else.
#[test]
fn a_negative_nice_needs_privilege() {
    let env = TestEnv::new(
        r#"
[tasks.eager]
command = 'cut -d" " -f19 /proc/$$/stat > "$T/eager"'
nice = -3
fail_cooldown = "1h"
"#,
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        env.finish_command(command(&env, &["--once", "eager"]))
            .assert_code(0);
        let want = (own_niceness() - 3).max(-20);
        assert_eq!(env.read("eager").trim(), want.to_string());
    } else {
        let error = spawn_error_of(&env, "eager");
        assert!(
            error.starts_with("cannot set nice -3") && error.contains("Permission denied"),
            "error: {error:?}"
        );
        assert_eq!(env.read("eager"), "", "the task ran without its nice value");
    }
}

#[test]
fn the_task_environment_is_run_chains_plus_its_env_plus_the_run_identity() {
    const SECRET_VAR: &str = "RC_SPAWN_TEST_SMTP_SECRET";
    let env = TestEnv::new(&format!(
        r#"
[tasks.showenv]
argv = ["cat", "/proc/self/environ"]
env = {{ FROM_CONFIG = "cfg-value", SHADOW = "from-config", EMPTY_IN_CONFIG = "" }}

[email]
to = ["admin@example.com"]
password_env = "{SECRET_VAR}"
"#
    ));
    let once = || {
        let mut cmd = command(&env, &["--once", "--name", "envchain", "showenv"]);
        cmd.env("FROM_PARENT", "parent-value")
            .env("SHADOW", "from-parent")
            .env("EMPTY_IN_CONFIG", "from-parent")
            .env(SECRET_VAR, "hunter2-not-for-tasks")
            // run-chain's own environment claims other identities: the run's must win.
            .env("RUN_CHAIN_NAME", "bogus-name")
            .env("RUN_CHAIN_TASK", "bogus-task")
            .env("RUN_CHAIN_RUN_ID", "999");
        let done = env.finish_command(cmd);
        done.assert_code(0);
        environ_entries(&done.stdout)
    };
    for run in 1..=2 {
        let entries = once();
        let expect = [
            ("RUN_CHAIN_NAME", "envchain".to_owned()),
            ("RUN_CHAIN_TASK", "showenv".to_owned()),
            ("RUN_CHAIN_RUN_ID", run.to_string()),
            ("FROM_PARENT", "parent-value".to_owned()),
            ("FROM_CONFIG", "cfg-value".to_owned()),
            ("SHADOW", "from-config".to_owned()),
            ("EMPTY_IN_CONFIG", String::new()),
            ("T", env.root().display().to_string()),
        ];
        for (key, value) in expect {
            assert_eq!(
                values_of(&entries, key),
                vec![value.as_str()],
                "run {run}: {key} should be there exactly once, as {value:?}; environment: \
                 {entries:#?}"
            );
        }
        assert!(
            values_of(&entries, SECRET_VAR).is_empty(),
            "run {run}: password_env's variable reached the task: {entries:#?}"
        );
        assert!(
            !entries.iter().any(|(_, v)| v.contains("hunter2")),
            "run {run}: the password reached the task: {entries:#?}"
        );
        // No name twice, whatever it is.
        let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let total = keys.len();
        keys.dedup();
        assert_eq!(
            keys.len(),
            total,
            "run {run}: a name appears twice: {entries:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. run-chain started with stdin, stdout and stderr closed.
// ---------------------------------------------------------------------------------------------

#[test]
fn run_chain_started_with_stdio_closed_still_captures_the_tasks_output() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"

[tasks.first]
command = 'L=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2); echo "$L" > "$T/fds.first"; echo first-out-line; echo first-err-line >&2'

[tasks.second]
argv = ["sh", "-c", "L=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2); echo \"$L\" > \"$T/fds.second\"; echo second-out-line"]
"#,
    );
    let mut cmd = command(&env, &["--once", "first", "second"]);
    // SAFETY: close is async-signal-safe; it runs after the harness set up 0, 1 and 2.
    unsafe {
        cmd.pre_exec(|| {
            for fd in 0..3 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    let done = env.finish_command(cmd);
    assert_eq!(
        done.status.code(),
        Some(0),
        "run-chain with stdio closed exited with {:?}",
        done.status
    );
    assert_eq!(
        (done.stdout.as_str(), done.stderr.as_str()),
        ("", ""),
        "something reached the files that were closed before run-chain started"
    );
    for task in ["first", "second"] {
        let fds = env.lines(&format!("fds.{task}"));
        assert_eq!(fds.len(), 3, "{task}: {fds:?}");
        assert_eq!(fds[0], "/dev/null", "{task}: stdin: {fds:?}");
        assert!(
            fds[1].starts_with("pipe:") && fds[2].starts_with("pipe:"),
            "{task}: stdout and stderr are not pipes: {fds:?}"
        );
        let run = only_run(&env, task);
        assert_eq!(outcome(&run), "ok", "{run:#}");
        assert!(
            run["output_bytes"].as_u64().unwrap_or(0) > 0,
            "{task}: no output counted: {run:#}"
        );
    }
    let log = env.sub(&["log", "first"]);
    log.assert_code(0);
    assert!(
        log.stdout.contains("first-out-line\n") && log.stdout.contains("first-err-line\n"),
        "first's kept output lacks its stdout or stderr line:\n{}",
        log.stdout
    );
    let log = env.sub(&["log", "second"]);
    log.assert_code(0);
    assert_eq!(log.stdout, "second-out-line\n", "second's kept output");
}

// ---------------------------------------------------------------------------------------------
// 5. SIGPIPE.
// ---------------------------------------------------------------------------------------------

#[test]
fn sigpipe_ends_a_pipelines_writer_as_in_a_shell() {
    let env = TestEnv::new(
        r#"
[tasks.pipe]
command = '(yes; echo $? > "$T/yes-status") | head -n 1 > "$T/out"; grep "^SigIgn:" /proc/$$/status > "$T/sigign"; exec grep -E "^Sig(Blk|Ign):" /proc/self/status > "$T/sigs"'
"#,
    );
    let done = env.finish_command(command(&env, &["--once", "pipe"]));
    done.assert_code(0);
    assert_eq!(env.read("out"), "y\n");
    // Killed by SIGPIPE: 128 + 13. With SIGPIPE ignored, `yes` would see EPIPE and exit 1
    // (saying "Broken pipe" on stderr).
    assert_eq!(
        env.read("yes-status").trim(),
        "141",
        "`yes` was not killed by SIGPIPE; run-chain's stderr:\n{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("Broken pipe"),
        "a writer saw EPIPE instead of SIGPIPE:\n{}",
        done.stderr
    );
    // SIGPIPE not ignored in the shell itself ($$: SigIgn does not change while the shell
    // waits for a child, unlike SigBlk), nor blocked or ignored in what it execs.
    let mask = sig_mask(&env.read("sigign"), "SigIgn");
    assert_eq!(
        mask,
        0,
        "the shell ignores signals {:?}",
        signal_names(mask)
    );
    assert_no_signal_blocked_or_ignored(&env.read("sigs"), "exec'd grep");
    assert_eq!(outcome(&only_run(&env, "pipe")), "ok");
}

#[test]
fn a_task_killed_by_sigpipe_is_recorded_as_killed_by_signal_13() {
    // The first process itself (sh exec'ing `yes`) writes into a FIFO whose only reader
    // leaves after one line (having written it out while it still holds the FIFO open: once
    // the first process is gone, what is left of the run is ended).
    let env = TestEnv::new(
        r#"
[tasks.writer]
command = 'mkfifo "$T/fifo"; { read -r line; echo "$line" > "$T/out"; } < "$T/fifo" & exec yes > "$T/fifo"'
fail_cooldown = "1h"
"#,
    );
    let done = env.finish_command(command(&env, &["--once", "writer"]));
    done.assert_code(1);
    assert_eq!(env.read("out"), "y\n");
    let run = only_run(&env, "writer");
    assert_eq!(outcome(&run), "signal", "{run:#}");
    assert!(
        run["signal"].as_i64() == Some(13)
            || run["signal"].as_str().is_some_and(|s| matches!(
                s.to_ascii_uppercase().as_str(),
                "SIGPIPE" | "PIPE" | "13"
            )),
        "the run was not killed by SIGPIPE: {run:#}"
    );
    assert!(
        run["error"].is_null(),
        "a run that started has no spawn error: {run:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Output pipes kept from one run to the next.
// ---------------------------------------------------------------------------------------------

/// A run whose processes are all gone leaves its output pipes to the next run. The next
/// task must see plain pipes all the same (a task that made its stdout non-blocking, as
/// some runtimes leave it, shares that open file with run-chain), and each run's record
/// holds its own output only.
#[test]
fn output_pipes_kept_for_the_next_run_are_plain_and_hold_only_its_output() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
[tasks.spoil]
argv = ["python3", "-c", """
import fcntl, os
os.write(1, os.readlink("/proc/self/fd/1").encode() + b"\\n")
for fd in (1, 2):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK | os.O_APPEND)
os.write(1, b"spoil-out " * 2000)
os.write(2, b"spoil-err\\n")
"""]
[tasks.look]
argv = ["python3", "-c", """
import fcntl, os
print(os.readlink("/proc/self/fd/1"), "flags", [fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_NONBLOCK | os.O_APPEND) for fd in (1, 2)])
"""]
"#,
    );
    env.run(&["--once", "spoil", "look"]).assert_code(0);
    let spoil = env.sub(&["log", "spoil", "1"]);
    spoil.assert_code(0);
    let pipe = spoil.stdout.lines().next().unwrap_or_default().to_string();
    assert!(pipe.starts_with("pipe:["), "spoil's stdout: {pipe:?}");
    assert!(
        spoil.stdout.ends_with("spoil-out spoil-err\n") || spoil.stdout.contains("spoil-err"),
        "spoil's output: {:?}",
        &spoil.stdout[spoil.stdout.len().saturating_sub(100)..]
    );
    let look = env.sub(&["log", "look", "1"]);
    look.assert_code(0);
    assert_eq!(
        look.stdout,
        format!("{pipe} flags [0, 0]\n"),
        "look must be given spoil's pipe (what this test is about), as a plain pipe, and keep only its own output"
    );
}

/// A process outside the run's tree that was handed the run's output (as an ssh client
/// hands it to a shared ControlMaster connection) may go on writing after the run was
/// killed. That output must not land in the next run's record: a run that was sent a
/// signal never passes its pipes on (its writer finds them closed instead).
#[test]
fn output_a_killed_run_handed_out_never_reaches_the_next_run() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
[tasks.handout]
# Long enough for python3 to start and hand its stdout out on a loaded machine
# (300 ms was not: the run timed out before the holder got anything).
timeout = "5s"
argv = ["python3", "-c", """
import array, os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["T"] + "/sock")
s.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [1]))])
s.close()
time.sleep(60)
"""]
[tasks.next]
argv = ["python3", "-c", """
import os, time
t = os.environ["T"]
open(t + "/go", "w").close()
for _ in range(6000):
    if os.path.exists(t + "/late"):
        break
    time.sleep(0.01)
print("next's own line", flush=True)
"""]
"#,
    );
    // The holder: outside run-chain's tree, it takes the descriptor and writes to it once
    // the next run has started, then says how that went.
    let holder_src = r#"
import array, os, socket, time
t = os.environ["T"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(t + "/sock.tmp"); s.listen(1); os.rename(t + "/sock.tmp", t + "/sock")
c, _ = s.accept()
_, anc, _, _ = c.recvmsg(1, socket.CMSG_LEN(4))
fds = array.array("i"); fds.frombytes(anc[0][2])
for _ in range(12000):
    if os.path.exists(t + "/go"):
        break
    time.sleep(0.01)
try:
    os.write(fds[0], b"LATE: the killed run's output\n")
    what = "written"
except OSError as e:
    what = "refused: %s" % e
with open(t + "/late.tmp", "w") as f:
    f.write(what)
os.rename(t + "/late.tmp", t + "/late")
"#;
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(holder_src)
        .env("T", env.root())
        .spawn()
        .expect("start the holder");
    wait_until("the holder listens", || env.path("sock").exists());
    env.run(&["--once", "handout", "next"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let handout = only_run(&env, "handout");
    assert_eq!(outcome(&handout), "timeout", "{handout:#}");
    let next = env.sub(&["log", "next", "1"]);
    next.assert_code(0);
    assert_eq!(
        next.stdout,
        "next's own line\n",
        "the next run's record holds only its own output (the holder: {:?})",
        env.read("late")
    );
    assert!(
        env.read("late").starts_with("refused"),
        "the holder's late write should find the old pipe closed: {:?}",
        env.read("late")
    );
}
