//! Unit tests of the parent module, with a fake clock.
use super::*;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn timing() -> Timing {
    Timing {
        success_cooldown: s(10),
        fail_cooldown: s(30),
        timeout: None,
        stop_grace: s(5),
        kill_grace: s(2),
    }
}

fn chain_tasks(names: &[&str]) -> Vec<ChainTask> {
    names
        .iter()
        .map(|n| ChainTask {
            name: n.to_string(),
            timing: timing(),
        })
        .collect()
}

fn chain(names: &[&str], mode: Mode) -> Chain {
    Chain::new(chain_tasks(names), mode, Resume::default())
}

fn spawn_of(actions: &[Action]) -> Option<(String, u64)> {
    actions.iter().find_map(|a| match a {
        Action::Spawn { task, run_id, .. } => Some((task.clone(), *run_id)),
        _ => None,
    })
}

fn finished_of(actions: &[Action]) -> Option<Finished> {
    actions.iter().find_map(|a| match a {
        Action::Finished(f) => Some(f.clone()),
        _ => None,
    })
}

/// Run the current task to a normal end with `exit`, at `now`.
fn complete(c: &mut Chain, now: Mono, exit: Exit) -> Vec<Action> {
    let a = c.on_event(now, Event::LeaderExited(exit));
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    c.on_event(now, Event::GroupEmpty)
}

#[test]
fn runs_tasks_in_order_with_cooldowns() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let a = c.on_event(s(0), Event::Start);
    assert_eq!(spawn_of(&a), Some(("a".into(), 1)));
    assert!(c.on_event(s(0), Event::Spawned).is_empty());
    assert_eq!(c.next_deadline(), None);
    let a = complete(&mut c, s(3), Exit::Code(0));
    let f = finished_of(&a).expect("finished");
    assert_eq!(f.outcome, Outcome::Success);
    assert_eq!(f.cooldown, Some(s(10)));
    assert_eq!(c.next_deadline(), Some(s(13)));
    // Early tick: nothing.
    assert!(c.on_event(s(12), Event::Tick).is_empty());
    let a = c.on_event(s(13), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    let _ = c.on_event(s(13), Event::Spawned);
    let a = complete(&mut c, s(14), Exit::Code(1));
    let f = finished_of(&a).expect("finished");
    assert_eq!(f.outcome, Outcome::Failed(1));
    assert_eq!(f.cooldown, Some(s(30)));
    assert_eq!(c.next_deadline(), Some(s(44)));
    let a = c.on_event(s(44), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("a".into(), 2)));
}

#[test]
fn spawn_error_takes_fail_cooldown() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let a = c.on_event(s(0), Event::SpawnFailed("no such file".into()));
    let f = finished_of(&a).expect("finished");
    assert_eq!(f.outcome, Outcome::SpawnError("no such file".into()));
    assert_eq!(c.next_deadline(), Some(s(30)));
}

#[test]
fn a_failed_start_is_retried_at_the_next_tick_not_within_the_same_event() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    c.tasks[0].timing.fail_cooldown = Duration::ZERO;
    let a = c.on_event(s(0), Event::Start);
    assert!(matches!(a.as_slice(), [Action::Spawn { index: 0, .. }]));
    let a = c.on_event(s(0), Event::SpawnFailed("no such file".into()));
    assert_eq!(a.len(), 1, "only the run's end, no new start: {a:?}");
    assert!(finished_of(&a).is_some());
    assert_eq!(c.next_deadline(), Some(s(0)));
    let a = c.on_event(ms(1), Event::Tick);
    assert!(
        matches!(a.as_slice(), [Action::Spawn { index: 1, .. }]),
        "{a:?}"
    );
}

#[test]
fn signal_outcome_is_failure() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let a = complete(&mut c, s(1), Exit::Signal(9));
    assert_eq!(finished_of(&a).map(|f| f.outcome), Some(Outcome::Signal(9)));
    assert_eq!(c.next_deadline(), Some(s(31)));
}

