//! Socket activation without systemd: the test binds the listening sockets itself and hands
//! them to the server as systemd would (descriptors from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `LISTEN_PID`). Holding them, the test plays the service manager's part across a restart:
//! the sockets outlive each server, so connects that arrive meanwhile wait in the backlog.

mod common;

use common::{
    HEARTBEAT, IO_TIMEOUT, LineClient, TestServer, Workers, activated_command, after,
    assert_clean_exit, connect, expect_eof, frame, read_frame, send, wait_until,
    write_until_stalled,
};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Slack on top of the configured shutdown timeout for process exit and our polling.
const EXIT_SLACK: Duration = Duration::from_secs(3);

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

fn addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("local_addr")
}

/// The two listening sockets (line, frame) the test holds, as systemd would, across the
/// servers it starts on them.
struct Sockets {
    line: TcpListener,
    frames: TcpListener,
}

impl Sockets {
    fn new() -> Sockets {
        Sockets {
            line: listener(),
            frames: listener(),
        }
    }

    fn passed(&self) -> [(&'static str, RawFd); 2] {
        [
            ("line", self.line.as_raw_fd()),
            ("frame", self.frames.as_raw_fd()),
        ]
    }

    /// A server started by socket activation on both.
    fn start(&self, args: &[&str]) -> TestServer {
        TestServer::start_activated(&self.passed(), args)
    }

    fn line_addr(&self) -> SocketAddr {
        addr(&self.line)
    }
}

/// One PING on a fresh connection, as `n`: the reply line, or what went wrong.
fn ping_once(addr: SocketAddr, n: u64) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            format!("connect refused: {e}")
        } else {
            format!("connect: {e}")
        }
    })?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("timeouts: {e}"))?;
    stream
        .write_all(format!("PING {n}\n").as_bytes())
        .map_err(|e| format!("PING {n}: write: {e}"))?;
    let mut line = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("PING {n}: read: {e}"))?;
    if line != format!("PONG {n}\n").as_bytes() {
        return Err(format!(
            "PING {n}: got {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    Ok(())
}

#[test]
fn passed_listeners_serve_both_protocols() {
    let sockets = Sockets::new();
    let server = sockets.start(&[]);
    assert_eq!(server.line_addr(), sockets.line_addr());
    assert_eq!(server.frame_addr(), addr(&sockets.frames));
    assert!(
        server.logged(&format!(
            "line listener on {} (from systemd, fd 3)",
            sockets.line_addr()
        )),
        "{}",
        server.logs().join("\n")
    );
    assert!(server.logged("serving only the 2 passed listener(s) (line, frame)"));
    let mut client = server.line_client();
    assert_eq!(client.request(b"PING"), b"PONG\n");
    let mut frame_client = server.connect_frame();
    send(&mut frame_client, &frame(HEARTBEAT, b"beat"));
    assert_eq!(read_frame(&mut frame_client), (HEARTBEAT, b"beat".to_vec()));
}

#[test]
fn variables_for_another_process_are_ignored_and_the_configured_addresses_bound() {
    let server = TestServer::start_with_env(
        &[],
        &[
            ("LISTEN_PID", "1"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "line:frame"),
        ],
    );
    assert!(server.logged("LISTEN_PID=1 is not this process"));
    assert!(!server.logged("from systemd"));
    let mut client = server.line_client();
    assert_eq!(client.request(b"PING"), b"PONG\n");
}

/// Runs the server as activated with `sockets`, `LISTEN_FDNAMES` replaced by `names` when
/// given, and waits for it to exit (killing it after 10 s).
fn run_activated(sockets: &[(&str, RawFd)], names: Option<&str>, args: &[&str]) -> Output {
    let mut command = activated_command(sockets);
    if let Some(names) = names {
        command.env("LISTEN_FDNAMES", names);
    }
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcp-reactor");
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let killer = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            // SAFETY: kill with signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        // SAFETY: the pid is our child, not reaped before `wait_with_output` returns.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let output = child.wait_with_output().expect("wait for tcp-reactor");
    let _ = killer.join();
    output
}

/// One way to get socket activation wrong, and what the server says about it.
struct Misstart<'a> {
    what: &'a str,
    sockets: Vec<(&'a str, RawFd)>,
    /// `LISTEN_FDNAMES` in place of the sockets' names.
    names: Option<&'a str>,
    args: &'a [&'a str],
    says: &'a str,
}

#[test]
fn inconsistent_activation_is_a_startup_error_with_status_2() {
    let (line, frames) = (listener(), listener());
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let unlistened = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    let both = vec![("line", line.as_raw_fd()), ("frame", frames.as_raw_fd())];
    let cases = [
        Misstart {
            what: "unknown name",
            sockets: both.clone(),
            names: Some("line:http"),
            args: &[],
            says: r#"fd 4 is named "http""#,
        },
        Misstart {
            what: "duplicate name",
            sockets: both.clone(),
            names: Some("line:line"),
            args: &[],
            says: r#"two descriptors are named "line""#,
        },
        Misstart {
            what: "count against names",
            sockets: both.clone(),
            names: Some("line"),
            args: &[],
            says: "LISTEN_FDS=2 but LISTEN_FDNAMES has 1 name(s)",
        },
        Misstart {
            what: "a UDP socket",
            sockets: vec![("line", line.as_raw_fd()), ("frame", udp.as_raw_fd())],
            names: None,
            args: &[],
            says: "fd 4 (frame) is not a listening TCP socket: not a stream socket",
        },
        Misstart {
            what: "a TCP socket not listening",
            sockets: vec![("line", unlistened.as_raw_fd())],
            names: None,
            args: &[],
            says: "fd 3 (line) is not a listening TCP socket: not listening",
        },
        Misstart {
            what: "TLS without a certificate",
            sockets: vec![("line", line.as_raw_fd()), ("line-tls", frames.as_raw_fd())],
            names: None,
            args: &[],
            says: "a line-tls socket was passed, but TLS needs --tls-cert and --tls-key",
        },
        Misstart {
            what: "reuseport",
            sockets: both.clone(),
            names: None,
            args: &["--workers", "2", "--balance", "reuseport"],
            says: "--balance reuseport needs a listener per worker",
        },
    ];
    for case in cases {
        let output = run_activated(&case.sockets, case.names, case.args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let what = case.what;
        assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("socket activation: {}", case.says)),
            "{what}: {stderr}"
        );
    }
}

