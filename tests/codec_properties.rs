//! Property tests for the pure codecs and the line handler: what must hold for every input,
//! not just for the tables in the unit tests.
//!
//! The unit tests in `src/protocol/{line,frame}.rs` pin exact answers for hand-picked inputs.
//! These generate inputs instead, and check the rules of docs/PROTOCOL.md that hold for all
//! of them:
//!
//! - a frame decodes to exactly the command and body it was encoded from;
//! - a stream of requests decodes the same however TCP splits it, fed the way the reactor
//!   feeds it (a carry buffer, decode until `Incomplete`);
//! - arbitrary bytes never panic, never make a codec hold more than one maximal request, and a
//!   frame is refused at its first bad byte, never earlier, never later;
//! - verbs are case-insensitive, a line whose first word is no verb is echoed, and `PING`'s
//!   suffix is everything after the verb;
//! - the handler's replies do not depend on how the input was split.
//!
//! Strategies are built from `prop::collection::vec`, `any::<u8>()` and `prop_oneof!` so that a
//! failure shrinks to a short input. Case counts are set per group so that the whole file runs
//! in a few seconds in a debug build.

use proptest::prelude::*;
use proptest::sample::Index;

use tcp_reactor::buffer::Buffer;
use tcp_reactor::handler::{
    Context, Limits, LoginRules, Outcome, Protocol, Room, Session, SessionId, finish_login, process,
};
use tcp_reactor::protocol::frame::{self, Command as FrameCommand, HEADER_LEN, MAGIC};
use tcp_reactor::protocol::line::{self, Command};
use tcp_reactor::protocol::{Decoded, ProtocolError};
use tcp_reactor::stats::Stats;

/// The server's defaults (`--max-line`, `--max-frame`).
const DEFAULT_MAX_LINE: usize = 65536;
const DEFAULT_MAX_FRAME: u32 = 10_485_760;

const ALL_FRAME_COMMANDS: [FrameCommand; 5] = [
    FrameCommand::Heartbeat,
    FrameCommand::Message,
    FrameCommand::Login,
    FrameCommand::LoginAck,
    FrameCommand::Error,
];

const VERBS: [&[u8]; 5] = [b"PING", b"QUIT", b"STATS", b"HELLO", b"SAY"];

// ---------------------------------------------------------------------------------------------
// Helpers: the reactor's way of feeding a codec, and the spec written out plainly.
// ---------------------------------------------------------------------------------------------

/// One decode step with the request copied out, so that the same driver serves both codecs.
type Step<T> = Result<Option<(T, usize)>, ProtocolError>;

fn line_step(buf: &[u8], max_line: usize) -> Step<Vec<u8>> {
    line::decode(buf, max_line).map(|decoded| match decoded {
        Decoded::Complete { request, consumed } => Some((request.to_vec(), consumed)),
        Decoded::Incomplete => None,
    })
}

fn frame_step(buf: &[u8], max_frame: u32) -> Step<(FrameCommand, Vec<u8>)> {
    frame::decode(buf, max_frame).map(|decoded| match decoded {
        Decoded::Complete { request, consumed } => {
            Some(((request.command, request.body.to_vec()), consumed))
        }
        Decoded::Incomplete => None,
    })
}

/// Feeds `chunks` as the reactor does: append each chunk to a carry buffer, then decode and
/// consume until `Incomplete`. Returns the requests and the bytes left in the carry buffer.
fn decode_chunks<T>(
    chunks: &[&[u8]],
    step: impl Fn(&[u8]) -> Step<T>,
) -> Result<(Vec<T>, Vec<u8>), ProtocolError> {
    let mut carry = Vec::new();
    let mut requests = Vec::new();
    for chunk in chunks {
        carry.extend_from_slice(chunk);
        while let Some((request, consumed)) = step(&carry)? {
            assert!(
                (1..=carry.len()).contains(&consumed),
                "consumed {consumed} of {} buffered bytes",
                carry.len()
            );
            requests.push(request);
            carry.drain(..consumed);
        }
    }
    Ok((requests, carry))
}

/// Cuts `bytes` into reads at the positions `cuts` pick; repeated positions and the ends
/// are merged, so no read is empty. An `Index` shrinks towards position 0, so a failing split
/// shrinks towards fewer, earlier cuts.
fn split_at<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn bytes_one_at_a_time(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.chunks(1).collect()
}

