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
