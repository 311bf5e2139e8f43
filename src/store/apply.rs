//! The SQL of one op, inside the writer's transaction: a run's start and end (with the
//! series' aggregates and pruning), output, alerts, closing what a dead instance left open.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::*;

/// What a chain's writer knows of its own series without reading them again. A series
/// is written by its chain's one instance (the chain's lock), in this writer's
/// transactions only, so what it wrote last is what is there. Forgotten when a
/// transaction fails or the store is opened again.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Per series, the start of its oldest run when last looked up. Runs are only added
    /// after it or pruned, so it stays a lower bound, and while it is within
    /// `keep_runs_for` nothing can be old enough to prune: the look-up (an index descent
    /// and a row, every run) is made only once it is not.
    pub(super) oldest: HashMap<i64, i64>,
    /// Per series, the window of recent durations it last wrote (read, pushed to and
    /// written back at every run's end otherwise).
    pub(super) recent: HashMap<i64, Vec<u8>>,
}

/// A run's end. `merged_pid`: its start is in the same transaction and was not written
/// (Some(the task's PID, if known)).
pub(super) fn apply_end(
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
             exit_code, signal, duration_ms, latency_ms, output, output_bytes, output_cut, error, task_pid,
             \"trigger\", requested_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
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
            merged_pid.flatten(),
            e.trigger,
            e.requested_by
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
         streak_start_ms = ?11, streak_failures = ?12,
         runs_kick = runs_kick + (?14 = 'kick'), runs_manual = runs_manual + (?14 = 'manual')
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
        &recent,
        e.trigger
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

pub(super) fn series_id(
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
pub(super) fn count_interrupted(tx: &Connection, sid: i64, duration: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE series SET runs = runs + 1, interrupted = interrupted + 1,
         duration_sum_ms = duration_sum_ms + ?2, running_run_id = NULL, running_since_ms = NULL
         WHERE id = ?1",
        params![sid, duration],
    )?;
    Ok(())
}

pub(super) fn apply(
    tx: &Connection,
    op: &Op,
    instance: i64,
    cache: &mut HashMap<(String, String), i64>,
    known: &mut Known,
) -> rusqlite::Result<()> {
    match op {
        Op::Queued(s) => {
            let sid = series_id(tx, cache, &s.chain, &s.task)?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO runs (series, run_id, instance, scheduled_ms, start_ms, outcome, \"trigger\", requested_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)",
            )?
            .execute(params![
                sid,
                s.run_id as i64,
                instance,
                s.scheduled_ms as i64,
                s.start_ms as i64,
                s.trigger,
                s.requested_by
            ])?;
        }
        Op::Start(s) => {
            let sid = series_id(tx, cache, &s.chain, &s.task)?;
            // Replaces a `queued` row of the same run.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO runs (series, run_id, instance, scheduled_ms, start_ms, task_pid, \"trigger\", requested_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                sid,
                s.run_id as i64,
                instance,
                s.scheduled_ms as i64,
                s.start_ms as i64,
                s.task_pid,
                s.trigger,
                s.requested_by
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
        // Applied by the SQLite store itself, with the dead instance's identity (see
        // `killed::apply_killed`).
        Op::Killed(_) => debug_assert!(false, "Op::Killed goes to apply_killed"),
        // The fleet's store only (see their doc).
        Op::State { .. } | Op::Interrupted { .. } | Op::Mail { .. } => {}
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
            queued,
        } => {
            let (keep_task, keep_id) = match queued {
                Some((t, id)) => (Some(t.as_str()), Some(*id as i64)),
                None => (None, None),
            };
            tx.prepare_cached(
                "DELETE FROM runs WHERE outcome = 'queued'
                 AND series IN (SELECT id FROM series WHERE chain = ?1)
                 AND NOT (series IN (SELECT id FROM series WHERE chain = ?1 AND task IS ?2) AND run_id IS ?3)",
            )?
            .execute(params![chain, keep_task, keep_id])?;
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
