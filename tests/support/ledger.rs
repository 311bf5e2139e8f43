//! The ledger: every task of a fleet test appends its start (`S`), its ticks (`T`) and its end
//! (`E`, from a TERM trap too) with its host and a CLOCK_MONOTONIC stamp to one file, through
//! the tiny C program `stamp` (one `write(2)` on an `O_APPEND` descriptor per line, so lines of
//! concurrent writers never interleave). The judge reads it back as per-run intervals and
//! decides overlap independently of the record store.
//!
//! Line: `KIND HOST CHAIN TASK PID MONO_NS`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const STAMP_C: &str = include_str!("stamp.c");

/// The `stamp` program, compiled with the system C compiler once per test binary (into cargo's
/// CARGO_TARGET_TMPDIR, under a name carrying the source's hash and the test's pid, so
/// parallel binaries do not race).
pub fn stamp_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-chain-stamp");
        fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR/run-chain-stamp");
        let pid = std::process::id();
        let src = dir.join(format!("stamp-{pid}.c"));
        let bin = dir.join(format!("stamp-{pid}"));
        fs::write(&src, STAMP_C).expect("write stamp.c");
        let out = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("the system C compiler `cc` (Debian's gcc) is needed to build tests/support/stamp.c");
        assert!(
            out.status.success(),
            "cc failed on stamp.c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = fs::remove_file(&src);
        bin
    })
}

/// CLOCK_MONOTONIC now, in nanoseconds (the ledger's clock).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes an executable `sh` task script at `path` that stamps `S`, traps TERM (stamps `E`,
/// exits 143), ticks `ticks` times (`sleep TICK` then stamps `T`), then stamps `E`. The host is
/// the task's `$RC_HOST` (set per instance by the test), chain and task come from run-chain's
/// `RUN_CHAIN_NAME`/`RUN_CHAIN_TASK`.
pub fn write_task_script(path: &Path, ledger: &Path, ticks: u32, tick: &str) -> PathBuf {
    let stamp = stamp_bin();
    let q = |p: &Path| format!("'{}'", p.display());
    let text = format!(
        "#!/bin/sh\n\
         st() {{ {stamp} {ledger} \"$1\"; }}\n\
         st S\n\
         trap 'st E; exit 143' TERM\n\
         i=0\n\
         while [ $i -lt {ticks} ]; do\n\
         \x20 sleep {tick} & wait $!\n\
         \x20 st T\n\
         \x20 i=$((i + 1))\n\
         done\n\
         st E\n",
        stamp = q(stamp),
        ledger = q(ledger),
    );
    fs::write(path, text).expect("write the task script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod the task script");
    path.to_path_buf()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub kind: char,
    pub host: String,
    pub chain: String,
    pub task: String,
    pub pid: i32,
    pub mono: u64,
}

/// One run as the ledger saw it: from its `S` to its last `T`/`E` (a run killed by SIGKILL has
/// no `E`: its last tick bounds its end within one tick).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub host: String,
    pub chain: String,
    pub task: String,
    pub pid: i32,
    pub start: u64,
    pub end: u64,
    pub ended: bool,
    pub ticks: usize,
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {} {}/{} pid {} [{:.3} s .. {:.3} s]{} ({} ticks)",
            self.host,
            self.chain,
            self.task,
            self.pid,
            self.start as f64 / 1e9,
            self.end as f64 / 1e9,
            if self.ended { " E" } else { " no E" },
            self.ticks
        )
    }
}

pub fn parse_line(line: &str) -> Result<Stamp, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 6 {
        return Err(format!("ledger line {line:?}: expected 6 fields"));
    }
    let kind = match f[0] {
        "S" => 'S',
        "T" => 'T',
        "E" => 'E',
        k => return Err(format!("ledger line {line:?}: kind {k:?}")),
    };
    let pid = f[4]
        .parse()
        .map_err(|_| format!("ledger line {line:?}: pid"))?;
    let mono = f[5]
        .parse()
        .map_err(|_| format!("ledger line {line:?}: mono"))?;
    Ok(Stamp {
        kind,
        host: f[1].to_owned(),
        chain: f[2].to_owned(),
        task: f[3].to_owned(),
        pid,
        mono,
    })
}

