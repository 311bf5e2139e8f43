//! The wording of alert mails: the subject, the body, the error in brief, and when the
//! failing task is tried next.
//!
//! Pure: given the facts of an alert (see [`AlertMail`]), the time and a
//! way to show a time of day, it returns text. The one function that asks the OS
//! (`time::local_hhmm`, the local time zone) lives in [`crate::time`]; the driver passes
//! it in.
//!
//! Every alert, whenever it is sent (at a run's end, between runs, by a relaunched
//! instance), shows the streak's last failed run: its outcome, start, duration and
//! output, and the real time of the next attempt. The subject reads plainly, one form per
//! kind, with no parentheses inside parentheses of our own making:
//!
//! ```text
//! [run-chain] web-3: send_mail failed (exit 1: ZeroDivisionError: division by zero)
//! [run-chain] web-3: send_mail failing with a new error (exit 1: KeyError: 'x')
//! [run-chain] web-3: send_mail failing for 6h (exit 1: ZeroDivisionError: division by zero)
//! [run-chain] web-3: send_mail recovered after 6h (12 failures)
//! ```
//!
//! A task in a chain of another name is "send_mail in chain nightly" (a task may be in
//! several chains, and a careful admin wants to know which one failed).

use std::time::Duration;

use crate::core::outcome::Outcome;

/// What an alert says: the facts, gathered by the driver; the wording (subject, body) is
/// made below, the message and its sending are `mail`'s.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlertMail {
    pub(crate) kind: String,
    pub(crate) chain: String,
    pub(crate) task: String,
    pub(crate) host: String,
    pub(crate) command: String,
    /// The streak's last failed run: its id, outcome ("failed (exit code 1)"), the
    /// outcome in brief ("exit 1"), its last line of output, its start and duration.
    pub(crate) run_id: Option<u64>,
    pub(crate) outcome: String,
    pub(crate) brief: String,
    pub(crate) last_line: String,
    pub(crate) started: String,
    pub(crate) duration: String,
    pub(crate) streak_start: String,
    /// How long the streak has lasted (for `recovered`: its whole length).
    pub(crate) streak_length: String,
    pub(crate) streak_ms: u64,
    pub(crate) failures: u64,
    pub(crate) next_attempt: String,
    pub(crate) held_back: u64,
    /// The tail of the last failed run's output, and how many bytes it printed.
    pub(crate) output: Vec<u8>,
    pub(crate) output_bytes: u64,
    /// Why the output is missing, when it could not be had.
    pub(crate) output_note: Option<String>,
    /// For `recovered`: the run that succeeded.
    pub(crate) recovered_by: Option<String>,
    /// When the alert was decided (Unix ms).
    pub(crate) at_ms: u64,
}

/// The error part of a subject is cut to this many characters.
pub(crate) const SUBJECT_ERROR_MAX: usize = 80;

/// A chain's name in a subject is cut to this many characters.
const SUBJECT_CHAIN_MAX: usize = 40;

/// How a run ended, briefly, for a subject: `exit 1`, `SIGKILL`, `timed out after 5m`,
/// `could not start`. `timeout` is the task's configured timeout (else the run's duration
/// is said).
pub(crate) fn brief(outcome: &Outcome, timeout: Option<Duration>, duration: Duration) -> String {
    match outcome {
        Outcome::Success => "ok".to_string(),
        Outcome::Failed(c) => format!("exit {c}"),
        Outcome::Signal(s) => crate::core::outcome::signal_name(*s),
        Outcome::Timeout => format!("timed out after {}", short_age(timeout.unwrap_or(duration))),
        Outcome::SpawnError(_) => "could not start".to_string(),
        Outcome::Interrupted => "interrupted".to_string(),
    }
}

