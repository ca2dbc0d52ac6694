//! Behind a load balancer: `--proxy-protocol` (a PROXY header, v1 or v2, before anything
//! else), `--proxy-from`, and `--max-connections-per-ip` with the address the header names.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use common::{
    ERROR, HEARTBEAT, LineClient, TestServer, after, connect, expect_eof,
    expect_error_frame_then_eof, frame, parse_stats, read_frame, show, stats_when, wait_until,
};

const TOO_MANY: &[u8] = b"ERR too many connections from your address\n";

/// A v1 header for a TCP4 client `source` connecting to `dest`.
fn v1(source: &str, dest: SocketAddr) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    )
    .into_bytes()
}

/// A v2 header: PROXY (`local` false) for a TCP4 client `source`, or LOCAL (a health
/// check), with `tlvs` after the addresses.
fn v2(source: &str, dest: SocketAddr, local: bool, tlvs: &[u8]) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let (SocketAddr::V4(source), SocketAddr::V4(dest)) = (source, dest) else {
        panic!("IPv4 only here");
    };
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.push(if local { 0x20 } else { 0x21 });
    bytes.push(0x11);
    bytes.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    bytes.extend_from_slice(&source.ip().octets());
    bytes.extend_from_slice(&dest.ip().octets());
    bytes.extend_from_slice(&source.port().to_be_bytes());
    bytes.extend_from_slice(&dest.port().to_be_bytes());
    bytes.extend_from_slice(tlvs);
    bytes
}

/// STATS on a connection that introduces itself as a v1 `UNKNOWN` (the socket's address
/// stands), as every connection must under `--proxy-protocol`.
fn stats(server: &TestServer) -> BTreeMap<String, u64> {
    let mut client = LineClient::new(connect(server.line_addr()));
    client.send(b"PROXY UNKNOWN\r\n");
    parse_stats(&client.request(b"STATS"))
}

/// A line client from `source` (by its PROXY header), its header sent.
fn line_from(server: &TestServer, source: &str) -> LineClient {
    let mut client = LineClient::new(connect(server.line_addr()));
    client.send(&v2(source, server.line_addr(), false, &[]));
    client
}

/// Reads until EOF; everything the server sent.
fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read to EOF");
    got
}

#[test]
fn a_header_of_either_version_is_read_and_the_bytes_after_it_are_the_first_request() {
    let server = TestServer::start_logging(&["--proxy-protocol"], "debug");
    let line = server.line_addr();
    let tlv = [0x04, 0x00, 0x02, 0xab, 0xcd]; // a NOOP TLV, skipped
    let cases = [
        ("v1", v1("203.0.113.7:51234", line)),
        ("v2", v2("203.0.113.8:51235", line, false, &[])),
        ("v2 with a TLV", v2("203.0.113.9:51236", line, false, &tlv)),
    ];
    for (name, header) in &cases {
        // In one write with the first requests, and split byte by byte.
        let mut stream = connect(line);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"PING\necho me\n");
        stream.write_all(&bytes).unwrap();
        let mut reply = [0u8; 13];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(show(&reply), show(b"PONG\necho me\n"), "{name}");

        let mut stream = connect(line);
        for byte in header {
            stream.write_all(&[*byte]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        stream.write_all(b"PING\n").unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(show(&reply), show(b"PONG\n"), "{name}, split");
    }
    for source in [
        "203.0.113.7:51234",
        "203.0.113.8:51235",
        "203.0.113.9:51236",
    ] {
        let via = format!("from {source} via 127.0.0.1:");
        assert!(
            wait_until(after(Duration::from_secs(5)), || server.logged(&via)),
            "no log line names {source} as the client"
        );
    }
    // The frame port too, header and frame in one write.
    let mut stream = connect(server.frame_addr());
    let mut bytes = v1("203.0.113.10:4000", server.frame_addr());
    bytes.extend_from_slice(&frame(HEARTBEAT, b"beat"));
    stream.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut stream), (HEARTBEAT, b"beat".to_vec()));
    assert_eq!(stats(&server)["proxy_errors"], 0);
}

