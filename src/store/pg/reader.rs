//! The fleet's read side: who owns which chain (the lease rows), who waits for it (the
//! standbys seen within the last lease), what each chain does now (`chain_state`, when
//! the schema has it), for `status`, the metrics and the console of any host.
//!
//! Readers are commands (`status`, `metrics`, `serve`): each connects from its own thread
//! with [`Conn::connect`] and a short timeout, reads, and drops the connection. Only
//! unnamed statements (`query_typed`): PgBouncer's transaction pooling must work.
//!
//! Columns a later schema adds (the lease's `failovers` and `fenced_writes` counters) are
//! read through `to_jsonb(row)`, so that one reader works over every schema version: a
//! counter the schema does not have yet reads as None (and is not exported).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::types::Type;

use super::conn::{Conn, ConnError, DbError};
use crate::config::FleetConfig;

/// How long a reader waits for the database to answer a connect or a statement.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(5);

/// A standby instance of a chain, seen within the last lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StandbyRow {
    pub(crate) host: String,
    /// When it last tried to acquire (wall ms, the database's clock).
    pub(crate) seen_ms: u64,
}

/// One chain of the fleet: its lease row and its standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub(crate) chain: String,
    /// The host named by the row (None: released or never held).
    pub(crate) host: Option<String>,
    pub(crate) epoch: i64,
    /// When the lease expires (wall ms, the database's clock; None: never held).
    pub(crate) expires_ms: Option<u64>,
    /// Whether a holder's lease is unexpired now (on the database's clock).
    pub(crate) held: bool,
    /// Lease changes to another holder after an expiry (None: the schema has no counter).
    pub(crate) failovers: Option<u64>,
    /// Write batches refused by the fence (None: the schema has no counter).
    pub(crate) fenced_writes: Option<u64>,
    pub(crate) standbys: Vec<StandbyRow>,
    /// The chain's carried-over state (`chain_state.state`, as JSON text), if kept there.
    pub(crate) state: Option<String>,
}

impl LeaseRow {
    /// The host that owns the chain now: the row's host while its lease is unexpired.
    pub(crate) fn owner(&self) -> Option<&str> {
        self.host.as_deref().filter(|_| self.held)
    }
}

/// What the fleet's store says, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FleetRows {
    /// By chain name.
    pub(crate) chains: BTreeMap<String, LeaseRow>,
    /// The database's clock when read (wall ms).
    pub(crate) now_ms: u64,
}

const LEASES: &str = "SELECT l.chain, l.host, l.epoch,
    CASE WHEN isfinite(l.expires_at) THEN (extract(epoch FROM l.expires_at) * 1000)::int8 END,
    l.holder IS NOT NULL AND l.expires_at > now(),
    (to_jsonb(l) ->> 'failovers')::int8,
    (to_jsonb(l) ->> 'fenced_writes')::int8,
    (extract(epoch FROM now()) * 1000)::int8
  FROM run_chain.leases l ORDER BY l.chain";

const STANDBYS: &str = "SELECT s.chain, s.host, (extract(epoch FROM s.seen_at) * 1000)::int8
  FROM run_chain.standbys s
  WHERE s.seen_at > now() - make_interval(secs => $1)
  ORDER BY s.chain, s.host, s.seen_at";

/// `chain_state` exists from schema version 2 on; `to_regclass` says whether it is there.
const STATES: &str = "SELECT to_regclass('run_chain.chain_state') IS NOT NULL";
const STATE_ROWS: &str = "SELECT chain, state::text FROM run_chain.chain_state";

/// Connect, read the fleet ([`fleet`]) and disconnect, or say why not: `Refused` (what
/// the user must fix: password, foreign database) or `Unreachable`, each naming the
/// redacted URL. A database without run-chain's schema has no chains yet.
pub(crate) fn read(cfg: &FleetConfig) -> Result<FleetRows, ConnError> {
    let conn = Conn::connect(cfg, READ_WAIT)?;
    let rows = match version(&conn)? {
        None => return Ok(FleetRows::default()),
        Some(v) if v >= 2 => fleet_v2(&conn, cfg.lease),
        Some(_) => fleet(&conn, cfg.lease),
    };
    rows.map_err(|e| {
        ConnError::Unreachable(format!("{}: reading the fleet's leases: {e}", conn.shown()))
    })
}

