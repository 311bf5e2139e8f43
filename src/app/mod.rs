//! From a parsed command line to a result: resolve the config, the chain and RUN_ROOT
//! once (flag, then environment, then file, then default), then run a command: `check`
//! (`check`), running a chain (`run`), `mail-test` (`mail_test`); `stop` and `kick`
//! are `crate::control`'s, the readers `crate::view`'s, `exporter` and `serve` `crate::serve`'s.

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::control::{kick, stop};
use crate::error::{exit, Error, Result};
use crate::root::{config_path, looked_run_root};
use crate::view::{self, units::Wall};
use std::io::Write;

mod check;
mod mail_test;
mod run;
mod run_now;
mod stop;
mod store_import;

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
        Some(Command::Stop {
            chain, fleet: true, ..
        }) => stop::stop_fleet(&cli.common, &chain),
        Some(Command::Stop { chain, now, .. }) => {
            stop(&cli.common, &chain, now, &run_now::who_asks())
        }
        Some(Command::Kick { chain }) => kick(&cli.common, &chain, &run_now::who_asks()),
        Some(Command::Status { json }) => {
            let root = looked_run_root(&cli.common)?;
            let (store, unread) = fleet_config_or_why(&cli.common);
            let (v, fleet_error) = view::status::build_or_local(&root, store.as_ref())?;
            // A config that has a [store] but does not load: the fleet was not read either.
            let fleet_error = fleet_error.or(unread);
            // The fleet's store cannot be read: this host's chains (as without [store]),
            // a warning, and the exit status the error earns (70 unreachable, 78 refused).
            if let Some(e) = &fleet_error {
                eprintln!("run-chain: warning: {e}; showing this host's chains only");
            }
            let code = print(&if json {
                view::status::json(&v)
            } else {
                view::status::text(&v, Wall(crate::time::wall_ms()))
            });
            Ok(fleet_error.map_or(code, |e| e.exit_code()))
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
            let runs = view::history::build(
                &looked_run_root(&cli.common)?,
                &task,
                chain.as_deref(),
                limit,
                known,
                fleet_config(&cli.common).as_ref(),
            )?;
            Ok(print(&if json {
                view::history::json(&runs)
            } else {
                view::history::text(&runs, fleet_config(&cli.common).is_some())
            }))
        }
        Some(Command::Log {
            task,
            run_id,
            chain,
        }) => {
            let v = view::log::build(
                &looked_run_root(&cli.common)?,
                &task,
                run_id,
                chain.as_deref(),
                fleet_config(&cli.common).as_ref(),
            )?;
            if let Some(notice) = v.notice() {
                eprintln!("run-chain: {notice}");
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&v.output);
            let _ = out.flush();
            Ok(exit::OK)
        }
        Some(Command::Metrics) => {
            let root = looked_run_root(&cli.common)?;
            let t0 = std::time::Instant::now();
            let fleet = fleet_config(&cli.common)
                .map(|cfg| crate::view::metrics::Fleet { cfg, whole: false });
            let snap = crate::view::metrics::collect_fleet(&root, fleet.as_ref())
                .map_err(Error::Internal)?;
            let text = crate::view::metrics::render(&snap, Some(t0.elapsed().as_secs_f64()));
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(exit::OK)
        }
        Some(Command::Exporter { listen }) => {
            let fleet = fleet_config(&cli.common)
                .map(|cfg| crate::view::metrics::Fleet { cfg, whole: false });
            crate::serve::exporter::serve(looked_run_root(&cli.common)?, &listen, fleet)
        }
        Some(Command::Serve {
            listen,
            allow_actions,
            token_file,
            allow_host,
            fleet,
        }) => {
            let store = fleet_config(&cli.common);
            if fleet && store.is_none() {
                return Err(Error::Usage(
                    "--fleet: the config has no [store] (the fleet's PostgreSQL store)".into(),
                ));
            }
            crate::serve::console::serve(
                looked_run_root(&cli.common)?,
                crate::serve::console::Options {
                    listen,
                    allow_actions,
                    token_file,
                    allow_hosts: allow_host,
                    fleet: store.map(|cfg| crate::view::metrics::Fleet { cfg, whole: fleet }),
                },
            )
        }
        Some(Command::MailTest) => mail_test(&cli.common),
        Some(Command::RunNow { chain, task }) => run_now::run_now(&cli.common, &chain, &task),
        Some(Command::Store {
            action: crate::cli::StoreCommand::Import { path },
        }) => store_import::store_import(&cli.common, &path),
    }
}

/// The config's `[store]`, if the config loads and has one: the readers then show the
/// fleet. A config that does not load leaves them reading RUN_ROOT alone, as they always
/// have (they never needed a config).
pub(crate) fn fleet_config(common: &crate::cli::Common) -> Option<crate::config::FleetConfig> {
    Config::load(&config_path(common)).ok()?.store
}

/// [`fleet_config`] for `status`, which must not pass a fleet it did not read for the
/// whole picture: when the config does not load but has a `[store]` section (a password in
/// the URL, any other error of the file), also why the fleet was not read (78). A config
/// without `[store]` that does not load leaves `status` as it always was (RUN_ROOT alone).
fn fleet_config_or_why(
    common: &crate::cli::Common,
) -> (Option<crate::config::FleetConfig>, Option<Error>) {
    let path = config_path(common);
    match Config::load(&path) {
        Ok(c) => (c.store, None),
        Err(e) if has_store_section(&path) => (
            None,
            Some(Error::Config(format!(
                "the fleet's store was not read: {} has a [store] section but does not load ({e})",
                path.display()
            ))),
        ),
        Err(_) => (None, None),
    }
}

/// Whether the config file at `path` has a `[store]` section (read as TOML, or line by
/// line when it is not valid TOML).
fn has_store_section(path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match text.parse::<toml::Table>() {
        Ok(t) => t.contains_key("store"),
        Err(_) => text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("[store]") || l.starts_with("store.") || l.starts_with("store =")
        }),
    }
}

/// Write a reader's text to stdout (a closed stdout is not an error of the command).
fn print(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    exit::OK
}
