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
//! - arbitrary bytes never panic, never make a codec hold more than one maximal request, are
//!   refused at the first byte that earns it, never earlier, never later, and decode the same
//!   however they are split;
//! - verbs are case-insensitive, a line whose first word is no verb is echoed, and `PING`'s
//!   suffix is everything after the verb;
//! - the handler's replies do not depend on how the input was split, and follow the protocol.
//!
//! The rules are written out once, in the shared model `tests/model/mod.rs` (`spec_decode_line`,
//! `spec_parse`, `frame_refused_at`, the reactor's `feed` and `serve`), which the fuzz targets
//! in fuzz/ use too: these properties and the fuzzers check the code against the same rules.
//!
//! Strategies are built from `prop::collection::vec`, `any::<u8>()` and `prop_oneof!` so that a
//! failure shrinks to a short input. Case counts are set per group so that the whole file runs
//! in a few seconds in a debug build.

mod model;

use proptest::prelude::*;
use proptest::sample::Index;

use model::{
    Decoding, Step, VERBS, assert_clear_error, check_transcript, declared_len, feed,
    frame_refused_at, line_content, line_refused_at, serve, spec_decode_line, spec_parse, step,
};
use tcp_reactor::config::{Config, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_LINE_BYTES};
use tcp_reactor::handler::{Limits, Protocol};
use tcp_reactor::protocol::frame::{self, Command as FrameCommand, HEADER_LEN, MAGIC};
use tcp_reactor::protocol::line::{self, Command};
use tcp_reactor::protocol::{Decoded, ProtocolError};

const ALL_FRAME_COMMANDS: [FrameCommand; 5] = [
    FrameCommand::Heartbeat,
    FrameCommand::Message,
    FrameCommand::Login,
    FrameCommand::LoginAck,
    FrameCommand::Error,
];

// ---------------------------------------------------------------------------------------------
// Helpers. The rules themselves, and the reactor's way of feeding a codec and driving a
// session, are the shared model (tests/model/mod.rs), which the fuzz targets use too.
// ---------------------------------------------------------------------------------------------

fn line_step(buf: &[u8], max_line: usize) -> Step<Vec<u8>> {
    step(line::decode(buf, max_line), <[u8]>::to_vec)
}

fn frame_step(buf: &[u8], max_frame: u32) -> Step<(FrameCommand, Vec<u8>)> {
    step(frame::decode(buf, max_frame), |request| {
        (request.command, request.body.to_vec())
    })
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

/// The request a generated line carries: `content`, then `ending` (`\n` or `\r\n`).
fn request_of(content: &[u8], ending: &[u8]) -> Vec<u8> {
    let line = [content, ending].concat();
    line_content(&line[..line.len() - 1]).to_vec()
}

/// A decoding with every request accepted and nothing left over.
fn all_of<T>(requests: Vec<T>) -> Decoding<T> {
    Decoding {
        requests,
        refused: None,
        held: 0,
    }
}

fn encode_frame(command: FrameCommand, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("generated bodies are small");
    let mut bytes = frame::encode_header(command, len).to_vec();
    bytes.extend_from_slice(body);
    bytes
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
    prop_oneof![4 => 0usize..=8, 1 => Just(DEFAULT_MAX_LINE_BYTES), 1 => Just(usize::MAX)]
}

fn small_or_default_max_frame() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..=40, 1 => Just(DEFAULT_MAX_FRAME_BYTES), 1 => Just(u32::MAX)]
}

