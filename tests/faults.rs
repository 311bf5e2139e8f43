//! Faults (issue 7, "Faults" 5-10 and 19), against the real binary: run-chain SIGKILLed
//! mid-task; upgrades mid-task and mid-cooldown, round after round; many launches at the same
//! instant; a TERM-ignoring task with TERM-ignoring descendants in sessions of their own;
//! kicks at random moments around the start of a cooldown; the wall clock jumping a day
//! (libfaketime); a pidfile edited to name a bystander; the looking commands (`status`,
//! `kick`) while other processes take and drop locks.
//!
//! Each test does a real, smaller version by default; `RUN_CHAIN_LONG=1` runs the long one
//! (more rounds). Nothing here waits by sleeping: every wait is on a condition, with generous
//! deadlines, and the only timing assertions are lower bounds (load only makes things later)
//! or loose upper bounds far above what the contract promises.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A line `KIND TASK RUN_ID UPTIME` that a task appended to `$T/out`.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    kind: String,
    task: String,
    id: u64,
    t: f64,
}

fn events(env: &TestEnv, name: &str) -> Vec<Event> {
    env.lines(name)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "malformed line {l:?}");
            Event {
                kind: f[0].to_owned(),
                task: f[1].to_owned(),
                id: f[2].parse().unwrap_or_else(|_| panic!("run id in {l:?}")),
                t: f[3].parse().unwrap_or_else(|_| panic!("stamp in {l:?}")),
            }
        })
        .collect()
}

/// Every recorded run of `tasks` (all chains), by (task, run id); fails on a run id recorded
/// twice.
fn recorded_runs(env: &TestEnv, tasks: &[&str]) -> BTreeMap<(String, u64), Value> {
    let mut out = BTreeMap::new();
    for task in tasks {
        for run in env.history(task, &["--limit", "100000"]) {
            let id = run_id(&run);
            let again = out.insert((task.to_string(), id), run.clone());
            assert!(
                again.is_none(),
                "run {id} of {task} is recorded twice: {again:#?} and {run:#}"
            );
        }
    }
    out
}

/// Asserts that the recorded [start, stop] intervals never overlap (runs of one chain). Times
/// are kept to the millisecond, so 2 ms of rounding are allowed.
fn assert_no_overlap(runs: &BTreeMap<(String, u64), Value>) {
    let mut spans: Vec<(f64, f64, String)> = runs
        .iter()
        .map(|((task, id), r)| {
            (
                time_of(r, "start"),
                time_of(r, "stop"),
                format!("{task} {id} ({})", outcome(r)),
            )
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0 + 0.002,
            "recorded runs overlap: {} ran {:.3}..{:.3}, {} started at {:.3}",
            w[0].2,
            w[0].0,
            w[0].1,
            w[1].2,
            w[1].0
        );
    }
}

/// The lock-churn test makes /proc/locks change all the time, which (see its doc) may make
/// run-chain's looking commands miss a running chain; the other tests here do not run while it
/// does, so that their failures are their own.
static CHURN: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Taken by every test but the lock-churn one.
fn no_churn() -> std::sync::RwLockReadGuard<'static, ()> {
    CHURN.read().unwrap_or_else(|e| e.into_inner())
}

/// The last `n` lines of `text`.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `flock -n FILE true`: true if the lock is free.
fn lock_is_free(path: &Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(path)
        .arg("true")
        .status()
        .expect("run flock(1)")
        .success()
}

// ---------------------------------------------------------------------------------------------
// 5. SIGKILL mid-task
// ---------------------------------------------------------------------------------------------

/// Task a runs until `$T/go` exists, with a child `sleep` in its group; b is quick.
const GATED_WITH_CHILD: &str = r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "1h"
kill_grace = "300ms"
stop_grace = "1h"

[tasks.a]
command = 'echo "start a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"; sleep 1000 & echo $! > "$T/child$RUN_CHAIN_RUN_ID.pid"; echo $$ > "$T/a$RUN_CHAIN_RUN_ID.pid"; while [ ! -e "$T/go" ]; do sleep 0.02; done; echo "end a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'

[tasks.b]
command = 'echo "start b $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"; echo "end b $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "1h"
"#;

