//! `run-chain store import PATH` (issue 20) against a real PostgreSQL: a host's SQLite
//! history (made by running chains without `[store]`) copied into the fleet's store.
//!
//! Cases: the runs appear in the fleet (`history` in fleet mode, and the rows) with their
//! source host, the series' aggregates match SQLite's, and importing again changes
//! nothing; run ids the fleet already has are renumbered above its highest (the mapping
//! printed) and the chain's next owner continues above them; a chain owned right now is
//! not imported (75, naming the owner) and is after its owner stopped; no `[store]`, a
//! missing file and a file that is not a run-chain store: 64, nothing written.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::process::Command;
use std::time::Duration;

use common::{wait_until_for, TestEnv};
use support::pg::Pg;

/// fleet::IMPORT_TASKS and a `slow` task (a chain that stays running).
fn tasks() -> String {
    format!(
        "{}\n[tasks.slow]\ncommand = \"sleep 30\"\n",
        fleet::IMPORT_TASKS
    )
}

/// A host without `[store]`: its records go to RUN_ROOT/runs.db.
fn local() -> TestEnv {
    TestEnv::new(&tasks())
}

/// A fleet host `name` on database `url` (tests/support/fleet.rs's `host_env`), lease 3 s.
fn fleet(pg: &Pg, name: &str, url: &str) -> TestEnv {
    fleet::host_env(pg, name, url, "3s", &tasks())
}

fn q(pg: &Pg, db: &str, sql: &str) -> String {
    pg.psql(db, sql).trim().to_string()
}

fn sqlite(db: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const AGG: &str =
    "SELECT task || ':' || runs || ':' || ok || ':' || failed || ':' || duration_sum_ms
    || ':' || latency_sum_ms || ':' || coalesce(last_run_id, 0) FROM series ORDER BY task";

#[test]
fn runs_and_aggregates_are_imported_once() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("import_once");
    let src = local();
    for _ in 0..3 {
        src.run(&["--once", "a", "b"]).assert_code(1);
    }
    let path = src.run_root.join("runs.db");
    let sqlite_agg = sqlite(&path, AGG);
    assert!(sqlite_agg.starts_with("a:3:3:0:"), "{sqlite_agg}");
    let h2 = fleet(pg, "h2", &url);
    let p = path.display().to_string();
    let done = h2.run(&["store", "import", &p]);
    done.assert_code(0);
    assert!(
        done.stdout
            .contains("6 runs imported, 0 skipped (imported before), 0 renumbered"),
        "{}",
        done.stdout
    );
    let host = hostname();
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT count(*) || ':' || count(DISTINCT r.host) || ':' || min(r.host) FROM run_chain.runs r"
        ),
        format!("6:1:{host}")
    );
    let pg_agg = q(
        pg,
        &db,
        &AGG.replace("FROM series", "FROM run_chain.series"),
    );
    assert_eq!(pg_agg.replace('\n', " "), sqlite_agg.replace('\n', " "));
    // `history` in fleet mode shows them, with the source host and the output.
    let h = h2.run(&["history", "b", "--json"]);
    h.assert_code(0);
    let runs: serde_json::Value = serde_json::from_str(&h.stdout).expect("json");
    let runs = runs.as_array().expect("array");
    assert_eq!(runs.len(), 3, "{}", h.stdout);
    assert!(h.stdout.contains(&host), "{}", h.stdout);
    let log = h2.run(&["log", "b", "2", "--chain", "a_b"]);
    log.assert_code(0);
    assert_eq!(log.stdout, "b-out\n");
    // Again: nothing changes.
    let rows = "SELECT (SELECT count(*) FROM run_chain.runs) || ':' || (SELECT count(*) FROM run_chain.instances)
        || ':' || (SELECT sum(count) FROM run_chain.alerts)";
    let before = q(pg, &db, rows);
    let again = h2.run(&["store", "import", &p]);
    again.assert_code(0);
    assert!(
        again
            .stdout
            .contains("0 runs imported, 6 skipped (imported before), 0 renumbered; aggregates of 0 series added"),
        "{}",
        again.stdout
    );
    assert_eq!(q(pg, &db, rows), before);
    assert_eq!(
        q(
            pg,
            &db,
            &AGG.replace("FROM series", "FROM run_chain.series")
        ),
        pg_agg
    );
}

