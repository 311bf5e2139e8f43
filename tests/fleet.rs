//! The fleet (issue 20) end to end: real `run-chain` processes as "hosts" (each with its own
//! RUN_ROOT and `[store] host`), a real PostgreSQL (tests/support/pg.rs), and a ledger of task
//! starts, ticks and ends (tests/support/ledger.rs) that judges overlap independently of the
//! store. Lease 2 s, kill_grace 100 ms (well under 0.2 × lease).
//!
//! Judged by the ledger, exit codes and the database (`run_chain.leases`: holder, host, epoch,
//! expires_at), not by log wording.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::Runner;
use fleet::{db_time_to_mono, hold, lease_row, secs, wait_exit_mono, Fleet, LeaseRow, LONG_RUNS};
use support::ledger;
use support::netns::Netns;
use support::pg::Pg;

const LEASE_S: f64 = 2.0;
/// The standby's acquire tries are 0.5-1.0 s apart: after a release it starts within that
/// plus a round trip and a spawn (the 1.5 s).
const HANDOVER_S: f64 = 1.5;
/// Slack for a loaded 2-core machine shared by several builds. The figures are printed; the
/// tight ones belong to the benchmark.
const SLACK_S: f64 = 2.5;

// ---------------------------------------------------------------------------------------------
// Case 1: kill -9 of the owner, five times, alternating hosts.
// ---------------------------------------------------------------------------------------------

#[test]
fn case01_kill_9_of_the_owner_five_times_the_standby_takes_over_after_the_lease() {
    let f = Fleet::new("k9", LONG_RUNS);
    let (h1, _, h2) = f.owner_and_standby();
    assert!(
        f.ledger().of_host("h2").next().is_none(),
        "the standby h2 ran a task while h1 owned the chain:\n{:?}",
        f.ledger().runs
    );
    let mut owner = ("h1", h1);
    let mut standby = ("h2", h2);
    let mut figures = Vec::new();
    for round in 1..=5 {
        let before = f.lease();
        assert_eq!(before.host, owner.0, "round {round}: {before:?}");
        assert!(before.live, "round {round}: {before:?}");
        // The owner is inside a run (ticking) when it dies.
        let current = f
            .ledger()
            .of_host(owner.0)
            .max_by_key(|r| r.start)
            .cloned()
            .expect("the owner's run");
        assert!(
            !current.ended,
            "round {round}: the owner is not running: {current}"
        );

        let t_kill = ledger::mono_ns();
        owner.1.signal(libc::SIGKILL);
        owner.1.wait_exit();
        // The dead owner can renew no more: this is (at the latest) when its lease expires.
        let dead = f.lease();
        assert_eq!(
            dead.holder, before.holder,
            "round {round}: taken over too early: {dead:?}"
        );

        let next = f.wait_run(&mut standby.1, standby.0, t_kill);
        let takeover = secs(next.start - t_kill);
        let after_expiry = (next.start as i128 - db_time_to_mono(dead.expires_at)) as f64 / 1e9;
        let killed = f
            .ledger()
            .of_host(owner.0)
            .find(|r| r.pid == current.pid)
            .cloned()
            .expect("the killed owner's run");
        let killed_end = (killed.end as i128 - t_kill as i128) as f64 / 1e9;
        eprintln!(
            "round {round}: {} killed, {} started {takeover:.3} s later ({after_expiry:+.3} s \
             after the dead lease's expiry); the killed task's last stamp {killed_end:+.3} s \
             from the kill ({})",
            owner.0,
            standby.0,
            if killed.ended { "E: TERM trap" } else { "no E" }
        );
        figures.push(takeover);

        let after = f.lease();
        assert_eq!(after.host, standby.0, "round {round}: {after:?}");
        assert_eq!(
            after.epoch,
            before.epoch + 1,
            "round {round}: {before:?} -> {after:?}"
        );
        assert_ne!(after.holder, before.holder);
        assert!(
            after.acquired_at >= dead.expires_at,
            "round {round}: acquired at {} before the dead owner's lease expired at {}",
            after.acquired_at,
            dead.expires_at
        );
        assert!(
            takeover <= LEASE_S + HANDOVER_S + SLACK_S,
            "round {round}: takeover took {takeover:.3} s (lease {LEASE_S} s)"
        );

        // The killed host comes back, as a standby.
        let mut back = f.launch(owner.0);
        f.wait_standby(&mut back, owner.0);
        let old_owner = std::mem::replace(&mut owner, standby);
        standby = (old_owner.0, back);
    }
    let ledger = f.ledger();
    ledger.assert_no_overlap();
    let max = figures.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "takeovers after kill -9 (lease {LEASE_S} s): {} s; max {max:.3} s",
        figures
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Every run of a killed owner ended (its guardian killed the group) before the next began;
    // and there were exactly 6 runs: the first, and one per takeover.
    assert_eq!(ledger.runs.len(), 6, "runs: {:?}", ledger.runs);
}

