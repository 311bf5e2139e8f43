//! The `run_chain` schema in the fleet's database: created and migrated by run-chain,
//! versioned like the SQLite store (`run_chain.meta.version`, one row).
//!
//! Whose database it is comes first: a database with a `run_chain` schema that has no
//! `run_chain.meta`, or whose meta row is not ours (`app <> 'run-chain'`, or a table of
//! another shape), is refused ([`ConnError::Refused`], exit 78 at launch) before anything
//! is locked, created or changed in it. A database without a `run_chain` schema is ours to
//! make one in.
//!
//! [`ensure`] runs at every launch, from many processes at once:
//! - the current version is read without a lock (the usual case: nothing to do);
//! - creation is one transaction (schema, meta with its row, then the migrations).
//!   Two first launches race on `CREATE SCHEMA`: the loser blocks until the winner
//!   commits, then fails with a unique violation (23505); it rolls back and reads again,
//!   finding the winner's schema;
//! - a migration is one transaction that takes `LOCK TABLE run_chain.meta IN ACCESS
//!   EXCLUSIVE MODE`, reads the version again under the lock, applies what is missing and
//!   bumps the version: concurrent launches apply it once.
//!
//! Only unnamed statements (`simple_query`, `batch_execute`, `query_typed`): PgBouncer's
//! transaction pooling must work.

use std::time::Duration;

use super::conn::{Conn, ConnError, DbError};

/// The version this run-chain creates and migrates to.
pub(crate) const VERSION: u32 = 5;

/// Our mark in `run_chain.meta.app`.
const APP: &str = "run-chain";

/// How long one statement may take here (client side).
const STATEMENT_WAIT: Duration = Duration::from_secs(30);

/// The schema and its meta table, with our row at version 0 (the migrations follow).
const CREATE: &str = "CREATE SCHEMA run_chain;
CREATE TABLE run_chain.meta (
  one bool PRIMARY KEY DEFAULT true CHECK (one),
  app text NOT NULL,
  version int NOT NULL
);
INSERT INTO run_chain.meta (app, version) VALUES ('run-chain', 0);";

