//! `scripts/bench` stays runnable: a short run of two of its sections against the
//! binary under test, in a target directory of its own (so that a user's
//! target/bench/report.md is left alone).
//!
//! The figures are not held to their bars here (they are timings, for benchmarks, not
//! tests). What is checked is what must hold whatever the machine's speed: the script
//! runs and exits 0, each section finishes with every row it should have, every SIGTERM
//! ends its chain with status 0, every relaunched instance leaves with status 0, and the 20 relaunches of a chain in its cooldown start
//! no run of its task.

mod common;

use std::process::Command;

fn rows<'a>(report: &'a str, section: &str) -> Vec<Vec<&'a str>> {
    report
        .lines()
        .filter(|l| l.starts_with(&format!("| {section} |")))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

#[test]
fn the_bench_script_runs_its_timing_and_upgrade_sections() {
    let target = tempfile::tempdir().expect("tempdir");
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{repo}/scripts/bench"))
        .args(["--quick", "--only", "timing,upgrade"])
        .env("RUN_CHAIN_BIN", common::bin())
        .env("CARGO_TARGET_DIR", target.path())
        .current_dir(repo)
        .output()
        .expect("run scripts/bench");
    let said = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "scripts/bench failed\n{said}");
    assert!(
        !said.contains("could not finish"),
        "a section did not finish\n{said}"
    );
    let report = std::fs::read_to_string(target.path().join("bench/report.md"))
        .unwrap_or_else(|e| panic!("no report.md in the target directory given: {e}\n{said}"));

    let timing = rows(&report, "timing");
    for figure in [
        "cooldown overshoot (next START",
        "cooldown overshoot as run-chain sees it",
        "start latency",
        "kick (SIGUSR1) in a cooldown",
        "`run-chain kick CHAIN` (the CLI)",
        "SIGTERM in a cooldown to exit",
    ] {
        let row = timing
            .iter()
            .find(|r| r[1].starts_with(figure))
            .unwrap_or_else(|| panic!("no timing row {figure:?} in\n{report}"));
        assert_ne!(row[6], "n/a", "{figure}: {row:?}");
        assert!(
            !row[2].contains("not 0"),
            "a chain ended by SIGTERM exited with another status: {row:?}"
        );
    }

    let upgrade = rows(&report, "upgrade");
    let relaunched = upgrade
        .iter()
        .find(|r| r[1].starts_with("task runs started by the 20 relaunches"))
        .unwrap_or_else(|| panic!("no upgrade row of the task runs in\n{report}"));
    assert_eq!(
        relaunched[2], "0",
        "relaunches started runs: {relaunched:?}"
    );
    assert_eq!(relaunched[6], "PASS", "{relaunched:?}");
    let took = upgrade
        .iter()
        .find(|r| r[1].starts_with("relaunch in a cooldown until the new instance holds the lock"))
        .unwrap_or_else(|| panic!("no upgrade row of the relaunch time in\n{report}"));
    assert!(took[2].starts_with("p50 "), "{took:?}");
    assert!(
        !took[2].contains("not 0"),
        "an old instance exited with another status than 0: {took:?}"
    );
}
