//! Config and command line, against the real binary: every bad config exits 78 with a message
//! naming the file and the key, and touches nothing (not even a running instance of the chain);
//! SPEC.md's own example passes `check`; precedence flag > environment > file > default; bad
//! usage exits 64.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

const GOOD: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.a]
command = 'echo a >> "$T/out"'

[tasks.b]
command = 'echo b >> "$T/out"'
"#;

/// Launches `args` against `config` in a fresh temp dir and asserts: exit 78, the config
/// file's path and every one of `needles` in stderr, no task ran, no RUN_ROOT created.
fn assert_bad_config(config: &str, args: &[&str], needles: &[&str]) {
    let env = TestEnv::new(config);
    let done = env.run(args);
    done.assert_code(78);
    let path = env.config.display().to_string();
    assert!(
        done.stderr.contains(&path),
        "stderr does not name the config file {path}:\n{}",
        done.stderr
    );
    for needle in needles {
        assert!(
            done.stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{}",
            done.stderr
        );
    }
    assert_eq!(env.read("out"), "", "a task ran despite the bad config");
    assert!(
        !env.run_root.exists(),
        "a launch with a bad config created RUN_ROOT"
    );
}

#[test]
fn unknown_key_in_task_exits_78_naming_file_and_key() {
    let config = r#"
[tasks.a]
command = 'echo a >> "$T/out"'
frobnicate = 3
"#;
    assert_bad_config(config, &["a"], &["frobnicate"]);
}

#[test]
fn unknown_key_in_defaults_exits_78() {
    let config = r#"
[defaults]
sucess_cooldown = "1s"

[tasks.a]
command = 'echo a >> "$T/out"'
"#;
    assert_bad_config(config, &["a"], &["sucess_cooldown"]);
}

#[test]
fn unknown_top_level_key_exits_78() {
    let config = r#"
run_rot = "x"

[tasks.a]
command = 'echo a >> "$T/out"'
"#;
    assert_bad_config(config, &["a"], &["run_rot"]);
}

#[test]
fn bad_duration_exits_78() {
    let config = r#"
[tasks.a]
command = 'echo a >> "$T/out"'
success_cooldown = "ten minutes"
"#;
    assert_bad_config(config, &["a"], &["success_cooldown"]);
}

#[test]
fn bad_duration_in_defaults_exits_78() {
    let config = r#"
[defaults]
kill_grace = "5 parsecs"

[tasks.a]
command = 'echo a >> "$T/out"'
"#;
    assert_bad_config(config, &["a"], &["kill_grace"]);
}

/// A value of the wrong type says what to write instead, beside the line that holds it.
#[test]
fn a_value_of_the_wrong_type_says_what_is_expected() {
    for (line, needles) in [
        (
            "timeout = 5",
            &["timeout = 5", "a duration in quotes", "\"15m\""][..],
        ),
        (
            "success_cooldown = 1.5",
            &["success_cooldown", "a duration in quotes"],
        ),
        (
            "nice = \"high\"",
            &["nice", "a whole number, without quotes"],
        ),
        (
            "keep_runs_max = \"5\"",
            &["keep_runs_max", "a whole number"],
        ),
    ] {
        let config = format!("[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\n{line}\n");
        assert_bad_config(&config, &["a"], needles);
        let config = format!("[defaults]\n{line}\n[tasks.a]\ncommand = 'true'\n")
            .replace("nice = \"high\"", "keep_runs_max = -1.5");
        let needles: Vec<&str> = if line.starts_with("nice") {
            vec!["keep_runs_max", "a whole number"]
        } else {
            needles.to_vec()
        };
        assert_bad_config(&config, &["a"], &needles);
    }
    let config = "[groups.g]\nmax_running = \"2\"\n[tasks.a]\ncommand = 'true'\ngroup = \"g\"\n";
    assert_bad_config(config, &["a"], &["max_running", "a whole number"]);
}

#[test]
fn bad_size_exits_78() {
    let config = r#"
[defaults]
keep_output = "lots"

[tasks.a]
command = 'echo a >> "$T/out"'
"#;
    assert_bad_config(config, &["a"], &["keep_output"]);
}

