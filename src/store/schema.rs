//! The SQLite file: its schema and migrations, opening it for writing (created mode 0600,
//! configured and migrated), and setting a corrupt one aside.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;
/// How long a write waits for another process's transaction (chains of one RUN_ROOT
/// share the file; theirs are short). Past it the records are queued, not waited for.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

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
    // 4: why each run was started (schedule, kick, manual: `run-now`) and who asked for a
    // manual one; runs recorded before count as scheduled. A run-now run accepted and
    // not yet started is a row with outcome `queued`. The series count kicked and manual
    // runs (the scheduled ones are the rest), for metrics that pruning never lowers.
    "ALTER TABLE runs ADD COLUMN \"trigger\" TEXT NOT NULL DEFAULT 'schedule';
    ALTER TABLE runs ADD COLUMN requested_by TEXT;
    ALTER TABLE series ADD COLUMN runs_kick INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE series ADD COLUMN runs_manual INTEGER NOT NULL DEFAULT 0;",
];

pub(super) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
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
pub(super) fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
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
pub(crate) const WAL_CHECKPOINT_FRAMES: i32 = 4000;
/// The size the WAL file is cut back to when it is started over: what the rule above
/// lets it reach, so that it is overwritten in place rather than cut and grown again.
pub(super) const WAL_SIZE_LIMIT: u64 = 17 << 20;
/// A WAL larger than this is checkpointed (and truncated) when a chain first writes.
pub(super) const WAL_OPEN_MAX: u64 = 2 << 20;
/// A WAL larger than this is checkpointed (and truncated) when a chain exits.
pub(super) const WAL_EXIT_MAX: u64 = 20 << 20;
/// How long that checkpoint waits for other connections.
pub(super) const EXIT_CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

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
pub(super) fn open_rw(path: &Path) -> rusqlite::Result<Connection> {
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

/// Move a store that SQLite reports corrupt aside and start a fresh one, under
/// `runs.db.lock` so that only one process acts. Returns the new name, if renamed.
pub(super) fn set_aside_if_corrupt(path: &Path) -> std::io::Result<Option<PathBuf>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by the previous version (schema 3) migrates: its runs count as
    /// scheduled, with nobody who asked, and new runs can say why they were started.
    #[test]
    fn a_version_3_store_migrates_to_triggers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.db");
        {
            let conn = Connection::open(&path).expect("open");
            for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
                conn.execute_batch(sql).expect("migrate to 3");
                conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                    .expect("version");
            }
            conn.execute_batch(
                "INSERT INTO series (id, chain, task) VALUES (1, 'c', 't');
                 INSERT INTO runs (series, run_id, instance, start_ms, outcome) VALUES (1, 1, 1, 5, 'ok');",
            )
            .expect("a run of version 3");
        }
        let conn = open_rw(&path).expect("open and migrate");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
        let (trigger, by): (String, Option<String>) = conn
            .query_row(
                "SELECT \"trigger\", requested_by FROM runs WHERE run_id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the old run");
        assert_eq!((trigger.as_str(), by), ("schedule", None));
        conn.execute(
            "INSERT INTO runs (series, run_id, instance, start_ms, outcome, \"trigger\", requested_by)
             VALUES (1, 2, 1, 6, 'queued', 'manual', 'alice on pts/3')",
            [],
        )
        .expect("a manual run");
        drop(conn);
        // Opening again changes nothing.
        let conn = open_rw(&path).expect("open again");
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM runs WHERE \"trigger\" = 'manual'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 1);
    }
}
