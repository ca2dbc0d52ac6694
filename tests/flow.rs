//! Flow control: half-close, and backpressure from a client that writes but does not read.

mod common;

use common::{LineClient, TestServer, parse_stats, show, write_until_stalled};
use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

/// Line `i` of the half-close test: numbered, 100 bytes with its newline.
fn hundred_byte_line(i: u64) -> Vec<u8> {
    let mut line = format!("echo {i:08} ").into_bytes();
    line.resize(99, b'.');
    line.push(b'\n');
    line
}

#[test]
fn half_close_gets_every_reply_then_eof() {
    const LINES: u64 = 20_000;
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    let mut bytes = Vec::with_capacity((LINES * 100) as usize);
    for i in 0..LINES {
        bytes.extend(hundred_byte_line(i));
    }
    assert_eq!(bytes.len(), 2_000_000);
    // Write everything, then FIN, from a thread: 2 MB of echoes come back while we write,
    // and a server applying backpressure would stop reading until we read.
    let mut writer = c.stream.try_clone().unwrap();
    let handle = thread::spawn(move || {
        writer.write_all(&bytes).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    for i in 0..LINES {
        let line = c.read_line();
        let want = hundred_byte_line(i);
        assert!(
            line == want,
            "reply {i}: got {}, want {}",
            show(&line),
            show(&want)
        );
    }
    handle.join().unwrap();
    c.expect_eof();
}

#[test]
fn half_close_right_after_a_request_still_gets_the_reply() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    c.send(b"PING a\nPING b\nSTATS\n");
    c.shutdown_write();
    assert_eq!(c.read_line(), b"PONG a\n");
    assert_eq!(c.read_line(), b"PONG b\n");
    assert!(c.read_line().starts_with(b"STATS accepted="));
    c.expect_eof();
}

#[test]
fn half_close_on_the_frame_port_gets_every_reply_then_eof() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let mut bytes = Vec::new();
    for i in 0..100u32 {
        bytes.extend(common::frame(common::HEARTBEAT, &i.to_be_bytes()));
    }
    common::send(&mut s, &bytes);
    s.shutdown(Shutdown::Write).unwrap();
    for i in 0..100u32 {
        assert_eq!(
            common::read_frame(&mut s),
            (common::HEARTBEAT, i.to_be_bytes().to_vec())
        );
    }
    common::expect_eof(&mut s);
}

/// Line `i` of the backpressure test: `line 00000001 ` padded to 64 bytes with its newline.
fn sixty_four_byte_line(i: u64) -> Vec<u8> {
    let mut line = format!("line {i:08} ").into_bytes();
    line.resize(63, b'x');
    line.push(b'\n');
    line
}

#[test]
fn non_reading_client_is_paused_with_bounded_memory_and_loses_nothing() {
    const MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;
    const MIN_SENT: u64 = 4 * 1024 * 1024;
    // Stop writing here even if the server never pushes back (that fails below).
    const LIMIT: u64 = 512 * 1024 * 1024;

    let server = TestServer::start(&[]);
    let mut stalled = server.line_client();
    assert_eq!(stalled.request(b"PING"), b"PONG\n");
    let rss_before = server.rss_kib();

    let started = Instant::now();
    let stall = write_until_stalled(
        &mut stalled.stream,
        Duration::from_millis(1500),
        LIMIT,
        sixty_four_byte_line,
    );
    let rss_stalled = server.rss_kib();
    assert!(
        stall.stalled,
        "the server never stopped reading: {} bytes accepted in {:?}",
        stall.bytes,
        started.elapsed()
    );
    assert!(
        stall.bytes >= MIN_SENT,
        "only {} bytes sent before the stall (want >= {MIN_SENT})",
        stall.bytes
    );
    let growth = rss_stalled.saturating_sub(rss_before);
    eprintln!(
        "stalled after {} bytes ({} lines) in {:?}; server RSS {rss_before} -> {rss_stalled} KiB",
        stall.bytes,
        stall.lines,
        started.elapsed()
    );
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "server RSS grew {growth} KiB ({rss_before} -> {rss_stalled}) with {} bytes pending",
        stall.bytes
    );

    // While the first client is stalled, another one is served promptly.
    let mut other = server.line_client();
    for i in 0..20 {
        let req = format!("PING other {i}");
        assert_eq!(
            other.request(req.as_bytes()),
            format!("PONG other {i}\n").as_bytes()
        );
    }
    let stats = parse_stats(&other.request(b"STATS"));
    assert!(stats["backpressure_pauses"] >= 1, "{stats:?}");

    // Now read: every reply, in order, exactly once. Finish the partial line and add a
    // sentinel from a thread, since that write only completes once we read; the sentinel's
    // reply right after the last echo proves nothing was duplicated or invented.
    let mut rest = stall.tail.clone();
    rest.extend_from_slice(b"PING end\n");
    let mut writer = stalled.stream.try_clone().unwrap();
    let handle = thread::spawn(move || writer.write_all(&rest).unwrap());
    for i in 0..stall.lines {
        let line = stalled.read_line();
        let want = sixty_four_byte_line(i);
        assert!(
            line == want,
            "reply {i}: got {}, want {}",
            show(&line),
            show(&want)
        );
    }
    assert_eq!(stalled.read_line(), b"PONG end\n");
    handle.join().unwrap();
    assert!(
        server.rss_kib() < rss_before + MAX_RSS_GROWTH_KIB,
        "RSS after draining: {} KiB",
        server.rss_kib()
    );
}

#[test]
fn stalled_frame_client_does_not_block_others() {
    let server = TestServer::start(&[]);
    let mut stalled = server.connect_frame();
    let body = vec![7u8; 60 * 1024];
    let hb = common::frame(common::HEARTBEAT, &body);
    let stall = write_until_stalled(&mut stalled, Duration::from_millis(1500), 1 << 30, |_| {
        hb.clone()
    });
    assert!(
        stall.stalled,
        "server never pushed back after {} bytes",
        stall.bytes
    );

    let mut other = LineClient::new(server.connect_line());
    assert_eq!(other.request(b"PING"), b"PONG\n");
    let mut other_frame = server.connect_frame();
    common::send(&mut other_frame, &common::frame(common::MESSAGE, b"hi"));
    assert_eq!(
        common::read_frame(&mut other_frame),
        (common::MESSAGE, b"Server says: hi".to_vec())
    );

    // Finish the partial frame and add a sentinel (see the line test above).
    let mut rest = stall.tail.clone();
    rest.extend(common::frame(common::HEARTBEAT, b"end"));
    let mut writer = stalled.try_clone().unwrap();
    let handle = thread::spawn(move || writer.write_all(&rest).unwrap());
    for i in 0..stall.lines {
        let (cmd, reply) = common::read_frame(&mut stalled);
        assert_eq!(cmd, common::HEARTBEAT, "reply {i}");
        assert!(reply == body, "reply {i} body differs");
    }
    assert_eq!(
        common::read_frame(&mut stalled),
        (common::HEARTBEAT, b"end".to_vec())
    );
    handle.join().unwrap();
}
