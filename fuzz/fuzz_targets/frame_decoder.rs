//! `frame::decode` over arbitrary bytes, cut into reads at fuzzer-chosen points.
//!
//! Checks, on every decode step:
//! - `Complete`: the held bytes start with a valid header whose length is the body's, the body
//!   is the bytes right after it, at most `max_frame` long, and `consumed` is header + body;
//! - `Incomplete`: no header rule is broken yet, and fewer than `HEADER_LEN + max_frame` bytes
//!   are held (never more than one maximal frame);
//! - an error: exactly the validation table's error for the first bad byte, which the bytes
//!   one shorter do not earn yet, with a client-facing text fit to send.
//!
//! And across reads: one read, the fuzzer's cuts and one byte per read give the same frames
//! and the same verdict. (Fed one byte per read, the error checks above mean the refusal
//! comes at the very read that brings the first bad byte.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::protocol::Decoded;
use tcp_reactor::protocol::frame::{self, Command, HEADER_LEN};
use tcp_reactor_fuzz::{
    Decoding, Input, Step, assert_clear_error, declared_len, feed, frame_refused_at, step,
};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let max_frame = input.max_frame();
    let mut first: Option<Decoding<(Command, Vec<u8>)>> = None;
    for (name, reads) in input.splits() {
        let decoding = feed(&reads, |held| checked_step(held, max_frame));
        match &first {
            None => first = Some(decoding),
            Some(whole) => whole.assert_same(&decoding, name),
        }
    }
});

fn checked_step(held: &[u8], max_frame: u32) -> Step<(Command, Vec<u8>)> {
    let decoded = frame::decode(held, max_frame);
    match decoded {
        Ok(Decoded::Complete { request, consumed }) => {
            assert_eq!(
                frame_refused_at(held, max_frame),
                None,
                "accepted a bad header"
            );
            let len = declared_len(held).expect("a complete frame has its header");
            assert_eq!(request.body.len(), len as usize);
            assert!(len <= max_frame, "body of {len} over the limit {max_frame}");
            assert_eq!(consumed, HEADER_LEN + request.body.len());
            assert_eq!(request.body, &held[HEADER_LEN..consumed]);
            assert_eq!(
                frame::encode_header(request.command, len),
                held[..HEADER_LEN],
                "the header does not re-encode to itself"
            );
        }
        Ok(Decoded::Incomplete) => {
            assert_eq!(
                frame_refused_at(held, max_frame),
                None,
                "waiting on a bad header"
            );
            assert!(
                held.len() < HEADER_LEN + max_frame as usize,
                "holding {} bytes with max_frame {max_frame}",
                held.len()
            );
            if let Some(len) = declared_len(held) {
                assert!(
                    held.len() < HEADER_LEN + len as usize,
                    "the whole frame is held"
                );
            }
        }
        Err(error) => {
            assert_clear_error(&error);
            let (at, expected) = frame_refused_at(held, max_frame).expect("refused a good prefix");
            assert_eq!(error, expected);
            assert_eq!(frame::decode(&held[..at], max_frame), Err(error));
            assert_eq!(
                frame::decode(&held[..at - 1], max_frame),
                Ok(Decoded::Incomplete),
                "refused before the bad byte arrived"
            );
        }
    }
    step(decoded, |request| (request.command, request.body.to_vec()))
}
