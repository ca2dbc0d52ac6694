//! One test per bug found, named for the behaviour it protects; each failed before its fix.

mod common;

use common::{HEARTBEAT, TestServer, expect_eof, frame, read_frame, send};
use std::net::Shutdown;

/// A FIN queued right behind the last request must be noticed: with edge-triggered readiness,
/// a short read does not prove the socket is drained, since the EOF raises no second edge.
/// Found by `flow::half_close_*`: the server answered, then held the socket open until the
/// idle timeout.
#[test]
fn peer_eof_arriving_with_the_last_line_closes_the_connection() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    c.send(b"PING\n");
    c.shutdown_write();
    assert_eq!(c.read_line(), b"PONG\n");
    c.expect_eof();
}

#[test]
fn peer_eof_arriving_with_the_last_frame_closes_the_connection() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(HEARTBEAT, b"bye"));
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_frame(&mut s), (HEARTBEAT, b"bye".to_vec()));
    expect_eof(&mut s);
}
