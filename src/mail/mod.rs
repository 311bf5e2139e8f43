//! Alert mails: building them, the durable outbox, and the mailer thread.
//!
//! An alert is put, complete (RFC 5322, with its Message-ID fixed when the alert was
//! decided), in the store's outbox (`crate::store::outbox`; with the SQLite store, a
//! file in `RUN_ROOT/outbox/`, so that a store fault cannot lose it) before anything
//! tries to send it. The chain's loop puts it there; the mailer makes it durable before
//! sending it, so that a slow fsync never holds up the chain (the order is told in the
//! store's outbox module). The mailer thread (the one helper thread of a chain process) delivers the outbox in
//! order: it claims a file with `flock` (so the old and the new instance never both
//! send one alert during a hand-over), sends it, and removes it. A temporary failure
//! (an SMTP 4xx, a connection that fails or times out) is retried with a backoff; a
//! permanent one (5xx) is logged and the file moved to `outbox/failed/`. The chain
//! never waits for the mailer, and an exit never waits for it: whatever is unsent stays
//! in the outbox for the next instance. A crash between the server's acceptance and the
//! file's removal sends the mail again, with the same Message-ID.
//!
//! In the fleet (`[store]`), the outbox is the fleet's store's (`store/pg/outbox.rs`):
//! the mail is a row of `run_chain.outbox` committed in the same fenced transaction as
//! the run's end that decided it, and the owner's mailer claims, deletes, releases or
//! sets aside rows through the chain's one DB thread; a new owner delivers what its
//! predecessor left unsent, after the back-off kept in the row (`next_try_at`). The DB
//! thread wakes the mailer once the run's end that holds a mail is committed. Nothing goes
//! to `RUN_ROOT/outbox/` then.
//!
//! Transports: SMTP (lettre; STARTTLS when offered or required, implicit TLS for
//! `smtps://`, a private CA, AUTH with the password from a file or a variable),
//! `sendmail` (spawned by us, so that its PID can be kept out of the run's leftovers),
//! or, with neither, `.eml` files moved into `RUN_ROOT/mail/`.

pub(crate) mod build;
pub(crate) mod outbox;
pub(crate) mod transport;

pub(crate) use build::{build, message_id};
pub(crate) use outbox::Mailer;
pub(crate) use transport::{deliver, Children, SendError};

use crate::config::{self, Config, Email};

/// The `[email]` section, or, without one, alerts as files to root@localhost in
/// RUN_ROOT/mail/.
pub(crate) fn email_or_default(config: &Config) -> Email {
    config.email.clone().unwrap_or(Email {
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
