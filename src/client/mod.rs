//! `tcp-client`: a small client for both protocols, for people without `telnet` or `nc` and
//! for scripts that want one frame's answer as text.
//!
//! The binary (`src/bin/tcp-client.rs`) only parses [`Cli`] and maps [`run`]'s result to an
//! exit status; everything else lives here.
//!
//! # Modes
//!
//! ```text
//! tcp-client line [--addr 127.0.0.1:8080]
//!     stdin lines -> server; server bytes -> stdout, as they arrive (pushes included)
//! tcp-client frame heartbeat            [--addr 127.0.0.1:8888] [--timeout 5s]
//! tcp-client frame message TEXT         ...
//! tcp-client frame login USER PASS      ...   (Login body `USER:PASS`)
//!     one request frame, one reply frame printed as `<Command> <body>`
//! ```
//!
//! # Layout
//!
//! - [`cli`]: the command line ([`Cli`]); every usage error (exit 2) is found there.
//! - [`line`](mod@line): the line session, plain (two threads, one socket) and TLS (one
//!   thread, a mio loop), and the stdin thread both share.
//! - [`exchange`](mod@exchange): the frame exchange: one request, one reply, under one
//!   deadline.
//! - [`transport`]: reaching the server for both modes: connect under a deadline, the
//!   blocking TLS handshake.
//! - [`error`]: [`ClientError`], the one message a failed run prints, and how a frame body
//!   is shown.
//! - [`tls`]: both tools' TLS flags and the rustls client config they make.
//!
//! # Over TLS
//!
//! `--tls` with `--ca FILE` or `--insecure` (see [`tls`]) speaks TLS to the server's TLS
//! listeners; what is printed is the same as without it. The handshake is part of
//! connecting: bounded by the 10 s connect limit in `line` mode and by `--timeout` in `frame`
//! mode. A certificate that fails verification ends the run with the rustls reason
//! (`TLS handshake with ADDR failed: invalid peer certificate: UnknownIssuer`). On the way
//! out the client sends `close_notify`.
//!
//! # What it refuses to do
//!
//! It does not interpret line replies (the server's bytes are printed as they are), retry, or
//! keep a frame session open: `frame` is one request, one reply. The frame format is
//! [`crate::protocol::frame`]'s, never re-implemented here.

use std::io::{self, Write};

use crate::protocol::frame::Command;

pub mod cli;
pub mod error;
pub mod exchange;
pub mod line;
pub mod tls;
pub mod transport;

pub use cli::{
    Cli, DEFAULT_FRAME_ADDR, DEFAULT_LINE_ADDR, FrameArgs, FrameRequest, LineArgs, Mode,
};
pub use error::{ClientError, show_body, show_reply};
pub use exchange::exchange;
pub use line::{LINE_CONNECT_TIMEOUT, run_line, run_line_tls};

/// Runs the mode chosen on the command line against the real stdin and stdout.
///
/// # Errors
///
/// Every failure is a [`ClientError`]; the caller prints it and exits 1.
pub fn run(cli: &Cli) -> Result<(), ClientError> {
    let (tls, addr) = cli.tls();
    let tls = tls.config(addr).map_err(ClientError::TlsSetup)?;
    match &cli.mode {
        Mode::Line(args) => match &tls {
            None => run_line(&args.addr, io::stdin(), &mut io::stdout().lock()),
            Some(tls) => run_line_tls(&args.addr, tls, io::stdin(), &mut io::stdout().lock()),
        },
        Mode::Frame(args) => {
            let (command, body) = exchange(&args.addr, &args.request, args.timeout, tls.as_ref())?;
            if command == Command::Error {
                return Err(ClientError::ErrorFrame(body));
            }
            let shown = format!("{}\n", show_reply(command, &body));
            print(&mut io::stdout().lock(), shown.as_bytes())
        }
    }
}

/// Writes `bytes` to the user's `output` and flushes, so that what arrived shows at once.
fn print(output: &mut impl Write, bytes: &[u8]) -> Result<(), ClientError> {
    output
        .write_all(bytes)
        .and_then(|()| output.flush())
        .map_err(|source| ClientError::Io {
            doing: "writing to stdout",
            source,
        })
}
