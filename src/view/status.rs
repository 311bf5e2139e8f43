//! `status [--json]`: every chain in RUN_ROOT, up or down, what it does now, and per task
//! its counts, last run, last success and failure streak.
//!
//! [`build`] reads (the chains' pidfiles and lock holders, `CHAIN.state`, the store's
//! aggregates) into a [`StatusView`]; [`json`] and [`text`] render it, purely (the text is
//! given `now` for its "3m ago"). The views' fields are named and ordered as the JSON's
//! keys (alphabetical, as it has always been printed), and every key is always there, null
//! when it does not apply: a stable shape.
//!
//! Whether a chain is up is decided by `/proc/locks`, never by taking its lock. A chain
//! whose lock holder has not yet written its own `CHAIN.state` reads `starting` (see
//! [`written_by_another_instance`]), so that a dead instance's run does not show as what
//! the chain does now.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::runs::store_error;
use super::units::{ago, dur, short_time, time_ago, Secs, Wall};
use crate::core::resume;
use crate::error::{Error, Result};
use crate::lock::fleet::standing;
use crate::lock::holders::{chains, holders};
use crate::store::pg::reader::{FleetRows, LeaseRow};
use crate::store::state_file;
use crate::store::{self, SeriesRow};

/// Every chain of a RUN_ROOT.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StatusView {
    pub(crate) chains: Vec<ChainView>,
    /// RUN_ROOT, absolute (a reader of the JSON may run elsewhere than the command did).
    pub(crate) run_root: String,
    /// RUN_ROOT as it was given, for the text.
    #[serde(skip)]
    pub(crate) run_root_given: String,
}

/// One chain: its lock holder, what it does now, its tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ChainView {
    pub(crate) chain: String,
    /// With a `[store]` (the fleet): this host's instance's role and who holds the lease.
    /// Left out of the JSON without one, so that the shape without `[store]` is the one
    /// it has always been (tests/views.rs pins it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fleet: Option<FleetView>,
    pub(crate) now: NowView,
    /// The lock holder's PID, while the chain is up.
    pub(crate) pid: Option<i32>,
    /// A `run-now` request accepted and not started yet (kept in CHAIN.state: a chain
    /// that is down runs it first when it next starts).
    pub(crate) queued: Option<QueuedView>,
    pub(crate) tasks: Vec<TaskView>,
    pub(crate) up: bool,
}

/// A fleet chain's instance on this host: `owner` or `standby`, and the lease's holder
/// (host, epoch); `error`: why a standby cannot use the database, if it cannot.
///
/// Read from the fleet's store (`status` with `[store]`): `expires` (the lease's expiry,
/// the database's clock), `failovers` and `fenced_writes` (the lease's counters, null
/// where the schema has none), `standbys` (instances seen within the last lease), and
/// `role` `none` for a chain with no instance on this host; `host` and `epoch` are then
/// the lease row's (null when no host holds an unexpired lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FleetView {
    pub(crate) epoch: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) expires: Option<Wall>,
    pub(crate) failovers: Option<u64>,
    pub(crate) fenced_writes: Option<u64>,
    pub(crate) host: Option<String>,
    pub(crate) role: String,
    pub(crate) standbys: Vec<StandbyView>,
}

/// A standby instance of a fleet chain: its host and when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StandbyView {
    pub(crate) host: String,
    pub(crate) seen: Wall,
}

/// A pending `run-now`: the task, the run id reserved for it, who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct QueuedView {
    pub(crate) requested_by: String,
    pub(crate) run_id: u64,
    pub(crate) task: String,
}

/// What a chain does now. Which fields are set depends on `state`:
/// running: task, run_id, since, group (if the task has one); waiting for a slot of
/// `group`: task, since; cooldown: task (the next), until (when it is due).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NowView {
    pub(crate) group: Option<String>,
    pub(crate) run_id: Option<u64>,
    pub(crate) since: Option<Wall>,
    pub(crate) state: NowState,
    pub(crate) task: Option<String>,
    pub(crate) until: Option<Wall>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NowState {
    /// No instance holds the chain's lock.
    Down,
    /// An instance holds the lock but has not written its state yet.
    Starting,
    Running,
    /// Waiting for a slot of a concurrency group.
    Waiting,
    /// Between two runs.
    Cooldown,
    /// A fleet chain whose instance here waits: another host holds the lease.
    Standby,
    /// A fleet chain that runs on another host, which does not tell what it does now
    /// (its state is not in the fleet's store).
    Elsewhere,
}

