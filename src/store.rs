//! The record store: `RUN_ROOT/runs.db` (SQLite, WAL), shared by every chain of a
//! RUN_ROOT and read by `status`, `history`, `log` (and later `metrics`).
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
//! ([`close_killed`], once, in one transaction of its own, retried for a bounded time
//! while the store is busy). The next launch waits for that guardian, then closes what is
//! still open ([`Op::CloseOpen`]), leaving the guardian's record as it is.
//!
//! The store sits behind this small interface (ops in, rows out) so that a shared
//! PostgreSQL store can replace it later without reshaping the driver.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::time::Mono;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 3;

/// At most this many ops wait in memory while the store cannot be written.
pub const QUEUE_MAX: usize = 10_000;

/// How long a write waits for another process's transaction (chains of one RUN_ROOT
/// share the file; theirs are short). Past it the records are queued, not waited for.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);
/// A store that is merely busy is reported only when it stays so this long.
const BUSY_REPORT_AFTER: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        chain TEXT NOT NULL,
        task TEXT NOT NULL,
        runs INTEGER NOT NULL DEFAULT 0,
        ok INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        timeout INTEGER NOT NULL DEFAULT 0,
        signal INTEGER NOT NULL DEFAULT 0,
        spawn_error INTEGER NOT NULL DEFAULT 0,
        interrupted INTEGER NOT NULL DEFAULT 0,
        duration_sum_ms INTEGER NOT NULL DEFAULT 0,
        latency_sum_ms INTEGER NOT NULL DEFAULT 0,
        last_run_id INTEGER,
        last_outcome TEXT,
        last_exit_code INTEGER,
        last_scheduled_ms INTEGER,
        last_start_ms INTEGER,
        last_stop_ms INTEGER,
        last_duration_ms INTEGER,
        last_success_ms INTEGER,
        running_run_id INTEGER,
        running_since_ms INTEGER,
        streak_start_ms INTEGER,
        streak_failures INTEGER NOT NULL DEFAULT 0,
        UNIQUE (chain, task)
    );
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        version TEXT NOT NULL,
        config_digest TEXT NOT NULL,
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        series INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        instance INTEGER NOT NULL,
        scheduled_ms INTEGER,
        start_ms INTEGER NOT NULL,
        stop_ms INTEGER,
        outcome TEXT,
        exit_code INTEGER,
        signal INTEGER,
        duration_ms INTEGER,
        latency_ms INTEGER,
        task_pid INTEGER,
        output BLOB,
        output_bytes INTEGER NOT NULL DEFAULT 0,
        output_cut INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE UNIQUE INDEX runs_series_run ON runs (series, run_id);",
    // 2: alerts decided, by kind (for metrics).
    "CREATE TABLE alerts (
        series INTEGER NOT NULL,
        kind TEXT NOT NULL,
        count INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (series, kind)
    ) WITHOUT ROWID;",
    // 3: the durations and latencies of the newest runs, kept with the aggregates, so
    // that a scrape reads one row per task.
    "ALTER TABLE series ADD COLUMN recent BLOB;",
];

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
pub fn unpack_recent(blob: &[u8]) -> Recent {
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

/// A run has started.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub chain: String,
    pub task: String,
    pub run_id: u64,
    pub scheduled_ms: u64,
    pub start_ms: u64,
    pub task_pid: Option<i32>,
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
    /// ([`close_killed`]); what is still open here is a run whose end nobody recorded (the
    /// guardian was killed too, a power cut, a store locked past the guardian's patience):
    /// it is closed with `stop_ms` (the launch's time, so its duration runs to the
    /// launch) and [`END_NOT_KNOWN`] as its error.
    CloseOpen {
        chain: String,
        stop_ms: u64,
        running: Option<(String, u64, u64)>,
    },
    /// An alert of `kind` was decided for this chain and task.
    Alert {
        chain: String,
        task: String,
        kind: &'static str,
    },
}

/// The `error` of a run closed by the next launch because nobody recorded its end.
pub const END_NOT_KNOWN: &str = "run-chain died during the run and its end was not recorded; stop is when the chain was next launched";

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// The path of the store in `run_root`.
pub fn path(run_root: &Path) -> PathBuf {
    run_root.join("runs.db")
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::debug!("store journal mode is {mode}, not WAL");
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;")?;
    Ok(())
}

/// A chain's writer checkpoints by the length of the WAL that all chains of a RUN_ROOT
/// share, as SQLite's own rule does, but on the writer thread only: the WAL hook notes
/// the length at every commit, and once it is past WAL_CHECKPOINT_FRAMES pages the
/// writer thread copies it back (PASSIVE: it never waits for readers), off the loop's
/// path, also when the commit was made in line by the driver's thread in a cooldown.
/// Counting per connection instead (each chain every 100 of its own commits, and a
/// truncation in every cooldown once the WAL passed 1 MiB) made 200 chains on one
/// RUN_ROOT checkpoint several times a second, each with two fsyncs. Once copied, the
/// next commit starts the WAL over, and journal_size_limit keeps the file at about the
/// size the rule lets it reach, so that it is overwritten in place rather than cut back
/// and grown again.
///
/// Its page cache is kept small (256 KiB): a writer touches the tail of the runs table,
/// its index and a few series rows, and a larger cache only grows the chain's memory over
/// its life (at 4 MiB it added 4 MB by 100,000 runs, for no fewer reads).
///
/// It does not checkpoint when it closes (SQLite's default for the last connection):
/// that copy and its two fsyncs were most of the time a SIGTERM takes to end a chain in
/// its cooldown (a median of 2.5 ms against 1.2 ms without). A commit in WAL mode with
/// synchronous=NORMAL is as safe in the WAL as in the database, so nothing is risked;
/// what must be kept is a bound on the WAL's size. When the last connection closes, the
/// next one to open rebuilds the WAL index from the WAL file and counts none of it as
/// copied, so the WAL is never started over: many short instances (`--once` from cron)
/// would let it grow for ever, and once past the rule's size every commit would copy it
/// all again. So a chain's first write truncates a WAL over WAL_OPEN_MAX, and an exiting
/// chain one over WAL_EXIT_MAX (more than the rule lets it reach while connections stay
/// open), each with a checkpoint TRUNCATE, when no other connection is busy
/// (tests/store.rs, the_wal_stays_bounded...).
fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "PRAGMA cache_size=-256; PRAGMA journal_size_limit={WAL_SIZE_LIMIT};"
    ))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    Ok(())
}

/// WAL pages after which the writer that committed checkpoints: about 16 MB of WAL,
/// once every 1,300 runs or so of all chains together. (At SQLite's default of 1,000,
/// 200 chains on one RUN_ROOT checkpointed twice a second, two fsyncs each, and the
/// writers spent a tenth of their time on it.)
pub const WAL_CHECKPOINT_FRAMES: i32 = 4000;
/// The size the WAL file is cut back to when it is started over: what the rule above
/// lets it reach, so that it is overwritten in place rather than cut and grown again.
const WAL_SIZE_LIMIT: u64 = 17 << 20;
/// A WAL larger than this is checkpointed (and truncated) when a chain first writes.
const WAL_OPEN_MAX: u64 = 2 << 20;
/// A WAL larger than this is checkpointed (and truncated) when a chain exits.
const WAL_EXIT_MAX: u64 = 20 << 20;
/// How long that checkpoint waits for other connections.
const EXIT_CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= MIGRATIONS.len() as i64 {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Look again under the write lock: another process may have migrated meanwhile.
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    tx.commit()
}