/// The outcome of a recorded run, from the record store's columns (None: not a failure,
/// or a label this version does not know).
pub(crate) fn failed_outcome(
    label: Option<&str>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error: Option<&str>,
) -> Option<Outcome> {
    match label? {
        "failed" => Some(Outcome::Failed(exit_code.unwrap_or(-1))),
        "signal" => Some(Outcome::Signal(signal.unwrap_or(0))),
        "timeout" => Some(Outcome::Timeout),
        "spawn-error" => Some(Outcome::SpawnError(error.unwrap_or_default().to_string())),
        _ => None,
    }
}

/// The last non-empty line of `output`, lossily decoded and trimmed.
pub(crate) fn last_line(output: &[u8]) -> Option<String> {
    String::from_utf8_lossy(output)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// One line for a header: control characters (a CR, an LF, an escape sequence) become
/// spaces, runs of white space one space, and `(os error N)` (the OS's number, noise in
/// a subject) is dropped.
pub(crate) fn one_line(s: &str) -> String {
    let spaced: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    while let Some(at) = out.find(" (os error ") {
        let Some(len) = out[at..].find(')') else {
            break;
        };
        out.replace_range(at..at + len + 1, "");
    }
    out
}

/// `s` cut to at most `max` characters, ending in `...` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.truncate(out.trim_end().len());
    out.push_str("...");
    out
}

/// The error of a failed run for a subject: its outcome in brief and its last line of
/// output (the line its signature is made of), on one line, at most
/// [`SUBJECT_ERROR_MAX`] characters: `exit 1: ZeroDivisionError: division by zero`.
pub(crate) fn subject_error(brief: &str, last_line: &str) -> String {
    let line = one_line(last_line);
    let brief = one_line(brief);
    let whole = match (brief.is_empty(), line.is_empty()) {
        (_, true) => brief,
        (true, false) => line,
        (false, false) => format!("{brief}: {line}"),
    };
    shorten(&whole, SUBJECT_ERROR_MAX)
}

