//! Starting a run and ending everything it started.
//!
//! Each run gets a new process group (its first process leads it), stdin from
//! /dev/null, and pipes for stdout and stderr. run-chain is a child subreaper, so any
//! process of the run whose parent dies is re-parented to run-chain: after the first
//! process exits, every descendant still alive is either run-chain's child or below
//! one. [`Run::signal`] sends a signal to the run's group and to those children that
//! escaped it (`setsid`); [`Run::sweep`] reaps them (by PID only: a `waitpid(-1)`
//! would steal the guardian's status) and reports when none is left.
//!
//! The first process is not reaped until the sweep finds nothing left (we only look
//! at its status with `WNOWAIT`): as long as it is an unreaped zombie its PID, which is
//! the group's id, cannot be reused, so the group we signal is always ours.
//!
//! run-chain keeps a copy of the write end of the run's stdout and stderr pipes until
//! the run is over. So the pipes never report end-of-file (the run's end is its first
//! process's exit, not the closing of its output), and a run's end wakes the loop once
//! (SIGCHLD), not once per pipe as well: with short tasks each extra wake-up showed in
//! the loop rate. What is left in the pipes is read when the group is empty.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::config::{Program, Task};
use crate::core::chain::GroupSignal;
use crate::core::outcome::Exit;
use crate::run::output::Source;
use crate::run::spawn::{self, Step};
use crate::sys;

/// A run in progress.
#[derive(Debug)]
pub(crate) struct Run {
    /// The first process; also the process group id.
    pub(crate) pid: i32,
    pub(crate) sources: Vec<Source>,
    /// Leftover processes that survived SIGKILL past the give-up time: not waited for again.
    reaped_leader: bool,
    /// The first process has exited (seen by [`Run::leader_exit`]).
    leader_exited: bool,
    /// The last sweep found nothing of the run left.
    swept_empty: bool,
    /// A look at our children after the first process had exited found none of the
    /// run's: nothing of it is left, and nothing can turn up (see [`Run::signal`]).
    seen_empty: bool,
    /// A signal was sent to the run (a timeout, a stop, leftovers ended).
    signalled: bool,
    /// Our copies of the write ends of the output pipes (see the module's text).
    writers: Vec<OwnedFd>,
}

/// The output pipes of a run that ended by itself, of which nothing is left, kept for
/// the chain's next run: creating two pipes and closing them again (eight system calls,
/// the closes freeing the pipes) was a tenth of a chain's own CPU per run with 200
/// chains on a host. Every process of the run is gone then, and what was in the pipes
/// has been read. A run that was sent a signal (a timeout, a stop, leftovers ended) or
/// whose output ended early gets new pipes: a process outside the run's tree may have
/// been handed its output (an ssh client passes it to a shared ControlMaster connection)
/// and, the client killed, go on writing; into the old pipe, closed, that fails (EPIPE)
/// instead of landing in the next run's record.
#[derive(Debug)]
pub(crate) struct Pipes {
    out: (OwnedFd, OwnedFd),
    err: (OwnedFd, OwnedFd),
}

impl Pipes {
    /// Ready for a new run: the write ends back to plain blocking pipes. A task shares
    /// its stdout's open file with us and may have changed its flags (`O_NONBLOCK`, as
    /// some runtimes leave it); the next task must not inherit that.
    fn reset(self) -> Option<Pipes> {
        for w in [&self.out.1, &self.err.1] {
            if fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).is_err() {
                return None;
            }
        }
        Some(self)
    }
}

/// A pipe for a task's output: (read end, non-blocking; write end, blocking), both
/// close-on-exec, the write end numbered 3 or more (it is dup'ed onto 1 or 2).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // The two ends are two open files: the task's end blocks, as a pipe should.
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok((r, above_stdio(w)?))
}

