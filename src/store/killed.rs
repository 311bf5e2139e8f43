//! The guardian's one write: the run it ended after run-chain's death ([`Op::Killed`]),
//! applied through the write side of the seam ([`StoreWrite::apply`]) in a batch of its
//! own, retried while the store is busy.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::apply::*;
use super::seam::{Owner, StoreWrite, WriteError};
use super::sqlite::Sqlite;
use super::*;

/// A run that run-chain left open when it died, as its guardian closes it: `stop_ms` is
/// when the guardian saw its group end, `error` what it did (see `guardian`).
#[derive(Debug, Clone)]
pub struct Killed {
    pub(crate) chain: String,
    pub(crate) task: String,
    pub(crate) run_id: u64,
    pub(crate) scheduled_ms: u64,
    pub(crate) start_ms: u64,
    pub(crate) stop_ms: u64,
    pub(crate) error: String,
}

/// The guardian's record of a run it ended after run-chain's death, in the SQLite store
/// at `path`, written as the dead `instance` (see [`Op::Killed`]). A busy or locked store
/// is tried again until `give_up`; any other error ends the attempt. Ok(true): recorded;
/// Ok(false): the run was closed already.
pub(crate) fn close_killed(
    path: &Path,
    instance: &Instance,
    k: &Killed,
    give_up: Instant,
) -> Result<bool, String> {
    let mut store = Sqlite::at(path, instance.clone());
    let batch = [Op::Killed(Box::new(k.clone()))];
    loop {
        match store.apply(&batch, &Owner::Local) {
            Ok(()) => return Ok(store.took_killed()),
            Err(WriteError::Busy(_)) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The SQL of [`Op::Killed`], in the batch's transaction: the run is closed as
/// `interrupted` with the guardian's stop time and error, and counted in its series as the
/// next launch counts one ([`count_interrupted`]). A run already closed is left alone (the
/// next launch got there first: it does not wait for a guardian whose run CHAIN.state does
/// not name). A run whose start was never written is written whole, under the dead
/// instance's row (`instance`; matched by host, PID and a start no earlier than its own,
/// or added). True if the run was closed here.
pub(super) fn apply_killed(
    conn: &Connection,
    k: &Killed,
    instance: &Instance,
    cache: &mut HashMap<(String, String), i64>,
) -> rusqlite::Result<bool> {
    let sid = series_id(conn, cache, &k.chain, &k.task)?;
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
            count_interrupted(conn, sid, duration)?;
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
            count_interrupted(conn, sid, duration)?;
            Ok(true)
        }
    }
}