impl NowView {
    fn only(state: NowState) -> Self {
        NowView {
            group: None,
            run_id: None,
            since: None,
            state,
            task: None,
            until: None,
        }
    }
}

/// One task of a chain: its counts (from the store's aggregates), its last run, its last
/// success and its failure streak (from `CHAIN.state` when it has them: they are carried
/// over by a relaunch; else from the store).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TaskView {
    /// Runs that failed, timed out, were killed by a signal or could not start.
    pub(crate) failures: u64,
    pub(crate) interrupted: u64,
    pub(crate) last: Option<LastView>,
    pub(crate) last_success: Option<Wall>,
    pub(crate) ok: u64,
    /// Finished runs.
    pub(crate) runs: u64,
    pub(crate) streak: Option<StreakView>,
    pub(crate) task: String,
}

/// A task's last finished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct LastView {
    pub(crate) duration_seconds: Option<Secs>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) outcome: Option<String>,
    pub(crate) run_id: u64,
    pub(crate) start: Option<Wall>,
    pub(crate) stop: Option<Wall>,
}

/// Failures in a row, since the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct StreakView {
    pub(crate) failures: u64,
    pub(crate) since: Wall,
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
    if g <= 1 {
        return false;
    }
    // One read of the guardian's /proc/PID/stat for both fields (status does this for
    // every chain that is up).
    let Some(stat) = crate::sys::proc_stat(g) else {
        return false;
    };
    if stat.start_time != Some(start) {
        return false;
    }
    stat.ppid.is_some_and(|p| p != holder)
}

/// The status of every chain in `run_root` (none when it does not exist yet).
pub(crate) fn build(run_root: &Path) -> Result<StatusView> {
    let conn = store::open_read(run_root).map_err(Error::Internal)?;
    let series = read_series(run_root, conn.as_ref())?;
    build_with(run_root, &series)
}

/// The aggregates `conn` has (none without a store).
fn read_series(run_root: &Path, conn: Option<&store::Reader>) -> Result<Vec<SeriesRow>> {
    match conn {
        Some(c) => store::series(c).map_err(|e| store_error(run_root, e)),
        None => Ok(Vec::new()),
    }
}

/// What this host knows of one chain of its RUN_ROOT: its lock holder, its `CHAIN.state`
/// (and whether another instance than the holder wrote it), its instance's fleet facts.
struct Local {
    chain: String,
    holder: Option<i32>,
    st: resume::State,
    another: bool,
    standing: Option<standing::Standing>,
}

/// Chains of RUN_ROOT per thread when its chains are read in parallel ([`local_facts`]).
const LOCAL_PER_THREAD: usize = 32;

/// Read RUN_ROOT's chains (pidfiles, locks, states, fleet files): no store. Many chains
/// are read in parallel (up to the CPUs there are, 4 at most): the reads are system calls
/// on /proc and small files, one chain independent of another.
fn local_facts(run_root: &Path) -> Result<Vec<Local>> {
    let names = if run_root.exists() {
        chains(run_root)?
    } else {
        Vec::new()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(4)
        .min(names.len() / LOCAL_PER_THREAD)
        .max(1);
    if threads == 1 {
        return Ok(facts_of(run_root, &names));
    }
    let per = names.len().div_ceil(threads);
    Ok(std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(per)
            .map(|part| {
                let h = std::thread::Builder::new()
                    .name("status-local".into())
                    .spawn_scoped(s, move || facts_of(run_root, part));
                (part, h)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(part, h)| {
                // A part whose thread could not be made (or failed) is read here.
                h.ok()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_else(|| facts_of(run_root, part))
            })
            .collect()
    }))
}

/// [`local_facts`] of the chains `names` (in this order).
fn facts_of(run_root: &Path, names: &[String]) -> Vec<Local> {
    let up = holders(run_root, names);
    names
        .iter()
        .zip(up)
        .map(|(chain, holder)| {
            let st = state_file::load(&state_file::path(run_root, chain)).unwrap_or_default();
            let another = holder.is_some_and(|pid| written_by_another_instance(&st, pid));
            let standing = holder.and_then(|pid| standing::read(run_root, chain, pid));
            Local {
                chain: chain.clone(),
                holder,
                st,
                another,
                standing,
            }
        })
        .collect()
}

/// The status of every chain in `run_root`, with the aggregates `series`.
fn build_with(run_root: &Path, series: &[SeriesRow]) -> Result<StatusView> {
    Ok(assemble(run_root, local_facts(run_root)?, series))
}

