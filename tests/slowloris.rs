//! --request-timeout: a request that has started arriving must be complete in time, so a
//! client dribbling bytes cannot hold a connection forever; a client that keeps completing
//! requests is never cut off.

mod common;

use common::{HEARTBEAT, TestServer, expect_error_frame_then_eof, frame, send};
use std::thread;
use std::time::{Duration, Instant};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);

fn start() -> TestServer {
    // A long idle timeout, so only the request timeout can close the connection.
    TestServer::start(&["--request-timeout", "400ms", "--idle-timeout", "60s"])
}

#[test]
fn a_line_dribbled_a_byte_at_a_time_is_cut_off() {
    let server = start();
    let mut c = server.line_client();
    let started = Instant::now();
    // One byte every 100 ms, never a newline: traffic, so never idle, but never a request.
    let dribbler = {
        let mut stream = c.stream.try_clone().unwrap();
        thread::spawn(move || {
            for _ in 0..40 {
                if std::io::Write::write_all(&mut stream, b"x").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    assert_eq!(c.read_line(), b"ERR request timeout\n");
    let waited = started.elapsed();
    assert!(waited >= REQUEST_TIMEOUT, "cut off after only {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "cut off only after {waited:?}"
    );
    c.expect_eof();
    dribbler.join().unwrap();
    assert_eq!(server.stats()["request_timeouts"], 1);
}

#[test]
fn a_frame_stalled_mid_body_is_cut_off() {
    let server = start();
    let mut s = server.connect_frame();
    let started = Instant::now();
    send(&mut s, &frame(HEARTBEAT, b"0123456789")[..12]);
    expect_error_frame_then_eof(&mut s, "request timeout");
    assert!(started.elapsed() >= REQUEST_TIMEOUT);
}

#[test]
fn a_client_that_keeps_completing_requests_is_never_cut_off() {
    let server = start();
    let mut c = server.line_client();
    // Every write completes one PING and starts the next: always a request in flight, for
    // three times the request timeout, yet each one completes within it.
    c.send(b"PI");
    for _ in 0..12 {
        thread::sleep(Duration::from_millis(100));
        c.send(b"NG\nPI");
        assert_eq!(c.read_line(), b"PONG\n");
    }
    c.send(b"NG\n");
    assert_eq!(c.read_line(), b"PONG\n");
    assert_eq!(c.request(b"PING"), b"PONG\n");
}

#[test]
fn zero_disables_the_request_timeout() {
    let server = TestServer::start(&["--request-timeout", "0", "--idle-timeout", "60s"]);
    let mut c = server.line_client();
    c.send(b"PI");
    common::expect_silence(&mut c.stream, Duration::from_millis(800));
    c.send(b"NG\n");
    assert_eq!(c.read_line(), b"PONG\n");
}
