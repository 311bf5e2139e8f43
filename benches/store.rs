//! Benchmark of the record store (issue 4, point 8). Run it with `scripts/bench-store`
//! (or `cargo bench --bench store` after `cargo build --release`).
//!
//! 1. Fill a store in a temporary RUN_ROOT with 100 chains and 1,000,000 runs (5 tasks per
//!    chain, ~200 bytes of output per run), with the schema made by `Store` itself and the
//!    rows bulk-inserted with rusqlite, aggregates in `series` consistent with the runs;
//!    plus a `CHAIN.pid` (locked by this process, so every chain is "up") and a
//!    `CHAIN.state` per chain.
//! 2. Time the real binary: `status`, `status --json`, `history TASK --limit 50` (a task of
//!    one chain, and a task that every chain has), 20 runs each after one run whose output
//!    is checked (every chain shown up, 50 runs listed): a wrong output fails the row.
//! 3. Time recording: `Store::push` of a run's start plus its end (one transaction each,
//!    as the chain does, default pruning settings), on that store, for 20,000 runs of one
//!    chain (after a few warm-up runs).
//!
//! Prints one table, figures with units, each bar with PASS or FAIL; under `cargo bench`
//! exits 1 if a bar fails (2 if the benchmark could not run). Without `--bench` (as `cargo test --all-targets` runs it) it
//! only makes a small smoke run and checks nothing against the bars.
//!
//! Settings (environment): RUN_CHAIN_BIN (default target/release/run-chain), BENCH_DIR
//! (where the temporary RUN_ROOT goes; default the system temp dir), BENCH_CHAINS (100),
//! BENCH_RUNS (1000000), BENCH_RECORD_RUNS (20000), BENCH_REPEAT (20), BENCH_KEEP (keep
//! the RUN_ROOT afterwards and print its path).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run_chain::config::builtin::{KEEP_RUNS_FOR, KEEP_RUNS_MAX};
use run_chain::core::resume::{State, TaskFailures, STATE_VERSION};
use run_chain::lock::pidfile::PidFile;
use run_chain::store::state_file as state;
use run_chain::store::{self, Instance, Op, RunEnd, RunStart, Store};
use rusqlite::{params, Connection};

/// Tasks per chain; task 0 of every chain has the same name (`shared`).
const TASKS: usize = 5;
/// Bytes of kept output per run.
const OUTPUT_BYTES: usize = 200;
/// The history is spread over this span before now.
const SPAN_MS: u64 = 20 * 86_400_000;

const BAR_RECORD: Duration = Duration::from_micros(100);
const BAR_STATUS: Duration = Duration::from_millis(100);
const BAR_HISTORY: Duration = Duration::from_millis(50);
/// Issue 6: a metrics scrape with 1,000,000 runs recorded.
const BAR_METRICS: Duration = Duration::from_millis(50);

type BoxError = Box<dyn std::error::Error>;
/// Checks the output of a command before it is timed.
type Check = Box<dyn Fn(&str) -> Result<(), String>>;

struct Settings {
    full: bool,
    chains: usize,
    runs: usize,
    record_runs: usize,
    repeat: usize,
    bin: PathBuf,
    dir: Option<PathBuf>,
    keep: bool,
}