/// Open (creating, mode 0600) and migrate the store at `path`.
fn open_rw(path: &Path) -> rusqlite::Result<Connection> {
    if !path.exists() {
        // Create it with our mode; SQLite gives the -wal and -shm files the same.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    configure_writer(&conn)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Open the store for reading (status, history, log). None: there is no store yet.
pub fn open_read(run_root: &Path) -> Result<Option<Connection>, String> {
    let p = path(run_root);
    if !p.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        &p,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| format!("cannot use {}: {e}", p.display()))?;
    // A reader never writes the database: when it happens to be the last connection it
    // neither checkpoints on close (a WAL a writer left holds up to thousands of commits:
    // copying them, with two fsyncs, made a `status` or a scrape slow) nor removes the
    // WAL (which the next reader, or scrape, would make again).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(|e| format!("cannot use {}: {e}", p.display()))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if version == 0 {
        return Ok(None);
    }
    if version > SCHEMA_VERSION {
        return Err(format!(
            "{} has schema version {version}, newer than this run-chain knows ({SCHEMA_VERSION}); use a newer run-chain",
            p.display()
        ));
    }
    Ok(Some(conn))
}

/// The highest run id the store knows for each task of `chain` (its series' last and
/// running run, and its newest kept run). A chain whose CHAIN.state was lost starts its
/// counters from these, so that a run id is never given twice (an id given again would
/// replace the stored run that had it).
pub fn last_run_ids(run_root: &Path, chain: &str) -> Result<BTreeMap<String, u64>, String> {
    let Some(conn) = open_read(run_root)? else {
        return Ok(BTreeMap::new());
    };
    let p = path(run_root);
    let read = || -> rusqlite::Result<BTreeMap<String, u64>> {
        let mut stmt = conn.prepare(
            "SELECT s.task, MAX(COALESCE(s.last_run_id, 0), COALESCE(s.running_run_id, 0),
                    COALESCE((SELECT MAX(r.run_id) FROM runs r WHERE r.series = s.id), 0))
             FROM series s WHERE s.chain = ?1",
        )?;
        let rows = stmt.query_map([chain], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        rows.collect()
    };
    read().map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Move a store that SQLite reports corrupt aside and start a fresh one, under
/// `runs.db.lock` so that only one process acts. Returns the new name, if renamed.
fn set_aside_if_corrupt(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let lock_path = path.with_extension("db.lock");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // Another process is dealing with it right now.
        return Ok(None);
    }
    // Confirm under the lock: another process may have replaced it already.
    let confirmed = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Err(e) => is_corrupt(&e),
        Ok(c) => {
            let _ = c.busy_timeout(BUSY_TIMEOUT);
            match c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
                Ok(s) => s != "ok",
                Err(e) => is_corrupt(&e),
            }
        }
    };
    if !confirmed {
        return Ok(None);
    }
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let aside = path.with_extension(format!("db.corrupt-{stamp}"));
    std::fs::rename(path, &aside)?;
    for ext in ["wal", "shm"] {
        let side = PathBuf::from(format!("{}-{ext}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, PathBuf::from(format!("{}-{ext}", aside.display())));
        }
    }
    Ok(Some(aside))
}

/// The chain's writer: a connection (when it has one) and the queue of pending ops.
pub struct Store {
    path: PathBuf,
    instance: Instance,
    conn: Option<Connection>,
    instance_id: Option<i64>,
    series_ids: HashMap<(String, String), i64>,
    /// What the writer knows of its series without reading them (see [`Known`]).
    known: Known,
    queue: VecDeque<Op>,
    /// The error being reported, while the store cannot be written.
    failing: Option<String>,
    /// Since when writes fail (reported at once, or after BUSY_REPORT_AFTER if busy).
    failing_since: Option<Mono>,
    retry_at: Option<Mono>,
    backoff: Duration,
    dropped: u64,
    /// Inside [`Store::batch`]: queue only; the batch ends with one transaction.
    batching: bool,
    /// The WAL's length in pages after this connection's last commit (SQLite's WAL hook
    /// sets it; boxed, so that its address stays put for the hook).
    wal_frames: Box<AtomicI32>,
    /// The WAL is to be copied back and cut after the first write (see `try_flush`).
    truncate_after_write: bool,
    /// Set while a checkpoint runs with no record of ours waiting ([`Store::copying`]).
    copying: Arc<AtomicBool>,
}

/// Whether no other process has the store at `path` open: none holds the lock SQLite's
/// connections hold on the "deadman switch" byte of `runs.db-shm` for as long as they
/// are open. Asked before this process opens the store: closing a descriptor of a file
/// drops every lock the process holds on it, SQLite's included.
fn no_other_connection(path: &Path) -> bool {
    /// UNIX_SHM_DMS in SQLite's os_unix.c: (22 + 8) * 4 + 8.
    const SHM_DMS_BYTE: libc::off_t = 128;
    let Ok(shm) = std::fs::File::open(format!("{}-shm", path.display())) else {
        return true;
    };
    // SAFETY: flock is plain data; F_GETLK fills it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = SHM_DMS_BYTE;
    fl.l_len = 1;
    // SAFETY: F_GETLK on a descriptor we own, into a flock we own.
    let asked = unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_GETLK, &mut fl) };
    asked == 0 && fl.l_type == libc::F_UNLCK as libc::c_short
}

/// The busy handler of a write in line: another chain's transaction (a fraction of a
/// millisecond, unless its process is preempted) is waited for up to
/// IN_LINE_WAIT_TRIES times IN_LINE_WAIT_STEP, then the write goes to the writer thread.
fn brief_wait(tries: i32) -> bool {
    if tries >= IN_LINE_WAIT_TRIES {
        return false;
    }
    std::thread::sleep(IN_LINE_WAIT_STEP);
    true
}

/// See [`brief_wait`]: at most about 1 ms.
const IN_LINE_WAIT_TRIES: i32 = 6;
const IN_LINE_WAIT_STEP: Duration = Duration::from_micros(125);

/// SQLite's WAL hook (called after each commit): note how long the WAL is. Setting it
/// replaces SQLite's own checkpoint rule, so the writer decides where checkpoints run.
extern "C" fn note_wal_frames(
    ctx: *mut std::ffi::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _name: *const std::ffi::c_char,
    frames: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: ctx is the AtomicI32 in the Store's box, registered with this connection
    // and outliving it (the connection is dropped or replaced before the box).
    let frames_seen = unsafe { &*(ctx as *const AtomicI32) };
    frames_seen.store(frames, Ordering::Relaxed);
    rusqlite::ffi::SQLITE_OK
}

