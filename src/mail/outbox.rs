//! The mailer thread, which delivers the outbox of alert mails in order, with a backoff
//! for temporary failures, and the chain's side of it, [`Mailer`], which puts an alert's
//! mail in the outbox and wakes the thread.
//!
//! The outbox itself is the store's ([`Outbox`]: files in `RUN_ROOT/outbox/` with the
//! SQLite store); how a mail is made durable, and by whom, is told there. This thread
//! asks the outbox, at each pass and before it hands any mail to a transport, to make
//! the new mails durable; then it claims, sends and removes them one at a time, in
//! order. A slow disk delays only delivery, never the schedule nor a signal, and an exit
//! does not wait for this thread (what is unsent stays in the outbox for the next
//! instance).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Email;
use crate::core::alert_mail::AlertMail;
use crate::store::outbox::{Outbox, Waker};

use super::transport::{deliver, Children, SendError};

/// The chain's side of its mailer: the outbox it puts alert mails in, the config they
/// are built with, and the thread that delivers them.
pub(crate) struct Mailer {
    outbox: Box<dyn Outbox>,
    email: Email,
    tx: Sender<ToMailer>,
    children: Children,
}

/// Messages from the chain to its mailer thread.
enum ToMailer {
    /// Something new is in the outbox.
    Wake,
    /// The config was reloaded.
    Config(Email),
    /// The chain's side is gone ([`Mailer`] dropped): end the thread (the outbox's waker
    /// may still hold a sender, so the channel alone would not say so).
    Stop,
}

impl Mailer {
    /// Start the mailer thread over `theirs` (the thread's view of the outbox), and wake
    /// it for what an earlier instance left there; the chain puts mails in `ours`.
    /// `run_root` holds `mail/`, where alerts go as files when no transport is
    /// configured. The thread runs until the process exits.
    pub(crate) fn start(
        ours: Box<dyn Outbox>,
        theirs: Box<dyn Outbox>,
        run_root: PathBuf,
        email: Email,
    ) -> Mailer {
        let (tx, rx) = std::sync::mpsc::channel();
        let children = Children::default();
        let (config, kids) = (email.clone(), children.clone());
        let waker_tx = tx.clone();
        let waker: Waker = Arc::new(move || {
            let _ = waker_tx.send(ToMailer::Wake);
        });
        let spawned = std::thread::Builder::new()
            .name("mailer".into())
            .spawn(move || {
                let mut theirs = theirs;
                theirs.set_waker(waker);
                mailer_loop(theirs, run_root, config, kids, rx)
            });
        if let Err(e) = spawned {
            log::error!("failed to start the mailer thread: {e}; alerts stay in the outbox");
        }
        let _ = tx.send(ToMailer::Wake);
        Mailer {
            outbox: ours,
            email,
            tx,
            children,
        }
    }

    /// Build the mail of alert `a`, put it in the outbox, log where, and wake the mailer;
    /// or log why it could not be. Returns the records the store must commit with the
    /// run's end (the fleet's outbox: the mail itself), to push in the same batch.
    pub(crate) fn queue(&mut self, a: &AlertMail) -> Vec<crate::store::Op> {
        let id = super::message_id(a);
        let put = super::build(&self.email, a, &id).and_then(|bytes| {
            let outbox = &mut self.outbox;
            outbox
                .put(a, &id, &bytes)
                .map_err(|e| format!("cannot store it in {}: {e}", outbox.describe()))
        });
        let (chain, task, kind) = (&a.chain, &a.task, &a.kind);
        let ops = self.outbox.take_ops();
        match put {
            Ok(at) => {
                log::info!("{chain}: {task}: {kind} alert queued ({at})");
                // A mail that goes to the store with the run's end (the fleet's outbox)
                // is there only once that commits: the outbox's waker wakes the mailer
                // then (see `Outbox::set_waker`).
                if ops.is_empty() {
                    let _ = self.tx.send(ToMailer::Wake);
                }
            }
            Err(e) => log::error!("{chain}: {task}: failed to queue a {kind} alert: {e}"),
        }
        ops
    }

    /// The config was reloaded: mails are built and sent with `email` from now on.
    pub(crate) fn reconfigure(&mut self, email: Email) {
        self.email = email.clone();
        let _ = self.tx.send(ToMailer::Config(email));
    }

