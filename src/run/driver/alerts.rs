//! The driver's alerts: an alert mail put in the outbox (built by `mail`), showing the
//! streak's last failed run, read from the record store when this instance did not see it.

use super::*;

impl Driver {
    /// Queue the mail of `due` in the outbox and wake the mailer. Whenever it is sent (at
    /// a run's end, between runs, by a relaunched instance), it shows the streak's last
    /// failed run and the real time of the next attempt.
    pub(super) fn send_alert(&mut self, now: Now, due: AlertDue) {
        let failed = match due.seen() {
            Some(v) => v,
            None => {
                let id = due.last_failed.as_ref().map(|r| r.run_id);
                let read = store::failed_run(&self.run_root, &self.chain_name, &due.task, id);
                let name = store::path(&self.run_root).display().to_string();
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
        self.mailer.queue(&a);
    }
}
