//! The commands that only look: `status`, `history`, `log`.
//!
//! They read RUN_ROOT (pidfiles, `CHAIN.state`) and the record store, for every chain
//! at once, while chains write. They never take a chain's lock: whether a chain is up
//! is decided by `/proc/locks`. Readers cost a few queries on the aggregates and on
//! indexed runs, never a scan of the history.
//!
//! A run is shown `running` only while the instance that recorded it holds its chain's
//! lock: one left open by an instance that died reads `interrupted` with no stop until its
//! guardian or the next launch records its end (see `settle_open_runs`), and `status`
//! does not show a dead instance's run as what the chain does now.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::core::resume;
use crate::error::{exit, Error, Result};
use crate::lock::holders::{chains, holders};
use crate::store::state_file;
use crate::store::{self, RunRow, SeriesRow};
use crate::time::rfc3339;

fn opt_time(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(rfc3339(m)))
}

fn secs(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |m| json!(m as f64 / 1000.0))
}

/// A short local-free time for tables: "2026-11-24 02:58:01".
fn short_time(ms: u64) -> String {
    let s = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    s.replace('T', " ").trim_end_matches('Z').to_string()
}

fn ago(now_ms: u64, ms: u64) -> String {
    crate::time::fmt_dur(Duration::from_millis(now_ms.saturating_sub(ms)))
}

/// How long ago `ms` was, to the two largest units, for the status table's LAST and LAST
/// SUCCESS (one form for both): "just now", "42s ago", "3m 12s ago", "2h ago", "3d 4h ago".
fn time_ago(now_ms: u64, ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    let (big, small) = match s {
        0 => return "just now".to_string(),
        1..60 => ((s, "s"), (0, "")),
        60..3600 => ((s / 60, "m"), (s % 60, "s")),
        3600..86400 => ((s / 3600, "h"), (s % 3600 / 60, "m")),
        _ => ((s / 86400, "d"), (s % 86400 / 3600, "h")),
    };
    if small.0 == 0 {
        format!("{}{} ago", big.0, big.1)
    } else {
        format!("{}{} {}{} ago", big.0, big.1, small.0, small.1)
    }
}

/// An RFC 3339 time of the JSON view, in ms since the epoch.
fn json_ms(v: &Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// The `error` a reader shows for a run left open by an instance that is gone.
pub(crate) const LEFT_OPEN: &str =
    "no instance of the chain runs: run-chain died during the run, and its end is not recorded (yet)";

/// Runs still open in the store (no outcome) whose instance does not hold its chain's lock
/// read `interrupted`, with no stop, no duration and [`LEFT_OPEN`] as their error: the
/// instance that started them died, and neither its guardian nor a later launch has
/// closed them yet (see `guardian`). `holder` names each chain's lock holder; a run
/// recorded by another host is left as it is (this host's locks say nothing of it).
///
/// A run counts as running only while the very instance that recorded it holds the lock,
/// not any instance: a newer one may have taken the chain over and not yet closed what the
/// dead one left. The caller reads the rows first and the lock holders after: an instance
/// holds its lock from before its first record to its death, so a holder seen after the
/// rows held it when they were read, and a run read open was then running. (The other
/// way round, a run started between the two readings by an instance just launched would
/// read as interrupted.)
fn settle_open_runs(rows: &mut [RunRow], host: &str, holder: impl Fn(&str) -> Option<i32>) {
    for r in rows.iter_mut() {
        if r.outcome.is_some() || r.host != host {
            continue;
        }
        if holder(&r.chain) != Some(r.instance_pid as i32) {
            r.outcome = Some("interrupted".to_string());
            r.stop_ms = None;
            r.duration_ms = None;
            r.error = Some(LEFT_OPEN.to_string());
        }
    }
}

/// [`settle_open_runs`] with the lock holders of the chains concerned, read now (after
/// the rows). Nothing is read when no run is open.
fn settle(run_root: &Path, rows: &mut [RunRow]) {
    let mut chains: Vec<String> = rows
        .iter()
        .filter(|r| r.outcome.is_none())
        .map(|r| r.chain.clone())
        .collect();
    if chains.is_empty() {
        return;
    }
    chains.sort();
    chains.dedup();
    let found = holders(run_root, &chains);
    let by_chain: BTreeMap<&str, Option<i32>> =
        chains.iter().map(String::as_str).zip(found).collect();
    settle_open_runs(rows, &crate::sys::hostname(), |c| {
        by_chain.get(c).copied().flatten()
    });
}

/// Whether CHAIN.state `st` was written by an instance other than `holder`, the chain's
/// lock holder now: the state names its writer's guardian (PID and start time), a child of
/// the writer for as long as the writer lives. A new instance holds the lock before it
/// writes its first state, and, after an instance died mid-run, waits for the dead one's
/// guardian to end the run's group first (up to the kill grace): meanwhile the state is the
/// dead instance's, and its run is not running. A guardian that is gone says nothing (the
/// state is then taken as the holder's, as before: a writer's guardian lives as long as it).
fn written_by_another_instance(st: &resume::State, holder: i32) -> bool {
    let (Some(g), Some(start)) = (st.guardian_pid, st.guardian_start) else {
        return false;
    };
    if g <= 1 || crate::sys::start_time(g) != Some(start) {
        return false;
    }
    crate::sys::parent_of(g).is_some_and(|p| p != holder)
}

fn store_error(run_root: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!(
        "failed to read the store {}: {e}",
        store::path(run_root).display()
    ))
}

