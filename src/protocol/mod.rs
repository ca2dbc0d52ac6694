//! Wire protocols: the pure codecs that turn buffered bytes into requests.
//!
//! tcp-reactor speaks two protocols on two listeners:
//!
//! - [`line`](mod@line): newline-terminated text commands (`PING`, `HELLO alice`, `SAY hi`, ...),
//!   the descendant of the Go echo server on port 8080.
//! - [`frame`]: the 8-byte-header binary protocol of the Go program on port 8888,
//!   byte-compatible with it.
//!
//! Beside them, [`proxy`] reads a balancer's PROXY header and [`http`] the request head of a
//! metrics scrape, in the same shape.
//!
//! Both codecs share one shape, borrowed from httparse's `Status::{Complete, Partial}`:
//! `&[u8]` in, and out one of
//!
//! - `Ok(Decoded::Complete { request, consumed })`: one request, borrowing from the buffer,
//!   and how many bytes the caller must drop from the front before decoding the next one;
//! - `Ok(Decoded::Incomplete)`: the bytes so far are a valid prefix; read more and call again;
//! - `Err(ProtocolError)`: the peer broke the protocol; the error's `Display` text is the exact
//!   reason the client is told before the connection is closed.
//!
//! # Invariants
//!
//! - Pure: no IO, no clock, no global state. The same bytes always give the same answer, so
//!   every split point of every input is testable without a socket.
//! - No allocation and no formatting on the decode path; it runs once per request in the
//!   reactor's hot loop. Only `Display` of an error formats, and errors end a connection.
//! - Every limit is decided from a bounded prefix of the buffer, so a caller never has to
//!   buffer more than one maximal request (plus its terminator) to learn it is too large.
//!
//! # What the codecs refuse to do
//!
//! They do not read sockets, keep per-connection state, buffer bytes, build replies, or decide
//! which requests a client may send (the handler does). An `Incomplete` answer consumes
//! nothing: the caller keeps the bytes and calls again with more.

use std::fmt;

pub mod frame;
pub mod http;
pub mod line;
pub mod proxy;

/// Outcome of a decode attempt on the bytes buffered so far.
///
/// `Incomplete` is an expected outcome, not an error: TCP delivers a stream, and a request
/// may arrive split at any byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<R> {
    /// One whole request. `consumed` counts every byte it used, terminator included; the
    /// next request starts at `buf[consumed..]`.
    Complete { request: R, consumed: usize },
    /// The buffer holds a valid prefix of a request; nothing was consumed.
    Incomplete,
}

/// A peer broke the protocol. `Display` gives the exact client-facing reason
/// (sent as `ERR <reason>` on the line protocol, as an Error frame body on the frame protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A line's content is longer than `max` bytes: `line too long`.
    LineTooLong { max: usize },
    /// The first two bytes of a frame are not [`frame::MAGIC`]: `bad magic 0x1234`.
    BadMagic(u16),
    /// The version byte is not [`frame::VERSION`]: `unsupported version 2`.
    UnsupportedVersion(u8),
    /// The command byte names no [`frame::Command`]: `unknown command 9`.
    UnknownCommand(u8),
    /// The header announces a body over the limit:
    /// `frame too large: 20000000 bytes (max 10485760)`.
    FrameTooLarge { len: u32, max: u32 },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            // The limit is deliberately not shown: the line protocol's reply is fixed text.
            ProtocolError::LineTooLong { .. } => f.write_str("line too long"),
            ProtocolError::BadMagic(magic) => write!(f, "bad magic 0x{magic:04x}"),
            ProtocolError::UnsupportedVersion(version) => {
                write!(f, "unsupported version {version}")
            }
            ProtocolError::UnknownCommand(command) => write!(f, "unknown command {command}"),
            ProtocolError::FrameTooLarge { len, max } => {
                write!(f, "frame too large: {len} bytes (max {max})")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_gives_exact_client_text() {
        let cases: &[(ProtocolError, &str)] = &[
            (ProtocolError::LineTooLong { max: 65536 }, "line too long"),
            (ProtocolError::LineTooLong { max: 0 }, "line too long"),
            (ProtocolError::BadMagic(0x1234), "bad magic 0x1234"),
            (ProtocolError::BadMagic(0x00ab), "bad magic 0x00ab"),
            (ProtocolError::BadMagic(0xABCD), "bad magic 0xabcd"),
            (ProtocolError::BadMagic(0), "bad magic 0x0000"),
            (
                ProtocolError::UnsupportedVersion(2),
                "unsupported version 2",
            ),
            (
                ProtocolError::UnsupportedVersion(0),
                "unsupported version 0",
            ),
            (
                ProtocolError::UnsupportedVersion(255),
                "unsupported version 255",
            ),
            (ProtocolError::UnknownCommand(9), "unknown command 9"),
            (ProtocolError::UnknownCommand(5), "unknown command 5"),
            (
                ProtocolError::FrameTooLarge {
                    len: 20_000_000,
                    max: 10_485_760,
                },
                "frame too large: 20000000 bytes (max 10485760)",
            ),
            (
                ProtocolError::FrameTooLarge {
                    len: u32::MAX,
                    max: 16,
                },
                "frame too large: 4294967295 bytes (max 16)",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), *text, "{err:?}");
        }
    }

    #[test]
    fn is_a_std_error() {
        let err: Box<dyn std::error::Error> = Box::new(ProtocolError::UnknownCommand(9));
        assert_eq!(err.to_string(), "unknown command 9");
    }
}
