//! The web console's pages as typed views: what each page shows, read from RUN_ROOT and
//! the store ([`index`], [`chain`], [`task`], [`run`], [`output`]), rendered as HTML by
//! [`super::html`] and as JSON by the API (`serve::console`).
//!
//! They build on the readers' views: a chain and its tasks are `status`'s [`ChainView`]s, a
//! run is `history`'s [`RunView`]. Task output is kept raw here (bytes): it becomes text
//! only through [`super::clean`], where it is rendered.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::clean::clean_prefix;
use super::runs::{settle, store_error, RunView, RUNNING};
use super::status::{self, ChainView, NowState, StatusView};
use crate::error::{Error, Result};
use crate::store;

use crate::store::pages;
pub(crate) use crate::store::pages::Filter;

/// How many outcomes the strip of `/` shows per chain.
pub(crate) const STRIP: usize = 20;

/// How many runs a page of a task's history shows.
pub(crate) const PAGE: usize = 50;

/// Durations of a task's recent runs (the store's window of the last 100): quantiles, and
/// the series itself (oldest first) for the chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Recent {
    pub(crate) durations_ms: Vec<u64>,
    pub(crate) latencies_ms: Vec<u64>,
}

impl Recent {
    /// The `q` quantile (0 to 1) of the durations, nearest rank; None without runs.
    pub(crate) fn duration_quantile(&self, q: f64) -> Option<u64> {
        quantile(&self.durations_ms, q)
    }
}

/// The `q` quantile of `v`, nearest rank.
pub(crate) fn quantile(v: &[u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = (q * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// `/`: every chain, with its newest outcomes and what was sent about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndexView {
    pub(crate) status: StatusView,
    /// Per chain (in the order of `status.chains`): its newest outcomes, newest first.
    pub(crate) strips: Vec<Vec<RunView>>,
    /// Per chain: alerts sent (decided), all kinds.
    pub(crate) alerts: Vec<u64>,
    /// Per chain and task: the recent window.
    pub(crate) recent: BTreeMap<(String, String), Recent>,
    pub(crate) host: String,
}

/// `/chain/C`: one chain, its tasks' figures, and the running task's output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChainPage {
    pub(crate) chain: ChainView,
    pub(crate) recent: BTreeMap<String, Recent>,
    /// The run going on now and its output so far; when none is, the last run.
    pub(crate) tail: Option<OutputView>,
    pub(crate) host: String,
}

/// `/chain/C/task/T`: one task, its chart, a page of its history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskPage {
    pub(crate) chain: ChainView,
    pub(crate) task: status::TaskView,
    pub(crate) recent: Recent,
    pub(crate) runs: Vec<RunView>,
    /// The `before` of the next (older) page, when there may be one.
    pub(crate) older: Option<u64>,
    pub(crate) before: Option<u64>,
    pub(crate) outcome: Option<String>,
}

/// A run's output, from a byte offset of everything it wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct OutputView {
    pub(crate) run: RunView,
    /// The output from `output_from` to `output_to`, as text (see `view::clean`).
    pub(crate) output: String,
    /// Where `output` starts, in bytes of all the run wrote: the offset asked for, or the
    /// start of what is kept if that is later (`output_skipped` then says so).
    pub(crate) output_from: u64,
    /// Where `output` ends: ask from here for what comes next.
    pub(crate) output_to: u64,
    /// Whether bytes between the offset asked for and `output_from` are no longer kept.
    pub(crate) output_skipped: bool,
    pub(crate) running: bool,
}

/// With a `[store]`: the fleet's config (the pages then show every chain of the fleet,
/// with its owner).
pub(crate) type Fleet<'a> = Option<&'a crate::config::FleetConfig>;

/// This host's name as the pages show it: the fleet's `[store] host` in a fleet (as
/// `status` and the owner lines name hosts), else the machine's hostname.
pub(crate) fn this_host(fleet: Fleet<'_>) -> String {
    fleet.map_or_else(crate::sys::hostname, |f| f.host.clone())
}

fn internal(run_root: &Path) -> impl Fn(String) -> Error + '_ {
    move |e| store_error(run_root, e)
}

/// The recent windows of every series, when the store has them (schema 3).
fn recent_windows(run_root: &Path, fleet: Fleet<'_>) -> Result<BTreeMap<(String, String), Recent>> {
    let mut out = BTreeMap::new();
    let Some(r) = super::runs::open_reader(run_root, fleet)? else {
        return Ok(out);
    };
    if r.schema_version() < 3 {
        return Ok(out);
    }
    for (s, (d, l)) in store::series_with_recent(&r).map_err(|e| store_error(run_root, e))? {
        out.insert(
            (s.chain, s.task),
            Recent {
                durations_ms: d,
                latencies_ms: l,
            },
        );
    }
    Ok(out)
}

