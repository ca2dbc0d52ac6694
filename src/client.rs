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
//! # Line mode: two threads, one socket
//!
//! Chat pushes (`MSG ann hi`) arrive whenever someone else speaks, also while the user is not
//! typing, so reading the socket cannot wait for stdin. The calling thread reads the socket
//! and copies its bytes to stdout, verbatim and flushed after every read; a second thread
//! forwards stdin to a clone of the socket, one line per write. The session's life is the
//! socket's: at the end of stdin the forwarder half-closes (`shutdown(Write)`), the server
//! answers what it received and closes, and the calling thread returns at that EOF. When the
//! server closes first (`QUIT`, idle timeout, shutdown), [`run`] returns at once, and the
//! forwarder, blocked in a read of stdin that nothing can interrupt, simply ends with the
//! process.
//!
//! # Frame mode: one exchange under one deadline
//!
//! `--timeout` bounds the whole exchange (connect, write, read), not each step: every
//! blocking call gets the time left. The reply is read until [`frame::decode`] holds a whole
//! frame, so a reply split across reads is still one reply; bytes after it are ignored.
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
//! - `frame`: blocking, [`rustls::StreamOwned`] over the socket, under the same deadline.
//! - `line`: one TLS session cannot be driven from two threads, so the two-thread design
//!   above becomes one thread and a mio loop over the socket ([`run_line_tls`]): the stdin
//!   thread hands its lines over a bounded channel and wakes the loop; the loop reads (TLS
//!   records in, plaintext to stdout) before it writes (queued lines in, records out), and
//!   takes a new line only once the previous records have left, so a server that stops
//!   reading stops stdin, as the blocked `write` does in plain mode. At the end of stdin it
//!   sends `close_notify` and half-closes; the session ends when the server closes (with
//!   `close_notify`, or a bare TCP close, taken as the same).
//!
//! # What it refuses to do
//!
//! It does not interpret line replies (the server's bytes are printed as they are), retry, or
//! keep a frame session open: `frame` is one request, one reply. The frame format is
//! [`crate::protocol::frame`]'s, never re-implemented here.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand};
use log::{debug, trace, warn};
use rustls::{ClientConnection, StreamOwned};

use crate::config::parse_duration;
use crate::protocol::frame::{self, Command, HEADER_LEN};
use crate::protocol::{Decoded, ProtocolError};

pub mod tls;

use tls::{TlsArgs, TlsConfig, TlsError, rustls_error};

/// The server's default line listener.
pub const DEFAULT_LINE_ADDR: &str = "127.0.0.1:8080";
/// The server's default frame listener.
pub const DEFAULT_FRAME_ADDR: &str = "127.0.0.1:8888";
/// How long `line` mode waits for the connection to be established (TLS: and the handshake
/// done).
pub const LINE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Over TLS, stdin lines read ahead of the socket at most: past this the stdin thread waits,
/// as it waits in a blocked `write` without TLS.
const LINES_QUEUED: usize = 64;

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

impl FrameRequest {
    /// The command byte and body this request is sent as.
    #[must_use]
    pub fn command_and_body(&self) -> (Command, Vec<u8>) {
        use std::os::unix::ffi::OsStrExt;
        match self {
            FrameRequest::Heartbeat => (Command::Heartbeat, Vec::new()),
            FrameRequest::Message { text } => (Command::Message, text.as_bytes().to_vec()),
            FrameRequest::Login { user, pass } => {
                let mut body = user.as_bytes().to_vec();
                body.push(b':');
                body.extend_from_slice(pass.as_bytes());
                (Command::Login, body)
            }
        }
    }

