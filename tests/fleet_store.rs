//! The fleet's records (issue 20, stage 2) against a real PostgreSQL: "hosts" are run-chain
//! instances with their own RUN_ROOT and `host = "h1"`, `"h2"`, sharing one database.
//!
//! Cases: runs are recorded in the fleet's store with the writer's host and epoch, a running
//! task's output appears in `output_chunks` while it runs and the final output in the run's
//! row at its end (the start record costs one gated commit: its latency is printed); a kill -9
//! of the owner mid-run: the next owner records that run `interrupted`, ended at the old
//! lease's expiry with an error naming the old host and epoch, runs that task first, and run
//! ids continue; a write batch after a foreign UPDATE of the lease row is fenced: counted in
//! `leases.fenced_writes`, logged, never retried, and no run starts whose start record could
//! not be committed (the start gate), also when the database is stopped between runs.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::time::{Duration, Instant};

use common::{send_signal, wait_until_for, Runner, TestEnv};
use fleet::{sql_int as n, text};
use support::pg::{Mode, Pg};

/// One "host": a TestEnv (tests/support/fleet.rs) whose config names the database, the host
/// and the tasks.
fn host(pg: &Pg, name: &str, url: &str, lease: &str, tasks: &str) -> TestEnv {
    let rest = format!("{}\n{tasks}\n", fleet::defaults("100ms", "200ms"));
    fleet::host_env(pg, name, url, lease, &rest)
}

fn q(pg: &Pg, db: &str, sql: &str) -> String {
    pg.psql(db, sql)
}

const LONG: Duration = Duration::from_secs(30);

/// Runs go to PostgreSQL with host and epoch; output in chunks while running, whole at the
/// end; the start gate's latency is printed from the debug log.
#[test]
fn runs_are_recorded_in_the_fleet_store_with_host_epoch_and_output_chunks() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("store_runs");
    let h1 = host(
        pg,
        "h1",
        &url,
        "2s",
        r#"[tasks.talk]
command = "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo line$i; sleep 0.2; done"
"#,
    );
    let mut cmd = h1.run_command(&["talk"]);
    cmd.env("RUST_LOG", "debug");
    let mut r = h1.spawn_command(cmd);
    let err = r.stderr.clone();
    // While run 1 runs, its output is in output_chunks (by offset), not in runs.output.
    wait_until_for(LONG, "output chunks of the running run", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.output_chunks c JOIN run_chain.runs r ON r.id = c.run
             WHERE r.run_id = 1 AND r.stop_ms IS NULL",
        ) >= 2
    });
    let chunks = q(
        pg,
        &db,
        "SELECT string_agg(convert_from(c.data, 'UTF8'), '' ORDER BY c.off) FROM run_chain.output_chunks c
         JOIN run_chain.runs r ON r.id = c.run WHERE r.run_id = 1",
    );
    assert!(chunks.starts_with("line1\n"), "chunks: {chunks:?}");
    let offs = q(
        pg,
        &db,
        "SELECT string_agg(off::text || ':' || length(data)::text, ',' ORDER BY off) FROM run_chain.output_chunks",
    );
    eprintln!("output chunks while running: {offs}");
    // Offsets follow each other: each chunk starts where the one before ended.
    let mut end = 0;
    for part in offs.split(',') {
        let (o, l) = part.split_once(':').expect("off:len");
        assert_eq!(o.parse::<i64>().expect("off"), end, "chunks {offs}");
        end += l.parse::<i64>().expect("len");
    }
    // The end: the whole output in the row, no chunk left, host and epoch of the writer.
    wait_until_for(LONG, "run 1 ends", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE run_id = 1 AND outcome = 'ok'",
        ) == 1
    });
    let row = q(
        pg,
        &db,
        "SELECT r.host, r.epoch, l.epoch, position('line15' in convert_from(r.output, 'UTF8')) > 0,
                (SELECT count(*) FROM run_chain.output_chunks WHERE run = r.id), r.exit_code,
                s.runs, s.ok, i.host, i.config_digest <> ''
         FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
         JOIN run_chain.leases l ON l.chain = s.chain JOIN run_chain.instances i ON i.id = r.instance
         WHERE r.run_id = 1",
    );
    let f: Vec<&str> = row.split('|').collect();
    assert_eq!(f[0], "h1", "{row}");
    assert_eq!(f[1], f[2], "the run carries the writer's epoch: {row}");
    assert_eq!(f[3], "t", "final output in runs.output: {row}");
    assert_eq!(f[4], "0", "no chunk left after the end: {row}");
    assert_eq!(f[5], "0", "{row}");
    assert!(f[6].parse::<i64>().unwrap_or(0) >= 1, "{row}");
    assert_eq!(f[8], "h1", "{row}");
    assert_eq!(f[9], "t", "the instance row has the config's digest: {row}");
    // The resume state is in chain_state, on the database's clock.
    wait_until_for(LONG, "chain_state", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.chain_state WHERE state ? 'run_ids' AND epoch > 0",
        ) == 1
    });
    // A few more runs for the latency figures.
    wait_until_for(LONG, "run 2 ends", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE run_id = 2 AND stop_ms IS NOT NULL",
        ) == 1
    });
    send_signal(r.pid, libc::SIGTERM);
    r.assert_exit(0);
    let log = text(&err);
    let mut gates: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("start record gate ").nth(1))
        .filter_map(|t| t.split(' ').next()?.parse().ok())
        .collect();
    gates.sort_unstable();
    assert!(!gates.is_empty(), "no start gate in the log:\n{log}");
    eprintln!(
        "start gate (loop waits for the start record's commit), µs: {gates:?} (median {})",
        gates[gates.len() / 2]
    );
    let batches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gated batch") || l.contains(" statements"))
        .collect();
    eprintln!("batches: {batches:#?}");
}

