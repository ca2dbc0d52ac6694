//! A graceful shutdown in the middle of random, mixed, partly hostile traffic.
//!
//! One real server with a users file; a dozen clients, each running a random script drawn
//! from a seed: pipelined requests of both protocols sent in random chunks, partial requests,
//! QUIT, HELLO/SAY, LOGIN right and wrong, resets at random points, half-closes, clients that
//! never read. SIGTERM comes at a random moment. It passes when the server exits 0 within
//! `--shutdown-timeout` + 1 s, nothing panicked, and every client that reads received every
//! reply it was owed, in order, then EOF.
//!
//! A fixed set of seeds runs in `cargo test`. `SHUTDOWN_SEEDS=FIRST-LAST` runs others
//! (scripts/soak.sh does); a failure names its seed, and the same seed replays the same
//! scripts (the timing of the threads, not the scripts, varies between runs).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{ERROR, HEARTBEAT, LOGIN, LOGIN_ACK, MESSAGE, TestServer, UsersFile, frame};

/// The seeds `cargo test` runs: about 6 s each, most of it the shutdown timeout that the
/// clients that never read run into.
const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
const CLIENTS: usize = 12;
/// How long a client waits for the server: far past the shutdown deadline.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// SplitMix64: a few lines of well-known PRNG, so a seed means the same scripts everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Line,
    Frame,
}

/// What a client does besides sending its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Reads every reply, then expects EOF once the server shuts down.
    Reader,
    /// Reads every reply after closing its write side; EOF follows the last reply.
    HalfCloser,
    /// Resets the connection (SO_LINGER 0) at a random point.
    Resetter,
    /// Never reads: its replies pile up until the shutdown deadline cuts it off.
    NeverReads,
}

/// A client's script: the bytes to send, in chunks, and the replies owed for them.
struct Script {
    protocol: Protocol,
    role: Role,
    chunks: Vec<Vec<u8>>,
    /// Line replies (without pushes, which arrive in no fixed place) or frames, in order.
    owed: Vec<u8>,
    /// The script ends in QUIT: the reply ends with BYE, then EOF, before the shutdown.
    quits: bool,
}

fn line_script(rng: &mut Rng, client: usize) -> (Vec<u8>, Vec<u8>, bool) {
    let mut sent = Vec::new();
    let mut owed = Vec::new();
    let mut named = false;
    let mut logins = 0;
    let mut wrong_logins = 0;
    for n in 0..rng.below(40) + 1 {
        let tag = format!("c{client}-{n}");
        let (request, reply) = match rng.below(9) {
            0 | 1 => (format!("PING {tag}\n"), format!("PONG {tag}\n")),
            2 | 3 => (format!("text {tag}\n"), format!("text {tag}\n")),
            4 if logins < 1 => {
                logins += 1;
                if wrong_logins < 2 && rng.chance(50) {
                    wrong_logins += 1;
                    (
                        "LOGIN ann wrong\n".to_string(),
                        "ERR invalid credentials\n".to_string(),
                    )
                } else {
                    ("LOGIN ann correct horse\n".to_string(), "OK\n".to_string())
                }
            }
            5 if !named => {
                named = true;
                (format!("HELLO c{client}\n"), format!("WELCOME c{client}\n"))
            }
            6 if named => (format!("SAY hi {tag}\n"), "OK\n".to_string()),
            6 => (
                format!("SAY hi {tag}\n"),
                "ERR identify first with HELLO <name>\n".to_string(),
            ),
            _ => (format!("PING {tag}\n"), format!("PONG {tag}\n")),
        };
        sent.extend_from_slice(request.as_bytes());
        owed.extend_from_slice(reply.as_bytes());
    }
    let quits = rng.chance(20);
    if quits {
        sent.extend_from_slice(b"QUIT\nPING after quit\n");
        owed.extend_from_slice(b"BYE\n");
    } else if rng.chance(30) {
        // An unfinished request: never answered.
        sent.extend_from_slice(b"PING never finished");
    }
    (sent, owed, quits)
}

