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

/// Polls `cond` every 15 ms until it is true (returns true) or `timeout` has passed (returns
/// false, after one last look). For a test that counts a miss and goes on instead of failing.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return cond();
        }
        std::thread::sleep(Duration::from_millis(15));
    }
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

    /// Asserts that `runner` is (still) the running instance of `chain`: alive, named by the
    /// pidfile, and the lock holder (matched by device and inode).
    pub fn assert_running(&self, runner: &mut Runner, chain: &str) {
        self.assert_running_on_device(runner, chain);
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

/// Builds `source` (C) into `DIR/NAME.so` with the system C compiler, for LD_PRELOAD: a
/// tiny shim that makes a system call answer as a file system or disk would.
pub fn build_preload_shim(env: &TestEnv, name: &str, source: &str) -> PathBuf {
    let src = env.path(&format!("{name}.c"));
    let so = env.path(&format!("{name}.so"));
    fs::write(&src, source).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("the system C compiler `cc` (Debian's gcc) is needed to build an LD_PRELOAD shim");
    assert!(
        out.status.success(),
        "cc failed on {name}.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
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

// ---------------------------------------------------------------------------------------------
// The record store and the commands that read it (`status`, `history`, `log`): JSON helpers,
// direct reads of `runs.db` through python3's sqlite3, RFC 3339 times, root-only checks.
// ---------------------------------------------------------------------------------------------

impl Finished {
    /// Parses stdout as JSON; panics showing the whole invocation if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); exit {:?}\nstdout:\n{}\nstderr:\n{}",
                self.status, self.stdout, self.stderr
            )
        })
    }

    /// `Ok(json)` if it exited 0 with JSON on stdout, else `Err(explanation)`.
    pub fn try_json(&self) -> Result<serde_json::Value, String> {
        if self.status.code() != Some(0) {
            return Err(format!(
                "exit {:?}\nstdout:\n{}\nstderr:\n{}",
                self.status, self.stdout, self.stderr
            ));
        }
        serde_json::from_str(&self.stdout).map_err(|e| {
            format!(
                "stdout is not JSON ({e})\nstdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl TestEnv {
    /// `RUN_ROOT/runs.db`.
    pub fn db_path(&self) -> PathBuf {
        self.run_root.join("runs.db")
    }

    /// Creates RUN_ROOT (mode 0700) before run-chain does.
    pub fn make_run_root(&self) {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&self.run_root).unwrap();
        fs::set_permissions(&self.run_root, fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// `history TASK --json EXTRA...`: the runs, or why not (exit status, output).
    pub fn try_history(
        &self,
        task: &str,
        extra: &[&str],
    ) -> Result<Vec<serde_json::Value>, String> {
        let mut args = vec!["history", task, "--json"];
        args.extend_from_slice(extra);
        let done = self.sub(&args);
        match done.try_json()? {
            serde_json::Value::Array(runs) => Ok(runs),
            other => Err(format!("history --json printed a non-array: {other}")),
        }
    }

    /// `history TASK --json EXTRA...`; panics unless it exits 0 with a JSON array.
    pub fn history(&self, task: &str, extra: &[&str]) -> Vec<serde_json::Value> {
        self.try_history(task, extra)
            .unwrap_or_else(|e| panic!("history {task} {extra:?}: {e}"))
    }

    /// Waits until `history TASK --json EXTRA...` satisfies `check`; returns that history.
    pub fn wait_history(
        &self,
        task: &str,
        extra: &[&str],
        what: &str,
        mut check: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut last = Vec::new();
        wait_until_explained(DEADLINE, what, || {
            let runs = self.try_history(task, extra)?;
            let ok = check(&runs);
            last = runs;
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "last history of {task}: {}",
                    serde_json::to_string_pretty(&last).unwrap()
                ))
            }
        });
        last
    }

    /// `status --json`: the document, or why not.
    pub fn try_status_json(&self) -> Result<serde_json::Value, String> {
        self.sub(&["status", "--json"]).try_json()
    }

    /// `status --json`; panics unless it exits 0 with JSON.
    pub fn status_json(&self) -> serde_json::Value {
        self.try_status_json()
            .unwrap_or_else(|e| panic!("status --json: {e}"))
    }

    /// Waits until `status --json` shows `chain` and `check` holds for its entry; returns it.
    pub fn wait_chain_status(
        &self,
        chain: &str,
        what: &str,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = serde_json::Value::Null;
        wait_until_explained(DEADLINE, what, || {
            let doc = self.try_status_json()?;
            let Some(entry) = chain_entry(&doc, chain) else {
                return Err(format!("no chain {chain} in status: {doc:#}"));
            };
            if check(entry) {
                found = entry.clone();
                Ok(())
            } else {
                Err(format!("last status of {chain}: {entry:#}"))
            }
        });
        found
    }

    /// Runs `query` on RUN_ROOT/runs.db with python3's sqlite3 (read-only, URI mode); returns
    /// the rows as JSON arrays (BLOBs as their length).
    pub fn sql(&self, query: &str) -> Vec<Vec<serde_json::Value>> {
        const SCRIPT: &str = r#"
import json, sqlite3, sys
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=30)
rows = con.execute(sys.argv[2]).fetchall()
out = [[len(v) if isinstance(v, (bytes, memoryview)) else v for v in r] for r in rows]
print(json.dumps(out))
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(self.db_path())
            .arg(query)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python3 sqlite3 query {query:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Lines of `runner`'s stderr logged at level error or warn (run-chain's log format is
    /// `TIME run-chain[PID] LEVEL: message`).
    pub fn logged_problems(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("] error:") || l.contains("] warn:"))
            .map(str::to_owned)
            .collect()
    }
}

/// The entry of `chain` in a `status --json` document.
pub fn chain_entry<'a>(doc: &'a serde_json::Value, chain: &str) -> Option<&'a serde_json::Value> {
    doc["chains"]
        .as_array()?
        .iter()
        .find(|c| c["chain"].as_str() == Some(chain))
}

