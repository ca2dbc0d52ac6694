//! `tcp-reactor`: parse the command line, set up logging, raise the descriptor limit, serve
//! (on the configured addresses, or on the listeners systemd passed in).
//! Or, as `tcp-reactor passwd NAME`, print a users file line and exit.

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use log::{error, info, warn};
use tcp_reactor::Config;
use tcp_reactor::auth::{check_name, hash_line, wipe};
use tcp_reactor::config::Command;
use tcp_reactor::net::raise_fd_limit;
use tcp_reactor::reactor::{activation, fleet};

/// Exit status for a bad NAME or an empty password: clap's own status for bad usage.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    // SAFETY: the first thing the program does: no other thread exists yet, so unsetting
    // the variables races with no reader of the environment.
    let environment = unsafe { activation::Environment::take() };
    let config = Config::parse();
    if config.require_login && config.users.is_none() {
        // Exits 2 with clap's usage line, as for any other bad command line.
        Config::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--require-login needs --users FILE: without a users file there are no \
                 accounts, so nobody could ever log in",
            )
            .exit();
    }
    if let Some(Command::Passwd { name }) = &config.command {
        return passwd(name);
    }
    init_logging(config.workers.count() > 1);
    let inherited = match activation::inherit(&environment, &config) {
        Ok(inherited) => inherited,
        Err(e) => {
            // A setup the operator must fix, like a bad command line: exits 2 the same way.
            Config::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("socket activation: {e}"),
                )
                .exit()
        }
    };
    let tls_listener = config.line_tls_addr.is_some()
        || config.frame_tls_addr.is_some()
        || inherited
            .as_ref()
            .is_some_and(|inherited| inherited.ids().any(|id| id.is_tls()));
    if config.tls_cert.is_some() && !tls_listener {
        Config::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--tls-cert and --tls-key need a TLS listener: --line-tls-addr, \
                 --frame-tls-addr, or a line-tls or frame-tls socket passed by systemd",
            )
            .exit();
    }

    pin_mmap_threshold();
    match raise_fd_limit() {
        Ok((soft, hard)) => info!("open files limit: soft {soft} raised to hard {hard}"),
        Err(e) => warn!("could not raise the open files limit: {e}"),
    }
    match fleet::run(config, inherited) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` (default `info`) to stderr. With several workers each line names the worker
/// that wrote it, by its thread's name: `w1 conn=3.1 closed: ...`.
fn init_logging(name_workers: bool) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if name_workers {
        builder.format(|buf, record| {
            let thread = std::thread::current();
            let worker = thread
                .name()
                .filter(|name| name.starts_with('w') && name[1..].parse::<usize>().is_ok());
            let style = buf.default_level_style(record.level());
            write!(
                buf,
                "[{} {style}{:<5}{style:#} {}] ",
                buf.timestamp(),
                record.level(),
                record.target()
            )?;
            if let Some(worker) = worker {
                write!(buf, "{worker} ")?;
            }
            writeln!(buf, "{}", record.args())
        });
    }
    builder.init();
}

/// `tcp-reactor passwd NAME`: the password is the first line of stdin, without its `\n` or
/// `\r\n`; the users file line goes to stdout. Nothing is logged, and the copy of the
/// password read here is wiped before returning.
fn passwd(name: &str) -> ExitCode {
    // Check the name before asking for a password that would then be thrown away.
    if let Err(e) = check_name(name) {
        eprintln!("tcp-reactor passwd: {e}");
        return ExitCode::from(USAGE);
    }
    let stdin = io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {name} (shown as typed), then Enter: ");
    }
    let mut line = Vec::new();
    let read = stdin.lock().read_until(b'\n', &mut line);
    let password = line.strip_suffix(b"\n").unwrap_or(&line);
    let password = password.strip_suffix(b"\r").unwrap_or(password);
    let made = match read {
        Err(e) => Err((ExitCode::FAILURE, format!("reading the password: {e}"))),
        Ok(_) if password.is_empty() => Err((ExitCode::from(USAGE), "empty password".into())),
        Ok(_) => hash_line(name, password).map_err(|e| (ExitCode::FAILURE, e)),
    };
    wipe(&mut line);
    match made {
        Ok(entry) => match writeln!(io::stdout().lock(), "{entry}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tcp-reactor passwd: writing the line: {e}");
                ExitCode::FAILURE
            }
        },
        Err((code, message)) => {
            eprintln!("tcp-reactor passwd: {message}");
            code
        }
    }
}

/// Keeps glibc from holding on to the memory of large, short-lived allocations.
///
/// Verifying a password allocates argon2's 19 MiB of working memory on a worker thread and
/// frees it. glibc serves allocations over its mmap threshold (128 KiB) with `mmap` and gives
/// them back with `munmap`, but by default it raises that threshold to the size of each such
/// block freed, so the next ones come from the heap and stay resident: after a few logins the
/// server held 160 MiB it no longer used (measured). Pinning the threshold keeps large blocks
/// (argon2's, and the buffers of multi-MiB frames) returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_mmap_threshold() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) } != 1 {
        warn!("mallopt(M_MMAP_THRESHOLD) failed: large freed blocks may stay resident");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}
