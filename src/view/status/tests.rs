//! The status view from a chain's state and aggregates, and its renderings, with a fake clock.

use super::*;
use crate::core::resume::{State, TaskFailures};

const NOW: u64 = 1_764_039_481_000; // 2025-11-25 02:58:01 UTC

fn series(task: &str) -> SeriesRow {
    SeriesRow {
        chain: "nightly".into(),
        task: task.into(),
        ..SeriesRow::default()
    }
}

fn state(tasks: &[&str]) -> State {
    State {
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        next_task: Some(tasks[0].to_string()),
        ..State::default()
    }
}

fn view(chains: Vec<ChainView>) -> StatusView {
    StatusView {
        chains,
        run_root: "/abs/rr".into(),
        run_root_given: "rr".into(),
    }
}

/// A chain with a history: ok, failed, killed by a signal, and a task the store knows but
/// the state no longer lists.
fn busy_chain() -> ChainView {
    let mut st = state(&["fetch", "load"]);
    st.running_task = Some("load".into());
    st.running_run_id = Some(12);
    st.running_since_ms = Some(NOW - 192_000);
    st.running_group = Some("db".into());
    st.failures.insert(
        "load".into(),
        TaskFailures {
            streak_start_ms: Some(NOW - 7_500_000),
            failures: 3,
            last_success_ms: Some(NOW - 86_400_000 * 3 - 3_600_000 * 4),
        },
    );
    let mut fetch = series("fetch");
    fetch.runs = 40;
    fetch.ok = 40;
    fetch.last_run_id = Some(40);
    fetch.last_outcome = Some("ok".into());
    fetch.last_exit_code = Some(0);
    fetch.last_start_ms = Some(NOW - 43_000);
    fetch.last_stop_ms = Some(NOW - 42_000);
    fetch.last_duration_ms = Some(1_000);
    fetch.last_success_ms = Some(NOW - 42_000);
    let mut load = series("load");
    load.runs = 11;
    load.ok = 5;
    load.failed = 2;
    load.signal = 1;
    load.interrupted = 3;
    load.last_run_id = Some(11);
    load.last_outcome = Some("signal".into());
    load.last_exit_code = Some(128 + 15);
    load.last_start_ms = Some(NOW - 7_300_000);
    load.last_stop_ms = Some(NOW - 7_200_000);
    load.last_duration_ms = Some(100_000);
    let mut old = series("old");
    old.runs = 1;
    old.failed = 1;
    old.last_run_id = Some(1);
    old.last_outcome = Some("failed".into());
    old.last_exit_code = Some(3);
    old.last_stop_ms = Some(NOW - 500);
    old.streak_start_ms = Some(NOW - 500);
    old.streak_failures = 1;
    chain_view("nightly", Some(4242), &st, false, &[&fetch, &load, &old])
}

#[test]
fn what_a_chain_does_now() {
    let mut st = state(&["a", "b"]);
    let now = |holder, st: &State, another| chain_view("c", holder, st, another, &[]).now;
    assert_eq!(now(None, &st, false), NowView::only(NowState::Down));
    st.due_wall_ms = Some(NOW + 60_000);
    st.next_task = Some("b".into());
    let cooling = now(Some(7), &st, false);
    assert_eq!(cooling.state, NowState::Cooldown);
    assert_eq!(cooling.task.as_deref(), Some("b"));
    assert_eq!(cooling.until, Some(Wall(NOW + 60_000)));
    // The holder has not written its own state yet: starting, whatever the state says.
    assert_eq!(now(Some(7), &st, true), NowView::only(NowState::Starting));
    let fresh = State::default();
    assert_eq!(
        now(Some(7), &fresh, false),
        NowView::only(NowState::Starting)
    );
    st.waiting_group = Some("db".into());
    st.waiting_since_ms = Some(NOW - 4_000);
    let waiting = now(Some(7), &st, false);
    assert_eq!(
        (waiting.state, waiting.group.as_deref(), waiting.since),
        (NowState::Waiting, Some("db"), Some(Wall(NOW - 4_000)))
    );
    st.running_task = Some("b".into());
    st.running_run_id = Some(3);
    let running = now(Some(7), &st, false);
    assert_eq!(
        (running.state, running.task.as_deref(), running.run_id),
        (NowState::Running, Some("b"), Some(3))
    );
    // A chain that is down shows no task of its (stale) state.
    assert_eq!(now(None, &st, false), NowView::only(NowState::Down));
}

