//! The record store's writer, on a thread of its own.
//!
//! The driver hands it what a run's start and end (and its output so far, and the
//! alerts decided) are to write, and goes on at once: the SQLite transaction, its
//! retries while the store cannot be written, and the WAL checkpoints happen on this
//! thread. So the loop between two runs never waits on the disk, and a task that has
//! just been spawned does not have to wait for its supervisor's bookkeeping to get a
//! CPU: on a machine with a second core, the writing happens there.
//!
//! The order of the records is kept (one channel, one writer). [`Recorder::finish`]
//! writes what is left and says what could not be written, as the driver did before.
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

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::chain::Mono;
use crate::store::{Op, Store};
use crate::sys;

/// How long records may be held when runs come fast (see the module's text).
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a run's start may wait for the run's end (see the module's text).
pub const START_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

enum Msg {
    /// Write these, in one transaction.
    Ops(Vec<Op>),
}

/// The driver's side of the writer thread.
pub struct Recorder {
    chain: String,
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    batch: Vec<Op>,
    batching: bool,
    /// Records of earlier batches not yet handed over, and when the last hand-over was.
    held: Vec<Op>,
    /// When what is held must go.
    held_due: Option<Mono>,
    sent_at: Option<Mono>,
    /// The store itself, if the thread could not be started (written in line then).
    inline: Option<Store>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Ops(v) => write!(f, "Ops({})", v.len()),
        }
    }
}

