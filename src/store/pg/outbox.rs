//! The fleet's outbox of alert mails (issue 20; design notes §3): rows of
//! `run_chain.outbox`, put in the SAME fenced transaction as the run's end that decided
//! them ([`Op::Mail`], pushed by [`Put`] on the loop: no DB call there), and delivered by
//! the owner's mailer thread through the chain's one DB thread ([`Handle`] sends a
//! [`Req`], `lock/fleet.rs` runs it with [`serve`] on its one connection).
//!
//! - claim: `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)` and only while the
//!   claimer holds the chain's lease unexpired, and only once the row's `next_try_at` has
//!   come (the database's clock); the claim lasts until `claim_until` (the SMTP timeout +
//!   a margin), after which another owner may claim the row again; `attempts` counts the
//!   claims;
//! - sent: the row is deleted (by id and claimer); a temporary failure: the claim is
//!   dropped, `next_try_at` set to now + the mailer's back-off (at least what `attempts`
//!   gives: see `mail::outbox`) and the error kept; set aside: `set_aside_at` and the error.
//!   So the back-off is the row's, not the mailer's memory: a new owner (a failover, a
//!   restart) waits for it too;
//! - a new alert's row, put with the run's end, makes the chain's other waiting rows due
//!   now (in the same statement): as with files, a new alert is the moment to try the
//!   waiting ones again (they go first), keeping their back-off for the next failure;
//! - the mailer is woken by the DB thread after the commit of a batch that held a mail
//!   (`Outbox::set_waker`), not by the loop when it puts it (the row is not there yet),
//!   and otherwise looks again at the earliest time a waiting row becomes due (from
//!   `next_try_at` and another owner's `claim_until`, as the [`Req::Waiting`] answer gives
//!   them) or after a slow poll ([`POLL`]).
//!
//! A new owner delivers what its predecessor left unsent (its mailer starts with a pass
//! over the chain's rows). The one window left is SMTP's: a crash between the server's
//! acceptance and the delete's commit sends the mail again, with the same Message-ID
//! (fixed when the alert was decided: it is in the stored bytes).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use super::conn::{Conn, DbError};
use crate::core::alert_mail::AlertMail;
use crate::store::outbox::{Outbox, Waker};
use crate::store::Op;

/// The margin added to the SMTP timeout for a claim's deadline.
pub(crate) const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// How often the mailer looks at the chain's rows when nothing wakes it and no row is
/// due sooner (rows of this chain are put only by its owner, which wakes the mailer; this
/// is a safety net).
pub(crate) const POLL: Duration = Duration::from_secs(15);

/// How soon to look again after a request failed (the database or the DB thread did not
/// answer).
const POLL_FAILING: Duration = Duration::from_secs(2);

/// The chain's rows not set aside, in order, with how long (seconds, the database's
/// clock) until each may be claimed: its next try, or another claim's deadline.
const WAITING: &str = "SELECT id, extract(epoch FROM greatest(next_try_at, \
        coalesce(claim_until, '-infinity'::timestamptz)) - now())::float8 \
     FROM run_chain.outbox WHERE chain = $1 AND set_aside_at IS NULL ORDER BY id";

const CLAIM: &str = "UPDATE run_chain.outbox SET claimed_by = $2, \
        claim_until = now() + make_interval(secs => $3), attempts = attempts + 1 \
     WHERE id = (SELECT id FROM run_chain.outbox WHERE id = $4 AND chain = $1 \
          AND set_aside_at IS NULL AND (claim_until IS NULL OR claim_until < now()) \
          AND next_try_at <= now() \
        FOR UPDATE SKIP LOCKED) \
     AND EXISTS (SELECT 1 FROM run_chain.leases WHERE chain = $1 AND holder = $2 \
        AND expires_at > now()) \
     RETURNING bytes, attempts";

const SENT: &str = "DELETE FROM run_chain.outbox WHERE id = $1 AND claimed_by = $2";

const RELEASE: &str = "UPDATE run_chain.outbox SET claim_until = NULL, \
        next_try_at = now() + make_interval(secs => $3), error = $4 \
     WHERE id = $1 AND claimed_by = $2";

const SET_ASIDE: &str = "UPDATE run_chain.outbox SET claim_until = NULL, set_aside_at = now(), \
        error = $3 WHERE id = $1 AND claimed_by = $2";

/// The SQL of [`Op::Mail`] (store/pg/write.rs): the same Message-ID is never put twice;
/// a new row makes the chain's waiting rows due now (see the module's text).
pub(crate) const PUT: &str =
    "WITH put AS (INSERT INTO run_chain.outbox (chain, message_id, bytes) \
        VALUES ($1, $2, $3) ON CONFLICT (message_id) DO NOTHING RETURNING chain) \
     UPDATE run_chain.outbox SET next_try_at = now() \
     WHERE chain IN (SELECT chain FROM put) AND set_aside_at IS NULL AND next_try_at > now()";