#[test]
fn the_text_of_a_status() {
    let mut cooling = state(&["a"]);
    cooling.due_wall_ms = Some(NOW + 898_000);
    let mut due = state(&["a"]);
    due.due_wall_ms = Some(NOW - 1);
    let mut waiting = state(&["a"]);
    waiting.waiting_group = Some("db".into());
    waiting.waiting_since_ms = Some(NOW - 4_000);
    let v = view(vec![
        busy_chain(),
        chain_view("cooling", Some(1), &cooling, false, &[]),
        chain_view("due", Some(2), &due, false, &[]),
        chain_view("waiting", Some(3), &waiting, false, &[]),
        chain_view("starting", Some(4), &State::default(), false, &[]),
        chain_view("gone", None, &due, false, &[]),
    ]);
    let want = "\
nightly: pid 4242 running load (run 12) for 3m 12s, holding a slot of group db
  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK
  fetch                         40       0  ok 42s ago                   42s ago              -
  load                          11       3  signal (SIGTERM) 2h ago      3d 4h ago            3 failures since 2025-11-25 00:53:01
  old                            1       1  failed (3) just now          -                    1 failure since 2025-11-25 02:58:00
cooling: pid 1 cooling down; a in 14m 58s
  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK
  a                              0       0  -                            -                    -
due: pid 2 a due now
  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK
  a                              0       0  -                            -                    -
waiting: pid 3 a waiting for group db for 4.0s
  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK
  a                              0       0  -                            -                    -
starting: pid 4 starting
  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK
gone: down
  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK
  a                              0       0  -                            -                    -
";
    assert_eq!(text(&v, Wall(NOW)), want);
    // The same view a minute later: only the times relative to now move.
    let later = text(&v, Wall(NOW + 60_000));
    assert!(
        later.starts_with("nightly: pid 4242 running load (run 12) for 4m 12s,"),
        "{later}"
    );
    assert!(later.contains("  fetch                         40       0  ok 1m 42s ago "));
    assert!(later.contains("cooling: pid 1 cooling down; a in 13m 58s\n"));
}

#[test]
fn the_text_of_no_chains_names_run_root_as_given() {
    assert_eq!(text(&view(vec![]), Wall(NOW)), "no chains in rr\n");
}

#[test]
fn a_last_run_without_outcome_code_or_stop() {
    let l = LastView {
        duration_seconds: None,
        exit_code: None,
        outcome: None,
        run_id: 1,
        start: None,
        stop: None,
    };
    assert_eq!(last_text(&l, Wall(NOW)), "? ");
    let l = LastView {
        exit_code: Some(0),
        outcome: Some("ok".into()),
        stop: Some(Wall(NOW - 3_600_000)),
        ..l
    };
    assert_eq!(last_text(&l, Wall(NOW)), "ok 1h ago");
    let l = LastView {
        exit_code: Some(124),
        outcome: Some("signal".into()),
        ..l
    };
    assert_eq!(last_text(&l, Wall(NOW)), "signal (124) 1h ago");
}

