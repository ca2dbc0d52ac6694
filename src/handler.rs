//! Requests in, replies out: what each command of both protocols means.
//!
//! The handler sees bytes the reactor has buffered, decodes them with the pure codecs in
//! [`crate::protocol`], and appends replies to an output [`Buffer`]. It knows nothing of
//! sockets, tokens or readiness; the reactor knows nothing of verbs. The only thing the handler
//! asks of the reactor is carried in its [`Outcome`]: "deliver `room.message` to the other
//! sessions" (a chat push) or "close this connection after flushing" (QUIT, a protocol error).
//!
//! Invariants:
//! - Processing stops as soon as the output passes the caller's limit, so a batch of cheap
//!   requests with large replies cannot grow a connection's memory past the high-water mark by
//!   more than one reply.
//! - Nothing is executed after a request that closes the connection: `QUIT\nPING\n` answers
//!   `BYE` only.
//! - PING, echo and Heartbeat allocate nothing: replies are copied into the warm output buffer.

use std::collections::HashMap;
use std::io::Write;

use crate::buffer::Buffer;
use crate::protocol::frame::{self, Frame};
use crate::protocol::line::{self, Command};
use crate::protocol::{Decoded, ProtocolError};
use crate::stats::Stats;

/// Which protocol a connection speaks; decided by the listener that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Line,
    Frame,
}

/// An opaque name for a session, chosen by the reactor; the handler only compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Session {
    pub protocol: Protocol,
    pub id: SessionId,
    /// Set by `HELLO <name>`; the name is held in the [`Room`] while the session lives.
    name: Option<Box<str>>,
}

impl Session {
    pub fn new(protocol: Protocol, id: SessionId) -> Self {
        Session {
            protocol,
            id,
            name: None,
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// Limits the codecs enforce, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_line_bytes: usize,
    pub max_frame_bytes: u32,
}

/// The chat room: who is identified, and the message being pushed.
#[derive(Debug, Default)]
pub struct Room {
    members: HashMap<Box<str>, SessionId>,
    /// The `MSG <name> <text>\n` line of the last `SAY`, for the reactor to deliver to every
    /// member but the sender. Reused between messages.
    pub message: Vec<u8>,
}

impl Room {
    /// Sessions that have identified themselves.
    pub fn members(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.members.values().copied()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Frees the session's name: called when its connection ends.
    pub fn leave(&mut self, session: &Session) {
        if let Some(name) = session.name()
            && self.members.get(name) == Some(&session.id)
        {
            self.members.remove(name);
        }
    }
}

/// Why processing stopped, and what the reactor must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input is used up, ends in an incomplete request, or the output is over the limit.
    Continue,
    /// A `SAY` was answered: deliver `room.message` to every other member, then call again.
    Broadcast,
    /// Flush the output, then close: the client said QUIT.
    Quit,
    /// Flush the output (it ends with the error reply), then close: the client broke the
    /// protocol.
    ProtocolError,
}

/// The result of one `process` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Bytes of the input that were decoded and executed.
    pub consumed: usize,
    pub outcome: Outcome,
}

/// What the handler may touch besides the connection's own session and output.
pub struct Context<'a> {
    pub limits: Limits,
    pub room: &'a mut Room,
    pub stats: &'a mut Stats,
}

/// Decodes and executes complete requests from the front of `input`, appending replies to
/// `out`, until the input runs out or ends in an incomplete request, `out` holds at least
/// `out_limit` bytes, or a request needs the reactor (see [`Outcome`]).
pub fn process(
    session: &mut Session,
    input: &[u8],
    out: &mut Buffer,
    out_limit: usize,
    cx: &mut Context<'_>,
) -> Processed {
    let mut consumed = 0;
    while consumed < input.len() && out.len() < out_limit {
        let rest = &input[consumed..];
        let decoded = match session.protocol {
            Protocol::Line => line::decode(rest, cx.limits.max_line_bytes).map(|d| match d {
                Decoded::Complete { request, consumed } => Some((Request::Line(request), consumed)),
                Decoded::Incomplete => None,
            }),
            Protocol::Frame => frame::decode(rest, cx.limits.max_frame_bytes).map(|d| match d {
                Decoded::Complete { request, consumed } => {
                    Some((Request::Frame(request), consumed))
                }
                Decoded::Incomplete => None,
            }),
        };
        let (request, used) = match decoded {
            Ok(Some(complete)) => complete,
            Ok(None) => break,
            Err(error) => {
                write_protocol_error(session.protocol, &error, out);
                cx.stats.protocol_errors += 1;
                return Processed {
                    consumed: input.len(),
                    outcome: Outcome::ProtocolError,
                };
            }
        };
        consumed += used;
        cx.stats.requests += 1;
        let outcome = match request {
            Request::Line(bytes) => execute_line(session, line::parse(bytes), out, cx),
            Request::Frame(frame) => execute_frame(frame, out, cx),
        };
        if outcome != Outcome::Continue {
            if outcome == Outcome::ProtocolError {
                // Nothing after a violation is trusted or executed.
                consumed = input.len();
            }
            return Processed { consumed, outcome };
        }
    }
    Processed {
        consumed,
        outcome: Outcome::Continue,
    }
}