#[test]
fn timeout_terms_then_kills_the_group() {
    let mut c = chain(&["a"], Mode::Forever);
    c.tasks[0].timing.timeout = Some(s(60));
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    assert_eq!(c.next_deadline(), Some(s(60)));
    let a = c.on_event(s(60), Event::Tick);
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    assert_eq!(c.next_deadline(), Some(s(62)));
    let a = c.on_event(s(62), Event::Tick);
    assert_eq!(a, vec![Action::Signal(GroupSignal::Kill)]);
    let _ = c.on_event(s(62), Event::LeaderExited(Exit::Signal(9)));
    let a = c.on_event(s(62), Event::GroupEmpty);
    let f = finished_of(&a).expect("finished");
    assert_eq!(f.outcome, Outcome::Timeout);
    assert_eq!(f.cooldown, Some(s(30)));
}

#[test]
fn leftovers_get_term_then_kill_and_next_waits_for_them() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    c.tasks[0].timing.success_cooldown = Duration::ZERO;
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let a = c.on_event(s(1), Event::LeaderExited(Exit::Code(0)));
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    assert!(c.reaping());
    assert_eq!(c.next_deadline(), Some(s(3)));
    let a = c.on_event(s(3), Event::Tick);
    assert_eq!(a, vec![Action::Signal(GroupSignal::Kill)]);
    assert_eq!(c.next_deadline(), Some(s(3) + GIVE_UP_AFTER_KILL));
    let a = c.on_event(ms(3100), Event::GroupEmpty);
    let f = finished_of(&a).expect("finished");
    assert_eq!(f.ended, s(1));
    // The next task starts only now that the group is empty.
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
}

#[test]
fn gives_up_on_unkillable_leftovers() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = c.on_event(s(1), Event::LeaderExited(Exit::Code(0)));
    let _ = c.on_event(s(3), Event::Tick);
    let a = c.on_event(s(3) + GIVE_UP_AFTER_KILL, Event::Tick);
    assert!(finished_of(&a).is_some());
    assert_eq!(c.next_deadline(), Some(s(11)));
}

#[test]
fn stop_in_cooldown_exits_at_once() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let a = c.on_event(s(2), Event::Control(Control::Stop));
    assert_eq!(a, vec![Action::Exit(ExitReason::Done)]);
    assert!(c.done());
}

#[test]
fn stop_mid_task_waits_stop_grace_then_interrupts() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    assert!(c.on_event(s(1), Event::Control(Control::Stop)).is_empty());
    assert_eq!(c.next_deadline(), Some(s(6)));
    // Repeating SIGTERM changes nothing.
    assert!(c.on_event(s(3), Event::Control(Control::Stop)).is_empty());
    assert_eq!(c.next_deadline(), Some(s(6)));
    let a = c.on_event(s(6), Event::Tick);
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    let _ = c.on_event(s(7), Event::LeaderExited(Exit::Signal(15)));
    let a = c.on_event(s(7), Event::GroupEmpty);
    let f = finished_of(&a).expect("finished");
    assert_eq!(f.outcome, Outcome::Interrupted);
    assert_eq!(f.cooldown, None);
    assert_eq!(a.last(), Some(&Action::Exit(ExitReason::Done)));
    // The interrupted task is the position: it runs again first.
    assert_eq!(c.position().0, 0);
}

#[test]
fn stop_mid_task_that_finishes_in_time_keeps_its_outcome() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = c.on_event(s(1), Event::Control(Control::Stop));
    let a = complete(&mut c, s(2), Exit::Code(0));
    assert_eq!(finished_of(&a).map(|f| f.outcome), Some(Outcome::Success));
    assert_eq!(a.last(), Some(&Action::Exit(ExitReason::Done)));
    assert_eq!(c.position().0, 1);
}

#[test]
fn stop_now_terms_at_once() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = c.on_event(s(1), Event::Control(Control::Stop));
    let a = c.on_event(s(2), Event::Control(Control::StopNow));
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    assert_eq!(c.next_deadline(), Some(s(4)));
}

#[test]
fn kick_ends_cooldown() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let a = c.on_event(s(2), Event::Control(Control::Kick(None)));
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    // A kick while running does nothing.
    let _ = c.on_event(s(2), Event::Spawned);
    assert!(c
        .on_event(s(2), Event::Control(Control::Kick(None)))
        .is_empty());
}

#[test]
fn reload_recomputes_the_cooldown() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    assert_eq!(c.next_deadline(), Some(s(11)));
    let mut tasks = c.tasks().to_vec();
    tasks[0].timing.success_cooldown = s(2);
    let a = c.on_event(s(2), Event::Control(Control::Reconfigure(tasks.clone())));
    assert!(a.is_empty());
    assert_eq!(c.next_deadline(), Some(s(3)));
    tasks[0].timing.success_cooldown = s(1);
    let a = c.on_event(s(2), Event::Control(Control::Reconfigure(tasks)));
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
}

