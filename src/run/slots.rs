//! Concurrency-group slots: at most `max_running` runs of a group at once, across
//! every chain that shares RUN_ROOT.
//!
//! A group G with N slots is N files `RUN_ROOT/groups/G.0` .. `G.{N-1}`; a run holds
//! one by a `flock(2)` on its (close-on-exec) descriptor from before it starts until
//! its group is empty. Kernel locks mean a crashed holder frees its slot at once. A
//! chain that finds every slot busy waits, asleep, for `IN_CLOSE` on the folder
//! through inotify (a holder that finishes or dies closes its descriptor) and tries
//! again: no polling timer, no helper thread.
//!
//! A group with `scope = "fleet"` (issue 20) counts across every host of the fleet
//! instead: its slots are rows in the fleet's database (`store/pg/slots.rs`), taken by the
//! chain's DB thread in a statement fenced by the chain's lease, asked for through
//! [`SlotHandle`] and answered through the lease's eventfd (already in the loop's
//! `ppoll`). None free: the DB thread tries again every ~1 s (jittered) and the chain
//! waits as for a host slot (`status` shows the wait). A slot is freed at the run's end,
//! and a dead owner's frees itself when its lease expires.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::lock::fleet::SlotHandle;

/// A held slot: its file's `flock(2)` lock (std's `File::try_lock`). Dropping it closes
/// the descriptor, which frees the slot and wakes the waiters (`IN_CLOSE`).
#[derive(Debug)]
pub(crate) struct Slot {
    _file: File,
    pub(crate) group: String,
}

/// The folder of the slot files.
pub(crate) fn dir(run_root: &Path) -> PathBuf {
    run_root.join("groups")
}

/// The slot files of one group, held open while a chain waits for one of them.
///
/// Waiters keep their descriptors open (a try is just a `flock`, which makes no
/// inotify event), and a holder closes its descriptor when it is done: so a wake-up
/// means a slot was freed (or another waiter went away), never that someone merely
/// looked, and waiters cannot wake each other in a loop.
pub(crate) struct Slots {
    group: String,
    files: Vec<File>,
}

impl Slots {
    pub(crate) fn open(run_root: &Path, group: &str, max: u32) -> std::io::Result<Slots> {
        let d = dir(run_root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)?;
        let files = (0..max)
            .map(|i| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(d.join(format!("{group}.{i}")))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Slots {
            group: group.to_string(),
            files,
        })
    }

