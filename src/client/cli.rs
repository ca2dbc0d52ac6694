//! The command line of `tcp-client`: the two modes as clap subcommands, their options, and
//! the checks clap cannot express (the TLS flag combinations).
//!
//! It exists so that every usage error is found here, before anything connects: a [`Cli`]
//! from [`Cli::parse_args`] or [`Cli::try_parse_args_from`] has TLS flags that mean something
//! (see [`TlsArgs::check`]), and whatever goes wrong later is a run failure (exit 1), never a
//! usage error (exit 2).
//!
//! # Invariants
//!
//! - The help texts are the tool's manual: `--help` of each mode says what is printed and
//!   what each exit status means, and the integration tests look for those words.
//! - `frame`'s options and the TLS flags are `global`, so they may come before or after the
//!   frame's subcommand; `line` takes no `--timeout`.
//! - What the frame request becomes on the wire is not decided here but in
//!   [`exchange`](mod@super::exchange) ([`FrameRequest::encode`]).

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::parse_duration;

use super::tls::TlsArgs;

/// The server's default line listener.
pub const DEFAULT_LINE_ADDR: &str = "127.0.0.1:8080";
/// The server's default frame listener.
pub const DEFAULT_FRAME_ADDR: &str = "127.0.0.1:8888";

/// `tcp-client`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "tcp-client",
    version,
    about = "A client for tcp-reactor: an interactive line session, or one binary frame.",
    long_about = "A client for tcp-reactor's two protocols (see docs/PROTOCOL.md).\n\n\
                  `tcp-client line` is an interactive line session, like telnet or nc.\n\
                  `tcp-client frame ...` sends one binary frame and prints the decoded reply.\n\n\
                  Exit status: 0 on success; 1 on any failure (connection refused or reset, \
                  timeout, an Error frame, a bad reply); 2 on a bad command line.\n\
                  RUST_LOG=debug logs what the client does on stderr.",
    after_help = "Synopsis:\n  \
                  tcp-client line [--addr HOST:PORT]          default 127.0.0.1:8080\n  \
                  tcp-client frame heartbeat [--addr HOST:PORT] [--timeout DUR]\n  \
                  tcp-client frame message TEXT [--addr HOST:PORT] [--timeout DUR]\n  \
                  tcp-client frame login USER PASS [--addr HOST:PORT] [--timeout DUR]\n  \
                  \x20                                           default 127.0.0.1:8888, 5s\n\n\
                  Over TLS, either mode: --tls with --ca FILE (PEM certificates to trust) or \
                  --insecure (any certificate; a warning is printed), and --server-name NAME \
                  (default: the host part of --addr).\n  \
                  tcp-client frame heartbeat --addr localhost:8443 --tls --ca cert.pem\n\n\
                  `tcp-client <COMMAND> --help` shows the details of each."
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
}

impl Cli {
    /// Parses the process's arguments; on an error prints it and exits with status 2.
    #[must_use]
    pub fn parse_args() -> Cli {
        match Self::try_parse_args_from(std::env::args_os()) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }

    /// Parses and checks the combinations clap cannot express (the TLS flags).
    ///
    /// # Errors
    ///
    /// A clap error (exit status 2, usage included) for any bad argument.
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Self::try_parse_from(args)?;
        let (tls, addr) = cli.tls();
        tls.check(addr).map_err(|message| {
            let name = match cli.mode {
                Mode::Line(_) => "line",
                Mode::Frame(_) => "frame",
            };
            // Built, so that the subcommand's usage line reads `tcp-client line ...`.
            let mut command = Self::command();
            command.build();
            let kind = clap::error::ErrorKind::ArgumentConflict;
            match command.find_subcommand_mut(name) {
                Some(sub) => sub.error(kind, message),
                None => Self::command().error(kind, message),
            }
        })?;
        Ok(cli)
    }

    /// The TLS flags of the chosen mode, and its `--addr`.
    #[must_use]
    pub fn tls(&self) -> (&TlsArgs, &str) {
        match &self.mode {
            Mode::Line(args) => (&args.tls, &args.addr),
            Mode::Frame(args) => (&args.tls, &args.addr),
        }
    }
}

