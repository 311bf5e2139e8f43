//! What the readers (`status`, `history`, `log`, the metrics, a launch seeding its run
//! ids) query: rows out, by indexed look-ups and the `series` aggregates, never a scan of
//! the history.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::pg::reader::{self as pg, PgReader};
use super::schema::*;
use super::*;
use crate::core::supervisor::{StoredRead, StoredRun};

/// The read side of the store: what `status`, `history`, `log`, the metrics and the
/// alert mails read, as plain rows ([`RunRow`], [`SeriesRow`], ...), from RUN_ROOT's
/// SQLite file or from the fleet's PostgreSQL store (`store/pg/reader.rs` holds its SQL).
/// Only `store/` knows which.
pub(crate) enum Reader {
    Sqlite(Lite),
    Pg(PgReader),
}

/// An SQLite store open for reading.
pub(crate) struct Lite {
    pub(super) conn: Connection,
    /// The schema version the store was found at (`PRAGMA user_version`, at least 1).
    pub(super) version: i64,
}

impl Reader {
    /// The schema version of the store, in SQLite's numbering (1 to [`SCHEMA_VERSION`]):
    /// which tables and columns it has (the recent-runs window since 3, the alert counts
    /// since 2). The fleet's store has all of them.
    pub(crate) fn schema_version(&self) -> i64 {
        match self {
            Reader::Sqlite(l) => l.version,
            Reader::Pg(_) => SCHEMA_VERSION,
        }
    }

    /// How long a read waits for a writer's lock before it fails (5 s when opened; the
    /// fleet's store has its own timeout per statement).
    pub(crate) fn busy_timeout(&self, wait: Duration) -> Result<(), ReadError> {
        match self {
            Reader::Sqlite(l) => Ok(l.conn.busy_timeout(wait)?),
            Reader::Pg(_) => Ok(()),
        }
    }

    /// The connection, for the store's own tests.
    #[cfg(test)]
    pub(super) fn conn(&self) -> &Connection {
        match self {
            Reader::Sqlite(l) => &l.conn,
            Reader::Pg(_) => panic!("not an SQLite reader"),
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("version", &self.schema_version())
            .field("pg", &matches!(self, Reader::Pg(_)))
            .finish()
    }
}

/// The SQLite side of `reader`, or return what the fleet's store answers (`$pg`).
macro_rules! lite_or {
    ($reader:expr, $p:ident => $pg:expr) => {
        match $reader {
            Reader::Sqlite(l) => l,
            Reader::Pg($p) => return $pg.map_err(ReadError::from),
        }
    };
}

/// A read that failed (the store's own message, e.g. "database is locked").
#[derive(Debug)]
pub(crate) struct ReadError(String);

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for ReadError {
    fn from(e: String) -> ReadError {
        ReadError(e)
    }
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> ReadError {
        ReadError(e.to_string())
    }
}

/// Open the store for reading (status, history, log). None: there is no store yet.
pub(crate) fn open_read(run_root: &Path) -> Result<Option<Reader>, String> {
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
    Ok(Some(Reader::Sqlite(Lite { conn, version })))
}

/// Open the fleet's store (`[store]`) for reading its records: None while its schema
/// keeps no records (version 1: the leases only; the records are then in each host's
/// RUN_ROOT). Connects from the caller's thread, with a short timeout.
pub(crate) fn open_fleet_read(
    cfg: &crate::config::FleetConfig,
) -> Result<Option<Reader>, super::pg::conn::ConnError> {
    Ok(pg::open(cfg)?.map(Reader::Pg))
}

impl Reader {
    /// The fleet's leases, through this reader's connection (None: an SQLite reader).
    pub(crate) fn fleet(
        &self,
        lease: Duration,
    ) -> Option<Result<super::pg::reader::FleetRows, String>> {
        match self {
            Reader::Pg(p) => Some(p.fleet(lease)),
            Reader::Sqlite(_) => None,
        }
    }
}

/// The highest run id the store knows for each task of `chain` (its series' last and
/// running run, and its newest kept run). A chain whose CHAIN.state was lost starts its
/// counters from these, so that a run id is never given twice (an id given again would
/// replace the stored run that had it).
pub(crate) fn last_run_ids(run_root: &Path, chain: &str) -> Result<BTreeMap<String, u64>, String> {
    let Some(Reader::Sqlite(reader)) = open_read(run_root)? else {
        return Ok(BTreeMap::new());
    };
    let conn = &reader.conn;
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

/// One recorded run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RunRow {
    pub(crate) chain: String,
    pub(crate) task: String,
    pub(crate) run_id: u64,
    pub(crate) host: String,
    pub(crate) scheduled_ms: Option<u64>,
    pub(crate) start_ms: u64,
    pub(crate) stop_ms: Option<u64>,
    pub(crate) outcome: Option<String>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) duration_ms: Option<u64>,
    pub(crate) latency_ms: Option<u64>,
    pub(crate) output_bytes: u64,
    pub(crate) output_cut: bool,
    pub(crate) error: Option<String>,
    pub(crate) instance_pid: u32,
    pub(crate) version: String,
    pub(crate) config_digest: String,
    /// schedule, kick or manual (schedule for runs recorded before schema 4).
    pub(crate) trigger: String,
    /// Who asked for a manual run.
    pub(crate) requested_by: Option<String>,
}

