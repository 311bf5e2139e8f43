//! `run-chain mail-test`: send one test alert now, through the configured transport.

use std::path::PathBuf;

use crate::cli::Common;
use crate::config::Config;
use crate::error::{exit, Error, Result};
use crate::root::{config_path, prepare_run_root, run_root};
use crate::sys;
use crate::time;

/// `mail-test`: send one test alert through the configured transport, now, and say
/// what the server (or sendmail, or the file system) answered.
pub(crate) fn mail_test(common: &Common) -> Result<u8> {
    let config = Config::load(&config_path(common))?;
    if config.email.is_none() {
        eprintln!(
            "run-chain: {} has no [email] section: alerts are written as files to root@localhost in RUN_ROOT/mail/",
            config.file.display()
        );
    }
    let email = crate::run::driver::email_or_default(&config);
    let root = run_root(common, Some(&config))?;
    prepare_run_root(&root)?;
    let now = time::wall_ms();
    let a = crate::core::alert_mail::AlertMail {
        kind: "test".into(),
        chain: "mail-test".into(),
        task: "mail-test".into(),
        host: sys::hostname(),
        command: "run-chain mail-test".into(),
        outcome: "none: this is a test of the alert transport".into(),
        duration: "-".into(),
        streak_start: "-".into(),
        streak_length: "-".into(),
        failures: 0,
        next_attempt: "-".into(),
        held_back: 0,
        output: b"If you can read this, run-chain's alerts reach you.\n".to_vec(),
        output_bytes: 52,
        at_ms: now,
        ..Default::default()
    };
    let id = crate::mail::message_id(&a);
    let bytes = crate::mail::build(&email, &a, &id).map_err(Error::Config)?;
    let transport = match (&email.smtp, &email.sendmail) {
        (Some(u), _) => format!("SMTP {u}"),
        (_, Some(s)) => format!("sendmail {}", s.display()),
        _ => format!("files in {}", root.join("mail").display()),
    };
    let file = PathBuf::from(format!("{now:013}-mail-test.eml"));
    let children = crate::mail::Children::default();
    match crate::mail::deliver(&email, &root, &file, &bytes, &children) {
        Ok(said) => {
            say!("sent a test alert to {} through {transport}: {said}", email.to.join(", "));
            say!("Message-ID: {id}");
            Ok(exit::OK)
        }
        // The message names the server (or sendmail, or the file) itself, once.
        Err(crate::mail::SendError::Transient(m)) => Err(Error::Busy(format!(
            "failed to send the test alert: {m}; a temporary failure: alerts are retried"
        ))),
        Err(crate::mail::SendError::Permanent(m)) => Err(Error::Internal(format!(
            "failed to send the test alert: {m}; a permanent failure: alerts are not retried (they go to RUN_ROOT/outbox/failed/)"
        ))),
    }
}