/// A request of the mailer thread to the DB thread.
pub(crate) enum Req {
    /// The chain's rows not set aside, in order: their ids, with the seconds until each
    /// may be claimed (<= 0: now).
    Waiting,
    /// The mailer's waker: the DB thread calls it after committing a batch that held a
    /// mail (handled by the DB thread itself, not by [`serve`]).
    Waker(Waker),
    /// Claim row `id` for `claim` (its bytes and its tries so far, or None).
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

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Req::Waiting => f.write_str("Waiting"),
            Req::Waker(_) => f.write_str("Waker"),
            Req::Claim { id, claim } => write!(f, "Claim({id}, {claim:?})"),
            Req::Sent(id) => write!(f, "Sent({id})"),
            Req::Release { id, after, .. } => write!(f, "Release({id}, {after:?})"),
            Req::SetAside { id, .. } => write!(f, "SetAside({id})"),
        }
    }
}

/// The DB thread's answer.
#[derive(Debug)]
pub(crate) enum Answer {
    Waiting(Vec<(i64, f64)>),
    /// The bytes and the row's tries, this claim's included.
    Claimed(Option<(Vec<u8>, i32)>),
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
                    .filter_map(|r| {
                        let id = r.try_get::<_, i64>(0).ok()?;
                        let due = r.try_get::<_, Option<f64>>(1).ok().flatten();
                        Some((id, due.unwrap_or(0.0)))
                    })
                    .collect(),
            ))
        }
        // The DB thread keeps it (lock/fleet.rs): nothing to run.
        Req::Waker(_) => Ok(Answer::Done),
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
            Ok(Answer::Claimed(row.and_then(|r| {
                let bytes = r.try_get::<_, Vec<u8>>(0).ok()?;
                let tries = r.try_get::<_, i32>(1).unwrap_or(1);
                Some((bytes, tries))
            })))
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

/// When each row not due at `now` may be claimed, from the seconds the database gave.
fn due_times(rows: &[(i64, f64)], now: Instant) -> HashMap<i64, Instant> {
    rows.iter()
        .filter(|(_, secs)| *secs > 0.0)
        .filter_map(|(id, secs)| {
            let d = Duration::try_from_secs_f64(*secs).ok()?;
            Some((*id, now.checked_add(d)?))
        })
        .collect()
}

/// A little after the due time (the database's clock and ours measure from slightly
/// different instants), or [`POLL_FAILING`] when the row was due already (another
/// instance claimed it meanwhile, or our clocks disagree): at most [`POLL`].
fn claim_retry(due: Option<Instant>, now: Instant) -> Duration {
    const MARGIN: Duration = Duration::from_millis(50);
    match due {
        Some(at) if at > now => (at - now + MARGIN).min(POLL),
        _ => POLL_FAILING,
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
    /// From the last [`Req::Waiting`] answer: when each row that was not due then may be
    /// claimed (this host's clock, from the database's difference).
    due: HashMap<i64, Instant>,
    /// The row claimed last and its tries before that claim.
    claimed: Option<(i64, u32)>,
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
            due: HashMap::new(),
            claimed: None,
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
            Some(Answer::Waiting(rows)) => {
                self.due = due_times(&rows, Instant::now());
                rows.into_iter().map(|(id, _)| name(id)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Committed rows are durable.
    fn make_durable(&mut self, _names: &[String]) {}

    fn claim(&mut self, name: &str) -> Option<Vec<u8>> {
        let id = id_of(name)?;
        self.claimed = None;
        match self.ask(Req::Claim {
            id,
            claim: self.claim,
        }) {
            Some(Answer::Claimed(Some((bytes, tries)))) => {
                let earlier = u32::try_from(tries.saturating_sub(1)).unwrap_or(0);
                self.claimed = Some((id, earlier));
                Some(bytes)
            }
            _ => None,
        }
    }

    fn earlier_tries(&self, name: &str) -> u32 {
        match (self.claimed, id_of(name)) {
            (Some((c, n)), Some(id)) if c == id => n,
            _ => 0,
        }
    }

    /// Kept in the row: `next_try_at` = now + `after` on the database's clock.
    fn retry_later(&mut self, name: &str, after: Duration, error: &str) {
        if let Some(id) = id_of(name) {
            self.ask(Req::Release {
                id,
                after,
                error: error.to_string(),
            });
        }
    }

    /// Handed over without waiting for the answer: the DB thread keeps it when it gets
    /// to it (no database call), even if it is busy now.
    fn set_waker(&mut self, wake: Waker) {
        let (tx, _answer) = mpsc::channel();
        (self.tx)((Req::Waker(wake), tx));
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

    /// A row claimed by another owner (a dead one's claim runs to its deadline) or not
    /// due yet: tried again when the last [`Req::Waiting`] said it would be.
    fn retry_claim(&self, name: &str) -> Option<Duration> {
        let due = id_of(name).and_then(|id| self.due.get(&id).copied());
        Some(claim_retry(due, Instant::now()))
    }

    fn poll_after(&self) -> Option<Duration> {
        Some(if self.failing.is_some() {
            POLL_FAILING
        } else {
            POLL
        })
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

    #[test]
    fn a_row_not_due_is_tried_again_when_it_is() {
        let now = Instant::now();
        let due = due_times(
            &[(1, -3.0), (2, 0.0), (3, 7.5), (4, f64::NAN), (5, 1e30)],
            now,
        );
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[&3], now + Duration::from_millis(7500));
        let ms = Duration::from_millis;
        assert_eq!(claim_retry(Some(now + ms(7500)), now), ms(7550));
        assert_eq!(claim_retry(Some(now + ms(3_600_000)), now), POLL);
        assert_eq!(claim_retry(Some(now), now), POLL_FAILING);
        assert_eq!(claim_retry(None, now), POLL_FAILING);
    }
}
