//! The command line, as clap sees it: raw values only.
//!
//! Nothing here reads a file or checks a name; `app` resolves these raw values,
//! together with the environment and the config file, into what runs. The help text is
//! part of the contract: every option and argument has a line, and the defaults it shows
//! are the constants below, which the commands use too (so the two cannot drift).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The names a task may not take (the subcommands'), defined beside the name checks in
/// `config` so that it needs nothing of the command line.
pub(crate) use crate::config::COMING_COMMANDS;
pub use crate::config::RESERVED_NAMES;

/// `history --limit` when not given.
pub(crate) const DEFAULT_HISTORY_LIMIT: u64 = 20;

/// `exporter --listen` and `serve --listen` when not given.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

const USAGE: &str = "run-chain [OPTIONS] TASK...
       run-chain COMMAND [OPTIONS] [ARGS]";

const EXAMPLES: &str = "\
Examples:
  run-chain send_mail retry_deferred &
      Run the two tasks in turn, for ever, as chain send_mail_retry_deferred
      (launched again, it takes over from the running instance: the upgrade)
  run-chain -c /etc/app/tasks.toml --once backup
      Run task backup once and exit: 0 if it succeeded, 1 if not
  run-chain status
      Every chain in RUN_ROOT: up or down, what it does now, its last results
  run-chain stop send_mail_retry_deferred
      Stop that chain gracefully; returns when its process has exited";

#[derive(Debug, Parser)]
#[command(
    name = "run-chain",
    version,
    about = "Run an ordered chain of commands continuously, with a cooldown after each.",
    override_usage = USAGE,
    after_help = EXAMPLES,
    subcommand_value_name = "COMMAND",
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
#[command(next_help_heading = "Common options")]
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
#[command(next_help_heading = "Run options (run-chain [OPTIONS] TASK...)")]
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

    /// The tasks of the chain, in order (each a [tasks.NAME] of the config)
    #[arg(value_name = "TASK")]
    pub tasks: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config; print the resolved tasks
    Check,
    /// Every chain in RUN_ROOT: pid, up/down, what it does now, last results
    Status {
        /// Print JSON (RUN_ROOT and every chain) instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Recorded runs of a task, newest first
    History {
        /// The task whose runs to list
        #[arg(value_name = "TASK")]
        task: String,
        /// Only the runs of this chain [default: every chain that ran the task]
        #[arg(long, value_name = "CHAIN")]
        chain: Option<String>,
        /// At most this many runs
        #[arg(long, value_name = "N", default_value_t = DEFAULT_HISTORY_LIMIT)]
        limit: u64,
        /// Print the runs as a JSON array instead of the table
        #[arg(long)]
        json: bool,
    },
    /// The kept output of a run
    Log {
        /// The task whose output to print
        #[arg(value_name = "TASK")]
        task: String,
        /// The run's id (RUN_CHAIN_RUN_ID) [default: the latest, even one still running]
        #[arg(value_name = "RUN_ID")]
        run_id: Option<u64>,
        /// The run of this chain [default: every chain that ran the task]
        #[arg(long, value_name = "CHAIN")]
        chain: Option<String>,
    },
    /// Graceful stop of a running chain; returns when its process has exited
    Stop {
        /// The chain to stop (see `run-chain status`)
        #[arg(value_name = "CHAIN")]
        chain: String,
        /// Stop the running task at once instead of letting it finish
        #[arg(long)]
        now: bool,
        /// (fleet) Stop every instance of the chain on every host, owner and standbys;
        /// returns when they have gone. A later launch runs again
        #[arg(long, conflicts_with = "now")]
        fleet: bool,
    },
    /// End the current cooldown of a chain: its next task starts at once
    Kick {
        /// The chain to kick (see `run-chain status`)
        #[arg(value_name = "CHAIN")]
        chain: String,
    },
    /// Run a task of a running chain out of turn: at once in a cooldown, else right after
    /// the running task; then the chain goes back to its order. Prints the run id reserved
    /// (exit 0); exit 75 if refused (the task is running, or a request is already pending),
    /// 64 for an unknown chain or task
    #[command(name = "run-now")]
    RunNow {
        /// The chain (see `run-chain status`)
        #[arg(value_name = "CHAIN")]
        chain: String,
        /// The task of that chain to run
        #[arg(value_name = "TASK")]
        task: String,
    },
    /// Print Prometheus text exposition for all chains, once
    Metrics,
    /// Serve the metrics over HTTP at /metrics
    Exporter {
        /// The address and port to listen on
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: String,
    },
    /// The web console, its JSON API and the metrics over HTTP
    Serve {
        /// The address and port to listen on (beyond loopback, --token-file is required)
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Allow the actions (kick, stop) from the console; without it, it is read-only
        #[arg(long = "allow-actions")]
        allow_actions: bool,
        /// A file holding the secret the pages and the API ask for (HTTP Basic, or the login form)
        #[arg(long = "token-file", value_name = "F")]
        token_file: Option<PathBuf>,
        /// A host name the Host header may give besides loopback and the address listened on (repeatable)
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_host: Vec<String>,
        /// With a [store]: export every chain of the fleet at /metrics, not only this host's
        #[arg(long)]
        fleet: bool,
    },
    /// Send one test alert through the configured transport
    #[command(name = "mail-test")]
    MailTest,
    /// (fleet) The fleet's store: `store import PATH`
    #[command(subcommand_required = true, arg_required_else_help = false)]
    Store {
        #[command(subcommand)]
        action: StoreCommand,
    },
}

/// `run-chain store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a host's SQLite history (RUN_ROOT/runs.db) into the fleet's store ([store]):
    /// idempotent; a run id taken in the fleet is renumbered (the mapping is printed)
    Import {
        /// The host's store, RUN_ROOT/runs.db
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_is_a_reserved_name_and_coming_ones_are_not_subcommands() {
        let cmd = Cli::command();
        let subs: Vec<&str> = cmd
            .get_subcommands()
            .map(clap::Command::get_name)
            .chain(["help"])
            .collect();
        for s in &subs {
            assert!(RESERVED_NAMES.contains(s), "{s} is not reserved");
        }
        for c in COMING_COMMANDS {
            assert!(RESERVED_NAMES.contains(c), "{c} is not reserved");
            assert!(!subs.contains(c), "{c} is a subcommand already");
        }
        for r in RESERVED_NAMES {
            assert!(
                subs.contains(r) || COMING_COMMANDS.contains(r),
                "{r} is reserved for no reason"
            );
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
