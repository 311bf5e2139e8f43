//! The record store: `RUN_ROOT/runs.db` (SQLite, WAL), shared by every chain of a
//! RUN_ROOT and read by `status`, `history`, `log` and the metrics.
//!
//! Layout (schema version 1, `PRAGMA user_version`):
//! - `series`: one row per chain and task, with the aggregates that only ever grow
//!   (runs by outcome, duration and latency sums) and the "last" values (times, exit
//!   code, success, streak). They are updated in the same transaction as the run, so
//!   counters never fall when runs are pruned and a reader never scans the history.
//! - `instances`: one row per run-chain process (host, PID, version, config digest),
//!   so a failure can be tied to a deploy without repeating those strings per run.
//! - `runs`: one row per run, written when it starts and completed when it ends.
//!
//! Writes never stall or stop the chain. Every write is an [`Op`] in a bounded queue;
//! the queue is written in one short `BEGIN IMMEDIATE` transaction with a small busy
//! timeout. When SQLite fails (disk full, read-only, locked by another process) the
//! ops stay queued, one error is logged, and the driver retries at a backoff deadline
//! (and at every new op); the recovery is logged too. A file SQLite reports corrupt is
//! confirmed with `PRAGMA quick_check` under `runs.db.lock` (so that one process acts),
//! renamed `runs.db.corrupt-TIMESTAMP`, and a fresh store is started.
//!
//! One other process writes a chain's runs: the guardian of an instance that died during
//! a run closes that run, with the time its group ended and what the guardian did
//! ([`Op::Killed`], through the seam's write side like any batch: `close_killed`, once,
//! in one transaction of its own, retried for a bounded time while the store is busy). The next launch waits for that guardian, then closes what is
//! still open ([`Op::CloseOpen`]), leaving the guardian's record as it is.
//!
//! The store sits behind a seam, so that a shared PostgreSQL store can be one more file
//! here later, not a reshaping of the driver or the readers:
//! - the write side, [`seam::StoreWrite`]: apply a batch of ops in one transaction, as
//!   an [`seam::Owner`], answering busy, corrupt, fenced (a shared store's owner has
//!   changed: counted and dropped, never retried; SQLite never says it) or another
//!   error. The queue and its back-off are written once over it (`writer`'s
//!   [`Writer`]); [`Store`] is that writer over `sqlite`, with the WAL's checkpoints and
//!   the driver's write in line; `memory` is the in-memory store its unit tests use.
//!   What the fleet is to add here, for a start record committed before a spawn: a
//!   count of the ops the store has committed and an eventfd made readable at each
//!   commit, which the driver waits on in its `ppoll` (with a recorder call that hands
//!   over what is batched or held at once); and a count of what was fenced off in the
//!   state or the exit's log line. Not kept before the fleet uses them: nothing but
//!   tests would (the writer already logs each batch fenced off, with the count so far).
//! - the read side, `Reader` (`reader`): everything `status`, `history`, `log`, the
//!   metrics and the alert mails read, as plain rows. Only `store/` names rusqlite.
//!
//! - the outbox of alert mails, [`outbox::Outbox`]: where a built mail waits until the
//!   mailer has sent it. With SQLite it is files in `RUN_ROOT/outbox/` ([`outbox::Files`],
//!   [`open_outbox`]), not the database, so that a store fault cannot lose an alert.
//!
//! Its files: `seam` (the write side's interface), `writer` (the queue of ops, its
//! batches and back-off), `sqlite` (the SQLite write side: a batch's transaction,
//! setting a corrupt file aside, checkpoints), `apply` (the SQL of one op), `schema`
//! (opening, configuring and migrating the SQLite file), `killed` (the guardian's one
//! write, and its SQL), `reader` (what the readers query), [`outbox`] (the outbox and
//! its files), and beside them `recorder` (the writer's thread) and [`state_file`]
//! (`CHAIN.state`, which does not depend on the store). A shared (PostgreSQL) store is to
//! be one more write side and one more outbox; the reader is a concrete SQLite type (a
//! trait when a second store needs one).

