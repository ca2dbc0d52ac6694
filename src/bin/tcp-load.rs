//! `tcp-load`: parse the command line, set up logging, run the load, print the summary.
//!
//! Exit status: 0 when no error was counted (chat: nor any message missing, duplicated or
//! reordered), 1 when any was (or setup failed), 2 for bad arguments (clap's usage errors). Everything else lives in `tcp_reactor::load`.

use std::process::ExitCode;

use log::error;
use tcp_reactor::load::{self, LoadConfig};

fn main() -> ExitCode {
    let config = LoadConfig::parse_args();
    if config.tls.insecure {
        eprintln!("tcp-load: {}", tcp_reactor::client::tls::INSECURE_WARNING);
    }
    // Warnings (mismatches, refused connects) by default: stdout carries the summary.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let report = match load::run(&config) {
        Ok(report) => report,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = load::output(&config, &report) {
        error!("writing the summary: {e}");
        return ExitCode::FAILURE;
    }
    if report.error_total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
