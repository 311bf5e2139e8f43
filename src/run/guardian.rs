//! The guardian: a small process, forked before anything else, that ends the running
//! task's process group if run-chain dies without doing it (SIGKILL, a crash, OOM), and
//! records how and when that run ended.
//!
//! `PR_SET_PDEATHSIG` reaches only a task's direct child (often `sh`), not the rest
//! of its group, and fires on a *thread's* death. Instead the guardian holds the read
//! end of a pipe whose only write end is run-chain's (close-on-exec, so no task holds
//! it), and shares one page of memory with run-chain, in which run-chain keeps the
//! process group of the run in progress, its kill grace (0: none) and the run's identity
//! (task, run id, scheduled and start time). Keeping it there costs no system call and
//! wakes nobody, however short the runs: a handful of stores into the page per run.
//! When the pipe reads end-of-file, run-chain is gone: the guardian sends SIGTERM to the
//! group named in the page, if any, waits until nothing of the group runs any more or its
//! kill grace has passed, sends SIGKILL in the second case, and exits. It is forked while
//! run-chain is still single-threaded and before the pidfile or any other descriptor is
//! opened, so it holds nothing (a guardian that held the lock would keep a dead chain
//! locked). It ignores the signals a terminal or a `kill` of the process group sends, so
//! it only ever acts on run-chain's death.
//!
//! **The record of the run.** The dead instance cannot record the run it left open, and
//! the next launch, which could, may come much later and does not know when the run
//! ended. The guardian knows: it is the one that ended it. So once the group is gone it
//! opens the record store itself (it is the same binary; run-chain hands it the store's
//! path, the chain's name and its instance at the fork, after the config was read) and
//! closes the run as `interrupted`, with `stop` = the moment it saw that nothing of the
//! group ran any more (it looks every 10 ms: the real end, not when the signals were
//! sent, so a task that takes its time over SIGTERM is recorded with the time it took),
//! and an `error` saying what happened and which signals it took. The series is counted
//! as the next launch counts an interrupted run (`count_interrupted`). If the group is
//! still there 5 s after SIGKILL (a process stuck in the kernel), the stop is the moment
//! SIGKILL was sent, and the error says so. A run whose start run-chain had not written
//! yet (it was killed in the run's first milliseconds, or the store was failing) is
//! written whole. The store may be busy (another chain's transaction) or locked by the
//! dead instance's connection for a moment: the write is retried for up to
//! [`RECORD_FOR`], then given up (logged on stderr); the guardian never waits longer.
//! The next launch waits for the guardian to exit before it closes what is still open
//! (see `store::Op::CloseOpen`), so it keeps the guardian's record and closes only what
//! the guardian could not (the guardian killed too, a power cut, a store that stayed
//! locked), with its own time and an error saying the end is not known.
//!
//! **The fleet's fence** (issue 20). An owner of a fleet lease must have ended its
//! running task by `t0 + 0.8 × lease` (`t0`: the start of its last renew that succeeded),
//! even when run-chain cannot do it: frozen (SIGSTOP, a stalled disk) or stuck. So after
//! each renew that succeeded the DB thread stores the fence's two deadlines in the page
//! (`sys::set_fence`, where the page is registered at the fork, so that `lock` need not
//! import `run`: `t0 + 0.6 × lease` for SIGTERM, `t0 + 0.8 × lease` for SIGKILL, on
//! CLOCK_BOOTTIME, which counts through a suspend as the database's clock does; 0: not a
//! fleet owner). The guardian waits in `ppoll` on its pipe and on its own timerfd
//! (CLOCK_BOOTTIME, absolute), armed at the TERM deadline plus a twentieth of the lease
//! (a quarter of the TERM-KILL span: the loop, when it is alive, sends the TERM itself at
//! the deadline, and the task should not get two), and at the KILL deadline exactly.
//! When it fires it reads the page again: a renew since then moved the deadlines (it
//! arms the new one: about one wake every two renews, no system call on run-chain's side);
//! still past with a group running: SIGTERM (and SIGCONT) to the group, then SIGKILL at
//! the KILL deadline, whether run-chain is alive or not. Only a deadline stored after
//! the guardian may have passed the old one (the first acquire, a renew after failed
//! ones) costs run-chain a system call: a byte on the pipe wakes the guardian (the pipe
//! was never written before; end-of-file still means death). At run-chain's death, a
//! fleet owner's task gets its kill grace only up to the KILL deadline. And the spawn
//! child reads the TERM deadline just before `execve` and does not exec past it
//! (`spawn`): a run-chain frozen between its start gate and the clone cannot start a
//! task late. Limits: a freeze of the whole machine (a VM paused) freezes the guardian
//! too, and the task may run for a few ms after the resume before the overdue timer is
//! served; and the margin between KILL and expiry (0.2 × lease) is the budget for the
//! difference between this host's clock rate and the database's.
//!
//! The run's identity in the page is written before the run's group exists (the page's
//! group is reset to 0 first, and the child writes it only after run-chain's fork), with
//! a sequence number that is odd while it is being written, so that the guardian never
//! records a run from a torn identity (run-chain killed in the middle of writing it).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::store;
use crate::sys;
use crate::time;

