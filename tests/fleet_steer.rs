//! Steering a fleet chain (issue 20, stage 3) against a real PostgreSQL: "hosts" are
//! run-chain instances with their own RUN_ROOT and `host = "h1"`, `"h2"`, sharing one
//! database, `lease = "2s"`; every task stamps the ledger (tests/support/ledger.rs).
//!
//! Cases: `stop --fleet` ends the owner and the standby (both exit 0) within about 2 s, and
//! a later launch runs; `stop`, `kick` and `run-now` on a host that does not own the chain
//! (no instance there, or a standby) exit 75 naming the owner's host and epoch; a group
//! with `scope = "fleet"` and `max_running = 1` shared by two chains on two hosts never runs
//! two of their runs at once, and a SIGKILLed holder's slot frees itself at its lease's
//! expiry.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Runner, TestEnv};
use fleet::{ledger_file, owner_epoch, runs_of, text};
use support::ledger::{self, Ledger};
use support::pg::Pg;

/// One "host": a TestEnv (tests/support/fleet.rs) running chain `work`.
struct Host {
    env: TestEnv,
}

fn host(name: &str, url: &str, ledger_path: &Path, ticks: u32) -> Host {
    host_of(name, url, ledger_path, "work", ticks, "100ms", "", "")
}

impl Host {
    fn spawn(&self, chain: &[&str]) -> Runner {
        self.env.spawn(chain)
    }
}

/// A "host" running chain `task` (one task of that name) in the fleet-wide group `g`
/// (`max_running = 1`).
fn slot_host(name: &str, url: &str, ledger_path: &Path, task: &str, ticks: u32) -> Host {
    let group = "[groups.g]\nmax_running = 1\nscope = \"fleet\"\n";
    host_of(
        name,
        url,
        ledger_path,
        task,
        ticks,
        "50ms",
        group,
        "group = \"g\"",
    )
}

/// A host (lease 2 s, kill_grace 300 ms) whose one task TASK stamps the ledger as NAME;
/// `groups`: `[groups.*]` tables; `task_extra`: more keys of `[tasks.TASK]`.
#[allow(clippy::too_many_arguments)]
fn host_of(
    name: &str,
    url: &str,
    ledger_path: &Path,
    task: &str,
    ticks: u32,
    cooldown: &str,
    groups: &str,
    task_extra: &str,
) -> Host {
    let env = TestEnv::new("");
    let task = fleet::ledger_task(&env, task, name, ledger_path, ticks);
    let rest = format!(
        "{}\n{groups}\n{task}{task_extra}\n",
        fleet::defaults(cooldown, "300ms")
    );
    fleet::write_host_config(&env, Pg::shared(), name, url, "2s", &rest);
    Host { env }
}

/// h1 owns `work`, h2 waits as its standby.
fn owner_and_standby(h1: &Host, h2: &Host) -> (Runner, Runner, i64) {
    let mut r1 = h1.spawn(&["work"]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch ")
    });
    let mut r2 = h2.spawn(&["work"]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 waits as standby", || {
        text(&e2).contains("fleet: standby: the chain runs on host h1 (epoch ")
    });
    let epoch = owner_epoch(&r1.stderr()).expect("owner epoch");
    (r1, r2, epoch)
}

