//! The PROXY protocol header a load balancer puts in front of each connection it opens to us
//! (HAProxy's doc/proxy-protocol.txt): who the client really is, since our socket's peer is
//! the balancer.
//!
//! ```text
//! v1 (text, at most 107 bytes):  PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n
//!                                PROXY TCP6 2001:db8::7 2001:db8::1 51234 8080\r\n
//!                                PROXY UNKNOWN\r\n
//! v2 (binary):  \r\n\r\n\0\r\nQUIT\n  ver|cmd  fam|proto  len (u16, big-endian)  addresses  TLVs
//!               12-byte signature     0x21     0x11 TCP4   12 (TCP4), 36 (TCP6)  src dst sport dport
//! ```
//!
//! The parsing itself is the `ppp` crate's: it works on `&[u8]` and can say "incomplete". One
//! thing it gets wrong: a v1 line cut inside a port number is "invalid", where more bytes
//! would have made it valid. So a v1 line goes to it only once its CRLF has arrived, and
//! until then this module refuses, byte by byte, what cannot begin one. What this module
//! adds besides is the server's reading of a header, in the codecs' shape ([`Decoded`]):
//!
//! - **The source address, or none.** A v2 `PROXY` command over TCP4/TCP6 names the client. A
//!   v2 `LOCAL` command (HAProxy's health checks), a v2 header whose family is unspecified or a
//!   UNIX socket, and v1 `UNKNOWN` carry no client: the socket's own addresses stand.
//! - **Strictness.** TLVs are skipped, but their lengths must add up to the header's: one that
//!   runs past it, or bytes left over, make the header malformed. A v2 header that claims a
//!   datagram protocol on a stream connection is malformed. A v1 line with no CRLF within its
//!   107 bytes is malformed at once, not waited on.
//! - **Never a guess.** Bytes that cannot begin either version are an error from the first
//!   byte that rules both out; there is no falling back to treating them as a request.
//!
//! Pure, like the other codecs: no IO, and `Incomplete` consumes nothing.

use std::fmt;
use std::net::SocketAddr;

use ppp::{PartialResult, v1, v2};

use super::Decoded;

/// The longest header: a v2 header's 16 bytes and the largest length its u16 field can
/// declare. A v1 header is at most 107 bytes.
pub const MAX_HEADER_LEN: usize = 16 + u16::MAX as usize;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address, when the header names one; `None`: keep the socket's.
    pub source: Option<SocketAddr>,
    pub version: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Why the bytes are not a PROXY header. Never shown to the peer (it is closed without a
/// reply); logged at debug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError(String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

/// Reads a PROXY header from the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Decoded<ProxyHeader>, ProxyError> {
    match bytes.first() {
        None => Ok(Decoded::Incomplete),
        Some(b'P') => decode_v1(bytes),
        Some(b'\r') => decode_v2(bytes),
        Some(_) => Err(ProxyError("not a PROXY header".into())),
    }
}

/// The v1 signature, space included.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header, CRLF included.
const V1_MAX_LEN: usize = 107;

