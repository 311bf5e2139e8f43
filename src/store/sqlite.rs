//! The SQLite store (`RUN_ROOT/runs.db`), the write side: [`Sqlite`] applies a batch of
//! ops in one `BEGIN IMMEDIATE` transaction ([`StoreWrite`]), and runs the WAL's
//! checkpoints, which the chain's writer ([`super::Store`]) schedules.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode};

use super::apply::*;
use super::killed::apply_killed;
use super::schema::*;
use super::seam::{Owner, StoreWrite, WriteError};
use super::*;

/// The SQLite store of a chain's writer: a connection (when it has one) and what it
/// learnt through it.
pub struct Sqlite {
    path: PathBuf,
    instance: Instance,
    conn: Option<Connection>,
    instance_id: Option<i64>,
    series_ids: HashMap<(String, String), i64>,
    /// What the writer knows of its series without reading them (see [`Known`]).
    known: Known,
    /// The WAL's length in pages after this connection's last commit (SQLite's WAL hook
    /// sets it; boxed, so that its address stays put for the hook).
    wal_frames: Box<AtomicI32>,
    /// The WAL is to be copied back and cut after the first write (see `write`).
    truncate_after_write: bool,
    /// Set while a checkpoint runs with no record of ours waiting ([`Sqlite::copying`]).
    copying: Arc<AtomicBool>,
    /// Whether the last batch's [`Op::Killed`] closed its run (false: it was closed
    /// already); None if it had none.
    killed: Option<bool>,
}

/// Whether no other process has the store at `path` open: none holds the lock SQLite's
/// connections hold on the "deadman switch" byte of `runs.db-shm` for as long as they
/// are open. Asked before this process opens the store: closing a descriptor of a file
/// drops every lock the process holds on it, SQLite's included.
pub(super) fn no_other_connection(path: &Path) -> bool {
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
    // SAFETY: ctx is the AtomicI32 in the Sqlite's box, registered with this connection
    // and outliving it (the connection is dropped or replaced before the box).
    let frames_seen = unsafe { &*(ctx as *const AtomicI32) };
    frames_seen.store(frames, Ordering::Relaxed);
    rusqlite::ffi::SQLITE_OK
}

impl Sqlite {
    /// The store in `run_root`, written as `instance`. Opening is tried at the first
    /// write and again at every retry: a store that cannot be opened does not stop the
    /// chain.
    pub(crate) fn new(run_root: &Path, instance: Instance) -> Sqlite {
        Sqlite::at(&path(run_root), instance)
    }

    /// [`Sqlite::new`], for the store file at `path` (the guardian's: it works from `/`).
    pub(crate) fn at(path: &Path, instance: Instance) -> Sqlite {
        Sqlite {
            path: path.to_path_buf(),
            instance,
            conn: None,
            instance_id: None,
            series_ids: HashMap::new(),
            known: Known::default(),
            wal_frames: Box::new(AtomicI32::new(0)),
            truncate_after_write: false,
            copying: Arc::new(AtomicBool::new(false)),
            killed: None,
        }
    }

    /// Whether the [`Op::Killed`] of the last batch applied closed its run (false: it
    /// was closed already, or there was none).
    pub(crate) fn took_killed(&self) -> bool {
        self.killed == Some(true)
    }

    /// True while this store's connection copies the WAL back with no record of ours
    /// waiting to be written: an exit then need not wait for it (a checkpoint cut off
    /// leaves the store as it was, the WAL still whole; the next one copies it again).
    pub(crate) fn copying(&self) -> Arc<AtomicBool> {
        self.copying.clone()
    }

    /// Whether the store is open (a write in line is tried only then: opening is the
    /// writer thread's work).
    pub(crate) fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Whether a run's end in `ops` prunes old runs (their pages may have to be read from
    /// the disk, and a lowered `keep_runs_max` deletes up to a thousand rows a run).
    pub(crate) fn prunes(&self, ops: &[Op]) -> bool {
        ops.iter().any(|op| match op {
            Op::End(e) => {
                e.run_id > e.keep_runs_max
                    || self
                        .series_ids
                        .get(&(e.chain.clone(), e.task.clone()))
                        .and_then(|sid| self.known.oldest.get(sid))
                        .is_none_or(|oldest| *oldest < e.keep_after_ms as i64)
            }
            _ => false,
        })
    }

    /// With `brief`, another process's transaction is waited for about 1 ms at most
    /// ([`brief_wait`]: a write in line); without, up to BUSY_TIMEOUT.
    pub(crate) fn wait_briefly(&self, brief: bool) {
        if let Some(conn) = &self.conn {
            if brief {
                let _ = conn.busy_handler(Some(brief_wait));
            } else {
                let _ = conn.busy_timeout(BUSY_TIMEOUT);
            }
        }
    }

