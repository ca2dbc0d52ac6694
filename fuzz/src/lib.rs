//! What the fuzz targets share: how one fuzzer input is read, how bytes are fed to a codec the
//! way the reactor feeds it, and the protocol rules written out plainly to check against.
//!
//! # Input layout
//!
//! Every target reads its input the same way, so that a seed or a crash file means the same
//! thing to all of them:
//!
//! ```text
//! byte 0           limits: see max_line() and max_frame()
//! byte 1           a target's own option (the handler: protocol and output limit)
//! byte 2           N = byte % 16, the number of cut positions
//! 2N bytes         N cut positions, u16 little-endian, each taken modulo len(stream) + 1
//! the rest         the stream: the bytes the peer sends, cut into reads at those positions
//! ```
//!
//! Inputs shorter than the three control bytes and the cuts are ignored. Most of an input is
//! the stream itself, so the dictionary's verbs and frame magic land where they matter, and a
//! crash file read from byte `3 + 2N` on is the exact traffic that caused it.
//!
//! # What is compared
//!
//! Each target decodes the stream three ways: in one read, in the reads the cuts give, and one
//! byte per read (the last only for streams of at most [`TRICKLE_MAX`] bytes, to keep the
//! quadratic line scan cheap), and asserts that all three give the same requests and the same
//! verdict. The per-step checks (what a `Complete`, an `Incomplete` and an error must look
//! like) live in the targets.

use tcp_reactor::protocol::frame::{HEADER_LEN, MAGIC, VERSION};
use tcp_reactor::protocol::{Decoded, ProtocolError};

/// The server's defaults (`--max-line`, `--max-frame`).
pub const DEFAULT_MAX_LINE: usize = 65536;
pub const DEFAULT_MAX_FRAME: u32 = 10_485_760;

/// The longest stream also fed one byte per read.
pub const TRICKLE_MAX: usize = 1024;

/// Most cut positions an input can carry (the count is a byte modulo this).
const MAX_CUTS: usize = 16;

/// One fuzzer input, read as described in the module docs.
#[derive(Debug)]
pub struct Input<'a> {
    limits: u8,
    pub option: u8,
    /// Read boundaries inside `stream`: sorted, distinct, always starting at 0 and ending at
    /// `stream.len()`, so no read is empty.
    boundaries: Vec<usize>,
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads an input; `None` when it is too short to hold its own control bytes.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&[limits, option, count], rest) = data.split_first_chunk::<3>()?;
        let count = usize::from(count) % MAX_CUTS;
        let (cuts, stream) = rest.split_at_checked(2 * count)?;
        let mut boundaries: Vec<usize> = cuts
            .chunks_exact(2)
            .map(|pair| usize::from(u16::from_le_bytes([pair[0], pair[1]])) % (stream.len() + 1))
            .collect();
        boundaries.extend([0, stream.len()]);
        boundaries.sort_unstable();
        boundaries.dedup();
        Some(Input {
            limits,
            option,
            boundaries,
            stream,
        })
    }

    /// `--max-line` for this input: mostly tiny limits (0..=63) so that refusals are
    /// reachable, sometimes the server's default or no limit at all.
    pub fn max_line(&self) -> usize {
        match self.limits % 4 {
            0 => DEFAULT_MAX_LINE,
            1 => usize::MAX,
            _ => usize::from(self.limits >> 2),
        }
    }

    /// `--max-frame` for this input, chosen like [`Input::max_line`].
    pub fn max_frame(&self) -> u32 {
        match self.limits % 4 {
            0 => DEFAULT_MAX_FRAME,
            1 => u32::MAX,
            _ => u32::from(self.limits >> 2),
        }
    }

    /// The stream as the fuzzer cut it into reads (at least one read, possibly empty).
    pub fn reads(&self) -> Vec<&'a [u8]> {
        let reads: Vec<&[u8]> = self
            .boundaries
            .windows(2)
            .map(|w| &self.stream[w[0]..w[1]])
            .collect();
        if reads.is_empty() {
            vec![self.stream]
        } else {
            reads
        }
    }

    /// The ways to cut the stream every target compares: one read, the fuzzer's reads, and
    /// (for short streams) one byte per read.
    pub fn splits(&self) -> Vec<(&'static str, Vec<&'a [u8]>)> {
        let mut splits = vec![("whole", vec![self.stream]), ("cut", self.reads())];
        if self.stream.len() <= TRICKLE_MAX {
            splits.push(("trickle", self.stream.chunks(1).collect()));
        }
        splits
    }
}

/// One decode step on the bytes held so far: a request (copied out) and the bytes it used,
/// `None` for "read more", or the peer's error.
pub type Step<T> = Result<Option<(T, usize)>, ProtocolError>;

