//! The chain's writer, [`Writer`]: the bounded queue of pending ops, written in one
//! batch at a time to a store ([`StoreWrite`]), retried at a back-off while the store
//! cannot be written. Written once over the seam: [`Store`] is the writer of the SQLite
//! store, with the WAL's checkpoints and the driver's write in line; the queue's unit
//! tests drive it over the in-memory store with a fake clock.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::time::Mono;

use super::seam::{Owner, StoreWrite, WriteError};
use super::sqlite::Sqlite;
use super::*;

/// At most this many ops wait in memory while the store cannot be written.
pub(crate) const QUEUE_MAX: usize = 10_000;

/// A store that is merely busy is reported only when it stays so this long.
const BUSY_REPORT_AFTER: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The chain's writer of the SQLite store in RUN_ROOT.
pub type Store = Writer<Sqlite>;

/// The chain's writer: a store and the queue of pending ops.
pub struct Writer<W> {
    store: W,
    owner: Owner,
    queue: VecDeque<Op>,
    /// The error being reported, while the store cannot be written.
    failing: Option<String>,
    /// Since when writes fail (reported at once, or after BUSY_REPORT_AFTER if busy).
    failing_since: Option<Mono>,
    retry_at: Option<Mono>,
    backoff: Duration,
    dropped: u64,
    /// Records dropped because the store answered [`WriteError::Fenced`].
    fenced: u64,
    /// Inside [`Writer::begin_batch`]: queue only; the batch ends with one transaction.
    batching: bool,
    /// At most this many ops per transaction (the fleet: a transaction must not hold the
    /// DB thread, and so the lease's renew, for long); the rest waits for the next flush.
    cap: usize,
}

impl Store {
    /// A writer for the store in `run_root`. Opening is tried at once and again at
    /// every retry: a store that cannot be opened does not stop the chain.
    pub fn new(run_root: &Path, instance: Instance) -> Store {
        Store::owned_by(run_root, instance, Owner::Local)
    }

    /// [`Store::new`], writing as `owner` (the token of whoever owns the chain: the caller passes it).
    pub(crate) fn owned_by(run_root: &Path, instance: Instance, owner: Owner) -> Store {
        Writer::with(Sqlite::new(run_root, instance), owner)
    }

    /// True while this store's connection copies the WAL back with no record of ours
    /// waiting to be written: an exit then need not wait for it (a checkpoint cut off
    /// leaves the store as it was, the WAL still whole; the next one copies it again).
    pub(crate) fn copying(&self) -> Arc<AtomicBool> {
        self.store.copying()
    }

    /// Write `ops` now, waiting for another process's transaction about 1 ms at most: for
    /// the driver's own thread, in a cooldown. True if they are written; false if they
    /// (and what was pending) wait in the queue for [`Writer::flush`], which waits,
    /// retries and reports: the store not yet open, a write already pending, the store
    /// busy or failing, or a run's end that prunes old runs (see [`Sqlite::prunes`]).
    pub(crate) fn write_now(&mut self, now: Mono, ops: Vec<Op>) -> bool {
        let prunes = self.store.prunes(&ops);
        let ready =
            self.store.is_open() && self.queue.is_empty() && self.failing.is_none() && !prunes;
        self.batching = true;
        for op in ops {
            self.push(now, op);
        }
        self.batching = false;
        if !ready {
            return false;
        }
        self.store.wait_briefly(true);
        let written = self.try_flush().is_ok();
        self.store.wait_briefly(false);
        written
    }

    /// Whether the writer thread has work that may wait on the disk: a checkpoint.
    pub(crate) fn thread_work_due(&self) -> bool {
        self.store.truncate_due() || self.store.checkpoint_due()
    }

    /// The writer thread's work after its writes (`Store::thread_work_due`).
    pub fn thread_work(&mut self) {
        if self.queue.is_empty() {
            self.store.truncate_if_due();
        }
        self.store.checkpoint_if_due(self.queue.is_empty());
    }

    /// After a panic on a thread that held the store: roll back a transaction left open
    /// (it would hold the write lock of every chain of the RUN_ROOT) and forget what was
    /// looked up in it; the records stay queued.
    pub(crate) fn recover(&mut self) {
        self.store.recover();
    }

