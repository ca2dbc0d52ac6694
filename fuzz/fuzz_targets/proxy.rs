//! `proxy::decode` (the PROXY header read before anything else with `--proxy-protocol`) over
//! arbitrary bytes, cut into reads at fuzzer-chosen points, fed as the reactor feeds it: the
//! bytes so far are decoded after every read until the header is complete or refused.
//!
//! Checks, on every decode step:
//! - `Complete`: `consumed` is at least the 15 bytes of the shortest header (`PROXY
//!   UNKNOWN\r\n`; a v2 header is at least 16) and at most `MAX_HEADER_LEN`, and the header
//!   alone decodes to the same header (the bytes after it are not part of it); a v1 header
//!   ends with its CRLF within 107 bytes;
//! - `Incomplete`: never more than `MAX_HEADER_LEN` bytes held, and never 107 or more for a
//!   v1 line (one without its CRLF by then is malformed at once);
//! - an error: not for a strict prefix of a header that the whole stream completes (checked
//!   across the splits below).
//!
//! And across reads: one read, the fuzzer's cuts and one byte per read give the same verdict
//! (the same header and length, or a refusal), so a header split anywhere is the same header.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::protocol::Decoded;
use tcp_reactor::protocol::proxy::{self, MAX_HEADER_LEN, ProxyHeader};
use tcp_reactor_fuzz::Input;

/// What a stream came to: a header and its length, a refusal, or still waiting at its end.
#[derive(Debug, PartialEq)]
enum Verdict {
    Header(ProxyHeader, usize),
    Refused,
    Waiting,
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mut first: Option<Verdict> = None;
    for (name, reads) in input.splits() {
        let verdict = feed(&reads);
        match &first {
            None => first = Some(verdict),
            Some(whole) => assert_eq!(whole, &verdict, "{name} differs from one read"),
        }
    }
});

fn feed(reads: &[&[u8]]) -> Verdict {
    let mut held = Vec::new();
    for read in reads {
        held.extend_from_slice(read);
        match proxy::decode(&held) {
            Ok(Decoded::Complete { request, consumed }) => {
                check_complete(&held, request, consumed);
                return Verdict::Header(request, consumed);
            }
            Ok(Decoded::Incomplete) => check_incomplete(&held),
            Err(error) => {
                assert!(!error.to_string().is_empty());
                return Verdict::Refused;
            }
        }
    }
    Verdict::Waiting
}

fn check_complete(held: &[u8], header: ProxyHeader, consumed: usize) {
    assert!(
        (15..=MAX_HEADER_LEN).contains(&consumed) && consumed <= held.len(),
        "consumed {consumed} of {}",
        held.len()
    );
    assert_eq!(
        proxy::decode(&held[..consumed]),
        Ok(Decoded::Complete {
            request: header,
            consumed
        }),
        "the header alone reads differently"
    );
    if held[0] == b'P' {
        assert!(consumed <= 107 && held[..consumed].ends_with(b"\r\n"));
    }
}

fn check_incomplete(held: &[u8]) {
    assert!(held.len() <= MAX_HEADER_LEN, "waiting on {} bytes", held.len());
    if held.first() == Some(&b'P') {
        assert!(held.len() < 107, "a v1 line of {} bytes still waited on", held.len());
    }
}
