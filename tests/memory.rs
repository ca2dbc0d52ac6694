//! What the server's memory holds for its clients: a large request costs what it declares.

mod common;

use std::io::Write;

use common::{HEADER_LEN, HEARTBEAT, TestServer, after, header, read_frame, wait_until};
use std::time::Duration;

/// 20 connections each send a Heartbeat header declaring 4 MiB, then all of the body but its
/// last byte. Each input buffer grows with what arrives and stops at the declared size (plus
/// at most one read): about 4 MiB each, where doubling used to make it 8 MiB (160 MiB in all).
#[test]
fn a_partial_frame_costs_what_its_header_declares_not_a_doubling_past_it() {
    const CLIENTS: usize = 20;
    const BODY: usize = 4 << 20;
    /// One read past the declared size, per connection.
    const READ_SLACK: usize = 128 << 10;
    /// The rest of the process: the STATS connections, allocator slack, page rounding.
    const ALLOWANCE_KIB: u64 = 8 << 10;
    let server = TestServer::start(&[]);
    let before = server.rss_kib();
    let mut bytes = header(HEARTBEAT, BODY as u32);
    bytes.resize(HEADER_LEN + BODY - 1, b'x');
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut s = server.connect_frame();
            s.write_all(&bytes)
                .expect("the server reads a partial frame");
            s
        })
        .collect();
    let offered = (CLIENTS * bytes.len()) as u64;
    assert!(
        wait_until(
            after(Duration::from_secs(10)),
            || server.stats()["bytes_in"] >= offered
        ),
        "the server did not read every partial frame"
    );
    let grown = server.rss_kib().saturating_sub(before);
    let limit = (CLIENTS * (BODY + READ_SLACK) / 1024) as u64 + ALLOWANCE_KIB;
    assert!(
        grown <= limit,
        "RSS grew {grown} KiB for {CLIENTS} partial {BODY}-byte frames (limit {limit} KiB)"
    );

    // The frames are still requests like any other: the last byte completes one.
    clients[0].write_all(b"x").unwrap();
    let (command, body) = read_frame(&mut clients[0]);
    assert_eq!((command, body.len()), (HEARTBEAT, BODY));
    assert!(body.iter().all(|&b| b == b'x'));
}
