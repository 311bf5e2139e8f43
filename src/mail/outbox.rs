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
use std::time::{Duration, Instant};

use crate::config::Email;
use crate::core::alert_mail::AlertMail;
use crate::store::outbox::Outbox;

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
        let spawned = std::thread::Builder::new()
            .name("mailer".into())
            .spawn(move || mailer_loop(theirs, run_root, config, kids, rx));
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
        match put {
            Ok(at) => {
                log::info!("{chain}: {task}: {kind} alert queued ({at})");
                let _ = self.tx.send(ToMailer::Wake);
            }
            Err(e) => log::error!("{chain}: {task}: failed to queue a {kind} alert: {e}"),
        }
        self.outbox.take_ops()
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

const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

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
                // deadline): try again later, keeping the order.
                if let Some(after) = outbox.retry_claim() {
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
                    outbox.release(name);
                    let back = retry
                        .get(name)
                        .map_or(BACKOFF_FIRST, |(_, b)| (*b * 2).min(BACKOFF_MAX));
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
        // The fleet's outbox is also looked at every so often: a mail's row is committed
        // by the DB thread after the wake, and another instance's claim may lapse.
        let wait = retry
            .values()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .chain(outbox.retry_claim())
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
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
