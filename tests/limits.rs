//! Limits: --max-line, --idle-timeout on both ports, --max-connections.

mod common;

use common::{
    HEARTBEAT, LineClient, TestServer, after, connect, expect_error_frame_then_eof, frame,
    read_frame, send, show, wait_until,
};
use std::io;
use std::thread;
use std::time::{Duration, Instant};

const IDLE: Duration = Duration::from_millis(300);

over_workers! {
    fn line_of_exactly_max_line_is_accepted(workers) {
        let server = workers.start(&["--max-line", "16"]);
        let mut c = server.line_client();
        assert_eq!(c.request(b"0123456789abcdef"), b"0123456789abcdef\n");
        // The stripped CR does not count.
        c.send(b"0123456789abcdef\r\n");
        assert_eq!(c.read_line(), b"0123456789abcdef\n");
        assert_eq!(c.request(b"PING"), b"PONG\n");
    }
}

over_workers! {
    fn line_of_max_plus_one_with_newline_is_refused(workers) {
        let server = workers.start(&["--max-line", "16"]);
        let mut c = server.line_client();
        c.send(b"0123456789abcdefg\n");
        assert_eq!(c.read_line(), b"ERR line too long\n");
        c.expect_eof();
    }
}

over_workers! {
    fn line_of_max_plus_one_is_refused_before_any_newline(workers) {
        let server = workers.start(&["--max-line", "16"]);
        let mut c = server.line_client();
        // 17 bytes and no newline: the server must not wait for one.
        c.send(b"0123456789abcdefg");
        assert_eq!(c.read_line(), b"ERR line too long\n");
        c.expect_eof();
    }
}

over_workers! {
    fn long_line_without_newline_after_good_requests(workers) {
        let server = workers.start(&["--max-line", "16"]);
        let mut c = server.line_client();
        let mut bytes = b"PING 1\nPING 2\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 1000));
        c.send(&bytes);
        assert_eq!(c.read_line(), b"PONG 1\n");
        assert_eq!(c.read_line(), b"PONG 2\n");
        assert_eq!(c.read_line(), b"ERR line too long\n");
        c.expect_eof();
    }
}

/// Asserts the idle reply arrived no earlier than `IDLE` after `last_sent` (a lower bound
/// is deterministic; the upper bound is only the socket timeout).
fn assert_not_early(last_sent: Instant) {
    let waited = last_sent.elapsed();
    assert!(
        waited >= IDLE,
        "idle timeout fired after only {waited:?} (< {IDLE:?})"
    );
}

over_workers! {
    fn idle_line_client_is_told_and_closed(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut c = server.line_client();
        let sent = Instant::now();
        assert_eq!(c.request(b"PING"), b"PONG\n");
        assert_eq!(c.read_line(), b"ERR idle timeout\n");
        assert_not_early(sent);
        c.expect_eof();
    }
}

over_workers! {
    fn idle_line_client_that_never_sent_anything_is_closed(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let connected = Instant::now();
        let mut c = server.line_client();
        assert_eq!(c.read_line(), b"ERR idle timeout\n");
        assert_not_early(connected);
        c.expect_eof();
    }
}

over_workers! {
    fn idle_line_client_mid_line_is_closed(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut c = server.line_client();
        let sent = Instant::now();
        c.send(b"PIN");
        assert_eq!(c.read_line(), b"ERR idle timeout\n");
        assert_not_early(sent);
        c.expect_eof();
    }
}

over_workers! {
    fn idle_frame_client_gets_error_frame_and_is_closed(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut s = server.connect_frame();
        let sent = Instant::now();
        send(&mut s, &frame(HEARTBEAT, b""));
        assert_eq!(read_frame(&mut s), (HEARTBEAT, Vec::new()));
        let (cmd, body) = read_frame(&mut s);
        assert_not_early(sent);
        assert_eq!((cmd, show(&body)), (common::ERROR, show(b"idle timeout")));
        common::expect_eof(&mut s);
    }
}

over_workers! {
    fn idle_frame_client_mid_header_is_closed(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut s = server.connect_frame();
        let sent = Instant::now();
        // Half a header: a valid prefix the server must not wait on forever.
        send(&mut s, &frame(HEARTBEAT, b"")[..4]);
        expect_error_frame_then_eof(&mut s, "idle timeout");
        assert_not_early(sent);
    }
}

over_workers! {
    fn idle_frame_client_mid_body_is_closed(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut s = server.connect_frame();
        let sent = Instant::now();
        send(&mut s, &frame(HEARTBEAT, b"0123456789")[..12]);
        expect_error_frame_then_eof(&mut s, "idle timeout");
        assert_not_early(sent);
    }
}

over_workers! {
    fn activity_postpones_the_idle_timeout(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut c = server.line_client();
        let start = Instant::now();
        // 600 ms of traffic, one PING every 100 ms: twice the timeout, never idle for it.
        let mut i = 0;
        while start.elapsed() < Duration::from_millis(600) {
            assert_eq!(
                c.request(format!("PING {i}").as_bytes()),
                format!("PONG {i}\n").as_bytes(),
                "closed after {:?} of activity",
                start.elapsed()
            );
            i += 1;
            thread::sleep(Duration::from_millis(100));
        }
        let last = Instant::now();
        assert_eq!(c.request(b"PING end"), b"PONG end\n");
        // Once quiet, it does time out, counted from the last request.
        assert_eq!(c.read_line(), b"ERR idle timeout\n");
        assert_not_early(last);
        c.expect_eof();
    }
}

over_workers! {
    fn idle_timeout_zero_disables_it(workers) {
        let server = workers.start(&["--idle-timeout", "0"]);
        let mut c = server.line_client();
        assert_eq!(c.request(b"PING"), b"PONG\n");
        c.expect_silence(Duration::from_millis(700));
        assert_eq!(c.request(b"PING"), b"PONG\n");
    }
}

