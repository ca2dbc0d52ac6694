//! The frame protocol: an 8-byte binary header, then a body of announced length.
//!
//! This is the wire format of the Go program tcp-reactor descends from (its
//! `protocol/packet.go`, port 8888), kept byte-compatible with it: a Go client's frames decode
//! here, and frames encoded here decode there. The module exists so that the one place where
//! a peer's bytes are trusted to say how much memory to hold is small, pure and tested at every
//! split point.
//!
//! # Wire format
//!
//! All integers are big-endian ("network byte order", as Go's `binary.BigEndian`).
//!
//! ```text
//!  0       2       3       4               8
//!  +-------+-------+-------+---------------+----------- - -
//!  | magic |version|command| body length   | body ...
//!  | 0x474F|   1   |  u8   | u32 BE        | (body length bytes)
//!  +-------+-------+-------+---------------+----------- - -
//!    "GO"
//! ```
//!
//! # Commands
//!
//! The first three are Go's `CmdHeartbeat`, `CmdMessage`, `CmdLogin` (0, 1, 2 by `iota`);
//! `LoginAck` and `Error` are tcp-reactor's server-to-client replies.
//!
//! ```text
//! command   byte   header (hex)                  body       server's answer
//! Heartbeat    0   47 4F 01 00 <len: 4 bytes>    any        the identical frame back
//! Message      1   47 4F 01 01 <len: 4 bytes>    text B     Message "Server says: " + B
//! Login        2   47 4F 01 02 <len: 4 bytes>    user:pass  LoginAck "OK", or Error "invalid
//!                                                           credentials"; without --users any
//!                                                           body gets LoginAck "OK"
//! LoginAck     3   47 4F 01 03 00 00 00 02       "OK"       (server to client only)
//! Error        4   47 4F 01 04 <len: 4 bytes>    reason     (server to client; after a protocol
//!                                                           error the connection closes)
//! ```
//!
//! The Go client's bare heartbeat is the 8 bytes `47 4F 01 00 00 00 00 00`.
//!
//! # Validation
//!
//! Garbage is refused at its first bad byte, so a peer speaking the wrong protocol (say,
//! `GET / HTTP/1.1`) is told why after two bytes instead of hanging until a timeout:
//!
//! ```text
//! bytes buffered   check                              error
//! 2                magic == 0x474F                    BadMagic(magic)
//! 3                version == 1                       UnsupportedVersion(version)
//! 4                command <= 4                       UnknownCommand(command)
//! 8                body length <= max_frame_bytes     FrameTooLarge { len, max }
//! 8 + length       -                                  Complete
//! ```
//!
//! The length check uses the header alone, so the caller never buffers a body over the limit.
//! A body of exactly `max_frame_bytes` is accepted (as Go's `> 10MB` check).
//!
//! # Invariants
//!
//! Pure: no IO, no clock, no allocation and no formatting in [`decode`]; the [`Frame`] borrows
//! its body from the caller's buffer.
//!
//! # What it refuses to do
//!
//! It does not decide which commands a client may send: [`decode`] accepts all five, and the
//! handler answers a client's `LoginAck` or `Error` with an error. It does not look inside
//! bodies, and it does not encode bodies: [`encode_header`] gives the 8 header bytes, and the
//! caller appends the body to its own output buffer (no intermediate `Vec`).

use super::{Decoded, ProtocolError};

/// Bytes before the body: magic (2) + version (1) + command (1) + body length (4).
pub const HEADER_LEN: usize = 8;
/// `'G' 'O'` as a big-endian u16: the bytes `47 4F` open every frame.
pub const MAGIC: u16 = 0x474F;
/// The only version spoken (and the one the Go program sends).
pub const VERSION: u8 = 1;

/// Header field offsets. Multi-byte fields are ranges, single bytes are indexes
/// (smoltcp `wire/tcp.rs` style), so `buf[field::LENGTH]` reads as the wire diagram.
pub mod field {
    use std::ops::Range;

    /// u16 BE, always [`MAGIC`](super::MAGIC).
    pub const MAGIC: Range<usize> = 0..2;
    /// u8, always [`VERSION`](super::VERSION).
    pub const VERSION: usize = 2;
    /// u8, a [`Command`](super::Command).
    pub const COMMAND: usize = 3;
    /// u32 BE, the number of body bytes after the header.
    pub const LENGTH: Range<usize> = 4..8;
}

// The body length is a u32 added to HEADER_LEN as a usize; mio needs 32 bits anyway.
const _: () = assert!(usize::BITS >= 32);
const _: () = assert!(field::LENGTH.end == HEADER_LEN);

