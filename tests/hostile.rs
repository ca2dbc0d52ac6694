//! Hostile clients: resets in the middle of a request, garbage and HTTP on the wrong port,
//! and a shutdown while abusive clients are connected. The server must stay up, keep serving
//! the well-behaved clients byte for byte, and keep its STATS consistent.

mod common;

use common::{
    HEARTBEAT, LineClient, MAGIC, MESSAGE, TestServer, after, expect_eof,
    expect_error_frame_then_eof, frame, header, read_frame, send, show, wait_until,
    write_until_stalled,
};
use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to notice a reset or a close and update STATS.
const SETTLE: Duration = Duration::from_secs(3);
/// Slack on top of `--shutdown-timeout` for process exit and our polling.
const EXIT_SLACK: Duration = Duration::from_secs(3);

/// Deterministic pseudo-random bytes (xorshift64), so a failure replays exactly.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Closes `stream` with an RST instead of a FIN (SO_LINGER 0, then close).
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
    drop(stream);
}

/// Waits until STATS (taken on its own extra connection) reports `active == expected + 1`
/// and `bytes_in >= min_bytes_in`; returns the last STATS seen.
fn wait_stats(
    server: &TestServer,
    expected_active: u64,
    min_bytes_in: u64,
) -> std::collections::BTreeMap<String, u64> {
    let mut last = server.stats();
    let ok = wait_until(after(SETTLE), || {
        last = server.stats();
        last["active"] == expected_active + 1 && last["bytes_in"] >= min_bytes_in
    });
    assert!(
        ok,
        "STATS never showed active={} (plus the STATS client) and bytes_in>={min_bytes_in}: {last:?}",
        expected_active + 1
    );
    last
}

/// The well-behaved pair: one line client and one frame client, checked byte for byte.
fn assert_served(line: &mut LineClient, frames: &mut TcpStream, round: usize) {
    let ping = format!("PING {round}");
    assert_eq!(
        show(&line.request(ping.as_bytes())),
        show(format!("PONG {round}\n").as_bytes())
    );
    let body = format!("hb {round}").into_bytes();
    send(frames, &frame(HEARTBEAT, &body));
    assert_eq!(read_frame(frames), (HEARTBEAT, body));
    send(frames, &frame(MESSAGE, b"hi"));
    assert_eq!(read_frame(frames), (MESSAGE, b"Server says: hi".to_vec()));
}

#[test]
fn resets_mid_frame_and_mid_line_leave_the_server_serving() {
    let server = TestServer::start(&[]);
    let mut line = server.line_client();
    let mut frames = server.connect_frame();
    assert_served(&mut line, &mut frames, 0);
    let mut bytes_in = wait_stats(&server, 2, 0)["bytes_in"];

    // (port, bytes sent before the reset)
    let mut half_body = header(MESSAGE, 100);
    half_body.extend_from_slice(&[b'x'; 50]);
    let cases: Vec<(&str, std::net::SocketAddr, Vec<u8>)> = vec![
        (
            "half a header",
            server.frame_addr(),
            header(HEARTBEAT, 16)[..4].to_vec(),
        ),
        ("half a body", server.frame_addr(), half_body),
        (
            "half a line",
            server.line_addr(),
            b"PING no newline yet".to_vec(),
        ),
    ];
    for (round, (what, addr, bytes)) in cases.into_iter().enumerate() {
        let mut hostile = common::connect(addr);
        send(&mut hostile, &bytes);
        // The server has read the partial request (3 = the pair + the hostile client).
        bytes_in = wait_stats(&server, 3, bytes_in + bytes.len() as u64)["bytes_in"];
        reset(hostile);
        let stats = wait_stats(&server, 2, bytes_in);
        assert_eq!(
            stats["accepted"],
            stats["closed"] + stats["active"],
            "after a reset {what}: {stats:?}"
        );
        assert_served(&mut line, &mut frames, round + 1);
    }

    // Many at once, each on a different split point, then the pair again.
    let mut hostiles = Vec::new();
    for i in 0..30usize {
        let (addr, bytes) = match i % 3 {
            0 => (
                server.frame_addr(),
                header(MESSAGE, 64)[..1 + i % 7].to_vec(),
            ),
            1 => {
                let mut b = header(MESSAGE, 64);
                b.extend(std::iter::repeat_n(b'y', i));
                (server.frame_addr(), b)
            }
            _ => (server.line_addr(), vec![b'z'; 1 + i]),
        };
        let mut s = common::connect(addr);
        send(&mut s, &bytes);
        hostiles.push(s);
    }
    wait_stats(&server, 32, 0);
    for s in hostiles {
        reset(s);
    }
    let stats = wait_stats(&server, 2, 0);
    assert_eq!(
        stats["accepted"],
        stats["closed"] + stats["active"],
        "{stats:?}"
    );
    assert_served(&mut line, &mut frames, 99);
}

#[test]
fn random_garbage_to_the_frame_port_gets_one_error_frame_then_eof() {
    let server = TestServer::start(&[]);
    for seed in [0x9E37_79B9_7F4A_7C15u64, 42, 0xDEAD_BEEF] {
        let bytes = garbage(seed, 4096);
        assert_ne!(
            bytes[..2],
            MAGIC,
            "seed {seed:#x} starts with the magic; pick another"
        );
        let magic = u16::from_be_bytes([bytes[0], bytes[1]]);
        let mut s = server.connect_frame();
        send(&mut s, &bytes);
        expect_error_frame_then_eof(&mut s, &format!("bad magic 0x{magic:04x}"));
    }
    // The server is still up and serving.
    let mut ok = server.connect_frame();
    send(&mut ok, &frame(HEARTBEAT, b"still here"));
    assert_eq!(read_frame(&mut ok), (HEARTBEAT, b"still here".to_vec()));
}