over_workers! {
    fn idle_timeout_is_counted_in_stats(workers) {
        let server = workers.start(&["--idle-timeout", "300ms"]);
        let mut c = server.line_client();
        assert_eq!(c.read_line(), b"ERR idle timeout\n");
        c.expect_eof();
        let stats = common::stats_when(&mut server.line_client(), |s| s["idle_timeouts"] >= 1);
        assert!(stats["idle_timeouts"] >= 1, "{stats:?}");
    }
}

/// Opens a line client and proves it is being served.
fn served_line_client(server: &TestServer, tag: &str) -> LineClient {
    let mut c = server.line_client();
    let req = format!("PING {tag}");
    assert_eq!(
        c.request(req.as_bytes()),
        format!("PONG {tag}\n").as_bytes()
    );
    c
}

over_workers! {
    fn max_connections_rejects_the_next_client_on_both_ports(workers) {
        let server = workers.start(&["--max-connections", "3"]);
        let clients: Vec<LineClient> = (0..3)
            .map(|i| served_line_client(&server, &i.to_string()))
            .collect();

        let mut fourth = server.line_client();
        assert_eq!(fourth.read_line(), b"ERR server full\n");
        fourth.expect_eof();

        let mut fourth_frame = server.connect_frame();
        expect_error_frame_then_eof(&mut fourth_frame, "server full");

        // A rejected client that sent a request still gets a clean close, not a reset.
        let mut eager = server.line_client();
        eager.send(b"PING\nPING\n");
        assert_eq!(eager.read_line(), b"ERR server full\n");
        eager.expect_eof();

        // The admitted ones are unaffected.
        let mut clients = clients;
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(
                c.request(format!("PING again {i}").as_bytes()),
                format!("PONG again {i}\n").as_bytes()
            );
        }
    }
}

over_workers! {
    fn closing_a_client_frees_a_slot(workers) {
        let server = workers.start(&["--max-connections", "3"]);
        let mut clients: Vec<LineClient> = (0..3)
            .map(|i| served_line_client(&server, &i.to_string()))
            .collect();
        let mut rejected = server.line_client();
        assert_eq!(rejected.read_line(), b"ERR server full\n");
        rejected.expect_eof();

        drop(clients.remove(0));
        // The close is processed asynchronously: retry until a new client is served.
        let mut attempts = 0;
        let mut served = None;
        let ok = wait_until(after(Duration::from_secs(5)), || {
            attempts += 1;
            let mut c = LineClient::new(connect(server.line_addr()));
            c.send(b"PING\n");
            match c.try_read_line() {
                Ok(Some(line)) if line == b"PONG\n" => {
                    served = Some(c);
                    true
                }
                Ok(Some(line)) if line == b"ERR server full\n" => false,
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => false,
                Err(e) => panic!("unexpected error {e}"),
            }
        });
        assert!(ok, "no slot freed after {attempts} attempts");
        let mut c = served.unwrap();
        assert_eq!(c.request(b"PING x"), b"PONG x\n");
        // And the server is full again.
        let mut again = server.connect_frame();
        expect_error_frame_then_eof(&mut again, "server full");
    }
}

over_workers! {
    fn frame_clients_count_towards_max_connections(workers) {
        let server = workers.start(&["--max-connections", "2"]);
        let mut f = server.connect_frame();
        send(&mut f, &frame(HEARTBEAT, b"a"));
        assert_eq!(read_frame(&mut f), (HEARTBEAT, b"a".to_vec()));
        let mut l = served_line_client(&server, "one");
        let mut third = server.line_client();
        assert_eq!(third.read_line(), b"ERR server full\n");
        third.expect_eof();
        // STATS via an admitted client: a new connection would be refused.
        let stats = common::stats_when(&mut l, |s| s["rejected_full"] >= 1);
        assert!(stats["rejected_full"] >= 1, "{stats:?}");
    }
}

over_workers! {
    /// Once the server has sent its FIN (after `BYE`), the session is over: its slot is free at
    /// once and it counts as `closed`, though its socket lingers (still reading and discarding)
    /// until the client closes too. A client that reads `BYE` and EOF but keeps its socket open
    /// used to hold its slot for the whole linger deadline.
    fn a_slot_frees_when_the_server_sends_its_fin_not_when_the_socket_closes(workers) {
        let server = workers.start(&["--max-connections", "3"]);
        let mut clients: Vec<LineClient> = (0..3)
            .map(|i| served_line_client(&server, &i.to_string()))
            .collect();
        assert_eq!(clients[0].request(b"QUIT"), b"BYE\n");
        clients[0].expect_eof();
        // clients[0] keeps its socket open: the server's side lingers.

        let mut newcomer = server.line_client();
        assert_eq!(newcomer.request(b"PING new"), b"PONG new\n");
        let stats = common::stats_when(&mut clients[1], |s| {
            s["accepted"] == 4 && s["lingering"] == 1
        });
        assert_eq!(
            (
                stats["accepted"],
                stats["active"],
                stats["closed"],
                stats["lingering"]
            ),
            (4, 3, 1, 1),
            "{stats:?}"
        );
        assert_eq!(stats["accepted"], stats["closed"] + stats["active"]);
        // And the server is full again.
        let mut again = server.connect_frame();
        expect_error_frame_then_eof(&mut again, "server full");

        // The lingering sockets go once their clients close.
        drop(again);
        drop(clients.remove(0));
        let ok = wait_until(after(Duration::from_secs(5)), || {
            common::parse_stats(&clients[0].request(b"STATS"))["lingering"] == 0
        });
        assert!(
            ok,
            "the lingering socket was not closed after the client's EOF"
        );
    }
}
