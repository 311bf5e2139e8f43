//! Starting a process the way `posix_spawn` does, with the child's work cut to what a
//! run needs.
//!
//! The child is created with `clone(CLONE_VM | CLONE_VFORK)`: it shares our memory
//! and we are suspended until it has called `execve` (or exited), so nothing is
//! copied and no second address space is built only to be thrown away. Everything
//! the child uses is prepared before the clone (paths, argv, envp as C strings and
//! pointer arrays), so between the clone and the exec it only makes system calls: no
//! allocation, no free, no lock, no panic. It runs on our heap and on the spawning
//! thread's thread-local storage, beside our other threads: a free or a destructor
//! there frees our objects, a panic unwinds into our stack, a lock may be one another
//! thread holds. Debug builds enforce the first two (`alloc_guard`, below): an
//! allocation or a free in the child ends it and makes the spawn panic, and the test
//! suite runs every path of the child.
//!
//! What the child does, in order: the signals that have a handler in this process
//! (found once, at the first spawn) and SIGPIPE (which the Rust runtime ignores) go
//! back to their default action while every signal is still blocked; it makes itself
//! the leader of a new process group and writes its PID to the guardian's page; stdin,
//! stdout and stderr are put in place; it changes into the working directory; it sets
//! the nice value; it unblocks every signal; in a fleet owner, it reads the fence's TERM
//! deadline from the guardian's page and the boot clock, and goes no further if the
//! deadline has passed (a run-chain frozen or stalled between its start gate and the
//! clone must not start a task the lease no longer covers: `guardian`); it execs, trying each candidate path in
//! turn as `execvp` does (a file the kernel cannot exec, a script without `#!`, is run
//! by /bin/sh). Which step failed, and the errno, come back through the shared memory,
//! and the child exits.
//!
//! **What it buys over `std::process::Command`.** Command can keep every guarantee
//! above only with a `pre_exec` closure (the PID into the guardian's page before the
//! task runs, nice, the step of a failure, the handled signals reset while blocked), and
//! with a closure std forks instead of calling `posix_spawn`: the fork copies our page
//! tables and write-protects every page of every thread, each thread's next write to a
//! page takes a fault, and the exec tears the copy down again. That was measured (issue
//! 18, point 6) with a Command spawn that kept all the guarantees (`process_group(0)`,
//! stdio, cwd, nice, the PID and the signals in the closure), release builds, the
//! loop-rate section of `scripts/bench` (one `/bin/true` task, zero cooldowns), five
//! runs of each build alternated on a loaded 2-core host: 757 runs/s with this spawn,
//! 498/s with Command (median of the five runs' medians; -34%, against a bar of -10%),
//! the bare Rust spawn+wait loop ("the limit") at 719/s and 701/s, a bash loop at 435/s
//! and 469/s in the same runs. Sampled with `perf record`, run-chain's own CPU per run
//! was about 29 µs with this spawn and 208 µs with Command (the fork, the faults after
//! it, the environment map and C arrays std builds per spawn), and its store thread's
//! 31 µs and 77 µs (the faults). Besides, no stack is mapped and unmapped per spawn (a
//! munmap in a process with several threads sends an interrupt to the other CPU), the
//! pipe ends are not duplicated and /dev/null is not opened per run, and the child
//! resets the handful of handled signals instead of asking about all 64.

use std::ffi::{c_char, c_int, c_void, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The step of the child's set-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `clone` itself, a signal disposition, the process group, or stdio.
    Setup,
    Cwd,
    Nice,
    Exec,
    /// Not started: the fleet lease's fence deadline had passed just before the exec.
    Fenced,
}

#[derive(Debug)]
pub struct SpawnError {
    pub(crate) step: Step,
    pub err: std::io::Error,
}

/// What to start.
pub struct Spec<'a> {
    /// The paths to try with `execve`, in order (one, unless a PATH search).
    pub candidates: &'a [CString],
    pub argv: &'a [CString],
    /// `KEY=VALUE` entries.
    pub envp: &'a [*const c_char],
    pub cwd: &'a CString,
    pub nice: Option<i32>,
    /// The descriptors to become stdin, stdout and stderr; each must be 3 or more.
    pub stdio: [RawFd; 3],
    /// Where the child writes its PID once it leads its process group (the guardian's
    /// page); cleared again if the start fails.
    pub announce: Option<&'static AtomicI32>,
}