/// Migration N (to version N) at index N-1. Each runs inside the transaction that bumps
/// the version.
const MIGRATIONS: &[&str] = &[
    // 1: ownership of chains (the lease) and who waits for them.
    "CREATE TABLE run_chain.instances (
  id bigserial PRIMARY KEY,
  holder text NOT NULL UNIQUE,
  host text NOT NULL,
  pid int NOT NULL,
  version text NOT NULL,
  config_digest text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE run_chain.leases (
  chain text PRIMARY KEY,
  holder text,
  host text,
  instance bigint,
  epoch bigint NOT NULL DEFAULT 0,
  acquired_at timestamptz,
  renewed_at timestamptz,
  expires_at timestamptz NOT NULL DEFAULT '-infinity',
  stop_fleet_at timestamptz
);
CREATE TABLE run_chain.standbys (
  chain text,
  holder text,
  host text,
  seen_at timestamptz NOT NULL,
  PRIMARY KEY (chain, holder)
);",
    // 2: the records (stage 2 of issue 20): series, runs and alerts as SQLite's schema 4
    // (store/schema.rs; the same column names, so that readers map rows 1:1: times are
    // wall-clock milliseconds `*_ms`), plus on runs the writer's host and lease epoch;
    // the chain's resume state (what CHAIN.state holds on one host) with its due time on
    // the database's clock; a running task's output in chunks by offset; the fence every
    // owner's write batch calls first; and two counters on the lease.
    "CREATE TABLE run_chain.series (
  id bigserial PRIMARY KEY,
  chain text NOT NULL,
  task text NOT NULL,
  runs bigint NOT NULL DEFAULT 0,
  ok bigint NOT NULL DEFAULT 0,
  failed bigint NOT NULL DEFAULT 0,
  timeout bigint NOT NULL DEFAULT 0,
  signal bigint NOT NULL DEFAULT 0,
  spawn_error bigint NOT NULL DEFAULT 0,
  interrupted bigint NOT NULL DEFAULT 0,
  duration_sum_ms bigint NOT NULL DEFAULT 0,
  latency_sum_ms bigint NOT NULL DEFAULT 0,
  last_run_id bigint,
  last_outcome text,
  last_exit_code bigint,
  last_scheduled_ms bigint,
  last_start_ms bigint,
  last_stop_ms bigint,
  last_duration_ms bigint,
  last_success_ms bigint,
  running_run_id bigint,
  running_since_ms bigint,
  streak_start_ms bigint,
  streak_failures bigint NOT NULL DEFAULT 0,
  recent bytea,
  runs_kick bigint NOT NULL DEFAULT 0,
  runs_manual bigint NOT NULL DEFAULT 0,
  UNIQUE (chain, task)
);
CREATE TABLE run_chain.runs (
  id bigserial PRIMARY KEY,
  series bigint NOT NULL REFERENCES run_chain.series (id) ON DELETE CASCADE,
  run_id bigint NOT NULL,
  instance bigint NOT NULL,
  scheduled_ms bigint,
  start_ms bigint NOT NULL,
  stop_ms bigint,
  outcome text,
  exit_code bigint,
  signal bigint,
  duration_ms bigint,
  latency_ms bigint,
  task_pid bigint,
  output bytea,
  output_bytes bigint NOT NULL DEFAULT 0,
  output_cut bool NOT NULL DEFAULT false,
  error text,
  \"trigger\" text NOT NULL DEFAULT 'schedule',
  requested_by text,
  host text,
  epoch bigint,
  UNIQUE (series, run_id)
);
CREATE INDEX runs_open ON run_chain.runs (series) WHERE stop_ms IS NULL;
CREATE TABLE run_chain.alerts (
  series bigint NOT NULL REFERENCES run_chain.series (id) ON DELETE CASCADE,
  kind text NOT NULL,
  count bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (series, kind)
);
CREATE TABLE run_chain.chain_state (
  chain text PRIMARY KEY,
  state jsonb NOT NULL,
  due_at timestamptz,
  epoch bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE run_chain.output_chunks (
  run bigint NOT NULL REFERENCES run_chain.runs (id) ON DELETE CASCADE,
  off bigint NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (run, off)
);
ALTER TABLE run_chain.leases
  ADD COLUMN failovers bigint NOT NULL DEFAULT 0,
  ADD COLUMN fenced_writes bigint NOT NULL DEFAULT 0;
CREATE FUNCTION run_chain.fence(p_chain text, p_holder text, p_epoch bigint) RETURNS void
LANGUAGE plpgsql AS $fence$
BEGIN
  PERFORM 1 FROM run_chain.leases
   WHERE chain = p_chain AND holder = p_holder AND epoch = p_epoch AND expires_at > now()
   FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'run-chain: fenced: chain % is not held by % at epoch %', p_chain, p_holder, p_epoch
      USING ERRCODE = 'RCF01';
  END IF;
END
$fence$;",
    // 3: fleet-wide concurrency-group slots (`scope = "fleet"`, store/pg/slots.rs): one
    // row per (group, slot number), made as needed; a slot is held by (chain, holder,
    // epoch) and free when its holder is NULL or no longer holds that chain's lease
    // unexpired (a dead owner's slot frees itself at its lease's expiry); and who waits
    // for one, since when (first come, first served: a chain that frees a slot and wants
    // it again at once does not starve the others, which retry only every second).
    "CREATE TABLE run_chain.slots (
  grp text NOT NULL,
  slot int NOT NULL,
  chain text,
  holder text,
  epoch bigint,
  since timestamptz,
  PRIMARY KEY (grp, slot)
);
CREATE TABLE run_chain.slot_waits (
  grp text NOT NULL,
  holder text NOT NULL,
  chain text NOT NULL,
  epoch bigint NOT NULL,
  since timestamptz NOT NULL,
  seen_at timestamptz NOT NULL,
  PRIMARY KEY (grp, holder)
);",
    // 4: the outbox of alert mails (store/pg/outbox.rs): a row is put in the transaction
    // of the run's end that decided it, claimed by the owner's mailer (`claimed_by`,
    // `claim_until`: SMTP timeout + margin), deleted once sent, set aside on a permanent
    // failure. The Message-ID is fixed when the alert is decided (it is in `bytes`).
    "CREATE TABLE run_chain.outbox (
  id bigserial PRIMARY KEY,
  chain text NOT NULL,
  message_id text NOT NULL UNIQUE,
  bytes bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  next_try_at timestamptz NOT NULL DEFAULT now(),
  attempts int NOT NULL DEFAULT 0,
  claimed_by text,
  claim_until timestamptz,
  set_aside_at timestamptz,
  error text
);",
    // 5: `store import` (store/pg/import.rs): `imports` maps each imported run's key
    // (source host, chain, task, source run id) to its run id in the fleet, so that an
    // import again skips it; `import_series` has one row per imported (source host, chain,
    // task), inserted with the aggregates it adds (added once). `IF NOT EXISTS`: the
    // `store import` of version 4 made these two tables itself, of this same shape.
    "CREATE TABLE IF NOT EXISTS run_chain.imports (
  source_host text NOT NULL,
  chain text NOT NULL,
  task text NOT NULL,
  source_run_id bigint NOT NULL,
  run_id bigint NOT NULL,
  imported_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source_host, chain, task, source_run_id)
);
CREATE TABLE IF NOT EXISTS run_chain.import_series (
  source_host text NOT NULL,
  chain text NOT NULL,
  task text NOT NULL,
  imported_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source_host, chain, task)
);",
];