    /// The whole request frame, header from [`frame::encode_header`] then the body.
    ///
    /// # Errors
    ///
    /// [`ClientError::BodyTooLarge`] when the body does not fit the header's u32 length.
    pub fn encode(&self) -> Result<Vec<u8>, ClientError> {
        let (command, body) = self.command_and_body();
        let len = u32::try_from(body.len()).map_err(|_| ClientError::BodyTooLarge(body.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&frame::encode_header(command, len));
        out.extend_from_slice(&body);
        Ok(out)
    }
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

/// Why a run failed. `Display` is the message shown on stderr.
#[derive(Debug)]
pub enum ClientError {
    /// `HOST:PORT` did not resolve to any address.
    Resolve { addr: String, source: io::Error },
    /// No connection could be made (refused, unreachable, timed out).
    Connect { addr: String, source: io::Error },
    /// The server reset the connection.
    Reset,
    /// Any other IO failure, with what was being done.
    Io {
        doing: &'static str,
        source: io::Error,
    },
    /// No whole reply frame within `--timeout`.
    Timeout { timeout: Duration, received: usize },
    /// The server closed the connection before a whole reply frame.
    ClosedEarly { received: usize },
    /// The reply is not a frame.
    BadReply(ProtocolError),
    /// The server answered with an Error frame; its body is the reason.
    ErrorFrame(Vec<u8>),
    /// A request body of more than `u32::MAX` bytes cannot be framed.
    BodyTooLarge(usize),
    /// The TLS settings could not be made (a bad `--ca` file).
    TlsSetup(TlsError),
    /// The TLS handshake failed: the certificate did not verify, the server sent an alert,
    /// or a protocol error.
    Handshake { addr: String, source: rustls::Error },
    /// The server closed the connection before the TLS handshake was done.
    HandshakeClosed { addr: String },
    /// The TLS handshake was not done within the time allowed.
    HandshakeTimeout { timeout: Duration },
    /// A TLS error after the handshake (a bad record, an alert from the server).
    Tls(rustls::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { addr, source } => write!(f, "cannot resolve {addr}: {source}"),
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Reset => f.write_str("connection reset by the server"),
            ClientError::Io { doing, source } => write!(f, "{doing}: {source}"),
            ClientError::Timeout { timeout, received } => write!(
                f,
                "no reply frame within {timeout:?} ({received} bytes received)"
            ),
            ClientError::ClosedEarly { received: 0 } => {
                f.write_str("the server closed the connection without replying")
            }
            ClientError::ClosedEarly { received } => write!(
                f,
                "the server closed the connection after {received} bytes, before a whole frame"
            ),
            ClientError::BadReply(e) => write!(f, "bad reply: {e}"),
            ClientError::ErrorFrame(reason) => write!(f, "Error {}", show_body(reason)),
            ClientError::BodyTooLarge(len) => {
                write!(
                    f,
                    "a {len}-byte body does not fit a frame (max {})",
                    u32::MAX
                )
            }
            ClientError::TlsSetup(e) => write!(f, "{e}"),
            ClientError::Handshake { addr, source } => {
                write!(f, "TLS handshake with {addr} failed: {source}")
            }
            ClientError::HandshakeClosed { addr } => write!(
                f,
                "{addr} closed the connection during the TLS handshake (is it a TLS listener?)"
            ),
            ClientError::HandshakeTimeout { timeout } => {
                write!(f, "no TLS handshake within {timeout:?}")
            }
            ClientError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve { source, .. }
            | ClientError::Connect { source, .. }
            | ClientError::Io { source, .. } => Some(source),
            ClientError::BadReply(e) => Some(e),
            ClientError::TlsSetup(e) => Some(e),
            ClientError::Handshake { source: e, .. } | ClientError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// An IO error while talking to the server: a reset gets its own message, and so does a
/// TLS error (which rustls hands over inside an `InvalidData` IO error).
fn io_error(doing: &'static str, source: io::Error) -> ClientError {
    if let Some(e) = rustls_error(&source) {
        ClientError::Tls(e.clone())
    } else if source.kind() == io::ErrorKind::ConnectionReset {
        ClientError::Reset
    } else {
        ClientError::Io { doing, source }
    }
}

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
            let mut stdout = io::stdout().lock();
            writeln!(stdout, "{}", show_reply(command, &body))
                .and_then(|()| stdout.flush())
                .map_err(|source| ClientError::Io {
                    doing: "writing to stdout",
                    source,
                })
        }
    }
}

/// A line session: `input`'s lines go to the server (from a second thread), the server's
/// bytes go to `output` as they arrive. Returns when the server closes the connection.
///
/// # Errors
///
/// Connecting fails, the connection is reset, or `output` cannot be written.
pub fn run_line<I, O>(addr: &str, input: I, output: &mut O) -> Result<(), ClientError>
where
    I: Read + Send + 'static,
    O: Write,
{
    let stream = connect(addr, Instant::now() + LINE_CONNECT_TIMEOUT)?;
    // Lines are small and typed one at a time: send each at once instead of waiting for the
    // previous one's ACK (Nagle).
    if let Err(e) = stream.set_nodelay(true) {
        debug!("TCP_NODELAY: {e}");
    }
    let to_server = stream.try_clone().map_err(|source| ClientError::Io {
        doing: "cloning the socket",
        source,
    })?;
    // Not joined: when the server closes first, this thread may be blocked reading stdin
    // forever, and ends with the process.
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || forward_lines(BufReader::new(input), to_server))
        .map_err(|source| ClientError::Io {
            doing: "starting the stdin thread",
            source,
        })?;
    copy_until_eof(stream, output)
}

