//! The outbox of alert mails, behind the store's seam ([`Outbox`]): where a built mail
//! waits, stored before anything tries to send it, until the mailer has sent it or set
//! it aside. The chain's loop puts a mail in; the mailer thread (`mail::outbox`) lists
//! the outbox, makes new mails durable, claims one at a time, and removes or sets it
//! aside.
//!
//! With the SQLite store the outbox is files in `RUN_ROOT/outbox/` ([`Files`]), not the
//! database, so that a store fault cannot lose an alert. The durability, and who pays
//! for it:
//! 1. The chain's loop ([`Outbox::put`]) writes the mail under a dot name and renames it
//!    into place, and only then (later in the same feed) saves CHAIN.state, which records
//!    the alert as decided. No fsync: both are page-cache writes, as cheap as the
//!    CHAIN.state write the loop makes at every run. So a crash of run-chain itself
//!    (SIGKILL, a panic) at any point never leaves a state that says "alerted" without
//!    the mail in the outbox, and an exit (a stop, `--once` right after its last failure)
//!    has nothing to wait for: the file is written and renamed before the loop goes on.
//! 2. The mailer thread, at each pass over the outbox and before it hands any file to a
//!    transport ([`Outbox::make_durable`]), fsyncs the files it has not synced yet and
//!    then the outbox folder (their renames): "stored before it is sent" holds on disk,
//!    not only in the page cache, so a power cut after a send leaves the mail whole in
//!    the outbox at worst (sent again, with its Message-ID), never a torn or empty file.
//!    An fsync can take seconds on a loaded or failing disk (a minute, in
//!    `tests/slow_outbox.rs`); on this thread it delays only delivery, never the schedule
//!    nor a signal, and an exit does not wait for it (the process ends; the file is in the
//!    outbox for the next instance). Once per file and instance (a file in backoff is not
//!    synced again); a file left by an earlier instance is synced like a new one, as it
//!    may never have been; a new file behind one in backoff is synced at the next pass all
//!    the same (a new alert wakes the mailer), not only when its turn to be sent comes. A
//!    failed fsync is logged and the mail sent anyway: sending is the surest way not to
//!    lose it.
//! 3. A claim ([`Outbox::claim`]) is an `flock` on the file, so that two instances during
//!    a hand-over never both send one alert.
//!
//! What is given up: a power cut (not a crash of run-chain) between the rename and the
//! mailer's fsync can lose an alert that was never sent: a window as long as what the
//! mailer is busy with (a delivery: at most the SMTP timeout) plus the sync.
//!
//! The fleet's (PostgreSQL) store is the other implementation (`store/pg/outbox.rs`):
//! rows put in the transaction of the run's end that caused them ([`Outbox::take_ops`]),
//! claimed by a row lock and a claim column, made durable by their commit.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::core::alert_mail::AlertMail;