/// A duration in a subject, rounded down to its largest units: `45s`, `12m`, `6h`,
/// `6h 30m`, `2d`, `2d 5h`.
pub(crate) fn short_age(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{mins}m"),
        3600..86_400 if mins == 0 => format!("{hours}h"),
        3600..86_400 => format!("{hours}h {mins}m"),
        _ if hours == 0 => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Who failed: the task, and its chain when that has another name.
fn who(task: &str, chain: &str) -> String {
    let task = one_line(task);
    if chain.is_empty() || chain == task {
        task
    } else {
        format!(
            "{task} in chain {}",
            shorten(&one_line(chain), SUBJECT_CHAIN_MAX)
        )
    }
}

/// The subject of an alert: host, task (and chain), and the kind in plain words.
pub(crate) fn subject(a: &AlertMail) -> String {
    let who = who(&a.task, &a.chain);
    let error = subject_error(&a.brief, &a.last_line);
    let error = if error.is_empty() {
        String::new()
    } else {
        format!(" ({error})")
    };
    let age = short_age(Duration::from_millis(a.streak_ms));
    let what = match a.kind.as_str() {
        "first-failure" => format!("{who} failed{error}"),
        "new-failure" => format!("{who} failing with a new error{error}"),
        "downtime" => format!("{who} failing for {age}{error}"),
        "recovered" => format!(
            "{who} recovered after {age} ({})",
            plural(a.failures, "failure", "failures")
        ),
        "test" => "test alert from run-chain mail-test".to_string(),
        other => format!("{who}: {}", one_line(other)),
    };
    format!("[run-chain] {}: {what}", one_line(&a.host))
}

/// What the alert is about, in a sentence, after its kind.
fn headline(a: &AlertMail) -> String {
    let age = short_age(Duration::from_millis(a.streak_ms));
    match a.kind.as_str() {
        "first-failure" => format!("{} started failing", a.task),
        "new-failure" => format!("{} fails with a new error", a.task),
        "downtime" => format!("{} has been failing for {age}", a.task),
        "recovered" => format!(
            "{} succeeded again after {age} and {}",
            a.task,
            plural(a.failures, "failure", "failures")
        ),
        "test" => "a test of the alert transport".to_string(),
        _ => a.task.clone(),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// The body of an alert: what failed, the streak's last failed run (outcome, start,
/// duration), the streak, the next attempt, and the tail of that run's output.
pub(crate) fn body(a: &AlertMail) -> String {
    use std::fmt::Write;
    let mut b = String::new();
    let (the_run, the_run_up) = match a.run_id {
        Some(id) => (format!("run {id}"), format!("Run {id}")),
        None => ("the run".to_string(), "The run".to_string()),
    };
    let _ = writeln!(b, "Alert:         {}: {}", a.kind, headline(a));
    let _ = writeln!(b, "Task:          {} (chain {})", a.task, a.chain);
    let _ = writeln!(b, "Host:          {}", a.host);
    let _ = writeln!(b, "Command:       {}", a.command);
    if let Some(r) = &a.recovered_by {
        let _ = writeln!(b, "Recovered by:  {r}");
    }
    b.push('\n');
    if a.kind != "test" {
        match a.run_id {
            Some(id) => {
                let _ = writeln!(b, "The last failed run of the streak (run {id}):");
            }
            None => b.push_str("The last failed run of the streak:\n"),
        }
    }
    let _ = writeln!(b, "Outcome:       {}", or_dash(&a.outcome));
    let _ = writeln!(b, "Started:       {}", or_dash(&a.started));
    let _ = writeln!(b, "Duration:      {}", or_dash(&a.duration));
    b.push('\n');
    let _ = writeln!(b, "Streak start:  {}", or_dash(&a.streak_start));
    let _ = writeln!(b, "Streak length: {}", or_dash(&a.streak_length));
    let _ = writeln!(b, "Failures:      {}", a.failures);
    let _ = writeln!(b, "Next attempt:  {}", or_dash(&a.next_attempt));
    if a.held_back > 0 {
        let _ = writeln!(
            b,
            "Held back:     {} alert(s) of this task were not mailed in the last hour (max_alerts_per_hour)",
            a.held_back
        );
    }
    b.push('\n');
    if !a.output.is_empty() {
        let _ = writeln!(
            b,
            "The last {} of {} bytes of output of {the_run}:\n",
            a.output.len(),
            a.output_bytes
        );
        b.push_str(&String::from_utf8_lossy(&a.output));
        if !b.ends_with('\n') {
            b.push('\n');
        }
    } else if let Some(note) = &a.output_note {
        let _ = writeln!(b, "{note}");
        if !a.last_line.is_empty() {
            let _ = writeln!(b, "Its last line of output:\n\n{}", a.last_line);
        }
    } else if a.output_bytes > 0 {
        let _ = writeln!(
            b,
            "{the_run_up} printed {} bytes; none were kept.",
            a.output_bytes
        );
    } else {
        let _ = writeln!(b, "{the_run_up} printed nothing.");
    }
    b
}

// ---------------------------------------------------------------------------------
// The next attempt.

/// One task of the chain, for the estimate of when a later one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step<'a> {
    pub(crate) name: &'a str,
    /// How long a run of it is expected to take (its last recorded duration), if known.
    pub(crate) expected_ms: Option<u64>,
    /// The cooldown expected after it (after its last outcome).
    pub(crate) cooldown_ms: u64,
}

/// Where the chain is, in wall time (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// Task `index` is the next to start, at `at_ms`.
    Due { index: usize, at_ms: u64 },
    /// Task `index` runs now, since `since_ms`.
    Running { index: usize, since_ms: u64 },
    /// The chain runs no more tasks (`--once` went through).
    Done,
}

/// When a task is tried next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NextAttempt {
    /// It is the next task, due at this time.
    At(u64),
    /// It runs now (since this time).
    RunningNow(u64),
    /// Other tasks come first (`before`, in order); estimated at `at_ms`. The estimate
    /// counts 0 for the tasks in `unknown`, whose duration is not known: then it is the
    /// earliest time.
    After {
        before: Vec<String>,
        at_ms: u64,
        unknown: Vec<String>,
    },
    /// Not again in this process (`--once` is past it).
    NotAgain,
    /// The task is no longer in the chain (a reload removed it).
    NotInChain,
}

