//! The chain's state machine: which task runs next, when, and how a run is ended.
//!
//! This is the pure core. It never reads a clock, spawns, signals or touches a file:
//! the driver hands it `now` (a monotonic instant) and an [`Event`], and it answers
//! with [`Action`]s for the driver to carry out, plus [`Chain::next_deadline`], the
//! one instant at which the driver must wake it with [`Event::Tick`] if nothing else
//! happens first. So every timing rule (cooldowns, timeouts, stop and kill graces, a
//! signal in the middle of any of them) is tested below with a fake clock, in
//! microseconds.
//!
//! The life of one run, as a table:
//!
//! | phase    | event                        | actions / next phase                                   |
//! |----------|------------------------------|--------------------------------------------------------|
//! | Idle     | Tick at `due`                | Spawn -> Starting                                      |
//! | Idle     | Kick                         | due = now                                              |
//! | Idle     | Stop / StopNow               | Exit(0)                                                |
//! | Starting | Spawned                      | -> Running                                             |
//! | Starting | SpawnFailed                  | Finished(spawn-error) -> Idle (fail cooldown; no start |
//! |          |                              | before the next Tick, even when due at once)           |
//! | Starting | StartRefused (the fleet)     | -> Idle, same task, due at `retry_at` at the earliest; |
//! |          |                              | no run, the id spent (a run-now run is a request       |
//! |          |                              | again); a stop ends the chain now                      |
//! | Running  | Tick at timeout              | TERM group, kill at +kill_grace (outcome: timeout)     |
//! | Running  | Stop                         | stop at +stop_grace                                    |
//! | Running  | Tick at stop / StopNow       | TERM group, kill at +kill_grace (outcome: interrupted) |
//! | Running  | Tick at kill                 | KILL group                                             |
//! | Running  | LeaderExited                 | TERM group (leftovers) -> Reaping                      |
//! | Reaping  | Tick at kill                 | KILL group                                             |
//! | Reaping  | GroupEmpty / Tick at give-up | Finished -> Idle (cooldown) or Exit                    |
//!
//! A run-now request ([`Control::RunNow`], `run-chain run-now CHAIN TASK`) is answered at
//! once ([`Action::RunNow`]): refused while TASK runs (or is being started, or waits for
//! a group slot), while another request is pending, while the chain stops, and in
//! `--once`; else accepted with the run id it reserves. In a cooldown TASK starts at once;
//! otherwise the request is pending and TASK starts right after the run in progress (its
//! own group wait still applies). The order then goes on: the task that was due next
//! runs at its due time or after TASK's cooldown, whichever is later; if TASK was that
//! task, the chain moves on as after a scheduled run. A pending request outlives a stop
//! ([`Chain::pending`], kept in CHAIN.state), so the next instance runs it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Timing;
use crate::core::outcome::{Exit, Outcome};
use crate::time::Mono;

/// How long after SIGKILL the chain waits for a group to empty before it moves on
/// (a process stuck in uninterruptible sleep cannot be killed any faster).
pub(crate) const GIVE_UP_AFTER_KILL: Duration = Duration::from_secs(5);

/// A task as the state machine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainTask {
    pub(crate) name: String,
    pub(crate) timing: Timing,
}

/// Run for ever, or through once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Forever,
    Once,
}

/// Requests from outside (signals, subcommands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Graceful stop (SIGTERM, a hand-over, the first SIGINT): let a running task go on
    /// for up to `stop_grace`.
    Stop,
    /// Stop the running task at once (second SIGINT, SIGQUIT, `stop --now`).
    StopNow,
    /// End the current cooldown (SIGUSR1, `kick`); who asked, when known (`kick` over the
    /// control channel): the run the kick starts records it. A kick that ends no
    /// cooldown does nothing, and its source goes with it.
    Kick(Option<String>),
    /// A new config was loaded (SIGHUP): new timings for the same task names.
    Reconfigure(Vec<ChainTask>),
    /// Run task `index` out of turn (`run-now`); `by` says who asked.
    RunNow { index: usize, by: String },
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// Its turn came in the chain's order.
    #[default]
    Schedule,
    /// A kick ended the cooldown before it.
    Kick,
    /// A `run-now` request.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Kick => "kick",
            Trigger::Manual => "manual",
        }
    }
}

