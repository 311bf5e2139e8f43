//! The fleet's outbox of alert mails (issue 20; design notes §3): rows of
//! `run_chain.outbox`, put in the SAME fenced transaction as the run's end that decided
//! them ([`Op::Mail`], pushed by [`Put`] on the loop: no DB call there), and delivered by
//! the owner's mailer thread through the chain's one DB thread ([`Handle`] sends a
//! [`Req`], `lock/fleet.rs` runs it with [`serve`] on its one connection).
//!
//! - claim: `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)` and only while the
//!   claimer holds the chain's lease unexpired; the claim lasts until `claim_until` (the
//!   SMTP timeout + a margin), after which another owner may claim the row again;
//! - sent: the row is deleted (by id and claimer); release: the claim is dropped and the
//!   next try set; set aside: `set_aside_at` and the error.
//!
//! A new owner delivers what its predecessor left unsent (its mailer starts with a pass
//! over the chain's rows). The one window left is SMTP's: a crash between the server's
//! acceptance and the delete's commit sends the mail again, with the same Message-ID
//! (fixed when the alert was decided: it is in the stored bytes).

use std::sync::mpsc;
use std::time::Duration;

use tokio_postgres::types::Type;

use super::conn::{Conn, DbError};
use crate::core::alert_mail::AlertMail;
use crate::store::outbox::Outbox;
use crate::store::Op;

/// The margin added to the SMTP timeout for a claim's deadline.
pub(crate) const CLAIM_MARGIN: Duration = Duration::from_secs(10);

const WAITING: &str = "SELECT id FROM run_chain.outbox \
     WHERE chain = $1 AND set_aside_at IS NULL ORDER BY id";

const CLAIM: &str = "UPDATE run_chain.outbox SET claimed_by = $2, \
        claim_until = now() + make_interval(secs => $3), attempts = attempts + 1 \
     WHERE id = (SELECT id FROM run_chain.outbox WHERE id = $4 AND chain = $1 \
          AND set_aside_at IS NULL AND (claim_until IS NULL OR claim_until < now()) \
        FOR UPDATE SKIP LOCKED) \
     AND EXISTS (SELECT 1 FROM run_chain.leases WHERE chain = $1 AND holder = $2 \
        AND expires_at > now()) \
     RETURNING bytes";

const SENT: &str = "DELETE FROM run_chain.outbox WHERE id = $1 AND claimed_by = $2";

const RELEASE: &str = "UPDATE run_chain.outbox SET claim_until = NULL, \
        next_try_at = now() + make_interval(secs => $3), error = $4 \
     WHERE id = $1 AND claimed_by = $2";

const SET_ASIDE: &str = "UPDATE run_chain.outbox SET claim_until = NULL, set_aside_at = now(), \
        error = $3 WHERE id = $1 AND claimed_by = $2";

/// The SQL of [`Op::Mail`] (store/pg/write.rs): the same Message-ID is never put twice.
pub(crate) const PUT: &str = "INSERT INTO run_chain.outbox (chain, message_id, bytes) \
     VALUES ($1, $2, $3) ON CONFLICT (message_id) DO NOTHING";

/// A request of the mailer thread to the DB thread.
#[derive(Debug)]
pub(crate) enum Req {
    /// The chain's rows not set aside, in order: their ids.
    Waiting,
    /// Claim row `id` for `claim` (its bytes, or None).
    Claim {
        id: i64,
        claim: Duration,
    },
    Sent(i64),
    /// Let the claim go; the next try after `after`.
    Release {
        id: i64,
        after: Duration,
        error: String,
    },
    SetAside {
        id: i64,
        error: String,
    },
}

/// The DB thread's answer.
#[derive(Debug)]
pub(crate) enum Answer {
    Waiting(Vec<i64>),
    Claimed(Option<Vec<u8>>),
    Done,
}

/// A request with its way back.
pub(crate) type Ask = (Req, mpsc::Sender<Result<Answer, String>>);

/// Run `req` for `chain` as `holder` (the DB thread's side).
pub(crate) fn serve(
    conn: &Conn,
    chain: &str,
    holder: &str,
    req: &Req,
    timeout: Duration,
) -> Result<Answer, DbError> {
    let c = conn.client();
    match req {
        Req::Waiting => {
            let rows = conn.run(timeout, c.query_typed(WAITING, &[(&chain, Type::TEXT)]))?;
            Ok(Answer::Waiting(
                rows.iter()
                    .filter_map(|r| r.try_get::<_, i64>(0).ok())
                    .collect(),
            ))
        }
        Req::Claim { id, claim } => {
            let secs = claim.as_secs_f64();
            let row = conn.run(
                timeout,
                c.query_typed_opt(
                    CLAIM,
                    &[
                        (&chain, Type::TEXT),
                        (&holder, Type::TEXT),
                        (&secs, Type::FLOAT8),
                        (id, Type::INT8),
                    ],
                ),
            )?;
            Ok(Answer::Claimed(
                row.and_then(|r| r.try_get::<_, Vec<u8>>(0).ok()),
            ))
        }
        Req::Sent(id) => {
            conn.run(
                timeout,
                c.execute_typed(SENT, &[(id, Type::INT8), (&holder, Type::TEXT)]),
            )?;
            Ok(Answer::Done)
        }
        Req::Release { id, after, error } => {
            let secs = after.as_secs_f64();
            conn.run(
                timeout,
                c.execute_typed(
                    RELEASE,
                    &[
                        (id, Type::INT8),
                        (&holder, Type::TEXT),
                        (&secs, Type::FLOAT8),
                        (error, Type::TEXT),
                    ],
                ),
            )?;
            Ok(Answer::Done)
        }
        Req::SetAside { id, error } => {
            conn.run(
                timeout,
                c.execute_typed(
                    SET_ASIDE,
                    &[(id, Type::INT8), (&holder, Type::TEXT), (error, Type::TEXT)],
                ),
            )?;
            Ok(Answer::Done)
        }
    }
}

