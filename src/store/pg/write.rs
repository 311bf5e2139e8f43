//! The fleet's write side (issue 20, stage 2): [`Pg`], the [`StoreWrite`] of the
//! PostgreSQL store, driven by the chain's one DB thread (`lock::fleet`), which lends it
//! the process's one connection for each batch.
//!
//! Every batch is one transaction, fenced first:
//! `BEGIN; SET LOCAL statement_timeout = lease/5; SET LOCAL
//! idle_in_transaction_session_timeout = lease/5` (one simple query: [`begin_sql`]; the
//! second ends a batch left open by a frozen owner or a cut network, whose `FOR SHARE`
//! would otherwise keep the lease row locked for hours), `SELECT
//! run_chain.fence(chain, holder, epoch)` (FOR SHARE on the lease row: an acquire or
//! takeover of the row waits for this transaction, so a new owner reads all of its
//! predecessor's commits), the ops, `COMMIT`. A fence that fails raises SQLSTATE RCF01:
//! the batch is [`WriteError::Fenced`] (the writer counts, logs and drops it, never
//! retries), and `run_chain.leases.fenced_writes` is counted, outside the transaction. A
//! connection error or timeout is [`WriteError::Other`] and drops the connection (the DB
//! thread makes a new one); an SQL error is `Other` too (retried at the back-off).
//!
//! **Pipelined** (stage 5): a batch's statements do not wait for each other's answers.
//! The batch is planned first ([`Stmt`]s that own their parameters and need no answer of
//! another statement: ids are looked up in SQL, dependent steps are one statement with
//! CTEs, a check that must stop the COMMIT fails in SQL), then sent in one flight
//! (tokio-postgres pipelines the requests of futures on one client polled together, in
//! order: [`in_order`]), and answered in order. So a batch is one round trip: BEGIN,
//! fence, ops and COMMIT together; one more, first, while this process's `instances` row
//! or a series' id is not known yet (once per series and process). A run's start whose
//! run id is already recorded as ended fails in SQL (SQLSTATE 22012, a division by the
//! rows it changed) and is reported as before: the batch fails, the run does not start. Each query has its own Sync, so a statement
//! that fails (the fence's RCF01) leaves the transaction aborted: every statement after it
//! fails (SQLSTATE 25P02) and the pipelined COMMIT rolls back; the first error in order is
//! the batch's, as when the statements went one by one.
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

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::conn::{Conn, DbError};
use crate::store::seam::{Owner, StoreWrite, WriteError};
use crate::store::{Op, RunEnd, RunStart, END_NOT_KNOWN, RECENT_WINDOW};

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
    /// The statement timeout (server side, and client side for each round trip): lease / 5.
    stmt: Duration,
    shown: String,
    /// This process's `instances.id`, once committed.
    instance: Option<i64>,
    /// Series ids (committed ones only: forgotten when a transaction fails).
    series: HashMap<(String, String), i64>,
    /// Per running run, how many bytes of its output are in `output_chunks`.
    written_to: HashMap<(String, String, u64), u64>,
    /// Counters, for the log and tests: batches committed, statements sent, round trips
    /// (flights of pipelined statements) made.
    pub(crate) batches: u64,
    pub(crate) statements: u64,
    pub(crate) rounds: u64,
}

/// A statement's parameter, owned.
type Param = (Box<dyn ToSql + Sync>, Type);

fn p<T: ToSql + Sync + 'static>(v: T, t: Type) -> Param {
    (Box::new(v), t)
}

type RunKey = (String, String, u64);

/// One statement of a batch, with its parameters (owned, so that all of a batch's
/// statements exist before the first is sent) and what its answer is checked for.
struct Stmt {
    sql: Cow<'static, str>,
    params: Vec<Param>,
    /// A simple query (`batch_execute`, no parameters): BEGIN, COMMIT, ROLLBACK.
    simple: bool,
    check: Check,
}

/// What a statement's answer means to the writer.
enum Check {
    Nothing,
    /// The statement fails with SQLSTATE 22012 (a division by the count of rows it
    /// changed) when it changed nothing: the batch fails with this message, and the
    /// transaction is aborted before the COMMIT in the same flight.
    Changed(String),
    /// If the statement returns a row, the run's output is in the store up to this byte
    /// (learnt once committed).
    Advance(RunKey, u64),
    /// The run has ended: forget what was written of its output (once committed).
    Forget(RunKey),
}