/// The longest task name the page holds (names are at most 100 bytes, `check_name`).
const TASK_MAX: usize = 128;
/// How long the guardian tries to write its record while the store is busy.
pub(crate) const RECORD_FOR: Duration = Duration::from_secs(10);
/// How often the guardian looks whether the group still runs.
const LOOK_EVERY: Duration = Duration::from_millis(10);
/// How long the guardian waits for the group after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// The page shared with the guardian.
#[derive(Debug)]
#[repr(C)]
struct Shared {
    /// The process group of the run in progress; 0 when none.
    pgid: AtomicI32,
    /// Its kill grace, in ms (written before `pgid`).
    grace_ms: AtomicU64,
    /// Odd while the run's identity below is being written.
    seq: AtomicU64,
    run_id: AtomicU64,
    scheduled_ms: AtomicU64,
    start_ms: AtomicU64,
    /// The task's name: its length (0: none, or too long to keep), then its bytes.
    task_len: AtomicU32,
    task: [AtomicU8; TASK_MAX],
    /// The fleet's fence, CLOCK_BOOTTIME ns: SIGTERM to the group past this (0: not a
    /// fleet owner). Written after `fence_kill_ns`.
    fence_term_ns: AtomicU64,
    /// SIGKILL past this.
    fence_kill_ns: AtomicU64,
}

/// What the guardian's fence did to which group, under which TERM deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fenced {
    pg: i32,
    term_ns: u64,
    /// The last signal sent (0: none).
    sig: i32,
}

/// What the guardian's fence does now: a signal to send to the group, and when to look
/// again (CLOCK_BOOTTIME ns; None: only when woken). Pure: given the page and `now`.
fn fence_step(
    now: u64,
    term: u64,
    kill: u64,
    pg: i32,
    done: &mut Fenced,
) -> (Option<i32>, Option<u64>) {
    if term == 0 {
        return (None, None);
    }
    // The loop, when alive, sends the TERM at `term`: the guardian comes a little after.
    let act = term.saturating_add(kill.saturating_sub(term) / 4);
    if now < act {
        return (None, Some(act));
    }
    if pg <= 1 {
        // Nothing runs, and nothing starts past `term` (the spawn gate): sleep until a
        // renew wakes us.
        return (None, None);
    }
    if done.pg != pg || done.term_ns != term {
        *done = Fenced {
            pg,
            term_ns: term,
            sig: 0,
        };
    }
    if now < kill {
        let send = (done.sig == 0).then_some(libc::SIGTERM);
        if send.is_some() {
            done.sig = libc::SIGTERM;
        }
        (send, Some(kill))
    } else {
        let send = (done.sig != libc::SIGKILL).then_some(libc::SIGKILL);
        done.sig = libc::SIGKILL;
        (send, None)
    }
}