    /// Run a checkpoint statement, flagged in [`Sqlite::copying`] if `idle` (no record
    /// of ours waiting).
    fn copy_back(&self, sql: &str, idle: bool) -> rusqlite::Result<i64> {
        let Some(conn) = &self.conn else {
            return Ok(0);
        };
        self.copying.store(idle, Ordering::Release);
        let r = conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        self.copying.store(false, Ordering::Release);
        r
    }

    /// Whether the WAL is to be cut after the first write (see `write`).
    pub(crate) fn truncate_due(&self) -> bool {
        self.truncate_after_write
    }

    /// Cut the WAL if it is due after the first write: called with no record waiting.
    pub(crate) fn truncate_if_due(&mut self) {
        if std::mem::take(&mut self.truncate_after_write) {
            self.truncate_at_open();
        }
    }

    /// After a panic on a thread that held the store: roll back a transaction left open
    /// (it would hold the write lock of every chain of the RUN_ROOT) and forget what was
    /// looked up in it.
    pub(crate) fn recover(&mut self) {
        if let Some(conn) = &self.conn {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        self.known = Known::default();
        self.series_ids.clear();
    }

    /// Whether the WAL has passed WAL_CHECKPOINT_FRAMES pages at this connection's last
    /// commit: [`Sqlite::checkpoint_if_due`] is to run (where waiting on the disk is fine).
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.wal_frames.load(Ordering::Relaxed) >= WAL_CHECKPOINT_FRAMES
    }

    /// Copy the WAL back (PASSIVE: it never waits for readers) if it is due.
    pub(crate) fn checkpoint_if_due(&mut self, idle: bool) {
        if self.checkpoint_due() {
            self.wal_frames.store(0, Ordering::Relaxed);
            self.checkpoint(idle);
        }
    }