/// Sends each line of `input` as one write, then half-closes so the server knows nothing
/// more is coming.
fn forward_lines(input: impl BufRead, mut socket: TcpStream) {
    let sent_all = each_line(input, |line| match socket.write_all(line) {
        Ok(()) => true,
        Err(e) => {
            // The reading side sees the same failure (EOF or reset) and reports it.
            debug!("stdin thread: write to server failed: {e}");
            false
        }
    });
    if !sent_all {
        return;
    }
    debug!("end of stdin: shutting down the write side");
    if let Err(e) = socket.shutdown(Shutdown::Write) {
        debug!("shutdown(Write): {e}");
    }
}

/// Hands each line of `input` to `send`, adding a `\n` to a last line without one. Returns
/// `false` if `send` refused a line (then the rest is not read), `true` at the end of input
/// (a failure to read stdin is taken as its end).
fn each_line(mut input: impl BufRead, mut send: impl FnMut(&[u8]) -> bool) -> bool {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return true,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if !send(&line) {
                    return false;
                }
            }
            Err(e) => {
                warn!("reading stdin failed, ending input: {e}");
                return true;
            }
        }
    }
}

/// Copies the server's bytes to `output`, flushing after every read so a push shows at once.
fn copy_until_eof(mut stream: TcpStream, output: &mut impl Write) -> Result<(), ClientError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                debug!("server closed the connection");
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("reading from the server", e)),
        };
        output
            .write_all(&buf[..n])
            .and_then(|()| output.flush())
            .map_err(|source| ClientError::Io {
                doing: "writing to stdout",
                source,
            })?;
    }
}

/// The socket's token in [`run_line_tls`]'s poll.
const SERVER: mio::Token = mio::Token(0);
/// The stdin thread's waker.
const STDIN: mio::Token = mio::Token(1);