/// The two protocols, one subcommand each.
#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Interactive line session: stdin lines to the server, server lines to stdout.
    #[command(
        long_about = "Interactive line session with the line listener (PING, HELLO, SAY, STATS, \
                      QUIT, or anything to echo).\n\n\
                      Each stdin line is sent as it is entered (a last line without a newline \
                      gets one). Everything the server sends is printed to stdout as it \
                      arrives, byte for byte, including chat pushes (`MSG <name> <text>`) that \
                      arrive while you are not typing.\n\n\
                      At the end of stdin (Ctrl-D, or the end of piped input) the client \
                      half-closes the connection and keeps printing until the server closes, \
                      so `printf 'PING\\nQUIT\\n' | tcp-client line` prints every reply. When \
                      the server closes first (after `QUIT`, an idle timeout, a shutdown), \
                      the client exits at once.\n\n\
                      Exit status: 0 when the server closed the connection; 1 when the \
                      connection could not be made (gives up after 10s), the TLS handshake \
                      failed, or the connection was reset.",
        after_help = "Example:\n  $ printf 'PING\\nHELLO ann\\nQUIT\\n' | tcp-client line\n  \
                      PONG\n  WELCOME ann\n  BYE"
    )]
    Line(LineArgs),
    /// Send one binary frame, print the decoded reply frame.
    #[command(
        long_about = "Send one frame to the frame listener, wait for one reply frame and print \
                      it on stdout as `<Command> <body>`: `Heartbeat`, `Message Server says: \
                      hi`, `LoginAck OK`. A body that is valid UTF-8 is printed as text, any \
                      other body as `0x` and lowercase hex (`0x53ff`); an empty body prints \
                      the command name alone.\n\n\
                      Exit status: 0 on a reply; 1 on an Error frame (printed on stderr as \
                      `Error <reason>`), and on any other failure: cannot connect, a failed \
                      TLS handshake, no whole reply within --timeout, the server closing first, or a reply that is \
                      not a valid frame.",
        after_help = "Examples:\n  $ tcp-client frame heartbeat\n  Heartbeat\n  \
                      $ tcp-client frame message hi\n  Message Server says: hi\n  \
                      $ tcp-client frame login ann secret --addr 127.0.0.1:8888\n  LoginAck OK"
    )]
    Frame(FrameArgs),
}

/// `tcp-client line` options.
#[derive(Args, Debug)]
pub struct LineArgs {
    /// The server's line listener.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LINE_ADDR)]
    pub addr: String,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `tcp-client frame` options; they may be given before or after the frame's subcommand.
#[derive(Args, Debug)]
pub struct FrameArgs {
    #[command(subcommand)]
    pub request: FrameRequest,

    /// The server's frame listener.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_FRAME_ADDR, global = true)]
    pub addr: String,

    /// Give up unless the whole exchange (connect, send, reply) is done within DUR: seconds
    /// (`5`, `0.5`) or `500ms`, `2s`, `1m`.
    #[arg(
        long,
        value_name = "DUR",
        default_value = "5s",
        value_parser = parse_timeout,
        global = true
    )]
    pub timeout: Duration,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The frame to send. Bodies are taken as given, byte for byte (not required to be UTF-8).
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum FrameRequest {
    /// Heartbeat (command 0), empty body; the server echoes it.
    Heartbeat,
    /// Message (command 1) with body TEXT; the server answers `Server says: TEXT`.
    ///
    /// A TEXT starting with `-` goes after `--`: `tcp-client frame message -- -x`.
    Message {
        /// The body.
        #[arg(value_name = "TEXT")]
        text: OsString,
    },
    /// Login (command 2) with body `USER:PASS`; the server answers LoginAck `OK`.
    Login {
        #[arg(value_name = "USER")]
        user: OsString,
        #[arg(value_name = "PASS")]
        pass: OsString,
    },
}