/// What the child reads and writes: it lives in our memory (CLONE_VM).
#[repr(C)]
struct Child {
    candidates: *const *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    set_nice: bool,
    nice: c_int,
    stdio: [c_int; 3],
    handled: *const c_int,
    n_handled: usize,
    announce: *const AtomicI32,
    /// The fence's TERM deadline (null: none).
    fence: *const AtomicU64,
    /// For a script without `#!`: ["/bin/sh", the candidate, argv[1..]], slot 1 filled
    /// by the child (as execvp does on ENOEXEC).
    sh_argv: *mut *const c_char,
    /// Set by the child on failure: the step (0: none) and errno.
    step: c_int,
    errno: c_int,
}

const STACK_SIZE: usize = 64 * 1024;

/// The child's stack, reused; the lock also makes spawns one at a time (the parent is
/// suspended while the child runs on it).
static STACK: Mutex<Option<Box<[u128]>>> = Mutex::new(None);

/// The signals with a handler in this process (not SIG_DFL, not SIG_IGN), found once:
/// run-chain installs its handlers before it starts anything.
fn handled_signals() -> &'static [c_int] {
    static HANDLED: OnceLock<Vec<c_int>> = OnceLock::new();
    HANDLED.get_or_init(|| {
        let mut out = Vec::new();
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: querying a disposition into a zeroed struct; signals glibc keeps
            // for itself return an error and are skipped.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                out.push(sig);
            }
        }
        if !out.contains(&libc::SIGPIPE) {
            out.push(libc::SIGPIPE);
        }
        out
    })
}

fn errno() -> c_int {
    // SAFETY: errno is thread-local (in the child: the suspended parent thread's).
    unsafe { *libc::__errno_location() }
}

