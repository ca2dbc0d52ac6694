//! Requests in, replies out: what each command of both protocols means.
//!
//! The handler sees bytes the reactor has buffered, decodes them with the pure codecs in
//! [`crate::protocol`], and appends replies to an output [`Buffer`]. It knows nothing of
//! sockets, tokens or readiness; the reactor knows nothing of verbs. What the handler asks of
//! the reactor is carried in its [`Outcome`], with the data it needs: "deliver this message to
//! the other sessions" (a chat push), "verify these credentials" (a LOGIN), "claim this name
//! in the cluster" (a HELLO with `--cluster-redis`), or "close this connection after
//! flushing" (QUIT, a protocol error, too many failed logins).
//!
//! Invariants:
//! - Processing stops as soon as the output passes the caller's limit, so a batch of cheap
//!   requests with large replies cannot grow a connection's memory past the high-water mark by
//!   more than one reply.
//! - Nothing is executed after a request that closes the connection: `QUIT\nPING\n` answers
//!   `BYE` only.
//! - PING, echo and Heartbeat allocate nothing: replies are copied into the warm output buffer.
//! - A login is never verified here: verifying a password hash takes tens of milliseconds.
//!   Processing stops at a LOGIN with [`Outcome::Login`] carrying the credentials; the
//!   reactor has them verified off the loop and calls [`finish_login`] with the verdict.
//!   Requests after the LOGIN wait, in order. Without a users file there are no accounts to
//!   check ([`LoginRules::checked`] is false): a LOGIN is answered `OK` (a Login frame
//!   LoginAck `OK`) at once, as the original protocol does.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::buffer::Buffer;
use crate::protocol::frame::{self, Frame};
use crate::protocol::line::{self, Command};
use crate::protocol::{Decoded, ProtocolError};
use crate::stats::{Stats, Totals};

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
    /// In a cluster: the name reserved in the [`Room`] while the other nodes are asked
    /// whether it is free ([`Outcome::Claim`]).
    pending_name: Option<Box<str>>,
    /// Set by a successful login: the user this session acts as.
    user: Option<Box<str>>,
    /// The user of the login being verified.
    pending_user: Option<Box<str>>,
    /// Failed logins on this connection; the `MAX_FAILED_LOGINS`th closes it.
    failed_logins: u8,
}

