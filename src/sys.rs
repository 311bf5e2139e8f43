//! Thin, safe wrappers around the Linux calls that std and nix do not cover the way
//! run-chain needs them (nix's safe calls are used where they fit; each raw call left
//! says why there is none): the monotonic clock as a plain number, `ppoll` with a
//! nanosecond timeout, pidfds, `/proc` look-ups (a process's start time, our own
//! children), and `waitid` with `WNOWAIT`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use crate::core::outcome::Exit;

/// The kernel's boot id (changes at every boot).
pub(crate) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// A process's start time (clock ticks since boot, field 22 of /proc/PID/stat): with
/// the PID, it names one process for good, even after its PID is reused.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid)?.start_time
}

/// A process's state letter and process group (fields 3 and 5 of /proc/PID/stat).
pub(crate) fn state_and_pgid(pid: i32) -> Option<(char, i32)> {
    let st = proc_stat(pid)?;
    Some((st.state, st.pgid?))
}

/// The fields of /proc/PID/stat that run-chain reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3.
    pub(crate) state: char,
    /// Field 4.
    pub(crate) ppid: Option<i32>,
    /// Field 5.
    pub(crate) pgid: Option<i32>,
    /// Field 22, in clock ticks since boot.
    pub(crate) start_time: Option<u64>,
}

/// /proc/PID/stat of `pid`, read once (None: no such process, or not readable).
///
/// One open and, almost always, one read: `fs::read_to_string` would stat the file and,
/// told its size is 0 (as for every /proc file), read it in growing pieces of 32, 32,
/// 64, 128 and 256 bytes, six reads for the ~300 bytes of the line. `status` reads the
/// stat of every running chain's guardian, so over 200 chains that was 2,400 system
/// calls instead of 400.
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    use std::io::Read;
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    // The line is at most about 1,100 bytes (a 64-byte name and 52 numbers).
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() {
        let n = match f.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        len += n;
        // The kernel writes the whole line, newline last, in one read: that saves a
        // second read, which would only find the end.
        if n == 0 || buf[..len].ends_with(b"\n") {
            break;
        }
    }
    parse_proc_stat(std::str::from_utf8(&buf[..len]).ok()?)
}

/// The fields of a /proc/PID/stat line ("pid (comm) S ppid pgrp ..."; comm may hold
/// spaces and parentheses, so the fields are counted from its last ')').
fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next().and_then(|p| p.parse().ok());
    let pgid = it.next().and_then(|p| p.parse().ok());
    // Fields after the comm start at field 3 (state); start time is field 22, and
    // fields 3 to 5 were taken above.
    let start_time = it.nth(22 - 6).and_then(|p| p.parse().ok());
    Some(ProcStat {
        state,
        ppid,
        pgid,
        start_time,
    })
}

/// Our own children: the main thread's /proc/self/task/PID/children.
pub(crate) fn children() -> Vec<i32> {
    // Every process of a run is a child of the main thread: it spawns the runs, and the
    // kernel gives orphans to a subreaper's first live thread, which is the main thread
    // (it never exits before the process does). Other threads' children (the mailer's
    // sendmail) are not runs. So the main thread's list is read, through a descriptor
    // kept open (one pread per look, on the path between two runs).
    static MAIN: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let main = MAIN.get_or_init(|| {
        std::fs::File::open(format!("/proc/self/task/{}/children", std::process::id())).ok()
    });
    if let Some(f) = main {
        if let Some(list) = read_list(f) {
            return list;
        }
    }
    children_scan()
}