    /// At exit, with no record waiting: checkpoint only if the WAL has grown large (see
    /// WAL_EXIT_MAX), so that an exit stays quick but the WAL stays bounded across any
    /// number of instances.
    pub(crate) fn checkpoint_if_large(&mut self) {
        if self.wal_bytes() <= WAL_EXIT_MAX {
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
                self.checkpoint(true);
            }
            Err(e) => log::debug!("store checkpoint at exit: {e}"),
        }
    }

    fn wal_bytes(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    fn checkpoint(&mut self, idle: bool) {
        if let Err(e) = self.copy_back("PRAGMA wal_checkpoint(PASSIVE)", idle) {
            log::debug!("store checkpoint: {e}");
        }
    }

    /// The WAL copied back and cut after the first write of an instance that opened the
    /// store alone (see `write`); it never waits for another connection.
    fn truncate_at_open(&mut self) {
        if let Some(conn) = &self.conn {
            let _ = conn.busy_timeout(Duration::ZERO);
        }
        if let Err(e) = self.copy_back("PRAGMA wal_checkpoint(TRUNCATE)", true) {
            log::debug!("store checkpoint at open: {e}");
        }
        if let Some(conn) = &self.conn {
            let _ = conn.busy_timeout(BUSY_TIMEOUT);
        }
    }

    /// Write `batch` in one transaction.
    fn write(&mut self, batch: &[Op]) -> rusqlite::Result<()> {
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
        // The guardian's record of a killed run adds the instance's row only if it must.
        let needs_instance = batch.iter().any(|op| !matches!(op, Op::Killed(_)));
        self.killed = None;
        let written = (|| {
            let instance_id = match self.instance_id {
                Some(id) => Some(id),
                None if needs_instance => {
                    let i = &self.instance;
                    conn.execute(
                        "INSERT INTO instances (host, pid, version, config_digest, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![i.host, i.pid, i.version, i.config_digest, i.started_ms as i64],
                    )?;
                    Some(conn.last_insert_rowid())
                }
                None => None,
            };
            // Some whenever an op other than Killed is applied.
            let iid = instance_id.unwrap_or_default();
            let mut ops = batch.iter().peekable();
            while let Some(op) = ops.next() {
                // A short run's start and end come together (the recorder holds the
                // start for them): one row insert, one series update.
                if let (Op::Start(st), Some(Op::End(e))) = (op, ops.peek()) {
                    if (&st.chain, &st.task, st.run_id) == (&e.chain, &e.task, e.run_id) {
                        apply_end(
                            conn,
                            e,
                            iid,
                            &mut series_ids,
                            &mut self.known,
                            Some(st.task_pid),
                        )?;
                        ops.next();
                        continue;
                    }
                }
                match op {
                    Op::Killed(k) => {
                        let closed = apply_killed(conn, k, &self.instance, &mut series_ids)?;
                        self.killed = Some(closed);
                    }
                    _ => apply(conn, op, iid, &mut series_ids, &mut self.known)?,
                }
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
        self.instance_id = instance_id;
        self.series_ids = series_ids;
        Ok(())
    }
}

impl StoreWrite for Sqlite {
    /// SQLite has no owner to check: the chain's lock file keeps other instances out.
    fn apply(&mut self, batch: &[Op], _owner: &Owner) -> Result<(), WriteError> {
        self.write(batch).map_err(|e| {
            let msg = e.to_string();
            if is_corrupt(&e) {
                WriteError::Corrupt(msg)
            } else if matches!(
                // Locked as busy: both are another connection's lock, and the guardian's
                // record waits for either (`close_killed`).
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ) {
                WriteError::Busy(msg)
            } else {
                WriteError::Other(msg)
            }
        })
    }

    /// A file SQLite reports corrupt is confirmed with `PRAGMA quick_check` under
    /// `runs.db.lock` (so that one process acts) and renamed `runs.db.corrupt-TIMESTAMP`.
    fn set_aside(&mut self) -> bool {
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
                true
            }
            Ok(None) => false,
            Err(io) => {
                log::error!(
                    "store {} looks corrupt and cannot be moved aside: {io}",
                    self.path.display()
                );
                false
            }
        }
    }

    fn reset(&mut self) {
        self.conn = None;
        self.instance_id = None;
        self.series_ids.clear();
        self.known = Known::default();
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Mono;

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
            trigger: "schedule",
            requested_by: None,
            streak: None,
            keep_runs_max: 1_000_000,
            keep_after_ms,
        }))
    }

    fn kept(root: &Path) -> Vec<u64> {
        let reader = open_read(root).expect("open").expect("a store");
        let conn = reader.conn();
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
            trigger: "schedule",
            requested_by: None,
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
        let reader = open_read(root).expect("open").expect("a store");
        let conn = reader.conn();
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

    fn killed(run_id: u64, start_ms: u64, stop_ms: u64) -> Killed {
        Killed {
            chain: "c".into(),
            task: "t".into(),
            run_id,
            scheduled_ms: start_ms,
            start_ms,
            stop_ms,
            error: "guardian".into(),
        }
    }

    /// A `queued` run (run-now) is not a run left open: the next launch keeps the one it
    /// carries on, removes any other (a request dropped with its task), and the run's
    /// start replaces the row, keeping its trigger and who asked.
    #[test]
    fn queued_runs_are_kept_for_the_request_carried_on_and_replaced_by_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::new(dir.path(), instance());
        let queued = |run_id| {
            Op::Queued(RunStart {
                chain: "c".into(),
                task: "t".into(),
                run_id,
                scheduled_ms: 1_000,
                start_ms: 1_000,
                task_pid: None,
                trigger: "manual",
                requested_by: Some("alice on pts/3".into()),
            })
        };
        store.push(Mono::ZERO, queued(5));
        store.push(Mono::ZERO, queued(6));
        store.push(
            Mono::ZERO,
            Op::CloseOpen {
                chain: "c".into(),
                stop_ms: 20_000,
                running: None,
                queued: Some(("t".into(), 6)),
            },
        );
        assert_eq!(store.pending(), 0);
        let rows = |root: &Path| -> Vec<(i64, Option<String>, String, Option<String>)> {
            let reader = open_read(root).expect("open").expect("a store");
            let conn = reader.conn();
            let mut st = conn
                .prepare(
                    "SELECT run_id, outcome, \"trigger\", requested_by FROM runs ORDER BY run_id",
                )
                .expect("select");
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .expect("rows")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        let by = Some("alice on pts/3".to_string());
        assert_eq!(
            rows(dir.path()),
            vec![(6, Some("queued".into()), "manual".into(), by.clone())]
        );
        let mut st = start(6, 30_000);
        if let Op::Start(s) = &mut st {
            s.trigger = "manual";
            s.requested_by = by.clone();
        }
        store.push(Mono::ZERO, st);
        assert_eq!(store.pending(), 0);
        assert_eq!(rows(dir.path()), vec![(6, None, "manual".into(), by)]);
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
                queued: None,
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
        let reader = open_read(dir.path()).expect("open").expect("a store");
        let conn = reader.conn();
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
