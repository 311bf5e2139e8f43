//! The hand-over: a launch takes the chain's lock, from a running instance if need be
//! (it signals the holder, waits for it through a pidfd and inotify, and kills it past its
//! graces), unless a newer launch is on the way; and, before running, it waits for the
//! guardian of an instance that died during a run. See [`super::pidfile`] for the protocol.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::core::resume;
use crate::error::{Error, Result};
use crate::lock::pidfile::{next, PidFile};
use crate::signals::{Sig, Signals};
use crate::sys;
use crate::time;

/// How long past the old instance's graces the new one waits before SIGKILL.
pub(crate) const TAKEOVER_MARGIN: Duration = Duration::from_secs(5);

/// The previous instance ended during a run (it was killed, or crashed: CHAIN.state still
/// names the run): wait until its guardian, which sends that run's process group SIGTERM
/// and SIGKILL after its kill grace, has exited, so that no task of the chain starts while
/// the old run is still alive. Ok(false): stopped by a signal while waiting.
pub(crate) fn wait_for_the_old_run(
    chain: &str,
    st: &resume::State,
    signals: &Signals,
) -> Result<bool> {
    let (Some(task), Some(pid), Some(start)) =
        (&st.running_task, st.guardian_pid, st.guardian_start)
    else {
        return Ok(true);
    };
    // The guardian's own boot (a --once instance keeps the chain's older `boot_id`).
    let same_boot = st.guardian_boot.is_some() && st.guardian_boot == sys::boot_id();
    if !same_boot || pid <= 1 || sys::start_time(pid) != Some(start) {
        return Ok(true);
    }
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        return Ok(true);
    };
    // Still that process (not a PID reused between the two looks)?
    if sys::start_time(pid) != Some(start) {
        return Ok(true);
    }
    log::warn!(
        "{chain}: the previous instance ended during task {task} run {}; waiting for its guardian (PID {pid}) to end what that run left",
        st.running_run_id.unwrap_or(0)
    );
    loop {
        let mut fds = [
            sys::pollfd(pidfd.as_raw_fd(), libc::POLLIN),
            sys::pollfd(signals.fd(), libc::POLLIN),
        ];
        sys::ppoll(&mut fds, None).map_err(|e| Error::os("wait in ppoll", e))?;
        if fds[0].revents != 0 {
            log::info!("{chain}: the previous run's processes have ended");
            return Ok(true);
        }
        if signals
            .drain_waiting(chain)
            .iter()
            .any(|s| matches!(s, Sig::Term | Sig::Int | Sig::Quit))
        {
            return Ok(false);
        }
    }
}

