//! What tcp-load sends and what it accepts back: request bytes and reply verification, pure.
//!
//! Every workload is one request repeated forever, answered by one reply repeated forever
//! (or, for `raw`, by any one line). So the bytes a connection owes the server are a position
//! in the periodic stream `request request request ...`, and the bytes it expects back are a
//! position in `reply reply reply ...`. A connection therefore keeps no copy of its requests
//! and no buffer of partial replies: just two phases (how far into the current request it has
//! written, how far into the current reply it has verified). This is what makes tcp-load
//! allocation-free per request and lets it verify replies in place, in the read buffer.
//!
//! ```text
//! workload   protocol  request                                    reply accepted
//! echo       line      SIZE bytes "0123456789012..." + \n         the same line, byte for byte
//! ping       line      PING\n                                     PONG\n
//! raw        line      --request + \n                             any one line (up to \n)
//! heartbeat  frame     Heartbeat, SIZE-byte body                  the identical frame
//! message    frame     Message, SIZE-byte body B                  Message "Server says: " + B
//! login      frame     Login "user:pass"                          LoginAck "OK"
//! chat       line      HELLO once, then SAY <seq> <t_ns> PADDING  WELCOME, then OK; and MSG
//!                                                                 pushes (see `chat.rs`)
//! ```
//!
//! Bodies and echo lines are the digits `0123456789` repeated: printable, never a verb of the
//! line protocol, and a shifted or truncated reply cannot pass for a right one. `--size`
//! (default 64) applies to `echo`, `heartbeat`, `message` and `chat` (its padding); `ping`,
//! `raw` and `login` have fixed requests.
//!
//! `chat` is the one workload whose requests differ (each SAY carries its seq and send time)
//! and whose replies come interleaved with pushes: its sessions keep their own bytes and
//! parse lines (`chat.rs`); the [`Exchange`] here only names its protocol and its first SAY.
//!
//! # Invariants
//!
//! - Pure: bytes in, verdicts out; no socket, no clock, no allocation in [`Verifier::check`]
//!   or [`Periodic::window`]. Every split point is testable without IO.
//! - A [`Periodic`] buffer holds whole copies of its unit, enough for a whole pipelined batch
//!   (capped at [`BATCH_BYTES`] unless one unit is larger), so a batch of requests is one
//!   slice, written with one `write`, and a batch of replies is compared with one `memcmp`.
//! - A phase is always `< unit length`.
//!
//! # What it refuses to do
//!
//! It does not vary requests (every request of a workload is the same bytes; a server that
//! answered with the reply to an *earlier* request would pass), and it does not parse replies
//! beyond byte comparison: a frame is only decoded (with the server's own
//! [`frame::decode`]) to explain a mismatch.

use std::fmt::Write as _;

use clap::ValueEnum;

use crate::protocol::Decoded;
use crate::protocol::frame::{self, Command, HEADER_LEN, encode_header};

/// Body of the `login` workload's Login frame.
pub const LOGIN_BODY: &[u8] = b"user:pass";
/// The server's prefix on a Message reply (docs/PROTOCOL.md).
pub const MESSAGE_PREFIX: &[u8] = b"Server says: ";
/// The LoginAck body.
pub const LOGIN_ACK_BODY: &[u8] = b"OK";
/// A `raw` reply line longer than this is taken for garbage (a mismatch), so a peer that
/// never sends `\n` cannot keep a connection reading forever.
pub const MAX_RAW_REPLY: usize = 1 << 20;
/// A periodic buffer holds up to this many bytes of copies (at least one copy): 64 KiB is the
/// read chunk, so one window usually covers everything one `read` returned.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Largest accepted `--size`: the server's default `--max-frame` (10 MiB).
pub const MAX_SIZE: usize = 10 * 1024 * 1024;
/// Bytes of a mismatching reply shown in a log line.
const SHOW_BYTES: usize = 200;

/// The two protocols of tcp-reactor (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Newline-terminated text (port 8080).
    Line,
    /// 8-byte header + body (port 8888).
    Frame,
}

/// What each request is; see the module doc's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// line: a `--size`-byte line, echoed back.
    Echo,
    /// line: `PING`, answered `PONG`.
    Ping,
    /// line: `--request`, answered by any one line (drives other line servers, e.g. Redis).
    Raw,
    /// frame: a Heartbeat with a `--size`-byte body, echoed back.
    Heartbeat,
    /// frame: a Message with a `--size`-byte body, answered `Server says: ` + body.
    Message,
    /// frame: a Login `user:pass`, answered LoginAck `OK`.
    Login,
    /// line: a chat session: `HELLO`, then `SAY`s with a `--size`-byte padding, answered
    /// `OK`; every other session must get each one once, in order, as a `MSG` push.
    Chat,
}

