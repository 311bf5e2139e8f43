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
        }
        out
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
                Control::Kick
            }
        };
        self.chain_event(now, chain::Event::Control(control), output, out);
    }

    /// The driver is about to spawn task `index` as run `run_id`: the run's wall times.
    pub(crate) fn begin_run(&mut self, now: Now, index: usize, run_id: u64) -> &Current {
        let scheduled = self.chain.scheduled().unwrap_or(now.mono);
        self.current.insert(Current {
            task: self.tasks[index].name.clone(),
            run_id,
            scheduled_ms: now.wall_of(scheduled),
            start_ms: now.wall_of(now.mono),
        })
    }

    /// A run ended: its failures, its alert, what the next mails show of it.
    fn finished(&mut self, now: Now, f: Finished, output: &dyn RunOutput, out: &mut Vec<Effect>) {
        let duration = f.ended.saturating_sub(f.started);
        let stop_ms = now.wall_of(f.ended);
        let fails = self.failures.entry(f.task.clone()).or_default();
        fails.record(&f.outcome, stop_ms);
        let streak = fails.streak();
        let (scheduled_ms, start_ms) = match self.current.take() {
            Some(c) if c.task == f.task && c.run_id == f.run_id => (c.scheduled_ms, c.start_ms),
            _ => (now.wall_of(f.scheduled), now.wall_of(f.started)),
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
        }
    }
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
mod tests {
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
            })),
            Effect::Alert(a) => Effect::Alert(a.clone()),
            Effect::SaveState => Effect::SaveState,
            Effect::Log(l, m) => Effect::Log(*l, m.clone()),
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
        let cur = s.begin_run(at(*now), *index, *run_id).clone();
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
}
