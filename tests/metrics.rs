//! `--metrics-addr`: `GET /metrics` in the Prometheus text format, the wrong requests, the
//! timeouts, the per-worker labels, and `promtool check metrics` on a real scrape.
//!
//! Without a `promtool` binary the promtool test fails when `CI` is set (`.ci/run` installs
//! the `prometheus` package) and is skipped otherwise.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, Workers, after, connect, parse_stats, require_tool, wait_until};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One request on a fresh connection: everything the server sent until its close.
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send the request");
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .expect("the reply, then the server's close");
    reply
}

/// A reply split into its status line, its headers (in order) and its body.
struct Reply {
    status: String,
    headers: Vec<String>,
    body: String,
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n");
    parse(&exchange(addr, request.as_bytes()))
}

fn parse(reply: &[u8]) -> Reply {
    let text = String::from_utf8(reply.to_vec()).expect("a UTF-8 reply");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a head ending in a blank line");
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().expect("a status line");
    let headers = lines.collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The value of the sample `series` (a name with its labels, as written) in a scrape.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

/// The STATS keys that are counters of the loops (not the two that describe the fleet).
fn stats_keys(stats: &BTreeMap<String, u64>) -> Vec<String> {
    stats
        .keys()
        .filter(|key| !matches!(key.as_str(), "workers" | "active_by_worker"))
        .cloned()
        .collect()
}

#[test]
fn a_scrape_shows_every_stats_key_as_stats_counts_it() {
    // One loop: its series carry no `worker` label (the labelled ones have their own test).
    let server = TestServer::start(&["--metrics-addr", "127.0.0.1:0", "--workers", "1"]);
    let mut client = server.line_client();
    for _ in 0..3 {
        assert_eq!(client.request(b"PING"), b"PONG\n");
    }
    let stats = server.stats();
    let reply = get(server.metrics_addr(), "/metrics");
    assert_eq!(reply.status, "HTTP/1.1 200 OK");
    assert_eq!(
        reply.headers,
        [
            format!("Content-Type: {CONTENT_TYPE}"),
            format!("Content-Length: {}", reply.body.len()),
            "Connection: close".to_string(),
        ]
    );
    // STATS counts the requests before it; the scrape sees STATS too, and is not itself a
    // request: exactly one more.
    assert_eq!(
        sample(&reply.body, "tcp_reactor_requests_total"),
        Some(stats["requests"] as f64 + 1.0),
        "{}",
        reply.body
    );
    assert!(stats["requests"] >= 3);
    // Every STATS key is there, counters with `_total`, gauges without, with HELP and TYPE.
    let gauges = [
        "active",
        "lingering",
        "client_memory",
        "client_memory_peak",
        "cluster_up",
    ];
    for key in stats_keys(&stats) {
        let (name, kind) = match gauges.contains(&key.as_str()) {
            true => (format!("tcp_reactor_{key}"), "gauge"),
            false => (format!("tcp_reactor_{key}_total"), "counter"),
        };
        assert!(reply.body.contains(&format!("# HELP {name} ")), "{name}");
        assert!(
            reply.body.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}"
        );
        assert!(sample(&reply.body, &name).is_some(), "{name}");
    }
    assert_eq!(sample(&reply.body, "tcp_reactor_workers"), Some(1.0));
    assert!(sample(&reply.body, "tcp_reactor_loop_busy_seconds_total").is_some_and(|s| s > 0.0));
    let wakeups = sample(&reply.body, "tcp_reactor_events_per_wakeup_count").expect("wakeups");
    assert!(wakeups >= 1.0, "{}", reply.body);
    let reads = sample(&reply.body, "tcp_reactor_read_bytes_count").expect("reads");
    assert!(reads >= 4.0, "{}", reply.body);
    assert_eq!(
        sample(&reply.body, "tcp_reactor_read_bytes_bucket{le=\"+Inf\"}"),
        Some(reads)
    );
}

#[test]
fn other_paths_methods_and_garbage_get_their_status_then_a_close() {
    let server = TestServer::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = server.metrics_addr();
    let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Length: 24\r\nConnection: close\r\n\r\nnot found: try /metrics\n";
    assert_eq!(
        exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n"),
        not_found,
        "a wrong path"
    );
    let bad = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Length: 12\r\nConnection: close\r\n\r\nbad request\n";
    assert_eq!(exchange(addr, b"PING\r\n\r\n"), bad, "garbage");
    assert_eq!(
        exchange(addr, b"\x47\x4f\x01\x00\x00\x00\x00\x00"),
        bad,
        "a frame"
    );
    // A head over 8 KiB is refused before its end arrives.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    huge.resize(9 * 1024, b'a');
    assert_eq!(exchange(addr, &huge), bad, "an oversized head");
    let post = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        post.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"),
        "{}",
        String::from_utf8_lossy(&post)
    );
    // The metrics port is no door into the protocols: nothing was served there.
    assert_eq!(
        server.stats()["requests"],
        0,
        "STATS counts the requests before it"
    );
}

