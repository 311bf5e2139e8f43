//! Schema version 5 (the tables of `store import`) against a real PostgreSQL: a database of
//! version 4 is migrated at the first connect, as the earlier versions are, and `store
//! import` works on it and stays idempotent.
//!
//! A version-4 database is made the way run-chain 4 left it: this run-chain creates the
//! schema (version 5), then the two tables version 5 adds are dropped and the version set
//! back to 4 (version 5 adds nothing else). The other version-4 database is the one whose
//! `store import` made the two tables itself (run-chain 4 created them at import time): the
//! tables and their rows are kept, only the version is set back to 4.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use common::TestEnv;
use fleet::IMPORT_TASKS;
use support::pg::Pg;

/// A fleet host `name` on database `url` (tests/support/fleet.rs's `host_env`), lease 3 s.
fn fleet(pg: &Pg, name: &str, url: &str) -> TestEnv {
    fleet::host_env(pg, name, url, "3s", IMPORT_TASKS)
}

fn q(pg: &Pg, db: &str, sql: &str) -> String {
    pg.psql(db, sql).trim().to_string()
}

/// A host's SQLite store with 6 runs of chain a_b (3 of a, 3 of b): its path.
fn source() -> (TestEnv, String) {
    let src = TestEnv::new(IMPORT_TASKS);
    for _ in 0..3 {
        src.run(&["--once", "a", "b"]).assert_code(1);
    }
    let p = src.run_root.join("runs.db").display().to_string();
    (src, p)
}

fn version(pg: &Pg, db: &str) -> String {
    q(pg, db, "SELECT version FROM run_chain.meta")
}

/// The import's tables that exist.
fn import_tables(pg: &Pg, db: &str) -> String {
    q(
        pg,
        db,
        "SELECT coalesce(string_agg(c.relname, ',' ORDER BY c.relname), '') FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'run_chain' AND c.relname IN ('imports', 'import_series') AND c.relkind = 'r'",
    )
}

/// `store import P` again on `h1`: exit 0, every run skipped (imported before), nothing added.
fn import_again_skips_all(h1: &TestEnv, p: &str) {
    let again = h1.run(&["store", "import", p]);
    again.assert_code(0);
    assert!(
        again
            .stdout
            .contains("0 runs imported, 6 skipped (imported before), 0 renumbered; aggregates of 0 series added"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_version_4_database_is_migrated_at_the_first_launch_and_import_works_on_it() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("schema5_launch");
    let h1 = fleet(pg, "h1", &url);
    // This run-chain makes the schema (a launch: --once runs chain a once).
    h1.run(&["--once", "a"]).assert_code(0);
    assert_eq!(version(pg, &db), "5");
    assert_eq!(import_tables(pg, &db), "import_series,imports");
    // Back to version 4 as run-chain 4 made it.
    pg.psql(
        &db,
        "DROP TABLE run_chain.imports, run_chain.import_series; UPDATE run_chain.meta SET version = 4",
    );
    assert_eq!(version(pg, &db), "4");
    let check = h1.run(&["check"]);
    check.assert_code(0);
    assert!(
        check
            .stdout
            .contains("schema version 4 (migrated to 5 at the next launch)"),
        "{}",
        check.stdout
    );
    // The first launch migrates it.
    h1.run(&["--once", "a"]).assert_code(0);
    assert_eq!(version(pg, &db), "5");
    assert_eq!(import_tables(pg, &db), "import_series,imports");
    // Import works, and again changes nothing.
    let (_src, p) = source();
    let done = h1.run(&["store", "import", &p]);
    done.assert_code(0);
    assert!(
        done.stdout
            .contains("6 runs imported, 0 skipped (imported before), 0 renumbered"),
        "{}",
        done.stdout
    );
    assert_eq!(q(pg, &db, "SELECT count(*) FROM run_chain.imports"), "6");
    assert_eq!(
        q(pg, &db, "SELECT count(*) FROM run_chain.import_series"),
        "2"
    );
    import_again_skips_all(&h1, &p);
    assert_eq!(
        q(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series WHERE s.chain = 'a_b'"
        ),
        "6"
    );
    assert_eq!(version(pg, &db), "5");
}

#[test]
fn a_version_4_database_whose_import_made_the_tables_is_migrated_keeping_them() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("schema5_import");
    let h1 = fleet(pg, "h1", &url);
    let (_src, p) = source();
    // `store import` as the first connect: it creates the schema, version 5.
    let done = h1.run(&["store", "import", &p]);
    done.assert_code(0);
    assert!(done.stdout.contains("6 runs imported"), "{}", done.stdout);
    assert_eq!(version(pg, &db), "5");
    // As run-chain 4's import left it: its tables (with their rows) at version 4.
    pg.psql(&db, "UPDATE run_chain.meta SET version = 4");
    // The import migrates it (the tables are kept as they are) and skips what it imported.
    import_again_skips_all(&h1, &p);
    assert_eq!(version(pg, &db), "5");
    assert_eq!(q(pg, &db, "SELECT count(*) FROM run_chain.imports"), "6");
    assert_eq!(q(pg, &db, "SELECT count(*) FROM run_chain.runs"), "6");
}
