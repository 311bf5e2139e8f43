//! `history TASK [--chain C] [--limit N] [--json]`: the recorded runs of a task, newest
//! first, as [`RunView`]s ([`build`], which reads), shown as a table ([`text`]) or as a
//! JSON array ([`json`]), both pure.

use std::fmt::Write;
use std::path::Path;

use super::runs::{
    not_in_chain, open_reader, other_chains, settle, store_error, unknown_task, RunView, RUNNING,
};
use super::units::{dur, short_time, Secs};
use crate::error::Result;
use crate::store;

/// The runs of `task` (in `chain`, if given), newest first, at most `limit`; open runs of
/// a dead instance settled (see `runs::settle`). `known_in_config`: whether the config, if
/// it loads, defines the task (a defined task that never ran has an empty history; any
/// other task with no run is an error, as is a chain where it never ran).
pub(crate) fn build(
    run_root: &Path,
    task: &str,
    chain: Option<&str>,
    limit: usize,
    known_in_config: Option<bool>,
    fleet: Option<&crate::config::FleetConfig>,
) -> Result<Vec<RunView>> {
    let conn = open_reader(run_root, fleet)?;
    let mut rows = match &conn {
        Some(c) => store::history(c, task, chain, limit).map_err(|e| store_error(run_root, e))?,
        None => Vec::new(),
    };
    settle(run_root, &mut rows);
    if let (true, Some(chain)) = (rows.is_empty(), chain) {
        // A task of the config that has not run anywhere yet: an empty history, as without
        // --chain. Runs elsewhere only: the chain is likely mistyped, so say where they are.
        let elsewhere = other_chains(run_root, conn.as_deref(), task, chain, None)?;
        if known_in_config != Some(true) || !elsewhere.is_empty() {
            return Err(not_in_chain(task, chain, None, &elsewhere));
        }
    }
    if rows.is_empty() && known_in_config != Some(true) {
        return Err(unknown_task(task, known_in_config));
    }
    Ok(rows.into_iter().map(RunView::from).collect())
}

/// `history --json`: the runs as a JSON array, pretty, with a final newline.
pub(crate) fn json(runs: &[RunView]) -> String {
    let mut s = serde_json::to_string_pretty(runs).unwrap_or_default();
    s.push('\n');
    s
}

/// How a run ended, for the table: "ok", "failed (exit 3)", "signal (SIGTERM)", "running".
fn outcome_text(r: &RunView) -> String {
    match (r.outcome.as_str(), r.exit_code, r.signal) {
        (RUNNING, _, _) => RUNNING.to_string(),
        (o, Some(c), _) if o != "ok" => format!("{o} (exit {c})"),
        (o, _, Some(s)) => format!("{o} ({})", crate::core::outcome::signal_name(s)),
        (o, _, _) => o.to_string(),
    }
}

/// Why a run was started, for the table: "schedule", "kick", "manual (alice on pts/3)",
/// "kick (web 127.0.0.1:53422)" (a kick that came with its source).
fn trigger_text(r: &RunView) -> String {
    match &r.requested_by {
        Some(by) => format!("{} ({by})", r.trigger),
        None => r.trigger.clone(),
    }
}