/// `fd` itself if it is 3 or more, else a close-on-exec copy that is (only when
/// run-chain was started with stdin, stdout or stderr closed).
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    // std's copy is fcntl(F_DUPFD_CLOEXEC, 3): close-on-exec, numbered 3 or more. The
    // original is closed when `fd` is dropped.
    fd.try_clone()
}

/// /dev/null for the tasks' stdin, opened once.
fn dev_null() -> std::io::Result<RawFd> {
    static NULL: OnceLock<Result<OwnedFd, i32>> = OnceLock::new();
    let r = NULL.get_or_init(|| {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .and_then(above_stdio)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    });
    match r {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(e) => Err(std::io::Error::from_raw_os_error(*e)),
    }
}

/// run-chain's own environment, as the tasks inherit it: (name, "NAME=value"),
/// read once (run-chain never changes its environment).
fn base_env() -> &'static [(Vec<u8>, CString)] {
    static BASE: OnceLock<Vec<(Vec<u8>, CString)>> = OnceLock::new();
    BASE.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                Some((k.into_vec(), CString::new(kv).ok()?))
            })
            .collect()
    })
}

fn cstr(what: &str, s: impl Into<Vec<u8>>) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("cannot start the task: {what} contains a NUL byte"))
}

/// The paths `execve` tries for `program`, as `execvp` would: the program itself if
/// it has a slash, else each directory of PATH (the task's own if its env sets one).
fn candidates(
    program: &str,
    task_env: &BTreeMap<String, String>,
    remove: &[&str],
) -> Result<Vec<CString>, String> {
    if program.contains('/') {
        return Ok(vec![cstr("the program", program)?]);
    }
    let ours = std::env::var_os("PATH");
    let path_removed = remove.contains(&"PATH");
    let path: Vec<u8> = match task_env.get("PATH") {
        Some(p) if !path_removed => p.as_bytes().to_vec(),
        _ if path_removed => b"/bin:/usr/bin".to_vec(),
        _ => ours.map_or_else(|| b"/bin:/usr/bin".to_vec(), |p| p.into_vec()),
    };
    let mut out = Vec::new();
    for dir in path.split(|b| *b == b':') {
        let mut full = dir.to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(program.as_bytes());
        out.push(cstr("PATH", full)?);
    }
    Ok(out)
}

/// What starting a task needs that stays the same from run to run: its program, argv,
/// the paths to try, cwd and environment as C strings, made once per task (the driver
/// keeps them until the config is reloaded) instead of at every spawn.
#[derive(Debug)]
pub(crate) struct Prepared {
    program: String,
    argv: Vec<CString>,
    candidates: Vec<CString>,
    cwd: CString,
    cwd_shown: String,
    nice: Option<i32>,
    /// The variables of ours the task inherits (those it does not set itself).
    inherited: Vec<&'static CStr>,
    /// The task's own variables, its chain's and its name ("NAME=value").
    own: Vec<CString>,
}

