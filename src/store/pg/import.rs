//! `run-chain store import PATH` (issue 20): a host's SQLite history copied into the
//! fleet's store, idempotent.
//!
//! Two tables of its own (schema version 5, `store/pg/schema.rs`; the command migrates
//! the database first, as a launch does): `imports` maps each imported run's key (source
//! host, chain, task, source run id) to its run id in the fleet; `import_series` holds one
//! row per imported (source host, chain, task), inserted in the same transaction as the
//! aggregates it adds, so that they are added once.
//!
//! Per series one transaction, fenced by the chain's lease that the command holds
//! (`run_chain.fence`): no owner can give run ids meanwhile. A run whose key is in
//! `imports` is skipped; else it keeps its id if that is free in the fleet's series, or
//! gets the next above the fleet's highest (its runs, the series' last and running run,
//! and `chain_state`'s counter); the chain's `chain_state` counter is raised to the
//! highest id given. Only unnamed statements (PgBouncer's transaction pooling).

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::conn::{Conn, DbError};
use crate::store::import_read::{SrcRun, SrcSeries, COUNTERS, LASTS};

/// What a run not ended in the source store is imported as.
pub(crate) const OPEN_OUTCOME: &str = "interrupted";
pub(crate) const OPEN_ERROR: &str = "not ended in the host's store when it was imported (its chain was running there, or died); stop is its start";

/// A run whose id was taken in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Renumbered {
    pub(crate) host: String,
    pub(crate) chain: String,
    pub(crate) task: String,
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// What importing one series did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) imported: u64,
    pub(crate) skipped: u64,
    pub(crate) renumbered: Vec<Renumbered>,
    /// Whether its aggregates were added (first import of this series).
    pub(crate) aggregates: bool,
}

/// Import one series in one transaction, fenced by (chain, holder, epoch).
pub(crate) fn import_series(
    conn: &Conn,
    s: &SrcSeries,
    source_host: &str,
    holder: &str,
    epoch: i64,
    timeout: Duration,
) -> Result<Done, DbError> {
    conn.run(timeout, conn.client().batch_execute("BEGIN"))?;
    match in_txn(conn, s, source_host, holder, epoch, timeout) {
        Ok(done) => {
            conn.run(timeout, conn.client().batch_execute("COMMIT"))?;
            Ok(done)
        }
        Err(e) => {
            let _ = conn.run(timeout, conn.client().batch_execute("ROLLBACK"));
            Err(e)
        }
    }
}

