//! Alert policy, per chain and task: when a failure becomes a mail.
//!
//! Pure: given the time (Unix milliseconds, so that state carried over by an upgrade or
//! a restart keeps its meaning) and what happened, it decides. A streak starts with the
//! first failure after a success (or the first ever) and ends with a success.
//!
//! - `first-failure` at the start of a streak, unless the same signature was alerted
//!   within the last `non_recoverable_downtime` (a flapping task mails once per window);
//!   a signature so suppressed counts as alerted in the streak.
//! - `new-failure` for a signature not yet alerted in the streak.
//! - `downtime` each time the streak's age passes another whole multiple of the window,
//!   on its own deadline; several multiples passed at once make one mail.
//! - `recovered` at the first success after a streak that sent a mail.
//! - At most `max_alerts_per_hour` mails per chain and task; what the cap held back is
//!   counted in the next mail.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

const HOUR_MS: u64 = 3_600_000;

/// The kinds of alert (the `X-Run-Chain-Alert` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    FirstFailure,
    NewFailure,
    Downtime,
    Recovered,
}

impl Kind {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Kind::FirstFailure => "first-failure",
            Kind::NewFailure => "new-failure",
            Kind::Downtime => "downtime",
            Kind::Recovered => "recovered",
        }
    }

    pub(crate) fn all() -> [Kind; 4] {
        [
            Kind::FirstFailure,
            Kind::NewFailure,
            Kind::Downtime,
            Kind::Recovered,
        ]
    }
}

/// A decided alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) kind: Kind,
    /// When the streak began, and its failures so far (the ended streak for `recovered`).
    pub(crate) streak_start_ms: u64,
    pub(crate) failures: u64,
    /// Mails the hourly cap held back since the last one sent.
    pub(crate) held_back: u64,
}

/// The policy's parameters for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// `non_recoverable_downtime`, in ms (at least 1).
    pub(crate) window_ms: u64,
    pub(crate) max_per_hour: u32,
}

/// The carried-over alert state of one chain and task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AlertState {
    pub(crate) streak_start_ms: Option<u64>,
    #[serde(default)]
    pub(crate) failures: u64,
    /// A mail was sent in this streak.
    #[serde(default)]
    pub(crate) mailed: bool,
    /// Signatures alerted (or suppressed as already alerted) in this streak.
    #[serde(default)]
    pub(crate) streak_signatures: Vec<String>,
    /// Downtime multiples already alerted in this streak.
    #[serde(default)]
    pub(crate) downtime_sent: u64,
    /// Signature -> when it was last alerted.
    #[serde(default)]
    pub(crate) alerted_at: BTreeMap<String, u64>,
    /// When mails went out in the last hour (for the cap).
    #[serde(default)]
    pub(crate) sent: VecDeque<u64>,
    /// Held back by the cap since the last mail.
    #[serde(default)]
    pub(crate) held_back: u64,
    /// The streak's last failed run, as every mail of the streak shows it (set by the
    /// driver at each failure, cleared after the success that ends the streak). Carried
    /// over by a relaunch, so that a mail sent by the next instance still shows it; its
    /// output is not (too large for a state written at every run): that is read from
    /// the record store by the run's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_failed: Option<FailedRun>,
}

/// A failed run, as an alert shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FailedRun {
    pub(crate) run_id: u64,
    /// How it ended, for people: "failed (exit code 1)".
    pub(crate) outcome: String,
    /// The same, briefly, for a subject: "exit 1", "SIGKILL", "could not start".
    pub(crate) brief: String,
    /// Unix ms.
    pub(crate) start_ms: u64,
    pub(crate) duration_ms: u64,
    /// Its last non-empty line of output (or why it could not start), cut to
    /// [`FailedRun::LAST_LINE_MAX`] characters.
    #[serde(default)]
    pub(crate) last_line: String,
    /// How many bytes it printed.
    #[serde(default)]
    pub(crate) output_bytes: u64,
}

impl FailedRun {
    pub(crate) const LAST_LINE_MAX: usize = 200;

