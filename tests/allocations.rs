//! Steady state allocates nothing: once a connection's buffers are warm, PING, echo and
//! Heartbeat cost the server no heap allocation per request. Counted with a global allocator
//! that only counts on the server's thread, with the server in-process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tcp_reactor::{Config, Server};

struct CountingAllocator;

thread_local! {
    /// Set on the server's thread only: the test's own clients allocate as they please.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const PIPELINE: usize = 16;
const WARMUP_BATCHES: usize = 100;
const MEASURED_BATCHES: usize = 1_000;

/// Sends `batch` and reads exactly `reply_len` bytes back, `batches` times.
fn exchange(stream: &mut TcpStream, batch: &[u8], reply: &[u8], batches: usize) {
    let mut got = vec![0u8; reply.len()];
    for _ in 0..batches {
        stream.write_all(batch).unwrap();
        stream.read_exact(&mut got).unwrap();
        assert_eq!(got, reply);
    }
}

fn heartbeat(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x47, 0x4F, 1, 0];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

#[test]
fn ping_echo_and_heartbeat_allocate_nothing_once_warm() {
    let config = Config::on_free_ports();
    let server = Server::bind(config).unwrap();
    let (line_addr, frame_addr) = (server.line_addr(), server.frame_addr());
    let shutdown = server.shutdown_handle();
    let running = thread::spawn(move || {
        COUNTED.with(|counted| counted.set(true));
        server.run()
    });

    let connect = |addr| {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    };
    let mut pings = connect(line_addr);
    let mut echoes = connect(line_addr);
    let mut frames = connect(frame_addr);
    let ping_batch = b"PING\n".repeat(PIPELINE);
    let pong_batch = b"PONG\n".repeat(PIPELINE);
    let echo_line = [b"x".repeat(63), b"\n".to_vec()].concat();
    let echo_batch = echo_line.repeat(PIPELINE);
    let heartbeat_batch = heartbeat(b"0123456789abcdef").repeat(PIPELINE);

    let run_all = |pings: &mut TcpStream, echoes: &mut TcpStream, frames: &mut TcpStream, n| {
        exchange(pings, &ping_batch, &pong_batch, n);
        exchange(echoes, &echo_batch, &echo_batch, n);
        exchange(frames, &heartbeat_batch, &heartbeat_batch, n);
    };
    run_all(&mut pings, &mut echoes, &mut frames, WARMUP_BATCHES);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    // The counter works: accepting and warming up three connections allocated.
    assert!(before > 0, "no allocation counted during warmup");
    run_all(&mut pings, &mut echoes, &mut frames, MEASURED_BATCHES);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;

    shutdown.shutdown().unwrap();
    let stats = running.join().unwrap().unwrap();
    let requests = 3 * PIPELINE * MEASURED_BATCHES;
    assert!(stats.requests >= requests as u64);
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations on the server thread for {requests} requests"
    );
}
