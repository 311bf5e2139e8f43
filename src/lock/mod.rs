//! Who owns a chain. The driver holds an [`Ownership`] for the life of the process and
//! knows nothing else of it: that seam is where a fleet's lease is to join the local lock.
//!
//! - [`ownership`]: the seam. [`Ownership::acquire`] takes the chain; the loop waits in
//!   `ppoll` until [`Ownership::deadline`] too and, when it comes, gets a [`LockEvent`]
//!   from [`Ownership::on_deadline`]: `Held` (a lease is to add `Lost`, on which the chain
//!   stops gracefully); [`Ownership::token`] is who the store writes as. The one kind today,
//!   `Ownership::Local`, has no deadline, is never lost and writes as
//!   [`crate::store::seam::Owner::Local`]: its lock is a kernel lock that lasts exactly as
//!   long as its descriptor, so there is nothing to renew and nothing to fence. A lease
//!   (SPEC, "Beyond one host") would have a deadline (renew every `lease / 5`), answer
//!   Lost when it cannot renew, and give its epoch as the token.
//! - [`pidfile`]: the lock on `CHAIN.pid`. The races it handles: a file left by a crash
//!   (the lock, not the text, says who runs); two launches creating the file at once (made
//!   complete under a temporary name, linked into place, never removed or truncated on
//!   open, opened with `O_NOFOLLOW`); a reader seeing it half-written (PID written at
//!   offset 0, then cut); a holder to be signalled (confirmed by the kernel in
//!   `/proc/PID/fdinfo`, then signalled through a pidfd, so a reused PID is never hit).
//! - `handover`: taking the lock from a running instance (SIGTERM through a pidfd, a wait
//!   on the pidfd and an inotify watch of RUN_ROOT, SIGKILL past its graces), with
//!   `CHAIN.next` so that of overlapping launches the newest wins (a launch records itself
//!   before it locks, looks again right after, and never signals a newer holder: at most
//!   one instance ever holds the lock); and the wait for the guardian of an instance that
//!   died during a run, so no task starts while the old run's processes live.
//! - `holders`: the lock holders of many chains at once, for the readers.

pub(crate) mod fleet;
pub(crate) mod handover;
pub(crate) mod holders;
pub(crate) mod lease;
pub(crate) mod ownership;
pub mod pidfile;

pub(crate) use ownership::{LockEvent, Ownership};
