//! The chain's loop and the fleet's database (issue 20): no database call on the loop thread,
//! and a start gate the loop does not wait in. Against a real PostgreSQL 15 (tests/support/pg.rs)
//! and the real SMTP peer (tests/smtp_peer.py).
//!
//! - A new owner's alert mail quotes the dead owner's failed run (its output), read by the
//!   chain's one DB thread when it acquired the lease: the new owner's process opens exactly
//!   one connection to the database (the server's log of authorized connections shows it).
//! - A start whose record the database does not commit is no run of the task: no `spawn-error`
//!   run, no alert mail; the task runs once the database takes the record.
//! - A SIGTERM while the start waits for its record's commit is handled at once, and the
//!   process exits 0 with the task never started.
//!
//! The database is made slow for one statement only by the test holding
//! `LOCK TABLE run_chain.runs IN SHARE MODE` in a psql session: the start record's INSERT
//! waits for it; the lease's renews do not touch that table.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/mail.rs"]
mod mail;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use common::{poll_until, send_signal, wait_until_for, Runner, TestEnv};
use fleet::{sql_int as n, text};
use mail::Peer;
use serde_json::Value;
use support::pg::Pg;

const LONG: Duration = Duration::from_secs(90);

/// One "host": its own RUN_ROOT, the shared database, mails to `peer`.
fn host(pg: &Pg, name: &str, url: &str, lease: &str, peer: &Peer, rest: &str) -> TestEnv {
    fleet::host_env(
        pg,
        name,
        url,
        lease,
        &format!("{}\n{rest}\n", mail::email_table(peer.port)),
    )
}

/// A new SMTP peer (keeping its mails) on a free port.
fn peer(env: &TestEnv) -> Peer {
    Peer::with_maildir(env, support::pg::free_port())
}

/// How many connections of run-chain (its user and application name) to `db` the server has
/// authorized so far (log_connections is on: one line per connection, before it is served).
fn connections(pg: &Pg, db: &str) -> usize {
    let needle = format!("connection authorized: user=runchain database={db} ");
    pg.log_text()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("application_name=run-chain"))
        .count()
}

/// A psql session holding `LOCK TABLE run_chain.runs IN SHARE MODE` (a run's start record
/// waits; reads and the lease's statements do not) until [`RunsLock::release`] or drop.
struct RunsLock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl RunsLock {
    fn take(pg: &Pg, db: &str) -> RunsLock {
        let mut child = pg
            .psql_command(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        stdin
            .write_all(b"BEGIN;\nLOCK TABLE run_chain.runs IN SHARE MODE;\n")
            .expect("write to psql");
        stdin.flush().expect("flush psql");
        wait_until_for(LONG, "the test holds the lock on run_chain.runs", || {
            n(
                pg,
                db,
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE c.relname = 'runs' AND l.mode = 'ShareLock' AND l.granted",
            ) == 1
        });
        RunsLock {
            child,
            stdin: Some(stdin),
        }
    }

    fn release(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"ROLLBACK;\n");
            drop(stdin);
            let _ = self.child.wait();
        }
    }
}

impl Drop for RunsLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// A run-chain statement of `db` waiting for a lock (the start record's INSERT).
fn a_write_waits_for_the_lock(pg: &Pg, db: &str) -> bool {
    n(
        pg,
        db,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'
             AND application_name = 'run-chain' AND wait_event_type = 'Lock'"
        ),
    ) >= 1
}