/// The kill grace at run-chain's death: a fleet owner's task gets it only up to the
/// fence's KILL deadline (`kill_ns`, 0: not a fleet owner).
fn grace_at_death(grace_ms: u64, kill_ns: u64, now_ns: u64) -> u64 {
    if kill_ns == 0 {
        grace_ms
    } else {
        grace_ms.min(kill_ns.saturating_sub(now_ns) / 1_000_000)
    }
}

/// Which run is in progress, as run-chain writes it into the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunIdentity<'a> {
    pub(crate) task: &'a str,
    pub(crate) run_id: u64,
    pub(crate) scheduled_ms: u64,
    pub(crate) start_ms: u64,
}

/// The run read back from the page by the guardian.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenRun {
    task: String,
    run_id: u64,
    scheduled_ms: u64,
    start_ms: u64,
}

impl Shared {
    fn write_identity(&self, run: &RunIdentity<'_>) {
        // One writer (run-chain's driver thread): a plain load and stores, no RMW.
        let seq = self.seq.load(Ordering::Relaxed);
        let odd = seq | 1;
        self.seq.store(odd, Ordering::Relaxed);
        // The odd number is seen before any field below.
        fence(Ordering::Release);
        self.run_id.store(run.run_id, Ordering::Relaxed);
        self.scheduled_ms.store(run.scheduled_ms, Ordering::Relaxed);
        self.start_ms.store(run.start_ms, Ordering::Relaxed);
        let name = run.task.as_bytes();
        if name.len() <= TASK_MAX {
            for (slot, b) in self.task.iter().zip(name) {
                slot.store(*b, Ordering::Relaxed);
            }
            self.task_len.store(name.len() as u32, Ordering::Relaxed);
        } else {
            self.task_len.store(0, Ordering::Relaxed);
        }
        self.seq.store(odd + 1, Ordering::Release);
    }

    /// The run's identity, if whole (None: none written, or torn by run-chain's death).
    fn read_identity(&self) -> Option<OpenRun> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq == 0 || seq % 2 == 1 {
            return None;
        }
        let len = self.task_len.load(Ordering::Relaxed) as usize;
        if len == 0 || len > TASK_MAX {
            return None;
        }
        let bytes: Vec<u8> = self.task[..len]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let task = String::from_utf8(bytes).ok()?;
        let run = OpenRun {
            task,
            run_id: self.run_id.load(Ordering::Relaxed),
            scheduled_ms: self.scheduled_ms.load(Ordering::Relaxed),
            start_ms: self.start_ms.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(run)
    }
}

/// Where the guardian records a run it ended: the chain's store and name, and the
/// instance that forked it (for a run whose start that instance had not written yet).
#[derive(Debug, Clone)]
pub(crate) struct Recording {
    /// The store's path, absolute (the guardian works from `/`).
    pub(crate) store: PathBuf,
    pub(crate) chain: String,
    pub(crate) instance: store::Instance,
}

/// run-chain's side of the guardian.
#[derive(Debug)]
pub(crate) struct Guardian {
    pid: i32,
    /// The write end of the pipe: never written, its closing (our death) is the message.
    _tx: File,
    shared: &'static Shared,
}

/// Map one page shared with the processes forked after it (never unmapped).
fn map_shared() -> Result<&'static Shared> {
    const _: () = assert!(std::mem::size_of::<Shared>() <= 4096);
    // SAFETY: a new anonymous mapping; it is zero-filled, and all-zero bytes are a valid
    // `Shared` (atomics only). It is never unmapped, so the reference stays valid.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(Error::last_os("map the guardian's shared page"));
        }
        Ok(&*(p as *const Shared))
    }
}

