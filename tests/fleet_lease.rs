//! The fleet's lease (issue 20, stage 1) against a real PostgreSQL: "hosts" are run-chain
//! instances with their own RUN_ROOT and `host = "h1"`, `"h2"`, ... sharing one database, with
//! `lease = "2s"`. Every task stamps the ledger (tests/support/ledger.rs), which judges overlap
//! independently of run-chain's own records.
//!
//! Cases: only the owner runs and the standby shows as such (status, the lease row); a SIGTERM
//! releases the lease and the standby runs within 1.5 s; a foreign UPDATE of the row makes the
//! owner lose the lease at its next renew, stop its task and go back to standby, never renewing
//! a row that is not its own (River #197); `--once` / `--no-kill-concurrent` exit 75 naming the
//! holder, and `--once` releases at its end; a relaunch on the owner's host takes over the
//! lease there (epoch + 1) with no run elsewhere. The kill -9, SIGTERM and bad-input end-to-end
//! cases are in tests/fleet.rs.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{wait_until, Runner, TestEnv};
use fleet::{lease, ledger_file, owner_epoch, runs_of, text, LeaseRow};
use serde_json::Value;
use support::ledger::{self, Ledger};
use support::pg::{Mode, Pg};

const LEASE: &str = "2s";

/// One "host": a TestEnv (tests/support/fleet.rs) running chain `work`.
struct Host {
    env: TestEnv,
}

fn host(name: &str, url: &str, ledger_path: &Path, ticks: u32) -> Host {
    host_on(Pg::shared(), name, url, ledger_path, ticks)
}

fn host_on(pg: &Pg, name: &str, url: &str, ledger_path: &Path, ticks: u32) -> Host {
    host_with(pg, name, url, ledger_path, ticks, LEASE, "100ms")
}

/// A host whose task stamps `ledger_path` as NAME, `ticks` ticks of 50 ms per run.
fn host_with(
    pg: &Pg,
    name: &str,
    url: &str,
    ledger_path: &Path,
    ticks: u32,
    lease: &str,
    cooldown: &str,
) -> Host {
    let env = TestEnv::new("");
    let task = fleet::ledger_task(&env, "work", name, ledger_path, ticks);
    let rest = format!("{}\n{task}", fleet::defaults(cooldown, "300ms"));
    fleet::write_host_config(&env, pg, name, url, lease, &rest);
    Host { env }
}

impl Host {
    fn spawn(&self, extra: &[&str]) -> Runner {
        let mut args = vec!["work"];
        args.extend_from_slice(extra);
        self.env.spawn(&args)
    }

    fn status_json(&self) -> Value {
        fleet::status_json(&self.env)
    }
}

