//! One test per bug found, named for the behaviour it protects; each failed before its fix.

mod common;

use common::{
    HEARTBEAT, TestServer, UsersFile, after, expect_eof, frame, read_frame, send, wait_until,
};
use std::net::Shutdown;
use std::time::Duration;

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

/// A connection that resets while its LOGIN is being verified, with a shutdown begun
/// meanwhile: when the verdict comes back, the shutdown answers the requests behind the LOGIN,
/// the write fails on the reset socket and closes the connection, and nothing may touch it
/// after that. The server used to index the slab slot it had just freed: a panic, exit 101,
/// and every other client's unflushed replies lost.
#[test]
fn a_connection_reset_during_its_login_is_not_touched_after_the_shutdown_closes_it() {
    const RESETTERS: usize = 5;
    let users = UsersFile::new();
    let mut server = TestServer::start_logging(
        &["--users", users.arg(), "--shutdown-timeout", "5s"],
        "tcp_reactor=trace",
    );
    // A well-behaved client whose replies are owed across the shutdown.
    let mut owed = server.line_client();
    let resetters: Vec<std::net::TcpStream> = (0..RESETTERS)
        .map(|_| {
            let mut s = server.connect_line();
            send(&mut s, b"LOGIN ann pw\nPING\n");
            s
        })
        .collect();
    assert!(
        wait_until(after(Duration::from_secs(5)), || {
            server
                .logs()
                .iter()
                .filter(|l| l.contains("sent to the workers"))
                .count()
                >= RESETTERS
        }),
        "the logins never reached the workers"
    );
    for s in resetters {
        // SO_LINGER 0: close sends a RST, and the server's next write to it fails.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    owed.send(b"PING owed\n");
    server.signal(libc::SIGTERM);
    assert_eq!(owed.read_line(), b"PONG owed\n");
    owed.expect_eof();
    let status = server.wait_exit(Duration::from_secs(6));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; log:\n{}",
        server
            .logs()
            .iter()
            .filter(|l| !l.contains("TRACE"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
