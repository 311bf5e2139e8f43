//! Hostile names and a hostile RUN_ROOT, against the real binary (issue 7, points 16-21, where
//! the other suites do not already cover them):
//! - chain, task and group names with `/`, `..`, a leading `.`, NUL, 300 characters, given on
//!   the command line or in the config: refused (78, or 64 for the looking commands), and
//!   nothing is created in RUN_ROOT, beside it or above it;
//! - files planted as symlinks in RUN_ROOT (beyond the pidfile, which tests/pidfile.rs covers):
//!   never written through;
//! - RUN_ROOT owned by another user, or writable by others without the sticky bit: refused 78,
//!   in every mode that creates files and by every command that reads or signals (status,
//!   history, log, metrics, exporter, stop, kick), touching nothing; with the sticky bit:
//!   accepted;
//! - every file and folder run-chain creates in RUN_ROOT (even under umask 000) is 0644 or
//!   stricter: pidfiles 0644 (exactly, under any umask), the rest 0600, folders 0700;
//! - the SMTP password (password_env) appears in no process's command line (`ps`), in no task's
//!   environment (nor a grandchild's), in no log, store, metrics, outbox or mail;
//! - a task holds none of run-chain's descriptors while the store, a group slot and alerts are
//!   in use, and a daemon started by a task neither inherits the lock nor outlives the chain.
//!
//! Needs root for the RUN_ROOT owned by another user (chown); run as another user, that test
//! fails saying so.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Every path under `dir` (relative, sorted), leaving out the runners' own output files at its
/// top (`runner-N.stdout`, `runner-N.stderr`), which the test harness writes.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if rel.starts_with("runner-") {
                continue;
            }
            out.insert(rel);
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs `cmd` with umask 000, so that every mode seen is the one run-chain asked for.
fn umask_0(cmd: Command) -> Command {
    with_umask(cmd, 0)
}

/// Runs `cmd` with umask `mask`.
fn with_umask(mut cmd: Command, mask: libc::mode_t) -> Command {
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
    cmd
}

fn flock_n_succeeds(path: &Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(path)
        .arg("true")
        .status()
        .expect("run flock(1)")
        .success()
}

/// Shell code that lists the descriptors of process PID into `$T/FILE`, one `PATH -> TARGET`
/// line each. The loop runs in a subshell, so that neither its redirection (a shell saves the
/// old descriptor above 9) nor its glob (a directory descriptor) shows up in a listing of the
/// shell itself (`$$` is the parent shell's PID in a subshell). Double quotes only, so that it
/// fits in a `sh -c '...'`.
fn list_fds(pid: &str, file: &str) -> String {
    format!(
        r#"( for f in /proc/{pid}/fd/*; do printf "%s -> " "$f"; readlink "$f" || echo; done ) > "$T/{file}""#
    )
}

/// Like `list_fds`, over the descriptor tables of all of `pid`'s threads (in case a thread
/// has a table of its own).
fn list_thread_fds(pid: &str, file: &str) -> String {
    format!(
        r#"( for f in /proc/{pid}/task/*/fd/*; do printf "%s -> " "$f"; readlink "$f" || echo; done ) > "$T/{file}""#
    )
}