/// The aggregates of one chain and task.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeriesRow {
    pub(crate) chain: String,
    pub(crate) task: String,
    pub(crate) runs: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) timeout: u64,
    pub(crate) signal: u64,
    pub(crate) spawn_error: u64,
    pub(crate) interrupted: u64,
    pub(crate) duration_sum_ms: u64,
    pub(crate) latency_sum_ms: u64,
    pub(crate) last_run_id: Option<u64>,
    pub(crate) last_outcome: Option<String>,
    pub(crate) last_exit_code: Option<i32>,
    pub(crate) last_scheduled_ms: Option<u64>,
    pub(crate) last_start_ms: Option<u64>,
    pub(crate) last_stop_ms: Option<u64>,
    pub(crate) last_duration_ms: Option<u64>,
    pub(crate) last_success_ms: Option<u64>,
    pub(crate) running_run_id: Option<u64>,
    pub(crate) running_since_ms: Option<u64>,
    pub(crate) streak_start_ms: Option<u64>,
    pub(crate) streak_failures: u64,
}

pub(super) const RUN_COLUMNS: &str = "s.chain, s.task, r.run_id, i.host, r.scheduled_ms, r.start_ms, r.stop_ms, r.outcome,
    r.exit_code, r.signal, r.duration_ms, r.latency_ms, r.output_bytes, r.output_cut, r.error, i.pid, i.version,
    i.config_digest";

/// The run's trigger and who asked, after [`RUN_COLUMNS`]: a store of schema 3 or older
/// (not migrated yet: no chain has written to it since the upgrade) has neither.
pub(super) fn trigger_columns(version: i64) -> &'static str {
    if version >= 4 {
        "r.\"trigger\", r.requested_by"
    } else {
        "'schedule', NULL"
    }
}