/// The command byte of a frame. Names match docs/PROTOCOL.md and the Go program.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Keep-alive; the server echoes the identical frame.
    Heartbeat = 0,
    /// Text; the server answers `Server says: ` + body.
    Message = 1,
    /// Login request; the server answers [`Command::LoginAck`].
    Login = 2,
    /// Server's answer to [`Command::Login`], body `OK`.
    LoginAck = 3,
    /// Server's error report; the body is the reason, and the connection then closes.
    Error = 4,
}

impl Command {
    /// The command a wire byte names, if any.
    #[must_use]
    pub const fn from_u8(byte: u8) -> Option<Command> {
        match byte {
            0 => Some(Command::Heartbeat),
            1 => Some(Command::Message),
            2 => Some(Command::Login),
            3 => Some(Command::LoginAck),
            4 => Some(Command::Error),
            _ => None,
        }
    }

    /// The protocol word, as used in replies like `unexpected command 3 (LoginAck)`.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Heartbeat => "Heartbeat",
            Command::Message => "Message",
            Command::Login => "Login",
            Command::LoginAck => "LoginAck",
            Command::Error => "Error",
        }
    }
}

/// One decoded frame; `body` borrows from the buffer given to [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub command: Command,
    pub body: &'a [u8],
}

/// Decodes the first frame in `buf`, refusing bad bytes as early as they are buffered (see
/// the module docs' validation table). A body of more than `max_frame_bytes` is refused from
/// the header alone. On `Complete`, `consumed` is `HEADER_LEN + body.len()`.
///
/// # Errors
///
/// [`ProtocolError::BadMagic`], [`ProtocolError::UnsupportedVersion`],
/// [`ProtocolError::UnknownCommand`] or [`ProtocolError::FrameTooLarge`], each as soon as the
/// offending header byte is buffered. The connection cannot recover: the stream has no
/// resynchronisation point.
pub fn decode(buf: &[u8], max_frame_bytes: u32) -> Result<Decoded<Frame<'_>>, ProtocolError> {
    let Some(&[magic_hi, magic_lo]) = buf.get(field::MAGIC) else {
        return Ok(Decoded::Incomplete);
    };
    let magic = u16::from_be_bytes([magic_hi, magic_lo]);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }

    let Some(&version) = buf.get(field::VERSION) else {
        return Ok(Decoded::Incomplete);
    };
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }

    let Some(&command_byte) = buf.get(field::COMMAND) else {
        return Ok(Decoded::Incomplete);
    };
    let Some(command) = Command::from_u8(command_byte) else {
        return Err(ProtocolError::UnknownCommand(command_byte));
    };

    let Some(&[l0, l1, l2, l3]) = buf.get(field::LENGTH) else {
        return Ok(Decoded::Incomplete);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: max_frame_bytes,
        });
    }

    // Lossless: usize has at least 32 bits (asserted above). Saturating so that a u32::MAX
    // length on a 32-bit target stays Incomplete instead of wrapping.
    let end = HEADER_LEN.saturating_add(len as usize);
    match buf.get(HEADER_LEN..end) {
        Some(body) => Ok(Decoded::Complete {
            request: Frame { command, body },
            consumed: end,
        }),
        None => Ok(Decoded::Incomplete),
    }
}