/// Parses `list_fds` output into (fd, target), leaving out any descriptor gone by the time
/// readlink looked (an empty target).
fn parse_fds(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let (path, target) = l.split_once(" -> ")?;
            let fd = path.rsplit('/').next()?.parse().ok()?;
            (!target.trim().is_empty()).then(|| (fd, target.trim().to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Point 16: names.
// ---------------------------------------------------------------------------------------------

const GOOD: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.a]
command = 'echo a >> "$T/out"'
"#;

/// A world where RUN_ROOT sits three levels down (DIR/x/y/run), so that `../../../NAME`
/// lands in DIR, where `tree` sees it, and one more `..` lands beside DIR, named after it.
struct NameWorld {
    env: TestEnv,
    root: PathBuf,
    outside_tag: String,
}

impl NameWorld {
    fn new(config: &str) -> NameWorld {
        let env = TestEnv::new(config);
        let root = env.path("x/y/run");
        let outside_tag = format!(
            "{}-outside",
            env.root().file_name().unwrap().to_string_lossy()
        );
        NameWorld {
            env,
            root,
            outside_tag,
        }
    }

    /// `run-chain -c CONFIG --run-root DIR/x/y/run ARGS...` to its end.
    fn run(&self, args: &[&str]) -> Finished {
        let mut cmd = self.env.bare_command();
        cmd.arg("-c")
            .arg(&self.env.config)
            .arg("--run-root")
            .arg(&self.root)
            .args(args);
        self.env.finish_command(cmd)
    }

    /// Names that try to leave RUN_ROOT or hide in it.
    fn bad_names(&self) -> Vec<String> {
        vec![
            "a/b".into(),
            "..".into(),
            ".".into(),
            "../../../escape".into(),
            format!("../../../../{}", self.outside_tag),
            "x/../../../../escape2".into(),
            ".hidden".into(),
            "x".repeat(300),
            "x".repeat(101),
            String::new(),
            "a b".into(),
            "é".into(),
            "a\nb".into(),
            "*".into(),
            "a\\b".into(),
            "/etc/passwd".into(),
        ]
    }

    /// Nothing created: the temp dir holds exactly `before`, and nothing named after DIR sits
    /// beside it.
    fn assert_untouched(&self, before: &BTreeSet<String>, what: &str) {
        let after = tree(self.env.root());
        let added: Vec<&String> = after.difference(before).collect();
        assert!(
            added.is_empty(),
            "{what}: created {added:?} (RUN_ROOT is {})",
            self.root.display()
        );
        let beside = self.env.root().parent().unwrap();
        for suffix in ["", ".pid", ".next", ".state"] {
            let p = beside.join(format!("{}{suffix}", self.outside_tag));
            assert!(!p.exists(), "{what}: created {} outside", p.display());
        }
        assert_eq!(self.env.read("out"), "", "{what}: a task ran");
    }
}

fn assert_refused(done: &Finished, codes: &[i32], what: &str) {
    assert!(
        matches!(done.code(), Some(c) if codes.contains(&c)),
        "{what}: expected exit {codes:?}, got {:?}\nstdout:\n{}\nstderr:\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    assert!(
        !done.stderr.trim().is_empty(),
        "{what}: refused without a word on stderr"
    );
}

#[test]
fn bad_chain_names_on_the_command_line_are_refused_and_create_nothing() {
    let w = NameWorld::new(GOOD);
    let before = tree(w.env.root());
    for name in w.bad_names() {
        for mode in [
            &["--name", &name, "a"][..],
            &["--once", "--name", &name, "a"],
        ] {
            let done = w.run(mode);
            let what = format!("run-chain {mode:?}");
            assert_refused(&done, &[78], &what);
            assert!(
                done.stderr.contains("--name"),
                "{what}: the error does not name --name:\n{}",
                done.stderr
            );
            w.assert_untouched(&before, &what);
        }
        // The commands that only look: a bad chain name is bad usage, and nothing is created.
        for args in [
            &["stop", &name][..],
            &["stop", "--now", &name],
            &["kick", &name],
        ] {
            let done = w.run(args);
            assert_refused(&done, &[64], &format!("run-chain {args:?}"));
            w.assert_untouched(&before, &format!("run-chain {args:?}"));
        }
        for args in [
            &["history", "a", "--chain", &name][..],
            &["log", "a", "--chain", &name],
        ] {
            let done = w.run(args);
            let what = format!("run-chain {args:?}");
            assert!(
                matches!(done.code(), Some(0 | 64 | 78)),
                "{what}: exit {:?}\n{}",
                done.status,
                done.stderr
            );
            w.assert_untouched(&before, &what);
        }
    }
    assert!(!w.root.exists(), "RUN_ROOT was created");

    // The boundary: 100 characters is a name, 101 is not.
    let hundred = "c".repeat(100);
    w.run(&["--once", "--name", &hundred, "a"]).assert_code(0);
    assert!(w.root.join(format!("{hundred}.pid")).exists());
}

#[test]
fn bad_task_names_on_the_command_line_are_refused_and_create_nothing() {
    let w = NameWorld::new(GOOD);
    let before = tree(w.env.root());
    for name in w.bad_names() {
        for args in [&[&name[..]][..], &["--once", &name], &["a", &name]] {
            let done = w.run(args);
            let what = format!("run-chain {args:?}");
            // An empty task name is a name clap still passes on; every one is "not defined"
            // or malformed: a config error.
            assert_refused(&done, &[78], &what);
            w.assert_untouched(&before, &what);
        }
    }

    // Task names that are each fine but make a chain name of more than 100 characters.
    let long_a = "p".repeat(60);
    let long_b = "q".repeat(60);
    let w = NameWorld::new(&format!(
        "[defaults]\nsuccess_cooldown = \"0s\"\n[tasks.{long_a}]\ncommand = 'echo a >> \"$T/out\"'\n[tasks.{long_b}]\ncommand = 'echo b >> \"$T/out\"'\n"
    ));
    let before = tree(w.env.root());
    let done = w.run(&["--once", &long_a, &long_b]);
    assert_refused(&done, &[78], "a chain name of 121 characters");
    assert!(
        done.stderr.contains("--name"),
        "the error should say how to fix it (--name):\n{}",
        done.stderr
    );
    w.assert_untouched(&before, "a chain name of 121 characters");
    // With a --name it runs.
    w.run(&["--once", "--name", "pq", &long_a, &long_b])
        .assert_code(0);
    assert_eq!(w.env.lines("out"), vec!["a", "b"]);
}

/// TOML's basic string for `s` (quotes, backslashes and control characters escaped).
fn toml_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[test]
fn bad_task_and_group_names_in_the_config_are_refused_and_create_nothing() {
    let probe = NameWorld::new("");
    let mut names = probe.bad_names();
    names.push("a\0b".into());
    let mut configs = Vec::new();
    for name in names
        .iter()
        .chain(&["check".to_string(), "mail-test".to_string()])
    {
        let q = toml_quoted(name);
        configs.push((
            format!("[tasks.{q}]\ncommand = 'echo bad >> \"$T/out\"'\n[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\n"),
            format!("tasks.{name}"),
        ));
    }
    // Group names become file names (RUN_ROOT/groups/NAME.N); subcommand names are fine there.
    for name in &names {
        let q = toml_quoted(name);
        configs.push((
            format!("[groups.{q}]\nmax_running = 1\n[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\ngroup = {q}\n"),
            format!("groups.{name}"),
        ));
    }
    {
        for (config, key) in configs {
            let w = NameWorld::new(&config);
            let before = tree(w.env.root());
            for args in [&["a"][..], &["--once", "a"], &["check"], &["mail-test"]] {
                let done = w.run(args);
                let what = format!("run-chain {args:?} with {key:?}");
                assert_refused(&done, &[78], &what);
                assert!(
                    done.stderr.contains(&w.env.config.display().to_string())
                        && done.stderr.contains(&key),
                    "{what}: the error must name the file and {key:?}:\n{}",
                    done.stderr
                );
                w.assert_untouched(&before, &what);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Point 17 beyond the pidfile (tests/pidfile.rs plants CHAIN.pid): the chain's other files,
// CHAIN.next and CHAIN.state, planted as symlinks, are replaced, never written through.
// (runs.db, groups/, outbox/ and mail/ are followed, as SQLite and mkdir -p do; an admin may
// well move them elsewhere with a symlink, and SPEC.md asks this of the pidfile only.)
// ---------------------------------------------------------------------------------------------

#[test]
fn next_and_state_files_planted_as_symlinks_are_never_written_through() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"

[tasks.a]
command = 'echo a >> "$T/out"'
"#,
    );
    env.make_run_root();
    let victims = env.path("victims");
    fs::create_dir(&victims).unwrap();
    let planted = [
        ("a.next", "precious next\n"),
        ("a.state", "precious state\n"),
    ];
    for (name, content) in planted {
        let victim = victims.join(name);
        fs::write(&victim, content).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink(&victim, env.run_root.join(name)).unwrap();
    }
    // A forever run (it claims a.next and saves a.state), stopped after a run, then --once.
    let mut runner = env.spawn(&["a"]);
    env.wait_lines_while(&mut runner, "out", 1);
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    env.run(&["--once", "a"]).assert_code(0);
    for (name, content) in planted {
        let victim = victims.join(name);
        assert_eq!(
            fs::read_to_string(&victim).ok().as_deref(),
            Some(content),
            "{name}: written through the symlink to {}",
            victim.display()
        );
        assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o640);
    }
}

// ---------------------------------------------------------------------------------------------
// Point 18: an unsafe RUN_ROOT is refused; what run-chain creates is 0644 or stricter.
// ---------------------------------------------------------------------------------------------

/// Every command that creates files in RUN_ROOT, each of which must refuse an unsafe one.
fn creating_commands(env: &TestEnv) -> Vec<(String, Finished)> {
    let mut out = Vec::new();
    for args in [&["--once", "a"][..], &["mail-test"]] {
        out.push((format!("{args:?}"), env.run(args)));
    }
    // The forever mode: refused at once, so it ends by itself.
    let mut runner = env.spawn(&["a"]);
    let status = runner.wait_exit();
    out.push((
        "[\"a\"] (forever)".into(),
        Finished {
            status,
            stdout: runner.stdout(),
            stderr: runner.stderr(),
        },
    ));
    out
}

/// Every command that only looks at RUN_ROOT or signals what it finds there: what it reads
/// (the store, the pidfiles) decides what it reports and whom it signals, so it refuses an
/// unsafe RUN_ROOT as a chain does. The exporter is refused at once, so it ends by itself.
fn looking_commands(env: &TestEnv) -> Vec<(String, Finished)> {
    let mut out = Vec::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["history", "a"],
        &["log", "a", "1"],
        &["metrics"],
        &["stop", "a"],
        &["kick", "a"],
        &["exporter", "--listen", "127.0.0.1:0"],
    ] {
        out.push((format!("{args:?}"), env.sub(args)));
    }
    out
}

#[test]
fn run_root_owned_by_another_user_is_refused() {
    require_root("chown RUN_ROOT to nobody");
    let env = TestEnv::new(&format!("{GOOD}\n[email]\nto = [\"admin@example.com\"]\n"));
    env.make_run_root();
    std::os::unix::fs::chown(&env.run_root, Some(65534), Some(65534)).unwrap();
    for mode in [0o700, 0o755, 0o1777] {
        fs::set_permissions(&env.run_root, fs::Permissions::from_mode(mode)).unwrap();
        let commands = creating_commands(&env)
            .into_iter()
            .chain(looking_commands(&env));
        for (what, done) in commands {
            let what = format!("{what} with RUN_ROOT owned by nobody, mode {mode:o}");
            done.assert_code(78);
            assert!(
                done.stderr.contains(&env.run_root.display().to_string())
                    && done.stderr.contains("owned"),
                "{what}: the error must name RUN_ROOT and say who owns it:\n{}",
                done.stderr
            );
            assert_eq!(env.read("out"), "", "{what}: a task ran");
            let inside = tree(&env.run_root);
            assert!(inside.is_empty(), "{what}: created {inside:?}");
        }
    }
}

#[test]
fn run_root_writable_by_others_without_the_sticky_bit_is_refused_in_every_mode() {
    let env = TestEnv::new(&format!("{GOOD}\n[email]\nto = [\"admin@example.com\"]\n"));
    env.make_run_root();
    for mode in [0o777, 0o703, 0o722, 0o2777] {
        fs::set_permissions(&env.run_root, fs::Permissions::from_mode(mode)).unwrap();
        for (what, done) in creating_commands(&env) {
            let what = format!("{what} with RUN_ROOT mode {mode:o}");
            done.assert_code(78);
            assert!(
                done.stderr.contains(&env.run_root.display().to_string())
                    && done.stderr.contains("writable"),
                "{what}: the error must name RUN_ROOT and say why:\n{}",
                done.stderr
            );
            assert_eq!(env.read("out"), "", "{what}: a task ran");
            let inside = tree(&env.run_root);
            assert!(inside.is_empty(), "{what}: created {inside:?}");
        }
    }
    // Shared with the sticky bit, or private: accepted.
    for mode in [0o1777, 0o1703, 0o755] {
        fs::set_permissions(&env.run_root, fs::Permissions::from_mode(mode)).unwrap();
        env.run(&["--once", "a"]).assert_code(0);
    }
    assert_eq!(env.lines("out"), vec!["a", "a", "a"]);
}

#[test]
fn the_looking_commands_refuse_a_run_root_writable_by_others_and_touch_nothing() {
    let env = TestEnv::new(GOOD);
    // A chain ran there: a store, a pidfile and a state for the commands to read.
    env.run(&["--once", "a"]).assert_code(0);
    let before = tree(&env.run_root);
    assert!(
        before.contains("runs.db") && before.contains("a.pid"),
        "{before:?}"
    );
    for mode in [0o777, 0o722, 0o2777] {
        fs::set_permissions(&env.run_root, fs::Permissions::from_mode(mode)).unwrap();
        for (what, done) in looking_commands(&env) {
            let what = format!("{what} with RUN_ROOT mode {mode:o}");
            assert_eq!(done.status.code(), Some(78), "{what}: {}", done.stderr);
            assert!(
                done.stderr.contains(&env.run_root.display().to_string())
                    && done.stderr.contains("writable"),
                "{what}: the error must name RUN_ROOT and say why:\n{}",
                done.stderr
            );
            assert_eq!(done.stdout, "", "{what}: reported from an unsafe RUN_ROOT");
        }
        assert_eq!(
            tree(&env.run_root),
            before,
            "mode {mode:o}: RUN_ROOT changed"
        );
    }
    // Private again: the same commands read it (the exporter aside, which would serve).
    fs::set_permissions(&env.run_root, fs::Permissions::from_mode(0o700)).unwrap();
    for args in [
        &["status"][..],
        &["history", "a"],
        &["log", "a", "1"],
        &["metrics"],
        &["stop", "a"],
        &["kick", "a"],
    ] {
        env.sub(args).assert_code(0);
    }
    assert_eq!(env.history("a", &[]).len(), 1);
}

/// The pidfile is 0644 whatever the umask (SPEC: "pidfiles 0644"): its PID is for other users
/// to read. The other files stay 0600 or stricter.
#[test]
fn a_pidfile_is_0644_under_any_umask() {
    let env = TestEnv::new(GOOD);
    for (i, mask) in [0o077, 0o027, 0o022, 0o000].into_iter().enumerate() {
        let chain = format!("c{i}");
        env.finish_command(with_umask(
            env.run_command(&["--name", &chain, "--once", "a"]),
            mask,
        ))
        .assert_code(0);
        let mode = fs::metadata(env.pidfile(&chain)).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o644, "pidfile of {chain} under umask {mask:03o}");
    }
    // One left 0600 (by an older version under umask 077) is made 0644 at the next launch.
    let pidfile = env.pidfile("c0");
    fs::set_permissions(&pidfile, fs::Permissions::from_mode(0o600)).unwrap();
    env.finish_command(with_umask(
        env.run_command(&["--name", "c0", "--once", "a"]),
        0o077,
    ))
    .assert_code(0);
    assert_eq!(fs::metadata(&pidfile).unwrap().mode() & 0o7777, 0o644);
    let bad = loose_modes(&env.run_root);
    assert!(bad.is_empty(), "{bad:?}");
}

/// Modes of everything in RUN_ROOT that break the rule: folders 0700 or stricter, pidfiles 0644
/// or stricter, every other file 0600 or stricter; no symlink, no special file.
fn loose_modes(run_root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let meta = fs::symlink_metadata(run_root).unwrap();
    if meta.mode() & 0o7777 != 0o700 {
        bad.push(format!("RUN_ROOT itself: {:o}", meta.mode() & 0o7777));
    }
    for rel in tree(run_root) {
        let p = run_root.join(&rel);
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue; // gone meanwhile (a temp file renamed into place)
        };
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        let allowed = if ft.is_dir() {
            0o700
        } else if ft.is_file() && rel.ends_with(".pid") && !rel.contains('/') {
            0o644
        } else if ft.is_file() {
            0o600
        } else if std::os::unix::fs::FileTypeExt::is_socket(&ft)
            && rel.ends_with(".ctl")
            && !rel.contains('/')
        {
            // A chain's control channel (run-now), while it runs.
            0o600
        } else {
            bad.push(format!("{rel}: not a file or a folder ({ft:?})"));
            continue;
        };
        if mode & !allowed != 0 {
            bad.push(format!("{rel}: {mode:o} (at most {allowed:o})"));
        }
    }
    bad
}