/// SIGKILL run-chain mid-task, several times (3; 10 with RUN_CHAIN_LONG=1): the task's whole
/// group is gone within a deadline, the next launch takes over, the killed run is recorded
/// `interrupted` and runs again under a new run id; no run id is recorded twice.
#[test]
fn sigkill_mid_task_ends_the_group_and_the_next_launch_records_it_interrupted_and_reruns_it() {
    let _shared = no_churn();
    let kills: u64 = scaled(3, 10);
    let env = TestEnv::new(&GATED_WITH_CHILD.replace("{STAMP}", STAMP));
    for k in 1..=kills {
        let mut runner = env.spawn(&["a", "b"]);
        env.wait_running(&mut runner, "a_b");
        let task = wait_pid_file(&env.path(&format!("a{k}.pid")));
        let child = wait_pid_file(&env.path(&format!("child{k}.pid")));
        env.wait_history(
            "a",
            &[],
            &format!("run {k} of a is recorded running"),
            |r| {
                r.first()
                    .is_some_and(|r| run_id(r) == k && outcome(r) == "running")
            },
        );
        runner.signal(libc::SIGKILL);
        runner.wait_exit();
        for (pid, what) in [(task, "task"), (child, "task's child")] {
            wait_until(
                &format!("the {what} (pid {pid}) is gone after run-chain was SIGKILLed"),
                || !is_running(pid),
            );
        }
        wait_until(
            "nothing of the killed chain (guardian included) runs",
            || env.marked_processes().is_empty(),
        );
        assert!(
            lock_is_free(&env.pidfile("a_b")),
            "the lock is still held after the chain was SIGKILLed"
        );
    }
    // The last launch lets a finish.
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_running(&mut runner, "a_b");
    wait_pid_file(&env.path(&format!("a{}.pid", kills + 1)));
    fs::write(env.path("go"), "").unwrap();
    env.wait_history("b", &[], "b ran after the rerun of a", |r| {
        r.first().is_some_and(|r| outcome(r) == "ok")
    });
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let runs = recorded_runs(&env, &["a", "b"]);
    for k in 1..=kills {
        let r = &runs[&("a".to_string(), k)];
        assert_eq!(
            outcome(r),
            "interrupted",
            "run {k} of a, whose run-chain was SIGKILLed, must be recorded interrupted: {r:#}"
        );
    }
    let last = &runs[&("a".to_string(), kills + 1)];
    assert_eq!(outcome(last), "ok", "{last:#}");
    assert_eq!(runs.len() as u64, kills + 2, "{runs:#?}");
    assert_no_overlap(&runs);
    // The file agrees: each killed run started once and never ended; then a ran to its end.
    let ev = events(&env, "out");
    let mut expected: Vec<(String, String, u64)> = (1..=kills)
        .map(|k| ("start".into(), "a".into(), k))
        .collect();
    for (kind, task, id) in [
        ("start", "a", kills + 1),
        ("end", "a", kills + 1),
        ("start", "b", 1),
        ("end", "b", 1),
    ] {
        expected.push((kind.into(), task.into(), id));
    }
    let got: Vec<(String, String, u64)> = ev
        .iter()
        .map(|e| (e.kind.clone(), e.task.clone(), e.id))
        .collect();
    assert_eq!(got, expected, "a task was skipped or run twice");
}

// ---------------------------------------------------------------------------------------------
// 6. Upgrades mid-task and mid-cooldown, repeated
// ---------------------------------------------------------------------------------------------

/// Checks a chain `a b` whose tasks log "start"/"end" lines: the file and the store agree, no
/// task is skipped or doubled, an unfinished run is recorded interrupted and is followed by
/// its rerun, run ids increase, and neither the file's nor the store's intervals overlap.
fn assert_chain_history_sound(env: &TestEnv) -> (usize, usize) {
    let ev = events(env, "out");
    let runs = recorded_runs(env, &["a", "b"]);
    assert_no_overlap(&runs);

    // The file: "start X n" is followed by "end X n" (or by nothing of that run, if it was
    // interrupted); no two runs are ever open at once; stamps never go back.
    let mut starts: Vec<&Event> = Vec::new();
    let mut ended: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut open: Option<&Event> = None;
    for (i, e) in ev.iter().enumerate() {
        if i > 0 {
            assert!(e.t >= ev[i - 1].t, "stamps go back at line {i}: {ev:#?}");
        }
        match e.kind.as_str() {
            "start" => {
                open = Some(e);
                starts.push(e);
            }
            "end" => {
                let o = open.take().unwrap_or_else(|| {
                    panic!("line {i}: {e:?} ends a run that is not the open one: {ev:#?}")
                });
                assert_eq!(
                    (&o.task, o.id),
                    (&e.task, e.id),
                    "line {i}: runs overlap in the file: {ev:#?}"
                );
                ended.insert((e.task.clone(), e.id));
            }
            k => panic!("unknown line kind {k}"),
        }
    }
    // File and store agree run by run.
    let started: BTreeSet<(String, u64)> = starts.iter().map(|e| (e.task.clone(), e.id)).collect();
    assert_eq!(
        started.len(),
        starts.len(),
        "a run id started twice in the file: {ev:#?}"
    );
    let recorded: BTreeSet<(String, u64)> = runs.keys().cloned().collect();
    assert_eq!(
        started, recorded,
        "the runs in the file and in the store differ"
    );
    let mut interrupted = 0;
    for key in &started {
        let r = &runs[key];
        if ended.contains(key) {
            assert_eq!(outcome(r), "ok", "{key:?} ended in the file: {r:#}");
        } else {
            assert_eq!(
                outcome(r),
                "interrupted",
                "{key:?} never ended in the file, so it must be recorded interrupted: {r:#}"
            );
            interrupted += 1;
        }
    }
    // The order: a, b, a, b, ...; after an interrupted run, the same task again (its rerun).
    for w in starts.windows(2) {
        let (prev, next) = (w[0], w[1]);
        let prev_ended = ended.contains(&(prev.task.clone(), prev.id));
        let expected = if prev_ended {
            if prev.task == "a" {
                "b"
            } else {
                "a"
            }
        } else {
            prev.task.as_str()
        };
        assert_eq!(
            next.task,
            expected,
            "after {} {} ({}) came {} {}: a task was skipped or doubled: {ev:#?}",
            prev.task,
            prev.id,
            if prev_ended { "ended" } else { "interrupted" },
            next.task,
            next.id
        );
    }
    assert_eq!(starts.first().map(|e| e.task.as_str()), Some("a"));
    // Run ids increase per task.
    for task in ["a", "b"] {
        let ids: Vec<u64> = starts
            .iter()
            .filter(|e| e.task == task)
            .map(|e| e.id)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "run ids of {task} do not increase: {ids:?}"
        );
    }
    (starts.len(), interrupted)
}