impl Store {
    /// A writer for the store in `run_root`. Opening is tried at once and again at
    /// every retry: a store that cannot be opened does not stop the chain.
    pub fn new(run_root: &Path, instance: Instance) -> Store {
        Store {
            path: path(run_root),
            instance,
            conn: None,
            instance_id: None,
            series_ids: HashMap::new(),
            known: Known::default(),
            queue: VecDeque::new(),
            failing: None,
            failing_since: None,
            retry_at: None,
            backoff: RETRY_FIRST,
            dropped: 0,
            batching: false,
            wal_frames: Box::new(AtomicI32::new(0)),
            truncate_after_write: false,
            copying: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True while this store's connection copies the WAL back with no record of ours
    /// waiting to be written: an exit then need not wait for it (a checkpoint cut off
    /// leaves the store as it was, the WAL still whole; the next one copies it again).
    pub fn copying(&self) -> Arc<AtomicBool> {
        self.copying.clone()
    }

    /// Run a checkpoint statement, flagged in [`Store::copying`].
    fn copy_back(&self, sql: &str) -> rusqlite::Result<i64> {
        let Some(conn) = &self.conn else {
            return Ok(0);
        };
        self.copying.store(self.queue.is_empty(), Ordering::Release);
        let r = conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        self.copying.store(false, Ordering::Release);
        r
    }

    /// Write `ops` now, waiting for another process's transaction about 1 ms at most
    /// ([`brief_wait`]): for the driver's own thread, in a cooldown. True if they are
    /// written; false if they (and what was pending) wait in the queue for
    /// [`Store::flush`], which waits, retries and reports: the store not yet open, a
    /// write already pending, the store busy or failing, or a run's end that prunes old
    /// runs (their pages may have to be read from the disk, and a lowered
    /// `keep_runs_max` deletes up to a thousand rows a run).
    pub fn write_now(&mut self, now: Mono, ops: Vec<Op>) -> bool {
        let prunes = ops.iter().any(|op| match op {
            Op::End(e) => {
                e.run_id > e.keep_runs_max
                    || self
                        .series_ids
                        .get(&(e.chain.clone(), e.task.clone()))
                        .and_then(|sid| self.known.oldest.get(sid))
                        .is_none_or(|oldest| *oldest < e.keep_after_ms as i64)
            }
            _ => false,
        });
        let ready =
            self.conn.is_some() && self.queue.is_empty() && self.failing.is_none() && !prunes;
        self.batching = true;
        for op in ops {
            self.push(now, op);
        }
        self.batching = false;
        if !ready {
            return false;
        }
        if let Some(conn) = &self.conn {
            let _ = conn.busy_handler(Some(brief_wait));
        }
        let written = self.try_flush().is_ok();
        if let Some(conn) = &self.conn {
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
        }
        written
    }

    /// Whether the writer thread has work that may wait on the disk: a checkpoint.
    pub fn thread_work_due(&self) -> bool {
        self.truncate_after_write || self.checkpoint_due()
    }

    /// The writer thread's work after its writes ([`Store::thread_work_due`]).
    pub fn thread_work(&mut self) {
        if self.queue.is_empty() && std::mem::take(&mut self.truncate_after_write) {
            self.truncate_at_open();
        }
        self.checkpoint_if_due();
    }

    /// After a panic on a thread that held the store: roll back a transaction left open
    /// (it would hold the write lock of every chain of the RUN_ROOT) and forget what was
    /// looked up in it; the records stay queued.
    pub fn recover(&mut self) {
        if let Some(conn) = &self.conn {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        self.known = Known::default();
        self.series_ids.clear();
    }

    /// Whether the WAL has passed WAL_CHECKPOINT_FRAMES pages at this connection's last
    /// commit: [`Store::checkpoint_if_due`] is to run (where waiting on the disk is fine).
    pub fn checkpoint_due(&self) -> bool {
        self.wal_frames.load(Ordering::Relaxed) >= WAL_CHECKPOINT_FRAMES
    }

    /// Copy the WAL back (PASSIVE: it never waits for readers) if it is due.
    pub fn checkpoint_if_due(&mut self) {
        if self.checkpoint_due() {
            self.wal_frames.store(0, Ordering::Relaxed);
            self.checkpoint();
        }
    }

    /// Queue the ops pushed until [`Store::end_batch`] and write them then, in one
    /// transaction. The driver batches what one event causes (a run's end and the next
    /// run's start), so that the write happens after the next task has been spawned,
    /// while it runs, and costs one commit instead of two.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Write what was queued since [`Store::begin_batch`] (or keep it queued for the
    /// retry, while the store cannot be written).
    pub fn end_batch(&mut self, now: Mono) {
        self.batching = false;
        if !self.queue.is_empty()
            && (self.failing.is_none() || self.retry_at.is_some_and(|r| r <= now))
        {
            self.flush(now);
        }
    }

    /// At exit: checkpoint only if the WAL has grown large (see WAL_EXIT_MAX), so that
    /// an exit stays quick but the WAL stays bounded across any number of instances.
    pub fn checkpoint_if_large(&mut self) {
        if !self.queue.is_empty() || self.wal_bytes() <= WAL_EXIT_MAX {
            return;
        }
        let Some(conn) = &self.conn else { return };
        // TRUNCATE waits for the other connections to be done with the WAL: a short
        // wait only (with other chains busy on the store, one of them starts it over).
        let _ = conn.busy_timeout(EXIT_CHECKPOINT_WAIT);
        let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        match r {
            Ok(0) => {}
            Ok(_) => {
                log::debug!("store checkpoint at exit: busy; a plain one instead");
                self.checkpoint();
            }
            Err(e) => log::debug!("store checkpoint at exit: {e}"),
        }
    }

    fn wal_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    fn checkpoint(&mut self) {
        if let Err(e) = self.copy_back("PRAGMA wal_checkpoint(PASSIVE)") {
            log::debug!("store checkpoint: {e}");
        }
    }

    /// The WAL copied back and cut after the first write of an instance that opened the
    /// store alone (see `try_flush`); it never waits for another connection.
    fn truncate_at_open(&mut self) {
        if let Some(conn) = &self.conn {
            let _ = conn.busy_timeout(Duration::ZERO);
        }
        if let Err(e) = self.copy_back("PRAGMA wal_checkpoint(TRUNCATE)") {
            log::debug!("store checkpoint at open: {e}");
        }
        if let Some(conn) = &self.conn {
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
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
        self.queue.push_back(op);
        if self.batching {
            return;
        }
        if self.failing.is_none() || self.retry_at.is_some_and(|r| r <= now) {
            self.flush(now);
        }
    }

    /// When the driver should call [`Store::flush`] again, if writes are pending.
    pub fn retry_at(&self) -> Option<Mono> {
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

    /// Write everything queued, in one transaction. On failure keep it all queued.
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
                        self.path.display()
                    );
                }
                if self.dropped > 0 {
                    log::warn!(
                        "store {}: {} records were dropped while it could not be written (queue full)",
                        self.path.display(),
                        self.dropped
                    );
                    self.dropped = 0;
                }
                self.retry_at = None;
                self.backoff = RETRY_FIRST;
            }
            Err(e) => {
                let corrupt = is_corrupt(&e);
                if corrupt {
                    self.conn = None;
                    match set_aside_if_corrupt(&self.path) {
                        Ok(Some(aside)) => {
                            log::warn!(
                                "store {} is corrupt (confirmed by a check); moved it to {} and starting a fresh one",
                                self.path.display(),
                                aside.display()
                            );
                            self.instance_id = None;
                            self.series_ids.clear();
                            self.known = Known::default();
                            if self.try_flush().is_ok() {
                                self.failing = None;
                                self.retry_at = None;
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(io) => log::error!(
                            "store {} looks corrupt and cannot be moved aside: {io}",
                            self.path.display()
                        ),
                    }
                }
                let msg = e.to_string();
                let since = *self.failing_since.get_or_insert(now);
                let busy = matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
                if self.failing.is_none()
                    && (!busy || now.saturating_sub(since) >= BUSY_REPORT_AFTER)
                {
                    log::error!(
                        "failed to write the store {}: {msg} (the chain keeps its schedule; {} records held in memory and retried)",
                        self.path.display(),
                        self.queue.len()
                    );
                    self.failing = Some(msg);
                }
                if !matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy)) {
                    // Reopen next time: the file may have been replaced or fixed.
                    self.conn = None;
                    self.instance_id = None;
                    self.series_ids.clear();
                    self.known = Known::default();
                }
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
            }
        }
    }

