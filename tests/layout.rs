//! The module layout: no import cycle between the top-level modules of src/, and a pure
//! `core` (it uses only `config`, `error` and `time`, and never the OS or a clock), as
//! `scripts/module-cycles` checks.

use std::process::Command;

#[test]
fn the_modules_import_each_other_in_one_direction_and_core_stays_pure() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/module-cycles"))
        .arg(format!("{root}/src"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 scripts/module-cycles: {e}"));
    assert!(
        out.status.success(),
        "scripts/module-cycles failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Only `store/` names SQLite's crate: every other module reads and writes through the
/// store's seam, so that another store (PostgreSQL) is one more file in `store/`.
#[test]
fn only_the_store_names_rusqlite() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path != src.join("store") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                if text.contains("rusqlite") {
                    offenders.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "rusqlite named outside src/store/: {offenders:?}"
    );
}

/// Only `store/pg/` names tokio-postgres (`tokio_postgres`): the lease, the readers and the
/// commands reach the fleet's database through `store::pg`'s functions, so that its rules
/// (unnamed statements only, for PgBouncer) are kept in one folder.
#[test]
fn only_the_fleet_store_names_tokio_postgres() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path != src.join("store").join("pg") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                if text.contains("tokio_postgres") || text.contains("tokio-postgres") {
                    offenders.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tokio_postgres named outside src/store/pg/: {offenders:?}"
    );
}
