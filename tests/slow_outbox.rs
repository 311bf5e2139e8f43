//! An alert's trip through the outbox on a disk whose fsync takes a minute: neither the
//! schedule nor a SIGTERM waits for it, and the alert is still stored (written and renamed
//! into `RUN_ROOT/outbox/`) before the process exits, `--once` included; and with the
//! SMTP server down, every stored alert is synced before its turn to be sent.
//!
//! The slow disk is a tiny LD_PRELOAD shim (built here with the system C compiler, in the
//! manner of `tests/slow_disk.rs`), set on the chain's process only: its `fsync` and
//! `fdatasync` note the path they were called on, then take a minute, signals or not.
//! Mostly no email transport is configured, so alerts go the whole outbox path (outbox
//! file, then a `.eml` in `RUN_ROOT/mail/`): what is in `mail/` was delivered, what is
//! in `outbox/` was stored.
//! The record store (WAL, synchronous=NORMAL) syncs only when it is created (made here
//! beforehand, on the normal disk) and at a checkpoint, which these short tests do not
//! reach; CHAIN.state is never synced: the fsyncs noted are the outbox's (checked, so
//! that a new fsync elsewhere shows here first).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHIM: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static void slow(int fd) {
    const char *mark = getenv("SLOW_FSYNC_MARK");
    if (mark) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 2);
        if (n < 0) n = 0;
        path[n++] = '\n';
        int m = open(mark, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (m >= 0) { (void)!write(m, path, (size_t)n); close(m); }
    }
    /* A minute (or SLOW_FSYNC_SECONDS), whatever signals come meanwhile (sleep(3) would
       end at the first one, as a disk's fsync does not). */
    const char *secs = getenv("SLOW_FSYNC_SECONDS");
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += secs ? atoi(secs) : 60;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &end, NULL) == EINTR) {}
}
int fsync(int fd) { slow(fd); return 0; }
int fdatasync(int fd) { slow(fd); return 0; }
"#;

/// How soon a stop or an exit must come. An fsync takes 60 s; without one, these exits take
/// a fraction of a second, so this leaves a loaded machine a wide margin either way.
const PROMPT: Duration = Duration::from_secs(20);