#[test]
fn run_ids_taken_in_the_fleet_are_renumbered_above_it() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("import_renumber");
    let h2 = fleet(pg, "h2", &url);
    for _ in 0..2 {
        h2.run(&["--once", "a"]).assert_code(0);
    }
    let src = local();
    for _ in 0..3 {
        src.run(&["--once", "a"]).assert_code(0);
    }
    let p = src.run_root.join("runs.db").display().to_string();
    let done = h2.run(&["store", "import", &p]);
    done.assert_code(0);
    let host = hostname();
    for (from, to) in [(1, 3), (2, 4), (3, 5)] {
        let line = format!("renumbered: chain a task a run {from} (host {host}) -> run {to}");
        assert!(done.stdout.contains(&line), "{line}: {}", done.stdout);
    }
    assert!(
        done.stdout
            .contains("3 runs imported, 0 skipped (imported before), 3 renumbered"),
        "{}",
        done.stdout
    );
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT string_agg(run_id || '@' || host, ',' ORDER BY run_id) FROM run_chain.runs"
        ),
        format!("1@h2,2@h2,3@{host},4@{host},5@{host}")
    );
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT state -> 'run_ids' ->> 'a' FROM run_chain.chain_state WHERE chain = 'a'"
        ),
        "5"
    );
    // The chain's next owner continues above the imported ids.
    h2.run(&["--once", "a"]).assert_code(0);
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT max(run_id) || ':' || count(*) FROM run_chain.runs"
        ),
        "6:6"
    );
    // Importing again changes nothing (the renumbered keys are remembered).
    let again = h2.run(&["store", "import", &p]);
    again.assert_code(0);
    assert!(
        again.stdout.contains("0 runs imported, 3 skipped")
            && !again.stdout.contains("renumbered:"),
        "{}",
        again.stdout
    );
    assert_eq!(q(pg, &db, "SELECT count(*) FROM run_chain.runs"), "6");
}

#[test]
fn a_chain_owned_now_is_not_imported_until_its_owner_stops() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("import_held");
    let src = local();
    src.run(&["--once", "a"]).assert_code(0);
    src.run(&["--once", "b"]).assert_code(1);
    let h2 = fleet(pg, "h2", &url);
    // Chain "a" (running task slow) owned by h2 now.
    let mut owner_a = h2.spawn(&["--name", "a", "slow"]);
    wait_until_for(Duration::from_secs(30), "chain a owned by h2", || {
        pg.try_psql(
            &db,
            "SELECT count(*) FROM run_chain.leases WHERE chain = 'a' AND holder IS NOT NULL AND expires_at > now()",
        )
        .is_ok_and(|s| s.trim() == "1")
    });
    let p = src.run_root.join("runs.db").display().to_string();
    let done = h2.run(&["store", "import", &p]);
    done.assert_code(75);
    assert!(
        done.stderr.contains("a (owned by host h2"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.contains("1 runs imported"), "{}", done.stdout);
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT string_agg(s.chain, ',' ORDER BY s.chain) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
             WHERE s.task <> 'slow'"
        ),
        "b"
    );
    owner_a.signal(libc::SIGTERM);
    owner_a.assert_exit(0);
    let done = h2.run(&["store", "import", &p]);
    done.assert_code(0);
    assert!(
        done.stdout.contains("1 runs imported, 1 skipped"),
        "{}",
        done.stdout
    );
}

#[test]
fn no_store_and_bad_paths_are_usage_errors() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("import_bad");
    let src = local();
    src.run(&["--once", "a"]).assert_code(0);
    let good = src.run_root.join("runs.db").display().to_string();
    // No [store]: nothing to import into.
    let done = src.run(&["store", "import", &good]);
    done.assert_code(64);
    assert!(
        done.stderr.contains("has no [store] section") && done.stderr.contains("tasks.toml"),
        "{}",
        done.stderr
    );
    let h2 = fleet(pg, "h2", &url);
    let missing = h2.path("nope.db").display().to_string();
    let done = h2.run(&["store", "import", &missing]);
    done.assert_code(64);
    assert!(done.stderr.contains("no such file"), "{}", done.stderr);
    std::fs::write(h2.path("text.db"), "not a database\n").expect("write");
    let text = h2.path("text.db").display().to_string();
    let done = h2.run(&["store", "import", &text]);
    done.assert_code(64);
    assert!(
        done.stderr.contains("not a run-chain SQLite store"),
        "{}",
        done.stderr
    );
    let other = h2.path("other.db");
    let made = Command::new("sqlite3")
        .arg(&other)
        .arg("CREATE TABLE t (x); PRAGMA user_version = 2;")
        .status()
        .expect("sqlite3");
    assert!(made.success());
    let done = h2.run(&["store", "import", &other.display().to_string()]);
    done.assert_code(64);
    assert!(
        done.stderr.contains("not a run-chain SQLite store"),
        "{}",
        done.stderr
    );
    // Nothing was written to the fleet (not even the schema's runs).
    assert_eq!(
        pg.try_psql(&db, "SELECT count(*) FROM run_chain.runs")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "0".into()),
        "0"
    );
}