#[test]
fn once_runs_through_and_exits() {
    let mut c = chain(&["a", "b"], Mode::Once);
    let a = c.on_event(s(0), Event::Start);
    assert_eq!(spawn_of(&a), Some(("a".into(), 1)));
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    assert_eq!(c.next_deadline(), Some(s(11)));
    let _ = c.on_event(s(11), Event::Tick);
    let _ = c.on_event(s(11), Event::Spawned);
    let a = complete(&mut c, s(12), Exit::Code(0));
    assert_eq!(finished_of(&a).and_then(|f| f.cooldown), None);
    assert_eq!(a.last(), Some(&Action::Exit(ExitReason::Done)));

    let mut c = chain(&["a", "b"], Mode::Once);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(2));
    let _ = c.on_event(s(31), Event::Tick);
    let _ = c.on_event(s(31), Event::Spawned);
    let a = complete(&mut c, s(32), Exit::Code(0));
    assert_eq!(a.last(), Some(&Action::Exit(ExitReason::OnceFailed)));
}

#[test]
fn once_cut_short_by_stop_is_not_success() {
    let mut c = chain(&["a", "b"], Mode::Once);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let a = c.on_event(s(2), Event::Control(Control::Stop));
    assert_eq!(a, vec![Action::Exit(ExitReason::OnceFailed)]);
}

#[test]
fn resume_position_due_and_run_ids() {
    let tasks = chain_tasks(&["a", "b"]);
    let mut ids = BTreeMap::new();
    ids.insert("b".to_string(), 41);
    let mut c = Chain::new(
        tasks,
        Mode::Forever,
        Resume {
            index: 1,
            due: Some(s(100)),
            run_ids: ids,
            cooled: None,
        },
    );
    assert!(c.on_event(s(50), Event::Start).is_empty());
    assert_eq!(c.next_deadline(), Some(s(100)));
    let a = c.on_event(s(100), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 42)));
}

/// A cooldown carried over by an upgrade, with the run it follows: a reload recomputes
/// it from that run's end, as for a cooldown of the chain's own; without that run, the
/// due time carried over stays.
#[test]
fn reload_recomputes_a_carried_over_cooldown_from_its_run() {
    let resumed = |cooled| {
        Chain::new(
            chain_tasks(&["a", "b"]),
            Mode::Forever,
            Resume {
                index: 1,
                due: Some(s(100)),
                run_ids: BTreeMap::new(),
                cooled,
            },
        )
    };
    // Run a ended at 90 s, ok: due at 100 s (10 s cooldown).
    let mut c = resumed(Some((0, s(90), true)));
    assert_eq!(c.cooled(), Some((0, s(90), true)));
    assert!(c.on_event(s(92), Event::Start).is_empty());
    let mut tasks = c.tasks().to_vec();
    tasks[0].timing.success_cooldown = s(5);
    assert!(c
        .on_event(s(93), Event::Control(Control::Reconfigure(tasks.clone())))
        .is_empty());
    assert_eq!(c.next_deadline(), Some(s(95)));
    // It exits in that cooldown: the saved state still names the run.
    let _ = c.on_event(s(94), Event::Control(Control::Stop));
    assert!(c.done());
    assert_eq!(c.cooled(), Some((0, s(90), true)));

    let mut c = resumed(None);
    let _ = c.on_event(s(92), Event::Start);
    let _ = c.on_event(s(93), Event::Control(Control::Reconfigure(tasks)));
    assert_eq!(c.next_deadline(), Some(s(100)));
    // A run index outside the list is not taken.
    assert_eq!(resumed(Some((7, s(90), true))).cooled(), None);
}

