//! The fleet's write side (issue 20, stage 2): [`Pg`], the [`StoreWrite`] of the
//! PostgreSQL store, driven by the chain's one DB thread (`lock::fleet`), which lends it
//! the process's one connection for each batch.
//!
//! Every batch is one transaction, fenced first:
//! `BEGIN; SET LOCAL statement_timeout = lease/5` (one simple query), `SELECT
//! run_chain.fence(chain, holder, epoch)` (FOR SHARE on the lease row: an acquire or
//! takeover of the row waits for this transaction, so a new owner reads all of its
//! predecessor's commits), the ops, `COMMIT`. A fence that fails raises SQLSTATE RCF01:
//! the batch is [`WriteError::Fenced`] (the writer counts, logs and drops it, never
//! retries), and `run_chain.leases.fenced_writes` is counted, outside the transaction. A
//! connection error or timeout is [`WriteError::Other`] and drops the connection (the DB
//! thread makes a new one); an SQL error is `Other` too (retried at the back-off).
//!
//! The ops mean what they mean in SQLite (`store/apply.rs`), and are idempotent when a
//! batch is applied again after a commit whose answer was lost: a start is an upsert of
//! the run's row while it is open, an end closes the row only if it is open and counts
//! the series only then, output chunks are keyed by offset.
//!
//! Output: [`Op::Output`] carries the whole kept tail of a running task's output and the
//! total written so far; only what was not written yet is inserted, as a chunk at its
//! byte offset (`output_chunks (run, off)`), and chunks wholly before the tail are
//! deleted. The run's end writes the final tail into `runs.output` and deletes the chunks.
//!
//! Only unnamed statements (`query_typed*`, `execute_typed`, `batch_execute`).

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::conn::{Conn, DbError};
use crate::store::seam::{Owner, StoreWrite, WriteError};
use crate::store::{push_recent, Op, RunEnd, RunStart, END_NOT_KNOWN};

/// The SQLSTATE `run_chain.fence` raises.
pub(crate) const FENCED: &str = "RCF01";

/// Who this process is, for its `run_chain.instances` row and the runs it writes.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) version: String,
    pub(crate) config_digest: String,
}

/// The PostgreSQL write side.
pub(crate) struct Pg {
    /// Lent by the DB thread for each flush ([`Pg::lend`], [`Pg::take_conn`]).
    conn: Option<Conn>,
    me: Identity,
    /// The statement timeout (server and client side): lease / 5.
    stmt: Duration,
    shown: String,
    /// This process's `instances.id`, once committed.
    instance: Option<i64>,
    /// Series ids (committed ones only: forgotten when a transaction fails).
    series: HashMap<(String, String), i64>,
    /// Per running run, how many bytes of its output are in `output_chunks`.
    written_to: HashMap<(String, String, u64), u64>,
    /// Counters, for the log and tests: batches committed, statements sent.
    pub(crate) batches: u64,
    pub(crate) statements: u64,
}

impl Pg {
    pub(crate) fn new(me: Identity, stmt: Duration, shown: String) -> Pg {
        Pg {
            conn: None,
            me,
            stmt,
            shown,
            instance: None,
            series: HashMap::new(),
            written_to: HashMap::new(),
            batches: 0,
            statements: 0,
        }
    }

    /// The config's digest, for this process's `instances` row (before its first batch).
    pub(crate) fn set_digest(&mut self, digest: String) {
        if self.me.config_digest != digest {
            self.me.config_digest = digest;
            // Written with the next batch (the row may have been made before it was known).
            self.instance = None;
        }
    }

    /// The connection to use for the next batches.
    pub(crate) fn lend(&mut self, conn: Option<Conn>) {
        self.conn = conn;
    }

    /// The connection back (None if a batch dropped it).
    pub(crate) fn take_conn(&mut self) -> Option<Conn> {
        self.conn.take()
    }

    fn exec(&mut self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<u64, DbError> {
        self.statements += 1;
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| DbError::Other("no connection".into()))?;
        conn.run(self.stmt, conn.client().execute_typed(sql, params))
    }

