//! The fleet lease at run time (issue 20, stage 1): the chain's one DB thread
//! (`run-chain-db`) and the loop's side of it.
//!
//! The DB thread owns the process's one connection ([`Conn`]); every database call
//! happens on it, none on the chain's loop. It connects and checks the schema, waits for
//! the go (the local hand-over is done first), then runs the [`Lease`] policy: acquire
//! (or take over exactly the (holder, epoch) the predecessor on this host recorded) as a
//! standby every 0.5..1.0 s, renew every `lease / 5` as the owner, each statement with a
//! client-side timeout of `lease / 5` (a renew try: `lease / 10`, a reconnect included,
//! and an owner's reconnect skips the schema check); a statement that fails drops the
//! connection and the next due action connects again (so the back-off is the policy's:
//! 0.5..1.0 s as a standby; as the owner, at once, then every `lease / 20 .. 3 × lease /
//! 40`).
//!
//! It publishes what the loop needs in a shared [`View`] and wakes the loop through an
//! eventfd (in the loop's `ppoll` set) when the view changes in a way the loop must act
//! on (owner, failing, not owner); a renew that only moves `t0` is not worth a wake: the
//! loop looks again at its own fence deadline and finds it moved.
//!
//! The loop never asks the database: it knows the epoch it runs under, and any view that
//! is not "owner of that epoch" is lost for it (so a loss followed by a quick re-acquire
//! is still seen as a loss: the chain stops, and starts again under the new epoch).
//!
//! Stage 2 (fenced writes) gives this thread the write batches through the same command
//! channel ([`Cmd`]); the one connection stays here.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::config::FleetConfig;
use crate::error::{Error, Result};
use crate::lock::lease::{Due, Fence, Lease, Lost, State, Term};
use crate::signals::{Sig, Signals};
use crate::store::pg::conn::{Conn, ConnError};
use crate::store::pg::lease as sql;
use crate::sys;
use crate::time::{self, Mono};

/// What the loop sees of the lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum View {
    /// The first connect is being tried.
    Starting,
    /// The config does not fit the database (wrong password, TLS, a foreign database):
    /// exit 78 at launch.
    Refused(String),
    /// Not the owner: who holds the lease (host, epoch) if anyone; why the database
    /// cannot be used, if it cannot.
    Standby {
        held_by: Option<(String, i64)>,
        error: Option<String>,
    },
    /// The owner.
    Owner(Term),
    /// `--once` / `--no-kill-concurrent`: the one acquire try did not get the lease.
    Busy(String),
}

struct Shared {
    view: View,
    /// The last lease lost: (epoch, why).
    lost: Option<(i64, String)>,
}

/// The view and the eventfd that says it changed.
struct Cell {
    shared: Mutex<Shared>,
    efd: OwnedFd,
}

impl Cell {
    fn view(&self) -> View {
        self.shared
            .lock()
            .map(|s| s.view.clone())
            .unwrap_or(View::Starting)
    }

    fn lost(&self) -> Option<(i64, String)> {
        self.shared.lock().ok().and_then(|s| s.lost.clone())
    }

    /// Publish `view`; wake the loop unless only an owner's `t0` moved.
    fn publish(&self, view: View) {
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        let wake = match (&s.view, &view) {
            (View::Owner(a), View::Owner(b)) => a.epoch != b.epoch || a.failing != b.failing,
            (a, b) => a != b,
        };
        s.view = view;
        drop(s);
        if wake {
            sys::eventfd_signal(self.efd.as_raw_fd());
        }
    }

    fn set_lost(&self, epoch: i64, why: String) {
        if let Ok(mut s) = self.shared.lock() {
            s.lost = Some((epoch, why));
        }
    }
}

/// Commands from the loop to the DB thread.
enum Cmd {
    /// The local hand-over is done: take over `takeover` (holder, epoch) if given, else
    /// acquire; `once`: one try only (`--once`, `--no-kill-concurrent`).
    Go {
        takeover: Option<(String, i64)>,
        once: bool,
    },
    /// Release the lease if owned, leave the standbys, answer, end.
    Release(mpsc::Sender<bool>),
}