impl Session {
    pub fn new(protocol: Protocol, id: SessionId) -> Self {
        Session {
            protocol,
            id,
            name: None,
            pending_name: None,
            user: None,
            pending_user: None,
            failed_logins: 0,
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The user this session logged in as.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// Failed logins after which a connection is closed: guessing passwords costs a reconnect
/// (and a handshake over TLS) every few tries.
pub const MAX_FAILED_LOGINS: u8 = 3;

/// A user name and password to verify. `Debug` never shows the password, and dropping the
/// value overwrites it with zeros.
#[derive(PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        crate::auth::wipe(&mut self.password);
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The login rules, from the command line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoginRules {
    /// `--require-login`: before a login only PING, LOGIN and QUIT (Heartbeat and Login
    /// frames) are served.
    pub required: bool,
    /// `--users` was given: logins are verified against it. Without it there are no accounts
    /// and every LOGIN is answered `OK` at once.
    pub checked: bool,
    /// `--max-unauthenticated-request`: while `required` and not logged in, no line or frame
    /// body may be longer than this.
    pub max_unauthenticated_bytes: usize,
}

impl LoginRules {
    /// The codec limits for `session`: the configured ones, or, for a session that has not
    /// logged in under `--require-login`, no more than `max_unauthenticated_bytes`.
    fn limits_for(self, session: &Session, limits: Limits) -> Limits {
        if !self.required || session.user.is_some() {
            return limits;
        }
        let cap = self.max_unauthenticated_bytes;
        Limits {
            max_line_bytes: limits.max_line_bytes.min(cap),
            max_frame_bytes: limits
                .max_frame_bytes
                .min(u32::try_from(cap).unwrap_or(u32::MAX)),
        }
    }
}

/// Limits the codecs enforce, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_line_bytes: usize,
    pub max_frame_bytes: u32,
}

/// The chat room as one loop sees it: its own identified sessions, the ones it delivers to.
///
/// With several loops in the process the room is still one room: names are unique across
/// all of them, held in one [`Names`] that every loop's room shares. Only HELLO and a
/// session's end touch it (a lock each), never another request.
///
/// In a cluster (`--cluster-redis`) a HELLO also needs the other nodes' word: the name is
/// reserved here (no other session of this process can take it meanwhile) and the session
/// waits for the claim in Redis ([`Outcome::Claim`], then [`finish_hello`]). A reserved name
/// is not a member yet: it receives no pushes until its WELCOME.
#[derive(Debug, Default)]
pub struct Room {
    members: HashMap<Box<str>, SessionId>,
    /// Names reserved by sessions whose claim is being made in Redis.
    pending: HashMap<Box<str>, SessionId>,
    shared: Option<Arc<Names>>,
    clustered: bool,
}

/// The names held in every loop's room at once: what makes HELLO unique process-wide.
#[derive(Debug, Default)]
pub struct Names(Mutex<HashSet<Box<str>>>);

impl Names {
    /// Takes `name` if nobody holds it; `false`: it is taken.
    fn claim(&self, name: &str) -> bool {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if held.contains(name) {
            return false;
        }
        held.insert(name.into())
    }

    fn release(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}

impl Room {
    /// One loop's part of a room whose names are held in `names`, with the other loops'.
    pub fn shared(names: Arc<Names>) -> Room {
        Room {
            shared: Some(names),
            ..Room::default()
        }
    }

    /// This room is one node's part of a cluster's: a HELLO waits for its claim in Redis.
    pub fn clustered(mut self) -> Room {
        self.clustered = true;
        self
    }

    /// This loop's sessions that have identified themselves.
    pub fn members(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.members.values().copied()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Frees the session's name (or the name it reserved): called when its connection ends.
    /// Returns the name if it was a member's, the first time only: in a cluster, its claim
    /// in Redis is then given up.
    pub fn leave<'s>(&mut self, session: &'s Session) -> Option<&'s str> {
        if let Some(name) = session.pending_name.as_deref() {
            self.unreserve(name, session.id);
        }
        let name = session.name()?;
        if self.members.get(name) != Some(&session.id) {
            return None;
        }
        self.members.remove(name);
        if let Some(names) = &self.shared {
            names.release(name);
        }
        Some(name)
    }

    fn unreserve(&mut self, name: &str, id: SessionId) {
        if self.pending.get(name) == Some(&id) {
            self.pending.remove(name);
            if let Some(names) = &self.shared {
                names.release(name);
            }
        }
    }

    /// Takes `name` for `id`; `false`: someone has it, in this loop or another.
    fn join(&mut self, name: &str, id: SessionId) -> bool {
        if !self.take(name) {
            return false;
        }
        self.members.insert(name.into(), id);
        true
    }

    /// Reserves `name` for `id` until it joins or gives it up; `false`: someone has it.
    fn reserve(&mut self, name: &str, id: SessionId) -> bool {
        if !self.take(name) {
            return false;
        }
        self.pending.insert(name.into(), id);
        true
    }

    /// Takes `name` in every loop's names if nobody here or there has it, as a member or a
    /// reservation; `false`: someone has it.
    fn take(&mut self, name: &str) -> bool {
        if self.members.contains_key(name) || self.pending.contains_key(name) {
            return false;
        }
        match &self.shared {
            Some(names) => names.claim(name),
            None => true,
        }
    }
}

/// What the cluster said to a HELLO's claim of its name in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimVerdict {
    /// The name is this node's now: WELCOME.
    Claimed,
    /// Another node holds it: `ERR name taken`.
    Taken,
    /// Redis could not be asked: `ERR cluster unavailable, try again`.
    Unavailable,
}

/// Why processing stopped, and what the reactor must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input is used up, ends in an incomplete request, or the output is over the limit.
    Continue,
    /// A `SAY` was answered: deliver this `MSG <name> <text>\n` line to every other member,
    /// then call again.
    ///
    /// The payloads are boxed so that an `Outcome` stays two words: it is returned for
    /// every request, and a larger one costs moves on the hot path (callgrind: +25
    /// instructions per Heartbeat with the payloads inline).
    Broadcast(Box<[u8]>),
    /// Flush the output, then close: the client said QUIT.
    Quit,
    /// Flush the output (it ends with the error reply), then close: the client broke the
    /// protocol.
    ProtocolError,
    /// A LOGIN: verify these credentials, then call [`finish_login`]; execute nothing of
    /// this session until then.
    Login(Box<Credentials>),
    /// Flush the output, then close: too many failed logins.
    LoginFailures,
    /// In a cluster, a HELLO: claim this name in Redis, then call [`finish_hello`]; execute
    /// nothing of this session until then.
    Claim(Box<str>),
    /// A STATS with other loops about: once each has published its counters after this
    /// request, answer it with [`write_stats`]; execute nothing of this session until then.
    Census,
}

