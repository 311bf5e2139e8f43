//! The chain's lock: `RUN_ROOT/CHAIN.pid`, and the takeover protocol around it.
//!
//! The instance that runs a chain holds a `flock(2)` on `CHAIN.pid` for its whole life,
//! on a close-on-exec descriptor. The lock, not the file's text, says who runs: a file
//! left by a crash is simply locked again. The file is opened with `O_NOFOLLOW`, never
//! truncated on open and never removed (removing it would let two instances lock two
//! different files). A new file is made complete under a temporary name and linked into
//! place, so no reader ever sees it empty; the PID is then written at offset 0 and the
//! file cut to its length.
//!
//! To learn who holds the lock without taking it, `PidFile::holder` reads
//! `/proc/locks` (F_GETLK cannot see flock locks) and requires the holder's PID to match
//! the file's text: only a process the kernel confirms as the holder is ever signalled,
//! and it is signalled through a pidfd, so a PID reused in between cannot be hit.
//!
//! Overlapping launches: every launch that may take over first records itself in
//! `CHAIN.next` (PID and start time, replaced atomically). A launch that finds a newer
//! live one recorded there gives up (exit 75), before or right after taking the lock;
//! so the newest launch wins and at most one instance ever holds the lock.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// An open (maybe locked) pidfile.
#[derive(Debug)]
pub struct PidFile {
    /// The pidfile's descriptor. Its `flock(2)` lock (std's `File::try_lock`), once taken,
    /// lasts until [`PidFile::unlock`] or until the descriptor is closed, with the
    /// `PidFile`, when the process ends: nothing can fail or panic on the way out.
    file: File,
    locked: bool,
    path: PathBuf,
}

/// The path of a chain's pidfile.
pub(crate) fn path(run_root: &Path, chain: &str) -> PathBuf {
    run_root.join(format!("{chain}.pid"))
}