    fn try_flush(&mut self) -> rusqlite::Result<usize> {
        if self.conn.is_none() {
            let alone = no_other_connection(&self.path);
            let conn = open_rw(&self.path)?;
            // A WAL that no connection had open counts as not copied at all (see
            // configure_writer): past WAL_OPEN_MAX, every commit of this instance would
            // copy it again, so it is copied and cut once, right after the instance's
            // first write (`truncate_at_open`), not at its exit. Only then: while other
            // chains have the store open the WAL is theirs too, and usually larger
            // (WAL_CHECKPOINT_FRAMES), and a TRUNCATE would hold every chain's writes
            // while it copies. After the write, not before it: the records are in, and an
            // exit in the middle of the copy need not wait for it.
            self.truncate_after_write = alone && self.wal_bytes() > WAL_OPEN_MAX;
            let ctx: *const AtomicI32 = &*self.wal_frames;
            // SAFETY: the hook and its context (the box, which outlives the connection:
            // the connection is always dropped or replaced first) are valid for as long
            // as the connection is open.
            unsafe {
                rusqlite::ffi::sqlite3_wal_hook(
                    conn.handle(),
                    Some(note_wal_frames),
                    ctx as *mut std::ffi::c_void,
                );
            }
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(rusqlite::Error::InvalidQuery);
        };
        // BEGIN and COMMIT as cached statements: rusqlite's Transaction parses them
        // again for every transaction.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut series_ids = self.series_ids.clone();
        let written = (|| {
            let instance_id = match self.instance_id {
                Some(id) => id,
                None => {
                    let i = &self.instance;
                    conn.execute(
                        "INSERT INTO instances (host, pid, version, config_digest, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![i.host, i.pid, i.version, i.config_digest, i.started_ms as i64],
                    )?;
                    conn.last_insert_rowid()
                }
            };
            let mut ops = self.queue.iter().peekable();
            while let Some(op) = ops.next() {
                // A short run's start and end come together (the recorder holds the
                // start for them): one row insert, one series update.
                if let (Op::Start(st), Some(Op::End(e))) = (op, ops.peek()) {
                    if (&st.chain, &st.task, st.run_id) == (&e.chain, &e.task, e.run_id) {
                        apply_end(
                            conn,
                            e,
                            instance_id,
                            &mut series_ids,
                            &mut self.known,
                            Some(st.task_pid),
                        )?;
                        ops.next();
                        continue;
                    }
                }
                apply(conn, op, instance_id, &mut series_ids, &mut self.known)?;
            }
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(instance_id)
        })();
        let instance_id = match written {
            Ok(id) => id,
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                // What was looked up inside the transaction may not hold without it.
                self.known = Known::default();
                return Err(e);
            }
        };
        let n = self.queue.len();
        self.instance_id = Some(instance_id);
        self.series_ids = series_ids;
        self.queue.clear();
        Ok(n)
    }
}

/// What a chain's writer knows of its own series without reading them again. A series
/// is written by its chain's one instance (the chain's lock), in this writer's
/// transactions only, so what it wrote last is what is there. Forgotten when a
/// transaction fails or the store is opened again.
#[derive(Debug, Default)]
struct Known {
    /// Per series, the start of its oldest run when last looked up. Runs are only added
    /// after it or pruned, so it stays a lower bound, and while it is within
    /// `keep_runs_for` nothing can be old enough to prune: the look-up (an index descent
    /// and a row, every run) is made only once it is not.
    oldest: HashMap<i64, i64>,
    /// Per series, the window of recent durations it last wrote (read, pushed to and
    /// written back at every run's end otherwise).
    recent: HashMap<i64, Vec<u8>>,
}

/// A run's end. `merged_pid`: its start is in the same transaction and was not written
/// (Some(the task's PID, if known)).
fn apply_end(
    tx: &Connection,
    e: &RunEnd,
    instance: i64,
    cache: &mut HashMap<(String, String), i64>,
    known: &mut Known,
    merged_pid: Option<Option<i32>>,
) -> rusqlite::Result<()> {
    let sid = series_id(tx, cache, &e.chain, &e.task)?;
    let duration = e.stop_ms.saturating_sub(e.start_ms) as i64;
    let latency = e.start_ms.saturating_sub(e.scheduled_ms) as i64;
    // With the run's start in the same transaction (merged_pid), the row is new: one
    // INSERT, no UPDATE that finds nothing first.
    let changed = if merged_pid.is_some() {
        0
    } else {
        tx.prepare_cached(
            "UPDATE runs SET stop_ms = ?3, outcome = ?4, exit_code = ?5, signal = ?6, duration_ms = ?7,
             latency_ms = ?8, output = ?9, output_bytes = ?10, output_cut = ?11, error = ?12
             WHERE series = ?1 AND run_id = ?2",
        )?
        .execute(params![
            sid,
            e.run_id as i64,
            e.stop_ms as i64,
            e.outcome,
            e.exit_code,
            e.signal,
            duration,
            latency,
            e.output,
            e.output_bytes as i64,
            e.output_cut,
            e.error
        ])?
    };
    if changed == 0 {
        // The start is in this transaction, or was never written (dropped, or a spawn
        // error): write the row whole.
        tx.prepare_cached(
            "INSERT OR REPLACE INTO runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms, outcome,
             exit_code, signal, duration_ms, latency_ms, output, output_bytes, output_cut, error, task_pid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?
        .execute(params![
            sid,
            e.run_id as i64,
            instance,
            e.scheduled_ms as i64,
            e.start_ms as i64,
            e.stop_ms as i64,
            e.outcome,
            e.exit_code,
            e.signal,
            duration,
            latency,
            e.output,
            e.output_bytes as i64,
            e.output_cut,
            e.error,
            merged_pid.flatten()
        ])?;
    }
    let column = match e.outcome {
        "ok" => "ok",
        "failed" => "failed",
        "timeout" => "timeout",
        "signal" => "signal",
        "spawn-error" => "spawn_error",
        _ => "interrupted",
    };
    let success = e.outcome == "ok";
    let old = match known.recent.remove(&sid) {
        Some(blob) => blob,
        None => tx
            .prepare_cached("SELECT recent FROM series WHERE id = ?1")?
            .query_row(params![sid], |r| r.get::<_, Option<Vec<u8>>>(0))?
            .unwrap_or_default(),
    };
    let recent = push_recent(&old, duration.max(0) as u64, latency.max(0) as u64);
    tx.prepare_cached(&format!(
        "UPDATE series SET recent = ?13, runs = runs + 1, {column} = {column} + 1,
         duration_sum_ms = duration_sum_ms + ?3, latency_sum_ms = latency_sum_ms + ?4,
         last_run_id = ?2, last_outcome = ?5, last_exit_code = ?6, last_scheduled_ms = ?7,
         last_start_ms = ?8, last_stop_ms = ?9, last_duration_ms = ?3,
         last_success_ms = CASE WHEN ?10 THEN ?9 ELSE last_success_ms END,
         running_run_id = NULL, running_since_ms = NULL,
         streak_start_ms = ?11, streak_failures = ?12
         WHERE id = ?1"
    ))?
    .execute(params![
        sid,
        e.run_id as i64,
        duration,
        latency,
        e.outcome,
        e.exit_code.or(e.signal.map(|s| 128 + s)),
        e.scheduled_ms as i64,
        e.start_ms as i64,
        e.stop_ms as i64,
        success,
        e.streak.map(|s| s.0 as i64),
        e.streak.map_or(0, |s| s.1 as i64),
        &recent
    ])?;
    known.recent.insert(sid, recent);
    // Prune, a bounded number of rows per run so that a lowered limit never
    // stalls the chain: by count (run ids increase by one per run), then by age
    // (looking only at the oldest rows, where old runs are).
    if e.run_id > e.keep_runs_max {
        tx.prepare_cached(
            "DELETE FROM runs WHERE id IN
             (SELECT id FROM runs WHERE series = ?1 AND run_id <= ?2 ORDER BY run_id LIMIT 1000)",
        )?
        .execute(params![sid, (e.run_id - e.keep_runs_max) as i64])?;
    }
    // One index look-up tells whether anything is old enough to go.
    let keep_after = e.keep_after_ms as i64;
    if known.oldest.get(&sid).is_some_and(|o| *o >= keep_after) {
        return Ok(());
    }
    let first: Option<i64> = tx
        .prepare_cached("SELECT start_ms FROM runs WHERE series = ?1 ORDER BY run_id LIMIT 1")?
        .query_row(params![sid], |r| r.get(0))
        .optional()?;
    match first {
        Some(o) if o >= keep_after => {
            known.oldest.insert(sid, o);
        }
        _ => {
            known.oldest.remove(&sid);
        }
    }
    if first.is_some_and(|o| o < keep_after) {
        tx.prepare_cached(
            "DELETE FROM runs WHERE id IN
             (SELECT id FROM runs WHERE series = ?1 ORDER BY run_id LIMIT 100)
             AND start_ms < ?2 AND stop_ms IS NOT NULL",
        )?
        .execute(params![sid, e.keep_after_ms as i64])?;
    }

    Ok(())
}

fn series_id(
    tx: &Connection,
    cache: &mut HashMap<(String, String), i64>,
    chain: &str,
    task: &str,
) -> rusqlite::Result<i64> {
    if let Some(id) = cache.get(&(chain.to_string(), task.to_string())) {
        return Ok(*id);
    }
    let found: Option<i64> = tx
        .query_row(
            "SELECT id FROM series WHERE chain = ?1 AND task = ?2",
            params![chain, task],
            |r| r.get(0),
        )
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.execute(
                "INSERT INTO series (chain, task) VALUES (?1, ?2)",
                params![chain, task],
            )?;
            tx.last_insert_rowid()
        }
    };
    cache.insert((chain.to_string(), task.to_string()), id);
    Ok(id)
}