impl Recorder {
    /// Start the writer thread for `store`. If no thread can be started, the records
    /// are written in line, as they come.
    pub fn start(chain: &str, store: Store) -> Recorder {
        let name = chain.to_string();
        let (tx, rx) = mpsc::channel::<Msg>();
        // The store goes to the thread through a slot, so that it can come back if the
        // thread cannot be started.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(store)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("run-chain-store".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                own_descriptor_table();
                let store = theirs.lock().ok().and_then(|mut s| s.take());
                if let Some(store) = store {
                    writer(&name, store, rx);
                }
            });
        match spawned {
            Ok(thread) => Recorder {
                chain: chain.to_string(),
                tx: Some(tx),
                thread: Some(thread),
                batch: Vec::new(),
                batching: false,
                held: Vec::new(),
                held_due: None,
                sent_at: None,
                inline: None,
            },
            Err(e) => {
                log::warn!(
                    "{chain}: cannot start the store's writer thread ({e}); writing in line"
                );
                let store = slot.lock().ok().and_then(|mut s| s.take());
                Recorder {
                    chain: chain.to_string(),
                    tx: None,
                    thread: None,
                    batch: Vec::new(),
                    batching: false,
                    held: Vec::new(),
                    held_due: None,
                    sent_at: None,
                    inline: store,
                }
            }
        }
    }

    /// Hold what is pushed until [`Recorder::end_batch`]: then it goes as one.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// End the batch: hand it over now, or hold it if the last hand-over was less
    /// than [`HOLD`] before `now`.
    /// With `idle` (a cooldown lies ahead), everything held goes now with it: one
    /// hand-over, one wake-up of the writer.
    pub fn end_batch(&mut self, now: Mono, idle: bool) {
        self.batching = false;
        let ops = std::mem::take(&mut self.batch);
        if idle {
            self.send_ops(now, ops);
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
            self.send_ops(now, ops);
        }
    }

    fn hold(&mut self, ops: Vec<Op>, due: Mono) {
        self.held.extend(ops);
        self.held_due = Some(self.held_due.map_or(due, |d| d.min(due)));
    }

    /// When what is held must be handed over ([`Recorder::tick`]).
    pub fn due(&self) -> Option<Mono> {
        self.held_due
    }

    /// Hand over what is held, if it is due.
    pub fn tick(&mut self, now: Mono) {
        if self.due().is_some_and(|d| d <= now) {
            self.send_ops(now, Vec::new());
        }
    }

    pub fn push(&mut self, op: Op) {
        if self.batching {
            self.batch.push(op);
        } else {
            self.send_ops(sys::mono_now(), vec![op]);
        }
    }

    /// Hand over what is held, then `ops`, as one.
    fn send_ops(&mut self, now: Mono, ops: Vec<Op>) {
        let mut all = std::mem::take(&mut self.held);
        all.extend(ops);
        self.held_due = None;
        self.sent_at = Some(now);
        if !all.is_empty() {
            self.send(Msg::Ops(all));
        }
    }

    fn send(&mut self, msg: Msg) {
        if let Some(tx) = &self.tx {
            match tx.send(msg) {
                Ok(()) => return,
                // The thread is gone (it cannot be, short of a bug): write in line.
                Err(mpsc::SendError(msg)) => {
                    log::error!(
                        "{}: the store's writer thread is gone; records are lost: {msg:?}",
                        self.chain
                    );
                    return;
                }
            }
        }
        if let Some(store) = &mut self.inline {
            let now = sys::mono_now();
            let Msg::Ops(ops) = msg;
            if !ops.is_empty() {
                store.begin_batch();
                for op in ops {
                    store.push(now, op);
                }
                store.end_batch(now);
            }
        }
    }

    /// Write what is left (one last try) and stop the thread.
    pub fn finish(&mut self) {
        self.batching = false;
        let ops = std::mem::take(&mut self.batch);
        if !ops.is_empty() || !self.held.is_empty() {
            self.send_ops(sys::mono_now(), ops);
        }
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(store) = &mut self.inline {
            last_try(&self.chain, store);
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("chain", &self.chain)
            .field("threaded", &self.thread.is_some())
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

/// Give this thread a descriptor table of its own, with only stdin, stdout and stderr
/// in it, so that the store's files (runs.db, its WAL and shm) are open here only.
///
/// Why: every process that uses the store holds POSIX locks on runs.db and runs.db-shm,
/// and the kernel keeps one list of them per file. A task started by the main thread
/// inherits the main thread's descriptors, and when it execs, closing each inherited
/// (close-on-exec) descriptor of a locked file walks that whole list: with 200 chains on
/// one RUN_ROOT that was a sixth of a chain's CPU. With the store's descriptors in this
/// thread's table only, no task (and no sendmail) ever sees them.
///
/// All signals are blocked here first: the handlers write to the signal pipe by its
/// number, which is not open in this table (they run on the other threads instead).
/// The POSIX locks SQLite takes are owned by this table; no other thread of the process
/// uses the store, so SQLite's view of "this process's locks" stays true.
fn own_descriptor_table() {
    // SAFETY: changes this thread's signal mask and descriptor table only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        if libc::unshare(libc::CLONE_FILES) != 0 {
            return;
        }
        // The copies of the main thread's descriptors go (the files stay open there).
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in sys::open_fds() {
                if fd >= 3 {
                    libc::close(fd);
                }
            }
        }
    }
}

/// The writer thread: write what comes, retry what could not be written when the
/// store says, and write what is left when the driver hangs up.
fn writer(chain: &str, mut store: Store, rx: mpsc::Receiver<Msg>) {
    loop {
        let msg = match store.retry_at() {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_sub(sys::mono_now())),
        };
        let now = sys::mono_now();
        match msg {
            Ok(Msg::Ops(ops)) => {
                store.begin_batch();
                for op in ops {
                    store.push(now, op);
                }
                // Whatever else has come meanwhile goes into the same transaction.
                while let Ok(Msg::Ops(ops)) = rx.try_recv() {
                    ops.into_iter().for_each(|op| store.push(now, op));
                }
                store.end_batch(now);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => store.flush(now),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    last_try(chain, &mut store);
}

/// One last try; what cannot be written now is lost with this process (the chain's
/// position and failure state are in CHAIN.state regardless).
fn last_try(chain: &str, store: &mut Store) {
    if store.pending() == 0 {
        store.checkpoint_if_large();
    }
    if store.pending() > 0 {
        store.flush(sys::mono_now());
        if store.pending() > 0 {
            log::error!(
                "{chain}: exiting with {} records not written to the store",
                store.pending()
            );
        }
    }
}
