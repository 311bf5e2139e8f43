//! The chain's carried-over state, `CHAIN.state`, as data, and what resuming from it means.
//!
//! What a new instance needs to carry on where the old one stopped (after an upgrade,
//! a crash or a power cut): the next task (by name), when it is due, the run-id
//! counters, and the run that was in progress when the file was written. It does not
//! depend on the record store, so it survives a store fault. The file itself (its
//! format, reading and writing it) is `store::state_file`'s.
//!
//! The due time is saved as both monotonic and wall time, with the kernel's boot id:
//! on the same boot the monotonic time is trusted (a wall-clock step then causes
//! neither a burst nor a stall); after a reboot the wall time is used, capped at the
//! longest cooldown of the chain. `resume` is pure, tested below.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::chain::{ChainTask, Resume};
use crate::time::Mono;

/// The saved state of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    pub version: u32,
    /// The chain's task list when the state was written (to continue after a change).
    pub tasks: Vec<String>,
    /// The task that runs next (or ran when the file was written).
    pub next_task: Option<String>,
    /// When it is due, as CLOCK_MONOTONIC nanoseconds (valid on `boot_id` only).
    pub due_mono_ns: Option<u64>,
    /// When it is due, as Unix time in milliseconds.
    pub due_wall_ms: Option<u64>,
    pub boot_id: Option<String>,
    /// A run that was in progress when the state was written: (task, run id).
    pub running_task: Option<String>,
    pub running_run_id: Option<u64>,
    /// When that run started (Unix ms).
    pub running_since_ms: Option<u64>,
    /// The concurrency group whose slot that run holds, if its task has one.
    #[serde(default)]
    pub running_group: Option<String>,
    /// Waiting for a slot of this concurrency group since `waiting_since_ms`.
    pub waiting_group: Option<String>,
    pub waiting_since_ms: Option<u64>,
    /// The last run id used per task.
    #[serde(default)]
    pub run_ids: BTreeMap<String, u64>,
    /// The failure state per task (streaks), carried over by a relaunch.
    #[serde(default)]
    pub failures: BTreeMap<String, TaskFailures>,
    /// The alert state per task, carried over by a relaunch.
    #[serde(default)]
    pub alerts: BTreeMap<String, crate::core::alert::AlertState>,
    /// The writing instance's guardian (PID, start time in clock ticks): if the instance
    /// dies during a run, the next one waits for this process, which ends what that run
    /// left, before it starts a task (else the same task could run twice at once).
    #[serde(default)]
    pub guardian_pid: Option<i32>,
    #[serde(default)]
    pub guardian_start: Option<u64>,
    /// The boot it ran in (a PID and start time mean nothing in another).
    #[serde(default)]
    pub guardian_boot: Option<String>,
    /// The run whose cooldown the chain is in, when it ended (CLOCK_MONOTONIC ns, valid on
    /// `boot_id` only) and whether it succeeded: so that a SIGHUP after an upgrade applies
    /// a changed cooldown to the cooldown carried over, as it does to one of its own.
    #[serde(default)]
    pub cooled: Option<Cooled>,
    /// A `run-now` request accepted and not started yet (absent in older states): the
    /// next instance runs it first, with the run id reserved for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_now: Option<RunNowRequest>,
}

/// See [`State::run_now`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunNowRequest {
    pub task: String,
    pub run_id: u64,
    pub requested_by: String,
}

/// The pending run-now request of `state`, for a chain of `tasks` (None if its task is
/// no longer in the chain: the request is dropped with a warning).
pub(crate) fn pending(
    state: &State,
    tasks: &[ChainTask],
) -> (Option<crate::core::chain::Pending>, Option<String>) {
    let Some(r) = &state.run_now else {
        return (None, None);
    };
    match tasks.iter().position(|t| t.name == r.task) {
        Some(index) => (
            Some(crate::core::chain::Pending {
                index,
                run_id: r.run_id,
                by: r.requested_by.clone(),
            }),
            None,
        ),
        None => (
            None,
            Some(format!(
                "the run-now request for {} (run {}, asked by {}) is dropped: the task is no longer in the chain",
                r.task, r.run_id, r.requested_by
            )),
        ),
    }
}

/// See [`State::cooled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooled {
    pub(crate) task: String,
    pub(crate) ended_mono_ns: u64,
    pub(crate) ok: bool,
}

/// [`Cooled`], borrowed, for writing.
#[derive(Debug, Serialize)]
pub(crate) struct CooledView<'a> {
    pub(crate) task: &'a str,
    pub(crate) ended_mono_ns: u64,
    pub(crate) ok: bool,
}