    /// Whether a checkpoint is due ([`Sqlite::checkpoint_due`]).
    #[cfg(test)]
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.store.checkpoint_due()
    }

    /// Copy the WAL back (PASSIVE: it never waits for readers) if it is due.
    #[cfg(test)]
    pub(crate) fn checkpoint_if_due(&mut self) {
        self.store.checkpoint_if_due(self.queue.is_empty());
    }

    /// At exit: checkpoint only if the WAL has grown large (see WAL_EXIT_MAX), so that
    /// an exit stays quick but the WAL stays bounded across any number of instances.
    pub(crate) fn checkpoint_if_large(&mut self) {
        if self.queue.is_empty() {
            self.store.checkpoint_if_large();
        }
    }
}

impl<W: StoreWrite> Writer<W> {
    /// A writer of `store`, writing as `owner`.
    pub(crate) fn with(store: W, owner: Owner) -> Writer<W> {
        Writer {
            store,
            owner,
            queue: VecDeque::new(),
            failing: None,
            failing_since: None,
            retry_at: None,
            backoff: RETRY_FIRST,
            dropped: 0,
            fenced: 0,
            batching: false,
            cap: usize::MAX,
        }
    }

    /// Queue the ops pushed until [`Writer::end_batch`] and write them then, in one
    /// transaction. The driver batches what one event causes (a run's end and the next
    /// run's start), so that the write happens after the next task has been spawned,
    /// while it runs, and costs one commit instead of two.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Write what was queued since [`Writer::begin_batch`] (or keep it queued for the
    /// retry, while the store cannot be written).
    pub fn end_batch(&mut self, now: Mono) {
        self.batching = false;
        if !self.queue.is_empty()
            && (self.failing.is_none() || self.retry_at.is_some_and(|r| r <= now))
        {
            self.flush(now);
        }
    }

    /// Queue `op` and try to write everything queued.
    pub fn push(&mut self, now: Mono, op: Op) {
        if self.queue.len() >= QUEUE_MAX {
            // Drop an output refresh first (a later one or the end replaces it).
            let pos = self
                .queue
                .iter()
                .position(|o| matches!(o, Op::Output { .. }))
                .unwrap_or(0);
            self.queue.remove(pos);
            self.dropped += 1;
        }
        if let Op::Output {
            chain,
            task,
            run_id,
            ..
        } = &op
        {
            // Only the newest output refresh of a run matters.
            self.queue.retain(|o| {
                !matches!(o, Op::Output { chain: c, task: t, run_id: r, .. }
                    if c == chain && t == task && r == run_id)
            });
        }
        if let Op::State { chain, .. } = &op {
            // Only the newest state of a chain matters.
            self.queue
                .retain(|o| !matches!(o, Op::State { chain: c, .. } if c == chain));
        }
        self.queue.push_back(op);
        if self.batching {
            return;
        }
        if self.failing.is_none() || self.retry_at.is_some_and(|r| r <= now) {
            self.flush(now);
        }
    }

    /// When the driver should call [`Writer::flush`] again, if writes are pending.
    pub(crate) fn retry_at(&self) -> Option<Mono> {
        if self.queue.is_empty() {
            None
        } else {
            self.retry_at
        }
    }

    /// Ops waiting to be written.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// The store written to (the fleet's DB thread lends it its connection).
    pub(crate) fn store_mut(&mut self) -> &mut W {
        &mut self.store
    }

    /// Records dropped so far because the store fenced them off.
    pub(crate) fn fenced(&self) -> u64 {
        self.fenced
    }

    /// Forget the newest `n` ops queued (a batch whose commit was waited for and did not
    /// come: the fleet's start gate; the run does not start, so its records must not be
    /// written later).
    pub(crate) fn forget_last(&mut self, n: usize) {
        let keep = self.queue.len().saturating_sub(n);
        self.queue.truncate(keep);
    }

    /// Write as `owner` from now on (the fleet: a new epoch). What is queued under the
    /// previous owner can only be fenced off: it is counted and dropped.
    pub(crate) fn set_owner(&mut self, owner: Owner) {
        if self.owner == owner {
            return;
        }
        if !self.queue.is_empty() && self.owner != Owner::Local {
            let n = self.queue.len();
            self.fenced += n as u64;
            log::error!(
                "store {}: {n} records of the previous lease dropped ({} in all)",
                self.store.describe(),
                self.fenced
            );
        }
        self.queue.clear();
        self.failing = None;
        self.failing_since = None;
        self.retry_at = None;
        self.backoff = RETRY_FIRST;
        self.owner = owner;
    }