/// Relaunches (upgrades) the chain `a b` round after round (10; 50 with RUN_CHAIN_LONG=1),
/// alternately while a task runs (a, which finishes within its stop_grace; b, which is stopped
/// past its stop_grace and so interrupted) and while it cools down.
#[test]
fn upgrades_mid_task_and_mid_cooldown_never_overlap_skip_or_double_a_task() {
    let _shared = no_churn();
    let rounds: usize = scaled(10, 50);
    let env = TestEnv::new(&format!(
        r#"
[defaults]
kill_grace = "300ms"

[tasks.a]
command = 'echo "start a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"; sleep 0.3; echo "end a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "600ms"
stop_grace = "1h"

[tasks.b]
command = 'echo "start b $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"; sleep 1.2; echo "end b $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "600ms"
stop_grace = "200ms"
"#
    ));
    let mut runner = env.spawn(&["a", "b"]);
    env.wait_running(&mut runner, "a_b");
    let mut seen = 0;
    for round in 0..rounds {
        // Mid-task rounds alternate between a and b; the others land in a cooldown.
        let what = match round % 4 {
            0 => "task a running",
            1 => "a cooldown",
            2 => "task b running",
            _ => "a cooldown",
        };
        let pid = runner.pid;
        runner.wait_for(&format!("round {round}: {what}"), || {
            let lines = env.lines("out");
            // Something new happened since the last upgrade.
            if lines.len() <= seen {
                return false;
            }
            let last = lines.last().unwrap();
            match round % 4 {
                0 => last.starts_with("start a "),
                2 => last.starts_with("start b "),
                _ => {
                    last.starts_with("end ")
                        && env.try_status_json().is_ok_and(|doc| {
                            chain_entry(&doc, "a_b").is_some_and(|c| {
                                c["pid"].as_i64() == Some(pid as i64)
                                    && c["now"]["state"] == "cooldown"
                            })
                        })
                }
            }
        });
        seen = env.lines("out").len();
        let mut next = env.spawn(&["a", "b"]);
        runner.assert_exit(0);
        env.wait_running(&mut next, "a_b");
        runner = next;
    }
    // Let the last instance make progress, then stop it.
    let have = env.lines("out").len();
    env.wait_lines_while(&mut runner, "out", have + 2);
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    wait_until("nothing of the chain is left running", || {
        env.marked_processes().is_empty()
    });
    let (starts, interrupted) = assert_chain_history_sound(&env);
    eprintln!("{rounds} upgrades: {starts} runs, {interrupted} interrupted");
    assert!(
        interrupted >= 1 || rounds < 3,
        "no upgrade landed while b ran past its stop_grace"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Many launches at the same instant
// ---------------------------------------------------------------------------------------------

/// Samples /proc/locks in a thread until dropped: the most flock holders of one file seen in a
/// single (atomic) read, and the first sample that showed more than one.
struct LockSampler {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(usize, String, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockSampler {
    fn start(path: PathBuf) -> LockSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((0, String::new(), 0)));
        let thread = {
            let (stop, worst) = (stop.clone(), worst.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Seek};
                use std::os::unix::fs::MetadataExt;
                let meta = fs::metadata(&path).expect("the pidfile exists");
                let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
                let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
                let mut f = fs::File::open("/proc/locks").expect("open /proc/locks");
                // One read(2) with a large buffer: an atomic snapshot (see read_proc_locks).
                let mut buf = vec![0u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    f.rewind().unwrap();
                    let n = f.read(&mut buf).unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let holders: Vec<&str> = text
                        .lines()
                        .filter(|l| !l.contains("->"))
                        .filter_map(|l| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            (f.len() >= 6 && f[1] == "FLOCK" && f[5] == want).then_some(f[4])
                        })
                        .collect();
                    let mut w = worst.lock().unwrap();
                    w.2 += 1;
                    if holders.len() > w.0 {
                        w.0 = holders.len();
                        if holders.len() > 1 {
                            w.1 = format!("holders {holders:?}\n/proc/locks:\n{text}");
                        }
                    }
                    drop(w);
                    // A sampling cadence, not a synchronisation.
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        LockSampler {
            stop,
            worst,
            thread: Some(thread),
        }
    }

    /// (most holders at once, what that sample showed, samples taken).
    fn finish(mut self) -> (usize, String, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.worst.lock().unwrap().clone()
    }
}

impl Drop for LockSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 2 to 20 launches of one chain at the same instant, round after round (10; 100 with
/// RUN_CHAIN_LONG=1), while its task runs back to back: at no sample do two processes hold
/// the lock, exactly one instance is left after each round, and the task's own evidence (an
/// flock it takes, and its start/end lines) never shows two runs at once.
#[test]
fn launches_at_the_same_instant_never_make_two_runners() {
    let _shared = no_churn();
    let rounds: usize = scaled(10, 100);
    let env = TestEnv::new(&format!(
        r#"
[tasks.a]
command = 'exec 9>>"$T/inside"; flock -n 9 || echo "overlap a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/overlap"; echo "start a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"; sleep 0.05; echo "end a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "0s"
fail_cooldown = "0s"
stop_grace = "1h"
"#
    ));
    let mut rng = Rng::new("launches_at_the_same_instant");
    env.make_run_root();
    let mut all: Vec<Runner> = vec![env.spawn(&["a"])];
    env.wait_running(&mut all[0], "a");
    let sampler = LockSampler::start(env.pidfile("a"));
    let mut launched = 0;
    for round in 0..rounds {
        let n = rng.range(2, 20) as usize;
        launched += n;
        let go = env.path(&format!("go{round}"));
        for _ in 0..n {
            // Each launch waits for the go file, then execs run-chain (same PID).
            let mut cmd = env.command_for("sh");
            cmd.arg("-c")
                .arg(r#"while [ ! -e "$0" ]; do sleep 0.005; done; exec "$@""#)
                .arg(&go)
                .arg(bin())
                .arg("-c")
                .arg(&env.config)
                .arg("--run-root")
                .arg(&env.run_root)
                .arg("a");
            all.push(env.spawn_command(cmd));
        }
        fs::write(&go, "").unwrap();
        wait_until_explained(
            DEADLINE,
            &format!("round {round} ({n} launches): exactly one instance left, holding the lock"),
            || {
                let alive: Vec<i32> = all
                    .iter_mut()
                    .filter_map(|r| r.try_status().is_none().then_some(r.pid))
                    .collect();
                let holders = lock_holders(&env.pidfile("a"));
                let text = fs::read_to_string(env.pidfile("a")).unwrap_or_default();
                if alive.len() == 1 && holders == alive && text == format!("{}\n", alive[0]) {
                    Ok(())
                } else {
                    Err(format!(
                        "alive {alive:?}, lock holders {holders:?}, pidfile {text:?}"
                    ))
                }
            },
        );
        for r in all.iter_mut() {
            if let Some(status) = r.try_status() {
                assert!(
                    matches!(status.code(), Some(0) | Some(75)),
                    "round {round}: launch {} exited with {status:?}; stderr:\n{}",
                    r.pid,
                    r.stderr()
                );
            }
        }
        // The survivor makes progress before the next round.
        let have = env.lines("out").len();
        wait_until(
            &format!("round {round}: the survivor runs the task"),
            || env.lines("out").len() >= have + 2,
        );
        // Reap the finished launches' records from memory (keep the survivor).
        all.retain_mut(|r| r.try_status().is_none());
    }
    let (most, sample, samples) = sampler.finish();
    let survivor = all.iter_mut().next().unwrap();
    survivor.signal(libc::SIGTERM);
    survivor.assert_exit(0);
    eprintln!("{rounds} rounds, {launched} launches, {samples} samples of /proc/locks");
    assert!(
        most <= 1,
        "{most} processes held the chain's lock at the same time:\n{sample}"
    );
    assert_eq!(
        most, 1,
        "the sampler never saw the lock held: it sees nothing"
    );
    assert_eq!(
        env.read("overlap"),
        "",
        "a run started while another run's task still held its flock"
    );
    // The start/end lines: one run at a time, each started run ended (stop_grace 1h), run
    // ids strictly increasing.
    let ev = events(&env, "out");
    assert!(!ev.is_empty());
    for (i, pair) in ev.chunks(2).enumerate() {
        assert!(
            pair.len() == 2
                && pair[0].kind == "start"
                && pair[1].kind == "end"
                && pair[0].id == pair[1].id,
            "run {i}: runs overlap or one did not end: {pair:?}"
        );
        if i > 0 {
            let prev = &ev[2 * i - 1];
            assert!(
                pair[0].id > prev.id && pair[0].t >= prev.t,
                "run {} started before run {} ended, or ids went back",
                pair[0].id,
                prev.id
            );
        }
    }
    let runs = recorded_runs(&env, &["a"]);
    assert_no_overlap(&runs);
    assert_eq!(runs.len(), ev.len() / 2, "file and store disagree");
}

// ---------------------------------------------------------------------------------------------
// 8. A TERM-ignoring task with a TERM-ignoring grandchild in its own session
// ---------------------------------------------------------------------------------------------

/// `stubborn.sh MODE`: ignores SIGTERM, and so does everything it starts: two children in
/// the task's group (`child.sh`), each with a grandchild that called setsid (`gc.sh`: its own
/// session and group), which starts a great-grandchild that called setsid too (`ggc.sh`, as a
/// daemon's double fork does). Lists "task PID", "child PID", "gc PID" and "ggc PID" lines in
/// $T/pids and appends "ready UPTIME" to $T/out. MODE "exit": then exits 0, leaving them all
/// behind; MODE "hang": waits for ever (for its timeout).
const STUBBORN_SH: &str = r#"trap '' TERM
echo "task $$" >> "$T/pids"
for i in 1 2; do
    sh "$T/child.sh" &
done
while [ "$(grep -c '^ggc ' "$T/pids")" -lt 2 ]; do sleep 0.01; done
echo "ready $(read up _ </proc/uptime; echo $up)" >> "$T/out"
[ "$1" = exit ] && exit 0
while :; do sleep 1; done
"#;
const CHILD_SH: &str = r#"echo "child $$" >> "$T/pids"
setsid sh "$T/gc.sh" &
wait
"#;
const GC_SH: &str = r#"echo "gc $$" >> "$T/pids"
setsid sh "$T/ggc.sh" &
wait
"#;
const GGC_SH: &str = r#"echo "ggc $$" >> "$T/pids"
exec sleep 1000
"#;

/// `check.sh`: appends "check alive:N UPTIME" to $T/out, N = how many processes listed in
/// $T/pids still run (a zombie counts as gone: it runs no code).
const CHECK_SH: &str = r#"up=$(read up _ </proc/uptime; echo $up)
n=0
while read -r _ p; do
    s=
    { read -r _ _ s _ < "/proc/$p/stat"; } 2>/dev/null
    case "$s" in ""|Z|X) ;; *) n=$((n + 1)) ;; esac
done < "$T/pids"
echo "check alive:$n $up" >> "$T/out"
"#;

fn stubborn_leaves_nothing(mode: &str) {
    let kill_grace = 0.5;
    // The timeout must leave the task time to start its seven processes (and write "ready")
    // before the SIGKILL at timeout + kill_grace, even on a loaded machine.
    let timeout = 2.0;
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
kill_grace = "500ms"

[tasks.stubborn]
command = 'exec sh "$T/stubborn.sh" {mode}'
timeout = "{}"

[tasks.inspect]
command = 'exec sh "$T/check.sh"'
success_cooldown = "1h"
"#,
        if mode == "hang" { "2s" } else { "1h" }
    ));
    fs::write(env.path("stubborn.sh"), STUBBORN_SH).unwrap();
    fs::write(env.path("check.sh"), CHECK_SH).unwrap();
    fs::write(env.path("child.sh"), CHILD_SH).unwrap();
    fs::write(env.path("gc.sh"), GC_SH).unwrap();
    fs::write(env.path("ggc.sh"), GGC_SH).unwrap();
    let mut runner = env.spawn(&["stubborn", "inspect"]);
    let lines = env.wait_lines_while(&mut runner, "out", 2);
    let pids: Vec<(String, i32)> = env
        .lines("pids")
        .iter()
        .map(|l| {
            let (what, pid) = l.split_once(' ').unwrap();
            (what.to_owned(), pid.parse().unwrap())
        })
        .collect();
    assert_eq!(pids.len(), 7, "{pids:?}");
    let alive: Vec<&(String, i32)> = pids.iter().filter(|(_, p)| is_running(*p)).collect();
    assert!(
        lines[1].starts_with("check alive:0 ") && alive.is_empty(),
        "the next task started while processes of the run were still running: {lines:?}; \
         still running now: {alive:?}\nrun-chain's stderr:\n{}",
        runner.stderr()
    );
    // Both ignore SIGTERM, so only SIGKILL ended them, kill_grace after the TERM.
    let runs = env.history("stubborn", &[]);
    let expected = if mode == "hang" { "timeout" } else { "ok" };
    assert_eq!(outcome(&runs[0]), expected, "{runs:#?}");
    if mode == "hang" {
        // The timeout counts from the run's start, not from "ready" (the task's setup may take
        // a while on a loaded machine): compare the starts run-chain recorded for both runs.
        let inspect = env.wait_history("inspect", &[], "inspect's run is recorded", |r| {
            !r.is_empty()
        });
        let gap = time_of(&inspect[0], "start") - time_of(&runs[0], "start");
        let least = timeout + kill_grace;
        assert!(
            gap >= least - 0.05,
            "the next task started {gap:.3}s after the timed-out task did; SIGKILL should have \
             come only after its timeout and kill_grace, {least}s"
        );
    } else {
        // The TERM comes once the task has exited, i.e. after its "ready" stamp.
        let stamps = stamped(&lines);
        let gap = stamps[1].1 - stamps[0].1;
        assert!(
            gap >= kill_grace - 0.1,
            "the next task started {gap:.2}s after the task was ready and exited; SIGKILL \
             should have come only kill_grace ({kill_grace}s) after the TERM"
        );
    }
    let problems = TestEnv::logged_problems(&runner.stderr());
    assert!(
        problems.iter().all(|l| !l.contains("survived")),
        "run-chain gave up on processes of the run: {problems:#?}"
    );
    env.assert_running_on_device(&mut runner, "stubborn_inspect");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    wait_until("nothing of the chain is left running", || {
        env.marked_processes().is_empty()
    });
}

/// The task exits 0, leaving TERM-ignoring children in its group whose own children called
/// setsid (and theirs again) and ignore TERM too: all get SIGKILL after kill_grace; the next
/// task finds none of them.
#[test]
fn a_term_ignoring_leftover_and_its_setsid_grandchild_are_killed_after_kill_grace() {
    let _shared = no_churn();
    stubborn_leaves_nothing("exit");
}

/// The task itself ignores TERM and runs past its timeout; its grandchildren called setsid
/// (and theirs again) and ignore TERM: all are SIGKILLed after kill_grace; nothing survives.
#[test]
fn a_term_ignoring_task_that_times_out_and_its_setsid_grandchild_are_killed() {
    let _shared = no_churn();
    stubborn_leaves_nothing("hang");
}

// ---------------------------------------------------------------------------------------------
// 9. Kicks around the start of a cooldown
// ---------------------------------------------------------------------------------------------

/// A kick sent once `status --json` shows the chain in its 1h cooldown, at a random moment
/// a few milliseconds later, many times (200; 1,000 with RUN_CHAIN_LONG=1), by SIGUSR1 and by
/// `run-chain kick` in turn: every kick ends the cooldown (a run follows each, and only one).
/// The latency from kick to run is reported, not asserted.
#[test]
fn every_kick_at_the_start_of_a_cooldown_is_acted_on() {
    let _shared = no_churn();
    let kicks: u64 = scaled(200, 1000);
    let env = TestEnv::new(&format!(
        r#"
[tasks.a]
command = 'echo "start a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "1h"
fail_cooldown = "1h"
"#
    ));
    let mut rng = Rng::new("every_kick_at_the_start_of_a_cooldown");
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    let pid = runner.pid;
    let mut latencies = Vec::new();
    for k in 1..=kicks {
        // Run k is over and recorded; the chain is in its cooldown.
        let mut last = String::new();
        wait_until_explained(
            DEADLINE,
            &format!("kick {k}: run {k} over, cooling down"),
            || {
                if let Some(status) = runner.try_status() {
                    panic!(
                        "run-chain exited ({status:?}); stderr:\n{}",
                        runner.stderr()
                    );
                }
                let doc = env.try_status_json()?;
                let c = chain_entry(&doc, "a").ok_or("no chain a")?;
                last = format!("{c:#}");
                let ok = c["pid"].as_i64() == Some(pid as i64)
                    && c["now"]["state"] == "cooldown"
                    && task_entry(c, "a").is_some_and(|t| t["last"]["run_id"].as_u64() == Some(k));
                if ok {
                    Ok(())
                } else {
                    Err(last.clone())
                }
            },
        );
        assert_eq!(
            env.lines("out").len() as u64,
            k,
            "a run happened without a kick"
        );
        // A random moment: spin 0-5 ms (not a synchronisation, only jitter).
        let spin = Duration::from_micros(rng.range(0, 5000));
        let t0 = Instant::now();
        while t0.elapsed() < spin {
            std::hint::spin_loop();
        }
        let sent = Instant::now();
        let how = if k % 2 == 0 {
            send_signal(pid, libc::SIGUSR1);
            "SIGUSR1".to_owned()
        } else {
            let kick = env.sub(&["kick", "a"]);
            kick.assert_code(0);
            format!("`run-chain kick`, which said {:?}", kick.stdout.trim())
        };
        let want = k as usize + 1;
        let mut seen_at = None;
        wait_until_explained(
            DEADLINE,
            &format!("kick {k} ({how}) starts run {}", k + 1),
            || {
                if env.lines("out").len() >= want {
                    seen_at.get_or_insert_with(|| sent.elapsed());
                    Ok(())
                } else {
                    let lines = env.lines("out");
                    Err(format!(
                        "last lines: {:?}\nlast status: {last}\nstderr (tail):\n{}",
                        &lines[lines.len().saturating_sub(3)..],
                        tail_lines(&runner.stderr(), 10)
                    ))
                }
            },
        );
        latencies.push(seen_at.unwrap());
    }
    // One run per kick, and no more.
    env.wait_chain_status("a", "the last kicked run is over", |c| {
        c["now"]["state"] == "cooldown"
            && task_entry(c, "a").is_some_and(|t| t["last"]["run_id"].as_u64() == Some(kicks + 1))
    });
    assert_eq!(env.lines("out").len() as u64, kicks + 1);
    env.assert_running_on_device(&mut runner, "a");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "kick-to-run latency over {kicks} kicks (as seen by the test's polling): \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        q(0.5),
        q(0.9),
        q(0.99),
        latencies.last().unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Wall-clock jumps (libfaketime)
// ---------------------------------------------------------------------------------------------

/// The libfaketime preload that Debian's `faketime` wrapper uses (multi-threaded variant),
/// read from the environment the wrapper gives a program. Fails with what to install if
/// `faketime` is missing.
fn faketime_preload() -> String {
    let out = match Command::new("faketime")
        .args(["-m", "-f", "+0", "sh", "-c", "echo \"$LD_PRELOAD\""])
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "this test needs Debian's faketime (libfaketime) and cannot run `faketime`: {e}; \
             install it: apt-get install faketime"
        ),
    };
    let preload = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && preload.contains("faketime"),
        "`faketime -m -f +0 sh -c 'echo $LD_PRELOAD'` did not show libfaketime (exit {:?}, \
         stdout {preload:?}, stderr {}); install it: apt-get install faketime",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    preload
}