fn in_txn(
    conn: &Conn,
    s: &SrcSeries,
    source_host: &str,
    holder: &str,
    epoch: i64,
    timeout: Duration,
) -> Result<Done, DbError> {
    let c = conn.client();
    let exec =
        |sql: &str, p: &[(&(dyn ToSql + Sync), Type)]| conn.run(timeout, c.execute_typed(sql, p));
    let opt =
        |sql: &str, p: &[(&(dyn ToSql + Sync), Type)]| conn.run(timeout, c.query_typed_opt(sql, p));
    let (chain, task) = (&s.chain, &s.task);
    opt(
        "SELECT run_chain.fence($1, $2, $3)",
        &[
            (chain, Type::TEXT),
            (&holder, Type::TEXT),
            (&epoch, Type::INT8),
        ],
    )?;
    exec(
        "INSERT INTO run_chain.series (chain, task) VALUES ($1, $2) ON CONFLICT (chain, task) DO NOTHING",
        &[(chain, Type::TEXT), (task, Type::TEXT)],
    )?;
    let row = opt(
        "SELECT s.id, greatest(
             coalesce((SELECT max(r.run_id) FROM run_chain.runs r WHERE r.series = s.id), 0),
             coalesce(s.last_run_id, 0), coalesce(s.running_run_id, 0),
             coalesce((SELECT (cs.state -> 'run_ids' ->> s.task)::int8
                       FROM run_chain.chain_state cs WHERE cs.chain = s.chain), 0))::int8
         FROM run_chain.series s WHERE s.chain = $1 AND s.task = $2 FOR UPDATE",
        &[(chain, Type::TEXT), (task, Type::TEXT)],
    )?
    .ok_or_else(|| DbError::Other("the series row vanished".into()))?;
    let sid: i64 = row.try_get(0)?;
    let mut top: i64 = row.try_get(1)?;
    let fresh = opt(
        "INSERT INTO run_chain.import_series (source_host, chain, task) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING RETURNING 1",
        &[
            (&source_host, Type::TEXT),
            (chain, Type::TEXT),
            (task, Type::TEXT),
        ],
    )?
    .is_some();
    let mut done = Done {
        aggregates: fresh,
        ..Done::default()
    };
    // Source run id -> fleet run id (this import's and earlier ones').
    let mut ids: HashMap<i64, i64> = HashMap::new();
    let mut instances: HashMap<(String, i64), i64> = HashMap::new();
    let mut highest = 0;
    for run in &s.runs {
        let before = opt(
            "SELECT run_id FROM run_chain.imports
             WHERE source_host = $1 AND chain = $2 AND task = $3 AND source_run_id = $4",
            &[
                (&run.host, Type::TEXT),
                (chain, Type::TEXT),
                (task, Type::TEXT),
                (&run.run_id, Type::INT8),
            ],
        )?;
        if let Some(r) = before {
            ids.insert(run.run_id, r.try_get(0)?);
            done.skipped += 1;
            continue;
        }
        let taken = opt(
            "SELECT 1 FROM run_chain.runs WHERE series = $1 AND run_id = $2",
            &[(&sid, Type::INT8), (&run.run_id, Type::INT8)],
        )?
        .is_some();
        let id = if taken {
            top += 1;
            done.renumbered.push(Renumbered {
                host: run.host.clone(),
                chain: chain.clone(),
                task: task.clone(),
                from: run.run_id,
                to: top,
            });
            top
        } else {
            top = top.max(run.run_id);
            run.run_id
        };
        highest = highest.max(id);
        ids.insert(run.run_id, id);
        let inst = match instances.get(&(run.host.clone(), run.instance)) {
            Some(i) => *i,
            None => {
                let i = instance(conn, run, timeout)?;
                instances.insert((run.host.clone(), run.instance), i);
                i
            }
        };
        insert_run(conn, sid, id, inst, run, timeout)?;
        exec(
            "INSERT INTO run_chain.imports (source_host, chain, task, source_run_id, run_id)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                (&run.host, Type::TEXT),
                (chain, Type::TEXT),
                (task, Type::TEXT),
                (&run.run_id, Type::INT8),
                (&id, Type::INT8),
            ],
        )?;
        done.imported += 1;
    }
    if fresh {
        let sets: Vec<String> = COUNTERS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = {c} + ${}", i + 2))
            .collect();
        let sql = format!(
            "UPDATE run_chain.series SET {} WHERE id = $1",
            sets.join(", ")
        );
        let mut p: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&sid, Type::INT8)];
        for v in &s.counters {
            p.push((v, Type::INT8));
        }
        exec(&sql, &p)?;
        // The "last run" columns when the source's last run is newer than the fleet's.
        let last_run_id = s.last_run_id.map(|id| ids.get(&id).copied().unwrap_or(id));
        let last_start = s.lasts[2];
        if last_start.is_some() {
            let sets: Vec<String> = LASTS
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} = ${}", i + 5))
                .collect();
            let sql = format!(
                "UPDATE run_chain.series SET last_run_id = $2, last_outcome = $3,
                   streak_failures = $4, {}
                 WHERE id = $1 AND (last_start_ms IS NULL OR last_start_ms < $7)",
                sets.join(", ")
            );
            let mut p: Vec<(&(dyn ToSql + Sync), Type)> = vec![
                (&sid, Type::INT8),
                (&last_run_id, Type::INT8),
                (&s.last_outcome, Type::TEXT),
                (&s.streak_failures, Type::INT8),
            ];
            for v in &s.lasts {
                p.push((v, Type::INT8));
            }
            exec(&sql, &p)?;
        }
        for (kind, count) in &s.alerts {
            exec(
                "INSERT INTO run_chain.alerts (series, kind, count) VALUES ($1, $2, $3)
                 ON CONFLICT (series, kind) DO UPDATE SET count = run_chain.alerts.count + EXCLUDED.count",
                &[(&sid, Type::INT8), (kind, Type::TEXT), (count, Type::INT8)],
            )?;
        }
    }
    if highest > 0 {
        // The owner's counter (resume::State.run_ids) above every id given here.
        exec(
            "UPDATE run_chain.chain_state
             SET state = jsonb_set(state, ARRAY['run_ids', $2], to_jsonb($3::int8), true)
             WHERE chain = $1 AND jsonb_typeof(state -> 'run_ids') = 'object'
               AND coalesce((state -> 'run_ids' ->> $2)::int8, 0) < $3",
            &[
                (chain, Type::TEXT),
                (task, Type::TEXT),
                (&highest, Type::INT8),
            ],
        )?;
    }
    Ok(done)
}

