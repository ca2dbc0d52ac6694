//! Two nodes behind a real HAProxy, configured from `contrib/haproxy.cfg`: sessions of both
//! protocols end to end, the per-address limit seeing the clients' own addresses through the
//! PROXY v2 header, and a node stopped with SIGTERM while new clients keep being served.
//!
//! The HAProxy configuration is the contrib file itself with its addresses replaced by free
//! loopback ports, its checks made fast (`inter 200ms fall 2 rise 1`) and its stats socket and
//! log moved to a temporary directory and stderr: a change to the contrib file is tested here.
//!
//! Without a `haproxy` binary the tests fail when `CI` is set (`.ci/run` installs it) and
//! otherwise print why and pass. Every wait has a deadline; nothing sleeps for a fixed time.

mod common;

use common::{
    HEARTBEAT, IO_TIMEOUT, LineClient, MESSAGE, TestServer, after, expect_eof,
    expect_error_frame_then_eof, frame, parse_stats, read_frame, require_tool, send, show,
    wait_until,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The configuration under test.
const CONTRIB_CFG: &str = include_str!("../contrib/haproxy.cfg");

/// How long HAProxy may take to start and see every node pass a check.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The reply to a connection over `--max-connections-per-ip`, as docs/PROTOCOL.md spells it.
const TOO_MANY: &str = "too many connections from your address";

/// A free loopback port, for HAProxy's frontends (HAProxy cannot be told to bind port 0 and
/// report it). Another process may take it before HAProxy binds; `Haproxy::start` retries.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A connection to `addr` from `source` (any free port), with the harness's timeouts: std's
/// `TcpStream` cannot bind before connecting.
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A line client through HAProxy from `source` that has been answered `PONG`: its session is
/// established on a node, and counted there.
fn served_line_client(source: Ipv4Addr, addr: SocketAddr) -> LineClient {
    let mut client = LineClient::new(connect_from(source, addr));
    assert_eq!(
        show(&client.request(b"PING")),
        show(b"PONG\n"),
        "from {source}"
    );
    client
}

/// One server row of HAProxy's `show stat`.
#[derive(Debug, Clone)]
struct ServerStat {
    backend: String,
    server: String,
    /// `UP`, `DOWN`, or a transition such as `UP 1/2`.
    status: String,
    /// The last check's result: `L7OK` when the node answered as expected.
    check_status: String,
}

/// A `haproxy -db` child running the contrib configuration against some nodes; killed on
/// drop, its directory removed.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    line_addr: SocketAddr,
    frame_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    drain: Option<JoinHandle<()>>,
}

impl Haproxy {
    /// Starts HAProxy in front of `nodes` (the line backend's servers are their line ports,
    /// the frame backend's their frame ports) and waits until it answers on its stats socket.
    fn start(bin: &Path, nodes: &[&TestServer; 2]) -> Haproxy {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tcp-reactor-haproxy-{}-{n}", std::process::id()));
        let mut last_words = String::new();
        for _attempt in 0..3 {
            // Made anew each time: a failed attempt's drop removes it.
            std::fs::create_dir_all(&dir).unwrap();
            let line_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let frame_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, test_config(&dir, line_addr, frame_addr, nodes)).unwrap();
            let mut child = Command::new(bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let logs = Arc::new(Mutex::new(Vec::new()));
            let drain = drain_output(&mut child, &logs);
            let mut haproxy = Haproxy {
                child,
                dir: dir.clone(),
                line_addr,
                frame_addr,
                logs,
                drain: Some(drain),
            };
            let up = wait_until(after(READY_TIMEOUT), || {
                haproxy.exited() || haproxy.try_show_stat().is_some()
            });
            if up && !haproxy.exited() {
                return haproxy;
            }
            // Most likely a port taken between `free_port` and HAProxy's bind: try others.
            haproxy.stop();
            last_words = haproxy.logs().join("\n");
        }
        panic!("haproxy did not start (3 attempts); its last output:\n{last_words}");
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    fn stats_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// `show stat` on the stats socket, the server rows only; `None` if the socket does not
    /// answer (yet).
    fn try_show_stat(&self) -> Option<Vec<ServerStat>> {
        let mut socket = UnixStream::connect(self.stats_socket()).ok()?;
        socket.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        socket.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        socket.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
        let column = |name: &str| header.iter().position(|&c| c == name);
        let (px, sv, status, check) = (
            column("pxname")?,
            column("svname")?,
            column("status")?,
            column("check_status")?,
        );
        let rows = lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() == header.len() && !matches!(f[sv], "FRONTEND" | "BACKEND"))
            .map(|f| ServerStat {
                backend: f[px].to_string(),
                server: f[sv].to_string(),
                status: f[status].to_string(),
                check_status: f[check].to_string(),
            })
            .collect();
        Some(rows)
    }

