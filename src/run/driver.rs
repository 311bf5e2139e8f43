//! The driver: the one loop, the only reader of the clock.
//!
//! It waits in `ppoll` on the signal self-pipe, the running task's output pipes (and
//! run-chain's own stdout/stderr when they would block), the slot watch and the next
//! deadline (the chain's, a downtime alert's, the store's, the chain ownership's: none
//! for the local lock); it reads the clocks once per wake ([`Now`]), turns what it sees
//! into events for the [`Supervisor`] (which decides everything), and carries out the
//! effects it gets back: spawn, signal the group, record, queue a mail, log, persist the
//! state, exit. A chain in cooldown is asleep in the kernel: no timer, no polling.
//!
//! Each effect is carried out by what owns it: the run's processes by
//! [`Running`](crate::run::running::Running), a group slot by [`slots::Gate`], the
//! records by the store's [`Recorder`] (domain values in, records out), an alert mail by
//! [`Mailer`] (built, put in the store's outbox, delivered by its thread), CHAIN.state by
//! its [`state_file::Writer`]; a failed run an alert shows is read by the store's reader
//! (in the fleet: by the DB thread, ahead, when it acquired the lease: no database call
//! runs on this loop) and made into the mail's view by the supervisor.
//!
//! In the fleet a run starts only once its start record is committed under the lease
//! (the start gate): the loop does not wait for that commit, it keeps handling signals
//! and the lease meanwhile ([`Driver::poll_gate`]); a refused start is no run of the task.

use std::collections::VecDeque;
use std::path::PathBuf;

use crate::config::{Config, Task};
use crate::core::chain::{self, Chain, Mode};
use crate::core::resume::State;
use crate::core::supervisor::{
    AlertDue, Effect, Event, ExitReason, OutputFlush, RunEnded, Signal, Supervisor,
};
use crate::error::Result;
use crate::lock::{LockEvent, Ownership};
/// Where `app` finds it (the driver's own use is the mailer's config).
pub(crate) use crate::mail::email_or_default;
use crate::mail::Mailer;
use crate::run::guardian::Guardian;
use crate::run::output::{Sink, Tail};
use crate::run::running::Running;
use crate::run::slots;
use crate::signals::{Sig, Signals};
use crate::store::recorder::Recorder;
use crate::store::state_file;
use crate::store::{self, Store};
use crate::sys;
use crate::time::{self, Now};

/// Everything the loop owns.
pub(crate) struct Driver {
    chain_name: String,
    names: Vec<String>,
    config: Config,
    run_root: PathBuf,
    /// RUN_ROOT comes from the config (no `--run-root`, no `RUN_ROOT`): a reload that
    /// changes it is refused (see [`crate::root::moved_run_root`]).
    root_from_config: bool,
    /// A SIGHUP kept by the waiting launch was applied (see `app::run`): after the start,
    /// the chain is reconfigured, as on SIGHUP, so that a changed cooldown applies to the
    /// cooldown carried over.
    reconfigure_at_start: bool,
    /// The decisions: the chain, its failures and alerts.
    sup: Supervisor,
    signals: Signals,
    /// The control channel (`run-now`), if it could be set up. Declared before
    /// `ownership`, so dropped first: its file is removed while the lock is still held
    /// (a next holder could have bound its own at the same path after).
    ctl: Option<crate::run::ctl::Listener>,
    /// The client whose request is being fed, and the answer for it (sent once the
    /// feed has saved CHAIN.state).
    ctl_client: Option<(
        std::os::unix::net::UnixStream,
        Option<crate::run::ctl::Answer>,
    )>,
    /// Held for the life of the process: the chain's lock (dropped with the driver; its
    /// deadline, if any, is one of the loop's).
    ownership: Ownership,
    boot_id: Option<String>,
    sinks: [Sink; 2],
    /// The run in progress: its process group, and what is never a run's.
    running: Running,
    tail: Tail,
    /// CHAIN.state, kept open.
    state_file: state_file::Writer,
    /// CHAIN.state needs writing (at the end of the current [`Driver::feed`]).
    state_dirty: bool,
    /// A cooldown lies ahead: hand this feed's records to the writer now (nothing held).
    cooldown_ahead: bool,
    store: Recorder,
    /// When the running task's output is next written to the store.
    output_flush: OutputFlush,
    /// The group slot held by the run in progress (or about to start), or the wait for one.
    slot: slots::Gate,
    /// Alert mails: the store's outbox and the thread that delivers it.
    mailer: Mailer,
    /// The fleet's lease was lost: the chain is stopping, and goes back to standby.
    lost: bool,
    /// A stop was asked for (a signal, `stop`): the process exits, lost or not.
    stop_asked: bool,
    /// The fleet's start gate in flight: the run being started waits for its start
    /// record's commit while the loop goes on (signals, the lease, run-now).
    gate: Option<Gate>,
    /// Failed runs the fleet's DB thread read when this instance took the chain (by
    /// task), for the alert mails that quote a run this instance did not see.
    preloaded: std::collections::BTreeMap<String, crate::core::supervisor::StoredRead>,
}