impl Workload {
    /// The protocol this workload is spoken in.
    #[must_use]
    pub const fn protocol(self) -> Protocol {
        match self {
            Workload::Echo | Workload::Ping | Workload::Raw | Workload::Chat => Protocol::Line,
            Workload::Heartbeat | Workload::Message | Workload::Login => Protocol::Frame,
        }
    }

    /// Whether `--size` shapes the request.
    #[must_use]
    pub const fn uses_size(self) -> bool {
        matches!(
            self,
            Workload::Echo | Workload::Heartbeat | Workload::Message | Workload::Chat
        )
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Workload::Echo => "echo",
            Workload::Ping => "ping",
            Workload::Raw => "raw",
            Workload::Heartbeat => "heartbeat",
            Workload::Message => "message",
            Workload::Login => "login",
            Workload::Chat => "chat",
        }
    }
}

impl Protocol {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Line => "line",
            Protocol::Frame => "frame",
        }
    }
}

/// One request and what must come back for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub protocol: Protocol,
    pub request: Vec<u8>,
    pub reply: Reply,
}

/// What a reply must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Exactly these bytes.
    Exact(Vec<u8>),
    /// Any bytes up to and including a `\n`.
    AnyLine,
}

/// `size` bytes of `0123456789` repeated.
#[must_use]
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'0' + (i % 10) as u8).collect()
}

/// A frame: header from the server's own encoder, then the body.
fn frame_bytes(command: Command, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("body sizes are capped at MAX_SIZE");
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&encode_header(command, len));
    bytes.extend_from_slice(body);
    bytes
}

/// The request and expected reply of `workload`. `size` is the line or body length (ignored
/// by `ping`, `raw`, `login`), `raw_request` the `--request` text (only `raw`), without `\n`.
#[must_use]
pub fn exchange(workload: Workload, size: usize, raw_request: &[u8]) -> Exchange {
    let line = |content: &[u8]| {
        let mut bytes = content.to_vec();
        bytes.push(b'\n');
        bytes
    };
    let (request, reply) = match workload {
        Workload::Echo => {
            let request = line(&pattern(size));
            (request.clone(), Reply::Exact(request))
        }
        Workload::Ping => (line(b"PING"), Reply::Exact(line(b"PONG"))),
        Workload::Raw => (line(raw_request), Reply::AnyLine),
        Workload::Heartbeat => {
            let request = frame_bytes(Command::Heartbeat, &pattern(size));
            (request.clone(), Reply::Exact(request))
        }
        Workload::Message => {
            let body = pattern(size);
            let mut answer = MESSAGE_PREFIX.to_vec();
            answer.extend_from_slice(&body);
            (
                frame_bytes(Command::Message, &body),
                Reply::Exact(frame_bytes(Command::Message, &answer)),
            )
        }
        Workload::Login => (
            frame_bytes(Command::Login, LOGIN_BODY),
            Reply::Exact(frame_bytes(Command::LoginAck, LOGIN_ACK_BODY)),
        ),
        Workload::Chat => {
            let mut say = Vec::new();
            super::chat::write_say(&mut say, 0, 0, &pattern(size));
            (say, Reply::Exact(line(b"OK")))
        }
    };
    Exchange {
        protocol: workload.protocol(),
        request,
        reply,
    }
}

/// The endless stream `unit unit unit ...`, held as a few whole copies of `unit`.
///
/// A position in the stream is a *phase*: `0 <= phase < unit_len`. [`Periodic::window`] gives
/// the bytes from a phase on, as long a slice as the copies allow; since the buffer starts on
/// a unit boundary and holds whole units, a window of `copies * unit_len - phase` bytes is
/// always available, enough for `copies - 1` whole units after a partial one.
#[derive(Debug, Clone)]
pub struct Periodic {
    unit_len: usize,
    bytes: Box<[u8]>,
}

impl Periodic {
    /// `copies` (at least 1) copies of `unit` (not empty).
    #[must_use]
    pub fn new(unit: &[u8], copies: usize) -> Periodic {
        assert!(!unit.is_empty(), "a request or reply is never empty");
        Periodic {
            unit_len: unit.len(),
            bytes: unit.repeat(copies.max(1)).into_boxed_slice(),
        }
    }