#[test]
fn both_command_and_argv_exits_78() {
    let config = r#"
[tasks.a]
command = 'echo a >> "$T/out"'

[tasks.zweifach]
command = "true"
argv = ["true"]
"#;
    assert_bad_config(config, &["a", "zweifach"], &["zweifach", "command", "argv"]);
}

#[test]
fn neither_command_nor_argv_exits_78() {
    let config = r#"
[tasks.a]
command = 'echo a >> "$T/out"'

[tasks.leer]
cwd = "/"
"#;
    assert_bad_config(config, &["a", "leer"], &["leer", "command", "argv"]);
}

#[test]
fn undefined_task_on_command_line_exits_78() {
    assert_bad_config(GOOD, &["a", "nosuchtask"], &["nosuchtask"]);
}

#[test]
fn reserved_task_name_exits_78_on_launch_and_check() {
    let config = r#"
[tasks.a]
command = 'echo a >> "$T/out"'

[tasks.status]
command = "true"
"#;
    assert_bad_config(config, &["a"], &["status"]);

    let env = TestEnv::new(config);
    let done = env.sub(&["check"]);
    done.assert_code(78);
    assert!(
        done.stderr.contains(&env.config.display().to_string()) && done.stderr.contains("status"),
        "check must name the file and the reserved task:\n{}",
        done.stderr
    );
}

#[test]
fn group_used_but_not_defined_exits_78() {
    let config = r#"
[tasks.a]
command = 'echo a >> "$T/out"'
group = "nosuchgroup"
"#;
    assert_bad_config(config, &["a"], &["nosuchgroup"]);
}

#[test]
fn chain_name_with_slash_or_dotdot_exits_78() {
    for bad in ["a/b", "..", "../escape", ".hidden", "x/../../escape"] {
        let env = TestEnv::new(GOOD);
        let done = env.run(&["--name", bad, "a"]);
        done.assert_code(78);
        assert!(
            done.stderr.contains("name") && done.stderr.contains(bad),
            "stderr must name the key (--name) and the bad value {bad:?}:\n{}",
            done.stderr
        );
        assert_eq!(env.read("out"), "", "a task ran under chain name {bad:?}");
        assert!(
            !env.run_root.exists(),
            "chain name {bad:?}: RUN_ROOT was created"
        );
        assert!(
            !env.path("escape.pid").exists(),
            "chain name {bad:?} escaped RUN_ROOT"
        );
    }
}

#[test]
fn missing_config_file_exits_78_naming_it() {
    let env = TestEnv::new(GOOD);
    let missing = env.path("does-not-exist.toml");
    let mut cmd = env.bare_command();
    cmd.arg("-c")
        .arg(&missing)
        .arg("--run-root")
        .arg(&env.run_root)
        .arg("a");
    let done = env.finish_command(cmd);
    done.assert_code(78);
    assert!(
        done.stderr.contains(&missing.display().to_string()),
        "stderr does not name {}:\n{}",
        missing.display(),
        done.stderr
    );
    assert!(!env.run_root.exists());
}

#[test]
fn unreadable_config_file_exits_78_naming_it() {
    // A directory cannot be read as a file, even by root (for whom mode 000 changes nothing).
    let env = TestEnv::new(GOOD);
    let dir_as_config = env.path("config-dir.toml");
    fs::create_dir(&dir_as_config).unwrap();
    let mut cmd = env.bare_command();
    cmd.arg("-c")
        .arg(&dir_as_config)
        .arg("--run-root")
        .arg(&env.run_root)
        .arg("a");
    let done = env.finish_command(cmd);
    done.assert_code(78);
    assert!(
        done.stderr.contains(&dir_as_config.display().to_string()),
        "stderr does not name {}:\n{}",
        dir_as_config.display(),
        done.stderr
    );

    // Invalid TOML and invalid UTF-8 are unreadable too.
    let env = TestEnv::new("[tasks.a\ncommand = 'true'\n");
    let done = env.run(&["a"]);
    done.assert_code(78);
    assert!(done.stderr.contains(&env.config.display().to_string()));

    let env = TestEnv::new("");
    fs::write(&env.config, b"[tasks.a]\ncommand = \"\xff\xfe\"\n").unwrap();
    let done = env.run(&["a"]);
    done.assert_code(78);
    assert!(done.stderr.contains(&env.config.display().to_string()));
}