/// A run waiting at the fleet's start gate.
#[derive(Debug, Clone, Copy)]
struct Gate {
    ticket: u64,
    index: usize,
    run_id: u64,
    asked: time::Mono,
}

/// How the loop ended, with what `app::run` needs to go back to standby after a lost
/// lease (the ownership, the signals, the guardian).
pub(crate) struct Ended {
    pub(crate) code: u8,
    /// The lease was lost (and no stop was asked): wait as a standby, run again.
    pub(crate) lost: bool,
    pub(crate) ownership: Ownership,
    pub(crate) signals: Signals,
    pub(crate) guardian: Guardian,
}

pub(crate) use crate::core::supervisor::chain_tasks;

mod record;
mod run_now;

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
        mut ownership: Ownership,
        base_state: State,
    ) -> Driver {
        // Fleet-wide group slots go through the lease's DB thread.
        let gate = slots::Gate::new(ownership.fleet_mut().and_then(|f| f.slots()));
        let instance = store::Instance::this_process(&config.digest);
        let local = Store::owned_by(&run_root, instance, ownership.token());
        // In the fleet the records go to the DB thread (fenced by the lease), none to SQLite.
        let store = match ownership.fleet_mut().and_then(|f| f.remote(&config.digest)) {
            Some(remote) => Recorder::remote(&chain_name, local, remote),
            None => Recorder::start(&chain_name, local),
        };
        let max_per_hour = email_or_default(&config).max_alerts_per_hour;
        // The host alerts name: in the fleet, `[store] host` (the fleet's name for it).
        let host = ownership
            .fleet_mut()
            .map_or_else(sys::hostname, |f| f.host().to_string());
        let sup = Supervisor::new(
            chain_name.clone(),
            host,
            tasks,
            max_per_hour,
            mode,
            chain,
            base_state,
        );
        let state_file = state_file::Writer::new(state_file::path(&run_root, &chain_name));
        // What the DB thread read for the alert mails when it acquired the lease.
        let preloaded = ownership
            .fleet_mut()
            .map(|f| f.take_failed_runs())
            .unwrap_or_default();
        // The mailer delivers at once what an earlier instance left in the outbox.
        // In the fleet the outbox is the fleet's store's (nothing in RUN_ROOT/outbox/).
        let (ours, theirs) = match ownership.fleet_mut().and_then(|f| f.outboxes()) {
            Some(pair) if store.is_remote() => pair,
            _ => (store::open_outbox(&run_root), store::open_outbox(&run_root)),
        };
        let mailer = Mailer::start(ours, theirs, run_root.clone(), email_or_default(&config));
        let running = Running::new(guardian, mailer.children().clone());
        // Only the lock holder gets here: its channel replaces a stale one.
        let ctl = match crate::run::ctl::Listener::bind(&run_root, &chain_name) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!(
                    "{chain_name}: failed to listen on {}: {e}; run-now is not available",
                    crate::run::ctl::socket_path(&run_root, &chain_name).display()
                );
                None
            }
        };
        Driver {
            chain_name,
            names,
            config,
            run_root,
            root_from_config: true,
            reconfigure_at_start: false,
            sup,
            signals,
            ownership,
            boot_id: sys::boot_id(),
            sinks: [Sink::new(1), Sink::new(2)],
            running,
            tail: Tail::new(0),
            state_file,
            state_dirty: false,
            cooldown_ahead: false,
            store,
            output_flush: OutputFlush::default(),
            slot: gate,
            mailer,
            ctl,
            ctl_client: None,
            lost: false,
            stop_asked: false,
            gate: None,
            preloaded,
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

    /// Run until the chain exits; returns the exit status and what the next period of
    /// ownership needs (see [`Ended`]).
    pub(crate) fn run(mut self) -> Result<Ended> {
        let code = self.run_loop()?;
        let lost = self.lost && !self.stop_asked && self.sup.mode() == Mode::Forever;
        let Driver {
            ownership,
            signals,
            running,
            ..
        } = self;
        Ok(Ended {
            code,
            lost,
            ownership,
            signals,
            guardian: running.into_guardian(),
        })
    }

    fn run_loop(&mut self) -> Result<u8> {
        // The loop sleeps in ppoll until the next deadline; the kernel may let such a
        // timer fire up to the thread's "timer slack" late (50 µs by default). The loop
        // wakes once per cooldown, so it asks for 1 µs: due times are kept to the clock.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
        // Runs of this chain left open by an instance that died are interrupted. The run
        // its guardian ended is closed already, with its real end (the launch waited for
        // that guardian: `app::wait_for_the_old_run`); what is still open had its end
        // recorded by nobody, and is closed with this time (see `store::Op::CloseOpen`).
        let now = Now::read();
        // A `queued` run (run-now) is kept only for the request this instance carries on.
        let queued = self
            .sup
            .chain()
            .pending()
            .map(|p| (self.sup.tasks()[p.index].name.clone(), p.run_id));
        self.store
            .close_open(now.wall_ms(), self.sup.base_state(), queued);
        // So that `status` shows what this instance does from its first moment.
        if self.sup.mode() == Mode::Forever {
            self.save_state(now);
        }
        if let Some(exit) = self.feed(Now::read(), Event::Chain(chain::Event::Start)) {
            return Ok(self.finish(exit));
        }
        if std::mem::take(&mut self.reconfigure_at_start) {
            if let Some(exit) = self.feed(Now::read(), Event::Reconfigure) {
                return Ok(self.finish(exit));
            }
        }
        // Ticks handled since the last ppoll (see below).
        let mut ticks_in_a_row = 0u32;
        loop {
            let now = Now::read();
            if self.gate.is_some() {
                if let Some(exit) = self.poll_gate(now) {
                    return Ok(self.finish(exit));
                }
            }
            if self.sup.chain().reaping() && self.running.sweep() {
                self.drain_sources();
                if let Some(exit) = self.feed(now, Event::Chain(chain::Event::GroupEmpty)) {
                    return Ok(self.finish(exit));
                }
                continue;
            }
            let mut deadline = self.sup.chain().next_deadline();
            // The fleet's start gate: between runs, the next one waits while the lease is
            // not fresh (a renew failed, or the fence is near); the lease's eventfd wakes
            // the loop when that changes.
            if deadline.is_some() && self.sup.chain().in_cooldown() && !self.ownership.may_start() {
                deadline = None;
            }
            if let Some(d) = deadline {
                if d <= now.mono {
                    if let Some(exit) = self.feed(now, Event::Chain(chain::Event::Tick)) {
                        return Ok(self.finish(exit));
                    }
                    // Due at once again and again (a program that cannot start, with no
                    // fail_cooldown) never reaches ppoll: look at the signals here too,
                    // from the second tick in a row (after one, ppoll comes next).
                    ticks_in_a_row = ticks_in_a_row.saturating_add(1);
                    if ticks_in_a_row < 2 {
                        continue;
                    }
                    for sig in self.signals.drain() {
                        if let Some(exit) = self.on_signal(Now::read(), sig) {
                            return Ok(self.finish(exit));
                        }
                    }
                    continue;
                }
            }
            if self.output_flush.due().is_some_and(|t| t <= now.mono) {
                self.flush_output();
            }
            let alert_at = self.sup.alert_deadline(now);
            if alert_at.is_some_and(|t| t <= now.mono) {
                if let Some(exit) = self.feed(now, Event::AlertTick) {
                    return Ok(self.finish(exit));
                }
                continue;
            }
            let records_at = self.store.due();
            if records_at.is_some_and(|t| t <= now.mono) {
                self.store.tick(now.mono);
                continue;
            }
            // None for the local lock: nothing to renew.
            let lock_at = self.ownership.deadline();
            if lock_at.is_some_and(|t| t <= now.mono) {
                let ev = self.ownership.on_deadline(now.mono);
                if let Some(exit) = self.on_lock_event(now, ev) {
                    return Ok(self.finish(exit));
                }
                continue;
            }
            let deadline = [
                deadline,
                self.output_flush.due(),
                alert_at,
                records_at,
                lock_at,
            ]
            .into_iter()
            .flatten()
            .min();
            // What to wait for.
            let mut fds = vec![sys::pollfd(self.signals.fd(), libc::POLLIN)];
            if let Some(fd) = self.signals.child_fd() {
                fds.push(sys::pollfd(fd, libc::POLLIN));
            }
            let signal_fds = fds.len();
            let ctl_at = self.ctl.as_ref().map(|l| {
                fds.push(sys::pollfd(l.fd(), libc::POLLIN));
                fds.len() - 1
            });
            let watch_at = self.slot.watch_fd().map(|fd| {
                fds.push(sys::pollfd(fd, libc::POLLIN));
                fds.len() - 1
            });
            let lock_fd_at = self.ownership.fd().map(|fd| {
                fds.push(sys::pollfd(fd, libc::POLLIN));
                fds.len() - 1
            });
            // The fleet's fence: a timerfd on CLOCK_BOOTTIME (counts through a suspend).
            let fence_at = self.ownership.fleet_mut().map(|f| {
                fds.push(sys::pollfd(f.fence_fd(), libc::POLLIN));
                fds.len() - 1
            });
            let mut src_idx = Vec::new();
            if let Some(run) = self.running.run() {
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
            let timeout = deadline.map(|d| d.saturating_sub(now.mono));
            if let Err(e) = sys::ppoll(&mut fds, timeout) {
                return Err(crate::error::Error::os("wait in ppoll", e));
            }
            // Awake: what follows happens now.
            let now = Now::read();
            ticks_in_a_row = 0;
            for (fi, si) in sink_idx {
                if fds[fi].revents != 0 {
                    self.sinks[si].flush();
                }
            }
            if let Some(run) = self.running.run_mut() {
                let before = self.tail.total();
                for (fi, si) in src_idx {
                    if fds[fi].revents != 0 {
                        run.sources[si].pump(&mut self.sinks, &mut self.tail, false);
                    }
                }
                if self.tail.total() != before {
                    self.output_flush.grew(now.mono);
                }
            }
            if watch_at.is_some_and(|i| fds[i].revents != 0)
                && self.slot.try_again(&self.chain_name)
            {
                if let Some(exit) = self.feed(now, Event::Chain(chain::Event::SlotFree)) {
                    return Ok(self.finish(exit));
                }
            }
            if lock_fd_at.is_some_and(|i| fds[i].revents != 0) {
                let ev = self.ownership.on_ready(now.mono);
                if let Some(exit) = self.on_lock_event(now, ev) {
                    return Ok(self.finish(exit));
                }
                // The fleet slot waited for may have come (same eventfd).
                if self.slot.fleet_ready() {
                    if let Some(exit) = self.feed(now, Event::Chain(chain::Event::SlotFree)) {
                        return Ok(self.finish(exit));
                    }
                }
            } else if fence_at.is_some_and(|i| fds[i].revents != 0) {
                let ev = self.ownership.on_deadline(now.mono);
                if let Some(exit) = self.on_lock_event(now, ev) {
                    return Ok(self.finish(exit));
                }
            }
            if ctl_at.is_some_and(|i| fds[i].revents != 0) {
                if let Some(exit) = self.on_control(now) {
                    return Ok(self.finish(exit));
                }
            }
            if fds[..signal_fds].iter().any(|f| f.revents != 0) {
                let child = signal_fds > 1 && fds[1].revents != 0;
                for sig in self.signals.drain_ready(fds[0].revents != 0, child) {
                    if let Some(exit) = self.on_signal(now, sig) {
                        return Ok(self.finish(exit));
                    }
                }
            }
        }
    }

    /// What the ownership said: a lost lease stops the chain now (nothing new starts, the
    /// running task's group gets SIGTERM, and SIGKILL at `kill_grace` or at the fence's
    /// [`LockEvent::Kill`], whichever comes first).
    fn on_lock_event(&mut self, now: Now, ev: LockEvent) -> Option<ExitReason> {
        match ev {
            LockEvent::Held => None,
            LockEvent::Lost { reason } => {
                if self.lost {
                    return None;
                }
                self.lost = true;
                log::warn!(
                    "{}: fleet: {reason}: stopping the chain (the running task now), then waiting as standby",
                    self.chain_name
                );
                self.feed(
                    now,
                    Event::Chain(chain::Event::Control(chain::Control::StopNow)),
                )
            }
            LockEvent::StopFleet => self.feed(
                now,
                Event::Stop {
                    now: false,
                    by: "stop --fleet".into(),
                },
            ),
            LockEvent::Kill => {
                if self.running.run().is_some() {
                    log::warn!(
                        "{}: fleet: 0.8 × lease without a renew: SIGKILL to the running task's group",
                        self.chain_name
                    );
                    self.running
                        .signal(&self.chain_name, chain::GroupSignal::Kill);
                }
                None
            }
        }
    }

    fn finish(&mut self, exit: ExitReason) -> u8 {
        let code = exit.code();
        for s in &mut self.sinks {
            s.flush();
        }
        // What is left goes to the store now (the writer thread makes one last try).
        self.store.finish();
        if self.lost && !self.stop_asked && self.sup.mode() == Mode::Forever {
            log::info!(
                "{}: fleet: chain stopped after the lease was lost; waiting as standby",
                self.chain_name
            );
        } else {
            log::info!("{}: exiting with status {code}", self.chain_name);
        }
        code
    }

    /// Write the running task's output so far to the store.
    fn flush_output(&mut self) {
        let grew = self.output_flush.take(self.tail.total());
        if let Some(cur) = self.sup.current().filter(|_| grew) {
            self.store.output(cur, &self.tail);
        }
    }

    fn drain_sources(&mut self) {
        if let Some(run) = self.running.run_mut() {
            for s in &mut run.sources {
                s.pump(&mut self.sinks, &mut self.tail, true);
            }
        }
    }

    /// A signal, from the OS's to the supervisor's: SIGCHLD is the leader's exit, and
    /// SIGHUP reloads the config here (the supervisor gets the new tasks).
    fn on_signal(&mut self, now: Now, sig: Sig) -> Option<ExitReason> {
        let ev = match sig {
            Sig::Child => match self.running.leader_exit() {
                Some(e) => Event::Chain(chain::Event::LeaderExited(e)),
                None => return None,
            },
            Sig::Term => Event::Signal(Signal::Term),
            Sig::Int => Event::Signal(Signal::Int),
            Sig::Quit => Event::Signal(Signal::Quit),
            // The fleet's start gate: no kick while the lease is not fresh.
            Sig::Usr1 if !self.ownership.may_start() => {
                log::info!(
                    "{}: SIGUSR1: ignored: the fleet lease is not fresh (a renew failed or the lease was lost); nothing starts now",
                    self.chain_name
                );
                return None;
            }
            Sig::Usr1 => Event::Signal(Signal::Usr1),
            Sig::Hup => Event::Reloaded {
                tasks: self.reload()?,
                max_per_hour: email_or_default(&self.config).max_alerts_per_hour,
            },
        };
        self.feed(now, ev)
    }

    fn reload(&mut self) -> Option<Vec<Task>> {
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
                self.running.forget_prepared();
                self.mailer.reconfigure(email_or_default(&self.config));
                Some(tasks)
            }
            Err(e) => {
                log::error!("{}: SIGHUP: keeping the old config: {e}", self.chain_name);
                None
            }
        }
    }

    /// Feed one event and carry out the effects, including the events they cause.
    ///
    /// CHAIN.state is written once per feed: just before a spawn (naming the run, so
    /// that its id is never given again whatever happens next), else at the end. The
    /// store's records of the feed (a run's end, the next run's start) go to the writer
    /// thread as one transaction at the end, after the spawn.
    fn feed(&mut self, now: Now, first: Event) -> Option<ExitReason> {
        if matches!(
            first,
            Event::Signal(Signal::Term | Signal::Int | Signal::Quit) | Event::Stop { .. }
        ) {
            self.stop_asked = true;
        }
        self.store.begin_batch();
        let exit = self.feed_events(now, first);
        if self.state_dirty {
            self.save_state(now);
        }
        // A cooldown ahead: what is held goes to the writer now, with this feed.
        self.store
            .end_batch(now.mono, std::mem::take(&mut self.cooldown_ahead));
        exit
    }

    fn feed_events(&mut self, now: Now, first: Event) -> Option<ExitReason> {
        let mut events = VecDeque::from([first]);
        while let Some(ev) = events.pop_front() {
            let mut effects = self.sup.on(now, ev, &self.tail);
            let mut exit = None;
            for e in effects.drain(..) {
                match e {
                    Effect::Spawn {
                        index,
                        task,
                        run_id,
                    } => {
                        debug_assert_eq!(self.sup.tasks()[index].name, task);
                        self.state_dirty = true;
                        // A task of a concurrency group takes a slot first, or waits for one.
                        let t = &self.sup.tasks()[index];
                        if let Some(group) = &t.group {
                            let (max, fleet) =
                                self.config.groups.get(group).map_or((1, false), |g| {
                                    (g.max_running, g.scope == crate::config::Scope::Fleet)
                                });
                            let (chain, root) = (&self.chain_name, &self.run_root);
                            if !self.slot.take_scoped(
                                chain,
                                &t.name,
                                root,
                                group,
                                max,
                                fleet,
                                now.wall_ms(),
                            ) {
                                events.push_back(Event::Chain(chain::Event::SlotBusy));
                                continue;
                            }
                        }
                        // The run id is used once it is in CHAIN.state, before the run
                        // starts: an instance stopped or killed at any moment after the
                        // spawn leaves a state that names this run, so the next one never
                        // gives its id to another run. (With the state written in place,
                        // this costs a few microseconds.)
                        self.save_state_with(now, Some((&task, run_id, now.wall_ms())));
                        // None: the fleet's start gate; the loop starts it (or not) when
                        // the start record's batch is settled.
                        if let Some(ev) = self.spawn(now, index, run_id) {
                            events.push_back(ev);
                        }
                    }
                    Effect::Signal(sig) => self.running.signal(&self.chain_name, sig),
                    Effect::RunEnded(r) => self.finished(now, *r),
                    Effect::Alert(a) => {
                        self.store.alerted(&a.task, a.decision.kind.as_str());
                        self.send_alert(now, *a);
                    }
                    Effect::SaveState => self.state_dirty = true,
                    Effect::Log(level, msg) => log::log!(level, "{msg}"),
                    Effect::RunNow(answer, queued) => self.answer_run_now(now, answer, queued),
                    Effect::Exit(reason) => {
                        exit = Some(reason);
                        break;
                    }
                }
            }
            self.sup.recycle(effects);
            if exit.is_some() {
                return exit;
            }
        }
        None
    }

    /// Begin run `run_id` of task `index` and start it, or (the fleet) hand its start
    /// record to the start gate: None, the loop starts it when that record is committed
    /// ([`Driver::poll_gate`]).
    fn spawn(&mut self, now: Now, index: usize, run_id: u64) -> Option<Event> {
        let (cur, task) = self.sup.begin_run(now, index, run_id);
        self.tail.reset(task.keep_output);
        self.output_flush.start();
        // The fleet's start gate: the run's start record (with what this feed recorded
        // before it) is committed, fenced, before the task is spawned; else it does not
        // start. The loop does not wait for it: it goes on handling signals and the lease.
        if let Some(ticket) = self.store.start_gated(cur) {
            self.gate = Some(Gate {
                ticket,
                index,
                run_id,
                asked: time::mono_now(),
            });
            return None;
        }
        Some(Event::Chain(self.launch(index, run_id)))
    }

    /// The run waiting at the start gate, if its batch is settled (or the chain stops, or
    /// the lease is lost): start it, or give it up as no run of the task. An exit if the
    /// chain ends.
    fn poll_gate(&mut self, now: Now) -> Option<ExitReason> {
        let g = self.gate?;
        let state = if self.stop_asked || self.lost {
            // Not worth waiting for: nothing starts now.
            Some(Err(crate::lock::fleet::GateRefusal::MaybeStored(
                if self.lost {
                    "the lease was lost"
                } else {
                    "the chain is stopping"
                }
                .into(),
            )))
        } else {
            match self.ownership.fleet_mut() {
                Some(f) => f.gate_state(g.ticket),
                None => Some(Err(crate::lock::fleet::GateRefusal::MaybeStored(
                    "no lease".into(),
                ))),
            }
        };
        let state = state?;
        self.gate = None;
        let task = self.sup.tasks()[g.index].name.clone();
        log::debug!(
            "{}: fleet: {task} run {}: start record gate {} µs",
            self.chain_name,
            g.run_id,
            time::mono_now().saturating_sub(g.asked).as_micros()
        );
        match state {
            Ok(()) => {
                let ev = self.launch(g.index, g.run_id);
                self.feed(now, Event::Chain(ev))
            }
            Err(why) => self.start_refused(now, g, &task, why),
        }
    }

    /// The fleet refused the start of run `g` (its start record is not committed under
    /// the lease): the task did not run, so this is no run of it (no record, no failure,
    /// no alert). The chain goes back to the task (see [`chain::Event::StartRefused`]),
    /// tried again after one renew period at the earliest; a lost lease stops it meanwhile
    /// as any loss of the lease does.
    fn start_refused(
        &mut self,
        now: Now,
        g: Gate,
        task: &str,
        why: crate::lock::fleet::GateRefusal,
    ) -> Option<ExitReason> {
        log::warn!(
            "{}: fleet: {task} run {} not started: {why}; the task did not run (no run is recorded)",
            self.chain_name,
            g.run_id
        );
        self.slot.release();
        self.output_flush.stop();
        let retry = self
            .ownership
            .fleet_mut()
            .map_or(std::time::Duration::from_secs(1), |f| f.lease() / 5);
        let stored = matches!(why, crate::lock::fleet::GateRefusal::MaybeStored(_));
        if stored {
            // Its start record is (or may yet be) committed: it is closed after it (a run
            // that did not run, not a failure), handed over now. Fenced like any
            // write: if the lease is lost, the next owner closes it as the dead owner's.
            self.store.push(store::Op::Interrupted {
                chain: self.chain_name.clone(),
                stop_ms: now.wall_ms(),
                error: format!(
                    "not started: {why}; the task did not run (its start record was stored all the same)"
                ),
            });
        }
        let exit = self.feed(
            now,
            Event::Chain(chain::Event::StartRefused {
                retry_at: now.mono + retry,
                stored,
            }),
        );
        if exit.is_some() {
            return exit;
        }
        // A refusal that is a lost lease: the loop learns it now, not at the next wake.
        let ev = self.ownership.on_deadline(now.mono);
        self.on_lock_event(now, ev)
    }

    /// Spawn the run that [`Driver::spawn`] began.
    fn launch(&mut self, index: usize, run_id: u64) -> chain::Event {
        // (In the fleet, after the start gate: a SIGHUP meanwhile made it be made again.)
        self.running
            .prepare(self.sup.tasks(), index, &self.chain_name, &self.config);
        let scheduled = self.sup.chain().scheduled();
        let Some(cur) = self.sup.current() else {
            return chain::Event::SpawnFailed("the run was not begun".into());
        };
        let task = &self.sup.tasks()[index];
        // The start latency at the resolution of the clock (for the debug log only).
        let spawn_at = time::mono_now();
        let scheduled = scheduled.unwrap_or(spawn_at);
        match self.running.spawn(index, cur, task.timing.kill_grace) {
            Ok(pid) => {
                // The start latency at the resolution of the clock (the store keeps ms).
                log::debug!(
                    "{}: {} run {run_id} spawned {} µs after it was due",
                    self.chain_name,
                    task.name,
                    spawn_at.saturating_sub(scheduled).as_micros()
                );
                log::info!(
                    "{}: {} run {run_id} started (pid {pid}): {}",
                    self.chain_name,
                    task.name,
                    task.program.short()
                );
                self.store.run_started(cur, pid);
                chain::Event::Spawned
            }
            Err(msg) => {
                log::info!(
                    "{}: {} run {run_id} could not start: {msg}",
                    self.chain_name,
                    task.name
                );
                chain::Event::SpawnFailed(msg)
            }
        }
    }
}
