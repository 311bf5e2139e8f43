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
use crate::store::pg::write::{Identity, Pg};
use crate::store::recorder::Remote;
use crate::store::seam::Owner;
use crate::store::{Op, Writer};
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
    /// What the fleet's store says to resume from, read at the acquire of this epoch.
    resume: Option<(i64, FleetResume)>,
    /// The failed runs the alert state quotes, read at the acquire of this epoch (by
    /// task): the loop's alert mails never read the database themselves.
    failed_runs: Option<(i64, FailedRuns)>,
    /// The start gate: the last gated batch done, and whether it committed (its ticket).
    gate_done: u64,
    gate_ok: u64,
    /// A `stop --fleet` newer than this launch was seen: the instance exits 0.
    stop_fleet: bool,
    /// The fleet slot taken for the loop (`scope = "fleet"`): (group, slot, epoch).
    slot: Option<(String, i32, i64)>,
}

/// What a new owner resumes from (stage 2): the chain's state as its last owner wrote
/// it, the due time's distance from now on the database's clock, the last run id of
/// each task in the runs, and whether that owner was on this host.
#[derive(Debug, Clone, Default)]
pub(crate) struct FleetResume {
    pub(crate) state: Option<String>,
    pub(crate) due_in_ms: Option<i64>,
    pub(crate) run_ids: Vec<(String, u64)>,
    pub(crate) same_host: bool,
    /// When it was read (this host's monotonic clock).
    pub(crate) read_at: Option<Mono>,
}

impl FleetResume {
    /// The state to resume from, its due time moved onto this host's clocks.
    pub(crate) fn to_state(&self, now: &crate::core::resume::Clocks) -> crate::core::resume::State {
        let mut st: crate::core::resume::State = self
            .state
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let elapsed = self
            .read_at
            .map_or(0, |t| now.mono.saturating_sub(t).as_millis() as i64);
        match self.due_in_ms {
            Some(left) => {
                let left = (left - elapsed).max(0) as u64;
                st.due_wall_ms = Some(now.wall_ms + left);
                st.due_mono_ns = Some((now.mono + Duration::from_millis(left)).as_nanos() as u64);
                st.boot_id = now.boot_id.clone();
            }
            None => {
                st.due_wall_ms = None;
                st.due_mono_ns = None;
            }
        }
        if !self.same_host {
            // Another host's guardian cannot be waited for here.
            st.guardian_pid = None;
            st.guardian_start = None;
            st.guardian_boot = None;
        }
        for (task, id) in &self.run_ids {
            let e = st.run_ids.entry(task.clone()).or_insert(0);
            *e = (*e).max(*id);
        }
        st
    }
}

/// Why a run's start was refused at the start gate ([`Fleet::gate_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GateRefusal {
    /// The start record's batch is done and not committed: nothing of it is stored.
    NotStored(String),
    /// Its start record is committed (the lease no longer allows a start), or it was given
    /// up while in flight and may still commit.
    MaybeStored(String),
}

impl std::fmt::Display for GateRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateRefusal::NotStored(m) | GateRefusal::MaybeStored(m) => f.write_str(m),
        }
    }
}

