//! `tcp-client` as a user runs it: the real binary as a child process against the real server
//! (or, for failures the server never produces, a few-line fake server), asserting exact
//! stdout, stderr and exit status.
//!
//! Every child is bounded: its exit is awaited with a deadline and it is killed on `Drop`,
//! its output is read by threads so a full pipe never blocks it, and what a test waits for
//! (a `WELCOME`, a push) is polled with a deadline instead of slept for.
//!
//! A behaviour that is the same over plain TCP and TLS is one test over [`TRANSPORTS`], each
//! case against a fresh [`Target`]; a failed assertion names the command line it ran.

mod common;

use common::{IO_TIMEOUT, TestCert, TestServer, UsersFile, after, connect, send};
use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a client run may take before the test fails (and kills it).
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `tcp-client`, killed and reaped on `Drop`.
struct Client {
    /// The command line, for failure messages.
    args: Vec<String>,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Chunks of stdout as they arrive; closed at the child's EOF.
    stdout_chunks: Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// What a finished run left behind.
struct Finished {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Client {
    fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcp-client"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcp-client");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, stdout_chunks) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            all
        });
        Client {
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect(),
            child,
            stdin,
            stdout_chunks,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Writes to the child's stdin (which stays open).
    fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write to tcp-client stdin");
        stdin.flush().expect("flush tcp-client stdin");
    }

    /// Closes the child's stdin: its end of input.
    fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits until stdout so far contains `needle`, panicking at `deadline`.
    fn wait_for_stdout(&mut self, needle: &str, deadline: Instant) {
        while !String::from_utf8_lossy(&self.stdout).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_chunks.recv_timeout(left) {
                Ok(chunk) => self.stdout.extend_from_slice(&chunk),
                Err(e) => panic!(
                    "waiting for {needle:?} on tcp-client's stdout: {e}; got so far: {:?}",
                    String::from_utf8_lossy(&self.stdout)
                ),
            }
        }
    }

    /// Waits for the child to exit (killing it and failing at the deadline), then collects
    /// all of its output.
    fn finish(mut self) -> Finished {
        self.close_stdin();
        let deadline = after(RUN_TIMEOUT);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "tcp-client did not exit within {RUN_TIMEOUT:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&self.stdout)
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        // The pipes close with the child, so both readers end promptly.
        while let Ok(chunk) = self.stdout_chunks.recv_timeout(IO_TIMEOUT) {
            self.stdout.extend_from_slice(&chunk);
        }
        let stderr = self
            .stderr
            .take()
            .expect("finish runs once")
            .join()
            .expect("stderr reader");
        Finished {
            args: std::mem::take(&mut self.args),
            status,
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Fails only if the child was already reaped; nothing left to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tcp-client args` with `input` as its whole stdin, to completion.
fn run<S: AsRef<OsStr>>(args: &[S], input: &[u8]) -> Finished {
    let mut client = Client::spawn(args);
    let stdin = client.stdin.as_mut().expect("stdin is piped");
    match stdin.write_all(input) {
        // A client that fails early (say, connection refused) may exit before reading.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        result => result.expect("write to tcp-client stdin"),
    }
    client.finish()
}

/// Asserts exit status, stdout and stderr at once, so a failure shows all three.
fn assert_run(run: &Finished, code: i32, stdout: &str, stderr: &str) {
    assert_eq!(
        (run.status.code(), run.stdout.as_str(), run.stderr.as_str()),
        (Some(code), stdout, stderr),
        "tcp-client {:?}",
        run.args
    );
}

/// An address where nothing listens, reliably: a socket bound to it (so no one else can take
/// the port) that never calls `listen`, so the kernel answers a SYN with a reset. Keep the
/// socket alive for as long as the address is used.
fn refusing_addr() -> (socket2::Socket, String) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("an inet address");
    (socket, addr.to_string())
}

/// A one-connection fake server: accepts, runs `serve` on the connection, then closes it.
fn fake_server(
    serve: impl FnOnce(std::net::TcpStream) + Send + 'static,
) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        serve(stream);
    });
    (addr, handle)
}

/// The two ways to reach the server. A behaviour that does not depend on the transport is
/// one test over both, as rustls's tests run each case over every cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

const TRANSPORTS: [Transport; 2] = [Transport::Plain, Transport::Tls];

/// A fresh server for one transport. Over TLS it has TLS listeners too (beside the plain
/// ones) and the certificate they show, which the client trusts with `--ca`.
struct Target {
    transport: Transport,
    server: TestServer,
    /// Over TLS only; the client reads it, so it lives as long as the server.
    cert: Option<TestCert>,
}

impl Target {
    fn start(transport: Transport, args: &[&str]) -> Target {
        let (server, cert) = match transport {
            Transport::Plain => (TestServer::start(args), None),
            Transport::Tls => {
                let cert = TestCert::new();
                (TestServer::start_tls(&cert, args), Some(cert))
            }
        };
        Target {
            transport,
            server,
            cert,
        }
    }

    /// The line listener that speaks this transport.
    fn line_addr(&self) -> SocketAddr {
        match self.transport {
            Transport::Plain => self.server.line_addr(),
            Transport::Tls => self.server.line_tls_addr(),
        }
    }

    /// The frame listener that speaks this transport.
    fn frame_addr(&self) -> SocketAddr {
        match self.transport {
            Transport::Plain => self.server.frame_addr(),
            Transport::Tls => self.server.frame_tls_addr(),
        }
    }

    /// The client's TLS flags: none over plain TCP, `--tls --ca CERT` over TLS.
    fn tls_args(&self) -> Vec<String> {
        match &self.cert {
            None => Vec::new(),
            Some(cert) => ["--tls", "--ca", cert.cert_arg()]
                .map(String::from)
                .to_vec(),
        }
    }

    /// `tcp-client MODE... --addr ADDR` and the TLS flags.
    fn args(&self, mode: &[&str], addr: impl ToString) -> Vec<String> {
        let mut args: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
        args.extend(["--addr".to_string(), addr.to_string()]);
        args.extend(self.tls_args());
        args
    }
}

// ---------------------------------------------------------------------------------------
// frame

#[test]
fn frame_requests_print_the_decoded_reply() {
    let users = UsersFile::new();
    let cases: &[(&[&str], &str)] = &[
        (&["frame", "heartbeat"], "Heartbeat\n"),
        (
            &["frame", "message", "hello there"],
            "Message Server says: hello there\n",
        ),
        (&["frame", "login", "user", "pass"], "LoginAck OK\n"),
    ];
    for transport in TRANSPORTS {
        let target = Target::start(transport, &["--users", users.arg()]);
        for (request, stdout) in cases {
            let out = run(&target.args(request, target.frame_addr()), b"");
            assert_run(&out, 0, stdout, "");
        }
    }
}

#[test]
fn frame_options_may_come_before_the_request() {
    // --addr, --timeout and the TLS flags alike.
    for transport in TRANSPORTS {
        let target = Target::start(transport, &[]);
        let addr = target.frame_addr().to_string();
        let mut args = vec!["frame".to_string()];
        args.extend(target.tls_args());
        args.extend(["--addr", &addr, "--timeout", "2s", "message", "hi"].map(String::from));
        assert_run(&run(&args, b""), 0, "Message Server says: hi\n", "");
    }
}

#[test]
fn frame_message_reply_that_is_not_utf8_prints_as_hex() {
    use std::os::unix::ffi::OsStrExt;
    let server = TestServer::start(&[]);
    let addr = server.frame_addr().to_string();
    let text = OsStr::from_bytes(b"\xff");
    let out = run(
        &[
            OsStr::new("frame"),
            OsStr::new("message"),
            text,
            OsStr::new("--addr"),
            OsStr::new(&addr),
        ],
        b"",
    );
    // The reply body is "Server says: " + ff.
    assert_run(&out, 0, "Message 0x53657276657220736179733a20ff\n", "");
}

#[test]
fn frame_error_reply_goes_to_stderr_and_exits_1() {
    let server = TestServer::start(&["--max-frame", "4"]);
    let addr = server.frame_addr().to_string();
    let out = run(&["frame", "message", "hello", "--addr", &addr], b"");
    assert_run(&out, 1, "", "Error frame too large: 5 bytes (max 4)\n");
    // At exactly the limit the same server answers.
    let out = run(&["frame", "message", "four", "--addr", &addr], b"");
    assert_run(&out, 0, "Message Server says: four\n", "");
}

#[test]
fn frame_at_the_line_port_times_out() {
    // The line server reads the 8 header bytes as the start of a line and waits for its
    // newline: no reply ever comes, and the client gives up at --timeout.
    let server = TestServer::start(&[]);
    let addr = server.line_addr().to_string();
    let started = Instant::now();
    let out = run(
        &["frame", "heartbeat", "--addr", &addr, "--timeout", "300ms"],
        b"",
    );
    assert_run(
        &out,
        1,
        "",
        "tcp-client: no reply frame within 300ms (0 bytes received)\n",
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn frame_at_the_line_port_gets_a_bad_reply_at_idle_timeout() {
    // With a short idle timeout the line server says `ERR idle timeout\n`, whose first two
    // bytes ("ER") are not the magic.
    let server = TestServer::start(&["--idle-timeout", "200ms"]);
    let addr = server.line_addr().to_string();
    let out = run(
        &["frame", "heartbeat", "--addr", &addr, "--timeout", "5s"],
        b"",
    );
    assert_run(&out, 1, "", "tcp-client: bad reply: bad magic 0x4552\n");
}

#[test]
fn frame_reply_cut_short_by_the_server_closing() {
    let (addr, fake) = fake_server(|mut stream| {
        let mut request = [0u8; 8];
        stream.read_exact(&mut request).expect("read the request");
        assert_eq!(request, [0x47, 0x4F, 0x01, 0x00, 0, 0, 0, 0]);
        // Half a header, then a clean close.
        send(&mut stream, &[0x47, 0x4F, 0x01, 0x00, 0x00]);
    });
    let out = run(&["frame", "heartbeat", "--addr", &addr], b"");
    fake.join().expect("fake server");
    assert_run(
        &out,
        1,
        "",
        "tcp-client: the server closed the connection after 5 bytes, before a whole frame\n",
    );
}

#[test]
fn frame_reply_split_across_writes_is_one_reply() {
    let (addr, fake) = fake_server(|mut stream| {
        let mut request = [0u8; 8 + 2];
        stream.read_exact(&mut request).expect("read the request");
        assert_eq!(&request, b"\x47\x4F\x01\x01\x00\x00\x00\x02hi");
        stream.set_nodelay(true).unwrap();
        for piece in [&b"\x47\x4F\x01"[..], b"\x01\x00\x00\x00", b"\x05wor", b"ld"] {
            send(&mut stream, piece);
            thread::sleep(Duration::from_millis(20)); // separate segments, not a sync
        }
    });
    let out = run(&["frame", "message", "hi", "--addr", &addr], b"");
    fake.join().expect("fake server");
    assert_run(&out, 0, "Message world\n", "");
}

#[test]
fn connect_refused_exits_1_in_either_mode() {
    let (_socket, addr) = refusing_addr();
    let cases: &[(&[&str], &[u8])] = &[(&["line"], b"PING\n"), (&["frame", "heartbeat"], b"")];
    for (mode, input) in cases {
        let mut args = mode.to_vec();
        args.extend(["--addr", &addr]);
        let out = run(&args, input);
        assert_eq!(out.status.code(), Some(1), "{mode:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{mode:?}");
        assert!(
            out.stderr
                .starts_with(&format!("tcp-client: cannot connect to {addr}: ")),
            "{mode:?}: {:?}",
            out.stderr
        );
        assert!(out.stderr.contains("refused"), "{mode:?}: {:?}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// line

#[test]
fn line_piped_session_prints_every_reply() {
    for transport in TRANSPORTS {
        let target = Target::start(transport, &[]);
        let out = run(
            &target.args(&["line"], target.line_addr()),
            b"PING\nHELLO ann\nQUIT\n",
        );
        assert_run(&out, 0, "PONG\nWELCOME ann\nBYE\n", "");
    }
}

#[test]
fn line_end_of_input_half_closes_and_prints_until_the_server_closes() {
    // No QUIT: the end of stdin half-closes (over TLS after close_notify), the server answers
    // everything, then closes. The last line has no newline; the client adds one. The host
    // is `localhost`: over TLS that is the name verified against the certificate's DNS name.
    for transport in TRANSPORTS {
        let target = Target::start(transport, &[]);
        let addr = format!("localhost:{}", target.line_addr().port());
        for input in [&b"ping x\r\nhello\nPING"[..], b"ping x\nhello\nPING"] {
            let out = run(&target.args(&["line"], &addr), input);
            assert_run(&out, 0, "PONG x\nERR usage: HELLO <name>\nPONG\n", "");
        }
    }
}

#[test]
fn line_server_closing_first_ends_the_client() {
    // stdin stays open: the client must exit because the server closed, not because input
    // ended.
    for transport in TRANSPORTS {
        let target = Target::start(transport, &[]);
        let mut client = Client::spawn(&target.args(&["line"], target.line_addr()));
        client.type_in(b"QUIT\n");
        let deadline = after(RUN_TIMEOUT);
        assert!(
            common::wait_until(deadline, || client.child.try_wait().unwrap().is_some()),
            "tcp-client {:?} still running after the server closed",
            client.args
        );
        let out = client.finish();
        assert_run(&out, 0, "BYE\n", "");
    }
}

#[test]
fn line_chat_push_arrives_while_the_user_is_silent() {
    for transport in TRANSPORTS {
        let target = Target::start(transport, &[]);
        let mut bob = Client::spawn(&target.args(&["line"], target.line_addr()));
        bob.type_in(b"HELLO bob\n");
        // bob must be identified before ann speaks, or he is not in the room yet.
        bob.wait_for_stdout("WELCOME bob\n", after(RUN_TIMEOUT));

        // ann speaks over plain TCP whatever bob's transport: the room is the same.
        let mut ann = common::LineClient::new(connect(target.server.line_addr()));
        assert_eq!(ann.request(b"HELLO ann"), b"WELCOME ann\n");
        assert_eq!(ann.request(b"SAY hi"), b"OK\n");
        bob.wait_for_stdout("MSG ann hi\n", after(RUN_TIMEOUT));
        // Lines typed later still go out.
        bob.type_in(b"PING\n");
        bob.wait_for_stdout("PONG\n", after(RUN_TIMEOUT));

        let out = bob.finish();
        assert_run(&out, 0, "WELCOME bob\nMSG ann hi\nPONG\n", "");
    }
}

#[test]
fn line_connection_reset_exits_1() {
    let (addr, fake) = fake_server(|mut stream| {
        // The line proves the client is connected and past `connect` (a reset during the
        // handshake's last step would be reported as a failed connect instead).
        let mut line = [0u8; 5];
        stream
            .read_exact(&mut line)
            .expect("read the client's line");
        assert_eq!(&line, b"PING\n");
        // SO_LINGER 0: close() sends a reset instead of a FIN.
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(stream);
    });
    // stdin stays open, so only the reset can end the client.
    let mut client = Client::spawn(&["line", "--addr", &addr]);
    client.type_in(b"PING\n");
    fake.join().expect("fake server");
    let deadline = after(RUN_TIMEOUT);
    assert!(
        common::wait_until(deadline, || client.child.try_wait().unwrap().is_some()),
        "tcp-client still running after the reset"
    );
    let out = client.finish();
    assert_run(&out, 1, "", "tcp-client: connection reset by the server\n");
}

// ---------------------------------------------------------------------------------------
// TLS only: what has no plain counterpart (trust, names, the flags)

/// The one line `--insecure` prints on stderr.
const INSECURE_WARNING: &str = "tcp-client: warning: --insecure: the server's certificate is \
                                not verified; anyone on the path can pose as the server\n";

#[test]
fn tls_insecure_accepts_any_certificate_and_warns() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let frame = server.frame_tls_addr().to_string();
    let out = run(
        &[
            "frame",
            "message",
            "hi",
            "--addr",
            &frame,
            "--tls",
            "--insecure",
        ],
        b"",
    );
    assert_run(&out, 0, "Message Server says: hi\n", INSECURE_WARNING);
    // Whatever name is asked for.
    let line = server.line_tls_addr().to_string();
    let out = run(
        &[
            "line",
            "--addr",
            &line,
            "--tls",
            "--insecure",
            "--server-name",
            "not-the-server.test",
        ],
        b"PING\n",
    );
    assert_run(&out, 0, "PONG\n", INSECURE_WARNING);
}

#[test]
fn tls_certificate_from_another_ca_fails_verification() {
    let cert = TestCert::new();
    let stranger = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    for (mode, addr) in [
        ("line", server.line_tls_addr()),
        ("frame", server.frame_tls_addr()),
    ] {
        let addr = addr.to_string();
        let mut args = vec![mode];
        if mode == "frame" {
            args.push("heartbeat");
        }
        args.extend_from_slice(&["--addr", &addr, "--tls", "--ca", stranger.cert_arg()]);
        let out = run(&args, b"PING\n");
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{mode}");
        let prefix =
            format!("tcp-client: TLS handshake with {addr} failed: invalid peer certificate: ");
        assert!(out.stderr.starts_with(&prefix), "{mode}: {:?}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{mode}: {:?}", out.stderr);
    }
}

#[test]
fn tls_name_not_in_the_certificate_fails_verification() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let addr = server.frame_tls_addr().to_string();
    let out = run(
        &[
            "frame",
            "heartbeat",
            "--addr",
            &addr,
            "--tls",
            "--ca",
            cert.cert_arg(),
            "--server-name",
            "other.test",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("invalid peer certificate: certificate not valid for name \"other.test\""),
        "{:?}",
        out.stderr
    );
}

#[test]
fn tls_to_a_plain_listener_fails_the_handshake() {
    // The frame server reads the ClientHello as a frame with a bad magic and answers an
    // Error frame, which is no TLS record.
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let addr = server.frame_addr().to_string();
    let out = run(
        &[
            "frame",
            "heartbeat",
            "--addr",
            &addr,
            "--tls",
            "--ca",
            cert.cert_arg(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("tcp-client: TLS handshake with {addr} failed: ")),
        "{:?}",
        out.stderr
    );
}

#[test]
fn tls_a_bad_ca_file_is_named() {
    let cert = TestCert::new();
    let out = run(
        &[
            "frame",
            "heartbeat",
            "--addr",
            "127.0.0.1:1",
            "--tls",
            "--ca",
            cert.key_arg(),
        ],
        b"",
    );
    assert_run(
        &out,
        1,
        "",
        &format!(
            "tcp-client: the CA file {} holds no certificate (no PEM CERTIFICATE section)\n",
            cert.key_arg()
        ),
    );
    let missing = cert.dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let out = run(&["line", "--tls", "--ca", missing], b"");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("tcp-client: cannot read the CA file {missing}: ")),
        "{:?}",
        out.stderr
    );
}

#[test]
fn tls_usage_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["line", "--tls"], "pass --ca FILE"),
        (&["frame", "heartbeat", "--tls"], "or --insecure"),
        (
            &["frame", "heartbeat", "--ca", "ca.pem"],
            "--ca only applies with --tls",
        ),
        (
            &["line", "--insecure"],
            "--insecure only applies with --tls",
        ),
        (
            &["line", "--server-name", "h"],
            "--server-name only applies with --tls",
        ),
        (
            &["line", "--tls", "--ca", "ca.pem", "--insecure"],
            "cannot be used together",
        ),
    ];
    for (args, needle) in cases {
        let out = run(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {:?}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// command line

#[test]
fn help_documents_both_modes() {
    let out = run(&["--help"], b"");
    assert_eq!(out.status.code(), Some(0));
    for needle in [
        "tcp-client line [--addr HOST:PORT]",
        "tcp-client frame heartbeat",
        "tcp-client frame message TEXT",
        "tcp-client frame login USER PASS",
        "127.0.0.1:8080",
        "127.0.0.1:8888",
    ] {
        assert!(out.stdout.contains(needle), "--help lacks {needle:?}");
    }
    assert!(out.stdout.contains("--tls"), "--help lacks --tls");
    for mode in ["line", "frame"] {
        let out = run(&[mode, "--help"], b"");
        assert_eq!(out.status.code(), Some(0));
        for needle in [
            "--tls",
            "--ca <FILE>",
            "--insecure",
            "--server-name <NAME>",
            "--addr <HOST:PORT>",
        ] {
            assert!(
                out.stdout.contains(needle),
                "{mode} --help lacks {needle:?}"
            );
        }
    }
    let out = run(&["frame", "--help"], b"");
    assert_eq!(out.status.code(), Some(0));
    for needle in ["--timeout <DUR>", "--addr <HOST:PORT>", "Error <reason>"] {
        assert!(out.stdout.contains(needle), "frame --help lacks {needle:?}");
    }
}

#[test]
fn bad_command_line_exits_2() {
    let out = run(&["frame", "message"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("<TEXT>"), "{:?}", out.stderr);
}