/// The name the mailer knows row `id` by (and the file name when alerts go to
/// `RUN_ROOT/mail/`).
fn name(id: i64) -> String {
    format!("fleet-{id:010}.eml")
}

fn id_of(name: &str) -> Option<i64> {
    name.strip_prefix("fleet-")?
        .strip_suffix(".eml")?
        .parse()
        .ok()
}

/// The loop's side: `put` keeps the mail as an [`Op::Mail`] for the batch of the run's
/// end (taken with [`Outbox::take_ops`]).
pub(crate) struct Put {
    chain: String,
    ops: Vec<Op>,
}

impl Put {
    pub(crate) fn new(chain: &str) -> Put {
        Put {
            chain: chain.to_string(),
            ops: Vec::new(),
        }
    }
}

/// The mailer thread's side: requests to the DB thread.
pub(crate) struct Handle {
    /// Hands a request to the DB thread (false: it is gone).
    tx: Box<dyn Fn(Ask) -> bool + Send>,
    /// How long an answer may take.
    wait: Duration,
    /// The claim's length: the SMTP timeout + [`CLAIM_MARGIN`].
    claim: Duration,
    describe: String,
    /// The last failure logged (logged again only when it changes: the mailer polls).
    failing: Option<String>,
}

impl Handle {
    pub(crate) fn new(
        tx: Box<dyn Fn(Ask) -> bool + Send>,
        wait: Duration,
        claim: Duration,
        describe: String,
    ) -> Handle {
        Handle {
            tx,
            wait,
            claim,
            describe,
            failing: None,
        }
    }

    fn ask(&mut self, req: Req) -> Option<Answer> {
        let (tx, rx) = mpsc::channel();
        if !(self.tx)((req, tx)) {
            return None; // the DB thread is gone: the process is ending
        }
        let failed = match rx.recv_timeout(self.wait) {
            Ok(Ok(a)) => {
                if self.failing.take().is_some() {
                    log::info!("fleet outbox: the database answers again");
                }
                return Some(a);
            }
            Ok(Err(e)) => e,
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => "no answer from the DB thread in time".into(),
        };
        if self.failing.as_deref() != Some(failed.as_str()) {
            log::warn!("fleet outbox: {failed}; alerts wait in the outbox");
            self.failing = Some(failed);
        }
        None
    }
}

/// A mail is given to the fleet's outbox only through [`Op::Mail`].
fn not_here() -> std::io::Error {
    std::io::Error::other("the fleet's outbox takes mails in the run's batch")
}

impl Outbox for Put {
    fn put(&mut self, _a: &AlertMail, message_id: &str, mail: &[u8]) -> std::io::Result<String> {
        self.ops.push(Op::Mail {
            chain: self.chain.clone(),
            message_id: message_id.to_string(),
            bytes: mail.to_vec(),
        });
        Ok(format!("the fleet's outbox, {message_id}"))
    }

    fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    fn waiting(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn make_durable(&mut self, _names: &[String]) {}

    fn claim(&mut self, _name: &str) -> Option<Vec<u8>> {
        None
    }

    fn sent(&mut self, _name: &str) {}

    fn set_aside(&mut self, _name: &str) -> String {
        self.describe()
    }

    fn release(&mut self, _name: &str) {}

    fn describe(&self) -> String {
        "the fleet's outbox (run_chain.outbox)".to_string()
    }
}

impl Outbox for Handle {
    fn put(&mut self, _a: &AlertMail, _id: &str, _mail: &[u8]) -> std::io::Result<String> {
        Err(not_here())
    }

    fn waiting(&mut self) -> Vec<String> {
        match self.ask(Req::Waiting) {
            Some(Answer::Waiting(ids)) => ids.into_iter().map(name).collect(),
            _ => Vec::new(),
        }
    }

    /// Committed rows are durable.
    fn make_durable(&mut self, _names: &[String]) {}

    fn claim(&mut self, name: &str) -> Option<Vec<u8>> {
        let id = id_of(name)?;
        match self.ask(Req::Claim {
            id,
            claim: self.claim,
        }) {
            Some(Answer::Claimed(b)) => b,
            _ => None,
        }
    }

    fn sent(&mut self, name: &str) {
        if let Some(id) = id_of(name) {
            self.ask(Req::Sent(id));
        }
    }

    fn set_aside(&mut self, name: &str) -> String {
        if let Some(id) = id_of(name) {
            self.ask(Req::SetAside {
                id,
                error: "permanent failure".into(),
            });
        }
        self.describe()
    }

    fn release(&mut self, name: &str) {
        if let Some(id) = id_of(name) {
            self.ask(Req::Release {
                id,
                after: Duration::from_secs(5),
                error: "temporary failure".into(),
            });
        }
    }

    /// A row claimed by another owner (a dead one's claim runs to its deadline): tried
    /// again after this.
    fn retry_claim(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_ids() {
        assert_eq!(id_of(&name(42)), Some(42));
        assert_eq!(id_of("0000001-x.eml"), None);
    }
}
