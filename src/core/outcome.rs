//! How a run ended, built once from what the OS reported and what run-chain did.
//!
//! The driver turns a `waitid` status into an [`Exit`] at the boundary; the state
//! machine combines it with its own knowledge (did it time the run out, or stop it
//! for a hand-over?) into an [`Outcome`]. Nothing past this point sees a raw status.

use std::fmt;

/// What the operating system said about the first process of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It called exit(code).
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit status 0.
    Success,
    /// A non-zero exit status.
    Failed(i32),
    /// Killed by a signal that run-chain did not send for a timeout or a stop.
    Signal(i32),
    /// Stopped by run-chain because it ran past its `timeout`.
    Timeout,
    /// Could not be started (missing program or cwd, ...).
    SpawnError(String),
    /// Stopped by run-chain for a stop or a hand-over, past `stop_grace`. Not a failure.
    Interrupted,
}

impl Outcome {
    /// Build the outcome of a run that was not stopped by run-chain.
    pub(crate) fn from_exit(exit: Exit) -> Outcome {
        match exit {
            Exit::Code(0) => Outcome::Success,
            Exit::Code(c) => Outcome::Failed(c),
            Exit::Signal(s) => Outcome::Signal(s),
        }
    }

    pub(crate) fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// A failure earns the fail cooldown (and, later, alerts). Interrupted is not one.
    pub(crate) fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Success | Outcome::Interrupted)
    }

    /// The label used in records and logs: ok, failed, signal, timeout, spawn-error, interrupted.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Signal(_) => "signal",
            Outcome::Timeout => "timeout",
            Outcome::SpawnError(_) => "spawn-error",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// The exit code as shells report it: 128 + signal for a signalled run, 127 for a
    /// spawn error. None where there is no meaningful code (timeout, interrupted).
    #[cfg(test)]
    fn shell_code(&self) -> Option<i32> {
        match self {
            Outcome::Success => Some(0),
            Outcome::Failed(c) => Some(*c),
            Outcome::Signal(s) => Some(128 + s),
            Outcome::SpawnError(_) => Some(127),
            Outcome::Timeout | Outcome::Interrupted => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => write!(f, "ok"),
            Outcome::Failed(c) => write!(f, "failed (exit code {c})"),
            Outcome::Signal(s) => write!(f, "signal (killed by {})", signal_name(*s)),
            Outcome::Timeout => write!(f, "timeout"),
            Outcome::SpawnError(e) => write!(f, "spawn-error ({e})"),
            Outcome::Interrupted => write!(f, "interrupted"),
        }
    }
}

/// A signal's name for people ("SIGKILL"), or its number.
pub(crate) fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::from_exit(Exit::Code(0)), Outcome::Success);
        assert_eq!(Outcome::from_exit(Exit::Code(3)).label(), "failed");
        assert_eq!(Outcome::from_exit(Exit::Signal(9)).shell_code(), Some(137));
        assert!(!Outcome::Interrupted.is_failure());
        assert!(Outcome::Timeout.is_failure());
        assert_eq!(Outcome::SpawnError("x".into()).shell_code(), Some(127));
        assert_eq!(Outcome::Signal(9).to_string(), "signal (killed by SIGKILL)");
    }
}