impl Prepared {
    /// Prepare `task` of `chain`; `remove`: variables to leave out of its environment
    /// (the SMTP password's, the fleet store's). The error is a message for the run record
    /// (spawn-error).
    pub(crate) fn new(task: &Task, chain: &str, remove: &[&str]) -> Result<Prepared, String> {
        let (program, argv): (&str, Vec<CString>) = match &task.program {
            Program::Shell(c) => (
                "/bin/sh",
                vec![
                    cstr("the command", "/bin/sh")?,
                    cstr("the command", "-c")?,
                    cstr("the command", c.as_str())?,
                ],
            ),
            Program::Argv(v) => (
                v.first().map_or("", String::as_str),
                v.iter()
                    .map(|a| cstr("argv", a.as_str()))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let candidates = candidates(program, &task.env, remove)?;
        let cwd = cstr("cwd", task.cwd.as_os_str().as_bytes())?;
        // The environment: ours, then the task's env, then the run's identity; the
        // password's variable is removed from all of them.
        let set = |k: &[u8]| {
            remove.iter().any(|r| r.as_bytes() == k)
                || k == b"RUN_CHAIN_NAME"
                || k == b"RUN_CHAIN_TASK"
                || k == b"RUN_CHAIN_RUN_ID"
                || std::str::from_utf8(k).is_ok_and(|k| task.env.contains_key(k))
        };
        let inherited = base_env()
            .iter()
            .filter(|(k, _)| !set(k))
            .map(|(_, kv)| kv.as_c_str())
            .collect();
        let mut own = Vec::with_capacity(task.env.len() + 2);
        for (k, v) in &task.env {
            if !remove.contains(&k.as_str()) {
                own.push(cstr("env", format!("{k}={v}"))?);
            }
        }
        own.push(cstr("the chain's name", format!("RUN_CHAIN_NAME={chain}"))?);
        own.push(cstr(
            "the task's name",
            format!("RUN_CHAIN_TASK={}", task.name),
        )?);
        Ok(Prepared {
            program: program.to_string(),
            argv,
            candidates,
            cwd,
            cwd_shown: task.cwd.display().to_string(),
            nice: task.nice,
            inherited,
            own,
        })
    }
}

/// Start run `run_id` of a prepared task, on `pipes` if the last run left them (see
/// [`Pipes`]). The error is a message for the run record (spawn-error).
pub(crate) fn spawn(
    task: &Prepared,
    run_id: u64,
    announce: Option<&'static std::sync::atomic::AtomicI32>,
    pipes: Option<Pipes>,
) -> Result<Run, String> {
    let id = cstr("the run id", format!("RUN_CHAIN_RUN_ID={run_id}"))?;
    let mut envp: Vec<*const c_char> =
        Vec::with_capacity(task.inherited.len() + task.own.len() + 2);
    envp.extend(task.inherited.iter().map(|kv| kv.as_ptr()));
    envp.extend(task.own.iter().map(|kv| kv.as_ptr()));
    envp.push(id.as_ptr());
    let null = dev_null().map_err(|e| format!("cannot open /dev/null for stdin: {e}"))?;
    let ((out_r, out_w), (err_r, err_w)) = match pipes.and_then(Pipes::reset) {
        Some(p) => (p.out, p.err),
        None => {
            let new = |_| pipe().map_err(|e| format!("cannot create the output pipes: {e}"));
            (new(0)?, new(1)?)
        }
    };
    let spec = spawn::Spec {
        candidates: &task.candidates,
        argv: &task.argv,
        envp: &envp,
        cwd: &task.cwd,
        nice: task.nice,
        stdio: [null, out_w.as_raw_fd(), err_w.as_raw_fd()],
        announce,
    };
    let program = &task.program;
    let pid = spawn::spawn(&spec).map_err(|e| {
        let err = e.err;
        match e.step {
            Step::Nice => match (task.nice, err.raw_os_error()) {
                (Some(n), Some(libc::EPERM | libc::EACCES)) if n < 0 => {
                    format!("cannot set nice {n} (raising priority needs privilege): {err}")
                }
                (n, _) => format!("cannot set nice {}: {err}", n.unwrap_or(0)),
            },
            Step::Cwd => format!("cannot change into cwd {}: {err}", task.cwd_shown),
            Step::Exec => format!("cannot run {program}: {err}"),
            Step::Setup => format!("cannot start {program}: {err}"),
            Step::Fenced => format!(
                "not started: the fleet lease's fence deadline (0.6 × lease without a renew) had passed when {program} was to be run (run-chain was frozen or stalled)"
            ),
        }
    })?;
    let sources = vec![Source::nonblocking(out_r, 0), Source::nonblocking(err_r, 1)];
    Ok(Run {
        pid,
        sources,
        reaped_leader: false,
        leader_exited: false,
        swept_empty: false,
        seen_empty: false,
        signalled: false,
        writers: vec![out_w, err_w],
    })
}

impl Run {
    /// Has the first process exited? (Looks without reaping.)
    pub(crate) fn leader_exit(&mut self) -> Option<Exit> {
        if self.reaped_leader {
            return None;
        }
        let exit = sys::exited_nowait(self.pid);
        if exit.is_some() {
            self.leader_exited = true;
        }
        exit
    }

    /// Signal the run's group, and every child of ours that is not the guardian or
    /// ignored (escaped descendants: their own group if they lead one).
    pub(crate) fn signal(&mut self, sig: GroupSignal, ignore: &BTreeSet<i32>) {
        let sig = match sig {
            GroupSignal::Term => libc::SIGTERM,
            GroupSignal::Kill => libc::SIGKILL,
        };
        let kids = sys::children();
        // Once the first process has exited, every process left of the run is a child
        // of ours or below one (we are the subreaper): with no such child, the group
        // holds only the unreaped first process, and signalling it is skipped.
        let others = kids.iter().any(|k| *k != self.pid && !ignore.contains(k));
        // The kernel hands a dying process's children to us before its exit can be
        // seen, and an exited first process starts nothing: with none left now, none
        // can come, and the sweep that follows need not look again.
        self.seen_empty = self.leader_exited && !others;
        if !self.reaped_leader && (others || !self.leader_exited) {
            self.signalled = true;
            sys::kill(-self.pid, sig);
            if sig == libc::SIGTERM {
                // A stopped process cannot act on SIGTERM.
                sys::kill(-self.pid, libc::SIGCONT);
            }
        }
        for kid in kids {
            if kid == self.pid || ignore.contains(&kid) {
                continue;
            }
            match sys::state_and_pgid(kid) {
                Some(('Z', _)) | None => {}
                Some((_, pg)) if pg == kid && pg != self.pid => {
                    self.signalled = true;
                    sys::kill(-kid, sig);
                    sys::kill(kid, sig);
                }
                Some(_) => {
                    self.signalled = true;
                    sys::kill(kid, sig);
                }
            }
        }
    }

    /// Reap what has exited; true once nothing of the run is left (the first process
    /// is then reaped too).
    pub(crate) fn sweep(&mut self, ignore: &BTreeSet<i32>) -> bool {
        let mut left = false;
        let kids = if self.seen_empty {
            Vec::new()
        } else {
            sys::children()
        };
        for kid in kids {
            if kid == self.pid || ignore.contains(&kid) {
                continue;
            }
            if !sys::reap(kid) {
                left = true;
            }
        }
        if !left && !self.reaped_leader {
            sys::reap(self.pid);
            self.reaped_leader = true;
        }
        self.swept_empty = !left;
        !left
    }

    /// The run's output pipes, for the next run, if nothing of this one is left and
    /// both are still open (read to the end by the driver, which it does when the run's
    /// group is empty).
    pub(crate) fn into_pipes(mut self) -> Option<Pipes> {
        if !(self.swept_empty && self.reaped_leader) || self.signalled || self.writers.len() != 2 {
            return None;
        }
        let err_r = self.sources.get_mut(1)?.take_fd()?;
        let out_r = self.sources.get_mut(0)?.take_fd()?;
        let err_w = self.writers.pop()?;
        let out_w = self.writers.pop()?;
        Some(Pipes {
            out: (out_r, out_w),
            err: (err_r, err_w),
        })
    }

    /// Children of ours that are still alive besides the ignored ones (for a warning
    /// when they survive SIGKILL).
    pub(crate) fn leftovers(&self, ignore: &BTreeSet<i32>) -> Vec<i32> {
        // A sweep that found nothing left is final: a process that could still turn up
        // would be below one of our children, and there was none.
        if self.swept_empty {
            return Vec::new();
        }
        sys::children()
            .into_iter()
            .filter(|k| *k != self.pid && !ignore.contains(k))
            .collect()
    }
}

/// Make run-chain a child subreaper, so that orphans of a run come to us.
pub(crate) fn become_subreaper() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}