const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn an_http_request_to_the_frame_port_is_refused_at_its_magic() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, HTTP_REQUEST);
    expect_error_frame_then_eof(&mut s, "bad magic 0x4745");
}

#[test]
fn an_http_request_to_the_line_port_is_echoed_line_by_line() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_line();
    send(&mut s, HTTP_REQUEST);
    // Half-close: the server answers every complete line, then closes cleanly.
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("after {}: {e}", show(&got)));
    assert_eq!(show(&got), show(b"GET / HTTP/1.1\nHost: x\n\n"));
}

#[test]
fn sigterm_with_abusive_clients_connected_exits_zero_and_serves_the_good_one() {
    const PINGS: usize = 2000;
    let mut server = TestServer::start(&["--shutdown-timeout", "2s"]);
    let stop = Arc::new(AtomicBool::new(false));

    // Slowloris: one byte of an endless line every 100 ms, until told to stop.
    let mut slow = server.connect_line();
    send(&mut slow, b"P");
    let slow_stop = Arc::clone(&stop);
    let slowloris = thread::spawn(move || {
        while !slow_stop.load(Ordering::Relaxed) {
            // After the server closes, writes fail; the loop just ends.
            if std::io::Write::write_all(&mut slow, b"I").is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });

    // A client that pipelines until the server pushes back, and never reads.
    let mut hog = server.line_client();
    let stall = write_until_stalled(
        &mut hog.stream,
        Duration::from_millis(500),
        64 * 1024 * 1024,
        |i| format!("PING {i}\n").into_bytes(),
    );
    assert!(
        stall.stalled,
        "server never pushed back on the never-reader"
    );

    // A frame client stuck in the middle of a body.
    let mut mid_frame = server.connect_frame();
    let mut partial = header(MESSAGE, 1000);
    partial.extend_from_slice(&[b'm'; 300]);
    send(&mut mid_frame, &partial);

    // The well-behaved clients: requests in flight, nothing read yet.
    let mut good = server.line_client();
    let mut requests = Vec::new();
    for i in 0..PINGS {
        requests.extend_from_slice(format!("PING {i}\n").as_bytes());
    }
    good.send(&requests);
    let mut good_frame = server.connect_frame();
    let mut frames = Vec::new();
    for i in 0..200u32 {
        frames.extend(frame(HEARTBEAT, &i.to_be_bytes()));
    }
    send(&mut good_frame, &frames);
    // Every client is accepted: slowloris, hog, mid-frame, good, good_frame, + STATS.
    assert!(
        wait_until(after(SETTLE), || server.stats()["active"] == 6),
        "not all clients accepted: {:?}",
        server.stats()
    );

    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    for i in 0..PINGS {
        assert_eq!(
            show(&good.read_line()),
            show(format!("PONG {i}\n").as_bytes())
        );
    }
    good.expect_eof();
    for i in 0..200u32 {
        assert_eq!(
            read_frame(&mut good_frame),
            (HEARTBEAT, i.to_be_bytes().to_vec())
        );
    }
    expect_eof(&mut good_frame);

    let limit = Duration::from_secs(2) + EXIT_SLACK;
    let status = server.wait_exit(limit.saturating_sub(signalled.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let status = status.unwrap_or_else(|| {
        panic!(
            "server still running {limit:?} after SIGTERM; log:\n{}",
            server.logs().join("\n")
        )
    });
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.logs().join("\n")
    );
    slowloris.join().expect("slowloris thread");
    drop((hog, mid_frame));
}

/// Wakeups of the event loop during `window`, from STATS taken before and after (each STATS
/// connection adds a handful of wakeups of its own).
fn wakeups_during(server: &TestServer, window: Duration) -> u64 {
    let before = server.stats()["wakeups"];
    // The window is the client's silence being measured, not a wait for the server.
    thread::sleep(window);
    server.stats()["wakeups"] - before
}

/// An idle server with one silent client wakes up a handful of times a second at most.
const QUIET_WAKEUPS: u64 = 100;
/// Longer than the reactor's 2 s `QUIET` buffer-release delay.
const PAST_QUIET: Duration = Duration::from_millis(2500);

#[test]

fn a_silent_client_with_a_partial_line_does_not_make_the_loop_spin() {
    let server = TestServer::start(&[]);
    let mut client = server.line_client();
    client.send(b"PING half a line");
    wait_stats(&server, 1, 16);
    thread::sleep(PAST_QUIET);
    let wakeups = wakeups_during(&server, Duration::from_secs(1));
    assert!(
        wakeups < QUIET_WAKEUPS,
        "{wakeups} wakeups in 1 s with one silent client: {:?}",
        server.stats()
    );
}

#[test]

fn a_paused_client_that_never_reads_does_not_make_the_loop_spin() {
    let server = TestServer::start(&[]);
    let mut hog = server.line_client();
    let stall = write_until_stalled(
        &mut hog.stream,
        Duration::from_millis(500),
        64 * 1024 * 1024,
        |i| format!("PING {i}\n").into_bytes(),
    );
    assert!(stall.stalled, "server never pushed back");
    thread::sleep(PAST_QUIET);
    let wakeups = wakeups_during(&server, Duration::from_secs(1));
    assert!(
        wakeups < QUIET_WAKEUPS,
        "{wakeups} wakeups in 1 s with one paused client: {:?}",
        server.stats()
    );
}