/// The status of RUN_ROOT's chains `local`, with the aggregates `series` (pure).
fn assemble(run_root: &Path, local: Vec<Local>, series: &[SeriesRow]) -> StatusView {
    let mut by_chain: BTreeMap<&str, Vec<&SeriesRow>> = BTreeMap::new();
    for s in series {
        by_chain.entry(s.chain.as_str()).or_default().push(s);
    }
    let chains = local
        .into_iter()
        .map(|l| {
            let Local {
                chain,
                holder,
                st,
                another,
                standing,
            } = l;
            let rows = by_chain.get(chain.as_str()).map_or(&[][..], Vec::as_slice);
            let mut v = chain_view(&chain, holder, &st, another, rows);
            if let Some(f) = standing {
                if !f.owner {
                    v.now = NowView::only(NowState::Standby);
                }
                v.fleet = Some(FleetView {
                    epoch: f.epoch,
                    error: f.error,
                    expires: None,
                    failovers: None,
                    fenced_writes: None,
                    host: f.host,
                    role: if f.owner { "owner" } else { "standby" }.to_string(),
                    standbys: Vec::new(),
                });
            }
            v
        })
        .collect();
    let root = std::path::absolute(run_root).unwrap_or_else(|_| run_root.to_path_buf());
    StatusView {
        chains,
        run_root: root.display().to_string(),
        run_root_given: run_root.display().to_string(),
    }
}

