//! run-chain: run an ordered chain of commands continuously, with a cooldown after
//! each, one supervised process per chain.
//!
//! The layout shows the architecture: each folder is one concern, and a module uses only
//! modules below it in this list (`scripts/module-cycles`, run by `tests/layout.rs`,
//! checks that no import goes the other way round a cycle, and that `core` stays pure):
//!
//! - [`app`]: the commands: resolve the config and RUN_ROOT once, run a command.
//! - `serve`: the HTTP servers (`exporter`, and `serve`: the web console and its API).
//! - `control`: the actions on a running chain (stop, kick), below `app` and `serve`.
//! - `view`: what the readers show (`status`, `history`, `log`, the metrics).
//! - [`run`]: the driver loop and the OS around a run: processes, spawn, the guardian,
//!   output, concurrency slots.
//! - `mail`: alert mails: building them, the outbox, the transports.
//! - [`lock`]: who owns a chain: the pidfile, the hand-over, the lock holders.
//! - [`store`]: the record store (SQLite), its write queue, and `CHAIN.state`'s file.
//! - the OS edge: [`signals`] (OS signals as an enum, for every command that waits) and
//!   [`sys`] (the Linux calls std and nix do not cover).
//! - [`core`]: the pure machines (the chain, the alert policy and wording, outcomes,
//!   failure signatures, resuming): every decision made from "what happened" and "what
//!   time it is"; no OS, no clock.
//! - at the bottom: `root` (where RUN_ROOT and the config file are), [`cli`] (the raw
//!   command line), [`config`] (the validated config), [`error`], [`time`].
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

/// A line on stdout. A reader that went away (`run-chain check | head -1`) is no error:
/// what it did not read is simply not printed (println! panics there).
macro_rules! say {
    () => {
        say!("")
    };
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

pub mod app;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub mod core;
pub mod error;
pub mod lock;
pub(crate) mod mail;
pub(crate) mod root;
pub mod run;
pub(crate) mod serve;
pub mod signals;
pub mod store;
pub mod sys;
pub mod time;
pub(crate) mod tls;
pub(crate) mod view;
