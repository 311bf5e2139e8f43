//! The review's findings (session 12, /work/notes/review-findings.md) against a real
//! PostgreSQL and the real binary: a lease row locked by a batch left open does not make
//! standby acquires wait and pile up (1), a relaunch stopped while the old run's processes
//! still run does not hand the chain to a standby (2), `--once` does not take over a dead
//! instance's unexpired lease (5).

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use fleet::{hold, text, Fleet, Shape, LONG_RUNS};
use support::ledger;

/// Backends of `db` waiting on a lock (a statement its client may have given up on).
fn lock_waiters(f: &Fleet<'_>) -> i64 {
    fleet::sql_int(
        f.pg,
        &f.db,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
}

/// Finding 1: a frozen owner's batch holds FOR SHARE on the lease row (here: a test
/// session does, in a transaction it leaves open). Once the lease expires, the standby's
/// acquires must not wait on that lock (each would outlive its client's timeout on the
/// server, pile up, and acquire later, unseen: the epoch jumps by their number). When the
/// lock goes, the standby acquires once: epoch + 1.
#[test]
fn a_lease_row_locked_by_an_open_batch_leaves_no_acquire_waiting_and_one_takeover() {
    let f = Fleet::new("robust_locked_row", LONG_RUNS);
    let (mut h1, _first, mut h2) = f.owner_and_standby();
    h1.signal(libc::SIGKILL);
    h1.wait_exit();
    // The frozen batch: FOR SHARE on the row, the transaction left open.
    let mut frozen =
        f.pg.psql_command(&f.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
    let mut input = frozen.stdin.take().expect("psql stdin");
    writeln!(
        input,
        "SET application_name = 'robust_frozen';\nBEGIN;\n\
         SELECT 1 FROM run_chain.leases WHERE chain = 'work' FOR SHARE;"
    )
    .expect("write to psql");
    input.flush().expect("flush psql");
    common::wait_until(
        "the test's session holds FOR SHARE on the lease row",
        || {
            fleet::sql_int(
                f.pg,
                &f.db,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'robust_frozen' \
             AND state = 'idle in transaction'",
            ) == 1
        },
    );
    let epoch = f.lease().epoch;
    h2.wait_for("h1's lease expires on the database's clock", || {
        fleet::sql_int(
            f.pg,
            &f.db,
            "SELECT (expires_at < now())::int FROM run_chain.leases WHERE chain = 'work'",
        ) == 1
    });
    // Several standby tries (every 0.5-1 s) while the row stays locked: none may wait.
    let mut most = 0;
    let mut window = Vec::new();
    let until = std::time::Instant::now() + Duration::from_millis(3000);
    while std::time::Instant::now() < until {
        most = most.max(lock_waiters(&f));
        window.push(most);
        assert_eq!(h2.try_status(), None, "h2 exited:\n{}", h2.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        most, 0,
        "backends waited on the locked lease row (standby acquires piling up)"
    );
    // The batch ends (the server ends it at its idle timeout; here the test commits).
    writeln!(input, "COMMIT;").expect("write to psql");
    drop(input);
    let _ = frozen.wait();
    let after = ledger::mono_ns();
    f.wait_run(&mut h2, "h2", after);
    let row = f.lease();
    assert_eq!(row.host, "h2", "{row:?}");
    assert_eq!(
        row.epoch,
        epoch + 1,
        "the lease was acquired more than once: {row:?}\nh2:\n{}",
        h2.stderr()
    );
    assert_eq!(lock_waiters(&f), 0, "backends still wait on a lock");
    h2.signal(libc::SIGTERM);
    h2.assert_exit(0);
}

/// Finding 5: `--once` on the host of a killed owner whose lease is unexpired exits 75
/// naming that host; it takes nothing over.
#[test]
fn once_on_the_host_of_a_killed_owner_exits_75_while_its_lease_is_unexpired() {
    let f = Fleet::new(
        "robust_once",
        Shape {
            lease: "30s",
            lease_s: 30.0,
            ticks: 4,
            ..LONG_RUNS
        },
    );
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", 0);
    let epoch = f.lease().epoch;
    h1.signal(libc::SIGKILL);
    h1.wait_exit();
    let config = f.host_config("h1");
    let mut once = f.launch_with("h1", &config, &["--once"]);
    let status = once.wait_exit();
    assert_eq!(
        status.code(),
        Some(75),
        "--once on h1 while the killed instance's lease is unexpired:\n{}",
        once.stderr()
    );
    assert!(
        once.stderr()
            .contains(&format!("chain work runs on host h1 (epoch {epoch})")),
        "{}",
        once.stderr()
    );
    let row = f.lease();
    assert_eq!(row.epoch, epoch, "the lease changed hands: {row:?}");
}

/// Finding 2: h1's task ignores SIGTERM, kill_grace 30 s (> the lease). h1 is killed: its
/// guardian lets the task run up to h1's last fence KILL deadline. The relaunch on h1 takes
/// the lease over and waits for that guardian; SIGTERM during that wait must not release
/// the lease: h2's first run starts after h1's task's last stamp.
#[test]
fn a_relaunch_stopped_while_the_old_run_still_runs_does_not_hand_the_chain_over() {
    let f = Fleet::new(
        "robust_relaunch",
        Shape {
            lease: "6s",
            lease_s: 6.0,
            kill_grace: "30s",
            ..LONG_RUNS
        },
    );
    // The ledger script, with TERM ignored (stamps S, then T every 50 ms).
    let stamp = ledger::stamp_bin();
    let script = format!(
        "#!/bin/sh\nst() {{ '{}' '{}' \"$1\"; }}\nst S\ntrap '' TERM\n\
         while :; do sleep 0.05 & wait $!; st T; done\n",
        stamp.display(),
        f.ledger.display()
    );
    std::fs::write(&f.script, script).expect("write the script");
    // h2's task ends at SIGTERM (the ordinary ledger script): only h1's ignores it.
    let h2_script = ledger::write_task_script(&f.env.path("task-h2.sh"), &f.ledger, 20000, "0.05");
    let h2_config = f.env.path("h2.toml");
    common::write_atomic(
        &h2_config,
        &f.config_text("h2", &f.store_lines()).replace(
            &f.script.display().to_string(),
            &h2_script.display().to_string(),
        ),
    );
    let mut h1 = f.launch("h1");
    let first = f.wait_run(&mut h1, "h1", 0);
    let mut h2 = f.launch_with("h2", &h2_config, &[]);
    f.wait_standby(&mut h2, "h2");
    h1.signal(libc::SIGKILL);
    h1.wait_exit();
    let config = f.host_config("h1");
    let mut again = f.launch_with("h1", &config, &[]);
    let stderr = again.stderr.clone();
    again.wait_for("the relaunch waits for the old guardian", || {
        text(&stderr).contains("waiting for its guardian")
    });
    again.signal(libc::SIGTERM);
    again.assert_exit(0);
    // h2 runs (after the kept lease expires), and h1's task is gone by then.
    let h2_run = f.wait_run(&mut h2, "h2", 0);
    common::wait_until("h1's task is gone", || {
        common::proc_state(first.pid).is_none() || common::proc_state(first.pid) == Some('Z')
    });
    let ledger = f.ledger();
    let h1_last = ledger
        .of_host("h1")
        .map(|r| r.end)
        .max()
        .expect("h1's runs");
    assert!(
        h2_run.start > h1_last,
        "h2 started {:.3} s before h1's task's last stamp\n{}\nrelaunch:\n{}",
        (h1_last - h2_run.start) as f64 / 1e9,
        ledger.overlap_report().unwrap_or_default(),
        again.stderr()
    );
    ledger.assert_no_overlap();
    h2.signal(libc::SIGTERM);
    h2.assert_exit(0);
}

/// Finding 3: the new owner's resume read fails (a test session holds chain_state in
/// ACCESS EXCLUSIVE mode over the acquire). It must start nothing from scratch: once the
/// lock goes it resumes h1's state, whose next run is due in an hour, so it runs nothing.
#[test]
fn a_failed_resume_read_at_the_acquire_starts_nothing_from_scratch() {
    let f = Fleet::new(
        "robust_resume",
        Shape {
            ticks: 2,
            cooldown: "1h",
            ..LONG_RUNS
        },
    );
    // Success cooldown 1 h, fail cooldown 100 ms: a run started from scratch that fails
    // (its start refused) is tried again at once, and shows in the ledger.
    let config = |host: &str| {
        let path = f.env.path(&format!("{host}.toml"));
        let text = f
            .config_text(host, &f.store_lines())
            .replace("fail_cooldown = \"1h\"", "fail_cooldown = \"100ms\"");
        common::write_atomic(&path, &text);
        path
    };
    let mut h1 = f.launch_with("h1", &config("h1"), &[]);
    let first = f.wait_run(&mut h1, "h1", 0);
    h1.wait_for("h1 recorded its next run an hour from now", || {
        fleet::sql_int(
            f.pg,
            &f.db,
            "SELECT count(*) FROM run_chain.chain_state \
             WHERE chain = 'work' AND due_at > now() + interval '30 minutes'",
        ) == 1
    });
    h1.signal(libc::SIGKILL);
    h1.wait_exit();
    let mut lock =
        f.pg.psql_command(&f.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
    let mut input = lock.stdin.take().expect("psql stdin");
    writeln!(
        input,
        "SET application_name = 'robust_lock';\nBEGIN;\n\
         LOCK TABLE run_chain.chain_state IN ACCESS EXCLUSIVE MODE;"
    )
    .expect("write to psql");
    input.flush().expect("flush psql");
    common::wait_until("the test's session locks chain_state", || {
        fleet::sql_int(
            f.pg,
            &f.db,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'robust_lock' \
             AND state = 'idle in transaction'",
        ) == 1
    });
    let mut h2 = f.launch_with("h2", &config("h2"), &[]);
    let stderr = h2.stderr.clone();
    h2.wait_for("h2's resume read fails", || {
        text(&stderr).contains("cannot read where to resume from")
    });
    // Well past the old code's three tries, still locked.
    hold(Duration::from_millis(2500), &mut [&mut h2], "h2 exited");
    writeln!(input, "COMMIT;").expect("write to psql");
    drop(input);
    let _ = lock.wait();
    h2.wait_for("h2 owns the chain", || {
        text(&stderr).contains("running as pid")
    });
    // Observe: the resumed chain's next run is an hour away.
    hold(Duration::from_millis(3000), &mut [&mut h2], "h2 exited");
    let ledger = f.ledger();
    assert_eq!(
        ledger.of_host("h2").count(),
        0,
        "h2 ran the chain from scratch (h1's run: {first})\nh2:\n{}",
        h2.stderr()
    );
    h2.signal(libc::SIGTERM);
    h2.assert_exit(0);
}

/// Finding 12: the owner's connection is gone (its backend terminated) when it gets
/// SIGTERM between runs, nothing queued: it releases over a new connection, so the standby
/// acquires at once, not a lease later.
#[test]
fn an_owner_whose_connection_broke_still_releases_at_sigterm() {
    let f = Fleet::new(
        "robust_release",
        Shape {
            lease: "10s",
            lease_s: 10.0,
            ticks: 2,
            cooldown: "1h",
            ..LONG_RUNS
        },
    );
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", 0);
    h1.wait_for("h1's run ended and its next is recorded", || {
        fleet::sql_int(
            f.pg,
            &f.db,
            "SELECT count(*) FROM run_chain.chain_state \
             WHERE chain = 'work' AND due_at > now() + interval '30 minutes'",
        ) == 1
    });
    let backends = "SELECT count(*) FROM pg_stat_activity \
                    WHERE datname = current_database() AND application_name = 'run-chain'";
    h1.wait_for("h1 has one connection", || {
        fleet::sql_int(f.pg, &f.db, backends) == 1
    });
    let h1_backend = fleet::sql_int(
        f.pg,
        &f.db,
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'run-chain'",
    );
    let mut h2 = f.launch("h2");
    f.wait_standby(&mut h2, "h2");
    f.pg.psql(&f.db, &format!("SELECT pg_terminate_backend({h1_backend})"));
    h1.signal(libc::SIGTERM);
    h1.assert_exit(0);
    let gone = std::time::Instant::now();
    h2.wait_for("h2 owns the lease", || {
        f.lease_row().is_some_and(|r| r.host == "h2")
    });
    let after = gone.elapsed().as_secs_f64();
    assert!(
        after < 4.0,
        "h2 acquired {after:.3} s after h1 exited (lease 10 s): the lease was not released\nh1:\n{}",
        h1.stderr()
    );
    h2.signal(libc::SIGTERM);
    h2.assert_exit(0);
}

/// Finding 6 (part): the owner's connection breaks while another launch migrates the
/// schema (a test session holds run_chain.meta in ACCESS EXCLUSIVE mode). The owner's
/// records reconnect without the schema check (which would wait behind that lock with no
/// renew), so the lease is kept over two leases and the chain keeps running.
#[test]
fn an_owner_reconnecting_for_its_records_does_not_wait_behind_a_migration() {
    let f = Fleet::new(
        "robust_reconnect",
        Shape {
            ticks: 2,
            ..LONG_RUNS
        },
    );
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", 0);
    let epoch = f.lease().epoch;
    let mut lock =
        f.pg.psql_command(&f.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
    let mut input = lock.stdin.take().expect("psql stdin");
    writeln!(
        input,
        "SET application_name = 'robust_migration';\nBEGIN;\n\
         LOCK TABLE run_chain.meta IN ACCESS EXCLUSIVE MODE;"
    )
    .expect("write to psql");
    input.flush().expect("flush psql");
    common::wait_until("the test's session locks run_chain.meta", || {
        fleet::sql_int(
            f.pg,
            &f.db,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'robust_migration' \
             AND state = 'idle in transaction'",
        ) == 1
    });
    f.pg.psql(
        &f.db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'run-chain'",
    );
    let cut = ledger::mono_ns();
    hold(
        Duration::from_secs_f64(2.0 * f.shape.lease_s),
        &mut [&mut h1],
        "h1 exited",
    );
    let row = f.lease();
    let stderr = h1.stderr();
    writeln!(input, "COMMIT;").expect("write to psql");
    drop(input);
    let _ = lock.wait();
    assert_eq!(
        row.epoch, epoch,
        "the lease changed: {row:?}\nh1:\n{stderr}"
    );
    assert!(row.live, "the lease expired: {row:?}\nh1:\n{stderr}");
    assert!(!stderr.contains("lost the lease"), "h1:\n{stderr}");
    assert!(
        f.ledger()
            .of_host("h1")
            .any(|r| r.start > cut + 1_000_000_000),
        "h1 ran nothing in the second after the cut\nh1:\n{stderr}"
    );
    h1.signal(libc::SIGTERM);
    h1.assert_exit(0);
}

/// Finding 9: the owner dies mid-run, no other host takes the chain, and its relaunch on
/// the same host takes over after the lease expired: the open run is `interrupted` with
/// its end at the old lease's expiry (as at an acquire), not at the relaunch's clock.
#[test]
fn a_takeover_of_an_expired_lease_ends_the_open_run_at_the_expiry() {
    let f = Fleet::new("robust_expired_takeover", LONG_RUNS);
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", 0);
    h1.signal(libc::SIGKILL);
    h1.wait_exit();
    let expired = "SELECT count(*) FROM run_chain.leases \
                   WHERE chain = 'work' AND expires_at < now() - interval '500 milliseconds'";
    common::wait_until("h1's lease expires", || {
        fleet::sql_int(f.pg, &f.db, expired) == 1
    });
    let expiry_ms = fleet::sql_int(
        f.pg,
        &f.db,
        "SELECT (extract(epoch FROM expires_at) * 1000)::int8 FROM run_chain.leases \
         WHERE chain = 'work'",
    );
    let config = f.host_config("h1");
    let mut again = f.launch_with("h1", &config, &[]);
    let stderr = again.stderr.clone();
    again.wait_for("the relaunch takes the lease over", || {
        text(&stderr).contains("took over epoch")
    });
    let closed = "SELECT count(*) FROM run_chain.runs WHERE run_id = 1 AND stop_ms IS NOT NULL";
    again.wait_for("run 1 is closed", || {
        fleet::sql_int(f.pg, &f.db, closed) == 1
    });
    let stop = fleet::sql_int(
        f.pg,
        &f.db,
        "SELECT stop_ms FROM run_chain.runs WHERE run_id = 1",
    );
    let outcome =
        f.pg.psql(&f.db, "SELECT outcome FROM run_chain.runs WHERE run_id = 1");
    assert_eq!(
        (outcome.as_str(), stop),
        ("interrupted", expiry_ms),
        "run 1 (lease expired at {expiry_ms})\nrelaunch:\n{}",
        again.stderr()
    );
    again.signal(libc::SIGTERM);
    again.assert_exit(0);
}

/// Finding 10: renews blocked past the fence's TERM (a test session holds the lease row
/// FOR UPDATE), then let through before the lease expires: the same epoch runs again. Its
/// resume (taken at the first start) is read again from the store, never from CHAIN.state
/// (removed here): run ids go on (run 2), none is refused as already ended.
#[test]
fn a_chain_that_runs_again_under_the_same_epoch_resumes_from_the_store() {
    let f = Fleet::new(
        "robust_same_epoch",
        Shape {
            lease: "5s",
            lease_s: 5.0,
            ..LONG_RUNS
        },
    );
    let mut h1 = f.launch("h1");
    let first = f.wait_run(&mut h1, "h1", 0);
    let epoch = f.lease().epoch;
    let mut lock =
        f.pg.psql_command(&f.db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
    let mut input = lock.stdin.take().expect("psql stdin");
    writeln!(
        input,
        "SET application_name = 'robust_blip';\nBEGIN;\n\
         SELECT 1 FROM run_chain.leases WHERE chain = 'work' FOR UPDATE;"
    )
    .expect("write to psql");
    input.flush().expect("flush psql");
    let stderr = h1.stderr.clone();
    h1.wait_for("h1 stops the chain (renews blocked)", || {
        text(&stderr).contains("then waiting as standby")
    });
    h1.wait_for("h1's run 1 is gone", || {
        common::proc_state(first.pid).is_none() || common::proc_state(first.pid) == Some('Z')
    });
    let state = f.run_root("h1").join("work.state");
    h1.wait_for("the chain stopped writing CHAIN.state", || {
        let _ = std::fs::remove_file(&state);
        !text(&stderr).contains("run 2 started") && !state.exists()
    });
    writeln!(input, "COMMIT;").expect("write to psql");
    drop(input);
    let _ = lock.wait();
    h1.wait_for("h1 runs the chain again", || {
        text(&stderr).contains("work run 2 started") || text(&stderr).contains("not started")
    });
    let out = h1.stderr();
    assert!(!out.contains("not started"), "h1:\n{out}");
    assert_eq!(f.lease().epoch, epoch, "not the same epoch: h1:\n{out}");
    h1.signal(libc::SIGTERM);
    h1.assert_exit(0);
}

/// Finding 14: the lease row vanishes (a restore, or a crash that lost its last commits)
/// while the chain's records name epoch E: the row made again goes on after E.
#[test]
fn a_lease_row_made_again_never_gives_an_epoch_twice() {
    let f = Fleet::new(
        "robust_epoch_again",
        Shape {
            ticks: 2,
            ..LONG_RUNS
        },
    );
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", 0);
    h1.signal(libc::SIGTERM);
    h1.assert_exit(0);
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", ledger::mono_ns());
    let epoch = f.lease().epoch;
    h1.signal(libc::SIGTERM);
    h1.assert_exit(0);
    let recorded = fleet::sql_int(
        f.pg,
        &f.db,
        "SELECT max(r.epoch) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series \
         WHERE s.chain = 'work'",
    );
    assert_eq!(recorded, epoch, "the runs name the last epoch");
    f.pg.psql(&f.db, "DELETE FROM run_chain.leases WHERE chain = 'work'");
    let mut h1 = f.launch("h1");
    f.wait_run(&mut h1, "h1", ledger::mono_ns());
    let row = f.lease();
    assert!(
        row.epoch > epoch,
        "the row made again gave epoch {}, not after {epoch}: {row:?}",
        row.epoch
    );
    h1.signal(libc::SIGTERM);
    h1.assert_exit(0);
}
