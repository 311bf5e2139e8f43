//! The times and durations of the views, and their forms in text and in JSON.
//!
//! A view keeps every time as Unix milliseconds ([`Wall`]) and every duration as
//! milliseconds ([`Secs`]); JSON shows them as RFC 3339 and as seconds, the text as a
//! table's date or as "3m ago". Everything here is pure: a text that depends on the time
//! is given `now`.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::time::{fmt_dur, rfc3339};

/// A wall time, in ms since the Unix epoch; in JSON, RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Wall(pub(crate) u64);

impl Serialize for Wall {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

/// A duration, in ms; in JSON, seconds as a number (`1.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Secs(pub(crate) u64);

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / 1000.0)
    }
}

/// A short local-free time for tables: "2026-11-24 02:58:01".
pub(crate) fn short_time(at: Wall) -> String {
    let s = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at.0));
    s.to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// How long a duration of `ms` is, as `run-chain` shows durations ("750ms", "4.2s", "3m 12s").
pub(crate) fn dur(ms: u64) -> String {
    fmt_dur(Duration::from_millis(ms))
}

/// How long ago `at` was, in the form of [`dur`] ("12.5s"); "0ms" for a time to come.
pub(crate) fn ago(now: Wall, at: Wall) -> String {
    dur(now.0.saturating_sub(at.0))
}

/// How long ago `at` was, to the two largest units, for the status table's LAST and LAST
/// SUCCESS (one form for both): "just now", "42s ago", "3m 12s ago", "2h ago", "3d 4h ago".
pub(crate) fn time_ago(now: Wall, at: Wall) -> String {
    let s = now.0.saturating_sub(at.0) / 1000;
    let (big, small) = match s {
        0 => return "just now".to_string(),
        1..60 => ((s, "s"), (0, "")),
        60..3600 => ((s / 60, "m"), (s % 60, "s")),
        3600..86400 => ((s / 3600, "h"), (s % 3600 / 60, "m")),
        _ => ((s / 86400, "d"), (s % 86400 / 3600, "h")),
    };
    if small.0 == 0 {
        format!("{}{} ago", big.0, big.1)
    } else {
        format!("{}{} {}{} ago", big.0, big.1, small.0, small.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ago_to_two_units() {
        let now = 1_800_000_000_000;
        for (ago_s, text) in [
            (0, "just now"),
            (42, "42s ago"),
            (60, "1m ago"),
            (192, "3m 12s ago"),
            (7200, "2h ago"),
            (7500, "2h 5m ago"),
            (86400 * 3 + 3600 * 4 + 59, "3d 4h ago"),
            (86400 * 400, "400d ago"),
        ] {
            assert_eq!(
                time_ago(Wall(now), Wall(now - ago_s * 1000)),
                text,
                "{ago_s}s"
            );
        }
        // Under a second, or in the future (clocks of two hosts): just now.
        assert_eq!(time_ago(Wall(now), Wall(now - 999)), "just now");
        assert_eq!(time_ago(Wall(now), Wall(now + 5000)), "just now");
    }

    #[test]
    fn durations_and_table_times() {
        let now = Wall(1_800_000_000_000);
        assert_eq!(ago(now, Wall(now.0 - 750)), "750ms");
        assert_eq!(ago(now, Wall(now.0 - 12_345)), "12.3s");
        assert_eq!(ago(now, Wall(now.0 - 192_000)), "3m 12s");
        assert_eq!(ago(now, Wall(now.0 + 1)), "0ms");
        assert_eq!(short_time(Wall(1_764_039_481_999)), "2025-11-25 02:58:01");
    }

    #[test]
    fn json_forms_of_times_and_durations() {
        fn j(v: impl Serialize) -> String {
            serde_json::to_string(&v).unwrap_or_default()
        }
        assert_eq!(j(Wall(1_764_039_481_007)), r#""2025-11-25T02:58:01.007Z""#);
        assert_eq!(j(Secs(1_500)), "1.5");
        assert_eq!(j(Secs(2_000)), "2.0");
        assert_eq!(j(Secs(2)), "0.002");
        assert_eq!(j(Secs(0)), "0.0");
        assert_eq!(j(None::<Wall>), "null");
    }
}