/// A kill -9 of the owner mid-run: the next owner closes that run as interrupted at the old
/// lease's expiry, naming the old host and epoch, runs that task first, and run ids go on.
#[test]
fn a_killed_owners_run_is_interrupted_at_its_lease_expiry_and_runs_again_first() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("store_kill");
    let tasks = r#"[tasks.quick]
command = "true"
[tasks.slow]
command = "sleep 4"
"#;
    let h1 = host(pg, "h1", &url, "2s", tasks);
    let h2 = host(pg, "h2", &url, "2s", tasks);
    let mut r1 = h1.spawn(&["quick", "slow"]);
    let e1 = r1.stderr.clone();
    wait_until_for(LONG, "h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch ")
    });
    let mut r2 = h2.spawn(&["quick", "slow"]);
    let e2 = r2.stderr.clone();
    wait_until_for(LONG, "h2 is a standby", || text(&e2).contains("standby"));
    // The second run of `slow` is running on h1 (its start record is committed first).
    wait_until_for(LONG, "slow run 2 running on h1", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
             WHERE s.task = 'slow' AND r.run_id = 2 AND r.stop_ms IS NULL AND r.host = 'h1'",
        ) == 1
    });
    let quick_before = n(
        pg,
        &db,
        "SELECT max(r.run_id) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series WHERE s.task = 'quick'",
    );
    let old_epoch = n(pg, &db, "SELECT epoch FROM run_chain.leases");
    send_signal(r1.pid, libc::SIGKILL);
    r1.wait_exit();
    let old_expiry = n(
        pg,
        &db,
        "SELECT (extract(epoch FROM expires_at) * 1000)::int8 FROM run_chain.leases",
    );
    wait_until_for(LONG, "h2 owns the lease", || {
        text(&e2).contains("fleet: owner (epoch ")
    });
    wait_until_for(LONG, "run 2 of slow closed", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
             WHERE s.task = 'slow' AND r.run_id = 2 AND r.stop_ms IS NOT NULL",
        ) == 1
    });
    let row = q(
        pg,
        &db,
        "SELECT r.outcome, r.stop_ms, r.error FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
         WHERE s.task = 'slow' AND r.run_id = 2",
    );
    let f: Vec<&str> = row.splitn(3, '|').collect();
    assert_eq!(f[0], "interrupted", "{row}");
    let stop: i64 = f[1].parse().expect("stop_ms");
    assert!(
        (stop - old_expiry).abs() <= 1,
        "stop {stop} = the old lease's expiry {old_expiry}: {row}"
    );
    assert!(
        f[2].contains("host h1") && f[2].contains(&format!("epoch {old_epoch}")),
        "the error names the old owner: {row}"
    );
    // h2's first run is `slow` again, with the next id; then `quick` goes on from its id.
    wait_until_for(LONG, "h2 starts a run", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE host = 'h2'",
        ) >= 1
    });
    let first = q(
        pg,
        &db,
        "SELECT s.task || ':' || r.run_id FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
         WHERE r.host = 'h2' ORDER BY r.start_ms, r.id LIMIT 1",
    );
    assert_eq!(
        first, "slow:3",
        "h2 runs the interrupted task first, with the next id"
    );
    wait_until_for(LONG, "h2 runs quick", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
             WHERE r.host = 'h2' AND s.task = 'quick'",
        ) >= 1
    });
    let quick_h2 = n(
        pg,
        &db,
        "SELECT min(r.run_id) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
         WHERE r.host = 'h2' AND s.task = 'quick'",
    );
    assert_eq!(quick_h2, quick_before + 1, "quick's run ids go on");
    // No id was given twice (the rows are unique per series and run id; each run started once).
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
             WHERE s.task = 'slow' AND r.run_id = 2 AND r.host = 'h2'",
        ),
        0
    );
    assert_eq!(
        n(pg, &db, "SELECT failovers FROM run_chain.leases"),
        1,
        "one failover counted"
    );
    send_signal(r2.pid, libc::SIGTERM);
    r2.assert_exit(0);
}