/// The result of one `process` call.
#[derive(Debug, PartialEq, Eq)]
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
    /// What STATS reports: these counters summed with the other loops' ([`Totals`]).
    pub totals: &'a dyn Totals,
    pub logins: LoginRules,
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
    // Once per call: a session logs in only through a LOGIN, which ends the call (a LOGIN
    // answered at once happens only without --users, where nothing is gated).
    let limits = cx.logins.limits_for(session, cx.limits);
    while consumed < input.len() && out.len() < out_limit {
        let rest = &input[consumed..];
        let step = match session.protocol {
            Protocol::Line => match line::decode(rest, limits.max_line_bytes) {
                Ok(Decoded::Complete { request, consumed }) => {
                    let raw = &rest[..consumed];
                    Ok((execute_line(session, request, raw, out, cx), consumed))
                }
                Ok(Decoded::Incomplete) => break,
                Err(error) => Err(error),
            },
            Protocol::Frame => match frame::decode(rest, limits.max_frame_bytes) {
                Ok(Decoded::Complete { request, consumed }) => {
                    let raw = &rest[..consumed];
                    Ok((execute_frame(session, request, raw, out, cx), consumed))
                }
                Ok(Decoded::Incomplete) => break,
                Err(error) => Err(error),
            },
        };
        let (outcome, used) = match step {
            Ok(step) => step,
            Err(error) => return refuse(session.protocol, &error, input.len(), out, cx),
        };
        consumed += used;
        cx.stats.requests += 1;
        if !matches!(outcome, Outcome::Continue) {
            if matches!(outcome, Outcome::ProtocolError) {
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

/// A request the codec refused: the error reply, and everything buffered is used up, since
/// nothing after a violation is trusted or executed.
#[cold]
fn refuse(
    protocol: Protocol,
    error: &ProtocolError,
    buffered: usize,
    out: &mut Buffer,
    cx: &mut Context<'_>,
) -> Processed {
    write_protocol_error(protocol, error, out);
    cx.stats.protocol_errors += 1;
    Processed {
        consumed: buffered,
        outcome: Outcome::ProtocolError,
    }
}

/// The most bytes the unfinished request at the front of `held` can grow to before it is
/// complete or refused: a frame whose length field has arrived needs exactly its header and
/// declared body (its header already passed the limit check, or it would have been refused);
/// a line at most `max_line` plus its `\r\n`; anything else at most one frame header. The
/// reactor grows a connection's input buffer toward this and no further. Asked only when a
/// request spans reads.
#[cold]
pub fn request_bound(protocol: Protocol, held: &[u8], limits: Limits) -> usize {
    match protocol {
        Protocol::Line => limits.max_line_bytes.saturating_add(2),
        Protocol::Frame => match held.get(frame::field::LENGTH) {
            Some(&[l0, l1, l2, l3]) => {
                frame::HEADER_LEN + u32::from_be_bytes([l0, l1, l2, l3]) as usize
            }
            _ => frame::HEADER_LEN,
        },
    }
}

/// Server-side reasons to close that the client is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    IdleTimeout,
    RequestTimeout,
    ServerFull,
    /// Closed to keep the server within `--client-memory`.
    OutOfMemory,
    /// Over `--max-connections-per-ip`.
    TooManyFromAddress,
}

impl Notice {
    fn text(self) -> &'static str {
        match self {
            Notice::IdleTimeout => "idle timeout",
            Notice::RequestTimeout => "request timeout",
            Notice::ServerFull => "server full",
            Notice::OutOfMemory => "server out of memory",
            Notice::TooManyFromAddress => "too many connections from your address",
        }
    }
}

/// What a session that has not logged in may do under `--require-login`.
const LOGIN_REQUIRED: &[u8] = b"login required";
const INVALID_CREDENTIALS: &[u8] = b"invalid credentials";

/// A session that has not logged in, under `--require-login`: only PING, LOGIN and QUIT
/// (Heartbeat and Login frames) are served. Asked only by the requests behind that gate, so
/// PING and Heartbeat pay nothing for it.
fn gated(session: &Session, cx: &Context<'_>) -> bool {
    cx.logins.required && session.user.is_none()
}

/// A LOGIN: handed to the reactor to verify (the session waits for [`finish_login`]), or,
/// without a users file, answered `OK` at once: there are no accounts to check.
///
/// Rare, and kept out of line like the other rare commands (`#[cold]`, `#[inline(never)]`),
/// so that `process` stays small enough for the hot replies' buffer appends to be inlined
/// into it: callgrind showed +16 instructions per echo when they were not.
#[cold]
fn begin_login(
    session: &mut Session,
    user: &[u8],
    password: &[u8],
    out: &mut Buffer,
    cx: &mut Context<'_>,
) -> Outcome {
    let user_name: Box<str> = String::from_utf8_lossy(user).into();
    if !cx.logins.checked {
        cx.stats.logins += 1;
        session.user = Some(user_name);
        write_login_ack(session.protocol, out);
        return Outcome::Continue;
    }
    session.pending_user = Some(user_name);
    Outcome::Login(Box::new(Credentials {
        user: user.to_vec(),
        password: password.to_vec(),
    }))
}

fn write_login_ack(protocol: Protocol, out: &mut Buffer) {
    match protocol {
        Protocol::Line => out.extend_from_slice(b"OK\n"),
        Protocol::Frame => write_frame(out, frame::Command::LoginAck, &[b"OK"]),
    }
}

/// Answers a LOGIN that cannot be verified now (too many logins in flight): `ERR server
/// busy, try again` or an Error frame. Not a failed login; the connection stays open.
pub fn abandon_login(session: &mut Session, out: &mut Buffer) {
    session.pending_user = None;
    write_error(session.protocol, b"server busy, try again", out);
}

/// Answers a LOGIN once its password has been verified (`ok`), in the session's protocol:
/// `OK` or `ERR invalid credentials`, a LoginAck `OK` or an Error frame. The same answer for
/// an unknown user as for a wrong password. A session already logged in that logs in again
/// becomes the new user on success and stays the old one on failure. Returns
/// [`Outcome::LoginFailures`] when this was the session's `MAX_FAILED_LOGINS`th failure.
pub fn finish_login(
    session: &mut Session,
    ok: bool,
    out: &mut Buffer,
    stats: &mut Stats,
) -> Outcome {
    let user = session.pending_user.take();
    if ok && user.is_some() {
        stats.logins += 1;
        session.user = user;
        write_login_ack(session.protocol, out);
        return Outcome::Continue;
    }
    stats.login_failures += 1;
    write_error(session.protocol, INVALID_CREDENTIALS, out);
    session.failed_logins = session.failed_logins.saturating_add(1);
    if session.failed_logins >= MAX_FAILED_LOGINS {
        Outcome::LoginFailures
    } else {
        Outcome::Continue
    }
}

/// Writes the protocol's way of saying `notice` before a close: `ERR <text>\n` or an Error
/// frame.
pub fn write_notice(protocol: Protocol, notice: Notice, out: &mut Buffer) {
    write_error(protocol, notice.text().as_bytes(), out);
}

/// Executes one line. `raw` is the line as received, line ending included: when it ends in a
/// bare `\n` it already is the echo reply, copied in one piece.
fn execute_line(
    session: &mut Session,
    line: &[u8],
    raw: &[u8],
    out: &mut Buffer,
    cx: &mut Context<'_>,
) -> Outcome {
    match line::parse(line) {
        // PING, QUIT and LOGIN come before the gate, so they pay nothing for it.
        Command::Ping { suffix: [] } => out.extend_from_slice(b"PONG\n"),
        Command::Ping { suffix } => write_line(out, &[b"PONG", suffix]),
        Command::Quit => {
            out.extend_from_slice(b"BYE\n");
            return Outcome::Quit;
        }
        Command::Login { user, password } => return begin_login(session, user, password, out, cx),
        Command::Invalid(line::USAGE_LOGIN) => {
            write_error(Protocol::Line, line::USAGE_LOGIN.as_bytes(), out)
        }
        _ if gated(session, cx) => write_error(Protocol::Line, LOGIN_REQUIRED, out),
        Command::Echo(_) if raw.len() == line.len() + 1 => out.extend_from_slice(raw),
        Command::Echo(bytes) => write_line(out, &[bytes]),
        Command::Stats if cx.totals.gathers() => return Outcome::Census,
        Command::Stats => write_stats(cx.totals, cx.stats, out),
        Command::Hello(name) => return hello(session, name, out, cx.room),
        Command::Say(text) => return say(session, text, out),
        Command::Invalid(reason) => write_line(out, &[b"ERR ", reason.as_bytes()]),
    }
    Outcome::Continue
}

/// The reply to STATS: `STATS key=value ...`, the process's figures from `totals` with
/// this loop's own counters live.
pub fn write_stats(totals: &dyn Totals, own: &Stats, out: &mut Buffer) {
    out.extend_from_slice(b"STATS ");
    // Writing into a Buffer cannot fail.
    let _ = totals.write_stats(own, out);
    out.extend_from_slice(b"\n");
}

/// `SAY <text>`: `OK`, and the `MSG <name> <text>` line for the reactor to push.
#[inline(never)]
fn say(session: &Session, text: &[u8], out: &mut Buffer) -> Outcome {
    let Some(name) = session.name() else {
        write_line(out, &[b"ERR identify first with HELLO <name>"]);
        return Outcome::Continue;
    };
    out.extend_from_slice(b"OK\n");
    let parts = [b"MSG ", name.as_bytes(), b" ", text, b"\n"];
    let mut message = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        message.extend_from_slice(part);
    }
    Outcome::Broadcast(message.into_boxed_slice())
}