/// Read every lease, its standbys seen within `lease`, and each chain's state if kept.
pub(crate) fn fleet(conn: &Conn, lease: Duration) -> Result<FleetRows, DbError> {
    let c = conn.client();
    let rows = conn.run(READ_WAIT, c.query_typed(LEASES, &[]))?;
    let mut out = FleetRows::default();
    let u = |v: i64| v.max(0) as u64;
    for r in rows {
        let chain: String = r.try_get(0)?;
        out.now_ms = u(r.try_get(7)?);
        out.chains
            .insert(chain.clone(), lease_row(&r, chain, Vec::new(), None)?);
    }
    let secs = lease.as_secs_f64();
    for r in conn.run(READ_WAIT, c.query_typed(STANDBYS, &[(&secs, Type::FLOAT8)]))? {
        let chain: String = r.try_get(0)?;
        let host: Option<String> = r.try_get(1)?;
        let seen: Option<i64> = r.try_get(2)?;
        if let Some(row) = out.chains.get_mut(&chain) {
            row.standbys.push(StandbyRow {
                host: host.unwrap_or_default(),
                seen_ms: seen.map_or(0, u),
            });
        }
    }
    let has_states = conn
        .run(READ_WAIT, c.query_typed(STATES, &[]))?
        .first()
        .map(|r| r.try_get::<_, bool>(0))
        .transpose()?
        .unwrap_or(false);
    if has_states {
        for r in conn.run(READ_WAIT, c.query_typed(STATE_ROWS, &[]))? {
            let chain: String = r.try_get(0)?;
            if let Some(row) = out.chains.get_mut(&chain) {
                row.state = r.try_get(1)?;
            }
        }
    }
    Ok(out)
}

/// Every lease with its standbys seen within `$1` seconds and its chain's state, in one
/// statement (schema version 2 on: `chain_state` and the lease's counters are there).
const FLEET_V2: &str = "SELECT l.chain, l.host, l.epoch,
    CASE WHEN isfinite(l.expires_at) THEN (extract(epoch FROM l.expires_at) * 1000)::int8 END,
    l.holder IS NOT NULL AND l.expires_at > now(),
    l.failovers::int8, l.fenced_writes::int8,
    (extract(epoch FROM now()) * 1000)::int8,
    sb.hosts, sb.seen, cs.state::text
  FROM run_chain.leases l
  LEFT JOIN run_chain.chain_state cs ON cs.chain = l.chain
  LEFT JOIN LATERAL (
    SELECT array_agg(coalesce(s.host, '') ORDER BY s.host, s.seen_at) AS hosts,
           array_agg(coalesce((extract(epoch FROM s.seen_at) * 1000)::int8, 0)
                     ORDER BY s.host, s.seen_at) AS seen
    FROM run_chain.standbys s
    WHERE s.chain = l.chain AND s.seen_at > now() - make_interval(secs => $1)) sb ON true
  ORDER BY l.chain";

/// A lease from columns 1-6 of [`LEASES`] and [`FLEET_V2`] (host, epoch, expiry, held,
/// failovers, fenced writes) of chain `chain`'s row, with its standbys and state.
fn lease_row(
    r: &tokio_postgres::Row,
    chain: String,
    standbys: Vec<StandbyRow>,
    state: Option<String>,
) -> Result<LeaseRow, tokio_postgres::Error> {
    Ok(LeaseRow {
        chain,
        host: r.try_get(1)?,
        epoch: r.try_get(2)?,
        expires_ms: r.try_get::<_, Option<i64>>(3)?.map(u),
        held: r.try_get(4)?,
        failovers: r.try_get::<_, Option<i64>>(5)?.map(u),
        fenced_writes: r.try_get::<_, Option<i64>>(6)?.map(u),
        standbys,
        state,
    })
}

/// [`fleet`] in one statement ([`FLEET_V2`]), for a schema of version 2 or later.
pub(crate) fn fleet_v2(conn: &Conn, lease: Duration) -> Result<FleetRows, DbError> {
    let secs = lease.as_secs_f64();
    let rows = conn.run(
        READ_WAIT,
        conn.client()
            .query_typed(FLEET_V2, &[(&secs, Type::FLOAT8)]),
    )?;
    fleet_rows_v2(&rows)
}