/// The status of `run_root`, and with a `[store]` every chain of the fleet ([`merge_fleet`]).
pub(crate) fn build_fleet(
    run_root: &Path,
    fleet: Option<&crate::config::FleetConfig>,
) -> Result<StatusView> {
    let Some(cfg) = fleet else {
        return build(run_root);
    };
    if super::runs::reader_shared() {
        // A console request: its one reader (and connection), shared with its other reads.
        let conn = super::runs::open_reader(run_root, Some(cfg))?;
        let (series, rows) = store_reads(run_root, cfg, conn.as_deref())?;
        let mut v = build_with(run_root, &series)?;
        merge_fleet(&mut v, &rows, &series);
        return Ok(v);
    }
    // The fleet's store is read on a thread of its own while this one reads RUN_ROOT: the
    // connect (TCP, SCRAM, a server process to start) and the query mostly wait for the
    // server, the local reads (pidfiles, /proc, states) mostly work; the call costs the
    // longer of the two, not their sum.
    let (remote, local) = std::thread::scope(|s| {
        let remote = std::thread::Builder::new()
            .name("status-store".into())
            .spawn_scoped(s, || own_store_reads(run_root, cfg));
        let local = local_facts(run_root);
        let remote = match remote {
            Ok(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the fleet's store reader failed".into()))),
            // No thread: read here.
            Err(_) => own_store_reads(run_root, cfg),
        };
        (remote, local)
    });
    let (series, rows) = remote?;
    let mut v = assemble(run_root, local?, &series);
    merge_fleet(&mut v, &rows, &series);
    Ok(v)
}

/// [`store_reads`] on a connection of its own, with the version check in the same flight
/// as the reads (one round trip after the connect).
fn own_store_reads(
    run_root: &Path,
    cfg: &crate::config::FleetConfig,
) -> Result<(Vec<SeriesRow>, FleetRows)> {
    match crate::store::pg::reader::status_read(cfg).map_err(super::runs::fleet_error)? {
        Some(read) => Ok(read),
        // The schema keeps no records: RUN_ROOT's SQLite has them.
        None => store_reads(
            run_root,
            cfg,
            store::open_read(run_root)
                .map_err(Error::Internal)?
                .as_ref(),
        ),
    }
}

/// The aggregates and the fleet's leases: with a PostgreSQL reader (the fleet's store
/// keeps the records) both in one round trip; else RUN_ROOT's records (`conn`, SQLite)
/// and the leases read apart.
fn store_reads(
    run_root: &Path,
    cfg: &crate::config::FleetConfig,
    conn: Option<&store::Reader>,
) -> Result<(Vec<SeriesRow>, FleetRows)> {
    match conn {
        Some(store::Reader::Pg(p)) => p
            .status(cfg.lease)
            .map_err(|e| Error::Internal(format!("cannot read the fleet's store: {e}"))),
        other => Ok((read_series(run_root, other)?, fleet_rows(cfg)?)),
    }
}

/// The status for the `status` command: [`build_fleet`], or, when the fleet's store cannot
/// be read (unreachable, or refusing us), this host's own chains as without `[store]`
/// (RUN_ROOT's pidfiles, locks, CHAIN.state and SQLite records, each chain's instance's
/// own fleet facts) with the error, for a warning and the exit status it earns.
pub(crate) fn build_or_local(
    run_root: &Path,
    fleet: Option<&crate::config::FleetConfig>,
) -> Result<(StatusView, Option<Error>)> {
    match build_fleet(run_root, fleet) {
        Ok(v) => Ok((v, None)),
        Err(e @ (Error::Internal(_) | Error::Config(_))) if fleet.is_some() => {
            Ok((build(run_root)?, Some(e)))
        }
        Err(e) => Err(e),
    }
}

/// Read the fleet's leases from its store, from this (the command's) thread, with a short
/// timeout. A database that refuses us (password, not run-chain's) is a config error (78);
/// one that does not answer is an internal error (70), as a store that cannot be read.
pub(crate) fn fleet_rows(cfg: &crate::config::FleetConfig) -> Result<FleetRows> {
    crate::store::pg::reader::read(cfg).map_err(super::runs::fleet_error)
}

/// Add the fleet to a RUN_ROOT's status (pure): every chain of the fleet's store, each
/// with its lease (host, epoch, expiry), its counters and its standbys. A chain of this
/// RUN_ROOT keeps its local facts (pid, up, what its instance here does); one with no
/// instance up here shows what the fleet's store says it does (its state, while a host
/// holds its lease; else `down`). Chains stay in name order.
pub(crate) fn merge_fleet(v: &mut StatusView, rows: &FleetRows, series: &[SeriesRow]) {
    for c in &mut v.chains {
        let Some(r) = rows.chains.get(&c.chain) else {
            continue;
        };
        let f = c.fleet.get_or_insert_with(|| FleetView {
            epoch: None,
            error: None,
            expires: None,
            failovers: None,
            fenced_writes: None,
            host: None,
            role: "none".to_string(),
            standbys: Vec::new(),
        });
        fill_fleet(f, r);
        if !c.up {
            let st = remote_state(r);
            c.now = remote_now(r, st.as_ref());
        }
    }
    for (name, r) in &rows.chains {
        if v.chains.iter().any(|c| &c.chain == name) {
            continue;
        }
        let st = remote_state(r);
        let empty = resume::State::default();
        let mine: Vec<&SeriesRow> = series.iter().filter(|s| &s.chain == name).collect();
        let mut c = chain_view(name, None, st.as_ref().unwrap_or(&empty), false, &mine);
        c.now = remote_now(r, st.as_ref());
        let mut f = FleetView {
            epoch: None,
            error: None,
            expires: None,
            failovers: None,
            fenced_writes: None,
            host: None,
            role: "none".to_string(),
            standbys: Vec::new(),
        };
        fill_fleet(&mut f, r);
        c.fleet = Some(f);
        v.chains.push(c);
    }
    v.chains.sort_by(|a, b| a.chain.cmp(&b.chain));
}

/// The lease row's facts in a chain's fleet view.
fn fill_fleet(f: &mut FleetView, r: &LeaseRow) {
    f.host = r.owner().map(str::to_string);
    f.epoch = r.owner().map(|_| r.epoch);
    f.expires = r.owner().and(r.expires_ms).map(Wall);
    f.failovers = r.failovers;
    f.fenced_writes = r.fenced_writes;
    f.standbys = r
        .standbys
        .iter()
        .map(|s| StandbyView {
            host: s.host.clone(),
            seen: Wall(s.seen_ms),
        })
        .collect();
}

/// The chain's state as the fleet's store keeps it, if it does and it reads.
fn remote_state(r: &LeaseRow) -> Option<resume::State> {
    r.state
        .as_deref()
        .and_then(|s| serde_json::from_str::<resume::State>(s).ok())
}

/// What a chain with no instance up here does, by the fleet's store: down while no host
/// holds its lease; else what its state says, or `elsewhere` without a state.
fn remote_now(r: &LeaseRow, st: Option<&resume::State>) -> NowView {
    if r.owner().is_none() {
        return NowView::only(NowState::Down);
    }
    match st {
        Some(st) => {
            let v = chain_view("", Some(0), st, false, &[]).now;
            if v.state == NowState::Starting {
                NowView::only(NowState::Elsewhere)
            } else {
                v
            }
        }
        None => NowView::only(NowState::Elsewhere),
    }
}

/// One chain's view, from its lock holder, its `CHAIN.state` (`another_writer`: written by
/// an instance other than the holder), and its aggregates in the store.
fn chain_view(
    chain: &str,
    holder: Option<i32>,
    st: &resume::State,
    another_writer: bool,
    rows: &[&SeriesRow],
) -> ChainView {
    let now = match holder {
        None => NowView::only(NowState::Down),
        Some(_) if another_writer || (st.next_task.is_none() && st.running_task.is_none()) => {
            // The instance holds the lock but has not written its state yet (the state
            // there is its predecessor's: it may name a run of an instance that died,
            // which this one waits for the guardian to end).
            NowView::only(NowState::Starting)
        }
        Some(_) => match (&st.running_task, &st.waiting_group) {
            (Some(t), _) => NowView {
                group: st.running_group.clone(),
                run_id: st.running_run_id,
                since: st.running_since_ms.map(Wall),
                task: Some(t.clone()),
                ..NowView::only(NowState::Running)
            },
            (None, Some(g)) => NowView {
                group: Some(g.clone()),
                since: st.waiting_since_ms.map(Wall),
                task: st.next_task.clone(),
                ..NowView::only(NowState::Waiting)
            },
            (None, None) => NowView {
                task: st.next_task.clone(),
                until: st.due_wall_ms.map(Wall),
                ..NowView::only(NowState::Cooldown)
            },
        },
    };
    let mut task_names: Vec<&str> = st.tasks.iter().map(String::as_str).collect();
    for r in rows {
        if !task_names.contains(&r.task.as_str()) {
            task_names.push(&r.task);
        }
    }
    let tasks = task_names
        .into_iter()
        .map(|t| task_view(t, rows.iter().find(|r| r.task == t).copied(), st))
        .collect();
    ChainView {
        chain: chain.to_string(),
        fleet: None,
        now,
        pid: holder,
        queued: st.run_now.as_ref().map(|r| QueuedView {
            requested_by: r.requested_by.clone(),
            run_id: r.run_id,
            task: r.task.clone(),
        }),
        tasks,
        up: holder.is_some(),
    }
}

fn task_view(task: &str, r: Option<&SeriesRow>, st: &resume::State) -> TaskView {
    let fails = st.failures.get(task);
    let streak = match fails {
        Some(f) => f.streak(),
        None => r.and_then(|r| r.streak_start_ms.map(|s| (s, r.streak_failures))),
    };
    let last = r.and_then(|r| {
        r.last_run_id.map(|id| LastView {
            duration_seconds: r.last_duration_ms.map(Secs),
            exit_code: r.last_exit_code,
            outcome: r.last_outcome.clone(),
            run_id: id,
            start: r.last_start_ms.map(Wall),
            stop: r.last_stop_ms.map(Wall),
        })
    });
    let last_success = fails
        .and_then(|f| f.last_success_ms)
        .or(r.and_then(|r| r.last_success_ms));
    TaskView {
        failures: r.map_or(0, |r| r.failed + r.timeout + r.signal + r.spawn_error),
        interrupted: r.map_or(0, |r| r.interrupted),
        last,
        last_success: last_success.map(Wall),
        ok: r.map_or(0, |r| r.ok),
        runs: r.map_or(0, |r| r.runs),
        streak: streak.map(|(s, n)| StreakView {
            failures: n,
            since: Wall(s),
        }),
        task: task.to_string(),
    }
}

/// `status --json`: pretty, with a final newline.
pub(crate) fn json(v: &StatusView) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// `status`: per chain, a line of what it does now, then a table of its tasks. Times are
/// shown relative to `now`.
pub(crate) fn text(v: &StatusView, now: Wall) -> String {
    let mut w = String::new();
    if v.chains.is_empty() {
        let _ = writeln!(w, "no chains in {}", v.run_root_given);
        return w;
    }
    for c in &v.chains {
        let pid = c.pid.map_or(String::new(), |p| format!(" pid {p}"));
        let _ = writeln!(w, "{}:{pid} {}", c.chain, doing(&c.now, now));
        if let Some(f) = &c.fleet {
            let _ = writeln!(w, "  fleet: {}", fleet_text(f, now));
        }
        if let Some(q) = &c.queued {
            let _ = writeln!(
                w,
                "  queued: {} (run {}), asked by {} with run-now",
                q.task, q.run_id, q.requested_by
            );
        }
        let _ = writeln!(
            w,
            "  {:<24} {:>7} {:>7}  {:<28} {:<20} STREAK",
            "TASK", "RUNS", "FAILS", "LAST", "LAST SUCCESS"
        );
        for t in &c.tasks {
            let _ = writeln!(
                w,
                "  {:<24} {:>7} {:>7}  {:<28} {:<20} {}",
                t.task,
                t.runs,
                t.failures,
                t.last.as_ref().map_or("-".into(), |l| last_text(l, now)),
                t.last_success.map_or("-".into(), |s| time_ago(now, s)),
                t.streak.map_or("-".into(), |s| streak_text(&s)),
            );
        }
    }
    w
}

/// What a chain does now, in words: "running nightly (run 12) for 3m 12s", "nightly
/// waiting for group db for 4.0s", "cooling down; nightly in 14m 58s", "down".
fn doing(n: &NowView, now: Wall) -> String {
    let task = n.task.as_deref().unwrap_or("?");
    let for_ = || n.since.map_or("?".into(), |s| ago(now, s));
    match n.state {
        NowState::Running => format!(
            "running {task} (run {}) for {}{}",
            // As the JSON shows a missing run id.
            n.run_id.map_or("null".into(), |id| id.to_string()),
            for_(),
            n.group
                .as_ref()
                .map_or(String::new(), |g| format!(", holding a slot of group {g}"))
        ),
        NowState::Waiting => format!(
            "{task} waiting for group {} for {}",
            n.group.as_deref().unwrap_or("?"),
            for_()
        ),
        NowState::Starting => "starting".to_string(),
        NowState::Cooldown => match n.until {
            Some(u) if u > now => format!("cooling down; {task} in {}", dur(u.0 - now.0)),
            _ => format!("{task} due now"),
        },
        NowState::Down => "down".to_string(),
        NowState::Standby => "standby".to_string(),
        NowState::Elsewhere => "runs on another host".to_string(),
    }
}

/// A fleet chain's line: "standby; the chain runs on host h1 (epoch 7)", "owner (epoch
/// 8)", "standby; database unreachable: ...".
pub(crate) fn fleet_text(f: &FleetView, now: Wall) -> String {
    let holder = match (&f.host, f.epoch) {
        (Some(h), Some(e)) => format!("host {h} (epoch {e})"),
        _ => "no host".to_string(),
    };
    let mut t = match (f.role.as_str(), &f.error) {
        ("owner", _) => format!("owner, as {holder}"),
        ("none", _) if f.host.is_some() => format!("runs on {holder}; no instance here"),
        ("none", _) => "no host holds the lease; no instance here".to_string(),
        (_, Some(e)) => format!("standby; {e}"),
        _ if f.host.is_some() => format!("standby; the chain runs on {holder}"),
        _ => "standby; the lease is free or expiring".to_string(),
    };
    if let Some(x) = f.expires {
        if x > now {
            let _ = write!(t, "; lease expires in {}", dur(x.0 - now.0));
        } else {
            t.push_str("; lease expired");
        }
    }
    if !f.standbys.is_empty() {
        let hosts: Vec<&str> = f.standbys.iter().map(|s| s.host.as_str()).collect();
        let _ = write!(t, "; standbys: {}", hosts.join(", "));
    }
    for (n, what) in [
        (f.failovers, "failovers"),
        (f.fenced_writes, "fenced writes"),
    ] {
        if let Some(n) = n.filter(|n| *n > 0) {
            let _ = write!(t, "; {n} {what}");
        }
    }
    t
}

/// A task's last run: "ok 3m ago", "failed (3) 2h ago", "signal (SIGTERM) just now".
fn last_text(l: &LastView, now: Wall) -> String {
    let outcome = l.outcome.as_deref().unwrap_or("?");
    // As `history` shows it: a signal by its name (the code is 128 + its number).
    let code = match l.exit_code {
        // "ok": exit 0, as `history` shows it.
        _ if outcome == "ok" => String::new(),
        Some(c) if outcome == "signal" && c > 128 => {
            format!(" ({})", crate::core::outcome::signal_name(c - 128))
        }
        Some(c) => format!(" ({c})"),
        None => String::new(),
    };
    let when = l.stop.map_or(String::new(), |s| time_ago(now, s));
    format!("{outcome}{code} {when}")
}

/// "3 failures since 2026-11-24 02:58:01".
fn streak_text(s: &StreakView) -> String {
    let n = s.failures;
    format!(
        "{n} failure{} since {}",
        if n == 1 { "" } else { "s" },
        short_time(s.since)
    )
}

#[cfg(test)]
mod tests;