/// `status [--json]`.
pub(crate) fn status(run_root: &Path, as_json: bool) -> Result<u8> {
    // A RUN_ROOT that does not exist yet simply has no chains.
    let names = if run_root.exists() {
        chains(run_root)?
    } else {
        Vec::new()
    };
    let conn = store::open_read(run_root).map_err(Error::Internal)?;
    let series = match &conn {
        Some(c) => store::series(c).map_err(|e| store_error(run_root, e))?,
        None => Vec::new(),
    };
    let mut by_chain: BTreeMap<&str, Vec<&SeriesRow>> = BTreeMap::new();
    for s in &series {
        by_chain.entry(s.chain.as_str()).or_default().push(s);
    }
    let now_ms = crate::time::wall_ms();
    let up = holders(run_root, &names);
    let mut out = Vec::new();
    for (chain, &holder) in names.iter().zip(&up) {
        let st = state_file::load(&state_file::path(run_root, chain)).unwrap_or_default();
        // Every key is always there (null when it does not apply): a stable shape.
        let now = |state: &str,
                   task: Option<&String>,
                   run_id: Option<u64>,
                   since: Option<u64>,
                   until: Option<u64>,
                   group: Option<&String>| {
            json!({"state": state, "task": task, "run_id": run_id, "since": opt_time(since),
                   "until": opt_time(until), "group": group})
        };
        let now = match holder {
            None => now("down", None, None, None, None, None),
            Some(pid) => {
                if (st.next_task.is_none() && st.running_task.is_none())
                    || written_by_another_instance(&st, pid)
                {
                    // The instance holds the lock but has not written its state yet (the
                    // state there is its predecessor's: it may name a run of an instance
                    // that died, which this one waits for the guardian to end).
                    now("starting", None, None, None, None, None)
                } else if let Some(t) = &st.running_task {
                    now(
                        "running",
                        Some(t),
                        st.running_run_id,
                        st.running_since_ms,
                        None,
                        st.running_group.as_ref(),
                    )
                } else if let Some(g) = &st.waiting_group {
                    now(
                        "waiting",
                        st.next_task.as_ref(),
                        None,
                        st.waiting_since_ms,
                        None,
                        Some(g),
                    )
                } else {
                    now(
                        "cooldown",
                        st.next_task.as_ref(),
                        None,
                        None,
                        st.due_wall_ms,
                        None,
                    )
                }
            }
        };
        let rows = by_chain.get(chain.as_str()).cloned().unwrap_or_default();
        let mut task_names: Vec<String> = st.tasks.clone();
        for r in &rows {
            if !task_names.contains(&r.task) {
                task_names.push(r.task.clone());
            }
        }
        let tasks: Vec<Value> = task_names
            .iter()
            .map(|t| {
                let r = rows.iter().find(|r| &r.task == t);
                let fails = st.failures.get(t);
                let streak = match fails {
                    Some(f) => f.streak(),
                    None => r.and_then(|r| r.streak_start_ms.map(|s| (s, r.streak_failures))),
                };
                let last = r.and_then(|r| {
                    r.last_run_id.map(|id| {
                        json!({"run_id": id, "outcome": r.last_outcome, "exit_code": r.last_exit_code,
                               "start": opt_time(r.last_start_ms), "stop": opt_time(r.last_stop_ms),
                               "duration_seconds": secs(r.last_duration_ms)})
                    })
                });
                let last_success = fails
                    .and_then(|f| f.last_success_ms)
                    .or(r.and_then(|r| r.last_success_ms));
                json!({
                    "task": t,
                    "runs": r.map_or(0, |r| r.runs),
                    "ok": r.map_or(0, |r| r.ok),
                    "failures": r.map_or(0, |r| r.failed + r.timeout + r.signal + r.spawn_error),
                    "interrupted": r.map_or(0, |r| r.interrupted),
                    "last": last.unwrap_or(Value::Null),
                    "last_success": opt_time(last_success),
                    "streak": streak.map_or(Value::Null, |(s, n)| json!({"since": rfc3339(s), "failures": n})),
                })
            })
            .collect();
        out.push(json!({
            "chain": chain,
            "up": holder.is_some(),
            "pid": holder,
            "now": now,
            "tasks": tasks,
        }));
    }
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if as_json {
        // Absolute, as a reader of the JSON may run elsewhere than this command did.
        let root = std::path::absolute(run_root).unwrap_or_else(|_| run_root.to_path_buf());
        let doc = json!({"run_root": root.display().to_string(), "chains": out});
        let _ = writeln!(
            w,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    if out.is_empty() {
        let _ = writeln!(w, "no chains in {}", run_root.display());
        return Ok(exit::OK);
    }
    for c in &out {
        let chain = c["chain"].as_str().unwrap_or_default();
        let now = &c["now"];
        let when = |k: &str| {
            now[k]
                .as_str()
                .and_then(|s| humantime::parse_rfc3339(s).ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
        };
        let doing = match now["state"].as_str() {
            Some("running") => format!(
                "running {} (run {}) for {}{}",
                now["task"].as_str().unwrap_or("?"),
                now["run_id"],
                when("since").map_or("?".into(), |s| ago(now_ms, s)),
                now["group"]
                    .as_str()
                    .map_or(String::new(), |g| format!(", holding a slot of group {g}"))
            ),
            Some("waiting") => format!(
                "{} waiting for group {} for {}",
                now["task"].as_str().unwrap_or("?"),
                now["group"].as_str().unwrap_or("?"),
                when("since").map_or("?".into(), |s| ago(now_ms, s))
            ),
            Some("starting") => "starting".to_string(),
            Some("cooldown") => match when("until") {
                Some(u) if u > now_ms => format!(
                    "cooling down; {} in {}",
                    now["task"].as_str().unwrap_or("?"),
                    crate::time::fmt_dur(Duration::from_millis(u - now_ms))
                ),
                _ => format!("{} due now", now["task"].as_str().unwrap_or("?")),
            },
            _ => "down".to_string(),
        };
        let pid = c["pid"]
            .as_i64()
            .map_or(String::new(), |p| format!(" pid {p}"));
        let _ = writeln!(w, "{chain}:{pid} {doing}");
        let _ = writeln!(
            w,
            "  {:<24} {:>7} {:>7}  {:<28} {:<20} STREAK",
            "TASK", "RUNS", "FAILS", "LAST", "LAST SUCCESS"
        );
        for t in c["tasks"].as_array().into_iter().flatten() {
            let last = &t["last"];
            let last_s = if last.is_null() {
                "-".to_string()
            } else {
                let outcome = last["outcome"].as_str().unwrap_or("?");
                // As `history` shows it: a signal by its name (the code is 128 + its number).
                let code = match last["exit_code"].as_i64() {
                    // "ok": exit 0, as `history` shows it.
                    _ if outcome == "ok" => String::new(),
                    Some(c) if outcome == "signal" && c > 128 => {
                        format!(" ({})", crate::core::outcome::signal_name((c - 128) as i32))
                    }
                    Some(c) => format!(" ({c})"),
                    None => String::new(),
                };
                format!(
                    "{outcome}{code} {}",
                    json_ms(&last["stop"]).map_or(String::new(), |ms| time_ago(now_ms, ms))
                )
            };
            let success =
                json_ms(&t["last_success"]).map_or("-".to_string(), |ms| time_ago(now_ms, ms));
            let streak = if t["streak"].is_null() {
                "-".to_string()
            } else {
                let since = t["streak"]["since"]
                    .as_str()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or("?".to_string(), |d| short_time(d.as_millis() as u64));
                let n = t["streak"]["failures"].as_u64().unwrap_or(0);
                format!("{n} failure{} since {since}", if n == 1 { "" } else { "s" })
            };
            let _ = writeln!(
                w,
                "  {:<24} {:>7} {:>7}  {:<28} {:<20} {}",
                t["task"].as_str().unwrap_or("?"),
                t["runs"].to_string(),
                t["failures"].to_string(),
                last_s,
                success,
                streak
            );
        }
    }
    Ok(exit::OK)
}

fn run_json(r: &RunRow) -> Value {
    json!({
        "chain": r.chain,
        "task": r.task,
        "run_id": r.run_id,
        "host": r.host,
        "scheduled": opt_time(r.scheduled_ms),
        "start": rfc3339(r.start_ms),
        "stop": opt_time(r.stop_ms),
        "outcome": r.outcome.as_deref().unwrap_or("running"),
        "exit_code": r.exit_code,
        "signal": r.signal,
        "duration_seconds": secs(r.duration_ms),
        "latency_seconds": secs(r.latency_ms),
        "output_bytes": r.output_bytes,
        "output_cut": r.output_cut,
        "error": r.error,
        "instance": {"pid": r.instance_pid, "version": r.version, "config_digest": r.config_digest},
    })
}

/// Whether `task` is known at all: recorded, or defined in the config (if it loads).
fn unknown_task(task: &str, known_in_config: Option<bool>) -> Error {
    let hint = match known_in_config {
        Some(false) => " and it is not defined in the config",
        _ => "",
    };
    Error::Usage(format!("no runs recorded for task {task:?}{hint}"))
}

/// The chains other than `chain` with a recorded run of `task` (run `run_id`, if given).
fn other_chains(
    run_root: &Path,
    conn: Option<&rusqlite::Connection>,
    task: &str,
    chain: &str,
    run_id: Option<u64>,
) -> Result<Vec<String>> {
    let Some(c) = conn else {
        return Ok(Vec::new());
    };
    let found = match run_id {
        Some(id) => store::chains_with_run(c, task, id),
        None => store::chains_of_task(c, task),
    };
    let mut chains = found.map_err(|e| store_error(run_root, e))?;
    chains.retain(|c| c != chain);
    Ok(chains)
}

/// Nothing recorded for `task` (run `run_id`, if given) in `chain`: say so, and name the
/// chains where it is (a mistyped chain showed as an empty history).
fn not_in_chain(task: &str, chain: &str, run_id: Option<u64>, elsewhere: &[String]) -> Error {
    let what = match run_id {
        Some(id) => format!(
            "no run {id} of task {task:?} is kept in chain {chain:?} (never recorded, or pruned)"
        ),
        None => format!("no runs of task {task:?} are recorded in chain {chain:?}"),
    };
    if elsewhere.is_empty() {
        return Error::Usage(what);
    }
    Error::Usage(format!(
        "{what}; {} in chain{} {}",
        if run_id.is_some() {
            "it is recorded"
        } else {
            "it has runs"
        },
        if elsewhere.len() > 1 { "s" } else { "" },
        elsewhere.join(", ")
    ))
}

/// `history TASK [--chain C] [--limit N] [--json]`.
pub(crate) fn history(
    run_root: &Path,
    task: &str,
    chain: Option<&str>,
    limit: usize,
    as_json: bool,
    known_in_config: Option<bool>,
) -> Result<u8> {
    let conn = store::open_read(run_root).map_err(Error::Internal)?;
    let mut rows = match &conn {
        Some(c) => store::history(c, task, chain, limit).map_err(|e| store_error(run_root, e))?,
        None => Vec::new(),
    };
    settle(run_root, &mut rows);
    if let (true, Some(chain)) = (rows.is_empty(), chain) {
        // A task of the config that has not run anywhere yet: an empty history, as without
        // --chain. Runs elsewhere only: the chain is likely mistyped, so say where they are.
        let elsewhere = other_chains(run_root, conn.as_ref(), task, chain, None)?;
        if known_in_config != Some(true) || !elsewhere.is_empty() {
            return Err(not_in_chain(task, chain, None, &elsewhere));
        }
    }
    if rows.is_empty() && known_in_config != Some(true) {
        return Err(unknown_task(task, known_in_config));
    }
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    if as_json {
        let doc: Vec<Value> = rows.iter().map(run_json).collect();
        let _ = writeln!(
            w,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    let _ = writeln!(
        w,
        "{:<24} {:>7}  {:<19}  {:>9}  {:<28} {:>9}",
        "CHAIN", "RUN", "START (UTC)", "DURATION", "OUTCOME", "LATENCY"
    );
    for r in &rows {
        let outcome = match (&r.outcome, r.exit_code, r.signal) {
            (None, _, _) => "running".to_string(),
            (Some(o), Some(c), _) if o != "ok" => format!("{o} (exit {c})"),
            (Some(o), _, Some(s)) => format!("{o} ({})", crate::core::outcome::signal_name(s)),
            (Some(o), _, _) => o.clone(),
        };
        let dur = r.duration_ms.map_or("-".into(), |d| {
            crate::time::fmt_dur(Duration::from_millis(d))
        });
        let lat = r.latency_ms.map_or("-".into(), |d| {
            crate::time::fmt_dur(Duration::from_millis(d))
        });
        let _ = writeln!(
            w,
            "{:<24} {:>7}  {:<19}  {:>9}  {:<28} {:>9}",
            r.chain,
            r.run_id,
            short_time(r.start_ms),
            dur,
            outcome,
            lat
        );
    }
    Ok(exit::OK)
}

/// `log TASK [RUN_ID] [--chain C]`: the kept output, raw.
pub(crate) fn log(
    run_root: &Path,
    task: &str,
    run_id: Option<u64>,
    chain: Option<&str>,
) -> Result<u8> {
    let conn = store::open_read(run_root).map_err(Error::Internal)?;
    let found = match &conn {
        Some(c) => store::output(c, task, chain, run_id).map_err(|e| store_error(run_root, e))?,
        None => None,
    };
    if let (Some(c), Some(id), None) = (&conn, run_id, chain) {
        let chains = store::chains_with_run(c, task, id).map_err(|e| store_error(run_root, e))?;
        if chains.len() > 1 {
            return Err(Error::Usage(format!(
                "run {id} of task {task:?} exists in several chains ({}): pick one with --chain",
                chains.join(", ")
            )));
        }
    }
    let Some((row, bytes)) = found else {
        if let Some(chain) = chain {
            let elsewhere = other_chains(run_root, conn.as_ref(), task, chain, run_id)?;
            return Err(not_in_chain(task, chain, run_id, &elsewhere));
        }
        return Err(Error::Usage(match run_id {
            Some(id) => format!("no run {id} of task {task:?} is recorded"),
            None => format!("no runs recorded for task {task:?}"),
        }));
    };
    if row.output_cut {
        eprintln!(
            "run-chain: showing the last {} of {} bytes of {} run {} (chain {})",
            bytes.len(),
            row.output_bytes,
            row.task,
            row.run_id,
            row.chain
        );
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&bytes);
    let _ = out.flush();
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(chain: &str, run_id: u64, pid: u32, host: &str, outcome: Option<&str>) -> RunRow {
        RunRow {
            chain: chain.into(),
            task: "t".into(),
            run_id,
            host: host.into(),
            scheduled_ms: Some(1_000),
            start_ms: 1_000,
            stop_ms: outcome.map(|_| 2_000),
            outcome: outcome.map(String::from),
            exit_code: None,
            signal: None,
            duration_ms: outcome.map(|_| 1_000),
            latency_ms: None,
            output_bytes: 0,
            output_cut: false,
            error: None,
            instance_pid: pid,
            version: "v".into(),
            config_digest: "d".into(),
        }
    }

    /// An open run reads running only while the instance that recorded it holds its
    /// chain's lock: not when the chain is down, nor when another instance holds it.
    #[test]
    fn an_open_run_of_a_dead_instance_reads_interrupted_with_no_stop() {
        let mut rows = vec![
            row("up", 1, 10, "h", None),
            row("down", 2, 20, "h", None),
            row("taken_over", 3, 30, "h", None),
            row("down", 1, 20, "h", Some("ok")),
            row("down", 3, 21, "other-host", None),
        ];
        let holders = |c: &str| match c {
            "up" => Some(10),
            "taken_over" => Some(31),
            _ => None,
        };
        settle_open_runs(&mut rows, "h", holders);
        type Shown<'a> = (Option<&'a str>, Option<u64>, Option<u64>, Option<&'a str>);
        let shown: Vec<Shown> = rows
            .iter()
            .map(|r| {
                (
                    r.outcome.as_deref(),
                    r.stop_ms,
                    r.duration_ms,
                    r.error.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                (None, None, None, None),
                (Some("interrupted"), None, None, Some(LEFT_OPEN)),
                (Some("interrupted"), None, None, Some(LEFT_OPEN)),
                (Some("ok"), Some(2_000), Some(1_000), None),
                (None, None, None, None),
            ]
        );
    }

    #[test]
    fn times_ago_to_two_units() {
        let now = 1_800_000_000_000;
        for (ago_s, text) in [
            (0, "just now"),
            (42, "42s ago"),
            (60, "1m ago"),
            (192, "3m 12s ago"),
            (7200, "2h ago"),
            (7500, "2h 5m ago"),
            (86400 * 3 + 3600 * 4 + 59, "3d 4h ago"),
            (86400 * 400, "400d ago"),
        ] {
            assert_eq!(time_ago(now, now - ago_s * 1000), text, "{ago_s}s");
        }
        // Under a second, or in the future (clocks of two hosts): just now.
        assert_eq!(time_ago(now, now - 999), "just now");
        assert_eq!(time_ago(now, now + 5000), "just now");
    }
}