/// `history TASK --json` on `env`: (run id, outcome) of each run, oldest first.
fn history(env: &TestEnv, task: &str) -> Vec<(u64, String)> {
    let out = env.run(&["history", task, "--json"]);
    out.assert_code(0);
    let runs: Value = serde_json::from_str(&out.stdout).expect("history --json");
    let mut v: Vec<(u64, String)> = runs
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["run_id"].as_u64().unwrap_or(0),
                r["outcome"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A new owner (h2, after a kill -9 of h1) sends the streak's next mail (a downtime alert,
/// between runs: it never saw the failed run, h1's) quoting that run's output, read by its
/// DB thread when it acquired the lease: its process opens one connection to the database in
/// all (before, the loop opened one of its own to read the run).
#[test]
fn a_new_owners_mail_quotes_the_dead_owners_run_and_its_process_holds_one_connection() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("loopread_quote");
    let env = TestEnv::new("");
    let peer = peer(&env);
    // lease 6 s: a renew try may take 0.6 s before the DB thread makes a new connection
    // (which this test would count), enough on a loaded machine.
    let rest = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
stop_grace = "0s"
kill_grace = "200ms"
non_recoverable_downtime = "20s"

[tasks.broken]
command = "printf 'context-%s\n' marker; echo 'error: the disk is full' >&2; exit 3"
"#;
    let h1 = host(pg, "h1", &url, "6s", &peer, rest);
    let h2 = host(pg, "h2", &url, "6s", &peer, rest);
    let mut r1 = h1.spawn(&["broken"]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch ")
    });
    r1.wait_for("h1's first-failure alert arrived", || {
        peer.messages()
            .iter()
            .any(|m| m["alert"] == "first-failure")
    });
    send_signal(r1.pid, libc::SIGKILL);
    r1.wait_exit();
    let before = connections(pg, &db);
    let mut r2 = h2.spawn(&["broken"]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 owns the lease", || {
        text(&e2).contains("fleet: owner (epoch ")
    });
    // fail_cooldown is 1h: h2 runs nothing; the downtime window ends while it owns the chain.
    let arrived = poll_until(LONG, || {
        peer.messages().iter().any(|m| m["alert"] == "downtime")
    });
    assert!(
        arrived,
        "h2's downtime alert did not arrive; mails {:?}; outbox {}; h2's log:\n{}",
        peer.messages(),
        pg.try_psql(
            &db,
            "SELECT id, attempts, claim_until, next_try_at FROM run_chain.outbox"
        )
        .unwrap_or_default(),
        text(&e2)
    );
    let body = peer.body_of("downtime");
    assert!(
        body.contains("context-marker")
            && body.contains("error: the disk is full")
            && !body.contains("not in the record store")
            && !body.contains("could not be read"),
        "the downtime mail quotes h1's failed run, its output too:\n{body}"
    );
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE host = 'h2'"
        ),
        0,
        "h2 ran nothing (the quoted run is h1's)"
    );
    // h2's process: one connection in all, its DB thread's (no reconnect in this test).
    let made = connections(pg, &db) - before;
    assert_eq!(
        made,
        1,
        "h2 opened {made} connections to the database (its DB thread's only, expected); h2's log:\n{}",
        text(&e2)
    );
    assert_eq!(
        n(
            pg,
            &db,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'
                 AND application_name = 'run-chain' AND pid <> pg_backend_pid()"
            ),
        ),
        1,
        "one backend serves h2"
    );
    send_signal(r2.pid, libc::SIGTERM);
    r2.assert_exit(0);
}

/// A task that appends a line to `marker` and succeeds, every SUCCESS_COOLDOWN (4 s: time for
/// the test to take its lock between two runs); failures wait 1 h.
fn marker_task(marker: &Path, success_cooldown: &str) -> String {
    format!(
        r#"
[defaults]
success_cooldown = "{success_cooldown}"
fail_cooldown = "1h"
stop_grace = "0s"
kill_grace = "200ms"

[tasks.t]
command = "echo ran >> '{marker}'"
"#,
        marker = marker.display()
    )
}

fn lines(p: &Path) -> usize {
    text(p).lines().count()
}

/// Host h1 on a fresh database DB_NAME (lease LEASE) running [`marker_task`] as chain `t`, its
/// mails to a new peer; spawned, and run 1 is in the store.
struct MarkerHost {
    r1: Runner,
    e1: PathBuf,
    h1: TestEnv,
    marker: PathBuf,
    peer: Peer,
    /// The temp dir of the peer's log and the marker: kept until the test ends.
    _env: TestEnv,
    db: String,
}

fn marker_host(pg: &Pg, db_name: &str, lease: &str, success_cooldown: &str) -> MarkerHost {
    let (db, url) = pg.fresh_database(db_name);
    let env = TestEnv::new("");
    let peer = peer(&env);
    let marker = env.path("ran");
    let h1 = host(
        pg,
        "h1",
        &url,
        lease,
        &peer,
        &marker_task(&marker, success_cooldown),
    );
    let mut r1 = h1.spawn(&["t"]);
    let e1 = r1.stderr.clone();
    r1.wait_for("run 1 is in the store", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE outcome = 'ok'",
        ) == 1
    });
    MarkerHost {
        r1,
        e1,
        h1,
        marker,
        peer,
        _env: env,
        db,
    }
}