    /// A failed run as the mails show it: `line` is its last line of output (for a
    /// spawn error, the error), cut to [`FailedRun::LAST_LINE_MAX`] characters.
    pub(crate) fn of(
        run_id: u64,
        outcome: &crate::core::outcome::Outcome,
        timeout: Option<std::time::Duration>,
        start_ms: u64,
        duration: std::time::Duration,
        line: Option<&str>,
        output_bytes: u64,
    ) -> FailedRun {
        FailedRun {
            run_id,
            outcome: outcome.to_string(),
            brief: crate::core::alert_mail::brief(outcome, timeout, duration),
            start_ms,
            duration_ms: duration.as_millis() as u64,
            last_line: line
                .unwrap_or_default()
                .chars()
                .take(FailedRun::LAST_LINE_MAX)
                .collect(),
            output_bytes,
        }
    }
}

impl AlertState {
    /// A run ended at `now`: success (`signature` None) or failure with its signature.
    /// Interrupted runs are not fed here.
    pub(crate) fn on_run(
        &mut self,
        now: u64,
        signature: Option<&str>,
        p: Policy,
    ) -> Option<Decision> {
        self.forget(now, p);
        match signature {
            None => {
                let was = self.streak_start_ms.take()?;
                let (failures, mailed) = (self.failures, self.mailed);
                self.failures = 0;
                self.mailed = false;
                self.streak_signatures.clear();
                self.downtime_sent = 0;
                if mailed {
                    self.send(now, Kind::Recovered, was, failures, p)
                } else {
                    None
                }
            }
            Some(sig) => {
                let first = self.streak_start_ms.is_none();
                if first {
                    self.streak_start_ms = Some(now);
                    self.failures = 0;
                    self.mailed = false;
                    self.streak_signatures.clear();
                    self.downtime_sent = 0;
                }
                self.failures += 1;
                let start = self.streak_start_ms.unwrap_or(now);
                if self.streak_signatures.iter().any(|s| s == sig) {
                    return None;
                }
                if first {
                    let recent = self
                        .alerted_at
                        .get(sig)
                        .is_some_and(|t| now.saturating_sub(*t) < p.window_ms);
                    if recent {
                        // Flapping: mailed once per window; counts as alerted in the streak.
                        self.streak_signatures.push(sig.to_string());
                        return None;
                    }
                }
                let kind = if first {
                    Kind::FirstFailure
                } else {
                    Kind::NewFailure
                };
                let d = self.send(now, kind, start, self.failures, p);
                if d.is_some() {
                    self.streak_signatures.push(sig.to_string());
                    self.alerted_at.insert(sig.to_string(), now);
                }
                d
            }
        }
    }

    /// Which failed run a later mail of this task's streak quotes, when the instance
    /// sending it did not see that run (a new owner in the fleet reads it ahead, off the
    /// loop): None without a streak (the next failure is seen by whoever runs it);
    /// Some(Some(id)): the run the state names; Some(None): the task's newest failed run
    /// (a state that names none).
    pub(crate) fn quoted_run(&self) -> Option<Option<u64>> {
        self.streak_start_ms?;
        Some(self.last_failed.as_ref().map(|r| r.run_id))
    }

    /// The next time [`AlertState::on_tick`] may alert (a downtime multiple), if any.
    pub(crate) fn next_deadline(&self, p: Policy) -> Option<u64> {
        let start = self.streak_start_ms?;
        Some(start + (self.downtime_sent + 1) * p.window_ms.max(1))
    }

    /// Time has passed: a `downtime` alert if the streak's age passed another multiple.
    pub(crate) fn on_tick(&mut self, now: u64, p: Policy) -> Option<Decision> {
        let start = self.streak_start_ms?;
        let k = now.saturating_sub(start) / p.window_ms.max(1);
        if k <= self.downtime_sent {
            return None;
        }
        // Several multiples passed at once (run-chain was down): one mail.
        self.downtime_sent = k;
        self.forget(now, p);
        self.send(now, Kind::Downtime, start, self.failures, p)
    }

