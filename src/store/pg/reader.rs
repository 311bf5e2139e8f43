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
    if super::schema::version(&conn)?.is_none() {
        return Ok(FleetRows::default());
    }
    fleet(&conn, cfg.lease).map_err(|e| {
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
        out.chains.insert(
            chain.clone(),
            LeaseRow {
                chain,
                host: r.try_get(1)?,
                epoch: r.try_get(2)?,
                expires_ms: r.try_get::<_, Option<i64>>(3)?.map(u),
                held: r.try_get(4)?,
                failovers: r.try_get::<_, Option<i64>>(5)?.map(u),
                fenced_writes: r.try_get::<_, Option<i64>>(6)?.map(u),
                standbys: Vec::new(),
                state: None,
            },
        );
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