    /// Take a free slot without waiting. Ok(None): all are busy (keep `self` to retry).
    pub(crate) fn try_take(&mut self) -> std::io::Result<Option<Slot>> {
        for i in 0..self.files.len() {
            match self.files[i].try_lock() {
                Ok(()) => {
                    // The locked file leaves the list; the others keep their order.
                    return Ok(Some(Slot {
                        _file: self.files.remove(i),
                        group: self.group.clone(),
                    }));
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// Wakes the driver when a slot file is closed somewhere.
pub(crate) struct Watch {
    inotify: Inotify,
}

impl Watch {
    /// Watch the slot folder of `run_root`. Set it up *before* trying the slots, so
    /// that a slot freed in between still wakes us.
    pub(crate) fn new(run_root: &Path) -> std::io::Result<Watch> {
        let d = dir(run_root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(std::io::Error::from)?;
        inotify
            .add_watch(
                &d,
                AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CLOSE_NOWRITE,
            )
            .map_err(std::io::Error::from)?;
        Ok(Watch { inotify })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }

    /// Empty the event queue (what closed does not matter: we just try again).
    pub(crate) fn drain(&self) {
        while let Ok(ev) = self.inotify.read_events() {
            if ev.is_empty() {
                break;
            }
        }
    }
}

/// A chain's group slot: the one held by its run in progress (or about to start), or
/// the wait for one. The driver's one view of the slots.
#[derive(Default)]
pub(crate) struct Gate {
    held: Option<Slot>,
    /// While waiting: the group's slot files and the watch on them, and since when (ms).
    waiting: Option<(Slots, Watch, u64)>,
    /// The fleet's slots (with `[store]`): requests to the DB thread.
    fleet: Option<SlotHandle>,
    /// A fleet slot held: (group, slot, epoch).
    fleet_held: Option<(String, i32, i64)>,
    /// Waiting for a fleet slot: (group, since when, wall ms).
    fleet_waiting: Option<(String, u64)>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release();
        if let (Some(h), Some(_)) = (&self.fleet, self.fleet_waiting.take()) {
            h.cancel();
        }
    }
}

impl Gate {
    /// A gate that can also take fleet slots (`scope = "fleet"`) through `fleet`.
    pub(crate) fn new(fleet: Option<SlotHandle>) -> Gate {
        Gate {
            held: None,
            waiting: None,
            fleet,
            fleet_held: None,
            fleet_waiting: None,
        }
    }

    /// [`Gate::take`] for a group of either scope (`fleet`: `scope = "fleet"`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take_scoped(
        &mut self,
        chain: &str,
        task: &str,
        run_root: &Path,
        group: &str,
        max: u32,
        fleet: bool,
        now_ms: u64,
    ) -> bool {
        if !fleet {
            return self.take(chain, task, run_root, group, max, now_ms);
        }
        if self.fleet_held.as_ref().is_some_and(|(g, ..)| g == group) {
            return true;
        }
        // Another group's slot (host or fleet) goes.
        self.held = None;
        if let (Some(h), Some((g, slot, epoch))) = (&self.fleet, self.fleet_held.take()) {
            h.free(&g, slot, epoch);
        }
        let Some(h) = &self.fleet else {
            // `scope = "fleet"` is refused without [store]: not reached.
            log::error!("{chain}: group {group} is fleet-wide, but there is no fleet store; running {task} without a slot");
            return true;
        };
        if let Some((slot, epoch)) = h.answer(group) {
            self.fleet_held = Some((group.to_string(), slot, epoch));
            self.fleet_waiting = None;
            return true;
        }
        if self.fleet_waiting.as_ref().map(|(g, _)| g.as_str()) != Some(group) {
            h.request(group, max);
            self.fleet_waiting = Some((group.to_string(), now_ms));
        }
        false
    }

    /// The lease's eventfd woke the loop: true if the fleet slot waited for has come
    /// (the chain tries its start again, and [`Gate::take_scoped`] finds it held).
    pub(crate) fn fleet_ready(&mut self) -> bool {
        let (Some(h), Some((g, _))) = (&self.fleet, &self.fleet_waiting) else {
            return false;
        };
        match h.answer(g) {
            Some((slot, epoch)) => {
                self.fleet_held = Some((g.clone(), slot, epoch));
                self.fleet_waiting = None;
                true
            }
            None => false,
        }
    }

    /// Before `chain`'s `task` of `group` (at most `max` running) starts: take a slot of
    /// the group, unless one is held already, or start waiting for one (false; at
    /// `now_ms`, wall). A slot that cannot be set up or taken is logged, and the task runs
    /// without one (true).
    pub(crate) fn take(
        &mut self,
        chain: &str,
        task: &str,
        run_root: &Path,
        group: &str,
        max: u32,
        now_ms: u64,
    ) -> bool {
        if self.held.as_ref().is_some_and(|s| s.group == group) {
            return true;
        }
        self.held = None;
        // Watch first, then try: a slot freed in between still wakes us.
        let setup = Watch::new(run_root).and_then(|w| Ok((Slots::open(run_root, group, max)?, w)));
        let (mut slots, watch) = match setup {
            Ok(x) => x,
            Err(e) => {
                log::error!(
                    "{chain}: failed to use the slots of group {group} in {}: {e}; running without a slot",
                    dir(run_root).display()
                );
                return true;
            }
        };
        match slots.try_take() {
            Ok(Some(slot)) => {
                self.held = Some(slot);
                true
            }
            Ok(None) => {
                log::info!("{chain}: {task} waits for a slot of group {group} (max_running {max})");
                self.waiting = Some((slots, watch, now_ms));
                false
            }
            Err(e) => {
                log::error!(
                    "{chain}: failed to take a slot of group {group}: {e}; running without it"
                );
                true
            }
        }
    }

    /// While waiting: the watch's descriptor, readable when a slot file was closed.
    pub(crate) fn watch_fd(&self) -> Option<RawFd> {
        self.waiting.as_ref().map(|(_, w, _)| w.fd())
    }

    /// The watch is readable: try again. True when the wait is over: a slot is held, or
    /// (logged) the task runs without one.
    pub(crate) fn try_again(&mut self, chain: &str) -> bool {
        let Some((slots, watch, _)) = self.waiting.as_mut() else {
            return false;
        };
        watch.drain();
        match slots.try_take() {
            Ok(None) => return false,
            Ok(Some(slot)) => self.held = Some(slot),
            Err(e) => {
                log::error!("{chain}: failed to take a group slot: {e}; running without it");
            }
        }
        self.waiting = None;
        true
    }

    /// The run's group is empty: its slot goes (the next task takes its own).
    pub(crate) fn release(&mut self) {
        self.held = None;
        if let (Some(h), Some((g, slot, epoch))) = (&self.fleet, self.fleet_held.take()) {
            h.free(&g, slot, epoch);
        }
    }

    /// The group whose slot is held.
    pub(crate) fn held_group(&self) -> Option<&str> {
        self.held
            .as_ref()
            .map(|s| s.group.as_str())
            .or(self.fleet_held.as_ref().map(|(g, ..)| g.as_str()))
    }

    /// Since when (wall ms) the chain waits for a slot, if it does.
    pub(crate) fn waiting_since_ms(&self) -> Option<u64> {
        self.waiting
            .as_ref()
            .map(|(_, _, since)| *since)
            .or(self.fleet_waiting.as_ref().map(|(_, since)| *since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino(f: &File) -> u64 {
        f.metadata().expect("stat").ino()
    }

    /// Busy slots are skipped and keep their place: the free ones are taken in order.
    #[test]
    fn busy_slots_are_skipped_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slots = Slots::open(dir.path(), "g", 3).expect("open");
        let other = File::open(super::dir(dir.path()).join("g.0")).expect("open g.0");
        other.try_lock().expect("lock g.0");
        let _busy = other;
        let want = |i: u32| {
            std::fs::metadata(super::dir(dir.path()).join(format!("g.{i}")))
                .expect("stat")
                .ino()
        };
        let a = slots.try_take().expect("take").expect("a free slot");
        assert_eq!(ino(&a._file), want(1));
        let b = slots.try_take().expect("take").expect("a free slot");
        assert_eq!(ino(&b._file), want(2));
        assert!(slots.try_take().expect("take").is_none());
        // The busy one is still tried (and still busy).
        drop((a, b));
        assert!(slots.try_take().expect("take").is_none());
    }

    /// Every busy slot is tried once and put back: the last free one is found.
    #[test]
    fn the_last_free_slot_is_found_behind_busy_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut slots = Slots::open(dir.path(), "g", 3).expect("open");
        let lock = |i: u32| {
            let f = File::open(super::dir(dir.path()).join(format!("g.{i}"))).expect("open");
            f.try_lock().expect("lock");
            f
        };
        let _busy = (lock(0), lock(1));
        let s = slots.try_take().expect("take").expect("g.2 is free");
        let want = std::fs::metadata(super::dir(dir.path()).join("g.2")).expect("stat");
        assert_eq!(ino(&s._file), want.ino());
        assert!(slots.try_take().expect("take").is_none());
    }

    /// A task waits while every slot of its group is busy, and goes when one is freed;
    /// the slot it took is kept for the next task of the group and goes on release.
    #[test]
    fn the_gate_waits_for_a_busy_group_and_goes_when_a_slot_is_freed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut gate = Gate::default();
        assert!(gate.take("c", "a", dir.path(), "g", 1, 5));
        assert_eq!((gate.held_group(), gate.watch_fd()), (Some("g"), None));
        // Kept for the next task of the group, without a new try.
        assert!(gate.take("c", "b", dir.path(), "g", 1, 6));
        // Another chain's gate waits for it.
        let mut other = Gate::default();
        assert!(!other.take("d", "x", dir.path(), "g", 1, 7));
        assert_eq!(
            (other.held_group(), other.waiting_since_ms()),
            (None, Some(7))
        );
        let fd = other.watch_fd().expect("a watch");
        assert!(!other.try_again("d"), "still busy");
        gate.release();
        assert_eq!(gate.held_group(), None);
        let mut fds = [crate::sys::pollfd(fd, libc::POLLIN)];
        let ready = crate::sys::ppoll(&mut fds, Some(std::time::Duration::from_secs(10)));
        assert_eq!(ready.expect("ppoll"), 1, "the release wakes the waiter");
        assert!(other.try_again("d"));
        assert_eq!(
            (other.held_group(), other.waiting_since_ms()),
            (Some("g"), None)
        );
        assert_eq!(other.watch_fd(), None);
    }
}