#[test]
fn only_the_owner_runs_the_standby_shows_as_standby_and_runs_within_1_5_s_of_a_release() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("lease_release");
    let (_ld, lp) = ledger_file("ledger");
    // Runs of 0.5 s (10 ticks of 50 ms), 100 ms apart.
    let h1 = host("h1", &url, &lp, 10);
    let h2 = host("h2", &url, &lp, 10);
    let mut r1 = h1.spawn(&[]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch ")
    });
    let mut r2 = h2.spawn(&[]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 waits as standby", || {
        text(&e2).contains("fleet: standby: the chain runs on host h1 (epoch ")
    });
    let epoch = owner_epoch(&r1.stderr()).expect("owner epoch");
    // The row says so.
    let LeaseRow {
        holder,
        host: row_host,
        epoch: row_epoch,
        ..
    } = lease(pg, &db);
    assert_eq!(row_host, "h1");
    assert_eq!(row_epoch, epoch);
    assert!(
        holder.len() == 32 && holder.bytes().all(|b| b.is_ascii_hexdigit()),
        "holder {holder:?}"
    );
    assert_eq!(
        pg.psql(
            &db,
            "SELECT host FROM run_chain.standbys WHERE chain = 'work'"
        ),
        "h2"
    );
    // status on h2: standby, naming the holder's host and epoch.
    wait_until("h2's status shows standby", || {
        let doc = h2.status_json();
        let c = &doc["chains"][0];
        c["now"]["state"] == "standby"
            && c["fleet"]["role"] == "standby"
            && c["fleet"]["host"] == "h1"
            && c["fleet"]["epoch"] == epoch
            && c["up"] == true
    });
    let text = h2.env.sub(&["status"]);
    assert!(
        text.stdout.contains(&format!(
            "work: pid {} standby\n  fleet: standby; the chain runs on host h1 (epoch {epoch})",
            r2.pid
        )),
        "{}",
        text.stdout
    );
    let doc = h1.status_json();
    assert_eq!(doc["chains"][0]["fleet"]["role"], "owner", "{doc:#}");
    // kick and run-now on the standby's host: 75, naming the host that runs the chain.
    for args in [&["kick", "work"][..], &["run-now", "work", "work"][..]] {
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
    // Only the owner runs.
    r1.wait_for("h1 ran 3 runs", || runs_of(&lp, "h1") >= 3);
    assert_eq!(runs_of(&lp, "h2"), 0, "a standby ran a task");

    // SIGTERM: h1 stops its run, releases, exits 0; h2 runs within 1.5 s of the release.
    r1.signal(libc::SIGTERM);
    r1.assert_exit(0);
    let released = ledger::mono_ns();
    assert!(
        r1.stderr()
            .contains(&format!("fleet: released the lease (epoch {epoch})")),
        "{}",
        r1.stderr()
    );
    r2.wait_for("h2 runs the chain", || {
        Ledger::read(&lp).first_start_after(Some("h2"), 0).is_some()
    });
    let first = Ledger::read(&lp)
        .first_start_after(Some("h2"), 0)
        .map(|r| r.start)
        .expect("a run of h2");
    let handover = first.saturating_sub(released) as f64 / 1e9;
    println!("release -> first run on the standby: {handover:.3} s");
    assert!(
        first < released + 1_500_000_000,
        "h2 ran {handover:.3} s after the release (> 1.5 s)"
    );
    assert!(r2
        .stderr()
        .contains(&format!("fleet: owner (epoch {}, host h2)", epoch + 1)));
    let LeaseRow {
        host: row_host,
        epoch: row_epoch,
        ..
    } = lease(pg, &db);
    assert_eq!((row_host.as_str(), row_epoch), ("h2", epoch + 1));
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM run_chain.standbys"),
        "0",
        "the new owner left the standbys"
    );
    r2.signal(libc::SIGTERM);
    r2.assert_exit(0);
    Ledger::read(&lp).assert_no_overlap();
    assert_eq!(lease(pg, &db).holder, "", "released at the end");
}

#[test]
fn a_foreign_update_of_the_row_makes_the_owner_stop_its_task_and_go_back_to_standby() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("lease_lost");
    let (_ld, lp) = ledger_file("ledger");
    // Runs of 10 s: the loss comes in the middle of one.
    let h1 = host("h1", &url, &lp, 200);
    let mut r1 = h1.spawn(&[]);
    r1.wait_for("h1 runs a task", || runs_of(&lp, "h1") >= 1);
    let epoch = owner_epoch(&r1.stderr()).expect("owner epoch");
    // Someone else's row now: another holder, expiring in 4 s.
    let foreign_expiry = pg.psql(
        &db,
        "UPDATE run_chain.leases SET holder = 'ffffffffffffffffffffffffffffffff', \
         expires_at = now() + interval '4 seconds' WHERE chain = 'work' RETURNING expires_at",
    );
    let changed = Instant::now();
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 sees the loss", || {
        text(&e1).contains(&format!(
            "fleet: lost the lease (epoch {epoch}): the database refused the renew"
        ))
    });
    let seen = changed.elapsed();
    println!("foreign update -> loss seen: {:.3} s", seen.as_secs_f64());
    // At its next renew (every lease / 5 = 400 ms), with room for a loaded machine.
    assert!(seen < Duration::from_millis(1500), "{seen:?}");
    // The running task got SIGTERM (its trap stamped E) well before the foreign expiry.
    r1.wait_for("the run is ended", || {
        Ledger::read(&lp).open_runs().is_empty()
    });
    r1.wait_for("h1 says it waits as standby", || {
        text(&e1).contains("fleet: chain stopped after the lease was lost; waiting as standby")
    });
    // Never renewed a row that is not its own: the foreign expiry is untouched after
    // several renew periods (River #197).
    std::thread::sleep(Duration::from_millis(1200));
    let now_expiry = pg.psql(
        &db,
        "SELECT expires_at FROM run_chain.leases WHERE chain = 'work'",
    );
    assert_eq!(now_expiry, foreign_expiry, "the foreign row was renewed");
    assert!(r1.try_status().is_none(), "h1 exited: {}", r1.stderr());
    // Back to standby, it acquires again once the foreign lease expires, with a new epoch,
    // and runs the chain again.
    let before = runs_of(&lp, "h1");
    r1.wait_for("h1 re-acquires and runs", || {
        text(&e1).contains(&format!("fleet: owner (epoch {}, host h1)", epoch + 1))
            && runs_of(&lp, "h1") > before
    });
    let LeaseRow {
        holder,
        host: row_host,
        epoch: row_epoch,
        ..
    } = lease(pg, &db);
    assert_ne!(holder, "ffffffffffffffffffffffffffffffff");
    assert_eq!((row_host.as_str(), row_epoch), ("h1", epoch + 1));
    r1.signal(libc::SIGTERM);
    r1.assert_exit(0);
    let ledger = Ledger::read(&lp);
    assert!(ledger.open_runs().is_empty(), "a run left open");
}

