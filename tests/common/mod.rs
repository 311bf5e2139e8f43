//! Shared helpers for the integration tests: a fresh temp dir per test (config file, RUN_ROOT,
//! evidence files), the real `run-chain` binary, a guard that never leaves a process behind,
//! and `wait_until`, the only place where a test may sleep.
//!
//! Conventions used by every test:
//! - the config is `DIR/tasks.toml`, RUN_ROOT is `DIR/run` (created by run-chain);
//! - every run-chain process gets `T=DIR` in its environment, so tasks write their evidence to
//!   `"$T/out"` and friends without depending on the task's working directory;
//! - every run-chain process also gets a marker variable naming DIR: when the test ends, any
//!   process still carrying it (run-chain, its guardian, a task, a grandchild that escaped) is
//!   SIGKILLed, so a failing test leaves nothing behind.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long any condition may take before a test gives up. Generous on purpose: the suite must
/// be stable on a loaded 2-core machine; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(30);

const MARKER_VAR: &str = "RUN_CHAIN_TEST_MARKER";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_run-chain")
}

/// Polls `cond` every 15 ms until it is true; panics with `what` after `DEADLINE`.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_for(DEADLINE, what, cond)
}

/// Polls `cond` every 15 ms until it is true; panics with `what` after `timeout`.
pub fn wait_until_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_until_explained(timeout, what, || {
        if cond() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
}

/// Polls `check` every 15 ms until it returns `Ok`; after `timeout`, panics with `what` and
/// the explanation of the last `Err`.
pub fn wait_until_explained(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(why) => why,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}\n{last}");
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Sends `sig` to `pid` (never to a group).
pub fn send_signal(pid: i32, sig: i32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// `/proc/PID/stat` state letter, or None if the process does not exist.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ..."; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Parent PID from `/proc/PID/stat`.
pub fn proc_ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// True if the process exists and is not a zombie (it still runs code).
pub fn is_running(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// True if `kill(pid, 0)` says the PID does not exist at all (reaped).
pub fn is_reaped(pid: i32) -> bool {
    let rc = unsafe { libc::kill(pid, 0) };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Reads a PID that a task wrote with `echo $$ > FILE` (only once the line is complete).
pub fn read_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    text.trim().parse().ok()
}

/// Waits for a task's PID file and returns the PID.
pub fn wait_pid_file(path: &Path) -> i32 {
    let mut pid = None;
    wait_until(&format!("{} holds a pid", path.display()), || {
        pid = read_pid(path);
        pid.is_some()
    });
    pid.unwrap()
}

/// PIDs holding a flock(2) on `path`, read from /proc/locks (no lock is taken).
pub fn lock_holders(path: &Path) -> Vec<i32> {
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let ino = meta.ino();
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut out = Vec::new();
    for line in locks.lines() {
        if line.contains("->") {
            continue; // a blocked waiter, not a holder
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let Some(file_ino) = f[5].rsplit(':').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if file_ino == ino {
            if let Ok(pid) = f[4].parse() {
                out.push(pid);
            }
        }
    }
    out
}

/// The niceness of this process.
pub fn own_niceness() -> i32 {
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Seconds since boot, as tasks see them in /proc/uptime (monotonic, 10 ms resolution).
/// Tasks stamp lines with it (no quotes in it, so it fits in any TOML or shell string).
pub const STAMP: &str = "$(read up _ </proc/uptime; echo $up)";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One test's world: temp dir, config file, RUN_ROOT.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub run_root: PathBuf,
}

impl TestEnv {
    /// A fresh temp dir with `tasks.toml` holding `config`.
    pub fn new(config: &str) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("run-chain-test-")
            .tempdir()
            .unwrap();
        let config_path = dir.path().join("tasks.toml");
        let run_root = dir.path().join("run");
        let env = TestEnv {
            dir,
            config: config_path,
            run_root,
        };
        env.write_config(config);
        env
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the config file atomically (write a temp file, rename it over).
    pub fn write_config(&self, text: &str) {
        write_atomic(&self.config, text);
    }

    /// Reads a file in the temp dir; empty if missing.
    pub fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The complete lines of a file in the temp dir (a trailing partial line is left out).
    pub fn lines(&self, name: &str) -> Vec<String> {
        let text = self.read(name);
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete.lines().map(str::to_owned).collect()
    }

    /// Waits until `name` has at least `n` complete lines; returns them.
    pub fn wait_lines(&self, name: &str, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        wait_until(&format!("{name} has {n} lines"), || {
            lines = self.lines(name);
            lines.len() >= n
        });
        lines
    }

    /// Same as `wait_lines`, but fails at once (with its stderr) if `runner` exits meanwhile.
    pub fn wait_lines_while(&self, runner: &mut Runner, name: &str, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        runner.wait_for(&format!("{name} has {n} lines"), || {
            lines = self.lines(name);
            lines.len() >= n
        });
        lines
    }

    pub fn pidfile(&self, chain: &str) -> PathBuf {
        self.run_root.join(format!("{chain}.pid"))
    }

    /// A `run-chain` command with a clean environment for the test: `T=DIR`, the cleanup
    /// marker, no inherited RUN_ROOT / RUN_CHAIN_CONFIG / RUST_LOG, cwd `/` (so that nothing
    /// depends on the test's working directory), stdin from /dev/null, and no descriptor
    /// beyond 0, 1, 2 inherited from the test harness (so that any other descriptor a task
    /// sees is run-chain's own).
    pub fn bare_command(&self) -> Command {
        self.command_for(bin())
    }

    /// Like `bare_command`, for another program (a wrapper that execs run-chain, a `sleep`).
    pub fn command_for(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (fcntl, close) between fork and exec. Descriptors
        // marked close-on-exec (std's own exec-error pipe among them) are left alone.
        unsafe {
            cmd.pre_exec(|| {
                for fd in 3..1024 {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
        cmd.env("T", self.root())
            .env(MARKER_VAR, self.root())
            .env_remove("RUN_ROOT")
            .env_remove("RUN_CHAIN_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir("/")
            .stdin(Stdio::null());
        cmd
    }

    /// `run-chain -c CONFIG --run-root RUN_ROOT ARGS...`
    pub fn run_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare_command();
        cmd.arg("-c")
            .arg(&self.config)
            .arg("--run-root")
            .arg(&self.run_root)
            .args(args);
        cmd
    }

    /// A subcommand (`check`, `stop`, `kick`, ...) with config and RUN_ROOT given through the
    /// environment (`RUN_CHAIN_CONFIG`, `RUN_ROOT`), which every subcommand honours.
    pub fn sub_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare_command();
        cmd.env("RUN_CHAIN_CONFIG", &self.config)
            .env("RUN_ROOT", &self.run_root)
            .args(args);
        cmd
    }

    /// Spawns `cmd` with stdout/stderr going to files in the temp dir.
    pub fn spawn_command(&self, mut cmd: Command) -> Runner {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let stdout = self.path(&format!("runner-{n}.stdout"));
        let stderr = self.path(&format!("runner-{n}.stderr"));
        cmd.stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("spawn run-chain");
        Runner {
            pid: child.id() as i32,
            child,
            stdout,
            stderr,
            status: None,
        }
    }

    /// Launches `run-chain -c CONFIG --run-root RUN_ROOT ARGS...` in the background.
    pub fn spawn(&self, args: &[&str]) -> Runner {
        self.spawn_command(self.run_command(args))
    }

    /// Runs `cmd` to its end (within the deadline) and returns what it did.
    pub fn finish_command(&self, cmd: Command) -> Finished {
        let mut r = self.spawn_command(cmd);
        let status = r.wait_exit();
        Finished {
            status,
            stdout: r.stdout(),
            stderr: r.stderr(),
        }
    }

    /// `run-chain -c CONFIG --run-root RUN_ROOT ARGS...` to its end.
    pub fn run(&self, args: &[&str]) -> Finished {
        self.finish_command(self.run_command(args))
    }

    /// A subcommand to its end (config and RUN_ROOT through the environment).
    pub fn sub(&self, args: &[&str]) -> Finished {
        self.finish_command(self.sub_command(args))
    }

    /// Waits until `runner` is the running instance of `chain`: the pidfile names it and it
    /// holds the flock on it.
    pub fn wait_running(&self, runner: &mut Runner, chain: &str) {
        let pidfile = self.pidfile(chain);
        let pid = runner.pid;
        runner.wait_for(&format!("pid {pid} holds {}", pidfile.display()), || {
            fs::read_to_string(&pidfile).ok() == Some(format!("{pid}\n"))
                && lock_holders(&pidfile) == vec![pid]
        });
    }

    /// Asserts that `runner` is (still) the running instance of `chain`.
    pub fn assert_running(&self, runner: &mut Runner, chain: &str) {
        let status = runner.try_status();
        assert!(
            status.is_none(),
            "run-chain {} exited: {status:?}; stderr:\n{}",
            runner.pid,
            runner.stderr()
        );
        let pidfile = self.pidfile(chain);
        assert_eq!(
            fs::read_to_string(&pidfile).unwrap(),
            format!("{}\n", runner.pid),
            "pidfile {} no longer names the running instance",
            pidfile.display()
        );
        assert_eq!(
            lock_holders(&pidfile),
            vec![runner.pid],
            "lock holder of {}",
            pidfile.display()
        );
    }

    /// PIDs of live processes (not this one) that carry this test's marker.
    pub fn marked_processes(&self) -> Vec<i32> {
        let want = format!("{MARKER_VAR}={}", self.root().display());
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return out;
        };
        for entry in rd.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me || !is_running(pid) {
                continue;
            }
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Whatever a failed test (or a broken run-chain) left running dies here.
        for _ in 0..3 {
            let pids = self.marked_processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
    let mut f = fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(&tmp, path).unwrap();
}

/// What a finished run-chain invocation did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing the output on failure.
    pub fn assert_code(&self, code: i32) -> &Finished {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A run-chain process started by a test. Dropping it SIGKILLs and reaps it.
pub struct Runner {
    pub child: Child,
    pub pid: i32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Runner {
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            send_signal(self.pid, sig);
        }
    }

    /// The exit status if it has exited (reaps it), else None.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    pub fn code(&mut self) -> Option<i32> {
        self.try_status().and_then(|s| s.code())
    }

    /// Waits (within the deadline) for it to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let pid = self.pid;
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "run-chain {pid} did not exit within {DEADLINE:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(15));
        }
    }

    /// Waits for it to exit and asserts the exit code.
    pub fn assert_exit(&mut self, code: i32) {
        let status = self.wait_exit();
        assert_eq!(
            status.code(),
            Some(code),
            "run-chain {} exited with {status:?}, expected {code}; stderr:\n{}",
            self.pid,
            self.stderr()
        );
    }

    /// Like `wait_until`, but fails at once (showing its stderr) if this run-chain exits.
    pub fn wait_for(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if cond() {
                return;
            }
            if let Some(status) = self.try_status() {
                if cond() {
                    return;
                }
                panic!(
                    "run-chain {} exited ({status:?}) while waiting until {what}; stderr:\n{}",
                    self.pid,
                    self.stderr()
                );
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "timed out after {DEADLINE:?} waiting until {what}; run-chain {} stderr:\n{}",
                    self.pid,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(15));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Parses `"<word> <uptime>"` lines into (word, seconds).
pub fn stamped(lines: &[String]) -> Vec<(String, f64)> {
    lines
        .iter()
        .map(|l| {
            let mut it = l.split_whitespace();
            let word = it.next().unwrap_or_default().to_owned();
            let t = it
                .last()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no time stamp in line {l:?}"));
            (word, t)
        })
        .collect()
}