/// What the DB thread is given.
struct Setup {
    cfg: FleetConfig,
    chain: String,
    holder: String,
}

/// The loop's side: the view, the commands, and what the running chain was given.
pub(crate) struct Fleet {
    cell: Arc<Cell>,
    tx: Option<mpsc::Sender<Cmd>>,
    lease: Duration,
    chain: String,
    holder: String,
    host: String,
    /// The epoch the chain runs under (None: not running).
    running: Option<i64>,
    /// The last term seen for that epoch.
    term: Option<Term>,
    /// The chain was told it lost the lease.
    lost_told: bool,
    /// What the fence asked so far.
    fenced: Fence,
    /// When the loop must look again (the fence's next step), on its clock.
    deadline: Option<Mono>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("chain", &self.chain)
            .field("holder", &self.holder)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

/// How the loop's [`Fleet::check`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    Held,
    /// Stop the chain (nothing new starts, the running task is stopped now).
    Lost(String),
    /// Past `t0 + 0.8 × lease`: SIGKILL the running task's group now.
    Kill,
}

impl Fleet {
    /// Start the DB thread: it connects and checks the schema at once; see
    /// [`Fleet::first_verdict`].
    pub(crate) fn start(cfg: &FleetConfig, chain: &str) -> Result<Fleet> {
        let holder = sql::new_holder_id().ok_or_else(|| {
            Error::os(
                "read random bytes for the lease's holder id",
                std::io::Error::other("the OS gave none"),
            )
        })?;
        let efd = sys::eventfd().map_err(|e| Error::os("create an eventfd", e))?;
        let cell = Arc::new(Cell {
            shared: Mutex::new(Shared {
                view: View::Starting,
                lost: None,
            }),
            efd,
        });
        let (tx, rx) = mpsc::channel();
        let setup = Setup {
            cfg: cfg.clone(),
            chain: chain.to_string(),
            holder: holder.clone(),
        };
        let c = Arc::clone(&cell);
        std::thread::Builder::new()
            .name("run-chain-db".into())
            .stack_size(512 * 1024)
            .spawn(move || db_thread(setup, &c, &rx))
            .map_err(|e| Error::os("start the database thread", e))?;
        Ok(Fleet {
            cell,
            tx: Some(tx),
            lease: cfg.lease,
            chain: chain.to_string(),
            holder,
            host: cfg.host.clone(),
            running: None,
            term: None,
            lost_told: false,
            fenced: Fence::None,
            deadline: None,
        })
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The eventfd the loop adds to its `ppoll` set.
    pub(crate) fn fd(&self) -> RawFd {
        self.cell.efd.as_raw_fd()
    }

    /// Wait for the first connect's verdict: Err (exit 78) if the database refuses this
    /// config (wrong password, foreign database, TLS); Ok(true) once connected or found
    /// unreachable (the thread keeps trying: a standby); Ok(false): stopped by a signal.
    pub(crate) fn first_verdict(&self, signals: &Signals) -> Result<bool> {
        loop {
            match self.cell.view() {
                View::Starting => {}
                View::Refused(m) => return Err(Error::Config(format!("[store]: {m}"))),
                _ => return Ok(true),
            }
            if !self.wait(signals, None)? {
                return Ok(false);
            }
        }
    }

    /// Wait for the eventfd or a signal (up to `timeout`): Ok(false) if asked to stop.
    fn wait(&self, signals: &Signals, timeout: Option<Duration>) -> Result<bool> {
        let mut fds = [
            sys::pollfd(signals.fd(), libc::POLLIN),
            sys::pollfd(self.fd(), libc::POLLIN),
        ];
        sys::ppoll(&mut fds, timeout).map_err(|e| Error::os("wait in ppoll", e))?;
        if fds[1].revents != 0 {
            sys::eventfd_drain(self.fd());
        }
        if fds[0].revents != 0
            && signals
                .drain_waiting(&self.chain)
                .iter()
                .any(|s| matches!(s, Sig::Term | Sig::Int | Sig::Quit))
        {
            return Ok(false);
        }
        Ok(true)
    }

    /// The local hand-over is done: start acquiring (see [`Cmd::Go`]).
    pub(crate) fn go(&self, takeover: Option<(String, i64)>, once: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Go { takeover, once });
        }
    }

    /// Wait as a standby until this instance owns the lease (Ok(Some(epoch))), the one
    /// try of `--once` failed (Err Busy: 75), or a signal asks to stop (Ok(None)).
    /// `status` is told where the standby stands through `on_standby`.
    pub(crate) fn wait_owner(
        &mut self,
        signals: &Signals,
        mut on_standby: impl FnMut(&View),
    ) -> Result<Option<i64>> {
        let mut shown: Option<View> = None;
        loop {
            let view = self.cell.view();
            match &view {
                View::Owner(t) if !t.failing => {
                    self.running = Some(t.epoch);
                    self.term = Some(*t);
                    self.lost_told = false;
                    self.fenced = Fence::None;
                    self.deadline = None;
                    self.refresh_deadline(time::mono_now());
                    return Ok(Some(t.epoch));
                }
                View::Busy(m) => return Err(Error::Busy(m.clone())),
                View::Standby { .. } if shown.as_ref() != Some(&view) => {
                    on_standby(&view);
                    shown = Some(view.clone());
                }
                _ => {}
            }
            if !self.wait(signals, None)? {
                return Ok(None);
            }
        }
    }

    /// The loop's look at the lease (at its eventfd or its deadline): still the owner of
    /// the epoch it runs under, lost, or past the fence's KILL.
    pub(crate) fn check(&mut self, now: Mono) -> Check {
        let Some(epoch) = self.running else {
            return Check::Held;
        };
        let boot = sys::boot_now();
        let view = self.cell.view();
        let mine = match &view {
            View::Owner(t) if t.epoch == epoch => Some(*t),
            _ => None,
        };
        if let Some(t) = mine {
            self.term = Some(t);
        }
        let fence = self.term.map_or(Fence::Kill, |t| t.fence(self.lease, boot));
        let answer = if fence == Fence::Kill && self.fenced < Fence::Kill {
            self.fenced = Fence::Kill;
            if self.lost_told {
                Check::Kill
            } else {
                self.lost_told = true;
                Check::Lost(format!(
                    "no renew of the lease (epoch {epoch}) succeeded for 0.8 × lease"
                ))
            }
        } else if self.lost_told {
            Check::Held
        } else if mine.is_none() {
            self.lost_told = true;
            Check::Lost(match self.cell.lost() {
                Some((e, why)) if e == epoch => format!("lost the lease (epoch {epoch}): {why}"),
                _ => format!("the lease (epoch {epoch}) is no longer this instance's"),
            })
        } else if fence == Fence::Term {
            self.fenced = Fence::Term;
            self.lost_told = true;
            Check::Lost(format!(
                "no renew of the lease (epoch {epoch}) succeeded for 0.6 × lease: stopping the task before the lease can pass to another host"
            ))
        } else {
            Check::Held
        };
        self.refresh_deadline(now);
        answer
    }

    /// The fence's next step on the loop's clock.
    fn refresh_deadline(&mut self, now: Mono) {
        let boot = sys::boot_now();
        let at = self.term.and_then(|t| match self.fenced {
            Fence::None if !self.lost_told => Some(t.term_at(self.lease)),
            Fence::None | Fence::Term => Some(t.kill_at(self.lease)),
            Fence::Kill => None,
        });
        self.deadline = at.map(|b| now + b.saturating_sub(boot));
    }

    /// When the loop must call [`Fleet::check`] even if the eventfd says nothing.
    pub(crate) fn deadline(&self) -> Option<Mono> {
        self.deadline
    }

    /// Whether a run may start now: the owner of the epoch the chain runs under, its
    /// last renew a success, the fence not near.
    pub(crate) fn may_start(&self) -> bool {
        if self.lost_told {
            return false;
        }
        match (self.running, self.cell.view()) {
            (Some(e), View::Owner(t)) if t.epoch == e => t.may_start(self.lease, sys::boot_now()),
            _ => false,
        }
    }

    /// The chain stopped running (lost, or exiting).
    pub(crate) fn stop_running(&mut self) {
        self.running = None;
        self.term = None;
        self.deadline = None;
    }

    /// The holder id and the epoch, while owner (for `RUN_ROOT/CHAIN.lease`).
    pub(crate) fn record(&self) -> Option<(String, i64)> {
        self.running.map(|e| (self.holder.clone(), e))
    }

    /// Release the lease (if still ours) and end the DB thread; waits up to `timeout`.
    /// True if released.
    pub(crate) fn release(&mut self, timeout: Duration) -> bool {
        let Some(tx) = self.tx.take() else {
            return false;
        };
        let (rtx, rrx) = mpsc::channel();
        if tx.send(Cmd::Release(rtx)).is_err() {
            return false;
        }
        rrx.recv_timeout(timeout).unwrap_or(false)
    }

    /// End the DB thread without releasing (a newer launch on this host takes over the
    /// lease): the process exits and its connection with it.
    pub(crate) fn keep(&mut self) {
        self.tx = None;
    }
}