#[test]
fn once_and_no_kill_concurrent_exit_75_naming_the_holder_and_once_releases_at_its_end() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("lease_once");
    let (_ld, lp) = ledger_file("ledger");
    let h1 = host("h1", &url, &lp, 4);
    let h3 = host("h3", &url, &lp, 2);
    // Alone: --once runs, then releases the lease.
    h3.env.run(&["work", "--once"]).assert_code(0);
    assert_eq!(runs_of(&lp, "h3"), 1);
    let LeaseRow {
        holder,
        host: row_host,
        epoch: row_epoch,
        ..
    } = lease(pg, &db);
    assert_eq!((holder.as_str(), row_host.as_str()), ("", ""), "released");
    assert_eq!(row_epoch, 1);
    // h1 owns the chain: --once and --no-kill-concurrent elsewhere exit 75 naming it.
    let mut r1 = h1.spawn(&[]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch 2, host h1)")
    });
    for flag in ["--once", "--no-kill-concurrent"] {
        let out = h3.env.run(&["work", flag]);
        out.assert_code(75);
        assert!(
            out.stderr
                .contains("chain work runs on host h1 (epoch 2); not taking over"),
            "{flag}: {}",
            out.stderr
        );
    }
    assert_eq!(runs_of(&lp, "h3"), 1, "a refused launch ran a task");
    assert_eq!(lease(pg, &db).host, "h1");
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM run_chain.standbys"),
        "0",
        "a one-try launch does not stay in the standbys"
    );
    r1.signal(libc::SIGTERM);
    r1.assert_exit(0);
}

#[test]
fn a_relaunch_on_the_owners_host_takes_over_the_lease_there_with_no_run_elsewhere() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("lease_relaunch");
    let (_ld, lp) = ledger_file("ledger");
    // Runs of 0.3 s, 100 ms apart: the relaunch comes during a run or a cooldown.
    let h1 = host("h1", &url, &lp, 6);
    let h2 = host("h2", &url, &lp, 6);
    let mut old = h1.spawn(&[]);
    old.wait_for("h1 runs", || runs_of(&lp, "h1") >= 1);
    let epoch = owner_epoch(&old.stderr()).expect("owner epoch");
    let mut r2 = h2.spawn(&[]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 waits as standby", || {
        text(&e2).contains("fleet: standby: the chain runs on host h1")
    });
    let mut new = h1.spawn(&[]);
    old.assert_exit(0);
    assert!(
        old.stderr()
            .contains("fleet: keeping the lease for the newer launch (PID"),
        "{}",
        old.stderr()
    );
    let en = new.stderr.clone();
    new.wait_for("the new instance took the lease over", || {
        text(&en).contains(&format!(
            "fleet: owner (epoch {}, host h1): took over epoch {epoch} from this host's previous instance",
            epoch + 1
        ))
    });
    let LeaseRow {
        host: row_host,
        epoch: row_epoch,
        ..
    } = lease(pg, &db);
    assert_eq!((row_host.as_str(), row_epoch), ("h1", epoch + 1));
    let before = runs_of(&lp, "h1");
    new.wait_for("the new instance runs", || runs_of(&lp, "h1") >= before + 2);
    assert_eq!(runs_of(&lp, "h2"), 0, "the standby ran during the relaunch");
    assert!(r2.try_status().is_none());
    Ledger::read(&lp).assert_no_overlap();
    r2.signal(libc::SIGTERM);
    r2.assert_exit(0);
    new.signal(libc::SIGTERM);
    new.assert_exit(0);
}

