//! [`Ownership`]: what the driver holds for as long as it runs the chain, and asks about
//! in its loop. One kind today, [`Ownership::Local`]: the `flock(2)` on `CHAIN.pid`.
//!
//! The contract, for every kind:
//! - [`Ownership::acquire`] takes the chain, or fails (exit 75: busy, superseded), or is
//!   stopped by a signal while it waits (None).
//! - [`Ownership::deadline`] is when the loop must next call [`Ownership::on_deadline`]
//!   (None: never). The loop includes it in its `ppoll` timeout; it is a field read, no
//!   syscall, no allocation.
//! - [`Ownership::on_deadline`] answers a [`LockEvent`]; the deadline has then moved past
//!   `now`, or is None. Today the one answer is [`LockEvent::Held`]; the lease adds
//!   `Lost { reason }` (it could not renew, or was taken over), which the driver is to turn
//!   into a graceful stop (`chain::Control::Stop`: nothing new starts, the running task is
//!   stopped) after logging the reason. The driver matches the event exhaustively, so a
//!   new variant does not compile until it is handled there. It is not declared before a
//!   kind of ownership can send it: a variant nothing builds is dead code.
//! - [`Ownership::token`] is who the store's write side writes as ([`store::seam::Owner`]).
//! - The ownership ends with the value: dropping it gives the chain up (the pidfile's
//!   descriptor closes, and its lock with it, also when the process dies).
//!
//! The local lock never needs renewing and cannot be lost while its descriptor is open:
//! its deadline is None, it is never lost, its token is [`store::seam::Owner::Local`].

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::lock::handover;
use crate::lock::pidfile::PidFile;
use crate::signals::Signals;
use crate::store;
use crate::time::Mono;

/// Who owns the chain, held by the driver for the life of the process.
#[derive(Debug)]
pub(crate) enum Ownership {
    /// The lock on `RUN_ROOT/CHAIN.pid` (see [`super::pidfile`]), taken by the hand-over
    /// ([`handover::acquire`]). Held for its lock, which goes with its descriptor: never
    /// read, dropped with the ownership.
    Local { _held: PidFile },
}

/// What an ownership says when its deadline comes. The lease is to add `Lost { reason }`
/// (see the module's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LockEvent {
    /// Still ours.
    Held,
}

impl Ownership {
    /// Take the chain, taking over from a running instance unless `no_takeover` (see
    /// [`handover::acquire`]: the holder is asked to hand over, waited for, killed past
    /// `limit`; a newer launch supersedes this one). Ok(None): stopped by
    /// SIGTERM/SIGINT/SIGQUIT while waiting.
    pub(crate) fn acquire(
        root: &Path,
        chain: &str,
        no_takeover: bool,
        limit: Duration,
        signals: &Signals,
    ) -> Result<Option<Ownership>> {
        let held = handover::acquire(root, chain, no_takeover, limit, signals)?;
        Ok(held.map(|pidfile| Ownership::Local { _held: pidfile }))
    }

    /// When [`Ownership::on_deadline`] must next be called. None: never (the local lock
    /// needs no renewing).
    #[inline]
    pub(crate) fn deadline(&self) -> Option<Mono> {
        match self {
            Ownership::Local { .. } => None,
        }
    }

    /// The deadline has come (`now` ≥ [`Ownership::deadline`]): renew, or say the chain
    /// is lost. Whatever the answer, the deadline is then later than `now`, or None (the
    /// loop would otherwise spin).
    pub(crate) fn on_deadline(&mut self, _now: Mono) -> LockEvent {
        match self {
            // Never called (no deadline); the lock lasts as long as its descriptor.
            Ownership::Local { .. } => LockEvent::Held,
        }
    }

    /// Who the store's write side writes as.
    pub(crate) fn token(&self) -> store::seam::Owner {
        match self {
            Ownership::Local { .. } => store::seam::Owner::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &Path) -> Ownership {
        let mut pf = PidFile::open(dir, "c").expect("open");
        assert!(pf.try_lock().expect("lock"));
        pf.write_pid().expect("write");
        Ownership::Local { _held: pf }
    }

    #[test]
    fn local_has_no_deadline_is_never_lost_and_writes_as_local() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut own = local(dir.path());
        assert_eq!(own.deadline(), None);
        for now in [Duration::ZERO, Duration::from_secs(1), Duration::MAX] {
            assert_eq!(own.on_deadline(now), LockEvent::Held);
            assert_eq!(own.deadline(), None);
        }
        assert_eq!(own.token(), store::seam::Owner::Local);
    }

    #[test]
    fn local_holds_the_lock_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = local(dir.path());
        let mut other = PidFile::open(dir.path(), "c").expect("open");
        assert!(!other.try_lock().expect("try"));
        let holder = PidFile::open_existing(dir.path(), "c")
            .expect("open")
            .expect("exists")
            .holder();
        assert_eq!(holder, Some(std::process::id() as i32));
        drop(own);
        assert!(other.try_lock().expect("try"));
    }
}
