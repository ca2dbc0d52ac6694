//! Pipelining and fragmentation: many requests in one write, one request over many writes.

mod common;

use common::{MESSAGE, TestServer, frame, read_frame, send, show};
use std::thread;
use std::time::Duration;

#[test]
fn thousand_pings_in_one_write_are_answered_in_order() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    let mut bytes = Vec::new();
    for i in 0..1000 {
        bytes.extend_from_slice(format!("PING {i}\n").as_bytes());
    }
    c.send(&bytes);
    for i in 0..1000 {
        assert_eq!(show(&c.read_line()), show(format!("PONG {i}\n").as_bytes()));
    }
    assert_eq!(c.request(b"PING last"), b"PONG last\n");
}

#[test]
fn mixed_commands_in_one_write_are_answered_in_order() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    c.send(b"PING\nsome text\n\nSAY\nping 2\r\nQUIT\nPING\n");
    assert_eq!(c.read_line(), b"PONG\n");
    assert_eq!(c.read_line(), b"some text\n");
    assert_eq!(c.read_line(), b"\n");
    assert_eq!(c.read_line(), b"ERR usage: SAY <text>\n");
    assert_eq!(c.read_line(), b"PONG 2\n");
    assert_eq!(c.read_line(), b"BYE\n");
    c.expect_eof();
}

#[test]
fn line_dribbled_one_byte_per_write_gets_one_reply() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    for &b in b"PING" {
        c.send(&[b]);
        thread::sleep(Duration::from_millis(5));
    }
    // No reply may come before the newline.
    c.expect_silence(Duration::from_millis(100));
    c.send(b"\n");
    assert_eq!(c.read_line(), b"PONG\n");
    // Then a second dribbled line with CRLF.
    for &b in b"PING dribble\r\n" {
        c.send(&[b]);
        thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(c.read_line(), b"PONG dribble\n");
}

#[test]
fn frame_dribbled_one_byte_per_write_gets_one_reply() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let bytes = frame(MESSAGE, b"dribble");
    let (last, head) = bytes.split_last().unwrap();
    for &b in head {
        send(&mut s, &[b]);
        thread::sleep(Duration::from_millis(5));
    }
    common::expect_silence(&mut s, Duration::from_millis(100));
    send(&mut s, &[*last]);
    let (cmd, body) = read_frame(&mut s);
    assert_eq!((cmd, show(&body)), (MESSAGE, show(b"Server says: dribble")));
}

#[test]
fn requests_split_across_writes_at_every_offset() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    let bytes = b"PING a\nPING bb\nsome text\n";
    for split in 1..bytes.len() {
        c.send(&bytes[..split]);
        // Yield so the halves usually arrive as separate segments.
        thread::sleep(Duration::from_millis(2));
        c.send(&bytes[split..]);
        assert_eq!(c.read_line(), b"PONG a\n", "split at {split}");
        assert_eq!(c.read_line(), b"PONG bb\n", "split at {split}");
        assert_eq!(c.read_line(), b"some text\n", "split at {split}");
    }
}