impl Stmt {
    fn query(sql: impl Into<Cow<'static, str>>, params: Vec<Param>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params,
            simple: false,
            check: Check::Nothing,
        }
    }

    fn simple(sql: impl Into<Cow<'static, str>>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params: Vec::new(),
            simple: true,
            check: Check::Nothing,
        }
    }

    fn check(mut self, check: Check) -> Stmt {
        self.check = check;
        self
    }
}

/// Await `futs` together, each polled in turn (so that each sends its request before the
/// first answer is awaited: tokio-postgres then pipelines them), and give their outputs
/// in order.
pub(crate) async fn in_order<T>(mut futs: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The SQL that appends a (duration, latency) pair (`$n`: 8 bytes, two little-endian
/// u32) to a series' `recent` window, keeping the newest [`RECENT_WINDOW`]: what
/// `store::push_recent` does, in the statement, so that an end needs no read first.
fn push_recent_sql(n: usize) -> String {
    let keep = (RECENT_WINDOW - 1) * 8;
    let whole = "(length(coalesce(recent, ''::bytea)) / 8 * 8)";
    format!(
        "substring(coalesce(recent, ''::bytea) FROM greatest({whole} - {keep}, 0) + 1 \
         FOR least({whole}, {keep})) || ${n}"
    )
}

/// A run's (duration, latency) as `recent` packs them.
fn recent_pair(duration_ms: i64, latency_ms: i64) -> Vec<u8> {
    let c = |v: i64| (v.max(0).min(i64::from(u32::MAX)) as u32).to_le_bytes();
    let mut v = Vec::with_capacity(8);
    v.extend_from_slice(&c(duration_ms));
    v.extend_from_slice(&c(latency_ms));
    v
}

/// The batch's first simple query: BEGIN, each statement bounded by `ms`, and the
/// transaction ended by the server if it sits idle for `ms` (its owner frozen or cut off
/// between two flights: its lock on the lease row must not outlive the lease).
pub(crate) fn begin_sql(ms: u128) -> String {
    format!(
        "BEGIN; SET LOCAL statement_timeout = {ms}; \
         SET LOCAL idle_in_transaction_session_timeout = {ms}"
    )
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
            rounds: 0,
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

    /// Send `stmts` in one flight and wait for every answer (within the statement
    /// timeout): their rows in order, or the first error in order and its statement's
    /// index (0 when the flight itself failed).
    fn send(&mut self, stmts: &[Stmt]) -> Result<Vec<Vec<Row>>, (usize, DbError)> {
        self.statements += stmts.len() as u64;
        self.rounds += 1;
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| (0, DbError::Other("no connection".into())))?;
        let c = conn.client();
        let params: Vec<Vec<(&(dyn ToSql + Sync), Type)>> = stmts
            .iter()
            .map(|s| {
                s.params
                    .iter()
                    .map(|(v, t)| (v.as_ref(), t.clone()))
                    .collect()
            })
            .collect();
        type Answer<'a> =
            Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + 'a>>;
        let futs: Vec<Answer<'_>> = stmts
            .iter()
            .zip(&params)
            .map(|(s, ps)| -> Answer<'_> {
                if s.simple {
                    Box::pin(async move { c.batch_execute(&s.sql).await.map(|()| Vec::new()) })
                } else {
                    Box::pin(c.query_typed(&s.sql, ps))
                }
            })
            .collect();
        let answers = conn
            .run(self.stmt, async { Ok(in_order(futs).await) })
            .map_err(|e| (0, e))?;
        answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.map_err(|e| (i, DbError::from(e))))
            .collect()
    }

    fn sid(&self, chain: &str, task: &str) -> Result<i64, DbError> {
        self.series
            .get(&(chain.to_string(), task.to_string()))
            .copied()
            .ok_or_else(|| DbError::Other(format!("no series id for {chain}/{task}")))
    }

    /// The batch's transaction: BEGIN, fence, ops, COMMIT, in one flight when it can.
    /// On error, whether the transaction may still be open (a ROLLBACK is due).
    fn transaction(
        &mut self,
        batch: &[Op],
        chain: &str,
        holder: &str,
        epoch: i64,
    ) -> Result<Vec<Advance>, (DbError, bool)> {
        let ms = self.stmt.as_millis().max(1);
        let mut round = vec![
            Stmt::simple(begin_sql(ms)),
            Stmt::query(
                "SELECT run_chain.fence($1, $2, $3)",
                vec![
                    p(chain.to_string(), Type::TEXT),
                    p(holder.to_string(), Type::TEXT),
                    p(epoch, Type::INT8),
                ],
            ),
        ];
        // Ids not known yet are asked first, in the transaction (a new series row is
        // committed with the batch or not at all).
        let mut missing: Vec<(String, String)> = Vec::new();
        for k in series_of(batch) {
            if !self.series.contains_key(&k) && !missing.contains(&k) {
                missing.push(k);
            }
        }
        if self.instance.is_none() || !missing.is_empty() {
            let first = round.len();
            if self.instance.is_none() {
                round.push(self.instance_stmt(holder));
            }
            for (c, t) in &missing {
                round.push(Stmt::query(
                    "INSERT INTO run_chain.series (chain, task) VALUES ($1, $2)
                     ON CONFLICT (chain, task) DO UPDATE SET chain = EXCLUDED.chain RETURNING id",
                    vec![p(c.clone(), Type::TEXT), p(t.clone(), Type::TEXT)],
                ));
            }
            let rows = self.send(&round).map_err(|(_, e)| (e, true))?;
            let mut ids = rows[first..]
                .iter()
                .map(|r| -> Result<i64, DbError> { Ok(first_row(r)?.try_get(0)?) });
            if self.instance.is_none() {
                if let Some(id) = ids.next() {
                    self.instance = Some(id.map_err(|e| (e, true))?);
                }
            }
            for (k, id) in missing.into_iter().zip(ids) {
                self.series.insert(k, id.map_err(|e| (e, true))?);
            }
            round.clear();
        }
        let instance = self
            .instance
            .ok_or_else(|| (DbError::Other("no instance id".into()), true))?;
        let first = round.len();
        for op in batch {
            self.plan(op, instance, epoch, &mut round)
                .map_err(|e| (e, true))?;
        }
        round.push(Stmt::simple("COMMIT"));
        // After an error the transaction is over: the COMMIT was in the flight (and
        // rolled back, the transaction being aborted).
        let rows = self.send(&round).map_err(|(i, e)| {
            let e = match (&round[i].check, e) {
                (Check::Changed(m), DbError::Sql { code, .. }) if code == "22012" => {
                    DbError::Other(m.clone())
                }
                (_, e) => e,
            };
            (e, false)
        })?;
        let mut adv = Vec::new();
        for (s, r) in round[first..].iter().zip(&rows[first..]) {
            match &s.check {
                Check::Nothing | Check::Changed(_) => {}
                Check::Advance(k, n) if !r.is_empty() => adv.push(Advance::To(k.clone(), *n)),
                Check::Advance(..) => {}
                Check::Forget(k) => adv.push(Advance::Forget(k.clone())),
            }
        }
        Ok(adv)
    }

    fn instance_stmt(&self, holder: &str) -> Stmt {
        let pid = i32::try_from(self.me.pid).unwrap_or(i32::MAX);
        Stmt::query(
            "INSERT INTO run_chain.instances (holder, host, pid, version, config_digest)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (holder) DO UPDATE SET host = EXCLUDED.host,
               config_digest = EXCLUDED.config_digest RETURNING id",
            vec![
                p(holder.to_string(), Type::TEXT),
                p(self.me.host.clone(), Type::TEXT),
                p(pid, Type::INT4),
                p(self.me.version.clone(), Type::TEXT),
                p(self.me.config_digest.clone(), Type::TEXT),
            ],
        )
    }

    /// The statements of one op (series ids known), appended to `out`.
    fn plan(&self, op: &Op, instance: i64, epoch: i64, out: &mut Vec<Stmt>) -> Result<(), DbError> {
        let host = self.me.host.clone();
        match op {
            Op::Queued(s) => {
                let sid = self.sid(&s.chain, &s.task)?;
                out.push(Stmt::query(
                    "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, outcome,
                       \"trigger\", requested_by, host, epoch)
                     VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9)
                     ON CONFLICT (series, run_id) DO NOTHING",
                    vec![
                        p(sid, Type::INT8),
                        p(s.run_id as i64, Type::INT8),
                        p(instance, Type::INT8),
                        p(s.scheduled_ms as i64, Type::INT8),
                        p(s.start_ms as i64, Type::INT8),
                        p(s.trigger, Type::TEXT),
                        p(s.requested_by.clone(), Type::TEXT),
                        p(host, Type::TEXT),
                        p(epoch, Type::INT8),
                    ],
                ));
            }
            Op::Start(s) => out.push(self.start(s, instance, epoch, host)?),
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
                let sid = self.sid(chain, task)?;
                let rid = *run_id as i64;
                let update = Stmt::query(
                    "UPDATE run_chain.runs SET output_bytes = $3, output_cut = $4
                     WHERE series = $1 AND run_id = $2 AND stop_ms IS NULL RETURNING id",
                    vec![
                        p(sid, Type::INT8),
                        p(rid, Type::INT8),
                        p(total as i64, Type::INT8),
                        p(*output_cut, Type::BOOL),
                    ],
                );
                if from < total {
                    let skip = usize::try_from(from - tail_from).unwrap_or(usize::MAX);
                    let data: Vec<u8> = output.get(skip..).unwrap_or(&[]).to_vec();
                    out.push(update.check(Check::Advance(key, total)));
                    out.push(Stmt::query(
                        "INSERT INTO run_chain.output_chunks (run, off, data)
                         SELECT id, $3, $4 FROM run_chain.runs
                         WHERE series = $1 AND run_id = $2 AND stop_ms IS NULL
                         ON CONFLICT (run, off) DO UPDATE SET data = EXCLUDED.data
                         WHERE length(EXCLUDED.data) > length(output_chunks.data)",
                        vec![
                            p(sid, Type::INT8),
                            p(rid, Type::INT8),
                            p(from as i64, Type::INT8),
                            p(data, Type::BYTEA),
                        ],
                    ));
                } else {
                    out.push(update);
                }
                if tail_from > 0 {
                    out.push(Stmt::query(
                        "DELETE FROM run_chain.output_chunks WHERE run =
                           (SELECT id FROM run_chain.runs
                            WHERE series = $1 AND run_id = $2 AND stop_ms IS NULL)
                         AND off + length(data) <= $3",
                        vec![
                            p(sid, Type::INT8),
                            p(rid, Type::INT8),
                            p(tail_from as i64, Type::INT8),
                        ],
                    ));
                }
            }
            Op::End(e) => self.end(e, instance, epoch, host, out)?,
            Op::Alert { chain, task, kind } => {
                let sid = self.sid(chain, task)?;
                out.push(Stmt::query(
                    "INSERT INTO run_chain.alerts (series, kind, count) VALUES ($1, $2, 1)
                     ON CONFLICT (series, kind) DO UPDATE SET count = alerts.count + 1",
                    vec![p(sid, Type::INT8), p(*kind, Type::TEXT)],
                ));
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
                out.push(Stmt::query(
                    "INSERT INTO run_chain.chain_state (chain, state, due_at, epoch, updated_at)
                     VALUES ($1, $2::text::jsonb,
                             CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3) END,
                             $4, now())
                     ON CONFLICT (chain) DO UPDATE SET state = EXCLUDED.state, due_at = EXCLUDED.due_at,
                       epoch = EXCLUDED.epoch, updated_at = now()",
                    vec![
                        p(chain.clone(), Type::TEXT),
                        p(json.clone(), Type::TEXT),
                        p(left, Type::FLOAT8),
                        p(epoch, Type::INT8),
                    ],
                ));
            }
            Op::Interrupted {
                chain,
                stop_ms,
                error,
            } => out.push(close_open_runs(chain, *stop_ms as i64, error)),
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
                out.push(Stmt::query(
                    "DELETE FROM run_chain.runs r USING run_chain.series s
                     WHERE s.id = r.series AND s.chain = $1 AND r.outcome = 'queued'
                       AND NOT (s.task IS NOT DISTINCT FROM $2 AND r.run_id IS NOT DISTINCT FROM $3)",
                    vec![
                        p(chain.clone(), Type::TEXT),
                        p(keep_task, Type::TEXT),
                        p(keep_id, Type::INT8),
                    ],
                ));
                let stop = *stop_ms as i64;
                out.push(close_open_runs(chain, stop, END_NOT_KNOWN));
                if let Some((task, run_id, since)) = running {
                    let sid = self.sid(chain, task)?;
                    let (rid, since) = (*run_id as i64, *since as i64);
                    let duration = (stop - since).max(0);
                    // The run is counted in its series only if this wrote it.
                    out.push(Stmt::query(
                        "WITH i AS (
                           INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms,
                             outcome, duration_ms, error, host, epoch)
                           VALUES ($1, $2, $3, $4, $4, $5, 'interrupted', $6, $7, $8, $9)
                           ON CONFLICT (series, run_id) DO NOTHING RETURNING id)
                         UPDATE run_chain.series SET runs = runs + 1, interrupted = interrupted + 1,
                           duration_sum_ms = duration_sum_ms + $6, running_run_id = NULL, running_since_ms = NULL
                         WHERE id = $1 AND EXISTS (SELECT 1 FROM i)",
                        vec![
                            p(sid, Type::INT8),
                            p(rid, Type::INT8),
                            p(instance, Type::INT8),
                            p(since, Type::INT8),
                            p(stop, Type::INT8),
                            p(duration, Type::INT8),
                            p(END_NOT_KNOWN, Type::TEXT),
                            p(host, Type::TEXT),
                            p(epoch, Type::INT8),
                        ],
                    ));
                }
            }
            // The guardian writes the local store only (it has no connection).
            Op::Killed(_) => {}
            Op::Mail {
                chain,
                message_id,
                bytes,
            } => out.push(Stmt::query(
                super::outbox::PUT,
                vec![
                    p(chain.clone(), Type::TEXT),
                    p(message_id.clone(), Type::TEXT),
                    p(bytes.clone(), Type::BYTEA),
                ],
            )),
        }
        Ok(())
    }

    /// A run's start: one statement. Replaces a `queued` row of the same run; a second
    /// start of the run (its PID, after the spawn) only adds the PID; a closed run is
    /// never reopened: a run id already recorded as ended is refused (the statement fails,
    /// so the batch does: the start gate holds the run), never silently written over. The
    /// first start marks the series running.
    fn start(
        &self,
        s: &RunStart,
        instance: i64,
        epoch: i64,
        host: String,
    ) -> Result<Stmt, DbError> {
        let sid = self.sid(&s.chain, &s.task)?;
        let pid: Option<i64> = s.task_pid.map(i64::from);
        Ok(Stmt::query(
            "WITH up AS (
               INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, task_pid,
                 \"trigger\", requested_by, host, epoch)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (series, run_id) DO UPDATE SET instance = EXCLUDED.instance,
                 scheduled_ms = EXCLUDED.scheduled_ms, start_ms = EXCLUDED.start_ms,
                 task_pid = coalesce(EXCLUDED.task_pid, runs.task_pid), outcome = NULL,
                 \"trigger\" = EXCLUDED.\"trigger\", requested_by = EXCLUDED.requested_by,
                 host = EXCLUDED.host, epoch = EXCLUDED.epoch
               WHERE runs.stop_ms IS NULL
               RETURNING 1),
             running AS (
               UPDATE run_chain.series SET running_run_id = $2, running_since_ms = $5
               WHERE id = $1 AND $6::int8 IS NULL AND EXISTS (SELECT 1 FROM up))
             SELECT 1 / (SELECT count(*)::int FROM up)",
            vec![
                p(sid, Type::INT8),
                p(s.run_id as i64, Type::INT8),
                p(instance, Type::INT8),
                p(s.scheduled_ms as i64, Type::INT8),
                p(s.start_ms as i64, Type::INT8),
                p(pid, Type::INT8),
                p(s.trigger, Type::TEXT),
                p(s.requested_by.clone(), Type::TEXT),
                p(host, Type::TEXT),
                p(epoch, Type::INT8),
            ],
        )
        .check(Check::Changed(format!(
            "run {} of {} is recorded as ended already: its id is not given again",
            s.run_id, s.task
        ))))
    }

    /// A run's end: one statement that writes the run (whole if its start never was: a
    /// spawn error), and only if it closed an open row deletes its output chunks and
    /// counts it in the series (so that an end applied again counts nothing twice); then
    /// the prunes.
    fn end(
        &self,
        e: &RunEnd,
        instance: i64,
        epoch: i64,
        host: String,
        out: &mut Vec<Stmt>,
    ) -> Result<(), DbError> {
        let sid = self.sid(&e.chain, &e.task)?;
        let duration = e.stop_ms.saturating_sub(e.start_ms) as i64;
        let latency = e.start_ms.saturating_sub(e.scheduled_ms) as i64;
        let column = match e.outcome {
            "ok" => "ok",
            "failed" => "failed",
            "timeout" => "timeout",
            "signal" => "signal",
            "spawn-error" => "spawn_error",
            _ => "interrupted",
        };
        let last_exit: Option<i64> = e.exit_code.or(e.signal.map(|s| 128 + s)).map(i64::from);
        let streak_start: Option<i64> = e.streak.map(|s| s.0 as i64);
        let streak_failures: i64 = e.streak.map_or(0, |s| s.1 as i64);
        let recent = push_recent_sql(24);
        out.push(
            Stmt::query(
                format!(
                    "WITH e AS (
                       INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms,
                         outcome, exit_code, signal, duration_ms, latency_ms, output, output_bytes, output_cut,
                         error, \"trigger\", requested_by, host, epoch)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
                       ON CONFLICT (series, run_id) DO UPDATE SET stop_ms = EXCLUDED.stop_ms,
                         outcome = EXCLUDED.outcome, exit_code = EXCLUDED.exit_code, signal = EXCLUDED.signal,
                         duration_ms = EXCLUDED.duration_ms, latency_ms = EXCLUDED.latency_ms,
                         output = EXCLUDED.output, output_bytes = EXCLUDED.output_bytes,
                         output_cut = EXCLUDED.output_cut, error = EXCLUDED.error
                       WHERE runs.stop_ms IS NULL
                       RETURNING id),
                     chunks AS (DELETE FROM run_chain.output_chunks WHERE run IN (SELECT id FROM e))
                     UPDATE run_chain.series SET recent = {recent}, runs = runs + 1,
                       {column} = {column} + 1,
                       duration_sum_ms = duration_sum_ms + $10, latency_sum_ms = latency_sum_ms + $11,
                       last_run_id = $2, last_outcome = $7, last_exit_code = $20, last_scheduled_ms = $4,
                       last_start_ms = $5, last_stop_ms = $6, last_duration_ms = $10,
                       last_success_ms = CASE WHEN $21 THEN $6 ELSE last_success_ms END,
                       running_run_id = NULL, running_since_ms = NULL,
                       streak_start_ms = $22, streak_failures = $23,
                       runs_kick = runs_kick + ($16 = 'kick')::int,
                       runs_manual = runs_manual + ($16 = 'manual')::int
                     WHERE id = $1 AND EXISTS (SELECT 1 FROM e)"
                ),
                vec![
                    p(sid, Type::INT8),
                    p(e.run_id as i64, Type::INT8),
                    p(instance, Type::INT8),
                    p(e.scheduled_ms as i64, Type::INT8),
                    p(e.start_ms as i64, Type::INT8),
                    p(e.stop_ms as i64, Type::INT8),
                    p(e.outcome, Type::TEXT),
                    p(e.exit_code.map(i64::from), Type::INT8),
                    p(e.signal.map(i64::from), Type::INT8),
                    p(duration, Type::INT8),
                    p(latency, Type::INT8),
                    p(e.output.clone(), Type::BYTEA),
                    p(e.output_bytes as i64, Type::INT8),
                    p(e.output_cut, Type::BOOL),
                    p(e.error.clone(), Type::TEXT),
                    p(e.trigger, Type::TEXT),
                    p(e.requested_by.clone(), Type::TEXT),
                    p(host, Type::TEXT),
                    p(epoch, Type::INT8),
                    p(last_exit, Type::INT8),
                    p(e.outcome == "ok", Type::BOOL),
                    p(streak_start, Type::INT8),
                    p(streak_failures, Type::INT8),
                    p(recent_pair(duration, latency), Type::BYTEA),
                ],
            )
            .check(Check::Forget((e.chain.clone(), e.task.clone(), e.run_id))),
        );
        // Prune, bounded per run (as SQLite): by count, then by age.
        if e.run_id > e.keep_runs_max {
            out.push(Stmt::query(
                "DELETE FROM run_chain.runs WHERE id IN
                 (SELECT id FROM run_chain.runs WHERE series = $1 AND run_id <= $2 ORDER BY run_id LIMIT 1000)",
                vec![
                    p(sid, Type::INT8),
                    p((e.run_id - e.keep_runs_max) as i64, Type::INT8),
                ],
            ));
        }
        out.push(Stmt::query(
            "DELETE FROM run_chain.runs WHERE id IN
             (SELECT id FROM run_chain.runs WHERE series = $1 ORDER BY run_id LIMIT 100)
             AND start_ms < $2 AND stop_ms IS NOT NULL",
            vec![p(sid, Type::INT8), p(e.keep_after_ms as i64, Type::INT8)],
        ));
        Ok(())
    }

    fn forget(&mut self) {
        self.series.clear();
        self.instance = None;
    }
}