fn env_num(name: &str, default: usize) -> Result<usize, BoxError> {
    match std::env::var(name) {
        Ok(v) => Ok(v
            .trim()
            .replace(['_', ','], "")
            .parse()
            .map_err(|e| format!("{name}={v:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, BoxError> {
        let full = std::env::args().any(|a| a == "--bench");
        let (chains, runs, record_runs, repeat) = if full {
            (100, 1_000_000, 20_000, 20)
        } else {
            (4, 4_000, 200, 2)
        };
        let bin = std::env::var_os("RUN_CHAIN_BIN").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/run-chain"),
            PathBuf::from,
        );
        let s = Settings {
            full,
            chains: env_num("BENCH_CHAINS", chains)?.max(1),
            runs: env_num("BENCH_RUNS", runs)?,
            record_runs: env_num("BENCH_RECORD_RUNS", record_runs)?.max(1),
            repeat: env_num("BENCH_REPEAT", repeat)?.max(1),
            bin,
            dir: std::env::var_os("BENCH_DIR").map(PathBuf::from),
            keep: std::env::var_os("BENCH_KEEP").is_some(),
        };
        if s.runs < s.chains * TASKS {
            return Err(format!(
                "BENCH_RUNS must be at least {} ({TASKS} per chain)",
                s.chains * TASKS
            )
            .into());
        }
        Ok(s)
    }
}

/// xorshift64*: deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// About `OUTPUT_BYTES` of log-like text that does not repeat from run to run.
fn output(rng: &mut Rng, run_id: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "processed",
        "items",
        "queue",
        "sent",
        "deferred",
        "retry",
        "ok",
        "batch",
        "rows",
        "in",
        "done",
        "skipped",
        "connection",
        "db",
        "mail",
        "elapsed",
    ];
    let mut s = format!("run {run_id}: ");
    while s.len() < OUTPUT_BYTES - 1 {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        s.push_str(w);
        s.push(' ');
        if rng.below(3) == 0 {
            s.push_str(&format!("{} ", rng.below(100_000)));
        }
        if rng.below(12) == 0 {
            s.push('\n');
        }
    }
    s.truncate(OUTPUT_BYTES - 1);
    s.push('\n');
    s.into_bytes()
}

fn chain_name(c: usize) -> String {
    format!("chain{c:03}")
}

fn task_name(c: usize, t: usize) -> String {
    if t == 0 {
        "shared".to_string()
    } else {
        format!("c{c:03}_task{t}")
    }
}

fn wall_ms() -> u64 {
    run_chain::time::wall_ms()
}

/// The aggregates of one series, kept as the runs are generated.
#[derive(Default, Clone)]
struct Agg {
    runs: i64,
    ok: i64,
    failed: i64,
    timeout: i64,
    signal: i64,
    duration_sum: i64,
    latency_sum: i64,
    last_run_id: Option<i64>,
    last_outcome: Option<&'static str>,
    last_exit: Option<i64>,
    last_scheduled: Option<i64>,
    last_start: Option<i64>,
    last_stop: Option<i64>,
    last_duration: Option<i64>,
    last_success: Option<i64>,
    running: Option<(i64, i64)>,
    streak: Option<(i64, i64)>,
}

struct Filled {
    root: tempfile::TempDir,
    /// Held for the whole benchmark: every chain is "up" (this process holds its lock).
    _pidfiles: Vec<PidFile>,
    runs: usize,
    seconds: f64,
    bytes: u64,
    /// Per chain and task: the last run id used.
    last_ids: Vec<Vec<u64>>,
}

/// Fill a fresh RUN_ROOT with `s.chains` chains and `s.runs` runs.
fn fill(s: &Settings) -> Result<Filled, BoxError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("run-chain-bench-");
    let root = match &s.dir {
        Some(d) => builder.tempdir_in(d)?,
        None => builder.tempdir()?,
    };
    let dir = root.path();
    let t0 = Instant::now();
    let now = wall_ms();

    // The schema (and one instance row), made by the store itself.
    let mut st = Store::new(
        dir,
        Instance {
            host: "bench-host".into(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_digest: "0000000000000000".into(),
            started_ms: now - SPAN_MS,
        },
    );
    st.push(
        Duration::ZERO,
        Op::CloseOpen {
            chain: "bench-setup".into(),
            stop_ms: now,
            running: None,
            queued: None,
        },
    );
    if st.pending() != 0 {
        return Err("the store could not be created (see the log above)".into());
    }
    drop(st);

    let mut conn = Connection::open(store::path(dir))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != store::SCHEMA_VERSION {
        return Err(format!(
            "store schema version {version}, expected {}",
            store::SCHEMA_VERSION
        )
        .into());
    }
    // Bulk load: no WAL, no sync, a big cache; WAL is switched back on at the end.
    let mode: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(format!("cannot leave WAL mode for the bulk load (mode {mode})").into());
    }
    conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")?;

    let chains = s.chains;
    let per_chain = s.runs / chains;
    let extra = s.runs % chains; // the first `extra` chains get one run more
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut aggs = vec![vec![Agg::default(); TASKS]; chains];
    let mut last_ids = vec![vec![0u64; TASKS]; chains];
    let series_id = |c: usize, t: usize| (c * TASKS + t + 1) as i64;
    let instance_id = |c: usize| (c + 2) as i64; // 1 is the setup instance

    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare(
            "INSERT INTO instances (id, host, pid, version, config_digest, started_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for c in 0..chains {
            ins.execute(params![
                instance_id(c),
                "bench-host",
                20_000 + c as i64,
                env!("CARGO_PKG_VERSION"),
                format!("{:016x}", rng.next()),
                (now - SPAN_MS) as i64
            ])?;
        }
        let mut ins = tx.prepare("INSERT INTO series (id, chain, task) VALUES (?1, ?2, ?3)")?;
        for c in 0..chains {
            for t in 0..TASKS {
                ins.execute(params![series_id(c, t), chain_name(c), task_name(c, t)])?;
            }
        }
        let mut ins = tx.prepare(
            "INSERT INTO runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms, outcome, exit_code, signal,
             duration_ms, latency_ms, task_pid, output, output_bytes, output_cut, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        // In time order, chains interleaved, as the chains of a RUN_ROOT write them.
        let steps = per_chain + usize::from(extra > 0);
        for k in 0..steps {
            for c in 0..chains {
                let mine = per_chain + usize::from(c < extra);
                if k >= mine {
                    continue;
                }
                let t = k % TASKS;
                let run_id = (k / TASKS + 1) as u64;
                last_ids[c][t] = run_id;
                let scheduled = now - SPAN_MS + (k as u64 * SPAN_MS / mine as u64) + c as u64 * 7;
                let latency = rng.below(20) as i64;
                let start = scheduled as i64 + latency;
                let duration = 50 + rng.below(5_000) as i64;
                let stop = start + duration;
                let out = output(&mut rng, run_id);
                let a = &mut aggs[c][t];
                // Every 10th chain has its last run still going.
                if k + 1 == mine && c % 10 == 0 {
                    ins.execute(params![
                        series_id(c, t),
                        run_id as i64,
                        instance_id(c),
                        scheduled as i64,
                        start,
                        None::<i64>,
                        None::<&str>,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        None::<i64>,
                        30_000 + rng.below(100_000) as i64,
                        &out[..out.len() / 2],
                        (out.len() / 2) as i64,
                        false,
                        None::<&str>
                    ])?;
                    a.running = Some((run_id as i64, start));
                    continue;
                }
                let roll = rng.below(100);
                let (outcome, exit, sig): (&'static str, Option<i64>, Option<i64>) = match roll {
                    0..=89 => ("ok", Some(0), None),
                    90..=97 => ("failed", Some(1 + rng.below(2) as i64), None),
                    98 => ("timeout", None, Some(15)),
                    _ => ("signal", None, Some(9)),
                };
                ins.execute(params![
                    series_id(c, t),
                    run_id as i64,
                    instance_id(c),
                    scheduled as i64,
                    start,
                    stop,
                    outcome,
                    exit,
                    sig,
                    duration,
                    latency,
                    30_000 + rng.below(100_000) as i64,
                    &out,
                    out.len() as i64,
                    false,
                    None::<&str>
                ])?;
                a.runs += 1;
                match outcome {
                    "ok" => a.ok += 1,
                    "failed" => a.failed += 1,
                    "timeout" => a.timeout += 1,
                    _ => a.signal += 1,
                }
                a.duration_sum += duration;
                a.latency_sum += latency;
                a.last_run_id = Some(run_id as i64);
                a.last_outcome = Some(outcome);
                a.last_exit = exit.or(sig.map(|s| 128 + s));
                a.last_scheduled = Some(scheduled as i64);
                a.last_start = Some(start);
                a.last_stop = Some(stop);
                a.last_duration = Some(duration);
                if outcome == "ok" {
                    a.last_success = Some(stop);
                    a.streak = None;
                } else {
                    let (since, n) = a.streak.unwrap_or((stop, 0));
                    a.streak = Some((since, n + 1));
                }
            }
        }
        let mut upd = tx.prepare(
            "UPDATE series SET runs = ?2, ok = ?3, failed = ?4, timeout = ?5, signal = ?6, duration_sum_ms = ?7,
             latency_sum_ms = ?8, last_run_id = ?9, last_outcome = ?10, last_exit_code = ?11, last_scheduled_ms = ?12,
             last_start_ms = ?13, last_stop_ms = ?14, last_duration_ms = ?15, last_success_ms = ?16,
             running_run_id = ?17, running_since_ms = ?18, streak_start_ms = ?19, streak_failures = ?20
             WHERE id = ?1",
        )?;
        for (c, chain_aggs) in aggs.iter().enumerate() {
            for (t, a) in chain_aggs.iter().enumerate() {
                upd.execute(params![
                    series_id(c, t),
                    a.runs,
                    a.ok,
                    a.failed,
                    a.timeout,
                    a.signal,
                    a.duration_sum,
                    a.latency_sum,
                    a.last_run_id,
                    a.last_outcome,
                    a.last_exit,
                    a.last_scheduled,
                    a.last_start,
                    a.last_stop,
                    a.last_duration,
                    a.last_success,
                    a.running.map(|r| r.0),
                    a.running.map(|r| r.1),
                    a.streak.map(|s| s.0),
                    a.streak.map_or(0, |s| s.1)
                ])?;
            }
        }
        // A full recent-runs window per series, as a chain that ran this long has.
        let mut blob = Vec::new();
        for i in 0..run_chain::store::RECENT_WINDOW as u64 {
            blob = run_chain::store::push_recent(&blob, 100 + i * 7 % 900, i % 13);
        }
        tx.execute("UPDATE series SET recent = ?1", params![blob])?;
    }
    tx.commit()?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot put the store back in WAL mode (mode {mode})").into());
    }
    drop(conn);
    let runs_in_store = count_runs(dir)?;
    if runs_in_store != s.runs as u64 {
        return Err(format!("the store holds {runs_in_store} runs, expected {}", s.runs).into());
    }

    // Pidfiles (locked by us, so `status` sees every chain up) and state files.
    let mut pidfiles = Vec::with_capacity(chains);
    for (c, chain_aggs) in aggs.iter().enumerate() {
        let chain = chain_name(c);
        let mut pf = PidFile::open(dir, &chain)?;
        if !pf.try_lock()? {
            return Err(format!("cannot lock the pidfile of {chain}").into());
        }
        pf.write_pid()?;
        pidfiles.push(pf);
        let tasks: Vec<String> = (0..TASKS).map(|t| task_name(c, t)).collect();
        let mut failures = BTreeMap::new();
        for (t, a) in chain_aggs.iter().enumerate() {
            failures.insert(
                task_name(c, t),
                TaskFailures {
                    streak_start_ms: a.streak.map(|s| s.0 as u64),
                    failures: a.streak.map_or(0, |s| s.1 as u64),
                    last_success_ms: a.last_success.map(|v| v as u64),
                },
            );
        }
        let running = chain_aggs
            .iter()
            .enumerate()
            .find_map(|(t, a)| a.running.map(|r| (t, r)));
        let next = per_chain % TASKS;
        let state = State {
            version: STATE_VERSION,
            tasks: tasks.clone(),
            next_task: Some(tasks[running.map_or(next, |r| r.0)].clone()),
            due_wall_ms: Some(now + 60_000 + c as u64 * 1_000),
            running_task: running.map(|r| tasks[r.0].clone()),
            running_run_id: running.map(|r| r.1 .0 as u64),
            running_since_ms: running.map(|r| r.1 .1 as u64),
            run_ids: tasks
                .iter()
                .zip(&last_ids[c])
                .map(|(n, id)| (n.clone(), *id))
                .collect(),
            failures,
            ..State::default()
        };
        state::save(&state::path(dir, &chain), &state)?;
    }

    let bytes = db_bytes(dir)?;
    // Write the bulk load out now: its dirty pages would otherwise be flushed during the
    // timings (by the kernel, or by the first checkpoint's fsync).
    std::fs::File::open(store::path(dir))?.sync_all()?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Filled {
        root,
        _pidfiles: pidfiles,
        runs: s.runs,
        seconds,
        bytes,
        last_ids,
    })
}

