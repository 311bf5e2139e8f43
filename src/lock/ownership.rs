//! [`Ownership`]: what the driver holds for as long as it runs the chain, and asks about
//! in its loop. Two kinds: [`Ownership::Local`], the `flock(2)` on `CHAIN.pid`, and
//! [`Ownership::Fleet`], that lock plus the fleet's lease (SPEC "Beyond one host"; see
//! [`super::fleet`]): two launches on one host still hand over by the pidfile first, and
//! the lease decides between hosts.
//!
//! The contract, for every kind:
//! - [`Ownership::acquire`] takes the chain, or fails (exit 75: busy, superseded), or is
//!   stopped by a signal while it waits (None).
//! - [`Ownership::deadline`] is when the loop must next call [`Ownership::on_deadline`]
//!   (None: never). The loop includes it in its `ppoll` timeout; it is a field read, no
//!   syscall, no allocation.
//! - [`Ownership::on_deadline`] (and [`Ownership::on_ready`], when [`Ownership::fd`] is
//!   readable) answers a [`LockEvent`]; the deadline has then moved past `now`, or is
//!   None. [`LockEvent::Held`]: nothing to do. [`LockEvent::Lost`] (the lease could not be
//!   renewed, was taken over, or the fence's `0.6 × lease` passed): the driver logs the
//!   reason and stops the chain at once (`chain::Control::StopNow`: nothing new starts,
//!   the running task's group gets SIGTERM now), then hands the ownership back to
//!   `app::run`, which waits as a standby again. [`LockEvent::Kill`]: the fence's
//!   `0.8 × lease` passed: SIGKILL the running task's group, whatever `kill_grace` says.
//!   The driver matches the event exhaustively.
//! - [`Ownership::may_start`]: whether a run may start now (the local lock: always; the
//!   lease: the last renew succeeded and the fence is not near).
//! - [`Ownership::token`] is who the store's write side writes as ([`store::seam::Owner`]).
//! - The ownership ends with the value: dropping it gives the chain up (the pidfile's
//!   descriptor closes, and its lock with it, also when the process dies).
//!
//! The local lock never needs renewing and cannot be lost while its descriptor is open:
//! its deadline is None, it is never lost, its token is [`store::seam::Owner::Local`].

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::lock::fleet::{Check, Fleet};
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
    /// The pidfile's lock (this host), and the fleet's lease (which host).
    Fleet { _held: PidFile, fleet: Fleet },
}

/// What an ownership says when its deadline comes or its descriptor is readable (see the
/// module's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LockEvent {
    /// Still ours.
    Held,
    /// No longer ours (or about to be): stop the chain now, the running task first.
    Lost { reason: String },
    /// The fence's last step: SIGKILL the running task's group now.
    Kill,
    /// `stop --fleet`: stop gracefully (as `stop`), release, exit 0.
    StopFleet,
}

impl From<Check> for LockEvent {
    fn from(c: Check) -> LockEvent {
        match c {
            Check::Held => LockEvent::Held,
            Check::Lost(reason) => LockEvent::Lost { reason },
            Check::Kill => LockEvent::Kill,
            Check::StopFleet => LockEvent::StopFleet,
        }
    }
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
            Ownership::Fleet { fleet, .. } => fleet.deadline(),
        }
    }

    /// The descriptor the loop adds to its `ppoll` set: readable when
    /// [`Ownership::on_ready`] is to be called. None for the local lock.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        match self {
            Ownership::Local { .. } => None,
            Ownership::Fleet { fleet, .. } => Some(fleet.fd()),
        }
    }

    /// [`Ownership::fd`] is readable.
    pub(crate) fn on_ready(&mut self, now: Mono) -> LockEvent {
        match self {
            Ownership::Local { .. } => LockEvent::Held,
            Ownership::Fleet { fleet, .. } => {
                crate::sys::eventfd_drain(fleet.fd());
                fleet.check(now).into()
            }
        }
    }

    /// Whether a run may start now.
    pub(crate) fn may_start(&self) -> bool {
        match self {
            Ownership::Local { .. } => true,
            Ownership::Fleet { fleet, .. } => fleet.may_start(),
        }
    }

    /// Add the fleet's lease to the local lock.
    pub(crate) fn with_fleet(self, fleet: Fleet) -> Ownership {
        match self {
            Ownership::Local { _held } | Ownership::Fleet { _held, .. } => {
                Ownership::Fleet { _held, fleet }
            }
        }
    }

    /// The fleet's lease, if any.
    pub(crate) fn fleet_mut(&mut self) -> Option<&mut Fleet> {
        match self {
            Ownership::Local { .. } => None,
            Ownership::Fleet { fleet, .. } => Some(fleet),
        }
    }

    /// The deadline has come (`now` ≥ [`Ownership::deadline`]): renew, or say the chain
    /// is lost. Whatever the answer, the deadline is then later than `now`, or None (the
    /// loop would otherwise spin).
    pub(crate) fn on_deadline(&mut self, now: Mono) -> LockEvent {
        match self {
            // Never called (no deadline); the lock lasts as long as its descriptor.
            Ownership::Local { .. } => LockEvent::Held,
            Ownership::Fleet { fleet, .. } => fleet.check(now).into(),
        }
    }

    /// Who the store's write side writes as.
    pub(crate) fn token(&self) -> store::seam::Owner {
        match self {
            // Stage 1 of the fleet: records stay in this host's SQLite store.
            Ownership::Local { .. } | Ownership::Fleet { .. } => store::seam::Owner::Local,
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
