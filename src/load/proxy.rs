//! The PROXY protocol header (HAProxy `doc/proxy-protocol.txt`) that `--proxy-header v1|v2`
//! sends first on every connection, and the made-up source address it names.
//!
//! ```text
//! v1: PROXY TCP4 198.18.0.1 127.0.0.1 1024 7000\r\n          (TCP6 for IPv6; at most 107 bytes)
//! v2: \r\n\r\n\0\r\nQUIT\n  0x21  0x11|0x21  len(u16 BE)  src dst  sport dport
//!     (signature, version 2 | PROXY, TCP over IPv4 | IPv6, 12 | 36 address bytes; no TLVs)
//! ```
//!
//! The bytes are written here by hand rather than with `ppp::v2::Builder`: the format is a
//! few fixed fields, and a [`Header`] is a stack array, so a connect allocates nothing for it
//! and there is no error to handle. `ppp` (a dev-dependency) parses them back in the tests.
//!
//! # The source address (`--proxy-source` absent)
//!
//! Connection number `n` of the run (`n = g·C + j` for the `g`-th connect of connection
//! place `j`, `C` = `--connections`; so without `--requests-per-connection`, `n = j`) claims
//! to come from the benchmarking range 198.18.0.0/15 (RFC 2544) with the `.0` and `.255`
//! addresses skipped: its 512 × 254 = 130,048 hosts in order, address number `n mod 130,048`
//! (198.18.0.1, ..., 198.18.0.254, 198.18.1.1, ...), port `1024 + ⌊n / 130,048⌋ mod 64,512`,
//! so no two of the first 8.4 billion connections share address and port. To an IPv6
//! `--addr` (a header names one family) it comes from 2001:2::/48 (RFC 5180), address
//! `2001:2::` + `n + 1`, port 1024.
//!
//! `--proxy-source IP` names that address for every connection, port `1024 + n mod 64,512`;
//! `--proxy-source IP:PORT` names exactly that. A header names one family: if the source's
//! and the destination's differ, the IPv4 one is written IPv4-mapped (`::ffff:a.b.c.d`) in a
//! TCP6 header.
//!
//! # What it refuses to do
//!
//! No TLVs, no `LOCAL` command, no `UNKNOWN`/UDP/Unix families: tcp-load always speaks TCP
//! for a client it invents.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `--proxy-header`: which version of the PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// Text: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// Binary: 12-byte signature, version/command, family, length, addresses, ports.
    V2,
}

impl Version {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// `--proxy-source`: an address for every connection, with or without its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The port counts up per connection.
    Ip(IpAddr),
    /// Exactly this address and port.
    Socket(SocketAddr),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(ip) => ip.fmt(f),
            Source::Socket(socket) => socket.fmt(f),
        }
    }
}

/// Parses `--proxy-source`: `IP` or `IP:PORT` (IPv6 with a port in brackets, `[::1]:80`).
///
/// # Errors
///
/// The text is neither.
pub fn parse_source(text: &str) -> Result<Source, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Source::Ip(ip));
    }
    text.parse::<SocketAddr>()
        .map(Source::Socket)
        .map_err(|_| format!("`{text}` is not an IP address or IP:PORT"))
}

/// First port named: below it are the well-known ports, which no client connects from.
const FIRST_PORT: u16 = 1024;
/// Ports from [`FIRST_PORT`] to 65535.
const PORTS: u64 = 65_536 - FIRST_PORT as u64;
/// 198.18.0.0/15: 512 blocks of 256 addresses, of which `.1` to `.254` are used.
const V4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const V4_HOSTS_PER_BLOCK: u64 = 254;
const V4_HOSTS: u64 = 512 * V4_HOSTS_PER_BLOCK;
/// 2001:2::/48, the IPv6 benchmarking range.
const V6_BASE: u128 = 0x2001_0002_u128 << 96;

/// What every connection's header is made of: the version and, if given, `--proxy-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy {
    pub version: Version,
    pub source: Option<Source>,
}