/// Count an interrupted run of `sid` in its series (which then has none running).
fn count_interrupted(tx: &Connection, sid: i64, duration: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE series SET runs = runs + 1, interrupted = interrupted + 1,
         duration_sum_ms = duration_sum_ms + ?2, running_run_id = NULL, running_since_ms = NULL
         WHERE id = ?1",
        params![sid, duration],
    )?;
    Ok(())
}

fn apply(
    tx: &Connection,
    op: &Op,
    instance: i64,
    cache: &mut HashMap<(String, String), i64>,
    known: &mut Known,
) -> rusqlite::Result<()> {
    match op {
        Op::Start(s) => {
            let sid = series_id(tx, cache, &s.chain, &s.task)?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO runs (series, run_id, instance, scheduled_ms, start_ms, task_pid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                sid,
                s.run_id as i64,
                instance,
                s.scheduled_ms as i64,
                s.start_ms as i64,
                s.task_pid
            ])?;
            tx.prepare_cached(
                "UPDATE series SET running_run_id = ?2, running_since_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![sid, s.run_id as i64, s.start_ms as i64])?;
        }
        Op::Output {
            chain,
            task,
            run_id,
            output,
            output_bytes,
            output_cut,
        } => {
            let sid = series_id(tx, cache, chain, task)?;
            tx.prepare_cached(
                "UPDATE runs SET output = ?3, output_bytes = ?4, output_cut = ?5 WHERE series = ?1 AND run_id = ?2",
            )?
            .execute(params![
                sid,
                *run_id as i64,
                output,
                *output_bytes as i64,
                *output_cut
            ])?;
        }
        Op::End(e) => apply_end(tx, e, instance, cache, known, None)?,
        Op::Alert { chain, task, kind } => {
            let sid = series_id(tx, cache, chain, task)?;
            tx.prepare_cached(
                "INSERT INTO alerts (series, kind, count) VALUES (?1, ?2, 1)
                 ON CONFLICT (series, kind) DO UPDATE SET count = count + 1",
            )?
            .execute(params![sid, kind])?;
        }
        Op::CloseOpen {
            chain,
            stop_ms,
            running,
        } => {
            let mut stmt = tx.prepare_cached(
                "SELECT r.id, r.series, r.start_ms FROM runs r JOIN series s ON s.id = r.series
                 WHERE s.chain = ?1 AND r.outcome IS NULL",
            )?;
            let open: Vec<(i64, i64, i64)> = stmt
                .query_map(params![chain], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, sid, start) in open {
                let duration = (*stop_ms as i64 - start).max(0);
                tx.execute(
                    "UPDATE runs SET outcome = 'interrupted', stop_ms = ?2, duration_ms = ?3, error = ?4 WHERE id = ?1",
                    params![id, *stop_ms as i64, duration, END_NOT_KNOWN],
                )?;
                count_interrupted(tx, sid, duration)?;
            }
            if let Some((task, run_id, since)) = running {
                let sid = series_id(tx, cache, chain, task)?;
                let known: Option<i64> = tx
                    .prepare_cached("SELECT id FROM runs WHERE series = ?1 AND run_id = ?2")?
                    .query_row(params![sid, *run_id as i64], |r| r.get(0))
                    .optional()?;
                if known.is_none() {
                    let duration = stop_ms.saturating_sub(*since) as i64;
                    tx.execute(
                        "INSERT INTO runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms, outcome, duration_ms, error)
                         VALUES (?1, ?2, ?3, ?4, ?4, ?5, 'interrupted', ?6, ?7)",
                        params![sid, *run_id as i64, instance, *since as i64, *stop_ms as i64, duration, END_NOT_KNOWN],
                    )?;
                    count_interrupted(tx, sid, duration)?;
                }
            }
        }
    }
    Ok(())
}

/// A run that run-chain left open when it died, as its guardian closes it: `stop_ms` is
/// when the guardian saw its group end, `error` what it did (see `guardian`).
#[derive(Debug, Clone)]
pub struct Killed<'a> {
    pub chain: &'a str,
    pub task: &'a str,
    pub run_id: u64,
    pub scheduled_ms: u64,
    pub start_ms: u64,
    pub stop_ms: u64,
    pub error: &'a str,
}

