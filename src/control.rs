//! The actions on a running chain: `stop` (as SIGTERM, or SIGQUIT for `--now`, and wait
//! for it to exit) and `kick` (as SIGUSR1: start the next task now). Both go with who
//! asked over the chain's control channel ([`crate::run::ctl`]), so that the chain logs it
//! (and a kicked run records it); when the channel is absent or does not answer (an older
//! instance, one just starting), as the signal, through a pidfd to the verified lock
//! holder only. Below both `app` and `serve`, which call it: the
//! commands with a `Common` ([`stop`], [`kick`]: they print what they did), the console with
//! RUN_ROOT ([`ask_stop`], [`kick_chain`]: they return it).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::cli::Common;
use crate::config::{self};
use crate::error::{exit, Error, Result};
use crate::lock::pidfile::{next, PidFile};
use crate::root::looked_run_root;
use crate::store::state_file;
use crate::sys;

/// Open the chain's pidfile for a command that only looks, and find its verified holder.
fn holder_of(root: &Path, chain: &str) -> Result<Option<(i32, OwnedFd)>> {
    config::check_name(chain).map_err(|m| Error::Usage(format!("chain {chain:?}: {m}")))?;
    let Some(pf) = PidFile::open_existing(root, chain)? else {
        return Err(Error::Usage(unknown_chain(
            chain,
            root,
            &chains_and_tasks(root),
        )));
    };
    Ok(pf.holder_pidfd())
}

/// The verified holder of the chain's lock in `root`, if the chain runs here (no error
/// when it never ran here).
pub(crate) fn local_holder(root: &Path, chain: &str) -> Option<(i32, OwnedFd)> {
    PidFile::open_existing(root, chain)
        .ok()
        .flatten()
        .and_then(|pf| pf.holder_pidfd())
}

/// The chains of RUN_ROOT (a `CHAIN.pid` each, never removed), each with its tasks as its
/// `CHAIN.state` knows them: its task list, and the tasks it has run (a `--once` launch
/// writes no list). None if the state cannot be read; no chain if RUN_ROOT cannot be read.
fn chains_and_tasks(root: &Path) -> Vec<(String, Vec<String>)> {
    crate::lock::holders::chains(root)
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let st = state_file::load(&state_file::path(root, &c)).unwrap_or_default();
            let mut tasks = st.tasks;
            for t in st.run_ids.into_keys() {
                if !tasks.contains(&t) {
                    tasks.push(t);
                }
            }
            (c, tasks)
        })
        .collect()
}

/// What `stop`/`kick` say of a chain that RUN_ROOT does not hold: the chains it does hold,
/// or that it holds none, and the chains that have a task so named (a task name given for
/// a chain's).
fn unknown_chain(chain: &str, root: &Path, known: &[(String, Vec<String>)]) -> String {
    let mut msg = format!("no chain named {chain:?} in {}", root.display());
    let of: Vec<&str> = known
        .iter()
        .filter(|(_, tasks)| tasks.iter().any(|t| t == chain))
        .map(|(c, _)| c.as_str())
        .collect();
    if !of.is_empty() {
        msg.push_str(&format!(
            "; {chain} is a task of chain{} {}",
            if of.len() > 1 { "s" } else { "" },
            of.join(", ")
        ));
    }
    if known.is_empty() {
        msg.push_str(
            "; no chain has run there (is RUN_ROOT the right one? --run-root, RUN_ROOT or run_root in the config)",
        );
    } else {
        let names: Vec<&str> = known.iter().map(|(c, _)| c.as_str()).collect();
        msg.push_str(&format!("; the chains there: {}", names.join(", ")));
    }
    msg
}

/// A stop asked of a chain's instance: its PID and pidfd (readable once it has exited),
/// and the launch that was waiting to take over from it, asked to give up first.
pub(crate) struct StopAsked {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) waiting: Option<(i32, OwnedFd)>,
}

