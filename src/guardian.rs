//! The guardian: a small process, forked before anything else, that ends the running
//! task's process group if run-chain dies without doing it (SIGKILL, a crash, OOM).
//!
//! `PR_SET_PDEATHSIG` reaches only a task's direct child (often `sh`), not the rest
//! of its group, and fires on a *thread's* death. Instead the guardian holds the read
//! end of a pipe whose only write end is run-chain's (close-on-exec, so no task holds
//! it). run-chain writes `S pgid grace_ms` when a run starts and `E pgid` when its group
//! is gone. When the pipe reads end-of-file, run-chain is gone: the guardian sends
//! SIGTERM to every group still listed, waits their kill grace, sends SIGKILL, and
//! exits. It is forked while run-chain is still single-threaded and before the pidfile
//! or any other descriptor is opened, so it holds nothing (a guardian that held the
//! lock would keep a dead chain locked). It ignores the signals a terminal or a
//! `kill` of the process group sends, so it only ever acts on run-chain's death.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys;

/// run-chain's side of the guardian.
#[derive(Debug)]
pub struct Guardian {
    pid: i32,
    tx: File,
}

impl Guardian {
    /// Fork the guardian. Must be called while the process has one thread.
    pub fn spawn() -> Result<Guardian> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::last_os("create the guardian's pipe"));
        }
        // SAFETY: both descriptors are new and ours.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the process is single-threaded here (called at the start of main),
        // so the child may run ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last_os("fork the guardian"));
        }
        if pid == 0 {
            drop(tx);
            guardian_main(rx);
        }
        drop(rx);
        Ok(Guardian {
            pid,
            tx: File::from(tx),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A run started: its group is `pgid`.
    pub fn watch(&mut self, pgid: i32, kill_grace: Duration) {
        let _ = writeln!(self.tx, "S {pgid} {}", kill_grace.as_millis());
    }

    /// A run's group is gone.
    pub fn unwatch(&mut self, pgid: i32) {
        let _ = writeln!(self.tx, "E {pgid}");
    }
}

fn guardian_main(rx: OwnedFd) -> ! {
    // SAFETY: plain libc calls in the single-threaded child.
    unsafe {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let name = b"run-chain-guard\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        // Keep no mount busy, and hold none of run-chain's output streams open.
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    // Hold nothing run-chain inherited either (a pipe kept open would keep a reader waiting).
    sys::close_from(3, rx.as_raw_fd());
    let mut groups: BTreeMap<i32, u64> = BTreeMap::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match sys::read(rx.as_raw_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&line);
                    let f: Vec<&str> = text.split_whitespace().collect();
                    match f.as_slice() {
                        ["S", pg, ms] => {
                            if let (Ok(pg), Ok(ms)) = (pg.parse(), ms.parse()) {
                                groups.insert(pg, ms);
                            }
                        }
                        ["E", pg] => {
                            if let Ok(pg) = pg.parse::<i32>() {
                                groups.remove(&pg);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(_) => break,
        }
    }
    // run-chain is gone: end what it left running.
    if !groups.is_empty() {
        let grace = groups.values().copied().max().unwrap_or(0);
        for pg in groups.keys() {
            if *pg > 1 {
                eprintln!("run-chain-guard: run-chain died; stopping process group {pg}");
                sys::kill(-pg, libc::SIGTERM);
                sys::kill(-pg, libc::SIGCONT);
            }
        }
        std::thread::sleep(Duration::from_millis(grace.min(600_000)));
        for pg in groups.keys() {
            if *pg > 1 {
                sys::kill(-pg, libc::SIGKILL);
            }
        }
    }
    // SAFETY: leave without running any of the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}