/// `/`.
pub(crate) fn index(run_root: &Path, fleet: Fleet<'_>) -> Result<IndexView> {
    let status = status::build_fleet(run_root, fleet)?;
    let conn = super::runs::open_reader(run_root, fleet)?;
    // Every chain's newest runs, settled at once (one reading of the lock holders).
    let mut rows = Vec::new();
    let mut ends = Vec::new();
    for c in &status.chains {
        if let Some(conn) = &conn {
            rows.extend(pages::newest_of_chain(conn, &c.chain, STRIP).map_err(internal(run_root))?);
        }
        ends.push(rows.len());
    }
    settle(run_root, &mut rows);
    let mut rows = rows.into_iter().map(RunView::from);
    let mut start = 0;
    let strips = ends
        .into_iter()
        .map(|end| {
            let strip = rows.by_ref().take(end - start).collect();
            start = end;
            strip
        })
        .collect();
    let mut alerts_by_chain: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(r) = super::runs::open_reader(run_root, fleet)? {
        if r.schema_version() >= 2 {
            for (c, _, _, n) in store::alert_counts(&r).map_err(|e| store_error(run_root, e))? {
                *alerts_by_chain.entry(c).or_default() += n;
            }
        }
    }
    let alerts = status
        .chains
        .iter()
        .map(|c| alerts_by_chain.get(&c.chain).copied().unwrap_or(0))
        .collect();
    Ok(IndexView {
        strips,
        alerts,
        recent: recent_windows(run_root, fleet)?,
        status,
        host: this_host(fleet),
    })
}

/// The chain named `chain` in `status`, or None (a 404).
fn find_chain(run_root: &Path, chain: &str, fleet: Fleet<'_>) -> Result<Option<ChainView>> {
    let v = status::build_fleet(run_root, fleet)?;
    Ok(v.chains.into_iter().find(|c| c.chain == chain))
}

/// Whether RUN_ROOT has `chain` and `chain` has `task`.
pub(crate) fn has_task(run_root: &Path, chain: &str, task: &str, fleet: Fleet<'_>) -> Result<bool> {
    Ok(find_chain(run_root, chain, fleet)?.is_some_and(|c| c.tasks.iter().any(|t| t.task == task)))
}

/// `/chain/C`; None when RUN_ROOT has no such chain.
pub(crate) fn chain(run_root: &Path, chain: &str, fleet: Fleet<'_>) -> Result<Option<ChainPage>> {
    let Some(c) = find_chain(run_root, chain, fleet)? else {
        return Ok(None);
    };
    let recent = recent_windows(run_root, fleet)?
        .into_iter()
        .filter(|((ch, _), _)| ch == chain)
        .map(|((_, t), r)| (t, r))
        .collect();
    // The running task's output; else the last run's, whichever task ran last.
    let last = c
        .tasks
        .iter()
        .filter_map(|t| t.last.as_ref().map(|l| (l.stop, l.run_id, &t.task)))
        .max();
    let tail = match (&c.now.state, &c.now.task, c.now.run_id, last) {
        (NowState::Running, Some(t), Some(id), _) => output(run_root, chain, t, id, None, fleet)?,
        (_, _, _, Some((_, id, t))) => output(run_root, chain, t, id, None, fleet)?,
        _ => None,
    };
    Ok(Some(ChainPage {
        chain: c,
        recent,
        tail,
        host: this_host(fleet),
    }))
}

/// `/chain/C/task/T`: runs below `before` (the newest, when None) with `outcome` (any,
/// when None); None when RUN_ROOT has no such chain or task.
pub(crate) fn task(
    run_root: &Path,
    chain: &str,
    task: &str,
    before: Option<u64>,
    outcome: Option<&str>,
    fleet: Fleet<'_>,
) -> Result<Option<TaskPage>> {
    let Some(c) = find_chain(run_root, chain, fleet)? else {
        return Ok(None);
    };
    let Some(t) = c.tasks.iter().find(|t| t.task == task).cloned() else {
        return Ok(None);
    };
    let (runs, older) = runs(run_root, chain, task, before, outcome, PAGE, fleet)?;
    let recent = recent_windows(run_root, fleet)?
        .remove(&(chain.to_string(), task.to_string()))
        .unwrap_or_default();
    Ok(Some(TaskPage {
        chain: c,
        task: t,
        recent,
        runs,
        older,
        before,
        outcome: outcome.map(str::to_string),
    }))
}