#[test]
fn every_file_run_chain_creates_is_0644_or_stricter_even_under_umask_000() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "0s"

[email]
to = ["admin@example.com"]

[groups.g]
max_running = 2

[tasks.fail]
command = 'echo boom; exit 3'

[tasks.grouped]
command = 'echo "grouped $RUN_CHAIN_RUN_ID" >> "$T/out"'
group = "g"
"#,
    );
    // RUN_ROOT does not exist yet: run-chain makes it, and everything in it, under umask 000.
    let mut runner = env.spawn_command(umask_0(env.run_command(&["fail", "grouped"])));
    env.wait_running(&mut runner, "fail_grouped");
    env.wait_lines_while(&mut runner, "out", 1);
    let mail = env.run_root.join("mail");
    runner.wait_for("the first-failure alert is in RUN_ROOT/mail/", || {
        fs::read_dir(&mail).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        })
    });
    // A second chain in the same RUN_ROOT, once, and the other commands, also under umask 000.
    env.finish_command(umask_0(env.run_command(&["--once", "grouped"])))
        .assert_code(0);
    env.finish_command(umask_0(env.run_command(&["mail-test"])))
        .assert_code(0);
    for args in [&["status"][..], &["metrics"], &["history", "fail"]] {
        env.finish_command(umask_0(env.sub_command(args)))
            .assert_code(0);
    }
    // While the chain runs (the store's -wal and -shm exist now).
    let seen_running = tree(&env.run_root);
    let bad_running = loose_modes(&env.run_root);
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let seen = tree(&env.run_root);
    let bad = loose_modes(&env.run_root);

    for must in [
        "fail_grouped.pid",
        "fail_grouped.state",
        "fail_grouped.next",
        "fail_grouped.ctl",
        "grouped.pid",
        "runs.db",
        "groups",
        "mail",
    ] {
        assert!(
            seen_running.contains(must) || seen.contains(must),
            "{must} never appeared in RUN_ROOT (the walk must cover it): {seen_running:?} {seen:?}"
        );
    }
    assert!(
        seen_running.iter().any(|p| p.starts_with("groups/")),
        "no slot file seen in groups/: {seen_running:?}"
    );
    assert!(
        bad_running.is_empty() && bad.is_empty(),
        "modes looser than the rule, while running: {bad_running:#?}\nafter the stop: {bad:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Point 20: the SMTP password is nowhere.
// ---------------------------------------------------------------------------------------------

/// A secret no file could contain by chance.
fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("Sekr3t-{}-{nanos}-zQ9", std::process::id())
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, with its bytes (symlinks not followed).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter_map(|rel| {
            let p = dir.join(&rel);
            if !fs::symlink_metadata(&p).ok()?.is_file() {
                return None;
            }
            Some((p.display().to_string(), fs::read(&p).ok()?))
        })
        .collect()
}

