//! An in-memory store for the write queue's unit tests: it keeps what it is given, in
//! order, and answers what it is told to (busy N times, corrupt, fenced, ...).

use std::collections::VecDeque;

use super::seam::{Owner, StoreWrite, WriteError};
use super::Op;

/// An in-memory store that fails as it is told.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// Every op applied, in order.
    pub(crate) written: Vec<Op>,
    /// The answers to the next calls to `apply`, first first; then Ok.
    pub(crate) answers: VecDeque<WriteError>,
    /// The size of each batch applied, in order.
    pub(crate) batches: Vec<usize>,
    /// Calls to `apply` (answered or not).
    pub(crate) calls: usize,
    /// Calls to `reset`.
    pub(crate) resets: usize,
    /// What `set_aside` answers (true: a fresh store is in place).
    pub(crate) fresh_after_corrupt: bool,
    /// Calls to `set_aside`.
    pub(crate) set_asides: usize,
}

impl Memory {
    /// Fail the next `n` calls with `e`.
    pub(crate) fn fail(&mut self, n: usize, e: WriteError) {
        self.answers.extend(std::iter::repeat_n(e, n));
    }
}

impl StoreWrite for Memory {
    fn apply(&mut self, batch: &[Op], owner: &Owner) -> Result<(), WriteError> {
        assert_eq!(owner, &Owner::Local);
        self.calls += 1;
        if let Some(e) = self.answers.pop_front() {
            return Err(e);
        }
        self.batches.push(batch.len());
        self.written.extend(batch.iter().cloned());
        Ok(())
    }

    fn set_aside(&mut self) -> bool {
        self.set_asides += 1;
        self.fresh_after_corrupt
    }

    fn reset(&mut self) {
        self.resets += 1;
    }

    fn describe(&self) -> String {
        "in memory".into()
    }
}