#[test]
fn check_on_bad_config_exits_78() {
    let env = TestEnv::new(
        r#"
[tasks.a]
command = "true"
success_cooldown = "soon"
"#,
    );
    let done = env.sub(&["check"]);
    done.assert_code(78);
    assert!(
        done.stderr.contains(&env.config.display().to_string())
            && done.stderr.contains("success_cooldown"),
        "{}",
        done.stderr
    );
}

/// A launch with a bad config never signals or otherwise disturbs the running instance.
#[test]
fn bad_config_launch_does_not_disturb_running_instance() {
    let env = TestEnv::new(GOOD);
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);

    let bad_configs: &[(&str, &str, &[&str])] = &[
        (
            "unknown key",
            "[tasks.a]\ncommand = 'echo bad >> \"$T/out\"'\nfrobnicate = 1\n",
            &["a"],
        ),
        (
            "bad duration",
            "[tasks.a]\ncommand = 'echo bad >> \"$T/out\"'\nfail_cooldown = \"x\"\n",
            &["a"],
        ),
        (
            "both command and argv",
            "[tasks.a]\ncommand = 'true'\nargv = ['true']\n",
            &["a"],
        ),
        ("neither command nor argv", "[tasks.a]\ncwd = '/'\n", &["a"]),
        (
            "undefined task",
            "[tasks.a]\ncommand = 'echo bad >> \"$T/out\"'\n",
            &["--name", "a", "a", "nosuch"],
        ),
        (
            "reserved name",
            "[tasks.a]\ncommand = 'true'\n[tasks.kick]\ncommand = 'true'\n",
            &["a"],
        ),
        (
            "undefined group",
            "[tasks.a]\ncommand = 'true'\ngroup = 'g'\n",
            &["a"],
        ),
        ("invalid toml", "[tasks.a\n", &["a"]),
    ];
    let bad_path = env.path("bad.toml");
    for (what, text, args) in bad_configs {
        fs::write(&bad_path, text).unwrap();
        let mut cmd = env.bare_command();
        cmd.arg("-c")
            .arg(&bad_path)
            .arg("--run-root")
            .arg(&env.run_root)
            .args(*args);
        let done = env.finish_command(cmd);
        assert_eq!(
            done.code(),
            Some(78),
            "{what}: expected 78; stderr:\n{}",
            done.stderr
        );
        assert!(
            done.stderr.contains(&bad_path.display().to_string()),
            "{what}: stderr does not name {}:\n{}",
            bad_path.display(),
            done.stderr
        );
        env.assert_running(&mut runner, "a");
    }
    // The same through the chain's own config file, edited in place.
    env.write_config("[tasks.a]\ncommand = 'true'\nbogus = 1\n");
    env.run(&["a"]).assert_code(78);
    env.assert_running(&mut runner, "a");
    assert_eq!(
        env.lines("out"),
        vec!["a"],
        "the running chain was disturbed"
    );

    // It is still a working instance: SIGTERM in its cooldown ends it with 0.
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

/// SPEC.md's own example config, verbatim (its run_root is relative to the config's folder,
/// which is the temp dir).
const SPEC_EXAMPLE: &str = r#"run_root = "var/run"            # relative paths are relative to this file's folder

[defaults]                      # every task inherits these unless it sets its own
success_cooldown = "15m"        # durations in humantime form: "90s", "15m", "1h 30m"
fail_cooldown = "30m"
non_recoverable_downtime = "6h"
timeout = "1h"                  # optional; a task running longer is stopped (its process group)
stop_grace = "30s"              # on stop/upgrade, how long a running task may go on undisturbed
kill_grace = "5s"               # after SIGTERM to a task's group, how long until SIGKILL
keep_runs_for = "30d"           # runs older than this are pruned from the record store
keep_runs_max = 100000          # and at most this many runs per chain and task are kept
keep_output = "64KiB"           # the tail of each run's output that is kept