fn frame_script(rng: &mut Rng, client: usize) -> (Vec<u8>, Vec<u8>) {
    let mut sent = Vec::new();
    let mut owed = Vec::new();
    let mut logins = 0;
    for n in 0..rng.below(40) + 1 {
        let body = format!("c{client}-{n}").into_bytes();
        match rng.below(5) {
            0 | 1 => {
                sent.extend(frame(HEARTBEAT, &body));
                owed.extend(frame(HEARTBEAT, &body));
            }
            2 | 3 => {
                sent.extend(frame(MESSAGE, &body));
                owed.extend(frame(MESSAGE, &[b"Server says: ", &body[..]].concat()));
            }
            _ if logins < 1 => {
                logins += 1;
                if rng.chance(50) {
                    sent.extend(frame(LOGIN, b"ann:wrong"));
                    owed.extend(frame(ERROR, b"invalid credentials"));
                } else {
                    sent.extend(frame(LOGIN, b"ann:correct horse"));
                    owed.extend(frame(LOGIN_ACK, b"OK"));
                }
            }
            _ => {
                sent.extend(frame(HEARTBEAT, b""));
                owed.extend(frame(HEARTBEAT, b""));
            }
        }
    }
    if rng.chance(30) {
        // A header whose body never comes: never answered.
        sent.extend_from_slice(&frame(MESSAGE, b"0123456789")[..12]);
    }
    (sent, owed)
}

fn script(rng: &mut Rng, client: usize) -> Script {
    let protocol = if rng.chance(60) {
        Protocol::Line
    } else {
        Protocol::Frame
    };
    let role = match rng.below(10) {
        0..=4 => Role::Reader,
        5 | 6 => Role::HalfCloser,
        7 | 8 => Role::Resetter,
        _ => Role::NeverReads,
    };
    let (mut sent, owed, quits) = match protocol {
        Protocol::Line => line_script(rng, client),
        Protocol::Frame => {
            let (sent, owed) = frame_script(rng, client);
            (sent, owed, false)
        }
    };
    if role == Role::NeverReads {
        // Enough pipelined requests that the replies fill the socket buffers and stay owed.
        let ping: &[u8] = match protocol {
            Protocol::Line => b"PING never read, never read, never read, never read\n",
            Protocol::Frame => &frame(HEARTBEAT, &[b'x'; 200]),
        };
        sent = ping.repeat(1 + (2 << 20) / ping.len());
    }
    let mut chunks = Vec::new();
    let mut rest = &sent[..];
    while !rest.is_empty() {
        let take = (rng.below(300) as usize + 1).min(rest.len());
        chunks.push(rest[..take].to_vec());
        rest = &rest[take..];
    }
    Script {
        protocol,
        role,
        chunks,
        owed,
        quits,
    }
}

/// Runs one client's script. Reports on `sent` once everything owed a reply has been
/// written (the SIGTERM waits for that), then returns what it must assert, if anything.
fn run_client(
    addr: SocketAddr,
    script: Script,
    pause_seed: u64,
    sent: mpsc::Sender<()>,
) -> Result<(), String> {
    let mut rng = Rng(pause_seed);
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let reset_after = rng.below(script.chunks.len() as u64 + 1) as usize;
    let mut reported = false;
    for (n, chunk) in script.chunks.iter().enumerate() {
        if script.role == Role::Resetter && n == reset_after {
            break;
        }
        if let Err(e) = stream.write_all(chunk) {
            // Only a client the server may cut off can be refused its writes.
            if matches!(script.role, Role::Reader | Role::HalfCloser) {
                return Err(format!("write: {e}"));
            }
            break;
        }
        if script.role == Role::NeverReads && !reported && n > 20 {
            // Its owed replies are not checked: let the signal come while it is busy.
            let _ = sent.send(());
            reported = true;
        }
        if rng.chance(10) {
            thread::sleep(Duration::from_millis(rng.below(15)));
        }
    }
    if !reported {
        let _ = sent.send(());
    }
    match script.role {
        Role::Resetter => {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            Ok(())
        }
        Role::NeverReads => {
            // Hold the socket, unread, until the server gives up on it.
            let mut one = [0u8; 1];
            let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
            thread::sleep(SHUTDOWN_TIMEOUT + Duration::from_millis(500));
            let _ = stream.peek(&mut one);
            Ok(())
        }
        Role::HalfCloser | Role::Reader => {
            if script.role == Role::HalfCloser {
                stream
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown(Write): {e}"))?;
            }
            let mut received = Vec::new();
            stream
                .read_to_end(&mut received)
                .map_err(|e| format!("reading to EOF: {e} after {} bytes", received.len()))?;
            check_replies(&script, &received)
        }
    }
}