/// Read a `children` file from its start: the PIDs it lists, sorted.
fn read_list(f: &std::fs::File) -> Option<Vec<i32>> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let mut text = Vec::new();
    loop {
        let n = f.read_at(&mut buf, text.len() as u64).ok()?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        // The kernel fills a read of this file up to a page at a time: a read that came
        // back well short of the buffer got everything (this saves a second read, which
        // would find the end, on the path between two runs).
        if n + 64 < buf.len() {
            break;
        }
    }
    let mut out: Vec<i32> = text
        .split(|b| b.is_ascii_whitespace())
        .filter_map(|p| std::str::from_utf8(p).ok()?.parse::<i32>().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Every thread's children (or, without /proc/PID/task/TID/children, every process
/// whose parent is us).
fn children_scan() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    let mut readable = false;
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            readable = true;
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    if !readable {
        // A kernel without CONFIG_PROC_CHILDREN: scan every process's parent.
        let me = std::process::id() as i32;
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if parent_of(pid) == Some(me) {
                    out.push(pid);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A process's parent (field 4 of /proc/PID/stat).
pub(crate) fn parent_of(pid: i32) -> Option<i32> {
    proc_stat(pid)?.ppid
}

/// `pidfd_open(2)`: a descriptor that names this process for good (close-on-exec).
pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments. nix 0.29 has no pidfd_open (and
    // std's pidfd is only for children it spawns, on nightly).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`: signal exactly the process the pidfd names.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we borrow; a null siginfo is allowed.
    // nix 0.29 has no pidfd_send_signal.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Has our child `pid` exited? Looks without reaping it (`WNOWAIT`), so that its PID,
/// and the process group it leads, stay ours until we reap it with [`reap`].
pub(crate) fn exited_nowait(pid: i32) -> Option<Exit> {
    // nix's `waitid` cannot serve: its `WaitStatus` holds a `Signal`, which has no
    // real-time signals, so a task killed by SIGRTMIN+n would be an error, not an exit.
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to our siginfo; P_PID with our own child's pid.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: reading the union fields that waitid set for a CLD_* code.
    unsafe {
        if r != 0 || info.si_pid() == 0 {
            return None;
        }
        match info.si_code {
            libc::CLD_EXITED => Some(Exit::Code(info.si_status())),
            libc::CLD_KILLED | libc::CLD_DUMPED => Some(Exit::Signal(info.si_status())),
            _ => None,
        }
    }
}

/// Reap our child `pid` if it has exited. True if it was reaped (or is not ours).
pub(crate) fn reap(pid: i32) -> bool {
    let mut status = 0;
    // nix's `waitpid` reaps a process killed by a real-time signal and then returns
    // EINVAL (its `WaitStatus` cannot name the signal): see `exited_nowait`.
    // SAFETY: waitpid on a specific pid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r == pid || (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
}

/// `kill(2)`; ESRCH (nobody there) is not an error. `pid` may be negative (a process
/// group). Callers pass SIGTERM, SIGCONT or SIGKILL; a number nix does not name (none
/// is passed) would not be sent.
pub(crate) fn kill(pid: i32, sig: i32) {
    if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// One entry for [`ppoll`].
pub(crate) fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `ppoll(2)` with a nanosecond timeout (None: wait for ever). EINTR is a normal
/// return (a signal handler ran; its byte is in the self-pipe).
pub(crate) fn ppoll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> std::io::Result<usize> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // nix's `ppoll` takes `PollFd`s, which borrow their descriptors; the callers (the
    // driver among them) hold raw descriptors in `libc::pollfd`s and read `revents`
    // there, so the call stays here, as it is.
    // SAFETY: fds is a valid slice of pollfd; tsp is null or points to a live timespec.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            tsp,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// `read(2)` into `buf`: Ok(0) at end of file, Err(WouldBlock) when nothing is there.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `write(2)` of `buf` (may write less).
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    loop {
        // nix 0.29's `write` takes a borrowed descriptor (`AsFd`), and borrowing a raw
        // number is itself an unchecked promise (`BorrowedFd::borrow_raw`); the caller,
        // a run's output sink, holds run-chain's own stdout or stderr by number.
        // SAFETY: buf is valid for buf.len() bytes.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Make sure descriptors 0, 1 and 2 are open (on /dev/null if not), so that nothing
/// run-chain opens later can land on them and receive a task's output.
pub fn ensure_std_fds() {
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    for fd in 0..3 {
        if fcntl(fd, FcntlArg::F_GETFD).is_err() {
            if let Ok(n) = open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
                if n != fd {
                    let _ = nix::unistd::dup2(n, fd);
                    let _ = nix::unistd::close(n);
                }
            }
        }
    }
}

/// Mark every descriptor from 3 up close-on-exec, so that tasks inherit none of the
/// descriptors run-chain itself inherited (a wrapper's lock, a socket).
pub(crate) fn cloexec_from_3() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags, and takes plain
    // integers; neither nix 0.29 nor std has a wrapper for it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Older kernels: one by one.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .filter(|fd| *fd >= 3)
            .collect();
        for fd in fds {
            // A descriptor closed in between just fails.
            if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
                let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
                let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
            }
        }
    }
}

/// Close every descriptor from `from` up, except `keep` (in the guardian).
pub(crate) fn close_from(from: i32, keep: i32) {
    // SAFETY: close_range(2) with plain integer arguments (neither nix 0.29 nor std
    // wraps it). It closes descriptors that Rust objects may own: it runs only in the
    // guardian, after its fork, which never returns to the code that owns them (it ends
    // with `_exit`) and opens its own files only after this.
    unsafe {
        if keep > from {
            libc::syscall(libc::SYS_close_range, from as u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(
            libc::SYS_close_range,
            (keep.max(from - 1) + 1) as u32,
            u32::MAX,
            0u32,
        );
    }
}

/// This host's name.
pub fn hostname() -> String {
    // A copy of the exact length: nix's buffer has room for 256 bytes, and the name is
    // kept for the process's life.
    match nix::unistd::gethostname() {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => "localhost".to_string(),
    }
}

/// Read a /proc file whole. A table that changes while it is read (seq_file hands it
/// out a page per `read`) may come as pieces of two instants, so read it until two
/// readings agree (a few tries at most).
pub(crate) fn read_proc_once(path: &str) -> Option<String> {
    let mut last = std::fs::read_to_string(path).ok()?;
    for _ in 0..4 {
        let again = std::fs::read_to_string(path).ok()?;
        if again == last {
            return Some(again);
        }
        last = again;
    }
    Some(last)
}

/// The link count of an open file, asked for alone (see `state_file::Writer::save`).
pub(crate) fn link_count(fd: RawFd) -> Option<u32> {
    // nix 0.29 has no statx, and std's metadata asks for every field (the times too).
    // SAFETY: statx is plain data, valid zeroed.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on a descriptor with an empty (NUL-terminated) path, into our struct.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_NLINK,
            &mut st,
        )
    };
    (r == 0 && st.stx_mask & libc::STATX_NLINK != 0).then_some(st.stx_nlink)
}

/// (device, inode, is a regular file) of `path`, not following a symlink, asked for
/// without the times (see `link_count`).
pub(crate) fn path_identity(path: &std::path::Path) -> Option<(u64, u64, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // No safe statx (see `link_count`).
    // SAFETY: statx is plain data, valid zeroed.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on a NUL-terminated path, into our struct.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_TYPE | libc::STATX_INO,
            &mut st,
        )
    };
    if r != 0 {
        return None;
    }
    let dev = libc::makedev(st.stx_dev_major, st.stx_dev_minor);
    let is_file = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG;
    Some((dev, st.stx_ino, is_file))
}