/// `history`: the runs as a table, a header line first (even with no run); with `host`
/// (a fleet: runs are made on several hosts), a HOST column after the chain.
pub(crate) fn text(runs: &[RunView], host: bool) -> String {
    let mut w = String::new();
    let host_col = |h: &str| {
        if host {
            format!("{h:<16} ")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        w,
        "{:<24} {}{:>7}  {:<19}  {:>9}  {:<28} {:>9}  TRIGGER",
        "CHAIN",
        host_col("HOST"),
        "RUN",
        "START (UTC)",
        "DURATION",
        "OUTCOME",
        "LATENCY"
    );
    let opt_dur = |d: Option<Secs>| d.map_or("-".into(), |d| dur(d.0));
    for r in runs {
        let _ = writeln!(
            w,
            "{:<24} {}{:>7}  {:<19}  {:>9}  {:<28} {:>9}  {}",
            r.chain,
            host_col(&r.host),
            r.run_id,
            short_time(r.start),
            opt_dur(r.duration_seconds),
            outcome_text(r),
            opt_dur(r.latency_seconds),
            trigger_text(r)
        );
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::runs::tests::row;

    fn run(outcome: Option<&str>, exit_code: Option<i32>, signal: Option<i32>) -> RunView {
        let mut r = row("nightly", 12, 1, "h", outcome);
        r.start_ms = 1_764_039_481_999;
        r.exit_code = exit_code;
        r.signal = signal;
        r.latency_ms = outcome.map(|_| 250);
        r.duration_ms = outcome.map(|_| 192_500);
        RunView::from(r)
    }

    #[test]
    fn a_fleets_table_names_the_host_of_each_run() {
        let t = text(&[run(Some("ok"), Some(0), None)], true);
        let mut lines = t.lines();
        assert!(
            lines.next().is_some_and(
                |h| h.starts_with(&format!("{:<24} {:<16} {:>7}", "CHAIN", "HOST", "RUN"))
            ),
            "{t}"
        );
        assert!(lines.next().is_some_and(|l| l.starts_with(&format!("{:<24} {:<16} {:>7}", "nightly", "h", 12))), "{t}");
    }

    #[test]
    fn the_table_of_runs() {
        let mut manual = run(Some("queued"), None, None);
        manual.trigger = "manual".into();
        manual.requested_by = Some("alice on pts/3".into());
        manual.latency_seconds = None;
        manual.duration_seconds = None;
        let mut kicked = run(Some("ok"), Some(0), None);
        kicked.trigger = "kick".into();
        let mut kicked_by = kicked.clone();
        kicked_by.requested_by = Some("web 127.0.0.1:53422".into());
        let runs = [
            manual,
            kicked_by,
            kicked,
            run(None, None, None),
            run(Some("ok"), Some(0), None),
            run(Some("failed"), Some(3), None),
            run(Some("signal"), None, Some(15)),
            run(Some("timeout"), Some(143), Some(15)),
            run(Some("spawn-error"), None, None),
        ];
        let want = "\
CHAIN                        RUN  START (UTC)           DURATION  OUTCOME                        LATENCY  TRIGGER
nightly                       12  2025-11-25 02:58:01          -  queued                               -  manual (alice on pts/3)
nightly                       12  2025-11-25 02:58:01     3m 12s  ok                               250ms  kick (web 127.0.0.1:53422)
nightly                       12  2025-11-25 02:58:01     3m 12s  ok                               250ms  kick
nightly                       12  2025-11-25 02:58:01          -  running                              -  schedule
nightly                       12  2025-11-25 02:58:01     3m 12s  ok                               250ms  schedule
nightly                       12  2025-11-25 02:58:01     3m 12s  failed (exit 3)                  250ms  schedule
nightly                       12  2025-11-25 02:58:01     3m 12s  signal (SIGTERM)                 250ms  schedule
nightly                       12  2025-11-25 02:58:01     3m 12s  timeout (exit 143)               250ms  schedule
nightly                       12  2025-11-25 02:58:01     3m 12s  spawn-error                      250ms  schedule
";
        assert_eq!(text(&runs, false), want);
        assert_eq!(
            text(&[], false),
            want.lines().next().unwrap_or_default().to_string() + "\n"
        );
    }

    #[test]
    fn the_json_of_no_runs_and_of_some() {
        assert_eq!(json(&[]), "[]\n");
        let j = json(&[run(Some("ok"), Some(0), None)]);
        assert!(
            j.starts_with("[\n  {\n    \"chain\": \"nightly\",\n"),
            "{j}"
        );
        assert!(j.ends_with("\n  }\n]\n"), "{j}");
        assert!(j.contains("\"trigger\": \"schedule\""), "{j}");
        assert!(
            !j.contains("requested_by"),
            "only for runs that know who asked: {j}"
        );
        let mut m = run(Some("ok"), Some(0), None);
        m.trigger = "manual".into();
        m.requested_by = Some("alice on pts/3".into());
        let j = json(&[m]);
        assert!(j.contains("\"requested_by\": \"alice on pts/3\""), "{j}");
        assert!(j.contains("\"trigger\": \"manual\""), "{j}");
        let mut k = run(Some("ok"), Some(0), None);
        k.trigger = "kick".into();
        k.requested_by = Some("bob (no tty)".into());
        let j = json(&[k]);
        assert!(j.contains("\"requested_by\": \"bob (no tty)\""), "{j}");
    }
}
