//! The supervisor: one pure machine over the chain, its tasks' failures and their alerts.
//!
//! The driver feeds it `(now, event)`, where [`Now`] carries both clocks read once, and
//! carries out the [`Effect`]s it returns: spawn, signal the group, record a run's end,
//! queue an alert, save the state, log, exit. Everything that is a decision lives here:
//! the alert policy of a task and its downtime deadlines (on the wall clock, turned into
//! monotonic instants with `now`), the failure signature, an alert mail's fields, SIGINT
//! counting, the `--once` state merge and why the chain exits ([`ExitReason`]). Nothing
//! here reads a clock or touches the OS; the tests below run weekends in microseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{self, Task};
use crate::core::alert::{self, AlertState, Decision, FailedRun};
use crate::core::alert_mail::{self, AlertMail};
pub(crate) use crate::core::chain::ExitReason;
use crate::core::chain::{self, Action, Chain, ChainTask, Control, Finished, GroupSignal, Mode};
pub(crate) use crate::core::chain::{Refusal, RunNowAnswer, Trigger};
use crate::core::outcome::Outcome;
use crate::core::resume::{self, State, TaskFailures};
use crate::core::signature;
use crate::time::{fmt_dur, rfc3339, Mono, Now};

/// A signal, as the supervisor knows it (the driver maps the OS's numbers). SIGHUP is
/// the driver's (it reloads the config, then feeds [`Event::Reloaded`]), and SIGCHLD
/// becomes [`chain::Event::LeaderExited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Int,
    Quit,
    Usr1,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// An event of the chain (start, tick, spawned, the leader's exit, the group empty...).
    Chain(chain::Event),
    Signal(Signal),
    /// The config was reloaded: these tasks and alert rate from now on.
    Reloaded {
        tasks: Vec<Task>,
        max_per_hour: u32,
    },
    /// Apply the tasks' timings to the chain as a reload does (a SIGHUP kept by the
    /// waiting launch).
    Reconfigure,
    /// [`Supervisor::alert_deadline`] has passed.
    AlertTick,
    /// A `run-now` request for `task`, asked by `by`.
    RunNow {
        task: String,
        by: String,
    },
    /// `kick`, asked by `by` over the control channel (a SIGUSR1 is [`Signal::Usr1`]).
    Kick {
        by: String,
    },
    /// `stop` (`now`: `stop --now`), asked by `by` over the control channel: as SIGTERM
    /// (SIGQUIT), and the log names who asked.
    Stop {
        now: bool,
        by: String,
    },
}

/// The output of the run that ends, as far as the supervisor needs it (the driver's
/// output tail): read only when the run failed.
pub(crate) trait RunOutput {
    /// The last non-empty line.
    fn last_line(&self) -> Option<String>;
    /// The tail kept.
    fn bytes(&self) -> Vec<u8>;
    /// Bytes printed in all.
    fn total(&self) -> u64;
    /// Whether the tail kept is cut (the run printed more than it keeps).
    fn cut(&self) -> bool;
}

/// What the driver must do, in order.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Start task `index` as run `run_id`: persist the run id, take a group slot, spawn;
    /// report `Spawned`, `SpawnFailed` or `SlotBusy`.
    Spawn {
        index: usize,
        task: String,
        run_id: u64,
    },
    /// Signal the running task's process group.
    Signal(GroupSignal),
    /// A run ended: clean up, record it, queue its alert (if any), log it.
    RunEnded(Box<RunEnded>),
    /// Queue this alert (a downtime alert, due between runs).
    Alert(Box<AlertDue>),
    /// CHAIN.state must be written.
    SaveState,
    /// Log this line.
    Log(log::Level, String),
    /// Exit the process.
    Exit(ExitReason),
    /// Answer the run-now request (the first effect of [`Event::RunNow`]); when accepted,
    /// write its `queued` record: (task, who asked).
    RunNow(RunNowAnswer, Option<(String, String)>),
}

/// A run's end, with the wall times of its record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RunEnded {
    pub(crate) f: Finished,
    pub(crate) scheduled_ms: u64,
    pub(crate) start_ms: u64,
    pub(crate) stop_ms: u64,
    pub(crate) duration: Duration,
    /// The task's streak after this run: (start, failures).
    pub(crate) streak: Option<(u64, u64)>,
    /// The alert this run causes.
    pub(crate) alert: Option<AlertDue>,
    /// Why it was started, and who asked (a manual run).
    pub(crate) trigger: Trigger,
    pub(crate) requested_by: Option<String>,
}

