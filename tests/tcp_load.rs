//! The real `tcp-load` binary against the real server (and against a few deliberately wrong
//! targets): exit status, the JSON summary's counts, error kinds, the percentile file.
//!
//! Every run is bounded: `--requests` (or a short `--duration`) and a process deadline, so a
//! hang fails the test instead of wedging `cargo test`. No timing assertions beyond what a
//! timetable guarantees (an open-loop run cannot finish before its last slot).
//!
//! A behaviour that holds plain and over TLS is one test over a table of [`Transport`]s; the
//! tests under "over TLS" are about TLS alone (certificates, `--insecure`, its flags).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{TestCert, TestServer, UsersFile};
use serde_json::Value;

/// How long one tcp-load run may take before the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(20);

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs tcp-load with `args`, returning its exit code and output.
fn tcp_load(args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcp-load"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcp-load");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tcp-load {args:?} ran over {RUN_DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code().expect("exited, not killed"),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn assert_no_errors(json: &Value, context: &str) {
    for kind in ["connect", "reset", "eof", "timeout", "mismatch"] {
        assert_eq!(
            json["errors"][kind], 0,
            "{context}: {kind} errors in {json}"
        );
    }
}

/// A ping run to a port nothing listens on: the base of the usage-error tables.
const PING_NOWHERE: [&str; 6] = [
    "--addr",
    "127.0.0.1:1",
    "--protocol",
    "line",
    "--workload",
    "ping",
];

/// `tcp-load --help` exits 0 and names each of `needles`.
fn assert_help_names(needles: &[&str]) {
    let help = tcp_load(&["--help"]);
    assert_eq!(help.code, 0);
    for needle in needles {
        assert!(help.stdout.contains(needle), "--help lacks {needle:?}");
    }
}

/// tcp-load refuses `base` + each case's arguments as a usage error: exit 2, nothing on
/// stdout, the case's text on stderr.
fn assert_usage_errors(base: &[&str], cases: &[(&[&str], &str)]) {
    for (extra, needle) in cases {
        let args = [base, extra].concat();
        let run = tcp_load(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
}

/// The transports tcp-load speaks; a behaviour that both share is one test over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Plain, Transport::Tls];

    fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "TLS",
        }
    }
}

/// A server listening on a transport's ports, and what tcp-load needs to reach it there.
struct Target {
    transport: Transport,
    server: TestServer,
    /// The server's certificate, which tcp-load trusts (`--ca`); TLS only.
    cert: Option<TestCert>,
}

impl Target {
    fn start(transport: Transport) -> Target {
        let (server, cert) = match transport {
            Transport::Plain => (TestServer::start(&[]), None),
            Transport::Tls => {
                let cert = TestCert::new();
                (TestServer::start_tls(&cert, &[]), Some(cert))
            }
        };
        Target {
            transport,
            server,
            cert,
        }
    }

    /// The address of `protocol`'s listener on this transport.
    fn addr(&self, protocol: &str) -> String {
        let addr = match (self.transport, protocol) {
            (Transport::Plain, "line") => self.server.line_addr(),
            (Transport::Plain, "frame") => self.server.frame_addr(),
            (Transport::Tls, "line") => self.server.line_tls_addr(),
            (Transport::Tls, "frame") => self.server.frame_tls_addr(),
            (_, other) => panic!("no {other} listener"),
        };
        addr.to_string()
    }

    /// tcp-load's flags for this transport: none, or `--tls --ca FILE`.
    fn tls_args(&self) -> Vec<&str> {
        match &self.cert {
            None => Vec::new(),
            Some(cert) => vec!["--tls", "--ca", cert.cert_arg()],
        }
    }
}

/// The summary's TLS part: over TLS, `connections` handshakes timed and no failure; plain,
/// none at all (`tls` is null).
fn assert_handshakes(transport: Transport, json: &Value, connections: u64, context: &str) {
    let tls = &json["tls"];
    match transport {
        Transport::Plain => {
            assert!(tls.is_null(), "{context}: {json}");
            assert_eq!(json["settings"]["tls"], false, "{context}");
            assert!(json["settings"]["server_name"].is_null(), "{context}");
        }
        Transport::Tls => {
            assert_eq!(tls["handshakes"], connections, "{context}: {json}");
            let p50 = tls["handshake_us"]["p50"].as_f64().unwrap();
            let p99 = tls["handshake_us"]["p99"].as_f64().unwrap();
            assert!(p50 > 0.0 && p99 >= p50, "{context}: {tls}");
            assert_eq!(tls["failures"], serde_json::json!({}), "{context}");
            assert_eq!(json["settings"]["tls"], true, "{context}");
            assert_eq!(json["settings"]["server_name"], "127.0.0.1", "{context}");
        }
    }
}