/// The request a line carries, as docs/PROTOCOL.md words it: without its `\n`, and without
/// one `\r` before it.
fn line_content(raw_content: &[u8], ending: &[u8]) -> Vec<u8> {
    let mut line = raw_content.to_vec();
    line.extend_from_slice(ending);
    line.pop(); // the '\n'
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// docs/PROTOCOL.md's line framing: the first line's content and the bytes through its `\n`;
/// with no `\n` yet, a refusal once `max_line + 1` bytes not ending in `\r`, or
/// `max_line + 2` bytes, are buffered.
fn spec_decode_line(buf: &[u8], max_line: usize) -> Step<Vec<u8>> {
    let too_long = Err(ProtocolError::LineTooLong { max: max_line });
    match buf.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let content = line_content(&buf[..newline], b"\n");
            if content.len() > max_line {
                too_long
            } else {
                Ok(Some((content, newline + 1)))
            }
        }
        None => {
            let over_by = buf.len().saturating_sub(max_line);
            if over_by >= 2 || (over_by == 1 && buf.last() != Some(&b'\r')) {
                too_long
            } else {
                Ok(None)
            }
        }
    }
}

fn encode_frame(command: FrameCommand, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("generated bodies are small");
    let mut bytes = frame::encode_header(command, len).to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// docs/PROTOCOL.md's validation table for frames: the prefix length at which `buf` is first
/// known to be bad (the bad byte is the last one of that prefix), and the error.
fn first_bad_byte(buf: &[u8], max_frame: u32) -> Option<(usize, ProtocolError)> {
    if let [hi, lo, ..] = *buf {
        let magic = u16::from_be_bytes([hi, lo]);
        if magic != MAGIC {
            return Some((2, ProtocolError::BadMagic(magic)));
        }
    }
    if let Some(&version) = buf.get(2)
        && version != 1
    {
        return Some((3, ProtocolError::UnsupportedVersion(version)));
    }
    if let Some(&command) = buf.get(3)
        && command > 4
    {
        return Some((4, ProtocolError::UnknownCommand(command)));
    }
    if let Some(len) = declared_len(buf)
        && len > max_frame
    {
        return Some((
            HEADER_LEN,
            ProtocolError::FrameTooLarge {
                len,
                max: max_frame,
            },
        ));
    }
    None
}

fn declared_len(buf: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(4..8)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// docs/PROTOCOL.md's command table, written as plainly as possible: the verb is the bytes
/// before the first space (or the whole line), matched ASCII case-insensitively; the
/// arguments are everything after that one space.
fn spec_parse(line: &[u8]) -> Command<'_> {
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    let valid_name = |name: &[u8]| {
        (1..=32).contains(&name.len())
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
    } else {
        Command::Echo(line)
    }
}

fn is_verb(word: &[u8]) -> bool {
    VERBS.iter().any(|verb| word.eq_ignore_ascii_case(verb))
}

/// Flips the case of the letters of `word` where `mask` says so.
fn mix_case(word: &[u8], mask: &[bool]) -> Vec<u8> {
    word.iter()
        .zip(mask.iter().chain(std::iter::repeat(&false)))
        .map(|(&b, &flip)| {
            if !flip {
                b
            } else if b.is_ascii_uppercase() {
                b.to_ascii_lowercase()
            } else {
                b.to_ascii_uppercase()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

/// A byte of line content (never `\n`), biased towards the bytes the framing cares about.
fn content_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>().prop_filter("no newline in content", |&b| b != b'\n'),
        2 => Just(b'\r'),
        1 => Just(b' '),
        2 => b'a'..=b'z',
    ]
}

/// A byte of a hostile stream: anything, with `\n` and `\r` common.
fn soup_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>(),
        2 => Just(b'\n'),
        2 => Just(b'\r'),
        2 => Just(b'x'),
    ]
}

fn line_ending() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..])]
}

fn frame_command() -> impl Strategy<Value = FrameCommand> {
    prop::sample::select(&ALL_FRAME_COMMANDS[..])
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..12)
}

/// Bytes that are often a frame header, sometimes a broken one, sometimes noise.
fn frame_soup() -> impl Strategy<Value = Vec<u8>> {
    let header_then_tail = (
        prop_oneof![3 => Just(MAGIC), 1 => any::<u16>()],
        prop_oneof![3 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![3 => 0u8..=4, 1 => any::<u8>()],
        prop_oneof![3 => 0u32..=40, 1 => any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..48),
        any::<Index>(),
    )
        .prop_map(|(magic, version, command, len, tail, cut)| {
            let mut bytes = magic.to_be_bytes().to_vec();
            bytes.push(version);
            bytes.push(command);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&tail);
            // Any prefix, so that every field boundary is reached.
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep);
            bytes
        });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        3 => header_then_tail,
    ]
}