#[test]
fn waits_for_a_group_slot_and_stops_while_waiting() {
    let mut c = chain(&["a"], Mode::Forever);
    let a = c.on_event(s(0), Event::Start);
    assert_eq!(spawn_of(&a), Some(("a".into(), 1)));
    assert!(c.on_event(s(0), Event::SlotBusy).is_empty());
    assert_eq!(c.waiting(), Some((0, s(0))));
    assert_eq!(c.next_deadline(), None);
    // A kick does nothing while waiting; a free slot spawns the same run.
    assert!(c
        .on_event(s(1), Event::Control(Control::Kick(None)))
        .is_empty());
    let a = c.on_event(s(2), Event::SlotFree);
    assert_eq!(spawn_of(&a), Some(("a".into(), 1)));
    let _ = c.on_event(s(2), Event::Spawned);
    let a = complete(&mut c, s(3), Exit::Code(0));
    let f = finished_of(&a).expect("finished");
    assert_eq!(
        (f.scheduled, f.started),
        (s(0), s(2)),
        "the wait is start latency"
    );

    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::SlotBusy);
    assert_eq!(
        c.on_event(s(1), Event::Control(Control::Stop)),
        vec![Action::Exit(ExitReason::Done)]
    );
    assert_eq!(c.position(), (0, Some(s(0))));
}

#[test]
fn timeout_and_stop_together_count_as_timeout() {
    let mut c = chain(&["a"], Mode::Forever);
    c.tasks[0].timing.timeout = Some(s(6));
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = c.on_event(s(1), Event::Control(Control::Stop));
    let a = c.on_event(s(6), Event::Tick);
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    let _ = c.on_event(s(6), Event::LeaderExited(Exit::Signal(15)));
    let a = c.on_event(s(6), Event::GroupEmpty);
    assert_eq!(finished_of(&a).map(|f| f.outcome), Some(Outcome::Timeout));
    assert_eq!(a.last(), Some(&Action::Exit(ExitReason::Done)));
}

// ---- run-now (issue 19) ----

fn run_now(c: &mut Chain, now: Mono, index: usize) -> (RunNowAnswer, Vec<Action>) {
    let mut a = c.on_event(
        now,
        Event::Control(Control::RunNow {
            index,
            by: "alice on pts/3".into(),
        }),
    );
    match a.remove(0) {
        Action::RunNow(answer) => (answer, a),
        other => panic!("the answer comes first, got {other:?}"),
    }
}

fn refused(r: Refusal) -> RunNowAnswer {
    RunNowAnswer::Refused(r)
}

#[test]
fn run_now_in_a_cooldown_starts_at_once_then_the_order_goes_on() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
    // a fails: b is due at 31.
    let _ = complete(&mut c, s(1), Exit::Code(1));
    assert_eq!(c.position(), (1, Some(s(31))));
    let (ans, a) = run_now(&mut c, s(2), 2);
    assert_eq!(
        ans,
        RunNowAnswer::Accepted {
            run_id: 1,
            at_once: true
        }
    );
    assert_eq!(spawn_of(&a), Some(("c".into(), 1)));
    assert_eq!(c.trigger(), (Trigger::Manual, Some("alice on pts/3")));
    assert_eq!(c.pending(), None);
    let _ = c.on_event(s(2), Event::Spawned);
    // c's cooldown ends at 13, before b's due time: b keeps its due time.
    let a = complete(&mut c, s(3), Exit::Code(0));
    assert_eq!(finished_of(&a).map(|f| f.task), Some("c".into()));
    assert_eq!(spawn_of(&a), None);
    assert_eq!(c.position(), (1, Some(s(31))));
    let a = c.on_event(s(31), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
}

#[test]
fn after_a_run_now_the_task_due_next_waits_for_its_cooldown_if_later() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    // b due at 11; c run now at 2, ends at 5: its cooldown ends at 15, later.
    let (_, a) = run_now(&mut c, s(2), 2);
    assert_eq!(spawn_of(&a), Some(("c".into(), 1)));
    let _ = c.on_event(s(2), Event::Spawned);
    let _ = complete(&mut c, s(5), Exit::Code(0));
    assert_eq!(c.position(), (1, Some(s(15))));
    assert!(spawn_of(&c.on_event(s(11), Event::Tick)).is_none());
    assert_eq!(
        spawn_of(&c.on_event(s(15), Event::Tick)),
        Some(("b".into(), 1))
    );
}