/// What the client threads saw over one run.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// `threads` clients, each sending one PING per fresh connection to `addr` until `stop`.
fn clients(
    addr: SocketAddr,
    threads: u64,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            thread::spawn(move || {
                let mut n = t << 32;
                while !stop.load(Ordering::Acquire) {
                    match ping_once(addr, n) {
                        Ok(()) => {
                            tally.answered.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => tally.failures.lock().unwrap().push(e),
                    }
                    n += 1;
                }
            })
        })
        .collect()
}

/// A restart on the same sockets: SIGTERM to the first server while clients keep
/// connecting, the first exits 0, a second starts on the same sockets. No connect is refused
/// (the sockets never stop listening: the test holds them, as systemd does) and every PING
/// gets its PONG: those the first server had accepted are answered by it, even when the
/// PING reaches it after the signal (a connection that has sent nothing yet is served its
/// first request), and those still in the backlog are answered by the second.
#[test]
fn a_restart_on_the_same_sockets_refuses_no_connect_and_answers_every_request() {
    for workers in [Workers::One, Workers::TwoLeastConn] {
        let sockets = Sockets::new();
        let args = workers.with(&["--shutdown-timeout", "5s"]);
        let mut first = sockets.start(&args);

        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = clients(sockets.line_addr(), 5, &stop, &tally);
        let answered = || tally.answered.load(Ordering::Acquire);
        assert!(
            wait_until(after(Duration::from_secs(10)), || answered() >= 200),
            "{workers:?}: only {} answered before the restart",
            answered()
        );

        first.signal(libc::SIGTERM);
        assert_clean_exit(&mut first, Duration::from_secs(5) + EXIT_SLACK);
        let by_first = answered();
        let second = sockets.start(&args);
        assert!(
            wait_until(after(Duration::from_secs(10)), || answered()
                >= by_first + 200),
            "{workers:?}: only {} answered after the restart",
            answered() - by_first
        );
        stop.store(true, Ordering::Release);
        for thread in threads {
            thread.join().expect("client thread");
        }

        let failures = tally.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{workers:?}: {} of {} requests failed, first: {:?}\nfirst server's log:\n{}",
            failures.len(),
            failures.len() as u64 + answered(),
            &failures[..failures.len().min(5)],
            first.logs().join("\n")
        );
        // The STATS connection is one of the accepted; the clients' are the rest.
        let stats = second.stats();
        assert!(stats["accepted"] > 1, "{workers:?}: {stats:?}");
        assert!(
            first.logged("their backlog is left to the next process"),
            "{}",
            first.logs().join("\n")
        );
        eprintln!(
            "{workers:?}: {} answered, {by_first} before the restart",
            answered()
        );
    }
}

