//! The durable outbox, `RUN_ROOT/outbox/`, and the mailer thread that delivers it in
//! order, with a backoff for temporary failures.
//!
//! Who does what, and in which order:
//! 1. The chain's loop ([`enqueue`]) writes the mail under a dot name and renames it into
//!    place, and only then (later in the same feed) saves CHAIN.state, which records the
//!    alert as decided. No fsync: both are page-cache writes, as cheap as the CHAIN.state
//!    write the loop makes at every run. So a crash of run-chain itself (SIGKILL, a panic)
//!    at any point never leaves a state that says "alerted" without the mail in the
//!    outbox, and an exit (a stop, `--once` right after its last failure) has nothing to
//!    wait for: the file is written and renamed before the loop goes on.
//! 2. The mailer thread, at each pass over the outbox and before it hands any file to a
//!    transport, fsyncs the files it has not synced yet and then the outbox folder
//!    (their renames): "stored before it is sent" holds on disk, not only in the page
//!    cache, so a power cut after a send leaves the mail whole in the outbox at worst
//!    (sent again, with its Message-ID), never a torn or empty file. An fsync can take
//!    seconds on a loaded or failing disk (a minute, in `tests/slow_outbox.rs`); on
//!    this thread it delays only delivery, never the schedule nor a signal, and an exit
//!    does not wait for it (the process ends; the file is in the outbox for the next
//!    instance). Once per file and instance (a file in backoff is not synced again); a
//!    file left by an earlier instance is synced like a new one, as it may never have
//!    been; a new file behind one in backoff is synced at the next pass all the same (a
//!    new alert wakes the mailer), not only when its turn to be sent comes. A failed
//!    fsync is logged and the mail sent anyway: sending is the surest way not to lose
//!    it.
//!
//! What is given up: a power cut (not a crash of run-chain) between the rename and the
//! mailer's fsync can lose an alert that was never sent: a window as long as what the
//! mailer is busy with (a delivery: at most the SMTP timeout) plus the sync. Before, the same
//! power cut during the loop's fsync lost it too (the rename came after the fsync), and
//! the loop stood still meanwhile.

use std::collections::{BTreeMap, BTreeSet};
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

/// Store a built mail in the outbox (atomically, mode 0600), on the caller's thread and
/// without an fsync: the mailer syncs it before it sends it (see the module docs).
/// Returns its path.
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
    write_into_place(&dir, &name, bytes, false)?;
    Ok(path)
}

/// Build the mail of alert `a` for `email` and store it in the outbox of `run_root`
/// ([`enqueue`]): where it is, or why it is not there (a fragment that reads after
/// "failed to queue an alert: "). The mailer is to be woken after it.
pub(crate) fn queue_alert(
    run_root: &Path,
    email: &Email,
    a: &AlertMail,
) -> Result<PathBuf, String> {
    let bytes = super::build(email, a, &super::message_id(a))?;
    enqueue(run_root, a, &bytes)
        .map_err(|e| format!("cannot store it in {}: {e}", outbox(run_root).display()))
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
    // Files this thread has synced to disk (with the folder after them).
    let mut synced: BTreeSet<String> = BTreeSet::new();
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
        synced.retain(|n| names.contains(n));
        // Stored before it is sent: every new file, before anything is delivered (so that
        // one behind a mail in backoff is not left unsynced while the server is down).
        sync_new(&dir, &names, &mut synced);
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

/// fsync the outbox files in `names` that this thread has not synced yet, then (once) the
/// folder that holds their names (their renames into place); note them in `synced`. A
/// file gone meanwhile was sent by another instance. A failure is logged, and the file
/// counts as synced all the same (it is sent anyway: see the module docs), so that a
/// failing disk does not log it again at every pass.
fn sync_new(dir: &Path, names: &[String], synced: &mut BTreeSet<String>) {
    let mut any = false;
    let fresh: Vec<&String> = names.iter().filter(|n| !synced.contains(*n)).collect();
    for name in fresh {
        let path = dir.join(name);
        let done = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|f| f.sync_all());
        match done {
            Ok(()) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => log::warn!(
                "failed to sync alert {} to disk: {e}; sending it anyway",
                path.display()
            ),
        }
        synced.insert(name.clone());
    }
    if any {
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            log::warn!("failed to sync the folder {}: {e}", dir.display());
        }
    }
}