impl Guardian {
    /// Fork the guardian. Must be called while the process has one thread. With
    /// `recording`, it records in the store a run it had to end (see the module's text).
    pub(crate) fn spawn(recording: Option<Recording>) -> Result<Guardian> {
        let shared = map_shared()?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::last_os("create the guardian's pipe"));
        }
        // SAFETY: both descriptors are new and ours.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the process is single-threaded here (called at the start of main),
        // so the child may run ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last_os("fork the guardian"));
        }
        if pid == 0 {
            drop(tx);
            guardian_main(rx, shared, recording);
        }
        drop(rx);
        // Where the DB thread writes the deadlines and the spawn child reads them.
        sys::fence_register(&shared.fence_term_ns, &shared.fence_kill_ns, tx.as_raw_fd());
        Ok(Guardian {
            pid,
            _tx: File::from(tx),
            shared,
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// A run is about to start, with this kill grace: where its first process writes its
    /// PID (= its group) itself, before it execs (see `spawn`), so that the guardian knows
    /// the group even if run-chain dies at the very moment the task starts. The run's
    /// identity is written first, for the guardian's record.
    pub(crate) fn prepare(
        &mut self,
        kill_grace: Duration,
        run: &RunIdentity<'_>,
    ) -> &'static AtomicI32 {
        // No group until the child writes its own (the last run's is gone by now).
        self.shared.pgid.store(0, Ordering::Relaxed);
        self.shared.write_identity(run);
        let ms = u64::try_from(kill_grace.as_millis()).unwrap_or(u64::MAX);
        self.shared.grace_ms.store(ms, Ordering::Relaxed);
        &self.shared.pgid
    }

    /// A run started: its group is `pgid`.
    pub(crate) fn watch(&mut self, pgid: i32, kill_grace: Duration) {
        let ms = u64::try_from(kill_grace.as_millis()).unwrap_or(u64::MAX);
        self.shared.grace_ms.store(ms, Ordering::Relaxed);
        self.shared.pgid.store(pgid, Ordering::Release);
    }

    /// A run's group is gone.
    pub(crate) fn unwatch(&mut self, pgid: i32) {
        let _ = self
            .shared
            .pgid
            .compare_exchange(pgid, 0, Ordering::Release, Ordering::Relaxed);
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // The pipe closes with `_tx`: nobody may write its number any more.
        sys::fence_unregister_wake();
    }
}

/// How the guardian saw the run's group end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Nothing of the group ran any more when the guardian first looked.
    AlreadyGone,
    /// It ended after SIGTERM, within the kill grace.
    Term,
    /// It ended after SIGKILL, sent when the kill grace (ms) had passed.
    Kill { grace_ms: u64 },
    /// Processes of it were still there [`AFTER_KILL`] after SIGKILL.
    Lingering { grace_ms: u64 },
}

/// The `error` recorded for a run the guardian ended.
pub(crate) fn error_text(how: Ended) -> String {
    let died = "run-chain was killed (or crashed) during the run";
    let grace = |ms: u64| crate::time::fmt_dur(Duration::from_millis(ms));
    match how {
        Ended::AlreadyGone => {
            format!("{died}; its guardian found the run's process group already ended")
        }
        Ended::Term => format!("{died}; its guardian ended the process group with SIGTERM"),
        Ended::Kill { grace_ms } => format!(
            "{died}; its guardian ended the process group with SIGTERM, then SIGKILL after the kill grace of {}",
            grace(grace_ms)
        ),
        Ended::Lingering { grace_ms } => format!(
            "{died}; its guardian sent the process group SIGTERM, then SIGKILL after the kill grace of {}, but processes of it were still there {} later (stop is when SIGKILL was sent)",
            grace(grace_ms),
            grace(AFTER_KILL.as_millis() as u64)
        ),
    }
}

