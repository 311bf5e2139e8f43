//! The durable outbox, `RUN_ROOT/outbox/`, and the mailer thread that delivers it in
//! order, with a backoff for temporary failures.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::config::Email;
use crate::core::alert_mail::AlertMail;

use super::transport::{deliver, write_into_place, Children, SendError};

/// The outbox folder.
pub(crate) fn outbox(run_root: &Path) -> PathBuf {
    run_root.join("outbox")
}

/// Store a built mail in the outbox (atomically, mode 0600). Returns its path.
pub(crate) fn enqueue(run_root: &Path, a: &AlertMail, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = outbox(run_root);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let name = format!(
        "{:013}-{}-{}-{}-{}.eml",
        a.at_ms,
        a.chain,
        a.task,
        a.kind,
        std::process::id()
    );
    let path = dir.join(&name);
    write_into_place(&dir, &name, bytes, true)?;
    Ok(path)
}

/// Messages from the chain to its mailer.
pub(crate) enum ToMailer {
    /// Something new is in the outbox.
    Wake,
    /// The config was reloaded.
    Config(Email),
}

/// Start the mailer thread. It runs until the process exits.
pub(crate) fn start(run_root: PathBuf, email: Email, children: Children) -> Sender<ToMailer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("mailer".into())
        .spawn(move || mailer_loop(run_root, email, children, rx));
    if let Err(e) = spawned {
        log::error!("failed to start the mailer thread: {e}; alerts stay in the outbox");
    }
    tx
}

const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

fn mailer_loop(run_root: PathBuf, mut email: Email, children: Children, rx: Receiver<ToMailer>) {
    // file name -> (next attempt, current backoff)
    let mut retry: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    let dir = outbox(&run_root);
    loop {
        let now = Instant::now();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.ends_with(".eml") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        retry.retain(|n, _| names.contains(n));
        for name in &names {
            if retry.get(name).is_some_and(|(at, _)| *at > now) {
                // Keep the order: nothing later goes out before this one.
                break;
            }
            let path = dir.join(name);
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue;
            };
            // Claim it: another instance may be sending it right now.
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue;
            }
            if !path.exists() {
                continue; // sent and removed by the other instance meanwhile
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match deliver(&email, &run_root, &path, &bytes, &children) {
                Ok(said) => {
                    let _ = std::fs::remove_file(&path);
                    retry.remove(name);
                    log::info!("alert {name} sent: {said}");
                }
                Err(SendError::Permanent(m)) => {
                    let failed = dir.join("failed");
                    let _ = std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&failed);
                    let _ = std::fs::rename(&path, failed.join(name));
                    retry.remove(name);
                    log::error!(
                        "alert {name} could not be delivered: {m}; moved to {}",
                        failed.display()
                    );
                }
                Err(SendError::Transient(m)) => {
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
            drop(f);
        }
        let wait = retry
            .values()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
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
