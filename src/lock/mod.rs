//! Who owns a chain. The driver holds an [`Ownership`] for the life of the process and
//! knows nothing else of it: that seam is where a fleet's lease is to join the local lock.
//!
//! - [`ownership`]: the seam. [`Ownership::acquire`] takes the chain; the loop waits in
//!   `ppoll` on [`Ownership::fd`] and until [`Ownership::deadline`] too and, when either
//!   comes, gets a [`LockEvent`]: `Held`, `Lost` (the chain stops at once and, in a fleet,
//!   goes back to standby) or `Kill` (the fence's last step); [`Ownership::may_start`] is
//!   the start gate; [`Ownership::token`] is who the store writes as. `Ownership::Local`
//!   has no descriptor and no deadline, is never lost and writes as
//!   [`crate::store::seam::Owner::Local`]: its lock is a kernel lock that lasts exactly as
//!   long as its descriptor, so there is nothing to renew and nothing to fence.
//!   `Ownership::Fleet` adds the lease (renewed every `lease / 5` by the DB thread); in
//!   stage 1 it still writes as `Local` (records stay in this host's SQLite store), the
//!   epoch becomes the token when writes are fenced (stage 2).
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
//! - `lease`: the fleet lease's pure policy (SPEC "Beyond one host"): when to acquire and
//!   renew, when an owner may start a run, the fence (TERM at `0.6 × lease`, KILL at
//!   `0.8 × lease` after the start of the last renew that succeeded).
//! - `fleet`: the lease at run time: the chain's one DB thread (`run-chain-db`, all the
//!   database calls), the view it publishes to the loop through an eventfd,
//!   `RUN_ROOT/CHAIN.lease` (the (holder, epoch) a relaunch here takes over) and
//!   `RUN_ROOT/CHAIN.fleet` (owner or standby, for `status`). With `[store]`, the ownership
//!   is `Ownership::Fleet`: the local lock first (two launches on one host hand over as
//!   without a fleet), then the lease between hosts.

pub(crate) mod fleet;
pub(crate) mod handover;
pub(crate) mod holders;
pub(crate) mod lease;
pub(crate) mod ownership;
pub mod pidfile;

pub(crate) use ownership::{LockEvent, Ownership};