/// Wait (up to `limit`) for the runner to exit: its code and when.
fn exit_within(r: &mut Runner, limit: Duration) -> (Option<i32>, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = r.try_status() {
            return (s.code(), start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "PID {} did not exit within {limit:?}; stderr:\n{}",
            r.pid,
            r.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn stop_fleet_ends_the_owner_and_the_standby_within_2_s_and_a_later_launch_runs() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("steer_stop_fleet");
    let (_ld, lp) = ledger_file("ledger");
    // Runs of 0.5 s (10 ticks of 50 ms), 100 ms apart.
    let h1 = host("h1", &url, &lp, 10);
    let h2 = host("h2", &url, &lp, 10);
    let (mut r1, mut r2, _epoch) = owner_and_standby(&h1, &h2);
    r1.wait_for("h1 ran a run", || runs_of(&lp, "h1") >= 1);

    // From a third "host" that runs no instance: the command needs only the store.
    let h3 = host("h3", &url, &lp, 10);
    let t0 = Instant::now();
    let out = h3.env.sub(&["stop", "--fleet", "work"]);
    let took = t0.elapsed();
    out.assert_code(0);
    assert!(
        out.stderr.contains("waiting for owner on host h1 (epoch ")
            && out.stderr.contains("standby on host h2"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("chain work stopped on every host"),
        "{}",
        out.stdout
    );
    // The command returns once both have gone: they have exited (or are about to be
    // reaped) by now.
    let (c1, _) = exit_within(&mut r1, Duration::from_secs(2));
    let (c2, _) = exit_within(&mut r2, Duration::from_secs(2));
    println!(
        "stop --fleet: owner and standby gone {:.3} s after the command began (lease 2 s)",
        took.as_secs_f64()
    );
    assert_eq!(c1, Some(0), "owner: {}", r1.stderr());
    assert_eq!(c2, Some(0), "standby: {}", r2.stderr());
    assert!(
        took < Duration::from_secs(4),
        "stop --fleet took {took:?} to end both (lease 2 s: about lease / 5 + the stop)"
    );
    assert!(
        r1.stderr().contains("stop asked by stop --fleet"),
        "{}",
        r1.stderr()
    );
    assert!(
        r2.stderr()
            .contains("stop --fleet: stopped while waiting as standby"),
        "{}",
        r2.stderr()
    );
    // The lease was released, the standby's row is gone.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT coalesce(holder, '-') || ' ' || (SELECT count(*) FROM run_chain.standbys) FROM run_chain.leases WHERE chain = 'work'"
        ),
        "- 0"
    );
    Ledger::read(&lp).assert_no_overlap();

    // A later launch is newer than the flag: it runs (on h2 this time).
    let before = runs_of(&lp, "h2");
    let mut r3 = h2.spawn(&["work"]);
    r3.wait_for("a later launch owns the lease and runs", || {
        runs_of(&lp, "h2") > before
    });
    r3.signal(libc::SIGTERM);
    r3.assert_exit(0);
}

#[test]
fn stop_kick_and_run_now_on_a_host_that_does_not_own_the_chain_exit_75_naming_the_owner() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("steer_non_owner");
    let (_ld, lp) = ledger_file("ledger");
    let h1 = host("h1", &url, &lp, 4);
    let h2 = host("h2", &url, &lp, 4);
    let mut r1 = h1.spawn(&["work"]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch ")
    });
    let epoch = owner_epoch(&r1.stderr()).expect("owner epoch");
    let commands: [&[&str]; 3] = [
        &["stop", "work"],
        &["kick", "work"],
        &["run-now", "work", "work"],
    ];
    // No instance of the chain on h2: the lease row says who runs it.
    for args in commands {
        let out = h2.env.sub(args);
        out.assert_code(75);
        assert!(
            out.stderr.contains(&format!(
                "chain work runs on host h1 (epoch {epoch}); this host (h2) runs no instance of it"
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A standby on h2: the same, and the standby is not stopped by `stop`.
    let mut r2 = h2.spawn(&["work"]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 waits as standby", || {
        text(&e2).contains("fleet: standby: the chain runs on host h1 (epoch ")
    });
    for args in commands {
        let out = h2.env.sub(args);
        out.assert_code(75);
        assert!(
            out.stderr.contains(&format!(
                "chain work runs on host h1 (epoch {epoch}); this host's instance (PID {}) is a standby",
                r2.pid
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(r2.try_status(), None, "the standby was stopped");
    // On the owner's host they act as before.
    h1.env.sub(&["kick", "work"]).assert_code(0);
    let out = h1.env.sub(&["stop", "work"]);
    out.assert_code(0);
    r1.assert_exit(0);
    // h2's standby takes over; now h1 (no instance) is refused, naming h2.
    r2.wait_for("h2 owns the lease", || {
        text(&e2).contains("fleet: owner (epoch ")
    });
    let epoch2 = owner_epoch(&r2.stderr()).expect("h2's epoch");
    let out = h1.env.sub(&["kick", "work"]);
    out.assert_code(75);
    assert!(
        out.stderr.contains(&format!(
            "chain work runs on host h2 (epoch {epoch2}); this host (h1) runs no instance of it"
        )),
        "{}",
        out.stderr
    );
    r2.signal(libc::SIGTERM);
    r2.assert_exit(0);
}

#[test]
fn a_fleet_group_with_max_running_1_never_runs_two_chains_on_two_hosts_at_once() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("steer_slots");
    let (_ld, lp) = ledger_file("ledger");
    // Runs of 0.3 s (6 ticks of 50 ms), 50 ms apart: alone, each chain would run ~85% of
    // the time, so two of them overlap at once without the fleet-wide slot.
    let h1 = slot_host("h1", &url, &lp, "a", 6);
    let h2 = slot_host("h2", &url, &lp, "b", 6);
    let mut r1 = h1.spawn(&["a"]);
    let mut r2 = h2.spawn(&["b"]);
    let start = Instant::now();
    r1.wait_for("both chains ran 4 runs", || {
        runs_of(&lp, "h1") >= 4 && runs_of(&lp, "h2") >= 4
    });
    println!(
        "fleet slots: 4 runs of each chain took {:.2} s",
        start.elapsed().as_secs_f64()
    );
    r1.signal(libc::SIGTERM);
    r2.signal(libc::SIGTERM);
    r1.assert_exit(0);
    r2.assert_exit(0);
    Ledger::read(&lp).assert_no_overlap();
    let both = format!("{}{}", r1.stderr(), r2.stderr());
    assert!(
        both.contains("every slot of group g is busy (max_running 1, fleet-wide); waiting"),
        "{both}"
    );
    // Both let their slot go: no row is held by a live lease now.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM run_chain.slots s JOIN run_chain.leases l ON l.chain = s.chain \
             AND l.holder = s.holder AND l.epoch = s.epoch AND l.expires_at > now()"
        ),
        "0"
    );
}

#[test]
fn a_killed_holders_fleet_slot_frees_itself_at_its_lease_expiry() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("steer_slot_kill");
    let (_ld, lp) = ledger_file("ledger");
    // h1's run is long (10 s); h2's waits for the slot.
    let h1 = slot_host("h1", &url, &lp, "a", 200);
    let h2 = slot_host("h2", &url, &lp, "b", 4);
    let mut r1 = h1.spawn(&["a"]);
    r1.wait_for("h1 runs", || runs_of(&lp, "h1") >= 1);
    let mut r2 = h2.spawn(&["b"]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 waits for the slot", || {
        text(&e2).contains("every slot of group g is busy")
    });
    assert_eq!(runs_of(&lp, "h2"), 0, "h2 ran while h1 held the slot");
    // `status` on h2 shows the wait.
    common::wait_until("h2's status shows the wait for group g", || {
        let out = h2.env.sub(&["status"]);
        out.stdout.contains("b waiting for group g for ")
    });
    // SIGKILL h1's run-chain: its guardian ends the task; its slot stays in the row until
    // the chain's lease expires (2 s), then h2 takes it.
    let killed = ledger::mono_ns();
    common::send_signal(r1.pid, libc::SIGKILL);
    r2.wait_for("h2 runs", || runs_of(&lp, "h2") >= 1);
    let ledger = Ledger::read(&lp);
    let first = ledger
        .first_start_after(Some("h2"), killed)
        .expect("h2's run")
        .start;
    let after = Duration::from_nanos(first - killed);
    println!(
        "fleet slots: h2 started {:.3} s after h1 was SIGKILLed (lease 2 s)",
        after.as_secs_f64()
    );
    assert!(
        after >= Duration::from_millis(1200),
        "h2 started {after:?} after the kill: before h1's lease could expire"
    );
    assert!(
        after < Duration::from_secs(8),
        "h2 started {after:?} after the kill"
    );
    assert!(
        text(&e2).contains("fleet: took slot 0 of group g"),
        "{}",
        r2.stderr()
    );
    ledger.assert_no_overlap();
    r2.signal(libc::SIGTERM);
    r2.assert_exit(0);
    let _ = r1.wait_exit();
}