/// A v1 line is handed to `ppp` only once its CRLF is in: cut inside a port, `ppp` answers
/// "invalid port" where more bytes would have made it valid. Until then, what cannot begin
/// a header is refused at once: a wrong signature, a CR not followed by LF, a bare LF.
fn decode_v1(bytes: &[u8]) -> Result<Decoded<ProxyHeader>, ProxyError> {
    let signature = bytes.len().min(V1_PREFIX.len());
    if bytes[..signature] != V1_PREFIX[..signature] {
        return Err(ProxyError("not a PROXY header".into()));
    }
    let searched = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let line_len = match memchr::memchr2(b'\r', b'\n', searched) {
        Some(cr) if searched[cr] == b'\r' && cr + 2 > V1_MAX_LEN => {
            return Err(ProxyError("v1: no CRLF within 107 bytes".into()));
        }
        Some(cr) if searched[cr] == b'\r' && cr + 1 == bytes.len() => {
            return Ok(Decoded::Incomplete);
        }
        Some(cr) if searched[cr] == b'\r' && bytes[cr + 1] == b'\n' => cr + 2,
        Some(_) => return Err(ProxyError("v1: a CR or LF out of place".into())),
        None if bytes.len() >= V1_MAX_LEN => {
            return Err(ProxyError("v1: no CRLF within 107 bytes".into()));
        }
        None => return Ok(Decoded::Incomplete),
    };
    let header =
        v1::Header::try_from(&bytes[..line_len]).map_err(|e| ProxyError(format!("v1: {e}")))?;
    if header.header.len() != line_len {
        return Err(ProxyError("v1: malformed line".into()));
    }
    let source = match header.addresses {
        v1::Addresses::Tcp4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Tcp6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        v1::Addresses::Unknown => None,
    };
    Ok(Decoded::Complete {
        request: ProxyHeader {
            source,
            version: Version::V1,
        },
        consumed: line_len,
    })
}

