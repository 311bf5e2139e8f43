//! stamp FILE: append one line "START_NS END_NS\n" to FILE (CLOCK_MONOTONIC, nanoseconds).
//! START is read first thing in main, END just before the single O_APPEND write, so the
//! benchmark can tell when the process began and ended on the same clock as Python's
//! time.monotonic_ns(). Built by scripts/bench with `rustc -O`.
use std::io::Write;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}

const CLOCK_MONOTONIC: i32 = 1;

fn now_ns() -> u64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let start = now_ns();
    let path = match std::env::args_os().nth(1) {
        Some(p) => p,
        None => {
            eprintln!("usage: stamp FILE");
            std::process::exit(64);
        }
    };
    let mut f = match std::fs::OpenOptions::new().append(true).create(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("stamp: {e}");
            std::process::exit(1);
        }
    };
    let end = now_ns();
    let line = format!("{start} {end}\n");
    if f.write_all(line.as_bytes()).is_err() {
        std::process::exit(1);
    }
}
