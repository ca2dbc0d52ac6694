//! Graceful shutdown on SIGTERM/SIGINT: owed replies are delivered, listeners close, exit 0.

mod common;

use common::{
    HEARTBEAT, LineClient, TestServer, after, assert_clean_exit, expect_eof, frame, read_frame,
    send, show, wait_until, write_until_stalled,
};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Slack on top of the configured shutdown timeout for process exit and our polling.
const EXIT_SLACK: Duration = Duration::from_secs(3);

fn is_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

over_workers! {
    fn pipelined_requests_are_answered_after_sigterm(workers) {
        const PINGS: usize = 10_000;
        let mut server = workers.start(&["--shutdown-timeout", "5s"]);
        let mut requests = Vec::new();
        for i in 0..PINGS {
            requests.extend_from_slice(format!("PING {i}\n").as_bytes());
        }
        let mut clients: Vec<LineClient> = (0..3).map(|_| server.line_client()).collect();
        for c in &mut clients {
            c.send(&requests);
        }
        let mut frames = Vec::new();
        for i in 0..1000u32 {
            frames.extend(frame(HEARTBEAT, &i.to_be_bytes()));
        }
        let mut frame_client = server.connect_frame();
        send(&mut frame_client, &frames);

        // Nothing has been read yet.
        server.signal(libc::SIGTERM);

        for (n, c) in clients.iter_mut().enumerate() {
            for i in 0..PINGS {
                let line = c.read_line();
                assert_eq!(
                    show(&line),
                    show(format!("PONG {i}\n").as_bytes()),
                    "client {n}"
                );
            }
            c.expect_eof();
        }
        for i in 0..1000u32 {
            assert_eq!(
                read_frame(&mut frame_client),
                (HEARTBEAT, i.to_be_bytes().to_vec())
            );
        }
        expect_eof(&mut frame_client);
        drop((clients, frame_client));
        assert_clean_exit(&mut server, Duration::from_secs(5) + EXIT_SLACK);
    }
}

over_workers! {
    fn new_connections_are_refused_after_sigterm(workers) {
        let mut server = workers.start(&["--shutdown-timeout", "3s"]);
        // A client that writes without reading keeps the server busy draining after the signal.
        let mut stalled = server.line_client();
        let stall = write_until_stalled(
            &mut stalled.stream,
            Duration::from_millis(1000),
            256 * 1024 * 1024,
            |i| format!("PING {i}\n").into_bytes(),
        );
        assert!(stall.stalled, "server never pushed back");
        let (line_addr, frame_addr) = (server.line_addr(), server.frame_addr());

        server.signal(libc::SIGTERM);
        let refused = wait_until(after(Duration::from_secs(2)), || {
            is_refused(line_addr) && is_refused(frame_addr)
        });
        assert!(refused, "listeners still accept connections after SIGTERM");

        // Whatever replies were produced are correct and in order; then the socket closes.
        let mut i = 0u64;
        let end = loop {
            match stalled.try_read_line() {
                Ok(Some(line)) => {
                    assert_eq!(show(&line), show(format!("PONG {i}\n").as_bytes()));
                    i += 1;
                }
                Ok(None) => break "EOF",
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
                Err(e) => panic!("after {i} replies: {e}"),
            }
        };
        eprintln!("stalled client: {i} of {} replies, then {end}", stall.lines);
        drop(stalled);
        assert_clean_exit(&mut server, Duration::from_secs(3) + EXIT_SLACK);
    }
}

over_workers! {
    fn idle_clients_are_closed_at_shutdown_and_exit_is_prompt(workers) {
        // A long shutdown timeout: idle clients owe nothing, so the exit must not wait for it.
        let mut server = workers.start(&["--shutdown-timeout", "10s"]);
        let mut silent_line = server.connect_line();
        let mut silent_frame = server.connect_frame();
        let mut served = server.line_client();
        assert_eq!(served.request(b"PING"), b"PONG\n");
        let mut served_frame = server.connect_frame();
        send(&mut served_frame, &frame(HEARTBEAT, b""));
        assert_eq!(read_frame(&mut served_frame), (HEARTBEAT, Vec::new()));
        // Both silent clients are surely accepted once the STATS connection sees them.
        assert!(wait_until(after(Duration::from_secs(5)), || {
            server.stats()["active"] >= 5
        }));

        let signalled = Instant::now();
        server.signal(libc::SIGTERM);
        expect_eof(&mut silent_line);
        expect_eof(&mut silent_frame);
        served.expect_eof();
        expect_eof(&mut served_frame);
        // Like any client, close on EOF (the server may wait for our FIN before its close).
        drop((silent_line, silent_frame, served, served_frame));
        assert_clean_exit(&mut server, Duration::from_secs(3));
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "exit took {:?}",
            signalled.elapsed()
        );
    }
}

