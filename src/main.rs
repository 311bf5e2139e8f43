//! The `run-chain` binary: parse the command line, start logging, call the library,
//! and map the result to an exit status.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use run_chain::cli::Cli;
use run_chain::error::exit;

fn main() -> ExitCode {
    run_chain::sys::ensure_std_fds();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => exit::OK,
                _ => exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let pid = std::process::id();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} run-chain[{pid}] {}: {}",
                buf.timestamp_millis(),
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
    match run_chain::app::main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("run-chain: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