/// `RUN_ROOT/CHAIN.lease`: the (holder, epoch) the owner on this host holds, for the
/// relaunch's takeover.
pub(crate) mod record {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    pub(crate) fn path(root: &Path, chain: &str) -> PathBuf {
        root.join(format!("{chain}.lease"))
    }

    /// Write (holder, epoch), made complete under a temporary name, then renamed.
    pub(crate) fn write(root: &Path, chain: &str, holder: &str, epoch: i64) -> std::io::Result<()> {
        let p = path(root, chain);
        let tmp = p.with_extension(format!("lease.tmp-{}", std::process::id()));
        let res = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{holder} {epoch}\n").as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &p));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// What the predecessor recorded, if anything readable.
    pub(crate) fn read(root: &Path, chain: &str) -> Option<(String, i64)> {
        let text = std::fs::read_to_string(path(root, chain)).ok()?;
        let mut it = text.split_whitespace();
        let holder = it.next()?;
        let epoch = it.next()?.parse().ok()?;
        (holder.len() == 32 && holder.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| (holder.to_string(), epoch))
    }
}

/// `RUN_ROOT/CHAIN.fleet`: where this host's instance stands, for `status` (one line:
/// `ROLE PID HOST EPOCH [ERROR]`, ROLE `owner` or `standby`, HOST the lease holder's host
/// (`-` if none), EPOCH its epoch (0 if none)). Written by the instance (write + rename),
/// removed when it exits; `status` trusts it only while PID holds the chain's lock.
pub(crate) mod standing {
    use std::path::{Path, PathBuf};