/// A page of the runs of `task` in `chain`: up to `limit` below `before`, newest first, and
/// the `before` of the page after it (None when this one is the last).
pub(crate) fn runs(
    run_root: &Path,
    chain: &str,
    task: &str,
    before: Option<u64>,
    outcome: Option<&str>,
    limit: usize,
    fleet: Fleet<'_>,
) -> Result<(Vec<RunView>, Option<u64>)> {
    let Some(conn) = super::runs::open_reader(run_root, fleet)? else {
        return Ok((Vec::new(), None));
    };
    let filter = outcome.map_or(Filter::All, Filter::Outcome);
    // One more than shown: whether an older page exists, without counting.
    let mut rows = pages::runs_before(&conn, chain, task, before, filter, limit + 1)
        .map_err(internal(run_root))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    settle(run_root, &mut rows);
    let older = if more {
        rows.last().map(|r| r.run_id)
    } else {
        None
    };
    Ok((rows.into_iter().map(RunView::from).collect(), older))
}

/// Run `run_id` of `task` in `chain` with its output from byte `from` (all that is kept,
/// when None); None when there is no such run.
pub(crate) fn output(
    run_root: &Path,
    chain: &str,
    task: &str,
    run_id: u64,
    from: Option<u64>,
    fleet: Fleet<'_>,
) -> Result<Option<OutputView>> {
    let Some((row, raw)) = raw_output(run_root, chain, task, run_id, fleet)? else {
        return Ok(None);
    };
    let mut rows = vec![row];
    settle(run_root, &mut rows);
    let Some(row) = rows.pop() else {
        return Ok(None);
    };
    let run = RunView::from(row);
    Ok(Some(slice_output(run, &raw, from)))
}

/// Run `run_id` with its kept output, raw.
pub(crate) fn raw_output(
    run_root: &Path,
    chain: &str,
    task: &str,
    run_id: u64,
    fleet: Fleet<'_>,
) -> Result<Option<(store::RunRow, Vec<u8>)>> {
    let Some(r) = super::runs::open_reader(run_root, fleet)? else {
        return Ok(None);
    };
    store::output(&r, task, Some(chain), Some(run_id)).map_err(|e| store_error(run_root, e))
}

/// The part of a run's kept output `raw` from byte `from` of all it wrote, as text: the
/// kept bytes are the last `raw.len()` of `run.output_bytes`. A running run's text stops
/// before a sequence or character cut at the end (it is read again, whole, next time).
pub(crate) fn slice_output(run: RunView, raw: &[u8], from: Option<u64>) -> OutputView {
    let total = run.output_bytes.max(raw.len() as u64);
    let kept_from = total - raw.len() as u64;
    let want = from.unwrap_or(kept_from).min(total);
    let start = want.max(kept_from);
    let running = run.outcome == RUNNING;
    let (output, used) = clean_prefix(&raw[(start - kept_from) as usize..], !running);
    OutputView {
        output,
        output_from: start,
        output_to: start + used as u64,
        output_skipped: start > want,
        running,
        run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::runs::tests::row;

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.95), Some(7));
        let v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.95), Some(95));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2));
    }

    fn run(outcome: Option<&str>, bytes: u64) -> RunView {
        let mut r = row("c", 3, 1, "h", outcome);
        r.output_bytes = bytes;
        RunView::from(r)
    }

    #[test]
    fn output_from_an_offset_of_what_was_kept() {
        // 10 bytes written, the last 6 kept.
        let raw = b"456789";
        let all = slice_output(run(Some("ok"), 10), raw, None);
        assert_eq!(
            (all.output.as_str(), all.output_from, all.output_to),
            ("456789", 4, 10)
        );
        assert!(!all.output_skipped && !all.running);
        let tail = slice_output(run(Some("ok"), 10), raw, Some(7));
        assert_eq!((tail.output.as_str(), tail.output_from), ("789", 7));
        let gone = slice_output(run(Some("ok"), 10), raw, Some(1));
        assert_eq!((gone.output.as_str(), gone.output_from), ("456789", 4));
        assert!(gone.output_skipped);
        let past = slice_output(run(Some("ok"), 10), raw, Some(99));
        assert_eq!(
            (past.output.as_str(), past.output_from, past.output_to),
            ("", 10, 10)
        );
    }

    #[test]
    fn a_running_runs_output_stops_before_a_cut_sequence() {
        let raw = b"ab\x1b[3";
        let v = slice_output(run(None, 5), raw, Some(0));
        assert!(v.running);
        assert_eq!((v.output.as_str(), v.output_to), ("ab", 2));
        let v = slice_output(run(Some("ok"), 5), raw, Some(0));
        assert_eq!((v.output.as_str(), v.output_to), ("ab", 5));
    }
}