// ---------------------------------------------------------------------------------------------
// Case 2: SIGTERM of the owner: it stops its task, releases the lease, exits 0; the standby
// starts within 1.5 s of the release.
// ---------------------------------------------------------------------------------------------

#[test]
fn case02_sigterm_of_the_owner_releases_the_lease_and_the_standby_starts_at_once() {
    let f = Fleet::new("term", LONG_RUNS);
    let (mut h1, first, mut h2) = f.owner_and_standby();
    let before = f.lease();
    assert_eq!(before.host, "h1");

    let t_term = ledger::mono_ns();
    h1.signal(libc::SIGTERM);
    let (status, t_exit) = wait_exit_mono(&mut h1);
    assert_eq!(
        status.code(),
        Some(0),
        "h1 exited {status:?} after SIGTERM; stderr:\n{}",
        h1.stderr()
    );
    // Released: the row no longer names h1 as a live holder (else the standby would have to
    // wait for the expiry, up to a whole lease).
    let released = f.lease();
    assert!(
        released.holder.is_empty() || released.host == "h2" || !released.live,
        "h1 exited without releasing its lease: {released:?}"
    );
    // It stopped its task: the TERM trap stamped the end.
    let l = f.ledger();
    let stopped = l
        .of_host("h1")
        .find(|r| r.pid == first.pid)
        .cloned()
        .expect("h1's run");
    assert!(
        stopped.ended,
        "h1's task was not stopped by TERM: {stopped}"
    );

    let next = f.wait_run(&mut h2, "h2", t_term);
    let from_exit = (next.start as i128 - t_exit as i128) as f64 / 1e9;
    let from_task_end = secs(next.start - stopped.end);
    eprintln!(
        "SIGTERM -> h1 exit {:.3} s; h2 started {from_exit:.3} s after h1's exit was seen \
         ({from_task_end:.3} s after h1's task ended)",
        secs(t_exit - t_term)
    );
    // The figure is 1.5 s; SLACK_S more on this loaded machine (the standby's try
    // interval is 0.5-1.0 s: the figure printed above is the honest one). Either way it is
    // well under a lease after the task's end, which an expiry could not give.
    assert!(
        from_exit <= HANDOVER_S + SLACK_S,
        "h2 started {from_exit:.3} s after h1 exited (want <= {HANDOVER_S} s, + {SLACK_S} s slack)"
    );
    let after = f.lease();
    assert_eq!(after.host, "h2", "{after:?}");
    assert_eq!(after.epoch, before.epoch + 1, "{before:?} -> {after:?}");
    f.ledger().assert_no_overlap();
}

// ---------------------------------------------------------------------------------------------
// Case 10: bad input. Each a clear error, exit 78, nothing touched.
// ---------------------------------------------------------------------------------------------

/// The tables of schema run_chain in DB (empty: no such schema).
fn run_chain_tables(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "SELECT coalesce(string_agg(c.relname, ',' ORDER BY c.relname), '') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'run_chain'",
    )
}

fn schemas(pg: &Pg, db: &str) -> String {
    pg.psql(
        db,
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace \
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
    )
}