/// `--requests N` for every workload on its protocol, plain and over TLS: exit 0, exactly N
/// recorded, no errors, and the server executed exactly N requests (none more were sent);
/// over TLS, one timed handshake per connection, and none without.
#[test]
fn every_workload_completes_exactly_n_requests() {
    let cases: &[(Transport, &str, &str, &[&str])] = &[
        (Transport::Plain, "line", "echo", &[]),
        (Transport::Plain, "line", "ping", &[]),
        (Transport::Plain, "line", "raw", &["--request", "PING"]),
        (Transport::Plain, "frame", "heartbeat", &["--size", "16"]),
        (Transport::Plain, "frame", "message", &[]),
        (Transport::Tls, "line", "ping", &[]),
        (Transport::Tls, "line", "echo", &["--size", "3000"]),
        (Transport::Tls, "frame", "message", &[]),
        (Transport::Tls, "frame", "heartbeat", &["--size", "20000"]),
    ];
    const N: u64 = 3000;
    for transport in Transport::ALL {
        let target = Target::start(transport);
        for &(_, protocol, workload, extra) in cases.iter().filter(|case| case.0 == transport) {
            let before = target.server.stats()["requests"];
            let addr = target.addr(protocol);
            let mut args = vec![
                "--addr",
                &addr,
                "--protocol",
                protocol,
                "--workload",
                workload,
                "--requests",
                "3000",
                "--connections",
                "5",
                "--pipeline",
                "8",
                "--threads",
                "2",
                "--json",
            ];
            args.extend_from_slice(&target.tls_args());
            args.extend_from_slice(extra);
            let run = tcp_load(&args);
            let context = format!("{} {protocol}/{workload}", transport.name());
            assert_eq!(run.code, 0, "{context}: stderr:\n{}", run.stderr);
            let json = run.json();
            assert_eq!(json["requests"], N, "{context}: {json}");
            assert_no_errors(&json, &context);
            assert_eq!(json["connections"], 5, "{context}");
            assert_eq!(json["threads"], 2, "{context}");
            assert!(
                json["latency_us"]["p50"].as_f64().unwrap() > 0.0,
                "{context}"
            );
            assert!(json["duration_s"].as_f64().unwrap() > 0.0, "{context}");
            assert_eq!(json["settings"]["workload"], workload, "{context}");
            assert_handshakes(transport, &json, 5, &context);
            // One STATS request between the two snapshots, plus exactly N from tcp-load.
            let after = target.server.stats()["requests"];
            assert_eq!(after - before, N + 1, "{context}: the server executed");
        }
    }
}

/// Logins are verified for real (argon2id, tens of milliseconds each), so fewer of them: the
/// `login` workload's `user:pass` is in the users file, and every Login gets its LoginAck.
#[test]
fn the_login_workload_is_verified_against_the_users_file() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    let run = tcp_load(&[
        "--addr",
        &server.frame_addr().to_string(),
        "--protocol",
        "frame",
        "--workload",
        "login",
        "--requests",
        "40",
        "--connections",
        "4",
        "--pipeline",
        "2",
        "--json",
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["requests"], 40, "{json}");
    assert_no_errors(&json, "frame/login");
    assert_eq!(server.stats()["logins"], 40);
    // One login per connection: each connection logs in, is answered, and is replaced.
    let run = tcp_load(&[
        "--addr",
        &server.frame_addr().to_string(),
        "--protocol",
        "frame",
        "--workload",
        "login",
        "--requests",
        "12",
        "--requests-per-connection",
        "1",
        "--connections",
        "4",
        "--json",
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_no_errors(&json, "frame/login, one per connection");
    assert_eq!(
        (json["requests"].clone(), json["connects"].clone()),
        (12.into(), 12.into())
    );
    assert_eq!(server.stats()["logins"], 40 + 12);
}

#[test]
fn open_loop_follows_its_timetable() {
    let server = TestServer::start(&[]);
    // 300 requests at 1500/s over 3 connections: the last slot is 0.2 s after the first.
    let run = tcp_load(&[
        "--addr",
        &server.line_addr().to_string(),
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--rate",
        "1500",
        "--requests",
        "300",
        "--connections",
        "3",
        "--threads",
        "1",
        "--json",
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["requests"], 300);
    assert_no_errors(&json, "open loop");
    assert_eq!(json["settings"]["loop"], "open");
    let duration = json["duration_s"].as_f64().unwrap();
    assert!(
        duration >= 0.19,
        "finished before the timetable allows: {json}"
    );
}

#[test]
fn a_duration_run_measures_after_its_warmup() {
    let server = TestServer::start(&[]);
    let hdr = std::env::temp_dir().join(format!("tcp-load-test-{}.hdr", std::process::id()));
    let run = tcp_load(&[
        "--addr",
        &server.frame_addr().to_string(),
        "--protocol",
        "frame",
        "--workload",
        "heartbeat",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--source-addr",
        "127.0.0.1,127.0.0.2",
        "--json",
        "--hdr-out",
        hdr.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_no_errors(&json, "duration run");
    assert_eq!(json["duration_s"], 0.5);
    let requests = json["requests"].as_u64().unwrap();
    assert!(requests > 0, "{json}");
    // The percentile file: the Java HdrHistogram layout, counting every recorded request.
    let table = std::fs::read_to_string(&hdr).expect("--hdr-out written");
    let _ = std::fs::remove_file(&hdr);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    let total = format!("Total count    = {requests:12}]");
    assert!(table.contains(&total), "{total:?} not in:\n{table}");
    assert!(lines.last().unwrap().starts_with("#[Buckets = "));
}

/// The text summary, plain and over TLS (which adds the `tls` line: handshakes and times).
#[test]
fn text_summary_by_default() {
    let cases: &[(Transport, &[&str])] = &[
        (Transport::Plain, &["--workload", "echo", "--size", "100"]),
        (Transport::Tls, &["--workload", "ping", "--pipeline", "4"]),
    ];
    for &(transport, shape) in cases {
        let target = Target::start(transport);
        let addr = target.addr("line");
        let mut args = vec![
            "--addr",
            &addr,
            "--protocol",
            "line",
            "--requests",
            "500",
            "--connections",
            "2",
        ];
        args.extend_from_slice(shape);
        args.extend_from_slice(&target.tls_args());
        let run = tcp_load(&args);
        let name = transport.name();
        assert_eq!(run.code, 0, "{name}: stderr:\n{}", run.stderr);
        assert!(
            run.stdout.starts_with("tcp-load "),
            "{name}: {}",
            run.stdout
        );
        for needle in [
            "requests     500 in",
            "latency µs   min",
            "connect 0 reset 0 eof 0 timeout 0 mismatch 0",
            "2 of 2 established",
            "µs/request",
        ] {
            assert!(
                run.stdout.contains(needle),
                "{name}: {needle:?} not in\n{}",
                run.stdout
            );
        }
        let handshakes = "\n  tls          handshakes 2  p50 ";
        match transport {
            Transport::Plain => assert!(!run.stdout.contains("\n  tls "), "{}", run.stdout),
            Transport::Tls => assert!(
                run.stdout.contains(handshakes),
                "{handshakes:?} not in\n{}",
                run.stdout
            ),
        }
        assert!(!run.stdout.contains("tls failed"), "{name}: {}", run.stdout);
        assert!(
            !run.stderr.contains("requests/s"),
            "{name}: no progress line unless asked for"
        );
    }
}

#[test]
fn a_line_too_long_is_a_mismatch() {
    // `PING` is 4 bytes: over --max-line 2, answered `ERR line too long`, then closed.
    let server = TestServer::start(&["--max-line", "2"]);
    let run = tcp_load(&[
        "--addr",
        &server.line_addr().to_string(),
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "10",
        "--connections",
        "1",
        "--json",
    ]);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["errors"]["mismatch"], 1, "{json}");
    assert_eq!(json["requests"], 0);
    assert!(
        run.stderr
            .contains(r#"expected "PONG\n", received "ERR line too long\n""#),
        "the mismatch is logged with both sides:\n{}",
        run.stderr
    );
}

#[test]
fn the_line_protocol_on_the_frame_port_is_a_mismatch() {
    let server = TestServer::start(&[]);
    let run = tcp_load(&[
        "--addr",
        &server.frame_addr().to_string(),
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "20",
        "--connections",
        "2",
        "--json",
    ]);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["errors"]["mismatch"], 2, "{json}");
    assert!(
        run.stderr
            .contains(r#"(an Error frame: "bad magic 0x5049")"#),
        "{}",
        run.stderr
    );
}

#[test]
fn a_refused_address_counts_connect_errors() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let run = tcp_load(&[
        "--addr",
        &addr,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "10",
        "--connections",
        "3",
        "--json",
    ]);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["errors"]["connect"], 3, "{json}");
    assert_eq!(json["connections"], 0);
    assert_eq!(json["requests"], 0);
}

/// A listener that accepts and never answers: the request times out.
#[test]
fn a_silent_server_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hold = thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_secs(1));
        drop(socket);
    });
    let run = tcp_load(&[
        "--addr",
        &addr,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "5",
        "--connections",
        "1",
        "--timeout",
        "300ms",
        "--json",
    ]);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    assert_eq!(run.json()["errors"]["timeout"], 1);
    hold.join().unwrap();
}

