//! OS signals, turned into a domain enum at the edge.
//!
//! Each handled signal writes its number as one byte into a non-blocking,
//! close-on-exec self-pipe (the handler does nothing else, which is async-signal
//! safe). The driver waits on the pipe's read end in the same `ppoll` as the task's
//! output and the next deadline, so a signal that arrives just before the loop goes to
//! sleep still wakes it: the byte is already in the pipe.
//!
//! SIGCHLD, which comes with every run, is blocked instead and read from a signalfd
//! waited on in the same `ppoll`: a handler costs a signal frame (the whole vector
//! register state saved and restored), the pipe write, `rt_sigreturn` and a second
//! `ppoll`, a few percent of a chain's CPU per run with 200 chains on a host. It is
//! blocked before any thread of run-chain's is started (the guardian is forked before),
//! so every thread has it blocked; its handler stays installed all the same, so that a
//! thread that had it unblocked would still pass it on. Tasks get an empty signal mask
//! (`spawn.rs` sets it in the child), as do the mailer's children (std does).

use std::os::fd::RawFd;

use crate::error::{Error, Result};
use crate::sys;

/// The signals run-chain acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Child,
}

impl Sig {
    fn from_raw(n: i32) -> Option<Sig> {
        Some(match n {
            libc::SIGTERM => Sig::Term,
            libc::SIGINT => Sig::Int,
            libc::SIGQUIT => Sig::Quit,
            libc::SIGHUP => Sig::Hup,
            libc::SIGUSR1 => Sig::Usr1,
            libc::SIGCHLD => Sig::Child,
            _ => return None,
        })
    }

    fn raw(self) -> i32 {
        match self {
            Sig::Term => libc::SIGTERM,
            Sig::Int => libc::SIGINT,
            Sig::Quit => libc::SIGQUIT,
            Sig::Hup => libc::SIGHUP,
            Sig::Usr1 => libc::SIGUSR1,
            Sig::Child => libc::SIGCHLD,
        }
    }
}

/// The read end of the self-pipe.
///
/// Both ends stay open until the process ends, even after `Signals` is dropped: a
/// handler may run at any moment until then (a SIGCHLD from the guardian as run-chain
/// exits), and a closed descriptor's number could by then belong to another file.
#[derive(Debug)]
pub struct Signals {
    rx: RawFd,
    /// The write end, for [`Signals::requeue`].
    tx: RawFd,
    /// The signalfd for SIGCHLD (None if none could be made: the handler serves then).
    child: Option<RawFd>,
    /// A SIGHUP received while the launch waited to run (for the lock, or for the old
    /// run's guardian), to act on once it runs: see [`Signals::drain_waiting`].
    held_hup: std::cell::Cell<bool>,
}

impl Signals {
    /// Install the handlers.
    pub fn install() -> Result<Signals> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(Error::last_os("create the signal pipe"));
        }
        // Never closed (see `Signals`).
        let (rx, wfd) = (fds[0], fds[1]);
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGCHLD,
        ] {
            let byte = sig as u8;
            // SAFETY: the action only calls write(2) on a descriptor that lives as long
            // as the process (it is never closed); write is async-signal-safe, and
            // signal-hook preserves errno around the action.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    libc::write(wfd, (&byte as *const u8).cast(), 1);
                })
            }
            .map_err(|e| Error::os(format!("install the handler for signal {sig}"), e))?;
        }
        Ok(Signals {
            rx,
            tx: wfd,
            child: child_signalfd(),
            held_hup: Default::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.rx
    }

    /// The descriptor SIGCHLD is read from, to wait on beside [`Signals::fd`].
    pub(crate) fn child_fd(&self) -> Option<RawFd> {
        self.child
    }

    /// Every signal received since the last call, in order.
    pub fn drain(&self) -> Vec<Sig> {
        self.drain_ready(true, true)
    }

    /// [`Signals::drain`] for a launch that waits before it runs the chain. SIGHUP
    /// (reload the config) is not for the wait but for the chain, so it is kept for
    /// [`Signals::take_hup_before_running`] instead of being lost. SIGUSR1 (a kick) ends a cooldown,
    /// and a waiting launch has none: like a kick during a run, it does nothing (it is
    /// logged). The rest is returned.
    pub fn drain_waiting(&self, chain: &str) -> Vec<Sig> {
        let mut rest = Vec::new();
        for sig in self.drain() {
            match sig {
                Sig::Hup => {
                    log::info!(
                        "{chain}: SIGHUP while waiting to run: the config is read again once this instance runs"
                    );
                    self.held_hup.set(true);
                }
                Sig::Usr1 => log::info!(
                    "{chain}: SIGUSR1 while waiting to run: nothing to end (a kick ends a cooldown, and this instance has not started the chain yet)"
                ),
                other => rest.push(other),
            }
        }
        rest
    }

    /// Whether [`Signals::drain_waiting`] kept a SIGHUP (and forget it).
    fn take_held_hup(&self) -> bool {
        self.held_hup.take()
    }

    /// For a launch about to run the chain: whether a SIGHUP came during the wait or since
    /// its last look (the wait may end without one more drain: the lock free at once, the
    /// old run's guardian gone). Every other signal that came since (SIGCHLD aside: no run
    /// exists yet) is put back, in order, for the chain's loop to act on.
    pub fn take_hup_before_running(&self) -> bool {
        let mut hup = self.take_held_hup();
        for sig in self.drain() {
            match sig {
                Sig::Hup => hup = true,
                Sig::Child => {}
                other => {
                    let byte = other.raw() as u8;
                    // SAFETY: write of one byte we own to the pipe, which is never closed.
                    unsafe { libc::write(self.tx, (&byte as *const u8).cast(), 1) };
                }
            }
        }
        hup
    }

    /// Like [`Signals::drain`], reading only the descriptors named: those ppoll found
    /// readable (`pipe`: [`Signals::fd`], `child`: [`Signals::child_fd`]). What the
    /// other one holds stays there for the next ppoll; a read that finds nothing is a
    /// system call for nothing, at every run.
    pub(crate) fn drain_ready(&self, pipe: bool, child: bool) -> Vec<Sig> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        if pipe {
            while let Ok(n) = sys::read(self.rx, &mut buf) {
                out.extend(buf[..n].iter().filter_map(|b| Sig::from_raw(i32::from(*b))));
                if n < buf.len() {
                    break;
                }
            }
        }
        if let Some(fd) = self.child.filter(|_| child) {
            // SAFETY: signalfd_siginfo is plain data; read fills whole records.
            let mut info: [libc::signalfd_siginfo; 8] = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of_val(&info);
            let mut any = false;
            loop {
                // SAFETY: reading into a buffer of `size` bytes that we own.
                let n = unsafe { libc::read(fd, info.as_mut_ptr().cast(), size) };
                if n <= 0 {
                    break;
                }
                any = true;
                if (n as usize) < size {
                    break;
                }
            }
            if any {
                out.push(Sig::Child);
            }
        }
        out
    }
}

/// Block SIGCHLD in this thread (and so in the threads it starts) and open a signalfd
/// for it. None (and nothing blocked) if the signalfd cannot be made.
fn child_signalfd() -> Option<RawFd> {
    // SAFETY: sigset calls on a set we own; signalfd makes a new descriptor, never
    // closed (as the pipe, see `Signals`); pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            log::debug!(
                "no signalfd for SIGCHLD ({}); its handler serves",
                std::io::Error::last_os_error()
            );
            return None;
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            libc::close(fd);
            return None;
        }
        Some(fd)
    }
}