/// How long `kick` and `stop` wait for the chain's answer on its control channel before
/// they signal it instead (an older instance, or one that is busy).
pub(crate) const ASK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Ask the lock holder `pid` over its control channel ([`crate::run::ctl`]), so that it
/// knows who asked; false if nobody listens there, it refuses (an older instance does not
/// know the request) or it does not answer within [`ASK_DEADLINE`]: the caller signals it.
fn ask_holder(root: &Path, chain: &str, pid: i32, req: &crate::run::ctl::Request) -> bool {
    use crate::run::ctl::{self, Answer, Asked};
    match ctl::ask(root, chain, req, ASK_DEADLINE) {
        Asked::Answer(Answer::Taken) => true,
        other => {
            log::debug!("chain {chain} (PID {pid}): control channel: {other:?}; signalling it");
            false
        }
    }
}

/// Ask `chain`'s instance in `root` to stop (SIGTERM; SIGQUIT with `now`), without waiting
/// for it; `by` says who asks. The request goes over the chain's control channel (the
/// chain logs who asked), or as the signal when that does not answer. None: the chain is
/// not running.
pub(crate) fn ask_stop(root: &Path, chain: &str, now: bool, by: &str) -> Result<Option<StopAsked>> {
    let Some((pid, pidfd)) = holder_of(root, chain)? else {
        return Ok(None);
    };
    // A standby here: the chain runs on another host (the console's stop too).
    refuse_on_standby(root, chain, pid)?;
    // A launch waiting for this instance to hand over (an upgrade under way) would take the
    // lock as soon as it exits, and the chain would go on: it is asked to give up first (a
    // waiting launch stops at once on SIGTERM).
    let mut waiting = None;
    if let Some((w, wfd)) = next::waiting_launch(root, chain, pid) {
        if sys::pidfd_signal(&wfd, libc::SIGTERM).is_ok() {
            waiting = Some((w, wfd));
        }
    }
    let req = crate::run::ctl::Request::Stop {
        now,
        by: by.to_string(),
    };
    if !ask_holder(root, chain, pid, &req) {
        let sig = if now { libc::SIGQUIT } else { libc::SIGTERM };
        sys::pidfd_signal(&pidfd, sig).map_err(|e| Error::os(format!("signal PID {pid}"), e))?;
    }
    Ok(Some(StopAsked {
        pid,
        pidfd,
        waiting,
    }))
}

/// The name is checked before RUN_ROOT is looked for, as it always was.
fn checked_root(common: &Common, chain: &str) -> Result<std::path::PathBuf> {
    config::check_name(chain).map_err(|m| Error::Usage(format!("chain {chain:?}: {m}")))?;
    looked_run_root(common)
}

pub(crate) fn stop(common: &Common, chain: &str, now: bool, by: &str) -> Result<u8> {
    let root = checked_root(common, chain)?;
    let asked = refuse_non_owner(common, &root, chain)
        .and_then(|()| ask_stop(&root, chain, now, by))
        .map_err(|e| standby_hint(&root, chain, e))?;
    let Some(asked) = asked else {
        say!("chain {chain} is not running");
        return Ok(exit::OK);
    };
    let pid = asked.pid;
    if let Some((w, _)) = &asked.waiting {
        eprintln!(
            "run-chain: asked the launch of chain {chain} waiting to take over (PID {w}) to give up"
        );
    }
    eprintln!(
        "run-chain: asked chain {chain} (PID {pid}) to stop{}; waiting for it to exit",
        if now { " now" } else { "" }
    );
    // Until the holder has exited, and the waiting launch too (it may have taken the lock
    // in the meantime: then it stops on the SIGTERM it has, after its running task's grace).
    for fd in std::iter::once(&asked.pidfd).chain(asked.waiting.as_ref().map(|(_, fd)| fd)) {
        let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
        loop {
            sys::ppoll(&mut fds, None).map_err(|e| Error::os("wait in ppoll", e))?;
            if fds[0].revents != 0 {
                break;
            }
        }
    }
    say!("chain {chain} (PID {pid}) stopped");
    Ok(exit::OK)
}