/// When `task` is tried next, from the chain's position: at once known when it is the
/// next task, else estimated by walking the chain from the next task to it, adding each
/// task's expected duration and cooldown (a task that runs now is expected to end at
/// its start plus its expected duration, and not before `now_ms`; a duration not known
/// counts as 0, and the task is named in [`NextAttempt::After`]'s `unknown`).
pub(crate) fn next_attempt(
    now_ms: u64,
    steps: &[Step],
    position: Position,
    task: &str,
    once: bool,
) -> NextAttempt {
    let n = steps.len();
    if !steps.iter().any(|s| s.name == task) {
        return NextAttempt::NotInChain;
    }
    let mut unknown = Vec::new();
    let mut expected = |s: &Step| {
        s.expected_ms.unwrap_or_else(|| {
            unknown.push(s.name.to_string());
            0
        })
    };
    let (mut i, mut at) = match position {
        Position::Done => return NextAttempt::NotAgain,
        Position::Due { index, at_ms } if index < n => {
            if steps[index].name == task {
                return NextAttempt::At(at_ms);
            }
            let s = steps[index];
            (index, at_ms.max(now_ms) + expected(&s) + s.cooldown_ms)
        }
        Position::Running { index, since_ms } if index < n => {
            if steps[index].name == task {
                return NextAttempt::RunningNow(since_ms);
            }
            let s = steps[index];
            (index, (since_ms + expected(&s)).max(now_ms) + s.cooldown_ms)
        }
        Position::Due { .. } | Position::Running { .. } => return NextAttempt::NotInChain,
    };
    let mut before = vec![steps[i].name.to_string()];
    for _ in 0..n {
        i += 1;
        if i == n {
            if once {
                return NextAttempt::NotAgain;
            }
            i = 0;
        }
        let s = steps[i];
        if s.name == task {
            return NextAttempt::After {
                before,
                at_ms: at,
                unknown,
            };
        }
        before.push(s.name.to_string());
        at += expected(&s) + s.cooldown_ms;
    }
    // Not reached: the task is in `steps`, so the walk meets it within `n` steps.
    NextAttempt::NotInChain
}

/// "b", "b and c", "b, c and d", "b, c, d and 2 more tasks".
fn names(before: &[String]) -> String {
    match before {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] if before.len() <= 3 => format!("{} and {last}", rest.join(", ")),
        _ => format!(
            "{} and {} more tasks",
            before[..3].join(", "),
            before.len() - 3
        ),
    }
}

/// A wait ahead, rounded for an estimate: seconds under a minute, else whole minutes.
fn about(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{}s", d.as_secs())
    } else {
        crate::time::fmt_dur(Duration::from_secs(d.as_secs() / 60 * 60))
    }
}

