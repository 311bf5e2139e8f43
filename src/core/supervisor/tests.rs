//! Unit tests of the parent module, with a fake clock.
use super::*;
use crate::config::{Program, Timing};
use crate::core::alert::Kind;
use crate::core::chain::Resume;
use crate::core::outcome::Exit;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Saturday 5 December 2026, 00:00 UTC.
const SATURDAY_MS: u64 = 1_796_428_800_000;

fn task(name: &str, command: &str) -> Task {
    Task {
        name: name.to_string(),
        program: Program::Shell(command.to_string()),
        cwd: ".".into(),
        env: Default::default(),
        nice: None,
        group: None,
        timing: Timing {
            success_cooldown: 10 * MIN,
            fail_cooldown: 10 * MIN,
            timeout: None,
            stop_grace: Duration::from_secs(5),
            kill_grace: Duration::from_secs(2),
        },
        non_recoverable_downtime: HOUR,
        keep_runs_for: 24 * HOUR,
        keep_runs_max: 100,
        keep_output: 4096,
    }
}

fn supervisor(tasks: Vec<Task>, mode: Mode, base: State, resume: Resume) -> Supervisor {
    let chain = Chain::new(chain_tasks(&tasks), mode, resume);
    Supervisor::new("c".into(), "host".into(), tasks, 10, mode, chain, base)
}

/// The fake clock: both clocks move together.
fn at(mono: Duration) -> Now {
    Now {
        mono,
        wall: Duration::from_millis(SATURDAY_MS) + mono,
    }
}

#[derive(Default)]
struct Output {
    line: Option<String>,
    bytes: Vec<u8>,
}