/// The limits called "the server's defaults" here and in the fuzz targets are the ones it
/// starts with.
#[test]
fn the_default_limits_are_the_servers() {
    let config = Config::on_free_ports();
    assert_eq!(config.max_line_bytes, DEFAULT_MAX_LINE_BYTES);
    assert_eq!(config.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
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
            expected.push(request_of(content, ending));
        }
        let step = |buf: &[u8]| line_step(buf, max_line);

        let whole = feed(&[&stream[..]], step);
        prop_assert_eq!(&whole, &all_of(expected));
        let split = feed(&split_at(&stream, &cuts), step);
        prop_assert_eq!(&split, &whole);
        let trickled = feed(&bytes_one_at_a_time(&stream), step);
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

        let whole = feed(&[&stream[..]], step);
        prop_assert_eq!(&whole, &all_of(frames));
        let split = feed(&split_at(&stream, &cuts), step);
        prop_assert_eq!(&split, &whole);
        let trickled = feed(&bytes_one_at_a_time(&stream), step);
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
        let mut first_refused = None;
        for end in 0..=buf.len() {
            let prefix = &buf[..end];
            let decoded = line::decode(prefix, max_line);
            prop_assert_eq!(step(decoded, |r| r), spec_decode_line(prefix, max_line));
            match decoded {
                Ok(Decoded::Complete { request, consumed }) => {
                    prop_assert!(!refused, "accepted {prefix:?} after refusing a prefix");
                    prop_assert!((1..=prefix.len()).contains(&consumed));
                    prop_assert_eq!(prefix[consumed - 1], b'\n');
                    prop_assert!(!prefix[..consumed - 1].contains(&b'\n'));
                    prop_assert_eq!(request, line_content(&prefix[..consumed - 1]));
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
                    prop_assert_eq!(&error, &ProtocolError::LineTooLong { max: max_line });
                    assert_clear_error(&error);
                    refused = true;
                    first_refused = first_refused.or(Some(end));
                }
            }
        }
        // The model's shortest refused prefix is the one the decoder refused first.
        prop_assert_eq!(first_refused, line_refused_at(&buf, max_line));
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
        let bad = frame_refused_at(&buf, max_frame);
        for end in 0..=buf.len() {
            let prefix = &buf[..end];
            let decoded = frame::decode(prefix, max_frame);
            match bad {
                Some((at, error)) if end >= at => {
                    assert_clear_error(&error);
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

    /// Arbitrary bytes give the same requests and the same verdict however they are cut into
    /// reads, for both codecs (how much is held at a refusal depends on the cuts, so only
    /// without one is that compared too).
    #[test]
    fn any_bytes_decode_the_same_however_the_stream_is_split(
        lines in prop::collection::vec(soup_byte(), 0..96),
        frames in prop::collection::vec(frame_soup(), 0..4).prop_map(|parts| parts.concat()),
        max_line in small_or_default_max_line(),
        max_frame in small_or_default_max_frame(),
        cuts in cuts(),
    ) {
        let by_line = |buf: &[u8]| line_step(buf, max_line);
        let whole = feed(&[&lines[..]], by_line);
        whole.assert_same(&feed(&split_at(&lines, &cuts), by_line), "lines, cut");
        whole.assert_same(&feed(&bytes_one_at_a_time(&lines), by_line), "lines, trickled");

        let by_frame = |buf: &[u8]| frame_step(buf, max_frame);
        let whole = feed(&[&frames[..]], by_frame);
        whole.assert_same(&feed(&split_at(&frames, &cuts), by_frame), "frames, cut");
        whole.assert_same(&feed(&bytes_one_at_a_time(&frames), by_frame), "frames, trickled");
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
        let serve_line = |reads: &[&[u8]], out_limit| {
            serve(Protocol::Line, HANDLER_LIMITS, reads, out_limit)
        };
        let whole = serve_line(&[&input[..]], usize::MAX);
        check_transcript(Protocol::Line, &whole);

        // Every request up to the first QUIT is answered with exactly one line.
        let answered = requests
            .iter()
            .position(|(request, ending)| {
                spec_parse(&request_of(request, ending)) == Command::Quit
            })
            .map_or(requests.len(), |quit| quit + 1);
        let reply_lines = whole.replies.iter().filter(|&&b| b == b'\n').count();
        prop_assert_eq!(reply_lines, answered, "{:?}", String::from_utf8_lossy(&whole.replies));
        prop_assert_eq!(whole.stats.requests, answered as u64);
        prop_assert_eq!(whole.stats.protocol_errors, 0);

        let split = serve_line(&split_at(&input, &cuts), out_limit);
        prop_assert_eq!(&split, &whole);
        let trickled = serve_line(&bytes_one_at_a_time(&input), out_limit);
        prop_assert_eq!(&trickled, &whole);
    }
}