/// The child, between clone and exec: system calls only.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Child`, alive while the parent is suspended; every
    // pointer in it was prepared by the parent and stays valid until then.
    unsafe {
        #[cfg(debug_assertions)]
        alloc_guard::enter_child();
        let c = &mut *(arg as *mut Child);
        #[cfg(all(test, debug_assertions))]
        if alloc_guard::tests::ALLOCATE_IN_CHILD.get() {
            std::hint::black_box(Box::new(0u8));
        }
        let fail = |c: &mut Child, step: Step| -> ! {
            c.errno = errno();
            c.step = match step {
                Step::Setup => 1,
                Step::Cwd => 2,
                Step::Nice => 3,
                Step::Exec => 4,
                Step::Fenced => 5,
            };
            libc::_exit(127)
        };
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for i in 0..c.n_handled {
            libc::sigaction(*c.handled.add(i), &dfl, std::ptr::null_mut());
        }
        if libc::setpgid(0, 0) != 0 {
            fail(c, Step::Setup);
        }
        if !c.announce.is_null() {
            (*c.announce).store(libc::getpid(), Ordering::Release);
        }
        for (target, fd) in c.stdio.into_iter().enumerate() {
            if libc::dup2(fd, target as c_int) < 0 {
                fail(c, Step::Setup);
            }
        }
        if libc::chdir(c.cwd) != 0 {
            fail(c, Step::Cwd);
        }
        if c.set_nice {
            // nice(2) may return -1 as the new value: errno tells.
            *libc::__errno_location() = 0;
            if libc::nice(c.nice) == -1 && errno() != 0 {
                fail(c, Step::Nice);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // The fence, last: past its deadline the lease may be another host's soon.
        if !c.fence.is_null() {
            let term = (*c.fence).load(Ordering::Acquire);
            let mut ts: libc::timespec = std::mem::zeroed();
            if term != 0 && libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) == 0 {
                let now = (ts.tv_sec as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(ts.tv_nsec as u64);
                if now >= term {
                    *libc::__errno_location() = libc::ETIME;
                    fail(c, Step::Fenced);
                }
            }
        }
        // As execvp: EACCES on one candidate is remembered and the search goes on;
        // a candidate that does not exist is skipped; any other error ends it.
        let mut eacces = false;
        let mut last = libc::ENOENT;
        let mut p = c.candidates;
        while !(*p).is_null() {
            libc::execve(*p, c.argv, c.envp);
            let mut e = errno();
            if e == libc::ENOEXEC {
                // A script without `#!`: the shell runs it, as execvp would have it.
                *c.sh_argv.add(1) = *p;
                libc::execve(c"/bin/sh".as_ptr(), c.sh_argv, c.envp);
                e = errno();
            }
            match e {
                libc::EACCES => eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => {
                    last = e;
                    eacces = false;
                    break;
                }
            }
            p = p.add(1);
        }
        *libc::__errno_location() = if eacces { libc::EACCES } else { last };
        fail(c, Step::Exec)
    }
}

/// Start the process; its PID (it leads its own process group). In a fleet owner, not
/// past the fence's TERM deadline ([`Step::Fenced`]).
pub fn spawn(spec: &Spec) -> Result<i32, SpawnError> {
    spawn_fenced(spec, crate::sys::fence_term())
}

/// [`spawn`], with the fence's deadline given.
fn spawn_fenced(spec: &Spec, fence: Option<&AtomicU64>) -> Result<i32, SpawnError> {
    let setup = |err| SpawnError {
        step: Step::Setup,
        err,
    };
    if spec.stdio.iter().any(|fd| *fd < 3) {
        return Err(setup(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    let handled = handled_signals();
    let mut candidates: Vec<*const c_char> = spec.candidates.iter().map(|c| c.as_ptr()).collect();
    candidates.push(std::ptr::null());
    let mut argv: Vec<*const c_char> = spec.argv.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = spec.envp.to_vec();
    envp.push(std::ptr::null());
    let mut sh_argv: Vec<*const c_char> = vec![c"/bin/sh".as_ptr(), std::ptr::null()];
    sh_argv.extend(spec.argv.iter().skip(1).map(|c| c.as_ptr()));
    sh_argv.push(std::ptr::null());
    let mut child = Child {
        candidates: candidates.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: spec.cwd.as_ptr(),
        set_nice: spec.nice.is_some(),
        nice: spec.nice.unwrap_or(0),
        stdio: spec.stdio,
        handled: handled.as_ptr(),
        n_handled: handled.len(),
        announce: spec
            .announce
            .map_or(std::ptr::null(), |a| a as *const AtomicI32),
        fence: fence.map_or(std::ptr::null(), |f| f as *const AtomicU64),
        sh_argv: sh_argv.as_mut_ptr(),
        step: 0,
        errno: 0,
    };
    let mut guard = STACK.lock().unwrap_or_else(|e| e.into_inner());
    let stack = guard.get_or_insert_with(|| vec![0u128; STACK_SIZE / 16].into_boxed_slice());
    // The stack grows down: the child starts at its (16-byte aligned) end.
    // SAFETY: one past the end of the allocation, as clone expects.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) } as *mut c_void;
    // SAFETY: every signal is blocked around the clone, so no handler of ours runs in
    // the child on shared memory; the child only makes system calls (see child_main)
    // and we are suspended until it has exec'd or exited (CLONE_VFORK).
    let (pid, clone_errno) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut child as *mut Child as *mut c_void,
        );
        let e = errno();
        // Before anything of ours can allocate (see `alloc_guard`).
        #[cfg(debug_assertions)]
        let allocated = alloc_guard::leave_child();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        #[cfg(debug_assertions)]
        if allocated && pid > 0 {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        #[cfg(debug_assertions)]
        assert!(
            !allocated,
            "the spawn child allocated or freed memory between clone and exec \
             (a debug build's check; see run::spawn)"
        );
        (pid, e)
    };
    drop(guard);
    if pid < 0 {
        return Err(setup(std::io::Error::from_raw_os_error(clone_errno)));
    }
    if child.step != 0 {
        if let Some(a) = spec.announce {
            let _ = a.compare_exchange(pid, 0, Ordering::Release, Ordering::Relaxed);
        }
        // It has exited (127): reap it here, it never ran.
        loop {
            // SAFETY: waiting for our own child by PID.
            let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            if r >= 0 || errno() != libc::EINTR {
                break;
            }
        }
        let step = match child.step {
            2 => Step::Cwd,
            3 => Step::Nice,
            4 => Step::Exec,
            5 => Step::Fenced,
            _ => Step::Setup,
        };
        return Err(SpawnError {
            step,
            err: std::io::Error::from_raw_os_error(child.errno),
        });
    }
    Ok(pid)
}

/// Debug builds only: an allocator that ends the spawn child, and makes the spawn
/// panic, if the child allocates or frees memory between `clone` and `execve`. The
/// child runs on our memory and on the spawning thread's thread-local storage (CLONE_VM
/// without CLONE_SETTLS), so a flag it sets in that storage is seen by the allocator in
/// the child and by the spawning thread after the clone, and by no other thread. Every
/// path of `child_main` runs in the test suite (a start, and a failure at cwd, nice and
/// exec, a script without `#!`), so an allocation added to any of them fails the suite.
#[cfg(debug_assertions)]
mod alloc_guard {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static IN_CHILD: Cell<bool> = const { Cell::new(false) };
        static ALLOCATED: Cell<bool> = const { Cell::new(false) };
    }

    /// In the child, first thing.
    pub(super) fn enter_child() {
        IN_CHILD.set(true);
    }

    /// In the parent, as soon as the clone returns: whether the child allocated.
    pub(super) fn leave_child() -> bool {
        IN_CHILD.set(false);
        ALLOCATED.replace(false)
    }

    fn check() {
        if IN_CHILD.get() {
            ALLOCATED.set(true);
            // SAFETY: the child ends here, before the allocator is touched.
            unsafe { libc::_exit(125) }
        }
    }

    struct Guarded;

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Guarded {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            check();
            // SAFETY: as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            check();
            // SAFETY: as the caller's.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            check();
            // SAFETY: as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            check();
            // SAFETY: as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GUARDED: Guarded = Guarded;

    #[cfg(test)]
    pub(super) mod tests {
        use std::cell::Cell;
        use std::ffi::CString;
        use std::os::fd::AsRawFd;

        use super::super::{spawn, Spec};

        thread_local! {
            /// Makes the child allocate (this thread's spawns only).
            pub(in super::super) static ALLOCATE_IN_CHILD: Cell<bool> = const { Cell::new(false) };
        }

        fn start_true() -> std::thread::Result<i32> {
            let program = CString::new("/bin/true").expect("no NUL");
            let cwd = CString::new("/").expect("no NUL");
            let null = std::fs::File::open("/dev/null").expect("open /dev/null");
            // The test process has stdin, stdout and stderr open: this is 3 or more.
            let raw = null.as_raw_fd();
            let spec = Spec {
                candidates: std::slice::from_ref(&program),
                argv: std::slice::from_ref(&program),
                envp: &[],
                cwd: &cwd,
                nice: None,
                stdio: [raw; 3],
                announce: None,
            };
            let r = std::panic::catch_unwind(|| spawn(&spec).expect("spawn /bin/true"));
            drop(null);
            r
        }

        fn reap(pid: i32) {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }

        #[test]
        fn an_allocation_in_the_child_fails_the_spawn_in_a_debug_build() {
            reap(start_true().expect("a plain spawn succeeds"));
            ALLOCATE_IN_CHILD.set(true);
            let r = start_true();
            ALLOCATE_IN_CHILD.set(false);
            let err = r.expect_err("the spawn panics");
            let msg = err
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| err.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            assert!(msg.contains("allocated or freed memory"), "{msg}");
            // And the next spawn of this thread is fine again.
            reap(start_true().expect("a plain spawn succeeds"));
        }
    }
}

#[cfg(test)]
mod fence_tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Start `sh -c 'echo ran >> MARK'` under a fence deadline.
    fn start(fence: &AtomicU64, mark: &std::path::Path) -> Result<i32, SpawnError> {
        let sh = CString::new("/bin/sh").expect("no NUL");
        let argv = [
            sh.clone(),
            CString::new("-c").expect("no NUL"),
            CString::new(format!("echo ran >> '{}'", mark.display())).expect("no NUL"),
        ];
        let cwd = CString::new("/").expect("no NUL");
        let null = std::fs::File::open("/dev/null").expect("open /dev/null");
        let raw = null.as_raw_fd();
        let spec = Spec {
            candidates: std::slice::from_ref(&sh),
            argv: &argv,
            envp: &[],
            cwd: &cwd,
            nice: None,
            stdio: [raw; 3],
            announce: None,
        };
        spawn_fenced(&spec, Some(fence))
    }

    fn exit_code(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_child_does_not_exec_past_the_fence_deadline() {
        let dir = std::env::temp_dir().join(format!("rc-spawn-fence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mark = dir.join("mark");
        let _ = std::fs::remove_file(&mark);
        // A deadline already past (1 ns after boot): the spawn error, and no exec.
        let past = AtomicU64::new(1);
        let err = start(&past, &mark).expect_err("fenced");
        assert_eq!(err.step, Step::Fenced);
        assert_eq!(err.err.raw_os_error(), Some(libc::ETIME));
        // 0: no fence (not a fleet owner); a deadline to come: both start.
        for ns in [0, crate::sys::boot_ns() + 3_600_000_000_000] {
            let pid = start(&AtomicU64::new(ns), &mark).expect("started");
            assert_eq!(exit_code(pid), 0);
        }
        let ran = std::fs::read_to_string(&mark).expect("mark");
        assert_eq!(ran, "ran\nran\n", "the fenced spawn ran nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