/// The series (chain, task) the ops of `batch` write to.
fn series_of(batch: &[Op]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for op in batch {
        match op {
            Op::Queued(s) | Op::Start(s) => v.push((s.chain.clone(), s.task.clone())),
            Op::Output { chain, task, .. } | Op::Alert { chain, task, .. } => {
                v.push((chain.clone(), task.clone()));
            }
            Op::End(e) => v.push((e.chain.clone(), e.task.clone())),
            Op::CloseOpen {
                chain,
                running: Some((task, ..)),
                ..
            } => v.push((chain.clone(), task.clone())),
            Op::CloseOpen { .. }
            | Op::State { .. }
            | Op::Interrupted { .. }
            | Op::Killed(_)
            | Op::Mail { .. } => {}
        }
    }
    v
}

/// Close the chain's open runs as `interrupted` at `stop` with `error`, counting them
/// in their series: one statement.
fn close_open_runs(chain: &str, stop: i64, error: &str) -> Stmt {
    Stmt::query(
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
        vec![
            p(chain.to_string(), Type::TEXT),
            p(stop, Type::INT8),
            p(error.to_string(), Type::TEXT),
        ],
    )
}

/// What a committed batch teaches the writer about output already written.
enum Advance {
    To(RunKey, u64),
    Forget(RunKey),
}

