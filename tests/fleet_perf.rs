//! The fleet's write path, pipelined (issue 20, stage 5), against a real PostgreSQL.
//!
//! Cases: a run costs a few round trips, counted by a TCP relay between run-chain and the
//! server (a round trip is a flight of the client's bytes after an answer of the server),
//! not one per statement; the series' `recent` window that the run's end now extends in
//! SQL holds exactly the (duration, latency) of the last 100 runs, as `push_recent` packs
//! them (little-endian u32 pairs).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until_for, TestEnv};
use support::pg::Pg;

const LONG: Duration = Duration::from_secs(120);

/// Host h1 (tests/support/fleet.rs's `host_env`) running `task` as chain `t` without cooldowns.
fn host(pg: &Pg, url: &str, task: &str) -> TestEnv {
    // A long lease: its renews (every lease/5) are a small part of the round trips.
    fleet::host_env(
        pg,
        "h1",
        url,
        "20s",
        &format!(
            r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
stop_grace = "0s"
kill_grace = "200ms"
keep_runs_max = 1000

[tasks.t]
command = "{task}"
"#
        ),
    )
}

/// A TCP relay to `to` that counts the client's flights: bytes from the client after
/// bytes from the server (or first on a connection) start a new round trip.
struct Relay {
    port: u16,
    rounds: Arc<AtomicU64>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = l.local_addr().expect("relay address").port();
        let rounds = Arc::new(AtomicU64::new(0));
        let r = rounds.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                // Whether the last bytes seen on this connection were the server's.
                let answered = Arc::new(AtomicBool::new(true));
                let pipe = |mut from: TcpStream, mut to: TcpStream, client_side: bool| {
                    let (answered, rounds) = (answered.clone(), r.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if client_side {
                                if answered.swap(false, Ordering::SeqCst) {
                                    rounds.fetch_add(1, Ordering::SeqCst);
                                }
                            } else {
                                answered.store(true, Ordering::SeqCst);
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(client, s2, true);
                pipe(server, c2, false);
            }
        });
        Relay { port, rounds }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }
}

fn runs_done(env: &TestEnv) -> usize {
    env.lines("runs").len()
}

/// Runs of a chain with zero cooldowns cost a few round trips each (the start record's
/// gated batch and the end with the PID: one flight each), not one per statement (15
/// before).
#[test]
fn a_run_costs_a_few_round_trips_not_one_per_statement() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("perf_rounds");
    let port: u16 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the url's port");
    let relay = Relay::start(port);
    let url = url.replace(&format!(":{port}/"), &format!(":{}/", relay.port));
    let env = host(pg, &url, "echo x >> runs");
    let mut r = env.spawn(&["t"]);
    // The connect, the schema and the first batches (ids) are behind us after 10 runs.
    wait_until_for(LONG, "10 runs", || runs_done(&env) >= 10);
    let (n0, r0) = (runs_done(&env), relay.rounds());
    wait_until_for(LONG, "40 more runs", || runs_done(&env) >= n0 + 40);
    let (n1, r1) = (runs_done(&env), relay.rounds());
    r.signal(libc::SIGTERM);
    r.wait_exit();
    let per_run = (r1 - r0) as f64 / (n1 - n0) as f64;
    println!(
        "round trips per run: {per_run:.2} ({} over {} runs)",
        r1 - r0,
        n1 - n0
    );
    let recorded: i64 = pg
        .psql(
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE stop_ms IS NOT NULL",
        )
        .trim()
        .parse()
        .unwrap_or(-1);
    assert!(recorded >= n1 as i64, "{recorded} runs recorded, {n1} ran");
    assert!(
        per_run <= 4.0,
        "{per_run:.2} round trips per run: the batches are not pipelined"
    );
}