/// The fleet's instances row standing for the source's instance (holder `import:HOST:ID`).
fn instance(conn: &Conn, run: &SrcRun, timeout: Duration) -> Result<i64, DbError> {
    let holder = format!("import:{}:{}", run.host, run.instance);
    let pid = i32::try_from(run.pid).unwrap_or(0);
    let row = conn.run(
        timeout,
        conn.client().query_typed_one(
            "INSERT INTO run_chain.instances (holder, host, pid, version, config_digest)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (holder) DO UPDATE SET host = EXCLUDED.host RETURNING id",
            &[
                (&holder, Type::TEXT),
                (&run.host, Type::TEXT),
                (&pid, Type::INT4),
                (&run.version, Type::TEXT),
                (&run.config_digest, Type::TEXT),
            ],
        ),
    )?;
    Ok(row.try_get(0)?)
}

fn insert_run(
    conn: &Conn,
    sid: i64,
    id: i64,
    inst: i64,
    r: &SrcRun,
    timeout: Duration,
) -> Result<(), DbError> {
    // A run not ended in the source (its chain was running, or died there and was not
    // launched again) is not running in the fleet: it comes closed, `interrupted`.
    let open = r.stop_ms.is_none();
    let stop_ms = r.stop_ms.or(Some(r.start_ms));
    let outcome = if open {
        Some(OPEN_OUTCOME.to_string())
    } else {
        r.outcome.clone()
    };
    let error = if open {
        Some(OPEN_ERROR.to_string())
    } else {
        r.error.clone()
    };
    conn.run(
        timeout,
        conn.client().execute_typed(
            "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms,
               outcome, exit_code, signal, duration_ms, latency_ms, task_pid, output, output_bytes,
               output_cut, error, \"trigger\", requested_by, host)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
            &[
                (&sid, Type::INT8),
                (&id, Type::INT8),
                (&inst, Type::INT8),
                (&r.scheduled_ms, Type::INT8),
                (&r.start_ms, Type::INT8),
                (&stop_ms, Type::INT8),
                (&outcome, Type::TEXT),
                (&r.exit_code, Type::INT8),
                (&r.signal, Type::INT8),
                (&r.duration_ms, Type::INT8),
                (&r.latency_ms, Type::INT8),
                (&r.task_pid, Type::INT8),
                (&r.output, Type::BYTEA),
                (&r.output_bytes, Type::INT8),
                (&r.output_cut, Type::BOOL),
                (&error, Type::TEXT),
                (&r.trigger, Type::TEXT),
                (&r.requested_by, Type::TEXT),
                (&r.host, Type::TEXT),
            ],
        ),
    )?;
    Ok(())
}