    fn rows(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.statements += 1;
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| DbError::Other("no connection".into()))?;
        conn.run(self.stmt, conn.client().query_typed(sql, params))
    }

    fn simple(&mut self, sql: &str) -> Result<(), DbError> {
        self.statements += 1;
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| DbError::Other("no connection".into()))?;
        conn.run(self.stmt, conn.client().batch_execute(sql))
    }

    fn series_id(&mut self, chain: &str, task: &str) -> Result<i64, DbError> {
        if let Some(id) = self.series.get(&(chain.to_string(), task.to_string())) {
            return Ok(*id);
        }
        let rows = self.rows(
            "INSERT INTO run_chain.series (chain, task) VALUES ($1, $2)
             ON CONFLICT (chain, task) DO UPDATE SET chain = EXCLUDED.chain RETURNING id",
            &[(&chain, Type::TEXT), (&task, Type::TEXT)],
        )?;
        let id: i64 = first(&rows)?.try_get(0)?;
        self.series
            .insert((chain.to_string(), task.to_string()), id);
        Ok(id)
    }

    fn instance_id(&mut self, holder: &str) -> Result<i64, DbError> {
        if let Some(id) = self.instance {
            return Ok(id);
        }
        let pid = i32::try_from(self.me.pid).unwrap_or(i32::MAX);
        let (host, version, digest) = (
            self.me.host.clone(),
            self.me.version.clone(),
            self.me.config_digest.clone(),
        );
        let rows = self.rows(
            "INSERT INTO run_chain.instances (holder, host, pid, version, config_digest)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (holder) DO UPDATE SET host = EXCLUDED.host,
               config_digest = EXCLUDED.config_digest RETURNING id",
            &[
                (&holder, Type::TEXT),
                (&host, Type::TEXT),
                (&pid, Type::INT4),
                (&version, Type::TEXT),
                (&digest, Type::TEXT),
            ],
        )?;
        let id: i64 = first(&rows)?.try_get(0)?;
        self.instance = Some(id);
        Ok(id)
    }

    /// The batch's transaction (BEGIN .. ops; COMMIT is the caller's).
    fn batch(
        &mut self,
        batch: &[Op],
        chain: &str,
        holder: &str,
        epoch: i64,
    ) -> Result<Vec<Advance>, DbError> {
        let ms = self.stmt.as_millis().max(1);
        self.simple(&format!("BEGIN; SET LOCAL statement_timeout = {ms}"))?;
        self.rows(
            "SELECT run_chain.fence($1, $2, $3)",
            &[
                (&chain, Type::TEXT),
                (&holder, Type::TEXT),
                (&epoch, Type::INT8),
            ],
        )?;
        let instance = self.instance_id(holder)?;
        let mut advances = Vec::new();
        for op in batch {
            self.op(op, instance, epoch, &mut advances)?;
        }
        Ok(advances)
    }

    fn op(
        &mut self,
        op: &Op,
        instance: i64,
        epoch: i64,
        adv: &mut Vec<Advance>,
    ) -> Result<(), DbError> {
        let host = self.me.host.clone();
        match op {
            Op::Queued(s) => {
                let sid = self.series_id(&s.chain, &s.task)?;
                let (run_id, sched, start) =
                    (s.run_id as i64, s.scheduled_ms as i64, s.start_ms as i64);
                self.exec(
                    "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, outcome,
                       \"trigger\", requested_by, host, epoch)
                     VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9)
                     ON CONFLICT (series, run_id) DO NOTHING",
                    &[
                        (&sid, Type::INT8),
                        (&run_id, Type::INT8),
                        (&instance, Type::INT8),
                        (&sched, Type::INT8),
                        (&start, Type::INT8),
                        (&s.trigger, Type::TEXT),
                        (&s.requested_by, Type::TEXT),
                        (&host, Type::TEXT),
                        (&epoch, Type::INT8),
                    ],
                )?;
            }
            Op::Start(s) => self.start(s, instance, epoch, &host)?,
            Op::Output {
                chain,
                task,
                run_id,
                output,
                output_bytes,
                output_cut,
            } => {
                let key = (chain.clone(), task.clone(), *run_id);
                let total = *output_bytes;
                let tail_from = total.saturating_sub(output.len() as u64);
                let done = self.written_to.get(&key).copied().unwrap_or(0);
                let from = done.max(tail_from);
                let sid = self.series_id(chain, task)?;
                let rid = *run_id as i64;
                let (tot, cut) = (total as i64, *output_cut);
                let rows = self.rows(
                    "UPDATE run_chain.runs SET output_bytes = $3, output_cut = $4
                     WHERE series = $1 AND run_id = $2 AND stop_ms IS NULL RETURNING id",
                    &[
                        (&sid, Type::INT8),
                        (&rid, Type::INT8),
                        (&tot, Type::INT8),
                        (&cut, Type::BOOL),
                    ],
                )?;
                let Some(row) = rows.first() else {
                    return Ok(());
                };
                let id: i64 = row.try_get(0)?;
                if from < total {
                    let skip = usize::try_from(from - tail_from).unwrap_or(usize::MAX);
                    let data: &[u8] = output.get(skip..).unwrap_or(&[]);
                    let off = from as i64;
                    self.exec(
                        "INSERT INTO run_chain.output_chunks (run, off, data) VALUES ($1, $2, $3)
                         ON CONFLICT (run, off) DO UPDATE SET data = EXCLUDED.data
                         WHERE length(EXCLUDED.data) > length(output_chunks.data)",
                        &[(&id, Type::INT8), (&off, Type::INT8), (&data, Type::BYTEA)],
                    )?;
                    adv.push(Advance::To(key, total));
                }
                if tail_from > 0 {
                    let keep = tail_from as i64;
                    self.exec(
                        "DELETE FROM run_chain.output_chunks WHERE run = $1 AND off + length(data) <= $2",
                        &[(&id, Type::INT8), (&keep, Type::INT8)],
                    )?;
                }
            }
            Op::End(e) => {
                self.end(e, instance, epoch, &host)?;
                adv.push(Advance::Forget((e.chain.clone(), e.task.clone(), e.run_id)));
            }
            Op::Alert { chain, task, kind } => {
                let sid = self.series_id(chain, task)?;
                self.exec(
                    "INSERT INTO run_chain.alerts (series, kind, count) VALUES ($1, $2, 1)
                     ON CONFLICT (series, kind) DO UPDATE SET count = alerts.count + 1",
                    &[(&sid, Type::INT8), (kind, Type::TEXT)],
                )?;
            }
            Op::State {
                chain,
                json,
                due_wall_ms,
            } => {
                // The due time goes on the database's clock: now() there plus what is
                // left of it here.
                let left: Option<f64> =
                    due_wall_ms.map(|d| (d as i64 - crate::time::wall_ms() as i64) as f64 / 1000.0);
                self.exec(
                    "INSERT INTO run_chain.chain_state (chain, state, due_at, epoch, updated_at)
                     VALUES ($1, $2::text::jsonb,
                             CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3) END,
                             $4, now())
                     ON CONFLICT (chain) DO UPDATE SET state = EXCLUDED.state, due_at = EXCLUDED.due_at,
                       epoch = EXCLUDED.epoch, updated_at = now()",
                    &[
                        (chain, Type::TEXT),
                        (json, Type::TEXT),
                        (&left, Type::FLOAT8),
                        (&epoch, Type::INT8),
                    ],
                )?;
            }
            Op::Interrupted {
                chain,
                stop_ms,
                error,
            } => {
                self.close_open_runs(chain, *stop_ms as i64, error)?;
            }
            Op::CloseOpen {
                chain,
                stop_ms,
                running,
                queued,
            } => {
                let (keep_task, keep_id) = match queued {
                    Some((t, id)) => (Some(t.clone()), Some(*id as i64)),
                    None => (None, None),
                };
                self.exec(
                    "DELETE FROM run_chain.runs r USING run_chain.series s
                     WHERE s.id = r.series AND s.chain = $1 AND r.outcome = 'queued'
                       AND NOT (s.task IS NOT DISTINCT FROM $2 AND r.run_id IS NOT DISTINCT FROM $3)",
                    &[(chain, Type::TEXT), (&keep_task, Type::TEXT), (&keep_id, Type::INT8)],
                )?;
                let stop = *stop_ms as i64;
                self.close_open_runs(chain, stop, END_NOT_KNOWN)?;
                if let Some((task, run_id, since)) = running {
                    let sid = self.series_id(chain, task)?;
                    let (rid, since) = (*run_id as i64, *since as i64);
                    let duration = (stop - since).max(0);
                    let rows = self.rows(
                        "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms,
                           outcome, duration_ms, error, host, epoch)
                         VALUES ($1, $2, $3, $4, $4, $5, 'interrupted', $6, $7, $8, $9)
                         ON CONFLICT (series, run_id) DO NOTHING RETURNING id",
                        &[
                            (&sid, Type::INT8),
                            (&rid, Type::INT8),
                            (&instance, Type::INT8),
                            (&since, Type::INT8),
                            (&stop, Type::INT8),
                            (&duration, Type::INT8),
                            (&END_NOT_KNOWN, Type::TEXT),
                            (&host, Type::TEXT),
                            (&epoch, Type::INT8),
                        ],
                    )?;
                    if !rows.is_empty() {
                        self.exec(
                            "UPDATE run_chain.series SET runs = runs + 1, interrupted = interrupted + 1,
                               duration_sum_ms = duration_sum_ms + $2, running_run_id = NULL, running_since_ms = NULL
                             WHERE id = $1",
                            &[(&sid, Type::INT8), (&duration, Type::INT8)],
                        )?;
                    }
                }
            }
            // The guardian writes the local store only (it has no connection).
            Op::Killed(_) => {}
            Op::Mail {
                chain,
                message_id,
                bytes,
            } => {
                self.exec(
                    super::outbox::PUT,
                    &[
                        (chain, Type::TEXT),
                        (message_id, Type::TEXT),
                        (bytes, Type::BYTEA),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Close the chain's open runs as `interrupted` at `stop` with `error`, counting them
    /// in their series: one statement.
    fn close_open_runs(&mut self, chain: &str, stop: i64, error: &str) -> Result<(), DbError> {
        self.exec(
            "WITH closed AS (
               UPDATE run_chain.runs r SET outcome = 'interrupted', stop_ms = $2,
                 duration_ms = greatest($2 - r.start_ms, 0), error = $3
               FROM run_chain.series s
               WHERE s.id = r.series AND s.chain = $1 AND r.outcome IS NULL AND r.stop_ms IS NULL
               RETURNING r.series, r.duration_ms)
             UPDATE run_chain.series s SET runs = s.runs + c.n, interrupted = s.interrupted + c.n,
               duration_sum_ms = s.duration_sum_ms + c.d, running_run_id = NULL, running_since_ms = NULL
             FROM (SELECT series, count(*)::int8 AS n, coalesce(sum(duration_ms), 0)::int8 AS d
                   FROM closed GROUP BY series) c
             WHERE s.id = c.series",
            &[(&chain, Type::TEXT), (&stop, Type::INT8), (&error, Type::TEXT)],
        )?;
        Ok(())
    }

    fn start(
        &mut self,
        s: &RunStart,
        instance: i64,
        epoch: i64,
        host: &str,
    ) -> Result<(), DbError> {
        let sid = self.series_id(&s.chain, &s.task)?;
        let (rid, sched, start) = (s.run_id as i64, s.scheduled_ms as i64, s.start_ms as i64);
        let pid: Option<i64> = s.task_pid.map(i64::from);
        // Replaces a `queued` row of the same run; a second start of the run (its PID,
        // after the spawn) only adds the PID; a closed run is never reopened: a run id
        // already recorded as ended is refused (the batch fails, the start gate holds the
        // run), never silently written over.
        let changed = self.exec(
            "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, task_pid,
               \"trigger\", requested_by, host, epoch)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (series, run_id) DO UPDATE SET instance = EXCLUDED.instance,
               scheduled_ms = EXCLUDED.scheduled_ms, start_ms = EXCLUDED.start_ms,
               task_pid = coalesce(EXCLUDED.task_pid, runs.task_pid), outcome = NULL,
               \"trigger\" = EXCLUDED.\"trigger\", requested_by = EXCLUDED.requested_by,
               host = EXCLUDED.host, epoch = EXCLUDED.epoch
             WHERE runs.stop_ms IS NULL",
            &[
                (&sid, Type::INT8),
                (&rid, Type::INT8),
                (&instance, Type::INT8),
                (&sched, Type::INT8),
                (&start, Type::INT8),
                (&pid, Type::INT8),
                (&s.trigger, Type::TEXT),
                (&s.requested_by, Type::TEXT),
                (&host, Type::TEXT),
                (&epoch, Type::INT8),
            ],
        )?;
        if changed == 0 {
            return Err(DbError::Other(format!(
                "run {} of {} is recorded as ended already: its id is not given again",
                s.run_id, s.task
            )));
        }
        if s.task_pid.is_none() {
            self.exec(
                "UPDATE run_chain.series SET running_run_id = $2, running_since_ms = $3 WHERE id = $1",
                &[(&sid, Type::INT8), (&rid, Type::INT8), (&start, Type::INT8)],
            )?;
        }
        Ok(())
    }

    fn end(&mut self, e: &RunEnd, instance: i64, epoch: i64, host: &str) -> Result<(), DbError> {
        let sid = self.series_id(&e.chain, &e.task)?;
        let duration = e.stop_ms.saturating_sub(e.start_ms) as i64;
        let latency = e.start_ms.saturating_sub(e.scheduled_ms) as i64;
        let (rid, sched, start, stop) = (
            e.run_id as i64,
            e.scheduled_ms as i64,
            e.start_ms as i64,
            e.stop_ms as i64,
        );
        let exit_code: Option<i64> = e.exit_code.map(i64::from);
        let signal: Option<i64> = e.signal.map(i64::from);
        let out_bytes = e.output_bytes as i64;
        // Written whole if its start never was (a spawn error); closed only if open, so
        // that an end applied again counts nothing twice.
        let rows = self.rows(
            "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms, outcome,
               exit_code, signal, duration_ms, latency_ms, output, output_bytes, output_cut, error,
               \"trigger\", requested_by, host, epoch)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
             ON CONFLICT (series, run_id) DO UPDATE SET stop_ms = EXCLUDED.stop_ms, outcome = EXCLUDED.outcome,
               exit_code = EXCLUDED.exit_code, signal = EXCLUDED.signal, duration_ms = EXCLUDED.duration_ms,
               latency_ms = EXCLUDED.latency_ms, output = EXCLUDED.output, output_bytes = EXCLUDED.output_bytes,
               output_cut = EXCLUDED.output_cut, error = EXCLUDED.error
             WHERE runs.stop_ms IS NULL
             RETURNING id",
            &[
                (&sid, Type::INT8),
                (&rid, Type::INT8),
                (&instance, Type::INT8),
                (&sched, Type::INT8),
                (&start, Type::INT8),
                (&stop, Type::INT8),
                (&e.outcome, Type::TEXT),
                (&exit_code, Type::INT8),
                (&signal, Type::INT8),
                (&duration, Type::INT8),
                (&latency, Type::INT8),
                (&e.output, Type::BYTEA),
                (&out_bytes, Type::INT8),
                (&e.output_cut, Type::BOOL),
                (&e.error, Type::TEXT),
                (&e.trigger, Type::TEXT),
                (&e.requested_by, Type::TEXT),
                (&host, Type::TEXT),
                (&epoch, Type::INT8),
            ],
        )?;
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let id: i64 = row.try_get(0)?;
        self.exec(
            "DELETE FROM run_chain.output_chunks WHERE run = $1",
            &[(&id, Type::INT8)],
        )?;
        let column = match e.outcome {
            "ok" => "ok",
            "failed" => "failed",
            "timeout" => "timeout",
            "signal" => "signal",
            "spawn-error" => "spawn_error",
            _ => "interrupted",
        };
        let rows = self.rows(
            "SELECT recent FROM run_chain.series WHERE id = $1",
            &[(&sid, Type::INT8)],
        )?;
        let old: Vec<u8> = rows
            .first()
            .and_then(|r| r.try_get::<_, Option<Vec<u8>>>(0).ok().flatten())
            .unwrap_or_default();
        let recent = push_recent(&old, duration.max(0) as u64, latency.max(0) as u64);
        let last_exit: Option<i64> = e.exit_code.or(e.signal.map(|s| 128 + s)).map(i64::from);
        let success = e.outcome == "ok";
        let streak_start: Option<i64> = e.streak.map(|s| s.0 as i64);
        let streak_failures: i64 = e.streak.map_or(0, |s| s.1 as i64);
        self.exec(
            &format!(
                "UPDATE run_chain.series SET recent = $13, runs = runs + 1, {column} = {column} + 1,
                 duration_sum_ms = duration_sum_ms + $3, latency_sum_ms = latency_sum_ms + $4,
                 last_run_id = $2, last_outcome = $5, last_exit_code = $6, last_scheduled_ms = $7,
                 last_start_ms = $8, last_stop_ms = $9, last_duration_ms = $3,
                 last_success_ms = CASE WHEN $10 THEN $9 ELSE last_success_ms END,
                 running_run_id = NULL, running_since_ms = NULL,
                 streak_start_ms = $11, streak_failures = $12,
                 runs_kick = runs_kick + ($14 = 'kick')::int, runs_manual = runs_manual + ($14 = 'manual')::int
                 WHERE id = $1"
            ),
            &[
                (&sid, Type::INT8),
                (&rid, Type::INT8),
                (&duration, Type::INT8),
                (&latency, Type::INT8),
                (&e.outcome, Type::TEXT),
                (&last_exit, Type::INT8),
                (&sched, Type::INT8),
                (&start, Type::INT8),
                (&stop, Type::INT8),
                (&success, Type::BOOL),
                (&streak_start, Type::INT8),
                (&streak_failures, Type::INT8),
                (&recent, Type::BYTEA),
                (&e.trigger, Type::TEXT),
            ],
        )?;
        // Prune, bounded per run (as SQLite): by count, then by age.
        if e.run_id > e.keep_runs_max {
            let upto = (e.run_id - e.keep_runs_max) as i64;
            self.exec(
                "DELETE FROM run_chain.runs WHERE id IN
                 (SELECT id FROM run_chain.runs WHERE series = $1 AND run_id <= $2 ORDER BY run_id LIMIT 1000)",
                &[(&sid, Type::INT8), (&upto, Type::INT8)],
            )?;
        }
        let keep_after = e.keep_after_ms as i64;
        self.exec(
            "DELETE FROM run_chain.runs WHERE id IN
             (SELECT id FROM run_chain.runs WHERE series = $1 ORDER BY run_id LIMIT 100)
             AND start_ms < $2 AND stop_ms IS NOT NULL",
            &[(&sid, Type::INT8), (&keep_after, Type::INT8)],
        )?;
        let _ = epoch;
        Ok(())
    }

    fn forget(&mut self) {
        self.series.clear();
        self.instance = None;
    }
}

/// What a committed batch teaches the writer about output already written.
enum Advance {
    To((String, String, u64), u64),
    Forget((String, String, u64)),
}

fn first(rows: &[tokio_postgres::Row]) -> Result<&tokio_postgres::Row, DbError> {
    rows.first()
        .ok_or_else(|| DbError::Other("the statement returned no row".into()))
}

impl StoreWrite for Pg {
    fn apply(&mut self, batch: &[Op], owner: &Owner) -> Result<(), WriteError> {
        let Owner::Lease {
            chain,
            holder,
            epoch,
        } = owner
        else {
            return Err(WriteError::Other(
                "the fleet's store is written only under a lease".into(),
            ));
        };
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            self.conn = None;
            return Err(WriteError::Busy(format!(
                "{}: not connected to the database",
                self.shown
            )));
        }
        // What was known before this transaction (ids it creates are forgotten if it fails).
        let (series, instance) = (self.series.clone(), self.instance);
        let result = self
            .batch(batch, chain, holder, *epoch)
            .and_then(|adv| self.simple("COMMIT").map(|()| adv));
        match result {
            Ok(adv) => {
                self.batches += 1;
                for a in adv {
                    match a {
                        Advance::To(k, n) => {
                            self.written_to.insert(k, n);
                        }
                        Advance::Forget(k) => {
                            self.written_to.remove(&k);
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.series = series;
                self.instance = instance;
                let broken = !matches!(e, DbError::Sql { .. });
                if broken {
                    // A timeout's answer may still come: the connection is not to be used.
                    self.conn = None;
                    self.forget();
                } else {
                    let _ = self.simple("ROLLBACK");
                }
                match e {
                    DbError::Sql { code, .. } if code == FENCED => {
                        let counted = self.exec(
                            "UPDATE run_chain.leases SET fenced_writes = fenced_writes + 1 WHERE chain = $1",
                            &[(chain, Type::TEXT)],
                        );
                        log::warn!(
                            "{chain}: fleet: a write batch ({} records) was fenced off: the lease (epoch {epoch}) is no longer this instance's{}",
                            batch.len(),
                            if counted.is_ok() { "" } else { " (not counted in run_chain.leases)" }
                        );
                        Err(WriteError::Fenced)
                    }
                    DbError::Sql { code, message } if code.starts_with("40") || code == "57014" => {
                        Err(WriteError::Busy(format!(
                            "{}: {message} (SQLSTATE {code})",
                            self.shown
                        )))
                    }
                    other => Err(WriteError::Other(format!("{}: {other}", self.shown))),
                }
            }
        }
    }

    fn reset(&mut self) {
        self.conn = None;
        self.forget();
    }

    fn describe(&self) -> String {
        format!("{} (fleet)", self.shown)
    }
}

/// What a new owner resumes from: the chain's state JSON, how far its due time is from
/// now on the database's clock (ms), and the last run id of each task in the store.
#[allow(clippy::type_complexity)]
pub(crate) fn read_resume(
    conn: &Conn,
    chain: &str,
    timeout: Duration,
) -> Result<(Option<String>, Option<i64>, Vec<(String, u64)>), String> {
    let row = conn
        .run(
            timeout,
            conn.client().query_typed_opt(
                "SELECT state::text,
                        CASE WHEN due_at IS NULL THEN NULL
                             ELSE (extract(epoch FROM (due_at - now())) * 1000)::int8 END
                 FROM run_chain.chain_state WHERE chain = $1",
                &[(&chain, Type::TEXT)],
            ),
        )
        .map_err(|e| e.to_string())?;
    let (state, due) = match row {
        Some(r) => (
            r.try_get::<_, Option<String>>(0)
                .map_err(|e| e.to_string())?,
            r.try_get::<_, Option<i64>>(1).map_err(|e| e.to_string())?,
        ),
        None => (None, None),
    };
    let rows = conn
        .run(
            timeout,
            conn.client().query_typed(
                "SELECT s.task, greatest(coalesce(max(r.run_id), 0), coalesce(s.last_run_id, 0),
                                         coalesce(s.running_run_id, 0))::int8
                 FROM run_chain.series s LEFT JOIN run_chain.runs r ON r.series = s.id
                 WHERE s.chain = $1 GROUP BY s.id, s.task",
                &[(&chain, Type::TEXT)],
            ),
        )
        .map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for r in rows {
        let task: String = r.try_get(0).map_err(|e| e.to_string())?;
        let id: i64 = r.try_get(1).map_err(|e| e.to_string())?;
        ids.push((task, u64::try_from(id).unwrap_or(0)));
    }
    Ok((state, due, ids))
}