    /// Enough copies for a batch of `pipeline` units, capped at [`BATCH_BYTES`] (but at least
    /// one copy): one window then covers a whole batch of small requests.
    #[must_use]
    pub fn for_batch(unit: &[u8], pipeline: usize) -> Periodic {
        let copies = pipeline.min(BATCH_BYTES / unit.len().max(1)).max(1);
        Periodic::new(unit, copies)
    }

    #[must_use]
    pub fn unit_len(&self) -> usize {
        self.unit_len
    }

    /// The next at most `len` bytes of the stream from `phase` on (fewer if the copies end
    /// first; the caller asks again from the new phase).
    #[inline]
    #[must_use]
    pub fn window(&self, phase: usize, len: usize) -> &[u8] {
        debug_assert!(phase < self.unit_len);
        let end = phase + len.min(self.bytes.len() - phase);
        &self.bytes[phase..end]
    }

    /// The phase after `n` more bytes.
    #[inline]
    #[must_use]
    pub fn advance(&self, phase: usize, n: usize) -> usize {
        (phase + n) % self.unit_len
    }
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchReason {
    /// A byte differs from the expected reply.
    WrongByte,
    /// A `raw` reply line ran past [`MAX_RAW_REPLY`] without a `\n`.
    LineTooLong,
}

/// Where verification failed, relative to the bytes given to [`Verifier::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Whole, correct replies in the bytes before the bad one.
    pub complete: u64,
    /// Offset in the data of the first wrong byte.
    pub at: usize,
    /// Offset of that byte within its reply.
    pub offset: usize,
    pub reason: MismatchReason,
}

/// Checks reply bytes as they arrive, against the periodic expected stream.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// Every reply is the same bytes.
    Exact(Periodic),
    /// Every reply is one line.
    AnyLine,
}

impl Verifier {
    /// A verifier for `reply`, with room to check `pipeline` replies with one comparison.
    #[must_use]
    pub fn new(reply: &Reply, pipeline: usize) -> Verifier {
        match reply {
            Reply::Exact(bytes) => Verifier::Exact(Periodic::for_batch(bytes, pipeline)),
            Reply::AnyLine => Verifier::AnyLine,
        }
    }

    /// Checks `data`, the next bytes received, continuing `phase` bytes into the current
    /// reply. Returns how many replies `data` completed and updates `phase`; a reply cut at
    /// the end of `data` is kept as the phase, and the next call continues it.
    ///
    /// # Errors
    ///
    /// A [`Mismatch`] at the first wrong byte; `phase` is then meaningless.
    #[inline]
    pub fn check(&self, phase: &mut usize, data: &[u8]) -> Result<u64, Mismatch> {
        match self {
            Verifier::Exact(expected) => {
                let unit = expected.unit_len();
                let mut complete = 0u64;
                let mut pos = 0;
                while pos < data.len() {
                    let want = expected.window(*phase, data.len() - pos);
                    let got = &data[pos..pos + want.len()];
                    if want != got {
                        let d = want
                            .iter()
                            .zip(got)
                            .position(|(a, b)| a != b)
                            .expect("unequal slices of equal length differ somewhere");
                        let total = *phase + d;
                        return Err(Mismatch {
                            complete: complete + (total / unit) as u64,
                            at: pos + d,
                            offset: total % unit,
                            reason: MismatchReason::WrongByte,
                        });
                    }
                    let total = *phase + want.len();
                    complete += (total / unit) as u64;
                    *phase = total % unit;
                    pos += want.len();
                }
                Ok(complete)
            }
            Verifier::AnyLine => {
                let lines = data.iter().filter(|&&b| b == b'\n').count();
                match data.iter().rposition(|&b| b == b'\n') {
                    Some(last) => *phase = data.len() - last - 1,
                    None => *phase += data.len(),
                }
                if *phase > MAX_RAW_REPLY {
                    return Err(Mismatch {
                        complete: lines as u64,
                        at: data.len(),
                        offset: *phase,
                        reason: MismatchReason::LineTooLong,
                    });
                }
                Ok(lines as u64)
            }
        }
    }

    /// Whether `phase` is in the middle of a reply.
    #[must_use]
    pub fn mid_reply(phase: usize) -> bool {
        phase > 0
    }