    /// Write everything queued, in one transaction. On failure keep it all queued (but
    /// what the store fenced off: that is counted and dropped, never retried).
    pub fn flush(&mut self, now: Mono) {
        if self.queue.is_empty() {
            return;
        }
        match self.try_flush() {
            Ok(n) => {
                self.failing_since = None;
                if let Some(err) = self.failing.take() {
                    log::info!(
                        "store {} is writable again ({n} pending records written; the error was: {err})",
                        self.store.describe()
                    );
                }
                if self.dropped > 0 {
                    log::warn!(
                        "store {}: {} records were dropped while it could not be written (queue full)",
                        self.store.describe(),
                        self.dropped
                    );
                    self.dropped = 0;
                }
                self.retry_at = None;
                self.backoff = RETRY_FIRST;
            }
            Err(WriteError::Fenced) => {
                let n = self.queue.len();
                self.queue.clear();
                self.fenced += n as u64;
                log::error!(
                    "store {}: {n} records dropped: the store belongs to another owner now ({} in all)",
                    self.store.describe(),
                    self.fenced
                );
            }
            Err(e) => {
                if matches!(e, WriteError::Corrupt(_))
                    && self.store.set_aside()
                    && self.try_flush().is_ok()
                {
                    self.failing = None;
                    self.retry_at = None;
                    return;
                }
                let since = *self.failing_since.get_or_insert(now);
                let busy = matches!(e, WriteError::Busy(_));
                if self.failing.is_none()
                    && (!busy || now.saturating_sub(since) >= BUSY_REPORT_AFTER)
                {
                    log::error!(
                        "failed to write the store {}: {e} (the chain keeps its schedule; {} records held in memory and retried)",
                        self.store.describe(),
                        self.queue.len()
                    );
                    self.failing = Some(e.to_string());
                }
                if !busy {
                    // Reopen next time: the file may have been replaced or fixed.
                    self.store.reset();
                }
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
            }
        }
    }

    /// Write everything queued (up to the cap), in one batch: how many were written.
    fn try_flush(&mut self) -> Result<usize, WriteError> {
        let n = self.queue.len().min(self.cap);
        self.store
            .apply(&self.queue.make_contiguous()[..n], &self.owner)?;
        self.queue.drain(..n);
        Ok(n)
    }

    /// At most `cap` ops per transaction (see `cap`).
    pub(crate) fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// Ops are queued, and not because the store is failing: flush again now (the cap
    /// left them).
    pub(crate) fn more_now(&self) -> bool {
        !self.queue.is_empty() && self.retry_at.is_none()
    }
}

/// The queue and its back-off over the in-memory store, with a fake clock: every time
/// is given (`Mono`), none is read.
#[cfg(test)]
mod tests {
    use super::super::memory::Memory;
    use super::*;

    fn writer() -> Writer<Memory> {
        Writer::with(Memory::default(), Owner::Local)
    }

    fn at(ms: u64) -> Mono {
        Mono::from_millis(100_000 + ms)
    }

    fn start(run_id: u64) -> Op {
        Op::Start(RunStart {
            chain: "c".into(),
            task: "t".into(),
            run_id,
            scheduled_ms: run_id * 1000,
            start_ms: run_id * 1000,
            task_pid: None,
            trigger: "schedule",
            requested_by: None,
        })
    }

    fn output(run_id: u64) -> Op {
        Op::Output {
            chain: "c".into(),
            task: "t".into(),
            run_id,
            output: format!("out {run_id}").into_bytes(),
            output_bytes: 5,
            output_cut: false,
        }
    }

    /// An op as (kind, run id), to compare what was written.
    fn key(op: &Op) -> (&'static str, u64) {
        match op {
            Op::Start(s) => ("start", s.run_id),
            Op::Queued(s) => ("queued", s.run_id),
            Op::Output { run_id, .. } => ("output", *run_id),
            Op::End(e) => ("end", e.run_id),
            Op::CloseOpen { .. } => ("close-open", 0),
            Op::Alert { .. } => ("alert", 0),
            Op::Killed(k) => ("killed", k.run_id),
            Op::State { .. } => ("state", 0),
            Op::Interrupted { .. } => ("interrupted", 0),
            Op::Mail { .. } => ("mail", 0),
        }
    }

