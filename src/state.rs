//! The chain's carried-over state: `RUN_ROOT/CHAIN.state`.
//!
//! What a new instance needs to carry on where the old one stopped (after an upgrade,
//! a crash or a power cut): the next task (by name), when it is due, the run-id
//! counters, and the run that was in progress when the file was written. It is a small
//! TOML file replaced atomically (write a temporary file, then rename), twice per run,
//! so a reader or a crash sees either the old state or the new one, never a mix; it
//! does not depend on the record store, so it survives a store fault.
//!
//! The due time is saved as both monotonic and wall time, with the kernel's boot id:
//! on the same boot the monotonic time is trusted (a wall-clock step then causes
//! neither a burst nor a stall); after a reboot the wall time is used, capped at the
//! longest cooldown of the chain. [`resume`] is the pure part, tested below.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chain::{ChainTask, Mono, Resume};

/// The saved state of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    pub version: u32,
    /// The chain's task list when the state was written (to continue after a change).
    pub tasks: Vec<String>,
    /// The task that runs next (or ran when the file was written).
    pub next_task: Option<String>,
    /// When it is due, as CLOCK_MONOTONIC nanoseconds (valid on `boot_id` only).
    pub due_mono_ns: Option<u64>,
    /// When it is due, as Unix time in milliseconds.
    pub due_wall_ms: Option<u64>,
    pub boot_id: Option<String>,
    /// A run that was in progress when the state was written: (task, run id).
    pub running_task: Option<String>,
    pub running_run_id: Option<u64>,
    /// When that run started (Unix ms).
    pub running_since_ms: Option<u64>,
    /// Waiting for a slot of this concurrency group since `waiting_since_ms`.
    pub waiting_group: Option<String>,
    pub waiting_since_ms: Option<u64>,
    /// The last run id used per task.
    #[serde(default)]
    pub run_ids: BTreeMap<String, u64>,
    /// The failure state per task (streaks), carried over by a relaunch.
    #[serde(default)]
    pub failures: BTreeMap<String, TaskFailures>,
    /// The alert state per task, carried over by a relaunch.
    #[serde(default)]
    pub alerts: BTreeMap<String, crate::alert::AlertState>,
}

/// The failure state of one chain and task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskFailures {
    /// When the current failure streak began (Unix ms); None when the last run succeeded.
    pub streak_start_ms: Option<u64>,
    /// Failures in the current streak.
    pub failures: u64,
    pub last_success_ms: Option<u64>,
}

impl TaskFailures {
    /// Account for a run that ended at `at_ms`. Interrupted runs change nothing.
    pub fn record(&mut self, outcome: &crate::outcome::Outcome, at_ms: u64) {
        if outcome.is_success() {
            self.streak_start_ms = None;
            self.failures = 0;
            self.last_success_ms = Some(at_ms);
        } else if outcome.is_failure() {
            if self.streak_start_ms.is_none() {
                self.streak_start_ms = Some(at_ms);
                self.failures = 0;
            }
            self.failures += 1;
        }
    }

    /// The current streak: (start, failures).
    pub fn streak(&self) -> Option<(u64, u64)> {
        self.streak_start_ms.map(|s| (s, self.failures))
    }
}

pub const STATE_VERSION: u32 = 1;

/// Where the state of `chain` lives.
pub fn path(run_root: &Path, chain: &str) -> PathBuf {
    run_root.join(format!("{chain}.state"))
}

/// Read the state; a missing file is an empty state. A file that cannot be parsed is
/// reported (the caller logs it) and treated as empty.
pub fn load(path: &Path) -> std::result::Result<State, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            format!(
                "cannot parse {}: {} (starting from the first task)",
                path.display(),
                e.to_string().trim_end()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!(
            "cannot read {}: {e} (starting from the first task)",
            path.display()
        )),
    }
}