#[test]
fn an_idle_or_slow_metrics_connection_is_closed_at_its_timeout() {
    for (flag, partial) in [
        ("--idle-timeout", &b""[..]),
        ("--request-timeout", b"GET /metrics HTTP/1.1\r\n"),
    ] {
        let server = TestServer::start(&["--metrics-addr", "127.0.0.1:0", flag, "1s"]);
        let mut stream = connect(server.metrics_addr());
        stream.write_all(partial).expect("send");
        let start = Instant::now();
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .expect("closed, not timed out");
        let waited = start.elapsed();
        assert!(
            rest.is_empty(),
            "{flag}: {}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
            "{flag}: closed after {waited:?}"
        );
    }
}

#[test]
fn a_client_whose_eof_came_with_its_request_is_let_go_at_once() {
    let server = TestServer::start_logging(&["--metrics-addr", "127.0.0.1:0"], "debug");
    // Stopped, so that the request and the EOF are both in when the server first looks: one
    // edge for both. (Linux also re-announces readiness when the ACK of the reply comes in,
    // so this passes without the server's second look too; mio promises no such edge.)
    server.signal(libc::SIGSTOP);
    let mut stream = connect(server.metrics_addr());
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .expect("send");
    stream.shutdown(Shutdown::Write).expect("our EOF");
    server.signal(libc::SIGCONT);
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .expect("the reply, then a close");
    assert!(reply.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // Not held for the 5 s linger: its EOF is already known.
    let released = wait_until(after(Duration::from_secs(2)), || {
        server.logged("closed: closed after the peer's EOF")
    });
    assert!(released, "{}", server.logs().join("\n"));
}

#[test]
fn with_two_workers_every_series_is_labelled_by_its_worker() {
    for workers in [Workers::TwoLeastConn, Workers::TwoReuseport] {
        let server = workers.start(&["--metrics-addr", "127.0.0.1:0"]);
        // Several connections, so that both workers serve some (least-conn alternates them).
        let mut clients: Vec<_> = (0..4).map(|_| server.line_client()).collect();
        for client in &mut clients {
            assert_eq!(client.request(b"PING"), b"PONG\n");
        }
        // Both views lag the other worker by up to its turn: STATS adds its published
        // counters, and so does the scrape. Ask both again until they agree (STATS counts the
        // requests before it, and then itself).
        let mut body = String::new();
        let mut requests = 0;
        let caught_up = wait_until(after(Duration::from_secs(5)), || {
            requests = server.stats()["requests"] + 1;
            body = get(server.metrics_addr(), "/metrics").body;
            let sum: Option<f64> = ["0", "1"]
                .iter()
                .map(|w| {
                    sample(
                        &body,
                        &format!("tcp_reactor_requests_total{{worker=\"{w}\"}}"),
                    )
                })
                .sum();
            sum == Some(requests as f64)
        });
        assert!(
            caught_up,
            "{workers:?}: {requests} requests; scrape:\n{body}"
        );
        assert_eq!(sample(&body, "tcp_reactor_workers"), Some(2.0));
        for worker in ["0", "1"] {
            for series in [
                format!("tcp_reactor_active{{worker=\"{worker}\"}}"),
                format!("tcp_reactor_loop_busy_seconds_total{{worker=\"{worker}\"}}"),
                format!("tcp_reactor_events_per_wakeup_count{{worker=\"{worker}\"}}"),
            ] {
                assert!(sample(&body, &series).is_some(), "{workers:?}: {series}");
            }
        }
        drop(clients);
    }
}

#[test]
fn promtool_accepts_a_scrape_with_and_without_workers() {
    let Some(promtool) = require_tool("promtool", "prometheus", "promtool_accepts_a_scrape") else {
        return;
    };
    for workers in [Workers::One, Workers::TwoLeastConn] {
        let server = workers.start(&["--metrics-addr", "127.0.0.1:0"]);
        let mut client = server.line_client();
        assert_eq!(client.request(b"PING"), b"PONG\n");
        let body = get(server.metrics_addr(), "/metrics").body;
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        check
            .stdin
            .take()
            .expect("piped")
            .write_all(body.as_bytes())
            .expect("feed promtool");
        let out = check.wait_with_output().expect("promtool's verdict");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{workers:?}: promtool: {said}\n{body}"
        );
        assert_eq!(said.trim(), "", "{workers:?}: promtool's lint findings");
        let stats = parse_stats(&client.request(b"STATS"));
        assert!(stats["requests"] >= 1);
    }
}
