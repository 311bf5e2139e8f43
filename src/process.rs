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

use std::collections::BTreeSet;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::chain::GroupSignal;
use crate::config::{Program, Task};
use crate::outcome::Exit;
use crate::output::Source;
use crate::sys;

/// A run in progress.
#[derive(Debug)]
pub struct Run {
    /// The first process; also the process group id.
    pub pid: i32,
    pub sources: Vec<Source>,
    /// Leftover processes that survived SIGKILL past the give-up time: not waited for again.
    reaped_leader: bool,
    /// Our copies of the write ends of the output pipes (see the module's text).
    _writers: Vec<OwnedFd>,
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which are new and ours.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// What identifies the run to the task.
pub struct RunEnv<'a> {
    pub chain: &'a str,
    pub run_id: u64,
    /// A variable to remove from the task's environment (the SMTP password's).
    pub remove: Option<&'a str>,
}

/// Start `task`. The error is a message for the run record (spawn-error).
pub fn spawn(task: &Task, env: &RunEnv) -> Result<Run, String> {
    let mut cmd = match &task.program {
        Program::Shell(c) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(c);
            cmd
        }
        Program::Argv(v) => {
            let mut cmd = Command::new(&v[0]);
            cmd.args(&v[1..]);
            cmd
        }
    };
    cmd.current_dir(&task.cwd)
        .envs(&task.env)
        .env("RUN_CHAIN_NAME", env.chain)
        .env("RUN_CHAIN_TASK", &task.name)
        .env("RUN_CHAIN_RUN_ID", env.run_id.to_string())
        .stdin(Stdio::null())
        .process_group(0);
    let pipes = pipe()
        .and_then(|(r1, w1)| Ok((r1, w1, pipe()?)))
        .and_then(|(r1, w1, (r2, w2))| {
            cmd.stdout(Stdio::from(w1.try_clone()?))
                .stderr(Stdio::from(w2.try_clone()?));
            Ok(([r1, r2], vec![w1, w2]))
        });
    let (readers, writers) = pipes.map_err(|e| format!("cannot create the output pipes: {e}"))?;
    if let Some(var) = env.remove {
        cmd.env_remove(var);
    }
    if let Some(n) = task.nice {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // nice(2) returns the new niceness, which may be -1: check errno.
                *libc::__errno_location() = 0;
                let r = libc::nice(n);
                if r == -1 && *libc::__errno_location() != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|e| {
        if let (Some(n), Some(libc::EPERM | libc::EACCES)) = (task.nice, e.raw_os_error()) {
            if n < 0 {
                return format!("cannot set nice {n} (raising priority needs privilege): {e}");
            }
        }
        if !task.cwd.is_dir() {
            format!("cannot change into cwd {}: {e}", task.cwd.display())
        } else {
            match &task.program {
                Program::Argv(v) => format!("cannot run {}: {e}", v[0]),
                Program::Shell(_) => format!("cannot run /bin/sh: {e}"),
            }
        }
    })?;
    let pid = child.id() as i32;
    // The Command's copies of the write ends go with it, now.
    drop(cmd);
    let [out, err] = readers;
    let sources = vec![Source::new(out, 0), Source::new(err, 1)];
    // `child` is dropped without waiting: we reap by PID ourselves.
    Ok(Run {
        pid,
        sources,
        reaped_leader: false,
        _writers: writers,
    })
}

impl Run {
    /// Has the first process exited? (Looks without reaping.)
    pub fn leader_exit(&self) -> Option<Exit> {
        if self.reaped_leader {
            return None;
        }
        sys::exited_nowait(self.pid)
    }

    /// Signal the run's group, and every child of ours that is not the guardian or
    /// ignored (escaped descendants: their own group if they lead one).
    pub fn signal(&self, sig: GroupSignal, ignore: &BTreeSet<i32>) {
        let sig = match sig {
            GroupSignal::Term => libc::SIGTERM,
            GroupSignal::Kill => libc::SIGKILL,
        };
        if !self.reaped_leader {
            sys::kill(-self.pid, sig);
            if sig == libc::SIGTERM {
                // A stopped process cannot act on SIGTERM.
                sys::kill(-self.pid, libc::SIGCONT);
            }
        }
        for kid in sys::children() {
            if kid == self.pid || ignore.contains(&kid) {
                continue;
            }
            match sys::state_and_pgid(kid) {
                Some(('Z', _)) | None => {}
                Some((_, pg)) if pg == kid && pg != self.pid => {
                    sys::kill(-kid, sig);
                    sys::kill(kid, sig);
                }
                Some(_) => sys::kill(kid, sig),
            }
        }
    }

    /// Reap what has exited; true once nothing of the run is left (the first process
    /// is then reaped too).
    pub fn sweep(&mut self, ignore: &BTreeSet<i32>) -> bool {
        let mut left = false;
        for kid in sys::children() {
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
        !left
    }

    /// Children of ours that are still alive besides the ignored ones (for a warning
    /// when they survive SIGKILL).
    pub fn leftovers(&self, ignore: &BTreeSet<i32>) -> Vec<i32> {
        sys::children()
            .into_iter()
            .filter(|k| *k != self.pid && !ignore.contains(k))
            .collect()
    }
}

/// Make run-chain a child subreaper, so that orphans of a run come to us.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}
