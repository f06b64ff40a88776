//! `meshlab`: parses the flags, sets up logging, runs the command and maps failure to an exit
//! status (see the `lab` crate doc for what it prints).

use std::process::ExitCode;

use clap::Parser;
use lab::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // A multi-thread runtime; `block_on` runs the command on the main thread, which is the
    // thread that spawns the children (their parent-death signal is tied to it).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshlab: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Up(args) => {
            let json = args.json;
            match runtime.block_on(lab::up::run(args)) {
                Ok(report) => {
                    report.print(json);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meshlab: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
