//! OS signals, turned into a domain enum at the edge.
//!
//! Each handled signal writes its number as one byte into a non-blocking,
//! close-on-exec self-pipe (the handler does nothing else, which is async-signal
//! safe). The driver waits on the pipe's read end in the same `ppoll` as the task's
//! output and the next deadline, so a signal that arrives just before the loop goes to
//! sleep still wakes it: the byte is already in the pipe. No signal is blocked, so
//! tasks inherit no signal mask.

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
}

/// The read end of the self-pipe.
///
/// Both ends stay open until the process ends, even after `Signals` is dropped: a
/// handler may run at any moment until then (a SIGCHLD from the guardian as run-chain
/// exits), and a closed descriptor's number could by then belong to another file.
#[derive(Debug)]
pub struct Signals {
    rx: RawFd,
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
        Ok(Signals { rx })
    }

    pub fn fd(&self) -> RawFd {
        self.rx
    }

    /// Every signal received since the last call, in order.
    pub fn drain(&self) -> Vec<Sig> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = sys::read(self.rx, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend(buf[..n].iter().filter_map(|b| Sig::from_raw(i32::from(*b))));
            if n < buf.len() {
                break;
            }
        }
        out
    }
}
