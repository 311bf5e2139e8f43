//! A reference for `scripts/bench` (scale): the least that recording every run in one
//! shared SQLite store costs, with no supervisor around it.
//!
//! ```text
//! storeloop DB RATE SECS OFFSET_MS PROG [lean | run-chain]
//! ```
//!
//! Runs PROG (spawn and wait, `std::process::Command`; with `lean` or `run-chain`,
//! run-chain's own spawn, `run_chain::spawn`, and a blocking `waitpid`) RATE times a
//! second for SECS seconds, the first run OFFSET_MS after the start, and after each run
//! writes one
//! transaction to the SQLite database DB, with run-chain's settings (WAL,
//! synchronous=NORMAL, a checkpoint every 4,000 WAL pages, a 256 KiB page cache,
//! BEGIN IMMEDIATE):
//! the run's row (chain, task, run id, start, stop, outcome, exit code, 200 bytes of
//! output) into a table indexed by (series, run id), and the task's counters (runs, ok)
//! in a second table. Many of these, one per chain, on one DB are what SPEC's "every run
//! is recorded" costs at the least when every chain writes its own runs into one store.
//! With DB `-`, nothing is written: the loop only spawns and waits (the same 200
//! processes without a store, to tell the two costs apart).
//!
//! With `run-chain`, DB is a RUN_ROOT and each run is recorded by run-chain's own store
//! writer (`run_chain::store::Store`: the run's start and end in one transaction, as a
//! chain records a short run, into RUN_ROOT/runs.db with its schema and settings), so
//! the loop is a chain's spawn and record with nothing else of a supervisor: no
//! CHAIN.state, no signals, no guardian, no output pipes, no poll.
//! Prints "RUNS CPU_NS": the runs after the first, and the CPU time of this process
//! (all threads, CLOCK_PROCESS_CPUTIME_ID) from the end of the first run (whose write
//! reads the schema and makes the series, once in a loop's life) to the end.
//! Build: `cargo build --release --example storeloop`.

use std::ffi::CString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("storeloop: {what}: {e}");
    std::process::exit(1)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: storeloop DB RATE SECS OFFSET_MS PROG [lean | run-chain]");
        std::process::exit(64);
    };
    if a.len() < 6 || a.len() > 7 {
        usage();
    }
    let (lean, own_store) = match a.get(6).map(String::as_str) {
        None => (false, false),
        Some("lean") => (true, false),
        Some("run-chain") => (true, true),
        _ => usage(),
    };
    let num = |s: &str| -> f64 {
        s.parse()
            .unwrap_or_else(|_| fail("not a number", format!("{s:?}")))
    };
    let (db, prog) = (&a[1], &a[5]);
    let pace = Pace {
        rate: num(&a[2]),
        secs: num(&a[3]),
        offset: Duration::from_secs_f64(num(&a[4]) / 1000.0),
    };
    if own_store {
        return with_own_store(Path::new(db), pace, lean_runner(prog));
    }
    let mut conn = if db == "-" {
        Connection::open_in_memory()
    } else {
        Connection::open(db)
    }
    .unwrap_or_else(|e| fail(db, e));
    let record = db != "-";
    conn.busy_timeout(Duration::from_millis(250))
        .unwrap_or_else(|e| fail("busy_timeout", e));
    let setup = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
        PRAGMA wal_autocheckpoint=4000; PRAGMA cache_size=-256; PRAGMA journal_size_limit=17825792;
        CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, chain TEXT NOT NULL,
            task TEXT NOT NULL, runs INTEGER NOT NULL DEFAULT 0, ok INTEGER NOT NULL DEFAULT 0,
            UNIQUE (chain, task));
        CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, series INTEGER NOT NULL,
            run_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, stop_ms INTEGER,
            outcome TEXT, exit_code INTEGER, output BLOB);
        CREATE UNIQUE INDEX IF NOT EXISTS runs_series_run ON runs (series, run_id);";
    // Many loops start together: the schema is made under the write lock, with retries.
    let mut tries = 0;
    while let Err(e) = conn.execute_batch(setup) {
        tries += 1;
        if tries > 100 {
            fail("create the schema", e);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let chain = format!("ref{}", std::process::id());
    conn.execute(
        "INSERT OR IGNORE INTO series (chain, task) VALUES (?1, 't')",
        params![chain],
    )
    .unwrap_or_else(|e| fail("insert the series", e));
    let sid: i64 = conn
        .query_row(
            "SELECT id FROM series WHERE chain = ?1 AND task = 't'",
            params![chain],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| fail("read the series", e));
    let output = vec![b'x'; 200];
    let run = if lean {
        lean_runner(prog)
    } else {
        let prog = prog.clone();
        Box::new(move || {
            let st = Command::new(&prog)
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| fail(&prog, e));
            (st.success(), st.code())
        }) as Box<dyn Fn() -> (bool, Option<i32>)>
    };

    let (runs, c0) = paced(pace, &*run, |run_id, t0, t1, success, code| {
        if !record {
            return;
        }
        let mut write = || -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO runs (series, run_id, start_ms, stop_ms, outcome, exit_code, output)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                sid,
                run_id as i64,
                t0 as i64,
                t1 as i64,
                if success { "ok" } else { "failed" },
                code,
                output
            ])?;
            tx.prepare_cached("UPDATE series SET runs = runs + 1, ok = ok + ?2 WHERE id = ?1")?
                .execute(params![sid, success as i64])?;
            tx.commit()
        };
        // A store busy past the 250 ms wait is tried again (as run-chain does), at most
        // 10 times, before the loop gives up.
        let mut tries = 0;
        while let Err(e) = write() {
            tries += 1;
            let busy = matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            );
            if !busy || tries >= 10 {
                fail("record a run", e);
            }
        }
    });
    println!("{runs} {}", cpu_ns() - c0);
}

