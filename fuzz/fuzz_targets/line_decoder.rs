//! `line::decode` and `line::parse` over arbitrary bytes, cut into reads at fuzzer-chosen
//! points.
//!
//! Checks, on every decode step:
//! - `Complete`: `consumed` runs through the first `\n` held, the request is the bytes before
//!   it minus one trailing `\r`, at most `max_line` long, and `parse` names the command
//!   docs/PROTOCOL.md's table gives for it (the rules restated plainly in the shared model,
//!   `tests/model/mod.rs`: `spec_decode_line`, `spec_parse`);
//! - `Incomplete`: no `\n` is held and at most `max_line + 1` bytes are, the last of which is
//!   a `\r` if there are that many (never more than one maximal line);
//! - an error: `LineTooLong` for this limit, exactly when the framing rules first refuse the
//!   held bytes, which one byte fewer do not earn yet, with a client-facing text fit to send.
//!
//! And across reads: one read, the fuzzer's cuts and one byte per read give the same lines
//! and the same verdict.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::protocol::line;
use tcp_reactor::protocol::{Decoded, ProtocolError};
use tcp_reactor_fuzz::{
    Decoding, Input, Step, assert_clear_error, feed, line_refused_at, spec_decode_line, spec_parse,
    step,
};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let max_line = input.max_line();
    let mut first: Option<Decoding<Vec<u8>>> = None;
    for (name, reads) in input.splits() {
        let decoding = feed(&reads, |held| checked_step(held, max_line));
        match &first {
            None => first = Some(decoding),
            Some(whole) => whole.assert_same(&decoding, name),
        }
    }
});

fn checked_step(held: &[u8], max_line: usize) -> Step<Vec<u8>> {
    let decoded = line::decode(held, max_line);
    match decoded {
        Ok(Decoded::Complete { request, consumed }) => {
            // The line through the first '\n', less one '\r', within max_line.
            assert_eq!(
                Ok(Some((request, consumed))),
                spec_decode_line(held, max_line),
                "not the first line's content"
            );
            // Bytes behind the '\n' cannot make this line too long: only its prefix is checked.
            let line_bytes = &held[..consumed];
            assert_eq!(
                line_refused_at(line_bytes, max_line),
                None,
                "accepted a long line"
            );
            assert_eq!(line::parse(request), spec_parse(request), "{request:?}");
        }
        Ok(Decoded::Incomplete) => {
            // No '\n', and at most max_line + 1 bytes, the last a '\r' if that many: one scan
            // of the held bytes (line_refused_at would say the same at a cost quadratic in the
            // bytes of a line fed one at a time).
            assert_eq!(
                spec_decode_line(held, max_line),
                Ok(None),
                "waiting on {} bytes that the framing rules settle",
                held.len()
            );
        }
        Err(error) => {
            assert_clear_error(&error);
            assert_eq!(error, ProtocolError::LineTooLong { max: max_line });
            let at = line_refused_at(held, max_line).expect("refused a line that fits");
            assert_eq!(line::decode(&held[..at], max_line), Err(error));
            assert_eq!(
                line::decode(&held[..at - 1], max_line),
                Ok(Decoded::Incomplete),
                "refused before the bytes proved the line too long"
            );
        }
    }
    step(decoded, <[u8]>::to_vec)
}