/// The alert files (not the dot-named temporary ones) in `dir`, sorted.
fn emls(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name.ends_with(".eml") && !name.starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The `X-Run-Chain-Alert` kinds of the mails in `dir`, in file order.
fn kinds(dir: &Path) -> Vec<String> {
    emls(dir)
        .iter()
        .filter_map(|p| {
            let text = String::from_utf8_lossy(&fs::read(p).ok()?).into_owned();
            let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
            head.split("\r\n")
                .find_map(|l| l.strip_prefix("X-Run-Chain-Alert:"))
                .map(|k| k.trim().to_owned())
        })
        .collect()
}

struct Slow {
    env: TestEnv,
    mark: PathBuf,
}

impl Slow {
    /// A RUN_ROOT whose record store exists already: made by a chain `warm` (added to
    /// `config`) run once, on the normal disk. A store's creation syncs (its switch to WAL
    /// mode goes through a rollback journal), and an exit waits for the store's thread to
    /// open it: on the slow disk, that would be the minute an exit waits for, not the
    /// outbox's.
    fn new(config: &str) -> Slow {
        let env = TestEnv::new(&format!("{config}\n[tasks.warm]\ncommand = 'true'\n"));
        env.run(&["--once", "--name", "warm", "warm"])
            .assert_code(0);
        assert!(env.db_path().exists(), "the warm-up made no store");
        let mark = env.path("fsync");
        Slow { env, mark }
    }

    /// `run-chain ARGS...` with every fsync of its own taking a minute.
    fn spawn(&self, args: &[&str]) -> Runner {
        self.spawn_with(args, 60)
    }

    /// `run-chain ARGS...` with every fsync of its own taking `seconds` (and noted).
    fn spawn_with(&self, args: &[&str], seconds: u32) -> Runner {
        let so = build_preload_shim(&self.env, "slowsync", SHIM);
        let mut cmd = self.env.run_command(args);
        cmd.env("LD_PRELOAD", &so)
            .env("SLOW_FSYNC_MARK", &self.mark)
            .env("SLOW_FSYNC_SECONDS", seconds.to_string())
            .env("RUST_LOG", "info");
        self.env.spawn_command(cmd)
    }

    /// The paths that were fsynced, in order.
    fn synced(&self) -> Vec<String> {
        self.env.lines("fsync")
    }

    fn outbox(&self) -> PathBuf {
        self.env.run_root.join("outbox")
    }

    fn mail(&self) -> PathBuf {
        self.env.run_root.join("mail")
    }

    /// Every fsync so far was of an alert in the outbox (or of the outbox itself).
    fn assert_only_the_outbox_synced(&self) {
        let outbox = self.outbox();
        let outbox = outbox.to_string_lossy();
        for path in self.synced() {
            assert!(
                path.starts_with(&*outbox),
                "something other than the outbox was synced: {path} (all: {:?})",
                self.synced()
            );
        }
    }
}

/// Waits at most `PROMPT` for `runner` to exit; returns its exit code and how long it took.
fn exit_promptly(runner: &mut Runner, what: &str) -> (Option<i32>, Duration) {
    let start = Instant::now();
    let exited = poll_until(PROMPT, || runner.try_status().is_some());
    let took = start.elapsed();
    assert!(
        exited,
        "{what}: run-chain {} had not exited after {took:?} (an fsync takes 60 s); stderr:\n{}",
        runner.pid,
        runner.stderr()
    );
    (runner.code(), took)
}

/// A task that fails every ~150 ms with a new error each time (letters, not digits: the
/// signature ignores varying numbers) keeps its schedule while each alert's fsync takes a
/// minute: a first-failure and new-failures are stored one after another, and the runs go
/// on between them.
#[test]
fn a_failing_task_keeps_its_schedule_while_its_alerts_take_a_minute_to_sync() {
    let t = Slow::new(
        r#"
[defaults]
fail_cooldown = "100ms"
success_cooldown = "100ms"
[tasks.f]
command = '''
echo "run $(read up _ </proc/uptime; echo $up)" >> "$T/out"
n=$(wc -l < "$T/out")
echo "error $(echo "$n" | tr 0-9 g-p)"
exit 1
'''
"#,
    );
    let mut runner = t.spawn(&["f"]);
    // From when the first alert's fsync (a minute) is under way:
    runner.wait_for("the first alert is being synced", || !t.synced().is_empty());
    let runs = 25;
    let start = Instant::now();
    let kept = poll_until(PROMPT, || {
        t.env.lines("out").len() >= runs && emls(&t.outbox()).len() >= 3
    });
    let took = start.elapsed();
    let stamps = stamped(&t.env.lines("out"));
    assert!(
        kept,
        "after {took:?}: {} runs (wanted {runs}) and {} alerts stored (wanted 3) while an \
         fsync takes 60 s; runs at {:?}; stderr:\n{}",
        stamps.len(),
        emls(&t.outbox()).len(),
        stamps.iter().map(|(_, s)| s).collect::<Vec<_>>(),
        runner.stderr()
    );
    // No run waited for a sync: the longest gap between two starts is a cooldown and a
    // run, far from a minute (a loaded machine may stretch it a few seconds).
    let longest = stamps
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max);
    assert!(
        longest < 10.0,
        "a run started {longest} s after the one before it: {stamps:?}"
    );
    // Every alert so far waits in the outbox: the mailer is still syncing the first one,
    // and nothing is sent before it is on disk.
    let stored = kinds(&t.outbox());
    assert_eq!(
        stored.first().map(String::as_str),
        Some("first-failure"),
        "{stored:?}"
    );
    assert!(
        stored.iter().skip(1).all(|k| k == "new-failure") && stored.len() >= 3,
        "{stored:?}"
    );
    assert!(emls(&t.mail()).is_empty(), "{:?}", emls(&t.mail()));
    t.assert_only_the_outbox_synced();

    runner.signal(libc::SIGTERM);
    let (code, _) = exit_promptly(&mut runner, "SIGTERM while alerts are being synced");
    assert_eq!(code, Some(0), "stderr:\n{}", runner.stderr());
}