fn fleet_rows_v2(rows: &[tokio_postgres::Row]) -> Result<FleetRows, DbError> {
    let mut out = FleetRows::default();
    let u = |v: i64| v.max(0) as u64;
    for r in rows {
        let chain: String = r.try_get(0)?;
        out.now_ms = u(r.try_get(7)?);
        let hosts: Vec<String> = r.try_get::<_, Option<Vec<String>>>(8)?.unwrap_or_default();
        let seen: Vec<i64> = r.try_get::<_, Option<Vec<i64>>>(9)?.unwrap_or_default();
        let standbys = hosts
            .into_iter()
            .zip(seen)
            .map(|(host, seen)| StandbyRow {
                host,
                seen_ms: u(seen),
            })
            .collect();
        let state = r.try_get(10)?;
        out.chains
            .insert(chain.clone(), lease_row(r, chain, standbys, state)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The records (schema version 2): what `Reader::Pg` answers for history, log, status,
// the metrics and the console. Same rows as SQLite's (`RunRow`, `SeriesRow`); numbers are
// cast to int8 in the SQL, so the Rust side reads one type whatever the column's.
// ---------------------------------------------------------------------------------------

use crate::store::{unpack_recent, Recent, RunRow, SeriesRow};

/// The fleet's store open for reading its records.
pub(crate) struct PgReader {
    conn: Conn,
    /// Each statement's client-side timeout.
    wait: Duration,
}

/// Open the fleet's store for reading its records: None when its schema has no records
/// yet (version 1: leases only). Errors as [`read`]'s.
pub(crate) fn open(cfg: &FleetConfig) -> Result<Option<PgReader>, ConnError> {
    let conn = Conn::connect(cfg, READ_WAIT)?;
    Ok(match version(&conn)? {
        Some(v) if v >= 2 => Some(PgReader {
            conn,
            wait: READ_WAIT,
        }),
        _ => None,
    })
}

/// What `status` reads of the fleet's store, for a command of its own (no shared reader):
/// connect, then in one flight the version check ([`QUICK_VERSION`]), the series and the
/// fleet ([`PgReader::status`]'s two statements); None when the schema keeps no records
/// (version 1, or none yet: RUN_ROOT keeps them). Anything unusual in the flight (no
/// schema yet, a foreign one) is sorted out as [`open`] does, and then read apart.
pub(crate) fn status_read(
    cfg: &FleetConfig,
) -> Result<Option<(Vec<SeriesRow>, FleetRows)>, ConnError> {
    let conn = Conn::connect(cfg, READ_WAIT)?;
    let c = conn.client();
    let secs = cfg.lease.as_secs_f64();
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] = [(&secs, Type::FLOAT8)];
    let futs: Vec<Answer<'_>> = vec![
        Box::pin(c.query_typed(QUICK_VERSION, &[])),
        Box::pin(c.query_typed(STATUS_SERIES, &[])),
        Box::pin(c.query_typed(FLEET_V2, &params)),
    ];
    let answers = conn
        .run(READ_WAIT, async { Ok(super::write::in_order(futs).await) })
        .map_err(|e| ConnError::Unreachable(format!("{}: {e}", conn.shown())))?;
    if let [Ok(v), Ok(series), Ok(leases)] = answers.as_slice() {
        if one_version(v).is_some_and(|v| v >= 2) {
            let shown = conn.shown();
            let series = series
                .iter()
                .map(status_series_row)
                .collect::<Result<_, _>>()
                .map_err(|e| ConnError::Unreachable(format!("{shown}: {e}")))?;
            let fleet = fleet_rows_v2(leases)
                .map_err(|e| ConnError::Unreachable(format!("{shown}: {e}")))?;
            return Ok(Some((series, fleet)));
        }
    }
    match super::schema::version(&conn)? {
        Some(v) if v >= 2 => PgReader {
            conn,
            wait: READ_WAIT,
        }
        .status(cfg.lease)
        .map(Some)
        .map_err(ConnError::Unreachable),
        _ => Ok(None),
    }
}

/// The schema's version: [`quick_version`], else [`super::schema::version`].
fn version(conn: &Conn) -> Result<Option<u32>, ConnError> {
    match quick_version(conn) {
        Some(v) => Ok(Some(v)),
        None => super::schema::version(conn),
    }
}

/// The schema's version in one statement, when the database is plainly run-chain's (its
/// `run_chain.meta` has one row, run-chain's, with a version); None for anything else
/// (no schema yet, a foreign table, an error), which [`super::schema::version`] then
/// sorts out with its exact words (two statements).
fn quick_version(conn: &Conn) -> Option<u32> {
    let rows = conn
        .run(READ_WAIT, conn.client().query_typed(QUICK_VERSION, &[]))
        .ok()?;
    one_version(&rows)
}

/// run-chain's row of `run_chain.meta`: its version (`schema::APP`'s name, spelt here).
const QUICK_VERSION: &str =
    "SELECT version::int8 FROM run_chain.meta WHERE app::text = 'run-chain'";

fn one_version(rows: &[tokio_postgres::Row]) -> Option<u32> {
    match rows {
        [one] => u32::try_from(one.try_get::<_, Option<i64>>(0).ok()??).ok(),
        _ => None,
    }
}

/// A statement's answer, boxed, for [`super::write::in_order`].
type Answer<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>>
            + 'a,
    >,
>;

impl PgReader {
    /// A reader over a connection made by its owner (the chain's DB thread), each
    /// statement within `wait`; [`PgReader::into_conn`] gives the connection back.
    pub(crate) fn over(conn: Conn, wait: Duration) -> PgReader {
        PgReader { conn, wait }
    }

    pub(crate) fn into_conn(self) -> Conn {
        self.conn
    }

    /// The fleet's leases through this reader's connection ([`fleet_v2`]: a reader's
    /// schema keeps the records, so it is of version 2 or later).
    pub(crate) fn fleet(&self, lease: Duration) -> Result<FleetRows, String> {
        fleet_v2(&self.conn, lease).map_err(|e| format!("{}: {e}", self.conn.shown()))
    }

    /// What `status` reads of the fleet's store, in one round trip: every series with
    /// the columns `status` shows ([`STATUS_SERIES`]; no `recent` window), and the fleet
    /// ([`FLEET_V2`]), the two statements pipelined.
    pub(crate) fn status(&self, lease: Duration) -> Result<(Vec<SeriesRow>, FleetRows), String> {
        let c = self.conn.client();
        let secs = lease.as_secs_f64();
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] =
            [(&secs, Type::FLOAT8)];
        let futs: Vec<Answer<'_>> = vec![
            Box::pin(c.query_typed(STATUS_SERIES, &[])),
            Box::pin(c.query_typed(FLEET_V2, &params)),
        ];
        let shown = self.conn.shown();
        let mut answers = self
            .conn
            .run(READ_WAIT, async { Ok(super::write::in_order(futs).await) })
            .map_err(|e| format!("{shown}: {e}"))?
            .into_iter();
        let mut next = || -> Result<Vec<tokio_postgres::Row>, String> {
            answers
                .next()
                .unwrap_or_else(|| Ok(Vec::new()))
                .map_err(|e| format!("{shown}: {}", DbError::from(e)))
        };
        let (series, leases) = (next()?, next()?);
        let series = series
            .iter()
            .map(status_series_row)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{shown}: {e}"))?;
        let fleet = fleet_rows_v2(&leases).map_err(|e| format!("{shown}: {e}"))?;
        Ok((series, fleet))
    }

    fn rows(
        &self,
        sql: &str,
        params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        self.conn
            .run(self.wait, self.conn.client().query_typed(sql, params))
            .map_err(|e| format!("{}: {e}", self.conn.shown()))
    }
}

