//! Why a run failed, as the one message the user reads, and how a frame body is shown.
//!
//! [`ClientError`]'s `Display` is the stderr line `tcp-client: ...` (or, for an Error frame,
//! the server's own words, `Error <reason>`). The body display lives here too because an
//! Error frame's reason is shown exactly as a reply's body is: UTF-8 as text, anything else as
//! `0x` and lowercase hex, so a body is never printed as invalid text.
//!
//! # Invariants
//!
//! - One variant for each failure a user can tell apart and act on; an IO error that is a
//!   reset or a TLS error inside an IO error is lifted into its own variant by `io_error`,
//!   never shown as a bare `InvalidData`.
//! - The messages are part of the tool's interface (tests compare them byte for byte).

use std::fmt::{self, Write as _};
use std::io;
use std::time::Duration;

use crate::protocol::ProtocolError;
use crate::protocol::frame::Command;

use super::tls::{TlsError, rustls_error};

/// Why a run failed. `Display` is the message shown on stderr.
#[derive(Debug)]
pub enum ClientError {
    /// `HOST:PORT` did not resolve to any address.
    Resolve { addr: String, source: io::Error },
    /// No connection could be made (refused, unreachable, timed out).
    Connect { addr: String, source: io::Error },
    /// The server reset the connection.
    Reset,
    /// Any other IO failure, with what was being done.
    Io {
        doing: &'static str,
        source: io::Error,
    },
    /// No whole reply frame within `--timeout`.
    Timeout { timeout: Duration, received: usize },
    /// The server closed the connection before a whole reply frame.
    ClosedEarly { received: usize },
    /// The reply is not a frame.
    BadReply(ProtocolError),
    /// The server answered with an Error frame; its body is the reason.
    ErrorFrame(Vec<u8>),
    /// A request body of more than `u32::MAX` bytes cannot be framed.
    BodyTooLarge(usize),
    /// The TLS settings could not be made (a bad `--ca` file).
    TlsSetup(TlsError),
    /// The TLS handshake failed: the certificate did not verify, the server sent an alert,
    /// or a protocol error.
    Handshake { addr: String, source: rustls::Error },
    /// The server closed the connection before the TLS handshake was done.
    HandshakeClosed { addr: String },
    /// The TLS handshake was not done within the time allowed.
    HandshakeTimeout { timeout: Duration },
    /// A TLS error after the handshake (a bad record, an alert from the server).
    Tls(rustls::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { addr, source } => write!(f, "cannot resolve {addr}: {source}"),
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Reset => f.write_str("connection reset by the server"),
            ClientError::Io { doing, source } => write!(f, "{doing}: {source}"),
            ClientError::Timeout { timeout, received } => write!(
                f,
                "no reply frame within {timeout:?} ({received} bytes received)"
            ),
            ClientError::ClosedEarly { received: 0 } => {
                f.write_str("the server closed the connection without replying")
            }
            ClientError::ClosedEarly { received } => write!(
                f,
                "the server closed the connection after {received} bytes, before a whole frame"
            ),
            ClientError::BadReply(e) => write!(f, "bad reply: {e}"),
            ClientError::ErrorFrame(reason) => write!(f, "Error {}", show_body(reason)),
            ClientError::BodyTooLarge(len) => {
                write!(
                    f,
                    "a {len}-byte body does not fit a frame (max {})",
                    u32::MAX
                )
            }
            ClientError::TlsSetup(e) => write!(f, "{e}"),
            ClientError::Handshake { addr, source } => {
                write!(f, "TLS handshake with {addr} failed: {source}")
            }
            ClientError::HandshakeClosed { addr } => write!(
                f,
                "{addr} closed the connection during the TLS handshake (is it a TLS listener?)"
            ),
            ClientError::HandshakeTimeout { timeout } => {
                write!(f, "no TLS handshake within {timeout:?}")
            }
            ClientError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve { source, .. }
            | ClientError::Connect { source, .. }
            | ClientError::Io { source, .. } => Some(source),
            ClientError::BadReply(e) => Some(e),
            ClientError::TlsSetup(e) => Some(e),
            ClientError::Handshake { source: e, .. } | ClientError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

/// An IO error while talking to the server: a reset gets its own message, and so does a
/// TLS error (which rustls hands over inside an `InvalidData` IO error).
pub(super) fn io_error(doing: &'static str, source: io::Error) -> ClientError {
    if let Some(e) = rustls_error(&source) {
        ClientError::Tls(e.clone())
    } else if source.kind() == io::ErrorKind::ConnectionReset {
        ClientError::Reset
    } else {
        ClientError::Io { doing, source }
    }
}

/// A reply as printed: `Heartbeat`, `Message Server says: hi`, `LoginAck OK`.
#[must_use]
pub fn show_reply(command: Command, body: &[u8]) -> String {
    if body.is_empty() {
        command.name().to_string()
    } else {
        format!("{} {}", command.name(), show_body(body))
    }
}

/// A body as text when it is UTF-8, else `0x` and lowercase hex.
#[must_use]
pub fn show_body(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let mut hex = String::with_capacity(2 + 2 * body.len());
            hex.push_str("0x");
            for byte in body {
                // Writing to a String cannot fail.
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_show_as_name_and_body() {
        let cases: &[(Command, &[u8], &str)] = &[
            (Command::Heartbeat, b"", "Heartbeat"),
            (Command::Heartbeat, b"ping", "Heartbeat ping"),
            (
                Command::Message,
                b"Server says: hi",
                "Message Server says: hi",
            ),
            (Command::LoginAck, b"OK", "LoginAck OK"),
            (Command::Message, b"caf\xc3\xa9", "Message caf\u{e9}"),
            (
                Command::Message,
                b"Server says: \xff",
                "Message 0x53657276657220736179733a20ff",
            ),
            (Command::Heartbeat, b"\x00\x01\xab", "Heartbeat 0x0001ab"),
        ];
        for &(command, body, shown) in cases {
            assert_eq!(show_reply(command, body), shown, "{command:?} {body:02x?}");
        }
    }

    #[test]
    fn error_messages() {
        let cases: &[(ClientError, &str)] = &[
            (
                ClientError::ErrorFrame(b"frame too large: 5 bytes (max 4)".to_vec()),
                "Error frame too large: 5 bytes (max 4)",
            ),
            (ClientError::ErrorFrame(vec![0xfe]), "Error 0xfe"),
            (
                ClientError::Timeout {
                    timeout: Duration::from_millis(300),
                    received: 0,
                },
                "no reply frame within 300ms (0 bytes received)",
            ),
            (
                ClientError::ClosedEarly { received: 0 },
                "the server closed the connection without replying",
            ),
            (
                ClientError::ClosedEarly { received: 5 },
                "the server closed the connection after 5 bytes, before a whole frame",
            ),
            (
                ClientError::BadReply(ProtocolError::BadMagic(0x4552)),
                "bad reply: bad magic 0x4552",
            ),
            (ClientError::Reset, "connection reset by the server"),
            (
                ClientError::Handshake {
                    addr: "127.0.0.1:8443".into(),
                    source: rustls::Error::InvalidCertificate(
                        rustls::CertificateError::UnknownIssuer,
                    ),
                },
                "TLS handshake with 127.0.0.1:8443 failed: invalid peer certificate: \
                 UnknownIssuer",
            ),
            (
                ClientError::HandshakeTimeout {
                    timeout: Duration::from_millis(300),
                },
                "no TLS handshake within 300ms",
            ),
            (
                ClientError::HandshakeClosed { addr: "h:1".into() },
                "h:1 closed the connection during the TLS handshake (is it a TLS listener?)",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), *text, "{err:?}");
        }
    }
}
