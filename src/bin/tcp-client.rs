//! `tcp-client`: parse the command line, set up logging, run one session, map it to an exit
//! status. Everything else is in `tcp_reactor::client`.

use std::process::ExitCode;

use tcp_reactor::client::{self, Cli, ClientError};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    if cli.tls().0.insecure {
        eprintln!("tcp-client: {}", client::tls::INSECURE_WARNING);
    }
    // Quiet by default: stdout is the session, stderr is for the one failure message.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    match client::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ClientError::ErrorFrame(_)) => {
            // The server's own words, as `Error <reason>`.
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tcp-client: {e}");
            ExitCode::FAILURE
        }
    }
}