    fn written(w: &Writer<Memory>) -> Vec<(&'static str, u64)> {
        w.store.written.iter().map(key).collect()
    }

    /// A busy store is tried again at every op until the busy spell is reported (2 s),
    /// then only at the back-off (1 s, 2 s, 4 s, ...); when it frees, everything queued
    /// goes in one batch, in order, none lost, and the back-off starts over. A busy
    /// store keeps its connection.
    #[test]
    fn busy_three_times_then_ok_keeps_the_records_in_order() {
        let mut w = writer();
        w.store
            .fail(3, WriteError::Busy("database is locked".into()));
        w.push(at(0), start(1));
        assert_eq!((w.store.calls, w.pending()), (1, 1));
        assert_eq!(w.retry_at(), Some(at(1000)));
        assert_eq!(w.failing, None, "busy: not reported at once");
        // Not reported yet: the next op tries again at once.
        w.push(at(500), output(1));
        assert_eq!((w.store.calls, w.pending()), (2, 2));
        assert_eq!(w.retry_at(), Some(at(2500)));
        // Busy for 2.5 s: reported, and from now on tried at the back-off only.
        w.flush(at(2500));
        assert_eq!(w.store.calls, 3);
        assert!(w.failing.is_some());
        assert_eq!(w.retry_at(), Some(at(6500)));
        w.push(at(3000), start(2));
        w.end_batch(at(3000));
        assert_eq!((w.store.calls, w.pending()), (3, 3));
        // The retry: written, in order.
        w.flush(at(6500));
        assert_eq!(w.store.calls, 4);
        assert_eq!(written(&w), vec![("start", 1), ("output", 1), ("start", 2)]);
        assert_eq!(
            (w.pending(), w.retry_at(), w.failing.clone()),
            (0, None, None)
        );
        assert_eq!(w.backoff, RETRY_FIRST);
        assert_eq!(w.store.resets, 0, "busy: the connection is kept");
        // And the next op is written at once.
        w.push(at(6600), start(3));
        assert_eq!(w.store.calls, 5);
        assert_eq!(written(&w).last(), Some(&("start", 3)));
    }