/// What the database holds, read without a lock.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// No `run_chain` schema: ours to create.
    Nothing,
    /// Our schema at this version.
    Ours(u32),
}

fn foreign(conn_url: &str, why: &str) -> ConnError {
    ConnError::Refused(format!(
        "{conn_url}: not run-chain's database ({why}); nothing was changed in it: point [store] url at a database of its own (CREATE DATABASE runchain OWNER runchain)"
    ))
}

/// A statement's failure as a connection outcome: what a user must fix (permissions,
/// a foreign shape) is Refused; a lost connection, a timeout, an overloaded or restarting
/// server is Unreachable.
fn db_error(shown: &str, what: &str, e: DbError) -> ConnError {
    match e {
        DbError::Sql { code, message } => {
            let transient = ["08", "53", "57", "40", "58"]
                .iter()
                .any(|c| code.starts_with(c));
            let hint = if code == "42501" {
                " (the role needs CREATE on the database for the first launch, and to own the run_chain schema after)"
            } else {
                ""
            };
            let text = format!("{shown}: {what}: {message} (SQLSTATE {code}){hint}");
            if transient {
                ConnError::Unreachable(text)
            } else {
                ConnError::Refused(text)
            }
        }
        other => ConnError::Unreachable(format!("{shown}: {what}: {other}")),
    }
}

/// Read what the database holds (within the current transaction, if any).
fn inspect(conn: &Conn, shown: &str) -> Result<Found, ConnError> {
    let rows = conn
        .run(
            STATEMENT_WAIT,
            conn.client().query_typed(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'run_chain'),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname = 'run_chain' AND c.relname = 'meta' AND c.relkind = 'r')",
                &[],
            ),
        )
        .map_err(|e| db_error(shown, "reading the catalog", e))?;
    let row = rows.first().ok_or_else(|| {
        ConnError::Unreachable(format!("{shown}: the catalog query returned no row"))
    })?;
    let schema: bool = row
        .try_get(0)
        .map_err(|e| db_error(shown, "reading the catalog", e.into()))?;
    let meta: bool = row
        .try_get(1)
        .map_err(|e| db_error(shown, "reading the catalog", e.into()))?;
    if !schema {
        return Ok(Found::Nothing);
    }
    if !meta {
        return Err(foreign(
            shown,
            "it has a schema run_chain without the table run_chain.meta",
        ));
    }
    // A table of another shape answers with an error (no such column, another type):
    // also not ours.
    let rows = match conn.run(
        STATEMENT_WAIT,
        conn.client()
            .query_typed("SELECT app::text, version::int8 FROM run_chain.meta", &[]),
    ) {
        Ok(r) => r,
        // 42703 no such column, 42804/42846 another type: not our table. (42501, no
        // permission, is the role's matter: reported as it is.)
        Err(DbError::Sql { code, .. }) if ["42703", "42804", "42846"].contains(&code.as_str()) => {
            return Err(foreign(
                shown,
                "its table run_chain.meta is not run-chain's",
            ))
        }
        Err(e) => return Err(db_error(shown, "reading run_chain.meta", e)),
    };
    if rows.len() != 1 {
        return Err(foreign(
            shown,
            &format!(
                "run_chain.meta has {} rows, run-chain's has one",
                rows.len()
            ),
        ));
    }
    let app: Option<String> = rows[0].try_get(0).ok().flatten();
    let version: Option<i64> = rows[0].try_get(1).ok().flatten();
    match (app.as_deref(), version) {
        (Some(APP), Some(v)) if v >= 0 => Ok(Found::Ours(u32::try_from(v).unwrap_or(u32::MAX))),
        (Some(APP), _) => Err(foreign(shown, "run_chain.meta has no valid version")),
        (Some(other), _) => Err(foreign(
            shown,
            &format!("run_chain.meta belongs to {other:?}"),
        )),
        (None, _) => Err(foreign(shown, "run_chain.meta names no application")),
    }
}