/// The guardian's record of a run it ended after run-chain's death: the run is closed as
/// `interrupted` with the guardian's stop time and error, and counted in its series as the
/// next launch counts one ([`count_interrupted`]). A run already closed is left alone (the
/// next launch got there first: it does not wait for a guardian whose run CHAIN.state does
/// not name). A run whose start was never written is written whole, under the dead
/// instance's row (`instance`; matched by host, PID and a start no earlier than its own, or
/// added). A busy or locked store is tried again until `give_up`; any other error ends the
/// attempt. Ok(true): recorded; Ok(false): it was already closed.
pub fn close_killed(
    path: &Path,
    instance: &Instance,
    k: &Killed<'_>,
    give_up: std::time::Instant,
) -> Result<bool, String> {
    loop {
        match try_close_killed(path, instance, k) {
            Ok(done) => return Ok(done),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn try_close_killed(path: &Path, instance: &Instance, k: &Killed<'_>) -> rusqlite::Result<bool> {
    let conn = open_rw(path)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| {
        let sid = series_id(&conn, &mut HashMap::new(), k.chain, k.task)?;
        let found: Option<(i64, i64, Option<String>)> = conn
            .query_row(
                "SELECT id, start_ms, outcome FROM runs WHERE series = ?1 AND run_id = ?2",
                params![sid, k.run_id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match found {
            Some((_, _, Some(_))) => Ok(false),
            Some((id, start, None)) => {
                let duration = (k.stop_ms as i64 - start).max(0);
                conn.execute(
                    "UPDATE runs SET outcome = 'interrupted', stop_ms = ?2, duration_ms = ?3, error = ?4 WHERE id = ?1",
                    params![id, k.stop_ms as i64, duration, k.error],
                )?;
                count_interrupted(&conn, sid, duration)?;
                Ok(true)
            }
            None => {
                let i = instance;
                let known: Option<i64> = conn
                    .query_row(
                        "SELECT id FROM instances WHERE host = ?1 AND pid = ?2 AND started_ms >= ?3
                         ORDER BY id DESC LIMIT 1",
                        params![i.host, i.pid, i.started_ms as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                let iid = match known {
                    Some(id) => id,
                    None => {
                        conn.execute(
                            "INSERT INTO instances (host, pid, version, config_digest, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![i.host, i.pid, i.version, i.config_digest, i.started_ms as i64],
                        )?;
                        conn.last_insert_rowid()
                    }
                };
                let duration = k.stop_ms.saturating_sub(k.start_ms) as i64;
                conn.execute(
                    "INSERT INTO runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms, outcome, duration_ms, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'interrupted', ?7, ?8)",
                    params![
                        sid,
                        k.run_id as i64,
                        iid,
                        k.scheduled_ms as i64,
                        k.start_ms as i64,
                        k.stop_ms as i64,
                        duration,
                        k.error
                    ],
                )?;
                count_interrupted(&conn, sid, duration)?;
                Ok(true)
            }
        }
    })();
    match done {
        Ok(d) => {
            conn.execute_batch("COMMIT")?;
            Ok(d)
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading.

/// One recorded run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub chain: String,
    pub task: String,
    pub run_id: u64,
    pub host: String,
    pub scheduled_ms: Option<u64>,
    pub start_ms: u64,
    pub stop_ms: Option<u64>,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: Option<u64>,
    pub latency_ms: Option<u64>,
    pub output_bytes: u64,
    pub output_cut: bool,
    pub error: Option<String>,
    pub instance_pid: u32,
    pub version: String,
    pub config_digest: String,
}

/// The aggregates of one chain and task.
#[derive(Debug, Clone, Default)]
pub struct SeriesRow {
    pub chain: String,
    pub task: String,
    pub runs: u64,
    pub ok: u64,
    pub failed: u64,
    pub timeout: u64,
    pub signal: u64,
    pub spawn_error: u64,
    pub interrupted: u64,
    pub duration_sum_ms: u64,
    pub latency_sum_ms: u64,
    pub last_run_id: Option<u64>,
    pub last_outcome: Option<String>,
    pub last_exit_code: Option<i32>,
    pub last_scheduled_ms: Option<u64>,
    pub last_start_ms: Option<u64>,
    pub last_stop_ms: Option<u64>,
    pub last_duration_ms: Option<u64>,
    pub last_success_ms: Option<u64>,
    pub running_run_id: Option<u64>,
    pub running_since_ms: Option<u64>,
    pub streak_start_ms: Option<u64>,
    pub streak_failures: u64,
}

const RUN_COLUMNS: &str = "s.chain, s.task, r.run_id, i.host, r.scheduled_ms, r.start_ms, r.stop_ms, r.outcome,
    r.exit_code, r.signal, r.duration_ms, r.latency_ms, r.output_bytes, r.output_cut, r.error, i.pid, i.version,
    i.config_digest";

fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        chain: r.get(0)?,
        task: r.get(1)?,
        run_id: r.get::<_, i64>(2)? as u64,
        host: r.get(3)?,
        scheduled_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        start_ms: r.get::<_, i64>(5)? as u64,
        stop_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        outcome: r.get(7)?,
        exit_code: r.get(8)?,
        signal: r.get(9)?,
        duration_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        latency_ms: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        output_bytes: r.get::<_, i64>(12)? as u64,
        output_cut: r.get(13)?,
        error: r.get(14)?,
        instance_pid: r.get::<_, i64>(15)? as u32,
        version: r.get(16)?,
        config_digest: r.get(17)?,
    })
}

/// Series ids of `task`, in `chain` if given.
fn series_of(conn: &Connection, task: &str, chain: Option<&str>) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM series WHERE task = ?1 AND (?2 IS NULL OR chain = ?2) ORDER BY chain",
    )?;
    let ids = stmt
        .query_map(params![task, chain], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// The newest `limit` runs of `task` (in `chain`, or in every chain), newest first: by
/// start time, then run id, then chain name.
///
/// A series' runs are read newest first (by run id, along the index) and, as run ids
/// and start times grow together in a series, only as far as they can still be among
/// the newest `limit`: series are visited in the order of their newest run's start, and
/// the walk stops at the first run older than all of the `limit` kept so far. With 100
/// chains sharing a task that reads about 150 runs instead of 100 x `limit`.
pub fn history(
    conn: &Connection,
    task: &str,
    chain: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<RunRow>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// Newer ranks higher: start, then run id, then the chain named first.
    type Key = (u64, u64, Reverse<usize>);
    // Series of `task` with their newest run's start (None: no runs), in chain order.
    let mut heads: Vec<(usize, i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT s.id, (SELECT r.start_ms FROM runs r WHERE r.series = s.id ORDER BY r.run_id DESC LIMIT 1)
             FROM series s WHERE s.task = ?1 AND (?2 IS NULL OR s.chain = ?2) ORDER BY s.chain",
        )?
        .query_map(params![task, chain], |r| Ok((r.get(0)?, r.get(1)?)))?
        .enumerate()
        .map(|(rank, r)| r.map(|(id, head)| (rank, id, head)))
        .collect::<rusqlite::Result<_>>()?;
    heads.sort_by_key(|&(rank, _, head)| Reverse((head, Reverse(rank))));

    // The newest `limit` so far, the oldest of them on top.
    let mut kept: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
    let mut rows: Vec<RunRow> = Vec::new();
    let full = |kept: &BinaryHeap<Reverse<(Key, usize)>>, key: &Key| {
        kept.len() >= limit && kept.peek().is_some_and(|Reverse((min, _))| key < min)
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN series s ON s.id = r.series JOIN instances i ON i.id = r.instance
         WHERE r.series = ?1 ORDER BY r.run_id DESC LIMIT ?2"
    ))?;
    for (rank, sid, head) in heads {
        let Some(head) = head else { break };
        if full(&kept, &(head as u64, u64::MAX, Reverse(rank))) {
            // This series' newest run, and so every later series, is too old.
            break;
        }
        let mut found = stmt.query(params![sid, limit as i64])?;
        while let Some(r) = found.next()? {
            let row = run_row(r)?;
            let key = (row.start_ms, row.run_id, Reverse(rank));
            if full(&kept, &key) {
                break;
            }
            kept.push(Reverse((key, rows.len())));
            rows.push(row);
            if kept.len() > limit {
                kept.pop();
            }
        }
    }
    let mut newest: Vec<(Key, usize)> = kept.into_iter().map(|Reverse(k)| k).collect();
    newest.sort_unstable_by(|a, b| b.cmp(a));
    let mut rows: Vec<Option<RunRow>> = rows.into_iter().map(Some).collect();
    Ok(newest
        .into_iter()
        .filter_map(|(_, i)| rows[i].take())
        .collect())
}

/// The kept output of a run: `run_id`, or the newest (by start) of `task`.
pub fn output(
    conn: &Connection,
    task: &str,
    chain: Option<&str>,
    run_id: Option<u64>,
) -> rusqlite::Result<Option<(RunRow, Vec<u8>)>> {
    let mut best: Option<(RunRow, Vec<u8>)> = None;
    for sid in series_of(conn, task, chain)? {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS}, r.output FROM runs r JOIN series s ON s.id = r.series JOIN instances i ON i.id = r.instance
             WHERE r.series = ?1 AND (?2 IS NULL OR r.run_id = ?2) ORDER BY r.run_id DESC LIMIT 1"
        ))?;
        let found = stmt
            .query_row(params![sid, run_id.map(|r| r as i64)], |r| {
                Ok((
                    run_row(r)?,
                    r.get::<_, Option<Vec<u8>>>(18)?.unwrap_or_default(),
                ))
            })
            .optional()?;
        if let Some(f) = found {
            if best.as_ref().is_none_or(|b| f.0.start_ms > b.0.start_ms) {
                best = Some(f);
            }
        }
    }
    Ok(best)
}

const SERIES_COLUMNS: &str = "chain, task, runs, ok, failed, timeout, signal, spawn_error, interrupted,
    duration_sum_ms, latency_sum_ms, last_run_id, last_outcome, last_exit_code, last_scheduled_ms, last_start_ms,
    last_stop_ms, last_duration_ms, last_success_ms, running_run_id, running_since_ms, streak_start_ms,
    streak_failures";

fn series_row(r: &rusqlite::Row) -> rusqlite::Result<SeriesRow> {
    let u = |v: i64| v as u64;
    Ok(SeriesRow {
        chain: r.get(0)?,
        task: r.get(1)?,
        runs: u(r.get(2)?),
        ok: u(r.get(3)?),
        failed: u(r.get(4)?),
        timeout: u(r.get(5)?),
        signal: u(r.get(6)?),
        spawn_error: u(r.get(7)?),
        interrupted: u(r.get(8)?),
        duration_sum_ms: u(r.get(9)?),
        latency_sum_ms: u(r.get(10)?),
        last_run_id: r.get::<_, Option<i64>>(11)?.map(u),
        last_outcome: r.get(12)?,
        last_exit_code: r.get(13)?,
        last_scheduled_ms: r.get::<_, Option<i64>>(14)?.map(u),
        last_start_ms: r.get::<_, Option<i64>>(15)?.map(u),
        last_stop_ms: r.get::<_, Option<i64>>(16)?.map(u),
        last_duration_ms: r.get::<_, Option<i64>>(17)?.map(u),
        last_success_ms: r.get::<_, Option<i64>>(18)?.map(u),
        running_run_id: r.get::<_, Option<i64>>(19)?.map(u),
        running_since_ms: r.get::<_, Option<i64>>(20)?.map(u),
        streak_start_ms: r.get::<_, Option<i64>>(21)?.map(u),
        streak_failures: u(r.get(22)?),
    })
}

/// Every series (chain and task) with its aggregates.
pub fn series(conn: &Connection) -> rusqlite::Result<Vec<SeriesRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SERIES_COLUMNS} FROM series ORDER BY chain, task"
    ))?;
    let rows = stmt
        .query_map([], series_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Every series with its aggregates and its recent-runs window, in one pass over the
/// `series` table (schema version 3 or later).
pub fn series_with_recent(conn: &Connection) -> rusqlite::Result<Vec<(SeriesRow, Recent)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SERIES_COLUMNS}, recent FROM series ORDER BY chain, task"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            let blob = r.get_ref(23)?;
            let recent = unpack_recent(blob.as_blob_or_null()?.unwrap_or_default());
            Ok((series_row(r)?, recent))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Alerts decided, per (chain, task, kind).
