//! The lease statements (issue 20; design notes §3): one row per chain in
//! `run_chain.leases`, on the database's clock, with `epoch` as the fencing token. Each
//! function is one unnamed statement (`query_typed*` / `execute_typed`: PgBouncer's
//! transaction pooling), run on the chain's DB thread through [`Conn::run`] with the
//! caller's client-side timeout. No advisory lock, no session `SET`.
//!
//! - [`ensure_row`]: the chain's row, once per launch (`ON CONFLICT DO NOTHING`).
//! - [`acquire`]: only a free or expired row, with `epoch + 1`; returns the predecessor
//!   (read under `FOR UPDATE` in the same statement: PostgreSQL 15 has no `OLD` in
//!   `RETURNING`). `SKIP LOCKED`: a locked row reads as held (0 rows; the standby tries
//!   again), so an acquire never waits on a row lock: neither on a racing acquirer's nor
//!   on an owner's batch left open (its `FOR SHARE` from `fence()`), where a waiting
//!   acquire would outlive its client's timeout on the server and acquire later, unseen.
//! - [`renew`]: scoped to the row's (holder, epoch) *and* unexpired; never an upsert
//!   (River #197: a renew that matched whatever the row said). 0 rows: lost.
//! - [`release`]: `holder = NULL, expires_at = now()`, only if still (holder, epoch).
//! - [`takeover`]: the relaunch on the same host, after the local hand-over: exactly the
//!   (holder, epoch) the predecessor recorded, in one statement, `epoch + 1`; whoever
//!   still is that (holder, epoch) is the predecessor, so no other host can slip in.
//!   It also returns the old lease's expiry if it had expired (the runs it left open end
//!   then, as at an acquire).
//! - [`standby`]: the standby's row in `run_chain.standbys` (upsert: the row is the
//!   standby's own, keyed by its holder id); [`leave_standbys`] removes it.
//! - [`read`]: who holds the lease now (holder, host, epoch, seconds left).
//! - `stop --fleet` (issue 20): [`stop_fleet`] sets `stop_fleet_at = now()` (an upsert:
//!   the chain may have no row yet); every instance launched before that moment (its
//!   launch time, [`db_now`]: the database's `now()` at its first connect) stops: the owner sees
//!   it in its [`renew`]'s answer, a standby in [`acquire`] (which never gives the lease
//!   to such an instance) and [`read_for`]. A later launch is newer than the flag, so the
//!   flag needs no clearing: the next launch runs. [`read`] and [`standbys`] are what the
//!   command waits on (the lease held, the standbys seen lately).

use std::time::{Duration, SystemTime};

use tokio_postgres::types::Type;

use super::conn::{Conn, DbError};

/// A new row's epoch goes on from the highest the chain's records name (a row made again,
/// after a restore or a crash that lost its last commits, never gives an epoch twice).
const ENSURE_ROW: &str = "INSERT INTO run_chain.leases (chain, epoch) \
     SELECT $1, greatest(0, \
       (SELECT max(r.epoch) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series \
         WHERE s.chain = $1), \
       (SELECT max(epoch) FROM run_chain.chain_state WHERE chain = $1), \
       (SELECT max(epoch) FROM run_chain.slots WHERE chain = $1)) \
     ON CONFLICT (chain) DO NOTHING";

const ACQUIRE: &str = "UPDATE run_chain.leases l SET holder = $2, host = $3, \
     epoch = l.epoch + 1, acquired_at = now(), renewed_at = now(), \
     failovers = l.failovers + (o.o_holder IS NOT NULL)::int, \
     expires_at = now() + make_interval(secs => $4) \
     FROM (SELECT chain, holder AS o_holder, host AS o_host, epoch AS o_epoch, \
           expires_at AS o_expires FROM run_chain.leases WHERE chain = $1 \
           FOR UPDATE SKIP LOCKED) o \
     WHERE l.chain = o.chain AND (o.o_holder IS NULL OR o.o_expires <= now()) \
     AND (l.stop_fleet_at IS NULL OR l.stop_fleet_at < $5) \
     RETURNING l.epoch, o.o_holder, o.o_host, o.o_epoch, \
       CASE WHEN isfinite(o.o_expires) \
            THEN (extract(epoch FROM o.o_expires) * 1000)::int8 END";