impl RunOutput for Output {
    fn last_line(&self) -> Option<String> {
        self.line.clone()
    }
    fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    fn total(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn cut(&self) -> bool {
        false
    }
}

fn feed(s: &mut Supervisor, now: Now, ev: Event, out: &Output) -> Vec<Effect> {
    let fx = s.on(now, ev, out);
    // What a driver does with the buffer: the next event reuses it.
    let copy = fx.iter().map(clone_effect).collect();
    s.recycle(fx);
    copy
}

fn clone_effect(e: &Effect) -> Effect {
    match e {
        Effect::Spawn {
            index,
            task,
            run_id,
        } => Effect::Spawn {
            index: *index,
            task: task.clone(),
            run_id: *run_id,
        },
        Effect::Signal(s) => Effect::Signal(*s),
        Effect::RunEnded(r) => Effect::RunEnded(Box::new(RunEnded {
            f: r.f.clone(),
            scheduled_ms: r.scheduled_ms,
            start_ms: r.start_ms,
            stop_ms: r.stop_ms,
            duration: r.duration,
            streak: r.streak,
            alert: r.alert.clone(),
            trigger: r.trigger,
            requested_by: r.requested_by.clone(),
        })),
        Effect::Alert(a) => Effect::Alert(a.clone()),
        Effect::SaveState => Effect::SaveState,
        Effect::Log(l, m) => Effect::Log(*l, m.clone()),
        Effect::RunNow(a, q) => Effect::RunNow(a.clone(), q.clone()),
        Effect::Exit(r) => Effect::Exit(*r),
    }
}

fn chain_ev(e: chain::Event) -> Event {
    Event::Chain(e)
}

/// One run from its spawn to its end, `took` long; returns the effects of its end.
fn one_run(
    s: &mut Supervisor,
    now: &mut Duration,
    took: Duration,
    exit: i32,
    out: &Output,
) -> Vec<Effect> {
    let fx = feed(s, at(*now), chain_ev(chain::Event::Tick), out);
    let Some(Effect::Spawn { index, run_id, .. }) = fx.first() else {
        panic!("no spawn: {fx:?}");
    };
    let (cur, task) = s.begin_run(at(*now), *index, *run_id);
    assert_eq!(task.name, cur.task);
    let cur = cur.clone();
    assert_eq!(cur.start_ms, at(*now).wall_ms());
    assert!(feed(s, at(*now), chain_ev(chain::Event::Spawned), out).is_empty());
    *now += took;
    let exited = chain_ev(chain::Event::LeaderExited(Exit::Code(exit)));
    let _ = feed(s, at(*now), exited, out);
    feed(s, at(*now), chain_ev(chain::Event::GroupEmpty), out)
}

fn ended(fx: &[Effect]) -> &RunEnded {
    fx.iter()
        .find_map(|e| match e {
            Effect::RunEnded(r) => Some(&**r),
            _ => None,
        })
        .expect("a run ended")
}

#[test]
fn a_weekend_of_failures_mails_once_then_hourly_then_the_recovery() {
    let failing = Output {
        line: Some("job 17 failed".into()),
        bytes: b"working\njob 17 failed\n".to_vec(),
    };
    let mut now = HOUR;
    // The first run is due at the start of the hour.
    let mut s = supervisor(
        vec![task("job", "./job")],
        Mode::Forever,
        State::default(),
        Resume {
            due: Some(now),
            ..Resume::default()
        },
    );
    let _ = feed(
        &mut s,
        at(now - MIN),
        chain_ev(chain::Event::Start),
        &failing,
    );
    let streak_start = now + Duration::from_secs(1);
    let mut kinds = Vec::new();
    let mut runs = 0u64;
    let mut last_failed_id = 0;
    while now < HOUR + 48 * HOUR {
        // The driver's wait: whichever comes first, the chain's or a downtime alert.
        let chain_at = s.chain().next_deadline().expect("a cooldown");
        match s.alert_deadline(at(now)) {
            Some(a) if a < chain_at => {
                now = a;
                for e in feed(&mut s, at(now), Event::AlertTick, &failing) {
                    match e {
                        Effect::Alert(due) => {
                            assert!(due.between_runs);
                            // This instance saw the run: no store read.
                            let view = due.seen().expect("seen");
                            assert_eq!(view.output, failing.bytes);
                            kinds.push((now, due.decision.kind));
                        }
                        Effect::SaveState => {}
                        other => panic!("{other:?}"),
                    }
                }
                continue;
            }
            _ => now = chain_at,
        }
        let fx = one_run(&mut s, &mut now, Duration::from_secs(1), 1, &failing);
        runs += 1;
        let r = ended(&fx);
        last_failed_id = r.f.run_id;
        assert_eq!(r.streak, Some((at(streak_start).wall_ms(), runs)));
        assert_eq!(fx.last(), Some(&Effect::SaveState));
        if let Some(a) = &r.alert {
            kinds.push((now, a.decision.kind));
        }
    }
    // Every 10 minutes and a second, for 48 hours.
    assert_eq!(runs, 48 * 3600 / 601 + 1);
    assert_eq!(kinds[0], (streak_start, Kind::FirstFailure));
    let downtime: Vec<_> = kinds[1..].iter().collect();
    // One per hour of the streak, the 48th when the weekend is over.
    assert_eq!(downtime.len(), 48, "{kinds:?}");
    for (k, (when, kind)) in downtime.iter().enumerate() {
        assert_eq!(*kind, Kind::Downtime);
        // On the hour of the streak, to the millisecond: no drift over a weekend.
        assert_eq!(*when, streak_start + (k as u32 + 1) * HOUR);
    }
    // Monday: the job works again.
    let ok = Output {
        line: Some("done".into()),
        bytes: b"done\n".to_vec(),
    };
    now = s.chain().next_deadline().expect("due");
    let fx = one_run(&mut s, &mut now, Duration::from_secs(2), 0, &ok);
    let r = ended(&fx);
    assert_eq!(r.streak, None);
    let due = r.alert.clone().expect("a recovery mail");
    assert_eq!(due.decision.kind, Kind::Recovered);
    assert!(!due.between_runs);
    assert_eq!(s.alert_deadline(at(now)), None);
    // The mail shows the streak's last failed run, though the streak is over.
    let mail = s.alert_mail(at(now), &due, due.seen().expect("seen"), &|ms| {
        format!("@{ms}")
    });
    assert_eq!(mail.kind, "recovered");
    assert_eq!(mail.chain, "c");
    assert_eq!(mail.task, "job");
    assert_eq!(mail.host, "host");
    assert_eq!(mail.command, "./job");
    assert_eq!(mail.run_id, Some(last_failed_id));
    assert_eq!(mail.last_line, "job 17 failed");
    assert_eq!(mail.output, failing.bytes);
    assert_eq!(mail.output_bytes, failing.bytes.len() as u64);
    assert_eq!(mail.duration, "1.0s");
    assert_eq!(mail.failures, runs);
    assert_eq!(mail.streak_start, rfc3339(at(streak_start).wall_ms()));
    assert_eq!(
        mail.streak_ms,
        at(now).wall_ms() - at(streak_start).wall_ms()
    );
    assert!(
        mail.streak_length.starts_with("2days"),
        "{}",
        mail.streak_length
    );
    assert_eq!(mail.at_ms, at(now).wall_ms());
    let by = mail.recovered_by.expect("recovered_by");
    assert!(
        by.starts_with(&format!("run {} succeeded, started ", r.f.run_id)),
        "{by}"
    );
    assert!(by.ends_with("took 2.0s"), "{by}");
    // The next attempt, shown with the (fake) local time: after the success cooldown.
    assert!(
        mail.next_attempt
            .contains(&format!("@{}", at(now + 10 * MIN).wall_ms())),
        "{}",
        mail.next_attempt
    );
    // And nothing of the streak is kept.
    assert!(s.alerts["job"].last_failed.is_none());
}

#[test]
fn ctrl_c_twice_stops_then_stops_the_running_task_at_once() {
    let mut s = supervisor(
        vec![task("job", "./job")],
        Mode::Forever,
        State::default(),
        Resume::default(),
    );
    let out = Output::default();
    let now = at(HOUR);
    let fx = feed(&mut s, now, chain_ev(chain::Event::Start), &out);
    assert!(matches!(fx.as_slice(), [Effect::Spawn { .. }]));
    let _ = feed(&mut s, now, chain_ev(chain::Event::Spawned), &out);
    let fx = feed(&mut s, at(HOUR + MIN), Event::Signal(Signal::Int), &out);
    assert_eq!(
        fx,
        vec![Effect::Log(
            log::Level::Info,
            "c: SIGINT: stopping (a second SIGINT stops the running task at once)".into()
        )]
    );
    // The task has its stop_grace.
    assert_eq!(
        s.chain().next_deadline(),
        Some(HOUR + MIN + Duration::from_secs(5))
    );
    let fx = feed(&mut s, at(HOUR + MIN), Event::Signal(Signal::Int), &out);
    assert_eq!(
        fx,
        vec![
            Effect::Log(
                log::Level::Info,
                "c: SIGINT again: stopping the running task now".into()
            ),
            Effect::Signal(GroupSignal::Term),
        ]
    );
    // The run is interrupted: no failure, no alert; then the chain exits.
    let _ = feed(
        &mut s,
        at(HOUR + MIN),
        chain_ev(chain::Event::LeaderExited(Exit::Signal(15))),
        &out,
    );
    let fx = feed(
        &mut s,
        at(HOUR + MIN),
        chain_ev(chain::Event::GroupEmpty),
        &out,
    );
    let r = ended(&fx);
    assert_eq!(r.f.outcome, Outcome::Interrupted);
    assert!(r.alert.is_none());
    assert_eq!(fx.last(), Some(&Effect::Exit(ExitReason::Done)));
    assert_eq!(ExitReason::Done.code(), crate::error::exit::OK);
}

#[test]
fn sigusr1_says_whether_a_cooldown_ends() {
    let mut s = supervisor(
        vec![task("job", "./job")],
        Mode::Forever,
        State::default(),
        Resume {
            due: Some(HOUR),
            ..Resume::default()
        },
    );
    let out = Output::default();
    let _ = feed(&mut s, at(MIN), chain_ev(chain::Event::Start), &out);
    let fx = feed(&mut s, at(2 * MIN), Event::Signal(Signal::Usr1), &out);
    assert_eq!(
        fx[0],
        Effect::Log(log::Level::Info, "c: SIGUSR1: ending the cooldown".into())
    );
    assert!(matches!(fx[1], Effect::Spawn { .. }));
    let _ = feed(&mut s, at(2 * MIN), chain_ev(chain::Event::Spawned), &out);
    let fx = feed(&mut s, at(3 * MIN), Event::Signal(Signal::Usr1), &out);
    assert_eq!(
        fx,
        vec![Effect::Log(
            log::Level::Info,
            "c: SIGUSR1: not in a cooldown; nothing to end".into()
        )]
    );
}

#[test]
fn once_records_its_runs_but_keeps_the_position_and_fails_with_a_failed_task() {
    let base = State {
        version: resume::STATE_VERSION,
        tasks: vec!["a".into(), "b".into()],
        next_task: Some("b".into()),
        due_mono_ns: Some(7),
        due_wall_ms: Some(SATURDAY_MS + 5),
        run_ids: [("a".to_string(), 5), ("z".to_string(), 9)].into(),
        ..State::default()
    };
    let resume = Resume {
        run_ids: base.run_ids.clone(),
        ..Resume::default()
    };
    let mut s = supervisor(
        vec![task("a", "./a"), task("b", "./b")],
        Mode::Once,
        base,
        resume,
    );
    let out = Output {
        line: Some("boom".into()),
        bytes: b"boom\n".to_vec(),
    };
    let mut now = HOUR;
    let fx = feed(&mut s, at(now), chain_ev(chain::Event::Start), &out);
    let Some(Effect::Spawn {
        index: 0, run_id, ..
    }) = fx.first()
    else {
        panic!("{fx:?}");
    };
    assert_eq!(*run_id, 6);
    let _ = s.begin_run(at(now), 0, 6);
    // While a runs, the state names it.
    let st = s.once_state(Some(("a", 6, 1)), None, &Extras::default());
    assert_eq!(
        (st.running_task.as_deref(), st.running_run_id),
        (Some("a"), Some(6))
    );
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::Spawned), &out);
    now += MIN;
    let _ = feed(
        &mut s,
        at(now),
        chain_ev(chain::Event::LeaderExited(Exit::Code(2))),
        &out,
    );
    let fx = feed(&mut s, at(now), chain_ev(chain::Event::GroupEmpty), &out);
    assert_eq!(ended(&fx).f.outcome, Outcome::Failed(2));
    // --once goes on to b after a's fail_cooldown; b succeeds.
    now = s.chain().next_deadline().expect("a cooldown");
    assert_eq!(now, HOUR + MIN + 10 * MIN);
    let fx = feed(&mut s, at(now), chain_ev(chain::Event::Tick), &out);
    let Some(Effect::Spawn { index: 1, .. }) = fx.first() else {
        panic!("{fx:?}");
    };
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::Spawned), &out);
    now += MIN;
    let _ = feed(
        &mut s,
        at(now),
        chain_ev(chain::Event::LeaderExited(Exit::Code(0))),
        &out,
    );
    let fx = feed(&mut s, at(now), chain_ev(chain::Event::GroupEmpty), &out);
    assert_eq!(fx.last(), Some(&Effect::Exit(ExitReason::OnceFailed)));
    assert_eq!(
        ExitReason::OnceFailed.code(),
        crate::error::exit::ONCE_FAILED
    );
    let x = Extras {
        guardian_pid: Some(42),
        ..Extras::default()
    };
    let st = s.once_state(None, None, &x);
    // The position is the loaded one...
    assert_eq!(st.next_task.as_deref(), Some("b"));
    assert_eq!(
        (st.due_mono_ns, st.due_wall_ms),
        (Some(7), Some(SATURDAY_MS + 5))
    );
    assert_eq!(st.tasks, vec!["a".to_string(), "b".to_string()]);
    // ...the runs are the ones made, over the loaded ids...
    assert_eq!(st.run_ids["a"], 6);
    assert_eq!(st.run_ids["b"], 1);
    assert_eq!(st.run_ids["z"], 9);
    // ...and so are the failures and alerts.
    assert!(st.failures["a"].streak_start_ms.is_some());
    assert_eq!(st.failures["b"].streak_start_ms, None);
    assert_eq!(st.alerts["a"].failures, 1);
    assert_eq!(st.guardian_pid, Some(42));
    assert_eq!(st.running_task, None);
}