/// A line session over TLS: what [`run_line`] does, driven by one thread (see "Over TLS" in
/// the module doc). Returns when the server closes the connection.
///
/// # Errors
///
/// Connecting or the handshake fails, the connection is reset, a TLS error, or `output`
/// cannot be written.
pub fn run_line_tls<I, O>(
    addr: &str,
    tls: &TlsConfig,
    input: I,
    output: &mut O,
) -> Result<(), ClientError>
where
    I: Read + Send + 'static,
    O: Write,
{
    let deadline = Instant::now() + LINE_CONNECT_TIMEOUT;
    let mut socket = connect(addr, deadline)?;
    if let Err(e) = socket.set_nodelay(true) {
        debug!("TCP_NODELAY: {e}");
    }
    let session = handshake(&mut socket, tls, addr, deadline)
        .map_err(|e| e.or_timeout(LINE_CONNECT_TIMEOUT))?;
    let setup = |doing| move |source| ClientError::Io { doing, source };
    socket
        .set_nonblocking(true)
        .map_err(setup("making the socket non-blocking"))?;
    let mut socket = mio::net::TcpStream::from_std(socket);
    let mut poll = mio::Poll::new().map_err(setup("creating the poll"))?;
    // Registered once, edge-triggered: each step below runs until WouldBlock.
    poll.registry()
        .register(
            &mut socket,
            SERVER,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )
        .map_err(setup("registering the socket"))?;
    // Held here too: a waker dropped by the exiting stdin thread would close its eventfd, and
    // epoll forgets the pending wakeup of a closed descriptor.
    let waker =
        Arc::new(mio::Waker::new(poll.registry(), STDIN).map_err(setup("creating a waker"))?);
    let stdin_waker = Arc::clone(&waker);
    let (lines, from_stdin) = std::sync::mpsc::sync_channel(LINES_QUEUED);
    // Not joined, as in `run_line`: it may be blocked reading stdin when the session ends.
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let all_read = each_line(BufReader::new(input), |line| {
                lines.send(Some(line.to_vec())).is_ok() && stdin_waker.wake().is_ok()
            });
            if all_read && lines.send(None).is_ok() {
                let _ = stdin_waker.wake();
            }
        })
        .map_err(setup("starting the stdin thread"))?;

    let mut line = LineSession {
        socket,
        session,
        from_stdin,
        plaintext: vec![0u8; 64 * 1024],
        input_done: false,
        write_done: false,
    };
    let mut events = mio::Events::with_capacity(8);
    loop {
        // Read before write; both also run before the first poll, for what the handshake
        // left behind.
        if line.read(output)? {
            line.say_goodbye();
            return Ok(());
        }
        line.write();
        match poll.poll(&mut events, None) {
            Ok(()) => trace!("wakeup: {} event(s)", events.iter().count()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ClientError::Io {
                    doing: "waiting for the socket or stdin",
                    source,
                });
            }
        }
    }
}

/// [`run_line_tls`]'s state: the socket, its TLS session, and how far each direction is.
struct LineSession {
    socket: mio::net::TcpStream,
    session: ClientConnection,
    /// Lines from the stdin thread; `None` is the end of input.
    from_stdin: std::sync::mpsc::Receiver<Option<Vec<u8>>>,
    plaintext: Vec<u8>,
    /// stdin has ended: `close_notify` is queued.
    input_done: bool,
    /// Nothing more will be written: half-closed after `close_notify`, or a write failed.
    write_done: bool,
}