/// A foreign UPDATE of the lease row while a run is in progress: the run's end batch is
/// fenced (counted in leases.fenced_writes, logged, not retried), and no run starts after it
/// (with a lease of 10 s the owner learns of it at its next renew, up to 2 s later: without
/// the start gate, runs 100 ms apart start meanwhile).
#[test]
fn a_fenced_batch_is_counted_logged_and_dropped_and_no_run_starts_after_it() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("store_fence");
    let env = host(
        pg,
        "h1",
        &url,
        "10s",
        r#"[tasks.tick]
command = "echo run >> \"$T/stamps\"; sleep 0.6"
"#,
    );
    let mut r = env.spawn(&["tick"]);
    let err = r.stderr.clone();
    let stamps = env.path("stamps");
    wait_until_for(LONG, "run 2 running", || {
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE run_id = 2 AND stop_ms IS NULL",
        ) == 1
    });
    q(
        pg,
        &db,
        "UPDATE run_chain.leases SET holder = 'intruder' WHERE chain IS NOT NULL",
    );
    let fenced_at = Instant::now();
    let stamped = text(&stamps).lines().count();
    wait_until_for(LONG, "a batch fenced", || {
        n(pg, &db, "SELECT fenced_writes FROM run_chain.leases") >= 1
    });
    wait_until_for(LONG, "the fence logged", || {
        text(&err).contains("was fenced off")
    });
    // Run 2's end was fenced off: never written, not retried.
    wait_until_for(LONG, "the lease lost", || {
        text(&err).contains("lost the lease")
    });
    let after = text(&stamps).lines().count();
    assert_eq!(
        after,
        stamped,
        "no run started after the fence ({:?} after the UPDATE):\n{}",
        fenced_at.elapsed(),
        text(&err)
    );
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE run_id = 2 AND stop_ms IS NOT NULL",
        ),
        0,
        "the fenced end is not in the store"
    );
    let fenced = n(pg, &db, "SELECT fenced_writes FROM run_chain.leases");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        n(pg, &db, "SELECT fenced_writes FROM run_chain.leases"),
        fenced,
        "a fenced batch is never retried"
    );
    assert!(
        text(&err).contains("records dropped"),
        "the writer logs what it dropped:\n{}",
        text(&err)
    );
    send_signal(r.pid, libc::SIGTERM);
    r.assert_exit(0);
}

/// The database stopped between runs: the next start record cannot be committed, and the
/// task does not start (without the gate it would, until the next renew fails).
#[test]
fn no_run_starts_while_its_start_record_cannot_be_committed() {
    let pg = Pg::new();
    let (db, url) = pg.fresh_database("store_gate");
    let env = host(
        &pg,
        "h1",
        &url,
        "10s",
        r#"[tasks.tick]
command = "echo run >> \"$T/stamps\"; sleep 0.2"
"#,
    );
    let mut r = env.spawn(&["tick"]);
    let err = r.stderr.clone();
    let stamps = env.path("stamps");
    wait_until_for(LONG, "three runs", || {
        n(
            &pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE stop_ms IS NOT NULL",
        ) >= 3
    });
    pg.stop_mode(Mode::Immediate);
    let stamped = text(&stamps).lines().count();
    // The owner learns of the outage at its next renew (up to 2 s) and stops the chain at
    // 0.6 × lease; meanwhile runs are due every 100 ms.
    wait_until_for(LONG, "a renew fails", || {
        text(&err).contains("renew of the lease")
    });
    let after = text(&stamps).lines().count();
    // The run in progress when the database stopped may have stamped already.
    assert!(
        after <= stamped + 1,
        "runs started while their start record could not be committed: {stamped} -> {after}\n{}",
        text(&err)
    );
    assert!(
        text(&err).contains("not started"),
        "the gate logs the run it held:\n{}",
        text(&err)
    );
    pg.start();
    send_signal(r.pid, libc::SIGTERM);
    let _ = wait_exit(&mut r);
}

fn wait_exit(r: &mut Runner) -> std::process::ExitStatus {
    r.wait_exit()
}
