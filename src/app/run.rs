//! Running a chain (`run-chain [OPTIONS] TASK...`): resolve the chain, take its lock
//! (taking over from a running instance), resume from `CHAIN.state`, and hand over to the
//! driver.

use std::path::Path;

use crate::cli::{Common, RunArgs, COMING_COMMANDS, RESERVED_NAMES};
use crate::config::{self, Config};
use crate::core::chain::{Chain, Mode};
use crate::core::resume;
use crate::error::{exit, Error, Result};
use crate::root::{config_path, moved_run_root, prepare_run_root, run_root, run_root_override};
use crate::run::driver::{self, Driver};
use crate::run::guardian::Guardian;
use crate::signals::Signals;
use crate::store::state_file;
use crate::sys;
use crate::time;

use crate::lock::fleet::{self, Fleet};
use crate::lock::handover::{wait_for_the_old_run, TAKEOVER_MARGIN};
use crate::lock::pidfile::next;
use crate::lock::Ownership;

pub(crate) fn run(common: &Common, args: &RunArgs) -> Result<u8> {
    if args.tasks.is_empty() {
        return Err(Error::Usage(
            "no task given: run-chain [OPTIONS] TASK... (see run-chain --help)".into(),
        ));
    }
    for (i, t) in args.tasks.iter().enumerate() {
        // A coming command's name (`run-chain serve`) is left to the config below.
        if RESERVED_NAMES.contains(&t.as_str()) && !COMING_COMMANDS.contains(&t.as_str()) {
            return Err(Error::Usage(format!(
                "{t:?} is a subcommand, not a task (no task may be named so): give it alone, as `run-chain {t} ...`, not after task names"
            )));
        }
        if args.tasks[..i].contains(t) {
            return Err(Error::Usage(format!(
                "task {t:?} appears twice in the chain; a chain runs each task once per round"
            )));
        }
    }
    let path = config_path(common);
    // A config that defines a task named like a coming command (`serve`) is refused here:
    // exit 78, naming the file and the key, saying to rename the task.
    let config = Config::load(&path)?;
    if let Some(t) = args
        .tasks
        .iter()
        .find(|t| COMING_COMMANDS.contains(&t.as_str()))
    {
        return Err(Error::Usage(format!(
            "`{t}` is not a command of run-chain {} (it is reserved for a coming version), and no task may be named so",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let tasks = config.chain_tasks(&args.tasks)?;
    let chain_name = match &args.name {
        Some(n) => {
            config::check_name(n).map_err(|m| Error::Config(format!("--name: {m}")))?;
            n.clone()
        }
        None => {
            let n = args.tasks.join("_");
            config::check_name(&n).map_err(|m| {
                Error::Config(format!(
                    "the chain name made from the task names is not valid ({m}); give one with --name"
                ))
            })?;
            n
        }
    };
    let root = run_root(common, Some(&config))?;
    prepare_run_root(&root)?;

    // Tasks inherit no descriptor: not ours (all close-on-exec), nor those we inherited.
    sys::cloexec_from_3();
    // The guardian first: the process has one thread and no descriptor of its own yet.
    // It records a run it has to end in the store, which it opens from `/`.
    let recording = crate::run::guardian::Recording {
        store: std::path::absolute(crate::store::path(&root))
            .unwrap_or_else(|_| crate::store::path(&root)),
        chain: chain_name.clone(),
        instance: crate::store::Instance {
            host: sys::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_digest: config.digest.clone(),
            started_ms: time::wall_ms(),
        },
    };
    // In a fleet the run it ended is closed by the chain's next owner in the fleet's store
    // (as `interrupted`): nothing is written to SQLite in RUN_ROOT.
    let guardian = Guardian::spawn(config.store.is_none().then_some(recording))?;
    let signals = Signals::install()?;
    let mode = if args.once { Mode::Once } else { Mode::Forever };
    let no_takeover = mode == Mode::Once || args.no_kill_concurrent;
    // The fleet: connect and check the store before the local hand-over, so that a launch
    // the database refuses (wrong password, foreign database: 78) never disturbs the
    // running instance. An unreachable database is no error: the launch waits as standby.
    let fleet = match &config.store {
        Some(cfg) => {
            let f = Fleet::start(cfg, &chain_name)?;
            // A refusal, named with the config file and what to fix.
            let verdict = f.first_verdict(&signals).map_err(|e| match e {
                Error::Config(m) => cfg.refused(&config.file, m.trim_start_matches("[store]: ")),
                e => e,
            });
            if !verdict? {
                log::info!("{chain_name}: stopped while connecting to the fleet's database");
                log::info!("{chain_name}: exiting with status {}", exit::OK);
                return Ok(exit::OK);
            }
            Some(f)
        }
        None => None,
    };
    let takeover_limit = tasks
        .iter()
        .map(|t| t.timing.stop_grace + t.timing.kill_grace)
        .max()
        .unwrap_or_default()
        + TAKEOVER_MARGIN;
    let Some(ownership) =
        Ownership::acquire(&root, &chain_name, no_takeover, takeover_limit, &signals)?
    else {
        log::warn!(
            "{chain_name}: stopped while waiting for the running instance to hand over; if it was already asked to hand over, it stops too: launch the chain again to start it"
        );
        log::info!("{chain_name}: exiting with status {}", exit::OK);
        return Ok(exit::OK);
    };
    let mut ownership = match fleet {
        Some(f) => {
            // This host's previous instance (whose pidfile lock we now hold: it has
            // exited) recorded the lease it held: take over exactly that, else acquire.
            // Not in --once / --no-kill-concurrent: they take over nothing (75 while
            // any instance, even a dead one of this host, holds the lease unexpired).
            let record = if no_takeover {
                None
            } else {
                fleet::record::read(&root, &chain_name)
            };
            f.go(record, no_takeover);
            ownership.with_fleet(f)
        }
        None => ownership,
    };
    crate::run::process::become_subreaper();
    let root_from_config = run_root_override(common).is_none();
    let mut parts = (signals, guardian);
    let mut config = config;
    let mut tasks = tasks;
    let mut first = true;
    loop {
        let (signals, guardian) = parts;
        if let Some(f) = ownership.fleet_mut() {
            let (root_, chain_) = (&root, &chain_name);
            match f.wait_owner(&signals, |v| show_standby(root_, chain_, v))? {
                Some(epoch) => {
                    if let Some((holder, e)) = f.record() {
                        if let Err(err) = fleet::record::write(&root, &chain_name, &holder, e) {
                            log::warn!(
                                "{chain_name}: failed to write {}: {err}; a relaunch here acquires the lease anew",
                                fleet::record::path(&root, &chain_name).display()
                            );
                        }
                    }
                    let st = fleet::standing::Standing {
                        owner: true,
                        pid: std::process::id() as i32,
                        host: Some(f.host().to_string()),
                        epoch: Some(epoch),
                        error: None,
                    };
                    let _ = fleet::standing::write(&root, &chain_name, &st);
                }
                None => {
                    if f.stop_fleet_seen() {
                        log::info!("{chain_name}: stop --fleet: stopped while waiting as standby");
                    } else {
                        log::info!("{chain_name}: stopped while waiting as standby");
                    }
                    // Nothing to release: the DB thread only leaves the standbys (if it
                    // is not in the middle of a connect that could take half a lease).
                    f.release(std::time::Duration::from_millis(500));
                    let _ = std::fs::remove_file(fleet::standing::path(&root, &chain_name));
                    log::info!("{chain_name}: exiting with status {}", exit::OK);
                    return Ok(exit::OK);
                }
            }
        }
        let state_path = state_file::path(&root, &chain_name);
        // In the fleet, where to resume is in the fleet's store (never CHAIN.state): read
        // by the DB thread when it acquired the lease.
        let fleet_resume = ownership.fleet_mut().and_then(|f| {
            f.take_resume()
                .or_else(|| f.read_resume(f.lease() * 2 / 5 + std::time::Duration::from_secs(1)))
        });
        if fleet_resume.is_none() && ownership.fleet_mut().is_some() {
            // Never CHAIN.state in the fleet: wait for the ownership and read it again.
            log::warn!("{chain_name}: fleet: cannot read where to resume from now; trying again");
            std::thread::sleep(std::time::Duration::from_millis(200));
            parts = (signals, guardian);
            continue;
        }
        let base_state = match &fleet_resume {
            Some(r) => r.to_state(&resume::Clocks {
                mono: time::mono_now(),
                wall_ms: time::wall_ms(),
                boot_id: sys::boot_id(),
            }),
            None => match state_file::load(&state_path) {
                Ok(s) => s,
                Err(msg) => {
                    log::warn!("{chain_name}: {msg}");
                    resume::State::default()
                }
            },
        };
        if first && !wait_for_the_old_run(&chain_name, &base_state, &signals)? {
            log::warn!(
                "{chain_name}: stopped while waiting for the previous run's processes to end"
            );
            // Those processes may still run: never release the lease to a standby now.
            // Kept, it expires a lease after this acquire, after the old guardian's KILL.
            if let Some(f) = ownership.fleet_mut() {
                let _ = std::fs::remove_file(fleet::standing::path(&root, &chain_name));
                log::info!("{chain_name}: fleet: keeping the lease until it expires (the previous run's processes may still run)");
                f.keep();
            }
            log::info!("{chain_name}: exiting with status {}", exit::OK);
            return Ok(exit::OK);
        }
        // A SIGHUP that came while the launch waited: the config is read again now, before
        // the first run, as a running chain would on SIGHUP.
        let reloaded;
        (config, tasks, reloaded) = if signals.take_hup_before_running() {
            reload_before_running(
                &chain_name,
                &args.tasks,
                &root,
                root_from_config,
                config,
                tasks,
            )
        } else {
            (config, tasks, false)
        };
        let chain_view = driver::chain_tasks(&tasks);
        let clocks = resume::Clocks {
            mono: time::mono_now(),
            wall_ms: time::wall_ms(),
            boot_id: sys::boot_id(),
        };
        let (mut resume, warning) = resume::resume(&base_state, &chain_view, &clocks);
        if let Some(w) = warning {
            log::warn!("{chain_name}: {w}");
        }
        if fleet_resume.is_none() {
            seed_run_ids(&root, &chain_name, &chain_view, &mut resume);
        }
        log::info!(
            "{chain_name}: running as pid {} (run-chain {}, config {} digest {}){}",
            std::process::id(),
            env!("CARGO_PKG_VERSION"),
            config.file.display(),
            config.digest,
            if mode == Mode::Once { ", once" } else { "" }
        );
        // A run-now request the previous instance accepted runs first (not in `--once`).
        let (pending, dropped) = resume::pending(&base_state, &chain_view);
        if let Some(w) = dropped {
            log::warn!("{chain_name}: {w}");
        }
        let chain = Chain::new(chain_view, mode, resume).with_pending(pending);
        let driver = Driver::new(
            chain_name.clone(),
            args.tasks.clone(),
            config.clone(),
            tasks.clone(),
            root.clone(),
            mode,
            chain,
            signals,
            guardian,
            ownership,
            base_state,
        )
        .with_root_from_config(root_from_config)
        // As a running chain on SIGHUP: a changed cooldown applies to the one carried over.
        .with_reconfigure_at_start(reloaded);
        let ended = driver.run()?;
        ownership = ended.ownership;
        first = false;
        if let Some(f) = ownership.fleet_mut() {
            f.stop_running();
        }
        if ended.lost {
            parts = (ended.signals, ended.guardian);
            continue;
        }
        end_fleet(&mut ownership, &root, &chain_name);
        return Ok(ended.code);
    }
}

/// The chain ends on this host: keep the lease for a newer launch of the chain here (it
/// takes it over: `CHAIN.next`), else release it (the task group is gone by now), so that
/// a standby elsewhere runs the chain at once.
fn end_fleet(ownership: &mut Ownership, root: &Path, chain: &str) {
    let Some(f) = ownership.fleet_mut() else {
        return;
    };
    let _ = std::fs::remove_file(fleet::standing::path(root, chain));
    if let Some(pid) = next::newer_than_me(root, chain) {
        log::info!("{chain}: fleet: keeping the lease for the newer launch (PID {pid})");
        f.keep();
    } else {
        f.release(f.lease() / 5 + std::time::Duration::from_secs(1));
    }
}

/// Where the standby stands, for `status` (`RUN_ROOT/CHAIN.fleet`).
fn show_standby(root: &Path, chain: &str, view: &fleet::View) {
    let (held_by, error) = match view {
        fleet::View::Standby { held_by, error } => (held_by.clone(), error.clone()),
        _ => (None, None),
    };
    let st = fleet::standing::Standing {
        owner: false,
        pid: std::process::id() as i32,
        host: held_by.as_ref().map(|(h, _)| h.clone()),
        epoch: held_by.map(|(_, e)| e),
        error: error.map(|e| format!("database unreachable: {e}")),
    };
    if let Err(e) = fleet::standing::write(root, chain, &st) {
        log::warn!(
            "{chain}: failed to write {}: {e}",
            fleet::standing::path(root, chain).display()
        );
    }
}

/// The config read again for a SIGHUP received while the launch waited to run (see
/// [`Signals::drain_waiting`]); on an error, the one validated at launch is kept, as a
/// running chain keeps its config when a reload fails, and so it is when the new config
/// would move the chain to another RUN_ROOT (see [`moved_run_root`]).
fn reload_before_running(
    chain: &str,
    names: &[String],
    root: &Path,
    root_from_config: bool,
    config: Config,
    tasks: Vec<crate::config::Task>,
) -> (Config, Vec<crate::config::Task>, bool) {
    let loaded = Config::load(&config.file).and_then(|c| {
        let t = c.chain_tasks(names)?;
        if let Some(e) = moved_run_root(chain, root_from_config, root, &c) {
            return Err(e);
        }
        Ok((c, t))
    });
    match loaded {
        Ok((c, t)) => {
            log::info!(
                "{chain}: SIGHUP: reloaded {} (digest {})",
                c.file.display(),
                c.digest
            );
            (c, t, true)
        }
        Err(e) => {
            log::error!("{chain}: SIGHUP: keeping the config validated at launch: {e}");
            (config, tasks, false)
        }
    }
}

/// Run ids for the tasks CHAIN.state has none for (a lost or unreadable state file, or a
/// task new to the chain), from the record store: ids keep increasing across restarts
/// even then. Without a store (or when it cannot be read: a warning) they start at 1.
fn seed_run_ids(
    root: &Path,
    chain: &str,
    view: &[crate::core::chain::ChainTask],
    resume: &mut crate::core::chain::Resume,
) {
    let tasks: Vec<String> = view
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| !resume.run_ids.contains_key(n))
        .collect();
    if tasks.is_empty() {
        return;
    }
    match crate::store::last_run_ids(root, chain) {
        Ok(ids) => {
            for (task, id) in ids {
                if id > 0 && tasks.contains(&task) {
                    log::info!("{chain}: task {task} continues from run id {id}, as recorded in the store (CHAIN.state had none)");
                    resume.run_ids.insert(task, id);
                }
            }
        }
        Err(e) => log::warn!(
            "{chain}: CHAIN.state holds no run id for {}, and the store cannot tell the last one ({e}); starting from 1",
            tasks.join(", ")
        ),
    }
}