    /// The mailer's own children (sendmail), never a run's leftovers.
    pub(crate) fn children(&self) -> &Children {
        &self.children
    }
}

impl Drop for Mailer {
    fn drop(&mut self) {
        let _ = self.tx.send(ToMailer::Stop);
    }
}

const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// The back-off after a temporary failure of a mail tried `earlier` times before (by any
/// instance, as far as the outbox knows) and `last` (this mailer's previous back-off for
/// it, if any): 5 s, doubling at each failure, at most 10 min.
fn backoff(earlier: u32, last: Option<Duration>) -> Duration {
    let by_count = BACKOFF_FIRST.saturating_mul(1u32 << earlier.min(16));
    let by_last = last.map_or(Duration::ZERO, |b| b.saturating_mul(2));
    by_count.max(by_last).min(BACKOFF_MAX)
}

fn mailer_loop(
    mut outbox: Box<dyn Outbox>,
    run_root: PathBuf,
    mut email: Email,
    children: Children,
    rx: Receiver<ToMailer>,
) {
    // mail name -> (next attempt, current backoff)
    let mut retry: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let names = outbox.waiting();
        retry.retain(|n, _| names.contains(n));
        // Stored before it is sent: every new mail, before anything is delivered (so that
        // one behind a mail in backoff is not left unsynced while the server is down).
        outbox.make_durable(&names);
        for name in &names {
            if retry.get(name).is_some_and(|(at, _)| *at > now) {
                // Keep the order: nothing later goes out before this one.
                break;
            }
            // Claim it: another instance may be sending it right now.
            let Some(bytes) = outbox.claim(name) else {
                // Another instance holds it (the fleet: a dead owner's claim runs to its
                // deadline), or its stored next try is not due: try again later, keeping
                // the order.
                if let Some(after) = outbox.retry_claim(name) {
                    let back = retry.get(name).map_or(BACKOFF_FIRST, |(_, b)| *b);
                    retry.insert(name.clone(), (Instant::now() + after, back));
                    break;
                }
                continue;
            };
            match deliver(&email, &run_root, Path::new(name), &bytes, &children) {
                Ok(said) => {
                    outbox.sent(name);
                    retry.remove(name);
                    log::info!("alert {name} sent: {said}");
                }
                Err(SendError::Permanent(m)) => {
                    let aside = outbox.set_aside(name);
                    retry.remove(name);
                    log::error!("alert {name} could not be delivered: {m}; moved to {aside}");
                }
                Err(SendError::Transient(m)) => {
                    let back =
                        backoff(outbox.earlier_tries(name), retry.get(name).map(|(_, b)| *b));
                    outbox.retry_later(name, back, &m);
                    log::warn!(
                        "alert {name} not delivered yet: {m}; retrying in {}",
                        crate::time::fmt_dur(back)
                    );
                    retry.insert(name.clone(), (Instant::now() + back, back));
                    // Keep the order: later alerts wait behind this one.
                    break;
                }
            }
        }
        // The fleet's outbox is also looked at every so often (a slow poll: its new rows
        // wake the mailer at their commit).
        let wait = retry
            .values()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .chain(outbox.poll_after())
            .min();
        let msg = match wait {
            Some(w) => rx.recv_timeout(w),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(ToMailer::Wake) => {
                // A new alert: try the waiting ones again now (they go first), keeping
                // their backoff for the next failure.
                let now = Instant::now();
                for (at, _) in retry.values_mut() {
                    *at = now;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Ok(ToMailer::Config(c)) => {
                email = c;
                retry.clear();
            }
            Ok(ToMailer::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_what_the_outbox_or_this_mailer_knows() {
        let s = Duration::from_secs;
        // Files (no count): this mailer's own doubling, as before.
        assert_eq!(backoff(0, None), s(5));
        assert_eq!(backoff(0, Some(s(5))), s(10));
        assert_eq!(backoff(0, Some(s(320))), s(600));
        // The fleet: a new owner's first failure of a row tried twice before.
        assert_eq!(backoff(2, None), s(20));
        assert_eq!(backoff(2, Some(s(5))), s(20));
        assert_eq!(backoff(1, Some(s(40))), s(80));
        assert_eq!(backoff(40, None), s(600));
        assert_eq!(backoff(u32::MAX, Some(Duration::MAX)), s(600));
    }
}