#[inline(never)]
fn hello(session: &mut Session, name: &[u8], out: &mut Buffer, room: &mut Room) -> Outcome {
    if let Some(current) = session.name() {
        let _ = writeln!(out, "ERR already identified as {current}");
        return Outcome::Continue;
    }
    // The codec admits only [A-Za-z0-9_-], so this is always UTF-8; refuse rather than panic.
    let Ok(name) = std::str::from_utf8(name) else {
        write_line(out, &[b"ERR invalid name: use 1-32 of A-Z a-z 0-9 _ -"]);
        return Outcome::Continue;
    };
    if room.clustered {
        if !room.reserve(name, session.id) {
            write_line(out, &[NAME_TAKEN]);
            return Outcome::Continue;
        }
        session.pending_name = Some(name.into());
        return Outcome::Claim(name.into());
    }
    if !room.join(name, session.id) {
        write_line(out, &[NAME_TAKEN]);
        return Outcome::Continue;
    }
    write_line(out, &[b"WELCOME ", name.as_bytes()]);
    session.name = Some(name.into());
    Outcome::Continue
}

const NAME_TAKEN: &[u8] = b"ERR name taken";

/// Answers a HELLO whose name was claimed in the cluster ([`Outcome::Claim`]) with the
/// cluster's verdict: `WELCOME <name>` (the session joins the room), `ERR name taken` or
/// `ERR cluster unavailable, try again` (the reservation is given up). A session with no
/// claim pending is left alone: `false`.
pub fn finish_hello(
    session: &mut Session,
    verdict: ClaimVerdict,
    room: &mut Room,
    out: &mut Buffer,
) -> bool {
    let Some(name) = session.pending_name.take() else {
        return false;
    };
    match verdict {
        ClaimVerdict::Claimed if room.pending.get(&name) == Some(&session.id) => {
            room.pending.remove(&name);
            room.members.insert(name.clone(), session.id);
            write_line(out, &[b"WELCOME ", name.as_bytes()]);
            session.name = Some(name);
        }
        ClaimVerdict::Claimed | ClaimVerdict::Taken => {
            room.unreserve(&name, session.id);
            write_line(out, &[NAME_TAKEN]);
        }
        ClaimVerdict::Unavailable => {
            room.unreserve(&name, session.id);
            write_line(out, &[b"ERR cluster unavailable, try again"]);
        }
    }
    true
}