    /// Waits until `done` holds of the server rows, or fails with them and HAProxy's log.
    fn wait_servers(&self, what: &str, done: impl Fn(&[ServerStat]) -> bool) {
        let mut last = Vec::new();
        let ok = wait_until(after(READY_TIMEOUT), || {
            last = self.try_show_stat().unwrap_or_default();
            !last.is_empty() && done(&last)
        });
        assert!(
            ok,
            "HAProxy: {what} within {READY_TIMEOUT:?}; servers: {last:#?}\nlog:\n{}",
            self.logs().join("\n")
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Collects the child's stdout and stderr lines (HAProxy logs to stderr here) so the pipes
/// never fill; the thread ends when both close.
fn drain_output(child: &mut Child, logs: &Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    let readers: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("stdout is piped")),
        Box::new(child.stderr.take().expect("stderr is piped")),
    ];
    let threads: Vec<JoinHandle<()>> = readers
        .into_iter()
        .map(|reader| {
            let sink = Arc::clone(logs);
            thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            })
        })
        .collect();
    thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
    })
}

/// `contrib/haproxy.cfg` with this test's addresses, fast checks, and a stats socket and log
/// of its own. Each replaced text must be found, so a reshaped contrib file fails here loudly
/// rather than being half-tested.
fn test_config(
    dir: &Path,
    line_addr: SocketAddr,
    frame_addr: SocketAddr,
    nodes: &[&TestServer; 2],
) -> String {
    let socket = dir.join("admin.sock");
    let replacements = [
        (
            "stats socket /run/haproxy/tcp-reactor.sock mode 600 level admin".to_string(),
            format!("stats socket {} mode 600 level admin", socket.display()),
        ),
        // A test needs no 20,000 descriptors, nor a syslog daemon.
        ("maxconn 20000".to_string(), "maxconn 1000".to_string()),
        (
            "log /dev/log local0".to_string(),
            "log stderr format raw local0".to_string(),
        ),
        ("bind :7000".to_string(), format!("bind {line_addr}")),
        ("bind :7001".to_string(), format!("bind {frame_addr}")),
        (
            "inter 2s fall 2 rise 2".to_string(),
            "inter 200ms fall 2 rise 1".to_string(),
        ),
        (
            "192.0.2.11:7000".to_string(),
            nodes[0].line_addr().to_string(),
        ),
        (
            "192.0.2.12:7000".to_string(),
            nodes[1].line_addr().to_string(),
        ),
        (
            "192.0.2.11:7001".to_string(),
            nodes[0].frame_addr().to_string(),
        ),
        (
            "192.0.2.12:7001".to_string(),
            nodes[1].frame_addr().to_string(),
        ),
    ];
    let mut cfg = CONTRIB_CFG.to_string();
    for (from, to) in replacements {
        assert!(
            cfg.contains(&from),
            "contrib/haproxy.cfg no longer contains {from:?}: update tests/haproxy.rs"
        );
        cfg = cfg.replace(&from, &to);
    }
    cfg
}

/// Two nodes with `--proxy-protocol` (only loopback peers may connect) and HAProxy in front,
/// every server having passed a check.
struct Cluster {
    nodes: [TestServer; 2],
    haproxy: Haproxy,
}

impl Cluster {
    fn start(bin: &Path, per_ip: u32) -> Cluster {
        let per_ip = per_ip.to_string();
        let args = [
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.0/8",
            "--max-connections-per-ip",
            per_ip.as_str(),
            "--shutdown-timeout",
            "2s",
        ];
        let nodes = [
            TestServer::start_logging(&args, "debug"),
            TestServer::start_logging(&args, "debug"),
        ];
        let haproxy = Haproxy::start(bin, &[&nodes[0], &nodes[1]]);
        // L7OK: the node answered PONG (or the Heartbeat) after the v2 LOCAL header.
        haproxy.wait_servers("every node up and passing its checks", |servers| {
            servers.len() == 4
                && servers
                    .iter()
                    .all(|s| s.status == "UP" && s.check_status == "L7OK")
        });
        Cluster { nodes, haproxy }
    }
}

/// A node's STATS, asked directly (not through HAProxy) with a PROXY v1 header naming
/// 127.0.0.9 as the client, so the question counts against an address no test client uses.
fn node_stats(node: &TestServer) -> BTreeMap<String, u64> {
    let mut stream = common::connect(node.line_addr());
    let header = format!(
        "PROXY TCP4 127.0.0.9 127.0.0.1 40000 {}\r\nSTATS\n",
        node.line_addr().port()
    );
    send(&mut stream, header.as_bytes());
    let mut client = LineClient::new(stream);
    parse_stats(&client.read_line())
}

