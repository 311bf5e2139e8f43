//! `store import PATH`'s SQLite side: a host's `runs.db`, opened read-only, read into
//! plain data (no rusqlite type leaves `store/`) for the fleet's import (`store/pg/import.rs`).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::schema::SCHEMA_VERSION;

/// The counters of a series that an import adds, in this order (same names in PG).
pub(crate) const COUNTERS: [&str; 11] = [
    "runs",
    "ok",
    "failed",
    "timeout",
    "signal",
    "spawn_error",
    "interrupted",
    "duration_sum_ms",
    "latency_sum_ms",
    "runs_kick",
    "runs_manual",
];

/// The series' "last run" columns, in this order (same names in PG; last_run_id apart).
pub(crate) const LASTS: [&str; 7] = [
    "last_exit_code",
    "last_scheduled_ms",
    "last_start_ms",
    "last_stop_ms",
    "last_duration_ms",
    "last_success_ms",
    "streak_start_ms",
];

/// One run of the source store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SrcRun {
    pub(crate) run_id: i64,
    /// The source's instance (its id there, host, pid, version, config digest).
    pub(crate) instance: i64,
    pub(crate) host: String,
    pub(crate) pid: i64,
    pub(crate) version: String,
    pub(crate) config_digest: String,
    pub(crate) scheduled_ms: Option<i64>,
    pub(crate) start_ms: i64,
    pub(crate) stop_ms: Option<i64>,
    pub(crate) outcome: Option<String>,
    pub(crate) exit_code: Option<i64>,
    pub(crate) signal: Option<i64>,
    pub(crate) duration_ms: Option<i64>,
    pub(crate) latency_ms: Option<i64>,
    pub(crate) task_pid: Option<i64>,
    pub(crate) output: Option<Vec<u8>>,
    pub(crate) output_bytes: i64,
    pub(crate) output_cut: bool,
    pub(crate) error: Option<String>,
    pub(crate) trigger: String,
    pub(crate) requested_by: Option<String>,
}

/// One series (chain, task) of the source store, its aggregates and its runs (by run id).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SrcSeries {
    pub(crate) chain: String,
    pub(crate) task: String,
    /// [`COUNTERS`], in order.
    pub(crate) counters: Vec<i64>,
    pub(crate) last_run_id: Option<i64>,
    pub(crate) last_outcome: Option<String>,
    /// [`LASTS`], in order.
    pub(crate) lasts: Vec<Option<i64>>,
    pub(crate) streak_failures: i64,
    pub(crate) alerts: Vec<(String, i64)>,
    pub(crate) runs: Vec<SrcRun>,
}

/// Read the whole store at `path` (read-only: nothing is written, not even a WAL
/// checkpoint). Err: why it is not a run-chain SQLite store (missing, not SQLite, no
/// run-chain schema, or a newer schema than this run-chain knows).
pub(crate) fn read_store(path: &Path) -> Result<Vec<SrcSeries>, String> {
    let p = path.display();
    if !path.is_file() {
        return Err(format!(
            "{p}: no such file (expected a host's RUN_ROOT/runs.db)"
        ));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{p}: cannot open: {e}"))?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    let not_ours = |e: rusqlite::Error| format!("{p}: not a run-chain SQLite store ({e})");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(not_ours)?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('series', 'runs', 'instances')",
            [],
            |r| r.get(0),
        )
        .map_err(not_ours)?;
    if version < 1 || tables != 3 {
        return Err(format!(
            "{p}: not a run-chain SQLite store (no run-chain schema in it)"
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(format!(
            "{p} has schema version {version}, newer than this run-chain knows ({SCHEMA_VERSION}); use a newer run-chain"
        ));
    }
    read_all(&conn, version).map_err(|e| format!("{p}: cannot read: {e}"))
}

fn read_all(conn: &Connection, version: i64) -> rusqlite::Result<Vec<SrcSeries>> {
    let kick = if version >= 4 {
        "runs_kick, runs_manual"
    } else {
        "0, 0"
    };
    let sql = format!(
        "SELECT id, chain, task, runs, ok, failed, timeout, signal, spawn_error, interrupted,
                duration_sum_ms, latency_sum_ms, {kick}, last_run_id, last_outcome, {},
                streak_failures
         FROM series ORDER BY chain, task",
        LASTS.join(", ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut out = Vec::new();
    let rows = stmt.query_map([], |r| {
        let id: i64 = r.get(0)?;
        let mut counters = Vec::new();
        for i in 0..COUNTERS.len() {
            counters.push(r.get::<_, i64>(3 + i)?);
        }
        let mut lasts = Vec::new();
        for i in 0..LASTS.len() {
            lasts.push(r.get::<_, Option<i64>>(16 + i)?);
        }
        Ok((
            id,
            SrcSeries {
                chain: r.get(1)?,
                task: r.get(2)?,
                counters,
                last_run_id: r.get(14)?,
                last_outcome: r.get(15)?,
                lasts,
                streak_failures: r.get(16 + LASTS.len())?,
                alerts: Vec::new(),
                runs: Vec::new(),
            },
        ))
    })?;
    let mut series = Vec::new();
    for s in rows {
        series.push(s?);
    }
    let trigger = if version >= 4 {
        "r.\"trigger\", r.requested_by"
    } else {
        "'schedule', NULL"
    };
    let runs_sql = format!(
        "SELECT r.run_id, r.instance, coalesce(i.host, ''), coalesce(i.pid, 0),
                coalesce(i.version, ''), coalesce(i.config_digest, ''), r.scheduled_ms, r.start_ms,
                r.stop_ms, r.outcome, r.exit_code, r.signal, r.duration_ms, r.latency_ms, r.task_pid,
                r.output, r.output_bytes, r.output_cut, r.error, {trigger}
         FROM runs r LEFT JOIN instances i ON i.id = r.instance
         WHERE r.series = ?1 ORDER BY r.run_id"
    );
    let mut runs_stmt = conn.prepare(&runs_sql)?;
    for (id, mut s) in series {
        let runs = runs_stmt.query_map([id], |r| {
            Ok(SrcRun {
                run_id: r.get(0)?,
                instance: r.get(1)?,
                host: r.get(2)?,
                pid: r.get(3)?,
                version: r.get(4)?,
                config_digest: r.get(5)?,
                scheduled_ms: r.get(6)?,
                start_ms: r.get(7)?,
                stop_ms: r.get(8)?,
                outcome: r.get(9)?,
                exit_code: r.get(10)?,
                signal: r.get(11)?,
                duration_ms: r.get(12)?,
                latency_ms: r.get(13)?,
                task_pid: r.get(14)?,
                output: r.get(15)?,
                output_bytes: r.get(16)?,
                output_cut: r.get::<_, i64>(17)? != 0,
                error: r.get(18)?,
                trigger: r.get(19)?,
                requested_by: r.get(20)?,
            })
        })?;
        for run in runs {
            s.runs.push(run?);
        }
        if version >= 2 {
            let mut a = conn.prepare_cached("SELECT kind, count FROM alerts WHERE series = ?1")?;
            let alerts = a.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for al in alerts {
                s.alerts.push(al?);
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// The host a series comes from: its newest run's instance host, else the newest
/// instance's of the store ("" if none is known).
pub(crate) fn source_host(s: &SrcSeries) -> String {
    s.runs
        .iter()
        .max_by_key(|r| (r.start_ms, r.run_id))
        .map(|r| r.host.clone())
        .unwrap_or_default()
}
