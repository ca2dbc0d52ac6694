//! End-to-end requests per second through loopback: the real server, one client connection,
//! echo lines and Heartbeat frames at pipeline depths 1 and 16.
//!
//! # Setup
//!
//! The server runs in this process on its own thread (`Server::bind` with both listeners on
//! port 0, then `run`), exactly as the binary would run it, and is stopped with its
//! `ShutdownHandle` at the end. The client is a blocking `std::net::TcpStream` with
//! `TCP_NODELAY` on the benchmark's thread: it writes a batch of P requests with one `write`,
//! then reads until it has all P replies, and checks them byte for byte.
//!
//! ```text
//! benchmark             one request                          one iteration
//! echo_64B/P=1|P=16     63 bytes of text + "\n" (line port)   P requests out, P replies in
//! heartbeat_16B/P=1|16  Heartbeat, 16-byte body (frame port)  P requests out, P replies in
//! ```
//!
//! # How to read the numbers
//!
//! `time` is one round trip of a batch, `thrpt` (elem/s) is requests per second. At P=1 the
//! time is the loopback round trip with the server's work inside it: two context switches
//! per request dominate, and the server's own cost hides in them. At P=16 one `read`, one
//! `write` and one wakeup serve 16 requests, so requests/s should be many times higher; on a
//! 2-core machine the client then uses most of one core, so this measures client and server
//! together, not the server alone (server CPU per request is the honest figure for that, and
//! needs the server in its own process).
//!
//! On a virtual machine, P=1 mostly measures how fast an idle vCPU wakes up: each hop of a
//! round trip finds the other side blocked and its vCPU halted. On the 2-vCPU VM these
//! benchmarks were written on, `echo_64B/P=1` took 80-190 µs a round trip with the machine
//! otherwise idle, but 24 µs with a `nice -n 19` busy loop keeping the vCPUs awake; a busy
//! machine can make P=1 *faster*. Compare P=1 figures only between runs made under the same
//! conditions; P=16 amortises the wake-ups over 16 requests and is the steadier figure.
//!
//! At the end the server's counters are printed (requests, wakeups, reads that found
//! nothing, ...): with the server alone on its thread, wakeups per request shows how much
//! batching the loop got.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use tcp_reactor::protocol::frame::{self, Command};
use tcp_reactor::stats::Stats;
use tcp_reactor::{Config, Server, ShutdownHandle};

const PIPELINES: [usize; 2] = [1, 16];

/// A server running on its own thread.
struct Running {
    line_addr: SocketAddr,
    frame_addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: JoinHandle<std::io::Result<Stats>>,
}

impl Running {
    fn start() -> Running {
        let config = Config::on_free_ports();
        let server = Server::bind(config).expect("bind on free loopback ports");
        let (line_addr, frame_addr) = (server.line_addr(), server.frame_addr());
        let shutdown = server.shutdown_handle();
        let thread = thread::Builder::new()
            .name("reactor".into())
            .spawn(move || server.run())
            .expect("spawn the server thread");
        Running {
            line_addr,
            frame_addr,
            shutdown,
            thread,
        }
    }

    fn stop(self) -> Stats {
        self.shutdown.shutdown().expect("wake the server");
        self.thread
            .join()
            .expect("server thread panicked")
            .expect("server failed")
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the bench server");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    // A lost reply fails the benchmark in seconds instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// Benchmarks batches of `pipeline` copies of `request` whose replies are the same bytes.
fn bench_echo(
    group: &mut BenchmarkGroup<'_, WallTime>,
    stream: &mut TcpStream,
    name: &str,
    request: &[u8],
    pipeline: usize,
) {
    let batch = request.repeat(pipeline);
    let mut reply = vec![0; batch.len()];
    group.throughput(Throughput::Elements(pipeline as u64));
    group.bench_function(BenchmarkId::new(name, format!("P={pipeline}")), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                stream.write_all(&batch).expect("send a batch");
                stream.read_exact(&mut reply).expect("receive its replies");
                assert!(reply == batch, "{name}: wrong reply");
            }
            start.elapsed()
        });
    });
}

fn loopback(c: &mut Criterion) {
    let server = Running::start();
    let mut lines = connect(server.line_addr);
    let mut frames = connect(server.frame_addr);

    let mut echo = vec![b'x'; 63];
    echo.push(b'\n');
    let mut heartbeat = frame::encode_header(Command::Heartbeat, 16).to_vec();
    heartbeat.extend_from_slice(b"0123456789abcdef");

    let mut group = c.benchmark_group("loopback");
    // P=1 iterations are whole round trips (30-300 µs here): fewer, longer samples keep the
    // run near 20 s while still giving criterion thousands of round trips per benchmark.
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for pipeline in PIPELINES {
        bench_echo(&mut group, &mut lines, "echo_64B", &echo, pipeline);
    }
    for pipeline in PIPELINES {
        bench_echo(
            &mut group,
            &mut frames,
            "heartbeat_16B",
            &heartbeat,
            pipeline,
        );
    }
    group.finish();

    drop((lines, frames));
    let stats = server.stop();
    let mut pairs = Vec::new();
    stats
        .write_pairs(&mut pairs)
        .expect("writing to a Vec cannot fail");
    eprintln!("server counters: {}", String::from_utf8_lossy(&pairs));
    if stats.requests > 0 {
        eprintln!(
            "server wakeups per request: {:.3}",
            stats.wakeups as f64 / stats.requests as f64
        );
    }
}

criterion_group!(benches, loopback);
criterion_main!(benches);
