//! What `history` and `log` share: a run as shown ([`RunView`], the JSON of one run),
//! runs left open by a dead instance, and the errors for a task or run not found.
//!
//! A run is shown `running` only while the instance that recorded it holds its chain's
//! lock: one left open by an instance that died reads `interrupted` with no stop until its
//! guardian or the next launch records its end (see [`settle_open_runs`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use serde::Serialize;

use super::units::{Secs, Wall};
use crate::error::{Error, Result};
use crate::lock::holders::holders;
use crate::store::{self, RunRow};

/// One recorded run, as `history --json` shows it (one element of its array).
///
/// The fields are in the order of the JSON's keys (alphabetical, as it has always been
/// printed): the derived `Serialize` writes them in declaration order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RunView {
    pub(crate) chain: String,
    pub(crate) duration_seconds: Option<Secs>,
    pub(crate) error: Option<String>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) host: String,
    pub(crate) instance: InstanceView,
    pub(crate) latency_seconds: Option<Secs>,
    /// `ok`, `failed`, `timeout`, `signal`, `spawn-error`, `interrupted`, or `running`
    /// for a run with no outcome yet, `queued` for a run-now run not started yet.
    pub(crate) outcome: String,
    pub(crate) output_bytes: u64,
    pub(crate) output_cut: bool,
    /// Who asked for a manual run (`run-now`) or a kicked one (`kick` from the CLI or the
    /// console): only for those (a kick by `kill -USR1` has no source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) requested_by: Option<String>,
    pub(crate) run_id: u64,
    pub(crate) scheduled: Option<Wall>,
    pub(crate) signal: Option<i32>,
    pub(crate) start: Wall,
    pub(crate) stop: Option<Wall>,
    pub(crate) task: String,
    /// Why the run was started: `schedule`, `kick` or `manual`.
    pub(crate) trigger: String,
}

/// The instance of run-chain that recorded a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct InstanceView {
    pub(crate) config_digest: String,
    pub(crate) pid: u32,
    pub(crate) version: String,
}

/// The outcome a run without one shows.
pub(crate) const RUNNING: &str = "running";

/// The outcome of a run-now run reserved and not started yet (the store writes it).
pub(crate) const QUEUED: &str = "queued";

impl From<RunRow> for RunView {
    fn from(r: RunRow) -> Self {
        RunView {
            chain: r.chain,
            duration_seconds: r.duration_ms.map(Secs),
            error: r.error,
            exit_code: r.exit_code,
            host: r.host,
            instance: InstanceView {
                config_digest: r.config_digest,
                pid: r.instance_pid,
                version: r.version,
            },
            latency_seconds: r.latency_ms.map(Secs),
            outcome: r.outcome.unwrap_or_else(|| RUNNING.to_string()),
            output_bytes: r.output_bytes,
            output_cut: r.output_cut,
            requested_by: r.requested_by,
            run_id: r.run_id,
            scheduled: r.scheduled_ms.map(Wall),
            signal: r.signal,
            start: Wall(r.start_ms),
            stop: r.stop_ms.map(Wall),
            task: r.task,
            trigger: r.trigger,
        }
    }
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
pub(crate) fn settle_open_runs(
    rows: &mut [RunRow],
    host: &str,
    holder: impl Fn(&str) -> Option<i32>,
) {
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
pub(crate) fn settle(run_root: &Path, rows: &mut [RunRow]) {
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

/// A reader opened once and shared by every read of one command or console request.
type Shared = Option<Rc<store::Reader>>;

thread_local! {
    /// Inside [`one_reader`]: the reader opened by its first [`open_reader`], if any yet.
    static SHARED: RefCell<Option<Option<Shared>>> = const { RefCell::new(None) };
}

/// Whether this thread is inside [`one_reader`] (its reads share one reader).
pub(crate) fn reader_shared() -> bool {
    SHARED.with(|s| s.borrow().is_some())
}

/// Run `f` (one command, one console request) with one reader: the first [`open_reader`]
/// within it opens the store (one connection to the fleet's store), the others reuse it;
/// it is closed when `f` returns. Not nested: an inner call shares the outer's reader.
pub(crate) fn one_reader<T>(f: impl FnOnce() -> T) -> T {
    let outer = SHARED.with(|s| s.borrow().is_some());
    if outer {
        return f();
    }
    /// Closes the shared reader when the scope ends, even by a panic (a console
    /// request's panic must not leave its reader to the thread's next request).
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            SHARED.with(|s| *s.borrow_mut() = None);
        }
    }
    SHARED.with(|s| *s.borrow_mut() = Some(None));
    let _close = Close;
    f()
}

/// The store the readers read: with a `[store]` whose schema keeps the records, the
/// fleet's (connected from this thread, with a short timeout); else RUN_ROOT's SQLite file
/// (None: no store yet). Inside [`one_reader`], opened once and shared.
pub(crate) fn open_reader(
    run_root: &Path,
    fleet: Option<&crate::config::FleetConfig>,
) -> Result<Shared> {
    if let Some(Some(r)) = SHARED.with(|s| s.borrow().clone()) {
        return Ok(r);
    }
    let r = open_reader_now(run_root, fleet)?.map(Rc::new);
    SHARED.with(|s| {
        if let Some(slot) = s.borrow_mut().as_mut() {
            *slot = Some(r.clone());
        }
    });
    Ok(r)
}

fn open_reader_now(
    run_root: &Path,
    fleet: Option<&crate::config::FleetConfig>,
) -> Result<Option<store::Reader>> {
    if let Some(cfg) = fleet {
        if let Some(r) = store::open_fleet_read(cfg).map_err(fleet_error)? {
            return Ok(Some(r));
        }
    }
    store::open_read(run_root).map_err(Error::Internal)
}

/// The fleet's store could not be read: a database that refuses us (password, not
/// run-chain's) is a config error (78); one that does not answer an internal error (70),
/// as a store that cannot be read. The message names the URL without its secret.
pub(crate) fn fleet_error(e: crate::store::pg::conn::ConnError) -> Error {
    use crate::store::pg::conn::ConnError;
    match e {
        ConnError::Refused(m) => Error::Config(format!("[store]: {m}")),
        ConnError::Unreachable(m) => Error::Internal(format!("cannot read the fleet's store: {m}")),
    }
}

pub(crate) fn store_error(run_root: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!(
        "failed to read the store {}: {e}",
        store::path(run_root).display()
    ))
}