    /// A log line for `mismatch` found in `data`: the expected reply and the received one,
    /// escaped. The received reply's start may have come in earlier reads; it matched, so it
    /// is rebuilt from the expected bytes. A frame is decoded to name an Error frame's reason.
    #[must_use]
    pub fn describe(&self, protocol: Protocol, data: &[u8], mismatch: &Mismatch) -> String {
        let expected: &[u8] = match self {
            Verifier::Exact(expected) => expected.window(0, expected.unit_len()),
            Verifier::AnyLine => {
                return format!(
                    "reply line longer than {MAX_RAW_REPLY} bytes without a newline (ends with \
                     \"{}\")",
                    escape(&data[data.len().saturating_sub(40)..])
                );
            }
        };
        let mut received = expected[..mismatch.offset].to_vec();
        let rest = &data[mismatch.at..];
        received.extend_from_slice(&rest[..rest.len().min(SHOW_BYTES + expected.len())]);
        // A frame server answering the wrong protocol says why in an Error frame: decode it,
        // whichever protocol was expected.
        let error_frame = match frame::decode(&received, u32::MAX) {
            Ok(Decoded::Complete { request, .. }) if request.command == Command::Error => {
                Some(escape(request.body))
            }
            _ => None,
        };
        if protocol == Protocol::Line
            && error_frame.is_none()
            && let Some(end) = received[mismatch.offset..].iter().position(|&b| b == b'\n')
        {
            received.truncate(mismatch.offset + end + 1); // up to the end of the line
        }
        let mut text = format!(
            "at byte {} of a reply: expected \"{}\", received \"{}\"",
            mismatch.offset,
            escape(expected),
            escape(&received)
        );
        if let Some(reason) = error_frame {
            let _ = write!(text, " (an Error frame: \"{reason}\")");
        }
        text
    }
}

