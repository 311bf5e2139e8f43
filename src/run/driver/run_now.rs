//! The driver's side of `run-now` (and of `kick` and `stop` asked over the control
//! channel, fed as such so that the log and the run name who asked): a request read from the control channel
//! ([`crate::run::ctl`]) is fed to the supervisor, which decides; the answer goes back to
//! the client once CHAIN.state holds the request (the end of the feed), and a request
//! that waits for the run in progress is recorded as `queued`.

use std::io::Write;

use super::*;
use crate::core::supervisor::{Refusal, RunNowAnswer};
use crate::run::ctl::{Answer, Request};

impl Driver {
    /// The control channel is readable: take one client's request, feed it, answer.
    pub(super) fn on_control(&mut self, now: Now) -> Option<ExitReason> {
        let (mut conn, req) = self.ctl.as_ref()?.accept()?;
        // The fleet's start gate: while the lease is not fresh (a renew failed, or the
        // fence is near) nothing new starts, out of turn neither.
        if matches!(req, Request::RunNow { .. } | Request::Kick { .. })
            && !self.ownership.may_start()
        {
            let a = Answer::Refused(
                "fleet".into(),
                "the fleet lease is not fresh (a renew failed or the lease was lost): nothing starts now; ask again shortly".into(),
            );
            log::info!(
                "{}: fleet: a control request refused: the lease is not fresh",
                self.chain_name
            );
            let _ = conn.write_all(crate::run::ctl::answer_line(&a).as_bytes());
            return None;
        }
        let (ev, answer) = match req {
            Request::RunNow { task, by } => (Event::RunNow { task, by }, None),
            // A kick or a stop is always taken (what it does is the chain's to decide, as
            // for the signal): the answer is ready; the chain may exit in this feed, and
            // the answer goes before it does.
            Request::Kick { by } => (Event::Kick { by }, Some(Answer::Taken)),
            Request::Stop { now, by } => (Event::Stop { now, by }, Some(Answer::Taken)),
        };
        self.ctl_client = Some((conn, answer));
        let exit = self.feed(now, ev);
        // The feed has saved CHAIN.state: the answer can go.
        if let Some((mut conn, answer)) = self.ctl_client.take() {
            let answer = answer.unwrap_or_else(|| {
                Answer::Refused("internal".into(), "the chain did not decide".into())
            });
            let _ = conn.write_all(crate::run::ctl::answer_line(&answer).as_bytes());
        }
        exit
    }

    /// The supervisor's answer: kept for the client; a request that waits for the run
    /// in progress is recorded as `queued`.
    pub(super) fn answer_run_now(
        &mut self,
        now: Now,
        answer: RunNowAnswer,
        queued: Option<(String, String)>,
    ) {
        let a = match answer {
            RunNowAnswer::Accepted { run_id, at_once } => {
                if let (false, Some((task, by))) = (at_once, &queued) {
                    self.store.queued(task, run_id, now.wall_ms(), by);
                }
                Answer::Accepted { run_id, at_once }
            }
            RunNowAnswer::Refused(r) => {
                let code = match &r {
                    Refusal::Running => "running",
                    Refusal::Pending(..) => "pending",
                    Refusal::Stopping => "stopping",
                    Refusal::Once => "once",
                    Refusal::UnknownTask(_) => "unknown-task",
                };
                Answer::Refused(code.into(), r.to_string())
            }
        };
        if let Some((_, slot)) = &mut self.ctl_client {
            *slot = Some(a);
        }
    }
}