impl Proxy {
    /// The source that connection number `n` claims (counted: of the family of `dst`).
    #[must_use]
    pub fn source(&self, n: u64, dst: SocketAddr) -> SocketAddr {
        let counted_port = |n: u64| FIRST_PORT + (n % PORTS) as u16;
        match (self.source, dst) {
            (Some(Source::Socket(socket)), _) => socket,
            (Some(Source::Ip(ip)), _) => SocketAddr::new(ip, counted_port(n)),
            (None, SocketAddr::V4(_)) => {
                let host = n % V4_HOSTS;
                let offset = (host / V4_HOSTS_PER_BLOCK) * 256 + host % V4_HOSTS_PER_BLOCK + 1;
                let ip = Ipv4Addr::from(V4_BASE + offset as u32);
                SocketAddr::new(ip.into(), counted_port(n / V4_HOSTS))
            }
            (None, SocketAddr::V6(_)) => {
                let ip = Ipv6Addr::from(V6_BASE + u128::from(n) + 1);
                SocketAddr::new(ip.into(), FIRST_PORT)
            }
        }
    }

    /// The header of connection number `n` to `dst`.
    #[must_use]
    pub fn header(&self, n: u64, dst: SocketAddr) -> Header {
        let src = self.source(n, dst);
        match self.version {
            Version::V1 => Header::v1(src, dst),
            Version::V2 => Header::v2(src, dst),
        }
    }

    /// The summary's words for it: `PROXY v2 header` and where from.
    #[must_use]
    pub fn describe(&self) -> String {
        match self.source {
            None => format!("PROXY {} header (sources counted)", self.version.name()),
            Some(source) => format!("PROXY {} header (source {source})", self.version.name()),
        }
    }
}

/// v1's longest header: `PROXY TCP6 ` + two 39-character addresses + two 5-digit ports +
/// 3 spaces + CRLF = 11 + 78 + 10 + 3 + 2 = 104; the spec allows 107 (its buffer size).
const MAX_BYTES: usize = 107;

/// v2's fixed fields (smoltcp-style named ranges), then the addresses.
mod field {
    use std::ops::Range;
    pub const SIGNATURE: Range<usize> = 0..12;
    pub const VERSION_COMMAND: usize = 12;
    pub const FAMILY: usize = 13;
    pub const LENGTH: Range<usize> = 14..16;
    pub const ADDRESSES: usize = 16;
}
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2 (high nibble), command PROXY (low nibble).
const V2_PROXY: u8 = 0x21;
/// Address family (high nibble: 1 INET, 2 INET6), transport (low nibble: 1 STREAM).
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// One connection's header bytes, on the stack.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; MAX_BYTES],
    len: usize,
}

impl Header {
    /// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, or TCP6.
    fn v1(src: SocketAddr, dst: SocketAddr) -> Header {
        let mut header = Header {
            bytes: [0; MAX_BYTES],
            len: 0,
        };
        let (family, src_ip, dst_ip) = match one_family(src.ip(), dst.ip()) {
            Family::V4(s, d) => ("TCP4", IpAddr::V4(s), IpAddr::V4(d)),
            Family::V6(s, d) => ("TCP6", IpAddr::V6(s), IpAddr::V6(d)),
        };
        let mut out = &mut header.bytes[..];
        // Fits: at most 104 bytes (MAX_BYTES's derivation), so the write cannot run out.
        let written = write!(
            out,
            "PROXY {family} {src_ip} {dst_ip} {} {}\r\n",
            src.port(),
            dst.port()
        );
        debug_assert!(written.is_ok(), "a v1 header is at most 104 bytes");
        header.len = MAX_BYTES - out.len();
        header
    }