impl LineSession {
    /// Reads the socket until WouldBlock, decrypting as it goes and copying the plaintext to
    /// `output`. `Ok(true)` once the server has closed (with `close_notify`, or a bare TCP
    /// close, taken as the same since the server's bytes are printed as they come anyway).
    fn read(&mut self, output: &mut impl Write) -> Result<bool, ClientError> {
        loop {
            let at_eof = match self.session.read_tls(&mut self.socket) {
                Ok(0) => true,
                Ok(n) => {
                    trace!("read {n} TLS bytes");
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("reading from the server", e)),
            };
            if let Err(e) = self.session.process_new_packets() {
                // Tell the server why (the alert rustls queued), best effort.
                let _ = self.session.write_tls(&mut self.socket);
                return Err(ClientError::Tls(e));
            }
            // Emptied after every read, so rustls's plaintext buffer never fills.
            loop {
                match self.session.reader().read(&mut self.plaintext) {
                    Ok(0) => {
                        debug!("server sent close_notify");
                        return Ok(true);
                    }
                    Ok(n) => output
                        .write_all(&self.plaintext[..n])
                        .and_then(|()| output.flush())
                        .map_err(|source| ClientError::Io {
                            doing: "writing to stdout",
                            source,
                        })?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        debug!("server closed the connection without close_notify");
                        return Ok(true);
                    }
                    Err(e) => return Err(io_error("reading from the server", e)),
                }
            }
            if at_eof {
                return Ok(true);
            }
        }
    }

    /// Writes the session's records until WouldBlock, taking the next stdin line only once
    /// everything before it has left. At the end of input: `close_notify`, then a half-close.
    /// A failed write stops writing; the read side sees the same failure and reports it.
    fn write(&mut self) {
        while !self.write_done {
            while self.session.wants_write() {
                match self.session.write_tls(&mut self.socket) {
                    Ok(n) => trace!("wrote {n} TLS bytes"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("write to server failed: {e}");
                        self.write_done = true;
                        return;
                    }
                }
            }
            if self.input_done {
                debug!("end of stdin: close_notify sent, shutting down the write side");
                if let Err(e) = self.socket.shutdown(Shutdown::Write) {
                    debug!("shutdown(Write): {e}");
                }
                self.write_done = true;
                return;
            }
            match self.from_stdin.try_recv() {
                Ok(Some(line)) => {
                    if let Err(e) = self.session.writer().write_all(&line) {
                        debug!("TLS writer: {e}");
                        self.write_done = true;
                    }
                }
                // Disconnected without `None`: the stdin thread died; its input has ended.
                Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.session.send_close_notify();
                    self.input_done = true;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
            }
        }
    }

    /// The server has closed: answer with `close_notify` (if not sent yet), best effort.
    fn say_goodbye(&mut self) {
        if !self.input_done && !self.write_done {
            self.session.send_close_notify();
            self.input_done = true;
        }
        while self.session.wants_write() && !self.write_done {
            if self.session.write_tls(&mut self.socket).is_err() {
                break;
            }
        }
    }
}

/// Sends `request` to `addr` and reads one reply frame, all within `timeout`. Returns the
/// reply's command and body, an Error frame included (the caller decides what it means).
///
/// # Errors
///
/// Connecting fails, the deadline passes, the server closes or resets before a whole frame,
/// or the reply is not a frame.
pub fn exchange(
    addr: &str,
    request: &FrameRequest,
    timeout: Duration,
    tls: Option<&TlsConfig>,
) -> Result<(Command, Vec<u8>), ClientError> {
    let deadline = Instant::now() + timeout;
    let bytes = request.encode()?;
    let socket = connect(addr, deadline)?;
    if let Err(e) = socket.set_nodelay(true) {
        debug!("TCP_NODELAY: {e}");
    }
    let mut stream = match tls {
        None => Stream::Plain(socket),
        Some(tls) => {
            let mut socket = socket;
            let session =
                handshake(&mut socket, tls, addr, deadline).map_err(|e| e.or_timeout(timeout))?;
            Stream::Tls(Box::new(StreamOwned::new(session, socket)))
        }
    };

    let timed_out = |received| ClientError::Timeout { timeout, received };
    let left = |received| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| timed_out(received))
    };

    stream
        .socket()
        .set_write_timeout(Some(left(0)?))
        .map_err(|source| io_error("setting the write timeout", source))?;
    // `flush` pushes out the TLS records still held by the session (a no-op on plain TCP).
    stream
        .write_all(&bytes)
        .and_then(|()| stream.flush())
        .map_err(|e| {
            if is_timeout(&e) {
                timed_out(0)
            } else {
                io_error("sending the frame", e)
            }
        })?;
    debug!("sent {} bytes to {addr}", bytes.len());

    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // The client trusts the server with any length: it only holds what actually arrives,
        // and the deadline bounds that.
        match frame::decode(&reply, u32::MAX) {
            Ok(Decoded::Complete { request, consumed }) => {
                debug!("reply: {consumed} bytes, command {:?}", request.command);
                return Ok((request.command, request.body.to_vec()));
            }
            Ok(Decoded::Incomplete) => {}
            Err(e) => return Err(ClientError::BadReply(e)),
        }
        stream
            .socket()
            .set_read_timeout(Some(left(reply.len())?))
            .map_err(|source| io_error("setting the read timeout", source))?;
        match stream.read(&mut chunk) {
            // Over TLS, a TCP close without close_notify is `UnexpectedEof`: still a close.
            Ok(0) => {
                return Err(ClientError::ClosedEarly {
                    received: reply.len(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ClientError::ClosedEarly {
                    received: reply.len(),
                });
            }
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(timed_out(reply.len())),
            Err(e) => return Err(io_error("reading the reply", e)),
        }
    }
}