pub fn alert_counts(conn: &Connection) -> rusqlite::Result<Vec<(String, String, String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.chain, s.task, a.kind, a.count FROM alerts a JOIN series s ON s.id = a.series",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Durations and latencies (ms) of recent runs.
pub type Recent = (Vec<u64>, Vec<u64>);

/// The recent-runs window of every series (one row each; nothing scans the runs).
pub fn recent(conn: &Connection) -> rusqlite::Result<HashMap<(String, String), Recent>> {
    let mut stmt = conn.prepare_cached("SELECT chain, task, recent FROM series")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<Vec<u8>>>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (chain, task, blob) = row?;
        out.insert(
            (chain, task),
            unpack_recent(blob.as_deref().unwrap_or_default()),
        );
    }
    Ok(out)
}

/// The chains in which `task` has recorded runs.
pub fn chains_of_task(conn: &Connection, task: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.chain FROM series s WHERE s.task = ?1 AND s.runs > 0 ORDER BY s.chain",
    )?;
    let rows = stmt
        .query_map(params![task], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// The chains in which `task` has a run `run_id`.
pub fn chains_with_run(
    conn: &Connection,
    task: &str,
    run_id: u64,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.chain FROM series s JOIN runs r ON r.series = s.id
         WHERE s.task = ?1 AND r.run_id = ?2 ORDER BY s.chain",
    )?;
    let rows = stmt
        .query_map(params![task, run_id as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(run_id: u64, start_ms: u64, keep_after_ms: u64) -> Op {
        Op::End(Box::new(RunEnd {
            chain: "c".into(),
            task: "t".into(),
            run_id,
            scheduled_ms: start_ms,
            start_ms,
            stop_ms: start_ms + 10,
            outcome: "ok",
            exit_code: Some(0),
            signal: None,
            error: None,
            output: Vec::new(),
            output_bytes: 0,
            output_cut: false,
            streak: None,
            keep_runs_max: 1_000_000,
            keep_after_ms,
        }))
    }

    fn kept(root: &Path) -> Vec<u64> {
        let conn = open_read(root).expect("open").expect("a store");
        let mut st = conn
            .prepare("SELECT run_id FROM runs ORDER BY run_id")
            .expect("prepare");
        let ids = st
            .query_map([], |r| r.get::<_, i64>(0))
            .expect("query")
            .map(|r| r.expect("row") as u64)
            .collect();
        ids
    }

    /// Runs older than keep_runs_for go as soon as they are, though the oldest run's
    /// start is looked up only when it may be old enough (the writer keeps a lower
    /// bound of it per series).
    #[test]
    fn runs_past_keep_runs_for_are_pruned_as_they_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::new(dir.path(), instance());
        // Runs 1 to 10 start a second apart; nothing is old yet.
        for id in 1..=10 {
            store.push(Mono::ZERO, end(id, id * 1000, 0));
        }
        assert_eq!(kept(dir.path()), (1..=10).collect::<Vec<_>>());
        // Then runs must be younger than 4.5 s: runs 1 to 4 go with run 11.
        store.push(Mono::ZERO, end(11, 11_000, 4500));
        assert_eq!(kept(dir.path()), (5..=11).collect::<Vec<_>>());
        // Time passes a little at each run: one more goes at each second boundary.
        for id in 12..=20 {
            store.push(Mono::ZERO, end(id, id * 1000, id * 1000 - 6500));
            let oldest = kept(dir.path())[0];
            assert_eq!(
                oldest * 1000,
                (id * 1000 - 6500).div_ceil(1000) * 1000,
                "after run {id}"
            );
        }
        // A long quiet spell: everything but the newest goes at the next run.
        store.push(Mono::ZERO, end(21, 100_000, 99_000));
        assert_eq!(kept(dir.path()), vec![21]);
        assert_eq!(store.pending(), 0);
    }

    fn instance() -> Instance {
        Instance {
            host: "h".into(),
            pid: 1,
            version: "v".into(),
            config_digest: "d".into(),
            started_ms: 0,
        }
    }

    /// The driver's write in line never waits: with another process's transaction
    /// holding the write lock it returns at once, the records kept in order for the
    /// writer thread's flush (which waits), and nothing is lost or written twice.
    #[test]
    fn a_write_in_line_does_not_wait_for_another_writer_and_keeps_its_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::new(dir.path(), instance());
        // Not open yet: nothing is written in line (opening is the thread's work).
        assert!(!store.write_now(Mono::ZERO, vec![end(1, 1000, 0)]));
        assert_eq!(store.pending(), 1);
        store.flush(Mono::ZERO);
        assert_eq!(store.pending(), 0);
        assert!(store.write_now(Mono::ZERO, vec![end(2, 2000, 0)]));
        assert_eq!(kept(dir.path()), vec![1, 2]);

        let other = Connection::open(path(dir.path())).expect("second connection");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let t = std::time::Instant::now();
        assert!(!store.write_now(Mono::ZERO, vec![end(3, 3000, 0)]));
        let waited = t.elapsed();
        // Behind a pending record, a later one is queued without a try.
        assert!(!store.write_now(Mono::ZERO, vec![end(4, 4000, 0)]));
        assert_eq!(store.pending(), 2);
        assert!(
            waited < BUSY_TIMEOUT,
            "the write in line waited {waited:?} for the lock"
        );
        other.execute_batch("COMMIT").expect("unlock");
        store.flush(Mono::ZERO);
        assert_eq!(store.pending(), 0);
        assert_eq!(kept(dir.path()), vec![1, 2, 3, 4]);
        // And it is written in line again.
        assert!(store.write_now(Mono::ZERO, vec![end(5, 5000, 0)]));
        assert_eq!(kept(dir.path()), vec![1, 2, 3, 4, 5]);
        // A run's end that prunes (here past keep_runs_max) is left to the flush.
        let mut pruning = end(6, 6000, 0);
        if let Op::End(e) = &mut pruning {
            e.keep_runs_max = 3;
        }
        assert!(!store.write_now(Mono::ZERO, vec![pruning]));
        assert_eq!(store.pending(), 1);
        store.flush(Mono::ZERO);
        assert_eq!(kept(dir.path()), vec![4, 5, 6]);
    }

    /// Another process with the store open holds SQLite's lock on the shm file's
    /// deadman-switch byte; with none, nobody does.
    #[test]
    fn another_connection_to_the_store_is_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = path(dir.path());
        assert!(no_other_connection(&db), "no store yet");
        let mut store = Store::new(dir.path(), instance());
        store.push(Mono::ZERO, end(1, 1000, 0));
        assert_eq!(store.pending(), 0);
        drop(store);
        assert!(no_other_connection(&db), "the store closed");
        // A python3 process (not this one: a process's own locks never conflict with
        // its own asking) opens it and reads, holding it open until told.
        let mut py = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('select count(*) from runs').fetchall(); print('open', flush=True); sys.stdin.read()")
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(py.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        assert_eq!(line.trim(), "open");
        assert!(!no_other_connection(&db), "python3 has the store open");
        drop(py.stdin.take());
        assert!(py.wait().expect("wait").success());
        assert!(no_other_connection(&db), "python3 closed it");
    }

    /// SQLite's own checkpoint rule is replaced by the WAL hook: past
    /// WAL_CHECKPOINT_FRAMES pages a checkpoint is due (the writer thread runs it), after
    /// it the WAL is written over from its start, so the file stays within
    /// WAL_SIZE_LIMIT however many runs are written.
    #[test]
    fn the_wal_is_checkpointed_past_its_limit_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::new(dir.path(), instance());
        let wal = dir.path().join("runs.db-wal");
        let (mut due, mut largest) = (0, 0);
        for id in 1..=4000 {
            if !store.write_now(Mono::ZERO, vec![end(id, id * 1000, 0)]) {
                store.flush(Mono::ZERO);
            }
            if store.checkpoint_due() {
                due += 1;
                store.checkpoint_if_due();
                assert!(!store.checkpoint_due());
            }
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert_eq!(store.pending(), 0);
        assert_eq!(kept(dir.path()).len(), 4000);
        assert!(due >= 2, "a checkpoint was due {due} times over 4000 runs");
        assert!(
            largest <= WAL_SIZE_LIMIT,
            "the WAL grew to {largest} bytes (limit {WAL_SIZE_LIMIT})"
        );
    }

    fn start(run_id: u64, start_ms: u64) -> Op {
        Op::Start(RunStart {
            chain: "c".into(),
            task: "t".into(),
            run_id,
            scheduled_ms: start_ms,
            start_ms,
            task_pid: Some(1234),
        })
    }

    /// (outcome, stop, duration, error) of run `id`, and the series' (runs, interrupted,
    /// running run).
    #[allow(clippy::type_complexity)]
    fn closed(
        root: &Path,
        id: u64,
    ) -> (
        (Option<String>, Option<i64>, Option<i64>, Option<String>),
        (i64, i64, Option<i64>),
    ) {
        let conn = open_read(root).expect("open").expect("a store");
        let run = conn
            .query_row(
                "SELECT outcome, stop_ms, duration_ms, error FROM runs WHERE run_id = ?1",
                params![id as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("the run");
        let series = conn
            .query_row(
                "SELECT runs, interrupted, running_run_id FROM series WHERE chain = 'c' AND task = 't'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("the series");
        (run, series)
    }

    fn killed(run_id: u64, start_ms: u64, stop_ms: u64) -> Killed<'static> {
        Killed {
            chain: "c",
            task: "t",
            run_id,
            scheduled_ms: start_ms,
            start_ms,
            stop_ms,
            error: "guardian",
        }
    }

    /// The guardian closes the open run with its time and error, once; the next launch's
    /// CloseOpen keeps that record and closes only what is still open, with its own time
    /// and END_NOT_KNOWN.
    #[test]
    fn the_guardians_record_is_kept_and_the_next_launch_closes_only_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = path(dir.path());
        let mut store = Store::new(dir.path(), instance());
        store.push(Mono::ZERO, start(1, 1_000));
        let never = std::time::Instant::now();
        assert_eq!(
            close_killed(&db, &instance(), &killed(1, 1_000, 5_800), never),
            Ok(true)
        );
        let want = (
            (
                Some("interrupted".to_string()),
                Some(5_800),
                Some(4_800),
                Some("guardian".to_string()),
            ),
            (1, 1, None),
        );
        assert_eq!(closed(dir.path(), 1), want);
        // Again (or after the next launch got there first): left alone.
        assert_eq!(
            close_killed(&db, &instance(), &killed(1, 1_000, 9_999), never),
            Ok(false)
        );
        assert_eq!(closed(dir.path(), 1), want);
        // Run 2 is left open (nobody recorded its end); the next launch closes it, and
        // only it.
        store.push(Mono::ZERO, start(2, 6_000));
        store.push(
            Mono::ZERO,
            Op::CloseOpen {
                chain: "c".into(),
                stop_ms: 20_000,
                running: Some(("t".into(), 2, 6_000)),
            },
        );
        assert_eq!(store.pending(), 0);
        assert_eq!(closed(dir.path(), 1).0, want.0);
        assert_eq!(
            closed(dir.path(), 2),
            (
                (
                    Some("interrupted".to_string()),
                    Some(20_000),
                    Some(14_000),
                    Some(END_NOT_KNOWN.to_string())
                ),
                (2, 2, None)
            )
        );
    }

    /// A run whose start was never written (run-chain killed in its first moments) is
    /// written whole by the guardian, under the dead instance's row if it has one.
    #[test]
    fn the_guardian_writes_a_run_whose_start_was_never_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = path(dir.path());
        // No store at all yet: it is made.
        let never = std::time::Instant::now();
        assert_eq!(
            close_killed(&db, &instance(), &killed(7, 1_000, 1_250), never),
            Ok(true)
        );
        let (run, series) = closed(dir.path(), 7);
        assert_eq!(run.0.as_deref(), Some("interrupted"));
        assert_eq!((run.1, run.2), (Some(1_250), Some(250)));
        assert_eq!(series, (1, 1, None));
        // With the instance's row there, the run is filed under it.
        let mut store = Store::new(dir.path(), instance());
        store.push(Mono::ZERO, end(8, 2_000, 0));
        assert_eq!(
            close_killed(&db, &instance(), &killed(9, 3_000, 3_100), never),
            Ok(true)
        );
        let conn = open_read(dir.path()).expect("open").expect("a store");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))
            .expect("count");
        // One from the guardian's first record (no instance yet), one from the writer;
        // the second record found the writer's.
        assert_eq!(n, 2);
        let of9: i64 = conn
            .query_row("SELECT instance FROM runs WHERE run_id = 9", [], |r| {
                r.get(0)
            })
            .expect("run 9");
        let of8: i64 = conn
            .query_row("SELECT instance FROM runs WHERE run_id = 8", [], |r| {
                r.get(0)
            })
            .expect("run 8");
        assert_eq!(of9, of8);
    }

    /// A store locked by another connection is tried again until the deadline, then
    /// given up: the guardian never waits for ever.
    #[test]
    fn the_guardian_gives_up_on_a_store_locked_past_its_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = path(dir.path());
        let mut store = Store::new(dir.path(), instance());
        store.push(Mono::ZERO, start(1, 1_000));
        let other = Connection::open(&db).expect("second connection");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let t = std::time::Instant::now();
        let r = close_killed(
            &db,
            &instance(),
            &killed(1, 1_000, 2_000),
            t + Duration::from_millis(600),
        );
        assert!(r.is_err(), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        other.execute_batch("COMMIT").expect("unlock");
        assert_eq!(closed(dir.path(), 1).0 .0, None, "still open");
    }

    #[test]
    fn recent_window_keeps_the_newest() {
        let mut blob = Vec::new();
        for i in 0..250u64 {
            blob = push_recent(&blob, i, 1000 + i);
        }
        let (d, l) = unpack_recent(&blob);
        assert_eq!(d.len(), RECENT_WINDOW);
        assert_eq!(d[0], 150);
        assert_eq!(*d.last().expect("last"), 249);
        assert_eq!(*l.last().expect("last"), 1249);
    }
}