/// Every key, always, in the order `status --json` has always printed them.
#[test]
fn the_json_of_a_status() {
    let mut v = view(vec![busy_chain()]);
    v.chains[0].tasks.truncate(2);
    let want = r#"{
  "chains": [
    {
      "chain": "nightly",
      "now": {
        "group": "db",
        "run_id": 12,
        "since": "2025-11-25T02:54:49.000Z",
        "state": "running",
        "task": "load",
        "until": null
      },
      "pid": 4242,
      "queued": null,
      "tasks": [
        {
          "failures": 0,
          "interrupted": 0,
          "last": {
            "duration_seconds": 1.0,
            "exit_code": 0,
            "outcome": "ok",
            "run_id": 40,
            "start": "2025-11-25T02:57:18.000Z",
            "stop": "2025-11-25T02:57:19.000Z"
          },
          "last_success": "2025-11-25T02:57:19.000Z",
          "ok": 40,
          "runs": 40,
          "streak": null,
          "task": "fetch"
        },
        {
          "failures": 3,
          "interrupted": 3,
          "last": {
            "duration_seconds": 100.0,
            "exit_code": 143,
            "outcome": "signal",
            "run_id": 11,
            "start": "2025-11-25T00:56:21.000Z",
            "stop": "2025-11-25T00:58:01.000Z"
          },
          "last_success": "2025-11-21T22:58:01.000Z",
          "ok": 5,
          "runs": 11,
          "streak": {
            "failures": 3,
            "since": "2025-11-25T00:53:01.000Z"
          },
          "task": "load"
        }
      ],
      "up": true
    }
  ],
  "run_root": "/abs/rr"
}
"#;
    assert_eq!(json(&v), want);
    let down = chain_view("gone", None, &State::default(), false, &[]);
    let j = json(&view(vec![down]));
    assert!(
        j.contains(
            r#""now": {
        "group": null,
        "run_id": null,
        "since": null,
        "state": "down",
        "task": null,
        "until": null
      },
      "pid": null,
      "queued": null,
      "tasks": [],
      "up": false"#
        ),
        "{j}"
    );
    assert_eq!(
        json(&view(vec![])),
        "{\n  \"chains\": [],\n  \"run_root\": \"/abs/rr\"\n}\n"
    );
}

/// A run-now request waiting in CHAIN.state shows under the chain, in the JSON and the text,
/// whether the chain is up (it runs next) or down (it runs first when the chain starts).
#[test]
fn a_pending_run_now_shows_as_queued() {
    let mut st = state(&["fetch", "load"]);
    st.due_wall_ms = Some(NOW + 60_000);
    st.run_now = Some(crate::core::resume::RunNowRequest {
        task: "load".into(),
        run_id: 7,
        requested_by: "alice on pts/3".into(),
    });
    let up = chain_view("nightly", Some(4242), &st, false, &[]);
    let q = up.queued.clone().expect("queued");
    assert_eq!((q.task.as_str(), q.run_id), ("load", 7));
    let t = text(&view(vec![up.clone()]), Wall(NOW));
    assert!(
        t.contains("nightly: pid 4242 cooling down; fetch in 1m\n  queued: load (run 7), asked by alice on pts/3 with run-now\n"),
        "{t}"
    );
    let j = json(&view(vec![up]));
    assert!(
        j.contains(
            r#""queued": {
        "requested_by": "alice on pts/3",
        "run_id": 7,
        "task": "load"
      },"#
        ),
        "{j}"
    );
    let down = chain_view("nightly", None, &st, false, &[]);
    assert!(down.queued.is_some());
    st.run_now = None;
    assert!(chain_view("nightly", Some(1), &st, false, &[])
        .queued
        .is_none());
}

fn lease(chain: &str, host: Option<&str>, held: bool, standbys: &[&str]) -> LeaseRow {
    LeaseRow {
        chain: chain.into(),
        host: host.map(str::to_string),
        epoch: 7,
        expires_ms: Some(NOW + 1_500),
        held,
        failovers: Some(2),
        fenced_writes: Some(0),
        standbys: standbys
            .iter()
            .map(|h| crate::store::pg::reader::StandbyRow {
                host: h.to_string(),
                seen_ms: NOW - 300,
            })
            .collect(),
        state: None,
    }
}