fn first_row(rows: &[Row]) -> Result<&Row, DbError> {
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
        match self.transaction(batch, chain, holder, *epoch) {
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
            Err((e, open)) => {
                self.series = series;
                self.instance = instance;
                let broken = !matches!(e, DbError::Sql { .. });
                let mut after = Vec::new();
                if broken {
                    // A timeout's answer may still come: the connection is not to be used.
                    self.conn = None;
                    self.forget();
                } else if open {
                    after.push(Stmt::simple("ROLLBACK"));
                }
                match e {
                    DbError::Sql { code, .. } if code == FENCED => {
                        after.push(Stmt::query(
                            "UPDATE run_chain.leases SET fenced_writes = fenced_writes + 1 WHERE chain = $1",
                            vec![p(chain.clone(), Type::TEXT)],
                        ));
                        let counted = self.send(&after);
                        log::warn!(
                            "{chain}: fleet: a write batch ({} records) was fenced off: the lease (epoch {epoch}) is no longer this instance's{}",
                            batch.len(),
                            if counted.is_ok() { "" } else { " (not counted in run_chain.leases)" }
                        );
                        Err(WriteError::Fenced)
                    }
                    e => {
                        if !after.is_empty() {
                            let _ = self.send(&after);
                        }
                        match e {
                            DbError::Sql { code, message }
                                if code.starts_with("40") || code == "57014" =>
                            {
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

#[cfg(test)]
mod tests {
    use super::begin_sql;

    #[test]
    fn a_batch_left_idle_is_ended_by_the_server_within_its_statement_bound() {
        let sql = begin_sql(400);
        assert!(sql.starts_with("BEGIN;"), "{sql}");
        assert!(sql.contains("SET LOCAL statement_timeout = 400"), "{sql}");
        assert!(
            sql.contains("SET LOCAL idle_in_transaction_session_timeout = 400"),
            "{sql}"
        );
    }
}