fn decode_v2(bytes: &[u8]) -> Result<Decoded<ProxyHeader>, ProxyError> {
    let header = match v2::Header::try_from(bytes) {
        Err(e) if e.is_incomplete() => return Ok(Decoded::Incomplete),
        Err(e) => return Err(ProxyError(format!("v2: {e}"))),
        Ok(header) => header,
    };
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyError(format!("v2 TLVs: {e}")));
    }
    let source = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, _) if header.protocol == v2::Protocol::Datagram => {
            return Err(ProxyError(
                "v2: a datagram protocol named on a stream connection".into(),
            ));
        }
        (v2::Command::Proxy, v2::Addresses::IPv4(ip)) => {
            Some(SocketAddr::from((ip.source_address, ip.source_port)))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(ip)) => {
            Some(SocketAddr::from((ip.source_address, ip.source_port)))
        }
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    Ok(Decoded::Complete {
        request: ProxyHeader {
            source,
            version: Version::V2,
        },
        consumed: header.header.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A v2 header: `command` (0x20 LOCAL, 0x21 PROXY), `family` (0x11 TCP4, ...), then the
    /// address block and TLVs, whose length the header declares (`declared` overrides it).
    fn v2(command: u8, family: u8, body: &[u8], declared: Option<u16>) -> Vec<u8> {
        let mut bytes = SIGNATURE.to_vec();
        bytes.push(command);
        bytes.push(family);
        let len = declared.unwrap_or(body.len() as u16);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// TCP4 203.0.113.7:51234 -> 192.0.2.1:8080.
    fn tcp4_addresses() -> Vec<u8> {
        let mut body = vec![203, 0, 113, 7, 192, 0, 2, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&8080u16.to_be_bytes());
        body
    }

    fn complete(bytes: &[u8]) -> (ProxyHeader, usize) {
        match decode(bytes) {
            Ok(Decoded::Complete { request, consumed }) => (request, consumed),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn source(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn v1_headers_name_the_client_or_nobody() {
        let cases: &[(&[u8], Option<SocketAddr>)] = &[
            (
                b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n",
                source("203.0.113.7:51234"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 8080\r\n",
                source("[2001:db8::7]:51234"),
            ),
            (b"PROXY UNKNOWN\r\n", None),
            (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
        ];
        for &(bytes, expected) in cases {
            let (header, consumed) = complete(bytes);
            assert_eq!((header.source, header.version), (expected, Version::V1));
            assert_eq!(consumed, bytes.len());
        }
    }

    #[test]
    fn v2_headers_name_the_client_or_keep_the_socket() {
        let proxy = v2(0x21, 0x11, &tcp4_addresses(), None);
        assert_eq!(complete(&proxy).0.source, source("203.0.113.7:51234"));
        let mut six = Vec::new();
        six.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        six.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        six.extend_from_slice(&[0xc8, 0x22, 0x1f, 0x90]);
        assert_eq!(
            complete(&v2(0x21, 0x21, &six, None)).0.source,
            source("[2001:db8::7]:51234")
        );
        // LOCAL (a health check), with or without addresses; an unspecified family.
        assert_eq!(complete(&v2(0x20, 0x00, &[], None)).0.source, None);
        assert_eq!(
            complete(&v2(0x20, 0x11, &tcp4_addresses(), None)).0.source,
            None
        );
        assert_eq!(complete(&v2(0x21, 0x00, &[], None)).0.source, None);
    }

    #[test]
    fn v2_tlvs_are_skipped_when_their_lengths_add_up() {
        let mut body = tcp4_addresses();
        body.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // NOOP, 3 bytes
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN, 2 bytes
        let bytes = v2(0x21, 0x11, &body, None);
        let (header, consumed) = complete(&bytes);
        assert_eq!(header.source, source("203.0.113.7:51234"));
        assert_eq!(consumed, bytes.len());

        let mut past = tcp4_addresses();
        past.extend_from_slice(&[0x04, 0x00, 0x09, b'a']); // declares 9, has 1
        assert!(decode(&v2(0x21, 0x11, &past, None)).is_err());
        let mut leftover = tcp4_addresses();
        leftover.extend_from_slice(&[0x04, 0x00]); // shorter than a TLV header
        assert!(decode(&v2(0x21, 0x11, &leftover, None)).is_err());
    }

    #[test]
    fn bytes_after_the_header_are_not_consumed() {
        let mut bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\nPING\n".to_vec();
        assert_eq!(complete(&bytes).1, bytes.len() - 5);
        bytes = v2(0x21, 0x11, &tcp4_addresses(), None);
        let header_len = bytes.len();
        bytes.extend_from_slice(b"\x47\x4f\x01\x01\0\0\0\0");
        assert_eq!(complete(&bytes).1, header_len);
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let mut tlvs = tcp4_addresses();
        tlvs.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        let headers: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 8080\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 8080\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &tlvs, None),
            v2(0x20, 0x00, &[], None),
        ];
        for header in &headers {
            for cut in 0..header.len() {
                assert_eq!(
                    decode(&header[..cut]),
                    Ok(Decoded::Incomplete),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(header)
                );
            }
            assert_eq!(complete(header).1, header.len());
        }
    }

    #[test]
    fn what_is_not_a_header_is_an_error_not_a_wait() {
        let too_long = format!("PROXY TCP4 {}", "1".repeat(120));
        let cases: Vec<&[u8]> = vec![
            b"PING\n",
            b"GET / HTTP/1.1\r\n",
            b"\x47\x4f\x01\x01\0\0\0\0", // a frame header
            b"\x16\x03\x01\x02\x00",     // a TLS ClientHello
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            too_long.as_bytes(),
        ];
        for bytes in cases {
            assert!(
                decode(bytes).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bytes)
            );
        }
        // v2: a bad version, a bad command, a datagram, a length too short for its family.
        assert!(decode(&v2(0x11, 0x11, &tcp4_addresses(), None)).is_err());
        assert!(decode(&v2(0x2f, 0x11, &tcp4_addresses(), None)).is_err());
        assert!(decode(&v2(0x21, 0x12, &tcp4_addresses(), None)).is_err());
        assert!(decode(&v2(0x21, 0x11, &[0; 4], None)).is_err());
    }

    #[test]
    fn a_v1_line_without_its_crlf_in_107_bytes_is_malformed_at_once() {
        // 107 bytes, none of them CR: no more bytes could make it a header.
        let mut line = b"PROXY TCP6 ".to_vec();
        line.resize(107, b'1');
        assert!(decode(&line).is_err());
        assert_eq!(decode(&line[..106]), Ok(Decoded::Incomplete));
        // A CR as the 107th byte: its LF would be the 108th, one too many.
        line[106] = b'\r';
        assert!(decode(&line).is_err());
        // At 105 and 106 the CRLF fits: the longest header there can be.
        line[105] = b'\r';
        assert_eq!(decode(&line[..106]), Ok(Decoded::Incomplete));
    }
}
