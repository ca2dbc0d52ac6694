//! The reference models: docs/PROTOCOL.md's rules written out plainly, the reactor's way of
//! feeding a codec, and its way of driving a session, for checking the real code against.
//!
//! One file with two users, so that a rule cannot be stated twice and drift:
//!
//! ```text
//! tests/codec_properties.rs   mod model;                                     (proptest)
//! fuzz/src/lib.rs             #[path = "../../tests/model/mod.rs"] mod model; (cargo-fuzz)
//! ```
//!
//! It lives in the main crate's tests/ rather than in fuzz/ because the root build is the one
//! that always runs: `cargo test`, `cargo clippy --all-targets` and `cargo fmt` reach this file
//! through the property tests, while fuzz/ is a workspace of its own that needs nightly flags;
//! and the main crate's tests must not reach into a package that `cargo package` leaves out.
//! It needs only `std` and `tcp_reactor`, which both users have: no proptest, no libfuzzer.
//! A broken rule panics (`assert!`); proptest shrinks a panic like any failure.
//!
//! The rules (line framing, the command table, the frame validation table) take the crate's
//! constants (`MAX_NAME_LEN`, `MAGIC`, `VERSION`, `HEADER_LEN`) but none of its functions: a
//! rule that called `decode` or `parse` would agree with their bugs. The property tests use
//! every item here, so the root build's dead-code lint names one that falls out of use.

use tcp_reactor::buffer::Buffer;
use tcp_reactor::config::{DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_LINE_BYTES};
use tcp_reactor::handler::{
    Context, Limits, LoginRules, Outcome, Protocol, Room, Session, SessionId, finish_login, process,
};
use tcp_reactor::protocol::frame::{self, Command as FrameCommand, HEADER_LEN, MAGIC, VERSION};
use tcp_reactor::protocol::line::{self, Command};
use tcp_reactor::protocol::{Decoded, ProtocolError};
use tcp_reactor::stats::{Alone, Stats};

// ---------------------------------------------------------------------------------------------
// Feeding a codec as the reactor does.
// ---------------------------------------------------------------------------------------------

/// One decode step on the bytes held so far: a request and the bytes it used, `None` for
/// "read more", or the peer's error.
pub type Step<T> = Result<Option<(T, usize)>, ProtocolError>;

/// Converts a codec's answer into a [`Step`], with `own` turning the borrowed request into
/// what is compared (a copy, to outlive the buffer).
pub fn step<R, T>(decoded: Result<Decoded<R>, ProtocolError>, own: impl FnOnce(R) -> T) -> Step<T> {
    decoded.map(|decoded| match decoded {
        Decoded::Complete { request, consumed } => Some((own(request), consumed)),
        Decoded::Incomplete => None,
    })
}

/// What a connection's decoder made of a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoding<T> {
    pub requests: Vec<T>,
    /// The error that ended the connection, if any. Nothing is decoded after it.
    pub refused: Option<ProtocolError>,
    /// Bytes held when the stream ended (or, after a refusal, when the refusal came): the
    /// start of an incomplete request, or the request that was refused.
    pub held: usize,
}

impl<T: PartialEq + std::fmt::Debug> Decoding<T> {
    /// Asserts that two decodings of the same stream agree on everything a client can see:
    /// the requests, the verdict, and (with no refusal) the bytes still held. How much was
    /// held at a refusal depends on where the reads were cut, so it is not compared.
    pub fn assert_same(&self, other: &Self, what: &str) {
        assert_eq!(self.requests, other.requests, "requests differ: {what}");
        assert_eq!(self.refused, other.refused, "verdict differs: {what}");
        if self.refused.is_none() {
            assert_eq!(self.held, other.held, "bytes held differ: {what}");
        }
    }
}

/// Feeds `reads` as the reactor does: each read is appended to a carry buffer, then `step` is
/// called on the carry buffer until it asks for more, consuming each request's bytes. `step`
/// sees the whole carry buffer, so it can check its answer against it.
pub fn feed<T>(reads: &[&[u8]], mut step: impl FnMut(&[u8]) -> Step<T>) -> Decoding<T> {
    let mut carry = Vec::new();
    let mut requests = Vec::new();
    for read in reads {
        carry.extend_from_slice(read);
        loop {
            match step(&carry) {
                Ok(Some((request, consumed))) => {
                    assert!(
                        (1..=carry.len()).contains(&consumed),
                        "consumed {consumed} of {} held bytes",
                        carry.len()
                    );
                    requests.push(request);
                    carry.drain(..consumed);
                }
                Ok(None) => break,
                Err(error) => {
                    return Decoding {
                        requests,
                        refused: Some(error),
                        held: carry.len(),
                    };
                }
            }
        }
    }
    Decoding {
        requests,
        refused: None,
        held: carry.len(),
    }
}