[email]                         # optional; with neither smtp nor sendmail, alerts are written as .eml files to RUN_ROOT/mail/
to = ["admin@example.com"]
from = "run-chain@example.com"
smtp = "smtp://127.0.0.1:25"    # smtp:// (STARTTLS when offered), smtps:// (TLS); user in the URL
tls = "opportunistic"           # or "required", or "none"
ca_file = "/etc/ssl/local-ca.pem"   # optional: trust this CA too (a local MTA's own certificate)
password_file = "/etc/run-chain/smtp-password"   # or password_env = "SMTP_PASSWORD"; never on the command line, never logged
# sendmail = "/usr/sbin/sendmail"   # instead of smtp: hand the mail to the local MTA
max_alerts_per_hour = 10        # per chain and task

[tasks.send_mail]
command = "python manage.py send_mail"     # run by /bin/sh -c; or argv = ["python", "manage.py", "send_mail"]
cwd = "/srv/example/main"
env = { DJANGO_SETTINGS_MODULE = "example.settings" }
success_cooldown = "15m"
fail_cooldown = "30m"
nice = 5                        # optional: added to run-chain's own niceness, like nice(1)
group = "db"                    # optional concurrency group, see below

[groups.db]
max_running = 1                 # across every chain on this host that uses RUN_ROOT
"#;

#[test]
fn spec_example_config_passes_check() {
    let env = TestEnv::new(SPEC_EXAMPLE);
    let mut cmd = env.bare_command();
    cmd.env("RUN_CHAIN_CONFIG", &env.config).arg("check");
    let done = env.finish_command(cmd);
    done.assert_code(0);
    assert!(
        done.stdout.contains("send_mail"),
        "check does not print the task:\n{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("python manage.py send_mail"),
        "check does not print the task's command:\n{}",
        done.stdout
    );
}

#[test]
fn check_prints_resolved_tasks() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "15m"
fail_cooldown = "30m"
timeout = "1h"

[tasks.first_task]
command = "echo first-command"

[tasks.second_task]
argv = ["printf", "second-argv"]
success_cooldown = "90s"
timeout = "none"
cwd = "sub"
"#,
    );
    let done = env.sub(&["check"]);
    done.assert_code(0);
    for needle in [
        "first_task",
        "echo first-command",
        "second_task",
        "second-argv",
    ] {
        assert!(
            done.stdout.contains(needle),
            "check output lacks {needle:?}:\n{}",
            done.stdout
        );
    }
    assert!(!env.run_root.exists(), "check must not create RUN_ROOT");
    assert_eq!(env.read("out"), "");
}

fn once_with(env: &TestEnv, mut cmd: std::process::Command) -> Finished {
    cmd.arg("--once").arg("a");
    let done = env.finish_command(cmd);
    done.assert_code(0);
    done
}

#[test]
fn run_root_precedence_flag_env_file_default() {
    let task =
        "[defaults]\nsuccess_cooldown = \"0s\"\n[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\n";
    let with_file_root = format!("run_root = \"fileroot\"\n{task}");

    // File: relative to the config's folder (run-chain runs with cwd "/").
    let env = TestEnv::new(&with_file_root);
    let mut cmd = env.bare_command();
    cmd.arg("-c").arg(&env.config);
    once_with(&env, cmd);
    assert!(
        env.path("fileroot/a.pid").exists(),
        "run_root from the file (relative to its folder) not used"
    );

    // Environment beats the file.
    let env = TestEnv::new(&with_file_root);
    let mut cmd = env.bare_command();
    cmd.arg("-c")
        .arg(&env.config)
        .env("RUN_ROOT", env.path("envroot"));
    once_with(&env, cmd);
    assert!(env.path("envroot/a.pid").exists(), "RUN_ROOT env not used");
    assert!(
        !env.path("fileroot").exists(),
        "file's run_root used over env"
    );

    // The flag beats the environment.
    let env = TestEnv::new(&with_file_root);
    let mut cmd = env.bare_command();
    cmd.arg("-c")
        .arg(&env.config)
        .arg("--run-root")
        .arg(env.path("flagroot"))
        .env("RUN_ROOT", env.path("envroot"));
    once_with(&env, cmd);
    assert!(env.path("flagroot/a.pid").exists(), "--run-root not used");
    assert!(!env.path("envroot").exists(), "env used over --run-root");
    assert!(!env.path("fileroot").exists(), "file used over --run-root");

    // Default: var/run beside the config file.
    let env = TestEnv::new(task);
    let mut cmd = env.bare_command();
    cmd.arg("-c").arg(&env.config);
    once_with(&env, cmd);
    assert!(
        env.path("var/run/a.pid").exists(),
        "default run_root is not var/run beside the config"
    );
    assert_eq!(env.lines("out"), vec!["a"]);
}

