//! The driver's alerts: the policy of a task, the alert deadlines, and an alert mail's
//! facts (from the run in hand, else the store, else CHAIN.state) put in the outbox.

use super::*;

/// The streak's last failed run as a mail shows it (see [`Driver::last_failed_run`]).
struct FailedView {
    run: Option<alert::FailedRun>,
    output: Vec<u8>,
    /// Bytes the run printed, when known from its output's source.
    output_bytes: Option<u64>,
    /// Why the output is missing.
    note: Option<String>,
}

impl Driver {
    /// The alert policy of `task`.
    pub(super) fn policy(&self, task: &str) -> alert::Policy {
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
    pub(super) fn alert_deadline(&self, now: Mono) -> Option<Mono> {
        let wall = time::wall_ms();
        self.alerts
            .iter()
            .filter_map(|(task, st)| st.next_deadline(self.policy(task)))
            .min()
            .map(|d| now + Duration::from_millis(d.saturating_sub(wall)))
    }

    /// Send the downtime alerts that are due.
    pub(super) fn alert_ticks(&mut self, now: Mono) {
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
    pub(super) fn send_alert(
        &mut self,
        now: Mono,
        task: &str,
        d: &Decision,
        recovered_by: Option<String>,
    ) {
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
        let id = mail::message_id(&a);
        let built = mail::build(&email, &a, &id);
        match built.and_then(|bytes| {
            mail::enqueue(&self.run_root, &a, &bytes).map_err(|e| {
                format!(
                    "cannot store it in {}: {e}",
                    mail::outbox(&self.run_root).display()
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
                    crate::core::alert_mail::failed_outcome(
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
        let Some(outcome) = crate::core::alert_mail::failed_outcome(
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
            _ => crate::core::alert_mail::last_line(&output),
        };
        let run = alert::FailedRun {
            run_id: row.run_id,
            outcome: outcome.to_string(),
            brief: crate::core::alert_mail::brief(&outcome, timeout, duration),
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
    /// else an estimate from the tasks before it (see [`crate::core::alert_mail::next_attempt`]).
    fn next_attempt(&self, now: Mono, wall: u64, task: &str) -> String {
        use crate::core::alert_mail::{self as wording, Position, Step};
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
        wording::describe(&next, wall, &time::local_hhmm)
    }
}

/// The `[email]` section, or, without one, alerts as files to root@localhost in
/// RUN_ROOT/mail/.
pub(crate) fn email_or_default(config: &Config) -> config::Email {
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