/// Take the chain's lock, taking over from a running instance unless `no_takeover`.
/// Ok(None): stopped by SIGTERM/SIGINT while waiting.
pub(crate) fn acquire(
    root: &Path,
    chain: &str,
    no_takeover: bool,
    limit: Duration,
    signals: &Signals,
) -> Result<Option<PidFile>> {
    let mut pf = PidFile::open(root, chain)?;
    if no_takeover {
        if !pf.try_lock()? {
            let who = pf
                .holder()
                .map_or_else(|| "another process".to_string(), |p| format!("PID {p}"));
            return Err(Error::Busy(format!(
                "chain {chain} is already running ({who} holds {}); not taking over",
                pf.path().display()
            )));
        }
        if let Some(n) = next::newer_than_me(root, chain) {
            pf.unlock();
            return Err(Error::Busy(format!(
                "chain {chain} is being taken over by a newer launch (PID {n}); not starting"
            )));
        }
        pf.write_pid()?;
        return Ok(Some(pf));
    }

    next::claim(root, chain)?;
    let inotify = nix::sys::inotify::Inotify::init(
        nix::sys::inotify::InitFlags::IN_CLOEXEC | nix::sys::inotify::InitFlags::IN_NONBLOCK,
    )
    .map_err(|e| Error::os("create an inotify instance", std::io::Error::from(e)))?;
    use nix::sys::inotify::AddWatchFlags as W;
    inotify
        .add_watch(
            root,
            W::IN_CLOSE_WRITE | W::IN_CLOSE_NOWRITE | W::IN_MOVED_TO | W::IN_MODIFY,
        )
        .map_err(|e| Error::os(format!("watch {}", root.display()), std::io::Error::from(e)))?;

    let pid_name = std::ffi::OsString::from(format!("{chain}.pid"));
    let next_name = std::ffi::OsString::from(format!("{chain}.next"));

    struct Asked {
        pid: i32,
        pidfd: std::os::fd::OwnedFd,
        kill_at: Duration,
        killed: bool,
    }
    let mut asked: Option<Asked> = None;
    let mut warned = false;
    loop {
        if let Some(n) = next::newer_than_me(root, chain) {
            return Err(Error::Busy(format!(
                "superseded by a newer launch of chain {chain} (PID {n}); giving up"
            )));
        }
        if pf.try_lock()? {
            if let Some(n) = next::newer_than_me(root, chain) {
                pf.unlock();
                return Err(Error::Busy(format!(
                    "superseded by a newer launch of chain {chain} (PID {n}); giving up"
                )));
            }
            pf.write_pid()?;
            return Ok(Some(pf));
        }
        let now = time::mono_now();
        if asked.is_none() {
            if let Some((pid, pidfd)) = pf.holder_pidfd() {
                // Every launch records itself in CHAIN.next before it takes the lock, so a
                // holder that is newer than us is visible there by now: a newer launch may
                // have locked between our check above and this look-up. Never signal it.
                if let Some(n) = next::newer_than_me(root, chain) {
                    return Err(Error::Busy(format!(
                        "superseded by a newer launch of chain {chain} (PID {n}); giving up"
                    )));
                }
                log::info!(
                    "{chain}: running as PID {pid}; asking it to hand over (SIGTERM) and waiting"
                );
                if let Err(e) = sys::pidfd_signal(&pidfd, libc::SIGTERM) {
                    log::warn!("{chain}: failed to signal PID {pid}: {e}");
                }
                asked = Some(Asked {
                    pid,
                    pidfd,
                    kill_at: now + limit,
                    killed: false,
                });
            } else if !warned {
                log::warn!(
                    "{chain}: {} is locked by a process that cannot be confirmed as its holder (PID in the file: {}); waiting for the lock",
                    pf.path().display(),
                    pf.text_pid().map_or("none".into(), |p| p.to_string())
                );
                warned = true;
            }
        }
        let mut fds = vec![
            sys::pollfd(signals.fd(), libc::POLLIN),
            sys::pollfd(inotify.as_fd_raw(), libc::POLLIN),
        ];
        if let Some(a) = &asked {
            fds.push(sys::pollfd(a.pidfd.as_raw_fd(), libc::POLLIN));
        }
        let deadline = match &asked {
            Some(a) if !a.killed => Some(a.kill_at),
            Some(_) => None,
            // An unconfirmed holder may be one that has just locked and not yet written
            // its PID (the write wakes us), or a stranger: look again now and then.
            None => Some(now + Duration::from_secs(1)),
        };
        // Wait for a signal, the old instance's exit, the deadline, or a change to this
        // chain's pidfile or CHAIN.next. Other files of RUN_ROOT (other chains' state) and
        // our own reads of CHAIN.next (a close without writing) are no reason to look again:
        // woken by those, the wait went on spinning for the whole hand-over.
        loop {
            for f in &mut fds {
                f.revents = 0;
            }
            let timeout = deadline.map(|d| d.saturating_sub(time::mono_now()));
            sys::ppoll(&mut fds, timeout).map_err(|e| Error::os("wait in ppoll", e))?;
            let mut relevant = false;
            while let Ok(events) = inotify.read_events() {
                if events.is_empty() {
                    break;
                }
                relevant |= events
                    .iter()
                    .any(|ev| watched_change(ev, &pid_name, &next_name));
            }
            let woke = fds[0].revents != 0 || fds.get(2).is_some_and(|f| f.revents != 0);
            if woke || relevant || deadline.is_some_and(|d| time::mono_now() >= d) {
                break;
            }
        }
        for sig in signals.drain_waiting(chain) {
            if matches!(sig, Sig::Term | Sig::Int | Sig::Quit) {
                return Ok(None);
            }
        }
        let now = time::mono_now();
        if let Some(a) = &mut asked {
            if fds.len() > 2 && fds[2].revents != 0 {
                // The old instance has exited; try the lock again (and confirm any new holder).
                asked = None;
            } else if !a.killed && now >= a.kill_at {
                log::warn!(
                    "{chain}: PID {} did not hand over within {}; killing it",
                    a.pid,
                    crate::time::fmt_dur(limit)
                );
                let _ = sys::pidfd_signal(&a.pidfd, libc::SIGKILL);
                a.killed = true;
            }
        }
    }
}

/// Whether an inotify event on RUN_ROOT may mean the chain's lock changed hands: the
/// pidfile closed (a holder's last descriptor: its lock is gone) or written (a new holder's
/// PID), or CHAIN.next replaced or written (a newer launch).
fn watched_change(
    ev: &nix::sys::inotify::InotifyEvent,
    pid_name: &std::ffi::OsStr,
    next_name: &std::ffi::OsStr,
) -> bool {
    use nix::sys::inotify::AddWatchFlags as W;
    let Some(name) = ev.name.as_deref() else {
        // The queue overflowed (or an event on the folder itself): look again.
        return true;
    };
    if name == pid_name {
        ev.mask
            .intersects(W::IN_CLOSE_WRITE | W::IN_CLOSE_NOWRITE | W::IN_MODIFY | W::IN_MOVED_TO)
    } else if name == next_name {
        ev.mask
            .intersects(W::IN_CLOSE_WRITE | W::IN_MODIFY | W::IN_MOVED_TO)
    } else {
        false
    }
}

trait RawInotify {
    fn as_fd_raw(&self) -> i32;
}

impl RawInotify for nix::sys::inotify::Inotify {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}