const RENEW: &str = "UPDATE run_chain.leases \
     SET expires_at = now() + make_interval(secs => $4), renewed_at = now() \
     WHERE chain = $1 AND holder = $2 AND epoch = $3 AND expires_at > now() \
     RETURNING epoch, coalesce(stop_fleet_at >= $5, false)";

const RELEASE: &str = "UPDATE run_chain.leases SET holder = NULL, host = NULL, expires_at = now() \
     WHERE chain = $1 AND holder = $2 AND epoch = $3";

const TAKEOVER: &str = "UPDATE run_chain.leases l SET holder = $2, host = $3, \
     epoch = l.epoch + 1, acquired_at = now(), renewed_at = now(), \
     expires_at = now() + make_interval(secs => $4) \
     FROM (SELECT chain, expires_at AS o_expires FROM run_chain.leases \
           WHERE chain = $1 AND holder = $5 AND epoch = $6 FOR UPDATE) o \
     WHERE l.chain = o.chain AND l.holder = $5 AND l.epoch = $6 \
     RETURNING l.epoch, \
       CASE WHEN o.o_expires <= now() AND isfinite(o.o_expires) \
            THEN (extract(epoch FROM o.o_expires) * 1000)::int8 END";

const STANDBY: &str = "INSERT INTO run_chain.standbys (chain, holder, host, seen_at) \
     VALUES ($1, $2, $3, now()) \
     ON CONFLICT (chain, holder) DO UPDATE SET host = EXCLUDED.host, seen_at = now()";

const LEAVE_STANDBYS: &str = "DELETE FROM run_chain.standbys WHERE chain = $1 AND holder = $2";

const READ: &str = "SELECT holder, host, epoch, \
     CASE WHEN expires_at > now() \
          THEN extract(epoch FROM (expires_at - now()))::float8 ELSE 0 END \
     FROM run_chain.leases WHERE chain = $1";

/// [`READ`] plus whether a `stop --fleet` came at or after `$2` (the reader's launch).
const READ_FOR: &str = "SELECT holder, host, epoch, \
     CASE WHEN expires_at > now() \
          THEN extract(epoch FROM (expires_at - now()))::float8 ELSE 0 END, \
     coalesce(stop_fleet_at >= $2, false) \
     FROM run_chain.leases WHERE chain = $1";

const NOW: &str = "SELECT now()";

const STOP_FLEET: &str = "INSERT INTO run_chain.leases (chain, stop_fleet_at) VALUES ($1, now()) \
     ON CONFLICT (chain) DO UPDATE SET stop_fleet_at = now() \
     RETURNING extract(epoch FROM stop_fleet_at)::float8";

const STANDBYS: &str = "SELECT holder, host FROM run_chain.standbys \
     WHERE chain = $1 AND seen_at > now() - make_interval(secs => $2) ORDER BY host, holder";

/// Who the acquirer follows (the row before its acquire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Predecessor {
    pub(crate) holder: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) epoch: i64,
    /// When its lease expired, wall-clock ms on the database's clock (the end of the
    /// runs it left open); None for a row never held ('-infinity').
    pub(crate) expires_ms: Option<i64>,
}

/// The lease row as read by [`read`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Holder {
    pub(crate) holder: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) epoch: i64,
    /// Seconds until it expires on the database's clock (0: expired or free).
    pub(crate) left: f64,
}

impl Holder {
    /// Whether some instance holds it now.
    pub(crate) fn held(&self) -> bool {
        self.holder.is_some() && self.left > 0.0
    }
}

/// Who is to hold the lease: the instance's id, its host, the lease's length.
#[derive(Debug, Clone)]
pub(crate) struct Me<'a> {
    pub(crate) chain: &'a str,
    pub(crate) holder: &'a str,
    pub(crate) host: &'a str,
    pub(crate) lease: Duration,
}

impl Me<'_> {
    fn secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }
}

const HAS_ROW: &str = "SELECT 1 FROM run_chain.leases WHERE chain = $1";