fn count_runs(dir: &Path) -> Result<u64, BoxError> {
    let conn = Connection::open(store::path(dir))?;
    let n: i64 = conn.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// The store's size on disk after a checkpoint (the file, plus what is left in -wal).
fn db_bytes(dir: &Path) -> Result<u64, BoxError> {
    let p = store::path(dir);
    let conn = Connection::open(&p)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    let mut total = std::fs::metadata(&p)?.len();
    if let Ok(m) = std::fs::metadata(format!("{}-wal", p.display())) {
        total += m.len();
    }
    Ok(total)
}

struct Recorded {
    warmup: usize,
    per_run: Vec<Duration>,
    start_mean: Duration,
    end_mean: Duration,
    first_mean: Duration,
    last_mean: Duration,
    series_runs_before: u64,
    series_runs_after: u64,
    bytes_added: i64,
}

/// Record `s.record_runs` runs of chain000 through `Store::push`, start and end each in
/// its own transaction, as the chain does, with the default pruning settings. The first
/// `warmup` runs (the connection opens, its cache fills) are not counted.
fn record(s: &Settings, f: &Filled) -> Result<Recorded, BoxError> {
    let dir = f.root.path();
    let chain = chain_name(0);
    let bytes_before = db_bytes(dir)?;
    let mut st = Store::new(
        dir,
        Instance {
            host: run_chain::sys::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_digest: "feedfacecafebeef".into(),
            started_ms: wall_ms(),
        },
    );
    let mut ids = f.last_ids[0].clone();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mono0 = Instant::now();
    let warmup = (s.record_runs / 100).clamp(10, 200);
    let mut per_run = Vec::with_capacity(s.record_runs);
    let (mut start_sum, mut end_sum) = (Duration::ZERO, Duration::ZERO);
    let series_runs_before = ids.iter().sum::<u64>() / TASKS as u64;
    let keep_for = KEEP_RUNS_FOR.as_millis() as u64;
    for i in 0..warmup + s.record_runs {
        let t = i % TASKS;
        let task = task_name(0, t);
        ids[t] += 1;
        let run_id = ids[t];
        let scheduled = wall_ms();
        let start_op = Op::Start(RunStart {
            chain: chain.clone(),
            task: task.clone(),
            run_id,
            scheduled_ms: scheduled,
            start_ms: scheduled + 1,
            task_pid: Some(40_000 + (i % 20_000) as i32),
            trigger: "schedule",
            requested_by: None,
        });
        let a = Instant::now();
        st.push(mono0.elapsed(), start_op);
        let start_cost = a.elapsed();
        let stop = wall_ms() + 5;
        let failed = rng.below(10) == 0;
        let end_op = Op::End(Box::new(RunEnd {
            chain: chain.clone(),
            task,
            run_id,
            scheduled_ms: scheduled,
            start_ms: scheduled + 1,
            stop_ms: stop,
            outcome: if failed { "failed" } else { "ok" },
            exit_code: Some(i32::from(failed)),
            signal: None,
            error: None,
            output: output(&mut rng, run_id),
            output_bytes: OUTPUT_BYTES as u64,
            output_cut: false,
            trigger: "schedule",
            requested_by: None,
            streak: failed.then_some((stop, 1)),
            keep_runs_max: KEEP_RUNS_MAX,
            keep_after_ms: stop.saturating_sub(keep_for),
        }));
        let b = Instant::now();
        st.push(mono0.elapsed(), end_op);
        let end_cost = b.elapsed();
        if i >= warmup {
            per_run.push(start_cost + end_cost);
            start_sum += start_cost;
            end_sum += end_cost;
        }
        if st.pending() != 0 {
            return Err(
                format!("run {i}: the store did not take the record (see the log above)").into(),
            );
        }
    }
    drop(st);
    let k = (per_run.len() / 20).max(1);
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len().max(1) as u32;
    let first_mean = mean(&per_run[..k]);
    let last_mean = mean(&per_run[per_run.len() - k..]);
    let bytes_after = db_bytes(dir)?;
    Ok(Recorded {
        warmup,
        start_mean: start_sum / per_run.len() as u32,
        end_mean: end_sum / per_run.len() as u32,
        first_mean,
        last_mean,
        series_runs_before,
        series_runs_after: ids.iter().sum::<u64>() / TASKS as u64,
        bytes_added: bytes_after as i64 - bytes_before as i64,
        per_run,
    })
}

/// Run the binary once; returns its wall time and its stdout.
fn run_bin(
    bin: &Path,
    dir: &Path,
    args: &[&str],
    capture: bool,
) -> Result<(Duration, Vec<u8>), BoxError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--run-root")
        .arg(dir)
        .args(args)
        .current_dir(dir)
        .env_remove("RUN_ROOT")
        .env_remove("RUN_CHAIN_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {}: {}: {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )
        .into());
    }
    Ok((took, out.stdout))
}

