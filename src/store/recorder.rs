//! The record store's writer, on a thread of its own.
//!
//! The driver hands it what a run's start and end (and its output so far, and the
//! alerts decided) are to write, and goes on at once: the SQLite transaction, its
//! retries while the store cannot be written, and the WAL checkpoints happen on this
//! thread. So the loop between two runs never waits on the disk, and a task that has
//! just been spawned does not have to wait for its supervisor's bookkeeping to get a
//! CPU: on a machine with a second core, the writing happens there.
//!
//! In a cooldown the driver's thread has nothing else to do, and waking the writer
//! costs more than a fifth of what the write does: there the driver writes in line,
//! when the write need not wait for anything (see [`Recorder::send_ops`]); anything
//! that would wait still goes to the thread.
//!
//! The order of the records is kept (one channel, one writer; a write in line only
//! when nothing handed over is left). [`Recorder::finish`] writes what is left and
//! says what could not be written, as the driver did before.
//!
//! Waking the writer costs the loop a few microseconds, and the writer a transaction.
//! When runs follow each other faster than [`HOLD`] (a chain of short tasks without
//! cooldowns), what a batch writes is held and goes with the next batch, at most
//! [`HOLD`] after the last hand-over: the driver wakes for [`Recorder::due`]. A
//! cooldown ahead, the end of the instance, or any record outside a batch sends what
//! is held at once.
//!
//! A run's start alone is held up to [`START_HOLD`]: a short run's start and end then
//! go in one transaction instead of two. With many chains writing one store, every
//! transaction first re-reads the pages the others changed, so this halves what the
//! store costs per run of a short task. A run that lasts longer shows in `history`
//! [`START_HOLD`] after it started.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;

use crate::core::outcome::Outcome;
use crate::core::resume::State;
use crate::core::supervisor::{Current, RunEnded, RunOutput, Trigger};
use crate::store::{Op, RunEnd, RunStart, Store};
use crate::time::Mono;

use crate::time;

/// How long records may be held when runs come fast (see the module's text).
pub(crate) const HOLD: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a run's start may wait for the run's end (see the module's text).
pub(crate) const START_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// The fleet's DB thread, as the recorder sees it (built by `lock::fleet`, which may use
/// the store; the store may not use the lock): batches handed over in order, each
/// applied in one fenced transaction.
pub(crate) trait Remote: Send {
    /// Hand `ops` over as one batch. With `gate`, the caller waits for its commit: its
    /// ticket (see `lock::fleet::Fleet::gate_state`).
    fn send(&mut self, ops: Vec<Op>, gate: bool) -> Option<u64>;
    /// Wait (up to a bound of its own) until what was handed over is applied or dropped.
    fn sync(&mut self);
}

enum Msg {
    /// Write these, in one transaction.
    Ops(Vec<Op>),
    /// Write what the driver's thread left queued in the store, and checkpoint if due.
    Wake,
}

/// The driver's side of the writer thread.
pub(crate) struct Recorder {
    chain: String,
    /// The store, written by the writer thread, or in line by the driver's thread in a
    /// cooldown when nothing is handed over and the write need not wait.
    store: Arc<Mutex<Store>>,
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    /// Messages handed to the thread and not yet written: records are written in line
    /// only when there are none, so that they stay in order.
    queued: Arc<AtomicUsize>,
    batch: Vec<Op>,
    batching: bool,
    /// Records of earlier batches not yet handed over, and when the last hand-over was.
    held: Vec<Op>,
    /// When what is held must go.
    held_due: Option<Mono>,
    sent_at: Option<Mono>,
    /// [`Recorder::finish`] has run (it runs once: the driver calls it, then drop).
    finished: bool,
    /// The store's [`Store::copying`]: a checkpoint runs with no record waiting.
    copying: Arc<AtomicBool>,
    /// Fleet mode: every batch goes to the fleet's DB thread, none to SQLite.
    remote: Option<Box<dyn Remote>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Ops(v) => write!(f, "Ops({})", v.len()),
            Msg::Wake => write!(f, "Wake"),
        }
    }
}