over_workers! {
    fn sigint_shuts_down_gracefully_too(workers) {
        let mut server = workers.start(&[]);
        let mut c = server.line_client();
        c.send(b"PING 1\nPING 2\n");
        server.signal(libc::SIGINT);
        assert_eq!(c.read_line(), b"PONG 1\n");
        assert_eq!(c.read_line(), b"PONG 2\n");
        c.expect_eof();
        drop(c);
        assert_clean_exit(&mut server, Duration::from_secs(5) + EXIT_SLACK);
    }
}

over_workers! {
    fn sigterm_with_no_clients_exits_zero_promptly(workers) {
        let mut server = workers.start(&["--shutdown-timeout", "10s"]);
        server.signal(libc::SIGTERM);
        assert_clean_exit(&mut server, Duration::from_secs(3));
        let mut buf = [0u8; 1];
        // The listeners are gone with the process.
        match TcpStream::connect_timeout(&server.line_addr(), Duration::from_secs(1)) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Ok(mut s) => panic!("connected after exit, read {:?}", s.read(&mut buf)),
        }
    }
}

/// A signal sent the moment the ports are open (the moment a script or a supervisor sees the
/// server as up) reaches every worker: each one's handler is in place before the first
/// listener is bound. With 64 reuseport workers binding one after another, handlers
/// installed with each worker's listeners missed such a signal within the first rounds.
#[test]
fn a_signal_as_soon_as_the_ports_are_open_stops_every_worker() {
    for round in 0..10 {
        let mut server = TestServer::start(&["--workers", "64", "--balance", "reuseport"]);
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(3));
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: {status:?}; log:\n{}",
            server.logs().join("\n")
        );
    }
}

over_workers! {
    fn a_second_signal_exits_at_once(workers) {
        // A client that never reads keeps the graceful shutdown from finishing for a minute.
        let mut server = workers.start(&["--shutdown-timeout", "60s"]);
        let mut stuck = server.connect_line();
        let stall = write_until_stalled(&mut stuck, Duration::from_secs(1), 64 << 20, |i| {
            format!("PING {i}\n").into_bytes()
        });
        assert!(
            stall.stalled,
            "the server kept reading a client that never reads"
        );
        server.signal(libc::SIGTERM);
        // Still flushing to the stuck client.
        std::thread::sleep(Duration::from_millis(300));
        assert!(server.is_running(), "exited before the shutdown timeout");
        let second = Instant::now();
        server.signal(libc::SIGTERM);
        assert_clean_exit(&mut server, Duration::from_secs(2));
        assert!(second.elapsed() < Duration::from_secs(2));
        assert!(server.logged("second signal"));
        drop(stuck);
    }
}

over_workers! {
    /// Connections the kernel completed before the signal, still in the listen backlog (the
    /// server is stopped while they connect and send), are accepted and answered, not reset.
    /// With least-conn they are handed to another worker, which must not exit before them.
    fn connections_still_in_the_backlog_at_the_signal_are_answered(workers) {
        let mut server = workers.start(&["--shutdown-timeout", "5s"]);
        server.signal(libc::SIGSTOP);
        let mut clients: Vec<LineClient> = (0..8).map(|_| server.line_client()).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(format!("PING {i}\n").as_bytes());
        }
        server.signal(libc::SIGTERM);
        server.signal(libc::SIGCONT);
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(
                show(&c.read_line()),
                show(format!("PONG {i}\n").as_bytes()),
                "client {i}"
            );
            c.expect_eof();
        }
        drop(clients);
        assert_clean_exit(&mut server, Duration::from_secs(5) + EXIT_SLACK);
    }
}