/// SIGTERM just after an alert was decided, while its fsync takes a minute: the chain
/// exits 0 at once, and the alert is in the outbox (written and renamed), not sent.
#[test]
fn sigterm_right_after_an_alert_exits_at_once_with_the_alert_in_the_outbox() {
    let t = Slow::new(
        r#"
[defaults]
fail_cooldown = "1h"
[tasks.f]
command = 'echo ran >> "$T/out"; echo "disk on fire"; exit 1'
"#,
    );
    let mut runner = t.spawn(&["f"]);
    runner.wait_for("the alert is being synced", || {
        t.synced().iter().any(|p| p.contains("/outbox"))
    });
    runner.signal(libc::SIGTERM);
    let (code, took) = exit_promptly(&mut runner, "SIGTERM while an alert is being synced");
    assert_eq!(
        code,
        Some(0),
        "exited after {took:?}; stderr:\n{}",
        runner.stderr()
    );
    assert_eq!(t.env.lines("out"), ["ran"]);
    assert_eq!(kinds(&t.outbox()), ["first-failure"], "{:?}", t.synced());
    assert!(emls(&t.mail()).is_empty(), "{:?}", emls(&t.mail()));
    t.assert_only_the_outbox_synced();
}

/// `--once` whose last task fails exits 1 at once after the alert of that failure, with
/// the alert in the outbox, its fsync (a minute) not waited for.
#[test]
fn once_whose_last_task_fails_exits_at_once_with_the_alert_in_the_outbox() {
    let t = Slow::new(
        r#"
[defaults]
success_cooldown = "10ms"
fail_cooldown = "1h"
[tasks.a]
command = 'echo a >> "$T/out"'
[tasks.f]
command = 'echo f >> "$T/out"; echo "disk on fire"; exit 1'
"#,
    );
    let mut runner = t.spawn(&["--once", "a", "f"]);
    let (code, took) = exit_promptly(&mut runner, "--once after its last task failed");
    assert_eq!(
        code,
        Some(1),
        "exited after {took:?}; stderr:\n{}",
        runner.stderr()
    );
    assert_eq!(t.env.lines("out"), ["a", "f"]);
    assert_eq!(kinds(&t.outbox()), ["first-failure"], "{:?}", t.synced());
    assert!(emls(&t.mail()).is_empty(), "{:?}", emls(&t.mail()));
    t.assert_only_the_outbox_synced();
}

/// With the SMTP server down, the first alert waits in backoff, and the alerts after it
/// wait behind it (the outbox goes out in order); each is synced to disk all the same as
/// soon as it is stored, not only when its turn to be sent comes. (Here fsync is quick,
/// and only noted.)
#[test]
fn alerts_behind_one_in_backoff_are_synced_before_their_turn() {
    // A port that refuses connections: bound, never listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    let t = Slow::new(&format!(
        r#"
[email]
to = ["admin@example.com"]
smtp = "smtp://127.0.0.1:{port}"
[defaults]
fail_cooldown = "100ms"
[tasks.f]
command = '''
echo "run" >> "$T/out"
n=$(wc -l < "$T/out")
echo "error $(echo "$n" | tr 0-9 g-p)"
exit 1
'''
"#
    ));
    let mut runner = t.spawn_with(&["f"], 0);
    let outbox = t.outbox();
    let synced_mails = || -> Vec<PathBuf> {
        let synced = t.synced();
        emls(&outbox)
            .into_iter()
            .filter(|p| synced.iter().any(|s| Path::new(s) == p))
            .collect()
    };
    runner.wait_for("three alerts are stored and synced", || {
        synced_mails().len() >= 3
    });
    assert!(
        runner.stderr().contains("not delivered yet"),
        "the first alert waits in backoff; stderr:\n{}",
        runner.stderr()
    );
    let stored = kinds(&outbox);
    assert_eq!(
        stored.first().map(String::as_str),
        Some("first-failure"),
        "{stored:?}"
    );
    // The folder (the renames) is synced after a file, never only before it.
    let synced = t.synced();
    let folder = outbox.to_string_lossy().into_owned();
    let first_file = synced.iter().position(|s| s != &folder);
    let first_folder = synced.iter().position(|s| s == &folder);
    assert!(
        first_file.is_some() && first_file < first_folder,
        "{synced:?}"
    );
    t.assert_only_the_outbox_synced();
    runner.signal(libc::SIGTERM);
    let (code, _) = exit_promptly(&mut runner, "SIGTERM with the server down");
    assert_eq!(code, Some(0), "stderr:\n{}", runner.stderr());
}
