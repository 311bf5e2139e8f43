//! From a parsed command line to a result: resolve the config, the chain and RUN_ROOT
//! once (flag, then environment, then file, then default), then run a command: `check`
//! (`check`), running a chain (`run`), `mail-test` (`mail_test`); `stop` and `kick`
//! are `crate::control`'s, the readers `crate::view`'s, `exporter` `crate::serve`'s.

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::control::{kick, stop};
use crate::error::{exit, Error, Result};
use crate::root::{config_path, looked_run_root};

mod check;
mod mail_test;
mod run;

use check::check;
use mail_test::mail_test;
use run::run;

/// Run the command line; returns the exit status.
pub fn main(cli: Cli) -> Result<u8> {
    if cli.command.is_some() {
        let r = &cli.run;
        let given = [
            ("--once", r.once),
            ("--no-kill-concurrent", r.no_kill_concurrent),
            ("--name", r.name.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(Error::Usage(format!(
                "{flag} is for running a chain (run-chain [OPTIONS] TASK...), not for a subcommand"
            )));
        }
    }
    match cli.command {
        None => run(&cli.common, &cli.run),
        Some(Command::Check) => check(&cli.common),
        Some(Command::Stop { chain, now }) => stop(&cli.common, &chain, now),
        Some(Command::Kick { chain }) => kick(&cli.common, &chain),
        Some(Command::Status { json }) => {
            crate::view::report::status(&looked_run_root(&cli.common)?, json)
        }
        Some(Command::History {
            task,
            chain,
            limit,
            json,
        }) => {
            let known = Config::load(&config_path(&cli.common))
                .ok()
                .map(|c| c.tasks.contains_key(&task));
            if limit == 0 {
                return Err(Error::Usage("--limit: expected 1 or more".into()));
            }
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            crate::view::report::history(
                &looked_run_root(&cli.common)?,
                &task,
                chain.as_deref(),
                limit,
                json,
                known,
            )
        }
        Some(Command::Log {
            task,
            run_id,
            chain,
        }) => crate::view::report::log(
            &looked_run_root(&cli.common)?,
            &task,
            run_id,
            chain.as_deref(),
        ),
        Some(Command::Metrics) => {
            let root = looked_run_root(&cli.common)?;
            let t0 = std::time::Instant::now();
            let snap = crate::view::metrics::collect(&root).map_err(Error::Internal)?;
            let text = crate::view::metrics::render(&snap, Some(t0.elapsed().as_secs_f64()));
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(exit::OK)
        }
        Some(Command::Exporter { listen }) => {
            crate::serve::serve(looked_run_root(&cli.common)?, &listen)
        }
        Some(Command::MailTest) => mail_test(&cli.common),
    }
}