const PG_RUN_COLUMNS: &str = "s.chain, s.task, r.run_id::int8, COALESCE(r.host, i.host, ''),
    r.scheduled_ms::int8, r.start_ms::int8, r.stop_ms::int8, r.outcome, r.exit_code::int8, r.signal::int8,
    r.duration_ms::int8, r.latency_ms::int8, r.output_bytes::int8, r.output_cut, r.error,
    COALESCE(i.pid, 0)::int8, COALESCE(i.version, ''), COALESCE(i.config_digest, ''),
    r.\"trigger\", r.requested_by";

const PG_RUNS_FROM: &str = "FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
    LEFT JOIN run_chain.instances i ON i.id = r.instance";

/// The newest `$LIMIT` runs of each series `s` chosen by the WHERE that follows, read
/// along the UNIQUE (series, run_id) index, newest run id first (as the SQLite reader
/// does): the cost is that of (series x limit) rows, whatever the history's length. Run
/// ids and start times grow together in a series, so the newest by start of the union
/// are among them. `{limit}` is the statement's parameter holding the limit.
fn newest_per_series(limit: &str) -> String {
    format!(
        "FROM run_chain.series s
    CROSS JOIN LATERAL (SELECT * FROM run_chain.runs r0 WHERE r0.series = s.id
                        ORDER BY r0.run_id DESC LIMIT {limit}) r
    LEFT JOIN run_chain.instances i ON i.id = r.instance"
    )
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn run_row(r: &tokio_postgres::Row) -> Result<RunRow, tokio_postgres::Error> {
    let uo = |v: Option<i64>| v.map(u);
    Ok(RunRow {
        chain: r.try_get(0)?,
        task: r.try_get(1)?,
        run_id: u(r.try_get(2)?),
        host: r.try_get(3)?,
        scheduled_ms: uo(r.try_get(4)?),
        start_ms: u(r.try_get(5)?),
        stop_ms: uo(r.try_get(6)?),
        outcome: r.try_get(7)?,
        exit_code: r.try_get::<_, Option<i64>>(8)?.map(|v| v as i32),
        signal: r.try_get::<_, Option<i64>>(9)?.map(|v| v as i32),
        duration_ms: uo(r.try_get(10)?),
        latency_ms: uo(r.try_get(11)?),
        output_bytes: u(r.try_get(12)?),
        output_cut: r.try_get(13)?,
        error: r.try_get(14)?,
        instance_pid: r.try_get::<_, i64>(15)?.max(0) as u32,
        version: r.try_get(16)?,
        config_digest: r.try_get(17)?,
        trigger: r.try_get(18)?,
        requested_by: r.try_get(19)?,
    })
}

fn run_rows(rows: Vec<tokio_postgres::Row>) -> Result<Vec<RunRow>, String> {
    rows.iter()
        .map(run_row)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// The newest `limit` runs of `task` (in `chain`, or every chain), newest first: by
/// start, then run id, then chain name.
pub(crate) fn history(
    p: &PgReader,
    task: &str,
    chain: Option<&str>,
    limit: usize,
) -> Result<Vec<RunRow>, String> {
    let sql = format!(
        "SELECT {PG_RUN_COLUMNS} {}
         WHERE s.task = $1 AND ($2::text IS NULL OR s.chain = $2)
         ORDER BY r.start_ms DESC, r.run_id DESC, s.chain LIMIT $3",
        newest_per_series("$3")
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    run_rows(p.rows(
        &sql,
        &[
            (&task, Type::TEXT),
            (&chain, Type::TEXT),
            (&limit, Type::INT8),
        ],
    )?)
}

/// The kept output of a run (`run_id`, or the newest started run of `task`): the final
/// tail of a finished run, or the chunks kept so far of a running one.
pub(crate) fn output(
    p: &PgReader,
    task: &str,
    chain: Option<&str>,
    run_id: Option<u64>,
) -> Result<Option<(RunRow, Vec<u8>)>, String> {
    let sql = format!(
        "SELECT {PG_RUN_COLUMNS}, r.output, r.id FROM run_chain.series s
         CROSS JOIN LATERAL (SELECT * FROM run_chain.runs r0 WHERE r0.series = s.id
             AND ($3::int8 IS NULL OR r0.run_id = $3)
             AND ($3::int8 IS NOT NULL OR r0.outcome IS NULL OR r0.outcome <> 'queued')
             ORDER BY r0.run_id DESC LIMIT 1) r
         LEFT JOIN run_chain.instances i ON i.id = r.instance
         WHERE s.task = $1 AND ($2::text IS NULL OR s.chain = $2)
         ORDER BY r.start_ms DESC, r.run_id DESC LIMIT 1"
    );
    let id = run_id.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let rows = p.rows(
        &sql,
        &[(&task, Type::TEXT), (&chain, Type::TEXT), (&id, Type::INT8)],
    )?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let mut row = run_row(r).map_err(|e| e.to_string())?;
    let kept: Option<Vec<u8>> = r.try_get(20).map_err(|e| e.to_string())?;
    let out = match kept {
        Some(b) => b,
        None => {
            let pk: i64 = r.try_get(21).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let mut end = 0u64;
            for c in p.rows(
                "SELECT off::int8, data FROM run_chain.output_chunks WHERE run = $1 ORDER BY off",
                &[(&pk, Type::INT8)],
            )? {
                let off: i64 = c.try_get(0).map_err(|e| e.to_string())?;
                let data: Vec<u8> = c.try_get(1).map_err(|e| e.to_string())?;
                if out.is_empty() && off > 0 {
                    row.output_cut = true;
                }
                end = u(off) + data.len() as u64;
                out.extend_from_slice(&data);
            }
            row.output_bytes = row.output_bytes.max(end);
            out
        }
    };
    Ok(Some((row, out)))
}

/// The last run's duration of each task of `chain` (task, ms).
pub(crate) fn durations(p: &PgReader, chain: &str) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    for r in p.rows(
        "SELECT task, last_duration_ms::int8 FROM run_chain.series
         WHERE chain = $1 AND last_duration_ms IS NOT NULL",
        &[(&chain, Type::TEXT)],
    )? {
        let task: String = r.try_get(0).map_err(|e| e.to_string())?;
        let ms: i64 = r.try_get(1).map_err(|e| e.to_string())?;
        out.push((task, u(ms)));
    }
    Ok(out)
}

/// The series' columns `status` shows (its counts, last run, last success and streak): the
/// first 18 columns of [`STATUS_SERIES`] and of [`series`]'s query, read by
/// [`status_series_row`].
macro_rules! status_columns {
    () => {
        "SELECT chain, task, runs::int8, ok::int8, failed::int8, timeout::int8,
    signal::int8, spawn_error::int8, interrupted::int8, last_run_id::int8, last_outcome,
    last_exit_code::int8, last_start_ms::int8, last_stop_ms::int8, last_duration_ms::int8,
    last_success_ms::int8, streak_start_ms::int8, streak_failures::int8"
    };
}

/// Every series with its aggregates and its recent-runs window.
pub(crate) fn series(p: &PgReader) -> Result<Vec<(SeriesRow, Recent)>, String> {
    let rows = p.rows(
        concat!(
            status_columns!(),
            ", duration_sum_ms::int8, latency_sum_ms::int8, last_scheduled_ms::int8,
                running_run_id::int8, running_since_ms::int8, recent
         FROM run_chain.series ORDER BY chain, task"
        ),
        &[],
    )?;
    let one = |r: &tokio_postgres::Row| -> Result<(SeriesRow, Recent), tokio_postgres::Error> {
        let uo = |v: Option<i64>| v.map(u);
        let s = SeriesRow {
            duration_sum_ms: u(r.try_get(18)?),
            latency_sum_ms: u(r.try_get(19)?),
            last_scheduled_ms: uo(r.try_get(20)?),
            running_run_id: uo(r.try_get(21)?),
            running_since_ms: uo(r.try_get(22)?),
            ..status_series_row(r)?
        };
        let blob: Option<Vec<u8>> = r.try_get(23)?;
        Ok((s, unpack_recent(blob.as_deref().unwrap_or_default())))
    };
    rows.iter()
        .map(one)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// The series' columns `status` shows, without the sums, the running run and the `recent`
/// window it does not show.
const STATUS_SERIES: &str = concat!(
    status_columns!(),
    "
  FROM run_chain.series ORDER BY chain, task"
);

/// A row of [`STATUS_SERIES`]: the columns it does not read are left at their defaults
/// (0 or None), which `status` does not show.
fn status_series_row(r: &tokio_postgres::Row) -> Result<SeriesRow, tokio_postgres::Error> {
    let uo = |v: Option<i64>| v.map(u);
    Ok(SeriesRow {
        chain: r.try_get(0)?,
        task: r.try_get(1)?,
        runs: u(r.try_get(2)?),
        ok: u(r.try_get(3)?),
        failed: u(r.try_get(4)?),
        timeout: u(r.try_get(5)?),
        signal: u(r.try_get(6)?),
        spawn_error: u(r.try_get(7)?),
        interrupted: u(r.try_get(8)?),
        last_run_id: uo(r.try_get(9)?),
        last_outcome: r.try_get(10)?,
        last_exit_code: r.try_get::<_, Option<i64>>(11)?.map(|v| v as i32),
        last_start_ms: uo(r.try_get(12)?),
        last_stop_ms: uo(r.try_get(13)?),
        last_duration_ms: uo(r.try_get(14)?),
        last_success_ms: uo(r.try_get(15)?),
        streak_start_ms: uo(r.try_get(16)?),
        streak_failures: u(r.try_get(17)?),
        ..SeriesRow::default()
    })
}

/// Kicked and manual runs, per (chain, task).
pub(crate) fn trigger_counts(p: &PgReader) -> Result<Vec<(String, String, u64, u64)>, String> {
    p.rows(
        "SELECT chain, task, runs_kick::int8, runs_manual::int8 FROM run_chain.series",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            u(r.try_get(2)?),
            u(r.try_get(3)?),
        ))
    })
    .collect::<Result<_, tokio_postgres::Error>>()
    .map_err(|e| e.to_string())
}