/// The parsed ledger: runs keyed by (host, pid) in order of their start.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub runs: Vec<Interval>,
}

impl Ledger {
    /// Reads the ledger file (missing = empty). A trailing partial line cannot happen (one
    /// write per line) and is an error like any malformed line.
    pub fn read(path: &Path) -> Ledger {
        let text = fs::read_to_string(path).unwrap_or_default();
        Ledger::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Ledger, String> {
        let mut runs: BTreeMap<(String, i32), Interval> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let s = parse_line(line)?;
            let key = (s.host.clone(), s.pid);
            match s.kind {
                'S' => {
                    if runs.contains_key(&key) {
                        return Err(format!("second S for host {} pid {}", s.host, s.pid));
                    }
                    runs.insert(
                        key,
                        Interval {
                            host: s.host,
                            chain: s.chain,
                            task: s.task,
                            pid: s.pid,
                            start: s.mono,
                            end: s.mono,
                            ended: false,
                            ticks: 0,
                        },
                    );
                }
                k => {
                    let run = runs.get_mut(&key).ok_or_else(|| {
                        format!("{k} without S for host {} pid {}: {line:?}", s.host, s.pid)
                    })?;
                    run.end = run.end.max(s.mono);
                    if k == 'E' {
                        run.ended = true;
                    } else {
                        run.ticks += 1;
                    }
                }
            }
        }
        let mut runs: Vec<Interval> = runs.into_values().collect();
        runs.sort_by_key(|r| (r.start, r.end));
        Ok(Ledger { runs })
    }

    /// Pairs of runs on different hosts whose intervals overlap.
    pub fn overlaps(&self) -> Vec<(Interval, Interval)> {
        let mut out = Vec::new();
        for (i, a) in self.runs.iter().enumerate() {
            for b in &self.runs[i + 1..] {
                if a.host != b.host && a.start < b.end && b.start < a.end {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
        out
    }

    /// None when no two runs of different hosts overlap; else a report listing every
    /// overlapping pair and then every run.
    pub fn overlap_report(&self) -> Option<String> {
        let o = self.overlaps();
        if o.is_empty() {
            return None;
        }
        let mut msg = format!(
            "{} overlapping pair(s) of runs on different hosts:\n",
            o.len()
        );
        for (a, b) in &o {
            msg += &format!("  {a}\n  overlaps {b}\n");
        }
        msg += "all runs:\n";
        for r in &self.runs {
            msg += &format!("  {r}\n");
        }
        Some(msg)
    }

    /// Panics with `overlap_report()` if runs of two different hosts overlap.
    pub fn assert_no_overlap(&self) {
        if let Some(msg) = self.overlap_report() {
            panic!("{msg}");
        }
    }

    /// The first run (of `host`, or of any host when None) that started after `mono`.
    pub fn first_start_after(&self, host: Option<&str>, mono: u64) -> Option<&Interval> {
        self.runs
            .iter()
            .filter(|r| r.start > mono && host.is_none_or(|h| r.host == h))
            .min_by_key(|r| r.start)
    }

    /// The runs of one host.
    pub fn of_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Interval> + 'a {
        self.runs.iter().filter(move |r| r.host == host)
    }

    /// The run with the latest start, if any.
    pub fn last(&self) -> Option<&Interval> {
        self.runs.iter().max_by_key(|r| r.start)
    }

    /// Runs still open (no `E`) at the end of the ledger.
    pub fn open_runs(&self) -> Vec<&Interval> {
        self.runs.iter().filter(|r| !r.ended).collect()
    }
}
