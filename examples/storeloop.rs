//! A reference for `scripts/bench` (scale): the least that recording every run in one
//! shared SQLite store costs, with no supervisor around it.
//!
//! ```text
//! storeloop DB RATE SECS OFFSET_MS PROG
//! ```
//!
//! Runs PROG (spawn and wait, `std::process::Command`) RATE times a second for SECS
//! seconds, the first run OFFSET_MS after the start, and after each run writes one
//! transaction to the SQLite database DB, with run-chain's settings (WAL,
//! synchronous=NORMAL, a checkpoint every 4,000 WAL pages, a 256 KiB page cache,
//! BEGIN IMMEDIATE):
//! the run's row (chain, task, run id, start, stop, outcome, exit code, 200 bytes of
//! output) into a table indexed by (series, run id), and the task's counters (runs, ok)
//! in a second table. Many of these, one per chain, on one DB are what SPEC's "every run
//! is recorded" costs at the least when every chain writes its own runs into one store.
//! With DB `-`, nothing is written: the loop only spawns and waits (the same 200
//! processes without a store, to tell the two costs apart).
//! Prints "RUNS CPU_NS" (CPU time of this process, all threads, from
//! CLOCK_PROCESS_CPUTIME_ID). Build: `cargo build --release --example storeloop`.

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
    if a.len() != 6 {
        eprintln!("usage: storeloop DB RATE SECS OFFSET_MS PROG");
        std::process::exit(64);
    }
    let num = |s: &str| -> f64 {
        s.parse()
            .unwrap_or_else(|_| fail("not a number", format!("{s:?}")))
    };
    let (db, rate, secs, offset, prog) = (
        &a[1],
        num(&a[2]),
        num(&a[3]),
        Duration::from_secs_f64(num(&a[4]) / 1000.0),
        &a[5],
    );
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

    let start = Instant::now();
    let c0 = cpu_ns();
    let mut runs: u64 = 0;
    loop {
        let due = offset + Duration::from_secs_f64(runs as f64 / rate);
        if due.as_secs_f64() >= secs {
            break;
        }
        let el = start.elapsed();
        if due > el {
            std::thread::sleep(due - el);
        }
        let t0 = wall_ms();
        let st = Command::new(prog)
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| fail(prog, e));
        let t1 = wall_ms();
        runs += 1;
        let mut write = || -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO runs (series, run_id, start_ms, stop_ms, outcome, exit_code, output)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                sid,
                runs as i64,
                t0,
                t1,
                if st.success() { "ok" } else { "failed" },
                st.code(),
                output
            ])?;
            tx.prepare_cached("UPDATE series SET runs = runs + 1, ok = ok + ?2 WHERE id = ?1")?
                .execute(params![sid, st.success() as i64])?;
            tx.commit()
        };
        if !record {
            continue;
        }
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
    }
    println!("{runs} {}", cpu_ns() - c0);
}
