//! Fleet-wide concurrency-group slots (`[groups.G] scope = "fleet"`, issue 20; design
//! notes §3): at most `max_running` runs of group G at once across every host of the
//! fleet. A slot is a row `run_chain.slots (grp, slot)` held by (chain, holder, epoch);
//! the statements run on the chain's DB thread (`lock/fleet.rs`), one unnamed
//! statement each (PgBouncer's transaction pooling).
//!
//! - [`ensure`]: the group's rows 0..max-1 (`ON CONFLICT DO NOTHING`), once per group
//!   and process.
//! - [`take`]: fenced: it only takes a slot while (chain, holder, epoch) holds the chain's
//!   lease unexpired. A slot is free when its holder is NULL, when its (chain, holder,
//!   epoch) no longer holds that chain's lease unexpired (the LEFT JOIN: a dead owner's
//!   slot frees itself at its lease's expiry, a lost epoch's at once), or when it is this
//!   instance's own (a chain runs one task at a time, so a row of its own not freed, after
//!   a failed free, is stale). `FOR UPDATE OF s SKIP LOCKED`: two takers never get one row.
//! - [`free`]: only the (holder, epoch) that took it.
//! - First come, first served: a taker that finds no slot says it waits ([`wait`]: a row
//!   in `run_chain.slot_waits`, its `since` kept, `seen_at` refreshed at each try); [`take`]
//!   only succeeds while fewer live waiters (lease unexpired, seen within 3 s) have waited
//!   longer than the taker than there are free slots. Without it, a chain that frees a
//!   slot and takes it again 50 ms later would starve the others, which try every second.
//!   (This orders the takers; the exclusion itself is the row lock on the slot.) [`unwait`]
//!   removes the row (taken, or the wait given up).
//!
//! Each host counts up to its own `max_running`: the hosts must agree on it (a host with a
//! larger number uses the rows above the others').

use std::time::Duration;

use tokio_postgres::types::Type;

use super::conn::{Conn, DbError};

const ENSURE: &str = "INSERT INTO run_chain.slots (grp, slot) \
     SELECT $1, n FROM generate_series(0, $2 - 1) AS n ON CONFLICT (grp, slot) DO NOTHING";

const TAKE: &str = "UPDATE run_chain.slots SET chain = $1, holder = $2, epoch = $3, since = now() \
     WHERE (grp, slot) = (SELECT s.grp, s.slot FROM run_chain.slots s \
        LEFT JOIN run_chain.leases l ON l.chain = s.chain AND l.holder = s.holder \
             AND l.epoch = s.epoch AND l.expires_at > now() \
        WHERE s.grp = $4 AND s.slot < $5 \
          AND (s.holder IS NULL OR l.chain IS NULL OR s.holder = $2) \
        ORDER BY s.slot LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
     AND EXISTS (SELECT 1 FROM run_chain.leases WHERE chain = $1 AND holder = $2 \
        AND epoch = $3 AND expires_at > now()) \
     AND (SELECT count(*) FROM run_chain.slot_waits w JOIN run_chain.leases wl \
            ON wl.chain = w.chain AND wl.holder = w.holder AND wl.epoch = w.epoch \
               AND wl.expires_at > now() \
          WHERE w.grp = $4 AND w.holder <> $2 AND w.seen_at > now() - interval '3 seconds' \
            AND w.since < coalesce((SELECT since FROM run_chain.slot_waits \
                                     WHERE grp = $4 AND holder = $2), now())) \
       < (SELECT count(*) FROM run_chain.slots s LEFT JOIN run_chain.leases l \
            ON l.chain = s.chain AND l.holder = s.holder AND l.epoch = s.epoch \
               AND l.expires_at > now() \
          WHERE s.grp = $4 AND s.slot < $5 \
            AND (s.holder IS NULL OR l.chain IS NULL OR s.holder = $2)) \
     RETURNING slot";

const WAIT: &str = "INSERT INTO run_chain.slot_waits (grp, holder, chain, epoch, since, seen_at) \
     VALUES ($1, $2, $3, $4, now(), now()) \
     ON CONFLICT (grp, holder) DO UPDATE SET epoch = EXCLUDED.epoch, seen_at = now()";

const UNWAIT: &str = "DELETE FROM run_chain.slot_waits WHERE grp = $1 AND holder = $2";

const FREE: &str =
    "UPDATE run_chain.slots SET chain = NULL, holder = NULL, epoch = NULL, since = NULL \
     WHERE grp = $1 AND slot = $2 AND holder = $3 AND epoch = $4";

/// Who takes a slot: the chain and its lease's (holder, epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taker<'a> {
    pub(crate) chain: &'a str,
    pub(crate) holder: &'a str,
    pub(crate) epoch: i64,
}

/// The group's rows 0..max-1.
pub(crate) fn ensure(conn: &Conn, group: &str, max: u32, timeout: Duration) -> Result<(), DbError> {
    let n = i32::try_from(max).unwrap_or(i32::MAX);
    conn.run(
        timeout,
        conn.client()
            .execute_typed(ENSURE, &[(&group, Type::TEXT), (&n, Type::INT4)]),
    )
    .map(|_| ())
}

/// Take a free slot of `group` (slots 0..max-1): its number, or None (all busy, or the
/// lease is not the taker's).
pub(crate) fn take(
    conn: &Conn,
    who: Taker<'_>,
    group: &str,
    max: u32,
    timeout: Duration,
) -> Result<Option<i32>, DbError> {
    let n = i32::try_from(max).unwrap_or(i32::MAX);
    let row = conn.run(
        timeout,
        conn.client().query_typed_opt(
            TAKE,
            &[
                (&who.chain, Type::TEXT),
                (&who.holder, Type::TEXT),
                (&who.epoch, Type::INT8),
                (&group, Type::TEXT),
                (&n, Type::INT4),
            ],
        ),
    )?;
    row.map(|r| r.try_get::<_, i32>(0))
        .transpose()
        .map_err(DbError::from)
}

/// Say (or say again) that the taker waits for a slot of `group` (its place is kept).
pub(crate) fn wait(
    conn: &Conn,
    who: Taker<'_>,
    group: &str,
    timeout: Duration,
) -> Result<(), DbError> {
    conn.run(
        timeout,
        conn.client().execute_typed(
            WAIT,
            &[
                (&group, Type::TEXT),
                (&who.holder, Type::TEXT),
                (&who.chain, Type::TEXT),
                (&who.epoch, Type::INT8),
            ],
        ),
    )
    .map(|_| ())
}

/// The taker waits no more for a slot of `group`.
pub(crate) fn unwait(
    conn: &Conn,
    holder: &str,
    group: &str,
    timeout: Duration,
) -> Result<(), DbError> {
    conn.run(
        timeout,
        conn.client()
            .execute_typed(UNWAIT, &[(&group, Type::TEXT), (&holder, Type::TEXT)]),
    )
    .map(|_| ())
}

/// Free slot `slot` of `group` if (holder, epoch) still holds it.
pub(crate) fn free(
    conn: &Conn,
    who: Taker<'_>,
    group: &str,
    slot: i32,
    timeout: Duration,
) -> Result<(), DbError> {
    conn.run(
        timeout,
        conn.client().execute_typed(
            FREE,
            &[
                (&group, Type::TEXT),
                (&slot, Type::INT4),
                (&who.holder, Type::TEXT),
                (&who.epoch, Type::INT8),
            ],
        ),
    )
    .map(|_| ())
}