/// Asserts that an error's client-facing text is fit to send: it goes out as `ERR <text>\n`
/// or as an Error frame's body, so it must be non-empty printable ASCII with no line break.
pub fn assert_clear_error(error: &ProtocolError) {
    let text = error.to_string();
    assert!(!text.is_empty(), "{error:?} has no text");
    assert!(
        text.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        "{error:?} text {text:?} is not one printable line"
    );
}

// ---------------------------------------------------------------------------------------------
// The line protocol: framing and the command table.
// ---------------------------------------------------------------------------------------------

/// The request a line carries: its bytes before the `\n`, less one `\r` right before it.
pub fn line_content(before_newline: &[u8]) -> &[u8] {
    before_newline.strip_suffix(b"\r").unwrap_or(before_newline)
}

/// docs/PROTOCOL.md's line framing, for `held` whose first `\n` (if any) is at `newline`: the
/// first line's content and the bytes through its `\n`, unless the content is over
/// `max_line`; with no `\n` yet, a refusal once `max_line + 1` bytes not ending in `\r`, or
/// `max_line + 2` bytes, are held. The one statement of the rule; the two views below only
/// find the `\n`.
fn line_rule(held: &[u8], newline: Option<usize>, max_line: usize) -> Step<&[u8]> {
    let too_long = Err(ProtocolError::LineTooLong { max: max_line });
    match newline {
        Some(newline) => {
            let content = line_content(&held[..newline]);
            if content.len() > max_line {
                too_long
            } else {
                Ok(Some((content, newline + 1)))
            }
        }
        None => {
            let over_by = held.len().saturating_sub(max_line);
            if over_by >= 2 || (over_by == 1 && held.last() != Some(&b'\r')) {
                too_long
            } else {
                Ok(None)
            }
        }
    }
}

/// What `line::decode(held, max_line)` must answer: [`line_rule`] at `held`'s first `\n`.
pub fn spec_decode_line(held: &[u8], max_line: usize) -> Step<&[u8]> {
    line_rule(held, held.iter().position(|&b| b == b'\n'), max_line)
}

/// The length of the shortest prefix of `held` that [`line_rule`] refuses, if any.
///
/// Only prefixes of up to `max_line + 2` bytes are tried: a line is refused by then or fits
/// (docs/PROTOCOL.md: the server never holds more of one line). A decoder that refused later
/// would find no prefix here to agree with it, so the bound is checked, not assumed. The `\n`
/// is found once, so this costs one pass, not one per prefix.
pub fn line_refused_at(held: &[u8], max_line: usize) -> Option<usize> {
    let tried = held.len().min(max_line.saturating_add(2));
    let newline = held[..tried].iter().position(|&b| b == b'\n');
    (1..=tried).find(|&k| line_rule(&held[..k], newline.filter(|&n| n < k), max_line).is_err())
}

/// Every verb of the line protocol.
pub const VERBS: [&[u8]; 6] = [b"PING", b"QUIT", b"STATS", b"HELLO", b"SAY", b"LOGIN"];

/// docs/PROTOCOL.md's command table, as plainly as possible: the verb is the bytes before the
/// first space (or the whole line), matched ASCII case-insensitively; the arguments are
/// everything after that one space.
pub fn spec_parse(line: &[u8]) -> Command<'_> {
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    let valid_name = |name: &[u8]| {
        (1..=line::MAX_NAME_LEN).contains(&name.len())
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if is(b"PING") {
        Command::Ping {
            suffix: &line[verb.len()..],
        }
    } else if is(b"QUIT") {
        match args {
            None => Command::Quit,
            Some(_) => Command::Invalid("usage: QUIT"),
        }
    } else if is(b"STATS") {
        match args {
            None => Command::Stats,
            Some(_) => Command::Invalid("usage: STATS"),
        }
    } else if is(b"HELLO") {
        match args {
            None | Some([]) => Command::Invalid("usage: HELLO <name>"),
            Some(name) if valid_name(name) => Command::Hello(name),
            Some(_) => Command::Invalid("invalid name: use 1-32 of A-Z a-z 0-9 _ -"),
        }
    } else if is(b"SAY") {
        match args {
            None | Some([]) => Command::Invalid("usage: SAY <text>"),
            Some(text) => Command::Say(text),
        }
    } else if is(b"LOGIN") {
        // The user is the first word of the arguments, the password the rest; both non-empty.
        let split = args.and_then(|args| {
            let space = args.iter().position(|&b| b == b' ')?;
            Some((&args[..space], &args[space + 1..]))
        });
        match split {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Command::Login { user, password }
            }
            _ => Command::Invalid("usage: LOGIN <user> <password>"),
        }
    } else {
        Command::Echo(line)
    }
}