#[test]
fn a_relaunch_keeps_the_downtime_deadline_on_the_wall_clock() {
    // An earlier instance saw the streak begin at Saturday 00:10 and mailed it.
    let start_ms = SATURDAY_MS + 10 * 60_000;
    let mut alerts = BTreeMap::new();
    alerts.insert(
        "job".to_string(),
        AlertState {
            streak_start_ms: Some(start_ms),
            failures: 3,
            mailed: true,
            ..AlertState::default()
        },
    );
    let base = State {
        alerts,
        ..State::default()
    };
    // This one starts at 00:40 (wall), on a monotonic clock of its own (a reboot).
    let now = Now {
        mono: Duration::from_secs(12),
        wall: Duration::from_millis(SATURDAY_MS) + 40 * MIN,
    };
    let mut s = supervisor(
        vec![task("job", "./job")],
        Mode::Forever,
        base,
        Resume::default(),
    );
    assert_eq!(s.alert_deadline(now), Some(now.mono + 30 * MIN));
    // Not yet due: nothing.
    let out = Output::default();
    assert!(feed(&mut s, now, Event::AlertTick, &out).is_empty());
    // At 01:10, a downtime alert, its deadline then at 02:10.
    let later = Now {
        mono: now.mono + 30 * MIN,
        wall: now.wall + 30 * MIN,
    };
    let fx = feed(&mut s, later, Event::AlertTick, &out);
    let [Effect::Alert(due), Effect::SaveState] = fx.as_slice() else {
        panic!("{fx:?}");
    };
    assert_eq!(due.decision.kind, Kind::Downtime);
    assert_eq!(due.decision.streak_start_ms, start_ms);
    assert_eq!(due.decision.failures, 3);
    // This instance did not see the failed run: the driver reads it from the store.
    assert_eq!(due.seen(), None);
    assert_eq!(s.alert_deadline(later), Some(later.mono + HOUR));
    let run = FailedRun {
        run_id: 77,
        outcome: "failed (exit code 1)".into(),
        brief: "exit code 1".into(),
        start_ms: start_ms - 1000,
        duration_ms: 1000,
        last_line: "no db".into(),
        output_bytes: 6,
    };
    s.learn_failed_run(due, &run, b"no db\n");
    assert_eq!(s.alerts["job"].last_failed.as_ref(), Some(&run));
    let mail = s.alert_mail(
        later,
        due,
        FailedView {
            run: Some(run.clone()),
            output: b"no db\n".to_vec(),
            output_bytes: Some(6),
            note: None,
        },
        &|ms| format!("@{ms}"),
    );
    assert_eq!(mail.kind, "downtime");
    assert_eq!(mail.streak_length, "1h");
    assert_eq!(mail.run_id, Some(77));
    assert_eq!(mail.started, rfc3339(start_ms - 1000));
    assert_eq!(mail.recovered_by, None);
    // The next downtime alert finds the run in memory.
    let next = Now {
        mono: later.mono + HOUR,
        wall: later.wall + HOUR,
    };
    let fx = feed(&mut s, next, Event::AlertTick, &out);
    let [Effect::Alert(due), Effect::SaveState] = fx.as_slice() else {
        panic!("{fx:?}");
    };
    assert_eq!(due.seen().and_then(|v| v.run), Some(run));
}