/// How long the commands wait for the fleet's database: to connect, and per statement.
pub(crate) const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The fleet store of the config, connected from the command's own thread: for the
/// commands that ask it (`stop`, `kick`, `run-now` on a host that does not own the chain;
/// `stop --fleet`). A refusal (password, TLS, a foreign database) is 78; an unreachable
/// database 75, saying so.
pub(crate) fn fleet_connect(
    cfg: &config::FleetConfig,
    file: &Path,
) -> Result<crate::store::pg::conn::Conn> {
    use crate::store::pg::conn::{Conn, ConnError};
    Conn::connect(cfg, DB_TIMEOUT).map_err(|e| match e {
        ConnError::Refused(m) => cfg.refused(file, &m),
        // The message names the URL itself, mostly: once is enough.
        ConnError::Unreachable(m) if m.contains(&cfg.display_url) => {
            Error::Busy(format!("the fleet's database is unreachable: {m}"))
        }
        ConnError::Unreachable(m) => Error::Busy(format!(
            "the fleet's database is unreachable ({}): {m}",
            cfg.display_url
        )),
    })
}

/// `stop`, `kick`, `run-now` with a fleet config (`[store]`): on a host that does not own
/// the chain (its instance here, `local`, is a standby, or there is none here and another
/// host holds the lease) they are refused, 75, naming the owner's host and epoch (SPEC,
/// "Beyond one host"). The lease row is read from the command's own thread; when this
/// host's instance says it owns the chain, the database is not asked. Without `[store]`
/// (or with a config that cannot be read: a command that only looks must still work),
/// nothing is checked.
fn refuse_non_owner(common: &Common, root: &Path, chain: &str) -> Result<()> {
    let path = crate::root::config_path(common);
    let Some(cfg) = config::Config::load(&path).ok().and_then(|c| c.store) else {
        return Ok(());
    };
    let local = local_holder(root, chain).map(|(pid, _)| pid);
    let standing = local.and_then(|pid| crate::lock::fleet::standing::read(root, chain, pid));
    if standing.as_ref().is_some_and(|st| st.owner) {
        return Ok(());
    }
    let here = match local {
        Some(pid) if standing.is_some() => format!("this host's instance (PID {pid}) is a standby"),
        Some(pid) => format!("this host's instance (PID {pid}) does not own it"),
        None => format!("this host ({}) runs no instance of it", cfg.host),
    };
    let read = fleet_connect(&cfg, &path).and_then(|c| {
        crate::store::pg::lease::read(&c, chain, DB_TIMEOUT).map_err(|e| {
            Error::Busy(format!(
                "failed to read the lease of chain {chain} in the fleet's database ({}): {e}",
                cfg.display_url
            ))
        })
    });
    match read {
        Ok(Some(h)) if h.held() && h.host.as_deref() != Some(cfg.host.as_str()) => {
            Err(Error::Busy(format!(
                "chain {chain} runs on host {} (epoch {}); {here}",
                h.host.as_deref().unwrap_or("?"),
                h.epoch
            )))
        }
        Ok(_) => match local {
            // The row says nobody else owns it: this host's standby is about to own it,
            // or the lease is free; the standby file decides (below).
            Some(pid) => refuse_on_standby(root, chain, pid),
            None => Ok(()),
        },
        // A database that refuses this config (password, TLS, not run-chain's) is a
        // config error, 78, as for a launch, `status` or `stop --fleet`.
        Err(Error::Config(m)) => Err(Error::Config(format!(
            "cannot tell whether another host runs chain {chain}: {m}"
        ))),
        // The database cannot tell: a standby here still knows it is not the owner.
        Err(e) => match local {
            Some(pid) if standing.is_some() => refuse_on_standby(root, chain, pid),
            _ => Err(Error::Busy(format!(
                "cannot tell whether another host runs chain {chain}: {e}"
            ))),
        },
    }
}

/// `stop` refused (75) on a host where the chain's instance is a standby: how to stop
/// that standby (`stop` acts on the owner only, SPEC "Beyond one host").
fn standby_hint(root: &Path, chain: &str, e: Error) -> Error {
    let Error::Busy(m) = e else { return e };
    let standby = local_holder(root, chain).map(|(pid, _)| pid).filter(|pid| {
        crate::lock::fleet::standing::read(root, chain, *pid).is_some_and(|st| !st.owner)
    });
    match standby {
        Some(pid) => Error::Busy(format!(
            "{m}; `stop` acts on the owner only: to stop this host's standby, `kill {pid}` (SIGTERM: it exits 0); to stop the chain on every host, `run-chain stop --fleet {chain}`"
        )),
        None => Error::Busy(m),
    }
}