#[test]
fn a_health_check_with_a_local_header_or_unknown_is_served_as_the_socket() {
    let server = TestServer::start_logging(&["--proxy-protocol"], "debug");
    for header in [
        v2("0.0.0.0:0", server.line_addr(), true, &[]),
        b"PROXY UNKNOWN\r\n".to_vec(),
    ] {
        let mut stream = connect(server.line_addr());
        stream.write_all(&header).unwrap();
        stream.write_all(b"PING\n").unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"PONG\n");
    }
    assert!(server.logged_soon("PROXY header names no client: 127.0.0.1:"));
}

#[test]
fn what_is_not_a_header_is_closed_without_a_reply_and_counted() {
    let server = TestServer::start(&["--proxy-protocol"]);
    let line = server.line_addr();
    let mut bad_tlv = v2("203.0.113.7:1", line, false, &[]);
    bad_tlv.extend_from_slice(&[0x04, 0x00, 0x09]); // runs past the header...
    let declared = bad_tlv.len() - 16;
    bad_tlv[14..16].copy_from_slice(&(declared as u16).to_be_bytes()); // ...which ends here
    let mut no_crlf = b"PROXY TCP4 ".to_vec();
    no_crlf.resize(107, b'1');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a request", b"PING\n".to_vec()),
        ("a TLS ClientHello", b"\x16\x03\x01\x00\x05hello".to_vec()),
        (
            "a bad v1 address",
            b"PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\nPING\n".to_vec(),
        ),
        ("a v1 line with no CRLF in 107 bytes", no_crlf),
        ("a TLV past the header's length", bad_tlv),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let mut stream = connect(line);
        stream.write_all(bytes).unwrap();
        // Closed without a byte: a reset (unread input) or a FIN, never a reply.
        let mut got = [0u8; 64];
        match stream.read(&mut got) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{name}: got {}", show(&got[..n])),
        }
        let counted = wait_until(after(Duration::from_secs(5)), || {
            stats(&server)["proxy_errors"] == i as u64 + 1
        });
        assert!(counted, "{name}: {:?}", stats(&server));
    }
    // An EOF in the middle of a header is one too; an EOF before any byte is not.
    let mut stream = connect(line);
    stream.write_all(b"PROXY TCP4 1.2").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut stream).is_empty());
    drop(connect(line));
    let settled = wait_until(after(Duration::from_secs(5)), || {
        let stats = stats(&server);
        stats["active"] == 1 && stats["accepted"] == stats["closed"] + 1
    });
    assert!(settled, "{:?}", stats(&server));
    assert_eq!(stats(&server)["proxy_errors"], cases.len() as u64 + 1);
}

#[test]
fn a_header_not_complete_within_the_request_timeout_is_closed_and_counted() {
    let server = TestServer::start(&["--proxy-protocol", "--request-timeout", "300ms"]);
    let mut silent = connect(server.line_addr());
    let mut partial = connect(server.frame_addr());
    partial.write_all(b"\r\n\r\n\0\r\nQU").unwrap();
    assert!(read_to_eof(&mut silent).is_empty());
    assert!(read_to_eof(&mut partial).is_empty());
    let stats = stats(&server);
    assert_eq!(
        (stats["proxy_errors"], stats["request_timeouts"]),
        (2, 0),
        "{stats:?}"
    );
}

#[test]
fn without_the_flag_a_proxy_header_is_just_bytes() {
    let server = TestServer::start(&[]);
    let mut client = server.line_client();
    let header = v1("203.0.113.7:51234", server.line_addr());
    client.send(&header);
    // Echoed as any line is, its `\r\n` read as the line's end (docs/PROTOCOL.md).
    let echoed = client.read_line();
    let mut expected = header[..header.len() - 2].to_vec();
    expected.push(b'\n');
    assert_eq!(show(&echoed), show(&expected));
    let mut stream = server.connect_frame();
    stream
        .write_all(&v2("203.0.113.7:1", server.frame_addr(), false, &[]))
        .unwrap();
    expect_error_frame_then_eof(&mut stream, "bad magic 0x0d0a");
}