/// While the first server's shutdown is held up by a client that does not read, new
/// clients connect: they are not refused (the test holds the sockets open, as systemd does)
/// and the first server does not take them from the backlog; the second answers them. A
/// connection the first had accepted, silent at the signal, is served its first request when
/// it comes; one that stays silent is closed after a short grace.
#[test]
fn a_shutdown_leaves_the_backlog_to_the_next_server_and_serves_accepted_connections_once() {
    for workers in [Workers::One, Workers::TwoLeastConn] {
        let sockets = Sockets::new();
        let args = workers.with(&["--shutdown-timeout", "3s"]);
        let mut first = sockets.start(&args);
        let mut late = first.line_client();
        let mut silent = first.connect_frame();
        let mut stuck = first.connect_line();
        let stall = write_until_stalled(&mut stuck, Duration::from_secs(1), 64 << 20, |i| {
            format!("PING {i}\n").into_bytes()
        });
        assert!(
            stall.stalled,
            "the server kept reading a client that never reads"
        );
        // All three are accepted once STATS (a fourth connection) counts them.
        assert!(wait_until(after(Duration::from_secs(5)), || {
            first.stats()["active"] >= 4
        }));

        let signalled = Instant::now();
        first.signal(libc::SIGTERM);
        assert!(
            wait_until(after(Duration::from_secs(5)), || first
                .logged("their backlog is left to the next process")),
            "{}",
            first.logs().join("\n")
        );
        // Sent after the shutdown began, on a connection accepted before: answered.
        assert_eq!(late.request(b"PING late"), b"PONG late\n", "{workers:?}");
        late.expect_eof();
        expect_eof(&mut silent);
        assert!(
            signalled.elapsed() < Duration::from_millis(2500),
            "{workers:?}: the silent connection was closed after {:?}",
            signalled.elapsed()
        );
        // The first server is still draining `stuck`: these wait in the backlog.
        let mut queued: Vec<_> = (0..4)
            .map(|_| LineClient::new(connect(sockets.line_addr())))
            .collect();
        for (i, c) in queued.iter_mut().enumerate() {
            c.send(format!("PING {i}\n").as_bytes());
        }
        assert!(
            first.is_running(),
            "{workers:?}: exited before the shutdown timeout"
        );
        drop((late, silent));
        assert_clean_exit(&mut first, Duration::from_secs(3) + EXIT_SLACK);
        drop(stuck);
        for c in &mut queued {
            // Nothing from the first server: it never accepted them.
            c.expect_silence(Duration::from_millis(100));
        }

        let second = sockets.start(&args);
        for (i, c) in queued.iter_mut().enumerate() {
            assert_eq!(
                c.read_line(),
                format!("PONG {i}\n").as_bytes(),
                "{workers:?} {i}"
            );
        }
        drop(second);
    }
}