/// A fleet chain whose instance here (`pid`) is a standby runs on another host: a kick or
/// a run-now here is refused (75), naming the host that runs it (SPEC, "Beyond one host").
fn refuse_on_standby(root: &Path, chain: &str, pid: i32) -> Result<()> {
    match crate::lock::fleet::standing::read(root, chain, pid) {
        Some(st) if !st.owner => Err(Error::Busy(match (st.host, st.epoch) {
            (Some(h), Some(e)) => format!(
                "chain {chain} runs on host {h} (epoch {e}); this host's instance (PID {pid}) is a standby"
            ),
            _ => format!(
                "chain {chain} runs on no host now; this host's instance (PID {pid}) is a standby"
            ),
        })),
        _ => Ok(()),
    }
}

/// Kick `chain` in `root` (its cooldown ends now), asked by `by`: over the chain's
/// control channel (the run it starts records `by`), or as SIGUSR1 when that does not
/// answer. The PID kicked, or None: the chain is not running.
pub(crate) fn kick_chain(root: &Path, chain: &str, by: &str) -> Result<Option<i32>> {
    let Some((pid, pidfd)) = holder_of(root, chain)? else {
        return Ok(None);
    };
    refuse_on_standby(root, chain, pid)?;
    let req = crate::run::ctl::Request::Kick { by: by.to_string() };
    if !ask_holder(root, chain, pid, &req) {
        sys::pidfd_signal(&pidfd, libc::SIGUSR1)
            .map_err(|e| Error::os(format!("signal PID {pid}"), e))?;
    }
    Ok(Some(pid))
}

pub(crate) fn kick(common: &Common, chain: &str, by: &str) -> Result<u8> {
    let root = checked_root(common, chain)?;
    refuse_non_owner(common, &root, chain)?;
    match kick_chain(&root, chain, by)? {
        Some(pid) => say!("kicked chain {chain} (PID {pid})"),
        None => say!("chain {chain} is not running; nothing to kick"),
    }
    Ok(exit::OK)
}

/// How long `run-now` waits for the chain's answer (a chain answers within one turn of
/// its loop; a store or disk stall can hold that turn up).
pub(crate) const RUN_NOW_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a run-now request got: the run id reserved, and whether it starts at once (else
/// after the run in progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunNowAccepted {
    pub(crate) run_id: u64,
    pub(crate) at_once: bool,
}

/// `run-now CHAIN TASK`, asked by `by` ("alice on pts/3", a web peer's address): the
/// request goes to the chain's lock holder over its control channel
/// ([`crate::run::ctl`]), which answers. Errors: an unknown chain or task is
/// [`Error::Usage`] (64), naming what exists; a refusal (TASK running, a request already
/// pending, the chain stopping or down) is [`Error::Busy`] (75); a chain that does not
/// answer within [`RUN_NOW_DEADLINE`] is [`Error::Internal`].
pub(crate) fn run_now(
    common: &Common,
    chain: &str,
    task: &str,
    by: &str,
) -> Result<RunNowAccepted> {
    let root = checked_root(common, chain)?;
    refuse_non_owner(common, &root, chain)?;
    run_now_in(&root, chain, task, by)
}