/// Server-side reasons to close that the client is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    IdleTimeout,
    ServerFull,
}

impl Notice {
    fn text(self) -> &'static str {
        match self {
            Notice::IdleTimeout => "idle timeout",
            Notice::ServerFull => "server full",
        }
    }
}

/// Writes the protocol's way of saying `notice` before a close: `ERR <text>\n` or an Error
/// frame.
pub fn write_notice(protocol: Protocol, notice: Notice, out: &mut Buffer) {
    write_error(protocol, notice.text().as_bytes(), out);
}

enum Request<'a> {
    Line(&'a [u8]),
    Frame(Frame<'a>),
}

fn execute_line(
    session: &mut Session,
    command: Command<'_>,
    out: &mut Buffer,
    cx: &mut Context<'_>,
) -> Outcome {
    match command {
        Command::Ping { suffix } => write_line(out, &[b"PONG", suffix]),
        Command::Echo(bytes) => write_line(out, &[bytes]),
        Command::Quit => {
            out.extend_from_slice(b"BYE\n");
            return Outcome::Quit;
        }
        Command::Stats => {
            out.extend_from_slice(b"STATS ");
            // Writing into a Buffer cannot fail.
            let _ = cx.stats.write_pairs(out);
            out.extend_from_slice(b"\n");
        }
        Command::Hello(name) => hello(session, name, out, cx.room),
        Command::Say(text) => match session.name() {
            None => write_line(out, &[b"ERR identify first with HELLO <name>"]),
            Some(name) => {
                out.extend_from_slice(b"OK\n");
                let message = &mut cx.room.message;
                message.clear();
                for part in [b"MSG ", name.as_bytes(), b" ", text, b"\n"] {
                    message.extend_from_slice(part);
                }
                return Outcome::Broadcast;
            }
        },
        Command::Invalid(reason) => write_line(out, &[b"ERR ", reason.as_bytes()]),
    }
    Outcome::Continue
}

fn hello(session: &mut Session, name: &[u8], out: &mut Buffer, room: &mut Room) {
    if let Some(current) = session.name() {
        let _ = writeln!(out, "ERR already identified as {current}");
        return;
    }
    // The codec admits only [A-Za-z0-9_-], so this is always UTF-8; refuse rather than panic.
    let Ok(name) = std::str::from_utf8(name) else {
        write_line(out, &[b"ERR invalid name: use 1-32 of A-Z a-z 0-9 _ -"]);
        return;
    };
    if room.members.contains_key(name) {
        write_line(out, &[b"ERR name taken"]);
        return;
    }
    let name: Box<str> = name.into();
    room.members.insert(name.clone(), session.id);
    write_line(out, &[b"WELCOME ", name.as_bytes()]);
    session.name = Some(name);
}

fn execute_frame(request: Frame<'_>, out: &mut Buffer, cx: &mut Context<'_>) -> Outcome {
    const SERVER_SAYS: &[u8] = b"Server says: ";
    match request.command {
        frame::Command::Heartbeat => write_frame(out, frame::Command::Heartbeat, &[request.body]),
        frame::Command::Message => {
            let body_len = SERVER_SAYS.len() + request.body.len();
            if u32::try_from(body_len).is_err() {
                // Only reachable with --max-frame near 4 GiB: the reply would not fit a header.
                cx.stats.protocol_errors += 1;
                write_error(Protocol::Frame, b"reply too large", out);
                return Outcome::ProtocolError;
            }
            write_frame(out, frame::Command::Message, &[SERVER_SAYS, request.body]);
        }
        frame::Command::Login => write_frame(out, frame::Command::LoginAck, &[b"OK"]),
        command @ (frame::Command::LoginAck | frame::Command::Error) => {
            cx.stats.protocol_errors += 1;
            let reason = format!("unexpected command {} ({})", command as u8, command.name());
            write_error(Protocol::Frame, reason.as_bytes(), out);
            return Outcome::ProtocolError;
        }
    }
    Outcome::Continue
}

fn write_line(out: &mut Buffer, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\n");
}

/// Writes one frame whose body is `parts` concatenated. The caller guarantees the body fits a
/// u32 (bodies come from frames that passed the length check).
fn write_frame(out: &mut Buffer, command: frame::Command, parts: &[&[u8]]) {
    let body_len: usize = parts.iter().map(|part| part.len()).sum();
    let body_len = u32::try_from(body_len).unwrap_or(u32::MAX);
    out.extend_from_slice(&frame::encode_header(command, body_len));
    for part in parts {
        out.extend_from_slice(part);
    }
}

fn write_error(protocol: Protocol, reason: &[u8], out: &mut Buffer) {
    match protocol {
        Protocol::Line => write_line(out, &[b"ERR ", reason]),
        Protocol::Frame => write_frame(out, frame::Command::Error, &[reason]),
    }
}

fn write_protocol_error(protocol: Protocol, error: &ProtocolError, out: &mut Buffer) {
    let reason = error.to_string();
    write_error(protocol, reason.as_bytes(), out);
}
