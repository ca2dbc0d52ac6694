//! Three nodes sharing one chat room over a real Redis (`--cluster-redis`): SAYs crossing
//! nodes exactly once and in order, names unique across the nodes, the nodes riding out
//! Redis going away and coming back on the same port without a restart of their own, and
//! the names of a node killed outright expiring within their TTL.
//!
//! Each test runs its own `redis-server --port <free> --save '' --appendonly no` as a child,
//! killed on drop. Without a `redis-server` binary the tests fail when `CI` is set (`.ci/run`
//! installs it) and otherwise print why and pass. Every wait has a deadline.

mod common;

use common::{LineClient, TestServer, after, require_tool, show, stats_when, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long Redis may take to start, and the nodes to (re)connect to it: the reconnect
/// backoff tops out at 5 s.
const LINK_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to listen for a line that must not come (a duplicate).
const QUIET: Duration = Duration::from_millis(300);

/// A `redis-server` child on a loopback port, without persistence; killed on drop.
struct Redis {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts Redis on a free port (another process may take it first: a few tries).
    fn start(bin: PathBuf) -> Redis {
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut redis = Redis {
                bin: bin.clone(),
                port,
                child: None,
            };
            if redis.restart() {
                return redis;
            }
        }
        panic!("redis-server did not start");
    }

    /// (Re)starts Redis on its port; `true` once it answers PING.
    fn restart(&mut self) -> bool {
        self.kill();
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = self.addr();
        wait_until(after(LINK_TIMEOUT), || {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            exited || ping(addr)
        }) && ping(addr)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn arg(&self) -> String {
        self.addr().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether Redis answers an inline PING at `addr`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn node(redis: &Redis, extra: &[&str]) -> TestServer {
    let addr = redis.arg();
    let mut args = vec!["--cluster-redis", addr.as_str()];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// Waits until the node's `cluster_up` is `up`.
fn wait_cluster_up(node: &TestServer, up: u64, who: &str) {
    let mut client = node.line_client();
    let ok = wait_until(after(LINK_TIMEOUT), || {
        stats_when(&mut client, |_| true)["cluster_up"] == up
    });
    assert!(ok, "{who}: cluster_up never became {up}");
}

fn hello(node: &TestServer, name: &str) -> LineClient {
    let mut client = node.line_client();
    let reply = client.request(format!("HELLO {name}").as_bytes());
    assert_eq!(show(&reply), show(format!("WELCOME {name}\n").as_bytes()));
    client
}

/// Says `HELLO name` on `client` until it is not `ERR name taken` (for at most `within`),
/// and asserts it was welcomed.
fn hello_once_free(client: &mut LineClient, name: &str, within: Duration) {
    let hello = format!("HELLO {name}");
    let mut reply = Vec::new();
    let freed = wait_until(after(within), || {
        reply = client.request(hello.as_bytes());
        reply != b"ERR name taken\n"
    });
    assert!(freed, "{name} still taken after {within:?}");
    assert_eq!(show(&reply), show(format!("WELCOME {name}\n").as_bytes()));
}

#[test]
fn say_crosses_nodes_exactly_once_in_order_and_names_are_unique_across_them() {
    let Some(bin) = require_tool("redis-server", "redis-server", "say_crosses_nodes") else {
        return;
    };
    let redis = Redis::start(bin);
    // Node A runs two workers: messages from Redis reach both through the fleet's inboxes.
    let nodes = [
        node(&redis, &["--workers", "2", "--metrics-addr", "127.0.0.1:0"]),
        node(&redis, &[]),
        node(&redis, &[]),
    ];
    for (n, node) in nodes.iter().enumerate() {
        wait_cluster_up(node, 1, &format!("node {n}"));
    }
    // Two sessions on node A (one per worker, by least-conn), one on each of B and C.
    let names = ["a1", "a2", "b1", "c1"];
    let homes = [0, 0, 1, 2];
    let mut clients: Vec<LineClient> = names
        .iter()
        .zip(homes)
        .map(|(name, home)| hello(&nodes[home], name))
        .collect();

    for sender in 0..names.len() {
        for text in ["first", "second  spaced "] {
            let say = format!("SAY {text}");
            assert_eq!(clients[sender].request(say.as_bytes()), b"OK\n");
        }
        for receiver in (0..names.len()).filter(|&r| r != sender) {
            for text in ["first", "second  spaced "] {
                let expected = format!("MSG {} {text}\n", names[sender]);
                assert_eq!(
                    show(&clients[receiver].read_line()),
                    show(expected.as_bytes()),
                    "{} from {}",
                    names[receiver],
                    names[sender]
                );
            }
        }
    }
    for (client, name) in clients.iter_mut().zip(names) {
        client.expect_silence(QUIET);
        assert_eq!(client.request(b"PING sync"), b"PONG sync\n", "{name}");
    }

    // Two SAYs per session: A published 4 and received B's and C's 4; B and C 2 and 6.
    for (n, (published, received)) in [(4, 4), (2, 6), (2, 6)].into_iter().enumerate() {
        let mut client = nodes[n].line_client();
        let stats = stats_when(&mut client, |s| s["cluster_received"] >= received);
        let figures = [
            stats["cluster_up"],
            stats["cluster_published"],
            stats["cluster_received"],
            stats["cluster_dropped"],
        ];
        assert_eq!(figures, [1, published, received, 0], "node {n}");
    }
    // In A's metrics the cluster's figures are the process's, on worker 0's series.
    let mut scrape = std::net::TcpStream::connect(nodes[0].metrics_addr()).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    scrape.read_to_string(&mut body).unwrap();
    for series in [
        "tcp_reactor_cluster_up{worker=\"0\"} 1\n",
        "tcp_reactor_cluster_up{worker=\"1\"} 0\n",
        "tcp_reactor_cluster_published_total{worker=\"0\"} 4\n",
        "tcp_reactor_cluster_received_total{worker=\"0\"} 4\n",
        "tcp_reactor_cluster_received_total{worker=\"1\"} 0\n",
    ] {
        assert!(body.contains(series), "{series:?} not in:\n{body}");
    }

    // A name held on A is refused on B, pipelined requests waiting behind the claim.
    let mut ann = hello(&nodes[0], "ann");
    let mut other = nodes[1].line_client();
    other.send(b"HELLO ann\nPING after\n");
    assert_eq!(show(&other.read_line()), show(b"ERR name taken\n"));
    assert_eq!(other.read_line(), b"PONG after\n");
    assert_eq!(ann.request(b"QUIT"), b"BYE\n");
    hello_once_free(&mut other, "ann", Duration::from_secs(5));
    // And now A refuses it.
    let mut again = nodes[0].line_client();
    assert_eq!(
        show(&again.request(b"HELLO ann")),
        show(b"ERR name taken\n")
    );

    // Without --cluster-redis nothing changes: the cluster's keys are all 0.
    let plain = TestServer::start(&[]);
    let stats = plain.stats();
    let figures = [
        stats["cluster_up"],
        stats["cluster_published"],
        stats["cluster_received"],
        stats["cluster_dropped"],
    ];
    assert_eq!(figures, [0, 0, 0, 0]);
}

#[test]
fn nodes_keep_local_chat_without_redis_and_cross_again_once_it_is_back() {
    let Some(bin) = require_tool("redis-server", "redis-server", "nodes_keep_local_chat") else {
        return;
    };
    let mut redis = Redis::start(bin);
    let nodes = [node(&redis, &[]), node(&redis, &[])];
    for (n, node) in nodes.iter().enumerate() {
        wait_cluster_up(node, 1, &format!("node {n}"));
    }
    let mut ann = hello(&nodes[0], "ann");
    let mut amy = hello(&nodes[0], "amy");
    let mut bob = hello(&nodes[1], "bob");

    redis.kill();
    for (n, node) in nodes.iter().enumerate() {
        wait_cluster_up(node, 0, &format!("node {n}"));
    }
    // Local chat goes on; the other node does not get it (and never will: at-most-once).
    assert_eq!(ann.request(b"SAY while down"), b"OK\n");
    assert_eq!(amy.read_line(), b"MSG ann while down\n");
    let mut late = nodes[0].line_client();
    assert_eq!(
        show(&late.request(b"HELLO carl")),
        show(b"ERR cluster unavailable, try again\n")
    );
    let mut client = nodes[0].line_client();
    let stats = stats_when(&mut client, |s| s["cluster_dropped"] >= 1);
    assert_eq!((stats["cluster_up"], stats["cluster_dropped"]), (0, 1));

    assert!(redis.restart(), "redis-server did not start again");
    for (n, node) in nodes.iter().enumerate() {
        wait_cluster_up(node, 1, &format!("node {n}"));
    }
    // Messages cross again; the one sent while Redis was away is not among them.
    assert_eq!(ann.request(b"SAY back"), b"OK\n");
    assert_eq!(show(&bob.read_line()), show(b"MSG ann back\n"));
    assert_eq!(amy.read_line(), b"MSG ann back\n");
    assert_eq!(bob.request(b"SAY hi"), b"OK\n");
    assert_eq!(ann.read_line(), b"MSG bob hi\n");
    assert_eq!(amy.read_line(), b"MSG bob hi\n");
    // The live sessions' names were claimed again in the new Redis.
    let mut other = nodes[1].line_client();
    assert_eq!(
        show(&other.request(b"HELLO ann")),
        show(b"ERR name taken\n")
    );
    assert_eq!(show(&late.request(b"HELLO carl")), show(b"WELCOME carl\n"));
    bob.expect_silence(QUIET);
}

#[test]
fn the_names_of_a_node_that_dies_expire_within_the_ttl() {
    let Some(bin) = require_tool(
        "redis-server",
        "redis-server",
        "the_names_of_a_node_that_dies",
    ) else {
        return;
    };
    let redis = Redis::start(bin);
    let mut nodes = [node(&redis, &[]), node(&redis, &[])];
    for (n, node) in nodes.iter().enumerate() {
        wait_cluster_up(node, 1, &format!("node {n}"));
    }
    let _ann = hello(&nodes[0], "ann");
    let mut other = nodes[1].line_client();
    assert_eq!(
        show(&other.request(b"HELLO ann")),
        show(b"ERR name taken\n")
    );

    // Killed: no session ends, nothing is released; the key's TTL (5 s) frees the name.
    nodes[0].signal(libc::SIGKILL);
    assert!(
        nodes[0].wait_exit(Duration::from_secs(5)).is_some(),
        "node A still runs"
    );
    hello_once_free(&mut other, "ann", Duration::from_secs(8));
}
