//! The guardian's one write: the run it ended after run-chain's death, closed in a
//! transaction of its own.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, ErrorCode, OptionalExtension};

use super::apply::*;
use super::schema::*;
use super::*;

/// A run that run-chain left open when it died, as its guardian closes it: `stop_ms` is
/// when the guardian saw its group end, `error` what it did (see `guardian`).
#[derive(Debug, Clone)]
pub(crate) struct Killed<'a> {
    pub(crate) chain: &'a str,
    pub(crate) task: &'a str,
    pub(crate) run_id: u64,
    pub(crate) scheduled_ms: u64,
    pub(crate) start_ms: u64,
    pub(crate) stop_ms: u64,
    pub(crate) error: &'a str,
}

/// The guardian's record of a run it ended after run-chain's death: the run is closed as
/// `interrupted` with the guardian's stop time and error, and counted in its series as the
/// next launch counts one ([`count_interrupted`]). A run already closed is left alone (the
/// next launch got there first: it does not wait for a guardian whose run CHAIN.state does
/// not name). A run whose start was never written is written whole, under the dead
/// instance's row (`instance`; matched by host, PID and a start no earlier than its own, or
/// added). A busy or locked store is tried again until `give_up`; any other error ends the
/// attempt. Ok(true): recorded; Ok(false): it was already closed.
pub(crate) fn close_killed(
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
