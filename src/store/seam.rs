//! The write side of the seam: what a store implementation offers the write queue
//! ([`super::writer::Writer`]), which is written once over it. The SQLite store
//! (`sqlite::Sqlite`) is the one in use; an in-memory one (`memory`) drives
//! the queue's unit tests; the fleet's PostgreSQL one (`pg::write::Pg`) is written by the
//! chain's DB thread (`lock::fleet`), every batch fenced by the lease.

use super::Op;

/// Who writes: the token a shared store checks before it applies a batch (a fleet's
/// lease: a writer whose lease was taken over is answered [`WriteError::Fenced`]). A
/// local store is owned by whoever holds the chain's lock file: there is nothing to
/// check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The chain's lock file (SQLite in RUN_ROOT).
    Local,
    /// The fleet's lease on `chain` as (`holder`, `epoch`): every batch is applied only
    /// while the lease row still says so and is unexpired (`run_chain.fence`), else it is
    /// [`WriteError::Fenced`].
    Lease {
        chain: String,
        holder: String,
        epoch: i64,
    },
}

/// Why a batch was not applied. Nothing of it was (one transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Another writer holds the store for now: retried at the back-off, reported only
    /// when it lasts.
    Busy(String),
    /// The store says its file is corrupt: it may be set aside and started afresh
    /// ([`StoreWrite::set_aside`]).
    Corrupt(String),
    /// The store belongs to another owner now: the batch is counted and dropped, never
    /// retried. SQLite never answers it.
    Fenced,
    /// Anything else (disk full, read-only, ...): reported, retried at the back-off.
    Other(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Busy(m) | WriteError::Corrupt(m) | WriteError::Other(m) => f.write_str(m),
            WriteError::Fenced => f.write_str("the store belongs to another owner (fenced)"),
        }
    }
}

/// A store the write queue writes to.
pub trait StoreWrite {
    /// Apply `batch`, in order, in one transaction, as `owner`: all of it or nothing.
    fn apply(&mut self, batch: &[Op], owner: &Owner) -> Result<(), WriteError>;

    /// After [`WriteError::Corrupt`]: set the corrupt store aside (when a check confirms
    /// it) and start a fresh one. True if a fresh one is in place: the batch is applied
    /// again at once.
    fn set_aside(&mut self) -> bool {
        false
    }

    /// After an error other than [`WriteError::Busy`]: forget the connection and what
    /// was learnt through it (the store may have been replaced or fixed meanwhile).
    fn reset(&mut self) {}

    /// What the store is, for the log ("store {where}: ...").
    fn describe(&self) -> String;
}