/// Wakes the mailer thread (see [`Outbox::set_waker`]).
pub(crate) type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Where alert mails wait to be sent (see the module's text).
pub(crate) trait Outbox: Send {
    /// Store `mail`, the complete message of alert `a`: on the chain's loop, so cheap (not
    /// yet durable: see [`Outbox::make_durable`]). Returns where it is, for the log.
    fn put(&mut self, a: &AlertMail, message_id: &str, mail: &[u8]) -> std::io::Result<String>;

    /// The records a `put` made for the store's batch of the run's end (the fleet's
    /// outbox: the mail is committed with the run that decided it). None for files.
    fn take_ops(&mut self) -> Vec<crate::store::Op> {
        Vec::new()
    }

    /// How soon to try again mail `name`, whose claim failed because another instance
    /// holds it or its next try is not due yet (None: not before something new wakes the
    /// mailer).
    fn retry_claim(&self, _name: &str) -> Option<std::time::Duration> {
        None
    }

    /// How soon to look at the outbox again although nothing woke the mailer (None:
    /// never; the fleet's: a slow poll, sooner after a failed request).
    fn poll_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// How many times the claimed mail `name` was tried before this claim, by any
    /// instance (the fleet's rows count their tries; files do not: 0).
    fn earlier_tries(&self, _name: &str) -> u32 {
        0
    }

    /// The claimed mail `name` failed for now (`error`): let the claim go, to be tried
    /// again `after` from now. Files keep the back-off in the mailer's memory only (a new
    /// instance tries at once); the fleet's rows keep it (`next_try_at`, on the
    /// database's clock), so that a new owner waits for it too.
    fn retry_later(&mut self, name: &str, _after: std::time::Duration, _error: &str) {
        self.release(name);
    }

    /// `wake` wakes the mailer: given by the mailer thread when it starts, for an outbox
    /// whose mails become visible later than the chain puts them (the fleet's: at the
    /// commit of the run's end, on the DB thread).
    fn set_waker(&mut self, _wake: Waker) {}

    /// The mails waiting, by name, in the order they are to be sent.
    fn waiting(&mut self) -> Vec<String>;

    /// Make the mails of `names` durable, those not made so yet by this value: before any
    /// of them is handed to a transport.
    fn make_durable(&mut self, names: &[String]);

    /// Claim mail `name` for sending: its bytes, or None when another instance holds it
    /// or it is gone. The claim lasts until [`Outbox::sent`], [`Outbox::set_aside`] or
    /// [`Outbox::release`].
    fn claim(&mut self, name: &str) -> Option<Vec<u8>>;

    /// The claimed mail `name` was sent: it leaves the outbox.
    fn sent(&mut self, name: &str);

    /// The claimed mail `name` can never be sent: it is set aside. Returns where.
    fn set_aside(&mut self, name: &str) -> String;

    /// Let the claim on `name` go: it is tried again later.
    fn release(&mut self, name: &str);

    /// What the outbox is, for messages ("cannot store it in {}").
    fn describe(&self) -> String;
}

/// The outbox of the SQLite store: files in `RUN_ROOT/outbox/` (see the module's text).
#[derive(Debug)]
pub(crate) struct Files {
    dir: PathBuf,
    /// The files this value has synced to disk (with the folder after them).
    synced: BTreeSet<String>,
    /// The file claimed, held open for its `flock`.
    claimed: Option<(String, File)>,
}

impl Files {
    /// The outbox of `run_root`.
    pub(crate) fn new(run_root: &Path) -> Files {
        Files {
            dir: run_root.join("outbox"),
            synced: BTreeSet::new(),
            claimed: None,
        }
    }

    fn open(&self, name: &str) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.dir.join(name))
    }
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Outbox for Files {
    /// Written atomically, mode 0600, without an fsync, as
    /// `AT_MS-CHAIN-TASK-KIND-PID.eml`.
    fn put(&mut self, a: &AlertMail, _message_id: &str, mail: &[u8]) -> std::io::Result<String> {
        make_dir(&self.dir)?;
        let name = format!(
            "{:013}-{}-{}-{}-{}.eml",
            a.at_ms,
            a.chain,
            a.task,
            a.kind,
            std::process::id()
        );
        write_into_place(&self.dir, &name, mail, false)?;
        Ok(self.dir.join(&name).display().to_string())
    }

    fn waiting(&mut self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.ends_with(".eml") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        self.synced.retain(|n| names.contains(n));
        names
    }

    /// fsync the files of `names` not synced yet, then (once) the folder that holds their
    /// names (their renames into place). A file gone meanwhile was sent by another
    /// instance. A failure is logged, and the file counts as synced all the same (it is
    /// sent anyway: see the module's text), so that a failing disk does not log it again
    /// at every pass.
    fn make_durable(&mut self, names: &[String]) {
        let mut any = false;
        for name in names {
            if self.synced.contains(name) {
                continue;
            }
            match self.open(name).and_then(|f| f.sync_all()) {
                Ok(()) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => log::warn!(
                    "failed to sync alert {} to disk: {e}; sending it anyway",
                    self.dir.join(name).display()
                ),
            }
            self.synced.insert(name.clone());
        }
        if any {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                log::warn!("failed to sync the folder {}: {e}", self.dir.display());
            }
        }
    }

    /// An `flock` on the file, taken without waiting: another instance may be sending it
    /// right now.
    fn claim(&mut self, name: &str) -> Option<Vec<u8>> {
        self.claimed = None;
        let f = self.open(name).ok()?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return None;
        }
        let path = self.dir.join(name);
        if !path.exists() {
            return None; // sent and removed by the other instance meanwhile
        }
        let bytes = std::fs::read(&path).ok()?;
        self.claimed = Some((name.to_string(), f));
        Some(bytes)
    }

    fn sent(&mut self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
        self.release(name);
    }

    /// Moved to `outbox/failed/`.
    fn set_aside(&mut self, name: &str) -> String {
        let failed = self.dir.join("failed");
        let _ = make_dir(&failed);
        let _ = std::fs::rename(self.dir.join(name), failed.join(name));
        self.release(name);
        failed.display().to_string()
    }

    fn release(&mut self, name: &str) {
        if self.claimed.as_ref().is_some_and(|(n, _)| n == name) {
            self.claimed = None;
        }
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Write `bytes` to `dir/name` under a dot name with mode 0600 from the start (synced
/// first if `sync`), then rename it into place: a reader of the folder never sees a
/// half-written mail, nor one readable by others. The temporary file is removed on error.
pub(crate) fn write_into_place(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    sync: bool,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