/// The chain's row (once per launch). Made only when missing: the seeded insert reads
/// the chain's records (not to be waited on at every launch).
pub(crate) fn ensure_row(conn: &Conn, chain: &str, timeout: Duration) -> Result<(), DbError> {
    let has = conn.run(
        timeout,
        conn.client()
            .query_typed_opt(HAS_ROW, &[(&chain, Type::TEXT)]),
    )?;
    if has.is_some() {
        return Ok(());
    }
    conn.run(
        timeout,
        conn.client()
            .execute_typed(ENSURE_ROW, &[(&chain, Type::TEXT)]),
    )
    .map(|_| ())
}

/// Acquire a free or expired lease: Some((new epoch, predecessor)), or None (held).
pub(crate) fn acquire(
    conn: &Conn,
    me: &Me<'_>,
    launch: SystemTime,
    timeout: Duration,
) -> Result<Option<(i64, Predecessor)>, DbError> {
    let secs = me.secs();
    let row = conn.run(
        timeout,
        conn.client().query_typed_opt(
            ACQUIRE,
            &[
                (&me.chain, Type::TEXT),
                (&me.holder, Type::TEXT),
                (&me.host, Type::TEXT),
                (&secs, Type::FLOAT8),
                (&launch, Type::TIMESTAMPTZ),
            ],
        ),
    )?;
    row.map(|r| {
        Ok::<_, tokio_postgres::Error>((
            r.try_get::<_, i64>(0)?,
            Predecessor {
                holder: r.try_get(1)?,
                host: r.try_get(2)?,
                epoch: r.try_get(3)?,
                expires_ms: r.try_get(4)?,
            },
        ))
    })
    .transpose()
    .map_err(DbError::from)
}

/// What a renew got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewed {
    /// Renewed; `stop`: a `stop --fleet` came at or after this instance's launch.
    Yes { stop: bool },
    /// The row is no longer ours or expired (lost: never renewed again).
    Lost,
}

/// Renew (holder, epoch) while unexpired.
pub(crate) fn renew(
    conn: &Conn,
    me: &Me<'_>,
    epoch: i64,
    launch: SystemTime,
    timeout: Duration,
) -> Result<Renewed, DbError> {
    let secs = me.secs();
    let row = conn.run(
        timeout,
        conn.client().query_typed_opt(
            RENEW,
            &[
                (&me.chain, Type::TEXT),
                (&me.holder, Type::TEXT),
                (&epoch, Type::INT8),
                (&secs, Type::FLOAT8),
                (&launch, Type::TIMESTAMPTZ),
            ],
        ),
    )?;
    match row {
        None => Ok(Renewed::Lost),
        Some(r) => Ok(Renewed::Yes {
            stop: r.try_get::<_, bool>(1).map_err(DbError::from)?,
        }),
    }
}

/// Give the lease up (if still ours): true if it was.
pub(crate) fn release(
    conn: &Conn,
    me: &Me<'_>,
    epoch: i64,
    timeout: Duration,
) -> Result<bool, DbError> {
    let n = conn.run(
        timeout,
        conn.client().execute_typed(
            RELEASE,
            &[
                (&me.chain, Type::TEXT),
                (&me.holder, Type::TEXT),
                (&epoch, Type::INT8),
            ],
        ),
    )?;
    Ok(n == 1)
}

/// Take over exactly (`old_holder`, `old_epoch`) (the relaunch on the same host): the new
/// epoch and, if the old lease had expired, when (wall-clock ms on the database's clock:
/// the end of the runs it left open); None if the row is no longer that.
pub(crate) fn takeover(
    conn: &Conn,
    me: &Me<'_>,
    old_holder: &str,
    old_epoch: i64,
    timeout: Duration,
) -> Result<Option<(i64, Option<i64>)>, DbError> {
    let secs = me.secs();
    let row = conn.run(
        timeout,
        conn.client().query_typed_opt(
            TAKEOVER,
            &[
                (&me.chain, Type::TEXT),
                (&me.holder, Type::TEXT),
                (&me.host, Type::TEXT),
                (&secs, Type::FLOAT8),
                (&old_holder, Type::TEXT),
                (&old_epoch, Type::INT8),
            ],
        ),
    )?;
    row.map(|r| Ok::<_, tokio_postgres::Error>((r.try_get::<_, i64>(0)?, r.try_get(1)?)))
        .transpose()
        .map_err(DbError::from)
}