/// Lets a task waiting in `read x < FIFO` go on: opens the FIFO read-write (which never blocks,
/// whether or not the task has opened it yet) and writes a line. The returned descriptor keeps
/// the line in the FIFO until the task has read it: drop it only after that.
fn release(fifo: &Path) -> fs::File {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .unwrap_or_else(|e| panic!("open {}: {e}", fifo.display()));
    f.write_all(b"go\n").unwrap();
    f
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn the_smtp_password_is_in_no_argv_task_environment_log_store_metrics_outbox_or_mail() {
    const VAR: &str = "RUN_CHAIN_TEST_SECRET_PW";
    let secret = unique_secret();
    let task = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.leak]
command = '''
env > "$T/task-env"
sh -c 'env > "$T/grandchild-env"; cat /proc/$$/environ > "$T/grandchild-environ"'
echo $$ > "$T/task.pid"
read x < "$T/fifo"
echo "the task ran"
exit 3
'''
"#;
    // Two transports: SMTP to a port where nothing listens (the password is read and the
    // alert waits in the outbox), and none at all (alerts written to RUN_ROOT/mail/).
    let transports = [
        format!("[email]\nto = [\"admin@example.com\"]\nsmtp = \"smtp://alice@127.0.0.1:1\"\ntls = \"none\"\npassword_env = \"{VAR}\"\n"),
        format!("[email]\nto = [\"admin@example.com\"]\npassword_env = \"{VAR}\"\n"),
    ];
    for email in transports {
        let env = TestEnv::new(&format!("{task}\n{email}"));
        mkfifo(&env.path("fifo"));
        let with_secret = |mut cmd: Command| {
            cmd.env(VAR, &secret).env("RUST_LOG", "trace");
            cmd
        };
        let mut runner = env.spawn_command(with_secret(env.run_command(&["leak"])));
        let task_pid = wait_pid_file(&env.path("task.pid"));

        // While the task runs: every process's command line (ps), and the task's environment
        // as the kernel holds it.
        let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
        let ps = Command::new("ps")
            .args(["-eww", "-o", "pid=,args="])
            .output()
            .expect("run ps");
        haystacks.push(("ps -eww -o args".into(), ps.stdout));
        for pid in env.marked_processes() {
            if let Ok(argv) = fs::read(format!("/proc/{pid}/cmdline")) {
                haystacks.push((format!("/proc/{pid}/cmdline"), argv));
            }
        }
        haystacks.push((
            format!("/proc/{task_pid}/environ (the task)"),
            fs::read(format!("/proc/{task_pid}/environ")).unwrap(),
        ));
        assert!(
            contains(
                &fs::read(format!("/proc/{}/environ", runner.pid)).unwrap(),
                &secret
            ),
            "the test is wrong: run-chain did not get the secret in {VAR}"
        );
        let fifo = release(&env.path("fifo"));
        // The failure's alert: queued in the outbox (SMTP down) or written to mail/.
        runner.wait_for("the alert is in the outbox or in mail/", || {
            ["outbox", "mail"].iter().any(|d| {
                fs::read_dir(env.run_root.join(d)).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                })
            })
        });
        drop(fifo);
        let test = env.finish_command(with_secret(env.run_command(&["mail-test"])));
        runner.signal(libc::SIGTERM);
        runner.assert_exit(0);

        let task_env = env.read("task-env");
        assert!(task_env.contains("RUN_CHAIN_TASK=leak"), "{task_env}");
        assert!(
            !task_env.lines().any(|l| l.starts_with(&format!("{VAR}="))),
            "{VAR} reached the task's environment"
        );
        for (what, text) in [
            ("run-chain stdout", runner.stdout()),
            ("run-chain stderr", runner.stderr()),
            ("mail-test stdout", test.stdout.clone()),
            ("mail-test stderr", test.stderr.clone()),
            ("the task's env", task_env),
            ("a grandchild's env", env.read("grandchild-env")),
            (
                "a grandchild's /proc/self/environ",
                env.read("grandchild-environ"),
            ),
        ] {
            haystacks.push((what.into(), text.into_bytes()));
        }
        for args in [
            &["check"][..],
            &["status", "--json"],
            &["history", "leak", "--json"],
            &["log", "leak"],
            &["metrics"],
        ] {
            let done = env.finish_command(with_secret(env.sub_command(args)));
            haystacks.push((format!("{args:?} stdout"), done.stdout.into_bytes()));
            haystacks.push((format!("{args:?} stderr"), done.stderr.into_bytes()));
        }
        let files = files_under(&env.run_root);
        assert!(
            files.iter().any(|(p, _)| p.ends_with("runs.db"))
                && files.iter().any(|(p, _)| p.ends_with(".eml")),
            "the store and an alert must be among the files searched: {:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        haystacks.extend(files);
        for (what, bytes) in &haystacks {
            assert!(
                !contains(bytes, &secret),
                "the SMTP password appears in {what} ({email})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Point 21: descriptors.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_task_holds_no_descriptor_of_run_chain_while_store_group_slot_and_alerts_are_in_use() {
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"

[email]
to = ["admin@example.com"]

[groups.g]
max_running = 1

[tasks.fail]
command = 'echo boom; exit 3'

[tasks.list]
command = '''
{}
{}
'''
group = "g"
"#,
        list_fds("$$", "task-fds"),
        list_thread_fds("$PPID", "parent-fds")
    ));
    let done = env.run(&["--once", "fail", "list"]);
    done.assert_code(1);

    // run-chain had its lock, its store and the group's slot open while the task listed: the
    // listing is proof that they were in use.
    let parent = parse_fds(&env.read("parent-fds"));
    let targets: Vec<&str> = parent.iter().map(|(_, t)| t.as_str()).collect();
    for (what, needle) in [
        ("the pidfile", "fail_list.pid".to_string()),
        ("the store", "runs.db".to_string()),
        (
            "the group's slot",
            format!("{}/groups/g.", env.run_root.display()),
        ),
    ] {
        assert!(
            targets.iter().any(|t| t.contains(&needle)),
            "run-chain did not hold {what} while the task ran; its descriptors: {targets:#?}"
        );
    }

    let task = parse_fds(&env.read("task-fds"));
    assert!(
        task.iter().any(|(fd, t)| *fd == 0 && t == "/dev/null"),
        "stdin is not /dev/null: {task:?}"
    );
    let foreign: Vec<&(u32, String)> = task.iter().filter(|(fd, _)| *fd > 2).collect();
    assert!(
        foreign.is_empty(),
        "the task holds descriptors beyond 0, 1, 2: {foreign:#?}\nrun-chain's: {targets:#?}"
    );
}