    /// What the file says.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Standing {
        pub(crate) owner: bool,
        pub(crate) pid: i32,
        pub(crate) host: Option<String>,
        pub(crate) epoch: Option<i64>,
        pub(crate) error: Option<String>,
    }

    pub(crate) fn path(root: &Path, chain: &str) -> PathBuf {
        root.join(format!("{chain}.fleet"))
    }

    /// The line for `st`.
    pub(crate) fn line(st: &Standing) -> String {
        let mut l = format!(
            "{} {} {} {}",
            if st.owner { "owner" } else { "standby" },
            st.pid,
            st.host.as_deref().unwrap_or("-"),
            st.epoch.unwrap_or(0)
        );
        if let Some(e) = &st.error {
            l.push(' ');
            l.push_str(&e.replace('\n', " "));
        }
        l
    }

    /// Parse a line written by [`line`].
    pub(crate) fn parse(text: &str) -> Option<Standing> {
        let text = text.trim_end_matches('\n');
        let mut it = text.splitn(5, ' ');
        let owner = match it.next()? {
            "owner" => true,
            "standby" => false,
            _ => return None,
        };
        let pid = it.next()?.parse().ok()?;
        let host = Some(it.next()?).filter(|h| *h != "-").map(str::to_string);
        let epoch = Some(it.next()?.parse::<i64>().ok()?).filter(|e| *e > 0);
        let error = it.next().map(str::to_string);
        Some(Standing {
            owner,
            pid,
            host,
            epoch,
            error,
        })
    }

    /// What `holder` (the chain's lock holder now) wrote, if it wrote it.
    pub(crate) fn read(root: &Path, chain: &str, holder: i32) -> Option<Standing> {
        let st = parse(&std::fs::read_to_string(path(root, chain)).ok()?)?;
        (st.pid == holder).then_some(st)
    }