/// RATE runs a second for SECS seconds, the first OFFSET after the start.
#[derive(Clone, Copy)]
struct Pace {
    rate: f64,
    secs: f64,
    offset: Duration,
}

/// Run `run` at `pace`, and after each run call `record` with its run id (from 1), its
/// start and stop (ms since the epoch), whether it succeeded and its exit code. Returns
/// the runs after the first and the process's CPU time at the end of the first (see the
/// module's text).
fn paced(
    pace: Pace,
    run: &dyn Fn() -> (bool, Option<i32>),
    mut record: impl FnMut(u64, u64, u64, bool, Option<i32>),
) -> (u64, u64) {
    let start = Instant::now();
    let mut c0 = cpu_ns();
    let mut runs: u64 = 0;
    loop {
        if runs == 1 {
            // From the end of the first run: its write reads the schema and makes the
            // task's series, once in a loop's life.
            c0 = cpu_ns();
        }
        let due = pace.offset + Duration::from_secs_f64(runs as f64 / pace.rate);
        if due.as_secs_f64() >= pace.secs {
            break;
        }
        let el = start.elapsed();
        if due > el {
            std::thread::sleep(due - el);
        }
        let t0 = wall_ms() as u64;
        let (success, code) = run();
        let t1 = wall_ms() as u64;
        runs += 1;
        record(runs, t0, t1, success, code);
    }
    (runs.saturating_sub(1), c0)
}

/// Spawn and wait PROG as run-chain does: `run_chain::spawn` (clone with CLONE_VM and
/// CLONE_VFORK, a process group of its own, stdin /dev/null, stdout and stderr ours),
/// then a blocking `waitpid`.
fn lean_runner(prog: &str) -> Box<dyn Fn() -> (bool, Option<i32>)> {
    let c = |s: &str| CString::new(s).unwrap_or_else(|e| fail("a NUL in an argument", e));
    let path = c(prog);
    let cwd = c("/");
    let env: Vec<CString> = std::env::vars()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect();
    let dup = |fd: i32| {
        // SAFETY: duplicating a descriptor of ours to one above 2.
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if d < 0 {
            fail("dup", std::io::Error::last_os_error());
        }
        d
    };
    let null = std::fs::File::open("/dev/null").unwrap_or_else(|e| fail("/dev/null", e));
    let stdio = [dup(std::os::fd::AsRawFd::as_raw_fd(&null)), dup(1), dup(2)];
    Box::new(move || {
        let envp: Vec<*const std::ffi::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        let spec = run_chain::run::spawn::Spec {
            candidates: std::slice::from_ref(&path),
            argv: std::slice::from_ref(&path),
            envp: &envp,
            cwd: &cwd,
            nice: None,
            stdio,
            announce: None,
        };
        let pid = run_chain::run::spawn::spawn(&spec).unwrap_or_else(|e| fail("spawn", e.err));
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            fail("waitpid", std::io::Error::last_os_error());
        }
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        (code == Some(0), code)
    })
}

/// The loop of `run-chain` mode: each run recorded by `run_chain::store::Store` in
/// RUN_ROOT `root`.
fn with_own_store(root: &Path, pace: Pace, run: Box<dyn Fn() -> (bool, Option<i32>)>) {
    use run_chain::store::{Instance, Op, RunEnd, RunStart, Store};
    if let Err(e) = std::fs::create_dir_all(root) {
        fail(&root.display().to_string(), e);
    }
    let pid = std::process::id();
    let mut store = Store::new(
        root,
        Instance {
            host: "storeloop".into(),
            pid,
            version: "storeloop".into(),
            config_digest: "-".into(),
            started_ms: wall_ms() as u64,
        },
    );
    let chain = format!("ref{pid}");
    let output = vec![b'x'; 200];
    let keep_for_ms: u64 = 30 * 86_400_000;
    let (runs, c0) = paced(pace, &*run, |run_id, t0, t1, success, code| {
        let now = run_chain::time::mono_now();
        store.begin_batch();
        store.push(
            now,
            Op::Start(RunStart {
                chain: chain.clone(),
                task: "t".into(),
                run_id,
                scheduled_ms: t0,
                start_ms: t0,
                task_pid: None,
                trigger: "schedule",
                requested_by: None,
            }),
        );
        store.push(
            now,
            Op::End(Box::new(RunEnd {
                chain: chain.clone(),
                task: "t".into(),
                run_id,
                scheduled_ms: t0,
                start_ms: t0,
                stop_ms: t1,
                outcome: if success { "ok" } else { "failed" },
                exit_code: code,
                signal: None,
                error: None,
                output: output.clone(),
                output_bytes: output.len() as u64,
                output_cut: false,
                trigger: "schedule",
                requested_by: None,
                streak: None,
                keep_runs_max: 100_000,
                keep_after_ms: t1.saturating_sub(keep_for_ms),
            })),
        );
        store.end_batch(now);
        store.thread_work();
    });
    if store.pending() > 0 {
        store.flush(run_chain::time::mono_now());
    }
    if store.pending() > 0 {
        fail(
            "record the runs",
            format!("{} not written", store.pending()),
        );
    }
    println!("{runs} {}", cpu_ns() - c0);
}
