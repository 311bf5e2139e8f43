//! Concurrency groups across chains sharing RUN_ROOT, against the real binary: three chains
//! whose tasks share a group of 1 never overlap (from the tasks' own stamps and from the
//! store's intervals), the wait counts as start latency and shows in `status`, a SIGKILLed
//! holder frees its slot at once, and a group of 2 runs two at once and no more.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::time::{Duration, Instant};

/// (start, end) pairs from a file of "start STAMP" / "end STAMP" lines.
fn intervals(lines: &[String]) -> Vec<(f64, f64)> {
    let stamps = stamped(lines);
    let mut out = Vec::new();
    let mut it = stamps.iter();
    while let Some((w, start)) = it.next() {
        assert_eq!(w, "start", "{lines:?}");
        let (w, end) = it
            .next()
            .unwrap_or_else(|| panic!("unfinished run: {lines:?}"));
        assert_eq!(w, "end", "{lines:?}");
        out.push((*start, *end));
    }
    out
}

/// Asserts that no two of the named intervals overlap.
fn assert_disjoint(what: &str, mut all: Vec<(f64, f64, String)>) {
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    for w in all.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "{what}: {} started at {:.3}, {:.0} ms before {} ended at {:.3}\n{all:#?}",
            w[1].2,
            w[1].0,
            (w[0].1 - w[1].0) * 1000.0,
            w[0].2,
            w[0].1
        );
    }
}

#[test]
fn three_chains_sharing_a_group_of_one_never_overlap() {
    let task = |name: &str| {
        format!(
            r#"
[tasks.{name}]
command = 'echo "start {STAMP}" >> "$T/{name}"; sleep 0.3; echo "end {STAMP}" >> "$T/{name}"'
group = "G"
"#
        )
    };
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
[groups.G]
max_running = 1
{}{}{}"#,
        task("g1"),
        task("g2"),
        task("g3")
    ));
    let names = ["g1", "g2", "g3"];
    let mut runners: Vec<Runner> = names.iter().map(|n| env.spawn(&[n])).collect();
    let starts = |name: &str| {
        env.lines(name)
            .iter()
            .filter(|l| l.starts_with("start"))
            .count()
    };
    runners[0].wait_for("each chain ran twice, 9 runs in all", || {
        let counts: Vec<usize> = names.iter().map(|n| starts(n)).collect();
        counts.iter().all(|&c| c >= 2) && counts.iter().sum::<usize>() >= 9
    });
    for (runner, name) in runners.iter_mut().zip(names) {
        env.assert_running_on_device(runner, name);
        runner.signal(libc::SIGTERM);
    }
    for runner in &mut runners {
        runner.assert_exit(0);
    }

    // The tasks' own stamps (monotonic clock).
    let mut own = Vec::new();
    for name in names {
        for (s, e) in intervals(&env.lines(name)) {
            own.push((s, e, name.to_owned()));
        }
    }
    assert_disjoint("the tasks' own stamps", own);

    // The store's intervals.
    let mut recorded = Vec::new();
    let mut max_latency: f64 = 0.0;
    for name in names {
        let runs = env.history(name, &["--limit", "1000"]);
        assert_eq!(
            runs.len(),
            starts(name),
            "{name}: history holds every run: {runs:#?}"
        );
        for run in &runs {
            assert_eq!(outcome(run), "ok", "{run}");
            let (sched, start, stop) = (
                time_of(run, "scheduled"),
                time_of(run, "start"),
                time_of(run, "stop"),
            );
            let latency = run["latency_seconds"].as_f64().unwrap();
            assert!(
                (latency - (start - sched)).abs() < 0.5,
                "latency {latency} is not start - scheduled: {run}"
            );
            max_latency = max_latency.max(latency);
            recorded.push((start, stop, format!("{name} run {}", run_id(run))));
        }
    }
    assert_disjoint("the store's start/stop", recorded);
    assert!(
        max_latency >= 0.2,
        "three chains with zero cooldowns share one slot, yet no run waited for it \
         (max latency {max_latency:.3}s): the wait must count as start latency"
    );
}