/// Whether a process of group `pg` still runs code. `kill(-pg, 0)` first (one system
/// call); when it finds someone, every `deep`-th look also reads /proc, so that a group
/// left with zombies only (whose reaper is slow) counts as ended.
fn group_runs(pg: i32, deep: bool) -> bool {
    // SAFETY: kill with signal 0 only checks that the group still has a process.
    if unsafe { libc::kill(-pg, 0) } != 0 {
        return false;
    }
    if !deep {
        return true;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid pgrp ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().take(3).collect();
        if f.len() == 3 && f[2].parse::<i32>().ok() == Some(pg) && !matches!(f[0], "Z" | "X") {
            return true;
        }
    }
    false
}

/// Wait (looking every LOOK_EVERY) until nothing of `pg` runs or `until`; true if gone.
fn wait_gone(pg: i32, until: Instant) -> bool {
    let mut looks = 0u32;
    loop {
        looks = looks.wrapping_add(1);
        if !group_runs(pg, looks.is_multiple_of(10)) {
            return true;
        }
        if Instant::now() >= until {
            return !group_runs(pg, true);
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// End group `pg` (TERM, the grace, KILL): how, and when it ended (Unix ms).
fn end_group(pg: i32, grace_ms: u64) -> (Ended, u64) {
    // One system call before the SIGTERM (a group of zombies only gets it, harmlessly,
    // and reads as ended at the first look after).
    if !group_runs(pg, false) {
        return (Ended::AlreadyGone, time::wall_ms());
    }
    eprintln!("run-chain-guard: run-chain died; stopping process group {pg}");
    sys::kill(-pg, libc::SIGTERM);
    sys::kill(-pg, libc::SIGCONT);
    // Up to the kill grace, but no longer than the group lives: the next instance of
    // the chain waits for this process before it starts a task. (A short poll, only
    // here, after run-chain's death.)
    let until = Instant::now() + Duration::from_millis(grace_ms.min(600_000));
    if wait_gone(pg, until) {
        return (Ended::Term, time::wall_ms());
    }
    sys::kill(-pg, libc::SIGKILL);
    let killed_at = time::wall_ms();
    if wait_gone(pg, Instant::now() + AFTER_KILL) {
        (Ended::Kill { grace_ms }, time::wall_ms())
    } else {
        (Ended::Lingering { grace_ms }, killed_at)
    }
}

fn guardian_main(rx: OwnedFd, shared: &'static Shared, recording: Option<Recording>) -> ! {
    // SAFETY: plain libc calls in the single-threaded child.
    unsafe {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let name = b"run-chain-guard\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        // Keep no mount busy, and hold none of run-chain's output streams open.
        libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    // Hold nothing run-chain inherited either (a pipe kept open would keep a reader waiting).
    sys::close_from(3, rx.as_raw_fd());
    wait_for_death(&rx, shared);
    // run-chain is gone: end what it left running, and record it.
    let pg = shared.pgid.load(Ordering::Acquire);
    if pg > 1 {
        let run = shared.read_identity();
        let grace = grace_at_death(
            shared.grace_ms.load(Ordering::Relaxed),
            shared.fence_kill_ns.load(Ordering::Acquire),
            sys::boot_ns(),
        );
        let (how, stop_ms) = end_group(pg, grace);
        if let (Some(rec), Some(run)) = (recording, run) {
            record(&rec, &run, how, stop_ms);
        }
    }
    // SAFETY: leave without running any of the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Wait for end-of-file on the pipe (or an error), which is run-chain's end; meanwhile
/// keep the fleet's fence (see the module's text). A byte on the pipe only wakes us.
fn wait_for_death(rx: &OwnedFd, shared: &Shared) {
    let rx = rx.as_raw_fd();
    let timer = sys::timerfd_boot().ok();
    let tfd = timer.as_ref().map_or(-1, |t| t.as_raw_fd());
    let mut done = Fenced::default();
    let mut armed: Option<u64> = None;
    let mut chunk = [0u8; 64];
    loop {
        if tfd >= 0 {
            let term = shared.fence_term_ns.load(Ordering::Acquire);
            let kill = shared.fence_kill_ns.load(Ordering::Relaxed);
            let pg = shared.pgid.load(Ordering::Acquire);
            let (send, at) = fence_step(sys::boot_ns(), term, kill, pg, &mut done);
            if let Some(sig) = send {
                let what = if sig == libc::SIGKILL {
                    "SIGKILL (0.8 × lease)"
                } else {
                    "SIGTERM (0.6 × lease)"
                };
                eprintln!(
                    "run-chain-guard: no renew of the fleet lease in time (run-chain frozen or stuck): {what} to process group {pg}"
                );
                sys::kill(-pg, sig);
                sys::kill(-pg, libc::SIGCONT);
            }
            if at != armed && sys::timerfd_at(tfd, at.map(Duration::from_nanos)).is_ok() {
                armed = at;
            }
        }
        let mut fds = [
            sys::pollfd(rx, libc::POLLIN),
            sys::pollfd(tfd, libc::POLLIN),
        ];
        if sys::ppoll(&mut fds, None).is_err() {
            // Cannot wait on both: wait for the pipe alone.
            while let Ok(n) = sys::read(rx, &mut chunk) {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 8];
            let _ = sys::read(tfd, &mut b);
            // One-shot: it is disarmed now.
            armed = None;
        }
        if fds[0].revents != 0 {
            match sys::read(rx, &mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// Close the run in the store as `interrupted`, with the guardian's time and reason.
fn record(rec: &Recording, run: &OpenRun, how: Ended, stop_ms: u64) {
    let error = error_text(how);
    let killed = store::Killed {
        chain: rec.chain.clone(),
        task: run.task.clone(),
        run_id: run.run_id,
        scheduled_ms: run.scheduled_ms,
        start_ms: run.start_ms,
        stop_ms,
        error: error.clone(),
    };
    let what = format!("{} run {} of chain {}", run.task, run.run_id, rec.chain);
    match store::close_killed(&rec.store, &rec.instance, &killed, Instant::now() + RECORD_FOR) {
        Ok(true) => eprintln!("run-chain-guard: recorded {what} as interrupted: {error}"),
        Ok(false) => {}
        Err(e) => eprintln!(
            "run-chain-guard: failed to record the end of {what} in {}: {e} (the chain's next launch records it)",
            rec.store.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn page() -> &'static Shared {
        map_shared().expect("map")
    }

    #[test]
    fn the_run_identity_is_read_back_whole_or_not_at_all() {
        let s = page();
        assert_eq!(s.read_identity(), None, "nothing written yet");
        let run = RunIdentity {
            task: "send_mail",
            run_id: 42,
            scheduled_ms: 1_000,
            start_ms: 1_005,
        };
        s.write_identity(&run);
        let back = s.read_identity().expect("whole");
        assert_eq!(
            (
                back.task.as_str(),
                back.run_id,
                back.scheduled_ms,
                back.start_ms
            ),
            ("send_mail", 42, 1_000, 1_005)
        );
        // A shorter name over a longer one.
        s.write_identity(&RunIdentity {
            task: "b",
            run_id: 43,
            scheduled_ms: 2_000,
            start_ms: 2_001,
        });
        assert_eq!(s.read_identity().expect("whole").task, "b");
        // Killed in the middle of a write: the sequence number is odd.
        s.seq
            .store(s.seq.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
        assert_eq!(s.read_identity(), None, "torn");
        // A name too long for the page is not kept (the next launch records that run).
        s.write_identity(&RunIdentity {
            task: &"x".repeat(TASK_MAX + 1),
            run_id: 44,
            scheduled_ms: 3_000,
            start_ms: 3_000,
        });
        assert_eq!(s.read_identity(), None, "too long");
        s.write_identity(&run);
        assert_eq!(s.read_identity().map(|r| r.run_id), Some(42));
    }

    #[test]
    fn the_recorded_error_says_what_the_guardian_did() {
        assert_eq!(
            error_text(Ended::Term),
            "run-chain was killed (or crashed) during the run; its guardian ended the process group with SIGTERM"
        );
        assert!(error_text(Ended::Kill { grace_ms: 5_000 })
            .ends_with("with SIGTERM, then SIGKILL after the kill grace of 5.0s"));
        assert!(error_text(Ended::AlreadyGone).contains("already ended"));
        let l = error_text(Ended::Lingering { grace_ms: 300 });
        assert!(
            l.contains("300ms") && l.contains("stop is when SIGKILL was sent"),
            "{l}"
        );
    }

    #[test]
    fn the_guardian_fence_terms_after_the_loop_then_kills_at_the_deadline() {
        let s = 1_000_000_000u64; // 1 s in ns; lease 2 s, t0 = 10 s
        let (term, kill) = (10 * s + 1_200_000_000, 10 * s + 1_600_000_000);
        let act = term + 100_000_000; // a twentieth of the lease after TERM
        let mut done = Fenced::default();
        // Not a fleet owner: nothing, ever.
        assert_eq!(fence_step(u64::MAX, 0, 0, 42, &mut done), (None, None));
        // Before: sleep until the TERM deadline (plus the loop's head start).
        assert_eq!(
            fence_step(11 * s, term, kill, 42, &mut done),
            (None, Some(act))
        );
        assert_eq!(
            fence_step(act - 1, term, kill, 42, &mut done),
            (None, Some(act))
        );
        // Past it, nothing runs: nothing to do, sleep until woken.
        assert_eq!(fence_step(act, term, kill, 0, &mut done), (None, None));
        // A group runs: TERM once, then look again at KILL.
        assert_eq!(
            fence_step(act, term, kill, 42, &mut done),
            (Some(libc::SIGTERM), Some(kill))
        );
        assert_eq!(
            fence_step(act + 5, term, kill, 42, &mut done),
            (None, Some(kill))
        );
        // KILL at the deadline, once.
        assert_eq!(
            fence_step(kill, term, kill, 42, &mut done),
            (Some(libc::SIGKILL), None)
        );
        assert_eq!(
            fence_step(kill + 5, term, kill, 42, &mut done),
            (None, None)
        );
        // A renew moved the deadlines: the new ones count, for the next group too.
        let (t2, k2) = (term + s, kill + s);
        assert_eq!(
            fence_step(kill + 5, t2, k2, 43, &mut done),
            (None, Some(t2 + 100_000_000))
        );
        assert_eq!(
            fence_step(k2, t2, k2, 43, &mut done),
            (Some(libc::SIGKILL), None)
        );
    }

    #[test]
    fn at_death_a_fleet_owners_task_gets_its_grace_only_up_to_the_kill_deadline() {
        let ms = 1_000_000u64;
        // Not a fleet owner: the kill grace as configured.
        assert_eq!(grace_at_death(30_000, 0, 5_000 * ms), 30_000);
        // 1.2 s left until KILL: 1.2 s, not 30.
        assert_eq!(grace_at_death(30_000, 6_200 * ms, 5_000 * ms), 1_200);
        // A shorter grace stays.
        assert_eq!(grace_at_death(300, 6_200 * ms, 5_000 * ms), 300);
        // Past the deadline: none.
        assert_eq!(grace_at_death(30_000, 4_000 * ms, 5_000 * ms), 0);
    }

    /// A group whose processes are all zombies (not reaped yet) has ended.
    #[test]
    fn a_group_of_zombies_only_does_not_run() {
        let mut child = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .expect("spawn true");
        let pg = child.id() as i32;
        // Not reaped: a zombie until wait().
        let deadline = Instant::now() + Duration::from_secs(30);
        while group_runs(pg, true) {
            assert!(Instant::now() < deadline, "true never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: kill with signal 0 only checks.
        assert_eq!(
            unsafe { libc::kill(-pg, 0) },
            0,
            "the zombie is still there"
        );
        assert!(!group_runs(pg, true));
        let _ = child.wait();
        assert!(!group_runs(pg, false));
    }
}
