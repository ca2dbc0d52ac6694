//! Several loops in one process (`--workers N`): connections spread over them, one chat room
//! across them, STATS summed, logs naming the worker, the flags checked.
//!
//! The behaviours that must not change with the number of workers (chat, limits, STATS,
//! shutdown) are tested over every case of `common::Workers` in their own files; this one
//! holds what exists only with several.

mod common;

use common::{
    LineClient, TestServer, Workers, active_by_worker, after, parse_stats, show, stats_line_when,
};
use std::process::Command;

/// The STATS line of `client`, raw.
fn stats_line(client: &mut LineClient) -> Vec<u8> {
    client.request(b"STATS")
}

#[test]
fn least_conn_spreads_200_connections_within_one_of_even() {
    let server = Workers::TwoLeastConn.start(&[]);
    let mut clients: Vec<LineClient> = (0..200)
        .map(|i| {
            let mut c = server.line_client();
            let ping = format!("PING {i}");
            assert_eq!(c.request(ping.as_bytes()), format!("PONG {i}\n").as_bytes());
            c
        })
        .collect();
    let line = stats_line_when(&mut clients[0], |s| s["active"] == 200);
    let stats = parse_stats(&line);
    assert_eq!(
        (stats["workers"], stats["active"]),
        (2, 200),
        "{}",
        show(&line)
    );
    let spread = active_by_worker(&line);
    let (most, least) = (spread.iter().max(), spread.iter().min());
    assert!(
        most.zip(least).is_some_and(|(m, l)| m - l <= 1),
        "active_by_worker {spread:?}"
    );
}

#[test]
fn reuseport_workers_share_the_ports_and_serve_everything() {
    let server = Workers::TwoReuseport.start(&[]);
    let mut clients: Vec<LineClient> = (0..64).map(|_| server.line_client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let ping = format!("PING {i}");
        assert_eq!(c.request(ping.as_bytes()), format!("PONG {i}\n").as_bytes());
    }
    let line = stats_line_when(&mut clients[0], |s| s["active"] == 64);
    let stats = parse_stats(&line);
    assert_eq!(
        (stats["workers"], stats["active"]),
        (2, 64),
        "{}",
        show(&line)
    );
    assert_eq!(active_by_worker(&line).len(), 2);
}

#[test]
fn one_worker_reports_itself_and_names_no_worker_in_its_logs() {
    let server = TestServer::start_logging(&["--workers", "1"], "debug");
    let mut c = server.line_client();
    let line = stats_line(&mut c);
    let stats = parse_stats(&line);
    assert_eq!(stats["workers"], 1);
    assert_eq!(active_by_worker(&line), [stats["active"]]);
    assert!(server.logged_soon("accepted from"));
    assert!(!server.logs().iter().any(|l| l.contains("] w0 ")));
}

#[test]
fn log_lines_name_their_worker() {
    let server = TestServer::start_logging(&["--workers", "2"], "debug");
    let _first = server.line_client();
    let _second = server.line_client();
    let deadline = after(std::time::Duration::from_secs(5));
    let named = |worker: &str| {
        server
            .logs()
            .iter()
            .any(|l| l.contains(&format!("] {worker} conn=")) && l.contains("accepted from"))
    };
    assert!(
        common::wait_until(deadline, || named("w0") && named("w1")),
        "{}",
        server.logs().join("\n")
    );
}

#[test]
fn sums_over_the_workers_keep_accepted_equal_to_closed_plus_active() {
    for workers in [Workers::TwoLeastConn, Workers::TwoReuseport] {
        let server = workers.start(&[]);
        let mut keeper = server.line_client();
        let mut others: Vec<LineClient> = (0..10).map(|_| server.line_client()).collect();
        for c in &mut others {
            assert_eq!(c.request(b"PING"), b"PONG\n");
        }
        for c in others.iter_mut().take(4) {
            assert_eq!(c.request(b"QUIT"), b"BYE\n");
            c.expect_eof();
        }
        drop(others);
        let line = stats_line_when(&mut keeper, |s| s["active"] == 1 && s["accepted"] == 11);
        let s = parse_stats(&line);
        assert_eq!(
            (s["accepted"], s["active"], s["closed"]),
            (11, 1, 10),
            "{workers:?}: {}",
            show(&line)
        );
        assert_eq!(s["accepted"], s["closed"] + s["active"], "{workers:?}");
    }
}

/// A STATS waits for every other worker's next publish: what another worker has answered
/// before the STATS was sent is in the sums, every time (a copy one turn old would miss it
/// now and then, and show it in the next STATS instead).
#[test]
fn stats_count_what_another_worker_answered_just_before() {
    let server = Workers::TwoLeastConn.start(&[]);
    let mut asker = server.line_client();
    let mut other = server.line_client();
    assert_eq!(other.request(b"PING"), b"PONG\n");
    let line = stats_line_when(&mut asker, |s| s["active"] == 2);
    assert_eq!(active_by_worker(&line), [1, 1], "{}", show(&line));
    // A STATS does not count itself, as with one worker: this one is counted from now on.
    let mut requests = parse_stats(&line)["requests"] + 1;
    for round in 0..2000 {
        assert_eq!(other.request(b"PING"), b"PONG\n");
        // Pipelined behind the STATS: answered after it, in order.
        asker.send(b"STATS\nPING after\n");
        let line = asker.read_line();
        assert_eq!(asker.read_line(), b"PONG after\n");
        let now = parse_stats(&line)["requests"];
        // Exactly the PING on the other worker since the last STATS was answered.
        assert_eq!(now, requests + 1, "round {round}: {}", show(&line));
        requests = now + 2;
    }
}

#[test]
fn bad_worker_counts_are_refused_with_the_usage_status() {
    for (args, wanted) in [
        (&["--workers", "0"][..], "--workers"),
        (&["--workers", "many"][..], "--workers"),
        (&["--balance", "random"][..], "--balance"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tcp-reactor"))
            .args(args)
            .output()
            .expect("run tcp-reactor");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
}