#[test]
fn a_daemon_started_by_a_task_holds_no_lock_and_does_not_outlive_the_chain() {
    let env = TestEnv::new(&format!(
        r#"
[tasks.daemon]
command = '''
pid=$(setsid -f sh -c '{}; echo $$; exec sleep 1000 </dev/null >/dev/null 2>&1')
echo "$pid" > "$T/daemon.pid"
'''
success_cooldown = "1h"
kill_grace = "300ms"
"#,
        list_fds("$$", "daemon-fds")
    ));
    let mut runner = env.spawn(&["daemon"]);
    env.wait_running(&mut runner, "daemon");
    let daemon = wait_pid_file(&env.path("daemon.pid"));
    let pidfile = env.pidfile("daemon");

    // The daemon, in its own session, had none of run-chain's descriptors.
    let fds = parse_fds(&env.read("daemon-fds"));
    let foreign: Vec<&(u32, String)> = fds.iter().filter(|(fd, _)| *fd > 2).collect();
    assert!(
        foreign.is_empty(),
        "the daemon inherited descriptors beyond 0, 1, 2: {foreign:#?}"
    );
    assert!(
        !flock_n_succeeds(&pidfile),
        "the running chain's pidfile is not locked"
    );
    assert_eq!(lock_holders(&pidfile), vec![runner.pid]);

    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    assert!(
        flock_n_succeeds(&pidfile),
        "the chain has stopped but its pidfile is still locked (by {:?})",
        lock_holders(&pidfile)
    );
    wait_until(
        &format!("the daemon (pid {daemon}) is gone once the chain has stopped"),
        || !is_running(daemon),
    );
}