/// Alerts decided, per (chain, task, kind).
pub(crate) fn alert_counts(p: &PgReader) -> Result<Vec<(String, String, String, u64)>, String> {
    p.rows(
        "SELECT s.chain, s.task, a.kind, a.count::int8 FROM run_chain.alerts a
         JOIN run_chain.series s ON s.id = a.series",
        &[],
    )?
    .iter()
    .map(|r| {
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            u(r.try_get(3)?),
        ))
    })
    .collect::<Result<_, tokio_postgres::Error>>()
    .map_err(|e| e.to_string())
}

fn names(rows: Vec<tokio_postgres::Row>) -> Result<Vec<String>, String> {
    rows.iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(|e: tokio_postgres::Error| e.to_string())
}

/// The chains in which `task` has recorded runs.
pub(crate) fn chains_of_task(p: &PgReader, task: &str) -> Result<Vec<String>, String> {
    names(p.rows(
        "SELECT chain FROM run_chain.series WHERE task = $1 AND runs > 0 ORDER BY chain",
        &[(&task, Type::TEXT)],
    )?)
}

/// The chains in which `task` has a run `run_id`.
pub(crate) fn chains_with_run(
    p: &PgReader,
    task: &str,
    run_id: u64,
) -> Result<Vec<String>, String> {
    let id = i64::try_from(run_id).unwrap_or(i64::MAX);
    names(p.rows(
        "SELECT s.chain FROM run_chain.series s JOIN run_chain.runs r ON r.series = s.id
         WHERE s.task = $1 AND r.run_id = $2 ORDER BY s.chain",
        &[(&task, Type::TEXT), (&id, Type::INT8)],
    )?)
}

