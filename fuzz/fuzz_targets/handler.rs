//! `handler::process`, the whole path from buffered bytes to replies, for both protocols, over
//! arbitrary bytes cut into reads at fuzzer-chosen points.
//!
//! The session is driven the way the reactor's `execute` drives it: each read is appended to
//! a carry buffer, `process` is called until it needs more input, a `SAY`'s push is taken
//! before going on, replies are taken whenever they reach the output limit, and nothing runs
//! after a `QUIT` or a protocol error. A peer named `peer` is in the chat room first, so
//! `HELLO peer` is refused as taken.
//!
//! Input option byte: bit 0 picks the protocol (0 line, 1 frame); the other seven bits are the
//! output limit in bytes (0: unlimited), so that stopping and resuming at the limit is tried.
//!
//! Checks, on every `process` call:
//! - it consumes no more than it was given, and all of it on a protocol error;
//! - when it stops for more input, what is left is an incomplete request (never a whole one
//!   left behind), held within one maximal request;
//! - when it stops at the output limit, the output is at the limit;
//! - a push is `MSG <this session's name> <text>\n`, after an `OK`;
//! - a LOGIN stops processing with its credentials handed over; the verdict (`user`/`pass`
//!   is right, anything else wrong) is answered as the reactor would, and the third failure
//!   ends the session.
//!
//! On the transcript (replies, pushes, counters, how the session ended):
//! - line: one reply line per request, plus one `ERR` for a refused line;
//! - frame: the replies are whole frames of the server-to-client kinds, one per request plus
//!   at most one Error frame for a refused header, and an Error frame only at the end;
//! - the protocol-error counter moves exactly when the session ends with one;
//! - one read with no output limit, the fuzzer's cuts and one byte per read with the fuzzer's
//!   output limit give identical transcripts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::buffer::Buffer;
use tcp_reactor::handler::{
    Context, Limits, Logins, Outcome, Protocol, Room, Session, SessionId, finish_login, process,
};
use tcp_reactor::protocol::frame::{self, Command};
use tcp_reactor::protocol::{Decoded, line};
use tcp_reactor::stats::Stats;
use tcp_reactor_fuzz::{DEFAULT_MAX_FRAME, DEFAULT_MAX_LINE, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let protocol = if input.option & 1 == 0 {
        Protocol::Line
    } else {
        Protocol::Frame
    };
    let out_limit = match input.option >> 1 {
        0 => usize::MAX,
        bytes => usize::from(bytes),
    };
    let limits = Limits {
        max_line_bytes: input.max_line(),
        max_frame_bytes: input.max_frame(),
    };

    let whole = serve(protocol, limits, &[input.stream], usize::MAX);
    check_transcript(protocol, &whole);
    for (name, reads) in input.splits() {
        let split = serve(protocol, limits, &reads, out_limit);
        assert_eq!(split, whole, "{name} with output limit {out_limit}");
    }
});

/// Everything the session's client and its chat peers would see.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    replies: Vec<u8>,
    /// Each `SAY`'s push line, in order.
    pushes: Vec<Vec<u8>>,
    /// `Quit` or `ProtocolError` if the session ended.
    ended_by: Option<Outcome>,
    /// The counters moved by this session alone.
    stats: Stats,
}

fn serve(protocol: Protocol, limits: Limits, reads: &[&[u8]], out_limit: usize) -> Transcript {
    let mut room = Room::default();
    let mut stats = Stats::default();
    let mut logins = Logins::default();
    let mut out = Buffer::new();

    // The peer joins under the server's default limits: the fuzzed ones may be too small.
    let mut peer = Session::new(Protocol::Line, SessionId(0));
    let mut cx = Context {
        limits: Limits {
            max_line_bytes: DEFAULT_MAX_LINE,
            max_frame_bytes: DEFAULT_MAX_FRAME,
        },
        room: &mut room,
        stats: &mut stats,
        logins: &mut logins,
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
                logins: &mut logins,
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
                Outcome::Broadcast => {
                    let name = session.name().expect("only a named session says");
                    let prefix = format!("MSG {name} ");
                    assert!(
                        room.message.starts_with(prefix.as_bytes()),
                        "{:?}",
                        room.message
                    );
                    assert!(room.message.len() > prefix.len() + 1, "empty SAY pushed");
                    assert!(room.message.ends_with(b"\n"), "{:?}", room.message);
                    assert!(replies.ends_with(b"OK\n"), "SAY not answered OK");
                    pushes.push(room.message.clone());
                }
                Outcome::Login => {
                    let credentials = logins.pending.take().expect("a LOGIN hands over");
                    let ok = credentials.user == b"user" && credentials.password == b"pass";
                    let verdict = finish_login(&mut session, ok, &mut out, &mut stats);
                    replies.extend_from_slice(out.data());
                    out.clear();
                    if verdict == Outcome::LoginFailures {
                        ended_by = Some(verdict);
                        break 'reads;
                    }
                }
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
            assert!(held.len() < frame::HEADER_LEN + limits.max_frame_bytes as usize);
        }
    }
}

fn check_transcript(protocol: Protocol, transcript: &Transcript) {
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
                    Command::Heartbeat | Command::Message | Command::LoginAck => {}
                    // Login errors leave the session open; any other Error frame ends it.
                    Command::Error
                        if [
                            &b"invalid credentials"[..],
                            b"usage: Login body is user:password",
                        ]
                        .contains(&request.body) => {}
                    Command::Error => {
                        assert!(refused, "an Error frame, yet the session goes on");
                        assert!(rest.is_empty(), "replies after an Error frame");
                        assert!(!request.body.is_empty(), "an Error frame with no reason");
                    }
                    Command::Login => panic!("the server sent a Login frame"),
                }
            }
            assert!(
                frames == requests || (refused && frames == requests + 1),
                "{frames} reply frames for {requests} requests"
            );
        }
    }
}