/// Say this instance waits as a standby (seen now).
pub(crate) fn standby(conn: &Conn, me: &Me<'_>, timeout: Duration) -> Result<(), DbError> {
    conn.run(
        timeout,
        conn.client().execute_typed(
            STANDBY,
            &[
                (&me.chain, Type::TEXT),
                (&me.holder, Type::TEXT),
                (&me.host, Type::TEXT),
            ],
        ),
    )
    .map(|_| ())
}

/// This instance waits no more (it owns the chain, or exits).
pub(crate) fn leave_standbys(conn: &Conn, me: &Me<'_>, timeout: Duration) -> Result<(), DbError> {
    conn.run(
        timeout,
        conn.client().execute_typed(
            LEAVE_STANDBYS,
            &[(&me.chain, Type::TEXT), (&me.holder, Type::TEXT)],
        ),
    )
    .map(|_| ())
}

/// The chain's lease row (None: no row yet).
pub(crate) fn read(conn: &Conn, chain: &str, timeout: Duration) -> Result<Option<Holder>, DbError> {
    let row = conn.run(
        timeout,
        conn.client().query_typed_opt(READ, &[(&chain, Type::TEXT)]),
    )?;
    row.map(|r| {
        Ok::<_, tokio_postgres::Error>(Holder {
            holder: r.try_get(0)?,
            host: r.try_get(1)?,
            epoch: r.try_get(2)?,
            left: r.try_get(3)?,
        })
    })
    .transpose()
    .map_err(DbError::from)
}

/// [`read`] for an instance launched at `launch`: the row, and whether a `stop --fleet`
/// came at or after that.
pub(crate) fn read_for(
    conn: &Conn,
    chain: &str,
    launch: SystemTime,
    timeout: Duration,
) -> Result<Option<(Holder, bool)>, DbError> {
    let row = conn.run(
        timeout,
        conn.client().query_typed_opt(
            READ_FOR,
            &[(&chain, Type::TEXT), (&launch, Type::TIMESTAMPTZ)],
        ),
    )?;
    row.map(|r| {
        Ok::<_, tokio_postgres::Error>((
            Holder {
                holder: r.try_get(0)?,
                host: r.try_get(1)?,
                epoch: r.try_get(2)?,
                left: r.try_get(3)?,
            },
            r.try_get(4)?,
        ))
    })
    .transpose()
    .map_err(DbError::from)
}

/// The database's clock now (an instance's launch time, for `stop --fleet`).
pub(crate) fn db_now(conn: &Conn, timeout: Duration) -> Result<SystemTime, DbError> {
    let row = conn.run(timeout, conn.client().query_typed_one(NOW, &[]))?;
    row.try_get(0).map_err(DbError::from)
}

/// `stop --fleet CHAIN`: every instance of the chain launched before now (the database's
/// clock) stops. Returns the flag's time (seconds since the epoch, on the database's clock).
pub(crate) fn stop_fleet(conn: &Conn, chain: &str, timeout: Duration) -> Result<f64, DbError> {
    let row = conn.run(
        timeout,
        conn.client()
            .query_typed_one(STOP_FLEET, &[(&chain, Type::TEXT)]),
    )?;
    row.try_get(0).map_err(DbError::from)
}

/// The standbys of `chain` seen within `recent`: (holder, host).
pub(crate) fn standbys(
    conn: &Conn,
    chain: &str,
    recent: Duration,
    timeout: Duration,
) -> Result<Vec<(String, String)>, DbError> {
    let secs = recent.as_secs_f64();
    let rows = conn.run(
        timeout,
        conn.client()
            .query_typed(STANDBYS, &[(&chain, Type::TEXT), (&secs, Type::FLOAT8)]),
    )?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(DbError::from)
}

/// `n` random bytes from the OS's generator (ring's `SystemRandom`, through rustls'
/// provider: ring is not a direct dependency). None if the OS gives no randomness.
pub(crate) fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .ok()?;
    Some(b)
}

/// A new holder id: 32 hex characters of 16 random bytes. None if the OS gives no
/// randomness.
pub(crate) fn new_holder_id() -> Option<String> {
    Some(random::<16>()?.iter().map(|x| format!("{x:02x}")).collect())
}

/// A jitter in 0..1 (0.5 if the OS gives no randomness).
pub(crate) fn jitter() -> f64 {
    random::<2>().map_or(0.5, |b| {
        f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
    })
}