#[test]
fn line_and_frame_sessions_work_through_haproxy() {
    let Some(bin) = require_tool(
        "haproxy",
        "haproxy",
        "line_and_frame_sessions_work_through_haproxy",
    ) else {
        return;
    };
    let cluster = Cluster::start(&bin, 10);
    let source = Ipv4Addr::new(127, 0, 0, 2);

    let mut line = LineClient::new(connect_from(source, cluster.haproxy.line_addr));
    assert_eq!(show(&line.request(b"PING")), show(b"PONG\n"));
    assert_eq!(
        show(&line.request(b"good morning")),
        show(b"good morning\n")
    );
    assert_eq!(show(&line.request(b"HELLO ann")), show(b"WELCOME ann\n"));
    assert_eq!(show(&line.request(b"SAY hi all")), show(b"OK\n"));
    assert_eq!(show(&line.request(b"QUIT")), show(b"BYE\n"));
    line.expect_eof();

    let mut frames = connect_from(source, cluster.haproxy.frame_addr);
    send(&mut frames, &frame(HEARTBEAT, b""));
    assert_eq!(read_frame(&mut frames), (HEARTBEAT, Vec::new()));
    send(&mut frames, &frame(MESSAGE, b"Hello TCP World!"));
    assert_eq!(
        read_frame(&mut frames),
        (MESSAGE, b"Server says: Hello TCP World!".to_vec())
    );
    frames.shutdown(std::net::Shutdown::Write).unwrap();
    expect_eof(&mut frames);

    // Every check so far came with a v2 LOCAL header, which the nodes took as HAProxy's own
    // connection: none was a PROXY error.
    for node in &cluster.nodes {
        let local = "PROXY header names no client: 127.0.0.1:";
        assert!(
            wait_until(after(Duration::from_secs(5)), || node.logged(local)),
            "no LOCAL check in the log: {:#?}",
            node.logs()
        );
        assert_eq!(node_stats(node)["proxy_errors"], 0, "{:#?}", node.logs());
    }
}

/// How many connections `node` logged as coming from `source`, the client address a PROXY
/// header named (`conn=0.7 from 127.0.0.4:51234 via 127.0.0.1:40412`), refused ones included.
fn proxied_from(node: &TestServer, source: Ipv4Addr) -> usize {
    let needle = format!(" from {source}:");
    node.logs()
        .iter()
        .filter(|l| l.contains(&needle) && l.contains(" via "))
        .count()
}

/// How many connections `node` logged as refused for `--max-connections-per-ip` from `source`.
fn refused_from(node: &TestServer, source: Ipv4Addr) -> usize {
    let needle = format!("refused: too many connections from {source}");
    node.logs().iter().filter(|l| l.ends_with(&needle)).count()
}

#[test]
fn the_per_address_limit_counts_the_clients_own_addresses() {
    let Some(bin) = require_tool(
        "haproxy",
        "haproxy",
        "the_per_address_limit_counts_the_clients_own_addresses",
    ) else {
        return;
    };
    // Two per address per node; leastconn puts the first four sessions two on each node.
    let cluster = Cluster::start(&bin, 2);
    let crowd = Ipv4Addr::new(127, 0, 0, 2);
    let other = Ipv4Addr::new(127, 0, 0, 3);
    let addr = cluster.haproxy.line_addr;

    let held: Vec<LineClient> = (0..4).map(|_| served_line_client(crowd, addr)).collect();
    // Both nodes now hold two sessions from `crowd`, so a fifth is one too many wherever
    // leastconn sends it.
    let mut fifth = LineClient::new(connect_from(crowd, addr));
    assert_eq!(
        show(&fifth.read_line()),
        show(format!("ERR {TOO_MANY}\n").as_bytes())
    );
    fifth.expect_eof();
    // The limit spans the listeners: a frame session from `crowd` is one too many as well.
    let mut frame_client = connect_from(crowd, cluster.haproxy.frame_addr);
    expect_error_frame_then_eof(&mut frame_client, TOO_MANY);
    // Another address is not affected: the nodes count the clients, not HAProxy.
    let mut served = served_line_client(other, addr);
    assert_eq!(show(&served.request(b"QUIT")), show(b"BYE\n"));
    served.expect_eof();

    let rejected: u64 = cluster
        .nodes
        .iter()
        .map(|n| node_stats(n)["rejected_per_ip"])
        .sum();
    assert_eq!(rejected, 2, "the fifth line client and the frame client");
    // The nodes logged the clients' own addresses: each holds two sessions from `crowd`, and
    // `other`'s one session is there too.
    let per_node = |node: &TestServer| {
        (
            proxied_from(node, crowd) - refused_from(node, crowd),
            proxied_from(node, other),
        )
    };
    let expected = 2 + 2 + 1;
    wait_until(after(Duration::from_secs(5)), || {
        let [(a, b), (c, d)] = [per_node(&cluster.nodes[0]), per_node(&cluster.nodes[1])];
        a + b + c + d == expected
    });
    let counts = [per_node(&cluster.nodes[0]), per_node(&cluster.nodes[1])];
    assert!(
        counts[0].0 == 2 && counts[1].0 == 2 && counts[0].1 + counts[1].1 == 1,
        "sessions (from {crowd}, from {other}) by node: {counts:?}; logs:\n{}\n---\n{}",
        cluster.nodes[0].logs().join("\n"),
        cluster.nodes[1].logs().join("\n")
    );
    drop(held);
}