#[test]
fn config_precedence_flag_env_default() {
    let env = TestEnv::new("");
    let write = |name: &str, word: &str| {
        let path = env.path(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            format!(
                "[tasks.a]\ncommand = 'echo {word} >> \"$T/out\"'\nsuccess_cooldown = \"0s\"\n"
            ),
        )
        .unwrap();
        path
    };
    let flag_cfg = write("flag.toml", "flag");
    let env_cfg = write("env.toml", "env");
    write("cwd/tasks.toml", "default");

    let mut cmd = env.bare_command();
    cmd.current_dir(env.path("cwd"))
        .env("RUN_CHAIN_CONFIG", &env_cfg)
        .arg("-c")
        .arg(&flag_cfg)
        .arg("--run-root")
        .arg(&env.run_root);
    once_with(&env, cmd);

    let mut cmd = env.bare_command();
    cmd.current_dir(env.path("cwd"))
        .env("RUN_CHAIN_CONFIG", &env_cfg)
        .arg("--run-root")
        .arg(&env.run_root);
    once_with(&env, cmd);

    let mut cmd = env.bare_command();
    cmd.current_dir(env.path("cwd"))
        .arg("--run-root")
        .arg(&env.run_root);
    once_with(&env, cmd);

    assert_eq!(env.lines("out"), vec!["flag", "env", "default"]);
}

#[test]
fn unknown_flag_exits_64() {
    let env = TestEnv::new(GOOD);
    env.run(&["--no-such-flag", "a"]).assert_code(64);
    assert_eq!(env.read("out"), "");
    assert!(!env.run_root.exists());
}

#[test]
fn no_task_exits_64() {
    let env = TestEnv::new(GOOD);
    env.run(&[]).assert_code(64);
    env.run(&["--once"]).assert_code(64);
    assert!(!env.run_root.exists());
}

#[test]
fn same_task_twice_exits_64() {
    let env = TestEnv::new(GOOD);
    env.run(&["a", "b", "a"]).assert_code(64);
    env.run(&["--once", "a", "a"]).assert_code(64);
    assert_eq!(env.read("out"), "");
    assert!(!env.run_root.exists());
}

/// A subcommand after task names is no task: 64, saying how to give it.
#[test]
fn a_subcommand_after_task_names_exits_64_saying_so() {
    let env = TestEnv::new(GOOD);
    for args in [&["a", "status"][..], &["--once", "a", "stop", "a"]] {
        let done = env.run(args);
        done.assert_code(64);
        assert!(
            done.stderr.contains("is a subcommand, not a task"),
            "{args:?}: {}",
            done.stderr
        );
    }
    // A chain's flags given to a subcommand: 64 (they were silently ignored).
    for args in [
        &["--once", "check"][..],
        &["--no-kill-concurrent", "status"],
        &["--name", "x", "kick", "a"],
    ] {
        let done = env.run(args);
        done.assert_code(64);
        assert!(
            done.stderr.contains("not for a subcommand") && done.stderr.contains(args[0]),
            "{args:?}: {}",
            done.stderr
        );
    }
    assert_eq!(env.read("out"), "");
    assert!(!env.run_root.exists());
}

#[test]
fn unsafe_run_root_is_refused_with_78() {
    let env = TestEnv::new(GOOD);
    fs::create_dir(&env.run_root).unwrap();
    fs::set_permissions(&env.run_root, fs::Permissions::from_mode(0o777)).unwrap();
    let done = env.run(&["--once", "a"]);
    done.assert_code(78);
    assert!(
        done.stderr.contains(&env.run_root.display().to_string()),
        "the error does not name RUN_ROOT:\n{}",
        done.stderr
    );
    assert_eq!(env.read("out"), "");
    assert!(!env.pidfile("a").exists());

    // With the sticky bit, a shared directory is fine.
    fs::set_permissions(&env.run_root, fs::Permissions::from_mode(0o1777)).unwrap();
    let done = env.run(&["--once", "a"]);
    done.assert_code(0);
    assert_eq!(env.lines("out"), vec!["a"]);
}