#[test]
fn the_run_times_come_from_one_reading_of_the_clocks() {
    let now = at(HOUR);
    assert_eq!(now.wall_of(HOUR), SATURDAY_MS + 3_600_000);
    assert_eq!(
        now.wall_of(HOUR - Duration::from_millis(1500)),
        SATURDAY_MS + 3_598_500
    );
    assert_eq!(now.wall_of(HOUR + MIN), SATURDAY_MS + 3_660_000);
    assert_eq!(now.mono_of(SATURDAY_MS + 3_660_000), HOUR + MIN);
    // A wall deadline in the past is due now.
    assert_eq!(now.mono_of(SATURDAY_MS), HOUR);
}

#[test]
fn the_run_end_line_says_what_comes_next() {
    let tasks = vec![task("a", "./a"), task("b", "./b")];
    let mut s = supervisor(tasks, Mode::Forever, State::default(), Resume::default());
    let out = Output {
        line: Some("no disk".into()),
        bytes: b"no disk\n".to_vec(),
    };
    let mut now = HOUR;
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::Start), &out);
    let _ = s.begin_run(at(now), 0, 1);
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::Spawned), &out);
    now += Duration::from_millis(2500);
    let exited = chain_ev(chain::Event::LeaderExited(Exit::Code(3)));
    let _ = feed(&mut s, at(now), exited, &out);
    let fx = feed(&mut s, at(now), chain_ev(chain::Event::GroupEmpty), &out);
    let r = ended(&fx);
    assert_eq!(
        s.run_end_line(at(now), r, false, Some("no disk")),
        "c: a run 1 failed (exit code 3) after 2.5s; next: b in 10m (fail_cooldown 10m); last output: no disk"
    );
    // Later (the line is built when logged), with the tail cut and no output.
    assert_eq!(
        s.run_end_line(at(now + MIN), r, true, Some("")),
        "c: a run 1 failed (exit code 3) after 2.5s, output tail cut; next: b in 9m (fail_cooldown 10m)"
    );
    // The failed run, as its mails show it.
    let failed = s.alerts["a"].last_failed.clone().expect("kept");
    assert_eq!(
        failed,
        FailedRun::of(
            1,
            &Outcome::Failed(3),
            None,
            at(HOUR).wall_ms(),
            Duration::from_millis(2500),
            Some("no disk"),
            8
        )
    );
    assert_eq!(failed.last_line, "no disk");
    assert_eq!(failed.duration_ms, 2500);
    // A long last line is cut for the state and the mails.
    let long = "x".repeat(500);
    let run = FailedRun::of(
        1,
        &Outcome::Failed(3),
        None,
        0,
        Duration::ZERO,
        Some(&long),
        500,
    );
    assert_eq!(run.last_line.chars().count(), FailedRun::LAST_LINE_MAX);
}