/// A server that reads one request and closes: the outstanding request ends in `eof`.
#[test]
fn a_server_closing_mid_request_is_an_eof() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 5];
        socket.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"PING\n");
        socket.write_all(b"PONG\n").unwrap();
        socket.read_exact(&mut request).unwrap();
        // Everything read: this close is a clean FIN, with a request unanswered.
    });
    let run = tcp_load(&[
        "--addr",
        &addr,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "5",
        "--connections",
        "1",
        "--json",
    ]);
    server.join().unwrap();
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["errors"]["eof"], 1, "{json}");
    assert_eq!(json["requests"], 1, "the first reply counts");
}

#[test]
fn bad_arguments_exit_2() {
    let cases: &[&[&str]] = &[
        &[
            "--addr",
            "127.0.0.1:1",
            "--protocol",
            "frame",
            "--workload",
            "echo",
        ],
        &[
            "--addr",
            "127.0.0.1:1",
            "--protocol",
            "line",
            "--workload",
            "raw",
        ],
        &[
            "--addr",
            "127.0.0.1:1",
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--pipeline",
            "0",
        ],
        &["--protocol", "line", "--workload", "ping"],
        &[
            "--addr",
            "127.0.0.1:1",
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--bogus",
        ],
    ];
    for args in cases {
        let run = tcp_load(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
        assert!(run.stderr.contains("error:"), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn many_connections_from_several_source_addresses() {
    let server = TestServer::start(&["--max-connections", "1000"]);
    let run = tcp_load(&[
        "--addr",
        &server.line_addr().to_string(),
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--connections",
        "400",
        "--connect-rate",
        "20000",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--threads",
        "2",
        "--source-addr",
        "127.0.0.1,127.0.0.2,127.0.0.3",
        "--json",
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_no_errors(&json, "400 connections");
    assert_eq!(json["connections"], 400, "{json}");
    assert!(json["requests"].as_u64().unwrap() > 0, "{json}");
}

/// Waits until the server has closed every connection but the STATS client's own (RSTs and
/// FINs from a finished tcp-load may still be on their way), then returns its STATS.
fn stats_once_quiet(server: &TestServer) -> std::collections::BTreeMap<String, u64> {
    let mut client = server.line_client();
    common::stats_when(&mut client, |stats| stats["active"] == 1)
}

/// `--requests-per-connection 1` for a second, plain and over TLS: no errors; `connects` (the
/// connections established in the window, as replies are recorded in it) differ from the
/// requests by at most `--connections` (those open across the window's start, and across its
/// end); the server accepted every one of them, and counted none of the closes (RSTs) as a
/// protocol error.
#[test]
fn short_connections_for_a_second_reconnect_cleanly() {
    const CONNECTIONS: u64 = 8;
    for transport in Transport::ALL {
        let target = Target::start(transport);
        let addr = target.addr("line");
        let mut args = vec![
            "--addr",
            &addr,
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--connections",
            "8",
            "--threads",
            "2",
            "--requests-per-connection",
            "1",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--json",
        ];
        args.extend_from_slice(&target.tls_args());
        let run = tcp_load(&args);
        let name = transport.name();
        assert_eq!(run.code, 0, "{name}: stderr:\n{}", run.stderr);
        let json = run.json();
        assert_no_errors(&json, name);
        let requests = json["requests"].as_u64().unwrap();
        let connects = json["connects"].as_u64().unwrap();
        assert!(requests > 0, "{name}: {json}");
        assert!(
            requests.abs_diff(connects) <= CONNECTIONS,
            "{name}: {requests} requests, {connects} connects"
        );
        assert_eq!(json["connects_per_s"].as_f64(), Some(connects as f64));
        assert!(json["connect_latency_us"]["p50"].as_f64().unwrap() > 0.0);
        assert_eq!(
            json["connections"], CONNECTIONS,
            "{name}: places established"
        );
        assert_eq!(json["settings"]["requests_per_connection"], 1);
        assert_eq!(json["settings"]["close"], "rst");
        if transport == Transport::Tls {
            assert!(json["tls"]["handshakes"].as_u64().unwrap() > CONNECTIONS);
            assert_eq!(json["tls"]["failures"], serde_json::json!({}), "{name}");
        }
        let stats = stats_once_quiet(&target.server);
        // Every connect, and the STATS client on top.
        assert!(stats["accepted"] > connects, "{name}: {stats:?}");
        assert_eq!(stats["protocol_errors"], 0, "{name}: {stats:?}");
    }
}

/// With `--requests M` (no warmup) every connect is in the window and pays for its N requests
/// when it starts: `connects` is each thread's share of M divided by N, rounded up, exactly,
/// and the server accepted exactly that many connections and executed exactly M requests.
/// Over each workload shape, plain and over TLS, closed with an RST and with a FIN.
#[test]
fn short_connections_send_exactly_n_requests_each() {
    // (transport, protocol, workload, requests per connection, extra flags)
    let cases: &[(Transport, &str, &str, u64, &[&str])] = &[
        (Transport::Plain, "line", "ping", 1, &[]),
        (
            Transport::Plain,
            "line",
            "echo",
            4,
            &["--pipeline", "3", "--size", "100"],
        ),
        (
            Transport::Plain,
            "line",
            "raw",
            2,
            &["--pipeline", "2", "--request", "PING"],
        ),
        (Transport::Plain, "frame", "heartbeat", 1, &["--size", "16"]),
        (
            Transport::Plain,
            "frame",
            "message",
            2,
            &["--pipeline", "8"],
        ),
        (Transport::Plain, "line", "ping", 1, &["--close", "fin"]),
        (Transport::Tls, "line", "ping", 1, &[]),
        (
            Transport::Tls,
            "frame",
            "heartbeat",
            3,
            &["--pipeline", "2"],
        ),
    ];
    const M: u64 = 600; // 300 per thread
    for transport in Transport::ALL {
        let target = Target::start(transport);
        for &(_, protocol, workload, n, extra) in cases.iter().filter(|case| case.0 == transport) {
            let context = format!("{} {protocol}/{workload} x{n} {extra:?}", transport.name());
            let before = target.server.stats();
            let addr = target.addr(protocol);
            let per_connection = n.to_string();
            let mut args = vec![
                "--addr",
                &addr,
                "--protocol",
                protocol,
                "--workload",
                workload,
                "--requests",
                "600",
                "--requests-per-connection",
                &per_connection,
                "--connections",
                "5",
                "--threads",
                "2",
                "--json",
            ];
            args.extend_from_slice(&target.tls_args());
            args.extend_from_slice(extra);
            let run = tcp_load(&args);
            assert_eq!(run.code, 0, "{context}: stderr:\n{}", run.stderr);
            let json = run.json();
            assert_no_errors(&json, &context);
            assert_eq!(json["requests"], M, "{context}: {json}");
            let connects = 2 * (M / 2).div_ceil(n);
            assert_eq!(json["connects"], connects, "{context}: {json}");
            let after = stats_once_quiet(&target.server);
            // Both STATS clients are counted: the one after, and its request.
            assert_eq!(
                after["accepted"] - before["accepted"],
                connects + 1,
                "{context}"
            );
            assert_eq!(after["requests"] - before["requests"], M + 1, "{context}");
            assert_eq!(after["protocol_errors"], 0, "{context}");
        }
    }
}

/// Short connections are refused where they cannot work, with a usage error (exit 2).
#[test]
fn short_connection_usage_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--workload", "chat", "--requests-per-connection", "1"],
            "--requests-per-connection is not for --workload chat",
        ),
        (
            &[
                "--workload",
                "ping",
                "--requests-per-connection",
                "2",
                "--rate",
                "100",
            ],
            "cannot be used with --rate",
        ),
        (
            &["--workload", "ping", "--close", "rst"],
            "--close only applies with --requests-per-connection",
        ),
    ];
    assert_usage_errors(&["--addr", "127.0.0.1:1", "--protocol", "line"], cases);
}

/// `--addr` twice: connection j goes to address j mod 2, so of 5 connections the first
/// server accepts 3 and the second 2 (each also accepts the STATS client that asks).
#[test]
fn connections_are_spread_over_several_addresses_in_turn() {
    let first = TestServer::start(&[]);
    let second = TestServer::start(&[]);
    let (a, b) = (
        first.line_addr().to_string(),
        second.line_addr().to_string(),
    );
    let run = tcp_load(&[
        "--addr",
        &a,
        "--addr",
        &b,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "1000",
        "--connections",
        "5",
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_no_errors(&json, "two addresses");
    assert_eq!(json["requests"], 1000, "{json}");
    assert_eq!(json["connections"], 5, "{json}");
    assert_eq!(json["settings"]["addr"], a.as_str());
    assert_eq!(json["settings"]["addrs"], serde_json::json!([a, b]));
    assert_eq!(first.stats()["accepted"], 3 + 1);
    assert_eq!(second.stats()["accepted"], 2 + 1);
}

#[test]
fn server_pid_reports_the_servers_cpu_over_the_window() {
    let server = TestServer::start(&[]);
    let addr = server.line_addr().to_string();
    let pid = server.pid().to_string();
    let run = tcp_load(&[
        "--addr",
        &addr,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "400000",
        "--connections",
        "4",
        "--pipeline",
        "16",
        "--threads",
        "1",
        "--json",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    let server_cpu = json["server_cpu_s"]
        .as_f64()
        .expect("server_cpu_s is a number");
    let per_request = json["server_cpu_us_per_request"]
        .as_f64()
        .expect("a number");
    // /proc counts CPU in 10 ms ticks, and 20,000 requests cost the server about 6 ms of it:
    // too few to be sure of one tick. 400,000 cost well over ten ticks, and far less than a
    // second each.
    assert!(server_cpu > 0.0, "{json}");
    assert!(per_request > 0.0 && per_request < 1e6, "{json}");

    // Without the flag the keys are there, as null.
    let run = tcp_load(&[
        "--addr",
        &addr,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--requests",
        "100",
        "--json",
    ]);
    assert!(run.json()["server_cpu_s"].is_null());
}

// ---------------------------------------------------------------------------------------
// chat

/// tcp-load's flags for a chat run of `connections` sessions on `addr`.
fn chat_args<'a>(addr: &'a str, connections: &'a str) -> Vec<&'a str> {
    vec![
        "--addr",
        addr,
        "--protocol",
        "line",
        "--workload",
        "chat",
        "--connections",
        connections,
        "--json",
    ]
}

/// The summary's chat counts that must be 0 in a run without errors.
fn assert_chat_clean(json: &Value, context: &str) {
    assert_no_errors(json, context);
    for key in [
        "missing",
        "duplicated",
        "reordered",
        "disconnected",
        "foreign",
    ] {
        assert_eq!(json["chat"][key], 0, "{context}: {key} in {json}");
    }
}

/// Against the real server, closed loop (plain and over TLS) and open loop: every message
/// sent in the window reaches every other session, so deliveries = messages × (sessions − 1)
/// exactly, with no error; the deliveries have latencies, and the SAYs their OK latencies.
#[test]
fn every_chat_message_reaches_every_other_session_once() {
    let cases: &[(Transport, &[&str])] = &[
        (Transport::Plain, &["--pipeline", "2"]),
        (Transport::Tls, &[]),
        (Transport::Plain, &["--rate", "2000", "--pipeline", "4"]),
    ];
    for &(transport, shape) in cases {
        let target = Target::start(transport);
        let addr = target.addr("line");
        let mut args = chat_args(&addr, "20");
        args.extend_from_slice(&["--duration", "1", "--warmup", "0.2", "--threads", "2"]);
        args.extend_from_slice(shape);
        args.extend_from_slice(&target.tls_args());
        let run = tcp_load(&args);
        let context = format!("{} {shape:?}", transport.name());
        assert_eq!(run.code, 0, "{context}: stderr:\n{}", run.stderr);
        let json = run.json();
        assert_chat_clean(&json, &context);
        let chat = &json["chat"];
        assert_eq!(chat["sessions"], 20, "{context}: {json}");
        let messages = chat["messages"].as_u64().unwrap();
        assert!(messages > 0, "{context}: {json}");
        assert_eq!(chat["deliveries"], messages * 19, "{context}: {json}");
        assert!(json["requests"].as_u64().unwrap() > 0, "{context}");
        let delivery = &chat["delivery_latency_us"];
        let (p50, p99) = (
            delivery["p50"].as_f64().unwrap(),
            delivery["p99"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{context}: {chat}");
        assert!(
            chat["deliveries_per_s"].as_f64().unwrap() > 0.0,
            "{context}"
        );
        assert!(
            chat["names"].as_str().unwrap().ends_with("<index>"),
            "{chat}"
        );
        assert_eq!(json["settings"]["drain_s"], 2.0, "{context}");
        assert_eq!(target.server.stats()["slow_reader_drops"], 0, "{context}");
    }
}

/// Two runs at once against one server: each run's names are its own, so neither takes the
/// other's, and each counts the other's pushes as foreign, not as errors.
#[test]
fn two_chat_runs_share_a_server_without_colliding() {
    let server = TestServer::start(&[]);
    let addr = server.line_addr().to_string();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            thread::spawn(move || {
                let mut args = chat_args(&addr, "5");
                args.extend_from_slice(&["--duration", "1", "--warmup", "0.1"]);
                tcp_load(&args)
            })
        })
        .collect();
    let (mut names, mut foreign) = (Vec::new(), 0);
    for run in runs {
        let run = run.join().unwrap();
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        let json = run.json();
        assert_no_errors(&json, "two runs");
        let chat = &json["chat"];
        for key in ["missing", "duplicated", "reordered", "disconnected"] {
            assert_eq!(chat[key], 0, "{key} in {json}");
        }
        let messages = chat["messages"].as_u64().unwrap();
        assert_eq!(chat["deliveries"], messages * 4, "{json}");
        names.push(chat["names"].as_str().unwrap().to_string());
        foreign += chat["foreign"].as_u64().unwrap();
    }
    assert_ne!(names[0], names[1]);
    assert!(
        foreign > 0,
        "the runs overlap, so pushes of the other run arrive"
    );
}

/// What a fake chat server does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Pushes the other session's message 0 twice.
    Duplicate,
    /// Pushes the other session's messages one seq ahead: 1, 2, 3, ... (0 never comes).
    Skip,
    /// Answers HELLO with `ERR name taken`.
    NameTaken,
    /// Closes session 0 at its first SAY, unanswered, and pushes nothing to anyone.
    Disconnect,
}

/// A fake line server for two chat sessions: WELCOME to each HELLO and OK to each SAY, and,
/// as if the other session had said the same, a push of each SAY's text under the other
/// session's name (index 1 − own) — with `fault` added.
fn fake_chat_server(fault: Fault) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let sessions: Vec<_> = (0..2)
            .map(|_| {
                let (socket, _) = listener.accept().unwrap();
                thread::spawn(move || fake_chat_session(socket, fault))
            })
            .collect();
        for session in sessions {
            session.join().unwrap();
        }
    });
    (addr, handle)
}

fn fake_chat_session(socket: std::net::TcpStream, fault: Fault) {
    use std::io::BufRead;
    socket.set_read_timeout(Some(RUN_DEADLINE)).unwrap();
    let mut out = socket.try_clone().unwrap();
    let mut lines = std::io::BufReader::new(socket).split(b'\n');
    let Some(Ok(hello)) = lines.next() else {
        return;
    };
    let name = hello.strip_prefix(b"HELLO ").expect("HELLO first").to_vec();
    if fault == Fault::NameTaken {
        let _ = out.write_all(b"ERR name taken\n");
        return;
    }
    // Names are `c` + 8 characters of the run + the index: the other is 1 - this one.
    let other = [&name[..9], if name[9..] == *b"0" { b"1" } else { b"0" }].concat();
    out.write_all(&[b"WELCOME ", &name[..], b"\n"].concat())
        .unwrap();
    while let Some(Ok(say)) = lines.next() {
        let text = say.strip_prefix(b"SAY ").expect("only SAYs after HELLO");
        if fault == Fault::Disconnect {
            if name[9..] == *b"0" || out.write_all(b"OK\n").is_err() {
                return;
            }
            continue;
        }
        let (seq, rest) = text.split_at(text.iter().position(|&b| b == b' ').unwrap());
        let seq: u32 = std::str::from_utf8(seq).unwrap().parse().unwrap();
        let shown = if fault == Fault::Skip { seq + 1 } else { seq };
        let push = [
            b"MSG ",
            &other[..],
            b" ",
            shown.to_string().as_bytes(),
            rest,
            b"\n",
        ]
        .concat();
        let mut reply = push.clone();
        if fault == Fault::Duplicate && seq == 0 {
            reply.extend_from_slice(&push);
        }
        reply.extend_from_slice(b"OK\n");
        if out.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Deliveries are verified: a duplicated or a skipped push is counted by its kind and makes
/// tcp-load exit 1, as an unexpected reply is a `mismatch` and a session the server closes
/// is `disconnected` (and an `eof`), not missing its messages.
#[test]
fn chat_verification_counts_what_a_server_gets_wrong() {
    let cases: &[(Fault, &str, u64)] = &[
        (Fault::Duplicate, "duplicated", 2),
        (Fault::Skip, "reordered", 2),
        (Fault::NameTaken, "mismatch", 2),
        (Fault::Disconnect, "disconnected", 1),
    ];
    for &(fault, key, count) in cases {
        let (addr, server) = fake_chat_server(fault);
        let mut args = chat_args(&addr, "2");
        args.extend_from_slice(&["--requests", "20", "--threads", "1", "--drain", "100ms"]);
        let run = tcp_load(&args);
        server.join().unwrap();
        assert_eq!(run.code, 1, "{fault:?}: stderr:\n{}", run.stderr);
        let json = run.json();
        let chat = &json["chat"];
        match fault {
            Fault::Duplicate => {
                assert_eq!(chat[key], count, "{json}");
                assert_eq!(chat["reordered"], 0, "{json}");
                assert_no_errors(&json, "duplicate");
            }
            Fault::Skip => {
                assert_eq!(chat[key], count, "{json}");
                assert_eq!(chat["duplicated"], 0, "{json}");
                // Each session overtook message 0 of the other, which never came.
                assert!(chat["missing"].as_u64().unwrap() >= 2, "{json}");
                assert_no_errors(&json, "skip");
            }
            Fault::Disconnect => {
                // Session 0 is gone: it is owed nothing more, and it had no OK, so nothing
                // it said is owed to session 1 either.
                assert_eq!(chat[key], count, "{json}");
                assert_eq!(json["errors"]["eof"], 1, "{json}");
                for kind in ["missing", "duplicated", "reordered"] {
                    assert_eq!(chat[kind], 0, "{kind} in {json}");
                }
            }
            Fault::NameTaken => {
                assert_eq!(json["errors"][key], count, "{json}");
                assert_eq!(chat["sessions"], 0, "{json}");
                assert!(
                    run.stderr.contains(
                        r#"a line that is neither OK, WELCOME nor MSG: "ERR name taken""#
                    ),
                    "{}",
                    run.stderr
                );
            }
        }
    }
    // The text summary names the kinds.
    let (addr, server) = fake_chat_server(Fault::Duplicate);
    let mut args = chat_args(&addr, "2");
    args.retain(|&arg| arg != "--json");
    args.extend_from_slice(&["--requests", "20", "--threads", "1", "--drain", "100ms"]);
    let run = tcp_load(&args);
    server.join().unwrap();
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("\n  chat errors  missing ") && run.stdout.contains(" duplicated 2 "),
        "{}",
        run.stdout
    );
}

// ---------------------------------------------------------------------------------------
// over TLS

#[test]
fn tls_certificate_from_another_ca_is_a_connect_error_with_its_reason() {
    let cert = TestCert::new();
    let stranger = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let addr = server.frame_tls_addr().to_string();
    let args = [
        "--addr",
        &addr,
        "--protocol",
        "frame",
        "--workload",
        "heartbeat",
        "--requests",
        "100",
        "--connections",
        "3",
        "--tls",
        "--ca",
        stranger.cert_arg(),
    ];
    let run = tcp_load(&[&args[..], &["--json"]].concat());
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["errors"]["connect"], 3, "{json}");
    assert_eq!(json["requests"], 0, "{json}");
    assert_eq!(json["connections"], 0, "{json}");
    assert_eq!(json["tls"]["handshakes"], 0, "{json}");
    let failures = json["tls"]["failures"].as_object().unwrap();
    assert_eq!(failures.len(), 1, "{json}");
    let (reason, count) = failures.iter().next().unwrap();
    assert!(reason.starts_with("invalid peer certificate: "), "{reason}");
    assert_eq!(count, 3);
    assert!(
        run.stderr.contains("connect error") && run.stderr.contains(reason.as_str()),
        "{}",
        run.stderr
    );
    // The text summary names the reason too.
    let text = tcp_load(&args);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout
            .contains(&format!("\n  tls failed   3 x {reason}\n")),
        "{}",
        text.stdout
    );
}

#[test]
fn tls_insecure_accepts_the_certificate_and_warns() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let run = tcp_load(&[
        "--addr",
        &server.line_tls_addr().to_string(),
        "--protocol",
        "line",
        "--workload",
        "echo",
        "--requests",
        "200",
        "--connections",
        "2",
        "--json",
        "--tls",
        "--insecure",
        "--server-name",
        "not-the-server.test",
    ]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let json = run.json();
    assert_eq!(json["requests"], 200);
    assert_no_errors(&json, "--insecure");
    assert_eq!(json["tls"]["handshakes"], 2);
    assert_eq!(
        run.stderr.lines().next(),
        Some(
            "tcp-load: warning: --insecure: the server's certificate is not verified; anyone \
             on the path can pose as the server"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn tls_usage_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--tls"], "pass --ca FILE"),
        (&["--ca", "ca.pem"], "--ca only applies with --tls"),
        (&["--insecure"], "--insecure only applies with --tls"),
        (
            &["--server-name", "h"],
            "--server-name only applies with --tls",
        ),
        (
            &["--tls", "--insecure", "--ca", "ca.pem"],
            "cannot be used together",
        ),
    ];
    assert_usage_errors(&PING_NOWHERE, cases);
    assert_help_names(&["--tls", "--ca <FILE>", "--insecure", "--server-name <NAME>"]);
    // A CA file that cannot be read is named (a setup failure: exit 1).
    let run = tcp_load(&[&PING_NOWHERE[..], &["--tls", "--ca", "/nonexistent/ca.pem"]].concat());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot read the CA file /nonexistent/ca.pem"),
        "{}",
        run.stderr
    );
}

// ---- PROXY protocol headers (--proxy-header, --proxy-source) ----

/// A stand-in for a server behind a balancer: on every connection it reads the PROXY header
/// (parsed with `ppp`, kept as the bytes received), then, over TLS if given a config,
/// echoes whatever follows, so tcp-load's `echo` replies verify.
struct ProxiedEcho {
    addr: String,
    headers: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acceptor: thread::JoinHandle<()>,
}

impl ProxiedEcho {
    fn start(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> ProxiedEcho {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let headers = std::sync::Arc::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, stopped) = (
            std::sync::Arc::clone(&headers),
            std::sync::Arc::clone(&stop),
        );
        let acceptor = thread::spawn(move || {
            let mut sessions = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        let (kept, tls) = (std::sync::Arc::clone(&kept), tls.clone());
                        sessions.push(thread::spawn(move || proxied_echo(socket, &kept, tls)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for session in sessions {
                session.join().unwrap();
            }
        });
        ProxiedEcho {
            addr,
            headers,
            stop,
            acceptor,
        }
    }

    /// Stops accepting, waits for every session to end, and returns the headers received.
    fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.acceptor.join().unwrap();
        std::mem::take(&mut *self.headers.lock().unwrap())
    }
}

/// One connection of [`ProxiedEcho`]: the header, then an echo until the client goes.
fn proxied_echo(
    mut socket: std::net::TcpStream,
    headers: &std::sync::Mutex<Vec<Vec<u8>>>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    use ppp::{HeaderResult, PartialResult};
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(RUN_DEADLINE)).unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let len = loop {
        let n = socket.read(&mut chunk).expect("read the PROXY header");
        assert!(n > 0, "closed before its PROXY header was complete");
        received.extend_from_slice(&chunk[..n]);
        match HeaderResult::parse(&received) {
            HeaderResult::V1(Ok(h)) => break h.header.len(),
            HeaderResult::V2(Ok(h)) => break h.len(),
            incomplete if incomplete.is_incomplete() => {}
            other => panic!("not a PROXY header: {other:?} in {received:?}"),
        }
    };
    let rest = received.split_off(len);
    headers.lock().unwrap().push(received);
    match tls {
        None => {
            socket.write_all(&rest).unwrap();
            echo(socket);
        }
        Some(config) => {
            // The header came in the clear; whatever followed it is the ClientHello's start.
            assert!(
                rest.is_empty() || rest[0] == 0x16,
                "not a TLS record: {rest:?}"
            );
            let mut session = rustls::ServerConnection::new(config).unwrap();
            session.read_tls(&mut &rest[..]).unwrap();
            session.process_new_packets().unwrap();
            echo(rustls::StreamOwned::new(session, socket));
        }
    }
}

/// Writes back what it reads until EOF or an error (tcp-load may close with an RST).
fn echo(mut stream: impl Read + Write) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 || stream.write_all(&chunk[..n]).is_err() {
            return;
        }
    }
}