/// The frame exchange's connection: plain TCP, or a TLS session over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The socket underneath, for its timeouts.
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl Drop for Stream {
    /// Over TLS, says goodbye with `close_notify`: one non-blocking write, so a server that
    /// stopped reading cannot hold the client past its deadline.
    fn drop(&mut self) {
        if let Stream::Tls(tls) = self {
            tls.conn.send_close_notify();
            if tls.sock.set_nonblocking(true).is_ok()
                && let Err(e) = tls.conn.write_tls(&mut tls.sock)
            {
                debug!("close_notify: {e}");
            }
        }
    }
}

/// Starts a TLS session on the connected `socket` and completes its handshake, blocking,
/// all before `deadline`. The socket's timeouts are left set.
fn handshake(
    socket: &mut TcpStream,
    tls: &TlsConfig,
    addr: &str,
    deadline: Instant,
) -> Result<ClientConnection, ClientError> {
    let mut session = tls.session().map_err(|source| ClientError::Handshake {
        addr: addr.to_string(),
        source,
    })?;
    let started = Instant::now();
    while session.is_handshaking() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ClientError::HandshakeTimeout {
                timeout: Duration::ZERO,
            })?;
        socket
            .set_read_timeout(Some(left))
            .and_then(|()| socket.set_write_timeout(Some(left)))
            .map_err(|source| io_error("setting the socket timeouts", source))?;
        match session.complete_io(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(if let Some(source) = rustls_error(&e) {
                    ClientError::Handshake {
                        addr: addr.to_string(),
                        source: source.clone(),
                    }
                } else if e.kind() == io::ErrorKind::UnexpectedEof {
                    ClientError::HandshakeClosed {
                        addr: addr.to_string(),
                    }
                } else if is_timeout(&e) {
                    ClientError::HandshakeTimeout {
                        timeout: Duration::ZERO,
                    }
                } else {
                    io_error("TLS handshake", e)
                });
            }
        }
    }
    debug!(
        "TLS handshake with {addr} done in {:?}: {:?}, {:?}",
        started.elapsed(),
        session.protocol_version(),
        session.negotiated_cipher_suite().map(|s| s.suite())
    );
    Ok(session)
}

impl ClientError {
    /// A handshake timeout as the caller's limit: [`handshake`] only knows its deadline.
    fn or_timeout(self, timeout: Duration) -> ClientError {
        match self {
            ClientError::HandshakeTimeout { .. } => ClientError::HandshakeTimeout { timeout },
            other => other,
        }
    }
}

/// `SO_RCVTIMEO`/`SO_SNDTIMEO` expiring surface as either kind.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects to the first address `addr` resolves to that accepts, all tries together
/// bounded by `deadline`.
fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, ClientError> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for candidate in resolved {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
            break;
        };
        match TcpStream::connect_timeout(&candidate, left) {
            Ok(stream) => {
                debug!("connected to {candidate}");
                return Ok(stream);
            }
            Err(e) => {
                debug!("connect {candidate}: {e}");
                last = e;
            }
        }
    }
    Err(ClientError::Connect {
        addr: addr.to_string(),
        source: last,
    })
}

/// A reply as printed: `Heartbeat`, `Message Server says: hi`, `LoginAck OK`.
#[must_use]
pub fn show_reply(command: Command, body: &[u8]) -> String {
    if body.is_empty() {
        command.name().to_string()
    } else {
        format!("{} {}", command.name(), show_body(body))
    }
}