use std::path::{Path, PathBuf};

mod apply;
pub(crate) mod import_read;
mod killed;
#[cfg(test)]
mod memory;
pub(crate) mod outbox;
pub(crate) mod pages;
pub(crate) mod pg;
mod reader;
pub(crate) mod recorder;
mod schema;
pub mod seam;
mod sqlite;
pub mod state_file;
mod writer;

pub(crate) use killed::{close_killed, Killed};
pub(crate) use reader::{
    alert_counts, chains_of_task, chains_with_run, failed_run, fleet_failed_runs, history,
    last_run_ids, open_fleet_read, open_read, output, series, series_with_recent, trigger_counts,
    ReadError, Reader, RunRow, SeriesRow,
};
pub use schema::SCHEMA_VERSION;
pub use writer::{Store, Writer};

/// The outbox of alert mails of the store in `run_root` (see [`outbox`]): files in
/// `RUN_ROOT/outbox/`.
pub(crate) fn open_outbox(run_root: &Path) -> Box<dyn outbox::Outbox> {
    Box::new(outbox::Files::new(run_root))
}

/// The path of the store in `run_root`.
pub fn path(run_root: &Path) -> PathBuf {
    run_root.join("runs.db")
}

/// How many recent runs the `recent` window of a series keeps (for quantiles).
pub const RECENT_WINDOW: usize = 100;