    /// Any other error is reported at once, drops the connection (reopened at the
    /// retry), and backs off 1 s, 2 s, 4 s ... up to 30 s.
    #[test]
    fn other_errors_back_off_up_to_thirty_seconds() {
        let mut w = writer();
        w.store.fail(8, WriteError::Other("disk I/O error".into()));
        w.push(at(0), start(1));
        assert!(w.failing.is_some(), "reported at once");
        let mut now = at(0);
        let mut waits = Vec::new();
        while let Some(next) = w.retry_at() {
            waits.push((next - now).as_secs());
            // Between retries, an op is only queued.
            let calls = w.store.calls;
            w.push(next - Duration::from_millis(1), output(1));
            assert_eq!(w.store.calls, calls);
            now = next;
            w.flush(now);
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(w.store.resets, 8);
        assert_eq!(written(&w), vec![("start", 1), ("output", 1)]);
        assert_eq!(w.failing, None);
    }

    /// A batch the store fences off (it belongs to another owner now) is counted and
    /// dropped, never retried; later records are tried as they come.
    #[test]
    fn fenced_records_are_counted_and_dropped_never_retried() {
        let mut w = writer();
        w.store.fail(1, WriteError::Fenced);
        w.begin_batch();
        w.push(at(0), start(1));
        w.push(at(0), output(1));
        w.push(at(0), start(2));
        assert_eq!(w.store.calls, 0, "batched");
        w.end_batch(at(0));
        assert_eq!(w.store.calls, 1);
        assert_eq!((w.pending(), w.fenced, w.retry_at()), (0, 3, None));
        assert_eq!(w.failing, None);
        assert_eq!(w.store.resets, 0);
        w.flush(at(60_000));
        assert_eq!(w.store.calls, 1, "nothing retried");
        w.push(at(60_000), start(3));
        assert_eq!(written(&w), vec![("start", 3)]);
        assert_eq!(w.fenced, 3);
    }

    /// A corrupt store that is set aside is written afresh at once; one that cannot be
    /// is reported and retried like any other error.
    #[test]
    fn a_corrupt_store_is_set_aside_and_written_afresh() {
        let mut w = writer();
        w.store.fresh_after_corrupt = true;
        w.store.fail(
            1,
            WriteError::Corrupt("database disk image is malformed".into()),
        );
        w.push(at(0), start(1));
        assert_eq!((w.store.calls, w.store.set_asides), (2, 1));
        assert_eq!(written(&w), vec![("start", 1)]);
        assert_eq!(
            (w.pending(), w.retry_at(), w.failing.clone()),
            (0, None, None)
        );

        let mut w = writer();
        w.store
            .fail(1, WriteError::Corrupt("file is not a database".into()));
        w.push(at(0), start(1));
        assert_eq!(
            (w.store.calls, w.store.set_asides, w.store.resets),
            (1, 1, 1)
        );
        assert_eq!(w.failing.as_deref(), Some("file is not a database"));
        assert_eq!(w.retry_at(), Some(at(1000)));
        w.flush(at(1000));
        assert_eq!(written(&w), vec![("start", 1)]);
    }

    /// While the store cannot be written, at most QUEUE_MAX records wait: past that the
    /// oldest output refresh goes first (a later one or the run's end replaces it), then
    /// the oldest record; a run's newer output replaces its older one in the queue. What
    /// is kept is written in order when the store is back.
    #[test]
    fn a_full_queue_drops_output_refreshes_first() {
        let mut w = writer();
        w.store.fail(1, WriteError::Other("disk full".into()));
        w.push(at(0), start(1));
        // Output refreshes of runs 1 to 3, and run 1's again (it replaces the first).
        for id in [1, 2, 3, 1] {
            w.push(at(1), output(id));
        }
        assert_eq!(w.pending(), 4);
        let mut id = 100;
        while w.pending() < QUEUE_MAX {
            w.push(at(2), start(id));
            id += 1;
        }
        assert_eq!(w.store.calls, 1, "nothing tried before the retry");
        // Three more: the three output refreshes go, oldest first; then the oldest record.
        for _ in 0..4 {
            w.push(at(3), start(id));
            id += 1;
        }
        assert_eq!((w.pending(), w.dropped), (QUEUE_MAX, 4));
        w.flush(at(1000));
        let got = written(&w);
        assert_eq!(got.len(), QUEUE_MAX);
        assert!(
            got.iter().all(|(kind, _)| *kind == "start"),
            "outputs dropped"
        );
        assert_eq!(got[0], ("start", 100), "then the oldest record");
        assert_eq!(got.last(), Some(&("start", id - 1)));
        assert!(got.windows(2).all(|p| p[0].1 + 1 == p[1].1), "in order");
        assert_eq!(w.dropped, 0, "reported and reset");
    }

    fn end(run_id: u64) -> Op {
        Op::End(Box::new(RunEnd {
            chain: "c".into(),
            task: "t".into(),
            run_id,
            scheduled_ms: run_id * 1000,
            start_ms: run_id * 1000,
            stop_ms: run_id * 1000 + 10,
            outcome: "failed",
            exit_code: Some(1),
            signal: None,
            error: None,
            output: Vec::new(),
            output_bytes: 0,
            output_cut: false,
            trigger: "schedule",
            requested_by: None,
            streak: Some((run_id * 1000, 1)),
            keep_runs_max: 1000,
            keep_after_ms: 0,
        }))
    }

    /// A run's end and the alert it caused, pushed in one batch (the driver's feed), are
    /// applied in one call to the store (one transaction), also when the store was busy
    /// and the next run's start came meanwhile: both are committed, or neither.
    #[test]
    fn a_runs_end_and_its_alert_are_one_batch() {
        let mut w = writer();
        w.store
            .fail(1, WriteError::Busy("database is locked".into()));
        w.begin_batch();
        w.push(at(0), end(1));
        w.push(
            at(0),
            Op::Alert {
                chain: "c".into(),
                task: "t".into(),
                kind: "failure",
            },
        );
        w.end_batch(at(0));
        assert_eq!((w.store.calls, w.store.batches.len()), (1, 0));
        w.push(at(3000), start(2));
        assert_eq!(w.store.batches, vec![3]);
        assert_eq!(written(&w), vec![("end", 1), ("alert", 0), ("start", 2)]);
    }
}
