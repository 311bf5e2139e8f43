//! `log TASK [RUN_ID] [--chain C]`: the kept output of a run, raw ([`LogView`]: the run and
//! its output, from [`build`]); when only its tail was kept, a [`LogView::notice`] says so.

use std::path::Path;

use super::runs::{not_in_chain, open_reader, other_chains, store_error, RunView};
use crate::error::{Error, Result};
use crate::store;

/// One run and the output kept of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogView {
    pub(crate) run: RunView,
    /// The kept output, as the task wrote it (the tail, when `run.output_cut`).
    pub(crate) output: Vec<u8>,
}

/// Run `run_id` of `task` (default: its latest, even one still running), in `chain` if
/// given. Without `--chain`, a run id recorded in several chains is refused (which one?);
/// nothing found names the chains where the task or run is.
pub(crate) fn build(
    run_root: &Path,
    task: &str,
    run_id: Option<u64>,
    chain: Option<&str>,
    fleet: Option<&crate::config::FleetConfig>,
) -> Result<LogView> {
    let conn = open_reader(run_root, fleet)?;
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
    let Some((row, output)) = found else {
        if let Some(chain) = chain {
            let elsewhere = other_chains(run_root, conn.as_deref(), task, chain, run_id)?;
            return Err(not_in_chain(task, chain, run_id, &elsewhere));
        }
        return Err(Error::Usage(match run_id {
            Some(id) => format!("no run {id} of task {task:?} is recorded"),
            None => format!("no runs recorded for task {task:?}"),
        }));
    };
    Ok(LogView {
        run: RunView::from(row),
        output,
    })
}

impl LogView {
    /// For stderr, when only the tail of the output was kept: how much of how much.
    pub(crate) fn notice(&self) -> Option<String> {
        let r = &self.run;
        r.output_cut.then(|| {
            format!(
                "showing the last {} of {} bytes of {} run {} (chain {})",
                self.output.len(),
                r.output_bytes,
                r.task,
                r.run_id,
                r.chain
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::runs::tests::row;

    #[test]
    fn a_cut_output_says_how_much_was_kept() {
        let mut r = row("nightly", 4, 1, "h", Some("ok"));
        r.output_bytes = 1000;
        let mut v = LogView {
            run: RunView::from(r),
            output: b"tail\n".to_vec(),
        };
        assert_eq!(v.notice(), None);
        v.run.output_cut = true;
        assert_eq!(
            v.notice().as_deref(),
            Some("showing the last 5 of 1000 bytes of t run 4 (chain nightly)")
        );
    }
}