/// The store, whichever thread panicked while holding it: a transaction it left open is
/// rolled back (it would hold the write lock of every chain of the RUN_ROOT), and the
/// records it was writing stay queued.
fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|e| recovered(store, e.into_inner()))
}

fn recovered<'a>(store: &Mutex<Store>, mut guard: MutexGuard<'a, Store>) -> MutexGuard<'a, Store> {
    guard.recover();
    store.clear_poison();
    guard
}

impl Recorder {
    /// Start the writer thread for `store`. If no thread can be started, the records
    /// are written in line, as they come.
    pub(crate) fn start(chain: &str, store: Store) -> Recorder {
        let name = chain.to_string();
        let (tx, rx) = mpsc::channel::<Msg>();
        let copying = store.copying();
        let store = Arc::new(Mutex::new(store));
        let queued = Arc::new(AtomicUsize::new(0));
        let (theirs, their_count) = (store.clone(), queued.clone());
        let spawned = std::thread::Builder::new()
            .name("run-chain-store".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                block_signals();
                writer(&name, &theirs, rx, &their_count);
            });
        let (tx, thread) = match spawned {
            Ok(thread) => (Some(tx), Some(thread)),
            Err(e) => {
                log::warn!(
                    "{chain}: cannot start the store's writer thread ({e}); writing in line"
                );
                (None, None)
            }
        };
        Recorder {
            chain: chain.to_string(),
            store,
            tx,
            thread,
            queued,
            batch: Vec::new(),
            batching: false,
            held: Vec::new(),
            held_due: None,
            sent_at: None,
            finished: false,
            copying,
            remote: None,
        }
    }

    /// The recorder of a chain in the fleet: batches go to `remote` (the DB thread), in
    /// order, as they come (nothing is held: a start's record is waited for anyway).
    /// `store` is not opened nor written (it is kept for the type only).
    pub(crate) fn remote(chain: &str, store: Store, remote: Box<dyn Remote>) -> Recorder {
        let copying = store.copying();
        Recorder {
            chain: chain.to_string(),
            store: Arc::new(Mutex::new(store)),
            tx: None,
            thread: None,
            queued: Arc::new(AtomicUsize::new(0)),
            batch: Vec::new(),
            batching: false,
            held: Vec::new(),
            held_due: None,
            sent_at: None,
            finished: false,
            copying,
            remote: Some(remote),
        }
    }

    /// Whether the records go to the fleet's store.
    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The fleet's start gate: hand over what is batched and held with the start record
    /// of `cur` (no PID yet), as one batch whose commit the caller waits for: its ticket.
    /// None without a remote.
    pub(crate) fn start_gated(&mut self, cur: &Current) -> Option<u64> {
        let remote = self.remote.as_mut()?;
        let mut all = std::mem::take(&mut self.held);
        all.append(&mut self.batch);
        self.held_due = None;
        all.push(Op::Start(RunStart {
            chain: self.chain.clone(),
            task: cur.task.clone(),
            run_id: cur.run_id,
            scheduled_ms: cur.scheduled_ms,
            start_ms: cur.start_ms,
            task_pid: None,
            trigger: cur.trigger.as_str(),
            requested_by: cur.requested_by.clone(),
        }));
        remote.send(all, true)
    }

    /// The chain's resume state, for the fleet's store (nothing without a remote: SQLite
    /// has CHAIN.state beside it).
    pub(crate) fn state(&mut self, json: Option<String>, due_wall_ms: Option<u64>) {
        if self.remote.is_none() {
            return;
        }
        if let Some(json) = json {
            let chain = self.chain.clone();
            self.push(Op::State {
                chain,
                json,
                due_wall_ms,
            });
        }
    }

    /// Runs of this chain left open by an instance that died are closed now, at
    /// `stop_ms`, with the run in progress that the state it left names (see
    /// [`Op::CloseOpen`]).
    pub(crate) fn close_open(&mut self, stop_ms: u64, left: &State, queued: Option<(String, u64)>) {
        let running = match (
            &left.running_task,
            left.running_run_id,
            left.running_since_ms,
        ) {
            (Some(t), Some(id), Some(since)) => Some((t.clone(), id, since)),
            _ => None,
        };
        let chain = self.chain.clone();
        self.push(Op::CloseOpen {
            chain,
            stop_ms,
            running,
            queued,
        });
    }

    /// The run `cur` has started; its group leader is `task_pid`.
    pub(crate) fn run_started(&mut self, cur: &Current, task_pid: i32) {
        self.push(Op::Start(RunStart {
            chain: self.chain.clone(),
            task: cur.task.clone(),
            run_id: cur.run_id,
            scheduled_ms: cur.scheduled_ms,
            start_ms: cur.start_ms,
            task_pid: Some(task_pid),
            trigger: cur.trigger.as_str(),
            requested_by: cur.requested_by.clone(),
        }));
    }

    /// A run-now request was accepted at `at_ms`: its run `run_id` of `task` shows as
    /// `queued` until it starts.
    pub(crate) fn queued(&mut self, task: &str, run_id: u64, at_ms: u64, requested_by: &str) {
        self.push(Op::Queued(RunStart {
            chain: self.chain.clone(),
            task: task.to_string(),
            run_id,
            scheduled_ms: at_ms,
            start_ms: at_ms,
            task_pid: None,
            trigger: Trigger::Manual.as_str(),
            requested_by: Some(requested_by.to_string()),
        }));
    }

    /// The output so far of the run in progress, `cur`.
    pub(crate) fn output(&mut self, cur: &Current, out: &dyn RunOutput) {
        self.push(Op::Output {
            chain: self.chain.clone(),
            task: cur.task.clone(),
            run_id: cur.run_id,
            output: out.bytes(),
            output_bytes: out.total(),
            output_cut: out.cut(),
        });
    }

    /// A run has ended (`out`: its output), with the alert it caused, if any: both go in
    /// one batch, so that they are committed together or not at all (see [`Op::Alert`]).
    /// `keep`: how many of the task's runs the store keeps, and for how long.
    pub(crate) fn run_ended(
        &mut self,
        r: &RunEnded,
        out: &dyn RunOutput,
        keep: (u64, std::time::Duration),
    ) {
        let end = Op::End(Box::new(run_end(&self.chain, r, out, keep)));
        let alert = r.alert.as_ref().map(|a| Op::Alert {
            chain: self.chain.clone(),
            task: a.task.clone(),
            kind: a.decision.kind.as_str(),
        });
        self.push_together(std::iter::once(end).chain(alert));
    }

    /// An alert of `kind` was decided for `task` between runs (a downtime alert).
    pub(crate) fn alerted(&mut self, task: &str, kind: &'static str) {
        self.push(Op::Alert {
            chain: self.chain.clone(),
            task: task.to_string(),
            kind,
        });
    }

    /// Hold what is pushed until [`Recorder::end_batch`]: then it goes as one.
    pub(crate) fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// End the batch: hand it over now, or hold it if the last hand-over was less
    /// than [`HOLD`] before `now`.
    /// With `idle` (a cooldown lies ahead), everything held goes now with it, written
    /// in line if that need not wait (see [`Recorder::send_ops`]).
    pub(crate) fn end_batch(&mut self, now: Mono, idle: bool) {
        self.batching = false;
        let ops = std::mem::take(&mut self.batch);
        if self.remote.is_some() {
            self.send_ops(now, ops, false);
            return;
        }
        if idle {
            self.send_ops(now, ops, true);
            return;
        }
        if ops.is_empty() {
            return;
        }
        if ops.iter().all(|op| matches!(op, Op::Start(_))) {
            self.hold(ops, now + START_HOLD);
        } else if let Some(t) = self.sent_at.filter(|t| now < *t + HOLD) {
            self.hold(ops, t + HOLD);
        } else {
            self.send_ops(now, ops, false);
        }
    }

    fn hold(&mut self, ops: Vec<Op>, due: Mono) {
        self.held.extend(ops);
        self.held_due = Some(self.held_due.map_or(due, |d| d.min(due)));
    }

    /// When what is held must be handed over ([`Recorder::tick`]).
    pub(crate) fn due(&self) -> Option<Mono> {
        self.held_due
    }

    /// Hand over what is held, if it is due.
    pub(crate) fn tick(&mut self, now: Mono) {
        if self.due().is_some_and(|d| d <= now) {
            self.send_ops(now, Vec::new(), false);
        }
    }

    pub(crate) fn push(&mut self, op: Op) {
        self.push_together(std::iter::once(op));
    }

    /// Push `ops` as one: into the open batch, or handed over together.
    fn push_together(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.batch.extend(ops);
        if !self.batching {
            let ops = std::mem::take(&mut self.batch);
            self.send_ops(time::mono_now(), ops, false);
        }
    }

    /// Hand over what is held, then `ops`, as one.
    ///
    /// With `in_line` (a cooldown lies ahead, the driver has nothing else to do), they
    /// are written here, on the driver's thread, if nothing handed over is still
    /// waiting, the writer thread is not busy with the store, and the transaction need
    /// not wait more than about 1 ms for another process's. Waking the writer thread
    /// for them cost as much as a fifth of the transaction itself (200 chains on one
    /// RUN_ROOT, a run a second each). Whatever could not be written at once (another
    /// chain's transaction, a store that fails) and any checkpoint due go to the writer
    /// thread, which waits, retries and reports; so the loop never waits on the disk
    /// or on another process here.
    fn send_ops(&mut self, now: Mono, ops: Vec<Op>, in_line: bool) {
        let mut all = std::mem::take(&mut self.held);
        all.extend(ops);
        self.held_due = None;
        self.sent_at = Some(now);
        if all.is_empty() {
            return;
        }
        if let Some(remote) = self.remote.as_mut() {
            remote.send(all, false);
            return;
        }
        if in_line && self.tx.is_some() && self.queued.load(Ordering::Acquire) == 0 {
            let guard = match self.store.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(e)) => Some(recovered(&self.store, e.into_inner())),
                Err(TryLockError::WouldBlock) => None,
            };
            let tried = guard.map(|mut store| {
                let written = store.write_now(now, std::mem::take(&mut all));
                written && !store.thread_work_due()
            });
            match tried {
                Some(true) => return,
                Some(false) => return self.send(Msg::Wake),
                None => {}
            }
        }
        self.send(Msg::Ops(all));
    }

    fn send(&mut self, mut msg: Msg) {
        if let Some(tx) = &self.tx {
            self.queued.fetch_add(1, Ordering::AcqRel);
            match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::SendError(m)) => {
                    // The thread is gone (a panic; it cannot be, short of a bug): what it
                    // had not written stays queued in the store, and from now on the
                    // records are written here.
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    log::error!(
                        "{}: the store's writer thread is gone; writing the store in line",
                        self.chain
                    );
                    self.tx = None;
                    msg = m;
                }
            }
        }
        let now = time::mono_now();
        let mut store = lock(&self.store);
        store.begin_batch();
        if let Msg::Ops(ops) = msg {
            for op in ops {
                store.push(now, op);
            }
        }
        store.end_batch(now);
        store.thread_work();
    }

    /// Write what is left (one last try) and stop the thread: the process is about to
    /// exit.
    ///
    /// When the writer thread has nothing to do, the last try is made here and the
    /// thread is left where it waits, for the exit to end: waking it only for it to
    /// end, and waiting for that, took a third of the time from a SIGTERM in a cooldown
    /// to the exit (a median of 1.0 against 0.78 ms). Its connection is not closed
    /// either; closing it would not checkpoint (see `store::configure_writer`), and
    /// what it committed is in the WAL.
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.batching = false;
        let ops = std::mem::take(&mut self.batch);
        if !ops.is_empty() || !self.held.is_empty() {
            self.send_ops(time::mono_now(), ops, true);
        }
        if let Some(remote) = self.remote.as_mut() {
            remote.sync();
            return;
        }
        if self.tx.is_some() && self.queued.load(Ordering::Acquire) == 0 {
            let guard = match self.store.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(e)) => Some(recovered(&self.store, e.into_inner())),
                Err(TryLockError::WouldBlock) => None,
            };
            let left = match guard {
                Some(mut store) => {
                    last_try(&self.chain, &mut store);
                    true
                }
                // The thread holds the store only to copy the WAL back, with every record
                // written: the exit cuts the copy off, safely (see `Store::copying`),
                // instead of waiting for it (a chain's first write that found a WAL of
                // 2 MB left by earlier instances made a SIGTERM just after it wait for the
                // copy and its two fsyncs).
                None => self.copying.load(Ordering::Acquire),
            };
            if left && self.queued.load(Ordering::Acquire) == 0 {
                // Kept, so that the thread is not told to end (a dropped sender wakes it).
                std::mem::forget(self.tx.take());
                self.thread = None;
                return;
            }
        }
        self.tx = None;
        // The thread makes the last try; if there is none (or it died), it is made here.
        let thread_did = self.thread.take().is_some_and(|t| t.join().is_ok());
        if !thread_did {
            last_try(&self.chain, &mut lock(&self.store));
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("chain", &self.chain)
            .field("threaded", &self.thread.is_some())
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("batch", &self.batch.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The record of run `r`'s end in `chain`, with its output.
fn run_end(
    chain: &str,
    r: &RunEnded,
    out: &dyn RunOutput,
    keep: (u64, std::time::Duration),
) -> RunEnd {
    let f = &r.f;
    let (keep_runs_max, keep_for) = keep;
    let (exit_code, signal) = match &f.outcome {
        Outcome::Success => (Some(0), None),
        Outcome::Failed(c) => (Some(*c), None),
        Outcome::Signal(s) => (None, Some(*s)),
        _ => (None, None),
    };
    RunEnd {
        chain: chain.to_string(),
        task: f.task.clone(),
        run_id: f.run_id,
        scheduled_ms: r.scheduled_ms,
        start_ms: r.start_ms,
        stop_ms: r.stop_ms,
        outcome: f.outcome.label(),
        exit_code,
        signal,
        error: match &f.outcome {
            Outcome::SpawnError(m) => Some(m.clone()),
            _ => None,
        },
        output: out.bytes(),
        output_bytes: out.total(),
        output_cut: out.cut(),
        trigger: r.trigger.as_str(),
        requested_by: r.requested_by.clone(),
        streak: r.streak,
        keep_runs_max,
        keep_after_ms: r.stop_ms.saturating_sub(keep_for.as_millis() as u64),
    }
}

/// Block every signal on the writer thread: the handlers (and the signalfd) belong to
/// the driver's thread.
fn block_signals() {
    // SAFETY: changes this thread's signal mask only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
}

/// The writer thread: write what comes (with what the driver's thread left queued),
/// checkpoint when due, retry what could not be written when the store says, and write
/// what is left when the driver hangs up.
fn writer(chain: &str, store: &Mutex<Store>, rx: mpsc::Receiver<Msg>, queued: &AtomicUsize) {
    loop {
        let retry_at = lock(store).retry_at();
        let msg = match retry_at {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_sub(time::mono_now())),
        };
        let now = time::mono_now();
        let mut st = lock(store);
        match msg {
            Ok(first) => {
                st.begin_batch();
                let mut taken = 1;
                let take = |m: Msg, st: &mut Store| {
                    if let Msg::Ops(ops) = m {
                        ops.into_iter().for_each(|op| st.push(now, op));
                    }
                };
                take(first, &mut st);
                // Whatever else has come meanwhile goes into the same transaction.
                while let Ok(m) = rx.try_recv() {
                    take(m, &mut st);
                    taken += 1;
                }
                st.end_batch(now);
                // Written (or queued in the store for a retry): no longer in hand. The
                // checkpoint that may follow is not waited for at the exit (`finish`).
                queued.fetch_sub(taken, Ordering::AcqRel);
                st.thread_work();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                st.flush(now);
                st.thread_work();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    last_try(chain, &mut lock(store));
}

/// One last try; what cannot be written now is lost with this process (the chain's
/// position and failure state are in CHAIN.state regardless).
fn last_try(chain: &str, store: &mut Store) {
    if store.pending() == 0 {
        store.checkpoint_if_large();
    }
    if store.pending() > 0 {
        store.flush(time::mono_now());
        if store.pending() > 0 {
            log::error!(
                "{chain}: exiting with {} records not written to the store",
                store.pending()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::alert::{Decision, Kind};
    use crate::core::chain::Finished;
    use crate::core::supervisor::AlertDue;
    use crate::store::{alert_counts, history, open_read, Instance};

    struct Out;
    impl RunOutput for Out {
        fn last_line(&self) -> Option<String> {
            Some("boom".into())
        }
        fn bytes(&self) -> Vec<u8> {
            b"boom\n".to_vec()
        }
        fn total(&self) -> u64 {
            9000
        }
        fn cut(&self) -> bool {
            true
        }
    }

    /// What the driver hands over as domain values goes to the store as records: the
    /// start, the end (its exit code, output, streak) and the alert it caused, both of
    /// the latter in one batch; a downtime alert alone.
    #[test]
    fn a_runs_start_end_and_alert_are_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = Instance::this_process("digest");
        let mut rec = Recorder::start("c", Store::new(dir.path(), instance));
        let cur = Current {
            task: "t".into(),
            run_id: 7,
            scheduled_ms: 1_000,
            start_ms: 1_005,
            trigger: crate::core::chain::Trigger::Schedule,
            requested_by: None,
        };
        rec.begin_batch();
        rec.run_started(&cur, 4321);
        rec.end_batch(time::mono_now(), false);
        let ended = RunEnded {
            f: Finished {
                task: "t".into(),
                run_id: 7,
                outcome: Outcome::Failed(3),
                scheduled: Mono::ZERO,
                started: Mono::ZERO,
                ended: Mono::ZERO,
                cooldown: Some(Duration::from_secs(60)),
            },
            scheduled_ms: 1_000,
            start_ms: 1_005,
            stop_ms: 2_005,
            duration: Duration::from_secs(1),
            streak: Some((1_005, 1)),
            trigger: crate::core::chain::Trigger::Schedule,
            requested_by: None,
            alert: Some(AlertDue {
                task: "t".into(),
                decision: Decision {
                    kind: Kind::FirstFailure,
                    streak_start_ms: 1_005,
                    failures: 1,
                    held_back: 0,
                },
                recovered_by: None,
                last_failed: None,
                output: None,
                between_runs: false,
            }),
        };
        rec.begin_batch();
        rec.run_ended(&ended, &Out, (100, Duration::from_secs(3600)));
        rec.end_batch(time::mono_now(), true);
        rec.alerted("t", "downtime");
        rec.finish();
        let reader = open_read(dir.path()).expect("open").expect("a store");
        let runs = history(&reader, "t", Some("c"), 10).expect("history");
        let [run] = runs.as_slice() else {
            panic!("{runs:?}");
        };
        assert_eq!(
            (run.run_id, run.start_ms, run.stop_ms),
            (7, 1_005, Some(2_005))
        );
        assert_eq!(run.outcome.as_deref(), Some("failed"));
        assert_eq!((run.exit_code, run.signal), (Some(3), None));
        assert_eq!((run.output_bytes, run.output_cut), (9000, true));
        let mut alerts = alert_counts(&reader).expect("alerts");
        alerts.sort();
        assert_eq!(
            alerts,
            vec![
                ("c".into(), "t".into(), "downtime".into(), 1),
                ("c".into(), "t".into(), "first-failure".into(), 1)
            ]
        );
    }
}