/// [`State`] as borrowed fields, for writing: it serializes to the same JSON, without
/// copying the maps (the driver writes the state before and after every run).
#[derive(Debug, Serialize)]
pub struct StateView<'a> {
    pub(crate) version: u32,
    pub(crate) tasks: &'a [String],
    pub(crate) next_task: Option<&'a str>,
    pub(crate) due_mono_ns: Option<u64>,
    pub(crate) due_wall_ms: Option<u64>,
    pub(crate) boot_id: Option<&'a str>,
    pub(crate) running_task: Option<&'a str>,
    pub(crate) running_run_id: Option<u64>,
    pub(crate) running_since_ms: Option<u64>,
    pub(crate) running_group: Option<&'a str>,
    pub(crate) waiting_group: Option<&'a str>,
    pub(crate) waiting_since_ms: Option<u64>,
    pub(crate) run_ids: &'a BTreeMap<String, u64>,
    pub(crate) failures: &'a BTreeMap<String, TaskFailures>,
    pub(crate) alerts: &'a BTreeMap<String, crate::core::alert::AlertState>,
    pub(crate) guardian_pid: Option<i32>,
    pub(crate) guardian_start: Option<u64>,
    pub(crate) guardian_boot: Option<&'a str>,
    pub(crate) cooled: Option<CooledView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) run_now: Option<RunNowRequest>,
}

impl State {
    #[cfg(test)]
    fn view(&self) -> StateView<'_> {
        StateView {
            version: self.version,
            tasks: &self.tasks,
            next_task: self.next_task.as_deref(),
            due_mono_ns: self.due_mono_ns,
            due_wall_ms: self.due_wall_ms,
            boot_id: self.boot_id.as_deref(),
            running_task: self.running_task.as_deref(),
            running_run_id: self.running_run_id,
            running_since_ms: self.running_since_ms,
            running_group: self.running_group.as_deref(),
            waiting_group: self.waiting_group.as_deref(),
            waiting_since_ms: self.waiting_since_ms,
            run_ids: &self.run_ids,
            failures: &self.failures,
            alerts: &self.alerts,
            guardian_pid: self.guardian_pid,
            guardian_start: self.guardian_start,
            guardian_boot: self.guardian_boot.as_deref(),
            cooled: self.cooled.as_ref().map(|c| CooledView {
                task: &c.task,
                ended_mono_ns: c.ended_mono_ns,
                ok: c.ok,
            }),
            run_now: self.run_now.clone(),
        }
    }
}

/// The failure state of one chain and task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskFailures {
    /// When the current failure streak began (Unix ms); None when the last run succeeded.
    pub streak_start_ms: Option<u64>,
    /// Failures in the current streak.
    pub failures: u64,
    pub last_success_ms: Option<u64>,
}

impl TaskFailures {
    /// Account for a run that ended at `at_ms`. Interrupted runs change nothing.
    pub(crate) fn record(&mut self, outcome: &crate::core::outcome::Outcome, at_ms: u64) {
        if outcome.is_success() {
            self.streak_start_ms = None;
            self.failures = 0;
            self.last_success_ms = Some(at_ms);
        } else if outcome.is_failure() {
            if self.streak_start_ms.is_none() {
                self.streak_start_ms = Some(at_ms);
                self.failures = 0;
            }
            self.failures += 1;
        }
    }

    /// The current streak: (start, failures).
    pub(crate) fn streak(&self) -> Option<(u64, u64)> {
        self.streak_start_ms.map(|s| (s, self.failures))
    }
}

pub const STATE_VERSION: u32 = 1;

/// The clocks, as read by the driver when it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clocks {
    pub(crate) mono: Mono,
    pub(crate) wall_ms: u64,
    pub(crate) boot_id: Option<String>,
}