/// A running owner h1 of the fleet's chain, to check that bad launches leave it alone.
struct Running {
    runner: Runner,
    row: LeaseRow,
    pid: i32,
}

fn running_owner(f: &Fleet) -> Running {
    let mut runner = f.launch("h1");
    f.wait_run(&mut runner, "h1", 0);
    let row = f.lease();
    let pid = runner.pid;
    Running { runner, row, pid }
}

/// The owner is still the same process, still owns the same epoch, and still ticks.
fn assert_undisturbed(f: &Fleet, r: &mut Running, what: &str) {
    assert!(
        r.runner.try_status().is_none(),
        "{what}: the running instance {} exited; stderr:\n{}",
        r.pid,
        r.runner.stderr()
    );
    let t = ledger::mono_ns();
    let mut ticked = false;
    r.runner.wait_for(&format!("{what}: h1 still ticks"), || {
        ticked = f
            .ledger()
            .of_host("h1")
            .any(|run| run.end > t && !run.ended);
        ticked
    });
    let row = f.lease();
    assert_eq!(
        (row.holder.as_str(), row.epoch, row.host.as_str()),
        (r.row.holder.as_str(), r.row.epoch, "h1"),
        "{what}: the lease changed"
    );
    assert_eq!(
        f.ledger().of_host("h1").count(),
        1,
        "{what}: h1's task restarted"
    );
}

/// Launches a bad config for h1 (same RUN_ROOT and chain as the running owner) and expects
/// 78 with a message that contains each of `words`.
fn assert_refused(f: &Fleet, file: &str, store: &str, words: &[&str]) -> String {
    let config = f.config_with("h1", file, store);
    let mut bad = f.launch_with("h1", &config, &[]);
    let status = bad.wait_exit();
    let stderr = bad.stderr();
    assert_eq!(
        status.code(),
        Some(78),
        "{file}: exited {status:?}, expected 78; stderr:\n{stderr}"
    );
    eprintln!(
        "{file}: 78: {}",
        stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    );
    let lower = stderr.to_lowercase();
    for w in words {
        assert!(
            lower.contains(&w.to_lowercase()),
            "{file}: the error does not say {w:?}:\n{stderr}"
        );
    }
    stderr
}

#[test]
fn case10_a_wrong_password_is_78_and_creates_nothing() {
    let f = Fleet::new("wrongpw", LONG_RUNS);
    let mut owner = running_owner(&f);
    let (other, other_url) = f.pg.fresh_database("wrongpw_other");
    let pw = Pg::write_password_file(&f.env.path("wrong-password"), "not-the-password");
    let store = fleet::store_lines(&other_url, &pw, "");
    assert_refused(&f, "wrong-pw.toml", &store, &["password"]);
    assert_eq!(
        schemas(f.pg, &other),
        "public",
        "a schema appeared in {other}"
    );
    // The same wrong password against the running owner's database.
    let store = fleet::store_lines(&f.url, &pw, "");
    assert_refused(&f, "wrong-pw-same-db.toml", &store, &["password"]);
    assert_undisturbed(&f, &mut owner, "wrong password");
}