#[test]
fn the_state_of_a_chain_for_ever_names_its_position_on_both_clocks() {
    let tasks = vec![task("a", "./a"), task("b", "./b")];
    let mut s = supervisor(tasks, Mode::Forever, State::default(), Resume::default());
    let out = Output::default();
    let mut now = HOUR;
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::Start), &out);
    let _ = s.begin_run(at(now), 0, 1);
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::Spawned), &out);
    let names = vec!["a".to_string(), "b".to_string()];
    let x = Extras {
        guardian_pid: Some(7),
        boot_id: Some("boot"),
        ..Extras::default()
    };
    let v = s.state_view(at(now), &names, Some(("a", 1, 5)), Some("g"), &x);
    assert_eq!(v.next_task, Some("a"));
    assert_eq!(
        (v.running_task, v.running_run_id, v.running_since_ms),
        (Some("a"), Some(1), Some(5))
    );
    assert_eq!((v.due_mono_ns, v.due_wall_ms), (None, None));
    assert_eq!(
        (v.guardian_pid, v.guardian_boot, v.boot_id),
        (Some(7), Some("boot"), Some("boot"))
    );
    assert_eq!(v.running_group, Some("g"));
    now += MIN;
    let _ = feed(
        &mut s,
        at(now),
        chain_ev(chain::Event::LeaderExited(Exit::Code(0))),
        &out,
    );
    let _ = feed(&mut s, at(now), chain_ev(chain::Event::GroupEmpty), &out);
    // Saved a moment later: the due time is the same instant on both clocks.
    let later = at(now + Duration::from_millis(3));
    let v = s.state_view(later, &names, None, None, &x);
    assert_eq!(v.next_task, Some("b"));
    let due = now + 10 * MIN;
    assert_eq!(v.due_mono_ns, Some(due.as_nanos() as u64));
    assert_eq!(v.due_wall_ms, Some(at(due).wall_ms()));
    assert_eq!(v.cooled.map(|c| (c.task, c.ok)), Some(("a", true)));
    assert_eq!(v.run_ids["a"], 1);
}

/// A downtime alert of `job` whose failed run this instance did not see, as a relaunch
/// gets it (the state has the streak, not the run).
fn unseen_downtime_alert() -> (Supervisor, Box<AlertDue>, Now) {
    let start_ms = SATURDAY_MS;
    let mut alerts = BTreeMap::new();
    alerts.insert(
        "job".to_string(),
        AlertState {
            streak_start_ms: Some(start_ms),
            failures: 2,
            mailed: true,
            ..AlertState::default()
        },
    );
    let base = State {
        alerts,
        ..State::default()
    };
    let mut t = task("job", "./job");
    t.timing.timeout = Some(MIN);
    let mut s = supervisor(vec![t], Mode::Forever, base, Resume::default());
    let now = at(2 * HOUR);
    let fx = feed(&mut s, now, Event::AlertTick, &Output::default());
    let Some(Effect::Alert(due)) = fx.into_iter().next() else {
        panic!("no alert");
    };
    assert_eq!(due.seen(), None);
    (s, due, now)
}

