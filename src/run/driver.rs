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

use crate::config::{self, Config, Task};
use crate::core::alert::{self, AlertState, Decision};
use crate::core::alert_mail::AlertMail;
use crate::core::chain::{Action, Chain, ChainTask, Control, Event, Finished, Mode};
use crate::core::outcome::Outcome;
use crate::core::resume::{self, State, TaskFailures};
use crate::error::Result;
use crate::lock::pidfile::PidFile;
use crate::mail::{self, Children, ToMailer};
use crate::run::guardian::Guardian;
use crate::run::output::{Sink, Tail};
use crate::run::process;
use crate::run::slots::{self, Slot, Slots};
use crate::signals::{Sig, Signals};
use crate::store::recorder::Recorder;
use crate::store::state_file;
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
pub(crate) struct Driver {
    chain_name: String,
    names: Vec<String>,
    config: Config,
    tasks: Vec<Task>,
    run_root: PathBuf,
    /// RUN_ROOT comes from the config (no `--run-root`, no `RUN_ROOT`): a reload that
    /// changes it is refused (see [`crate::root::moved_run_root`]).
    root_from_config: bool,
    /// A SIGHUP kept by the waiting launch was applied (see `app::run`): after the start,
    /// the chain is reconfigured, as on SIGHUP, so that a changed cooldown applies to the
    /// cooldown carried over.
    reconfigure_at_start: bool,
    mode: Mode,
    chain: Chain,
    signals: Signals,
    guardian: Guardian,
    /// The guardian's start time (clock ticks), saved with its PID in CHAIN.state.
    guardian_start: Option<u64>,
    /// Held for the life of the process: the lock.
    _pidfile: PidFile,
    /// The state as loaded (for `--once`, which keeps the chain's position as it was).
    base_state: State,
    boot_id: Option<String>,
    sinks: [Sink; 2],
    run: Option<process::Run>,
    tail: Tail,
    ignore: BTreeSet<i32>,
    sigints: u32,
    state_error_logged: bool,
    /// CHAIN.state, kept open.
    state_file: state_file::Writer,
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
    waiting: Option<(Slots, slots::Watch)>,
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

mod alerts;
mod record;

pub(crate) use alerts::email_or_default;

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
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
        let state_file = state_file::Writer::new(state_file::path(&run_root, &chain_name));
        let children: Children = Default::default();
        let mailer = mail::start(
            run_root.clone(),
            email_or_default(&config),
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
            _pidfile: pidfile,
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
    pub(crate) fn with_root_from_config(mut self, yes: bool) -> Driver {
        self.root_from_config = yes;
        self
    }

    /// See the field `reconfigure_at_start`.
    pub(crate) fn with_reconfigure_at_start(mut self, yes: bool) -> Driver {
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
    pub(crate) fn run(mut self) -> Result<u8> {
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
                            run.signal(crate::core::chain::GroupSignal::Kill, ignore);
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
                    .send(ToMailer::Config(email_or_default(&self.config)));
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
                        if sig == crate::core::chain::GroupSignal::Kill {
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
        let setup = slots::Watch::new(&self.run_root)
            .and_then(|w| Ok((Slots::open(&self.run_root, group, max)?, w)));
        let (mut slots, watch) = match setup {
            Ok(x) => x,
            Err(e) => {
                log::error!(
                    "{}: failed to use the slots of group {group} in {}: {e}; running without a slot",
                    self.chain_name,
                    slots::dir(&self.run_root).display()
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
            &crate::run::guardian::RunIdentity {
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
}
