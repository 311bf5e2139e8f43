//! `run-chain store import PATH` (issue 20): copy a host's SQLite history into the fleet's
//! store (the config's `[store]`), idempotent (see `store/pg/import.rs`).
//!
//! Exits: 64 without `[store]` (nothing to import into: the command line asks for what the
//! config cannot give) and when PATH is not a run-chain SQLite store (a bad argument, not a
//! bad config: 78 is for the config file and RUN_ROOT); 78 for a config that does not load
//! or a database that is not run-chain's; 75 when a chain of PATH is owned right now by an
//! instance of the fleet (its lease is held: the import takes each chain's lease like
//! `--once`, so that no owner gives run ids meanwhile; the other chains are imported, and
//! importing again after the owner stopped completes it), and also when its last owner
//! died holding the lease (its open runs are for its successor to close: launch the chain
//! first); 0 otherwise.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cli::Common;
use crate::config::Config;
use crate::control::{fleet_connect, DB_TIMEOUT};
use crate::error::{exit, Error, Result};
use crate::root::config_path;
use crate::store::import_read::{self, SrcSeries};
use crate::store::pg::{conn::ConnError, import, lease, schema};

pub(super) fn store_import(common: &Common, path: &Path) -> Result<u8> {
    let file = config_path(common);
    let config = Config::load(&file)?;
    let Some(cfg) = config.store else {
        return Err(Error::Usage(format!(
            "store import: {} has no [store] section: there is no fleet store to import into (add [store] with the PostgreSQL url)",
            file.display()
        )));
    };
    let series =
        import_read::read_store(path).map_err(|m| Error::Usage(format!("store import: {m}")))?;
    let conn = fleet_connect(&cfg, &file)?;
    schema::ensure(&conn).map_err(|e| match e {
        ConnError::Refused(m) => cfg.refused(&file, &m),
        ConnError::Unreachable(m) => Error::Busy(format!("store import: {m}")),
    })?;
    let db = |e: crate::store::pg::conn::DbError| {
        Error::Busy(format!(
            "store import: the fleet's database ({}) failed: {e}; nothing of the series being imported was kept: import again",
            cfg.display_url
        ))
    };
    let mut by_chain: BTreeMap<&str, Vec<&SrcSeries>> = BTreeMap::new();
    for s in &series {
        by_chain.entry(s.chain.as_str()).or_default().push(s);
    }
    let holder = lease::new_holder_id()
        .ok_or_else(|| Error::Internal("no random bytes for the import's lease holder".into()))?;
    let (mut imported, mut skipped, mut renumbered, mut aggregates) = (0u64, 0u64, 0u64, 0u64);
    let mut hosts: Vec<String> = Vec::new();
    let mut held: Vec<String> = Vec::new();
    for (chain, list) in &by_chain {
        let me = lease::Me {
            chain,
            holder: &holder,
            host: &cfg.host,
            lease: cfg.lease,
        };
        lease::ensure_row(&conn, chain, DB_TIMEOUT).map_err(db)?;
        // An owner that died holding the lease leaves runs open that its successor closes
        // (`interrupted`, from the predecessor the acquire returns): the import does not
        // take that part, so it leaves such a chain alone.
        if let Some(h) = lease::read(&conn, chain, DB_TIMEOUT)
            .map_err(db)?
            .filter(|h| h.holder.is_some() && !h.held())
        {
            held.push(format!(
                "{chain} (its last owner, host {}, epoch {}, ended without releasing its lease: launch the chain once, e.g. with --once, so that its runs are closed)",
                h.host.unwrap_or_else(|| "?".into()),
                h.epoch
            ));
            continue;
        }
        let launch = lease::db_now(&conn, DB_TIMEOUT).map_err(db)?;
        let Some((epoch, _)) = lease::acquire(&conn, &me, launch, DB_TIMEOUT).map_err(db)? else {
            let who = lease::read(&conn, chain, DB_TIMEOUT).map_err(db)?;
            let (host, epoch) = who
                .map(|h| (h.host.unwrap_or_else(|| "?".into()), h.epoch))
                .unwrap_or_else(|| ("?".into(), 0));
            held.push(format!("{chain} (owned by host {host}, epoch {epoch}: stop it, e.g. with `run-chain stop --fleet {chain}`)"));
            continue;
        };
        let mut result = Ok(());
        for s in list {
            let host = import_read::source_host(s);
            if !hosts.contains(&host) {
                hosts.push(host.clone());
            }
            match import::import_series(&conn, s, &host, &holder, epoch, DB_TIMEOUT) {
                Ok(done) => {
                    imported += done.imported;
                    skipped += done.skipped;
                    renumbered += done.renumbered.len() as u64;
                    aggregates += u64::from(done.aggregates);
                    for r in &done.renumbered {
                        println!(
                            "renumbered: chain {} task {} run {} (host {}) -> run {}",
                            r.chain, r.task, r.from, r.host, r.to
                        );
                    }
                }
                Err(e) => {
                    result = Err(db(e));
                    break;
                }
            }
            // Keep the lease for the next series (a long import outlives one lease).
            if let Ok(lease::Renewed::Lost) = lease::renew(&conn, &me, epoch, launch, DB_TIMEOUT) {
                result = Err(Error::Busy(format!(
                    "store import: chain {chain}: the lease was taken over during the import; import again"
                )));
                break;
            }
        }
        let _ = lease::release(&conn, &me, epoch, DB_TIMEOUT);
        result?;
    }
    if !hosts.is_empty() {
        println!(
            "store import: {} (host {}): {imported} runs imported, {skipped} skipped (imported before), {renumbered} renumbered; aggregates of {aggregates} series added",
            path.display(),
            hosts.join(", "),
        );
    } else if held.is_empty() {
        println!("store import: {}: no runs to import", path.display());
    } else {
        println!(
            "store import: {}: nothing imported: every chain of it was skipped (below)",
            path.display()
        );
    }
    if !held.is_empty() {
        return Err(Error::Busy(format!(
            "store import: not imported: {}; then import again (what was imported stays, nothing is imported twice)",
            held.join(", ")
        )));
    }
    Ok(exit::OK)
}