/// Failed runs read ahead for the alert mails, by task (see [`Fleet::take_failed_runs`]).
pub(crate) type FailedRuns =
    std::collections::BTreeMap<String, crate::core::supervisor::StoredRead>;

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

    /// The start gate's batch `ticket` is done (`ok`: committed); wake the waiting loop.
    fn gate(&self, ticket: u64, ok: bool) {
        if let Ok(mut s) = self.shared.lock() {
            s.gate_done = s.gate_done.max(ticket);
            if ok {
                s.gate_ok = s.gate_ok.max(ticket);
            }
        }
        sys::eventfd_signal(self.efd.as_raw_fd());
    }

    fn stop_fleet(&self) -> bool {
        self.shared.lock().is_ok_and(|s| s.stop_fleet)
    }

    /// A `stop --fleet` newer than this launch: tell the loop (once).
    fn set_stop_fleet(&self) {
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        if !std::mem::replace(&mut s.stop_fleet, true) {
            drop(s);
            sys::eventfd_signal(self.efd.as_raw_fd());
        }
    }

    /// A fleet slot was taken for the loop: tell it.
    fn set_slot(&self, group: &str, slot: i32, epoch: i64) {
        if let Ok(mut s) = self.shared.lock() {
            s.slot = Some((group.to_string(), slot, epoch));
        }
        sys::eventfd_signal(self.efd.as_raw_fd());
    }

    fn set_resume(&self, epoch: i64, r: FleetResume, failed: FailedRuns) {
        if let Ok(mut s) = self.shared.lock() {
            s.resume = Some((epoch, r));
            s.failed_runs = Some((epoch, failed));
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
    /// Read where to resume from again, as `epoch`'s owner (the chain stopped and runs
    /// again under the same epoch: the resume read at the acquire was used already).
    Resume(i64, mpsc::Sender<Option<FleetResume>>),
    /// A batch of records, as `epoch`'s owner; `gate`: its ticket (the loop waits for it).
    Write {
        ops: Vec<Op>,
        epoch: i64,
        gate: Option<u64>,
    },
    /// The config's digest (for this process's `instances` row).
    Digest(String),
    /// Answer once everything before it is applied or dropped.
    Sync(mpsc::Sender<()>),
    /// Take a slot of a fleet-scoped group (`max` slots), retrying every ~1 s (jittered)
    /// while none is free; the answer comes through the shared cell and the eventfd.
    SlotTake { group: String, max: u32 },
    /// The loop no longer waits for a slot.
    SlotCancel,
    /// Free a slot taken (retried while the database fails).
    SlotFree {
        group: String,
        slot: i32,
        epoch: i64,
    },
    /// A request of the mailer thread on the fleet's outbox (answered on its channel).
    Outbox(crate::store::pg::outbox::Ask),
}

/// The loop's handle on the fleet slots (`run/slots.rs`'s fleet gate): requests go to
/// the DB thread, answers come back through the shared cell (the eventfd wakes the loop).
pub(crate) struct SlotHandle {
    cell: Arc<Cell>,
    tx: mpsc::Sender<Cmd>,
}

impl SlotHandle {
    /// Ask for a slot of `group` (the DB thread keeps trying until it gets one or is
    /// told to stop).
    pub(crate) fn request(&self, group: &str, max: u32) {
        let _ = self.tx.send(Cmd::SlotTake {
            group: group.to_string(),
            max,
        });
    }

    /// The slot taken for `group`, if it came: (slot, epoch); taken from the cell.
    pub(crate) fn answer(&self, group: &str) -> Option<(i32, i64)> {
        let mut s = self.cell.shared.lock().ok()?;
        match s.slot.take() {
            Some((g, slot, epoch)) if g == group => Some((slot, epoch)),
            Some((g, slot, epoch)) => {
                // Another group's (a reload changed the task's group): give it back.
                drop(s);
                self.free(&g, slot, epoch);
                None
            }
            None => None,
        }
    }

    pub(crate) fn cancel(&self) {
        let _ = self.tx.send(Cmd::SlotCancel);
    }

    pub(crate) fn free(&self, group: &str, slot: i32, epoch: i64) {
        let _ = self.tx.send(Cmd::SlotFree {
            group: group.to_string(),
            slot,
            epoch,
        });
    }
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
    /// The chain was told of a `stop --fleet`.
    stop_told: bool,
    /// What the fence asked so far.
    fenced: Fence,
    /// Fires (CLOCK_BOOTTIME, absolute) when the loop must look again: the fence's next step.
    fence_timer: OwnedFd,
    /// The start gate's last ticket given.
    tickets: Arc<std::sync::atomic::AtomicU64>,
}

/// The recorder's side of the DB thread (see [`Remote`]).
struct FleetRemote {
    tx: mpsc::Sender<Cmd>,
    epoch: i64,
    lease: Duration,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Remote for FleetRemote {
    fn send(&mut self, ops: Vec<Op>, gate: bool) -> Option<u64> {
        let ticket = gate.then(|| self.next.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1);
        let sent = self.tx.send(Cmd::Write {
            ops,
            epoch: self.epoch,
            gate: ticket,
        });
        if sent.is_err() {
            log::error!("fleet: the DB thread is gone: records dropped");
        }
        ticket
    }

    fn sync(&mut self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Cmd::Sync(tx)).is_ok() {
            // Bounded: after a lease the records are fenced off anyway.
            let _ = rx.recv_timeout(self.lease);
        }
    }
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
    /// `stop --fleet` (newer than this launch): stop the chain gracefully, as `stop`
    /// does; the process then releases the lease and exits 0.
    StopFleet,
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
        let fence_timer = sys::timerfd_boot().map_err(|e| Error::os("create a timerfd", e))?;
        let cell = Arc::new(Cell {
            shared: Mutex::new(Shared {
                view: View::Starting,
                lost: None,
                resume: None,
                failed_runs: None,
                gate_done: 0,
                gate_ok: 0,
                stop_fleet: false,
                slot: None,
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
            stop_told: false,
            fenced: Fence::None,
            fence_timer,
            tickets: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// A handle for the fleet slots (None once the DB thread is ended).
    pub(crate) fn slots(&self) -> Option<SlotHandle> {
        Some(SlotHandle {
            cell: Arc::clone(&self.cell),
            tx: self.tx.clone()?,
        })
    }

    /// A `stop --fleet` newer than this launch was seen (the process exits 0).
    pub(crate) fn stop_fleet_seen(&self) -> bool {
        self.cell.stop_fleet()
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// The recorder's way to the DB thread while the chain runs under the epoch it
    /// runs under now (`digest`: the config's).
    pub(crate) fn remote(&self, digest: &str) -> Option<Box<dyn Remote>> {
        let tx = self.tx.clone()?;
        let epoch = self.running?;
        let _ = tx.send(Cmd::Digest(digest.to_string()));
        Some(Box::new(FleetRemote {
            tx,
            epoch,
            lease: self.lease,
            next: Arc::clone(&self.tickets),
        }))
    }

    /// The mailer thread's way to the fleet's outbox (store/pg/outbox.rs), through the
    /// DB thread: (the loop's side that puts, the mailer's side that delivers).
    pub(crate) fn outboxes(
        &self,
    ) -> Option<(
        Box<dyn crate::store::outbox::Outbox>,
        Box<dyn crate::store::outbox::Outbox>,
    )> {
        use crate::store::pg::outbox::{Handle, Put, CLAIM_MARGIN};
        let tx = Mutex::new(self.tx.clone()?);
        let send = move |ask| {
            tx.lock()
                .map(|t| t.send(Cmd::Outbox(ask)).is_ok())
                .unwrap_or(false)
        };
        let mailer = Handle::new(
            Box::new(send),
            (self.lease * 2).max(Duration::from_secs(5)),
            crate::mail::transport::SMTP_TIMEOUT + CLAIM_MARGIN,
            "the fleet's outbox (run_chain.outbox)".to_string(),
        );
        Some((Box::new(Put::new(&self.chain)), Box::new(mailer)))
    }

    /// What the fleet's store says to resume from, read when this epoch was acquired.
    pub(crate) fn take_resume(&self) -> Option<FleetResume> {
        let epoch = self.running?;
        let mut s = self.cell.shared.lock().ok()?;
        match s.resume.take() {
            Some((e, r)) if e == epoch => Some(r),
            _ => None,
        }
    }

    /// The failed runs the alert state of this epoch's resume quotes, read from the
    /// fleet's store when the lease was acquired (by the DB thread, never the loop): a new
    /// owner's mail of a streak it did not see still shows that run's output.
    pub(crate) fn take_failed_runs(&self) -> FailedRuns {
        let Some(epoch) = self.running else {
            return FailedRuns::new();
        };
        match self
            .cell
            .shared
            .lock()
            .ok()
            .and_then(|mut s| s.failed_runs.take())
        {
            Some((e, f)) if e == epoch => f,
            _ => FailedRuns::new(),
        }
    }

    /// Read where to resume from again (the one read at the acquire was taken): None if
    /// it cannot be read now (the caller waits for the ownership again).
    pub(crate) fn read_resume(&self, timeout: Duration) -> Option<FleetResume> {
        let epoch = self.running?;
        let tx = self.tx.as_ref()?;
        let (rtx, rrx) = mpsc::channel();
        tx.send(Cmd::Resume(epoch, rtx)).ok()?;
        rrx.recv_timeout(timeout).ok().flatten()
    }

    /// The start gate, looked at by the loop (which never waits for it: the answer wakes
    /// it through the eventfd, the fence's deadline through the fence's timer): None while
    /// the batch of `ticket` is in flight; Some(Ok) once it is committed and the lease
    /// still allows a start; Some(Err(why)) if the run must not start: the batch was
    /// dropped, fenced or failed ([`GateRefusal::NotStored`]), or it committed but the lease
    /// no longer allows a start, or the lease is no longer this instance's or its fence's
    /// TERM deadline passed while the batch was in flight ([`GateRefusal::MaybeStored`]).
    pub(crate) fn gate_state(&self, ticket: u64) -> Option<std::result::Result<(), GateRefusal>> {
        let (done, ok) = match self.cell.shared.lock() {
            Ok(s) => (s.gate_done, s.gate_ok),
            Err(_) => {
                return Some(Err(GateRefusal::MaybeStored(
                    "the DB thread is gone".into(),
                )))
            }
        };
        if done >= ticket {
            return Some(if ok < ticket {
                Err(GateRefusal::NotStored(
                    "its start record was not committed (fenced, or the database failed)".into(),
                ))
            } else if self.may_start() {
                Ok(())
            } else {
                Err(GateRefusal::MaybeStored(
                    "the lease does not allow a start now".into(),
                ))
            });
        }
        // The fence's TERM deadline of the epoch the chain runs under (it moves with each
        // renew).
        match (self.running, self.cell.view()) {
            (Some(e), View::Owner(t)) if t.epoch == e => (sys::boot_now() >= t.term_at(self.lease))
                .then(|| {
                    Err(GateRefusal::MaybeStored(
                        "its start record was not committed before the fence's deadline".into(),
                    ))
                }),
            _ => Some(Err(GateRefusal::MaybeStored(
                "the lease is no longer this instance's".into(),
            ))),
        }
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
            if self.cell.stop_fleet() {
                return Ok(None);
            }
            let view = self.cell.view();
            match &view {
                View::Owner(t) if !t.failing => {
                    self.running = Some(t.epoch);
                    self.term = Some(*t);
                    self.lost_told = false;
                    self.fenced = Fence::None;
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
            let _ = sys::timerfd_at(self.fence_timer.as_raw_fd(), None);
            return Check::Held;
        };
        if !self.stop_told && self.cell.stop_fleet() {
            self.stop_told = true;
            return Check::StopFleet;
        }
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

    /// Arm the fence's timer at its next step, on CLOCK_BOOTTIME (a `ppoll` timeout counts
    /// on CLOCK_MONOTONIC, which stops while the machine is suspended); re-arming also
    /// clears it, so the loop is not woken again for a step it has seen.
    fn refresh_deadline(&mut self, _now: Mono) {
        let at = self.term.and_then(|t| match self.fenced {
            Fence::None if !self.lost_told => Some(t.term_at(self.lease)),
            Fence::None | Fence::Term => Some(t.kill_at(self.lease)),
            Fence::Kill => None,
        });
        if let Err(e) = sys::timerfd_at(self.fence_timer.as_raw_fd(), at) {
            log::warn!(
                "{}: fleet: failed to arm the fence's timer: {e}",
                self.chain
            );
        }
    }

    /// None: the fence's steps come through [`Fleet::fence_fd`], not a deadline.
    pub(crate) fn deadline(&self) -> Option<Mono> {
        None
    }

    /// The fence's timerfd, in the loop's `ppoll` set: readable, call [`Fleet::check`].
    pub(crate) fn fence_fd(&self) -> RawFd {
        self.fence_timer.as_raw_fd()
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
        let _ = sys::timerfd_at(self.fence_timer.as_raw_fd(), None);
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
    // This launch's time on the database's clock: a `stop --fleet` at or after it stops
    // this instance; one before it is an older order (design §3). Taken at the first
    // connect (if the database is unreachable at launch: at the first that succeeds).
    let mut launch: Option<std::time::SystemTime> = None;
    match connect(&setup.cfg, connect_timeout) {
        Ok(c) => {
            launch = sql::db_now(&c, stmt.max(Duration::from_secs(1))).ok();
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
            // Logged at the go, which says whether this launch waits (`once`: it does not).
            last_error = Some(m.clone());
            cell.publish(View::Standby {
                held_by: None,
                error: Some(m),
            });
        }
    }
    // The go: the local hand-over is done.
    let (mut takeover, once) = match loop {
        // The mailer's outbox is not served before the go (it asks again later).
        match rx.recv() {
            Ok(Cmd::Outbox((_, reply))) => {
                let _ = reply.send(Err("the fleet's lease is not taken yet".to_string()));
            }
            other => break other,
        }
    } {
        Ok(Cmd::Go { takeover, once }) => {
            if let Some(m) = &last_error {
                let then = if once {
                    format!("--once and --no-kill-concurrent give up unless it answers within one lease ({})", crate::config::fmt_duration(lease_len))
                } else {
                    "waiting as standby and trying again".to_string()
                };
                log::warn!("{chain}: fleet: cannot reach the database ({m}); {then}");
            }
            (takeover, once)
        }
        Ok(Cmd::Release(reply)) => {
            let _ = reply.send(false);
            return;
        }
        // No slot is asked for before the go (nothing runs before it).
        Ok(Cmd::Sync(reply)) => {
            let _ = reply.send(());
            return;
        }
        Ok(
            Cmd::Write { .. }
            | Cmd::Digest(_)
            | Cmd::SlotTake { .. }
            | Cmd::SlotCancel
            | Cmd::SlotFree { .. }
            | Cmd::Resume(..)
            | Cmd::Outbox(_),
        )
        | Err(_) => return,
    };
    let mut writes = Writes {
        w: Writer::with(
            Pg::new(
                Identity {
                    host: setup.cfg.host.clone(),
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    config_digest: String::new(),
                },
                stmt,
                setup.cfg.display_url.clone(),
            ),
            Owner::Local,
        ),
        chain: chain.to_string(),
        holder: setup.holder.clone(),
        may_connect: true,
        newest: 0,
    };
    writes.w.set_cap(BATCH_CAP);
    let mut pred_seen: Option<sql::Predecessor> = None;
    let mut took_over = false;
    let once_until = sys::boot_now() + lease_len;
    let mut lease = Lease::new(lease_len, sys::boot_now());
    let mut row_ready = false;
    let mut shown_holder: Option<(String, i64)> = None;
    let mut in_standbys = false;
    // Fleet slots: the one the loop waits for (group, max, next try, busy logged), the
    // ones to free, the groups whose rows are made.
    let mut want: Option<(String, u32, Duration, bool)> = None;
    let mut frees: Vec<(String, i32, i64)> = Vec::new();
    let mut ensured: Vec<String> = Vec::new();
    // The mailer's waker (store/pg/outbox.rs), and whether a batch with a mail was given
    // since the last wake: woken once the queue is written (or dropped).
    let mut mail_waker: Option<crate::store::outbox::Waker> = None;
    let mut mail_due = false;
    // An owner whose resume read failed at the acquire: (epoch, same host, next try).
    // Owner is published only once it is read (never a start from scratch).
    let mut resume_due: Option<(i64, bool, Duration)> = None;
    loop {
        let now = sys::boot_now();
        let at = match lease.due(now) {
            Due::Acquire(t) | Due::Renew(t) => t,
            Due::Lost => now,
        };
        let at = want.as_ref().map_or(at, |w| at.min(w.2));
        let at = resume_due.as_ref().map_or(at, |r| at.min(r.2));
        let mut wait = at.saturating_sub(now);
        if let Some(r) = writes.w.retry_at() {
            wait = wait.min(r.saturating_sub(time::mono_now()));
        }
        if writes.w.more_now() {
            wait = Duration::ZERO;
        }
        let mut write_cmd = None;
        match rx.recv_timeout(wait) {
            Ok(Cmd::Write { ops, epoch, gate }) => write_cmd = Some((ops, epoch, gate)),
            Ok(Cmd::Digest(d)) => writes.w.store_mut().set_digest(d),
            Ok(Cmd::Sync(reply)) => {
                writes.retry(&mut conn, &setup.cfg, stmt);
                let _ = reply.send(());
            }
            Ok(Cmd::Release(reply)) => {
                // What is queued goes first, under the lease it was written under.
                writes.retry(&mut conn, &setup.cfg, stmt);
                let mut released = false;
                if let Some(t) = lease.term() {
                    // Over a new connection if the last statement broke it (else the
                    // standby would wait for the whole lease); once more if it fails.
                    let release = |conn: &mut Option<Conn>| {
                        owner_conn(conn, &setup.cfg, stmt).and_then(|c| {
                            sql::release(c, &me, t.epoch, stmt).map_err(|e| e.to_string())
                        })
                    };
                    let mut result = release(&mut conn);
                    if result.is_err() {
                        drop_if_broken(&mut conn);
                        result = release(&mut conn);
                    }
                    match result {
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
            Ok(Cmd::SlotTake { group, max }) => want = Some((group, max, sys::boot_now(), false)),
            Ok(Cmd::SlotCancel) => want = None,
            Ok(Cmd::SlotFree { group, slot, epoch }) => frees.push((group, slot, epoch)),
            Ok(Cmd::Outbox((crate::store::pg::outbox::Req::Waker(w), reply))) => {
                mail_waker = Some(w);
                let _ = reply.send(Ok(crate::store::pg::outbox::Answer::Done));
            }
            Ok(Cmd::Outbox((req, reply))) => {
                // Only over the open connection: the mailer's requests never make this
                // thread wait for a connect (the lease's tries make it again).
                let answer = match conn.as_ref().filter(|c| !c.is_closed()) {
                    Some(c) => crate::store::pg::outbox::serve(c, chain, &setup.holder, &req, stmt)
                        .map_err(|e| e.to_string()),
                    None => Err("no connection to the database".to_string()),
                };
                if answer.is_err() {
                    drop_if_broken(&mut conn);
                }
                let _ = reply.send(answer);
            }
            Ok(Cmd::Resume(epoch, reply)) => {
                // What is queued goes first: the state read must include it.
                writes.retry(&mut conn, &setup.cfg, stmt);
                let r = match lease.term() {
                    Some(t) if t.epoch == epoch && !t.failing && writes.w.pending() == 0 => {
                        writes.read_resume(&mut conn, &setup.cfg, stmt, true).ok()
                    }
                    _ => None,
                };
                let _ = reply.send(r);
            }
            Ok(Cmd::Go { .. }) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                writes.retry(&mut conn, &setup.cfg, stmt);
                return;
            }
        }
        let now = sys::boot_now();
        match lease.due(now) {
            Due::Acquire(t) if t <= now => {
                let result = (|| -> std::result::Result<Option<View>, String> {
                    let c = ensure_conn(&mut conn, &setup.cfg, connect_timeout)?;
                    let launch_at = match launch {
                        Some(t) => t,
                        None => {
                            let t = sql::db_now(c, stmt).map_err(|e| e.to_string())?;
                            launch = Some(t);
                            t
                        }
                    };
                    if !row_ready {
                        sql::ensure_row(c, chain, stmt).map_err(|e| e.to_string())?;
                        row_ready = true;
                    }
                    if let Some((old, old_epoch)) = takeover.take() {
                        if let Some((epoch, expired)) = sql::takeover(c, &me, &old, old_epoch, stmt)
                            .map_err(|e| e.to_string())?
                        {
                            log::info!(
                                "{chain}: fleet: owner (epoch {epoch}, host {}): took over epoch {old_epoch} from this host's previous instance",
                                me.host
                            );
                            lease.acquired(epoch, now);
                            took_over = true;
                            // Its lease had expired: the runs it left open end then, as
                            // at an acquire.
                            pred_seen = expired.map(|ms| sql::Predecessor {
                                holder: Some(old.clone()),
                                host: Some(me.host.to_string()),
                                epoch: old_epoch,
                                expires_ms: Some(ms),
                            });
                            return Ok(None);
                        }
                        log::info!(
                            "{chain}: fleet: the previous instance's lease (epoch {old_epoch}) is no longer its own; acquiring"
                        );
                    }
                    if let Some((epoch, pred)) =
                        sql::acquire(c, &me, launch_at, stmt).map_err(|e| e.to_string())?
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
                        took_over = false;
                        pred_seen = Some(pred);
                        return Ok(None);
                    }
                    let held =
                        sql::read_for(c, chain, launch_at, stmt).map_err(|e| e.to_string())?;
                    if held.is_none() {
                        // The chain's row is gone (a database restored, or one that lost
                        // its last commits in a crash): made again at the next try.
                        row_ready = false;
                    }
                    if held.as_ref().is_some_and(|(_, stop)| *stop) {
                        // (Busy, inside this closure only: a `stop --fleet` newer
                        // than this launch; handled below.)
                        return Ok(Some(View::Busy(String::new())));
                    }
                    let held_by = held
                        .map(|(h, _)| h)
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
                            sys::set_fence(t.term_at(lease_len), t.kill_at(lease_len));
                            // Stage 2: close what the previous owner left open, read
                            // where to resume, then let the loop run.
                            let r = writes.after_acquire(
                                &mut conn,
                                &setup.cfg,
                                stmt,
                                t.epoch,
                                pred_seen.take(),
                                took_over,
                            );
                            match r {
                                Ok(r) => {
                                    let failed = read_failed_runs(&mut conn, chain, &r, stmt);
                                    cell.set_resume(t.epoch, r, failed);
                                    cell.publish(View::Owner(t));
                                }
                                Err(same_host) => {
                                    resume_due = Some((t.epoch, same_host, sys::boot_now() + stmt))
                                }
                            }
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
                    Ok(Some(View::Busy(_))) => {
                        // A `stop --fleet` newer than this launch: leave the standbys
                        // and tell the loop; the thread then waits for the release.
                        if in_standbys {
                            if let Some(c) = &conn {
                                if sql::leave_standbys(c, &me, stmt).is_ok() {
                                    in_standbys = false;
                                }
                            }
                        }
                        if !cell.stop_fleet() {
                            log::info!("{chain}: fleet: stop --fleet: stopping (standby)");
                        }
                        cell.set_stop_fleet();
                        lease.acquire_refused(now, sql::jitter());
                    }
                    Ok(Some(_)) => {}
                    Err(m) => {
                        drop_if_broken(&mut conn);
                        if last_error.as_deref() != Some(m.as_str()) {
                            log::warn!(
                                "{chain}: fleet: standby: {}",
                                crate::store::pg::conn::trouble(&m)
                            );
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
                // An owner has a launch time (it acquired with it).
                let launch_at = launch.unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                // One try, a reconnect included, within the policy's lease/10.
                let budget = lease.try_timeout(now);
                let until = now + budget;
                let result = owner_conn(&mut conn, &setup.cfg, budget).and_then(|c| {
                    let left = until.saturating_sub(sys::boot_now());
                    sql::renew(c, &me, epoch, launch_at, left).map_err(|e| e.to_string())
                });
                match result {
                    Ok(sql::Renewed::Yes { stop }) => {
                        if lease.term().is_some_and(|t| t.failing) {
                            log::info!("{chain}: fleet: renewed the lease (epoch {epoch}) again");
                        }
                        lease.renewed(now);
                        if stop && !cell.stop_fleet() {
                            log::info!(
                                "{chain}: fleet: stop --fleet: stopping (owner, epoch {epoch})"
                            );
                            cell.set_stop_fleet();
                        }
                    }
                    Ok(sql::Renewed::Lost) => {
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
                    sys::set_fence(t.term_at(lease_len), t.kill_at(lease_len));
                    if resume_due.is_none() {
                        cell.publish(View::Owner(t));
                    }
                }
            }
            Due::Lost => {
                lease.expire(now);
                want = None;
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
        // A resume read still due (after the renew): Owner once it is read.
        if let Some((epoch, same_host, at)) = resume_due {
            match lease.term() {
                Some(t) if t.epoch == epoch && sys::boot_now() >= at => {
                    if t.failing {
                        // A renew must succeed first.
                        resume_due = Some((epoch, same_host, sys::boot_now() + stmt));
                    } else {
                        match writes.read_resume(&mut conn, &setup.cfg, stmt, same_host) {
                            Ok(r) => {
                                log::info!(
                                    "{chain}: fleet: read where to resume from (epoch {epoch})"
                                );
                                resume_due = None;
                                let failed = read_failed_runs(&mut conn, chain, &r, stmt);
                                cell.set_resume(epoch, r, failed);
                                cell.publish(View::Owner(t));
                            }
                            Err(e) => {
                                log::debug!("{chain}: fleet: resume read tried again: {e}");
                                resume_due = Some((epoch, same_host, sys::boot_now() + stmt));
                            }
                        }
                    }
                }
                Some(t) if t.epoch == epoch => {}
                // Lost or released meanwhile: the next acquire reads it again.
                _ => resume_due = None,
            }
        }
        // The records, after the lease's own statement (the renew goes first).
        writes.may_connect = !lease.term().is_some_and(|t| t.failing);
        if let Some((ops, epoch, gate)) = write_cmd {
            mail_due |= ops.iter().any(|o| matches!(o, Op::Mail { .. }));
            writes.apply(&mut conn, &setup.cfg, stmt, ops, epoch, gate, cell);
        } else if writes.w.more_now() || writes.w.retry_at().is_some_and(|r| r <= time::mono_now())
        {
            writes.retry(&mut conn, &setup.cfg, stmt);
        }
        if mail_due && writes.w.pending() == 0 {
            mail_due = false;
            if let Some(wake) = &mail_waker {
                wake();
            }
        }
        slot_work(
            cell,
            &mut conn,
            &setup.cfg,
            &me,
            (lease.term(), lease.next_renew()),
            &mut want,
            &mut frees,
            &mut ensured,
        );
    }
}

/// Whether a batch written under `epoch` comes after this instance acquired `newest`, a
/// newer epoch (it can only be fenced: dropped without touching the newer queue).
fn stale_epoch(epoch: i64, newest: i64) -> bool {
    epoch < newest
}

/// At most this many records per transaction: a batch of a few statements per record,
/// each a round trip, must leave the renew its turn (a backlog after an outage goes in
/// several transactions, the renew between them).
const BATCH_CAP: usize = 64;

/// The write side on the DB thread: the queue and its back-off over the fenced [`Pg`],
/// lent the thread's connection for each batch.
struct Writes {
    w: Writer<Pg>,
    chain: String,
    holder: String,
    /// False while a renew has failed and none succeeded since: the records then do not
    /// connect (a reconnect with its schema check could use up the renew's retries before
    /// the fence); they wait in the queue, and a gated batch is refused at once.
    may_connect: bool,
    /// The newest epoch this instance acquired: a later batch of an older epoch can only
    /// be fenced, and must not take the queue over (its owner change would drop the newer
    /// epoch's queued records, e.g. the predecessor run's end at the lease expiry).
    newest: i64,
}

impl Writes {
    fn owner(&self, epoch: i64) -> Owner {
        Owner::Lease {
            chain: self.chain.clone(),
            holder: self.holder.clone(),
            epoch,
        }
    }

    /// Flush with the thread's connection (made again if there is none).
    fn with_conn(
        &mut self,
        conn: &mut Option<Conn>,
        cfg: &FleetConfig,
        stmt: Duration,
        f: impl FnOnce(&mut Writer<Pg>),
    ) {
        if self.may_connect {
            let _ = owner_conn(conn, cfg, stmt.max(Duration::from_millis(200)));
        }
        self.w.store_mut().lend(conn.take());
        f(&mut self.w);
        *conn = self.w.store_mut().take_conn();
    }

    /// Try what is queued again (at its back-off, a sync, a release, the end).
    fn retry(&mut self, conn: &mut Option<Conn>, cfg: &FleetConfig, stmt: Duration) {
        if self.w.pending() == 0 {
            return;
        }
        self.with_conn(conn, cfg, stmt, |w| w.flush(time::mono_now()));
    }

    /// One batch of the recorder as `epoch`'s owner; a gated one is tried now whatever
    /// the back-off, and forgotten if it does not commit (its run does not start).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        conn: &mut Option<Conn>,
        cfg: &FleetConfig,
        stmt: Duration,
        ops: Vec<Op>,
        epoch: i64,
        gate: Option<u64>,
        cell: &Cell,
    ) {
        let n = ops.len();
        if stale_epoch(epoch, self.newest) {
            log::warn!(
                "{}: fleet: {n} records of epoch {epoch} dropped: epoch {} holds the chain now",
                self.chain,
                self.newest
            );
            if let Some(ticket) = gate {
                cell.gate(ticket, false);
            }
            return;
        }
        let owner = self.owner(epoch);
        self.w.set_owner(owner);
        let fenced_before = self.w.fenced();
        let started = time::mono_now();
        let (statements, rounds) = (self.w.store_mut().statements, self.w.store_mut().rounds);
        self.with_conn(conn, cfg, stmt, |w| {
            let now = time::mono_now();
            w.begin_batch();
            for op in ops {
                w.push(now, op);
            }
            if gate.is_some() {
                w.flush(now);
            }
            w.end_batch(now);
        });
        log::debug!(
            "{}: fleet: batch of {n} records: {} statements in {} round trips",
            self.chain,
            self.w.store_mut().statements - statements,
            self.w.store_mut().rounds - rounds
        );
        if let Some(ticket) = gate {
            let ok = self.w.pending() == 0 && self.w.fenced() == fenced_before;
            if !ok {
                self.w.forget_last(n);
            }
            log::debug!(
                "{}: fleet: gated batch {ticket} ({n} records) {} in {} µs",
                self.chain,
                if ok { "committed" } else { "NOT committed" },
                time::mono_now().saturating_sub(started).as_micros()
            );
            cell.gate(ticket, ok);
        }
    }

    /// At an acquire of `epoch`: close the runs an expired predecessor left open (ended
    /// at its lease's expiry, the error naming it), in this owner's first batch; then read
    /// where to resume from.
    fn after_acquire(
        &mut self,
        conn: &mut Option<Conn>,
        cfg: &FleetConfig,
        stmt: Duration,
        epoch: i64,
        pred: Option<sql::Predecessor>,
        took_over: bool,
    ) -> std::result::Result<FleetResume, bool> {
        self.newest = self.newest.max(epoch);
        let owner = self.owner(epoch);
        self.w.set_owner(owner);
        let mut same_host = took_over;
        if let Some(p) = &pred {
            same_host = p.host.as_deref() == Some(cfg.host.as_str());
            if let (Some(_), Some(stop)) = (&p.holder, p.expires_ms) {
                let host = p.host.clone().unwrap_or_else(|| "?".into());
                let op = Op::Interrupted {
                    chain: self.chain.clone(),
                    stop_ms: u64::try_from(stop).unwrap_or(0),
                    error: format!(
                        "the chain's owner, host {host} (epoch {}), died or lost its lease during the run; stop is when its lease expired",
                        p.epoch
                    ),
                };
                self.with_conn(conn, cfg, stmt, |w| w.push(time::mono_now(), op));
            }
        }
        // One try here: the loop tries again after its renews (never a start from
        // scratch, position, due time and run ids lost: Owner only once it is read).
        self.read_resume(conn, cfg, stmt, same_host).map_err(|e| {
            log::warn!(
                "{}: fleet: cannot read where to resume from ({e}); starting nothing until it is read (trying again)",
                self.chain
            );
            same_host
        })
    }

    /// One try of the resume read (a reconnect included); the connection is dropped
    /// when it fails.
    fn read_resume(
        &mut self,
        conn: &mut Option<Conn>,
        cfg: &FleetConfig,
        stmt: Duration,
        same_host: bool,
    ) -> std::result::Result<FleetResume, String> {
        let _ = owner_conn(conn, cfg, stmt.max(Duration::from_millis(200)));
        let read = match conn.as_ref() {
            Some(c) => crate::store::pg::write::read_resume(c, &self.chain, stmt),
            None => Err("not connected".into()),
        };
        match read {
            Ok((state, due_in_ms, run_ids)) => Ok(FleetResume {
                state,
                due_in_ms,
                run_ids,
                same_host,
                read_at: Some(time::mono_now()),
            }),
            Err(e) => {
                *conn = None;
                Err(e)
            }
        }
    }
}

/// At an acquire, after the resume: the failed runs the resumed alert state quotes (see
/// [`Fleet::take_failed_runs`]), over the thread's connection, one try (a task whose run
/// cannot be read gets the error, and its mail says so).
fn read_failed_runs(
    conn: &mut Option<Conn>,
    chain: &str,
    r: &FleetResume,
    stmt: Duration,
) -> FailedRuns {
    let state: crate::core::resume::State = r
        .state
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let wanted: Vec<(String, Option<u64>)> = state
        .alerts
        .iter()
        .filter_map(|(task, st)| Some((task.clone(), st.quoted_run()?)))
        .collect();
    if wanted.is_empty() {
        return FailedRuns::new();
    }
    let Some(c) = conn.take() else {
        let why = "no connection to the fleet's store when the lease was acquired".to_string();
        return wanted
            .into_iter()
            .map(|(task, _)| {
                let read = crate::core::supervisor::StoredRead {
                    durations: Vec::new(),
                    failed: Err(why.clone()),
                };
                (task, read)
            })
            .collect();
    };
    let started = time::mono_now();
    let (c, read) = crate::store::fleet_failed_runs(c, chain, &wanted, stmt);
    // A read that failed may have left the connection mid-statement: the next due action
    // makes a new one.
    *conn = read.iter().all(|(_, r)| r.failed.is_ok()).then_some(c);
    log::debug!(
        "{chain}: fleet: read {} failed run(s) for the alert mails in {} µs",
        read.len(),
        time::mono_now().saturating_sub(started).as_micros()
    );
    read.into_iter().collect()
}

/// The DB thread's fleet-slot work, after the lease's (a renew comes first): free what
/// the loop gave back, then try to take the slot it waits for, if due (design notes §3).
#[allow(clippy::too_many_arguments)]
fn slot_work(
    cell: &Cell,
    conn: &mut Option<Conn>,
    cfg: &FleetConfig,
    me: &sql::Me<'_>,
    (term, renew_at): (Option<Term>, Option<Duration>),
    want: &mut Option<(String, u32, Duration, bool)>,
    frees: &mut Vec<(String, i32, i64)>,
    ensured: &mut Vec<String>,
) {
    use crate::store::pg::slots::{self, Taker};
    let chain = me.chain;
    // Within what is left until the next renew (finding 6 of the review): a slow database
    // must not hold the renew back past the fence; the work waits until after the renew.
    let Some(stmt) =
        crate::lock::lease::budget(sys::boot_now(), renew_at, cfg.lease / 5, cfg.lease / 20)
    else {
        if let (Some((_, _, next, _)), Some(at)) = (want.as_mut(), renew_at) {
            *next = (*next).max(at);
        }
        return;
    };
    let until = sys::boot_now() + stmt;
    let left = || until.saturating_sub(sys::boot_now());
    if !frees.is_empty() {
        if let Some(c) = conn.as_ref() {
            frees.retain(|(g, s, e)| {
                let who = Taker {
                    chain,
                    holder: me.holder,
                    epoch: *e,
                };
                match slots::free(c, who, g, *s, left()) {
                    Ok(()) => false,
                    Err(err) => {
                        log::warn!("{chain}: fleet: failed to free slot {s} of group {g}: {err}; trying again (it frees itself at the lease's expiry)");
                        true
                    }
                }
            });
        }
    }
    let now = sys::boot_now();
    let Some((group, max, next, logged)) = want.as_mut() else {
        return;
    };
    if *next > now {
        return;
    }
    let retry =
        now + Duration::from_millis(750) + Duration::from_millis(500).mul_f64(sql::jitter());
    let Some(t) = term.filter(|t| !t.failing) else {
        // Not the owner, or a renew failed: nothing starts; look again later.
        *next = retry;
        return;
    };
    let who = Taker {
        chain,
        holder: me.holder,
        epoch: t.epoch,
    };
    let got = owner_conn(conn, cfg, left()).and_then(|c| {
        if !ensured.contains(group) {
            slots::ensure(c, group, *max, left()).map_err(|e| e.to_string())?;
            ensured.push(group.clone());
        }
        let got = slots::take(c, who, group, *max, left()).map_err(|e| e.to_string())?;
        // First come, first served: the place in the queue is kept while waiting.
        match got {
            Some(_) if *logged => {
                slots::unwait(c, me.holder, group, left()).map_err(|e| e.to_string())?;
            }
            Some(_) => {}
            None => slots::wait(c, who, group, left()).map_err(|e| e.to_string())?,
        }
        Ok(got)
    });
    match got {
        Ok(Some(slot)) => {
            if *logged {
                log::info!("{chain}: fleet: took slot {slot} of group {group}");
            }
            cell.set_slot(group, slot, t.epoch);
            *want = None;
        }
        Ok(None) => {
            if !*logged {
                log::info!(
                    "{chain}: fleet: every slot of group {group} is busy (max_running {max}, fleet-wide); waiting"
                );
                *logged = true;
            }
            *next = retry;
        }
        Err(m) => {
            drop_if_broken(conn);
            log::warn!("{chain}: fleet: failed to take a slot of group {group}: {m}; trying again");
            *next = retry;
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
/// tries before the fence. The owner's records, slots and resume read reconnect with it
/// too: a schema check waits up to 30 s behind another launch's migration, with no renew.
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