/// A run-now request accepted and not started yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) index: usize,
    pub(crate) run_id: u64,
    pub(crate) by: String,
}

/// Why a run-now request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// TASK is running (or being started, or waiting for a group slot).
    Running,
    /// Another request is pending: (its task, its run id).
    Pending(String, u64),
    /// The chain is stopping.
    Stopping,
    /// A `--once` chain runs its tasks once, in order.
    Once,
    /// The chain has no task so named: its tasks.
    UnknownTask(Vec<String>),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Running => write!(f, "it is running now"),
            Refusal::Pending(t, id) => {
                write!(f, "a run-now request is already pending ({t} run {id})")
            }
            Refusal::Stopping => write!(f, "the chain is stopping"),
            Refusal::Once => write!(f, "the chain runs --once"),
            Refusal::UnknownTask(tasks) => {
                write!(
                    f,
                    "no such task in the chain; its tasks: {}",
                    tasks.join(", ")
                )
            }
        }
    }
}

/// The answer to a run-now request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunNowAnswer {
    /// Accepted: the run id reserved; `at_once`: it starts now (else after the run in
    /// progress).
    Accepted {
        run_id: u64,
        at_once: bool,
    },
    Refused(Refusal),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The first event: decide whether to start at once or wait.
    Start,
    /// `next_deadline()` has passed.
    Tick,
    /// The run asked for by `Action::Spawn` is running.
    Spawned,
    /// The run asked for by `Action::Spawn` could not be started.
    SpawnFailed(String),
    /// The fleet refused the start (its start record was not committed under the lease):
    /// the task did not run, so this is no run of it and no failure. The chain goes back
    /// to that task, due at `retry_at` at the earliest (the lease's loss, if it is one,
    /// stops the chain meanwhile). The run id is spent, never given again (as any id once
    /// in the saved state; and a closed run's id is refused by the store). A run-now
    /// request is pending again with its id (its caller was told it), unless `stored`:
    /// the start record may have been committed after all (given up in flight), and the
    /// run, closed by the driver, is the request's answer.
    StartRefused {
        retry_at: Mono,
        stored: bool,
    },
    /// The task's concurrency group has no free slot: wait (the driver watches the slots).
    SlotBusy,
    /// A slot of the group may have come free: try again.
    SlotFree,
    /// The run's first process exited (it is not reaped yet).
    LeaderExited(Exit),
    /// Nothing of the run is left (its group and any escaped descendants are gone).
    GroupEmpty,
    Control(Control),
}

/// Which signal to send to the running task's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupSignal {
    Term,
    Kill,
}

/// A finished run, for logs, records and the saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finished {
    pub(crate) task: String,
    pub(crate) run_id: u64,
    pub(crate) outcome: Outcome,
    pub(crate) scheduled: Mono,
    pub(crate) started: Mono,
    pub(crate) ended: Mono,
    /// The cooldown chosen (None: no cooldown follows, e.g. an interrupted run or the
    /// last task of `--once`).
    pub(crate) cooldown: Option<Duration>,
}

/// What the driver must do.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start task `index` as run `run_id` (persist the run-id counter first), then
    /// report `Spawned` or `SpawnFailed`.
    Spawn {
        index: usize,
        task: String,
        run_id: u64,
    },
    /// Signal the running task's process group (and its escaped descendants).
    Signal(GroupSignal),
    /// A run ended: log it, record it, persist the position.
    Finished(Finished),
    /// Exit the process (for this reason; see [`ExitReason::code`]).
    Exit(ExitReason),
    /// The answer to a [`Control::RunNow`] (always the first action of that event).
    RunNow(RunNowAnswer),
}