/// The `recent` window of a series, extended by each run's end in SQL, is the packed
/// (duration, latency) of its last 100 runs, oldest first, as the runs table has them. A
/// start given up at the gate (the SIGTERM below may come while a start waits for its
/// commit) is closed as `interrupted` with no latency: it never ran, and is in no window.
#[test]
fn the_recent_window_holds_the_last_100_runs_as_push_recent_packs_them() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("perf_recent");
    let env = host(pg, &url, "echo x >> runs");
    let mut r = env.spawn(&["t"]);
    wait_until_for(LONG, "110 runs", || runs_done(&env) >= 110);
    r.signal(libc::SIGTERM);
    r.wait_exit();
    let recent = pg.psql(
        &db,
        "SELECT encode(recent, 'hex') FROM run_chain.series WHERE chain = 't' AND task = 't'",
    );
    let rows = pg.psql(
        &db,
        "SELECT duration_ms, latency_ms FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
         WHERE s.task = 't' AND r.stop_ms IS NOT NULL AND r.latency_ms IS NOT NULL
         ORDER BY r.run_id DESC LIMIT 100",
    );
    let mut pairs: Vec<(u32, u32)> = rows
        .lines()
        .filter_map(|l| {
            let (d, l) = l.split_once('|')?;
            Some((d.trim().parse().ok()?, l.trim().parse().ok()?))
        })
        .collect();
    pairs.reverse();
    assert_eq!(pairs.len(), 100, "{rows}");
    let mut want = String::new();
    for (d, l) in pairs {
        for b in d.to_le_bytes().iter().chain(l.to_le_bytes().iter()) {
            want.push_str(&format!("{b:02x}"));
        }
    }
    assert_eq!(recent.trim(), want);
}

/// `status` reads the fleet's store in one flight with its version check; a database that
/// has no schema yet, or a foreign `run_chain.meta`, is still sorted out as before: no
/// schema is no fleet chains (exit 0), a foreign one is the database refusing us (this
/// host's chains, a warning, exit 78); a schema with records lists the fleet's chains.
#[test]
fn status_reads_the_fleet_in_one_flight_and_still_sorts_out_an_empty_or_foreign_database() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("perf_status_empty");
    let env = host(pg, &url, "true");
    let out = env.sub(&["status", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    assert_eq!(doc["chains"].as_array().map(Vec::len), Some(0), "{doc:#}");

    // A chain recorded in the fleet's store, then stopped: listed, down, with its task.
    let r = env.run(&["--once", "t"]);
    r.assert_code(0);
    let out = env.sub(&["status", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    let chains = doc["chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 1, "{doc:#}");
    assert_eq!(chains[0]["chain"], "t", "{doc:#}");
    assert_eq!(chains[0]["tasks"][0]["runs"], 1, "{doc:#}");
    assert_eq!(chains[0]["fleet"]["role"], "none", "{doc:#}");

    // The same database made foreign: its run_chain.meta names another application.
    pg.psql(&db, "UPDATE run_chain.meta SET app = 'not-run-chain'");
    let out = env.sub(&["status", "--json"]);
    out.assert_code(78);
    assert!(out.stderr.contains("not-run-chain"), "{}", out.stderr);
}

/// A run's start whose run id is already recorded as ended (here: written into the store
/// by hand during the cooldown) is refused, now by the statement itself, in the flight
/// that carries the COMMIT: the batch does not commit, the run does not start (the task
/// never sees that id), and the row stays as it was.
#[test]
fn a_start_over_a_run_recorded_as_ended_is_refused_and_that_run_does_not_start() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("perf_ended");
    let env = fleet::host_env(
        pg,
        "h1",
        &url,
        "20s",
        r#"
[defaults]
success_cooldown = "4s"
fail_cooldown = "4s"
stop_grace = "0s"
kill_grace = "200ms"

[tasks.t]
command = "echo $RUN_CHAIN_RUN_ID >> runs"
"#,
    );
    let mut r = env.spawn(&["t"]);
    wait_until_for(LONG, "run 1", || env.lines("runs") == ["1"]);
    // Run 2 recorded as ended before the chain starts it.
    pg.psql(
        &db,
        "INSERT INTO run_chain.runs (series, run_id, instance, start_ms, stop_ms, outcome, error)
         SELECT s.id, 2, r.instance, r.start_ms + 1, r.start_ms + 2, 'failed', 'written by the test'
         FROM run_chain.series s JOIN run_chain.runs r ON r.series = s.id AND r.run_id = 1
         WHERE s.chain = 't' AND s.task = 't'",
    );
    wait_until_for(LONG, "run 2 refused", || {
        r.stderr().contains("is recorded as ended already")
    });
    // Later runs go on (run 3 on), run 2 never ran.
    wait_until_for(LONG, "a later run", || env.lines("runs").len() >= 2);
    r.signal(libc::SIGTERM);
    r.wait_exit();
    let runs = env.lines("runs");
    assert!(!runs.contains(&"2".to_string()), "{runs:?}\n{}", r.stderr());
    let row = pg.psql(
        &db,
        "SELECT outcome || ' ' || error FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
         WHERE s.chain = 't' AND r.run_id = 2",
    );
    assert_eq!(row.trim(), "failed written by the test");
}