#[test]
fn run_root_is_created_with_mode_0700() {
    let env = TestEnv::new(GOOD);
    let nested = env.path("deep/er/run");
    let mut cmd = env.bare_command();
    cmd.arg("-c")
        .arg(&env.config)
        .arg("--run-root")
        .arg(&nested)
        .args(["--once", "a"]);
    env.finish_command(cmd).assert_code(0);
    let mode = fs::metadata(&nested).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "RUN_ROOT mode is {mode:o}");
    let pid_mode = fs::metadata(nested.join("a.pid"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(pid_mode, 0o644, "pidfile mode is {pid_mode:o}");
}

/// Every command that prints, with its stdout a pipe whose reader has gone (`| head -1`): exit
/// as usual, no panic (`check` panicked on the broken pipe, exit 134).
#[test]
fn a_reader_that_goes_away_is_no_error() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let env = TestEnv::new(GOOD);
    env.run(&["--once", "a"]).assert_code(0);
    for args in [
        &["check"][..],
        &["status"],
        &["status", "--json"],
        &["history", "a"],
        &["history", "a", "--json"],
        &["log", "a", "1"],
        &["metrics"],
        &["stop", "a"],
        &["kick", "a"],
        &["--help"],
        &["--version"],
    ] {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills fds with two new descriptors, owned below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just made and are owned once each.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read);
        let err_path = env.path("stderr");
        let mut child = env
            .sub_command(args)
            .stdout(std::process::Stdio::from(write))
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let mut status = None;
        wait_until(&format!("{args:?} exits"), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        let status = status.unwrap();
        let err = fs::read_to_string(&err_path).unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {status:?}\n{err}");
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    }
}

/// A deploy that breaks the config (here, not TOML at all) does not hide the running chain: the
/// looking commands take run_root from the file as it stands, with a warning, and `stop` stops
/// it. They fell back to the default RUN_ROOT, reported "no chains" and `stop` exited 64.
#[test]
fn looking_commands_find_the_chain_after_a_deploy_breaks_the_config() {
    let good = "run_root = \"fileroot\"\n[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\nsuccess_cooldown = \"1h\"\n";
    let env = TestEnv::new(good);
    let launch = |env: &TestEnv| {
        let mut cmd = env.bare_command();
        cmd.arg("-c").arg(&env.config).arg("a");
        env.spawn_command(cmd)
    };
    // As the other commands below: config given, RUN_ROOT not.
    let looking = |env: &TestEnv, args: &[&str]| {
        let mut cmd = env.bare_command();
        cmd.arg("-c").arg(&env.config).args(args);
        env.finish_command(cmd)
    };
    let mut runner = launch(&env);
    let pidfile = env.path("fileroot/a.pid");
    runner.wait_for("the chain holds fileroot/a.pid", || {
        fs::read_to_string(&pidfile).ok() == Some(format!("{}\n", runner_pid(&pidfile)))
            && lock_holders(&pidfile) == vec![runner_pid(&pidfile)]
    });
    env.wait_lines_while(&mut runner, "out", 1);
    for broken in [
        format!("{good}[[[\n"),
        format!("{good}[tasks.b]\ncommand = 'unterminated\n"),
    ] {
        env.write_config(&broken);
        let status = looking(&env, &["status"]);
        status.assert_code(0);
        assert!(
            status.stdout.contains(&format!("a: pid {}", runner.pid)),
            "{}\n{}",
            status.stdout,
            status.stderr
        );
        assert!(status.stderr.contains("fileroot"), "{}", status.stderr);
    }
    // kick reaches it too (again until it lands in the cooldown, not in the run's last moments).
    runner.wait_for("a kick runs the task again", || {
        looking(&env, &["kick", "a"]).assert_code(0);
        env.lines("out").len() >= 2
    });
    // A run_root that cannot be read as a path (in a file that is TOML or not): an error that
    // says what to do, never the default RUN_ROOT.
    for broken in [
        "run_root = \n[[[\n",
        "run_root = 5\n[[[\n",
        "run_root = 5\n[tasks.a]\ncommand = 'true'\n",
        "run_root = \"\"\n[tasks.a]\ncommand = 'true'\n",
    ] {
        env.write_config(broken);
        let done = looking(&env, &["status"]);
        done.assert_code(78);
        assert!(
            done.stderr.contains("--run-root"),
            "{broken:?}: {}",
            done.stderr
        );
        assert_eq!(done.stdout, "", "{broken:?}");
    }

    env.write_config(&format!("{good}[[[\n"));
    let stop = looking(&env, &["stop", "a"]);
    stop.assert_code(0);
    runner.assert_exit(0);
}