/// Bytes as printable ASCII with escapes (`\n`, `\x00`), cut at `SHOW_BYTES`.
#[must_use]
pub fn escape(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(SHOW_BYTES)];
    let mut text = shown.escape_ascii().to_string();
    if bytes.len() > SHOW_BYTES {
        let _ = write!(text, "... ({} bytes)", bytes.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::decode;

    const ALL: [Workload; 6] = [
        Workload::Echo,
        Workload::Ping,
        Workload::Raw,
        Workload::Heartbeat,
        Workload::Message,
        Workload::Login,
    ];

    fn exact(exchange: &Exchange) -> &[u8] {
        match &exchange.reply {
            Reply::Exact(bytes) => bytes,
            Reply::AnyLine => panic!("not an exact reply"),
        }
    }

    /// Decodes a whole frame, asserting it is exactly one.
    fn one_frame(bytes: &[u8]) -> (Command, Vec<u8>) {
        match decode(bytes, u32::MAX) {
            Ok(Decoded::Complete { request, consumed }) => {
                assert_eq!(consumed, bytes.len(), "exactly one frame");
                (request.command, request.body.to_vec())
            }
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn line_requests_and_replies() {
        let echo = exchange(Workload::Echo, 12, b"");
        assert_eq!(echo.request, b"012345678901\n");
        assert_eq!(exact(&echo), b"012345678901\n");
        assert_eq!(exchange(Workload::Echo, 0, b"").request, b"\n");
        let echo64 = exchange(Workload::Echo, 64, b"");
        assert_eq!(echo64.request.len(), 65);
        assert!(echo64.request[..64].iter().all(u8::is_ascii_digit));

        let ping = exchange(Workload::Ping, 64, b"");
        assert_eq!(ping.request, b"PING\n");
        assert_eq!(exact(&ping), b"PONG\n");

        let raw = exchange(Workload::Raw, 64, b"PING");
        assert_eq!(raw.request, b"PING\n");
        assert_eq!(raw.reply, Reply::AnyLine);
        for workload in [Workload::Echo, Workload::Ping, Workload::Raw] {
            assert_eq!(exchange(workload, 1, b"x").protocol, Protocol::Line);
        }
    }

    #[test]
    fn frame_requests_and_replies_decode_as_intended() {
        let heartbeat = exchange(Workload::Heartbeat, 16, b"");
        assert_eq!(
            one_frame(&heartbeat.request),
            (Command::Heartbeat, b"0123456789012345".to_vec())
        );
        assert_eq!(exact(&heartbeat), heartbeat.request.as_slice());
        assert_eq!(
            exchange(Workload::Heartbeat, 0, b"").request,
            [0x47, 0x4F, 0x01, 0x00, 0, 0, 0, 0]
        );

        let message = exchange(Workload::Message, 2, b"");
        assert_eq!(message.request, b"GO\x01\x01\x00\x00\x00\x0201");
        assert_eq!(
            one_frame(exact(&message)),
            (Command::Message, b"Server says: 01".to_vec())
        );

        let login = exchange(Workload::Login, 64, b"");
        assert_eq!(
            one_frame(&login.request),
            (Command::Login, b"user:pass".to_vec())
        );
        assert_eq!(exact(&login), b"GO\x01\x03\x00\x00\x00\x02OK");
        for workload in [Workload::Heartbeat, Workload::Message, Workload::Login] {
            assert_eq!(exchange(workload, 1, b"").protocol, Protocol::Frame);
        }
    }

    #[test]
    fn periodic_windows_cover_a_batch_from_any_phase() {
        let p = Periodic::new(b"abc", 4);
        assert_eq!(p.window(0, 100), b"abcabcabcabc");
        assert_eq!(p.window(0, 5), b"abcab");
        assert_eq!(p.window(2, 100), b"cabcabcabc");
        assert_eq!(p.window(2, 1), b"c");
        assert_eq!(p.window(1, 0), b"");
        assert_eq!(p.advance(2, 1), 0);
        assert_eq!(p.advance(2, 7), 0);
        assert_eq!(p.advance(0, 4), 1);
        // Batch sizing: whole pipeline for small units, capped by BATCH_BYTES, at least one.
        assert_eq!(
            Periodic::for_batch(b"PING\n", 16)
                .window(0, usize::MAX)
                .len(),
            80
        );
        let big = vec![b'x'; BATCH_BYTES];
        assert_eq!(Periodic::for_batch(&big, 16).bytes.len(), BATCH_BYTES);
        let huge = vec![b'x'; BATCH_BYTES * 3];
        assert_eq!(Periodic::for_batch(&huge, 16).bytes.len(), BATCH_BYTES * 3);
        assert_eq!(
            Periodic::for_batch(&[0; 1000], 1000).bytes.len(),
            BATCH_BYTES / 1000 * 1000
        );
    }

    /// Every workload's reply stream, three replies long, checked in two reads split at every
    /// byte and in one-byte reads, with pipelines of 1 and 16 (windows of one and of many
    /// replies).
    #[test]
    fn replies_split_across_reads_at_every_byte() {
        for workload in ALL {
            let ex = exchange(workload, 20, b"PING");
            let reply: &[u8] = match &ex.reply {
                Reply::Exact(bytes) => bytes,
                Reply::AnyLine => b"+PONG\r\n",
            };
            let stream = reply.repeat(3);
            for pipeline in [1, 16] {
                let verifier = Verifier::new(&ex.reply, pipeline);
                for split in 0..=stream.len() {
                    let mut phase = 0;
                    let a = verifier.check(&mut phase, &stream[..split]).unwrap();
                    assert_eq!(a, (split / reply.len()) as u64, "{workload:?} {split}");
                    assert_eq!(phase, split % reply.len(), "{workload:?} {split}");
                    let b = verifier.check(&mut phase, &stream[split..]).unwrap();
                    assert_eq!(a + b, 3, "{workload:?} split at {split}");
                    assert_eq!(phase, 0);
                }
                let mut phase = 0;
                let mut total = 0;
                for byte in &stream {
                    total += verifier
                        .check(&mut phase, std::slice::from_ref(byte))
                        .unwrap();
                }
                assert_eq!((total, phase), (3, 0), "{workload:?} byte by byte");
            }
        }
    }

    #[test]
    fn a_partial_reply_is_kept_for_the_next_read() {
        let verifier = Verifier::new(&Reply::Exact(b"PONG\n".to_vec()), 16);
        let mut phase = 0;
        assert_eq!(verifier.check(&mut phase, b"PONG\nPONG\nPO"), Ok(2));
        assert_eq!(phase, 2);
        assert!(Verifier::mid_reply(phase));
        assert_eq!(verifier.check(&mut phase, b""), Ok(0));
        assert_eq!(phase, 2);
        assert_eq!(verifier.check(&mut phase, b"NG\n"), Ok(1));
        assert_eq!(phase, 0);
        // The continuation must match where the reply left off, not from its start.
        let mut phase = 2;
        let err = verifier.check(&mut phase, b"PONG\n").unwrap_err();
        assert_eq!((err.complete, err.at, err.offset), (0, 0, 2));
    }

    #[test]
    fn a_wrong_byte_anywhere_is_found_where_it_is() {
        for pipeline in [1, 3, 16] {
            let reply = exchange(Workload::Message, 5, b"").reply;
            let verifier = Verifier::new(&reply, pipeline);
            let one = match &reply {
                Reply::Exact(b) => b.clone(),
                Reply::AnyLine => unreachable!(),
            };
            let stream = one.repeat(4);
            for bad in 0..stream.len() {
                let mut corrupt = stream.clone();
                corrupt[bad] ^= 0x20;
                let mut phase = 0;
                let err = verifier.check(&mut phase, &corrupt).unwrap_err();
                assert_eq!(
                    err,
                    Mismatch {
                        complete: (bad / one.len()) as u64,
                        at: bad,
                        offset: bad % one.len(),
                        reason: MismatchReason::WrongByte,
                    },
                    "pipeline {pipeline} bad byte {bad}"
                );
            }
        }
    }

    #[test]
    fn a_line_server_error_is_described_with_both_sides() {
        let verifier = Verifier::new(&Reply::Exact(b"PONG\n".to_vec()), 16);
        let data = b"PONG\nERR line too long\nmore";
        let mut phase = 0;
        let err = verifier.check(&mut phase, data).unwrap_err();
        assert_eq!((err.complete, err.at, err.offset), (1, 5, 0));
        assert_eq!(
            verifier.describe(Protocol::Line, data, &err),
            "at byte 0 of a reply: expected \"PONG\\n\", received \"ERR line too long\\n\""
        );
        // A reply that went wrong after a read boundary is shown from its start.
        let mut phase = 0;
        assert_eq!(verifier.check(&mut phase, b"PO"), Ok(0));
        let err = verifier.check(&mut phase, b"X\n").unwrap_err();
        assert_eq!(
            verifier.describe(Protocol::Line, b"X\n", &err),
            "at byte 2 of a reply: expected \"PONG\\n\", received \"POX\\n\""
        );
    }

    #[test]
    fn an_error_frame_is_named_in_the_description() {
        let login = exchange(Workload::Login, 0, b"");
        let verifier = Verifier::new(&login.reply, 1);
        let mut data = encode_header(Command::Error, 16).to_vec();
        data.extend_from_slice(b"bad magic 0x5049");
        let mut phase = 0;
        let err = verifier.check(&mut phase, &data).unwrap_err();
        assert_eq!((err.complete, err.at, err.offset), (0, 3, 3));
        let text = verifier.describe(Protocol::Frame, &data, &err);
        assert!(
            text.ends_with("(an Error frame: \"bad magic 0x5049\")"),
            "{text}"
        );
        assert!(text.starts_with("at byte 3 of a reply: expected \"GO\\x01\\x03"));
    }

    #[test]
    fn raw_replies_are_lines_of_anything() {
        let verifier = Verifier::AnyLine;
        let mut phase = 0;
        assert_eq!(verifier.check(&mut phase, b"+PONG\r\n+PO"), Ok(1));
        assert_eq!(phase, 3);
        assert_eq!(verifier.check(&mut phase, b"NG\r\n-ERR x\n"), Ok(2));
        assert_eq!(phase, 0);
        assert_eq!(verifier.check(&mut phase, b"\n\n\n"), Ok(3));
        // A line that never ends is refused once over the cap.
        let chunk = vec![b'a'; MAX_RAW_REPLY / 2];
        let mut phase = 0;
        assert_eq!(verifier.check(&mut phase, &chunk), Ok(0));
        assert_eq!(verifier.check(&mut phase, &chunk), Ok(0));
        let err = verifier.check(&mut phase, b"ab").unwrap_err();
        assert_eq!(err.reason, MismatchReason::LineTooLong);
        assert!(
            verifier
                .describe(Protocol::Line, b"ab", &err)
                .contains("longer than")
        );
    }

    #[test]
    fn escaping_shows_control_bytes() {
        assert_eq!(escape(b"PONG\r\n\x00\xff"), "PONG\\r\\n\\x00\\xff");
        let long = vec![b'a'; SHOW_BYTES + 1];
        assert!(escape(&long).ends_with(&format!("... ({} bytes)", SHOW_BYTES + 1)));
    }
}
