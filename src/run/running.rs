//! The run in progress as the OS has it, for the driver: its process group
//! ([`process::Run`]), the guardian that ends it if run-chain dies (told of each run),
//! the PIDs that are never a run's (the guardian, the mailer's sendmail children,
//! processes that survived SIGKILL and were given up on), whether SIGKILL was sent, the
//! output pipes kept for the next run, and what starting each task needs (made at its
//! first run, kept until the config is reloaded). The driver carries
//! out the supervisor's spawn and signal effects through it; its loop reads the run's
//! output pipes through [`Running::run_mut`].

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::{Config, Task};
use crate::core::chain::GroupSignal;
use crate::core::outcome::Exit;
use crate::core::supervisor::Current;
use crate::mail::Children;
use crate::run::guardian::{Guardian, RunIdentity};
use crate::run::process;
use crate::sys;

pub(crate) struct Running {
    run: Option<process::Run>,
    guardian: Guardian,
    /// The guardian's start time (clock ticks), saved with its PID in CHAIN.state.
    guardian_start: Option<u64>,
    /// The guardian, and processes given up on (they survived SIGKILL).
    ignore: BTreeSet<i32>,
    /// The mailer's own children (sendmail): never a run's leftovers.
    children: Children,
    /// SIGKILL was sent to the run in progress.
    kill_sent: bool,
    /// The last run's output pipes, for the next run (see [`process::Pipes`]).
    spare_pipes: Option<process::Pipes>,
    /// Per task (by index), what starting it needs.
    prepared: Vec<Option<Result<process::Prepared, String>>>,
}

impl Running {
    /// The guardian, for the next period of ownership (a fleet chain that lost its lease
    /// and runs again once it re-acquires it).
    pub(crate) fn into_guardian(self) -> Guardian {
        self.guardian
    }

    /// Nothing running; `guardian` and the mailer's `children` are never a run's.
    pub(crate) fn new(guardian: Guardian, children: Children) -> Running {
        Running {
            run: None,
            ignore: BTreeSet::from([guardian.pid()]),
            guardian_start: sys::start_time(guardian.pid()),
            guardian,
            children,
            kill_sent: false,
            spare_pipes: None,
            prepared: Vec::new(),
        }
    }

    /// The guardian's PID and start time (clock ticks), for CHAIN.state.
    pub(crate) fn guardian(&self) -> (i32, Option<u64>) {
        (self.guardian.pid(), self.guardian_start)
    }

    pub(crate) fn run(&self) -> Option<&process::Run> {
        self.run.as_ref()
    }

    pub(crate) fn run_mut(&mut self) -> Option<&mut process::Run> {
        self.run.as_mut()
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

    /// The config was reloaded: what starting each task needs is made again.
    pub(crate) fn forget_prepared(&mut self) {
        self.prepared.clear();
    }

    /// Make what starting task `index` of `tasks` (of `chain`, configured by `config`)
    /// needs, if it is not made yet. The variables that hold the SMTP password and the
    /// fleet store's, if any, are kept from the task's environment.
    pub(crate) fn prepare(&mut self, tasks: &[Task], index: usize, chain: &str, config: &Config) {
        let remove: Vec<&str> = [
            config
                .email
                .as_ref()
                .and_then(|e| e.password_env.as_deref()),
            config
                .store
                .as_ref()
                .and_then(|s| s.password_env.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.prepared.len() != tasks.len() {
            self.prepared.clear();
            self.prepared.resize_with(tasks.len(), || None);
        }
        self.prepared[index]
            .get_or_insert_with(|| process::Prepared::new(&tasks[index], chain, &remove));
    }

    /// Start task `index` (prepared: [`Running::prepare`]) as the run `cur`, watched by
    /// the guardian (which gives it `kill_grace` if run-chain dies): the leader's PID, or
    /// why it could not start.
    pub(crate) fn spawn(
        &mut self,
        index: usize,
        cur: &Current,
        kill_grace: Duration,
    ) -> Result<i32, String> {
        let run = RunIdentity {
            task: &cur.task,
            run_id: cur.run_id,
            scheduled_ms: cur.scheduled_ms,
            start_ms: cur.start_ms,
        };
        let announce = self.guardian.prepare(kill_grace, &run);
        let pipes = self.spare_pipes.take();
        let run = match self.prepared.get(index).and_then(Option::as_ref) {
            Some(Ok(p)) => process::spawn(p, cur.run_id, Some(announce), pipes)?,
            Some(Err(msg)) => return Err(msg.clone()),
            None => return Err("the task was not prepared".to_string()),
        };
        let pid = run.pid;
        self.guardian.watch(pid, kill_grace);
        self.run = Some(run);
        Ok(pid)
    }

    /// Signal the run's group (`chain`'s, for the debug log).
    pub(crate) fn signal(&mut self, chain: &str, sig: GroupSignal) {
        if sig == GroupSignal::Kill {
            self.kill_sent = true;
        }
        if let Some(run) = &self.run {
            log::debug!("{chain}: {sig:?} to process group {}", run.pid);
        }
        self.with_ignored(|run, ignore| {
            if let Some(run) = run {
                run.signal(sig, ignore);
            }
        });
    }

    /// While the group is reaped: whether nothing of it is left. After a SIGKILL,
    /// children reparented to us since (their parent died of it) get it too, until
    /// nothing is left.
    pub(crate) fn sweep(&mut self) -> bool {
        let killed = self.kill_sent;
        self.with_ignored(|run, ignore| match run {
            Some(run) => {
                if killed {
                    run.signal(GroupSignal::Kill, ignore);
                }
                run.sweep(ignore)
            }
            None => true,
        })
    }

    /// The leader's exit, on SIGCHLD (None: not yet, or no run).
    pub(crate) fn leader_exit(&mut self) -> Option<Exit> {
        self.run.as_mut().and_then(|r| r.leader_exit())
    }

    /// The run has ended: the guardian no longer watches it, processes that survived
    /// SIGKILL are given up on (returned, for the log), the pipes kept for the next run.
    pub(crate) fn ended(&mut self) -> Vec<i32> {
        let left = self
            .with_ignored(|run, ignore| run.as_ref().map_or(Vec::new(), |r| r.leftovers(ignore)));
        self.kill_sent = false;
        let Some(run) = self.run.take() else {
            return left;
        };
        self.ignore.extend(left.iter().copied());
        self.guardian.unwatch(run.pid);
        self.spare_pipes = run.into_pipes();
        left
    }
}