/// Takes the lock on run_chain.runs between run 1 and run 2 (the marker shows one run) and
/// waits until run 2's start record waits for it.
fn lock_before_run_2(pg: &Pg, db: &str, r1: &mut Runner, marker: &Path) -> RunsLock {
    let lock = RunsLock::take(pg, db);
    assert_eq!(
        lines(marker),
        1,
        "the lock came after run 2's start (a loaded machine?); cannot test"
    );
    r1.wait_for("run 2's start record waits for the lock", || {
        a_write_waits_for_the_lock(pg, db)
    });
    lock
}

/// Sends `sig` (named `name`) to `r1` while its start waits for its record's commit behind
/// `lock`, polls its log up to 3 s for `needle`, then releases the lock (the database answers
/// again) and asserts the signal was handled while the start waited. Returns when it was sent
/// and how long after that the poll ended.
fn signal_while_the_start_waits(
    r1: &Runner,
    e1: &Path,
    mut lock: RunsLock,
    sig: i32,
    name: &str,
    needle: &str,
) -> (Instant, Duration) {
    let sent = Instant::now();
    send_signal(r1.pid, sig);
    let handled = poll_until(Duration::from_secs(3), || text(e1).contains(needle));
    let after = sent.elapsed();
    lock.release();
    assert!(
        handled,
        "{name} not handled within 3 s while the start waited for its commit ({after:?}); h1's log:\n{}",
        text(e1)
    );
    (sent, after)
}

/// The start record of run 2 waits for a lock until its statement's timeout (lease / 5): the
/// start is refused. That is no run of the task: no `spawn-error` run, no failure, no alert;
/// once the database takes records again, the task runs (as run 3: the refused start's id
/// is spent, as any id once named in the saved state, and shown nowhere).
#[test]
fn a_start_the_database_does_not_commit_is_no_run_and_sends_no_alert() {
    let pg = Pg::shared();
    let MarkerHost {
        db,
        marker,
        h1,
        mut r1,
        e1,
        peer,
        _env,
    } = marker_host(pg, "loopread_refused", "15s", "4s");
    let mut lock = lock_before_run_2(pg, &db, &mut r1, &marker);
    r1.wait_for("the start of run 2 is refused", || {
        text(&e1).contains("not started:")
    });
    lock.release();
    r1.wait_for("a second run ended", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE stop_ms IS NOT NULL",
        ) >= 2
    });
    let runs = history(&h1, "t");
    assert!(
        !runs.iter().any(|(_, o)| o == "spawn-error"),
        "a refused start is no run of the task: {runs:?}\nh1's log:\n{}",
        text(&e1)
    );
    assert_eq!(
        runs,
        vec![(1, "ok".to_string()), (3, "ok".to_string())],
        "h1's log:\n{}",
        text(&e1)
    );
    assert_eq!(lines(&marker), 2, "the task ran twice");
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT coalesce(sum(count), 0) FROM run_chain.alerts"
        ),
        0,
        "no alert decided"
    );
    assert_eq!(n(pg, &db, "SELECT count(*) FROM run_chain.outbox"), 0);
    assert!(
        peer.messages().is_empty(),
        "no alert mail: {:?}",
        peer.messages()
    );
    send_signal(r1.pid, libc::SIGTERM);
    r1.assert_exit(0);
}

/// A SIGTERM while run 2's start waits for its record's commit (lease 30 s: the statement may
/// wait 6 s) is handled at once: the loop logs it and gives the start up; the process exits 0
/// once the database answers, the task never started, no `spawn-error` run, the lease released.
#[test]
fn a_sigterm_while_the_start_waits_for_its_commit_is_handled_at_once() {
    let pg = Pg::shared();
    let MarkerHost {
        db,
        marker,
        h1,
        mut r1,
        e1,
        peer,
        _env,
    } = marker_host(pg, "loopread_term", "30s", "4s");
    let lock = lock_before_run_2(pg, &db, &mut r1, &marker);
    // Released once handled: the process can release its lease and exit.
    let (sent, after) = signal_while_the_start_waits(
        &r1,
        &e1,
        lock,
        libc::SIGTERM,
        "SIGTERM",
        "SIGTERM: stopping",
    );
    r1.assert_exit(0);
    println!(
        "SIGTERM handled {after:?} after it was sent; exit {:?} after",
        sent.elapsed()
    );
    assert_eq!(lines(&marker), 1, "run 2 never started");
    let runs = history(&h1, "t");
    assert!(
        runs.iter().all(|(_, o)| o == "ok" || o == "interrupted"),
        "no failure: {runs:?}\nh1's log:\n{}",
        text(&e1)
    );
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.leases WHERE chain = 't' AND holder IS NULL"
        ),
        1,
        "the lease was released; h1's log:\n{}",
        text(&e1)
    );
    assert!(peer.messages().is_empty(), "{:?}", peer.messages());
}

