//! Time: the monotonic instant ([`Mono`]) the machines reason in, the clocks that read
//! it and the wall clock, and the ways a time is shown (`fmt_dur`, `rfc3339`, and
//! `local_hhmm`, which asks the OS for the time zone).
//!
//! A leaf module: everything may use it and it uses nothing of the crate. `core/` takes
//! [`Mono`] and the formatters from here but never calls the clock readers; the driver
//! reads the clocks and hands `now` in.

use std::time::{Duration, UNIX_EPOCH};

/// A monotonic instant: time since an arbitrary, fixed origin (CLOCK_MONOTONIC's).
pub type Mono = Duration;

/// CLOCK_MONOTONIC now, as time since its origin (comparable across processes on one boot).
pub fn mono_now() -> Mono {
    // CLOCK_MONOTONIC always exists (a failure would read as the origin, as before).
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(Duration::ZERO, |ts| {
        Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
    })
}

/// The time, read once by the driver per wake and handed to the machines: the monotonic
/// clock and the wall clock, read as a pair (so converting between them is exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Mono,
    /// Wall-clock time since the Unix epoch.
    pub wall: Duration,
}

impl Now {
    /// Read both clocks.
    pub fn read() -> Now {
        let mono = mono_now();
        let wall = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Now { mono, wall }
    }

    /// The wall clock in Unix milliseconds.
    pub fn wall_ms(&self) -> u64 {
        self.wall.as_millis() as u64
    }

    /// Wall time (Unix ms, rounded) of the monotonic instant `at`.
    pub fn wall_of(&self, at: Mono) -> u64 {
        let wall = self.wall.as_secs_f64() * 1000.0;
        let ms = if at <= self.mono {
            wall - (self.mono - at).as_secs_f64() * 1000.0
        } else {
            wall + (at - self.mono).as_secs_f64() * 1000.0
        };
        ms.max(0.0).round() as u64
    }

    /// The monotonic instant of the wall time `wall_ms` (Unix ms); a past one is now.
    pub fn mono_of(&self, wall_ms: u64) -> Mono {
        self.mono + Duration::from_millis(wall_ms.saturating_sub(self.wall_ms()))
    }
}

/// Wall-clock time now, in Unix milliseconds.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration for people: "350ms", "2.5s", "15m".
pub(crate) fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The time of day of `ms` (Unix ms) in the local time zone, with the zone's name:
/// `11:32 CET`. Asks the OS (the time zone), so the driver passes it to `core::alert_mail::describe`, which stays pure.
pub(crate) fn local_hhmm(ms: u64) -> String {
    let t = (ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes into the zeroed `tm` we own; `tm_zone`, when set, points
    // to a NUL-terminated string of the C library's that lives as long as the process.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return rfc3339(ms);
        }
        let zone = if tm.tm_zone.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(tm.tm_zone)
                .to_string_lossy()
                .into_owned()
        };
        format!("{:02}:{:02} {zone}", tm.tm_hour, tm.tm_min)
            .trim_end()
            .to_string()
    }
}