/// The header tcp-load must have sent from `src` to `dst`, built here byte by byte.
fn expected_header(
    version: &str,
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
) -> Vec<u8> {
    match version {
        "v1" => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes(),
        _ => [
            &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"[..],
            &src.ip().octets(),
            &dst.ip().octets(),
            &src.port().to_be_bytes(),
            &dst.port().to_be_bytes(),
        ]
        .concat(),
    }
}

/// The source a header names (IPv4 only: the listener is on 127.0.0.1).
fn header_source(header: &[u8]) -> std::net::SocketAddrV4 {
    let addresses = match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some(a),
            _ => None,
        },
        ppp::HeaderResult::V2(Ok(h)) => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some(a),
            _ => None,
        },
        _ => None,
    };
    let a = addresses.unwrap_or_else(|| panic!("not a TCP4 PROXY header: {header:?}"));
    std::net::SocketAddrV4::new(a.source_address, a.source_port)
}

/// `--proxy-header v1|v2`: every connection, reconnects and TLS ones too, starts with its
/// header (exact bytes), the destination the address connected to, the sources distinct
/// (198.18.0.1, 198.18.0.2, ... port 1024) or all `--proxy-source`; replies verify as ever.
#[test]
fn every_connection_starts_with_its_proxy_header() {
    // 40 requests, 2 per connection, on one thread: exactly 20 connections.
    const CONNECTS: usize = 20;
    let cert = TestCert::new();
    let config = tcp_reactor::reactor::tls::load_config(&cert.cert, &cert.key).unwrap();
    let cases: &[(&str, Option<&str>, Transport)] = &[
        ("v1", None, Transport::Plain),
        ("v2", None, Transport::Plain),
        ("v1", None, Transport::Tls),
        ("v2", Some("203.0.113.9"), Transport::Plain),
        ("v1", Some("203.0.113.9:4000"), Transport::Tls),
        ("v2", Some("203.0.113.9:4000"), Transport::Tls),
    ];
    for &(version, source, transport) in cases {
        let context = format!("{version} {source:?} {}", transport.name());
        let tls = (transport == Transport::Tls).then(|| std::sync::Arc::clone(&config));
        let server = ProxiedEcho::start(tls);
        let dst: std::net::SocketAddrV4 = server.addr.parse().unwrap();
        let mut args = vec![
            "--addr",
            &server.addr,
            "--protocol",
            "line",
            "--workload",
            "echo",
            "--size",
            "16",
            "--requests",
            "40",
            "--requests-per-connection",
            "2",
            "--connections",
            "4",
            "--threads",
            "1",
            "--proxy-header",
            version,
            "--json",
        ];
        if let Some(source) = source {
            args.extend(["--proxy-source", source]);
        }
        if transport == Transport::Tls {
            args.extend(["--tls", "--ca", cert.cert_arg()]);
        }
        let run = tcp_load(&args);
        let headers = server.finish();
        assert_eq!(run.code, 0, "{context}: stderr:\n{}", run.stderr);
        let json = run.json();
        assert_no_errors(&json, &context);
        assert_eq!(json["requests"], 40, "{context}: {json}");
        assert_eq!(json["settings"]["proxy_header"], version, "{context}");
        assert_eq!(
            json["settings"]["proxy_source"],
            source.map_or(Value::Null, Value::from),
            "{context}"
        );
        assert_eq!(headers.len(), CONNECTS, "{context}");
        let sources: Vec<_> = headers.iter().map(|h| header_source(h)).collect();
        for (header, src) in headers.iter().zip(&sources) {
            assert_eq!(*header, expected_header(version, *src, dst), "{context}");
        }
        let distinct: std::collections::BTreeSet<_> = sources.iter().collect();
        match source {
            None => {
                assert_eq!(distinct.len(), CONNECTS, "{context}: {sources:?}");
                for src in &sources {
                    let [a, b, c, d] = src.ip().octets();
                    assert_eq!((a, b, c, src.port()), (198, 18, 0, 1024), "{context}");
                    // n = g * 4 + j < 20 * 4: one place might make all 20 connects.
                    assert!((1..=80).contains(&d), "{context}: {src}");
                }
            }
            Some(text) if text.contains(':') => {
                assert_eq!(distinct.len(), 1, "{context}: {sources:?}");
                assert_eq!(sources[0].to_string(), text, "{context}");
            }
            Some(text) => {
                assert_eq!(distinct.len(), CONNECTS, "{context}: ports counted");
                assert!(
                    sources.iter().all(|s| s.ip().to_string() == text),
                    "{context}"
                );
            }
        }
    }
}