/// A run not ended in the source (its run-chain was killed with -9 during the run) is
/// imported closed, `interrupted`, not as a run still going in the fleet.
#[test]
fn a_run_not_ended_in_the_source_is_imported_interrupted() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("import_open");
    let src = local();
    let mut r = src.spawn(&["slow"]);
    let path = src.run_root.join("runs.db");
    wait_until_for(
        Duration::from_secs(30),
        "run 1 of slow recorded open",
        || {
            path.exists()
                && sqlite(
                    &path,
                    "SELECT count(*) FROM runs WHERE task_pid IS NOT NULL AND stop_ms IS NULL",
                ) == "1"
        },
    );
    let task: i32 = sqlite(&path, "SELECT task_pid FROM runs")
        .parse()
        .expect("task pid");
    r.signal(libc::SIGKILL);
    r.wait_exit();
    // The task's group (the guardian stops it; make sure).
    unsafe {
        libc::kill(-task, libc::SIGKILL);
    }
    let h2 = fleet(pg, "h2", &url);
    let done = h2.run(&["store", "import", &path.display().to_string()]);
    done.assert_code(0);
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT outcome || ':' || (stop_ms = start_ms) || ':' || (error LIKE 'not ended in the host''s store%')
             FROM run_chain.runs"
        ),
        "interrupted:true:true"
    );
}

/// A chain whose last owner died holding the lease (kill -9) is left alone (75, saying to
/// launch it first): its successor closes the dead owner's open runs, which it could not
/// do after an import took and released the lease. After a `--once` it is imported.
#[test]
fn a_chain_whose_owner_died_holding_the_lease_is_left_alone() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("import_dead");
    let src = local();
    src.run(&["--once", "a"]).assert_code(0);
    let h2 = fleet(pg, "h2", &url);
    let mut owner = h2.spawn(&["--name", "a", "slow"]);
    wait_until_for(Duration::from_secs(30), "slow running in chain a", || {
        pg.try_psql(
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE stop_ms IS NULL AND task_pid IS NOT NULL",
        )
        .is_ok_and(|s| s.trim() == "1")
    });
    let task: i32 = q(pg, &db, "SELECT task_pid FROM run_chain.runs")
        .parse()
        .expect("task pid");
    owner.signal(libc::SIGKILL);
    owner.wait_exit();
    unsafe {
        libc::kill(-task, libc::SIGKILL);
    }
    wait_until_for(Duration::from_secs(30), "the lease expired", || {
        pg.try_psql(
            &db,
            "SELECT count(*) FROM run_chain.leases WHERE chain = 'a' AND holder IS NOT NULL AND expires_at <= now()",
        )
        .is_ok_and(|s| s.trim() == "1")
    });
    let p = src.run_root.join("runs.db").display().to_string();
    let done = h2.run(&["store", "import", &p]);
    done.assert_code(75);
    assert!(
        done.stderr.contains("ended without releasing its lease"),
        "{}",
        done.stderr
    );
    assert_eq!(q(pg, &db, "SELECT count(*) FROM run_chain.imports"), "0");
    // The next owner closes the dead one's run; then the import goes through.
    h2.run(&["--once", "--name", "a", "a"]).assert_code(0);
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT outcome FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series WHERE s.task = 'slow'"
        ),
        "interrupted"
    );
    let done = h2.run(&["store", "import", &p]);
    done.assert_code(0);
    assert!(
        done.stdout
            .contains("1 runs imported, 0 skipped (imported before), 1 renumbered"),
        "{}",
        done.stdout
    );
}
