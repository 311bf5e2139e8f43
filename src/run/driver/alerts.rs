//! The driver's alerts: the downtime alerts that are due (decided by the supervisor),
//! and an alert mail put in the outbox, with the streak's last failed run read from the
//! record store when this instance did not see it.

use super::*;

impl Driver {
    /// Send the downtime alerts that are due.
    pub(super) fn alert_ticks(&mut self, now: Now) {
        let mut effects = self.sup.on(now, Event::AlertTick, &self.tail);
        let mut save = false;
        for e in effects.drain(..) {
            match e {
                Effect::Alert(a) => self.send_alert(now, *a),
                Effect::SaveState => save = true,
                other => debug_assert!(false, "not an alert tick's: {other:?}"),
            }
        }
        self.sup.recycle(effects);
        if save {
            self.save_state(now);
        }
    }

    /// Build an alert, store it in the outbox, and wake the mailer. Whenever it is sent
    /// (at a run's end, between runs, by a relaunched instance), it shows the streak's
    /// last failed run and the real time of the next attempt.
    pub(super) fn send_alert(&mut self, now: Now, due: AlertDue) {
        let failed = match due.seen() {
            Some(v) => v,
            None => self.stored_failed_run(&due),
        };
        let a = self.sup.alert_mail(now, &due, failed, &time::local_hhmm);
        let task = due.task.as_str();
        let kind = due.decision.kind.as_str();
        self.store.push(Op::Alert {
            chain: self.chain_name.clone(),
            task: task.to_string(),
            kind,
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
                    "{}: {task}: {kind} alert queued ({})",
                    self.chain_name,
                    path.display()
                );
                let _ = self.mailer.send(ToMailer::Wake);
            }
            Err(e) => log::error!(
                "{}: {task}: failed to queue a {kind} alert: {e}",
                self.chain_name,
            ),
        }
    }

    /// The streak's last failed run of `due`'s task, with its output, from the record
    /// store by its run id (an instance relaunched since that run). Whatever cannot be
    /// had is said in a note; the rest of the mail stands.
    fn stored_failed_run(&mut self, due: &AlertDue) -> FailedView {
        let task = due.task.as_str();
        let run = due.last_failed.clone();
        let want = run.as_ref().map(|r| r.run_id);
        let what = want.map_or("the last failed run".to_string(), |id| format!("run {id}"));
        match self.read_failed_run(task, want) {
            Ok(Some((stored, output, bytes))) => {
                if due.between_runs && run.is_none() {
                    // A state written before the last failed run was kept in it.
                    self.state_dirty = true;
                }
                self.sup.learn_failed_run(due, &stored, &output);
                FailedView {
                    run: Some(run.unwrap_or(stored)),
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
    /// failed run) and its output. Ok(None): not there, or not a failure. Also gives the
    /// supervisor the chain's last durations, for the mail's next attempt, if it does not
    /// know them. Seldom called (a mail in an instance that did not see the run), so the
    /// store is opened for it and closed after.
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
                    self.sup.learn_duration(s.task, ms);
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
        let timeout = self.sup.task(task).and_then(|t| t.timing.timeout);
        let line = match &outcome {
            Outcome::SpawnError(m) => Some(m.clone()),
            _ => crate::core::alert_mail::last_line(&output),
        };
        let run = alert::FailedRun::of(
            row.run_id,
            &outcome,
            timeout,
            row.start_ms,
            duration,
            line.as_deref(),
            row.output_bytes,
        );
        Ok(Some((run, output, row.output_bytes)))
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
