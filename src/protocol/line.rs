//! The line protocol: newline-terminated text commands.
//!
//! This module splits a byte stream into lines ([`decode`]) and names the command a line
//! carries ([`parse`]). It exists apart from the handler so that framing and verb matching,
//! the two places where a hostile or clumsy peer can hurt a server, are tested byte by byte
//! with no socket.
//!
//! # Framing
//!
//! ```text
//! <content> \n          the request is <content>
//! <content> \r \n       the request is <content>; ONE trailing \r is dropped
//! a \r b \n             the request is "a\rb": a \r elsewhere is content
//! ```
//!
//! `consumed` counts through the `\n`. A line whose content is longer than `max_line` bytes is
//! refused with [`ProtocolError::LineTooLong`]; exactly `max_line` bytes is accepted. The
//! refusal comes as soon as the buffered bytes prove it, before any `\n` arrives:
//!
//! ```text
//! buffered (no \n yet)                            answer
//! len <= max_line                                 Incomplete
//! len == max_line + 1, last byte is \r            Incomplete (the \n may follow)
//! len == max_line + 1, last byte is not \r        LineTooLong
//! len >  max_line + 1                             LineTooLong
//! ```
//!
//! so a caller never buffers more than `max_line + 2` bytes of one line, and [`decode`] never
//! scans more than that many bytes, however much is buffered behind.
//!
//! # Commands
//!
//! The verb is the bytes before the first space (or the whole line), matched ASCII
//! case-insensitively; the arguments are everything after that one space, verbatim.
//!
//! ```text
//! PING                 -> PONG
//! PING <suffix>        -> PONG <suffix>      (everything after PING, space included)
//! QUIT                 -> BYE, then close    (no arguments allowed)
//! STATS                -> STATS accepted=..  (no arguments allowed)
//! HELLO <name>         -> WELCOME <name>     name: 1-32 of A-Z a-z 0-9 _ -
//! SAY <text>           -> OK                 text: non-empty, verbatim
//! LOGIN <user> <pass>  -> OK | ERR invalid credentials   (the password is the rest of the
//!                         line, spaces included; without --users every LOGIN gets OK)
//! LOGIN                -> ERR usage: LOGIN <user> <password>
//! <anything else>      -> echoed unchanged   (empty line, PINGX, binary bytes, ...)
//! ```
//!
//! # Invariants
//!
//! Pure: no IO, no clock, no allocation, no formatting. Requests borrow from the caller's
//! buffer. Text is bytes: nothing here requires or checks UTF-8.
//!
//! # What it refuses to do
//!
//! It does not build replies (the handler does; hence no encoder here), trim whitespace, fold
//! case in arguments, or strip more than one `\r`. A lone `\r` is not a line terminator.

use super::{Decoded, ProtocolError};

/// Longest name `HELLO` accepts, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// Decodes the first line in `buf`.
///
/// Returns the line's content (without the `\n` and without one trailing `\r`) and the bytes
/// consumed through the `\n`; `Incomplete` while no `\n` has arrived and the line may still
/// fit; [`ProtocolError::LineTooLong`] once the content is known to exceed `max_line` bytes.
///
/// Looks at no more than `max_line + 2` bytes of `buf`.
///
/// # Errors
///
/// [`ProtocolError::LineTooLong`] when the content is over `max_line` bytes, with or without
/// its `\n` buffered.
pub fn decode(buf: &[u8], max_line: usize) -> Result<Decoded<&[u8]>, ProtocolError> {
    // A legal line is at most max_line content bytes + "\r\n". Bounding the scan keeps a
    // buffer full of garbage from costing more than one maximal line per call.
    let window = &buf[..buf.len().min(max_line.saturating_add(2))];
    match memchr::memchr(b'\n', window) {
        Some(newline) => {
            let line = &buf[..newline];
            let line = match line.split_last() {
                Some((b'\r', content)) => content,
                _ => line,
            };
            if line.len() > max_line {
                return Err(ProtocolError::LineTooLong { max: max_line });
            }
            Ok(Decoded::Complete {
                request: line,
                consumed: newline + 1,
            })
        }
        None => {
            // No "\n" within the window. max_line + 1 bytes are still legal if the last one
            // is the '\r' of a "\r\n" that has not fully arrived; anything longer is not.
            let limit = max_line.saturating_add(1);
            let too_long = buf.len() > limit || (buf.len() == limit && buf.last() != Some(&b'\r'));
            if too_long {
                Err(ProtocolError::LineTooLong { max: max_line })
            } else {
                Ok(Decoded::Incomplete)
            }
        }
    }
}

