//! `tcp-reactor`: parse the command line, set up logging, raise the descriptor limit, serve.

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use tcp_reactor::reactor::listener::raise_fd_limit;
use tcp_reactor::{Config, Server};

fn main() -> ExitCode {
    let config = Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    match raise_fd_limit() {
        Ok((soft, hard)) => info!("open files limit: soft {soft} raised to hard {hard}"),
        Err(e) => warn!("could not raise the open files limit: {e}"),
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