#[test]
fn run_now_while_a_task_runs_starts_right_after_it() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let (ans, a) = run_now(&mut c, ms(500), 2);
    assert_eq!(
        ans,
        RunNowAnswer::Accepted {
            run_id: 1,
            at_once: false
        }
    );
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(c.pending().map(|p| (p.index, p.run_id)), Some((2, 1)));
    let a = complete(&mut c, s(1), Exit::Code(0));
    assert_eq!(finished_of(&a).map(|f| f.task), Some("a".into()));
    assert_eq!(spawn_of(&a), Some(("c".into(), 1)));
    assert_eq!(c.trigger(), (Trigger::Manual, Some("alice on pts/3")));
    let _ = c.on_event(s(1), Event::Spawned);
    // b was due at 11; c's cooldown ends at 12.
    let _ = complete(&mut c, s(2), Exit::Code(0));
    assert_eq!(c.position(), (1, Some(s(12))));
}

#[test]
fn run_now_while_waiting_for_a_group_slot_runs_after_the_waiting_task() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    assert!(c.on_event(s(0), Event::SlotBusy).is_empty());
    let (ans, a) = run_now(&mut c, s(1), 2);
    assert_eq!(
        ans,
        RunNowAnswer::Accepted {
            run_id: 1,
            at_once: false
        }
    );
    assert!(a.is_empty());
    // The waiting task is as good as running: a run-now of it is refused.
    let mut d = c.clone();
    d.pending = None;
    assert_eq!(run_now(&mut d, s(1), 0).0, refused(Refusal::Running));
    let a = c.on_event(s(2), Event::SlotFree);
    assert_eq!(spawn_of(&a), Some(("a".into(), 1)));
    let _ = c.on_event(s(2), Event::Spawned);
    let a = complete(&mut c, s(3), Exit::Code(0));
    assert_eq!(spawn_of(&a), Some(("c".into(), 1)));
    // c's own group wait applies, then it runs.
    let _ = c.on_event(s(3), Event::SlotBusy);
    assert_eq!(
        spawn_of(&c.on_event(s(4), Event::SlotFree)),
        Some(("c".into(), 1))
    );
    let _ = c.on_event(s(4), Event::Spawned);
    let _ = complete(&mut c, s(5), Exit::Code(0));
    // b was due at 13; c's cooldown ends at 15.
    assert_eq!(c.position(), (1, Some(s(15))));
}

#[test]
fn run_now_of_the_task_due_next_moves_the_chain_on_as_a_scheduled_run() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let (_, a) = run_now(&mut c, s(2), 1);
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    assert_eq!(c.trigger().0, Trigger::Manual);
    let _ = c.on_event(s(2), Event::Spawned);
    let _ = complete(&mut c, s(3), Exit::Code(0));
    assert_eq!(c.position(), (2, Some(s(13))));
}

#[test]
fn run_now_of_the_running_task_is_refused() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    assert_eq!(run_now(&mut c, s(0), 0).0, refused(Refusal::Running));
    let _ = c.on_event(s(0), Event::Spawned);
    assert_eq!(
        run_now(&mut c, s(1), 0),
        (refused(Refusal::Running), vec![])
    );
    // Also while its leftovers are reaped.
    let _ = c.on_event(s(1), Event::LeaderExited(Exit::Code(0)));
    assert_eq!(run_now(&mut c, s(1), 0).0, refused(Refusal::Running));
    assert_eq!(c.pending(), None);
    // No run id was used up.
    let _ = c.on_event(s(1), Event::GroupEmpty);
    assert_eq!(c.run_ids().get("a"), Some(&1));
}

#[test]
fn a_second_run_now_while_one_is_pending_is_refused() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = run_now(&mut c, s(1), 2);
    assert_eq!(
        run_now(&mut c, s(1), 1).0,
        refused(Refusal::Pending("c".into(), 1))
    );
    assert_eq!(
        run_now(&mut c, s(1), 2).0,
        refused(Refusal::Pending("c".into(), 1))
    );
    assert_eq!(c.run_ids().get("b"), None);
    // The running task is refused as running, the clearer reason.
    assert_eq!(run_now(&mut c, s(1), 0).0, refused(Refusal::Running));
}

#[test]
fn a_kick_while_a_request_is_pending_changes_nothing_and_a_kicked_run_says_so() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = run_now(&mut c, s(1), 2);
    assert!(c
        .on_event(s(1), Event::Control(Control::Kick(None)))
        .is_empty());
    let a = complete(&mut c, s(2), Exit::Code(0));
    assert_eq!(spawn_of(&a), Some(("c".into(), 1)));
    let _ = c.on_event(s(2), Event::Spawned);
    let _ = complete(&mut c, s(3), Exit::Code(0));
    // In c's cooldown, a kick starts b at once, as a kicked run.
    let a = c.on_event(s(4), Event::Control(Control::Kick(None)));
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    assert_eq!(c.trigger(), (Trigger::Kick, None));
    let _ = c.on_event(s(4), Event::Spawned);
    let _ = complete(&mut c, s(5), Exit::Code(0));
    let a = c.on_event(s(15), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("c".into(), 2)));
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
}