impl RunEnded {
    /// A cooldown of at least this long after a run lets the driver hand its records to
    /// the store at once (it has nothing else to do until the next run).
    pub(crate) const IDLE_AHEAD: Duration = Duration::from_millis(100);

    /// Whether a cooldown of at least [`RunEnded::IDLE_AHEAD`] follows this run.
    pub(crate) fn cooldown_ahead(&self) -> bool {
        self.f.cooldown.is_some_and(|c| c >= Self::IDLE_AHEAD)
    }

    /// The level of the run's end in the log: a warning for a failure.
    pub(crate) fn log_level(&self) -> log::Level {
        if self.f.outcome.is_failure() {
            log::Level::Warn
        } else {
            log::Level::Info
        }
    }
}

/// When the running task's output is next written to the record store (its end carries
/// it anyway): [`OutputFlush::EVERY`] after it first grew since the last write, and only
/// if it grew since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OutputFlush {
    at: Option<Mono>,
    /// The bytes printed when it was last written.
    written: u64,
}

impl OutputFlush {
    pub(crate) const EVERY: Duration = Duration::from_secs(1);

    /// A run starts: nothing written, nothing due.
    pub(crate) fn start(&mut self) {
        *self = OutputFlush::default();
    }

    /// The run ended: nothing due.
    pub(crate) fn stop(&mut self) {
        self.at = None;
    }

    /// The output grew, at `now`.
    pub(crate) fn grew(&mut self, now: Mono) {
        self.at.get_or_insert(now + Self::EVERY);
    }

    /// When to write it, if at all.
    pub(crate) fn due(&self) -> Option<Mono> {
        self.at
    }

    /// It is due, with `total` bytes printed: whether to write it (not if that much was
    /// written already). Nothing is due after it.
    pub(crate) fn take(&mut self, total: u64) -> bool {
        self.at = None;
        std::mem::replace(&mut self.written, total) != total
    }
}

/// A task's failed run as the record store has it, read back for an alert mail by an
/// instance that did not see that run (see [`Supervisor::failed_from_store`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRun {
    pub(crate) run_id: u64,
    pub(crate) outcome: Outcome,
    pub(crate) start_ms: u64,
    pub(crate) duration_ms: u64,
    /// The output tail kept, and the bytes printed in all.
    pub(crate) output: Vec<u8>,
    pub(crate) output_bytes: u64,
}

/// What a read of the record store for an alert mail found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRead {
    /// The chain's tasks' last durations (task, ms), for the mail's next attempt.
    pub(crate) durations: Vec<(String, u64)>,
    /// The failed run. Ok(None): not in the store (pruned, never written, or not a
    /// failure); Err: why the store could not be read.
    pub(crate) failed: Result<Option<StoredRun>, String>,
}

/// An alert to send, with what the supervisor knows of the streak's last failed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlertDue {
    pub(crate) task: String,
    pub(crate) decision: Decision,
    /// The run that ended the streak, for `recovered`.
    pub(crate) recovered_by: Option<String>,
    /// The streak's last failed run, as the alert state has it.
    pub(crate) last_failed: Option<FailedRun>,
    /// Its output, if this instance saw it: (run id, tail, bytes printed).
    pub(crate) output: Option<(u64, Vec<u8>, u64)>,
    /// Due between runs (a downtime alert): what the driver learns of the last failed run
    /// from the store is kept for the next mails.
    pub(crate) between_runs: bool,
}

/// The streak's last failed run as a mail shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FailedView {
    pub(crate) run: Option<FailedRun>,
    pub(crate) output: Vec<u8>,
    /// Bytes the run printed, when known from its output's source.
    pub(crate) output_bytes: Option<u64>,
    /// Why the output is missing.
    pub(crate) note: Option<String>,
}

impl AlertDue {
    /// The failed run and its output, when this instance saw that run (else the driver
    /// reads them from the record store).
    pub(crate) fn seen(&self) -> Option<FailedView> {
        let (r, (id, output, bytes)) = (self.last_failed.as_ref()?, self.output.as_ref()?);
        (*id == r.run_id).then(|| FailedView {
            run: Some(r.clone()),
            output: output.clone(),
            output_bytes: Some(*bytes),
            note: None,
        })
    }
}

/// The run in progress, in wall time (for its record and the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) task: String,
    pub(crate) run_id: u64,
    pub(crate) scheduled_ms: u64,
    pub(crate) start_ms: u64,
    /// Why it was started, and who asked (a manual run).
    pub(crate) trigger: Trigger,
    pub(crate) requested_by: Option<String>,
}

/// The run in progress as CHAIN.state names it: (task, run id, since).
pub(crate) type Running<'a> = Option<(&'a str, u64, u64)>;