fn small_or_default_max_line() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..=8, 1 => Just(DEFAULT_MAX_LINE), 1 => Just(usize::MAX)]
}

fn small_or_default_max_frame() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..=40, 1 => Just(DEFAULT_MAX_FRAME), 1 => Just(u32::MAX)]
}

/// A line's raw content (no ending) starting with `verb` in a random case mix, then `rest`.
fn verb_line() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(&VERBS[..]),
        prop::collection::vec(any::<bool>(), 5),
        prop_oneof![
            Just(&b""[..]),
            Just(&b" "[..]),
            Just(&b"  "[..]),
            Just(&b"\t"[..])
        ],
        prop::collection::vec(content_byte(), 0..12),
    )
        .prop_map(|(verb, mask, separator, rest)| {
            let mut line = mix_case(verb, &mask);
            line.extend_from_slice(separator);
            line.extend_from_slice(&rest);
            line
        })
}

/// A valid request of the line protocol, without its ending. At most 46 bytes.
fn line_request() -> impl Strategy<Value = Vec<u8>> {
    let text = || prop::collection::vec(content_byte(), 0..40);
    let name_byte = prop::sample::select(&b"abcXYZ019_-."[..]);
    let name = prop::collection::vec(name_byte, 0..=34);
    let with = |verb: &'static [u8], args: Vec<u8>| {
        let mut line = verb.to_vec();
        line.extend_from_slice(&args);
        line
    };
    prop_oneof![
        4 => (prop::collection::vec(any::<bool>(), 4), prop::option::of(text())).prop_map(
            move |(mask, suffix)| {
                let mut line = mix_case(b"PING", &mask);
                if let Some(suffix) = suffix {
                    line.push(b' ');
                    line.extend_from_slice(&suffix);
                }
                line
            }
        ),
        3 => name.prop_map(move |name| with(b"HELLO ", name)),
        3 => text().prop_map(move |text| with(b"say ", text)),
        1 => Just(b"STATS".to_vec()),
        1 => Just(b"stats now".to_vec()),
        1 => Just(b"QUIT now".to_vec()),
        4 => text(),
        1 => Just(b"quit".to_vec()),
    ]
}