/// The replies must be exactly those owed, in order (chat pushes aside), then EOF.
fn check_replies(script: &Script, received: &[u8]) -> Result<(), String> {
    let got: Vec<u8> = match script.protocol {
        // Pushes from other clients land between any two replies; none is owed.
        Protocol::Line => received
            .split_inclusive(|&b| b == b'\n')
            .filter(|line| !line.starts_with(b"MSG "))
            .flatten()
            .copied()
            .collect(),
        Protocol::Frame => received.to_vec(),
    };
    if got == script.owed {
        return Ok(());
    }
    let same = got
        .iter()
        .zip(&script.owed)
        .take_while(|(a, b)| a == b)
        .count();
    Err(format!(
        "{:?} {:?} (quits: {}): replies differ at byte {same} of {} owed ({} received):\n\
         owed: {}\n got: {}",
        script.protocol,
        script.role,
        script.quits,
        script.owed.len(),
        got.len(),
        around(&script.owed, same),
        around(&got, same),
    ))
}

/// Up to 80 bytes of `bytes` from `at`, printable.
fn around(bytes: &[u8], at: usize) -> String {
    let from = at.min(bytes.len());
    common::show(&bytes[from..(from + 80).min(bytes.len())])
}

fn run_seed(seed: u64) {
    let users = UsersFile::new();
    let timeout = format!("{}s", SHUTDOWN_TIMEOUT.as_secs());
    let mut server = TestServer::start(&["--users", users.arg(), "--shutdown-timeout", &timeout]);
    let mut rng = Rng(seed);
    let (sent_tx, sent_rx) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let script = script(&mut rng, client);
            let addr = match script.protocol {
                Protocol::Line => server.line_addr(),
                Protocol::Frame => server.frame_addr(),
            };
            let role = (script.protocol, script.role);
            let pause_seed = rng.next();
            let sent = sent_tx.clone();
            let handle = thread::spawn(move || run_client(addr, script, pause_seed, sent));
            (role, handle)
        })
        .collect();
    // Every client has written what it is owed replies for; the signal comes at a random
    // moment after that, with replies, logins and abusive traffic in flight.
    for _ in 0..CLIENTS {
        sent_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("seed {seed}: a client never finished sending"));
    }
    thread::sleep(Duration::from_millis(rng.below(150)));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);

    let status = server.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(1));
    let log = || server.logs().join("\n");
    let Some(status) = status else {
        panic!(
            "seed {seed}: still running {:?} after SIGTERM; log:\n{}",
            signalled.elapsed(),
            log()
        );
    };
    assert!(
        status.success(),
        "seed {seed}: exit {status}; log:\n{}",
        log()
    );
    assert!(
        !server.logged("panicked"),
        "seed {seed}: a panic; log:\n{}",
        log()
    );
    for (n, (role, handle)) in clients.into_iter().enumerate() {
        let result = handle.join().expect("client thread");
        if let Err(e) = result {
            panic!("seed {seed}: client {n} {role:?}: {e}");
        }
    }
}

fn seeds() -> Vec<u64> {
    let Ok(range) = std::env::var("SHUTDOWN_SEEDS") else {
        return SEEDS.to_vec();
    };
    let parse = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("SHUTDOWN_SEEDS={range:?}: {e}"))
    };
    match range.split_once('-') {
        Some((first, last)) => (parse(first)..=parse(last)).collect(),
        None => vec![parse(&range)],
    }
}

#[test]
fn sigterm_during_random_mixed_traffic_delivers_every_owed_reply_and_exits_0() {
    for seed in seeds() {
        run_seed(seed);
    }
}