fn newer(shown: &str, v: u32) -> ConnError {
    ConnError::Refused(format!(
        "{shown}: the run_chain schema is at version {v}, newer than this run-chain ({VERSION}) knows: upgrade run-chain on this host"
    ))
}

/// The schema's version, read only (for `check`): None when it is not created yet.
/// Refuses a database that is not run-chain's.
pub(crate) fn version(conn: &Conn) -> Result<Option<u32>, ConnError> {
    let shown = conn.shown();
    match inspect(conn, shown)? {
        Found::Nothing => Ok(None),
        Found::Ours(v) => Ok(Some(v)),
    }
}

fn simple(conn: &Conn, shown: &str, what: &str, sql: &str) -> Result<(), DbError> {
    conn.run(STATEMENT_WAIT, conn.client().batch_execute(sql))
        .map_err(|e| {
            log::debug!("{shown}: {what}: {e}");
            e
        })
}

/// Create or migrate the schema to [`VERSION`] (see the module's doc): the version now.
/// Nothing of a foreign database is touched.
#[allow(dead_code)] // called by the lease's launch (another branch of this stage)
pub(crate) fn ensure(conn: &Conn) -> Result<u32, ConnError> {
    let shown = conn.shown();
    for _ in 0..5 {
        match inspect(conn, shown)? {
            Found::Ours(v) if v == VERSION => return Ok(v),
            Found::Ours(v) if v > VERSION => return Err(newer(shown, v)),
            found => match apply(conn, shown, &found) {
                Ok(v) if v > VERSION => return Err(newer(shown, v)),
                Ok(v) => return Ok(v),
                // Another launch created or migrated it first: read again.
                Err(DbError::Sql { code, .. })
                    if code == "23505" || code == "42P06" || code == "40001" || code == "40P01" =>
                {
                    continue
                }
                Err(e) => return Err(db_error(shown, "creating the run_chain schema", e)),
            },
        }
    }
    Err(ConnError::Unreachable(format!(
        "{shown}: the run_chain schema kept changing under this launch: try again"
    )))
}

/// One transaction: create (if `found` is Nothing) then migrate to VERSION.
fn apply(conn: &Conn, shown: &str, found: &Found) -> Result<u32, DbError> {
    simple(conn, shown, "BEGIN", "BEGIN")?;
    let r = (|| {
        if *found == Found::Nothing {
            simple(conn, shown, "creating the schema", CREATE)?;
        }
        simple(
            conn,
            shown,
            "locking run_chain.meta",
            "LOCK TABLE run_chain.meta IN ACCESS EXCLUSIVE MODE",
        )?;
        let rows = conn.run(
            STATEMENT_WAIT,
            conn.client().query_typed(
                "SELECT version::int8 FROM run_chain.meta WHERE app = 'run-chain'",
                &[],
            ),
        )?;
        let now: i64 = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => {
                return Err(DbError::Other(
                    "run_chain.meta lost its row during the migration".into(),
                ))
            }
        };
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        if now >= VERSION {
            return Ok(now);
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(now as usize) {
            let to = i + 1;
            simple(conn, shown, &format!("migration {to}"), m)?;
        }
        simple(
            conn,
            shown,
            "bumping the version",
            &format!("UPDATE run_chain.meta SET version = {VERSION}"),
        )?;
        Ok(VERSION)
    })();
    match r {
        Ok(v) => {
            simple(conn, shown, "COMMIT", "COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = simple(conn, shown, "ROLLBACK", "ROLLBACK");
            Err(e)
        }
    }
}