// ---------------------------------------------------------------------------------------------
// The frame protocol: the validation table.
// ---------------------------------------------------------------------------------------------

/// docs/PROTOCOL.md's frame validation table: the length of the prefix of `held` whose last
/// byte is the first bad one, and the error it earns.
pub fn frame_refused_at(held: &[u8], max_frame: u32) -> Option<(usize, ProtocolError)> {
    if let [hi, lo, ..] = *held {
        let magic = u16::from_be_bytes([hi, lo]);
        if magic != MAGIC {
            return Some((2, ProtocolError::BadMagic(magic)));
        }
    }
    if let Some(&version) = held.get(2)
        && version != VERSION
    {
        return Some((3, ProtocolError::UnsupportedVersion(version)));
    }
    // The table's "command <= 4": Heartbeat 0 to Error 4.
    if let Some(&command) = held.get(3)
        && command > 4
    {
        return Some((4, ProtocolError::UnknownCommand(command)));
    }
    if let Some(len) = declared_len(held)
        && len > max_frame
    {
        let error = ProtocolError::FrameTooLarge {
            len,
            max: max_frame,
        };
        return Some((HEADER_LEN, error));
    }
    None
}

/// The body length a frame header announces, once all 8 header bytes are held.
pub fn declared_len(held: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = held.get(4..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

// ---------------------------------------------------------------------------------------------
// A session driven as the reactor drives it.
// ---------------------------------------------------------------------------------------------

/// Everything a session's client and its chat peers would see.
#[derive(Debug, PartialEq, Eq)]
pub struct Transcript {
    pub replies: Vec<u8>,
    /// Each `SAY`'s push line, in order.
    pub pushes: Vec<Vec<u8>>,
    /// `Quit`, `ProtocolError` or `LoginFailures` if the session ended.
    pub ended_by: Option<Outcome>,
    /// The counters moved by this session alone.
    pub stats: Stats,
}

/// Runs one session over `reads` the way the reactor's `execute` does: each read is appended
/// to a carry buffer, `process` is called until it needs more input, a `SAY`'s push is taken
/// before going on, replies are taken whenever they reach `out_limit`, a LOGIN is answered
/// (`user`/`pass` right, anything else wrong), and nothing runs after the session ends. A
/// peer named `peer` is in the chat room first, so `HELLO peer` is refused as taken.
///
/// Checks, on every `process` call:
/// - it consumes no more than it was given, and all of it on a protocol error;
/// - when it stops for more input, what is left is an incomplete request (never a whole one
///   left behind), held within one maximal request;
/// - a push is `MSG <this session's name> <text>\n`, after an `OK`;
/// - a LOGIN stops processing with its credentials handed over.
pub fn serve(protocol: Protocol, limits: Limits, reads: &[&[u8]], out_limit: usize) -> Transcript {
    let mut room = Room::default();
    let mut stats = Stats::default();
    // As with --users: every LOGIN is handed over to be verified.
    let logins = LoginRules {
        required: false,
        checked: true,
        max_unauthenticated_bytes: usize::MAX,
    };
    let mut out = Buffer::new();

    // The peer joins under the server's default limits: the ones given may be too small.
    let mut peer = Session::new(Protocol::Line, SessionId(0));
    let mut cx = Context {
        limits: Limits {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        },
        room: &mut room,
        stats: &mut stats,
        totals: &Alone,
        logins,
    };
    process(&mut peer, b"HELLO peer\n", &mut out, usize::MAX, &mut cx);
    assert_eq!(out.data(), b"WELCOME peer\n");
    out.clear();
    stats = Stats::default();

    let mut session = Session::new(protocol, SessionId(1));
    let mut carry = Vec::new();
    let mut replies = Vec::new();
    let mut pushes = Vec::new();
    let mut ended_by = None;
    'reads: for read in reads {
        carry.extend_from_slice(read);
        while !carry.is_empty() {
            let mut cx = Context {
                limits,
                room: &mut room,
                stats: &mut stats,
                totals: &Alone,
                logins,
            };
            let processed = process(&mut session, &carry, &mut out, out_limit, &mut cx);
            let consumed = processed.consumed;
            assert!(
                consumed <= carry.len(),
                "consumed {consumed} of {}",
                carry.len()
            );
            if processed.outcome == Outcome::ProtocolError {
                assert_eq!(consumed, carry.len(), "input kept after a protocol error");
            }
            carry.drain(..consumed);
            let over_limit = out.len() >= out_limit;
            replies.extend_from_slice(out.data());
            out.clear();
            match processed.outcome {
                Outcome::Continue if over_limit => {}
                Outcome::Continue => {
                    assert_waits_for_more(protocol, limits, &carry);
                    break;
                }
                Outcome::Broadcast(message) => {
                    let name = session.name().expect("only a named session says");
                    let prefix = format!("MSG {name} ");
                    assert!(message.starts_with(prefix.as_bytes()), "{message:?}");
                    assert!(message.len() > prefix.len() + 1, "empty SAY pushed");
                    assert!(message.ends_with(b"\n"), "{message:?}");
                    assert!(replies.ends_with(b"OK\n"), "SAY not answered OK");
                    pushes.push(message.into_vec());
                }
                Outcome::Login(credentials) => {
                    let ok = credentials.user == b"user" && credentials.password == b"pass";
                    let verdict = finish_login(&mut session, ok, &mut out, &mut stats);
                    replies.extend_from_slice(out.data());
                    out.clear();
                    if verdict == Outcome::LoginFailures {
                        ended_by = Some(verdict);
                        break 'reads;
                    }
                }
                Outcome::Claim(name) => {
                    panic!("a room that is not clustered claimed {name:?} in Redis")
                }
                Outcome::Census => panic!("a loop alone gathered other loops' counters"),
                ended @ (Outcome::Quit | Outcome::ProtocolError | Outcome::LoginFailures) => {
                    ended_by = Some(ended);
                    break 'reads;
                }
            }
        }
    }
    Transcript {
        replies,
        pushes,
        ended_by,
        stats,
    }
}

/// The bytes left after `process` stopped for more input: the start of one request, within
/// one maximal request of the limits.
fn assert_waits_for_more(protocol: Protocol, limits: Limits, held: &[u8]) {
    match protocol {
        Protocol::Line => {
            let decoded = line::decode(held, limits.max_line_bytes);
            assert_eq!(decoded, Ok(Decoded::Incomplete), "left behind {held:?}");
            assert!(held.len() <= limits.max_line_bytes.saturating_add(1));
        }
        Protocol::Frame => {
            let decoded = frame::decode(held, limits.max_frame_bytes);
            assert_eq!(decoded, Ok(Decoded::Incomplete), "left behind {held:02x?}");
            assert!(held.len() < HEADER_LEN + limits.max_frame_bytes as usize);
        }
    }
}

/// Checks a transcript against the protocol:
/// - line: one reply line per request, plus one `ERR` for a refused line;
/// - frame: the replies are whole frames of the server-to-client kinds, one per request plus
///   at most one Error frame for a refused header, and an Error frame only at the end (login
///   errors aside: they leave the session open);
/// - the protocol-error counter moves exactly when the session ends with one.
pub fn check_transcript(protocol: Protocol, transcript: &Transcript) {
    let Transcript {
        replies,
        pushes,
        ended_by,
        stats,
    } = transcript;
    let refused = *ended_by == Some(Outcome::ProtocolError);
    assert_eq!(stats.protocol_errors, u64::from(refused));
    let requests = usize::try_from(stats.requests).expect("a small count");
    match protocol {
        Protocol::Line => {
            assert!(
                replies.is_empty() || replies.ends_with(b"\n"),
                "{replies:?}"
            );
            let lines = replies.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(lines, requests + usize::from(refused), "{replies:?}");
            if refused {
                assert!(replies.ends_with(b"ERR line too long\n"), "{replies:?}");
            }
        }
        Protocol::Frame => {
            assert!(pushes.is_empty());
            let mut rest = &replies[..];
            let mut frames = 0;
            while !rest.is_empty() {
                let Ok(Decoded::Complete { request, consumed }) = frame::decode(rest, u32::MAX)
                else {
                    panic!("a reply is not a whole frame: {rest:02x?}");
                };
                rest = &rest[consumed..];
                frames += 1;
                match request.command {
                    FrameCommand::Heartbeat | FrameCommand::Message | FrameCommand::LoginAck => {}
                    // Login errors leave the session open; any other Error frame ends it.
                    FrameCommand::Error
                        if [
                            &b"invalid credentials"[..],
                            b"usage: Login body is user:password",
                        ]
                        .contains(&request.body) => {}
                    FrameCommand::Error => {
                        assert!(refused, "an Error frame, yet the session goes on");
                        assert!(rest.is_empty(), "replies after an Error frame");
                        assert!(!request.body.is_empty(), "an Error frame with no reason");
                    }
                    FrameCommand::Login => panic!("the server sent a Login frame"),
                }
            }
            assert!(
                frames == requests || (refused && frames == requests + 1),
                "{frames} reply frames for {requests} requests"
            );
        }
    }
}