#[test]
fn an_owner_that_cannot_renew_stops_its_task_by_the_fence_and_runs_again_when_the_database_returns()
{
    let pg = Pg::new();
    let (_db, url) = pg.fresh_database("lease_fence");
    let (_ld, lp) = ledger_file("ledger");
    // Runs of 20 s: the outage comes in the middle of one.
    let h1 = host_on(&pg, "h1", &url, &lp, 400);
    let mut r1 = h1.spawn(&[]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 runs a task", || runs_of(&lp, "h1") >= 1);
    assert_eq!(owner_epoch(&r1.stderr()), Some(1));
    pg.stop_mode(Mode::Fast);
    let stopped = ledger::mono_ns();
    r1.wait_for("the renew fails", || {
        text(&e1).contains("fleet: renew of the lease (epoch 1) failed")
    });
    // The fence: the task's group gets SIGTERM at 0.6 × lease (1.2 s) after the start of the
    // last renew that succeeded (before the outage), so its trap stamps its end before
    // 0.8 × lease (1.6 s) after the outage began.
    r1.wait_for("the run is ended", || {
        Ledger::read(&lp).open_runs().is_empty()
    });
    let end = Ledger::read(&lp).last().map(|r| r.end).expect("a run");
    let fenced = end.saturating_sub(stopped) as f64 / 1e9;
    println!("database stopped -> task ended by the fence: {fenced:.3} s");
    assert!(
        fenced < 1.6,
        "the task ended {fenced:.3} s after the outage began"
    );
    assert!(
        text(&e1).contains("no renew of the lease (epoch 1) succeeded for 0.6 × lease"),
        "{}",
        text(&e1)
    );
    r1.wait_for("the lease is given up as expired", || {
        text(&e1).contains("fleet: lost the lease (epoch 1): no renew succeeded for a whole lease")
    });
    assert!(r1.try_status().is_none(), "h1 exited: {}", r1.stderr());
    pg.start();
    let restarted = ledger::mono_ns();
    assert_eq!(
        Ledger::read(&lp)
            .first_start_after(None, stopped)
            .map(|r| r.start),
        None,
        "a run started while the database was down"
    );
    r1.wait_for("h1 re-acquires and runs again", || {
        text(&e1).contains("fleet: owner (epoch 2, host h1)")
            && Ledger::read(&lp)
                .first_start_after(None, restarted)
                .is_some()
    });
    r1.signal(libc::SIGTERM);
    r1.assert_exit(0);
}

#[test]
fn after_a_failed_renew_nothing_starts_not_even_a_run_now_or_a_kick() {
    let pg = Pg::new();
    let (_db, url) = pg.fresh_database("lease_gate");
    let (_ld, lp) = ledger_file("ledger");
    // A 10 s lease (renew every 2 s, fence at 6 s) and a long cooldown after a short run.
    let h1 = host_with(&pg, "h1", &url, &lp, 1, "10s", "1h");
    let mut r1 = h1.spawn(&[]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 ran once and cools down", || {
        Ledger::read(&lp).runs.len() == 1 && Ledger::read(&lp).open_runs().is_empty()
    });
    pg.stop_mode(Mode::Fast);
    r1.wait_for("the renew fails", || {
        text(&e1).contains("fleet: renew of the lease (epoch 1) failed")
    });
    let out = h1.env.sub(&["run-now", "work", "work"]);
    out.assert_code(75);
    assert!(
        out.stderr.contains("the fleet lease is not fresh"),
        "{}",
        out.stderr
    );
    r1.signal(libc::SIGUSR1);
    r1.wait_for("the kick is ignored", || {
        text(&e1).contains("SIGUSR1: ignored: the fleet lease is not fresh")
    });
    assert!(
        !text(&e1).contains("no renew of the lease (epoch 1) succeeded for 0.6"),
        "the fence came before the checks: the machine is too slow for this test"
    );
    assert_eq!(Ledger::read(&lp).runs.len(), 1, "a run started");
    r1.signal(libc::SIGTERM);
    r1.assert_exit(0);
}
