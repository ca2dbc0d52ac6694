//! Socket activation without systemd: the test binds the listening sockets itself and hands
//! them to the server as systemd would (descriptors from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `LISTEN_PID`).

mod common;

use common::{HEARTBEAT, TestServer, activated_command, frame, read_frame, send};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

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
