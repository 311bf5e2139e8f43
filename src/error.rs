//! Errors and exit codes, in one place.
//!
//! Every failure that reaches `main` is an [`Error`], and every `Error` maps to one of
//! the exit statuses that SPEC.md documents. Messages are lowercase fragments that
//! name the operation and the path, so they read well after "run-chain: ".

use std::fmt;
use std::path::Path;

/// Exit statuses (SPEC.md, "Exit status").
pub mod exit {
    /// Stopped on request, handed over to a newer instance, or `--once` all succeeded.
    pub const OK: u8 = 0;
    /// `--once` with a failed task.
    pub(crate) const ONCE_FAILED: u8 = 1;
    /// Bad usage (command line).
    pub const USAGE: u8 = 64;
    /// Internal error.
    pub(crate) const SOFTWARE: u8 = 70;
    /// Already running and not allowed to take over, or superseded by a newer launch.
    pub(crate) const TEMPFAIL: u8 = 75;
    /// Bad config or unsafe RUN_ROOT.
    pub(crate) const CONFIG: u8 = 78;
}

/// What went wrong, sorted by the exit status it earns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad command line (exit 64).
    #[error("{0}")]
    Usage(String),
    /// A bad config file, name or RUN_ROOT (exit 78).
    #[error("{0}")]
    Config(String),
    /// The chain runs and we may not take over, or a newer launch superseded us (exit 75).
    #[error("{0}")]
    Busy(String),
    /// An operating-system call failed where it should not (exit 70).
    #[error("failed to {op}: {source}")]
    Os {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else that should not happen (exit 70).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The exit status documented for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Config(_) => exit::CONFIG,
            Error::Busy(_) => exit::TEMPFAIL,
            Error::Os { .. } | Error::Internal(_) => exit::SOFTWARE,
        }
    }

    /// An OS error for operation `op` (e.g. "lock /var/run/x.pid").
    pub(crate) fn os(op: impl fmt::Display, source: std::io::Error) -> Error {
        Error::Os {
            op: op.to_string(),
            source,
        }
    }

    /// An OS error from `errno`, for operation `op`.
    pub(crate) fn last_os(op: impl fmt::Display) -> Error {
        Error::os(op, std::io::Error::last_os_error())
    }

    /// A config error that names the file and the key.
    pub(crate) fn config_key(file: &Path, key: &str, msg: impl fmt::Display) -> Error {
        Error::Config(format!("{}: {}: {}", file.display(), key, msg))
    }
}

/// Shorthand used across the crate.
pub(crate) type Result<T> = std::result::Result<T, Error>;