/// The chain's view of its tasks.
pub(crate) fn chain_tasks(tasks: &[Task]) -> Vec<ChainTask> {
    tasks
        .iter()
        .map(|t| ChainTask {
            name: t.name.clone(),
            timing: t.timing,
        })
        .collect()
}

pub(crate) struct Supervisor {
    chain: Chain,
    mode: Mode,
    chain_name: String,
    host: String,
    tasks: Vec<Task>,
    max_per_hour: u32,
    /// The state as loaded (for `--once`, which keeps the chain's position as it was).
    base_state: State,
    failures: BTreeMap<String, TaskFailures>,
    alerts: BTreeMap<String, AlertState>,
    /// Per task, the output of the streak's last failed run (run id, output tail, bytes
    /// printed), for the mails of the streak; the rest of that run is in the task's
    /// [`AlertState::last_failed`]. A relaunched instance reads it from the record store.
    last_failure: BTreeMap<String, (u64, Vec<u8>, u64)>,
    /// Per task, the duration of its last run (ms), to estimate when a task comes next.
    durations: BTreeMap<String, u64>,
    current: Option<Current>,
    sigints: u32,
    /// The effects buffer, handed out by [`Supervisor::on`] and given back by
    /// [`Supervisor::recycle`]: no allocation per event.
    spare: Vec<Effect>,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        chain_name: String,
        host: String,
        tasks: Vec<Task>,
        max_per_hour: u32,
        mode: Mode,
        chain: Chain,
        base_state: State,
    ) -> Supervisor {
        Supervisor {
            failures: base_state.failures.clone(),
            alerts: base_state.alerts.clone(),
            chain,
            mode,
            chain_name,
            host,
            tasks,
            max_per_hour,
            base_state,
            last_failure: BTreeMap::new(),
            durations: BTreeMap::new(),
            current: None,
            sigints: 0,
            spare: Vec::new(),
        }
    }

    pub(crate) fn chain(&self) -> &Chain {
        &self.chain
    }
    pub(crate) fn tasks(&self) -> &[Task] {
        &self.tasks
    }
    pub(crate) fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }
    pub(crate) fn base_state(&self) -> &State {
        &self.base_state
    }
    pub(crate) fn current(&self) -> Option<&Current> {
        self.current.as_ref()
    }

    /// Feed one event; returns what to do. Give the vector back with
    /// [`Supervisor::recycle`].
    #[must_use]
    pub(crate) fn on(&mut self, now: Now, ev: Event, output: &dyn RunOutput) -> Vec<Effect> {
        let mut out = std::mem::take(&mut self.spare);
        match ev {
            Event::Chain(e) => self.chain_event(now, e, output, &mut out),
            Event::Signal(s) => self.signal(now, s, output, &mut out),
            Event::Reloaded {
                tasks,
                max_per_hour,
            } => {
                self.tasks = tasks;
                self.max_per_hour = max_per_hour;
                self.reconfigure(now, output, &mut out);
            }
            Event::Reconfigure => self.reconfigure(now, output, &mut out),
            Event::AlertTick => self.alert_ticks(now, &mut out),
            Event::RunNow { task, by } => self.run_now(now, task, by, output, &mut out),
            Event::Kick { by } => {
                let name = &self.chain_name;
                out.push(Effect::Log(
                    log::Level::Info,
                    if self.chain.in_cooldown() {
                        format!("{name}: kicked by {by}: ending the cooldown")
                    } else {
                        format!("{name}: kicked by {by}: not in a cooldown; nothing to end")
                    },
                ));
                let ev = chain::Event::Control(Control::Kick(Some(by)));
                self.chain_event(now, ev, output, &mut out);
            }
            Event::Stop { now: at_once, by } => {
                let name = &self.chain_name;
                out.push(Effect::Log(
                    log::Level::Info,
                    if at_once {
                        format!("{name}: stop --now asked by {by}: stopping the running task now")
                    } else {
                        format!("{name}: stop asked by {by}: stopping")
                    },
                ));
                let c = if at_once {
                    Control::StopNow
                } else {
                    Control::Stop
                };
                self.chain_event(now, chain::Event::Control(c), output, &mut out);
            }
        }
        out
    }

    fn run_now(
        &mut self,
        now: Now,
        task: String,
        by: String,
        output: &dyn RunOutput,
        out: &mut Vec<Effect>,
    ) {
        let name = self.chain_name.clone();
        let Some(index) = self.tasks.iter().position(|t| t.name == task) else {
            let tasks = self.tasks.iter().map(|t| t.name.clone()).collect();
            out.push(Effect::RunNow(
                RunNowAnswer::Refused(Refusal::UnknownTask(tasks)),
                None,
            ));
            return;
        };
        let level = log::Level::Info;
        let start = out.len();
        let ev = chain::Event::Control(Control::RunNow {
            index,
            by: by.clone(),
        });
        self.chain_event(now, ev, output, out);
        // The chain's answer is the first of its actions.
        if let Some(Effect::RunNow(answer, queued)) = out.get_mut(start) {
            let msg = match answer {
                RunNowAnswer::Accepted { run_id, at_once } => {
                    *queued = Some((task.clone(), by.clone()));
                    format!(
                        "{name}: run-now {task} (asked by {by}): accepted as run {run_id}, {}",
                        if *at_once {
                            "starting now"
                        } else {
                            "after the run in progress"
                        }
                    )
                }
                RunNowAnswer::Refused(r) => {
                    format!("{name}: run-now {task} (asked by {by}): refused: {r}")
                }
            };
            let accepted = queued.is_some();
            out.insert(start + 1, Effect::Log(level, msg));
            if accepted {
                out.push(Effect::SaveState);
            }
        }
    }

    /// Take back the vector [`Supervisor::on`] returned, for the next event.
    pub(crate) fn recycle(&mut self, mut effects: Vec<Effect>) {
        effects.clear();
        self.spare = effects;
    }

    /// The reload may move the due time (a changed cooldown applies to the one in
    /// progress) and the task list: CHAIN.state says so at once.
    fn reconfigure(&mut self, now: Now, output: &dyn RunOutput, out: &mut Vec<Effect>) {
        out.push(Effect::SaveState);
        let ev = chain::Event::Control(Control::Reconfigure(chain_tasks(&self.tasks)));
        self.chain_event(now, ev, output, out);
    }

    fn chain_event(
        &mut self,
        now: Now,
        ev: chain::Event,
        output: &dyn RunOutput,
        out: &mut Vec<Effect>,
    ) {
        // The leader's exit during the reaping is nothing new.
        if matches!(ev, chain::Event::LeaderExited(_)) && self.chain.reaping() {
            return;
        }
        if matches!(ev, chain::Event::StartRefused { .. }) {
            // No run was begun (see the chain's event): nothing of it is kept, and the
            // state no longer names it.
            self.current = None;
            out.push(Effect::SaveState);
        }
        for a in self.chain.on_event(now.mono, ev) {
            match a {
                Action::Spawn {
                    index,
                    task,
                    run_id,
                } => out.push(Effect::Spawn {
                    index,
                    task,
                    run_id,
                }),
                Action::Signal(s) => out.push(Effect::Signal(s)),
                Action::Finished(f) => self.finished(now, f, output, out),
                Action::Exit(r) => out.push(Effect::Exit(r)),
                Action::RunNow(a) => out.push(Effect::RunNow(a, None)),
            }
        }
    }

    fn signal(&mut self, now: Now, s: Signal, output: &dyn RunOutput, out: &mut Vec<Effect>) {
        let name = &self.chain_name;
        let info = |msg: String| Effect::Log(log::Level::Info, msg);
        let control = match s {
            Signal::Term => {
                out.push(info(format!("{name}: SIGTERM: stopping")));
                Control::Stop
            }
            Signal::Int => {
                self.sigints += 1;
                if self.sigints == 1 {
                    out.push(info(format!(
                        "{name}: SIGINT: stopping (a second SIGINT stops the running task at once)"
                    )));
                    Control::Stop
                } else {
                    out.push(info(format!(
                        "{name}: SIGINT again: stopping the running task now"
                    )));
                    Control::StopNow
                }
            }
            Signal::Quit => {
                out.push(info(format!(
                    "{name}: SIGQUIT: stopping the running task now"
                )));
                Control::StopNow
            }
            Signal::Usr1 => {
                out.push(info(if self.chain.in_cooldown() {
                    format!("{name}: SIGUSR1: ending the cooldown")
                } else {
                    format!("{name}: SIGUSR1: not in a cooldown; nothing to end")
                }));
                Control::Kick(None)
            }
        };
        self.chain_event(now, chain::Event::Control(control), output, out);
    }

    /// The driver is about to spawn task `index` as run `run_id`: the run's wall times.
    /// Returns the run and its task.
    pub(crate) fn begin_run(&mut self, now: Now, index: usize, run_id: u64) -> (&Current, &Task) {
        let scheduled = self.chain.scheduled().unwrap_or(now.mono);
        let task = &self.tasks[index];
        let (trigger, by) = self.chain.trigger();
        let cur = self.current.insert(Current {
            task: task.name.clone(),
            run_id,
            scheduled_ms: now.wall_of(scheduled),
            start_ms: now.wall_of(now.mono),
            trigger,
            requested_by: by.map(str::to_string),
        });
        (cur, task)
    }

    /// A run ended: its failures, its alert, what the next mails show of it.
    fn finished(&mut self, now: Now, f: Finished, output: &dyn RunOutput, out: &mut Vec<Effect>) {
        let duration = f.ended.saturating_sub(f.started);
        let stop_ms = now.wall_of(f.ended);
        let fails = self.failures.entry(f.task.clone()).or_default();
        fails.record(&f.outcome, stop_ms);
        let streak = fails.streak();
        let (scheduled_ms, start_ms, trigger, requested_by) = match self.current.take() {
            Some(c) if c.task == f.task && c.run_id == f.run_id => {
                (c.scheduled_ms, c.start_ms, c.trigger, c.requested_by)
            }
            _ => {
                // A start that failed: no run was begun; the chain knows why it was tried.
                let (t, by) = self.chain.trigger();
                (
                    now.wall_of(f.scheduled),
                    now.wall_of(f.started),
                    t,
                    by.map(str::to_string),
                )
            }
        };
        if f.outcome != Outcome::Interrupted {
            self.durations
                .insert(f.task.clone(), duration.as_millis() as u64);
        }
        let line = f.outcome.is_failure().then(|| match &f.outcome {
            Outcome::SpawnError(m) => Some(m.clone()),
            _ => output.last_line(),
        });
        if let Some(line) = &line {
            // The streak's last failed run, for every mail of the streak (and, through
            // CHAIN.state, for those of the next instance).
            let timeout = self.task(&f.task).and_then(|t| t.timing.timeout);
            let run = FailedRun::of(
                f.run_id,
                &f.outcome,
                timeout,
                start_ms,
                duration,
                line.as_deref(),
                output.total(),
            );
            self.alerts.entry(f.task.clone()).or_default().last_failed = Some(run);
            self.last_failure
                .insert(f.task.clone(), (f.run_id, output.bytes(), output.total()));
        }
        let mut alert = None;
        if f.outcome != Outcome::Interrupted {
            let sig = line.map(|line| signature::of_failure(&f.outcome, line.as_deref()));
            let p = self.policy(&f.task);
            let st = self.alerts.entry(f.task.clone()).or_default();
            if let Some(decision) = st.on_run(stop_ms, sig.as_deref(), p) {
                let recovered_by = f.outcome.is_success().then(|| {
                    format!(
                        "run {} succeeded, started {}, took {}",
                        f.run_id,
                        rfc3339(start_ms),
                        fmt_dur(duration)
                    )
                });
                alert = Some(AlertDue {
                    task: f.task.clone(),
                    decision,
                    recovered_by,
                    last_failed: st.last_failed.clone(),
                    output: self.last_failure.get(&f.task).cloned(),
                    between_runs: false,
                });
            }
        }
        if f.outcome.is_success() {
            self.last_failure.remove(&f.task);
            if let Some(st) = self.alerts.get_mut(&f.task) {
                st.last_failed = None;
            }
        }
        out.push(Effect::RunEnded(Box::new(RunEnded {
            f,
            scheduled_ms,
            start_ms,
            stop_ms,
            duration,
            streak,
            alert,
            trigger,
            requested_by,
        })));
        out.push(Effect::SaveState);
    }

    /// The alert policy of `task`.
    pub(crate) fn policy(&self, task: &str) -> alert::Policy {
        let window = self
            .task(task)
            .map_or(config::builtin::NON_RECOVERABLE_DOWNTIME, |t| {
                t.non_recoverable_downtime
            });
        alert::Policy {
            window_ms: (window.as_millis() as u64).max(1),
            max_per_hour: self.max_per_hour,
        }
    }

    /// The earliest downtime deadline of any task (kept on the wall clock), as a
    /// monotonic instant seen from `now`.
    pub(crate) fn alert_deadline(&self, now: Now) -> Option<Mono> {
        self.alerts
            .iter()
            .filter_map(|(task, st)| st.next_deadline(self.policy(task)))
            .min()
            .map(|d| now.mono_of(d))
    }

    /// The downtime alerts that are due.
    fn alert_ticks(&mut self, now: Now, out: &mut Vec<Effect>) {
        let wall = now.wall_ms();
        let tasks: Vec<String> = self.alerts.keys().cloned().collect();
        let mut changed = false;
        for task in tasks {
            let p = self.policy(&task);
            let Some(st) = self.alerts.get_mut(&task) else {
                continue;
            };
            if st.next_deadline(p).is_some_and(|d| d <= wall) {
                changed = true;
                if let Some(decision) = st.on_tick(wall, p) {
                    let last_failed = st.last_failed.clone();
                    let output = self.last_failure.get(&task).cloned();
                    out.push(Effect::Alert(Box::new(AlertDue {
                        task,
                        decision,
                        recovered_by: None,
                        last_failed,
                        output,
                        between_runs: true,
                    })));
                }
            }
        }
        if changed {
            out.push(Effect::SaveState);
        }
    }

    /// What the driver read from the record store of `due`'s last failed run (the
    /// alert state did not have it, or not its output): kept for the streak's next mails.
    pub(crate) fn learn_failed_run(&mut self, due: &AlertDue, run: &FailedRun, output: &[u8]) {
        if !due.between_runs {
            // A recovery: the streak is over, nothing of it is kept.
            return;
        }
        self.last_failure.insert(
            due.task.clone(),
            (run.run_id, output.to_vec(), run.output_bytes),
        );
        if due.last_failed.is_none() {
            // A state written before the last failed run was kept in it.
            if let Some(st) = self.alerts.get_mut(&due.task) {
                st.last_failed = Some(run.clone());
            }
        }
    }

    /// The streak's last failed run of `due` as its mail shows it, from what the record
    /// store gave (`read`: the run `due` names, or the task's newest failed run); `store`
    /// names the store for a note. What the store knew is kept (the durations, and the run
    /// by [`Supervisor::learn_failed_run`]); whatever could not be had is said in a note,
    /// and the rest of the mail stands. The effects: [`Effect::SaveState`] when the state
    /// is to keep the run learnt, a warning when the store could not be read.
    pub(crate) fn failed_from_store(
        &mut self,
        due: &AlertDue,
        read: StoredRead,
        store: &str,
    ) -> (FailedView, Vec<Effect>) {
        for (task, ms) in read.durations {
            self.learn_duration(task, ms);
        }
        let run = due.last_failed.clone();
        let what = run.as_ref().map_or("the last failed run".to_string(), |r| {
            format!("run {}", r.run_id)
        });
        let mut fx = Vec::new();
        let view = match read.failed {
            Ok(Some(s)) => {
                let timeout = self.task(&due.task).and_then(|t| t.timing.timeout);
                let line = match &s.outcome {
                    Outcome::SpawnError(m) => Some(m.clone()),
                    _ => alert_mail::last_line(&s.output),
                };
                let stored = FailedRun::of(
                    s.run_id,
                    &s.outcome,
                    timeout,
                    s.start_ms,
                    Duration::from_millis(s.duration_ms),
                    line.as_deref(),
                    s.output_bytes,
                );
                if due.between_runs && run.is_none() {
                    // A state written before the last failed run was kept in it.
                    fx.push(Effect::SaveState);
                }
                self.learn_failed_run(due, &stored, &s.output);
                FailedView {
                    run: Some(run.unwrap_or(stored)),
                    output: s.output,
                    output_bytes: Some(s.output_bytes),
                    note: None,
                }
            }
            Ok(None) => FailedView {
                note: Some(format!(
                    "The output of {what} is not in the record store {store} (pruned, or never written)."
                )),
                run,
                output: Vec::new(),
                output_bytes: None,
            },
            Err(e) => {
                fx.push(Effect::Log(
                    log::Level::Warn,
                    format!(
                        "{}: {}: failed to read {what} for an alert: {e}",
                        self.chain_name, due.task
                    ),
                ));
                FailedView {
                    note: Some(format!(
                        "The output of {what} could not be read from the record store: {e}."
                    )),
                    run,
                    output: Vec::new(),
                    output_bytes: None,
                }
            }
        };
        (view, fx)
    }

    /// How many runs of `task` the store keeps, and for how long (the built-in values
    /// for a task no longer configured).
    pub(crate) fn keep_runs(&self, task: &str) -> (u64, Duration) {
        self.task(task).map_or(
            (
                config::builtin::KEEP_RUNS_MAX,
                config::builtin::KEEP_RUNS_FOR,
            ),
            |t| (t.keep_runs_max, t.keep_runs_for),
        )
    }

    /// A task's last duration, read from the record store (what this instance saw wins).
    pub(crate) fn learn_duration(&mut self, task: String, ms: u64) {
        self.durations.entry(task).or_insert(ms);
    }

    /// The mail of `due`, showing `failed`, at `now`. `hhmm` shows a wall time of day
    /// (the local time zone is the OS's).
    pub(crate) fn alert_mail(
        &self,
        now: Now,
        due: &AlertDue,
        failed: FailedView,
        hhmm: &dyn Fn(u64) -> String,
    ) -> AlertMail {
        let wall = now.wall_ms();
        let d = &due.decision;
        let task = due.task.as_str();
        let command = self
            .task(task)
            .map_or(String::new(), |t| t.program.display());
        let next_attempt = self.next_attempt(now, task, hhmm);
        let run = failed.run.as_ref();
        AlertMail {
            kind: d.kind.as_str().to_string(),
            chain: self.chain_name.clone(),
            task: task.to_string(),
            host: self.host.clone(),
            command,
            run_id: run.map(|r| r.run_id),
            outcome: run.map_or(String::new(), |r| r.outcome.clone()),
            brief: run.map_or(String::new(), |r| r.brief.clone()),
            last_line: run.map_or(String::new(), |r| r.last_line.clone()),
            started: run.map_or(String::new(), |r| rfc3339(r.start_ms)),
            duration: run.map_or(String::new(), |r| {
                fmt_dur(Duration::from_millis(r.duration_ms))
            }),
            streak_start: rfc3339(d.streak_start_ms),
            streak_length: fmt_dur(Duration::from_millis(
                wall.saturating_sub(d.streak_start_ms),
            )),
            streak_ms: wall.saturating_sub(d.streak_start_ms),
            failures: d.failures,
            next_attempt,
            held_back: d.held_back,
            output_bytes: failed
                .output_bytes
                .or(run.map(|r| r.output_bytes))
                .unwrap_or(0),
            output: failed.output,
            output_note: failed.note,
            recovered_by: due.recovered_by.clone(),
            at_ms: wall,
        }
    }

    /// When `task` is tried next, for people: the real due time when it is the next task,
    /// else an estimate from the tasks before it (see [`alert_mail::next_attempt`]).
    fn next_attempt(&self, now: Now, task: &str, hhmm: &dyn Fn(u64) -> String) -> String {
        use alert_mail::{Position, Step};
        let wall = now.wall_ms();
        let steps: Vec<Step> = self
            .tasks
            .iter()
            .map(|t| {
                let failing = self
                    .failures
                    .get(&t.name)
                    .is_some_and(|f| f.streak_start_ms.is_some());
                let cooldown = if failing {
                    t.timing.fail_cooldown
                } else {
                    t.timing.success_cooldown
                };
                Step {
                    name: &t.name,
                    expected_ms: self.durations.get(&t.name).copied(),
                    cooldown_ms: cooldown.as_millis() as u64,
                }
            })
            .collect();
        let position = if self.chain.done() {
            Position::Done
        } else {
            match self.chain.position() {
                (index, Some(due)) => Position::Due {
                    index,
                    at_ms: wall + due.saturating_sub(now.mono).as_millis() as u64,
                },
                (index, None) => Position::Running {
                    index,
                    since_ms: self
                        .current
                        .as_ref()
                        .filter(|c| self.tasks.get(index).is_some_and(|t| t.name == c.task))
                        .map_or(wall, |c| c.start_ms),
                },
            }
        };
        let next = alert_mail::next_attempt(wall, &steps, position, task, self.mode == Mode::Once);
        alert_mail::describe(&next, wall, hhmm)
    }

    /// CHAIN.state of a chain run for ever, borrowed (this runs before and after every
    /// run): `names` are the chain's tasks as the command line gave them.
    pub(crate) fn state_view<'a>(
        &'a self,
        now: Now,
        names: &'a [String],
        running: Running<'a>,
        running_group: Option<&'a str>,
        x: &Extras<'a>,
    ) -> resume::StateView<'a> {
        let chain = &self.chain;
        let (index, due) = chain.position();
        resume::StateView {
            version: resume::STATE_VERSION,
            tasks: names,
            next_task: Some(names[index].as_str()),
            due_mono_ns: due.map(|d| d.as_nanos() as u64),
            due_wall_ms: due.map(|d| now.wall_ms() + d.saturating_sub(now.mono).as_millis() as u64),
            boot_id: x.boot_id,
            running_task: running.map(|(t, _, _)| t),
            running_run_id: running.map(|(_, id, _)| id),
            running_since_ms: running.map(|(_, _, since)| since),
            running_group,
            waiting_group: x.since_ms.and_then(|_| self.tasks[index].group.as_deref()),
            waiting_since_ms: x.since_ms,
            run_ids: chain.run_ids(),
            failures: &self.failures,
            alerts: &self.alerts,
            guardian_pid: x.guardian_pid,
            guardian_start: x.guardian_start,
            guardian_boot: x.boot_id,
            cooled: chain.cooled().map(|(ran, ended, ok)| resume::CooledView {
                task: chain.tasks()[ran].name.as_str(),
                ended_mono_ns: ended.as_nanos() as u64,
                ok,
            }),
            run_now: chain.pending().map(|p| resume::RunNowRequest {
                task: names.get(p.index).cloned().unwrap_or_default(),
                run_id: p.run_id,
                requested_by: p.by.clone(),
            }),
        }
    }

    /// The log line of a run's end, with what comes next; `cut`: the output tail was
    /// cut; `last`: the run's last line of output (shown for a failure).
    pub(crate) fn run_end_line(
        &self,
        now: Now,
        r: &RunEnded,
        cut: bool,
        last: Option<&str>,
    ) -> String {
        let f = &r.f;
        let (next_index, due) = self.chain.position();
        let next = match (due, f.cooldown) {
            _ if self.chain.done() => "exiting".to_string(),
            (Some(d), Some(c)) => format!(
                "next: {} in {} ({} {})",
                self.tasks[next_index].name,
                fmt_dur(d.saturating_sub(now.mono)),
                if f.outcome.is_success() {
                    "success_cooldown"
                } else {
                    "fail_cooldown"
                },
                fmt_dur(c)
            ),
            _ => format!("next: {} at once", self.tasks[next_index].name),
        };
        let cut = if cut { ", output tail cut" } else { "" };
        let msg = format!(
            "{}: {} run {} {} after {}{cut}; {next}",
            self.chain_name,
            f.task,
            f.run_id,
            f.outcome,
            fmt_dur(r.duration)
        );
        match last.filter(|l| f.outcome.is_failure() && !l.is_empty()) {
            Some(last) => format!("{msg}; last output: {last}"),
            None => msg,
        }
    }

    /// CHAIN.state to save now (see [`StateToSave`]); the arguments are
    /// [`Supervisor::state_view`]'s.
    pub(crate) fn state<'a>(
        &'a self,
        now: Now,
        names: &'a [String],
        running: Running<'a>,
        running_group: Option<&'a str>,
        x: &Extras<'a>,
    ) -> StateToSave<'a> {
        match self.mode {
            Mode::Once => StateToSave::Once(self.once_state(running, running_group, x)),
            Mode::Forever => {
                StateToSave::Forever(self.state_view(now, names, running, running_group, x))
            }
        }
    }

    /// CHAIN.state after a `--once` run: its runs are recorded (the run ids, the failures
    /// and alerts), but the chain's position, due time and cooldown stay as they were.
    pub(crate) fn once_state(
        &self,
        running: Running,
        running_group: Option<&str>,
        x: &Extras,
    ) -> State {
        let b = &self.base_state;
        let mut ids = b.run_ids.clone();
        ids.extend(self.chain.run_ids().clone());
        let (index, _) = self.chain.position();
        State {
            version: resume::STATE_VERSION,
            tasks: b.tasks.clone(),
            next_task: b.next_task.clone(),
            due_mono_ns: b.due_mono_ns,
            due_wall_ms: b.due_wall_ms,
            boot_id: b.boot_id.clone(),
            running_task: running
                .map(|(t, _, _)| t.to_string())
                .or_else(|| b.running_task.clone()),
            running_run_id: running.map(|(_, id, _)| id).or(if running.is_none() {
                b.running_run_id
            } else {
                None
            }),
            running_since_ms: running.map(|(_, _, since)| since),
            running_group: running_group.map(str::to_string),
            waiting_group: x.since_ms.and_then(|_| self.tasks[index].group.clone()),
            waiting_since_ms: x.since_ms,
            run_ids: ids,
            failures: self.failures.clone(),
            alerts: self.alerts.clone(),
            guardian_pid: x.guardian_pid,
            guardian_start: x.guardian_start,
            guardian_boot: x.boot_id.map(str::to_string),
            cooled: b.cooled.clone(),
            run_now: b.run_now.clone(),
        }
    }
}

/// CHAIN.state to save, serialized as what it holds: a chain run for ever names its
/// position ([`Supervisor::state_view`]); `--once` records its runs but leaves the
/// chain's position as it was ([`Supervisor::once_state`]).
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum StateToSave<'a> {
    Forever(resume::StateView<'a>),
    Once(State),
}

/// What CHAIN.state holds beyond the supervisor's own: since when the task waits for a
/// slot, and the guardian (its PID, start time and boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extras<'a> {
    pub(crate) since_ms: Option<u64>,
    pub(crate) guardian_pid: Option<i32>,
    pub(crate) guardian_start: Option<u64>,
    pub(crate) boot_id: Option<&'a str>,
}

#[cfg(test)]
mod tests;
