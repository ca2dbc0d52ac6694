//! `handler::process`, the whole path from buffered bytes to replies, for both protocols, over
//! arbitrary bytes cut into reads at fuzzer-chosen points.
//!
//! The session is driven the way the reactor's `execute` drives it (`serve`, in the shared
//! model `tests/model/mod.rs`): each read is appended to a carry buffer, `process` is called
//! until it needs more input, a `SAY`'s push is taken before going on, replies are taken
//! whenever they reach the output limit, and nothing runs after a `QUIT` or a protocol error.
//! A peer named `peer` is in the chat room first, so `HELLO peer` is refused as taken.
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
use tcp_reactor::handler::{Limits, Protocol};
use tcp_reactor_fuzz::{Input, check_transcript, serve};

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
