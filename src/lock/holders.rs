//! Who holds each chain's lock, for many chains at once: the chains of a RUN_ROOT
//! (every valid `CHAIN.pid`) and the process holding each one's lock, as the readers
//! (`status`, the metrics) need them without taking any lock themselves.

use std::path::Path;

use crate::config::check_name;
use crate::error::{Error, Result};
use crate::lock::pidfile::{lock_holders, Locks, PidFile};

/// Chains in RUN_ROOT: every valid `CHAIN.pid`.
pub(crate) fn chains(run_root: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(run_root).map_err(|e| {
        Error::Usage(format!(
            "cannot read RUN_ROOT {}: {e} (set it with --run-root, RUN_ROOT or run_root in the config)",
            run_root.display()
        ))
    })?;
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let chain = name.strip_suffix(".pid")?;
            check_name(chain).ok()?;
            Some(chain.to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The process holding each chain's lock (None: the chain is down), as
/// [`PidFile::holder_in`] decides, for many chains at once.
///
/// `holder_in` confirms the PID written in a pidfile by reading every
/// `/proc/PID/fdinfo/*` of that process: a dozen files for one chain, but thousands
/// for a RUN_ROOT of 100 chains (and ~100 per chain when one process holds many locks).
/// Here each PID named by a pidfile is looked at once: its `/proc/PID/fd/*` are
/// stat'ed (one system call each) and only the descriptors open on one of its
/// pidfiles have their fdinfo read, where the kernel lists the flock locks of that
/// descriptor (a `lock:` line shows only on a descriptor open on the locked file, so
/// none is missed). A chain not confirmed that way (down, or its pidfile names
/// another process) is decided by `holder_in` itself, with /proc/locks read at most
/// once for all of them.
pub(crate) fn holders(run_root: &Path, names: &[String]) -> Vec<Option<i32>> {
    use std::collections::{HashMap, HashSet};
    use std::os::unix::fs::MetadataExt;

    /// A chain's pidfile, its file (dev, ino) and the PID written in it.
    type Opened = (PidFile, (u64, u64), Option<i32>);
    let files: Vec<Option<Opened>> = names
        .iter()
        .map(|c| {
            let pf = PidFile::open_existing(run_root, c).ok().flatten()?;
            let meta = std::fs::symlink_metadata(pf.path()).ok()?;
            let pid = pf.text_pid();
            Some((pf, (meta.dev(), meta.ino()), pid))
        })
        .collect();
    let mut wanted: HashMap<i32, HashSet<(u64, u64)>> = HashMap::new();
    for (_, file, pid) in files.iter().flatten() {
        if let Some(p) = pid {
            wanted.entry(*p).or_default().insert(*file);
        }
    }
    let mut confirmed: HashSet<(i32, (u64, u64))> = HashSet::new();
    for (pid, want) in &wanted {
        for file in write_flocks_on(*pid, want) {
            confirmed.insert((*pid, file));
        }
    }
    let mut locks = Locks::default();
    files
        .iter()
        .map(|f| {
            let (pf, file, pid) = f.as_ref()?;
            match pid {
                Some(p) if confirmed.contains(&(*p, *file)) => Some(*p),
                _ => pf.holder_in(&mut locks),
            }
        })
        .collect()
}

/// Which of the files `want` (dev, ino) process `pid` holds a flock WRITE lock on,
/// from the fdinfo of its descriptors open on them (see [`holders`]).
fn write_flocks_on(pid: i32, want: &std::collections::HashSet<(u64, u64)>) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        // The descriptor's file (the link is followed to the open file itself).
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        let file = (meta.dev(), meta.ino());
        if !want.contains(&file) || out.contains(&file) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let holds = text.lines().any(|line| {
            // "lock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (the PID is the
            // lock's first owner, which need not be `pid`: what counts is that `pid`
            // has it open).
            let Some(rest) = line.strip_prefix("lock:") else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() >= 6
                && f[1] == "FLOCK"
                && f[3] == "WRITE"
                && !lock_holders(
                    &format!("1: FLOCK ADVISORY WRITE 1 {} 0 EOF", f[5]),
                    file.0,
                    file.1,
                )
                .is_empty()
        });
        if holds {
            out.push(file);
            if out.len() == want.len() {
                // Every wanted file is confirmed: the rest of the descriptors (a chain
                // holds ~20, its pidfile among the first) need no stat.
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_of_many_chains_held_by_one_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = std::process::id() as i32;
        // a, b: locked here, our PID written; c: locked here, another PID written (found
        // through /proc/locks); d: our PID written but not locked (an instance that
        // stopped); e: no pidfile.
        let mut held = Vec::new();
        for c in ["a", "b", "c"] {
            let mut pf = PidFile::open(dir.path(), c).expect("open");
            assert!(pf.try_lock().expect("lock"));
            pf.write_pid().expect("write");
            held.push(pf);
        }
        std::fs::write(crate::lock::pidfile::path(dir.path(), "c"), "1\n").expect("write");
        let mut d = PidFile::open(dir.path(), "d").expect("open");
        d.write_pid().expect("write");
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(
            holders(dir.path(), &names),
            vec![Some(me), Some(me), Some(me), None, None]
        );
        // Each as PidFile::holder decides it alone.
        for (c, want) in names.iter().zip(holders(dir.path(), &names)) {
            let alone = PidFile::open_existing(dir.path(), c)
                .expect("open")
                .and_then(|pf| pf.holder());
            assert_eq!(alone, want, "{c}");
        }
    }
}