/// `DUR` for `--timeout`: as [`parse_duration`], but above zero (a zero deadline could only
/// ever time out).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err(format!("`{text}`: the timeout must be above zero"));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn frame_args(args: &[&str]) -> FrameArgs {
        match parse(args).mode {
            Mode::Frame(frame) => frame,
            Mode::Line(_) => panic!("{args:?} parsed as line"),
        }
    }

    #[test]
    fn defaults() {
        match parse(&["tcp-client", "line"]).mode {
            Mode::Line(line) => assert_eq!(line.addr, "127.0.0.1:8080"),
            Mode::Frame(_) => panic!("line parsed as frame"),
        }
        let frame = frame_args(&["tcp-client", "frame", "heartbeat"]);
        assert_eq!(frame.request, FrameRequest::Heartbeat);
        assert_eq!(frame.addr, "127.0.0.1:8888");
        assert_eq!(frame.timeout, Duration::from_secs(5));
    }

    #[test]
    fn frame_options_before_or_after_the_request() {
        for args in [
            &[
                "tcp-client",
                "frame",
                "message",
                "hi",
                "--addr",
                "h:1",
                "--timeout",
                "250ms",
            ][..],
            &[
                "tcp-client",
                "frame",
                "--addr",
                "h:1",
                "--timeout",
                "250ms",
                "message",
                "hi",
            ],
            &[
                "tcp-client",
                "frame",
                "--addr",
                "h:1",
                "message",
                "--timeout",
                "0.25",
                "hi",
            ],
        ] {
            let frame = frame_args(args);
            assert_eq!(frame.addr, "h:1", "{args:?}");
            assert_eq!(frame.timeout, Duration::from_millis(250), "{args:?}");
            assert_eq!(
                frame.request,
                FrameRequest::Message { text: "hi".into() },
                "{args:?}"
            );
        }
    }

    #[test]
    fn tls_flags_in_either_mode_and_position() {
        let frame = frame_args(&[
            "tcp-client",
            "frame",
            "--tls",
            "heartbeat",
            "--ca",
            "ca.pem",
            "--server-name",
            "localhost",
        ]);
        assert!(frame.tls.tls);
        assert_eq!(frame.tls.ca, Some("ca.pem".into()));
        assert_eq!(frame.tls.server_name.as_deref(), Some("localhost"));
        let cli = Cli::try_parse_args_from(["tcp-client", "line", "--tls", "--insecure"]).unwrap();
        let (tls, addr) = cli.tls();
        assert!(tls.tls && tls.insecure);
        assert_eq!(addr, DEFAULT_LINE_ADDR);
        let plain = Cli::try_parse_args_from(["tcp-client", "line"]).unwrap();
        assert_eq!(*plain.tls().0, TlsArgs::default());
    }

    #[test]
    fn tls_usage_errors_exit_2() {
        let cases: &[(&[&str], &str)] = &[
            (&["tcp-client", "line", "--tls"], "pass --ca FILE"),
            (
                &["tcp-client", "frame", "heartbeat", "--tls"],
                "or --insecure",
            ),
            (
                &["tcp-client", "frame", "heartbeat", "--ca", "x.pem"],
                "--ca only applies with --tls",
            ),
            (
                &["tcp-client", "line", "--insecure"],
                "--insecure only applies",
            ),
            (
                &["tcp-client", "line", "--server-name", "h"],
                "--server-name only applies",
            ),
            (
                &["tcp-client", "line", "--tls", "--insecure", "--ca", "x.pem"],
                "cannot be used together",
            ),
            (
                &[
                    "tcp-client",
                    "line",
                    "--tls",
                    "--insecure",
                    "--addr",
                    "a b:1",
                ],
                "neither a DNS name",
            ),
        ];
        for (args, needle) in cases {
            let err = Cli::try_parse_args_from(*args).expect_err(needle);
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
        }
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for args in [
            &["tcp-client"][..],
            &["tcp-client", "frame"],
            &["tcp-client", "frame", "message"],
            &["tcp-client", "frame", "login", "ann"],
            &["tcp-client", "frame", "heartbeat", "extra"],
            &["tcp-client", "frame", "heartbeat", "--timeout", "0"],
            &["tcp-client", "frame", "heartbeat", "--timeout", "soon"],
            &["tcp-client", "line", "--timeout", "1s"],
            &["tcp-client", "lines"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