    /// The binary header: signature, PROXY, TCP over IPv4 or IPv6 ([`one_family`]), the
    /// addresses and ports.
    fn v2(src: SocketAddr, dst: SocketAddr) -> Header {
        let mut bytes = [0; MAX_BYTES];
        bytes[field::SIGNATURE].copy_from_slice(SIGNATURE);
        bytes[field::VERSION_COMMAND] = V2_PROXY;
        let mut at = field::ADDRESSES;
        let mut put = |part: &[u8]| {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        };
        let family = match one_family(src.ip(), dst.ip()) {
            Family::V4(s, d) => {
                put(&s.octets());
                put(&d.octets());
                TCP4
            }
            Family::V6(s, d) => {
                put(&s.octets());
                put(&d.octets());
                TCP6
            }
        };
        put(&src.port().to_be_bytes());
        put(&dst.port().to_be_bytes());
        let length = (at - field::ADDRESSES) as u16;
        bytes[field::FAMILY] = family;
        bytes[field::LENGTH].copy_from_slice(&length.to_be_bytes());
        Header { bytes, len: at }
    }

    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A header's source and destination, of one family.
enum Family {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// Both IPv4, or else both IPv6: an IPv4 address beside an IPv6 one is IPv4-mapped.
fn one_family(src: IpAddr, dst: IpAddr) -> Family {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Family::V4(s, d),
        (s, d) => Family::V6(v6(s), v6(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::HeaderResult;

    const DST4: &str = "127.0.0.1:7000";
    const DST6: &str = "[::1]:7000";

    fn proxy(version: Version, source: Option<&str>) -> Proxy {
        Proxy {
            version,
            source: source.map(|text| parse_source(text).unwrap()),
        }
    }

    fn header(version: Version, source: Option<&str>, n: u64, dst: &str) -> Vec<u8> {
        proxy(version, source)
            .header(n, dst.parse().unwrap())
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn v1_headers_exact_bytes() {
        assert_eq!(
            header(Version::V1, None, 0, DST4),
            b"PROXY TCP4 198.18.0.1 127.0.0.1 1024 7000\r\n"
        );
        assert_eq!(
            header(Version::V1, None, 0, DST6),
            b"PROXY TCP6 2001:2::1 ::1 1024 7000\r\n"
        );
        assert_eq!(
            header(Version::V1, Some("[2001:db8::7]:4000"), 9, DST6),
            b"PROXY TCP6 2001:db8::7 ::1 4000 7000\r\n"
        );
        // The longest there is fits.
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let bytes = header(Version::V1, Some(long), 0, long);
        assert_eq!(bytes.len(), 104);
        assert!(bytes.ends_with(b" 65535 65535\r\n"));
    }

    #[test]
    fn v2_headers_exact_bytes() {
        let mut v4 = SIGNATURE.to_vec();
        v4.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 18, 0, 1, 127, 0, 0, 1, 4, 0, 0x1b, 0x58,
        ]);
        assert_eq!(header(Version::V2, None, 0, DST4), v4);

        let mut v6 = SIGNATURE.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0, 36]);
        v6.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[4, 0, 0x1b, 0x58]);
        assert_eq!(header(Version::V2, None, 0, DST6), v6);
        assert_eq!(v4.len(), 28);
        assert_eq!(v6.len(), 52);
    }

    /// Each header parses back with `ppp` to the addresses it was made from.
    #[test]
    fn headers_round_trip_through_ppp() {
        let cases = [
            (None, 0, DST4),
            (None, 130_047, DST4),
            (None, 5, DST6),
            (Some("10.1.2.3"), 3, DST4),
            (Some("10.1.2.3:5555"), 3, DST4),
            (Some("fd00::9"), 70_000, DST6),
        ];
        for version in [Version::V1, Version::V2] {
            for (source, n, dst) in cases {
                let p = proxy(version, source);
                let dst: SocketAddr = dst.parse().unwrap();
                let src = p.source(n, dst);
                let header = p.header(n, dst);
                let bytes = header.as_bytes();
                let context = format!("{version:?} {source:?} {n} {dst}");
                let (got_src, got_dst) = match HeaderResult::parse(bytes) {
                    HeaderResult::V1(Ok(h)) => {
                        assert_eq!(version, Version::V1, "{context}");
                        assert_eq!(h.header.len(), bytes.len(), "{context}");
                        match &h.addresses {
                            ppp::v1::Addresses::Tcp4(a) => v4(a),
                            ppp::v1::Addresses::Tcp6(a) => v6(a),
                            other => panic!("{context}: not TCP: {other:?}"),
                        }
                    }
                    HeaderResult::V2(Ok(h)) => {
                        assert_eq!(version, Version::V2, "{context}");
                        assert_eq!(h.len(), bytes.len(), "{context}");
                        assert_eq!(h.command, ppp::v2::Command::Proxy, "{context}");
                        assert_eq!(h.protocol, ppp::v2::Protocol::Stream, "{context}");
                        assert_eq!(h.tlvs().count(), 0, "{context}");
                        match &h.addresses {
                            ppp::v2::Addresses::IPv4(a) => v4(a),
                            ppp::v2::Addresses::IPv6(a) => v6(a),
                            other => panic!("{context}: not IP: {other:?}"),
                        }
                    }
                    other => panic!("{context}: {other:?}"),
                };
                assert_eq!((got_src, got_dst), (src, dst), "{context}");
            }
        }
    }

