//! The command line, as clap sees it: raw values only.
//!
//! Nothing here reads a file or checks a name; `app.rs` resolves these raw values,
//! together with the environment and the config file, into what runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Names that a task or chain may not take, because the command line gives them a
/// meaning of their own.
pub const RESERVED_NAMES: &[&str] = &[
    "check",
    "status",
    "history",
    "log",
    "stop",
    "kick",
    "metrics",
    "exporter",
    "mail-test",
    "help",
];

#[derive(Debug, Parser)]
#[command(
    name = "run-chain",
    version,
    about = "Run an ordered chain of commands continuously, with a cooldown after each.",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command takes.
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// Config file [env: RUN_CHAIN_CONFIG] [default: ./tasks.toml]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for pidfiles, state and records [env: RUN_ROOT] [default: the config's run_root]
    #[arg(long = "run-root", global = true, value_name = "DIR")]
    pub run_root: Option<PathBuf>,
}

/// Options of the run mode (`run-chain TASK...`).
#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// Chain name [default: the task names joined by `_`]
    #[arg(long = "name", value_name = "CHAIN")]
    pub name: Option<String>,

    /// Never take over a running instance of the chain: exit 75 instead
    #[arg(long = "no-kill-concurrent")]
    pub no_kill_concurrent: bool,

    /// Run the chain through once, from its first task, and exit (0: all succeeded, 1: not)
    #[arg(long = "once")]
    pub once: bool,

    /// The tasks of the chain, in order
    #[arg(value_name = "TASK")]
    pub tasks: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config; print the resolved tasks
    Check,
    /// Every chain in RUN_ROOT: pid, up/down, what it does now, last results
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Recorded runs of a task, newest first
    History {
        task: String,
        #[arg(long)]
        chain: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// The kept output of a run
    Log {
        task: String,
        run_id: Option<u64>,
        #[arg(long)]
        chain: Option<String>,
    },
    /// Graceful stop of a running chain; returns when its process has exited
    Stop {
        chain: String,
        /// Stop the running task at once instead of letting it finish
        #[arg(long)]
        now: bool,
    },
    /// End the current cooldown of a chain: its next task starts at once
    Kick { chain: String },
    /// Print Prometheus text exposition for all chains, once
    Metrics,
    /// Serve the metrics over HTTP at /metrics
    Exporter {
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Send one test alert through the configured transport
    #[command(name = "mail-test")]
    MailTest,
}