/// Replace the state file atomically (mode 0600).
pub fn save(path: &Path, state: &State) -> std::io::Result<()> {
    let text = toml::to_string(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("state.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The clocks, as read by the driver when it resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clocks {
    pub mono: Mono,
    pub wall_ms: u64,
    pub boot_id: Option<String>,
}

/// What resuming from `state` means for a chain of `tasks`, given the clocks now.
/// Also returns a warning to log, if a run was left in progress (a crash).
pub fn resume(state: &State, tasks: &[ChainTask], now: &Clocks) -> (Resume, Option<String>) {
    let index_of = |name: &str| tasks.iter().position(|t| t.name == name);
    let mut warning = None;
    // A run left in progress: its instance died (or was killed) mid-run. Run it again first.
    if let Some(t) = &state.running_task {
        if let Some(i) = index_of(t) {
            warning = Some(format!(
                "task {t} run {} was still running when the previous instance ended; running it again",
                state.running_run_id.unwrap_or(0)
            ));
            return (
                Resume {
                    index: i,
                    due: None,
                    run_ids: state.run_ids.clone(),
                },
                warning,
            );
        }
    }
    let index = match &state.next_task {
        None => 0,
        Some(t) => match index_of(t) {
            Some(i) => i,
            None => {
                // The list changed: the next task of the old list that is still in the
                // new one, else the first.
                let start = state.tasks.iter().position(|x| x == t);
                start
                    .and_then(|s| {
                        (1..=state.tasks.len())
                            .map(|k| &state.tasks[(s + k) % state.tasks.len()])
                            .find_map(|n| index_of(n))
                    })
                    .unwrap_or(0)
            }
        },
    };
    let same_boot = state.boot_id.is_some() && state.boot_id == now.boot_id;
    let longest = tasks
        .iter()
        .map(|t| t.timing.success_cooldown.max(t.timing.fail_cooldown))
        .max()
        .unwrap_or(Duration::ZERO);
    let due = match (same_boot, state.due_mono_ns, state.due_wall_ms) {
        (true, Some(ns), _) => {
            let d = Duration::from_nanos(ns);
            // Never wait longer than the longest cooldown from now.
            Some(d.min(now.mono + longest))
        }
        (_, _, Some(ms)) => {
            let remaining = Duration::from_millis(ms.saturating_sub(now.wall_ms));
            Some(now.mono + remaining.min(longest))
        }
        _ => None,
    };
    if warning.is_none() && state.running_task.is_some() {
        warning = Some("the task that was running is no longer in the chain".to_string());
    }
    (
        Resume {
            index,
            due,
            run_ids: state.run_ids.clone(),
        },
        warning,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timing;

    fn tasks(names: &[&str]) -> Vec<ChainTask> {
        names
            .iter()
            .map(|n| ChainTask {
                name: n.to_string(),
                timing: Timing {
                    success_cooldown: Duration::from_secs(60),
                    fail_cooldown: Duration::from_secs(120),
                    timeout: None,
                    stop_grace: Duration::from_secs(1),
                    kill_grace: Duration::from_secs(1),
                },
            })
            .collect()
    }

    fn clocks(mono_s: u64, wall_s: u64, boot: &str) -> Clocks {
        Clocks {
            mono: Duration::from_secs(mono_s),
            wall_ms: wall_s * 1000,
            boot_id: Some(boot.into()),
        }
    }

    fn saved(next: &str, due_mono_s: u64, due_wall_s: u64) -> State {
        State {
            version: STATE_VERSION,
            tasks: vec!["a".into(), "b".into(), "c".into()],
            next_task: Some(next.into()),
            due_mono_ns: Some(due_mono_s * 1_000_000_000),
            due_wall_ms: Some(due_wall_s * 1000),
            boot_id: Some("boot1".into()),
            ..State::default()
        }
    }

    #[test]
    fn empty_state_starts_at_first_task_now() {
        let (r, w) = resume(&State::default(), &tasks(&["a", "b"]), &clocks(5, 5, "x"));
        assert_eq!(r.index, 0);
        assert_eq!(r.due, None);
        assert!(w.is_none());
    }

    #[test]
    fn same_boot_trusts_monotonic_time() {
        // The wall clock jumped a day forward: the monotonic due time still holds.
        let s = saved("b", 100, 1000);
        let (r, _) = resume(
            &s,
            &tasks(&["a", "b", "c"]),
            &clocks(50, 1000 + 86400, "boot1"),
        );
        assert_eq!(r.index, 1);
        assert_eq!(r.due, Some(Duration::from_secs(100)));
    }

    #[test]
    fn other_boot_uses_wall_time_capped() {
        let s = saved("b", 100, 1030);
        let (r, _) = resume(&s, &tasks(&["a", "b", "c"]), &clocks(7, 1000, "boot2"));
        assert_eq!(r.due, Some(Duration::from_secs(37)));
        // A wall clock far behind cannot stall the chain past its longest cooldown.
        let (r, _) = resume(&s, &tasks(&["a", "b", "c"]), &clocks(7, 10, "boot2"));
        assert_eq!(r.due, Some(Duration::from_secs(7 + 120)));
    }

    #[test]
    fn interrupted_run_goes_first() {
        let mut s = saved("b", 100, 1000);
        s.running_task = Some("b".into());
        s.running_run_id = Some(3);
        let (r, w) = resume(&s, &tasks(&["a", "b", "c"]), &clocks(50, 1000, "boot1"));
        assert_eq!((r.index, r.due), (1, None));
        assert!(w.expect("warning").contains("run 3"));
    }

    #[test]
    fn changed_list_continues_with_next_still_present() {
        let s = saved("b", 100, 1000);
        let (r, _) = resume(&s, &tasks(&["c", "a"]), &clocks(50, 1000, "boot1"));
        assert_eq!(r.index, 0, "b is gone; c came after it");
        let (r, _) = resume(&s, &tasks(&["x", "y"]), &clocks(50, 1000, "boot1"));
        assert_eq!(r.index, 0);
    }

    #[test]
    fn streaks() {
        use crate::outcome::Outcome;
        let mut f = TaskFailures::default();
        f.record(&Outcome::Failed(1), 10);
        f.record(&Outcome::Timeout, 20);
        f.record(&Outcome::Interrupted, 25);
        assert_eq!(f.streak(), Some((10, 2)));
        f.record(&Outcome::Success, 30);
        assert_eq!(f.streak(), None);
        assert_eq!(f.last_success_ms, Some(30));
        f.record(&Outcome::Signal(9), 40);
        assert_eq!(f.streak(), Some((40, 1)));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), "c");
        let mut s = saved("b", 1, 2);
        s.run_ids.insert("a".into(), 7);
        s.failures.insert(
            "a".into(),
            TaskFailures {
                streak_start_ms: Some(5),
                failures: 2,
                last_success_ms: None,
            },
        );
        s.waiting_group = Some("db".into());
        save(&p, &s).expect("save");
        assert_eq!(load(&p).expect("load"), s);
        assert_eq!(
            load(&dir.path().join("none.state")).expect("empty"),
            State::default()
        );
    }
}