/// Append (duration, latency) in ms to a packed window of little-endian u32 pairs,
/// keeping the newest RECENT_WINDOW.
pub fn push_recent(blob: &[u8], duration_ms: u64, latency_ms: u64) -> Vec<u8> {
    let keep = (RECENT_WINDOW - 1) * 8;
    let blob = &blob[..blob.len() - blob.len() % 8];
    let start = blob.len().saturating_sub(keep);
    let mut out = Vec::with_capacity(RECENT_WINDOW * 8);
    out.extend_from_slice(&blob[start..]);
    out.extend_from_slice(&(duration_ms.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    out.extend_from_slice(&(latency_ms.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    out
}

/// Unpack a window: (durations, latencies) in ms.
pub(crate) fn unpack_recent(blob: &[u8]) -> Recent {
    let mut d = Vec::with_capacity(blob.len() / 8);
    let mut l = Vec::with_capacity(blob.len() / 8);
    for c in blob.chunks_exact(8) {
        d.push(u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        l.push(u64::from(u32::from_le_bytes([c[4], c[5], c[6], c[7]])));
    }
    (d, l)
}

/// Who writes: one row in `instances`.
#[derive(Debug, Clone)]
pub struct Instance {
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub config_digest: String,
    pub started_ms: u64,
}

impl Instance {
    /// This process, started now, running a config of digest `config_digest`.
    pub(crate) fn this_process(config_digest: &str) -> Instance {
        Instance {
            host: crate::sys::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_digest: config_digest.to_string(),
            started_ms: crate::time::wall_ms(),
        }
    }
}

/// A run has started.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub chain: String,
    pub task: String,
    pub run_id: u64,
    pub scheduled_ms: u64,
    pub start_ms: u64,
    pub task_pid: Option<i32>,
    /// schedule, kick or manual.
    pub trigger: &'static str,
    /// Who asked for a manual run ("alice on pts/3", the web peer's address).
    pub requested_by: Option<String>,
}

/// A run has ended.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub chain: String,
    pub task: String,
    pub run_id: u64,
    pub scheduled_ms: u64,
    pub start_ms: u64,
    pub stop_ms: u64,
    /// ok, failed, timeout, signal, spawn-error, interrupted.
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub output: Vec<u8>,
    pub output_bytes: u64,
    pub output_cut: bool,
    /// See [`RunStart::trigger`] and [`RunStart::requested_by`].
    pub trigger: &'static str,
    pub requested_by: Option<String>,
    /// The streak after this run: (start, failures), None after a success.
    pub streak: Option<(u64, u64)>,
    /// Prune: keep at most this many runs of the series...
    pub keep_runs_max: u64,
    /// ...and none that started before this.
    pub keep_after_ms: u64,
}

/// One write.
#[derive(Debug, Clone)]
pub enum Op {
    Start(RunStart),
    /// A run-now request was accepted: its run shows as `queued` (outcome) until its
    /// start replaces the row (`start_ms`: when it was accepted; no PID).
    Queued(RunStart),
    Output {
        chain: String,
        task: String,
        run_id: u64,
        output: Vec<u8>,
        output_bytes: u64,
        output_cut: bool,
    },
    End(Box<RunEnd>),
    /// Runs of `chain` left open by a dead instance are `interrupted`; so is the run
    /// CHAIN.state says was in progress, (task, run id, start ms), if the dead instance
    /// had not written it yet (it was killed in the run's first moments). Its guardian,
    /// which the launch waited for, has closed the run it ended with the real end
    /// (`close_killed`); what is still open here is a run whose end nobody recorded (the
    /// guardian was killed too, a power cut, a store locked past the guardian's patience):
    /// it is closed with `stop_ms` (the launch's time, so its duration runs to the
    /// launch) and `END_NOT_KNOWN` as its error.
    CloseOpen {
        chain: String,
        stop_ms: u64,
        running: Option<(String, u64, u64)>,
        /// The run-now request this instance carries on (task, run id): its `queued` row
        /// stays; any other `queued` row of the chain is a request that was dropped (its
        /// task left the chain) and is removed.
        queued: Option<(String, u64)>,
    },
    /// The guardian's record of the run it ended after run-chain's death (see
    /// `guardian`), in a batch of its own: the run is closed as `interrupted` with the
    /// guardian's stop time and error, unless it is closed already; a run whose start
    /// was never written is written whole, under the dead instance's row (added only if
    /// it is not there).
    Killed(Box<Killed>),
    /// An alert of `kind` was decided for this chain and task. The driver pushes it in
    /// the batch of the run's end that caused it (one feed), and a batch is never split:
    /// the recorder hands it over whole and the writer applies its whole queue in one
    /// transaction, so the end and its alert are committed together or not at all (but
    /// for a queue full past QUEUE_MAX, which drops the oldest record first).
    Alert {
        chain: String,
        task: String,
        kind: &'static str,
    },
    /// The chain's resume state (the JSON that CHAIN.state holds on one host) and when
    /// its next task is due (Unix ms on this host's clock), for the fleet's store only
    /// (`run_chain.chain_state`, the due time kept on the database's clock): the next
    /// owner resumes from it. Only the newest of a queue matters. SQLite ignores it
    /// (CHAIN.state is the file beside it).
    State {
        chain: String,
        json: String,
        due_wall_ms: Option<u64>,
    },
    /// The fleet's store only: runs of `chain` still open when this owner acquired the
    /// lease are `interrupted`, ended at `stop_ms` (the previous owner's lease expiry) with
    /// `error` naming that owner (its host and epoch). SQLite ignores it.
    Interrupted {
        chain: String,
        stop_ms: u64,
        error: String,
    },
    /// The fleet's store only: an alert mail (complete, with its Message-ID) put in the
    /// outbox (`run_chain.outbox`) in the batch of the run's end that decided it, so that
    /// both are committed together. SQLite ignores it (its outbox is files).
    Mail {
        chain: String,
        message_id: String,
        bytes: Vec<u8>,
    },
}

/// The `error` of a run closed by the next launch because nobody recorded its end.
pub(crate) const END_NOT_KNOWN: &str = "run-chain died during the run and its end was not recorded; stop is when the chain was next launched";

/// Durations and latencies (ms) of recent runs.
pub(crate) type Recent = (Vec<u64>, Vec<u64>);