/// No run of `task` is recorded anywhere (`known_in_config`: whether the config, if it
/// loads, defines it).
pub(crate) fn unknown_task(task: &str, known_in_config: Option<bool>) -> Error {
    let hint = match known_in_config {
        Some(false) => " and it is not defined in the config",
        _ => "",
    };
    Error::Usage(format!("no runs recorded for task {task:?}{hint}"))
}

/// The chains other than `chain` with a recorded run of `task` (run `run_id`, if given).
pub(crate) fn other_chains(
    run_root: &Path,
    conn: Option<&store::Reader>,
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
pub(crate) fn not_in_chain(
    task: &str,
    chain: &str,
    run_id: Option<u64>,
    elsewhere: &[String],
) -> Error {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(
        chain: &str,
        run_id: u64,
        pid: u32,
        host: &str,
        outcome: Option<&str>,
    ) -> RunRow {
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
            trigger: "schedule".into(),
            requested_by: None,
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

    /// The JSON of a run: every key, always, in the order `history --json` has printed
    /// them (alphabetical), nulls included; a run with no outcome reads `running`.
    #[test]
    fn a_run_as_json() {
        let mut r = row("c", 7, 42, "h", None);
        r.latency_ms = Some(1_250);
        r.output_bytes = 12;
        let v = RunView::from(r);
        let want = r#"{
  "chain": "c",
  "duration_seconds": null,
  "error": null,
  "exit_code": null,
  "host": "h",
  "instance": {
    "config_digest": "d",
    "pid": 42,
    "version": "v"
  },
  "latency_seconds": 1.25,
  "outcome": "running",
  "output_bytes": 12,
  "output_cut": false,
  "run_id": 7,
  "scheduled": "1970-01-01T00:00:01.000Z",
  "signal": null,
  "start": "1970-01-01T00:00:01.000Z",
  "stop": null,
  "task": "t",
  "trigger": "schedule"
}"#;
        assert_eq!(serde_json::to_string_pretty(&v).unwrap_or_default(), want);
        let mut r = row("c", 8, 42, "h", Some("signal"));
        r.signal = Some(15);
        r.exit_code = Some(143);
        r.error = Some("boom".into());
        let v = RunView::from(r);
        let json = serde_json::to_string(&v).unwrap_or_default();
        assert!(
            json.contains(r#""duration_seconds":1.0,"error":"boom","exit_code":143"#),
            "{json}"
        );
        assert!(
            json.contains(r#""outcome":"signal","#) && json.contains(r#""signal":15,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""stop":"1970-01-01T00:00:02.000Z","#),
            "{json}"
        );
    }
}