    fn v4(a: &ppp::v2::IPv4) -> (SocketAddr, SocketAddr) {
        let src = SocketAddr::new(a.source_address.into(), a.source_port);
        (
            src,
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )
    }

    fn v6(a: &ppp::v2::IPv6) -> (SocketAddr, SocketAddr) {
        let src = SocketAddr::new(a.source_address.into(), a.source_port);
        (
            src,
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )
    }

    #[test]
    fn counted_sources_skip_0_and_255_and_wrap_with_the_next_port() {
        let p = proxy(Version::V1, None);
        let dst: SocketAddr = DST4.parse().unwrap();
        let at = |n| p.source(n, dst).to_string();
        assert_eq!(at(0), "198.18.0.1:1024");
        assert_eq!(at(253), "198.18.0.254:1024");
        assert_eq!(at(254), "198.18.1.1:1024");
        assert_eq!(at(130_047), "198.19.255.254:1024");
        assert_eq!(at(130_048), "198.18.0.1:1025");
        let distinct: std::collections::HashSet<_> = (0..200_000).map(at).collect();
        assert_eq!(distinct.len(), 200_000);
        // A fixed IP counts its port; IP:PORT is taken as it is.
        let fixed = proxy(Version::V2, Some("10.0.0.9"));
        assert_eq!(fixed.source(0, dst).to_string(), "10.0.0.9:1024");
        assert_eq!(fixed.source(64_512, dst).to_string(), "10.0.0.9:1024");
        assert_eq!(fixed.source(64_513, dst).to_string(), "10.0.0.9:1025");
        let exact = proxy(Version::V2, Some("10.0.0.9:77"));
        assert_eq!(exact.source(5, dst).to_string(), "10.0.0.9:77");
    }

    #[test]
    fn mixed_families_are_one_family_ipv4_mapped() {
        assert_eq!(
            header(Version::V1, Some("10.0.0.1:5"), 0, DST6),
            b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5 7000\r\n"
        );
        assert_eq!(
            header(Version::V1, Some("[fd00::1]:5"), 0, DST4),
            b"PROXY TCP6 fd00::1 ::ffff:127.0.0.1 5 7000\r\n"
        );
        let v2 = header(Version::V2, Some("10.0.0.1:5"), 0, DST6);
        assert_eq!(v2[13..16], [0x21, 0, 36]);
        assert_eq!(
            v2[16..32],
            "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn proxy_source_is_an_ip_or_ip_and_port() {
        assert_eq!(
            parse_source("10.0.0.1"),
            Ok(Source::Ip([10, 0, 0, 1].into()))
        );
        assert_eq!(
            parse_source("[::2]:9"),
            Ok(Source::Socket("[::2]:9".parse().unwrap()))
        );
        assert_eq!(
            parse_source("::2").map(|s| s.to_string()),
            Ok("::2".to_string())
        );
        assert!(parse_source("nowhere").unwrap_err().contains("not an IP"));
        assert!(parse_source("10.0.0.1:99999").is_err());
    }
}