#[test]
fn sigterm_with_a_request_pending_keeps_it_for_the_next_instance() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = run_now(&mut c, s(1), 2);
    assert!(c.on_event(s(1), Event::Control(Control::Stop)).is_empty());
    let a = complete(&mut c, s(2), Exit::Code(0));
    assert_eq!(spawn_of(&a), None);
    assert!(a.contains(&Action::Exit(ExitReason::Done)));
    let p = c.pending().cloned();
    assert_eq!(p.as_ref().map(|p| (p.index, p.run_id)), Some((2, 1)));
    assert_eq!(c.position(), (1, Some(s(12))));
    // A run-now to a stopping chain is refused.
    assert_eq!(run_now(&mut c, s(2), 1).0, refused(Refusal::Stopping));
    // The next instance runs it first, with its reserved id, then goes back to b.
    let resume = Resume {
        index: 1,
        due: Some(s(12)),
        run_ids: c.run_ids().clone(),
        cooled: None,
    };
    let mut n = Chain::new(chain_tasks(&["a", "b", "c"]), Mode::Forever, resume).with_pending(p);
    let a = n.on_event(s(3), Event::Start);
    assert_eq!(spawn_of(&a), Some(("c".into(), 1)));
    assert_eq!(n.trigger(), (Trigger::Manual, Some("alice on pts/3")));
    let _ = n.on_event(s(3), Event::Spawned);
    let _ = complete(&mut n, s(4), Exit::Code(0));
    assert_eq!(n.position(), (1, Some(s(14))));
}

#[test]
fn a_run_now_run_waiting_for_its_slot_at_a_stop_is_kept_as_a_request() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let _ = run_now(&mut c, s(2), 2);
    let _ = c.on_event(s(2), Event::SlotBusy);
    let a = c.on_event(s(3), Event::Control(Control::Stop));
    assert_eq!(a, vec![Action::Exit(ExitReason::Done)]);
    assert_eq!(c.pending().map(|p| (p.index, p.run_id)), Some((2, 1)));
    assert_eq!(c.position(), (1, Some(s(11))));
}

#[test]
fn an_interrupted_run_now_run_is_not_run_again() {
    let mut c = chain(&["a", "b", "c"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let _ = run_now(&mut c, s(2), 2);
    let _ = c.on_event(s(2), Event::Spawned);
    let a = c.on_event(s(3), Event::Control(Control::StopNow));
    assert_eq!(a, vec![Action::Signal(GroupSignal::Term)]);
    let _ = complete(&mut c, s(4), Exit::Signal(15));
    assert_eq!(c.position(), (1, Some(s(11))));
}

#[test]
fn run_now_is_refused_in_once_mode() {
    let mut c = chain(&["a", "b"], Mode::Once);
    let _ = c.on_event(s(0), Event::Start);
    assert_eq!(run_now(&mut c, s(0), 1).0, refused(Refusal::Once));
}

#[test]
fn a_kick_with_its_source_gives_it_to_the_run_it_starts_and_only_to_that_run() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    // A kick while a task runs does nothing, and its source is not kept for later.
    let by = || Control::Kick(Some("alice on pts/3".into()));
    assert!(c.on_event(s(0), Event::Control(by())).is_empty());
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let a = c.on_event(s(11), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
    let _ = c.on_event(s(11), Event::Spawned);
    let _ = complete(&mut c, s(12), Exit::Code(0));
    // In the cooldown: the kick starts the next run, which records who asked.
    let a = c.on_event(s(13), Event::Control(by()));
    assert_eq!(spawn_of(&a), Some(("a".into(), 2)));
    assert_eq!(c.trigger(), (Trigger::Kick, Some("alice on pts/3")));
    let _ = c.on_event(s(13), Event::Spawned);
    let _ = complete(&mut c, s(14), Exit::Code(0));
    // The run after it is scheduled again, with no source.
    let a = c.on_event(s(24), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 2)));
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
}