#[test]
fn proxy_from_closes_other_peers_at_the_accept() {
    let server = TestServer::start(&["--proxy-protocol", "--proxy-from", "10.0.0.0/8"]);
    let mut stream = connect(server.line_addr());
    // Closed before a byte is read: the header written next is not what closes it.
    let _ = stream.write_all(&v1("203.0.113.7:1", server.line_addr()));
    let mut got = [0u8; 16];
    assert!(matches!(stream.read(&mut got), Ok(0) | Err(_)));
    drop(server);

    let server = TestServer::start(&["--proxy-protocol", "--proxy-from", "10.0.0.0/8,127.0.0.0/8"]);
    let mut client = line_from(&server, "203.0.113.7:1");
    assert_eq!(client.request(b"PING"), b"PONG\n");
    assert_eq!(stats(&server)["proxy_errors"], 0);
}

over_workers! {
    /// Three connections from one client address with a limit of two: the third is told and
    /// closed, another address is unaffected, and a freed place can be taken again.
    fn the_per_address_limit_holds_across_workers(workers) {
        let server = workers.start(&["--max-connections-per-ip", "2"]);
        let mut first = server.line_client();
        let mut second = server.line_client();
        assert_eq!(first.request(b"PING"), b"PONG\n");
        assert_eq!(second.request(b"PING"), b"PONG\n");
        // server.stats() would be a third connection from 127.0.0.1: count from here on.
        let mut third = server.connect_line();
        assert_eq!(show(&read_to_eof(&mut third)), show(TOO_MANY));
        let mut frame_client = server.connect_frame();
        let (cmd, body) = read_frame(&mut frame_client);
        assert_eq!((cmd, show(&body)), (ERROR, show(b"too many connections from your address")));
        expect_eof(&mut frame_client);
        drop(first);
        let mut again = None;
        let served = wait_until(after(Duration::from_secs(5)), || {
            let mut client = server.line_client();
            client.send(b"PING\n");
            let reply = client.read_line();
            let ok = reply == b"PONG\n";
            if ok {
                again = Some(client);
            }
            ok
        });
        assert!(served, "the freed place was not given again");
        drop(second);
        let mut watcher = again.expect("served");
        let stats = stats_when(&mut watcher, |s| s["active"] == 1);
        assert!(stats["rejected_per_ip"] >= 2, "{stats:?}");
        assert_eq!(stats["accepted"], stats["closed"] + stats["active"], "{stats:?}");
    }

    /// Behind a balancer, the limit counts the address each PROXY header names.
    fn the_per_address_limit_counts_the_proxy_source(workers) {
        let server = workers.start(&["--proxy-protocol", "--max-connections-per-ip", "2"]);
        let mut held = Vec::new();
        for port in [1000, 1001] {
            let mut client = line_from(&server, &format!("203.0.113.7:{port}"));
            assert_eq!(client.request(b"PING"), b"PONG\n");
            held.push(client);
        }
        let mut refused = connect(server.line_addr());
        refused.write_all(&v1("203.0.113.7:1002", server.line_addr())).unwrap();
        assert_eq!(show(&read_to_eof(&mut refused)), show(TOO_MANY));
        let mut other = line_from(&server, "203.0.113.8:1000");
        assert_eq!(other.request(b"PING"), b"PONG\n");
        // The balancer's own connections (health checks: LOCAL, UNKNOWN) name no client and
        // are not counted: three of them at once from one peer are all served.
        let mut checks: Vec<LineClient> = (0..3)
            .map(|i| {
                let mut check = LineClient::new(connect(server.line_addr()));
                let header = if i % 2 == 0 {
                    v2("0.0.0.0:0", server.line_addr(), true, &[])
                } else {
                    b"PROXY UNKNOWN\r\n".to_vec()
                };
                check.send(&header);
                check
            })
            .collect();
        for check in &mut checks {
            assert_eq!(check.request(b"PING"), b"PONG\n");
        }
        let stats = stats(&server);
        assert_eq!((stats["rejected_per_ip"], stats["proxy_errors"]), (1, 0), "{stats:?}");
    }
}
