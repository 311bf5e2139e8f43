//! `stop --fleet CHAIN` (issue 20): every instance of the chain on every host stops,
//! owner and standbys, and exits 0.
//!
//! The command sets the chain's flag in the fleet store (`leases.stop_fleet_at = now()`
//! on the database's clock, an upsert), from its own thread through one short-lived
//! [`Conn`]. Every instance launched before that moment sees it: the owner in its next
//! renew's answer (`lease / 5`), a standby at its next acquire try (0.5..1 s), and stops
//! the graceful way (the owner as `stop` does: its running task has `stop_grace`; then it
//! releases the lease). An instance launched after the flag is newer than it and runs: so
//! the flag never needs clearing, "the next launch clears it" in effect.
//!
//! The command then waits until every instance it knew of when it set the flag has gone:
//! the lease's holder then (the lease released or expired, or held by a newer launch),
//! the standbys seen within the last lease (each leaves its row as it exits; one killed
//! ages out), and this host's instance (its pidfd). Past the longest `stop_grace +
//! kill_grace` of the config's tasks plus a lease and a margin, it gives up: exit 75,
//! naming who is still there (the flag stays: they stop when they see it).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::cli::Common;
use crate::config::{self, Config};
use crate::error::{exit, Error, Result};
use crate::root::{config_path, looked_run_root};
use crate::store::pg::conn::Conn;
use crate::store::pg::lease as sql;
use crate::sys;

use crate::control::{fleet_connect as connect, DB_TIMEOUT};

pub(super) fn stop_fleet(common: &Common, chain: &str) -> Result<u8> {
    config::check_name(chain).map_err(|m| Error::Usage(format!("chain {chain:?}: {m}")))?;
    let path = config_path(common);
    let config = Config::load(&path)?;
    let Some(cfg) = config.store.clone() else {
        return Err(Error::Usage(format!(
            "stop --fleet: {} has no [store] section: without a fleet, `run-chain stop {chain}` stops the chain",
            path.display()
        )));
    };
    let root = looked_run_root(common)?;
    let limit = config
        .tasks
        .values()
        .map(|t| t.timing.stop_grace + t.timing.kill_grace)
        .max()
        .unwrap_or_default()
        + cfg.lease
        + Duration::from_secs(5);
    // Seen lately: a live standby tries (and says so) every 0.5..1 s.
    let recent = cfg.lease.max(Duration::from_secs(2));
    let db = |e: crate::store::pg::conn::DbError| {
        Error::Busy(format!(
            "stop --fleet: the fleet's database ({}) failed: {e}",
            cfg.display_url
        ))
    };
    let mut conn = connect(&cfg, &path)?;
    // This host's instance, if any: waited for on its pidfd too.
    let local = crate::control::local_holder(&root, chain);
    let flag_at = sql::stop_fleet(&conn, chain, DB_TIMEOUT).map_err(db)?;
    let t0 = Instant::now();
    let owner = sql::read(&conn, chain, DB_TIMEOUT)
        .map_err(db)?
        .filter(sql::Holder::held);
    let standbys = sql::standbys(&conn, chain, recent, DB_TIMEOUT).map_err(db)?;
    let mut known: Vec<String> = Vec::new();
    if let Some(o) = &owner {
        known.push(format!(
            "owner on host {} (epoch {})",
            o.host.as_deref().unwrap_or("?"),
            o.epoch
        ));
    }
    for (_, h) in &standbys {
        known.push(format!("standby on host {h}"));
    }
    if let Some((pid, _)) = &local {
        known.push(format!("this host's instance (PID {pid})"));
    }
    eprintln!(
        "run-chain: stop --fleet: chain {chain} asked to stop on every host (flag set at {} on the database's clock); waiting for {}",
        crate::time::rfc3339((flag_at.max(0.0) * 1000.0) as u64),
        if known.is_empty() {
            "nothing: no instance is known".to_string()
        } else {
            known.join(", ")
        }
    );
    let mut left_owner = owner.map(|o| (o.holder, o.epoch));
    let mut left_standbys: Vec<(String, String)> = standbys;
    let mut local = local;
    loop {
        if let Some((_, fd)) = &local {
            let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
            if sys::ppoll(&mut fds, Some(Duration::ZERO)).is_ok() && fds[0].revents != 0 {
                local = None;
            }
        }
        let step = (|| -> std::result::Result<(), crate::store::pg::conn::DbError> {
            if left_owner.is_some() {
                let now = sql::read(&conn, chain, DB_TIMEOUT)?;
                let same = now.is_some_and(|h| {
                    h.held() && Some((h.holder.clone(), h.epoch)) == left_owner.clone()
                });
                if !same {
                    left_owner = None;
                }
            }
            if !left_standbys.is_empty() {
                let now = sql::standbys(&conn, chain, recent, DB_TIMEOUT)?;
                left_standbys.retain(|s| now.contains(s));
            }
            Ok(())
        })();
        if let Err(e) = step {
            log::debug!("stop --fleet: {e}; connecting again");
            if let Ok(c) = Conn::connect(&cfg, DB_TIMEOUT) {
                conn = c;
            }
        }
        if left_owner.is_none() && left_standbys.is_empty() && local.is_none() {
            say!(
                "chain {chain} stopped on every host ({:.2} s)",
                t0.elapsed().as_secs_f64()
            );
            return Ok(exit::OK);
        }
        if t0.elapsed() >= limit {
            let mut still = Vec::new();
            if let Some((_, e)) = &left_owner {
                still.push(format!("the owner (epoch {e})"));
            }
            for (_, h) in &left_standbys {
                still.push(format!("a standby on host {h}"));
            }
            if let Some((pid, _)) = &local {
                still.push(format!("this host's instance (PID {pid})"));
            }
            return Err(Error::Busy(format!(
                "stop --fleet: chain {chain}: still running after {} s: {} (the flag stays set: they stop when they see it)",
                limit.as_secs(),
                still.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