/// Time `args` `n` times, after one run whose output is checked by `check`. Returns
/// the times and what was wrong with the output, if anything (timed all the same).
fn time_bin(
    bin: &Path,
    dir: &Path,
    args: &[&str],
    n: usize,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(Vec<Duration>, Option<String>), BoxError> {
    let (_, out) = run_bin(bin, dir, args, true)?;
    let wrong = check(&String::from_utf8_lossy(&out))
        .err()
        .map(|e| format!("run-chain {}: {e}", args.join(" ")));
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(run_bin(bin, dir, args, false)?.0);
    }
    Ok((v, wrong))
}

/// The `q` quantile (nearest rank) of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn fmt_d(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn fmt_bar(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

struct Table {
    rows: Vec<[String; 6]>,
    /// Problems found in the output of the commands timed.
    notes: Vec<String>,
    failed: bool,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        what: String,
        median: Duration,
        tail: (&str, Duration),
        extra: String,
        judged: (&str, Duration),
        bar: Duration,
        enforce: bool,
    ) {
        let verdict = if !enforce {
            "(smoke run)".to_string()
        } else if judged.1 < bar {
            format!("PASS ({} {})", judged.0, fmt_d(judged.1))
        } else {
            self.failed = true;
            format!("FAIL ({} {})", judged.0, fmt_d(judged.1))
        };
        self.rows.push([
            what,
            fmt_d(median),
            format!("{} {}", tail.0, fmt_d(tail.1)),
            extra,
            format!("< {}", fmt_bar(bar)),
            verdict,
        ]);
    }

    /// The output of the last row's command was wrong: the row fails whatever its time
    /// (a smoke run only reports it: the binary it finds may be older than the code).
    fn wrong(&mut self, what: String, enforce: bool) {
        if enforce {
            if let Some(r) = self.rows.last_mut() {
                r[5] = "FAIL (wrong output, see below)".into();
            }
            self.failed = true;
        }
        self.notes.push(what);
    }

    fn print(&self) {
        let head = ["MEASURE", "MEDIAN", "TAIL", "MEAN/MAX", "BAR", "RESULT"];
        let mut w = [0usize; 6];
        for r in self
            .rows
            .iter()
            .map(|r| r.each_ref().map(String::as_str))
            .chain([head])
        {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: [&str; 6]| {
            let mut s = String::new();
            for (i, c) in r.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                if i == 0 || i == 5 {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
                s.push_str("  ");
            }
            println!("{}", s.trim_end());
        };
        line(head);
        for r in &self.rows {
            line(r.each_ref().map(String::as_str));
        }
        for n in &self.notes {
            println!("WRONG OUTPUT: {n}");
        }
    }
}