#[test]
fn case10_a_database_that_is_not_run_chains_is_78_and_left_as_it_was() {
    let f = Fleet::new("foreign", LONG_RUNS);
    let mut owner = running_owner(&f);
    // A schema run_chain without run_chain.meta.
    let (a, a_url) = f.pg.fresh_database("foreign_nometa");
    f.pg.psql(
        &a,
        "CREATE SCHEMA run_chain AUTHORIZATION runchain; \
         CREATE TABLE run_chain.x (i int); ALTER TABLE run_chain.x OWNER TO runchain",
    );
    // A run_chain.meta that is someone else's.
    let (b, b_url) = f.pg.fresh_database("foreign_othermeta");
    f.pg.psql(
        &b,
        "CREATE SCHEMA run_chain AUTHORIZATION runchain; \
         CREATE TABLE run_chain.meta (one bool PRIMARY KEY DEFAULT true, app text NOT NULL, \
         version int NOT NULL); INSERT INTO run_chain.meta (app, version) VALUES ('other-app', 1); \
         ALTER TABLE run_chain.meta OWNER TO runchain",
    );
    for (db, url, tables) in [(&a, &a_url, "x"), (&b, &b_url, "meta,meta_pkey")] {
        assert_eq!(run_chain_tables(f.pg, db), tables);
        let store = f.store_lines_for(url, "");
        assert_refused(&f, &format!("{db}.toml"), &store, &["not run-chain"]);
        assert_eq!(run_chain_tables(f.pg, db), tables, "{db} was changed");
        assert_eq!(schemas(f.pg, db), "public,run_chain", "{db} was changed");
    }
    assert_eq!(
        f.pg.psql(&b, "SELECT app || ' ' || version FROM run_chain.meta"),
        "other-app 1"
    );
    assert_undisturbed(&f, &mut owner, "foreign database");
    // Other content without a run_chain schema is not foreign: run-chain makes its schema
    // beside it and leaves the rest alone.
    let (c, c_url) = f.pg.fresh_database("foreign_public");
    f.pg.psql(
        &c,
        "CREATE TABLE public.x (i int); INSERT INTO public.x VALUES (7); \
         ALTER TABLE public.x OWNER TO runchain",
    );
    let store = f.store_lines_for(&c_url, "");
    let config = f.config_with("h3", "h3-public.toml", &store);
    let mut h3 = f.launch_with("h3", &config, &[]);
    f.wait_run(&mut h3, "h3", 0);
    assert_eq!(schemas(f.pg, &c), "public,run_chain");
    assert_eq!(f.pg.psql(&c, "SELECT i FROM public.x"), "7");
    assert_eq!(lease_row(f.pg, &c).map(|r| r.host).as_deref(), Some("h3"));
}

#[test]
fn case10_a_password_in_the_url_is_78_without_contacting_the_database() {
    let f = Fleet::new("pwurl", LONG_RUNS);
    let mut owner = running_owner(&f);
    // A listener of our own stands for the database: nothing may connect to it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().unwrap().port();
    let secret = "s3cr3t-in-the-url";
    let store = format!(
        "url = \"postgresql://runchain:{secret}@127.0.0.1:{port}/{}\"\npassword_file = \"{}\"",
        f.db,
        f.pw.display()
    );
    let stderr = assert_refused(&f, "pw-in-url.toml", &store, &["password"]);
    assert!(
        !stderr.contains(secret),
        "the error repeats the password:\n{stderr}"
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("run-chain connected to the URL's server (from {peer})"),
        Err(e) => panic!("accept: {e}"),
    }
    assert_undisturbed(&f, &mut owner, "password in the URL");
}

/// clear_user (pg_hba `password`) and md5_user (`md5`) over a connection without TLS: the
/// server asks for the password in clear text / as MD5; run-chain must refuse before sending
/// any of it. A server of the test's own, so that its log is this test's alone.
#[test]
fn case10_cleartext_and_md5_authentication_without_tls_are_refused_before_any_password() {
    let own = Pg::new();
    let pg = &own;
    let (db, _) = pg.fresh_database("weakauth");
    let f = Fleet::on(
        pg,
        db.clone(),
        pg.url("runchain", "127.0.0.1", &db),
        LONG_RUNS,
    );
    for (user, password) in [
        ("clear_user", pg.clear_password().to_owned()),
        ("md5_user", pg.md5_password().to_owned()),
    ] {
        let pw = Pg::write_password_file(&f.env.path(&format!("{user}.pw")), &password);
        let store = fleet::store_lines(&pg.url(user, "127.0.0.1", &db), &pw, "tls = \"none\"");
        let log_before = pg.log_text().len();
        let stderr = assert_refused(&f, &format!("{user}.toml"), &store, &[]);
        let log = pg.log_text()[log_before..].to_owned();
        assert!(
            log.contains("connection received: host=127.0.0.1"),
            "{user}: run-chain never reached the server (the check would prove nothing):\n{log}"
        );
        // The server logs a session's lines as USER@DB once the startup packet is read; a
        // password sent (right or wrong) logs `connection authenticated` or `password
        // authentication failed`; a client that hangs up on the request logs nothing more.
        assert!(
            !log.contains(&format!("{user}@{db}")) && !log.contains(&format!("\"{user}\"")),
            "{user}: the server saw a password attempt:\n{log}\nrun-chain:\n{stderr}"
        );
        assert!(
            !stderr.contains(&password),
            "{user}: the error shows the password"
        );
        assert_eq!(schemas(pg, &db), "public");
    }
}