/// What resuming from `state` means for a chain of `tasks`, given the clocks now.
/// Also returns a warning to log, if a run was left in progress (a crash).
pub(crate) fn resume(state: &State, tasks: &[ChainTask], now: &Clocks) -> (Resume, Option<String>) {
    let index_of = |name: &str| tasks.iter().position(|t| t.name == name);
    let mut warning = None;
    // A run left in progress: its instance died (or was killed) mid-run. Run it again first.
    if let Some(t) = &state.running_task {
        if let Some(i) = index_of(t) {
            warning = Some(format!(
                "task {t} run {} was still running when the previous instance ended; running it again",
                state.running_run_id.unwrap_or(0)
            ));
            return (
                Resume {
                    index: i,
                    due: None,
                    run_ids: state.run_ids.clone(),
                    cooled: None,
                },
                warning,
            );
        }
    }
    let index = match &state.next_task {
        None => 0,
        Some(t) => match index_of(t) {
            Some(i) => i,
            None => {
                // The list changed: the next task of the old list that is still in the
                // new one, else the first.
                let start = state.tasks.iter().position(|x| x == t);
                start
                    .and_then(|s| {
                        (1..=state.tasks.len())
                            .map(|k| &state.tasks[(s + k) % state.tasks.len()])
                            .find_map(|n| index_of(n))
                    })
                    .unwrap_or(0)
            }
        },
    };
    let same_boot = state.boot_id.is_some() && state.boot_id == now.boot_id;
    let longest = tasks
        .iter()
        .map(|t| t.timing.success_cooldown.max(t.timing.fail_cooldown))
        .max()
        .unwrap_or(Duration::ZERO);
    let due = match (same_boot, state.due_mono_ns, state.due_wall_ms) {
        (true, Some(ns), _) => {
            let d = Duration::from_nanos(ns);
            // Never wait longer than the longest cooldown from now.
            Some(d.min(now.mono + longest))
        }
        (_, _, Some(ms)) => {
            let remaining = Duration::from_millis(ms.saturating_sub(now.wall_ms));
            Some(now.mono + remaining.min(longest))
        }
        _ => None,
    };
    if warning.is_none() && state.running_task.is_some() {
        warning = Some("the task that was running is no longer in the chain".to_string());
    }
    // The run whose cooldown this is, for a reload to recompute it: on the same boot only
    // (its end is a monotonic time), and for the due time carried over as it was saved.
    let cooled = state
        .cooled
        .as_ref()
        .filter(|_| same_boot && state.due_mono_ns.is_some() && state.running_task.is_none())
        .and_then(|c| {
            Some((
                index_of(&c.task)?,
                Duration::from_nanos(c.ended_mono_ns),
                c.ok,
            ))
        });
    (
        Resume {
            index,
            due,
            run_ids: state.run_ids.clone(),
            cooled,
        },
        warning,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;

    fn tasks(names: &[&str]) -> Vec<ChainTask> {
        names
            .iter()
            .map(|n| ChainTask {
                name: n.to_string(),
                timing: Timing {
                    success_cooldown: Duration::from_secs(60),
                    fail_cooldown: Duration::from_secs(120),
                    timeout: None,
                    stop_grace: Duration::from_secs(1),
                    kill_grace: Duration::from_secs(1),
                },
            })
            .collect()
    }

    fn clocks(mono_s: u64, wall_s: u64, boot: &str) -> Clocks {
        Clocks {
            mono: Duration::from_secs(mono_s),
            wall_ms: wall_s * 1000,
            boot_id: Some(boot.into()),
        }
    }

    fn saved(next: &str, due_mono_s: u64, due_wall_s: u64) -> State {
        State {
            version: STATE_VERSION,
            tasks: vec!["a".into(), "b".into(), "c".into()],
            next_task: Some(next.into()),
            due_mono_ns: Some(due_mono_s * 1_000_000_000),
            due_wall_ms: Some(due_wall_s * 1000),
            boot_id: Some("boot1".into()),
            ..State::default()
        }
    }

    #[test]
    fn empty_state_starts_at_first_task_now() {
        let (r, w) = resume(&State::default(), &tasks(&["a", "b"]), &clocks(5, 5, "x"));
        assert_eq!(r.index, 0);
        assert_eq!(r.due, None);
        assert!(w.is_none());
    }

    #[test]
    fn same_boot_trusts_monotonic_time() {
        // The wall clock jumped a day forward: the monotonic due time still holds.
        let s = saved("b", 100, 1000);
        let (r, _) = resume(
            &s,
            &tasks(&["a", "b", "c"]),
            &clocks(50, 1000 + 86400, "boot1"),
        );
        assert_eq!(r.index, 1);
        assert_eq!(r.due, Some(Duration::from_secs(100)));
    }

    #[test]
    fn the_cooldowns_run_is_carried_on_the_same_boot_only() {
        let mut s = saved("b", 100, 1000);
        s.cooled = Some(Cooled {
            task: "a".into(),
            ended_mono_ns: 40_000_000_000,
            ok: false,
        });
        let t = tasks(&["a", "b", "c"]);
        let (r, _) = resume(&s, &t, &clocks(50, 1000, "boot1"));
        assert_eq!(r.cooled, Some((0, Duration::from_secs(40), false)));
        // Another boot: the end is a monotonic time of the old boot; not carried.
        let (r, _) = resume(&s, &t, &clocks(50, 1000, "boot2"));
        assert_eq!(r.cooled, None);
        // A task no longer in the chain: not carried.
        let (r, _) = resume(&s, &tasks(&["b", "c"]), &clocks(50, 1000, "boot1"));
        assert_eq!(r.cooled, None);
        // A run left in progress goes first: no cooldown.
        s.running_task = Some("c".into());
        let (r, _) = resume(&s, &t, &clocks(50, 1000, "boot1"));
        assert_eq!(r.cooled, None);
    }

    #[test]
    fn other_boot_uses_wall_time_capped() {
        let s = saved("b", 100, 1030);
        let (r, _) = resume(&s, &tasks(&["a", "b", "c"]), &clocks(7, 1000, "boot2"));
        assert_eq!(r.due, Some(Duration::from_secs(37)));
        // A wall clock far behind cannot stall the chain past its longest cooldown.
        let (r, _) = resume(&s, &tasks(&["a", "b", "c"]), &clocks(7, 10, "boot2"));
        assert_eq!(r.due, Some(Duration::from_secs(7 + 120)));
    }

    #[test]
    fn interrupted_run_goes_first() {
        let mut s = saved("b", 100, 1000);
        s.running_task = Some("b".into());
        s.running_run_id = Some(3);
        let (r, w) = resume(&s, &tasks(&["a", "b", "c"]), &clocks(50, 1000, "boot1"));
        assert_eq!((r.index, r.due), (1, None));
        assert!(w.expect("warning").contains("run 3"));
    }

    #[test]
    fn changed_list_continues_with_next_still_present() {
        let s = saved("b", 100, 1000);
        let (r, _) = resume(&s, &tasks(&["c", "a"]), &clocks(50, 1000, "boot1"));
        assert_eq!(r.index, 0, "b is gone; c came after it");
        let (r, _) = resume(&s, &tasks(&["x", "y"]), &clocks(50, 1000, "boot1"));
        assert_eq!(r.index, 0);
    }

    #[test]
    fn streaks() {
        use crate::core::outcome::Outcome;
        let mut f = TaskFailures::default();
        f.record(&Outcome::Failed(1), 10);
        f.record(&Outcome::Timeout, 20);
        f.record(&Outcome::Interrupted, 25);
        assert_eq!(f.streak(), Some((10, 2)));
        f.record(&Outcome::Success, 30);
        assert_eq!(f.streak(), None);
        assert_eq!(f.last_success_ms, Some(30));
        f.record(&Outcome::Signal(9), 40);
        assert_eq!(f.streak(), Some((40, 1)));
    }

    #[test]
    fn the_borrowed_view_writes_the_same_json_as_the_state() {
        let mut st = saved("b", 3, 3);
        st.run_ids.insert("a".into(), 3);
        st.running_task = Some("t".into());
        st.waiting_group = Some("g".into());
        st.failures.insert("t".into(), TaskFailures::default());
        st.alerts
            .insert("t".into(), crate::core::alert::AlertState::default());
        assert_eq!(
            serde_json::to_string(&st.view()).expect("view"),
            serde_json::to_string(&st).expect("state")
        );
    }

    #[test]
    fn a_pending_run_now_is_saved_and_an_older_state_without_it_loads() {
        let mut st = saved("b", 3, 3);
        st.run_now = Some(RunNowRequest {
            task: "c".into(),
            run_id: 4,
            requested_by: "alice on pts/3".into(),
        });
        let json = serde_json::to_string(&st.view()).expect("view");
        assert_eq!(json, serde_json::to_string(&st).expect("state"));
        let back: State = serde_json::from_str(&json).expect("load");
        assert_eq!(back, st);
        let (p, w) = pending(&back, &tasks(&["a", "b", "c"]));
        assert_eq!(
            p,
            Some(crate::core::chain::Pending {
                index: 2,
                run_id: 4,
                by: "alice on pts/3".into()
            })
        );
        assert_eq!(w, None);
        // The task left the chain: dropped, with a warning.
        let (p, w) = pending(&back, &tasks(&["a", "b"]));
        assert_eq!(p, None);
        assert!(w.is_some_and(|w| w.contains("run 4")));
        // A state written before run-now (no such field) loads, with none pending; and
        // one with none pending writes no field.
        st.run_now = None;
        let json = serde_json::to_string(&st).expect("state");
        assert!(!json.contains("run_now"), "{json}");
        let back: State = serde_json::from_str(&json).expect("load");
        assert_eq!(pending(&back, &tasks(&["a"])), (None, None));
    }
}