/// Why the chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitReason {
    /// Stopped, or `--once` went through with every task a success.
    Done,
    /// `--once` went through and some task failed.
    OnceFailed,
}

impl ExitReason {
    /// The process's exit status: the one place it is mapped.
    pub(crate) fn code(self) -> u8 {
        match self {
            ExitReason::Done => crate::error::exit::OK,
            ExitReason::OnceFailed => crate::error::exit::ONCE_FAILED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Timeout,
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    index: usize,
    run_id: u64,
    scheduled: Mono,
    started: Mono,
    timeout_at: Option<Mono>,
    stop_at: Option<Mono>,
    /// Why run-chain sent TERM, if it did.
    why: Option<Why>,
    kill_at: Option<Mono>,
    killed: bool,
    /// A run out of turn: where the order goes on after it (task index, its due time).
    back: Option<(usize, Mono)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting to start task `index` at `due`. `cooled` remembers the run whose
    /// cooldown this is, so that a reload can recompute `due`.
    Idle {
        index: usize,
        due: Mono,
        cooled: Option<(usize, Mono, bool)>,
    },
    Starting {
        index: usize,
        run_id: u64,
        scheduled: Mono,
    },
    /// Waiting for a slot of the task's concurrency group since `since`.
    Waiting {
        index: usize,
        run_id: u64,
        scheduled: Mono,
        since: Mono,
    },
    Running(Run),
    Reaping {
        run: Run,
        outcome: Outcome,
        ended: Mono,
        give_up_at: Option<Mono>,
    },
    Done,
}

/// Where a chain resumes: computed from the saved state by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Resume {
    /// Index of the next task to run.
    pub(crate) index: usize,
    /// When it is due (None: at once).
    pub(crate) due: Option<Mono>,
    /// Last run id used, per task name.
    pub(crate) run_ids: BTreeMap<String, u64>,
    /// The run whose cooldown `due` ends (task index, end, success), if known: a reload
    /// recomputes `due` from it.
    pub(crate) cooled: Option<(usize, Mono, bool)>,
}

/// The state machine of one chain.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    tasks: Vec<ChainTask>,
    mode: Mode,
    phase: Phase,
    run_ids: BTreeMap<String, u64>,
    /// A stop was asked for: exit once nothing runs.
    stopping: bool,
    /// `--once`: did any task fail (or was the pass cut short)?
    once_failed: bool,
    /// The position when the chain exited (kept for the saved state).
    exit_position: (usize, Option<Mono>),
    /// The cooldown's run when the chain exited (see [`Chain::cooled`]).
    exit_cooled: Option<(usize, Mono, bool)>,
    /// A run-now request waiting for the run in progress to end.
    pending: Option<Pending>,
    /// Why the run being started (or running) was started, and who asked if manual.
    trigger: (Trigger, Option<String>),
    /// The cooldown in progress was ended by a kick (and who asked, if known).
    kicked: Option<Option<String>>,
    /// Where the order goes on after the run-now run being started (see [`Run::back`]).
    back: Option<(usize, Mono)>,
}

impl Chain {
    /// A chain of `tasks` (at least one), resuming at `resume`.
    pub(crate) fn new(tasks: Vec<ChainTask>, mode: Mode, resume: Resume) -> Chain {
        let index = if mode == Mode::Once || resume.index >= tasks.len() {
            0
        } else {
            resume.index
        };
        let due = match mode {
            Mode::Once => Duration::ZERO,
            Mode::Forever => resume.due.unwrap_or(Duration::ZERO),
        };
        let cooled = resume.cooled.filter(|(ran, _, _)| {
            mode == Mode::Forever && resume.due.is_some() && *ran < tasks.len()
        });
        Chain {
            tasks,
            mode,
            phase: Phase::Idle { index, due, cooled },
            run_ids: resume.run_ids,
            stopping: false,
            once_failed: false,
            exit_position: (index, Some(due)),
            exit_cooled: None,
            pending: None,
            trigger: (Trigger::Schedule, None),
            kicked: None,
            back: None,
        }
    }

