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

use crate::chain::{Action, Chain, ChainTask, Control, Event, Finished, Mode, Mono};
use crate::config::{Config, Task};
use crate::error::Result;
use crate::guardian::Guardian;
use crate::output::{Sink, Tail};
use crate::pidfile::PidFile;
use crate::process::{self, RunEnv};
use crate::signals::{Sig, Signals};
use crate::state::{self, State};
use crate::sys;

/// Everything the loop owns.
pub struct Driver {
    pub chain_name: String,
    pub names: Vec<String>,
    pub config: Config,
    pub tasks: Vec<Task>,
    pub run_root: PathBuf,
    pub mode: Mode,
    pub chain: Chain,
    pub signals: Signals,
    pub guardian: Guardian,
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
}

/// A duration for people: "350ms", "2.5s", "15m".
pub fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
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
        Driver {
            chain_name,
            names,
            config,
            tasks,
            run_root,
            mode,
            chain,
            signals,
            guardian,
            pidfile,
            base_state,
            boot_id: sys::boot_id(),
            sinks: [Sink::new(1), Sink::new(2)],
            run: None,
            tail: Tail::new(0),
            ignore,
            sigints: 0,
            state_error_logged: false,
        }
    }

    /// Run until the chain exits; returns the exit status.
    pub fn run(mut self) -> Result<u8> {
        if let Some(code) = self.feed(sys::mono_now(), Event::Start) {
            return Ok(self.finish(code));
        }
        loop {
            let now = sys::mono_now();
            if self.chain.reaping() {
                let empty = match &mut self.run {
                    Some(run) => run.sweep(&self.ignore),
                    None => true,
                };
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
                    continue;
                }
            }
            // What to wait for.
            let mut fds = vec![sys::pollfd(self.signals.fd(), libc::POLLIN)];
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
            for (fi, si) in sink_idx {
                if fds[fi].revents != 0 {
                    self.sinks[si].flush();
                }
            }
            if let Some(run) = &mut self.run {
                for (fi, si) in src_idx {
                    if fds[fi].revents != 0 {
                        run.sources[si].pump(&mut self.sinks, &mut self.tail, false);
                    }
                }
            }
            if fds[0].revents != 0 {
                for sig in self.signals.drain() {
                    let now = sys::mono_now();
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
        code
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
                let exit = self.run.as_ref().and_then(|r| r.leader_exit());
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
                log::info!("{}: SIGUSR1: ending the cooldown", self.chain_name);
                Event::Control(Control::Kick)
            }
            Sig::Hup => match self.reload() {
                Some(tasks) => Event::Control(Control::Reconfigure(tasks)),
                None => return None,
            },
        };
        self.feed(now, ev)
    }

    fn reload(&mut self) -> Option<Vec<ChainTask>> {
        let loaded = Config::load(&self.config.file).and_then(|c| {
            let tasks = c.chain_tasks(&self.names)?;
            Ok((c, tasks))
        });
        match loaded {
            Ok((config, tasks)) => {
                if config.run_root != self.config.run_root {
                    log::warn!(
                        "{}: SIGHUP: run_root changed in {}; it takes effect at the next launch",
                        self.chain_name,
                        config.file.display()
                    );
                }
                log::info!(
                    "{}: SIGHUP: reloaded {} (digest {})",
                    self.chain_name,
                    config.file.display(),
                    config.digest
                );
                self.config = config;
                self.tasks = tasks;
                Some(chain_tasks(&self.tasks))
            }
            Err(e) => {
                log::error!("{}: SIGHUP: keeping the old config: {e}", self.chain_name);
                None
            }
        }
    }

    /// Feed one event and carry out the actions, including the events they cause.
    fn feed(&mut self, now: Mono, first: Event) -> Option<u8> {
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
                        self.save_state(now, Some((&task, run_id)));
                        events.push_back(self.spawn(index, run_id));
                    }
                    Action::Signal(sig) => {
                        if let Some(run) = &self.run {
                            log::debug!(
                                "{}: {sig:?} to process group {}",
                                self.chain_name,
                                run.pid
                            );
                            run.signal(sig, &self.ignore);
                        }
                    }
                    Action::Finished(f) => self.finished(now, &f),
                    Action::Exit(code) => return Some(code),
                }
            }
        }
        None
    }

    fn spawn(&mut self, index: usize, run_id: u64) -> Event {
        let task = &self.tasks[index];
        self.tail = Tail::new(task.keep_output);
        let env = RunEnv {
            chain: &self.chain_name,
            run_id,
            remove: self
                .config
                .email
                .as_ref()
                .and_then(|e| e.password_env.as_deref()),
        };
        match process::spawn(task, &env) {
            Ok(run) => {
                log::info!(
                    "{}: {} run {run_id} started (pid {}): {}",
                    self.chain_name,
                    task.name,
                    run.pid,
                    task.program.short()
                );
                self.guardian.watch(run.pid, task.timing.kill_grace);
                self.run = Some(run);
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
        if let Some(run) = self.run.take() {
            let left = run.leftovers(&self.ignore);
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
        }
        let duration = f.ended.saturating_sub(f.started);
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
        self.save_state(now, None);
    }

    fn save_state(&mut self, now: Mono, running: Option<(&str, u64)>) {
        let (index, due) = self.chain.position();
        let mut st = State {
            version: state::STATE_VERSION,
            tasks: self.names.clone(),
            next_task: Some(self.names[index].clone()),
            due_mono_ns: due.map(|d| d.as_nanos() as u64),
            due_wall_ms: due.map(|d| sys::wall_ms() + d.saturating_sub(now).as_millis() as u64),
            boot_id: self.boot_id.clone(),
            running_task: running.map(|(t, _)| t.to_string()),
            running_run_id: running.map(|(_, id)| id),
            run_ids: self.chain.run_ids().clone(),
        };
        if self.mode == Mode::Once {
            // --once records its runs but leaves the chain's position as it was.
            st.tasks = self.base_state.tasks.clone();
            st.next_task = self.base_state.next_task.clone();
            st.due_mono_ns = self.base_state.due_mono_ns;
            st.due_wall_ms = self.base_state.due_wall_ms;
            st.boot_id = self.base_state.boot_id.clone();
            if st.running_task.is_none() {
                st.running_task = self.base_state.running_task.clone();
                st.running_run_id = self.base_state.running_run_id;
            }
            let mut ids = self.base_state.run_ids.clone();
            ids.extend(self.chain.run_ids().clone());
            st.run_ids = ids;
        }
        let path = state::path(&self.run_root, &self.chain_name);
        match state::save(&path, &st) {
            Ok(()) => {
                if self.state_error_logged {
                    log::info!(
                        "{}: state saved again to {}",
                        self.chain_name,
                        path.display()
                    );
                    self.state_error_logged = false;
                }
            }
            Err(e) => {
                if !self.state_error_logged {
                    log::error!(
                        "{}: failed to save state to {}: {e} (the chain keeps its schedule; retrying at every run)",
                        self.chain_name,
                        path.display()
                    );
                    self.state_error_logged = true;
                }
            }
        }
    }
}