#[test]
fn the_fleet_is_merged_into_a_run_roots_status() {
    // This host runs `local` as a standby (h1 owns it); `remote` runs on h2 only, its state
    // in the fleet's store; `free` is held by nobody.
    let mut local = busy_chain();
    local.chain = "local".into();
    local.fleet = Some(FleetView {
        epoch: Some(6),
        error: None,
        expires: None,
        failovers: None,
        fenced_writes: None,
        host: Some("old".into()),
        role: "standby".into(),
        standbys: Vec::new(),
    });
    let mut v = view(vec![local]);
    let mut rows = FleetRows::default();
    rows.chains
        .insert("local".into(), lease("local", Some("h1"), true, &["h3"]));
    let mut remote = lease("remote", Some("h2"), true, &[]);
    let mut st = state(&["fetch"]);
    st.running_task = Some("fetch".into());
    st.running_run_id = Some(4);
    st.running_since_ms = Some(NOW - 1_000);
    remote.state = serde_json::to_string(&st).ok();
    rows.chains.insert("remote".into(), remote);
    rows.chains
        .insert("free".into(), lease("free", Some("h9"), false, &[]));
    let mut s = series("fetch");
    s.chain = "remote".into();
    s.runs = 3;
    merge_fleet(&mut v, &rows, &[s]);

    let names: Vec<&str> = v.chains.iter().map(|c| c.chain.as_str()).collect();
    assert_eq!(names, ["free", "local", "remote"]);
    let f = v.chains[1].fleet.as_ref().expect("fleet");
    // The lease row's facts replace the instance's; its role stays.
    assert_eq!(
        (f.host.as_deref(), f.epoch, f.role.as_str()),
        (Some("h1"), Some(7), "standby")
    );
    assert_eq!(f.expires, Some(Wall(NOW + 1_500)));
    assert_eq!(f.failovers, Some(2));
    assert_eq!(
        f.standbys,
        [StandbyView {
            host: "h3".into(),
            seen: Wall(NOW - 300)
        }]
    );
    assert!(v.chains[1].up, "local facts kept");

    let r = &v.chains[2];
    assert_eq!((r.up, r.pid), (false, None));
    assert_eq!(r.now.state, NowState::Running);
    assert_eq!(r.now.run_id, Some(4));
    assert_eq!(r.tasks[0].runs, 3);
    assert_eq!(r.fleet.as_ref().map(|f| f.role.as_str()), Some("none"));

    // An expired lease: nobody owns it, the chain is down.
    let free = &v.chains[0];
    assert_eq!(free.now.state, NowState::Down);
    let f = free.fleet.as_ref().expect("fleet");
    assert_eq!((f.host.as_deref(), f.epoch, f.expires), (None, None, None));

    let t = text(&v, Wall(NOW));
    assert!(
        t.contains("remote: running fetch (run 4) for 1.0s\n  fleet: runs on host h2 (epoch 7); no instance here; lease expires in 1.5s; 2 failovers\n"),
        "{t}"
    );
    assert!(
        t.contains("  fleet: standby; the chain runs on host h1 (epoch 7); lease expires in 1.5s; standbys: h3; 2 failovers\n"),
        "{t}"
    );
    assert!(
        t.contains("free: down\n  fleet: no host holds the lease; no instance here; 2 failovers\n"),
        "{t}"
    );
}

#[test]
fn a_remote_chain_without_a_state_runs_elsewhere() {
    let mut v = view(Vec::new());
    let mut rows = FleetRows::default();
    rows.chains
        .insert("x".into(), lease("x", Some("h2"), true, &[]));
    merge_fleet(&mut v, &rows, &[]);
    assert_eq!(v.chains[0].now.state, NowState::Elsewhere);
    assert!(json(&v).contains("\"state\": \"elsewhere\""));
}

#[test]
fn many_chains_are_read_in_parallel_parts_and_kept_in_name_order() {
    use crate::lock::pidfile::PidFile;
    let dir = tempfile::tempdir().expect("tempdir");
    // 100 chains (parts of LOCAL_PER_THREAD): every third locked and its PID written.
    let me = std::process::id() as i32;
    let mut held = Vec::new();
    for i in 0..100 {
        let mut pf = PidFile::open(dir.path(), &format!("c{i:03}")).expect("open");
        if i % 3 == 0 {
            assert!(pf.try_lock().expect("lock"));
            pf.write_pid().expect("write");
        }
        held.push(pf);
    }
    let all = local_facts(dir.path()).expect("local facts");
    let names: Vec<String> = (0..100).map(|i| format!("c{i:03}")).collect();
    let one = facts_of(dir.path(), &names);
    assert_eq!(
        all.iter().map(|l| (&l.chain, l.holder)).collect::<Vec<_>>(),
        one.iter().map(|l| (&l.chain, l.holder)).collect::<Vec<_>>()
    );
    assert_eq!(all.len(), 100);
    for (i, l) in all.iter().enumerate() {
        assert_eq!(l.chain, format!("c{i:03}"));
        assert_eq!(l.holder, (i % 3 == 0).then_some(me), "{}", l.chain);
    }
}