/// A body as text when it is UTF-8, else `0x` and lowercase hex.
#[must_use]
pub fn show_body(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let mut hex = String::with_capacity(2 + 2 * body.len());
            hex.push_str("0x");
            for byte in body {
                // Writing to a String cannot fail.
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

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

    #[test]
    fn requests_encode_as_the_go_client_does() {
        let cases: &[(FrameRequest, &[u8])] = &[
            // The Go client's bare heartbeat.
            (FrameRequest::Heartbeat, b"\x47\x4F\x01\x00\x00\x00\x00\x00"),
            (
                FrameRequest::Message { text: "hi".into() },
                b"\x47\x4F\x01\x01\x00\x00\x00\x02hi",
            ),
            (
                FrameRequest::Message { text: "".into() },
                b"\x47\x4F\x01\x01\x00\x00\x00\x00",
            ),
            (
                FrameRequest::Message {
                    text: OsString::from_vec(vec![0xff, b'\n']),
                },
                b"\x47\x4F\x01\x01\x00\x00\x00\x02\xff\n",
            ),
            (
                FrameRequest::Login {
                    user: "ann".into(),
                    pass: "s:cret".into(),
                },
                b"\x47\x4F\x01\x02\x00\x00\x00\x0aann:s:cret",
            ),
            (
                FrameRequest::Login {
                    user: "".into(),
                    pass: "".into(),
                },
                b"\x47\x4F\x01\x02\x00\x00\x00\x01:",
            ),
        ];
        for (request, wire) in cases {
            assert_eq!(request.encode().unwrap(), *wire, "{request:?}");
        }
    }

    #[test]
    fn replies_show_as_name_and_body() {
        let cases: &[(Command, &[u8], &str)] = &[
            (Command::Heartbeat, b"", "Heartbeat"),
            (Command::Heartbeat, b"ping", "Heartbeat ping"),
            (
                Command::Message,
                b"Server says: hi",
                "Message Server says: hi",
            ),
            (Command::LoginAck, b"OK", "LoginAck OK"),
            (Command::Message, b"caf\xc3\xa9", "Message caf\u{e9}"),
            (
                Command::Message,
                b"Server says: \xff",
                "Message 0x53657276657220736179733a20ff",
            ),
            (Command::Heartbeat, b"\x00\x01\xab", "Heartbeat 0x0001ab"),
        ];
        for &(command, body, shown) in cases {
            assert_eq!(show_reply(command, body), shown, "{command:?} {body:02x?}");
        }
    }

    #[test]
    fn error_messages() {
        let cases: &[(ClientError, &str)] = &[
            (
                ClientError::ErrorFrame(b"frame too large: 5 bytes (max 4)".to_vec()),
                "Error frame too large: 5 bytes (max 4)",
            ),
            (ClientError::ErrorFrame(vec![0xfe]), "Error 0xfe"),
            (
                ClientError::Timeout {
                    timeout: Duration::from_millis(300),
                    received: 0,
                },
                "no reply frame within 300ms (0 bytes received)",
            ),
            (
                ClientError::ClosedEarly { received: 0 },
                "the server closed the connection without replying",
            ),
            (
                ClientError::ClosedEarly { received: 5 },
                "the server closed the connection after 5 bytes, before a whole frame",
            ),
            (
                ClientError::BadReply(ProtocolError::BadMagic(0x4552)),
                "bad reply: bad magic 0x4552",
            ),
            (ClientError::Reset, "connection reset by the server"),
            (
                ClientError::Handshake {
                    addr: "127.0.0.1:8443".into(),
                    source: rustls::Error::InvalidCertificate(
                        rustls::CertificateError::UnknownIssuer,
                    ),
                },
                "TLS handshake with 127.0.0.1:8443 failed: invalid peer certificate: \
                 UnknownIssuer",
            ),
            (
                ClientError::HandshakeTimeout {
                    timeout: Duration::from_millis(300),
                },
                "no TLS handshake within 300ms",
            ),
            (
                ClientError::HandshakeClosed { addr: "h:1".into() },
                "h:1 closed the connection during the TLS handshake (is it a TLS listener?)",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), *text, "{err:?}");
        }
    }
}