/// A failed run read back from the store is shown whole (its last line, its brief from
/// the task's timeout), kept for the streak's next mails and in the state (SaveState),
/// and the durations read are learnt for the next attempt.
#[test]
fn a_failed_run_read_from_the_store_is_shown_and_kept() {
    let (mut s, due, now) = unseen_downtime_alert();
    let read = StoredRead {
        durations: vec![("job".into(), 1500)],
        failed: Ok(Some(StoredRun {
            run_id: 9,
            outcome: Outcome::Timeout,
            start_ms: SATURDAY_MS + 1000,
            duration_ms: 60_000,
            output: b"waiting\nstill waiting\n".to_vec(),
            output_bytes: 4000,
        })),
    };
    let (view, fx) = s.failed_from_store(&due, read, "/r/runs.db");
    assert_eq!(fx, vec![Effect::SaveState]);
    let run = view.run.clone().expect("the run");
    assert_eq!((run.run_id, run.last_line.as_str()), (9, "still waiting"));
    assert_eq!(
        (run.start_ms, run.duration_ms),
        (SATURDAY_MS + 1000, 60_000)
    );
    assert_eq!(
        run.brief,
        alert_mail::brief(&Outcome::Timeout, Some(MIN), MIN)
    );
    assert_eq!(
        (view.output_bytes, view.note.as_deref()),
        (Some(4000), None)
    );
    assert_eq!(s.alerts["job"].last_failed.as_ref(), Some(&run));
    assert_eq!(s.durations.get("job"), Some(&1500));
    // The next mail of the streak finds it in memory.
    let later = Now {
        mono: now.mono + HOUR,
        wall: now.wall + HOUR,
    };
    let fx = feed(&mut s, later, Event::AlertTick, &Output::default());
    let Some(Effect::Alert(next)) = fx.first() else {
        panic!("{fx:?}");
    };
    assert_eq!(next.seen().and_then(|v| v.run), Some(run));
}

/// A spawn error's message is its last line.
#[test]
fn a_stored_spawn_error_shows_its_message() {
    let (mut s, due, _) = unseen_downtime_alert();
    let read = StoredRead {
        durations: Vec::new(),
        failed: Ok(Some(StoredRun {
            run_id: 3,
            outcome: Outcome::SpawnError("no such file".into()),
            start_ms: SATURDAY_MS,
            duration_ms: 0,
            output: Vec::new(),
            output_bytes: 0,
        })),
    };
    let (view, _) = s.failed_from_store(&due, read, "/r/runs.db");
    assert_eq!(view.run.expect("run").last_line, "no such file");
}

/// A run the store does not have, or a store that cannot be read, leaves a note in the
/// mail (the latter logged too), and nothing is learnt.
#[test]
fn a_failed_run_the_store_cannot_give_is_a_note() {
    let (mut s, due, _) = unseen_downtime_alert();
    let read = StoredRead {
        durations: Vec::new(),
        failed: Ok(None),
    };
    let (view, fx) = s.failed_from_store(&due, read, "/r/runs.db");
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(
        view.note.as_deref(),
        Some("The output of the last failed run is not in the record store /r/runs.db (pruned, or never written).")
    );
    assert_eq!((view.run, view.output_bytes), (None, None));
    let read = StoredRead {
        durations: Vec::new(),
        failed: Err("database is locked".into()),
    };
    let (view, fx) = s.failed_from_store(&due, read, "/r/runs.db");
    assert_eq!(
        fx,
        vec![Effect::Log(
            log::Level::Warn,
            "c: job: failed to read the last failed run for an alert: database is locked".into()
        )]
    );
    assert_eq!(
        view.note.as_deref(),
        Some("The output of the last failed run could not be read from the record store: database is locked.")
    );
    assert_eq!(s.alerts["job"].last_failed, None);
}

/// A cooldown of 100 ms or more after a run lets the records go at once; a failure is
/// logged as a warning.
#[test]
fn a_runs_end_says_whether_a_cooldown_follows_and_how_it_is_logged() {
    let mut s = supervisor(
        vec![task("a", "./a")],
        Mode::Forever,
        State::default(),
        Resume::default(),
    );
    let mut now = Duration::ZERO;
    let fx = one_run(
        &mut s,
        &mut now,
        Duration::from_secs(1),
        1,
        &Output::default(),
    );
    let e = ended(&fx);
    let mut r = RunEnded {
        f: e.f.clone(),
        scheduled_ms: e.scheduled_ms,
        start_ms: e.start_ms,
        stop_ms: e.stop_ms,
        duration: e.duration,
        streak: e.streak,
        alert: None,
        trigger: e.trigger,
        requested_by: None,
    };
    assert_eq!(r.log_level(), log::Level::Warn);
    assert!(r.cooldown_ahead(), "10 minutes");
    r.f.cooldown = Some(Duration::from_millis(99));
    assert!(!r.cooldown_ahead());
    r.f.cooldown = Some(RunEnded::IDLE_AHEAD);
    assert!(r.cooldown_ahead());
    r.f.cooldown = None;
    assert!(!r.cooldown_ahead());
    r.f.outcome = Outcome::Success;
    assert_eq!(r.log_level(), log::Level::Info);
    assert_eq!(s.keep_runs("a"), (100, 24 * HOUR));
    assert_eq!(
        s.keep_runs("gone"),
        (
            config::builtin::KEEP_RUNS_MAX,
            config::builtin::KEEP_RUNS_FOR
        )
    );
}