#[test]
fn case10_an_unreachable_database_at_launch_waits_as_standby_and_once_exits_75() {
    let own = Pg::new();
    let pg = &own;
    let (db, url) = pg.fresh_database("unreach");
    let f = Fleet::on(pg, db, url, LONG_RUNS);
    pg.stop();
    let mut h1 = f.launch("h1");
    // It keeps trying: alive, and no task, for three leases.
    hold(
        Duration::from_secs_f64(3.0 * LEASE_S),
        &mut [&mut h1],
        "with the database down, it should keep waiting",
    );
    assert!(f.ledger().runs.is_empty(), "a task ran without the lease");
    // `--once` gives up after about one lease: 75.
    let config = f.host_config("h2");
    let t = Instant::now();
    let mut once = f.launch_with("h2", &config, &["--once"]);
    let status = once.wait_exit();
    let took = t.elapsed().as_secs_f64();
    eprintln!("--once with the database down exited {status:?} after {took:.3} s");
    assert_eq!(
        status.code(),
        Some(75),
        "--once with the database down; stderr:\n{}",
        once.stderr()
    );
    assert!(
        (0.8 * LEASE_S..=LEASE_S + SLACK_S + 1.0).contains(&took),
        "--once gave up after {took:.3} s (lease {LEASE_S} s)"
    );
    // The database comes back: the waiting instance acquires and runs.
    pg.start();
    let run = f.wait_run(&mut h1, "h1", 0);
    let row = f.lease();
    assert_eq!(row.host, "h1");
    assert!(run.start > 0);
}

/// The database silent (packets dropped, as across a partition: connects hang rather than
/// fail): `--once` still gives up after about one lease (75), a launch waits as a standby, and
/// runs the chain once the network heals.
#[test]
fn case10_a_silent_database_at_launch_once_exits_75_and_a_standby_waits_until_it_heals() {
    let f = Fleet::new("silent", LONG_RUNS);
    let ns = Netns::new();
    // The host side's address: not loopback, so TLS would default to required (the test
    // CA's certificate names localhost and 127.0.0.1 only): SCRAM without TLS here.
    let url = f.pg.url("runchain", &ns.host_addr(), &f.db);
    let store = f.store_lines_for(&url, "tls = \"none\"");
    let config = f.config_with("h1", "h1-ns.toml", &store);
    ns.cut();
    let t = Instant::now();
    let mut once = f.launch_in(&ns, "h1", &config, &["--once"]);
    let status = once.wait_exit();
    let took = t.elapsed().as_secs_f64();
    eprintln!("--once with the database silent exited {status:?} after {took:.3} s");
    assert_eq!(
        status.code(),
        Some(75),
        "--once with the database silent; stderr:\n{}",
        once.stderr()
    );
    assert!(
        (0.8 * LEASE_S..=LEASE_S + SLACK_S + 1.0).contains(&took),
        "--once gave up after {took:.3} s (lease {LEASE_S} s)"
    );
    let mut h1 = f.launch_in(&ns, "h1", &config, &[]);
    hold(
        Duration::from_secs_f64(3.0 * LEASE_S),
        &mut [&mut h1],
        "with the database silent, it should keep waiting",
    );
    assert!(f.ledger().runs.is_empty(), "a task ran without the lease");
    let healed = ledger::mono_ns();
    ns.heal();
    let run = f.wait_run(&mut h1, "h1", 0);
    eprintln!(
        "after heal: the chain started {:.3} s later",
        secs(run.start.saturating_sub(healed))
    );
    let row = f.lease();
    assert_eq!(row.host, "h1");
    assert!(row.live);
}