fn main() {
    // real_main has returned, so the temporary RUN_ROOT is removed before the exit.
    let code = match real_main() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("bench store: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// The 1-minute load average: other work on the machine skews every figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Ok(false): a bar failed.
fn real_main() -> Result<bool, BoxError> {
    let s = Settings::from_env()?;
    let load_before = loadavg();
    let have_bin = s.bin.is_file();
    if s.full && !have_bin {
        return Err(format!(
            "{} not found: run `cargo build --release` first (scripts/bench-store does), or set RUN_CHAIN_BIN",
            s.bin.display()
        )
        .into());
    }
    if !s.full {
        println!(
            "smoke run (use `cargo bench --bench store` or scripts/bench-store for the benchmark)"
        );
    }
    println!(
        "filling a store: {} chains x {TASKS} tasks, {} runs, {OUTPUT_BYTES} bytes of output each ...",
        s.chains,
        fmt_n(s.runs as u64)
    );
    let f = fill(&s)?;
    let dir = f.root.path().to_path_buf();
    println!(
        "filled {} in {:.1} s: runs.db {:.1} MB",
        dir.display(),
        f.seconds,
        f.bytes as f64 / 1e6
    );

    let mut table = Table {
        rows: Vec::new(),
        notes: Vec::new(),
        failed: false,
    };
    let enforce = s.full;

    // The reading commands, against the filled store (every chain up, 10% running).
    if have_bin {
        let chains = s.chains;
        let status_check = move |out: &str| {
            let heads: Vec<&str> = out.lines().filter(|l| l.starts_with("chain")).collect();
            let down: Vec<&str> = heads
                .iter()
                .filter(|l| !l.contains(": pid "))
                .filter_map(|l| l.split(':').next())
                .collect();
            if heads.len() == chains && down.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "expected {chains} chains, all up (this process holds their locks); saw {} chains, {} shown down: {}",
                    heads.len(),
                    down.len(),
                    down.join(" ")
                ))
            }
        };
        let json_check = move |out: &str| {
            let n = out.matches("\"chain\": \"chain").count();
            let up = out.matches("\"up\": true").count();
            if n == chains && up == chains {
                Ok(())
            } else {
                Err(format!(
                    "expected {chains} chains in the JSON, all up; saw {n} chains, {up} up"
                ))
            }
        };
        let per_series = (s.runs / s.chains / TASKS) as u64;
        let limit = 50usize;
        let want = (limit as u64).min(per_series) as usize;
        let hist_check = move |out: &str| {
            let n = out.lines().count().saturating_sub(1);
            if n == want {
                Ok(())
            } else {
                Err(format!("expected {want} runs listed, saw {n}:\n{out}"))
            }
        };
        let task_one = task_name(s.chains / 2, 3);
        let cases: Vec<(String, Vec<&str>, Duration, Check)> = vec![
            (
                format!("status ({} chains up)", s.chains),
                vec!["status"],
                BAR_STATUS,
                Box::new(status_check),
            ),
            (
                "status --json".into(),
                vec!["status", "--json"],
                BAR_STATUS,
                Box::new(json_check),
            ),
            (
                format!("history {task_one} --limit 50 (1 chain)"),
                vec!["history", &task_one, "--limit", "50"],
                BAR_HISTORY,
                Box::new(hist_check),
            ),
            (
                format!("history shared --limit 50 ({} chains)", s.chains),
                vec!["history", "shared", "--limit", "50"],
                BAR_HISTORY,
                Box::new(hist_check),
            ),
            (
                "metrics (a scrape, every series with a full window)".into(),
                vec!["metrics"],
                BAR_METRICS,
                Box::new(move |out: &str| {
                    let up = out
                        .lines()
                        .filter(|l| l.starts_with("run_chain_up{") && l.ends_with(" 1"))
                        .count();
                    if up == chains && out.contains("run_chain_runs_total{") {
                        Ok(())
                    } else {
                        Err(format!(
                            "expected {chains} chains up in the metrics, saw {up}"
                        ))
                    }
                }),
            ),
        ];
        for (what, args, bar, check) in &cases {
            let (mut v, wrong) = time_bin(&s.bin, &dir, args, s.repeat, check)?;
            v.sort();
            let max = *v.last().unwrap_or(&Duration::ZERO);
            let p95 = quantile(&v, 0.95);
            table.row(
                format!("{what}, {} runs", v.len()),
                quantile(&v, 0.5),
                ("p95", p95),
                format!("max {}", fmt_d(max)),
                ("p95", p95),
                *bar,
                enforce,
            );
            if let Some(w) = wrong {
                table.wrong(w, enforce);
            }
        }
    } else {
        println!(
            "({} not found: skipping status and history)",
            s.bin.display()
        );
    }

    // Recording, on the same store.
    let r = record(&s, &f)?;
    let mut v = r.per_run.clone();
    v.sort();
    let mean = r.per_run.iter().sum::<Duration>() / r.per_run.len() as u32;
    table.row(
        format!(
            "record a run (Store::push start + end), {} runs",
            fmt_n(r.per_run.len() as u64)
        ),
        quantile(&v, 0.5),
        ("p99", quantile(&v, 0.99)),
        format!("mean {}", fmt_d(mean)),
        ("mean", mean),
        BAR_RECORD,
        enforce,
    );

    println!();
    table.print();
    println!();
    let total_runs = f.runs as u64 + r.per_run.len() as u64;
    println!(
        "store size: {:.1} MB for {} runs = {:.0} bytes per run (bulk-loaded, {OUTPUT_BYTES}-byte output; issue 4 wants <= 400)",
        f.bytes as f64 / 1e6,
        fmt_n(f.runs as u64),
        f.bytes as f64 / f.runs as f64
    );
    println!(
        "            growth while recording through Store::push: {:+.1} MB for {} runs = {:.0} bytes per run ({} runs in the store now)",
        r.bytes_added as f64 / 1e6,
        fmt_n(r.per_run.len() as u64),
        r.bytes_added as f64 / r.per_run.len() as f64,
        fmt_n(total_runs)
    );
    println!(
        "recording: start {} + end {} (means), max {}; mean of the first 5% {}, of the last 5% {};",
        fmt_d(r.start_mean),
        fmt_d(r.end_mean),
        fmt_d(*v.last().unwrap_or(&Duration::ZERO)),
        fmt_d(r.first_mean),
        fmt_d(r.last_mean),
    );
    println!(
        "           chain000, {TASKS} tasks, runs per task {} -> {}, after {} warm-up runs not counted",
        fmt_n(r.series_runs_before),
        fmt_n(r.series_runs_after),
        r.warmup
    );
    println!(
        "bars: status and history judged on p95 of {} runs of the real binary; recording on the mean",
        s.repeat
    );
    println!(
        "machine: {} CPUs, load average (1 min) {load_before} at the start, {} at the end",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    if s.keep {
        let kept = f.root.keep();
        println!("kept RUN_ROOT {}", kept.display());
    }
    if table.failed {
        println!("RESULT: FAIL");
    } else if enforce {
        println!("RESULT: PASS");
    }
    Ok(!table.failed)
}