/// Executes one frame. `raw` is the frame as received, header included: a Heartbeat's reply
/// is exactly those bytes.
fn execute_frame(
    session: &mut Session,
    request: Frame<'_>,
    raw: &[u8],
    out: &mut Buffer,
    cx: &mut Context<'_>,
) -> Outcome {
    const SERVER_SAYS: &[u8] = b"Server says: ";
    match request.command {
        frame::Command::Heartbeat => out.extend_from_slice(raw),
        frame::Command::Message if gated(session, cx) => {
            write_error(Protocol::Frame, LOGIN_REQUIRED, out)
        }
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
        frame::Command::Login => match crate::auth::split_login_body(request.body) {
            Some((user, password)) => return begin_login(session, user, password, out, cx),
            // Unchecked, any body will do: the original protocol answers every Login `OK`.
            None if !cx.logins.checked => {
                return begin_login(session, request.body, b"", out, cx);
            }
            None => write_error(Protocol::Frame, b"usage: Login body is user:password", out),
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Alone;

    struct Fixture {
        room: Room,
        stats: Stats,
        logins: LoginRules,
    }

    impl Fixture {
        /// Logins checked against a users file, as with `--users`.
        fn new() -> Self {
            Fixture {
                room: Room::default(),
                stats: Stats::default(),
                logins: LoginRules {
                    required: false,
                    checked: true,
                    max_unauthenticated_bytes: usize::MAX,
                },
            }
        }

        fn run(&mut self, session: &mut Session, input: &[u8]) -> (Vec<u8>, Processed) {
            let mut out = Buffer::new();
            let processed = self.process(session, input, &mut out, usize::MAX, &Alone);
            (out.data().to_vec(), processed)
        }

        /// `process` with this fixture's context, `out_limit` and `totals`.
        fn process(
            &mut self,
            session: &mut Session,
            input: &[u8],
            out: &mut Buffer,
            out_limit: usize,
            totals: &dyn Totals,
        ) -> Processed {
            let mut cx = Context {
                limits: Limits {
                    max_line_bytes: 64,
                    max_frame_bytes: 64,
                },
                room: &mut self.room,
                stats: &mut self.stats,
                totals,
                logins: self.logins,
            };
            process(session, input, out, out_limit, &mut cx)
        }
    }

    fn line(id: u64) -> Session {
        Session::new(Protocol::Line, SessionId(id))
    }

    fn frame_bytes(command: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x47, 0x4F, 1, command];
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn line_commands_and_their_exact_replies() {
        let table: &[(&[u8], &[u8])] = &[
            (b"PING\n", b"PONG\n"),
            (b"ping x\r\n", b"PONG x\n"),
            (
                b"hello world?\n",
                b"ERR invalid name: use 1-32 of A-Z a-z 0-9 _ -\n",
            ),
            (b"just text\n", b"just text\n"),
            (b"\n", b"\n"),
            (b"\xff\x01\n", b"\xff\x01\n"),
            (b"SAY hi\n", b"ERR identify first with HELLO <name>\n"),
            (b"QUIT now\n", b"ERR usage: QUIT\n"),
        ];
        for &(input, expected) in table {
            let mut fixture = Fixture::new();
            let (out, processed) = fixture.run(&mut line(1), input);
            assert_eq!(out, expected, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(processed.consumed, input.len());
            assert_eq!(processed.outcome, Outcome::Continue);
        }
    }

    #[test]
    fn nothing_runs_after_quit() {
        let mut fixture = Fixture::new();
        let (out, processed) = fixture.run(&mut line(1), b"PING\nQUIT\nPING\n");
        assert_eq!(out, b"PONG\nBYE\n");
        assert_eq!(processed.outcome, Outcome::Quit);
        assert_eq!(fixture.stats.requests, 2);
    }

    #[test]
    fn an_incomplete_request_is_left_for_later() {
        let mut fixture = Fixture::new();
        let (out, processed) = fixture.run(&mut line(1), b"PING\nPI");
        assert_eq!(out, b"PONG\n");
        assert_eq!(processed.consumed, 5);
        assert_eq!(processed.outcome, Outcome::Continue);
    }

    #[test]
    fn a_long_line_is_a_protocol_error() {
        let mut fixture = Fixture::new();
        let (out, processed) = fixture.run(&mut line(1), &[b'a'; 70]);
        assert_eq!(out, b"ERR line too long\n");
        assert_eq!(processed.outcome, Outcome::ProtocolError);
        assert_eq!(fixture.stats.protocol_errors, 1);
    }

    #[test]
    fn output_limit_stops_execution_between_requests() {
        let mut fixture = Fixture::new();
        let mut out = Buffer::new();
        let input = b"PING\nPING\nPING\n";
        let processed = fixture.process(&mut line(1), input, &mut out, 6, &Alone);
        assert_eq!(out.data(), b"PONG\nPONG\n");
        assert_eq!(processed.consumed, 10);
    }

    /// STATS over several loops: the loops' counters are gathered before it is answered.
    struct Gathering;

    impl Totals for Gathering {
        fn write_stats(&self, own: &Stats, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            write!(out, "requests={} workers=2", own.requests)
        }

        fn gathers(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_stats_that_gathers_stops_execution_until_it_is_answered() {
        let mut fixture = Fixture::new();
        let mut out = Buffer::new();
        let input = b"PING\nSTATS\nPING\n";
        let processed = fixture.process(&mut line(1), input, &mut out, usize::MAX, &Gathering);
        assert_eq!(out.data(), b"PONG\n");
        assert_eq!(
            (processed.consumed, processed.outcome),
            (11, Outcome::Census)
        );
        write_stats(&Gathering, &fixture.stats, &mut out);
        assert_eq!(out.data(), b"PONG\nSTATS requests=2 workers=2\n");
    }

    #[test]
    fn names_are_unique_while_held_and_free_after_leaving() {
        let mut fixture = Fixture::new();
        let (mut alice, mut other) = (line(1), line(2));
        assert_eq!(
            fixture.run(&mut alice, b"HELLO alice\n").0,
            b"WELCOME alice\n"
        );
        assert_eq!(
            fixture.run(&mut alice, b"HELLO bob\n").0,
            b"ERR already identified as alice\n"
        );
        assert_eq!(
            fixture.run(&mut other, b"HELLO alice\n").0,
            b"ERR name taken\n"
        );
        fixture.room.leave(&alice);
        assert_eq!(
            fixture.run(&mut other, b"HELLO alice\n").0,
            b"WELCOME alice\n"
        );
    }

    #[test]
    fn names_are_unique_across_rooms_that_share_them() {
        let names = Arc::new(Names::default());
        let (mut one, mut two) = (Fixture::new(), Fixture::new());
        one.room = Room::shared(Arc::clone(&names));
        two.room = Room::shared(names);
        let (mut alice, mut other) = (line(1), line(1));
        assert_eq!(one.run(&mut alice, b"HELLO alice\n").0, b"WELCOME alice\n");
        assert_eq!(two.run(&mut other, b"HELLO alice\n").0, b"ERR name taken\n");
        // Leaving a room one never joined frees nothing.
        two.room.leave(&other);
        assert_eq!(two.run(&mut other, b"HELLO alice\n").0, b"ERR name taken\n");
        one.room.leave(&alice);
        assert_eq!(two.run(&mut other, b"HELLO alice\n").0, b"WELCOME alice\n");
        assert_eq!((one.room.len(), two.room.len()), (0, 1));
    }

    #[test]
    fn a_clustered_hello_waits_for_its_claim_and_holds_the_name_meanwhile() {
        let mut fixture = Fixture::new();
        fixture.room = Room::default().clustered();
        let (mut ann, mut other) = (line(1), line(2));
        let (out, processed) = fixture.run(&mut ann, b"HELLO ann\nPING\n");
        assert_eq!(out, b"");
        assert_eq!(processed.outcome, Outcome::Claim("ann".into()));
        assert_eq!(processed.consumed, 10, "the PING waits behind the claim");
        assert_eq!(fixture.room.len(), 0, "no pushes before its WELCOME");
        let (out, _) = fixture.run(&mut other, b"HELLO ann\n");
        assert_eq!(out, b"ERR name taken\n", "reserved locally meanwhile");

        let mut out = Buffer::new();
        assert!(finish_hello(
            &mut ann,
            ClaimVerdict::Claimed,
            &mut fixture.room,
            &mut out
        ));
        assert_eq!(out.data(), b"WELCOME ann\n");
        assert_eq!((ann.name(), fixture.room.len()), (Some("ann"), 1));
        assert!(!finish_hello(
            &mut ann,
            ClaimVerdict::Claimed,
            &mut fixture.room,
            &mut out
        ));

        for (verdict, reply) in [
            (ClaimVerdict::Taken, &b"ERR name taken\n"[..]),
            (
                ClaimVerdict::Unavailable,
                b"ERR cluster unavailable, try again\n",
            ),
        ] {
            let (_, processed) = fixture.run(&mut other, b"HELLO bob\n");
            assert_eq!(processed.outcome, Outcome::Claim("bob".into()));
            let mut out = Buffer::new();
            assert!(finish_hello(
                &mut other,
                verdict,
                &mut fixture.room,
                &mut out
            ));
            assert_eq!(out.data(), reply);
            assert_eq!(other.name(), None);
        }
        // A session that ends while its claim is made gives the reservation up.
        let (_, processed) = fixture.run(&mut other, b"HELLO bob\n");
        assert_eq!(processed.outcome, Outcome::Claim("bob".into()));
        assert_eq!(fixture.room.leave(&other), None);
        let (_, processed) = fixture.run(&mut line(3), b"HELLO bob\n");
        assert_eq!(processed.outcome, Outcome::Claim("bob".into()));
        assert_eq!(fixture.room.leave(&ann), Some("ann"));
    }

    #[test]
    fn say_answers_ok_and_prepares_the_push() {
        let mut fixture = Fixture::new();
        let mut alice = line(1);
        fixture.run(&mut alice, b"HELLO alice\n");
        let (out, processed) = fixture.run(&mut alice, b"SAY hi  there\nPING\n");
        assert_eq!(out, b"OK\n");
        assert_eq!(
            processed.outcome,
            Outcome::Broadcast(b"MSG alice hi  there\n".to_vec().into_boxed_slice())
        );
        assert_eq!(
            processed.consumed, 14,
            "stops after SAY so the push goes first"
        );
    }

    #[test]
    fn frame_commands_and_their_exact_replies() {
        let table: &[(Vec<u8>, Vec<u8>)] = &[
            (frame_bytes(0, b""), frame_bytes(0, b"")),
            (
                frame_bytes(0, b"0123456789abcdef"),
                frame_bytes(0, b"0123456789abcdef"),
            ),
            (
                frame_bytes(1, b"Hello TCP World!"),
                frame_bytes(1, b"Server says: Hello TCP World!"),
            ),
        ];
        for (input, expected) in table {
            let mut fixture = Fixture::new();
            let mut session = Session::new(Protocol::Frame, SessionId(1));
            let (out, processed) = fixture.run(&mut session, input);
            assert_eq!(&out, expected);
            assert_eq!(processed.outcome, Outcome::Continue);
        }
    }

    #[test]
    fn a_login_stops_processing_and_hands_the_credentials_over() {
        let mut fixture = Fixture::new();
        let mut session = Session::new(Protocol::Frame, SessionId(1));
        let mut input = frame_bytes(2, b"ann:pw:x");
        input.extend(frame_bytes(0, b""));
        let (out, processed) = fixture.run(&mut session, &input);
        assert_eq!(out, b"");
        assert_eq!(processed.consumed, 16, "stops right after the Login frame");
        let Outcome::Login(credentials) = processed.outcome else {
            panic!("no credentials handed over: {:?}", processed.outcome);
        };
        assert_eq!(
            (&credentials.user[..], &credentials.password[..]),
            (&b"ann"[..], &b"pw:x"[..])
        );
        assert_eq!(
            format!("{credentials:?}"),
            r#"Credentials { user: "ann", password: "<hidden>" }"#
        );

        let mut out = Buffer::new();
        let outcome = finish_login(&mut session, true, &mut out, &mut fixture.stats);
        assert_eq!(
            (outcome, out.data()),
            (Outcome::Continue, &frame_bytes(3, b"OK")[..])
        );
        assert_eq!(session.user(), Some("ann"));
        assert_eq!(fixture.stats.logins, 1);
    }

    #[test]
    fn the_third_failed_login_ends_the_session() {
        let mut fixture = Fixture::new();
        let mut session = line(1);
        for attempt in 1..=MAX_FAILED_LOGINS {
            let (_, processed) = fixture.run(&mut session, b"LOGIN ann nope\n");
            assert!(matches!(processed.outcome, Outcome::Login(_)));
            let mut out = Buffer::new();
            let outcome = finish_login(&mut session, false, &mut out, &mut fixture.stats);
            assert_eq!(out.data(), b"ERR invalid credentials\n");
            let expected = if attempt == MAX_FAILED_LOGINS {
                Outcome::LoginFailures
            } else {
                Outcome::Continue
            };
            assert_eq!(outcome, expected, "attempt {attempt}");
        }
        assert_eq!(session.user(), None);
        assert_eq!(fixture.stats.login_failures, 3);
    }

    #[test]
    fn without_a_users_file_every_login_is_answered_ok_at_once() {
        let mut fixture = Fixture::new();
        fixture.logins.checked = false;
        let mut session = line(1);
        let (out, processed) =
            fixture.run(&mut session, b"LOGIN ann anything at all\nLOGIN\nPING\n");
        assert_eq!(
            out,
            b"OK\nERR usage: LOGIN <user> <password>\nPONG\n",
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(processed.outcome, Outcome::Continue);
        assert_eq!(session.user(), Some("ann"));

        let mut session = Session::new(Protocol::Frame, SessionId(2));
        let mut input = frame_bytes(2, b"no colon at all");
        input.extend(frame_bytes(2, b""));
        input.extend(frame_bytes(2, b"bob:pw"));
        let (out, processed) = fixture.run(&mut session, &input);
        let ok = frame_bytes(3, b"OK");
        assert_eq!(out, [&ok[..], &ok[..], &ok[..]].concat());
        assert_eq!(processed.outcome, Outcome::Continue);
        assert_eq!(fixture.stats.logins, 4);
        assert_eq!(fixture.stats.login_failures, 0);
    }

    #[test]
    fn frame_errors_end_with_an_error_frame() {
        let table: &[(Vec<u8>, &[u8])] = &[
            (b"GET / HTTP/1.1\r\n".to_vec(), b"bad magic 0x4745"),
            (frame_bytes(3, b"OK"), b"unexpected command 3 (LoginAck)"),
            (frame_bytes(4, b"x"), b"unexpected command 4 (Error)"),
            (frame_bytes(9, b""), b"unknown command 9"),
            (
                frame_bytes(0, &[0; 65]),
                b"frame too large: 65 bytes (max 64)",
            ),
        ];
        for (input, reason) in table {
            let mut fixture = Fixture::new();
            let mut session = Session::new(Protocol::Frame, SessionId(1));
            let (out, processed) = fixture.run(&mut session, input);
            assert_eq!(out, frame_bytes(4, reason));
            assert_eq!(processed.outcome, Outcome::ProtocolError);
            assert_eq!(processed.consumed, input.len());
        }
    }

    #[test]
    fn notices_in_both_protocols() {
        let mut out = Buffer::new();
        write_notice(Protocol::Line, Notice::IdleTimeout, &mut out);
        write_notice(Protocol::Frame, Notice::ServerFull, &mut out);
        let mut expected = b"ERR idle timeout\n".to_vec();
        expected.extend_from_slice(&frame_bytes(4, b"server full"));
        assert_eq!(out.data(), &expected[..]);
    }
}