/// Converts a codec's answer into a [`Step`], copying the request out of the buffer.
pub fn step<R, T>(decoded: Result<Decoded<R>, ProtocolError>, own: impl FnOnce(R) -> T) -> Step<T> {
    decoded.map(|decoded| match decoded {
        Decoded::Complete { request, consumed } => Some((own(request), consumed)),
        Decoded::Incomplete => None,
    })
}

/// What a connection's decoder made of a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoding<T> {
    pub requests: Vec<T>,
    /// The error that ended the connection, if any. Nothing is decoded after it.
    pub refused: Option<ProtocolError>,
    /// Bytes held when the stream ended (or, after a refusal, when the refusal came): the
    /// start of an incomplete request, or the request that was refused.
    pub held: usize,
}

impl<T: PartialEq + std::fmt::Debug> Decoding<T> {
    /// Asserts that two decodings of the same stream agree on everything a client can see:
    /// the requests, the verdict, and (with no refusal) the bytes still held. How much was
    /// held at a refusal depends on where the reads were cut, so it is not compared.
    pub fn assert_same(&self, other: &Self, what: &str) {
        assert_eq!(self.requests, other.requests, "requests differ: {what}");
        assert_eq!(self.refused, other.refused, "verdict differs: {what}");
        if self.refused.is_none() {
            assert_eq!(self.held, other.held, "bytes held differ: {what}");
        }
    }
}

/// Feeds `reads` as the reactor does: each read is appended to a carry buffer, then `step` is
/// called on the carry buffer until it asks for more, consuming each request's bytes. `step`
/// sees the whole carry buffer, so it can check its answer against it.
pub fn feed<T>(reads: &[&[u8]], mut step: impl FnMut(&[u8]) -> Step<T>) -> Decoding<T> {
    let mut carry = Vec::new();
    let mut requests = Vec::new();
    for read in reads {
        carry.extend_from_slice(read);
        loop {
            match step(&carry) {
                Ok(Some((request, consumed))) => {
                    assert!(
                        (1..=carry.len()).contains(&consumed),
                        "consumed {consumed} of {} held bytes",
                        carry.len()
                    );
                    requests.push(request);
                    carry.drain(..consumed);
                }
                Ok(None) => break,
                Err(error) => {
                    return Decoding {
                        requests,
                        refused: Some(error),
                        held: carry.len(),
                    };
                }
            }
        }
    }
    Decoding {
        requests,
        refused: None,
        held: carry.len(),
    }
}

/// Asserts that an error's client-facing text is fit to send: it goes out as `ERR <text>\n`
/// or as an Error frame's body, so it must be non-empty printable ASCII with no line break.
pub fn assert_clear_error(error: &ProtocolError) {
    let text = error.to_string();
    assert!(!text.is_empty(), "{error:?} has no text");
    assert!(
        text.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        "{error:?} text {text:?} is not one printable line"
    );
}

/// docs/PROTOCOL.md's line framing, as the length of the shortest prefix of `held` that
/// must be refused with `LineTooLong`, if any: one whose `\n` ends content (minus one `\r`)
/// over `max_line` bytes, or with no `\n` yet, `max_line + 1` bytes not ending in `\r`, or
/// `max_line + 2` bytes.
///
/// Only prefixes of up to `max_line + 2` bytes are tried: a line is refused by then or fits
/// (docs/PROTOCOL.md: the server never holds more of one line). A decoder that refused later
/// would find no prefix here to agree with it, so the bound is checked, not assumed.
pub fn line_refused_at(held: &[u8], max_line: usize) -> Option<usize> {
    let tried = held.len().min(max_line.saturating_add(2));
    let newline = held[..tried].iter().position(|&b| b == b'\n');
    (1..=tried).find(|&k| match newline {
        Some(newline) if newline < k => {
            let content = &held[..newline];
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            content.len() > max_line
        }
        _ => {
            let over_by = k.saturating_sub(max_line);
            over_by >= 2 || (over_by == 1 && held[k - 1] != b'\r')
        }
    })
}

/// docs/PROTOCOL.md's frame validation table: the length of the prefix of `held` whose last
/// byte is the first bad one, and the error it earns.
pub fn frame_refused_at(held: &[u8], max_frame: u32) -> Option<(usize, ProtocolError)> {
    if let [hi, lo, ..] = *held {
        let magic = u16::from_be_bytes([hi, lo]);
        if magic != MAGIC {
            return Some((2, ProtocolError::BadMagic(magic)));
        }
    }
    if let Some(&version) = held.get(2)
        && version != VERSION
    {
        return Some((3, ProtocolError::UnsupportedVersion(version)));
    }
    if let Some(&command) = held.get(3)
        && command > 4
    {
        return Some((4, ProtocolError::UnknownCommand(command)));
    }
    if let Some(len) = declared_len(held)
        && len > max_frame
    {
        let error = ProtocolError::FrameTooLarge {
            len,
            max: max_frame,
        };
        return Some((HEADER_LEN, error));
    }
    None
}

/// The body length a frame header announces, once all 8 header bytes are held.
pub fn declared_len(held: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = held.get(4..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}