// ---------------------------------------------------------------------------------------------
// 1. Frame round trip.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `encode_header(cmd, len) + body` decodes to that command and body, consuming exactly
    /// the frame, for any limit at least the body's length; bytes behind it change nothing.
    #[test]
    fn encoded_frame_decodes_to_its_command_and_body(
        command in frame_command(),
        body in prop::collection::vec(any::<u8>(), 0..4096),
        headroom in prop_oneof![Just(0u32), 0u32..16, any::<u32>()],
        behind in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let len = u32::try_from(body.len()).unwrap();
        let max = len.saturating_add(headroom);
        let mut buf = frame::encode_header(command, len).to_vec();
        buf.extend_from_slice(&body);
        let expected = Ok(Decoded::Complete {
            request: frame::Frame { command, body: &body[..] },
            consumed: HEADER_LEN + body.len(),
        });
        prop_assert_eq!(frame::decode(&buf, max), expected);
        buf.extend_from_slice(&behind);
        prop_assert_eq!(frame::decode(&buf, max), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Any split of a valid stream decodes to the same requests.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Lines with `\n` or `\r\n` endings (content up to `max_line`, any bytes but `\n`) decode
    /// to their content, minus one trailing `\r`, however the stream is cut into reads.
    #[test]
    fn lines_decode_the_same_however_the_stream_is_split(
        (max_line, lines) in (0usize..=16).prop_flat_map(|max_line| (
            Just(max_line),
            prop::collection::vec(
                (prop::collection::vec(content_byte(), 0..=max_line), line_ending()),
                0..12,
            ),
        )),
        cuts in cuts(),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (content, ending) in &lines {
            stream.extend_from_slice(content);
            stream.extend_from_slice(ending);
            expected.push(line_content(content, ending));
        }
        let step = |buf: &[u8]| line_step(buf, max_line);

        let whole = decode_chunks(&[&stream[..]], step);
        prop_assert_eq!(&whole, &Ok((expected.clone(), Vec::new())));
        let split = decode_chunks(&split_at(&stream, &cuts), step);
        prop_assert_eq!(&split, &whole);
        let trickled = decode_chunks(&bytes_one_at_a_time(&stream), step);
        prop_assert_eq!(&trickled, &whole);
    }

    /// Frames of every command (bodies up to `max_frame`) decode to themselves however the
    /// stream is cut into reads.
    #[test]
    fn frames_decode_the_same_however_the_stream_is_split(
        (max_frame, frames) in (0u32..=32).prop_flat_map(|max_frame| (
            Just(max_frame),
            prop::collection::vec(
                (frame_command(), prop::collection::vec(any::<u8>(), 0..=max_frame as usize)),
                0..8,
            ),
        )),
        cuts in cuts(),
    ) {
        let mut stream = Vec::new();
        for (command, body) in &frames {
            stream.extend_from_slice(&encode_frame(*command, body));
        }
        let step = |buf: &[u8]| frame_step(buf, max_frame);

        let whole = decode_chunks(&[&stream[..]], step);
        prop_assert_eq!(&whole, &Ok((frames.clone(), Vec::new())));
        let split = decode_chunks(&split_at(&stream, &cuts), step);
        prop_assert_eq!(&split, &whole);
        let trickled = decode_chunks(&bytes_one_at_a_time(&stream), step);
        prop_assert_eq!(&trickled, &whole);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Arbitrary bytes: no panic, bounded buffering, refusal at the first bad byte.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// For every prefix of arbitrary bytes, `line::decode` answers as docs/PROTOCOL.md's
    /// framing rules say: the first line (through its `\n`, minus one `\r`), `Incomplete`
    /// while at most `max_line + 1` bytes are buffered, or `LineTooLong`; and once it refuses,
    /// more bytes never make the line acceptable.
    #[test]
    fn line_decode_of_any_bytes_follows_the_framing_rules_and_holds_at_most_max_line_plus_one(
        buf in prop::collection::vec(soup_byte(), 0..48),
        max_line in small_or_default_max_line(),
    ) {
        let mut refused = false;
        for end in 0..=buf.len() {
            let prefix = &buf[..end];
            prop_assert_eq!(line_step(prefix, max_line), spec_decode_line(prefix, max_line));
            match line::decode(prefix, max_line) {
                Ok(Decoded::Complete { request, consumed }) => {
                    prop_assert!(!refused, "accepted {prefix:?} after refusing a prefix");
                    prop_assert!((1..=prefix.len()).contains(&consumed));
                    prop_assert_eq!(prefix[consumed - 1], b'\n');
                    prop_assert!(!prefix[..consumed - 1].contains(&b'\n'));
                    prop_assert_eq!(request, &line_content(&prefix[..consumed - 1], b"\n")[..]);
                    prop_assert!(request.len() <= max_line);
                }
                Ok(Decoded::Incomplete) => {
                    prop_assert!(!refused, "waiting on {prefix:?} after refusing a prefix");
                    prop_assert!(!prefix.contains(&b'\n'));
                    prop_assert!(prefix.len() <= max_line.saturating_add(1), "{prefix:?}");
                    if prefix.len() == max_line.saturating_add(1) {
                        // Only a '\r' that may start "\r\n" is worth waiting on.
                        prop_assert_eq!(prefix.last(), Some(&b'\r'));
                    }
                }
                Err(error) => {
                    prop_assert_eq!(error, ProtocolError::LineTooLong { max: max_line });
                    refused = true;
                }
            }
        }
    }

    /// For every prefix of bytes that are often a frame, `frame::decode` refuses exactly when
    /// the first bad byte (magic's second byte, version, command, last length byte) is present,
    /// never waits on a header announcing more than `max_frame`, and otherwise gives the frame
    /// once its last body byte is buffered.
    #[test]
    fn frame_decode_refuses_at_the_first_bad_byte_and_never_before(
        buf in frame_soup(),
        max_frame in small_or_default_max_frame(),
    ) {
        let bad = first_bad_byte(&buf, max_frame);
        for end in 0..=buf.len() {
            let prefix = &buf[..end];
            let decoded = frame::decode(prefix, max_frame);
            match bad {
                Some((at, error)) if end >= at => {
                    prop_assert_eq!(decoded, Err(error), "{:02x?}", prefix);
                    continue;
                }
                _ => prop_assert!(decoded.is_ok(), "{:02x?}: {:?}", prefix, decoded),
            }
            match decoded {
                Ok(Decoded::Complete { request, consumed }) => {
                    let len = declared_len(prefix).expect("a complete frame has a header");
                    prop_assert!((1..=prefix.len()).contains(&consumed));
                    prop_assert_eq!(consumed, HEADER_LEN + len as usize);
                    prop_assert_eq!(request.command as u8, prefix[3]);
                    prop_assert_eq!(request.body, &prefix[HEADER_LEN..consumed]);
                }
                Ok(Decoded::Incomplete) => {
                    if let Some(len) = declared_len(prefix) {
                        prop_assert!(len <= max_frame, "waiting on {len} > {max_frame}");
                        prop_assert!(prefix.len() < HEADER_LEN + len as usize);
                    }
                }
                Err(_) => unreachable!("checked above"),
            }
        }
    }

    /// `line::parse` of any bytes never panics and names the command docs/PROTOCOL.md's
    /// table gives.
    #[test]
    fn parse_of_any_line_matches_the_command_table(
        line in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            prop::collection::vec(soup_byte(), 0..24),
            verb_line(),
        ],
    ) {
        prop_assert_eq!(line::parse(&line), spec_parse(&line));
    }

    /// Whatever reaches `parse` after `decode` (so a bounded, `\n`-free line), and however
    /// many requests the buffer holds, the pair never panics and consumes the whole buffer or
    /// stops at an incomplete line or an error.
    #[test]
    fn decode_then_parse_of_any_stream_never_panics(
        buf in prop::collection::vec(soup_byte(), 0..96),
        max_line in small_or_default_max_line(),
    ) {
        let mut rest = &buf[..];
        while let Ok(Decoded::Complete { request, consumed }) = line::decode(rest, max_line) {
            let _ = line::parse(request);
            prop_assert!((1..=rest.len()).contains(&consumed));
            rest = &rest[consumed..];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Verbs.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `PiNg`, `qUIT`, `stats`, `HeLLo x`, `sAy x` parse as their upper-case forms.
    #[test]
    fn verbs_are_case_insensitive(
        verb in prop::sample::select(&VERBS[..]),
        mask in prop::collection::vec(any::<bool>(), 5),
        args in prop::option::of(prop::collection::vec(
            prop_oneof![content_byte(), prop::sample::select(&b"abcXYZ019_-"[..])],
            0..12,
        )),
    ) {
        let mut upper = verb.to_vec();
        if let Some(args) = &args {
            upper.push(b' ');
            upper.extend_from_slice(args);
        }
        let mut mixed = mix_case(verb, &mask);
        mixed.extend_from_slice(&upper[verb.len()..]);
        let (want, got) = (line::parse(&upper), line::parse(&mixed));
        prop_assert!(!matches!(want, Command::Echo(_)), "{upper:?} is a command");
        // Ping's suffix and Hello's/Say's argument point into different lines: compare bytes.
        prop_assert_eq!(format!("{want:?}"), format!("{got:?}"));
    }

    /// A line whose first word (the bytes before the first space) is not a verb in any case,
    /// of any length, including empty, a verb's prefix, or a verb with more letters, is text
    /// to echo.
    #[test]
    fn a_line_whose_first_word_is_no_verb_is_echoed(
        word in prop_oneof![
            prop::collection::vec(any::<u8>().prop_filter("a word", |&b| b != b' '), 0..10),
            (
                prop::sample::select(&VERBS[..]),
                prop::collection::vec(any::<bool>(), 5),
                prop::collection::vec(any::<u8>().prop_filter("a word", |&b| b != b' '), 1..4),
            )
                .prop_map(|(verb, mask, extra)| {
                    let mut word = mix_case(verb, &mask);
                    word.extend_from_slice(&extra);
                    word
                }),
            (prop::sample::select(&VERBS[..]), any::<Index>())
                .prop_map(|(verb, cut)| verb[..cut.index(verb.len())].to_vec()),
        ]
        .prop_filter("not a verb", |word| !is_verb(word)),
        rest in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    ) {
        let mut line = word;
        if let Some(rest) = rest {
            line.push(b' ');
            line.extend_from_slice(&rest);
        }
        prop_assert_eq!(line::parse(&line), Command::Echo(&line));
    }

    /// `Ping { suffix }` is exactly the bytes after a four-byte `PING` (any case), and the
    /// suffix is empty or starts with the space that ends the verb.
    #[test]
    fn ping_suffix_is_everything_after_the_verb(
        line in prop_oneof![verb_line(), prop::collection::vec(soup_byte(), 0..16)],
    ) {
        if let Command::Ping { suffix } = line::parse(&line) {
            let verb = &line[..line.len() - suffix.len()];
            prop_assert!(verb.eq_ignore_ascii_case(b"PING"), "verb {verb:?}");
            prop_assert_eq!([verb, suffix].concat(), line.clone());
            prop_assert!(suffix.is_empty() || suffix[0] == b' ', "suffix {suffix:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Handler: replies do not depend on how the input was split.
// ---------------------------------------------------------------------------------------------

const HANDLER_LIMITS: Limits = Limits {
    max_line_bytes: 64,
    max_frame_bytes: 64,
};

/// Everything a line session's client (and its chat peers) would see.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    replies: Vec<u8>,
    /// Each `SAY`'s push line, in order.
    pushes: Vec<Vec<u8>>,
    /// `Quit` or `ProtocolError` if the session ended.
    ended_by: Option<Outcome>,
    stats: Stats,
}

/// Runs one line session over `chunks` the way the reactor's `execute` does: input appended to
/// a carry buffer, `process` called until it needs more input, a `SAY` broadcast before going
/// on, replies written out whenever they reach `out_limit`, nothing executed after a close.
fn serve_line_session(chunks: &[&[u8]], out_limit: usize) -> Transcript {
    let mut room = Room::default();
    let mut stats = Stats::default();
    // As with --users: every LOGIN goes to the verifier (and here fails).
    let logins = LoginRules {
        required: false,
        checked: true,
    };
    let mut session = Session::new(Protocol::Line, SessionId(1));
    let mut carry = Vec::new();
    let mut out = Buffer::new();
    let mut replies = Vec::new();
    let mut pushes = Vec::new();
    let mut ended_by = None;
    'reads: for chunk in chunks {
        carry.extend_from_slice(chunk);
        while !carry.is_empty() {
            let mut cx = Context {
                limits: HANDLER_LIMITS,
                room: &mut room,
                stats: &mut stats,
                logins,
            };
            let processed = process(&mut session, &carry, &mut out, out_limit, &mut cx);
            carry.drain(..processed.consumed);
            let over_limit = out.len() >= out_limit;
            replies.extend_from_slice(out.data());
            out.clear();
            match processed.outcome {
                Outcome::Continue if over_limit => {}
                Outcome::Continue => break,
                Outcome::Broadcast(message) => pushes.push(message.into_vec()),
                // As the reactor does once the workers answer; here every login fails.
                Outcome::Login(_) => {
                    if finish_login(&mut session, false, &mut out, &mut stats)
                        == Outcome::LoginFailures
                    {
                        replies.extend_from_slice(out.data());
                        ended_by = Some(Outcome::LoginFailures);
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A session of valid lines (PING, HELLO, SAY, STATS, QUIT, usage errors, echoes, with
    /// `\n` or `\r\n`) gets the same replies, pushes and counters whether its input arrives in
    /// one read, in arbitrary reads, or a byte at a time, and whatever the output limit.
    #[test]
    fn line_replies_do_not_depend_on_how_the_input_is_split(
        requests in prop::collection::vec((line_request(), line_ending()), 0..16),
        cuts in cuts(),
        out_limit in prop_oneof![1usize..=64, Just(usize::MAX)],
    ) {
        let mut input = Vec::new();
        for (request, ending) in &requests {
            input.extend_from_slice(request);
            input.extend_from_slice(ending);
        }
        let whole = serve_line_session(&[&input[..]], usize::MAX);

        // Every request up to the first QUIT is answered with exactly one line.
        let answered = requests
            .iter()
            .position(|(request, ending)| {
                spec_parse(&line_content(request, ending)) == Command::Quit
            })
            .map_or(requests.len(), |quit| quit + 1);
        let reply_lines = whole.replies.iter().filter(|&&b| b == b'\n').count();
        prop_assert_eq!(reply_lines, answered, "{:?}", String::from_utf8_lossy(&whole.replies));
        prop_assert_eq!(whole.stats.requests, answered as u64);
        prop_assert_eq!(whole.stats.protocol_errors, 0);

        let split = serve_line_session(&split_at(&input, &cuts), out_limit);
        prop_assert_eq!(&split, &whole);
        let trickled = serve_line_session(&bytes_one_at_a_time(&input), out_limit);
        prop_assert_eq!(&trickled, &whole);
    }
}
