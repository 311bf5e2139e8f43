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

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::store::{Op, Store};
use crate::sys;

enum Msg {
    /// Write these, in one transaction.
    Ops(Vec<Op>),
    /// A cooldown lies ahead: a good moment to checkpoint the WAL.
    Idle,
}

/// The driver's side of the writer thread.
pub struct Recorder {
    chain: String,
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    batch: Vec<Op>,
    batching: bool,
    /// The store itself, if the thread could not be started (written in line then).
    inline: Option<Store>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Ops(v) => write!(f, "Ops({})", v.len()),
            Msg::Idle => write!(f, "Idle"),
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
                    inline: store,
                }
            }
        }
    }

    /// Hold what is pushed until [`Recorder::end_batch`]: then it goes as one.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    pub fn end_batch(&mut self) {
        self.batching = false;
        if !self.batch.is_empty() {
            let ops = std::mem::take(&mut self.batch);
            self.send(Msg::Ops(ops));
        }
    }

    pub fn push(&mut self, op: Op) {
        if self.batching {
            self.batch.push(op);
        } else {
            self.send(Msg::Ops(vec![op]));
        }
    }

    /// A cooldown lies ahead.
    pub fn idle(&mut self) {
        self.send(Msg::Idle);
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
            match msg {
                Msg::Ops(ops) => {
                    store.begin_batch();
                    for op in ops {
                        store.push(now, op);
                    }
                    store.end_batch(now);
                }
                Msg::Idle => store.checkpoint_if_idle(),
            }
        }
    }

    /// Write what is left (one last try) and stop the thread.
    pub fn finish(&mut self) {
        self.end_batch();
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
            .finish()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
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
                let mut idle = false;
                while let Ok(more) = rx.try_recv() {
                    match more {
                        Msg::Ops(ops) => ops.into_iter().for_each(|op| store.push(now, op)),
                        Msg::Idle => idle = true,
                    }
                }
                store.end_batch(now);
                if idle {
                    store.checkpoint_if_idle();
                }
            }
            Ok(Msg::Idle) => store.checkpoint_if_idle(),
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
