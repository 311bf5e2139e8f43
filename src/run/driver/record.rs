//! What the driver does when a run ends (clean up after it, record it, queue its alert,
//! log it) and the chain's state it saves to CHAIN.state.

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
        let chain = &self.chain_name;
        if self.sup.mode() == Mode::Once {
            // --once records its runs but leaves the chain's position as it was.
            let st = self.sup.once_state(running, running_group, &extras);
            self.state_file.save_reported(chain, &st);
        } else {
            let view = self
                .sup
                .state_view(now, &self.names, running, running_group, &extras);
            self.state_file.save_reported(chain, &view);
        }
    }
}