/// The PID in a pidfile (0 if none).
fn runner_pid(pidfile: &std::path::Path) -> i32 {
    fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// RUN_ROOT that is a file: refused (78) as "not a directory", by a chain and by `status`, and
/// the file is left as it was.
#[test]
fn a_run_root_that_is_a_file_is_refused() {
    let env = TestEnv::new(GOOD);
    fs::write(&env.run_root, "not a folder\n").unwrap();
    for done in [env.run(&["--once", "a"]), env.sub(&["status"])] {
        done.assert_code(78);
        assert!(
            done.stderr.contains(&env.run_root.display().to_string())
                && done.stderr.contains("not a directory"),
            "{}",
            done.stderr
        );
    }
    assert_eq!(fs::read_to_string(&env.run_root).unwrap(), "not a folder\n");
    assert_eq!(env.read("out"), "");
}

/// `[store]` (the fleet's database) and a group's `scope`: each mistake is a config error (78)
/// naming the file and the key, before any connection, for a launch and for `check`; a
/// password given in the URL is never repeated.
#[test]
fn store_section_errors_exit_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let open_pw = dir.path().join("open-pw");
    fs::write(&open_pw, "pw-in-open-file\n").unwrap();
    fs::set_permissions(&open_pw, fs::Permissions::from_mode(0o644)).unwrap();
    let task =
        "[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\ngroup = \"g\"\n[groups.g]\nmax_running = 1\n";
    let url = "url = \"postgresql://runchain@127.0.0.1:9/db\"";
    let cases: Vec<(String, &str)> = vec![
        (
            "url = \"postgresql://runchain:hunter2secret@127.0.0.1:9/db\"".into(),
            "store.url",
        ),
        ("url = \"mysql://runchain@h/db\"".into(), "store.url"),
        (
            format!("{url}\npassword_file = \"/x\"\npassword_env = \"P\""),
            "store: expected either `password_file` or `password_env`",
        ),
        (
            format!("{url}\npassword_file = \"{}\"", open_pw.display()),
            "store.password_file",
        ),
        (
            format!(
                "{url}\npassword_file = \"{}\"",
                dir.path().join("missing").display()
            ),
            "store.password_file",
        ),
        (
            format!("{url}\npassword_env = \"RUN_CHAIN_TEST_SURELY_UNSET_PW\""),
            "store.password_env",
        ),
        (format!("{url}\ntls = \"sometimes\""), "store.tls"),
        (format!("{url}\nlease = \"500ms\""), "store.lease"),
        (format!("{url}\nhost = \"two words\""), "store.host"),
        (format!("{url}\nsslmode = \"require\""), "sslmode"),
    ];
    for (store, needle) in cases {
        let config = format!("{task}[store]\n{store}\n");
        assert_bad_config(&config, &["a"], &[needle]);
        let env = TestEnv::new(&config);
        let done = env.sub(&["check"]);
        done.assert_code(78);
        assert!(done.stderr.contains(needle), "{store}: {}", done.stderr);
        for secret in ["hunter2secret", "pw-in-open-file"] {
            assert!(!done.stderr.contains(secret) && !done.stdout.contains(secret));
        }
    }
    // scope: "fleet" needs [store]; anything but host/fleet is refused.
    let scoped = |scope: &str| format!("{task}scope = \"{scope}\"\n");
    assert_bad_config(&scoped("fleet"), &["a"], &["groups.g.scope", "[store]"]);
    assert_bad_config(&scoped("planet"), &["a"], &["groups.g.scope"]);
    let env = TestEnv::new(&scoped("host"));
    env.sub(&["check"]).assert_code(0);
}
