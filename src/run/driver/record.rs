//! What the driver records when a run ends (the store, the alert policy, the log) and
//! the chain's state it saves to CHAIN.state.

use super::*;

impl Driver {
    pub(super) fn finished(&mut self, now: Mono, f: &Finished) {
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
                brief: crate::core::alert_mail::brief(&f.outcome, timeout, duration),
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
                    Outcome::Signal(s) => {
                        format!("killed by {}", crate::core::outcome::signal_name(*s))
                    }
                    Outcome::SpawnError(_) => "could not start".to_string(),
                    other => other.label().to_string(),
                };
                crate::core::signature::signature(&key, line.as_deref())
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
    pub(super) fn save_state(&mut self, now: Mono) {
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
    pub(super) fn save_state_with(&mut self, now: Mono, running: Option<(&str, u64, u64)>) {
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
            let view = resume::StateView {
                version: resume::STATE_VERSION,
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
                    .map(|(ran, ended, ok)| resume::CooledView {
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