/// The length of the longest verb (`HELLO`, `STATS`).
const LONGEST_VERB: usize = 5;

/// What a line asks for. Borrowed parts point into the line given to [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `PING` or `PING <anything>`. `suffix` is everything after the verb, leading space
    /// included (empty for a bare `PING`); the reply is `PONG` followed by it.
    Ping { suffix: &'a [u8] },
    /// `QUIT`, exactly: reply `BYE` and close.
    Quit,
    /// `STATS`, exactly: reply with the counters line.
    Stats,
    /// `HELLO <name>` with a valid name (1-32 bytes of `A-Z a-z 0-9 _ -`, so always ASCII).
    Hello(&'a [u8]),
    /// `SAY <text>` with non-empty text, verbatim (may contain spaces and any bytes).
    Say(&'a [u8]),
    /// `LOGIN <user> <password>`: the user is the first word, the password everything after
    /// the space that ends it (it may contain spaces); neither is empty.
    Login { user: &'a [u8], password: &'a [u8] },
    /// A known verb used wrongly. Holds the reason without the `ERR ` prefix;
    /// the connection stays open.
    Invalid(&'static str),
    /// Not a command: echo the line back unchanged.
    Echo(&'a [u8]),
}

const USAGE_QUIT: &str = "usage: QUIT";
const USAGE_STATS: &str = "usage: STATS";
const USAGE_HELLO: &str = "usage: HELLO <name>";
const USAGE_SAY: &str = "usage: SAY <text>";
/// Public: a session that must log in first may still be told how to.
pub const USAGE_LOGIN: &str = "usage: LOGIN <user> <password>";
const INVALID_NAME: &str = "invalid name: use 1-32 of A-Z a-z 0-9 _ -";

/// Names the command in one line (as returned by [`decode`]). Never fails: a line that is
/// no command is [`Command::Echo`].
#[must_use]
pub fn parse(line: &[u8]) -> Command<'_> {
    // No verb is longer than LONGEST_VERB, so the space that ends one is within the first
    // LONGEST_VERB + 1 bytes; past that the line is text to echo, found without scanning it.
    let head = &line[..line.len().min(LONGEST_VERB + 1)];
    let (verb, args) = match head.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None if line.len() <= LONGEST_VERB => (line, None),
        None => return Command::Echo(line),
    };
    match fold(verb) {
        PING => Command::Ping {
            suffix: &line[verb.len()..],
        },
        QUIT => match args {
            None => Command::Quit,
            Some(_) => Command::Invalid(USAGE_QUIT),
        },
        STATS => match args {
            None => Command::Stats,
            Some(_) => Command::Invalid(USAGE_STATS),
        },
        HELLO => match args {
            None | Some([]) => Command::Invalid(USAGE_HELLO),
            Some(name) if is_valid_name(name) => Command::Hello(name),
            Some(_) => Command::Invalid(INVALID_NAME),
        },
        SAY => match args {
            None | Some([]) => Command::Invalid(USAGE_SAY),
            Some(text) => Command::Say(text),
        },
        LOGIN => match args.and_then(|args| {
            let space = args.iter().position(|&b| b == b' ')?;
            Some((&args[..space], &args[space + 1..]))
        }) {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Command::Login { user, password }
            }
            _ => Command::Invalid(USAGE_LOGIN),
        },
        _ => Command::Echo(line),
    }
}

/// A verb of up to `LONGEST_VERB` bytes folded to upper case and packed into one integer, so
/// matching it against every verb is one `match` on a number.
///
/// Clearing bit 5 (`& 0xDF`) maps `a-z` onto `A-Z`. It also maps some non-letters onto
/// letters' codes (`0x60`..`0x7A` are the lower-case letters' neighbours), but never onto an
/// upper-case letter's code unless the byte *is* that letter in one case or the other: `x &
/// 0xDF == L` holds exactly for `x == L` and `x == L | 0x20`. Every verb is letters only, so a
/// folded match is exactly a case-insensitive match. The length is packed in too, so `PIN`
/// cannot match a verb that ends in a zero byte.
const fn fold(verb: &[u8]) -> u64 {
    let mut word = verb.len() as u64;
    let mut i = 0;
    while i < verb.len() {
        word = (word << 8) | (verb[i] & 0xDF) as u64;
        i += 1;
    }
    word
}

const PING: u64 = fold(b"PING");
const QUIT: u64 = fold(b"QUIT");
const STATS: u64 = fold(b"STATS");
const HELLO: u64 = fold(b"HELLO");
const SAY: u64 = fold(b"SAY");
const LOGIN: u64 = fold(b"LOGIN");

/// A name is 1..=32 bytes of `A-Z a-z 0-9 _ -`: printable in any reply, never containing the
/// space that separates a `MSG <name> <text>` line's fields.
fn is_valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 65536;

    fn complete(request: &[u8], consumed: usize) -> Result<Decoded<&[u8]>, ProtocolError> {
        Ok(Decoded::Complete { request, consumed })
    }

    fn too_long(max: usize) -> Result<Decoded<&'static [u8]>, ProtocolError> {
        Err(ProtocolError::LineTooLong { max })
    }

    #[test]
    fn every_split_point_is_incomplete_until_the_newline() {
        // (input, request, consumed)
        let cases: &[(&[u8], &[u8], usize)] = &[
            (b"PING\n", b"PING", 5),
            (b"PING\r\n", b"PING", 6),
            (b"HELLO alice\r\n", b"HELLO alice", 13),
            (b"SAY hi there\n", b"SAY hi there", 13),
            (b"\n", b"", 1),
            (b"\r\n", b"", 2),
            (b"a\rb\n", b"a\rb", 4),
            (b"\xff\x00\xfe\r\n", b"\xff\x00\xfe", 5),
        ];
        for &(input, request, consumed) in cases {
            for split in 0..input.len() {
                assert_eq!(
                    decode(&input[..split], MAX),
                    Ok(Decoded::Incomplete),
                    "{input:?} cut at {split}"
                );
            }
            assert_eq!(decode(input, MAX), complete(request, consumed), "{input:?}");
            // Bytes of the next request behind the newline change nothing.
            let mut more = input.to_vec();
            more.extend_from_slice(b"PIN");
            assert_eq!(
                decode(&more, MAX),
                complete(request, consumed),
                "{input:?}+"
            );
        }
    }

    #[test]
    fn many_lines_in_one_buffer() {
        let buf = b"PING\nHELLO bob\r\n\n\r\nSAY a b\r\r\nx\ry\nQUIT\npartial";
        let expected: &[&[u8]] = &[
            b"PING",
            b"HELLO bob",
            b"",
            b"",
            b"SAY a b\r",
            b"x\ry",
            b"QUIT",
        ];
        let mut rest: &[u8] = buf;
        let mut got = Vec::new();
        while let Decoded::Complete { request, consumed } = decode(rest, MAX).unwrap() {
            got.push(request);
            rest = &rest[consumed..];
        }
        assert_eq!(got, expected);
        assert_eq!(rest, b"partial");
    }

    #[test]
    fn carriage_returns() {
        let cases: &[(&[u8], &[u8], usize)] = &[
            (b"a\n", b"a", 2),
            (b"a\r\n", b"a", 3),
            // Only ONE trailing \r is dropped.
            (b"a\r\r\n", b"a\r", 4),
            // A lone \r is content, not a terminator.
            (b"a\rb\n", b"a\rb", 4),
            (b"\ra\n", b"\ra", 3),
            (b"\r\r\n", b"\r", 3),
        ];
        for &(input, request, consumed) in cases {
            assert_eq!(decode(input, MAX), complete(request, consumed), "{input:?}");
        }
        assert_eq!(decode(b"a\rb", MAX), Ok(Decoded::Incomplete));
        assert_eq!(decode(b"a\r", MAX), Ok(Decoded::Incomplete));
    }

    #[test]
    fn max_line_at_max_and_max_plus_one() {
        // (max_line, content_len, terminator, answer): the input is content_len 'x's + terminator.
        // The request is reduced to its length so that the table stays readable.
        type Answer = Result<Decoded<usize>, ProtocolError>;
        let cases: &[(usize, usize, &[u8], Answer)] = &[
            // Newline arrived: content length decides.
            (
                4,
                4,
                b"\n",
                Ok(Decoded::Complete {
                    request: 4,
                    consumed: 5,
                }),
            ),
            (
                4,
                4,
                b"\r\n",
                Ok(Decoded::Complete {
                    request: 4,
                    consumed: 6,
                }),
            ),
            (4, 5, b"\n", Err(ProtocolError::LineTooLong { max: 4 })),
            (4, 5, b"\r\n", Err(ProtocolError::LineTooLong { max: 4 })),
            (4, 9, b"\n", Err(ProtocolError::LineTooLong { max: 4 })),
            // No newline yet: refused as soon as the bytes prove it.
            (4, 3, b"", Ok(Decoded::Incomplete)),
            (4, 4, b"", Ok(Decoded::Incomplete)),
            (4, 4, b"\r", Ok(Decoded::Incomplete)),
            (4, 5, b"", Err(ProtocolError::LineTooLong { max: 4 })),
            (4, 5, b"\r", Err(ProtocolError::LineTooLong { max: 4 })),
            (4, 6, b"", Err(ProtocolError::LineTooLong { max: 4 })),
            // The smallest limit: only empty lines fit.
            (
                0,
                0,
                b"\n",
                Ok(Decoded::Complete {
                    request: 0,
                    consumed: 1,
                }),
            ),
            (
                0,
                0,
                b"\r\n",
                Ok(Decoded::Complete {
                    request: 0,
                    consumed: 2,
                }),
            ),
            (0, 0, b"", Ok(Decoded::Incomplete)),
            (0, 0, b"\r", Ok(Decoded::Incomplete)),
            (0, 1, b"", Err(ProtocolError::LineTooLong { max: 0 })),
            (0, 1, b"\n", Err(ProtocolError::LineTooLong { max: 0 })),
            // The server's default limit.
            (
                MAX,
                MAX,
                b"\n",
                Ok(Decoded::Complete {
                    request: MAX,
                    consumed: MAX + 1,
                }),
            ),
            (
                MAX,
                MAX,
                b"\r\n",
                Ok(Decoded::Complete {
                    request: MAX,
                    consumed: MAX + 2,
                }),
            ),
            (MAX, MAX, b"", Ok(Decoded::Incomplete)),
            (MAX, MAX, b"\r", Ok(Decoded::Incomplete)),
            (
                MAX,
                MAX + 1,
                b"\n",
                Err(ProtocolError::LineTooLong { max: MAX }),
            ),
            (
                MAX,
                MAX + 1,
                b"\r\n",
                Err(ProtocolError::LineTooLong { max: MAX }),
            ),
            (
                MAX,
                MAX + 1,
                b"",
                Err(ProtocolError::LineTooLong { max: MAX }),
            ),
        ];
        for (max_line, content_len, terminator, answer) in cases {
            let mut input = vec![b'x'; *content_len];
            input.extend_from_slice(terminator);
            let got = decode(&input, *max_line).map(|d| match d {
                Decoded::Complete { request, consumed } => {
                    assert!(request.iter().all(|&b| b == b'x'));
                    Decoded::Complete {
                        request: request.len(),
                        consumed,
                    }
                }
                Decoded::Incomplete => Decoded::Incomplete,
            });
            assert_eq!(
                got, *answer,
                "max {max_line}, {content_len} bytes + {terminator:?}"
            );
        }
    }

    #[test]
    fn too_long_line_is_refused_however_far_its_newline() {
        // The scan is bounded: a newline past max_line + 2 is never looked for.
        let mut input = vec![b'x'; 100];
        input.push(b'\n');
        assert_eq!(decode(&input, 8), too_long(8));
        // A short line in front of a long one is still served first.
        let mut input = b"ok\n".to_vec();
        input.extend_from_slice(&[b'x'; 100]);
        assert_eq!(decode(&input, 8), complete(b"ok", 3));
        assert_eq!(decode(&input[3..], 8), too_long(8));
        // No overflow at the largest limit.
        assert_eq!(decode(b"abc", usize::MAX), Ok(Decoded::Incomplete));
        assert_eq!(decode(b"abc\n", usize::MAX), complete(b"abc", 4));
    }

    #[test]
    fn every_verb_in_mixed_case() {
        let cases: &[(&[u8], Command<'_>)] = &[
            (b"PING", Command::Ping { suffix: b"" }),
            (b"ping", Command::Ping { suffix: b"" }),
            (b"PiNg", Command::Ping { suffix: b"" }),
            (b"PING x", Command::Ping { suffix: b" x" }),
            (
                b"pInG hello world",
                Command::Ping {
                    suffix: b" hello world",
                },
            ),
            (b"PING ", Command::Ping { suffix: b" " }),
            (b"PING  two", Command::Ping { suffix: b"  two" }),
            (b"QUIT", Command::Quit),
            (b"quit", Command::Quit),
            (b"QuIt", Command::Quit),
            (b"STATS", Command::Stats),
            (b"stats", Command::Stats),
            (b"sTaTs", Command::Stats),
            (b"HELLO alice", Command::Hello(b"alice")),
            (b"hello alice", Command::Hello(b"alice")),
            (b"HeLLo Alice_42-x", Command::Hello(b"Alice_42-x")),
            (b"HELLO a", Command::Hello(b"a")),
            (b"HELLO -", Command::Hello(b"-")),
            (
                b"HELLO abcdefghijklmnopqrstuvwxyzABCDEF",
                Command::Hello(b"abcdefghijklmnopqrstuvwxyzABCDEF"),
            ),
            (
                b"HELLO abcdefghijklmnopqrstuvwxyzABCDEFG",
                Command::Invalid(INVALID_NAME),
            ),
            (b"SAY hi", Command::Say(b"hi")),
            (b"say hi there", Command::Say(b"hi there")),
            (b"SaY  padded ", Command::Say(b" padded ")),
            (b"SAY \xff\x00", Command::Say(b"\xff\x00")),
            (
                b"LOGIN ann s3cret",
                Command::Login {
                    user: b"ann",
                    password: b"s3cret",
                },
            ),
            (
                b"login ann correct horse battery",
                Command::Login {
                    user: b"ann",
                    password: b"correct horse battery",
                },
            ),
            (
                b"LoGiN ann  x",
                Command::Login {
                    user: b"ann",
                    password: b" x",
                },
            ),
            (b"LOGIN", Command::Invalid(USAGE_LOGIN)),
            (b"LOGIN ann", Command::Invalid(USAGE_LOGIN)),
            (b"LOGIN ann ", Command::Invalid(USAGE_LOGIN)),
            (b"LOGIN  ann pw", Command::Invalid(USAGE_LOGIN)),
            (b"LOGINS ann pw", Command::Echo(b"LOGINS ann pw")),
        ];
        for &(line, expected) in cases {
            assert_eq!(parse(line), expected, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn hello_name_length_limits() {
        // 32 bytes is the longest name accepted, 33 the shortest refused.
        let name32 = [b'a'; MAX_NAME_LEN];
        let mut line = b"HELLO ".to_vec();
        line.extend_from_slice(&name32);
        assert_eq!(parse(&line), Command::Hello(&name32));
        line.push(b'a');
        assert_eq!(parse(&line), Command::Invalid(INVALID_NAME));
    }

    #[test]
    fn invalid_uses_of_known_verbs() {
        let cases: &[(&[u8], &str)] = &[
            (b"QUIT now", "usage: QUIT"),
            (b"QUIT ", "usage: QUIT"),
            (b"quit x", "usage: QUIT"),
            (b"STATS all", "usage: STATS"),
            (b"STATS ", "usage: STATS"),
            (b"HELLO", "usage: HELLO <name>"),
            (b"HELLO ", "usage: HELLO <name>"),
            (b"hello", "usage: HELLO <name>"),
            (b"HELLO  alice", INVALID_NAME),
            (b"HELLO al ice", INVALID_NAME),
            (b"HELLO alice ", INVALID_NAME),
            (b"HELLO al.ice", INVALID_NAME),
            (b"HELLO al\tice", INVALID_NAME),
            (b"HELLO \xc3\xa9", INVALID_NAME),
            (b"HELLO alice\r", INVALID_NAME),
            (b"SAY", "usage: SAY <text>"),
            (b"SAY ", "usage: SAY <text>"),
            (b"say", "usage: SAY <text>"),
        ];
        for &(line, reason) in cases {
            assert_eq!(
                parse(line),
                Command::Invalid(reason),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            INVALID_NAME, "invalid name: use 1-32 of A-Z a-z 0-9 _ -",
            "client-facing text"
        );
    }

    #[test]
    fn everything_else_is_echoed() {
        let cases: &[&[u8]] = &[
            b"",
            b" ",
            b" PING",
            b"PINGX",
            b"PING\tx",
            b"PINGPONG x",
            b"QUITS",
            b"STAT",
            b"HELLOalice",
            b"SAYhi",
            b"hello, world",
            b"\xff\xfe\x00\x01",
            b"\x1b[31mred",
            b"\x00",
            b"PING\x00",
            b"\r",
        ];
        for &line in cases {
            assert_eq!(parse(line), Command::Echo(line), "{line:?}");
        }
    }

    #[test]
    fn decode_then_parse() {
        let buf = b"ping x\r\nHELLO bob\nSAY hey you\r\nwhat\nQUIT\n";
        let expected = [
            Command::Ping { suffix: b" x" },
            Command::Hello(b"bob"),
            Command::Say(b"hey you"),
            Command::Echo(b"what"),
            Command::Quit,
        ];
        let mut rest: &[u8] = buf;
        for want in expected {
            let Decoded::Complete { request, consumed } = decode(rest, MAX).unwrap() else {
                panic!("incomplete at {rest:?}");
            };
            assert_eq!(parse(request), want);
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty());
    }
}