    /// Resume with a run-now request that an earlier instance accepted (from CHAIN.state):
    /// it runs first. Ignored for `--once` or a task index out of range.
    pub(crate) fn with_pending(mut self, p: Option<Pending>) -> Chain {
        if let Some(p) = p.filter(|p| p.index < self.tasks.len() && self.mode == Mode::Forever) {
            let id = self
                .run_ids
                .entry(self.tasks[p.index].name.clone())
                .or_insert(0);
            *id = (*id).max(p.run_id);
            self.pending = Some(p);
        }
        self
    }

    /// The run-now request accepted and not started yet (for CHAIN.state).
    pub(crate) fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }

    /// Why the run being started or running was started, and who asked (manual runs).
    pub(crate) fn trigger(&self) -> (Trigger, Option<&str>) {
        (self.trigger.0, self.trigger.1.as_deref())
    }

    /// The run whose cooldown the chain is in (task index, end, success), if known; at
    /// the end, the one it was in when it exited.
    pub(crate) fn cooled(&self) -> Option<(usize, Mono, bool)> {
        match &self.phase {
            Phase::Idle { cooled, .. } => *cooled,
            Phase::Done => self.exit_cooled,
            _ => None,
        }
    }

    pub(crate) fn tasks(&self) -> &[ChainTask] {
        &self.tasks
    }

    pub(crate) fn run_ids(&self) -> &BTreeMap<String, u64> {
        &self.run_ids
    }

    /// The task that runs next (or runs now), and when it is due if it has not started.
    pub(crate) fn position(&self) -> (usize, Option<Mono>) {
        match &self.phase {
            Phase::Idle { index, due, .. } => (*index, Some(*due)),
            Phase::Starting { index, .. } => (*index, None),
            Phase::Waiting {
                index, scheduled, ..
            } => (*index, Some(*scheduled)),
            Phase::Running(r) | Phase::Reaping { run: r, .. } => (r.index, None),
            Phase::Done => self.exit_position,
        }
    }

    /// When the run being started (or waited for) was due.
    pub(crate) fn scheduled(&self) -> Option<Mono> {
        match &self.phase {
            Phase::Starting { scheduled, .. } | Phase::Waiting { scheduled, .. } => {
                Some(*scheduled)
            }
            Phase::Running(r) | Phase::Reaping { run: r, .. } => Some(r.scheduled),
            _ => None,
        }
    }

    /// Waiting for a group slot: (task index, since).
    #[cfg(test)]
    fn waiting(&self) -> Option<(usize, Mono)> {
        match &self.phase {
            Phase::Waiting { index, since, .. } => Some((*index, *since)),
            _ => None,
        }
    }

    /// True between runs: waiting for the next task's due time (what a kick ends).
    pub(crate) fn in_cooldown(&self) -> bool {
        matches!(self.phase, Phase::Idle { .. })
    }

    /// True while the run's first process has exited and its leftovers are being ended.
    pub(crate) fn reaping(&self) -> bool {
        matches!(self.phase, Phase::Reaping { .. })
    }

    /// True once an `Exit` action has been returned.
    pub(crate) fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The instant at which the driver must send `Tick`, if nothing else comes first.
    pub(crate) fn next_deadline(&self) -> Option<Mono> {
        match &self.phase {
            Phase::Idle { due, .. } => Some(*due),
            Phase::Starting { .. } | Phase::Waiting { .. } | Phase::Done => None,
            Phase::Running(r) => [r.timeout_at, r.stop_at, r.kill_at]
                .into_iter()
                .flatten()
                .min(),
            Phase::Reaping {
                run, give_up_at, ..
            } => [run.kill_at, *give_up_at].into_iter().flatten().min(),
        }
    }

    /// Feed one event; get the actions to carry out, in order.
    pub(crate) fn on_event(&mut self, now: Mono, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                // This instance cannot have been late before it existed: a due time in
                // the past (the chain was down, or is new) counts from now.
                if let Phase::Idle { due, .. } = &mut self.phase {
                    if *due < now {
                        *due = now;
                    }
                }
                self.tick(now, &mut out)
            }
            Event::Tick => self.tick(now, &mut out),
            Event::Spawned => {
                if let Phase::Starting {
                    index,
                    run_id,
                    scheduled,
                } = self.phase
                {
                    let timing = self.tasks[index].timing;
                    let mut run = Run {
                        index,
                        run_id,
                        scheduled,
                        started: now,
                        timeout_at: timing.timeout.map(|t| now + t),
                        stop_at: None,
                        why: None,
                        kill_at: None,
                        killed: false,
                        back: self.back.take(),
                    };
                    if self.stopping {
                        // A stop arrived while the run was being started.
                        run.stop_at = Some(now + timing.stop_grace);
                    }
                    self.phase = Phase::Running(run);
                    self.tick(now, &mut out);
                }
            }
            Event::SlotBusy => {
                if let Phase::Starting {
                    index,
                    run_id,
                    scheduled,
                } = self.phase
                {
                    self.phase = Phase::Waiting {
                        index,
                        run_id,
                        scheduled,
                        since: now,
                    };
                }
            }
            Event::SlotFree => {
                if let Phase::Waiting {
                    index,
                    run_id,
                    scheduled,
                    ..
                } = self.phase
                {
                    self.phase = Phase::Starting {
                        index,
                        run_id,
                        scheduled,
                    };
                    out.push(Action::Spawn {
                        index,
                        task: self.tasks[index].name.clone(),
                        run_id,
                    });
                }
            }
            Event::SpawnFailed(msg) => {
                if let Phase::Starting {
                    index,
                    run_id,
                    scheduled,
                } = self.phase
                {
                    let run = Run {
                        index,
                        run_id,
                        scheduled,
                        started: now,
                        timeout_at: None,
                        stop_at: None,
                        why: None,
                        kill_at: None,
                        killed: false,
                        back: self.back.take(),
                    };
                    self.finish(now, run, Outcome::SpawnError(msg), now, &mut out);
                }
            }
            Event::StartRefused { retry_at, stored } => {
                if let Phase::Starting {
                    index, scheduled, ..
                } = self.phase
                {
                    self.start_refused(now, index, scheduled, retry_at, stored, &mut out);
                }
            }
            Event::LeaderExited(exit) => {
                if let Phase::Running(run) = &self.phase {
                    let run = run.clone();
                    let outcome = match run.why {
                        Some(Why::Timeout) => Outcome::Timeout,
                        Some(Why::Stop) => Outcome::Interrupted,
                        None => Outcome::from_exit(exit),
                    };
                    let mut run = run;
                    let kill_grace = self.tasks[run.index].timing.kill_grace;
                    if run.kill_at.is_none() && !run.killed {
                        run.kill_at = Some(now + kill_grace);
                    }
                    let give_up_at = if run.killed {
                        Some(now + GIVE_UP_AFTER_KILL)
                    } else {
                        None
                    };
                    run.timeout_at = None;
                    run.stop_at = None;
                    self.phase = Phase::Reaping {
                        run,
                        outcome,
                        ended: now,
                        give_up_at,
                    };
                    // Whatever is left of the group gets SIGTERM.
                    out.push(Action::Signal(GroupSignal::Term));
                }
            }
            Event::GroupEmpty => {
                if let Phase::Reaping {
                    run,
                    outcome,
                    ended,
                    ..
                } = &self.phase
                {
                    let (run, outcome, ended) = (run.clone(), outcome.clone(), *ended);
                    self.finish(now, run, outcome, ended, &mut out);
                }
            }
            Event::Control(c) => self.control(now, c, &mut out),
        }
        out
    }

    fn control(&mut self, now: Mono, c: Control, out: &mut Vec<Action>) {
        match c {
            Control::Stop | Control::StopNow => {
                let at_once = c == Control::StopNow;
                self.stopping = true;
                match &mut self.phase {
                    Phase::Idle { .. } | Phase::Waiting { .. } => {
                        if self.mode == Mode::Once {
                            self.once_failed = true;
                        }
                        self.exit(out);
                    }
                    Phase::Running(run) => {
                        let grace = self.tasks[run.index].timing.stop_grace;
                        let at = if at_once { now } else { now + grace };
                        run.stop_at = Some(run.stop_at.map_or(at, |s| s.min(at)));
                        self.tick(now, out);
                    }
                    // The run has ended or not begun; the stop takes effect right after.
                    Phase::Starting { .. } | Phase::Reaping { .. } | Phase::Done => {}
                }
            }
            Control::Kick(by) => {
                if let Phase::Idle { due, .. } = &mut self.phase {
                    if *due > now {
                        *due = now;
                        self.kicked = Some(by);
                    }
                    self.tick(now, out);
                }
            }
            Control::RunNow { index, by } => self.run_now(now, index, by, out),
            Control::Reconfigure(tasks) => {
                let same_names = tasks.len() == self.tasks.len()
                    && tasks.iter().zip(&self.tasks).all(|(a, b)| a.name == b.name);
                if !same_names {
                    return;
                }
                self.tasks = tasks;
                if let Phase::Idle {
                    due,
                    cooled: Some((ran, ended, ok)),
                    ..
                } = &mut self.phase
                {
                    let t = self.tasks[*ran].timing;
                    *due = *ended
                        + if *ok {
                            t.success_cooldown
                        } else {
                            t.fail_cooldown
                        };
                }
                self.tick(now, out);
            }
        }
    }

    fn run_now(&mut self, now: Mono, index: usize, by: String, out: &mut Vec<Action>) {
        let busy = match &self.phase {
            Phase::Starting { index: i, .. } | Phase::Waiting { index: i, .. } => Some(*i),
            Phase::Running(r) | Phase::Reaping { run: r, .. } => Some(r.index),
            Phase::Idle { .. } | Phase::Done => None,
        };
        let refusal = if self.mode == Mode::Once {
            Some(Refusal::Once)
        } else if self.stopping || self.done() {
            Some(Refusal::Stopping)
        } else if busy == Some(index) {
            Some(Refusal::Running)
        } else if let Some(p) = &self.pending {
            Some(Refusal::Pending(self.tasks[p.index].name.clone(), p.run_id))
        } else {
            None
        };
        if let Some(r) = refusal {
            out.push(Action::RunNow(RunNowAnswer::Refused(r)));
            return;
        }
        let id = self
            .run_ids
            .entry(self.tasks[index].name.clone())
            .or_insert(0);
        *id += 1;
        let run_id = *id;
        let at_once = busy.is_none();
        out.push(Action::RunNow(RunNowAnswer::Accepted { run_id, at_once }));
        self.pending = Some(Pending { index, run_id, by });
        if at_once {
            self.start_pending(now, out);
        }
    }

    /// In a cooldown with a request pending: start it now, and remember where the order
    /// goes on after it.
    fn start_pending(&mut self, now: Mono, out: &mut Vec<Action>) {
        let Phase::Idle {
            index: next, due, ..
        } = self.phase
        else {
            return;
        };
        let Some(p) = self.pending.take() else {
            return;
        };
        // TASK due next: it takes its turn now, and the chain moves on as after a
        // scheduled run.
        self.back = (next != p.index).then_some((next, due));
        self.trigger = (Trigger::Manual, Some(p.by));
        self.kicked = None;
        self.phase = Phase::Starting {
            index: p.index,
            run_id: p.run_id,
            scheduled: now,
        };
        out.push(Action::Spawn {
            index: p.index,
            task: self.tasks[p.index].name.clone(),
            run_id: p.run_id,
        });
    }

    /// See [`Event::StartRefused`].
    fn start_refused(
        &mut self,
        now: Mono,
        index: usize,
        scheduled: Mono,
        retry_at: Mono,
        stored: bool,
        out: &mut Vec<Action>,
    ) {
        let retry_at = retry_at.max(now);
        if self.trigger.0 == Trigger::Manual {
            // A run-now run: the request is pending again (with the id its caller has),
            // unless its run may be stored; the order goes on where it was.
            let Phase::Starting { run_id, .. } = self.phase else {
                return;
            };
            let (next, due) = self.back.take().unwrap_or((index, scheduled));
            self.pending = (!stored).then(|| Pending {
                index,
                run_id,
                by: self.trigger.1.take().unwrap_or_default(),
            });
            self.phase = Phase::Idle {
                index: next,
                due: due.max(retry_at),
                cooled: None,
            };
        } else {
            if self.trigger.0 == Trigger::Kick {
                // Still the kick's run when it starts.
                self.kicked = Some(self.trigger.1.take());
            }
            self.phase = Phase::Idle {
                index,
                due: scheduled.max(retry_at),
                cooled: None,
            };
        }
        self.trigger = (Trigger::Schedule, None);
        if self.stopping {
            self.exit(out);
        }
    }

    fn exit(&mut self, out: &mut Vec<Action>) {
        // A run-now run still waiting for its group slot is a request again, for the
        // next instance, and the order's position is the one it will go back to.
        if let Phase::Waiting {
            index,
            run_id,
            scheduled,
            ..
        } = self.phase
        {
            if self.trigger.0 == Trigger::Manual {
                let (next, due) = self.back.take().unwrap_or((index, scheduled));
                self.pending = Some(Pending {
                    index,
                    run_id,
                    by: self.trigger.1.take().unwrap_or_default(),
                });
                self.phase = Phase::Idle {
                    index: next,
                    due,
                    cooled: None,
                };
            }
        }
        if !self.done() {
            self.exit_position = self.position();
            self.exit_cooled = self.cooled();
        }
        let reason = match self.mode {
            Mode::Once if self.once_failed => ExitReason::OnceFailed,
            _ => ExitReason::Done,
        };
        self.phase = Phase::Done;
        out.push(Action::Exit(reason));
    }

    /// Act on every deadline that has passed.
    fn tick(&mut self, now: Mono, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Idle { index, due, .. } => {
                if self.stopping {
                    self.exit(out);
                    return;
                }
                if self.pending.is_some() {
                    self.start_pending(now, out);
                    return;
                }
                if *due <= now {
                    self.trigger = match self.kicked.take() {
                        Some(by) => (Trigger::Kick, by),
                        None => (Trigger::Schedule, None),
                    };
                    let index = *index;
                    let scheduled = *due;
                    let name = self.tasks[index].name.clone();
                    let id = self.run_ids.entry(name.clone()).or_insert(0);
                    *id += 1;
                    let run_id = *id;
                    self.phase = Phase::Starting {
                        index,
                        run_id,
                        scheduled,
                    };
                    out.push(Action::Spawn {
                        index,
                        task: name,
                        run_id,
                    });
                }
            }
            Phase::Running(run) => {
                let timing = self.tasks[run.index].timing;
                if run.why.is_none() {
                    let timed_out = run.timeout_at.is_some_and(|t| t <= now);
                    let stopped = run.stop_at.is_some_and(|t| t <= now);
                    if timed_out || stopped {
                        // A timeout that falls due with a stop counts as the timeout.
                        run.why = Some(if timed_out { Why::Timeout } else { Why::Stop });
                        run.timeout_at = None;
                        run.stop_at = None;
                        run.kill_at = Some(now + timing.kill_grace);
                        out.push(Action::Signal(GroupSignal::Term));
                    }
                }
                if let Some(k) = run.kill_at {
                    if k <= now && !run.killed {
                        run.killed = true;
                        run.kill_at = None;
                        out.push(Action::Signal(GroupSignal::Kill));
                    }
                }
            }
            Phase::Reaping {
                run, give_up_at, ..
            } => {
                if let Some(k) = run.kill_at {
                    if k <= now && !run.killed {
                        run.killed = true;
                        run.kill_at = None;
                        *give_up_at = Some(now + GIVE_UP_AFTER_KILL);
                        out.push(Action::Signal(GroupSignal::Kill));
                    }
                }
                if give_up_at.is_some_and(|g| g <= now) {
                    // Processes that survive SIGKILL this long are stuck in the kernel;
                    // the driver logs them. The chain moves on.
                    if let Phase::Reaping {
                        run,
                        outcome,
                        ended,
                        ..
                    } = std::mem::replace(&mut self.phase, Phase::Done)
                    {
                        self.finish(now, run, outcome, ended, out);
                    }
                }
            }
            Phase::Starting { .. } | Phase::Waiting { .. } | Phase::Done => {}
        }
    }

    fn finish(
        &mut self,
        now: Mono,
        run: Run,
        outcome: Outcome,
        ended: Mono,
        out: &mut Vec<Action>,
    ) {
        let task = &self.tasks[run.index];
        let last = run.index + 1 == self.tasks.len();
        let interrupted = outcome == Outcome::Interrupted;
        if self.mode == Mode::Once && !outcome.is_success() {
            self.once_failed = true;
        }
        let cooldown = if interrupted || (self.mode == Mode::Once && last) {
            None
        } else if outcome.is_success() {
            Some(task.timing.success_cooldown)
        } else {
            Some(task.timing.fail_cooldown)
        };
        let ok = outcome.is_success();
        let spawn_error = matches!(outcome, Outcome::SpawnError(_));
        out.push(Action::Finished(Finished {
            task: task.name.clone(),
            run_id: run.run_id,
            outcome,
            scheduled: run.scheduled,
            started: run.started,
            ended,
            cooldown,
        }));
        if let (true, Some((next, due_then))) = (interrupted, run.back) {
            // A run out of turn that was stopped is not run again: the order goes on.
            self.phase = Phase::Idle {
                index: next,
                due: due_then.max(now),
                cooled: None,
            };
        } else if interrupted {
            // Run it again first: at once here, or by the instance that takes over.
            self.phase = Phase::Idle {
                index: run.index,
                due: now,
                cooled: None,
            };
        } else if self.mode == Mode::Once && last {
            self.exit(out);
            return;
        } else if let Some((next, due_then)) = run.back {
            // A run out of turn: the order goes on with the task that was due next, at
            // its due time or after this run's cooldown, whichever is later.
            let after = ended + cooldown.unwrap_or(Duration::ZERO);
            self.phase = Phase::Idle {
                index: next,
                due: after.max(due_then).max(now),
                cooled: (after >= due_then).then_some((run.index, ended, ok)),
            };
        } else {
            let next = (run.index + 1) % self.tasks.len();
            // The cooldown counts from the end of the run, but the next task never
            // starts before the last one's leftovers are gone (now).
            let due = (ended + cooldown.unwrap_or(Duration::ZERO)).max(now);
            self.phase = Phase::Idle {
                index: next,
                due,
                cooled: Some((run.index, ended, ok)),
            };
        }
        self.kicked = None;
        if self.stopping {
            self.exit(out);
        } else if !spawn_error {
            self.tick(now, out);
        }
        // After a start that failed, the next one waits for a Tick even when it is due
        // at once (fail_cooldown 0): a program that cannot start would otherwise be
        // retried within this one event for ever, and the driver would never get back to
        // its signals, its clock or its store.
    }
}

#[cfg(test)]
mod tests;