/// `count` clients from `source` through `addr`, one after another, each sending `PING` and
/// `QUIT` and reading to EOF; returns a description of each that did not get exactly
/// `PONG\nBYE\n` (the first three: it stops there).
fn ping_clients(source: Ipv4Addr, addr: SocketAddr, count: u64) -> Vec<String> {
    let mut errors = Vec::new();
    for i in 0..count {
        let mut client = LineClient::new(connect_from(source, addr));
        client.send(b"PING\nQUIT\n");
        let mut got = Vec::new();
        let end = loop {
            match client.try_read_line() {
                Ok(Some(line)) => got.extend_from_slice(&line),
                Ok(None) => break "EOF".to_string(),
                Err(e) => break format!("{e}"),
            }
        };
        if got != b"PONG\nBYE\n" || end != "EOF" {
            errors.push(format!("client {i}: {} then {end}", show(&got)));
            // A few are enough to see what is wrong; each may have waited out IO_TIMEOUT.
            if errors.len() == 3 {
                break;
            }
        }
    }
    errors
}

#[test]
fn a_node_stopped_with_sigterm_is_taken_out_and_the_other_serves_everyone() {
    /// Clients connecting between the SIGTERM and HAProxy marking the node down.
    const GAP_CLIENTS: u64 = 20;
    /// Clients connecting once it is down.
    const CLIENTS: u64 = 50;
    let Some(bin) = require_tool(
        "haproxy",
        "haproxy",
        "a_node_stopped_with_sigterm_is_taken_out_and_the_other_serves_everyone",
    ) else {
        return;
    };
    let mut cluster = Cluster::start(&bin, 100);
    let (gap_source, source) = (Ipv4Addr::new(127, 0, 0, 5), Ipv4Addr::new(127, 0, 0, 4));
    let addr = cluster.haproxy.line_addr;

    cluster.nodes[0].signal(libc::SIGTERM);
    let stopped = cluster.nodes[0]
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("node 1 still running 10 s after SIGTERM"));
    assert!(stopped.success(), "node 1 exited with {stopped}");
    // HAProxy has not noticed yet (its checks are 200 ms apart and it takes two failures):
    // connects sent to node 1 are refused and redispatched to node 2.
    let errors = ping_clients(gap_source, addr, GAP_CLIENTS);
    assert!(errors.is_empty(), "before the mark-down: {errors:#?}");

    cluster
        .haproxy
        .wait_servers("node1 marked down in both backends", |servers| {
            let down: Vec<&str> = servers
                .iter()
                .filter(|s| s.server == "node1" && s.status == "DOWN")
                .map(|s| s.backend.as_str())
                .collect();
            down.contains(&"line_nodes") && down.contains(&"frame_nodes")
        });
    let before = node_stats(&cluster.nodes[1]);
    let errors = ping_clients(source, addr, CLIENTS);
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    let after_stats = node_stats(&cluster.nodes[1]);

    // Node 1 has exited, so node 2 served everyone: its `accepted` rose by the clients, the
    // STATS question, and whatever checks HAProxy made meanwhile.
    let accepted = after_stats["accepted"] - before["accepted"];
    assert!(
        accepted > CLIENTS,
        "node 2 accepted {accepted} connections for {CLIENTS} clients"
    );
    // Node 2 logged each client under its own address (the log is read by a thread of the
    // harness, so the last lines may take a moment).
    let counted = || {
        (
            proxied_from(&cluster.nodes[1], gap_source),
            proxied_from(&cluster.nodes[1], source),
        )
    };
    let expected = (GAP_CLIENTS as usize, CLIENTS as usize);
    wait_until(after(Duration::from_secs(5)), || counted() == expected);
    assert_eq!(
        counted(),
        expected,
        "node 2's log of connections from {gap_source} and {source}"
    );
}