#[test]
fn a_refused_start_is_no_run_and_the_task_is_tried_again_at_retry_at() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let a = c.on_event(s(0), Event::Start);
    assert_eq!(spawn_of(&a), Some(("a".into(), 1)));
    let a = c.on_event(
        ms(300),
        Event::StartRefused {
            retry_at: s(2),
            stored: true,
        },
    );
    assert!(a.is_empty(), "no run's end, no start, no exit: {a:?}");
    assert!(c.in_cooldown());
    // Same task, due at retry_at (not a fail cooldown): nothing before it.
    assert_eq!(c.position(), (0, Some(s(2))));
    assert_eq!(c.next_deadline(), Some(s(2)));
    assert!(c.on_event(ms(1999), Event::Tick).is_empty());
    // The id was spent (its start record may be in the store): the next start takes the next.
    let a = c.on_event(s(2), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("a".into(), 2)));
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
}

#[test]
fn a_refused_start_keeps_a_later_due_time_and_never_goes_back_in_time() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    // retry_at before now counts from now.
    let _ = c.on_event(
        s(5),
        Event::StartRefused {
            retry_at: s(1),
            stored: false,
        },
    );
    assert_eq!(c.next_deadline(), Some(s(5)));
}

#[test]
fn a_stop_while_the_start_waits_for_the_fleet_ends_the_chain_at_the_refusal() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    // The stop takes effect once the start is settled.
    assert!(c.on_event(ms(10), Event::Control(Control::Stop)).is_empty());
    let a = c.on_event(
        ms(20),
        Event::StartRefused {
            retry_at: s(1),
            stored: false,
        },
    );
    assert_eq!(a, vec![Action::Exit(ExitReason::Done)], "no run's end");
    // The next instance starts with the task that did not run.
    assert_eq!(c.position().0, 0);
}

#[test]
fn a_refused_run_now_start_is_a_request_again_with_its_id() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    // In a's cooldown (b due at 11 s), run-now b is accepted and starts at once.
    let a = c.on_event(
        s(2),
        Event::Control(Control::RunNow {
            index: 1,
            by: "ann".into(),
        }),
    );
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    let a = c.on_event(
        s(2),
        Event::StartRefused {
            retry_at: s(3),
            stored: false,
        },
    );
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(
        c.pending().map(|p| (p.index, p.run_id, p.by.as_str())),
        Some((1, 1, "ann"))
    );
    let a = c.on_event(s(3), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)), "the same id: {a:?}");
    assert_eq!(c.trigger(), (Trigger::Manual, Some("ann")));
}

#[test]
fn a_refused_kicked_start_is_still_the_kicks_run_when_it_starts() {
    let mut c = chain(&["a"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let a = c.on_event(s(2), Event::Control(Control::Kick(Some("bob".into()))));
    assert_eq!(spawn_of(&a), Some(("a".into(), 2)));
    let _ = c.on_event(
        s(2),
        Event::StartRefused {
            retry_at: s(3),
            stored: false,
        },
    );
    let a = c.on_event(s(3), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("a".into(), 3)), "the id is spent");
    assert_eq!(c.trigger(), (Trigger::Kick, Some("bob")));
}

#[test]
fn a_refused_run_now_start_whose_record_may_be_stored_is_not_a_request_again() {
    let mut c = chain(&["a", "b"], Mode::Forever);
    let _ = c.on_event(s(0), Event::Start);
    let _ = c.on_event(s(0), Event::Spawned);
    let _ = complete(&mut c, s(1), Exit::Code(0));
    let a = c.on_event(
        s(2),
        Event::Control(Control::RunNow {
            index: 1,
            by: "ann".into(),
        }),
    );
    assert_eq!(spawn_of(&a), Some(("b".into(), 1)));
    let _ = c.on_event(
        s(2),
        Event::StartRefused {
            retry_at: s(3),
            stored: true,
        },
    );
    assert_eq!(
        c.pending(),
        None,
        "its run, if stored, is closed: its answer"
    );
    // b was next in the order: it runs at retry_at, scheduled, as run 2.
    assert_eq!(c.position(), (1, Some(s(3))));
    let a = c.on_event(s(3), Event::Tick);
    assert_eq!(spawn_of(&a), Some(("b".into(), 2)));
    assert_eq!(c.trigger(), (Trigger::Schedule, None));
}
