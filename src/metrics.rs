//! Prometheus text exposition of every chain in a RUN_ROOT.
//!
//! [`render`] is pure: it formats a [`Snapshot`] (aggregates, a bounded window of
//! recent runs per task, alert counts, which chains are up). [`collect`] reads the
//! snapshot: pidfiles and `/proc/locks` for `up`, and the `series` aggregates, kept up
//! to date as runs are recorded (so counters never fall when runs are pruned), with the
//! durations and latencies of the newest [`RECENT`] runs packed in the same row for the
//! quantiles. A scrape reads one row per task: its cost never grows with the history.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use crate::alert::Kind;
use crate::store::{self, SeriesRow};

/// Quantiles are taken over at most this many recent runs of each task.
pub const RECENT: usize = store::RECENT_WINDOW;

const QUANTILES: [f64; 5] = [0.01, 0.1, 0.5, 0.9, 0.99];

/// What one scrape shows.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// chain -> up (by its lock)
    pub chains: BTreeMap<String, bool>,
    pub series: Vec<SeriesRow>,
    /// (chain, task) -> (durations ms, latencies ms) of recent runs
    pub recent: HashMap<(String, String), store::Recent>,
    /// (chain, task, kind) -> count
    pub alerts: Vec<(String, String, String, u64)>,
}

/// Read the snapshot of `run_root`.
pub fn collect(run_root: &Path) -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    if let Ok(names) = crate::report::chains(run_root) {
        let mut locks = crate::pidfile::Locks::default();
        for c in names {
            let up = crate::pidfile::PidFile::open_existing(run_root, &c)
                .ok()
                .flatten()
                .and_then(|pf| pf.holder_in(&mut locks))
                .is_some();
            snap.chains.insert(c, up);
        }
    }
    let Some(conn) = store::open_read(run_root)? else {
        return Ok(snap);
    };
    let err =
        |e: rusqlite::Error| format!("failed to read {}: {e}", store::path(run_root).display());
    snap.series = store::series(&conn).map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version >= 2 {
        snap.alerts = store::alert_counts(&conn).map_err(err)?;
    }
    if version >= 3 {
        snap.recent = store::recent(&conn).map_err(err)?;
    }
    for s in &snap.series {
        snap.chains.entry(s.chain.clone()).or_insert(false);
    }
    Ok(snap)
}

/// Escape a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(chain: &str, task: &str) -> String {
    format!("chain=\"{}\",task=\"{}\"", esc(chain), esc(task))
}

/// A quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn secs(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    format!("{s}")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }
    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The text exposition of `snap`; `scrape_seconds` is how long collecting took.