/// The output is written a second after it first grew, not again until it grows again,
/// and from scratch for the next run.
#[test]
fn the_output_is_written_a_second_after_it_grew_and_only_if_it_did() {
    let mut o = OutputFlush::default();
    assert_eq!(o.due(), None);
    o.grew(Duration::from_millis(100));
    o.grew(Duration::from_millis(900));
    assert_eq!(o.due(), Some(Duration::from_millis(1100)));
    assert!(o.take(10));
    assert_eq!(o.due(), None);
    // Due again (it grew), but the bytes are those written: nothing to write.
    o.grew(Duration::from_secs(2));
    assert!(!o.take(10));
    o.grew(Duration::from_secs(3));
    assert!(o.take(20));
    o.grew(Duration::from_secs(4));
    o.stop();
    assert_eq!(o.due(), None);
    o.start();
    o.grew(Duration::from_secs(5));
    assert!(o.take(20), "a new run: nothing of it written yet");
}

/// The state saved is the chain's position for ever, and the base state's with `--once`.
#[test]
fn the_state_to_save_follows_the_mode() {
    let names = vec!["a".to_string()];
    let x = Extras::default();
    for mode in [Mode::Forever, Mode::Once] {
        let s = supervisor(
            vec![task("a", "./a")],
            mode,
            State::default(),
            Resume::default(),
        );
        let got = serde_json::to_string(&s.state(at(HOUR), &names, None, None, &x)).expect("json");
        let want = match mode {
            Mode::Forever => serde_json::to_string(&s.state_view(at(HOUR), &names, None, None, &x)),
            Mode::Once => serde_json::to_string(&s.once_state(None, None, &x)),
        }
        .expect("json");
        assert_eq!(got, want, "{mode:?}");
    }
}

/// run-now through the supervisor: an unknown task is refused with the chain's tasks; an
/// accepted request is answered first, logged, saved in the state (with who asked), and
/// its run records why it ran.
#[test]
fn run_now_is_answered_saved_and_its_run_says_manual() {
    let tasks = vec![task("a", "true"), task("b", "true"), task("c", "true")];
    let mut s = supervisor(tasks, Mode::Forever, State::default(), Resume::default());
    let out = Output::default();
    let _ = feed(&mut s, at(MIN), chain_ev(chain::Event::Start), &out);
    let _ = feed(&mut s, at(MIN), chain_ev(chain::Event::Spawned), &out);
    let ask = |task: &str| Event::RunNow {
        task: task.into(),
        by: "alice on pts/3".into(),
    };
    let fx = feed(&mut s, at(MIN), ask("zz"), &out);
    assert_eq!(
        fx,
        vec![Effect::RunNow(
            RunNowAnswer::Refused(Refusal::UnknownTask(vec![
                "a".into(),
                "b".into(),
                "c".into()
            ])),
            None
        )]
    );
    let fx = feed(&mut s, at(MIN), ask("c"), &out);
    assert_eq!(
        fx[0],
        Effect::RunNow(
            RunNowAnswer::Accepted {
                run_id: 1,
                at_once: false
            },
            Some(("c".into(), "alice on pts/3".into()))
        )
    );
    assert!(
        matches!(&fx[1], Effect::Log(_, m) if m.contains("accepted as run 1") && m.contains("alice on pts/3")),
        "{fx:?}"
    );
    assert!(fx.contains(&Effect::SaveState));
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let state = serde_json::to_value(s.state_view(at(MIN), &names, None, None, &Extras::default()))
        .expect("state");
    assert_eq!(
        state["run_now"],
        serde_json::json!({"task": "c", "run_id": 1, "requested_by": "alice on pts/3"})
    );
    // a ends: c starts, as a manual run, and its end says so.
    let _ = feed(
        &mut s,
        at(2 * MIN),
        chain_ev(chain::Event::LeaderExited(Exit::Code(0))),
        &out,
    );
    let fx = feed(
        &mut s,
        at(2 * MIN),
        chain_ev(chain::Event::GroupEmpty),
        &out,
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Spawn { task, run_id: 1, .. } if task == "c")),
        "{fx:?}"
    );
    let (cur, _) = s.begin_run(at(2 * MIN), 2, 1);
    assert_eq!(cur.trigger, Trigger::Manual);
    assert_eq!(cur.requested_by.as_deref(), Some("alice on pts/3"));
    let _ = feed(&mut s, at(2 * MIN), chain_ev(chain::Event::Spawned), &out);
    let _ = feed(
        &mut s,
        at(3 * MIN),
        chain_ev(chain::Event::LeaderExited(Exit::Code(0))),
        &out,
    );
    let fx = feed(
        &mut s,
        at(3 * MIN),
        chain_ev(chain::Event::GroupEmpty),
        &out,
    );
    let r = ended(&fx);
    assert_eq!(
        (r.trigger, r.requested_by.as_deref()),
        (Trigger::Manual, Some("alice on pts/3"))
    );
    let state =
        serde_json::to_value(s.state_view(at(3 * MIN), &names, None, None, &Extras::default()))
            .expect("state");
    assert!(state.get("run_now").is_none(), "{state}");
}