/// [`run_now`] in the RUN_ROOT `root` (the console's).
pub(crate) fn run_now_in(root: &Path, chain: &str, task: &str, by: &str) -> Result<RunNowAccepted> {
    use crate::run::ctl::{self, Answer, Asked, Request};
    let holder = holder_of(root, chain)?;
    let root = root.to_path_buf();
    // The chain's tasks as its CHAIN.state names them: a task it does not have is a
    // usage error here already (the chain checks again).
    if let Some((_, tasks)) = chains_and_tasks(&root)
        .into_iter()
        .find(|(c, _)| c == chain)
    {
        if !tasks.is_empty() && !tasks.iter().any(|t| t == task) {
            return Err(Error::Usage(unknown_task(chain, task, &tasks)));
        }
    }
    let Some((pid, _pidfd)) = holder else {
        // Between the old instance's exit and the new one's lock (a hand-over), nobody
        // holds the chain: say so rather than that it is down.
        if let Some((w, _)) = next::waiting_launch(&root, chain, 0) {
            return Err(Error::Busy(format!(
                "chain {chain} is being taken over by a new launch (PID {w}): ask again once it runs"
            )));
        }
        return Err(Error::Busy(format!(
            "chain {chain} is not running: nothing to run {task} (start it, then ask again)"
        )));
    };
    refuse_on_standby(&root, chain, pid)?;
    let req = Request::RunNow {
        task: task.to_string(),
        by: by.to_string(),
    };
    let start = std::time::Instant::now();
    let answer = loop {
        let left = RUN_NOW_DEADLINE.saturating_sub(start.elapsed());
        match ctl::ask(&root, chain, &req, left) {
            Asked::Answer(a) => break a,
            // The holder has not set up its channel yet (it has just started): again,
            // shortly, while it holds the lock and the deadline allows.
            Asked::NotListening(e) => {
                let still = holder_of(&root, chain)?.is_some_and(|(p, _)| p == pid);
                if !still || left.is_zero() {
                    return Err(Error::Internal(format!(
                        "chain {chain} (PID {pid}) does not listen on {}: {e}",
                        ctl::socket_path(&root, chain).display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20).min(left));
            }
            Asked::Closed => {
                return Err(Error::Busy(format!(
                    "chain {chain} (PID {pid}) closed the channel without an answer (did it exit?); the request was not taken"
                )))
            }
            Asked::TimedOut => {
                return Err(Error::Internal(format!(
                    "chain {chain} (PID {pid}) did not answer within {}s on {}",
                    RUN_NOW_DEADLINE.as_secs(),
                    ctl::socket_path(&root, chain).display()
                )))
            }
            Asked::Failed(e) => {
                return Err(Error::Internal(format!(
                    "failed to ask chain {chain} (PID {pid}) on {}: {e}",
                    ctl::socket_path(&root, chain).display()
                )))
            }
        }
    };
    match answer {
        Answer::Accepted { run_id, at_once } => Ok(RunNowAccepted { run_id, at_once }),
        Answer::Taken => Err(Error::Internal(format!(
            "chain {chain} (PID {pid}) answered the run-now request without a run id"
        ))),
        Answer::Refused(code, msg) => Err(match code.as_str() {
            "unknown-task" => Error::Usage(format!("chain {chain}: task {task:?}: {msg}")),
            "running" => Error::Busy(format!(
                "refused: task {task} of chain {chain} is running now; run-now starts a task that is not running (see `run-chain status`)"
            )),
            "stopping" => {
                let next = next::waiting_launch(&root, chain, pid)
                    .map(|(w, _)| format!("; a newer launch (PID {w}) is taking over: ask it once it runs"))
                    .unwrap_or_default();
                Error::Busy(format!("refused: chain {chain} (PID {pid}) is stopping{next}"))
            }
            _ => Error::Busy(format!("refused: {task} in chain {chain}: {msg}")),
        }),
    }
}

/// What `run-now` says of a task that the chain does not have.
fn unknown_task(chain: &str, task: &str, tasks: &[String]) -> String {
    format!(
        "chain {chain} has no task named {task:?}; its tasks: {}",
        tasks.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_chain_is_answered_with_the_chains_there() {
        let root = Path::new("/r");
        let known = vec![
            ("a_b".to_string(), vec!["a".to_string(), "b".to_string()]),
            ("c".to_string(), vec!["c".to_string(), "a".to_string()]),
            ("old".to_string(), vec![]),
        ];
        let m = unknown_chain("a", root, &known);
        assert_eq!(
            m,
            "no chain named \"a\" in /r; a is a task of chains a_b, c; the chains there: a_b, c, old"
        );
        let m = unknown_chain("x", root, &known[..1]);
        assert_eq!(m, "no chain named \"x\" in /r; the chains there: a_b");
        let m = unknown_chain("x", root, &[]);
        assert!(m.contains("no chain has run there"), "{m}");
    }
}
