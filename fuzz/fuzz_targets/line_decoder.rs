//! `line::decode` and `line::parse` over arbitrary bytes, cut into reads at fuzzer-chosen
//! points.
//!
//! Checks, on every decode step:
//! - `Complete`: `consumed` runs through the first `\n` held, the request is the bytes before
//!   it minus one trailing `\r`, at most `max_line` long, and `parse` names the command
//!   docs/PROTOCOL.md's table gives for it (a plain re-statement of the table, below);
//! - `Incomplete`: no `\n` is held and at most `max_line + 1` bytes are, the last of which is
//!   a `\r` if there are that many (never more than one maximal line);
//! - an error: `LineTooLong` for this limit, exactly when the framing rules first refuse the
//!   held bytes, which one byte fewer do not earn yet, with a client-facing text fit to send.
//!
//! And across reads: one read, the fuzzer's cuts and one byte per read give the same lines
//! and the same verdict.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_reactor::protocol::line::{self, Command};
use tcp_reactor::protocol::{Decoded, ProtocolError};
use tcp_reactor_fuzz::{Decoding, Input, Step, assert_clear_error, feed, line_refused_at, step};

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
            // Bytes behind the '\n' cannot make this line too long: only its prefix is checked.
            let line_bytes = &held[..consumed];
            assert_eq!(
                line_refused_at(line_bytes, max_line),
                None,
                "accepted a long line"
            );
            let newline = held.iter().position(|&b| b == b'\n');
            assert_eq!(
                Some(consumed - 1),
                newline,
                "not consumed through the first \\n"
            );
            let content = &held[..consumed - 1];
            assert_eq!(request, content.strip_suffix(b"\r").unwrap_or(content));
            assert!(request.len() <= max_line);
            assert_eq!(line::parse(request), spec_parse(request), "{request:?}");
        }
        Ok(Decoded::Incomplete) => {
            // The framing rule for a line with no '\n' yet, spelled out (line_refused_at would
            // say the same at a cost quadratic in the bytes of a line fed one at a time).
            assert!(!held.contains(&b'\n'), "waiting with a whole line held");
            assert!(
                held.len() <= max_line.saturating_add(1),
                "holding {} bytes",
                held.len()
            );
            if held.len() == max_line.saturating_add(1) {
                assert_eq!(held.last(), Some(&b'\r'), "only a \\r is worth waiting on");
            }
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

/// docs/PROTOCOL.md's command table, as plainly as possible: the verb is the bytes before the
/// first space (or the whole line), matched ASCII case-insensitively; the arguments are
/// everything after that one space.
fn spec_parse(line: &[u8]) -> Command<'_> {
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