/// `kick` and `stop` over the control channel: logged with who asked; the kicked run
/// records it; a stop is a SIGTERM's stop, a stop --now a SIGQUIT's.
#[test]
fn a_kick_and_a_stop_with_their_source_are_logged_and_the_kicked_run_records_it() {
    let mut s = supervisor(
        vec![task("job", "./job")],
        Mode::Forever,
        State::default(),
        Resume {
            due: Some(HOUR),
            ..Resume::default()
        },
    );
    let out = Output::default();
    let _ = feed(&mut s, at(MIN), chain_ev(chain::Event::Start), &out);
    let by = "alice on pts/3".to_string();
    let fx = feed(&mut s, at(2 * MIN), Event::Kick { by: by.clone() }, &out);
    assert_eq!(
        fx[0],
        Effect::Log(
            log::Level::Info,
            "c: kicked by alice on pts/3: ending the cooldown".into()
        )
    );
    assert!(matches!(fx[1], Effect::Spawn { .. }));
    let (cur, _) = s.begin_run(at(2 * MIN), 0, 1);
    assert_eq!(
        (cur.trigger, cur.requested_by.as_deref()),
        (Trigger::Kick, Some("alice on pts/3"))
    );
    let _ = feed(&mut s, at(2 * MIN), chain_ev(chain::Event::Spawned), &out);
    let fx = feed(&mut s, at(3 * MIN), Event::Kick { by: by.clone() }, &out);
    assert_eq!(
        fx,
        vec![Effect::Log(
            log::Level::Info,
            "c: kicked by alice on pts/3: not in a cooldown; nothing to end".into()
        )]
    );
    let fx = feed(
        &mut s,
        at(3 * MIN),
        Event::Stop {
            now: false,
            by: by.clone(),
        },
        &out,
    );
    assert_eq!(
        fx,
        vec![Effect::Log(
            log::Level::Info,
            "c: stop asked by alice on pts/3: stopping".into()
        )]
    );
    // The task has its stop_grace, as on SIGTERM; then --now cuts it.
    assert_eq!(
        s.chain().next_deadline(),
        Some(3 * MIN + Duration::from_secs(5))
    );
    let fx = feed(&mut s, at(3 * MIN), Event::Stop { now: true, by }, &out);
    assert_eq!(
        fx,
        vec![
            Effect::Log(
                log::Level::Info,
                "c: stop --now asked by alice on pts/3: stopping the running task now".into()
            ),
            Effect::Signal(GroupSignal::Term),
        ]
    );
}

#[test]
fn a_refused_start_is_no_run_no_failure_and_no_alert() {
    let mut s = supervisor(
        vec![task("job", "false")],
        Mode::Forever,
        State::default(),
        Resume::default(),
    );
    let out = Output {
        line: Some("boom".into()),
        bytes: b"boom\n".to_vec(),
    };
    let mut now = Duration::ZERO;
    let fx = one_run(&mut s, &mut now, Duration::from_secs(1), 1, &out);
    assert!(ended(&fx).alert.is_some(), "the first failure is mailed");
    now += 10 * MIN;
    let fx = feed(&mut s, at(now), chain_ev(chain::Event::Tick), &out);
    let Some(Effect::Spawn { index, run_id, .. }) = fx.first() else {
        panic!("no spawn: {fx:?}");
    };
    assert_eq!(*run_id, 2);
    let _ = s.begin_run(at(now), *index, *run_id);
    // The fleet refused the start: no run's end, no alert, only the state to save.
    let refused = chain::Event::StartRefused {
        retry_at: now + Duration::from_secs(1),
        stored: false,
    };
    let fx = feed(&mut s, at(now), chain_ev(refused), &out);
    assert!(
        fx.iter().all(|e| matches!(e, Effect::SaveState)) && !fx.is_empty(),
        "{fx:?}"
    );
    assert!(s.current().is_none(), "no run in progress");
    assert_eq!(s.alerts["job"].failures, 1, "no failure counted");
    assert_eq!(s.failures["job"].streak().map(|(_, n)| n), Some(1));
    // One second later the task is tried again, as run 3 (an id is never given twice).
    let fx = feed(
        &mut s,
        at(now + Duration::from_secs(1)),
        chain_ev(chain::Event::Tick),
        &out,
    );
    assert!(
        matches!(fx.first(), Some(Effect::Spawn { run_id: 3, .. })),
        "{fx:?}"
    );
}
