//! The guardian: a small process, forked before anything else, that ends the running
//! task's process group if run-chain dies without doing it (SIGKILL, a crash, OOM).
//!
//! `PR_SET_PDEATHSIG` reaches only a task's direct child (often `sh`), not the rest
//! of its group, and fires on a *thread's* death. Instead the guardian holds the read
//! end of a pipe whose only write end is run-chain's (close-on-exec, so no task holds
//! it), and shares one page of memory with run-chain, in which run-chain keeps the
//! process group of the run in progress and its kill grace (0: none). Keeping it there
//! costs no system call and wakes nobody, however short the runs. When the pipe reads
//! end-of-file, run-chain is gone: the guardian sends SIGTERM to the group named in the
//! page, if any, waits its kill grace, sends SIGKILL, and exits. It is forked while run-chain is still single-threaded and before the pidfile
//! or any other descriptor is opened, so it holds nothing (a guardian that held the
//! lock would keep a dead chain locked). It ignores the signals a terminal or a
//! `kill` of the process group sends, so it only ever acts on run-chain's death.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys;

/// The page shared with the guardian.
#[derive(Debug)]
#[repr(C)]
struct Shared {
    /// The process group of the run in progress; 0 when none.
    pgid: AtomicI32,
    /// Its kill grace, in ms (written before `pgid`).
    grace_ms: AtomicU64,
}

/// run-chain's side of the guardian.
#[derive(Debug)]
pub struct Guardian {
    pid: i32,
    /// The write end of the pipe: never written, its closing (our death) is the message.
    _tx: File,
    shared: &'static Shared,
}

/// Map one page shared with the processes forked after it (never unmapped).
fn map_shared() -> Result<&'static Shared> {
    // SAFETY: a new anonymous mapping; it is zero-filled, and all-zero bytes are a valid
    // `Shared` (two atomics). It is never unmapped, so the reference stays valid.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(Error::last_os("map the guardian's shared page"));
        }
        Ok(&*(p as *const Shared))
    }
}

impl Guardian {
    /// Fork the guardian. Must be called while the process has one thread.
    pub fn spawn() -> Result<Guardian> {
        let shared = map_shared()?;
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
            guardian_main(rx, shared);
        }
        drop(rx);
        Ok(Guardian {
            pid,
            _tx: File::from(tx),
            shared,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A run is about to start, with this kill grace: where its first process writes its
    /// PID (= its group) itself, before it execs (see `spawn`), so that the guardian knows
    /// the group even if run-chain dies at the very moment the task starts.
    pub fn prepare(&mut self, kill_grace: Duration) -> &'static AtomicI32 {
        let ms = u64::try_from(kill_grace.as_millis()).unwrap_or(u64::MAX);
        self.shared.grace_ms.store(ms, Ordering::Relaxed);
        &self.shared.pgid
    }

    /// A run started: its group is `pgid`.
    pub fn watch(&mut self, pgid: i32, kill_grace: Duration) {
        let ms = u64::try_from(kill_grace.as_millis()).unwrap_or(u64::MAX);
        self.shared.grace_ms.store(ms, Ordering::Relaxed);
        self.shared.pgid.store(pgid, Ordering::Release);
    }

    /// A run's group is gone.
    pub fn unwatch(&mut self, pgid: i32) {
        let _ = self
            .shared
            .pgid
            .compare_exchange(pgid, 0, Ordering::Release, Ordering::Relaxed);
    }
}

fn guardian_main(rx: OwnedFd, shared: &'static Shared) -> ! {
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
    let mut chunk = [0u8; 64];
    // Nothing is ever written: wait for end-of-file (or an error), which is run-chain's end.
    while let Ok(n) = sys::read(rx.as_raw_fd(), &mut chunk) {
        if n == 0 {
            break;
        }
    }
    // run-chain is gone: end what it left running.
    let pg = shared.pgid.load(Ordering::Acquire);
    if pg > 1 {
        let grace = shared.grace_ms.load(Ordering::Relaxed);
        eprintln!("run-chain-guard: run-chain died; stopping process group {pg}");
        sys::kill(-pg, libc::SIGTERM);
        sys::kill(-pg, libc::SIGCONT);
        // Up to the kill grace, but no longer than the group lives: the next instance of
        // the chain waits for this process before it starts a task. (A short poll, only
        // here, after run-chain's death.)
        let until = std::time::Instant::now() + Duration::from_millis(grace.min(600_000));
        // SAFETY: kill with signal 0 only checks that the group still has a process.
        while std::time::Instant::now() < until && unsafe { libc::kill(-pg, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        sys::kill(-pg, libc::SIGKILL);
    }
    // SAFETY: leave without running any of the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}