pub fn render(snap: &Snapshot, scrape_seconds: Option<f64>) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };

    f.head(
        "run_chain_build_info",
        "gauge",
        "run-chain's version (always 1).",
    );
    f.line(
        "run_chain_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );

    f.head(
        "run_chain_up",
        "gauge",
        "Whether the chain's process runs (holds its lock).",
    );
    for (c, up) in &snap.chains {
        f.line(
            "run_chain_up",
            &format!("chain=\"{}\"", esc(c)),
            u8::from(*up),
        );
    }

    f.head(
        "run_chain_runs_total",
        "counter",
        "Runs by result (ok, failed, timeout, signal, spawn-error, interrupted).",
    );
    for s in &snap.series {
        let l = labels(&s.chain, &s.task);
        for (result, n) in [
            ("ok", s.ok),
            ("failed", s.failed),
            ("timeout", s.timeout),
            ("signal", s.signal),
            ("spawn-error", s.spawn_error),
            ("interrupted", s.interrupted),
        ] {
            f.line(
                "run_chain_runs_total",
                &format!("{l},result=\"{result}\""),
                n,
            );
        }
    }

    for (name, help, sum_of, pick) in [
        (
            "run_chain_run_duration_seconds",
            "Run duration: quantiles over recent runs, sum and count over all runs.",
            0usize,
            0usize,
        ),
        (
            "run_chain_run_latency_seconds",
            "Start latency (actual start minus scheduled start, including any wait for a group): quantiles over recent runs, sum and count over all runs.",
            1,
            1,
        ),
    ] {
        f.head(name, "summary", help);
        for s in &snap.series {
            let l = labels(&s.chain, &s.task);
            if let Some((d, lat)) = snap.recent.get(&(s.chain.clone(), s.task.clone())) {
                let mut v = if pick == 0 { d.clone() } else { lat.clone() };
                v.sort_unstable();
                for q in QUANTILES {
                    if let Some(x) = quantile(&v, q) {
                        f.line(name, &format!("{l},quantile=\"{q}\""), secs(x));
                    }
                }
            }
            let sum = if sum_of == 0 {
                s.duration_sum_ms
            } else {
                s.latency_sum_ms
            };
            f.line(&format!("{name}_sum"), &l, secs(sum));
            f.line(&format!("{name}_count"), &l, s.runs);
        }
    }

    f.head(
        "run_chain_last_exit_code",
        "gauge",
        "Exit code of the last run (128 + signal for a signalled run, 127 for a spawn error).",
    );
    for s in &snap.series {
        let code = match s.last_outcome.as_deref() {
            Some("spawn-error") => Some(127),
            _ => s.last_exit_code,
        };
        if let Some(c) = code {
            f.line("run_chain_last_exit_code", &labels(&s.chain, &s.task), c);
        }
    }

    for (name, help, get) in [
        (
            "run_chain_last_scheduled_time_seconds",
            "When the last run was due (Unix time).",
            (|s: &SeriesRow| s.last_scheduled_ms) as fn(&SeriesRow) -> Option<u64>,
        ),
        (
            "run_chain_last_start_time_seconds",
            "When the last run started (Unix time).",
            |s: &SeriesRow| s.last_start_ms,
        ),
        (
            "run_chain_last_stop_time_seconds",
            "When the last run ended (Unix time).",
            |s: &SeriesRow| s.last_stop_ms,
        ),
        (
            "run_chain_last_success_time_seconds",
            "When the last successful run ended (Unix time).",
            |s: &SeriesRow| s.last_success_ms,
        ),
        (
            "run_chain_streak_start_time_seconds",
            "When the current failure streak began (Unix time); absent when the last run succeeded.",
            |s: &SeriesRow| s.streak_start_ms,
        ),
        (
            "run_chain_running_start_time_seconds",
            "When the run in progress started (Unix time); absent when none runs.",
            |s: &SeriesRow| s.running_since_ms,
        ),
    ] {
        f.head(name, "gauge", help);
        for s in &snap.series {
            // A run left "in progress" by a chain that is down (it crashed) is not running.
            let up = snap.chains.get(&s.chain).copied().unwrap_or(false);
            if name == "run_chain_running_start_time_seconds" && !up {
                continue;
            }
            if let Some(ms) = get(s) {
                f.line(name, &labels(&s.chain, &s.task), secs(ms));
            }
        }
    }

    f.head(
        "run_chain_consecutive_failures",
        "gauge",
        "Failures since the last success.",
    );
    for s in &snap.series {
        f.line(
            "run_chain_consecutive_failures",
            &labels(&s.chain, &s.task),
            s.streak_failures,
        );
    }

    f.head(
        "run_chain_running",
        "gauge",
        "Whether a run of the task is in progress.",
    );
    for s in &snap.series {
        let up = snap.chains.get(&s.chain).copied().unwrap_or(false);
        f.line(
            "run_chain_running",
            &labels(&s.chain, &s.task),
            u8::from(up && s.running_run_id.is_some()),
        );
    }

    f.head(
        "run_chain_alerts_total",
        "counter",
        "Alerts decided and queued for delivery, by kind (first-failure, new-failure, downtime, recovered).",
    );
    let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for s in &snap.series {
        for k in Kind::all() {
            counts.insert((s.chain.clone(), s.task.clone(), k.as_str().to_string()), 0);
        }
    }
    for (c, t, k, n) in &snap.alerts {
        counts.insert((c.clone(), t.clone(), k.clone()), *n);
    }
    for ((c, t, k), n) in &counts {
        f.line(
            "run_chain_alerts_total",
            &format!("{},kind=\"{}\"", labels(c, t), esc(k)),
            n,
        );
    }

    if let Some(sec) = scrape_seconds {
        f.head(
            "run_chain_scrape_duration_seconds",
            "gauge",
            "How long reading the store for this scrape took.",
        );
        f.line("run_chain_scrape_duration_seconds", "", sec);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 0.01), Some(1));
        assert_eq!(quantile(&[7], 0.9), Some(7));
        assert_eq!(quantile(&[], 0.9), None);
    }

    #[test]
    fn renders_families_with_help_and_type() {
        let mut snap = Snapshot::default();
        snap.chains.insert("c".into(), true);
        snap.series.push(SeriesRow {
            chain: "c".into(),
            task: "t\"x".into(),
            runs: 3,
            ok: 2,
            failed: 1,
            duration_sum_ms: 1500,
            last_exit_code: Some(137),
            last_outcome: Some("signal".into()),
            running_run_id: Some(4),
            running_since_ms: Some(1_000),
            ..SeriesRow::default()
        });
        snap.recent
            .insert(("c".into(), "t\"x".into()), (vec![500, 1000], vec![1, 2]));
        snap.alerts
            .push(("c".into(), "t\"x".into(), "downtime".into(), 2));
        let text = render(&snap, Some(0.001));
        assert!(text.contains("run_chain_up{chain=\"c\"} 1"));
        assert!(text.contains("run_chain_runs_total{chain=\"c\",task=\"t\\\"x\",result=\"ok\"} 2"));
        assert!(
            text.contains("run_chain_run_duration_seconds_count{chain=\"c\",task=\"t\\\"x\"} 3")
        );
        assert!(text.contains(
            "run_chain_run_duration_seconds{chain=\"c\",task=\"t\\\"x\",quantile=\"0.5\"} 0.5"
        ));
        assert!(text.contains("run_chain_last_exit_code{chain=\"c\",task=\"t\\\"x\"} 137"));
        assert!(text
            .contains("run_chain_alerts_total{chain=\"c\",task=\"t\\\"x\",kind=\"downtime\"} 2"));
        assert!(text.contains("run_chain_running{chain=\"c\",task=\"t\\\"x\"} 1"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).expect("name");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}
