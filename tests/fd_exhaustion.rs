//! Running out of file descriptors: the server keeps serving, does not spin, answers or closes
//! the clients it cannot take, and accepts again once descriptors free up.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Descriptors the server process may hold in this test: a few dozen connections' worth.
const FD_LIMIT: u64 = 48;

/// How long the server is watched while out of descriptors with connections in the backlog.
const WINDOW: Duration = Duration::from_secs(1);

/// Most loop turns allowed in [`WINDOW`]. The loop turns once per batch of events and once per
/// timer: the two STATS requests, the connects, one shed and one 100 ms accept pause at a time
/// (at most ten a second) come to a few dozen (22 to 29 measured). A loop that retried accept
/// without waiting turns on every `poll`, tens of thousands of times a second even in a debug
/// build (75,211 measured with the accept pause made a busy wait).
const MAX_WAKEUPS_WHILE_FULL: u64 = 1000;

/// What a client that connected while the server was out of descriptors experienced.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served,
    RefusedFull,
    Closed,
}

fn try_ping(stream: &mut TcpStream) -> Outcome {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if stream.write_all(b"PING\n").is_err() {
        return Outcome::Closed;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply == b"PONG\n" {
                    return Outcome::Served;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("client left hanging: {e}; got {}", show(&reply)),
        }
    }
    match &reply[..] {
        b"ERR server full\n" => Outcome::RefusedFull,
        b"" => Outcome::Closed,
        other => panic!("unexpected reply {}", show(other)),
    }
}

#[test]
fn out_of_descriptors_the_server_sheds_load_without_spinning_and_recovers() {
    let server = TestServer::start_with_fd_limit(&[], FD_LIMIT);

    // Fill every descriptor the server has, and more.
    let mut served = Vec::new();
    let mut turned_away = 0;
    for _ in 0..FD_LIMIT + 20 {
        let mut stream = connect(server.line_addr());
        match try_ping(&mut stream) {
            Outcome::Served => served.push(stream),
            Outcome::RefusedFull | Outcome::Closed => turned_away += 1,
        }
    }
    assert!(served.len() > 20, "only {} clients served", served.len());
    assert!(turned_away >= 20, "only {turned_away} clients turned away");

    // The clients it has are still served, and it says what happened.
    let mut first = LineClient::new(served.remove(0));
    let stats = parse_stats(&first.request(b"STATS"));
    assert!(stats["accept_emfile"] >= 1, "{stats:?}");
    assert!(server.logged_soon("accept failed"), "no warning logged");

    // Connections waiting in the backlog must not make the loop spin. Each return from
    // `poll` is one `wakeups`, so the count says how often the loop turned while it could not
    // accept. CPU time said it less well: it depends on the build and on how much of a shared
    // machine the server got, so a starved spin could pass and a slow healthy build could fail.
    let before = parse_stats(&first.request(b"STATS"));
    let waiting: Vec<TcpStream> = (0..10).map(|_| connect(server.line_addr())).collect();
    std::thread::sleep(WINDOW);
    let during = parse_stats(&first.request(b"STATS"));
    assert!(
        during["accept_emfile"] > before["accept_emfile"],
        "accept never ran out of descriptors in the window: {during:?}"
    );
    let wakeups = during["wakeups"] - before["wakeups"];
    assert!(
        wakeups < MAX_WAKEUPS_WHILE_FULL,
        "{wakeups} wakeups in {WINDOW:?} while out of descriptors: the loop spun"
    );
    drop(waiting);

    // Once descriptors free up, new clients are served again.
    served.truncate(served.len() / 2);
    let recovered = wait_until(after(Duration::from_secs(5)), || {
        let mut stream = connect(server.line_addr());
        try_ping(&mut stream) == Outcome::Served
    });
    assert!(
        recovered,
        "no new client served after descriptors were freed"
    );
    assert_eq!(first.request(b"PING"), b"PONG\n");
}
