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

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;

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
    /// The write end, for [`Signals::requeue`] (borrowed for the process's whole life).
    tx: BorrowedFd<'static>,
    /// The signalfd for SIGCHLD (None if none could be made: the handler serves then).
    child: Option<RawFd>,
    /// A SIGHUP received while the launch waited to run (for the lock, or for the old
    /// run's guardian), to act on once it runs: see [`Signals::drain_waiting`].
    held_hup: std::cell::Cell<bool>,
}

impl Signals {
    /// Install the handlers.
    pub fn install() -> Result<Signals> {
        let (rx, wfd) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::os("create the signal pipe", e.into()))?;
        // Never closed (see `Signals`): the read end kept by number, the write end leaked
        // (once per process), so that it can be borrowed for good.
        let rx = rx.into_raw_fd();
        let wfd: &'static OwnedFd = Box::leak(Box::new(wfd));
        let wfd = wfd.as_fd();
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGCHLD,
        ] {
            let byte = sig as u8;
            // SAFETY: `register` cannot check that the action is async-signal-safe, so
            // it has no safe form (signal-hook's safe `pipe::register` writes the same
            // byte for every signal; here the byte names the signal). The action only calls write(2) (nix's `write` is the
            // bare call, errno read on failure) on a descriptor that lives as long as the
            // process (it is never closed); write is async-signal-safe, and signal-hook
            // preserves errno around the action.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    let _ = nix::unistd::write(wfd, &[byte]);
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
                    let _ = nix::unistd::write(self.tx, &[byte]);
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
            // Room for eight records (read fills whole ones); only their number counts.
            let mut info = [0u8; 8 * std::mem::size_of::<libc::signalfd_siginfo>()];
            let mut any = false;
            // Stops at an error (EAGAIN: empty) as at a short read.
            while let Ok(n @ 1..) = nix::unistd::read(fd, &mut info) {
                any = true;
                if n < info.len() {
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
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let fd = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            log::debug!(
                "no signalfd for SIGCHLD ({}); its handler serves",
                std::io::Error::from(e)
            );
            return None;
        }
    };
    // On failure the signalfd is dropped, which closes it.
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).ok()?;
    // Never closed (as the pipe, see `Signals`).
    let raw = fd.as_raw_fd();
    std::mem::forget(fd);
    Some(raw)
}