#[test]
fn a_waiting_chain_shows_in_status_and_a_sigkilled_holder_frees_its_slot_at_once() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
kill_grace = "200ms"
[groups.G]
max_running = 1
[tasks.hold]
command = 'echo $$ > "$T/hold.pid"; exec sleep 1000'
group = "G"
[tasks.waiter]
command = 'echo "waiter $RUN_CHAIN_RUN_ID" >> "$T/waiter"'
group = "G"
"#,
    );
    let mut holder = env.spawn(&["hold"]);
    wait_pid_file(&env.path("hold.pid"));
    let mut waiter = env.spawn(&["waiter"]);
    env.wait_running(&mut waiter, "waiter");
    let entry = env.wait_chain_status("waiter", "waiter is waiting for group G", |c| {
        c["now"]["state"] == "waiting"
    });
    assert_eq!(entry["up"], true, "{entry:#}");
    assert_eq!(entry["now"]["group"], "G", "{entry:#}");
    let since = time_of(&entry["now"], "since");
    assert!(
        since <= epoch_now() + 0.5 && since > epoch_now() - 60.0,
        "waiting since {}: {entry:#}",
        entry["now"]["since"]
    );
    // hold's task runs (it wrote its PID); its state may be saved a moment after the spawn.
    let hold = env.wait_chain_status("hold", "hold shows its task running", |c| {
        c["now"]["state"] == "running"
    });
    assert_eq!(
        hold["now"]["group"], "G",
        "the running task holds a slot of G: {hold:#}"
    );
    let text = env.sub(&["status"]);
    assert!(
        text.stdout.contains("holding a slot of group G")
            && text.stdout.contains("waiting for group G"),
        "{}",
        text.stdout
    );

    // It keeps waiting while the holder holds (a second, checked all along).
    let seen = Instant::now();
    waiter.wait_for("a second of waiting", || {
        assert!(
            !env.path("waiter").exists(),
            "waiter started while hold held the group's only slot"
        );
        seen.elapsed() >= Duration::from_secs(1)
    });

    holder.signal(libc::SIGKILL);
    holder.wait_exit();
    let killed = Instant::now();
    env.wait_lines_while(&mut waiter, "waiter", 1);
    let took = killed.elapsed();
    // "At once" is milliseconds; the bound is loose on purpose (a loaded machine), far below
    // the holder's task's lifetime (1000 s), which a slot that outlives its holder would take.
    assert!(
        took < Duration::from_secs(20),
        "the waiter started {took:?} after the holder died: a crashed holder must free its slot at once"
    );

    let runs = env.wait_history("waiter", &[], "waiter's run 1 is recorded", |r| {
        r.len() == 1 && outcome(&r[0]) == "ok"
    });
    let latency = runs[0]["latency_seconds"].as_f64().unwrap();
    assert!(
        latency >= 1.0,
        "waiter waited over a second for the slot, but its recorded latency is {latency}s"
    );
    let doc = env.status_json();
    let hold = chain_entry(&doc, "hold").unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(hold["up"], false, "{hold:#}");
    assert_eq!(hold["now"]["state"], "down", "{hold:#}");
    env.assert_running_on_device(&mut waiter, "waiter");
}

#[test]
fn a_group_of_two_runs_two_at_once_and_no_more() {
    let task = |name: &str| {
        format!(
            r#"
[tasks.{name}]
command = 'echo "start {name}" >> "$T/events"; while [ ! -e "$T/go" ]; do sleep 0.02; done; echo "end {name}" >> "$T/events"'
group = "G"
"#
        )
    };
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
[groups.G]
max_running = 2
{}{}{}"#,
        task("t1"),
        task("t2"),
        task("t3")
    ));
    let names = ["t1", "t2", "t3"];
    let mut runners: Vec<Runner> = names.iter().map(|n| env.spawn(&[n])).collect();
    let started = |env: &TestEnv| -> Vec<String> {
        env.lines("events")
            .iter()
            .filter_map(|l| l.strip_prefix("start ").map(str::to_owned))
            .collect()
    };
    runners[0].wait_for("two tasks started", || started(&env).len() >= 2);
    let first_two = started(&env);
    let third = *names
        .iter()
        .find(|n| !first_two.iter().any(|s| s == *n))
        .unwrap_or_else(|| panic!("all three started: {first_two:?}"));
    let entry = env.wait_chain_status(third, "the third chain waits for group G", |c| {
        c["now"]["state"] == "waiting"
    });
    assert_eq!(entry["now"]["group"], "G", "{entry:#}");
    assert_eq!(
        started(&env),
        first_two,
        "a third run started in a group of 2"
    );

    fs::write(env.path("go"), "").unwrap();
    env.wait_lines("events", 6);
    let mut running = 0;
    let mut max = 0;
    let events = env.lines("events");
    for e in &events {
        if e.starts_with("start") {
            running += 1;
        } else {
            running -= 1;
        }
        max = max.max(running);
    }
    assert_eq!(max, 2, "at most and at least 2 at once: {events:#?}");
    assert_eq!(
        events[..2]
            .iter()
            .filter(|e| e.starts_with("start"))
            .count(),
        2
    );
    let third_start = events
        .iter()
        .position(|e| *e == format!("start {third}"))
        .unwrap();
    assert!(
        events[..third_start].iter().any(|e| e.starts_with("end")),
        "{third} started before any run of the group ended: {events:#?}"
    );
    // The third task may have written both its lines before run-chain recorded its start.
    let runs: Vec<Value> = env.wait_history(third, &[], "the third chain's run is recorded", |r| {
        !r.is_empty()
    });
    assert_eq!(runs.len(), 1, "{runs:#?}");
    for (runner, name) in runners.iter_mut().zip(names) {
        env.assert_running_on_device(runner, name);
    }
}