/// Up to `limit` runs of `task` in `chain` with a run id below `before`, with `outcome`
/// (`running`: none yet; None: any), newest first by run id.
pub(crate) fn runs_before(
    p: &PgReader,
    chain: &str,
    task: &str,
    before: i64,
    outcome: Option<&str>,
    limit: usize,
) -> Result<Vec<RunRow>, String> {
    let sql = format!(
        "SELECT {PG_RUN_COLUMNS} {PG_RUNS_FROM}
         WHERE s.chain = $1 AND s.task = $2 AND r.run_id < $3
           AND ($4::text IS NULL OR ($4 = 'running' AND r.outcome IS NULL) OR r.outcome = $4)
         ORDER BY r.run_id DESC LIMIT $5"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    run_rows(p.rows(
        &sql,
        &[
            (&chain, Type::TEXT),
            (&task, Type::TEXT),
            (&before, Type::INT8),
            (&outcome, Type::TEXT),
            (&limit, Type::INT8),
        ],
    )?)
}

/// The newest `n` runs of `chain`, all tasks together, newest (by start, then run id) first.
pub(crate) fn newest_of_chain(p: &PgReader, chain: &str, n: usize) -> Result<Vec<RunRow>, String> {
    let sql = format!(
        "SELECT {PG_RUN_COLUMNS} {} WHERE s.chain = $1
         ORDER BY r.start_ms DESC, r.run_id DESC LIMIT $2",
        newest_per_series("$2")
    );
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    run_rows(p.rows(&sql, &[(&chain, Type::TEXT), (&n, Type::INT8)])?)
}