#[test]
fn proxy_source_without_proxy_header_is_a_usage_error() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--proxy-source", "203.0.113.9"],
            "error: the following required arguments were not provided:\n  \
             --proxy-header <VERSION>",
        ),
        (
            &["--proxy-header", "v3"],
            "invalid value 'v3' for '--proxy-header <VERSION>'",
        ),
        (
            &["--proxy-header", "v1", "--proxy-source", "nowhere"],
            "`nowhere` is not an IP address or IP:PORT",
        ),
    ];
    assert_usage_errors(&PING_NOWHERE, cases);
    assert_help_names(&[
        "--proxy-header <VERSION>",
        "--proxy-source <IP|IP:PORT>",
        "198.18.0.0/15",
    ]);
}

/// Against the server itself: behind `--proxy-protocol` with `--max-connections-per-ip 1`,
/// tcp-load's made-up sources (one per connection, each reconnect a new one) are all served,
/// on both ports; one `--proxy-source` for three connections has two of them refused.
#[test]
fn proxy_headers_from_made_up_sources_pass_a_per_address_limit_of_one() {
    let server = TestServer::start(&["--proxy-protocol", "--max-connections-per-ip", "1"]);
    let line = server.line_addr().to_string();
    let frame = server.frame_addr().to_string();
    for (addr, protocol, workload, header) in [
        (&line, "line", "ping", "v1"),
        (&frame, "frame", "heartbeat", "v2"),
    ] {
        let outcome = tcp_load(&[
            "--addr",
            addr,
            "--protocol",
            protocol,
            "--workload",
            workload,
            "--connections",
            "20",
            "--requests",
            "400",
            "--requests-per-connection",
            "5",
            "--proxy-header",
            header,
            "--json",
        ]);
        assert_eq!(outcome.code, 0, "{}", outcome.stderr);
        let json = outcome.json();
        assert_eq!(json["requests"], 400, "{header}");
        assert_eq!(
            json["errors"],
            serde_json::json!({"connect": 0, "eof": 0, "mismatch": 0, "reset": 0, "timeout": 0}),
            "{header}"
        );
    }
    let outcome = tcp_load(&[
        "--addr",
        &line,
        "--protocol",
        "line",
        "--workload",
        "ping",
        "--connections",
        "3",
        "--duration",
        "300ms",
        "--proxy-header",
        "v2",
        "--proxy-source",
        "203.0.113.9",
        "--json",
    ]);
    let json = outcome.json();
    assert_eq!(json["errors"]["mismatch"], 2, "{}", outcome.stdout);
    let mut stats = std::net::TcpStream::connect(server.line_addr()).unwrap();
    stats.write_all(b"PROXY UNKNOWN\r\nSTATS\n").unwrap();
    let mut reply = String::new();
    let mut buf = [0u8; 2048];
    while !reply.ends_with('\n') {
        let n = stats.read(&mut buf).unwrap();
        assert!(n > 0, "EOF before STATS");
        reply.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let stats = common::parse_stats(reply.as_bytes());
    assert_eq!(
        (stats["rejected_per_ip"], stats["proxy_errors"]),
        (2, 0),
        "{reply}"
    );
}