/// A new `eventfd(2)` (close-on-exec, non-blocking, counter 0): one thread signals
/// another that waits in `ppoll` (the fleet's DB thread wakes the chain's loop).
pub(crate) fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd with integer arguments; a descriptor it returns is ours alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd's counter (it becomes readable).
pub(crate) fn eventfd_signal(fd: RawFd) {
    let _ = write(fd, &1u64.to_ne_bytes());
}

/// Read (and so reset) an eventfd's counter: true if it was set.
pub(crate) fn eventfd_drain(fd: RawFd) -> bool {
    let mut b = [0u8; 8];
    matches!(read(fd, &mut b), Ok(8))
}

/// CLOCK_BOOTTIME now: like CLOCK_MONOTONIC, but counting while the machine is
/// suspended, as other hosts' clocks (and the database's) do. The fleet lease's clock.
pub(crate) fn boot_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(Duration::ZERO, |ts| {
        Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
    })
}

/// CLOCK_BOOTTIME now, in ns: one system call, no allocation (the spawn child and the
/// guardian read it).
pub(crate) fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A new timerfd on CLOCK_BOOTTIME (close-on-exec, non-blocking, disarmed): the fleet's
/// fence deadlines, which must count while the machine is suspended (a `ppoll` timeout
/// counts on CLOCK_MONOTONIC, which stops then). nix's `TimerFd` would do, but it owns
/// its descriptor and arms through an `Expiration` enum; the callers keep plain
/// descriptors in `libc::pollfd`s and deadlines as numbers.
pub(crate) fn timerfd_boot() -> std::io::Result<OwnedFd> {
    // SAFETY: timerfd_create with integer arguments; a descriptor it returns is ours alone.
    let fd = unsafe {
        libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arm a timerfd to fire once at `at` on its clock (absolute; a time already past fires
/// at once), or disarm it (None). Either way what it had counted is cleared, so it is no
/// longer readable until it fires again.
pub(crate) fn timerfd_at(fd: RawFd, at: Option<Duration>) -> std::io::Result<()> {
    let value = match at {
        // 0 disarms: the earliest time that still arms is 1 ns.
        Some(d) => libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos().max(u32::from(d.as_secs() == 0)) as libc::c_long,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: value,
    };
    // SAFETY: spec is a valid itimerspec; the old value is not asked for.
    let r =
        unsafe { libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The fleet fence's deadlines (CLOCK_BOOTTIME ns; 0: not a fleet owner) where the guardian
/// reads them (its shared page), registered by `run::guardian` at its fork; null before.
/// Here, below both `run` and `lock`, so that the DB thread (`lock::fleet`) writes them
/// without `lock` importing `run`.
static FENCE_TERM: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
static FENCE_KILL: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The write end of the guardian's pipe (-1: none, or closed).
static FENCE_WAKE: AtomicI32 = AtomicI32::new(-1);

/// The guardian's page holds the fence's deadlines at `term` and `kill` (mapped for the
/// life of the process); a byte on `wake` wakes it.
pub(crate) fn fence_register(term: &'static AtomicU64, kill: &'static AtomicU64, wake: RawFd) {
    FENCE_KILL.store(
        kill as *const AtomicU64 as *mut AtomicU64,
        Ordering::Release,
    );
    FENCE_TERM.store(
        term as *const AtomicU64 as *mut AtomicU64,
        Ordering::Release,
    );
    FENCE_WAKE.store(wake, Ordering::Relaxed);
}

/// The guardian's pipe is closing: no more wake bytes.
pub(crate) fn fence_unregister_wake() {
    FENCE_WAKE.store(-1, Ordering::Relaxed);
}

/// The fence's TERM deadline, for the spawn child (None: no guardian).
pub(crate) fn fence_term() -> Option<&'static AtomicU64> {
    // SAFETY: null, or the guardian's page, mapped for the life of the process.
    unsafe { FENCE_TERM.load(Ordering::Acquire).as_ref() }
}

/// The fleet's DB thread, after each renew that succeeded (and the acquire): the running
/// task's group gets SIGTERM at `term` and SIGKILL at `kill` (CLOCK_BOOTTIME) unless a
/// later renew moves them, whatever happens to run-chain (`run::guardian`). No system
/// call, unless the guardian may have passed the deadline stored before (then a byte on
/// its pipe wakes it to arm the new one).
pub(crate) fn set_fence(term: Duration, kill: Duration) {
    // SAFETY: null, or the guardian's page, mapped for the life of the process.
    let (Some(t), Some(k)) = (
        unsafe { FENCE_TERM.load(Ordering::Acquire).as_ref() },
        unsafe { FENCE_KILL.load(Ordering::Acquire).as_ref() },
    ) else {
        return;
    };
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    let (term_ns, kill_ns) = (ns(term), ns(kill).max(ns(term)));
    let old = t.load(Ordering::Relaxed);
    if old == term_ns {
        return;
    }
    // KILL first: a reader that sees the new TERM deadline sees this one too.
    k.store(kill_ns, Ordering::Relaxed);
    t.store(term_ns, Ordering::Release);
    if old == 0 || old <= boot_ns() {
        let fd = FENCE_WAKE.load(Ordering::Relaxed);
        if fd >= 0 {
            let _ = write(fd, &[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_after_its_name_whatever_the_name_holds() {
        let line = "4242 (a) b (c) S 17 4240 4240 0 -1 4194560 90 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 8925184 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 \
                    0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                state: 'S',
                ppid: Some(17),
                pgid: Some(4240),
                start_time: Some(987654),
            })
        );
        let cut = ProcStat {
            state: 'Z',
            ppid: None,
            pgid: None,
            start_time: None,
        };
        assert_eq!(parse_proc_stat("4242 (cut) Z"), Some(cut));
        assert_eq!(parse_proc_stat("4242 (no state)"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn our_own_stat_is_read_in_full() {
        let me = std::process::id() as i32;
        let st = proc_stat(me).expect("our own /proc/PID/stat");
        let text = std::fs::read_to_string(format!("/proc/{me}/stat")).expect("read");
        let fields: Vec<&str> = text[text.rfind(')').expect("comm") + 2..]
            .split_whitespace()
            .collect();
        assert_eq!(st.ppid, fields[1].parse().ok());
        assert_eq!(st.pgid, fields[2].parse().ok());
        assert_eq!(st.start_time, fields[19].parse().ok());
        assert_eq!(
            parent_of(me),
            Some(std::os::unix::process::parent_id() as i32)
        );
        assert_eq!(start_time(me), st.start_time);
        assert_eq!(proc_stat(-1), None);
    }

    #[test]
    fn a_boot_timerfd_fires_at_its_absolute_time_and_is_cleared_by_rearming() {
        let fd = timerfd_boot().expect("timerfd");
        let raw = fd.as_raw_fd();
        let mut b = [0u8; 8];
        assert!(read(raw, &mut b).is_err(), "disarmed: nothing to read");
        // A time already past fires at once.
        timerfd_at(
            raw,
            Some(Duration::from_nanos(boot_ns().saturating_sub(1_000))),
        )
        .expect("arm");
        let mut fds = [pollfd(raw, libc::POLLIN)];
        ppoll(&mut fds, Some(Duration::from_secs(30))).expect("ppoll");
        assert_ne!(fds[0].revents, 0, "fired");
        // Re-arming in the future clears what it counted.
        timerfd_at(
            raw,
            Some(Duration::from_nanos(boot_ns()) + Duration::from_secs(3600)),
        )
        .expect("arm");
        assert!(read(raw, &mut b).is_err(), "cleared by re-arming");
        timerfd_at(raw, None).expect("disarm");
        assert!(read(raw, &mut b).is_err(), "disarmed");
        let a = boot_ns();
        assert!(a > 0 && boot_ns() >= a);
    }
}