/// `run-chain ARGS...` under libfaketime, its wall clock offset by what `clock_file` says
/// (re-read on every call: FAKETIME_NO_CACHE), its monotonic clock untouched.
fn spawn_faked(env: &TestEnv, preload: &str, clock_file: &Path, args: &[&str]) -> Runner {
    let mut cmd = env.run_command(args);
    cmd.env("LD_PRELOAD", preload)
        .env("FAKETIME_TIMESTAMP_FILE", clock_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env_remove("FAKETIME");
    env.spawn_command(cmd)
}

/// The "a N EPOCH UPTIME" lines: (run id, the task's wall clock, the monotonic stamp).
fn clock_lines(env: &TestEnv) -> Vec<(u64, f64, f64)> {
    env.lines("out")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// Asserts that consecutive runs from line `from` on are ~2 s apart by the monotonic clock:
/// never much less (no catch-up burst), never far more (no stall). The stamps are the tasks'
/// own, taken a moment after each start, so a loaded machine may shift one by a little.
fn assert_steady(lines: &[(u64, f64, f64)], from: usize, what: &str) {
    for w in lines[from.max(1) - 1..].windows(2) {
        let gap = w[1].2 - w[0].2;
        assert!(
            gap >= 1.7,
            "{what}: run {} came {gap:.2}s after run {} (cooldown 2s): a catch-up burst\n{lines:?}",
            w[1].0,
            w[0].0
        );
        assert!(
            gap <= 15.0,
            "{what}: run {} came {gap:.2}s after run {} (cooldown 2s): a stall\n{lines:?}",
            w[1].0,
            w[0].0
        );
    }
}

/// The wall clock of run-chain's process jumps a day forward, then two days back, during
/// 2 s cooldowns: runs keep coming every ~2 s by the monotonic clock. Then relaunches whose
/// own clocks are a day ahead and a day behind the running instance's keep the due time.
#[test]
fn wall_clock_jumps_cause_no_catch_up_burst_and_no_stall() {
    let _shared = no_churn();
    let preload = faketime_preload();
    let env = TestEnv::new(&format!(
        r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID $(date +%s) {}" >> "$T/out"'
success_cooldown = "2s"
fail_cooldown = "2s"
"#,
        STAMP
    ));
    let clock = env.path("clock");
    write_atomic(&clock, "+0\n");
    let mut runner = spawn_faked(&env, &preload, &clock, &["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);

    // A day forward, right after a run: in the cooldown.
    write_atomic(&clock, "+1d\n");
    let lines = env.wait_lines_while(&mut runner, "out", 3);
    let real = epoch_now();
    let seen = clock_lines(&env);
    assert!(
        seen[2].1 > real + 80_000.0,
        "the task's wall clock did not jump a day forward (libfaketime not in effect?): {seen:?}"
    );
    assert_steady(&seen, 1, "a day forward");
    // run-chain's own clock jumped too: it recorded run 3 a day ahead. (The task may write its
    // line before run-chain has recorded the run's start: wait for the record.)
    let run3 = env
        .wait_history("a", &["--limit", "100"], "run 3 is recorded", |runs| {
            runs.iter().any(|r| run_id(r) == 3)
        })
        .into_iter()
        .find(|r| run_id(r) == 3)
        .unwrap();
    assert!(
        time_of(&run3, "start") > real + 80_000.0,
        "run-chain's wall clock did not jump a day forward (libfaketime not in effect?): {run3:#}"
    );

    // Two days back (a day behind the real clock), right after a run.
    write_atomic(&clock, "-1d\n");
    env.wait_lines_while(&mut runner, "out", lines.len() + 2);
    let seen = clock_lines(&env);
    assert!(
        seen.last().unwrap().1 < epoch_now() - 80_000.0,
        "the task's wall clock did not jump back: {seen:?}"
    );
    assert_steady(&seen, 1, "a day back");

    // Relaunch across the jump: the new instance's clock is a day ahead of the old one's.
    let ahead = env.path("clock-ahead");
    write_atomic(&ahead, "+1d\n");
    let have = env.lines("out").len();
    let mut next = spawn_faked(&env, &preload, &ahead, &["a"]);
    runner.assert_exit(0);
    env.wait_running(&mut next, "a");
    env.wait_lines_while(&mut next, "out", have + 1);
    assert_steady(&clock_lines(&env), have, "relaunch a day ahead");

    // And a relaunch whose clock is two days behind that one.
    let behind = env.path("clock-behind");
    write_atomic(&behind, "-1d\n");
    let have = env.lines("out").len();
    let mut last = spawn_faked(&env, &preload, &behind, &["a"]);
    next.assert_exit(0);
    env.wait_running(&mut last, "a");
    env.wait_lines_while(&mut last, "out", have + 1);
    assert_steady(&clock_lines(&env), have, "relaunch a day behind");

    last.signal(libc::SIGTERM);
    last.assert_exit(0);
    let ids: Vec<u64> = clock_lines(&env).iter().map(|l| l.0).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "run ids across the jumps and relaunches");
}

// ---------------------------------------------------------------------------------------------
// 19. A pidfile edited to name a bystander
// ---------------------------------------------------------------------------------------------

/// A bystander: a shell in its own process group that records every signal it catches in
/// $T/signalled (TERM, INT, QUIT, HUP, USR1, USR2).
const BYSTANDER_SH: &str = r#"for s in TERM INT QUIT HUP USR1 USR2; do
    trap "echo $s >> \"\$T/signalled\"" $s
done
echo $$ > "$T/bystander.pid"
while :; do sleep 0.1; done
"#;

fn spawn_bystander(env: &TestEnv) -> (Runner, i32) {
    fs::write(env.path("bystander.sh"), BYSTANDER_SH).unwrap();
    let mut cmd = env.command_for("sh");
    cmd.arg(env.path("bystander.sh")).process_group(0);
    let runner = env.spawn_command(cmd);
    let pid = wait_pid_file(&env.path("bystander.pid"));
    assert_eq!(pid, runner.pid);
    (runner, pid)
}

fn assert_untouched(env: &TestEnv, bystander: &mut Runner, when: &str) {
    assert_eq!(
        env.read("signalled"),
        "",
        "{when}: the process named in the edited pidfile was signalled"
    );
    assert!(
        bystander.try_status().is_none() && is_running(bystander.pid),
        "{when}: the process named in the edited pidfile is gone: {:?}",
        bystander.try_status()
    );
    let pending = fs::read_to_string(format!("/proc/{}/status", bystander.pid)).unwrap();
    for key in ["SigPnd:", "ShdPnd:"] {
        let line = pending.lines().find(|l| l.starts_with(key)).unwrap();
        assert!(
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .bytes()
                .all(|b| b == b'0'),
            "{when}: a signal is pending for the bystander: {line}"
        );
    }
}

const ONE_TASK: &str = r#"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"'
success_cooldown = "1h"
stop_grace = "1h"
"#;

/// The pidfile of a running chain is edited to name a bystander (a live process that records
/// any signal it gets): `kick`, `stop`, `stop --now` and a relaunch never signal it; the chain
/// runs on undisturbed, and once its real holder is gone the waiting relaunch takes over.
#[test]
fn a_pidfile_edited_to_name_a_bystander_never_gets_the_bystander_signalled() {
    let _shared = no_churn();
    let env = TestEnv::new(ONE_TASK);
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    let (mut bystander, by) = spawn_bystander(&env);
    let pidfile = env.pidfile("a");
    fs::write(&pidfile, format!("{by}\n")).unwrap();
    let holder = runner.pid;
    wait_until("the chain still holds its lock", || {
        lock_holders_on_device(&pidfile) == vec![holder]
    });

    let kick = env.sub(&["kick", "a"]);
    let stop = env.sub(&["stop", "a"]);
    let stop_now = env.sub(&["stop", "a", "--now"]);
    eprintln!("kick: {kick:?}\nstop: {stop:?}\nstop --now: {stop_now:?}");
    assert_untouched(&env, &mut bystander, "after kick and stop");

    if runner.try_status().is_none() {
        // The chain still runs (stop did not reach it): a relaunch must not signal the
        // bystander either. Wait until it has decided (took over, gave up, or said why it
        // waits).
        let mut next = env.spawn(&["a"]);
        let next_pid = next.pid;
        wait_until(
            "the relaunch takes over, exits, or says why it waits",
            || {
                next.try_status().is_some()
                    || runner.try_status().is_some()
                    || lock_holders(&pidfile) == vec![next_pid]
                    || !TestEnv::logged_problems(&next.stderr()).is_empty()
            },
        );
        assert_untouched(&env, &mut bystander, "after a relaunch");
        if next.try_status().is_none() && runner.try_status().is_none() {
            // It waits for a holder it cannot confirm. The holder, stopped by hand, hands
            // over to it.
            runner.signal(libc::SIGTERM);
            runner.assert_exit(0);
            env.wait_running(&mut next, "a");
        }
        if next.try_status().is_none() {
            env.wait_running(&mut next, "a");
            next.signal(libc::SIGTERM);
            next.assert_exit(0);
        }
    }
    runner.wait_exit();
    assert_untouched(&env, &mut bystander, "at the end");
    assert!(lock_is_free(&pidfile));
}

/// While a chain's lock is held, `status`, `stop` and `kick` do not report it as down or not
/// running on the strength of a pidfile edited to name another process: the lock, not the
/// file's text, decides who is running. (`stop` may stop the verified holder, or refuse with
/// an error; it may not exit 0 saying the chain is not running while it runs.)
#[test]
fn an_edited_pidfile_does_not_make_a_running_chain_look_down() {
    let _shared = no_churn();
    let env = TestEnv::new(ONE_TASK);
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    env.wait_lines_while(&mut runner, "out", 1);
    let (mut bystander, by) = spawn_bystander(&env);
    let pidfile = env.pidfile("a");
    fs::write(&pidfile, format!("{by}\n")).unwrap();

    let doc = env.status_json();
    let c = chain_entry(&doc, "a").unwrap().clone();
    assert_ne!(
        c["pid"].as_i64(),
        Some(by as i64),
        "status names the bystander as the chain's process: {c:#}"
    );
    let kick = env.sub(&["kick", "a"]);
    let stop = env.sub(&["stop", "a"]);
    assert_untouched(&env, &mut bystander, "after status, kick and stop");
    let still_running = runner.try_status().is_none();
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let mut wrong = Vec::new();
    if c["up"] != true {
        wrong.push(format!(
            "status shows the chain down while PID {} holds its lock: {c:#}",
            runner.pid
        ));
    }
    if kick.code() == Some(0) && kick.stdout.contains("not running") {
        wrong.push(format!(
            "kick exited 0 saying {:?} while the chain ran",
            kick.stdout.trim()
        ));
    }
    if stop.code() == Some(0) && still_running {
        wrong.push(format!(
            "stop exited 0 ({:?}) but the chain kept running",
            stop.stdout.trim()
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Other processes on the host take and drop locks all the time (SQLite does, for every
/// chain's store). Threads here do the same on files of their own, so that /proc/locks
/// changes while run-chain reads it.
struct LockChurn {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LockChurn {
    fn start(env: &TestEnv, threads: usize, files: usize) -> LockChurn {
        use std::os::fd::AsRawFd;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let files: Vec<fs::File> = (0..files)
                    .map(|i| fs::File::create(env.path(&format!("churn-{t}-{i}"))).unwrap())
                    .collect();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for f in &files {
                            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                        }
                        for f in &files {
                            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
                        }
                    }
                })
            })
            .collect();
        LockChurn { stop, threads }
    }
}

impl Drop for LockChurn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// While other processes take and drop locks, `status` always shows the running chain up
/// with its PID, and every `run-chain kick` reaches it (each ends a 1h cooldown: one run per
/// kick). The holder is looked up in /proc/locks; a lookup that misses it must not turn into
/// "not running" (exit 0) while the chain runs.
#[test]
fn looking_commands_find_the_running_chain_while_other_processes_churn_locks() {
    let _exclusive = CHURN.write().unwrap_or_else(|e| e.into_inner());
    let kicks: u64 = scaled(100, 500);
    let env = TestEnv::new(&format!(
        r#"
[tasks.a]
command = 'echo "start a $RUN_CHAIN_RUN_ID {STAMP}" >> "$T/out"'
success_cooldown = "1h"
"#
    ));
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    let pid = runner.pid;
    let churn = LockChurn::start(&env, 3, 50);
    let mut misses = Vec::new();
    let mut status_calls = 0;
    let mut status_down = Vec::new();
    let mut tried = 0;
    for k in 1..=kicks {
        tried = k;
        // Every status call must see the chain up; poll until run k is over.
        wait_until_explained(DEADLINE, &format!("run {k} over, cooling down"), || {
            let doc = env.try_status_json()?;
            let c = chain_entry(&doc, "a").ok_or("no chain a")?;
            status_calls += 1;
            if c["up"] != true || c["pid"].as_i64() != Some(pid as i64) {
                status_down.push(format!(
                    "before kick {k}: up {}, pid {}, state {}",
                    c["up"], c["pid"], c["now"]["state"]
                ));
                return Err(format!("{c:#}"));
            }
            let ok = c["now"]["state"] == "cooldown"
                && task_entry(c, "a").is_some_and(|t| t["last"]["run_id"].as_u64() == Some(k));
            if ok {
                Ok(())
            } else {
                Err(format!("{c:#}"))
            }
        });
        let kick = env.sub(&["kick", "a"]);
        kick.assert_code(0);
        let want = k as usize + 1;
        // A kick is acted on within milliseconds; a whole deadline (generous, as the lock churn
        // loads the machine) without the run means it never arrived.
        if !poll_until(DEADLINE, || env.lines("out").len() >= want) {
            misses.push(format!("kick {k}: {:?}", kick.stdout.trim()));
            // Let the test go on: kick again by signal, directly.
            send_signal(pid, libc::SIGUSR1);
            env.wait_lines_while(&mut runner, "out", want);
            if misses.len() >= 3 {
                break; // proof enough; each miss costs a deadline
            }
        }
    }
    drop(churn);
    env.assert_running_on_device(&mut runner, "a");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    assert!(
        misses.is_empty() && status_down.is_empty(),
        "while PID {pid} ran the chain and held its lock:\n\
         {} of {tried} `run-chain kick` never reached it (exit 0): {:#?}\n\
         {} of {status_calls} `status --json` showed it not up or without its pid: {:#?}",
        misses.len(),
        &misses[..misses.len().min(5)],
        status_down.len(),
        &status_down[..status_down.len().min(5)]
    );
}