/// The entry of `task` in a chain's `status --json` entry.
pub fn task_entry<'a>(chain: &'a serde_json::Value, task: &str) -> Option<&'a serde_json::Value> {
    chain["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["task"].as_str() == Some(task))
}

/// The `run_id` of a history entry.
pub fn run_id(run: &serde_json::Value) -> u64 {
    run["run_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer run_id in {run}"))
}

/// The `outcome` of a history entry ("running" while it runs).
pub fn outcome(run: &serde_json::Value) -> &str {
    run["outcome"]
        .as_str()
        .unwrap_or_else(|| panic!("no outcome string in {run}"))
}

/// Seconds since the Unix epoch of the RFC 3339 time in `v[key]`; panics if it is not one.
pub fn time_of(v: &serde_json::Value, key: &str) -> f64 {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not an RFC 3339 string in {v}"));
    rfc3339(s).unwrap_or_else(|| panic!("{key} = {s:?} is not RFC 3339 (UTC) in {v}"))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00|-00:00|±HH:MM)` into seconds since the epoch.
pub fn rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

/// Wall-clock seconds since the epoch.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Fails (never skips) a test that needs root when it does not run as root.
pub fn require_root(what: &str) {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root ({what}); it runs as uid {euid}: run the suite as root"
    );
}

/// A tmpfs mounted on a directory for one test; lazily unmounted when dropped (processes
/// still using it are killed by the TestEnv's guard afterwards).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE,mode=0700 tmpfs PATH` (PATH must exist).
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        require_root("mount -t tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `path` with a file at `path` until it reports no space.
/// Returns the bytes written.
pub fn fill_file_system(path: &Path) -> u64 {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever a smaller write can still take.
    for size in [4096usize, 512, 1] {
        while let Ok(n) = f.write(&chunk[..size]) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
    }
    let _ = f.flush();
    written
}

/// /proc/locks in one read(2) with a large buffer: a seq_file read in small pieces while other
/// processes take and drop locks (SQLite does, all the time) can skip or repeat a line.
pub fn read_proc_locks() -> String {
    use std::io::Read;
    let Ok(mut f) = fs::File::open("/proc/locks") else {
        return String::new();
    };
    let mut buf = vec![0u8; 4 << 20];
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// PIDs holding a flock(2) on `path`, read from /proc/locks, matching the device as well as the
/// inode (on a small tmpfs, inode numbers are small and repeat across file systems).
pub fn lock_holders_on_device(path: &Path) -> Vec<i32> {
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = read_proc_locks();
    let mut out = Vec::new();
    for line in locks.lines() {
        if line.contains("->") {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6 && f[1] == "FLOCK" && f[5] == want {
            if let Ok(pid) = f[4].parse() {
                out.push(pid);
            }
        }
    }
    out
}

impl TestEnv {
    /// Like `assert_running`, with the lock holder matched by device and inode.
    pub fn assert_running_on_device(&self, runner: &mut Runner, chain: &str) {
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
        // A holder cannot change while the instance runs: a few reads rule out a torn one (the
        // full deadline, not a short one: a loaded machine may take a while for those reads).
        let pid = runner.pid;
        wait_until_explained(
            DEADLINE,
            &format!("pid {pid} holds the lock on {}", pidfile.display()),
            || {
                let holders = lock_holders_on_device(&pidfile);
                if holders == vec![pid] {
                    Ok(())
                } else {
                    Err(format!(
                        "holders: {holders:?}\n/proc/locks:\n{}",
                        read_proc_locks()
                    ))
                }
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Load and fault tests (tests/load.rs, tests/faults.rs): the long mode, /proc samples of a
// process (memory, descriptors, threads, zombie children), a small deterministic RNG.
// ---------------------------------------------------------------------------------------------

/// True when `RUN_CHAIN_LONG=1`: the load and fault tests then run their long variants.
pub fn long_mode() -> bool {
    std::env::var("RUN_CHAIN_LONG").is_ok_and(|v| v == "1")
}

/// `default` normally, `long` with `RUN_CHAIN_LONG=1`.
pub fn scaled<T>(default: T, long: T) -> T {
    if long_mode() {
        long
    } else {
        default
    }
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`, ...), or a plain number
/// (`Threads`); None if the process or the field is gone.
pub fn proc_status_number(pid: i32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// How many descriptors `pid` has open (`/proc/PID/fd`), or None if it is gone.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Start time (clock ticks since boot, field 22 of `/proc/PID/stat`): with the PID, it names
/// a process for good (a PID alone may be reused).
pub fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Zombie children of `ppid` right now, as (PID, start time).
pub fn zombie_children(ppid: i32) -> Vec<(i32, u64)> {
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
        if proc_state(pid) == Some('Z') && proc_ppid(pid) == Some(ppid) {
            if let Some(start) = proc_start_ticks(pid) {
                out.push((pid, start));
            }
        }
    }
    out
}

/// Waits until none of `zombies` (seen as zombie children of `ppid`) still is one: a zombie
/// that a busy supervisor has not reaped *yet* passes, one it never reaps fails.
pub fn wait_zombies_reaped(ppid: i32, zombies: &[(i32, u64)]) {
    wait_until_explained(
        DEADLINE,
        "the zombie children seen earlier are reaped",
        || {
            let left: Vec<(i32, u64)> = zombies
                .iter()
                .copied()
                .filter(|&(pid, start)| {
                    proc_state(pid) == Some('Z')
                        && proc_ppid(pid) == Some(ppid)
                        && proc_start_ticks(pid) == Some(start)
                })
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still zombie children of {ppid}: {left:?}"))
            }
        },
    );
}

/// A small deterministic generator (xorshift64*), seeded from the clock unless
/// `RUN_CHAIN_SEED` is set; tests print the seed so that a failing sequence can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(what: &str) -> Rng {
        let seed = std::env::var("RUN_CHAIN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: RUN_CHAIN_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}
