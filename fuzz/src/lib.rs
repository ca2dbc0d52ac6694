//! What the fuzz targets share: how one fuzzer input is read and cut into reads, and (from
//! [the rules](#the-rules)) how bytes are fed to a codec the way the reactor feeds it and the
//! protocol rules written out plainly to check against.
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
//!
//! # The rules
//!
//! What a codec or the handler must do (the framing rules, the command and validation
//! tables, the reactor's way of feeding a codec and driving a session) is the module
//! `model`, re-exported here. Its file is `tests/model/mod.rs` in the main crate, which the
//! property tests in `tests/codec_properties.rs` use too, so the two checks cannot drift
//! apart; that file says why it lives there.

use tcp_reactor::config::{DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_LINE_BYTES};

#[path = "../../tests/model/mod.rs"]
mod model;
pub use model::*;

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
            0 => DEFAULT_MAX_LINE_BYTES,
            1 => usize::MAX,
            _ => usize::from(self.limits >> 2),
        }
    }

    /// `--max-frame` for this input, chosen like [`Input::max_line`].
    pub fn max_frame(&self) -> u32 {
        match self.limits % 4 {
            0 => DEFAULT_MAX_FRAME_BYTES,
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