/// The lease is taken from the owner between runs (the row given to another holder, as a
/// partition would let happen) and a kick starts run 2 before the owner's next renew: the
/// start record is fenced, the start refused. No run of the task (the owner's log shows no
/// `spawn-error` run), the owner goes the way of a lost lease (back to standby); when the
/// other holder's lease ends, it owns the chain again, resumed from the fleet's store (where
/// run 2 never was), and run 2 runs.
#[test]
fn a_start_fenced_because_the_lease_was_taken_is_no_run_and_the_owner_goes_standby() {
    let pg = Pg::shared();
    // lease 30 s: renews every 6 s, so the kick's start comes before the next one.
    let MarkerHost {
        db,
        marker,
        h1,
        mut r1,
        e1,
        peer,
        _env,
    } = marker_host(pg, "loopread_fenced", "30s", "1h");
    pg.psql(
        &db,
        "UPDATE run_chain.leases SET holder = 'thief', host = 'thief', epoch = epoch + 1,
         expires_at = now() + interval '1 hour' WHERE chain = 't'",
    );
    send_signal(r1.pid, libc::SIGUSR1);
    r1.wait_for("the start of run 2 is refused", || {
        text(&e1).contains("not started:")
    });
    r1.wait_for("h1 goes back to standby", || {
        text(&e1).contains("waiting as standby")
    });
    assert_eq!(lines(&marker), 1, "run 2 did not run");
    let log = text(&e1);
    assert!(
        !log.contains("spawn-error") && !log.contains("could not start"),
        "a refused start is no run of the task; h1's log:\n{log}"
    );
    assert!(
        n(
            pg,
            &db,
            "SELECT fenced_writes FROM run_chain.leases WHERE chain = 't'"
        ) >= 1,
        "the start record was fenced"
    );
    // The other holder's lease ends: h1 owns the chain again (resumed from the fleet's
    // store: run 1's cooldown of 1 h) and, kicked, runs run 2.
    pg.psql(
        &db,
        "UPDATE run_chain.leases SET expires_at = now() WHERE chain = 't'",
    );
    r1.wait_for("h1 runs the chain again", || {
        text(&e1).matches(" running as pid ").count() == 2
    });
    send_signal(r1.pid, libc::SIGUSR1);
    r1.wait_for("run 2 ran", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE outcome = 'ok'",
        ) == 2
    });
    assert_eq!(
        history(&h1, "t"),
        vec![(1, "ok".to_string()), (2, "ok".to_string())],
        "h1's log:\n{}",
        text(&e1)
    );
    assert!(peer.messages().is_empty(), "{:?}", peer.messages());
    send_signal(r1.pid, libc::SIGTERM);
    r1.assert_exit(0);
    for l in text(&e1).lines().filter(|l| l.contains("fleet")) {
        println!("{l}");
    }
}

/// A SIGHUP while run 2's start waits for its record's commit is handled at once (the config
/// reloaded), and the run starts as soon as the record is committed.
#[test]
fn a_sighup_while_the_start_waits_for_its_commit_is_handled_at_once_and_the_run_starts() {
    let pg = Pg::shared();
    let MarkerHost {
        db,
        marker,
        h1,
        mut r1,
        e1,
        peer: _peer,
        _env,
    } = marker_host(pg, "loopread_hup", "30s", "4s");
    let lock = lock_before_run_2(pg, &db, &mut r1, &marker);
    signal_while_the_start_waits(&r1, &e1, lock, libc::SIGHUP, "SIGHUP", "SIGHUP: reloaded");
    r1.wait_for("run 2 ran", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE stop_ms IS NOT NULL",
        ) >= 2
    });
    assert_eq!(
        history(&h1, "t"),
        vec![(1, "ok".to_string()), (2, "ok".to_string())],
        "h1's log:\n{}",
        text(&e1)
    );
    assert_eq!(lines(&marker), 2);
    send_signal(r1.pid, libc::SIGTERM);
    r1.assert_exit(0);
}