fn open_nofollow(path: &Path, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn symlink_error(path: &Path) -> Error {
    Error::Config(format!(
        "{}: is a symbolic link; refusing to follow it (remove it; run-chain creates the pidfile itself)",
        path.display()
    ))
}

impl PidFile {
    /// Open the pidfile for `chain`, creating it if needed (never following a symlink).
    pub fn open(run_root: &Path, chain: &str) -> Result<PidFile> {
        let path = path(run_root, chain);
        let file = match open_nofollow(&path, true) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(symlink_error(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::create(&path)?;
                match open_nofollow(&path, true) {
                    Ok(f) => f,
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                        return Err(symlink_error(&path))
                    }
                    Err(e) => return Err(Error::os(format!("open {}", path.display()), e)),
                }
            }
            Err(e) => return Err(Error::os(format!("open {}", path.display()), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::os(format!("stat {}", path.display()), e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Config(format!(
                "{}: expected a regular file (the chain's pidfile)",
                path.display()
            )));
        }
        // One made by an older version under a strict umask: 0644, as a new one is. (A file
        // of another user's cannot be changed; RUN_ROOT's own check has refused that case.)
        if meta.mode() & 0o7777 != 0o644 {
            if let Err(e) =
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            {
                log::warn!("{}: cannot make it mode 0644: {e}", path.display());
            }
        }
        Ok(PidFile {
            file,
            locked: false,
            path,
        })
    }

    /// Open an existing pidfile read-only (for `stop`, `kick`): None if there is none.
    pub(crate) fn open_existing(run_root: &Path, chain: &str) -> Result<Option<PidFile>> {
        let path = path(run_root, chain);
        match open_nofollow(&path, false) {
            Ok(file) => Ok(Some(PidFile {
                file,
                locked: false,
                path,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(symlink_error(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::os(format!("open {}", path.display()), e)),
        }
    }

    /// Make the file complete under a temporary name, then link it into place: a reader
    /// never sees an empty pidfile. Losing the race to another launch is fine.
    fn create(path: &Path) -> Result<()> {
        let tmp = path.with_extension(format!("pid.tmp-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    let _ = std::fs::remove_file(&tmp);
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(&tmp)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::os(format!("create {}", tmp.display()), e))?;
        // 0644 whatever the umask: the PID is for other users (and their tools) to read.
        let res = f
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .and_then(|()| match std::fs::hard_link(&tmp, path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            });
        let _ = std::fs::remove_file(&tmp);
        res.map_err(|e| Error::os(format!("create {}", path.display()), e))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self) -> &File {
        &self.file
    }

    /// Try to take the lock without waiting. Ok(false): another process holds it.
    /// Any other failure (ENOLCK, a file system without locks) is an error: run-chain
    /// never runs unlocked.
    pub fn try_lock(&mut self) -> Result<bool> {
        if self.locked {
            // Held already (flock(2) would say yes again).
            return Ok(true);
        }
        let e = match self.file.try_lock() {
            Ok(()) => {
                self.locked = true;
                return Ok(true);
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => e,
        };
        Err(Error::Config(format!(
            "failed to lock {}: {e} (run-chain refuses to run a chain without its lock; put RUN_ROOT on a local file system that supports flock)",
            self.path.display()
        )))
    }

    /// Release the lock (before exiting 75 after a late supersede).
    pub(crate) fn unlock(&mut self) {
        // If LOCK_UN failed, the kernel still holds the lock, and so do we.
        if self.locked && self.file.unlock().is_ok() {
            self.locked = false;
        }
    }

    /// Write our PID at offset 0, then cut the file to its length (the lock is held).
    pub fn write_pid(&mut self) -> Result<()> {
        let text = format!("{}\n", std::process::id());
        let file = self.file();
        // pwrite(2) at offset 0, then ftruncate(2).
        file.write_at(text.as_bytes(), 0)
            .and_then(|n| {
                if n == text.len() {
                    Ok(())
                } else {
                    Err(std::io::ErrorKind::WriteZero.into())
                }
            })
            .and_then(|()| file.set_len(text.len() as u64))
            .map_err(|e| Error::os(format!("write {}", self.path.display()), e))
    }

    /// The PID written in the file, if it reads as one.
    pub(crate) fn text_pid(&self) -> Option<i32> {
        let mut buf = [0u8; 32];
        // pread(2) at offset 0.
        let n = self.file().read_at(&mut buf, 0).ok()?;
        if n == 0 {
            return None;
        }
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)
    }

    /// The process that holds the lock, as the kernel confirms it, and only if the file
    /// names the same PID. None: nobody holds it, or the holder cannot be confirmed.
    pub(crate) fn holder(&self) -> Option<i32> {
        self.holder_in(&mut Locks::default())
    }

    /// [`PidFile::holder`], with /proc/locks read at most once for many chains.
    ///
    /// Candidates are the PID in the file and, only if that one is not confirmed, the
    /// holders /proc/locks lists; each is confirmed in its own `/proc/PID/fdinfo` (the
    /// kernel's per-process view, small and read at one instant, unlike /proc/locks,
    /// which other processes' locking can tear). So an edited pidfile neither hides the
    /// real holder nor gets a bystander signalled. /proc/locks is the fallback because
    /// the first read of it in a process can take 5 to 15 ms.
    pub(crate) fn holder_in(&self, locks: &mut Locks) -> Option<i32> {
        let meta = self.file().metadata().ok()?;
        let (dev, ino) = (meta.dev(), meta.ino());
        let text = self.text_pid();
        if let Some(p) = text {
            if holds_lock(p, dev, ino) {
                return Some(p);
            }
        }
        lock_holders(locks.text(), dev, ino)
            .into_iter()
            .filter(|p| Some(*p) != text)
            .find(|p| holds_lock(*p, dev, ino))
    }

    /// The holder, with a pidfd that names it for good. The holder is looked up again
    /// after the pidfd is opened, so a PID reused in between is never signalled.
    pub(crate) fn holder_pidfd(&self) -> Option<(i32, OwnedFd)> {
        let pid = self.holder()?;
        let fd = sys::pidfd_open(pid).ok()?;
        (self.holder() == Some(pid)).then_some((pid, fd))
    }
}

/// The text of /proc/locks, read when first needed and then kept.
#[derive(Debug, Default)]
pub(crate) struct Locks(Option<String>);

impl Locks {
    pub(crate) fn text(&mut self) -> &str {
        self.0
            .get_or_insert_with(|| sys::read_proc_once("/proc/locks").unwrap_or_default())
    }
}

/// Does process `pid` hold a flock WRITE lock on the file (dev, ino)? From the `lock:`
/// lines of its `/proc/PID/fdinfo/*`.
pub(crate) fn holds_lock(pid: i32, dev: u64, ino: u64) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("lock:") {
                // The same form as /proc/locks; its PID field is the lock's first owner,
                // which need not be `pid` (a lock passed on by fork): what counts is that
                // `pid` has it open.
                let fake = format!("{} 0", rest.trim());
                let fields: Vec<&str> = fake.split_whitespace().collect();
                if fields.len() >= 6 && fields[1] == "FLOCK" && fields[3] == "WRITE" {
                    let probe = format!("1: FLOCK ADVISORY WRITE 1 {} 0 EOF", fields[5]);
                    if lock_holders(&probe, dev, ino) == vec![1] {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// PIDs holding a flock WRITE lock on the file (dev, ino), from /proc/locks text.
pub(crate) fn lock_holders(locks: &str, dev: u64, ino: u64) -> Vec<i32> {
    let major = libc::major(dev);
    let minor = libc::minor(dev);
    let mut out = Vec::new();
    for line in locks.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF"; waiters have "->" after "1:".
        if f.len() < 6 || f[1] != "FLOCK" || f[3] != "WRITE" {
            continue;
        }
        let Ok(pid) = f[4].parse::<i32>() else {
            continue;
        };
        let mut parts = f[5].split(':');
        let (Some(ma), Some(mi), Some(ino_s)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let same_dev = u32::from_str_radix(ma, 16).ok() == Some(major)
            && u32::from_str_radix(mi, 16).ok() == Some(minor);
        if ino_s.parse::<u64>().ok() == Some(ino) && same_dev {
            out.push(pid);
        }
    }
    out
}

/// The `CHAIN.next` record: the newest launch that may take over.
pub(crate) mod next {
    use super::*;

    pub(crate) fn path(run_root: &Path, chain: &str) -> PathBuf {
        run_root.join(format!("{chain}.next"))
    }

    /// Record this process as the newest launch (atomic replace).
    pub(crate) fn claim(run_root: &Path, chain: &str) -> Result<()> {
        let me = std::process::id() as i32;
        let st = sys::start_time(me).unwrap_or(0);
        let p = path(run_root, chain);
        let tmp = p.with_extension(format!("next.tmp-{me}"));
        let res = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{me} {st}\n").as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &p));
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map_err(|e| Error::os(format!("write {}", p.display()), e))
    }

    /// The launch recorded as newest, if it is alive and is not `holder`: one waiting for
    /// the holder to hand over. With a pidfd that names it for good (its start time is
    /// checked again once the pidfd is open, so a reused PID is never signalled).
    pub(crate) fn waiting_launch(
        run_root: &Path,
        chain: &str,
        holder: i32,
    ) -> Option<(i32, OwnedFd)> {
        let text = std::fs::read_to_string(path(run_root, chain)).ok()?;
        let mut it = text.split_whitespace();
        let pid: i32 = it.next()?.parse().ok()?;
        let st: u64 = it.next()?.parse().ok()?;
        if pid <= 1 || pid == holder || pid == std::process::id() as i32 {
            return None;
        }
        if matches!(sys::state_and_pgid(pid), Some(('Z' | 'X', _)) | None) {
            return None;
        }
        if sys::start_time(pid) != Some(st) {
            return None;
        }
        let fd = sys::pidfd_open(pid).ok()?;
        (sys::start_time(pid) == Some(st)).then_some((pid, fd))
    }

    /// A launch other than us, recorded as newest and still alive (same PID and start
    /// time), if there is one.
    pub(crate) fn newer_than_me(run_root: &Path, chain: &str) -> Option<i32> {
        let me = std::process::id() as i32;
        let text = std::fs::read_to_string(path(run_root, chain)).ok()?;
        let mut it = text.split_whitespace();
        let pid: i32 = it.next()?.parse().ok()?;
        let st: u64 = it.next()?.parse().ok()?;
        if pid == me || pid <= 0 {
            return None;
        }
        // A launch that has exited (a zombie its parent has not reaped yet: an instance
        // just stopped) is no newer launch.
        if matches!(sys::state_and_pgid(pid), Some(('Z' | 'X', _)) | None) {
            return None;
        }
        (sys::start_time(pid) == Some(st)).then_some(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let dev = libc::makedev(0xfd, 0x01);
        let text = "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 999 fd:01:1111 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 77 fd:01:5678 0 EOF\n\
                    4: -> FLOCK  ADVISORY  WRITE 55 fd:01:5678 0 EOF\n\
                    5: FLOCK  ADVISORY  WRITE 66 08:01:5678 0 EOF\n";
        assert_eq!(lock_holders(text, dev, 5678), vec![1234]);
    }

    #[test]
    fn lock_and_holder_in_one_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = PidFile::open(dir.path(), "c").expect("open");
        assert!(a.try_lock().expect("lock"));
        a.write_pid().expect("write");
        let b = PidFile::open_existing(dir.path(), "c")
            .expect("open")
            .expect("exists");
        assert_eq!(b.text_pid(), Some(std::process::id() as i32));
        assert_eq!(b.holder(), Some(std::process::id() as i32));
        let mut c = PidFile::open(dir.path(), "c").expect("open");
        assert!(!c.try_lock().expect("try"));
    }

    #[test]
    fn refuses_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("c.pid")).expect("symlink");
        let e = PidFile::open(dir.path(), "c").expect_err("symlink");
        assert_eq!(e.exit_code(), 78);
        assert!(e.to_string().contains("symbolic link"));
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    }
}
