//! Reference loops for scripts/bench (built with `rustc -O`, std only):
//!
//!   refloop spawn N PROG [ARG...]      spawn+wait PROG N times; prints "RATE" (runs/s)
//!   refloop sleepgap N MS STAMP FILE   run STAMP FILE, sleep MS (std::thread::sleep), N times
//!                                      (the cooldown-overshoot reference: same exec cost)
//!   refloop spawnlat N STAMP FILE      N times: t0, spawn STAMP FILE, wait; prints one line
//!                                      per run: START_of_stamp - t0 in ns
//!   refloop paced RATE SECS PROG       spawn+wait PROG at RATE runs/s for SECS seconds, then
//!                                      prints "RUNS CPU_NS" (CPU time of this process only,
//!                                      from /proc/self/schedstat)
//!   refloop sleep SECS                 print "ready", then sleep (a sleeping std-only binary)
//!   refloop onsignal STAMP FILE        print "ready", then at each SIGUSR1 (blocked, taken
//!                                      with sigwait) spawn+wait STAMP FILE; SIGTERM ends it
//!                                      (the kick reference: asleep, woken by a signal, spawns)
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// glibc's sigset_t: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
    fn sigemptyset(set: *mut SigSet) -> i32;
    fn sigaddset(set: *mut SigSet, sig: i32) -> i32;
    fn pthread_sigmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwait(set: *const SigSet, sig: *mut i32) -> i32;
}

const SIG_BLOCK: i32 = 0;
const SIGUSR1: i32 = 10;

fn now_ns() -> u64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { clock_gettime(1, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn arg(a: &[String], i: usize) -> &str {
    a.get(i).map(String::as_str).unwrap_or_else(|| {
        eprintln!("refloop: missing argument {i}; see the source for usage");
        std::process::exit(64)
    })
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| {
        eprintln!("refloop: not a number: {s}");
        std::process::exit(64)
    })
}

fn run(prog: &str, args: &[String]) {
    let st = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            eprintln!("refloop: {prog}: {e}");
            std::process::exit(1)
        });
    if !st.success() {
        eprintln!("refloop: {prog} failed: {st}");
        std::process::exit(1);
    }
}

fn last_start(file: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let line = text.lines().last().unwrap_or("");
    num(line.split_whitespace().next().unwrap_or("0"))
}

/// CPU time of this (single-threaded) process in ns: /proc/self/schedstat (exact), else the
/// tick-sampled utime+stime of /proc/self/stat (which misses short bursts on some kernels).
fn cpu_ns() -> u64 {
    if let Ok(s) = std::fs::read_to_string("/proc/self/schedstat") {
        if let Some(v) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return v;
        }
    }
    cpu_ticks() * 10_000_000
}

fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the ")" of comm: state is field 3, utime 14, stime 15
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    num(f[11]) + num(f[12])
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let out = std::io::stdout();
    let mut out = out.lock();
    match arg(&a, 1) {
        "spawn" => {
            let n = num(arg(&a, 2));
            let prog = arg(&a, 3).to_string();
            let rest = a[4..].to_vec();
            let t = Instant::now();
            for _ in 0..n {
                run(&prog, &rest);
            }
            writeln!(out, "{:.1}", n as f64 / t.elapsed().as_secs_f64()).unwrap();
        }
        "sleepgap" => {
            let n = num(arg(&a, 2));
            let ms = num(arg(&a, 3));
            let stamp = arg(&a, 4).to_string();
            let file = vec![arg(&a, 5).to_string()];
            for i in 0..n {
                run(&stamp, &file);
                if i + 1 < n {
                    std::thread::sleep(Duration::from_millis(ms));
                }
            }
        }
        "spawnlat" => {
            let n = num(arg(&a, 2));
            let stamp = arg(&a, 3).to_string();
            let file = arg(&a, 4).to_string();
            let fa = vec![file.clone()];
            for _ in 0..n {
                let t0 = now_ns();
                run(&stamp, &fa);
                let s = last_start(&file);
                writeln!(out, "{}", s.saturating_sub(t0)).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        "paced" => {
            let rate = num(arg(&a, 2)) as f64;
            let secs = num(arg(&a, 3)) as f64;
            let prog = arg(&a, 4).to_string();
            let start = Instant::now();
            let c0 = cpu_ns();
            let mut runs: u64 = 0;
            loop {
                let due = Duration::from_secs_f64(runs as f64 / rate);
                if due.as_secs_f64() >= secs {
                    break;
                }
                let el = start.elapsed();
                if due > el {
                    std::thread::sleep(due - el);
                }
                run(&prog, &[]);
                runs += 1;
            }
            writeln!(out, "{runs} {}", cpu_ns() - c0).unwrap();
        }
        "onsignal" => {
            let stamp = arg(&a, 2).to_string();
            let fa = vec![arg(&a, 3).to_string()];
            let mut set = SigSet([0; 16]);
            // SAFETY: a sigset of ours; SIGUSR1 blocked on this (only) thread, then taken
            // synchronously with sigwait, as run-chain takes it from its self-pipe.
            unsafe {
                sigemptyset(&mut set);
                sigaddset(&mut set, SIGUSR1);
                pthread_sigmask(SIG_BLOCK, &set, std::ptr::null_mut());
            }
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            loop {
                let mut sig = 0;
                // SAFETY: waits for a signal of the set, which is blocked.
                if unsafe { sigwait(&set, &mut sig) } == 0 && sig == SIGUSR1 {
                    run(&stamp, &fa);
                }
            }
        }
        "sleep" => {
            let secs = num(arg(&a, 2));
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::thread::sleep(Duration::from_secs(secs));
        }
        m => {
            eprintln!("refloop: unknown mode {m}");
            std::process::exit(64);
        }
    }
}