    /// Replace it (write + rename); errors are logged by the caller.
    pub(crate) fn write(root: &Path, chain: &str, st: &Standing) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path(root, chain);
        let tmp = p.with_extension(format!("fleet.tmp-{}", std::process::id()));
        let res = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{}\n", line(st)).as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &p));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_read_back() {
            for st in [
                Standing {
                    owner: false,
                    pid: 12,
                    host: Some("h1".into()),
                    epoch: Some(7),
                    error: None,
                },
                Standing {
                    owner: true,
                    pid: 13,
                    host: Some("h2".into()),
                    epoch: Some(8),
                    error: None,
                },
                Standing {
                    owner: false,
                    pid: 14,
                    host: None,
                    epoch: None,
                    error: Some("database unreachable: connection refused (os error 111)".into()),
                },
            ] {
                assert_eq!(parse(&format!("{}\n", line(&st))), Some(st));
            }
            assert_eq!(parse("nonsense 1 h 1"), None);
            assert_eq!(parse(""), None);
        }
    }
}

/// The DB thread (see the module's text).
fn db_thread(setup: Setup, cell: &Cell, rx: &mpsc::Receiver<Cmd>) {
    let chain = setup.chain.as_str();
    let lease_len = setup.cfg.lease;
    let stmt = lease_len / 5;
    let connect_timeout = (lease_len / 2).max(Duration::from_secs(1));
    let me = sql::Me {
        chain,
        holder: &setup.holder,
        host: &setup.cfg.host,
        lease: lease_len,
    };
    let mut conn: Option<Conn> = None;
    let mut last_error: Option<String> = None;
    match connect(&setup.cfg, connect_timeout) {
        Ok(c) => {
            conn = Some(c);
            cell.publish(View::Standby {
                held_by: None,
                error: None,
            });
        }
        Err(ConnError::Refused(m)) => {
            cell.publish(View::Refused(m));
            return;
        }
        Err(ConnError::Unreachable(m)) => {
            log::warn!(
                "{chain}: fleet: database unreachable ({m}); waiting as standby and trying again"
            );
            last_error = Some(m.clone());
            cell.publish(View::Standby {
                held_by: None,
                error: Some(m),
            });
        }
    }
    // The go: the local hand-over is done.
    let (mut takeover, once) = match rx.recv() {
        Ok(Cmd::Go { takeover, once }) => (takeover, once),
        Ok(Cmd::Release(reply)) => {
            let _ = reply.send(false);
            return;
        }
        Err(_) => return,
    };
    let once_until = sys::boot_now() + lease_len;
    let mut lease = Lease::new(lease_len, sys::boot_now());
    let mut row_ready = false;
    let mut shown_holder: Option<(String, i64)> = None;
    let mut in_standbys = false;
    loop {
        let now = sys::boot_now();
        let at = match lease.due(now) {
            Due::Acquire(t) | Due::Renew(t) => t,
            Due::Lost => now,
        };
        match rx.recv_timeout(at.saturating_sub(now)) {
            Ok(Cmd::Release(reply)) => {
                let mut released = false;
                if let (Some(c), Some(t)) = (&conn, lease.term()) {
                    match sql::release(c, &me, t.epoch, stmt) {
                        Ok(r) => {
                            released = r;
                            if r {
                                log::info!("{chain}: fleet: released the lease (epoch {})", t.epoch);
                            } else {
                                log::warn!("{chain}: fleet: the lease (epoch {}) was no longer this instance's to release", t.epoch);
                            }
                        }
                        Err(e) => log::warn!(
                            "{chain}: fleet: failed to release the lease (epoch {}): {e}; it expires by itself",
                            t.epoch
                        ),
                    }
                }
                if let (Some(c), true) = (&conn, in_standbys) {
                    let _ = sql::leave_standbys(c, &me, stmt);
                }
                let _ = reply.send(released);
                return;
            }
            Ok(Cmd::Go { .. }) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = sys::boot_now();
        match lease.due(now) {
            Due::Acquire(t) if t <= now => {
                let result = (|| -> std::result::Result<Option<View>, String> {
                    let c = ensure_conn(&mut conn, &setup.cfg, connect_timeout)?;
                    if !row_ready {
                        sql::ensure_row(c, chain, stmt).map_err(|e| e.to_string())?;
                        row_ready = true;
                    }
                    if let Some((old, old_epoch)) = takeover.take() {
                        if let Some(epoch) = sql::takeover(c, &me, &old, old_epoch, stmt)
                            .map_err(|e| e.to_string())?
                        {
                            log::info!(
                                "{chain}: fleet: owner (epoch {epoch}, host {}): took over epoch {old_epoch} from this host's previous instance",
                                me.host
                            );
                            lease.acquired(epoch, now);
                            return Ok(None);
                        }
                        log::info!(
                            "{chain}: fleet: the previous instance's lease (epoch {old_epoch}) is no longer its own; acquiring"
                        );
                    }
                    if let Some((epoch, pred)) =
                        sql::acquire(c, &me, stmt).map_err(|e| e.to_string())?
                    {
                        let after = match (&pred.host, &pred.holder) {
                            (Some(h), Some(_)) => {
                                format!(" after host {h} (epoch {}) let it expire", pred.epoch)
                            }
                            _ if pred.epoch > 0 => {
                                format!(" (epoch {} was released)", pred.epoch)
                            }
                            _ => String::new(),
                        };
                        log::info!(
                            "{chain}: fleet: owner (epoch {epoch}, host {}){after}",
                            me.host
                        );
                        lease.acquired(epoch, now);
                        return Ok(None);
                    }
                    let held = sql::read(c, chain, stmt).map_err(|e| e.to_string())?;
                    if held.is_none() {
                        // The chain's row is gone (a database restored, or one that lost
                        // its last commits in a crash): made again at the next try.
                        row_ready = false;
                    }
                    let held_by = held
                        .filter(|h| h.held())
                        .map(|h| (h.host.unwrap_or_else(|| "?".into()), h.epoch));
                    if !once {
                        sql::standby(c, &me, stmt).map_err(|e| e.to_string())?;
                        in_standbys = true;
                    }
                    Ok(Some(View::Standby {
                        held_by,
                        error: None,
                    }))
                })();
                match result {
                    Ok(None) => {
                        last_error = None;
                        shown_holder = None;
                        if in_standbys {
                            if let Some(c) = &conn {
                                if sql::leave_standbys(c, &me, stmt).is_ok() {
                                    in_standbys = false;
                                }
                            }
                        }
                        if let Some(t) = lease.term() {
                            cell.publish(View::Owner(t));
                        }
                    }
                    Ok(Some(View::Standby { held_by, error })) => {
                        if last_error.take().is_some() {
                            log::info!("{chain}: fleet: database reachable again");
                        }
                        if once {
                            let msg = match &held_by {
                                Some((h, e)) => format!(
                                    "chain {chain} runs on host {h} (epoch {e}); not taking over"
                                ),
                                None => format!(
                                    "chain {chain}: the lease could not be acquired; not taking over"
                                ),
                            };
                            cell.publish(View::Busy(msg));
                            return;
                        }
                        if held_by != shown_holder {
                            match &held_by {
                                Some((h, e)) => log::info!(
                                    "{chain}: fleet: standby: the chain runs on host {h} (epoch {e})"
                                ),
                                None => log::info!("{chain}: fleet: standby: the lease is free or expiring"),
                            }
                            shown_holder = held_by.clone();
                        }
                        lease.acquire_refused(now, sql::jitter());
                        cell.publish(View::Standby { held_by, error });
                    }
                    Ok(Some(_)) => {}
                    Err(m) => {
                        drop_if_broken(&mut conn);
                        if last_error.as_deref() != Some(m.as_str()) {
                            log::warn!("{chain}: fleet: standby: database unreachable: {m}");
                            last_error = Some(m.clone());
                        }
                        if once && sys::boot_now() >= once_until {
                            cell.publish(View::Busy(format!(
                                "chain {chain}: the fleet's database is unreachable ({m}); not running"
                            )));
                            return;
                        }
                        lease.acquire_refused(now, sql::jitter());
                        cell.publish(View::Standby {
                            held_by: shown_holder.clone(),
                            error: Some(m),
                        });
                    }
                }
            }
            Due::Renew(t) if t <= now => {
                let epoch = lease.term().map_or(0, |t| t.epoch);
                // One try, a reconnect included, within the policy's lease/10.
                let budget = lease.try_timeout(now);
                let until = now + budget;
                let result = owner_conn(&mut conn, &setup.cfg, budget).and_then(|c| {
                    let left = until.saturating_sub(sys::boot_now());
                    sql::renew(c, &me, epoch, left).map_err(|e| e.to_string())
                });
                match result {
                    Ok(true) => {
                        if lease.term().is_some_and(|t| t.failing) {
                            log::info!("{chain}: fleet: renewed the lease (epoch {epoch}) again");
                        }
                        lease.renewed(now);
                    }
                    Ok(false) => {
                        lease.renew_rejected();
                    }
                    Err(m) => {
                        drop_if_broken(&mut conn);
                        if !lease.term().is_some_and(|t| t.failing) {
                            log::warn!(
                                "{chain}: fleet: renew of the lease (epoch {epoch}) failed: {m}; starting nothing new until a renew succeeds"
                            );
                        } else {
                            log::debug!("{chain}: fleet: renew (epoch {epoch}) tried again: {m}");
                        }
                        lease.renew_failed(sys::boot_now(), sql::jitter());
                    }
                }
                if let Some(t) = lease.term() {
                    cell.publish(View::Owner(t));
                }
            }
            Due::Lost => {
                lease.expire(now);
                if let State::Lost { reason, epoch } = lease.state().clone() {
                    let why = reason.to_string();
                    log::warn!("{chain}: fleet: lost the lease (epoch {epoch}): {why}");
                    cell.set_lost(epoch, why);
                    lease.back_to_standby(now, sql::jitter());
                    cell.publish(View::Standby {
                        held_by: None,
                        error: None,
                    });
                    if matches!(reason, Lost::Expired) {
                        // A connection that let the lease expire is not to be trusted.
                        conn = None;
                    }
                }
            }
            _ => {}
        }
    }
}

fn connect(cfg: &FleetConfig, timeout: Duration) -> std::result::Result<Conn, ConnError> {
    let c = Conn::connect(cfg, timeout)?;
    crate::store::pg::schema::ensure(&c)?;
    Ok(c)
}

/// The connection, made again if there is none or it closed.
fn ensure_conn<'a>(
    conn: &'a mut Option<Conn>,
    cfg: &FleetConfig,
    timeout: Duration,
) -> std::result::Result<&'a Conn, String> {
    if conn.as_ref().is_some_and(Conn::is_closed) {
        *conn = None;
    }
    if conn.is_none() {
        *conn = Some(connect(cfg, timeout).map_err(|e| e.to_string())?);
    }
    conn.as_ref().ok_or_else(|| "no connection".to_string())
}

/// The owner's connection for a renew try: the open one, or a new one made within
/// `timeout` (the try's, lease/10). Without the schema check of [`connect`]: it was made
/// at the launch (or the first connect that succeeded), and the renew itself is the check
/// here (it matches only this instance's random holder id and epoch, in the database it
/// acquired in); its two round trips on a new backend would eat the time left for more
/// tries before the fence.
fn owner_conn<'a>(
    conn: &'a mut Option<Conn>,
    cfg: &FleetConfig,
    timeout: Duration,
) -> std::result::Result<&'a Conn, String> {
    if conn.as_ref().is_some_and(Conn::is_closed) {
        *conn = None;
    }
    if conn.is_none() {
        *conn = Some(Conn::connect(cfg, timeout).map_err(|e| e.to_string())?);
    }
    conn.as_ref().ok_or_else(|| "no connection".to_string())
}

/// After a failed statement or connect: the connection is dropped, and the next due
/// action connects again. (A timeout must drop it: its answer may still come. An SQL
/// error on these tiny statements means a session in a state we do not know.)
fn drop_if_broken(conn: &mut Option<Conn>) {
    *conn = None;
}
