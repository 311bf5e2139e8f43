//! The driver: the one loop, the only reader of the clock.
//!
//! It waits in `ppoll` on the signal self-pipe, the running task's output pipes (and
//! run-chain's own stdout/stderr when they would block) and the state machine's next
//! deadline; it turns what it sees into events for [`Chain`], and carries out the
//! actions it gets back: spawn, signal the group, log, persist the state, exit. A chain
//! in cooldown is asleep in the kernel: no timer, no polling.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use crate::alert::{self, AlertState, Decision};
use crate::alert_mail::AlertMail;
use crate::chain::{Action, Chain, ChainTask, Control, Event, Finished, Mode};
use crate::config::{self, Config, Task};
use crate::error::Result;
use crate::groups::{self, Slot, Slots};
use crate::guardian::Guardian;
use crate::mailer::{self, Children, ToMailer};
use crate::outcome::Outcome;
use crate::output::{Sink, Tail};
use crate::pidfile::PidFile;
use crate::process;
use crate::recorder::Recorder;
use crate::signals::{Sig, Signals};
use crate::state::{self, State, TaskFailures};
use crate::store::{self, Op, RunEnd, RunStart, Store};
use crate::sys;
use crate::time::{self, fmt_dur, Mono};

/// While a task runs, its output is written to the store at least this often.
const OUTPUT_FLUSH: Duration = Duration::from_secs(1);

/// What the driver knows of the run in progress, beyond the state machine.
struct Current {
    task: String,
    run_id: u64,
    scheduled_ms: u64,
    start_ms: u64,
}

/// Everything the loop owns.
pub struct Driver {
    pub chain_name: String,
    pub names: Vec<String>,
    pub config: Config,
    pub tasks: Vec<Task>,
    pub run_root: PathBuf,
    /// RUN_ROOT comes from the config (no `--run-root`, no `RUN_ROOT`): a reload that
    /// changes it is refused (see [`crate::root::moved_run_root`]).
    root_from_config: bool,
    /// A SIGHUP kept by the waiting launch was applied (see `app::run`): after the start,
    /// the chain is reconfigured, as on SIGHUP, so that a changed cooldown applies to the
    /// cooldown carried over.
    reconfigure_at_start: bool,
    pub mode: Mode,
    pub chain: Chain,
    pub signals: Signals,
    pub guardian: Guardian,
    /// The guardian's start time (clock ticks), saved with its PID in CHAIN.state.
    guardian_start: Option<u64>,
    /// Held for the life of the process: the lock.
    pub pidfile: PidFile,
    /// The state as loaded (for `--once`, which keeps the chain's position as it was).
    pub base_state: State,
    pub boot_id: Option<String>,
    sinks: [Sink; 2],
    run: Option<process::Run>,
    tail: Tail,
    ignore: BTreeSet<i32>,
    sigints: u32,
    state_error_logged: bool,
    /// CHAIN.state, kept open.
    state_file: state::Writer,
    /// CHAIN.state needs writing (at the end of the current [`Driver::feed`]).
    state_dirty: bool,
    /// A cooldown lies ahead: hand this feed's records to the writer now (nothing held).
    cooldown_ahead: bool,
    store: Recorder,
    /// The last run's output pipes, for the next run (see [`process::Pipes`]).
    spare_pipes: Option<process::Pipes>,
    /// Per task (by index), what starting it needs, made at its first run and kept until
    /// the config is reloaded.
    prepared: Vec<Option<std::result::Result<process::Prepared, String>>>,
    failures: std::collections::BTreeMap<String, TaskFailures>,
    current: Option<Current>,
    /// When the running task's output is next written to the store (None: unchanged).
    output_flush_at: Option<Mono>,
    output_flushed: u64,
    /// A group slot held by the run in progress (or about to start).
    slot: Option<Slot>,
    /// While waiting for a slot: the group's slot files and the watch on them.
    waiting: Option<(Slots, groups::Watch)>,
    waiting_since_ms: Option<u64>,
    alerts: std::collections::BTreeMap<String, AlertState>,
    mailer: std::sync::mpsc::Sender<ToMailer>,
    /// The mailer's own children (sendmail): never a run's leftovers.
    children: Children,
    host: String,
    /// Per task, the output of the streak's last failed run (run id, output tail, bytes
    /// printed), for the mails of the streak; the rest of that run is in the task's
    /// [`AlertState::last_failed`]. A relaunched instance reads it from the record store.
    last_failure: std::collections::BTreeMap<String, (u64, Vec<u8>, u64)>,
    /// Per task, the duration of its last run (ms), to estimate when a task comes next.
    durations: std::collections::BTreeMap<String, u64>,
    /// SIGKILL was sent to the run in progress.
    kill_sent: bool,
}

/// The streak's last failed run as a mail shows it (see [`Driver::last_failed_run`]).
struct FailedView {
    run: Option<alert::FailedRun>,
    output: Vec<u8>,
    /// Bytes the run printed, when known from its output's source.
    output_bytes: Option<u64>,
    /// Why the output is missing.
    note: Option<String>,
}