/// The 8 header bytes of a frame whose body is `body_len` bytes long; the caller writes the
/// body right after them.
#[must_use]
pub fn encode_header(command: Command, body_len: u32) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
    header[field::VERSION] = VERSION;
    header[field::COMMAND] = command as u8;
    header[field::LENGTH].copy_from_slice(&body_len.to_be_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's default limit, and Go's `1024*1024*10`.
    const MAX: u32 = 10_485_760;

    const ALL: [Command; 5] = [
        Command::Heartbeat,
        Command::Message,
        Command::Login,
        Command::LoginAck,
        Command::Error,
    ];

    fn frame(command: Command, body: &[u8]) -> Vec<u8> {
        let mut buf = encode_header(command, u32::try_from(body.len()).unwrap()).to_vec();
        buf.extend_from_slice(body);
        buf
    }

    fn complete(command: Command, body: &[u8]) -> Result<Decoded<Frame<'_>>, ProtocolError> {
        Ok(Decoded::Complete {
            request: Frame { command, body },
            consumed: HEADER_LEN + body.len(),
        })
    }

    #[test]
    fn go_client_heartbeat_bytes() {
        // What the Go client's hb.Encode(conn) writes: magic, version 1, command 0, length 0.
        let go: &[u8] = &[0x47, 0x4F, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(encode_header(Command::Heartbeat, 0), go);
        assert_eq!(decode(go, MAX), complete(Command::Heartbeat, b""));
    }

    #[test]
    fn go_client_message_bytes() {
        let go: &[u8] = b"\x47\x4F\x01\x01\x00\x00\x00\x10Hello TCP World!";
        assert_eq!(frame(Command::Message, b"Hello TCP World!"), go);
        assert_eq!(
            decode(go, MAX),
            complete(Command::Message, b"Hello TCP World!")
        );
    }

    #[test]
    fn header_layout() {
        let header = encode_header(Command::LoginAck, 0x0102_0304);
        assert_eq!(header, [0x47, 0x4F, 0x01, 0x03, 0x01, 0x02, 0x03, 0x04]);
        assert_eq!(&header[field::MAGIC], b"GO");
        assert_eq!(header[field::VERSION], VERSION);
        assert_eq!(header[field::COMMAND], Command::LoginAck as u8);
        assert_eq!(&header[field::LENGTH], &[1, 2, 3, 4]);
    }

    #[test]
    fn every_split_point_is_incomplete_until_the_last_byte() {
        let heartbeat_body: Vec<u8> = (0..16).collect();
        let cases: &[(Command, &[u8])] = &[
            (Command::Heartbeat, &heartbeat_body),
            (Command::Message, b"Hello TCP World!"),
            (Command::Message, b"hi"),
            (Command::Heartbeat, b""),
            (Command::Login, b"alice:secret"),
        ];
        for &(command, body) in cases {
            let input = frame(command, body);
            for split in 0..input.len() {
                assert_eq!(
                    decode(&input[..split], MAX),
                    Ok(Decoded::Incomplete),
                    "{command:?} {body:?} cut at {split}"
                );
            }
            assert_eq!(decode(&input, MAX), complete(command, body));
            // The next frame's first bytes behind it change nothing.
            let mut more = input.clone();
            more.extend_from_slice(&[0x47, 0x4F, 0x01]);
            assert_eq!(decode(&more, MAX), complete(command, body));
        }
    }

    #[test]
    fn many_frames_in_one_buffer() {
        let frames: &[(Command, &[u8])] = &[
            (Command::Heartbeat, b""),
            (Command::Message, b"one"),
            (Command::Login, b"alice"),
            (Command::Message, b""),
            (
                Command::Heartbeat,
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            ),
            (Command::LoginAck, b"OK"),
            (Command::Error, b"bad magic 0x1234"),
        ];
        let mut buf = Vec::new();
        for &(command, body) in frames {
            buf.extend_from_slice(&frame(command, body));
        }
        buf.extend_from_slice(&encode_header(Command::Message, 5)[..6]);

        let mut rest: &[u8] = &buf;
        let mut got = Vec::new();
        while let Decoded::Complete { request, consumed } = decode(rest, MAX).unwrap() {
            got.push((request.command, request.body));
            rest = &rest[consumed..];
        }
        assert_eq!(got, frames);
        assert_eq!(rest.len(), 6, "partial header left for the next read");
    }

    #[test]
    fn each_error_at_its_earliest_byte() {
        // (bytes up to and including the first bad one, error)
        let too_large: &[u8] = &[0x47, 0x4F, 0x01, 0x01, 0x01, 0x31, 0x2D, 0x00];
        let cases: &[(&[u8], ProtocolError)] = &[
            (&[0x12, 0x34], ProtocolError::BadMagic(0x1234)),
            (&[0x4F, 0x47], ProtocolError::BadMagic(0x4F47)),
            (&[0x47, 0x00], ProtocolError::BadMagic(0x4700)),
            (b"GE", ProtocolError::BadMagic(0x4745)),
            (&[0x00, 0x00], ProtocolError::BadMagic(0)),
            (&[0x47, 0x4F, 0x02], ProtocolError::UnsupportedVersion(2)),
            (&[0x47, 0x4F, 0x00], ProtocolError::UnsupportedVersion(0)),
            (&[0x47, 0x4F, 0xFF], ProtocolError::UnsupportedVersion(255)),
            (&[0x47, 0x4F, 0x01, 0x05], ProtocolError::UnknownCommand(5)),
            (&[0x47, 0x4F, 0x01, 0x09], ProtocolError::UnknownCommand(9)),
            (
                &[0x47, 0x4F, 0x01, 0xFF],
                ProtocolError::UnknownCommand(255),
            ),
            (
                too_large,
                ProtocolError::FrameTooLarge {
                    len: 20_000_000,
                    max: MAX,
                },
            ),
            (
                &[0x47, 0x4F, 0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF],
                ProtocolError::FrameTooLarge {
                    len: u32::MAX,
                    max: MAX,
                },
            ),
        ];
        for &(input, err) in cases {
            // One byte earlier the decoder cannot know yet...
            assert_eq!(
                decode(&input[..input.len() - 1], MAX),
                Ok(Decoded::Incomplete),
                "{input:02x?}"
            );
            // ...at the bad byte it refuses...
            assert_eq!(decode(input, MAX), Err(err), "{input:02x?}");
            // ...and whatever follows does not change the verdict.
            let mut more = input.to_vec();
            more.extend_from_slice(&[0x47, 0x4F, 0x01, 0x00, 0, 0, 0, 0]);
            assert_eq!(decode(&more, MAX), Err(err), "{input:02x?}+");
        }
        assert_eq!(
            ProtocolError::FrameTooLarge {
                len: 20_000_000,
                max: MAX
            }
            .to_string(),
            "frame too large: 20000000 bytes (max 10485760)"
        );
    }

    #[test]
    fn checks_run_in_wire_order() {
        // Several fields bad at once: the first bad field on the wire is reported.
        let cases: &[(&[u8], ProtocolError)] = &[
            (
                &[0x12, 0x34, 0x02, 0x09, 0xFF, 0xFF, 0xFF, 0xFF],
                ProtocolError::BadMagic(0x1234),
            ),
            (
                &[0x47, 0x4F, 0x02, 0x09, 0xFF, 0xFF, 0xFF, 0xFF],
                ProtocolError::UnsupportedVersion(2),
            ),
            (
                &[0x47, 0x4F, 0x01, 0x09, 0xFF, 0xFF, 0xFF, 0xFF],
                ProtocolError::UnknownCommand(9),
            ),
        ];
        for &(input, err) in cases {
            assert_eq!(decode(input, MAX), Err(err), "{input:02x?}");
        }
    }

    #[test]
    fn max_frame_bytes_at_max_and_max_plus_one() {
        // Small limit, whole frames.
        let body16 = [0xAB; 16];
        let at_max = frame(Command::Message, &body16);
        assert_eq!(decode(&at_max, 16), complete(Command::Message, &body16));
        assert_eq!(decode(&at_max[..HEADER_LEN], 16), Ok(Decoded::Incomplete));
        let over = frame(Command::Message, &[0xAB; 17]);
        let err = Err(ProtocolError::FrameTooLarge { len: 17, max: 16 });
        assert_eq!(decode(&over, 16), err);
        assert_eq!(decode(&over[..HEADER_LEN], 16), err);

        // The real limit, from the header alone (no 10 MiB buffer needed to refuse).
        let header: &[u8] = &encode_header(Command::Message, MAX);
        assert_eq!(decode(header, MAX), Ok(Decoded::Incomplete));
        let header: &[u8] = &encode_header(Command::Message, MAX + 1);
        assert_eq!(
            decode(header, MAX),
            Err(ProtocolError::FrameTooLarge {
                len: MAX + 1,
                max: MAX
            })
        );

        // Limit 0: only empty bodies.
        assert_eq!(
            decode(&frame(Command::Heartbeat, b""), 0),
            complete(Command::Heartbeat, b"")
        );
        assert_eq!(
            decode(&encode_header(Command::Heartbeat, 1), 0),
            Err(ProtocolError::FrameTooLarge { len: 1, max: 0 })
        );

        // The largest possible length with no limit does not overflow.
        let header: &[u8] = &encode_header(Command::Message, u32::MAX);
        assert_eq!(decode(header, u32::MAX), Ok(Decoded::Incomplete));
    }

    #[test]
    fn full_max_size_body_decodes() {
        let body = vec![7u8; MAX as usize];
        let input = frame(Command::Message, &body);
        assert_eq!(decode(&input, MAX), complete(Command::Message, &body));
        assert_eq!(
            decode(&input[..input.len() - 1], MAX),
            Ok(Decoded::Incomplete)
        );
    }

    #[test]
    fn empty_body_for_every_command() {
        for command in ALL {
            let input = encode_header(command, 0);
            assert_eq!(decode(&input, MAX), complete(command, b""), "{command:?}");
        }
    }

    #[test]
    fn round_trip_every_command() {
        let bodies: &[&[u8]] = &[b"", b"x", b"Server says: hi", &[0, 0xFF, b'\n', b'\r']];
        for command in ALL {
            for &body in bodies {
                let input = frame(command, body);
                assert_eq!(input.len(), HEADER_LEN + body.len());
                assert_eq!(decode(&input, MAX), complete(command, body), "{command:?}");
            }
        }
    }

    #[test]
    fn command_bytes_and_names() {
        let cases: &[(u8, Option<Command>, &str)] = &[
            (0, Some(Command::Heartbeat), "Heartbeat"),
            (1, Some(Command::Message), "Message"),
            (2, Some(Command::Login), "Login"),
            (3, Some(Command::LoginAck), "LoginAck"),
            (4, Some(Command::Error), "Error"),
            (5, None, ""),
            (9, None, ""),
            (255, None, ""),
        ];
        for &(byte, command, name) in cases {
            assert_eq!(Command::from_u8(byte), command, "{byte}");
            if let Some(command) = command {
                assert_eq!(command as u8, byte);
                assert_eq!(command.name(), name);
            }
        }
    }
}
