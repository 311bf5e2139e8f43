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
//!   epoch) no longer holds that chain's lease unexpired (a correlated `NOT EXISTS`, not a
//!   LEFT JOIN, whose re-check under `FOR UPDATE` would reuse the join row read before a
//!   concurrent take committed, and take the slot a second time: a dead owner's
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
        WHERE s.grp = $4 AND s.slot < $5 \
          AND (s.holder IS NULL OR s.holder = $2 OR NOT EXISTS (SELECT 1 \
               FROM run_chain.leases l WHERE l.chain = s.chain AND l.holder = s.holder \
               AND l.epoch = s.epoch AND l.expires_at > now())) \
        ORDER BY s.slot LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
     AND EXISTS (SELECT 1 FROM run_chain.leases WHERE chain = $1 AND holder = $2 \
        AND epoch = $3 AND expires_at > now()) \
     AND (SELECT count(*) FROM run_chain.slot_waits w JOIN run_chain.leases wl \
            ON wl.chain = w.chain AND wl.holder = w.holder AND wl.epoch = w.epoch \
               AND wl.expires_at > now() \
          WHERE w.grp = $4 AND w.holder <> $2 AND w.seen_at > now() - interval '3 seconds' \
            AND w.since < coalesce((SELECT since FROM run_chain.slot_waits \
                                     WHERE grp = $4 AND holder = $2), now())) \
       < (SELECT count(*) FROM run_chain.slots s \
          WHERE s.grp = $4 AND s.slot < $5 \
            AND (s.holder IS NULL OR s.holder = $2 OR NOT EXISTS (SELECT 1 \
                 FROM run_chain.leases l WHERE l.chain = s.chain AND l.holder = s.holder \
                 AND l.epoch = s.epoch AND l.expires_at > now()))) \
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

/// The test harness's PostgreSQL (tests/support/pg.rs: a real server, run as `postgres`).
#[cfg(test)]
#[allow(dead_code, clippy::all)]
#[path = "../../../tests/support/pg.rs"]
mod pg_harness;

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use super::pg_harness::Pg;
    use super::*;

    fn connect(pg: &Pg, url: &str, dir: &std::path::Path) -> Conn {
        let pw = pg.write_runchain_password(&dir.join("pw"));
        let text = format!(
            "[tasks.a]\ncommand = \"true\"\n[store]\nurl = \"{url}\"\npassword_file = \"{}\"\nlease = \"60s\"\nhost = \"t\"\n",
            pw.display()
        );
        let config = crate::config::Config::parse(&text, &dir.join("tasks.toml")).expect("config");
        let cfg = config.store.expect("[store]");
        let c = Conn::connect(&cfg, Duration::from_secs(30)).expect("connect");
        crate::store::pg::schema::ensure(&c).expect("schema");
        c
    }

    /// Review finding 4: X takes slot 0 in a transaction while Y's TAKE waits for that row;
    /// X commits. Y's re-check of the row (READ COMMITTED's EvalPlanQual) must see X's live
    /// lease and take nothing. With a LEFT JOIN the re-check reused the null-extended join
    /// row read before X's commit, and Y took the slot a second time. `SKIP LOCKED` is
    /// removed here so that Y waits (deterministic); with it, the same re-check happens when
    /// X commits between Y's snapshot and Y reaching the row.
    #[test]
    fn a_slot_taken_while_another_take_waits_for_its_row_is_not_taken_twice() {
        let pg = Pg::shared();
        let (db, url) = pg.fresh_database("robust_slots");
        let dir = tempfile::tempdir().expect("tempdir");
        let y = connect(pg, &url, dir.path());
        pg.psql(
            &db,
            "INSERT INTO run_chain.leases (chain, holder, host, epoch, acquired_at, renewed_at, expires_at) \
             VALUES ('cx', 'X', 'hx', 1, now(), now(), now() + interval '1 hour'), \
                    ('cy', 'Y', 'hy', 1, now(), now(), now() + interval '1 hour')",
        );
        ensure(&y, "g", 1, Duration::from_secs(30)).expect("ensure");
        let mut x = pg
            .psql_command(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql");
        let mut xin = x.stdin.take().expect("stdin");
        writeln!(
            xin,
            "SET application_name = 'slot_x';\nBEGIN;\n\
             UPDATE run_chain.slots SET chain = 'cx', holder = 'X', epoch = 1, since = now() \
             WHERE grp = 'g' AND slot = 0;"
        )
        .expect("psql");
        xin.flush().expect("psql");
        let until = Instant::now() + Duration::from_secs(60);
        while pg.psql(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'slot_x' \
             AND state = 'idle in transaction'",
        ) != "1"
        {
            assert!(Instant::now() < until, "X's update did not run");
            std::thread::sleep(Duration::from_millis(20));
        }
        let take_waiting = TAKE.replace(" SKIP LOCKED", "");
        assert_ne!(take_waiting, TAKE, "TAKE has SKIP LOCKED");
        let taker = std::thread::spawn(move || {
            let (chain, holder, epoch, grp, max) = ("cy", "Y", 1_i64, "g", 1_i32);
            y.run(
                Duration::from_secs(60),
                y.client().query_typed_opt(
                    &take_waiting,
                    &[
                        (&chain, Type::TEXT),
                        (&holder, Type::TEXT),
                        (&epoch, Type::INT8),
                        (&grp, Type::TEXT),
                        (&max, Type::INT4),
                    ],
                ),
            )
            .map(|r| r.map(|r| r.get::<_, i32>(0)))
        });
        while pg.psql(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        ) != "1"
        {
            assert!(Instant::now() < until, "Y's take does not wait for X's row");
            std::thread::sleep(Duration::from_millis(20));
        }
        writeln!(xin, "COMMIT;").expect("psql");
        drop(xin);
        let _ = x.wait();
        let got = taker.join().expect("the taker").expect("Y's take");
        assert_eq!(got, None, "Y took slot 0, held by X's live lease");
        assert_eq!(
            pg.psql(
                &db,
                "SELECT holder FROM run_chain.slots WHERE grp = 'g' AND slot = 0"
            ),
            "X"
        );
    }
}
