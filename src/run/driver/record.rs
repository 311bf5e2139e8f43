//! What the driver does when a run ends (clean up after it, record it, queue its alert,
//! log it), how it queues an alert mail, and the chain's state it saves to CHAIN.state.

use super::*;
use crate::core::supervisor::Extras;

impl Driver {
    /// A run ended (the supervisor decided its failures and alert): clean up after it,
    /// record it with its alert, send the alert, log it.
    pub(super) fn finished(&mut self, now: Now, mut r: RunEnded) {
        let left = self.running.ended();
        if !left.is_empty() {
            log::warn!(
                "{}: {} run {}: processes {:?} survived SIGKILL; giving up on them",
                self.chain_name,
                r.f.task,
                r.f.run_id,
                left
            );
        }
        // The slot is held until the run's group is empty; the next task takes its own.
        self.slot.release();
        self.output_flush.stop();
        self.store
            .run_ended(&r, &self.tail, self.sup.keep_runs(&r.f.task));
        self.cooldown_ahead |= r.cooldown_ahead();
        if let Some(a) = r.alert.take() {
            self.send_alert(now, a);
        }
        let level = r.log_level();
        if log::log_enabled!(level) {
            let last = if r.f.outcome.is_failure() {
                self.tail.last_line()
            } else {
                None
            };
            let line = self
                .sup
                .run_end_line(now, &r, self.tail.cut(), last.as_deref());
            log::log!(level, "{line}");
        }
        self.state_dirty = true;
    }

    /// Queue the mail of `due` in the outbox and wake the mailer. Whenever it is sent (at
    /// a run's end, between runs, by a relaunched instance), it shows the streak's last
    /// failed run and the real time of the next attempt.
    pub(super) fn send_alert(&mut self, now: Now, due: AlertDue) {
        let failed = match due.seen() {
            Some(v) => v,
            None => {
                let id = due.last_failed.as_ref().map(|r| r.run_id);
                let (read, name) = if self.store.is_remote() {
                    // The fleet: no database call on the loop. The run (maybe another
                    // host's) was read by the DB thread when this instance acquired the
                    // lease.
                    let name = self
                        .config
                        .store
                        .as_ref()
                        .map_or_else(String::new, |c| c.display_url.clone());
                    (preloaded_read(&self.preloaded, &due.task, id), name)
                } else {
                    let read = store::failed_run(&self.run_root, &self.chain_name, &due.task, id);
                    (read, store::path(&self.run_root).display().to_string())
                };
                let (view, effects) = self.sup.failed_from_store(&due, read, &name);
                for e in effects {
                    match e {
                        Effect::SaveState => self.state_dirty = true,
                        Effect::Log(level, msg) => log::log!(level, "{msg}"),
                        other => debug_assert!(false, "not a stored run's: {other:?}"),
                    }
                }
                view
            }
        };
        let a = self.sup.alert_mail(now, &due, failed, &time::local_hhmm);
        // The fleet's outbox: the mail goes in the store's batch of the run's end.
        for op in self.mailer.queue(&a) {
            self.store.push(op);
        }
    }

    /// Write CHAIN.state: the position, the run in progress (if any), the counters
    /// and the failure and alert state.
    pub(super) fn save_state(&mut self, now: Now) {
        let current = self
            .sup
            .current()
            .filter(|_| self.running.run().is_some())
            .map(|c| (c.task.clone(), c.run_id, c.start_ms));
        self.save_state_with(
            now,
            current.as_ref().map(|(t, id, ms)| (t.as_str(), *id, *ms)),
        );
    }

    /// [`Driver::save_state`], with the run in progress given: (task, run id, since).
    pub(super) fn save_state_with(&mut self, now: Now, running: Option<(&str, u64, u64)>) {
        self.state_dirty = false;
        // The group whose slot the running task holds (for `status`): the slot itself, not
        // the config (a reload may have changed the task's group since).
        let running_group = running.and(self.slot.held_group());
        let (guardian_pid, guardian_start) = self.running.guardian();
        let extras = Extras {
            since_ms: self.slot.waiting_since_ms(),
            guardian_pid: Some(guardian_pid),
            guardian_start,
            boot_id: self.boot_id.as_deref(),
        };
        let st = self
            .sup
            .state(now, &self.names, running, running_group, &extras);
        self.state_file.save_reported(&self.chain_name, &st);
        // The fleet: the same state, in the fleet's store (the next owner resumes from it).
        if self.store.is_remote() {
            let due = match &st {
                crate::core::supervisor::StateToSave::Forever(v) => v.due_wall_ms,
                crate::core::supervisor::StateToSave::Once(s) => s.due_wall_ms,
            };
            self.store.state(serde_json::to_string(&st).ok(), due);
        }
    }
}

/// What the DB thread read ahead of `task`'s failed run `id` (None: its newest) for a
/// mail: that run if it is the one asked for, else why it cannot be shown.
fn preloaded_read(
    preloaded: &std::collections::BTreeMap<String, crate::core::supervisor::StoredRead>,
    task: &str,
    id: Option<u64>,
) -> crate::core::supervisor::StoredRead {
    let missing = |why: &str| crate::core::supervisor::StoredRead {
        durations: Vec::new(),
        failed: Err(why.to_string()),
    };
    match preloaded.get(task) {
        Some(r) => match &r.failed {
            Ok(Some(run)) if id.is_some_and(|id| id != run.run_id) => {
                missing("the run read when this instance took the chain over is another one")
            }
            _ => r.clone(),
        },
        None => missing("it was not read when this instance took the chain over"),
    }
}
