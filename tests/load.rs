//! Load (issue 7, "Load" 1-4), against the real binary: thousands of runs keep memory,
//! descriptors and threads flat, the store within `keep_runs_max` and leave no zombie; a task
//! writing 200 MB is never held up and its kept output is capped and marked as cut; 500
//! backgrounded grandchildren are all gone before the next task starts; 1,000 failures with
//! one signature send one mail and are all counted.
//!
//! Each test does a real, smaller version by default; `RUN_CHAIN_LONG=1` runs the long one
//! (10,000 runs instead of 2,000).

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Spawns `run-chain ARGS...` with its stdout on /dev/null (through `sh -c 'exec ...'`, so
/// the PID is run-chain's own); stderr goes to the runner's file as usual.
fn spawn_quiet(env: &TestEnv, args: &[&str]) -> Runner {
    let mut cmd = env.command_for("/bin/sh");
    cmd.arg("-c")
        .arg(r#"exec "$@" >/dev/null"#)
        .arg("sh")
        .arg(bin())
        .arg("-c")
        .arg(&env.config)
        .arg("--run-root")
        .arg(&env.run_root)
        .args(args);
    env.spawn_command(cmd)
}

/// The `status --json` entry of `task` in `chain`, or why not.
fn task_status(env: &TestEnv, chain: &str, task: &str) -> Result<Value, String> {
    let doc = env.try_status_json()?;
    let c = chain_entry(&doc, chain).ok_or_else(|| format!("no chain {chain}: {doc:#}"))?;
    task_entry(c, task)
        .cloned()
        .ok_or_else(|| format!("no task {task} in chain {chain}: {c:#}"))
}

/// Completed runs of `task` as `status` counts them (0 before the first).
fn runs_counted(env: &TestEnv, chain: &str, task: &str) -> u64 {
    task_status(env, chain, task)
        .ok()
        .and_then(|t| t["runs"].as_u64())
        .unwrap_or(0)
}

/// Waits (up to `timeout`, failing at once if run-chain exits) until `status` counts at least
/// `n` runs of `task`; returns the count.
fn wait_runs(
    env: &TestEnv,
    runner: &mut Runner,
    chain: &str,
    task: &str,
    n: u64,
    timeout: Duration,
) -> u64 {
    let start = Instant::now();
    loop {
        let have = runs_counted(env, chain, task);
        if have >= n {
            return have;
        }
        if let Some(status) = runner.try_status() {
            panic!(
                "run-chain exited ({status:?}) after {have} of {n} runs; stderr:\n{}",
                runner.stderr()
            );
        }
        assert!(
            start.elapsed() < timeout,
            "only {have} of {n} runs of {task} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What /proc says about a process over a short stretch of samples: the least and the most of
/// each (a task's pipes come and go with each run, so only the floor is compared for
/// descriptors and threads).
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kb_max: u64,
    fds_min: usize,
    fds_max: usize,
    threads_min: u64,
    threads_max: u64,
}

/// Samples `pid` `n` times, 5 ms apart (a sampling cadence, not a synchronisation); also
/// returns the zombie children seen meanwhile.
fn sample(pid: i32, n: usize) -> (Sample, Vec<(i32, u64)>) {
    let mut s = Sample {
        rss_kb_max: 0,
        fds_min: usize::MAX,
        fds_max: 0,
        threads_min: u64::MAX,
        threads_max: 0,
    };
    let mut zombies = Vec::new();
    for _ in 0..n {
        let rss = proc_status_number(pid, "VmRSS").expect("run-chain's VmRSS");
        let fds = fd_count(pid).expect("run-chain's fd count");
        let threads = proc_status_number(pid, "Threads").expect("run-chain's Threads");
        s.rss_kb_max = s.rss_kb_max.max(rss);
        s.fds_min = s.fds_min.min(fds);
        s.fds_max = s.fds_max.max(fds);
        s.threads_min = s.threads_min.min(threads);
        s.threads_max = s.threads_max.max(threads);
        for z in zombie_children(pid) {
            if !zombies.contains(&z) {
                zombies.push(z);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (s, zombies)
}

/// Load 1: many runs of `/bin/true` with zero cooldowns (2,000; 10,000 with RUN_CHAIN_LONG=1).
#[test]
fn thousands_of_runs_keep_memory_descriptors_and_threads_flat_and_the_store_bounded() {
    let total: u64 = scaled(2_000, 10_000);
    // Past keep_runs_max, so that pruning runs and the store is at its steady size.
    let warm_up: u64 = 700;
    let keep_runs_max = 500;
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
keep_runs_max = {keep_runs_max}

[tasks.t]
argv = ["/bin/true"]
"#
    ));
    let started = Instant::now();
    let mut runner = env.spawn(&["t"]);
    env.wait_running(&mut runner, "t");
    let pid = runner.pid;
    // Even at 50 runs a second (a slow debug build on a loaded machine) it finishes in time.
    let budget = Duration::from_secs(30 + total / 50);
    wait_runs(&env, &mut runner, "t", "t", warm_up, budget);
    let (early, early_zombies) = sample(pid, 60);
    wait_zombies_reaped(pid, &early_zombies);
    let at_late = wait_runs(&env, &mut runner, "t", "t", total, budget);
    let (late, late_zombies) = sample(pid, 60);
    wait_zombies_reaped(pid, &late_zombies);
    eprintln!(
        "after {warm_up} runs: {early:?}; after {at_late} runs: {late:?}; {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let growth_kb = late.rss_kb_max as i64 - early.rss_kb_max as i64;
    assert!(
        growth_kb < 2048,
        "run-chain's RSS grew by {growth_kb} kB between run {warm_up} and run {at_late}: \
         early {early:?}, late {late:?}"
    );
    // The floor is the fewest seen in 60 samples; with zero cooldowns the moments between
    // two runs are short and a stretch of samples may not catch one (its floor then counts
    // a task's pipe or /dev/null). So one descriptor either way is sampling, not a leak: a
    // leak of even one per thousand runs shows as ten or more here.
    assert!(
        late.fds_min <= early.fds_min + 1,
        "run-chain's open descriptors (the floor between runs) grew: early {early:?}, late {late:?}"
    );
    assert!(
        late.fds_max <= early.fds_max.max(early.fds_min + 4),
        "run-chain's open descriptors during runs grew: early {early:?}, late {late:?}"
    );
    assert_eq!(
        (late.threads_min, late.threads_max),
        (early.threads_min, early.threads_max),
        "run-chain's thread count changed: early {early:?}, late {late:?}"
    );

    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    assert!(
        TestEnv::logged_problems(&runner.stderr()).is_empty(),
        "warnings or errors were logged: {:#?}",
        TestEnv::logged_problems(&runner.stderr())
    );

    // The store keeps at most keep_runs_max runs; status counts every run ever made.
    let runs = env.history("t", &["--limit", "100000"]);
    assert!(
        !runs.is_empty() && runs.len() <= keep_runs_max,
        "history holds {} runs, keep_runs_max is {keep_runs_max}",
        runs.len()
    );
    let newest = runs.iter().map(run_id).max().unwrap();
    let t = task_status(&env, "t", "t").unwrap();
    assert_eq!(
        t["runs"].as_u64(),
        Some(newest),
        "status must count every run (the newest is run {newest}), not only the kept ones: {t:#}"
    );
    assert!(newest >= total, "{t:#}");
    assert_eq!(t["ok"].as_u64(), Some(newest), "{t:#}");
    assert_eq!(t["failures"].as_u64(), Some(0), "{t:#}");
}

/// Load 2: a task writes 200 MB, the last bytes without a newline, with run-chain's stdout on
/// /dev/null: memory stays small, the run is ok, the kept output is capped and marked as cut.
#[test]
fn a_task_writing_200_mb_is_not_held_up_and_its_kept_output_is_capped() {
    const SIZE: u64 = 200_000_000;
    const TAIL: &str = "tail without newline";
    let keep = 64 * 1024;
    let env = TestEnv::new(&format!(
        r#"
[tasks.big]
command = "head -c {SIZE} /dev/zero; printf '{TAIL}'"
keep_output = "64KiB"
success_cooldown = "1h"
"#
    ));
    let started = Instant::now();
    let mut runner = spawn_quiet(&env, &["big"]);
    env.wait_running(&mut runner, "big");
    let runs = {
        let mut runs = Vec::new();
        let pid = runner.pid;
        let mut hwm = 0;
        wait_until_explained(
            Duration::from_secs(120),
            "the 200 MB run is recorded",
            || {
                hwm = hwm.max(proc_status_number(pid, "VmHWM").unwrap_or(0));
                runs = env.try_history("big", &[])?;
                if runs.len() == 1 && outcome(&runs[0]) != "running" {
                    Ok(())
                } else {
                    Err(format!("history: {runs:#?}"))
                }
            },
        );
        let hwm = proc_status_number(pid, "VmHWM").unwrap_or(0).max(hwm);
        eprintln!(
            "200 MB passed through in {:.1}s; run-chain's VmHWM {hwm} kB",
            started.elapsed().as_secs_f64()
        );
        assert!(
            hwm < 32 * 1024,
            "run-chain's peak RSS (VmHWM) is {hwm} kB while a task wrote 200 MB; expected < 32 MiB"
        );
        runs
    };
    let run = &runs[0];
    assert_eq!(outcome(run), "ok", "{run:#}");
    assert_eq!(run["output_cut"], true, "{run:#}");
    if let Some(bytes) = run["output_bytes"].as_u64() {
        assert_eq!(
            bytes,
            SIZE + TAIL.len() as u64,
            "output_bytes should count everything the task wrote: {run:#}"
        );
    }
    env.assert_running_on_device(&mut runner, "big");

    let log = env.sub(&["log", "big"]);
    log.assert_code(0);
    assert!(
        log.stdout.len() <= keep,
        "log shows {} bytes, keep_output is {keep}",
        log.stdout.len()
    );
    assert!(
        log.stdout.len() >= keep / 2,
        "log shows only {} bytes of a 200 MB output (keep_output {keep})",
        log.stdout.len()
    );
    assert!(
        log.stdout.ends_with(TAIL),
        "the kept output must end with the unterminated last line {TAIL:?}; it ends with {:?}",
        &log.stdout[log.stdout.len().saturating_sub(40)..]
    );
    let body = &log.stdout[..log.stdout.len() - TAIL.len()];
    assert!(
        body.bytes().all(|b| b == 0),
        "the kept output before the tail is not the task's zeros"
    );

    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

/// `census.sh`: appends "alive N" to $T/out, N = how many PIDs listed in $T/kids still run
/// (a zombie counts as gone: it runs no code). Shell builtins only, so it is quick.
const CENSUS_SH: &str = r#"n=0
while read -r p; do
    s=
    { read -r _ _ s _ < "/proc/$p/stat"; } 2>/dev/null
    case "$s" in ""|Z|X) ;; *) n=$((n + 1)) ;; esac
done < "$T/kids"
echo "alive $n" >> "$T/out"
"#;

/// `spawn500.sh`: starts 500 background `sleep 1000` (every fifth ignoring SIGTERM, so that
/// only SIGKILL ends it), lists their PIDs in $T/kids, and exits 0.
const SPAWN500_SH: &str = r#"i=0
while [ $i -lt 500 ]; do
    i=$((i + 1))
    if [ $((i % 5)) = 0 ]; then
        (trap '' TERM; exec sleep 1000) &
    else
        sleep 1000 &
    fi
    echo $! >> "$T/kids"
done
echo spawned >> "$T/out"
exit 0
"#;

/// Load 3: a task forks 500 background grandchildren and exits 0: all are ended (SIGTERM,
/// then SIGKILL) before the next task starts, and none survives.
#[test]
fn five_hundred_background_grandchildren_are_gone_before_the_next_task_starts() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
kill_grace = "500ms"

[tasks.spawner]
command = 'exec sh "$T/spawn500.sh"'

[tasks.census]
command = 'exec sh "$T/census.sh"'
success_cooldown = "1h"
"#,
    );
    fs::write(env.path("spawn500.sh"), SPAWN500_SH).unwrap();
    fs::write(env.path("census.sh"), CENSUS_SH).unwrap();
    let mut runner = env.spawn(&["spawner", "census"]);
    let lines = env.wait_lines_while(&mut runner, "out", 2);
    assert_eq!(
        lines,
        vec!["spawned", "alive 0"],
        "the next task started while grandchildren of the previous run were still running"
    );
    let kids: Vec<i32> = env
        .lines("kids")
        .iter()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 500);
    for &kid in &kids {
        assert!(
            !is_running(kid),
            "grandchild {kid} still runs after the next task started"
        );
    }
    wait_until(
        "no grandchild is left as an unreaped zombie of run-chain",
        || {
            kids.iter()
                .all(|&k| !(proc_state(k) == Some('Z') && proc_ppid(k) == Some(runner.pid)))
        },
    );
    let runs = env.history("spawner", &[]);
    assert_eq!(outcome(&runs[0]), "ok", "{runs:#?}");
    env.assert_running_on_device(&mut runner, "spawner_census");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    // run-chain's guardian leaves a moment after run-chain itself: wait, rather than look once.
    wait_until_explained(DEADLINE, "no process of the chain survives it", || {
        let left = env.marked_processes();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {left:?}"))
        }
    });
}

/// The alert mails written as files (`*.eml`, not temp files) in `dir`.
fn eml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.ends_with(".eml") && !name.starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The value of a metric line `NAME{LABELS} VALUE` in Prometheus text.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Load 4: 1,000 failures with one signature (the message varies only in numbers): one
/// first-failure mail and nothing else (no reminder falls due within the test's hour), and
/// status and metrics count 1,000 failures.
#[test]
fn a_thousand_failures_with_one_signature_send_one_mail_and_are_all_counted() {
    const FAILURES: u64 = 1000;
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
non_recoverable_downtime = "1h"
stop_grace = "1h"
kill_grace = "300ms"

[email]
to = ["a@b.c"]

[tasks.flaky]
command = '[ "$RUN_CHAIN_RUN_ID" -gt {FAILURES} ] && exec sleep 1000; echo "starting attempt $RUN_CHAIN_RUN_ID"; echo "error: attempt $RUN_CHAIN_RUN_ID of worker $$ failed at $(date +%T.%N)" >&2; exit 3'
"#
    ));
    let started = Instant::now();
    let mut runner = spawn_quiet(&env, &["flaky"]);
    env.wait_running(&mut runner, "flaky");
    // Run 1001 (which waits) is running: the 1,000 failures are all over and recorded.
    wait_until_explained(
        Duration::from_secs(120),
        &format!("{FAILURES} failures are over and run {} runs", FAILURES + 1),
        || {
            if let Some(status) = runner.try_status() {
                panic!("run-chain exited: {status:?}\n{}", runner.stderr());
            }
            let doc = env.try_status_json()?;
            let c = chain_entry(&doc, "flaky").ok_or("no chain flaky in status")?;
            if c["now"]["state"] == "running" && c["now"]["run_id"].as_u64() == Some(FAILURES + 1) {
                Ok(())
            } else {
                Err(format!("last status: {c:#}"))
            }
        },
    );
    eprintln!(
        "{FAILURES} failures in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let t = task_status(&env, "flaky", "flaky").unwrap();
    assert_eq!(t["failures"].as_u64(), Some(FAILURES), "{t:#}");
    assert_eq!(t["ok"].as_u64(), Some(0), "{t:#}");
    assert_eq!(t["streak"]["failures"].as_u64(), Some(FAILURES), "{t:#}");

    let metrics = env.sub(&["metrics"]);
    metrics.assert_code(0);
    let m = |key: &str| {
        metric(&metrics.stdout, key)
            .unwrap_or_else(|| panic!("no {key} in metrics:\n{}", metrics.stdout))
    };
    let labels = r#"chain="flaky",task="flaky""#;
    assert_eq!(
        m(&format!("run_chain_consecutive_failures{{{labels}}}")),
        FAILURES as f64
    );
    assert_eq!(
        m(&format!(
            r#"run_chain_runs_total{{{labels},result="failed"}}"#
        )),
        FAILURES as f64
    );
    assert_eq!(
        m(&format!(r#"run_chain_runs_total{{{labels},result="ok"}}"#)),
        0.0
    );
    assert_eq!(
        m(&format!(
            r#"run_chain_alerts_total{{{labels},kind="first-failure"}}"#
        )),
        1.0
    );
    for kind in ["new-failure", "downtime", "recovered"] {
        assert_eq!(
            m(&format!(
                r#"run_chain_alerts_total{{{labels},kind="{kind}"}}"#
            )),
            0.0,
            "alerts of kind {kind}"
        );
    }

    // The one mail, as a file in RUN_ROOT/mail. The mailer writes it there in place (not by a
    // rename), then removes it from the outbox: a mail in mail/ and none left in the outbox
    // means the file is complete.
    let mail = env.run_root.join("mail");
    let outbox = env.run_root.join("outbox");
    runner.wait_for(
        "the first-failure mail is written and left the outbox",
        || !eml_files(&mail).is_empty() && eml_files(&outbox).is_empty(),
    );
    runner.signal(libc::SIGQUIT);
    runner.assert_exit(0);
    let mails = eml_files(&mail);
    assert_eq!(
        mails.len(),
        1,
        "expected exactly one mail for {FAILURES} failures with one signature: {mails:#?}"
    );
    let text = fs::read_to_string(&mails[0]).unwrap();
    assert!(
        text.contains("X-Run-Chain-Alert: first-failure"),
        "the one mail is not the first-failure alert:\n{text}"
    );
    assert!(
        eml_files(&outbox).is_empty(),
        "alerts are still queued in the outbox"
    );
    // The run interrupted by SIGQUIT is not a failure.
    let t = task_status(&env, "flaky", "flaky").unwrap();
    assert_eq!(t["failures"].as_u64(), Some(FAILURES), "{t:#}");
}