pub(super) fn run_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
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
        trigger: r.get(18)?,
        requested_by: r.get(19)?,
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
pub(crate) fn history(
    reader: &Reader,
    task: &str,
    chain: Option<&str>,
    limit: usize,
) -> Result<Vec<RunRow>, ReadError> {
    let reader = lite_or!(reader, p => pg::history(p, task, chain, limit));
    let conn = &reader.conn;
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
        "SELECT {RUN_COLUMNS}, {} FROM runs r JOIN series s ON s.id = r.series JOIN instances i ON i.id = r.instance
         WHERE r.series = ?1 ORDER BY r.run_id DESC LIMIT ?2",
        trigger_columns(reader.version)
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
pub(crate) fn output(
    reader: &Reader,
    task: &str,
    chain: Option<&str>,
    run_id: Option<u64>,
) -> Result<Option<(RunRow, Vec<u8>)>, ReadError> {
    let reader = lite_or!(reader, p => pg::output(p, task, chain, run_id));
    let conn = &reader.conn;
    let mut best: Option<(RunRow, Vec<u8>)> = None;
    for sid in series_of(conn, task, chain)? {
        // The latest run is one that has started: a `queued` run (run-now) has no output
        // yet, and is shown only when asked for by its id.
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS}, {}, r.output FROM runs r JOIN series s ON s.id = r.series JOIN instances i ON i.id = r.instance
             WHERE r.series = ?1 AND (?2 IS NULL OR r.run_id = ?2)
             AND (?2 IS NOT NULL OR r.outcome IS NULL OR r.outcome <> 'queued')
             ORDER BY r.run_id DESC LIMIT 1",
            trigger_columns(reader.version)
        ))?;
        let found = stmt
            .query_row(params![sid, run_id.map(|r| r as i64)], |r| {
                Ok((
                    run_row(r)?,
                    r.get::<_, Option<Vec<u8>>>(20)?.unwrap_or_default(),
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

/// For an alert mail of `chain`'s `task` in an instance that did not see the streak's
/// last failed run: that run (`run_id`; None: the task's newest failed run among its
/// last 20) with its output, and the chain's last durations (for the mail's next
/// attempt), from RUN_ROOT's SQLite store. Seldom called, so the store is opened for it
/// and closed after; the loop waits for it, so a busy store is given up on soon (the
/// mail says so). Durations read before a failure are kept. The fleet's store is never
/// read here (the loop makes no database call): its chain's DB thread reads the same
/// when it acquires the lease ([`fleet_failed_runs`]).
pub(crate) fn failed_run(
    run_root: &Path,
    chain: &str,
    task: &str,
    run_id: Option<u64>,
) -> StoredRead {
    let mut durations = Vec::new();
    let failed = (|| {
        let Some(reader) = open_read(run_root)? else {
            return Ok(None);
        };
        let _ = reader.busy_timeout(Duration::from_millis(500));
        if let Ok(series) = series(&reader) {
            durations.extend(
                series
                    .into_iter()
                    .filter(|s| s.chain == chain)
                    .filter_map(|s| Some((s.task, s.last_duration_ms?))),
            );
        }
        failed_run_in(&reader, chain, task, run_id)
    })();
    StoredRead { durations, failed }
}

/// The failed run of [`failed_run`], read through `reader`.
fn failed_run_in(
    reader: &Reader,
    chain: &str,
    task: &str,
    run_id: Option<u64>,
) -> Result<Option<StoredRun>, String> {
    let failed_outcome = |r: &RunRow| {
        crate::core::alert_mail::failed_outcome(
            r.outcome.as_deref(),
            r.exit_code,
            r.signal,
            r.error.as_deref(),
        )
    };
    let id = match run_id {
        Some(id) => id,
        None => {
            let runs = history(reader, task, Some(chain), 20).map_err(|e| e.to_string())?;
            match runs.into_iter().find(|r| failed_outcome(r).is_some()) {
                Some(r) => r.run_id,
                None => return Ok(None),
            }
        }
    };
    let Some((row, output)) =
        output(reader, task, Some(chain), Some(id)).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    Ok(failed_outcome(&row).map(|outcome| StoredRun {
        run_id: row.run_id,
        outcome,
        start_ms: row.start_ms,
        duration_ms: row.duration_ms.unwrap_or(0),
        output,
        output_bytes: row.output_bytes,
    }))
}

/// On the chain's DB thread, over its connection (given back with the answer), each
/// statement within `wait`: for each (task, run id) of `wanted`, what [`failed_run`]
/// reads, from the fleet's store (the run may be another host's), for the alert mails
/// of a new owner. The first statement that fails ends the reads: that task and the
/// ones after it get its error (their mails say the run could not be read).
pub(crate) fn fleet_failed_runs(
    conn: super::pg::conn::Conn,
    chain: &str,
    wanted: &[(String, Option<u64>)],
    wait: Duration,
) -> (super::pg::conn::Conn, Vec<(String, StoredRead)>) {
    let p = PgReader::over(conn, wait);
    let mut error = None;
    let durations = pg::durations(&p, chain).unwrap_or_else(|e| {
        error = Some(e);
        Vec::new()
    });
    let reader = Reader::Pg(p);
    let mut out = Vec::new();
    for (task, id) in wanted {
        let failed = match &error {
            Some(e) => Err(e.clone()),
            None => failed_run_in(&reader, chain, task, *id),
        };
        if let Err(e) = &failed {
            error.get_or_insert_with(|| e.clone());
        }
        out.push((
            task.clone(),
            StoredRead {
                durations: durations.clone(),
                failed,
            },
        ));
    }
    let Reader::Pg(p) = reader else {
        unreachable!("made as a PG reader above")
    };
    (p.into_conn(), out)
}

/// Every series (chain and task) with its aggregates.
pub(crate) fn series(reader: &Reader) -> Result<Vec<SeriesRow>, ReadError> {
    let reader = lite_or!(reader, p => pg::series(p).map(|v| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>()));
    let conn = &reader.conn;
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
pub(crate) fn series_with_recent(reader: &Reader) -> Result<Vec<(SeriesRow, Recent)>, ReadError> {
    let reader = lite_or!(reader, p => pg::series(p));
    let conn = &reader.conn;
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

/// Kicked and manual runs, per (chain, task): (kick, manual). None before schema 4.
pub(crate) fn trigger_counts(
    reader: &Reader,
) -> Result<Vec<(String, String, u64, u64)>, ReadError> {
    let reader = lite_or!(reader, p => pg::trigger_counts(p));
    if reader.version < 4 {
        return Ok(Vec::new());
    }
    let mut stmt = reader
        .conn
        .prepare_cached("SELECT chain, task, runs_kick, runs_manual FROM series")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)?.max(0) as u64,
                r.get::<_, i64>(3)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Alerts decided, per (chain, task, kind).
pub(crate) fn alert_counts(
    reader: &Reader,
) -> Result<Vec<(String, String, String, u64)>, ReadError> {
    let reader = lite_or!(reader, p => pg::alert_counts(p));
    let conn = &reader.conn;
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

/// The chains in which `task` has recorded runs.
pub(crate) fn chains_of_task(reader: &Reader, task: &str) -> Result<Vec<String>, ReadError> {
    let reader = lite_or!(reader, p => pg::chains_of_task(p, task));
    let conn = &reader.conn;
    let mut stmt = conn.prepare_cached(
        "SELECT s.chain FROM series s WHERE s.task = ?1 AND s.runs > 0 ORDER BY s.chain",
    )?;
    let rows = stmt
        .query_map(params![task], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}

/// The chains in which `task` has a run `run_id`.
pub(crate) fn chains_with_run(
    reader: &Reader,
    task: &str,
    run_id: u64,
) -> Result<Vec<String>, ReadError> {
    let reader = lite_or!(reader, p => pg::chains_with_run(p, task, run_id));
    let conn = &reader.conn;
    let mut stmt = conn.prepare_cached(
        "SELECT s.chain FROM series s JOIN runs r ON r.series = s.id
         WHERE s.task = ?1 AND r.run_id = ?2 ORDER BY s.chain",
    )?;
    let rows = stmt
        .query_map(params![task, run_id as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(rows)
}