/// The chain's view of its tasks.
pub fn chain_tasks(tasks: &[Task]) -> Vec<ChainTask> {
    tasks
        .iter()
        .map(|t| ChainTask {
            name: t.name.clone(),
            timing: t.timing,
        })
        .collect()
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        chain_name: String,
        names: Vec<String>,
        config: Config,
        tasks: Vec<Task>,
        run_root: PathBuf,
        mode: Mode,
        chain: Chain,
        signals: Signals,
        guardian: Guardian,
        pidfile: PidFile,
        base_state: State,
    ) -> Driver {
        let mut ignore = BTreeSet::new();
        ignore.insert(guardian.pid());
        let guardian_start = sys::start_time(guardian.pid());
        let store = Store::new(
            &run_root,
            store::Instance {
                host: sys::hostname(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                config_digest: config.digest.clone(),
                started_ms: time::wall_ms(),
            },
        );
        let store = Recorder::start(&chain_name, store);
        let failures = base_state.failures.clone();
        let alerts = base_state.alerts.clone();
        let state_file = state::Writer::new(state::path(&run_root, &chain_name));
        let children: Children = Default::default();
        let mailer = mailer::start(
            run_root.clone(),
            Some(email_or_default(&config)),
            children.clone(),
        );
        // Deliver what an earlier instance left in the outbox.
        let _ = mailer.send(ToMailer::Wake);
        Driver {
            chain_name,
            names,
            config,
            tasks,
            run_root,
            root_from_config: true,
            reconfigure_at_start: false,
            mode,
            chain,
            signals,
            guardian,
            guardian_start,
            pidfile,
            base_state,
            boot_id: sys::boot_id(),
            sinks: [Sink::new(1), Sink::new(2)],
            run: None,
            tail: Tail::new(0),
            ignore,
            sigints: 0,
            state_error_logged: false,
            state_file,
            state_dirty: false,
            cooldown_ahead: false,
            store,
            spare_pipes: None,
            prepared: Vec::new(),
            failures,
            current: None,
            output_flush_at: None,
            output_flushed: 0,
            slot: None,
            waiting: None,
            waiting_since_ms: None,
            alerts,
            mailer,
            children,
            host: sys::hostname(),
            last_failure: Default::default(),
            durations: Default::default(),
            kill_sent: false,
        }
    }

    /// Whether RUN_ROOT comes from the config (true unless `--run-root` or `RUN_ROOT`).
    pub fn with_root_from_config(mut self, yes: bool) -> Driver {
        self.root_from_config = yes;
        self
    }

    /// See the field `reconfigure_at_start`.
    pub fn with_reconfigure_at_start(mut self, yes: bool) -> Driver {
        self.reconfigure_at_start = yes;
        self
    }

    /// The PIDs that are not a run's: the guardian's, and the mailer's children. The
    /// lock on the latter is held while the caller looks at our children.
    fn with_ignored<T>(
        &mut self,
        f: impl FnOnce(&mut Option<process::Run>, &BTreeSet<i32>) -> T,
    ) -> T {
        let kids = self.children.clone();
        let guard = kids.lock().unwrap_or_else(|p| p.into_inner());
        let mut ignore = self.ignore.clone();
        ignore.extend(guard.iter().copied());
        f(&mut self.run, &ignore)
    }

    /// The alert policy of `task`.
    fn policy(&self, task: &str) -> alert::Policy {
        let window = self
            .tasks
            .iter()
            .find(|t| t.name == task)
            .map_or(config::builtin::NON_RECOVERABLE_DOWNTIME, |t| {
                t.non_recoverable_downtime
            });
        alert::Policy {
            window_ms: (window.as_millis() as u64).max(1),
            max_per_hour: self
                .config
                .email
                .as_ref()
                .map_or(config::builtin::MAX_ALERTS_PER_HOUR, |e| {
                    e.max_alerts_per_hour
                }),
        }
    }

    /// The earliest downtime deadline of any task, as a monotonic instant.
    fn alert_deadline(&self, now: Mono) -> Option<Mono> {
        let wall = time::wall_ms();
        self.alerts
            .iter()
            .filter_map(|(task, st)| st.next_deadline(self.policy(task)))
            .min()
            .map(|d| now + Duration::from_millis(d.saturating_sub(wall)))
    }

    /// Send the downtime alerts that are due.
    fn alert_ticks(&mut self, now: Mono) {
        let wall = time::wall_ms();
        let tasks: Vec<String> = self.alerts.keys().cloned().collect();
        let mut changed = false;
        for task in tasks {
            let p = self.policy(&task);
            let Some(st) = self.alerts.get_mut(&task) else {
                continue;
            };
            if st.next_deadline(p).is_some_and(|d| d <= wall) {
                changed = true;
                if let Some(d) = st.on_tick(wall, p) {
                    self.send_alert(now, &task, &d, None);
                }
            }
        }
        if changed {
            self.save_state(now);
        }
    }

    /// Build an alert, store it in the outbox, and wake the mailer. Whenever it is sent
    /// (at a run's end, between runs, by a relaunched instance), it shows the streak's
    /// last failed run and the real time of the next attempt. `recovered_by`: the run
    /// that ended the streak, for `recovered`.
    fn send_alert(&mut self, now: Mono, task: &str, d: &Decision, recovered_by: Option<String>) {
        let wall = time::wall_ms();
        let t = self.tasks.iter().find(|t| t.name == task);
        let command = t.map_or(String::new(), |t| t.program.display());
        let failed = self.last_failed_run(task);
        let next_attempt = self.next_attempt(now, wall, task);
        let run = failed.run.as_ref();
        let a = AlertMail {
            kind: d.kind.as_str().to_string(),
            chain: self.chain_name.clone(),
            task: task.to_string(),
            host: self.host.clone(),
            command,
            run_id: run.map(|r| r.run_id),
            outcome: run.map_or(String::new(), |r| r.outcome.clone()),
            brief: run.map_or(String::new(), |r| r.brief.clone()),
            last_line: run.map_or(String::new(), |r| r.last_line.clone()),
            started: run.map_or(String::new(), |r| crate::time::rfc3339(r.start_ms)),
            duration: run.map_or(String::new(), |r| {
                fmt_dur(Duration::from_millis(r.duration_ms))
            }),
            streak_start: crate::time::rfc3339(d.streak_start_ms),
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
            recovered_by,
            at_ms: wall,
        };
        self.store.push(Op::Alert {
            chain: self.chain_name.clone(),
            task: task.to_string(),
            kind: d.kind.as_str(),
        });
        let email = email_or_default(&self.config);
        let id = mailer::message_id(&a);
        let built = mailer::build(&email, &a, &id);
        match built.and_then(|bytes| {
            mailer::enqueue(&self.run_root, &a, &bytes).map_err(|e| {
                format!(
                    "cannot store it in {}: {e}",
                    mailer::outbox(&self.run_root).display()
                )
            })
        }) {
            Ok(path) => {
                log::info!(
                    "{}: {task}: {} alert queued ({})",
                    self.chain_name,
                    d.kind.as_str(),
                    path.display()
                );
                let _ = self.mailer.send(ToMailer::Wake);
            }
            Err(e) => log::error!(
                "{}: {task}: failed to queue a {} alert: {e}",
                self.chain_name,
                d.kind.as_str()
            ),
        }
    }

    /// The streak's last failed run of `task`, with its output: from memory, or (in an
    /// instance relaunched since that run) from the record store by its run id. Whatever
    /// cannot be had is said in a note; the rest of the mail stands.
    fn last_failed_run(&mut self, task: &str) -> FailedView {
        let run = self.alerts.get(task).and_then(|st| st.last_failed.clone());
        if let (Some(r), Some((id, output, bytes))) = (&run, self.last_failure.get(task)) {
            if *id == r.run_id {
                return FailedView {
                    run,
                    output: output.clone(),
                    output_bytes: Some(*bytes),
                    note: None,
                };
            }
        }
        let want = run.as_ref().map(|r| r.run_id);
        let what = want.map_or("the last failed run".to_string(), |id| format!("run {id}"));
        match self.read_failed_run(task, want) {
            Ok(Some((stored, output, bytes))) => {
                self.last_failure
                    .insert(task.to_string(), (stored.run_id, output.clone(), bytes));
                let run = match run {
                    Some(r) => r,
                    None => {
                        // A state written before the last failed run was kept in it.
                        if let Some(st) = self.alerts.get_mut(task) {
                            st.last_failed = Some(stored.clone());
                            self.state_dirty = true;
                        }
                        stored
                    }
                };
                FailedView {
                    run: Some(run),
                    output,
                    output_bytes: Some(bytes),
                    note: None,
                }
            }
            Ok(None) => FailedView {
                note: Some(format!(
                    "The output of {what} is not in the record store {} (pruned, or never written).",
                    store::path(&self.run_root).display()
                )),
                run,
                output: Vec::new(),
                output_bytes: None,
            },
            Err(e) => {
                log::warn!(
                    "{}: {task}: failed to read {what} for an alert: {e}",
                    self.chain_name
                );
                FailedView {
                    note: Some(format!(
                        "The output of {what} could not be read from the record store: {e}."
                    )),
                    run,
                    output: Vec::new(),
                    output_bytes: None,
                }
            }
        }
    }

    /// Read from the record store the failed run `run_id` of `task` (None: its newest
    /// failed run) and its output. Ok(None): not there, or not a failure. Also learns the
    /// chain's last durations, for [`Driver::next_attempt`], if it does not know them.
    /// Seldom called (a mail in an instance that did not see the run), so the store is
    /// opened for it and closed after.
    #[allow(clippy::type_complexity)]
    fn read_failed_run(
        &mut self,
        task: &str,
        run_id: Option<u64>,
    ) -> std::result::Result<Option<(alert::FailedRun, Vec<u8>, u64)>, String> {
        let Some(conn) = store::open_read(&self.run_root)? else {
            return Ok(None);
        };
        // The loop waits for this: a busy store is given up on soon (the mail says so).
        let _ = conn.busy_timeout(Duration::from_millis(500));
        if let Ok(series) = store::series(&conn) {
            for s in series.into_iter().filter(|s| s.chain == self.chain_name) {
                if let Some(ms) = s.last_duration_ms {
                    self.durations.entry(s.task).or_insert(ms);
                }
            }
        }
        let chain = Some(self.chain_name.as_str());
        let id = match run_id {
            Some(id) => id,
            None => {
                let runs = store::history(&conn, task, chain, 20).map_err(|e| e.to_string())?;
                let newest_failed = runs.into_iter().find(|r| {
                    crate::alert_mail::failed_outcome(
                        r.outcome.as_deref(),
                        r.exit_code,
                        r.signal,
                        r.error.as_deref(),
                    )
                    .is_some()
                });
                match newest_failed {
                    Some(r) => r.run_id,
                    None => return Ok(None),
                }
            }
        };
        let Some((row, output)) =
            store::output(&conn, task, chain, Some(id)).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let Some(outcome) = crate::alert_mail::failed_outcome(
            row.outcome.as_deref(),
            row.exit_code,
            row.signal,
            row.error.as_deref(),
        ) else {
            return Ok(None);
        };
        let duration = Duration::from_millis(row.duration_ms.unwrap_or(0));
        let timeout = self
            .tasks
            .iter()
            .find(|t| t.name == task)
            .and_then(|t| t.timing.timeout);
        let line = match &outcome {
            Outcome::SpawnError(m) => Some(m.clone()),
            _ => crate::alert_mail::last_line(&output),
        };
        let run = alert::FailedRun {
            run_id: row.run_id,
            outcome: outcome.to_string(),
            brief: crate::alert_mail::brief(&outcome, timeout, duration),
            start_ms: row.start_ms,
            duration_ms: duration.as_millis() as u64,
            last_line: line
                .unwrap_or_default()
                .chars()
                .take(alert::FailedRun::LAST_LINE_MAX)
                .collect(),
            output_bytes: row.output_bytes,
        };
        Ok(Some((run, output, row.output_bytes)))
    }

    /// When `task` is tried next, for people: the real due time when it is the next task,
    /// else an estimate from the tasks before it (see [`crate::alert_mail::next_attempt`]).
    fn next_attempt(&self, now: Mono, wall: u64, task: &str) -> String {
        use crate::alert_mail::{self as wording, Position, Step};
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
                    at_ms: wall + due.saturating_sub(now).as_millis() as u64,
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
        let next = wording::next_attempt(wall, &steps, position, task, self.mode == Mode::Once);
        wording::describe(&next, wall, &wording::local_hhmm)
    }

    /// Wall time (Unix ms) of the monotonic instant `at`, seen from `now`.
    /// Both clocks are read afresh, as a pair, so that the loop's own delay does not
    /// shift the result (and start, stop and duration stay consistent).
    fn wall_of(_now: Mono, at: Mono) -> u64 {
        let (mono, wall) = (time::mono_now(), time::wall_ms_precise());
        let ms = if at <= mono {
            wall - (mono - at).as_secs_f64() * 1000.0
        } else {
            wall + (at - mono).as_secs_f64() * 1000.0
        };
        ms.max(0.0).round() as u64
    }

    /// Run until the chain exits; returns the exit status.
    pub fn run(mut self) -> Result<u8> {
        // The loop sleeps in ppoll until the next deadline; the kernel may let such a
        // timer fire up to the thread's "timer slack" late (50 µs by default). The loop
        // wakes once per cooldown, so it asks for 1 µs: due times are kept to the clock.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
        // Runs of this chain left open by an instance that died are interrupted. The run
        // its guardian ended is closed already, with its real end (the launch waited for
        // that guardian: `app::wait_for_the_old_run`); what is still open had its end
        // recorded by nobody, and is closed with this time (see `store::Op::CloseOpen`).
        let b = &self.base_state;
        let running = match (&b.running_task, b.running_run_id, b.running_since_ms) {
            (Some(t), Some(id), Some(since)) => Some((t.clone(), id, since)),
            _ => None,
        };
        self.store.push(Op::CloseOpen {
            chain: self.chain_name.clone(),
            stop_ms: time::wall_ms(),
            running,
        });
        // So that `status` shows what this instance does from its first moment.
        if self.mode == Mode::Forever {
            self.save_state(time::mono_now());
        }
        if let Some(code) = self.feed(time::mono_now(), Event::Start) {
            return Ok(self.finish(code));
        }
        if std::mem::take(&mut self.reconfigure_at_start) {
            self.state_dirty = true;
            let tasks = chain_tasks(&self.tasks);
            let ev = Event::Control(Control::Reconfigure(tasks));
            if let Some(code) = self.feed(time::mono_now(), ev) {
                return Ok(self.finish(code));
            }
        }
        // Ticks handled since the last ppoll (see below).
        let mut ticks_in_a_row = 0u32;
        loop {
            let now = time::mono_now();
            if self.chain.reaping() {
                let killed = self.kill_sent;
                let empty = self.with_ignored(|run, ignore| match run {
                    Some(run) => {
                        if killed {
                            // Children reparented to us since the SIGKILL (their parent
                            // died of it) get it too, until nothing is left.
                            run.signal(crate::chain::GroupSignal::Kill, ignore);
                        }
                        run.sweep(ignore)
                    }
                    None => true,
                });
                if empty {
                    self.drain_sources();
                    if let Some(code) = self.feed(now, Event::GroupEmpty) {
                        return Ok(self.finish(code));
                    }
                    continue;
                }
            }
            let deadline = self.chain.next_deadline();
            if let Some(d) = deadline {
                if d <= now {
                    if let Some(code) = self.feed(now, Event::Tick) {
                        return Ok(self.finish(code));
                    }
                    // Due at once again and again (a program that cannot start, with no
                    // fail_cooldown) never reaches ppoll: look at the signals here too,
                    // from the second tick in a row (after one, ppoll comes next).
                    ticks_in_a_row = ticks_in_a_row.saturating_add(1);
                    if ticks_in_a_row < 2 {
                        continue;
                    }
                    for sig in self.signals.drain() {
                        if let Some(code) = self.on_signal(time::mono_now(), sig) {
                            return Ok(self.finish(code));
                        }
                    }
                    continue;
                }
            }
            if self.output_flush_at.is_some_and(|t| t <= now) {
                self.flush_output();
            }
            let alert_at = self.alert_deadline(now);
            if alert_at.is_some_and(|t| t <= now) {
                self.alert_ticks(now);
                continue;
            }
            let records_at = self.store.due();
            if records_at.is_some_and(|t| t <= now) {
                self.store.tick(now);
                continue;
            }
            let deadline = [deadline, self.output_flush_at, alert_at, records_at]
                .into_iter()
                .flatten()
                .min();
            // What to wait for.
            let mut fds = vec![sys::pollfd(self.signals.fd(), libc::POLLIN)];
            if let Some(fd) = self.signals.child_fd() {
                fds.push(sys::pollfd(fd, libc::POLLIN));
            }
            let signal_fds = fds.len();
            let watch_at = if let Some((_, w)) = &self.waiting {
                fds.push(sys::pollfd(w.fd(), libc::POLLIN));
                Some(fds.len() - 1)
            } else {
                None
            };
            let mut src_idx = Vec::new();
            if let Some(run) = &self.run {
                for (i, s) in run.sources.iter().enumerate() {
                    if let Some(fd) = s.fd() {
                        if self.sinks[s.sink].ready() {
                            fds.push(sys::pollfd(fd, libc::POLLIN));
                            src_idx.push((fds.len() - 1, i));
                        }
                    }
                }
            }
            let mut sink_idx = Vec::new();
            for (i, s) in self.sinks.iter().enumerate() {
                if s.wants_pollout() {
                    fds.push(sys::pollfd(s.fd(), libc::POLLOUT));
                    sink_idx.push((fds.len() - 1, i));
                }
            }
            let timeout = deadline.map(|d| d.saturating_sub(now));
            if let Err(e) = sys::ppoll(&mut fds, timeout) {
                return Err(crate::error::Error::os("wait in ppoll", e));
            }
            ticks_in_a_row = 0;
            for (fi, si) in sink_idx {
                if fds[fi].revents != 0 {
                    self.sinks[si].flush();
                }
            }
            if let Some(run) = &mut self.run {
                let before = self.tail.total();
                for (fi, si) in src_idx {
                    if fds[fi].revents != 0 {
                        run.sources[si].pump(&mut self.sinks, &mut self.tail, false);
                    }
                }
                if self.tail.total() != before && self.output_flush_at.is_none() {
                    self.output_flush_at = Some(time::mono_now() + OUTPUT_FLUSH);
                }
            }
            if let Some(i) = watch_at {
                if fds[i].revents != 0 {
                    if let Some((_, w)) = &self.waiting {
                        w.drain();
                    }
                    if let Some(code) = self.try_slot(time::mono_now()) {
                        return Ok(self.finish(code));
                    }
                }
            }
            if fds[..signal_fds].iter().any(|f| f.revents != 0) {
                let child = signal_fds > 1 && fds[1].revents != 0;
                for sig in self.signals.drain_ready(fds[0].revents != 0, child) {
                    let now = time::mono_now();
                    if let Some(code) = self.on_signal(now, sig) {
                        return Ok(self.finish(code));
                    }
                }
            }
        }
    }

    fn finish(&mut self, code: u8) -> u8 {
        for s in &mut self.sinks {
            s.flush();
        }
        // What is left goes to the store now (the writer thread makes one last try).
        self.store.finish();
        log::info!("{}: exiting with status {code}", self.chain_name);
        code
    }

    /// Write the running task's output so far to the store.
    fn flush_output(&mut self) {
        self.output_flush_at = None;
        let Some(cur) = &self.current else { return };
        if self.tail.total() == self.output_flushed {
            return;
        }
        self.output_flushed = self.tail.total();
        let op = Op::Output {
            chain: self.chain_name.clone(),
            task: cur.task.clone(),
            run_id: cur.run_id,
            output: self.tail.bytes(),
            output_bytes: self.tail.total(),
            output_cut: self.tail.cut(),
        };
        self.store.push(op);
    }

    /// Try to take a slot of the waiting task's group; on success the chain goes on.
    fn try_slot(&mut self, now: Mono) -> Option<u8> {
        let (slots, _) = self.waiting.as_mut()?;
        match slots.try_take() {
            Ok(Some(slot)) => {
                self.slot = Some(slot);
                self.waiting = None;
                self.waiting_since_ms = None;
                self.feed(now, Event::SlotFree)
            }
            Ok(None) => None,
            Err(e) => {
                log::error!(
                    "{}: failed to take a group slot: {e}; running without it",
                    self.chain_name
                );
                self.waiting = None;
                self.waiting_since_ms = None;
                self.feed(now, Event::SlotFree)
            }
        }
    }

    fn drain_sources(&mut self) {
        if let Some(run) = &mut self.run {
            for s in &mut run.sources {
                s.pump(&mut self.sinks, &mut self.tail, true);
            }
        }
    }

    fn on_signal(&mut self, now: Mono, sig: Sig) -> Option<u8> {
        let ev = match sig {
            Sig::Child => {
                let exit = self.run.as_mut().and_then(|r| r.leader_exit());
                match exit {
                    Some(e) if !self.chain.reaping() => Event::LeaderExited(e),
                    _ => return None,
                }
            }
            Sig::Term => {
                log::info!("{}: SIGTERM: stopping", self.chain_name);
                Event::Control(Control::Stop)
            }
            Sig::Int => {
                self.sigints += 1;
                if self.sigints == 1 {
                    log::info!(
                        "{}: SIGINT: stopping (a second SIGINT stops the running task at once)",
                        self.chain_name
                    );
                    Event::Control(Control::Stop)
                } else {
                    log::info!(
                        "{}: SIGINT again: stopping the running task now",
                        self.chain_name
                    );
                    Event::Control(Control::StopNow)
                }
            }
            Sig::Quit => {
                log::info!(
                    "{}: SIGQUIT: stopping the running task now",
                    self.chain_name
                );
                Event::Control(Control::StopNow)
            }
            Sig::Usr1 => {
                if self.chain.in_cooldown() {
                    log::info!("{}: SIGUSR1: ending the cooldown", self.chain_name);
                } else {
                    log::info!(
                        "{}: SIGUSR1: not in a cooldown; nothing to end",
                        self.chain_name
                    );
                }
                Event::Control(Control::Kick)
            }
            Sig::Hup => match self.reload() {
                Some(tasks) => {
                    // The reload may move the due time (a changed cooldown applies to the
                    // one in progress) and the task list: CHAIN.state says so at once, for
                    // `status` and for the next instance.
                    self.state_dirty = true;
                    Event::Control(Control::Reconfigure(tasks))
                }
                None => return None,
            },
        };
        self.feed(now, ev)
    }

    fn reload(&mut self) -> Option<Vec<ChainTask>> {
        let loaded = Config::load(&self.config.file).and_then(|c| {
            let tasks = c.chain_tasks(&self.names)?;
            if let Some(e) = crate::root::moved_run_root(
                &self.chain_name,
                self.root_from_config,
                &self.run_root,
                &c,
            ) {
                return Err(e);
            }
            Ok((c, tasks))
        });
        match loaded {
            Ok((config, tasks)) => {
                log::info!(
                    "{}: SIGHUP: reloaded {} (digest {})",
                    self.chain_name,
                    config.file.display(),
                    config.digest
                );
                self.config = config;
                self.tasks = tasks;
                self.prepared.clear();
                let _ = self
                    .mailer
                    .send(ToMailer::Config(Some(email_or_default(&self.config))));
                Some(chain_tasks(&self.tasks))
            }
            Err(e) => {
                log::error!("{}: SIGHUP: keeping the old config: {e}", self.chain_name);
                None
            }
        }
    }

    /// Feed one event and carry out the actions, including the events they cause.
    ///
    /// CHAIN.state is written once per feed: just before a spawn (naming the run, so
    /// that its id is never given again whatever happens next), else at the end. The
    /// store's records of the feed (a run's end, the next run's start) go to the writer
    /// thread as one transaction at the end, after the spawn.
    fn feed(&mut self, now: Mono, first: Event) -> Option<u8> {
        self.store.begin_batch();
        let code = self.feed_events(now, first);
        if self.state_dirty {
            self.save_state(now);
        }
        // A cooldown ahead: what is held goes to the writer now, with this feed.
        self.store
            .end_batch(now, std::mem::take(&mut self.cooldown_ahead));
        code
    }

    fn feed_events(&mut self, now: Mono, first: Event) -> Option<u8> {
        let mut events = VecDeque::from([first]);
        while let Some(ev) = events.pop_front() {
            let actions = self.chain.on_event(now, ev);
            for a in actions {
                match a {
                    Action::Spawn {
                        index,
                        task,
                        run_id,
                    } => {
                        debug_assert_eq!(self.tasks[index].name, task);
                        self.state_dirty = true;
                        if let Some(ev) = self.need_slot(index) {
                            events.push_back(ev);
                            continue;
                        }
                        // The run id is used once it is in CHAIN.state, before the run
                        // starts: an instance stopped or killed at any moment after the
                        // spawn leaves a state that names this run, so the next one never
                        // gives its id to another run. (With the state written in place,
                        // this costs a few microseconds.)
                        self.save_state_with(now, Some((&task, run_id, time::wall_ms())));
                        events.push_back(self.spawn(now, index, run_id));
                    }
                    Action::Signal(sig) => {
                        if sig == crate::chain::GroupSignal::Kill {
                            self.kill_sent = true;
                        }
                        if let Some(run) = &self.run {
                            log::debug!(
                                "{}: {sig:?} to process group {}",
                                self.chain_name,
                                run.pid
                            );
                        }
                        self.with_ignored(|run, ignore| {
                            if let Some(run) = run {
                                run.signal(sig, ignore);
                            }
                        });
                    }
                    Action::Finished(f) => self.finished(now, &f),
                    Action::Exit(code) => return Some(code),
                }
            }
        }
        None
    }

    /// Before a task of a concurrency group starts: take a slot, or start waiting for
    /// one (returns SlotBusy). None: go ahead.
    fn need_slot(&mut self, index: usize) -> Option<Event> {
        let task = &self.tasks[index];
        let group = task.group.as_ref()?;
        if self.slot.as_ref().is_some_and(|s| &s.group == group) {
            return None;
        }
        self.slot = None;
        let max = self.config.groups.get(group).map_or(1, |g| g.max_running);
        // Watch first, then try: a slot freed in between still wakes us.
        let setup = groups::Watch::new(&self.run_root)
            .and_then(|w| Ok((Slots::open(&self.run_root, group, max)?, w)));
        let (mut slots, watch) = match setup {
            Ok(x) => x,
            Err(e) => {
                log::error!(
                    "{}: failed to use the slots of group {group} in {}: {e}; running without a slot",
                    self.chain_name,
                    groups::dir(&self.run_root).display()
                );
                return None;
            }
        };
        match slots.try_take() {
            Ok(Some(slot)) => {
                self.slot = Some(slot);
                None
            }
            Ok(None) => {
                log::info!(
                    "{}: {} waits for a slot of group {group} (max_running {max})",
                    self.chain_name,
                    task.name
                );
                self.waiting = Some((slots, watch));
                self.waiting_since_ms = Some(time::wall_ms());
                Some(Event::SlotBusy)
            }
            Err(e) => {
                log::error!(
                    "{}: failed to take a slot of group {group}: {e}; running without it",
                    self.chain_name
                );
                None
            }
        }
    }

    fn spawn(&mut self, now: Mono, index: usize, run_id: u64) -> Event {
        let task = &self.tasks[index];
        self.tail.reset(task.keep_output);
        self.output_flushed = 0;
        self.output_flush_at = None;
        let scheduled = self.chain.scheduled().unwrap_or(now);
        let scheduled_ms = Self::wall_of(now, scheduled);
        let start_ms = Self::wall_of(now, now);
        self.current = Some(Current {
            task: task.name.clone(),
            run_id,
            scheduled_ms,
            start_ms,
        });
        if self.prepared.len() != self.tasks.len() {
            self.prepared.clear();
            self.prepared.resize_with(self.tasks.len(), || None);
        }
        let remove = self
            .config
            .email
            .as_ref()
            .and_then(|e| e.password_env.as_deref());
        let prepared = self.prepared[index]
            .get_or_insert_with(|| process::Prepared::new(task, &self.chain_name, remove));
        let spawn_at = time::mono_now();
        let announce = self.guardian.prepare(
            task.timing.kill_grace,
            &crate::guardian::RunIdentity {
                task: &task.name,
                run_id,
                scheduled_ms,
                start_ms,
            },
        );
        let started = match prepared {
            Ok(p) => process::spawn(p, run_id, Some(announce), self.spare_pipes.take()),
            Err(msg) => Err(msg.clone()),
        };
        match started {
            Ok(run) => {
                self.guardian.watch(run.pid, task.timing.kill_grace);
                // The start latency at the resolution of the clock (the store keeps ms).
                log::debug!(
                    "{}: {} run {run_id} spawned {} µs after it was due",
                    self.chain_name,
                    task.name,
                    spawn_at.saturating_sub(scheduled).as_micros()
                );
                log::info!(
                    "{}: {} run {run_id} started (pid {}): {}",
                    self.chain_name,
                    task.name,
                    run.pid,
                    task.program.short()
                );
                let op = Op::Start(RunStart {
                    chain: self.chain_name.clone(),
                    task: task.name.clone(),
                    run_id,
                    scheduled_ms,
                    start_ms,
                    task_pid: Some(run.pid),
                });
                self.run = Some(run);
                self.store.push(op);
                Event::Spawned
            }
            Err(msg) => {
                log::info!(
                    "{}: {} run {run_id} could not start: {msg}",
                    self.chain_name,
                    task.name
                );
                Event::SpawnFailed(msg)
            }
        }
    }

    fn finished(&mut self, now: Mono, f: &Finished) {
        let left = self
            .with_ignored(|run, ignore| run.as_ref().map_or(Vec::new(), |r| r.leftovers(ignore)));
        if let Some(run) = self.run.take() {
            if !left.is_empty() {
                log::warn!(
                    "{}: {} run {}: processes {:?} survived SIGKILL; giving up on them",
                    self.chain_name,
                    f.task,
                    f.run_id,
                    left
                );
                self.ignore.extend(left);
            }
            self.guardian.unwatch(run.pid);
            self.spare_pipes = run.into_pipes();
        }
        // The slot is held until the run's group is empty; the next task takes its own.
        self.slot = None;
        self.kill_sent = false;
        let duration = f.ended.saturating_sub(f.started);
        let stop_ms = Self::wall_of(now, f.ended);
        let fails = self.failures.entry(f.task.clone()).or_default();
        fails.record(&f.outcome, stop_ms);
        let streak = fails.streak();
        let (keep_max, keep_for) = self.tasks.iter().find(|t| t.name == f.task).map_or(
            (
                config::builtin::KEEP_RUNS_MAX,
                config::builtin::KEEP_RUNS_FOR,
            ),
            |t| (t.keep_runs_max, t.keep_runs_for),
        );
        let (scheduled_ms, start_ms) = match self.current.take() {
            Some(c) if c.task == f.task && c.run_id == f.run_id => (c.scheduled_ms, c.start_ms),
            _ => (
                Self::wall_of(now, f.scheduled),
                Self::wall_of(now, f.started),
            ),
        };
        let (exit_code, signal) = match &f.outcome {
            Outcome::Success => (Some(0), None),
            Outcome::Failed(c) => (Some(*c), None),
            Outcome::Signal(s) => (None, Some(*s)),
            _ => (None, None),
        };
        let end = RunEnd {
            chain: self.chain_name.clone(),
            task: f.task.clone(),
            run_id: f.run_id,
            scheduled_ms,
            start_ms,
            stop_ms,
            outcome: f.outcome.label(),
            exit_code,
            signal,
            error: match &f.outcome {
                Outcome::SpawnError(m) => Some(m.clone()),
                _ => None,
            },
            output: self.tail.bytes(),
            output_bytes: self.tail.total(),
            output_cut: self.tail.cut(),
            streak,
            keep_runs_max: keep_max,
            keep_after_ms: stop_ms.saturating_sub(keep_for.as_millis() as u64),
        };
        self.output_flush_at = None;
        self.store.push(Op::End(Box::new(end)));
        if f.cooldown.is_some_and(|c| c >= Duration::from_millis(100)) {
            self.cooldown_ahead = true;
        }
        if f.outcome != Outcome::Interrupted {
            self.durations
                .insert(f.task.clone(), duration.as_millis() as u64);
        }
        let line = f.outcome.is_failure().then(|| match &f.outcome {
            Outcome::SpawnError(m) => Some(m.clone()),
            _ => self.tail.last_line(),
        });
        if let Some(line) = &line {
            // The streak's last failed run, for every mail of the streak (and, through
            // CHAIN.state, for those of the next instance).
            let timeout = self
                .tasks
                .iter()
                .find(|t| t.name == f.task)
                .and_then(|t| t.timing.timeout);
            let run = alert::FailedRun {
                run_id: f.run_id,
                outcome: f.outcome.to_string(),
                brief: crate::alert_mail::brief(&f.outcome, timeout, duration),
                start_ms,
                duration_ms: duration.as_millis() as u64,
                last_line: line
                    .as_deref()
                    .unwrap_or_default()
                    .chars()
                    .take(alert::FailedRun::LAST_LINE_MAX)
                    .collect(),
                output_bytes: self.tail.total(),
            };
            self.alerts.entry(f.task.clone()).or_default().last_failed = Some(run);
            self.last_failure.insert(
                f.task.clone(),
                (f.run_id, self.tail.bytes(), self.tail.total()),
            );
        }
        if f.outcome != Outcome::Interrupted {
            let sig = line.map(|line| {
                let key = match &f.outcome {
                    Outcome::Failed(c) => format!("exit code {c}"),
                    Outcome::Signal(s) => format!("killed by {}", crate::outcome::signal_name(*s)),
                    Outcome::SpawnError(_) => "could not start".to_string(),
                    other => other.label().to_string(),
                };
                crate::signature::signature(&key, line.as_deref())
            });
            let p = self.policy(&f.task);
            let d =
                self.alerts
                    .entry(f.task.clone())
                    .or_default()
                    .on_run(stop_ms, sig.as_deref(), p);
            if let Some(d) = d {
                let by = f.outcome.is_success().then(|| {
                    format!(
                        "run {} succeeded, started {}, took {}",
                        f.run_id,
                        crate::time::rfc3339(start_ms),
                        fmt_dur(duration)
                    )
                });
                self.send_alert(now, &f.task.clone(), &d, by);
            }
        }
        if f.outcome.is_success() {
            self.last_failure.remove(&f.task);
            if let Some(st) = self.alerts.get_mut(&f.task) {
                st.last_failed = None;
            }
        }
        let level = if f.outcome.is_failure() {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        if log::log_enabled!(level) {
            self.log_finished(now, f, duration);
        }
        self.state_dirty = true;
    }

    /// The log line of a run's end (built only when it is logged).
    fn log_finished(&self, now: Mono, f: &Finished, duration: Duration) {
        let (next_index, due) = self.chain.position();
        let next = match (due, f.cooldown) {
            _ if self.chain.done() => "exiting".to_string(),
            (Some(d), Some(c)) => format!(
                "next: {} in {} ({} {})",
                self.tasks[next_index].name,
                fmt_dur(d.saturating_sub(now)),
                if f.outcome.is_success() {
                    "success_cooldown"
                } else {
                    "fail_cooldown"
                },
                fmt_dur(c)
            ),
            _ => format!("next: {} at once", self.tasks[next_index].name),
        };
        let cut = if self.tail.cut() {
            ", output tail cut"
        } else {
            ""
        };
        let msg = format!(
            "{}: {} run {} {} after {}{cut}; {next}",
            self.chain_name,
            f.task,
            f.run_id,
            f.outcome,
            fmt_dur(duration)
        );
        if f.outcome.is_failure() {
            let last = self.tail.last_line().unwrap_or_default();
            if last.is_empty() {
                log::warn!("{msg}");
            } else {
                log::warn!("{msg}; last output: {last}");
            }
        } else {
            log::info!("{msg}");
        }
    }

    /// Write CHAIN.state: the position, the run in progress (if any), the counters
    /// and the failure and alert state.
    fn save_state(&mut self, now: Mono) {
        let current = self
            .current
            .as_ref()
            .filter(|_| self.run.is_some())
            .map(|c| (c.task.clone(), c.run_id, c.start_ms));
        self.save_state_with(
            now,
            current.as_ref().map(|(t, id, ms)| (t.as_str(), *id, *ms)),
        );
    }

    /// [`Driver::save_state`], with the run in progress given: (task, run id, since).
    fn save_state_with(&mut self, now: Mono, running: Option<(&str, u64, u64)>) {
        self.state_dirty = false;
        let (index, due) = self.chain.position();
        // The group whose slot the running task holds (for `status`): the slot itself, not
        // the config (a reload may have changed the task's group since).
        let running_group = running.and(self.slot.as_ref()).map(|s| s.group.as_str());
        let due_wall_ms = due.map(|d| time::wall_ms() + d.saturating_sub(now).as_millis() as u64);
        let saved = if self.mode == Mode::Once {
            // --once records its runs but leaves the chain's position as it was.
            let b = &self.base_state;
            let mut ids = b.run_ids.clone();
            ids.extend(self.chain.run_ids().clone());
            let st = State {
                version: state::STATE_VERSION,
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
                waiting_group: self
                    .waiting_since_ms
                    .and_then(|_| self.tasks[index].group.clone()),
                waiting_since_ms: self.waiting_since_ms,
                run_ids: ids,
                failures: self.failures.clone(),
                alerts: self.alerts.clone(),
                guardian_pid: Some(self.guardian.pid()),
                guardian_start: self.guardian_start,
                guardian_boot: self.boot_id.clone(),
                cooled: b.cooled.clone(),
            };
            self.state_file.save(&st)
        } else {
            // Borrowed, not copied: this runs before and after every run.
            let view = state::StateView {
                version: state::STATE_VERSION,
                tasks: &self.names,
                next_task: Some(self.names[index].as_str()),
                due_mono_ns: due.map(|d| d.as_nanos() as u64),
                due_wall_ms,
                boot_id: self.boot_id.as_deref(),
                running_task: running.map(|(t, _, _)| t),
                running_run_id: running.map(|(_, id, _)| id),
                running_since_ms: running.map(|(_, _, since)| since),
                running_group,
                waiting_group: self
                    .waiting_since_ms
                    .and_then(|_| self.tasks[index].group.as_deref()),
                waiting_since_ms: self.waiting_since_ms,
                run_ids: self.chain.run_ids(),
                failures: &self.failures,
                alerts: &self.alerts,
                guardian_pid: Some(self.guardian.pid()),
                guardian_start: self.guardian_start,
                guardian_boot: self.boot_id.as_deref(),
                cooled: self
                    .chain
                    .cooled()
                    .map(|(ran, ended, ok)| state::CooledView {
                        task: self.chain.tasks()[ran].name.as_str(),
                        ended_mono_ns: ended.as_nanos() as u64,
                        ok,
                    }),
            };
            self.state_file.save(&view)
        };
        match saved {
            Ok(()) => {
                if self.state_error_logged {
                    log::info!(
                        "{}: state saved again to {}",
                        self.chain_name,
                        self.state_file.path().display()
                    );
                    self.state_error_logged = false;
                }
            }
            Err(e) => {
                if !self.state_error_logged {
                    log::error!(
                        "{}: failed to save state to {}: {e} (the chain keeps its schedule; retrying at every run)",
                        self.chain_name,
                        self.state_file.path().display()
                    );
                    self.state_error_logged = true;
                }
            }
        }
    }
}

/// The `[email]` section, or, without one, alerts as files to root@localhost in
/// RUN_ROOT/mail/.
pub fn email_or_default(config: &Config) -> config::Email {
    config.email.clone().unwrap_or(config::Email {
        to: vec!["root@localhost".to_string()],
        from: None,
        smtp: None,
        tls: config::TlsMode::Opportunistic,
        ca_file: None,
        password_file: None,
        password_env: None,
        sendmail: None,
        max_alerts_per_hour: config::builtin::MAX_ALERTS_PER_HOUR,
    })
}