/// The next attempt for people. `local` shows a time of day (`11:32 CET`).
pub(crate) fn describe(next: &NextAttempt, now_ms: u64, local: &dyn Fn(u64) -> String) -> String {
    match next {
        NextAttempt::At(at) if *at <= now_ms => {
            format!("now ({})", crate::time::rfc3339(now_ms))
        }
        NextAttempt::At(at) => format!(
            "{}, in {} ({})",
            local(*at),
            crate::time::fmt_dur(Duration::from_millis(at - now_ms)),
            crate::time::rfc3339(*at)
        ),
        NextAttempt::RunningNow(since) => format!("now: it is running, since {}", local(*since)),
        NextAttempt::After {
            before,
            at_ms,
            unknown,
        } if unknown.is_empty() => format!(
            "after {}, about {} (in about {}, from their last durations and cooldowns)",
            names(before),
            local(*at_ms),
            about(Duration::from_millis(at_ms.saturating_sub(now_ms)))
        ),
        NextAttempt::After {
            before,
            at_ms,
            unknown,
        } => format!(
            "after {}, at {} at the earliest (the duration of {} is not known yet)",
            names(before),
            local(*at_ms),
            names(unknown)
        ),
        NextAttempt::NotAgain => {
            "none: this run of the chain (--once) does not run it again".to_string()
        }
        NextAttempt::NotInChain => "none: the task is no longer in the chain".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;
    const MIN: u64 = 60 * S;

    /// A fake local clock: minutes and seconds since 10:00 on the fake day.
    fn fake_local(ms: u64) -> String {
        let s = ms / 1000;
        format!("{:02}:{:02} TST", 10 + s / 3600, s / 60 % 60)
    }

    fn steps<'a>(list: &[(&'a str, u64, u64)]) -> Vec<Step<'a>> {
        list.iter()
            .map(|&(name, expected_ms, cooldown_ms)| Step {
                name,
                expected_ms: Some(expected_ms),
                cooldown_ms,
            })
            .collect()
    }

    fn mail(kind: &str) -> AlertMail {
        AlertMail {
            kind: kind.into(),
            chain: "send_mail".into(),
            task: "send_mail".into(),
            host: "web-3".into(),
            command: "python manage.py send_mail".into(),
            outcome: "failed (exit code 1)".into(),
            brief: "exit 1".into(),
            last_line: "ZeroDivisionError: division by zero".into(),
            duration: "1.2s".into(),
            started: "2026-12-07T10:00:00.000Z".into(),
            run_id: Some(42),
            streak_start: "2026-12-07T04:00:00.000Z".into(),
            streak_length: "6h".into(),
            streak_ms: 6 * 3600 * S + 12 * S,
            failures: 12,
            next_attempt: "10:30 TST, in 30m".into(),
            output: b"Traceback (most recent call last):\nZeroDivisionError: division by zero\n"
                .to_vec(),
            output_bytes: 71,
            at_ms: 1,
            ..Default::default()
        }
    }

    /// Depth of parentheses at their deepest.
    fn depth(s: &str) -> i32 {
        let mut d = 0;
        let mut max = 0;
        for c in s.chars() {
            match c {
                '(' => d += 1,
                ')' => d -= 1,
                _ => {}
            }
            max = max.max(d);
        }
        max
    }

    #[test]
    fn the_next_task_is_due_at_its_time() {
        let st = steps(&[("a", 5 * S, MIN), ("b", 20 * S, 2 * MIN)]);
        let pos = Position::Due {
            index: 0,
            at_ms: 30 * MIN,
        };
        assert_eq!(
            next_attempt(10 * MIN, &st, pos, "a", false),
            NextAttempt::At(30 * MIN)
        );
        assert_eq!(
            describe(&NextAttempt::At(30 * MIN), 18 * MIN, &fake_local),
            "10:30 TST, in 12m (1970-01-01T00:30:00.000Z)"
        );
        assert_eq!(
            describe(&NextAttempt::At(30 * MIN), 31 * MIN, &fake_local),
            "now (1970-01-01T00:31:00.000Z)"
        );
    }

    #[test]
    fn another_task_first_adds_its_duration_and_cooldown() {
        // a failed; b is next at 10:01; b takes 20s and cools down 2m: a at about 10:03:20.
        let st = steps(&[("a", 5 * S, MIN), ("b", 20 * S, 2 * MIN)]);
        let pos = Position::Due {
            index: 1,
            at_ms: MIN,
        };
        let next = next_attempt(0, &st, pos, "a", false);
        assert_eq!(
            next,
            NextAttempt::After {
                before: vec!["b".into()],
                at_ms: MIN + 20 * S + 2 * MIN,
                unknown: vec![],
            }
        );
        assert_eq!(
            describe(&next, 0, &fake_local),
            "after b, about 10:03 TST (in about 3m, from their last durations and cooldowns)"
        );
    }

    #[test]
    fn a_walk_over_several_tasks_and_around_the_end() {
        // Chain a b c d; c is next at 10:00; the failing task is b: c, d, then a, then b.
        let st = steps(&[("a", 10 * S, 0), ("b", 0, 0), ("c", 30 * S, S), ("d", 0, 0)]);
        let next = next_attempt(0, &st, Position::Due { index: 2, at_ms: 0 }, "b", false);
        assert_eq!(
            next,
            NextAttempt::After {
                before: vec!["c".into(), "d".into(), "a".into()],
                at_ms: 31 * S + 10 * S,
                unknown: vec![],
            }
        );
        assert!(describe(&next, 0, &fake_local).starts_with("after c, d and a, about 10:00 TST"));
        // --once does not come round again.
        assert_eq!(
            next_attempt(0, &st, Position::Due { index: 2, at_ms: 0 }, "b", true),
            NextAttempt::NotAgain
        );
        assert_eq!(
            next_attempt(0, &st, Position::Done, "b", false),
            NextAttempt::NotAgain
        );
        assert_eq!(
            next_attempt(0, &st, Position::Due { index: 2, at_ms: 0 }, "zz", false),
            NextAttempt::NotInChain
        );
    }

    #[test]
    fn a_running_task_ends_no_earlier_than_now() {
        let st = steps(&[("a", 0, MIN), ("b", 10 * MIN, 2 * MIN)]);
        // b started at 0, expected to take 10m: a at 12m.
        let pos = Position::Running {
            index: 1,
            since_ms: 0,
        };
        assert_eq!(
            next_attempt(MIN, &st, pos, "a", false),
            NextAttempt::After {
                before: vec!["b".into()],
                at_ms: 12 * MIN,
                unknown: vec![],
            }
        );
        // b has run for 15m already (longer than last time): a 2m after now at the earliest.
        assert_eq!(
            next_attempt(15 * MIN, &st, pos, "a", false),
            NextAttempt::After {
                before: vec!["b".into()],
                at_ms: 17 * MIN,
                unknown: vec![],
            }
        );
        // The failing task itself runs now.
        let pos = Position::Running {
            index: 0,
            since_ms: 5 * S,
        };
        let next = next_attempt(MIN, &st, pos, "a", false);
        assert_eq!(next, NextAttempt::RunningNow(5 * S));
        assert_eq!(
            describe(&next, MIN, &fake_local),
            "now: it is running, since 10:00 TST"
        );
        // A due time in the past (a task waiting for its group's slot) counts from now.
        let st = steps(&[("a", 0, 0), ("b", MIN, 0)]);
        assert_eq!(
            next_attempt(
                10 * MIN,
                &st,
                Position::Due { index: 1, at_ms: 0 },
                "a",
                false
            ),
            NextAttempt::After {
                before: vec!["b".into()],
                at_ms: 11 * MIN,
                unknown: vec![],
            }
        );
    }

    #[test]
    fn a_task_of_unknown_duration_makes_the_estimate_the_earliest_time() {
        // b runs now, for the first time (no duration known), with a cooldown of 1m.
        let mut st = steps(&[("a", 0, MIN), ("b", 0, MIN), ("c", 0, 0)]);
        st[1].expected_ms = None;
        let pos = Position::Running {
            index: 1,
            since_ms: 0,
        };
        let next = next_attempt(10 * S, &st, pos, "a", false);
        assert_eq!(
            next,
            NextAttempt::After {
                before: vec!["b".into(), "c".into()],
                at_ms: 10 * S + MIN,
                unknown: vec!["b".into()],
            }
        );
        assert_eq!(
            describe(&next, 10 * S, &fake_local),
            "after b and c, at 10:01 TST at the earliest (the duration of b is not known yet)"
        );
    }

    #[test]
    fn many_tasks_first_are_named_briefly() {
        let before: Vec<String> = ["b", "c", "d", "e", "f"].map(String::from).to_vec();
        assert_eq!(names(&before), "b, c, d and 2 more tasks");
        assert_eq!(names(&before[..2]), "b and c");
        assert_eq!(names(&before[..1]), "b");
    }

    #[test]
    fn subjects_read_plainly_without_nested_parentheses() {
        let first = subject(&mail("first-failure"));
        assert_eq!(
            first,
            "[run-chain] web-3: send_mail failed (exit 1: ZeroDivisionError: division by zero)"
        );
        let mut new = mail("new-failure");
        new.last_line = "KeyError: 'x'".into();
        assert_eq!(
            subject(&new),
            "[run-chain] web-3: send_mail failing with a new error (exit 1: KeyError: 'x')"
        );
        let down = subject(&mail("downtime"));
        assert_eq!(
            down,
            "[run-chain] web-3: send_mail failing for 6h (exit 1: ZeroDivisionError: division by zero)"
        );
        let rec = subject(&mail("recovered"));
        assert_eq!(
            rec,
            "[run-chain] web-3: send_mail recovered after 6h (12 failures)"
        );
        for s in [&first, &subject(&new), &down, &rec] {
            assert_eq!(depth(s), 1, "{s}");
            assert!(!s.chars().any(char::is_control), "{s:?}");
        }
        // Another chain's name is said, briefly.
        let mut other = mail("first-failure");
        other.chain = "nightly".into();
        assert_eq!(
            subject(&other),
            "[run-chain] web-3: send_mail in chain nightly failed (exit 1: ZeroDivisionError: division by zero)"
        );
        // One failure; no output; a signal; a spawn error without the OS's number.
        let mut one = mail("recovered");
        one.failures = 1;
        one.streak_ms = 90 * S;
        assert_eq!(
            subject(&one),
            "[run-chain] web-3: send_mail recovered after 1m (1 failure)"
        );
        let mut quiet = mail("first-failure");
        quiet.brief = "SIGKILL".into();
        quiet.last_line = String::new();
        assert_eq!(
            subject(&quiet),
            "[run-chain] web-3: send_mail failed (SIGKILL)"
        );
        let mut spawn = mail("first-failure");
        spawn.brief = "could not start".into();
        spawn.last_line = "cannot run python: No such file or directory (os error 2)".into();
        assert_eq!(
            subject(&spawn),
            "[run-chain] web-3: send_mail failed (could not start: cannot run python: No such file or directory)"
        );
    }

    #[test]
    fn the_error_is_shortened_and_has_no_control_characters() {
        let long = format!("ValueError: {}", "x".repeat(300));
        let e = subject_error("exit 1", &long);
        assert_eq!(e.chars().count(), SUBJECT_ERROR_MAX, "{e}");
        assert!(
            e.starts_with("exit 1: ValueError: xxx") && e.ends_with("..."),
            "{e}"
        );
        let e = subject_error("exit 2", "bad\r\nBcc: x@y\x1b[31m  red\t!");
        assert_eq!(e, "exit 2: bad Bcc: x@y [31m red !");
        assert_eq!(subject_error("exit 3", "  "), "exit 3");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "...");
        assert_eq!(shorten("ab cdef", 6), "ab...");
        // Multi-byte characters are cut at a character, not a byte.
        assert_eq!(shorten("ééééé", 4), "é...");
    }

    #[test]
    fn ages_are_rounded_down_to_their_largest_units() {
        let s = Duration::from_secs;
        assert_eq!(short_age(s(0)), "0s");
        assert_eq!(short_age(s(59)), "59s");
        assert_eq!(short_age(s(12 * 60 + 5)), "12m");
        assert_eq!(short_age(s(6 * 3600 + 12)), "6h");
        assert_eq!(short_age(s(6 * 3600 + 30 * 60)), "6h 30m");
        assert_eq!(short_age(s(2 * 86_400 + 59)), "2d");
        assert_eq!(short_age(s(2 * 86_400 + 5 * 3600)), "2d 5h");
    }

    #[test]
    fn briefs_of_each_outcome() {
        let d = Duration::from_secs(3);
        assert_eq!(brief(&Outcome::Failed(1), None, d), "exit 1");
        assert_eq!(brief(&Outcome::Signal(9), None, d), "SIGKILL");
        assert_eq!(
            brief(&Outcome::Timeout, Some(Duration::from_secs(300)), d),
            "timed out after 5m"
        );
        assert_eq!(brief(&Outcome::Timeout, None, d), "timed out after 3s");
        assert_eq!(
            brief(&Outcome::SpawnError("x".into()), None, d),
            "could not start"
        );
        assert_eq!(
            failed_outcome(Some("failed"), Some(2), None, None),
            Some(Outcome::Failed(2))
        );
        assert_eq!(
            failed_outcome(Some("spawn-error"), None, None, Some("no such file")),
            Some(Outcome::SpawnError("no such file".into()))
        );
        assert_eq!(failed_outcome(Some("ok"), Some(0), None, None), None);
        assert_eq!(failed_outcome(Some("interrupted"), None, None, None), None);
        assert_eq!(
            last_line(b"a\nTraceback\n  ValueError: x  \n\n \n"),
            Some("ValueError: x".into())
        );
    }

    #[test]
    fn the_body_shows_the_last_failed_run() {
        let b = body(&mail("downtime"));
        for want in [
            "Alert:         downtime: send_mail has been failing for 6h\n",
            "The last failed run of the streak (run 42):\n",
            "Outcome:       failed (exit code 1)\n",
            "Started:       2026-12-07T10:00:00.000Z\n",
            "Duration:      1.2s\n",
            "Failures:      12\n",
            "Next attempt:  10:30 TST, in 30m\n",
            "The last 71 of 71 bytes of output of run 42:\n\nTraceback (most recent call last):\n",
        ] {
            assert!(b.contains(want), "{want:?} not in:\n{b}");
        }
        // The output could not be had (a relaunch, a store that cannot be read): the note
        // and the last line, which the state carries.
        let mut lost = mail("downtime");
        lost.output.clear();
        lost.output_note = Some("The output of run 42 could not be read: disk I/O error.".into());
        let b = body(&lost);
        assert!(b.contains("could not be read: disk I/O error."), "{b}");
        assert!(
            b.contains("Its last line of output:\n\nZeroDivisionError: division by zero\n"),
            "{b}"
        );
        let mut quiet = mail("first-failure");
        quiet.output.clear();
        quiet.output_bytes = 0;
        assert!(body(&quiet).contains("Run 42 printed nothing."));
        // Nothing known of the run (a streak carried over from an older version, with no
        // record store): the fields say so, the mail still goes.
        let unknown = AlertMail {
            run_id: None,
            outcome: String::new(),
            started: String::new(),
            duration: String::new(),
            output: Vec::new(),
            output_bytes: 0,
            output_note: Some(
                "The output of the last failed run is not in the record store.".into(),
            ),
            last_line: String::new(),
            ..mail("downtime")
        };
        let b = body(&unknown);
        for want in [
            "The last failed run of the streak:\nOutcome:       -\nStarted:       -\nDuration:      -\n",
            "\nThe output of the last failed run is not in the record store.\n",
        ] {
            assert!(b.contains(want), "{want:?} not in:\n{b}");
        }
        assert!(!b.contains("last line"), "{b}");
        let mut rec = mail("recovered");
        rec.recovered_by = Some("run 57 succeeded".into());
        let b = body(&rec);
        assert!(b.contains("Recovered by:  run 57 succeeded\n"), "{b}");
        assert!(
            b.contains("recovered: send_mail succeeded again after 6h and 12 failures"),
            "{b}"
        );
    }
}