    fn send(
        &mut self,
        now: u64,
        kind: Kind,
        start: u64,
        failures: u64,
        p: Policy,
    ) -> Option<Decision> {
        if self.sent.len() as u64 >= u64::from(p.max_per_hour) {
            self.held_back += 1;
            return None;
        }
        self.sent.push_back(now);
        self.mailed = true;
        let held_back = std::mem::take(&mut self.held_back);
        Some(Decision {
            kind,
            streak_start_ms: start,
            failures,
            held_back,
        })
    }

    /// Drop what no longer matters: mails older than an hour, signatures alerted
    /// longer than a window ago (bounded memory however many signatures appear).
    fn forget(&mut self, now: u64, p: Policy) {
        while self
            .sent
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= HOUR_MS)
        {
            self.sent.pop_front();
        }
        self.alerted_at
            .retain(|_, t| now.saturating_sub(*t) < p.window_ms);
        if self.streak_signatures.len() > 1000 {
            let cut = self.streak_signatures.len() - 1000;
            self.streak_signatures.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn policy(window_ms: u64) -> Policy {
        Policy {
            window_ms,
            max_per_hour: 10,
        }
    }

    /// Drive a task with the fake clock: runs at `times`, each a failure with `sig(i)`
    /// or a success (None); downtime deadlines are honoured in between, as the driver
    /// does. Returns the mails (time, kind).
    fn simulate(
        p: Policy,
        end: u64,
        every: u64,
        mut outcome: impl FnMut(u64) -> Option<String>,
    ) -> Vec<(u64, Kind)> {
        let mut st = AlertState::default();
        let mut mails = Vec::new();
        let mut t = 0;
        let mut i = 0;
        while t <= end {
            while let Some(d) = st.next_deadline(p) {
                if d > t {
                    break;
                }
                if let Some(a) = st.on_tick(d, p) {
                    mails.push((d, a.kind));
                }
            }
            let sig = outcome(i);
            if let Some(a) = st.on_run(t, sig.as_deref(), p) {
                mails.push((t, a.kind));
            }
            t += every;
            i += 1;
        }
        mails
    }

    #[test]
    fn reference_example_divide_by_zero() {
        // fail_cooldown 1s, non_recoverable_downtime 3s: a first mail, then 3s, 6s, 9s.
        let p = policy(3000);
        let mails = simulate(p, 10_000, 1000, |_| Some("ZeroDivisionError".into()));
        assert_eq!(
            mails,
            vec![
                (0, Kind::FirstFailure),
                (3000, Kind::Downtime),
                (6000, Kind::Downtime),
                (9000, Kind::Downtime)
            ]
        );
    }

    #[test]
    fn weekend_of_one_error_sends_at_most_ten() {
        let p = policy(6 * 60 * MIN);
        let mails = simulate(p, 48 * 60 * MIN, MIN, |_| Some("one error".into()));
        assert!(mails.len() <= 10, "{} mails: {mails:?}", mails.len());
        assert_eq!(mails[0], (0, Kind::FirstFailure));
        assert_eq!(
            mails.iter().filter(|m| m.1 == Kind::Downtime).count(),
            8,
            "one every 6h for 48h"
        );
    }

    #[test]
    fn weekend_of_flapping_sends_at_most_twenty() {
        let p = policy(6 * 60 * MIN);
        let mails = simulate(p, 48 * 60 * MIN, MIN, |i| {
            (i % 2 == 0).then(|| "one error".to_string())
        });
        assert!(mails.len() <= 20, "{} mails: {mails:?}", mails.len());
        assert!(mails.len() >= 2);
        // Each first-failure is followed by its recovered.
        assert_eq!(mails[1].1, Kind::Recovered);
    }

    #[test]
    fn new_error_mid_streak_sends_one_new_failure() {
        let p = policy(6 * 60 * MIN);
        let mails = simulate(p, 60 * MIN, MIN, |i| {
            Some(if (20..25).contains(&i) { "B" } else { "A" }.to_string())
        });
        assert_eq!(
            mails,
            vec![(0, Kind::FirstFailure), (20 * MIN, Kind::NewFailure)]
        );
    }

    #[test]
    fn rotating_signatures_hit_the_cap_and_count_held_back() {
        let p = policy(6 * 60 * MIN);
        let mut st = AlertState::default();
        let mut sent = Vec::new();
        for i in 0..50u64 {
            let name: String = [b'a' + (i / 26) as u8, b'a' + (i % 26) as u8]
                .iter()
                .map(|b| *b as char)
                .collect();
            if let Some(d) = st.on_run(i * MIN, Some(&format!("error kind {name}")), p) {
                sent.push(d);
            }
        }
        assert_eq!(sent.len(), 10, "the hourly cap");
        // After the hour, the next mail counts what was held back.
        let d = st
            .on_run(61 * MIN, Some("yet another"), p)
            .expect("a mail after the hour");
        assert_eq!(d.held_back, 40);
    }

    #[test]
    fn recovered_only_after_a_streak_that_mailed() {
        let p = policy(1000);
        let mut st = AlertState::default();
        assert!(st.on_run(0, Some("x"), p).is_some());
        let r = st.on_run(10, None, p).expect("recovered");
        assert_eq!(
            (r.kind, r.failures, r.streak_start_ms),
            (Kind::Recovered, 1, 0)
        );
        // Flap within the window: suppressed, so no recovered either.
        assert!(st.on_run(20, Some("x"), p).is_none());
        assert!(st.on_run(30, None, p).is_none());
        // Nothing to recover from.
        assert!(st.on_run(40, None, p).is_none());
    }

    #[test]
    fn downtime_after_a_long_outage_sends_one_mail() {
        let p = policy(1000);
        let mut st = AlertState::default();
        assert!(st.on_run(0, Some("x"), p).is_some());
        assert_eq!(st.next_deadline(p), Some(1000));
        // run-chain was down for 5.5 windows.
        let d = st.on_tick(5500, p).expect("downtime");
        assert_eq!(d.kind, Kind::Downtime);
        assert!(st.on_tick(5600, p).is_none());
        assert_eq!(st.next_deadline(p), Some(6000));
    }

    #[test]
    fn state_survives_serialisation() {
        let p = policy(1000);
        let mut st = AlertState::default();
        let _ = st.on_run(0, Some("x"), p);
        let text = toml::to_string(&st).expect("ser");
        let back: AlertState = toml::from_str(&text).expect("de");
        assert_eq!(back, st);
        st.last_failed = Some(FailedRun {
            run_id: 3,
            outcome: "failed (exit code 1)".into(),
            brief: "exit 1".into(),
            start_ms: 5,
            duration_ms: 7,
            last_line: "ZeroDivisionError: division by zero".into(),
            output_bytes: 120,
        });
        let json = serde_json::to_string(&st).expect("ser");
        let back: AlertState = serde_json::from_str(&json).expect("de");
        assert_eq!(back, st);
        // A state written by an earlier version (no last_failed) still reads.
        let old = json.replace(
            &json[json.find(",\"last_failed\"").expect("field")..json.len() - 1],
            "",
        );
        let back: AlertState = serde_json::from_str(&old).expect("de");
        assert_eq!(back.last_failed, None);
    }

    #[test]
    fn the_run_a_later_mail_quotes_is_the_streaks_last_failed_one() {
        let p = Policy {
            window_ms: 60_000,
            max_per_hour: 10,
        };
        let mut st = AlertState::default();
        assert_eq!(st.quoted_run(), None, "no streak, nothing to quote");
        let _ = st.on_run(1_000, Some("exit 3"), p);
        assert_eq!(st.quoted_run(), Some(None), "a streak, no run named");
        st.last_failed = Some(FailedRun {
            run_id: 7,
            outcome: "failed (exit code 3)".into(),
            brief: "exit 3".into(),
            start_ms: 900,
            duration_ms: 100,
            last_line: "boom".into(),
            output_bytes: 5,
        });
        assert_eq!(st.quoted_run(), Some(Some(7)));
        let _ = st.on_run(2_000, None, p);
        assert_eq!(st.quoted_run(), None, "recovered: the streak is over");
    }
}
