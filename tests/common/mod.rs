//! Shared harness for the integration tests: the real `tcp-reactor` binary on port 0, clients
//! with timeouts, and exact-byte helpers for both protocols.
//!
//! Invariants the tests rely on:
//! - Every server is a child process bound to `127.0.0.1:0`; the bound addresses are learned
//!   from its `line listener on ...` / `frame listener on ...` log lines (and the TLS and
//!   `metrics listener on ...` ones when those are asked for), so tests run in
//!   parallel without port clashes.
//! - Stderr is drained by a thread for the whole life of the child, so the pipe never fills
//!   (a full pipe would block the server inside a log call) and tests can assert on log lines.
//! - Every blocking operation has a deadline: sockets carry read and write timeouts, process
//!   waits poll `try_wait`, and conditions are polled with [`wait_until`]. A hang fails fast
//!   instead of wedging `cargo test`.
//! - `Drop` kills and reaps the child, so a failing test never leaks a server.
//!
//! What it refuses to do: it never sleeps to "let the server catch up"; a test that needs the
//! server to have done something waits for an observable effect.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the server may take to log both listener addresses.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write timeout of every client socket: a missing reply fails the test this fast.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Frame protocol constants, spelled out here so the tests do not trust the code under test.
pub const MAGIC: [u8; 2] = [0x47, 0x4F];
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
pub const HEARTBEAT: u8 = 0;
pub const MESSAGE: u8 = 1;
pub const LOGIN: u8 = 2;
pub const LOGIN_ACK: u8 = 3;
pub const ERROR: u8 = 4;
/// Default `--max-frame`: 10 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 10 * 1024 * 1024;

/// Every key of the STATS line, in the order the spec lists them.
pub const STATS_KEYS: [&str; 34] = [
    "accepted",
    "active",
    "closed",
    "idle_timeouts",
    "request_timeouts",
    "protocol_errors",
    "rejected_full",
    "bytes_in",
    "bytes_out",
    "requests",
    "partial_reads",
    "partial_writes",
    "read_would_block",
    "write_would_block",
    "wakeups",
    "timers_fired",
    "backpressure_pauses",
    "slow_reader_drops",
    "accept_emfile",
    "logins",
    "login_failures",
    "lingering",
    "client_memory",
    "client_memory_peak",
    "memory_evictions",
    "memory_throttles",
    "proxy_errors",
    "rejected_per_ip",
    "cluster_up",
    "cluster_published",
    "cluster_received",
    "cluster_dropped",
    "workers",
    "active_by_worker",
];

/// A running `tcp-reactor` child process.
pub struct TestServer {
    child: Child,
    line_addr: SocketAddr,
    frame_addr: SocketAddr,
    line_tls_addr: Option<SocketAddr>,
    frame_tls_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    drain: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Spawns the binary on two port-0 listeners plus `args`, and waits until it has logged
    /// both bound addresses.
    pub fn start(args: &[&str]) -> TestServer {
        Self::spawn(args, None, "info")
    }

    /// Like `start`, plus TLS listeners for both protocols on port 0 certified by `cert`
    /// (addresses in `line_tls_addr()` / `frame_tls_addr()`).
    pub fn start_tls(cert: &TestCert, extra: &[&str]) -> TestServer {
        let mut args = vec![
            "--line-tls-addr",
            "127.0.0.1:0",
            "--frame-tls-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.cert_arg(),
            "--tls-key",
            cert.key_arg(),
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Like `start`, logging at `RUST_LOG=level` (`trace` shows every read, write and
    /// state change).
    pub fn start_logging(args: &[&str], level: &str) -> TestServer {
        Self::spawn(args, None, level)
    }

    /// Like `start`, with RLIMIT_NOFILE (soft and hard) set to `limit` in the child, so the
    /// server runs out of descriptors at a known point.
    pub fn start_with_fd_limit(args: &[&str], limit: u64) -> TestServer {
        Self::spawn(args, Some(limit), "info")
    }

    /// Like `start`, as systemd would start it from socket units (socket activation):
    /// `sockets` are the listening sockets to pass, each with its `FileDescriptorName=`,
    /// placed at descriptors 3, 4, ... with `LISTEN_FDS`, `LISTEN_FDNAMES` and a
    /// `LISTEN_PID` naming the server. The addresses it logs are theirs.
    pub fn start_activated(sockets: &[(&str, RawFd)], args: &[&str]) -> TestServer {
        let mut command = activated_command(sockets);
        command
            .args(["--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info");
        Self::launch(command, args)
    }

    /// Like `start`, with these variables added to the server's environment.
    pub fn start_with_env(args: &[&str], vars: &[(&str, &str)]) -> TestServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcp-reactor"));
        command
            .args(["--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied());
        Self::launch(command, args)
    }

    fn spawn(args: &[&str], fd_limit: Option<u64>, log_level: &str) -> TestServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcp-reactor"));
        command
            .args(["--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", log_level);
        if let Some(limit) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Self::launch(command, args)
    }

    /// Runs `command` (the server, with its arguments `args`) and waits until it has logged
    /// both listener addresses.
    fn launch(mut command: Command, args: &[&str]) -> TestServer {
        if let Some(workers) = suite_workers()
            && !args.contains(&"--workers")
        {
            command.args(["--workers", &workers]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn tcp-reactor");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let drain = thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                        sink.lock().unwrap().push(line);
                    }
                }
            }
        });
        let mut server = TestServer {
            child,
            // Placeholders until the log lines arrive; replaced below or the start panics.
            line_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            frame_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            line_tls_addr: None,
            frame_tls_addr: None,
            metrics_addr: None,
            logs,
            drain: Some(drain),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let wants_line_tls = args.contains(&"--line-tls-addr");
        let wants_frame_tls = args.contains(&"--frame-tls-addr");
        let wants_metrics = args.contains(&"--metrics-addr");
        loop {
            let line_addr = server.find_listener("line listener on ");
            let frame_addr = server.find_listener("frame listener on ");
            let line_tls_addr = server.find_listener("line TLS listener on ");
            let frame_tls_addr = server.find_listener("frame TLS listener on ");
            let metrics_addr = server.find_listener("metrics listener on ");
            if let (Some(line), Some(frame)) = (line_addr, frame_addr)
                && (line_tls_addr.is_some() || !wants_line_tls)
                && (frame_tls_addr.is_some() || !wants_frame_tls)
                && (metrics_addr.is_some() || !wants_metrics)
            {
                server.line_addr = line;
                server.frame_addr = frame;
                server.line_tls_addr = line_tls_addr;
                server.frame_tls_addr = frame_tls_addr;
                server.metrics_addr = metrics_addr;
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                // Let the drain thread collect the last words before reporting them.
                if let Some(drain) = server.drain.take() {
                    let _ = drain.join();
                }
                panic!(
                    "tcp-reactor {args:?} exited during startup with {status}; stderr:\n{}",
                    server.logs().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "tcp-reactor {args:?} did not log both listener addresses within {:?}; \
                     stderr so far:\n{}",
                    STARTUP_TIMEOUT,
                    server.logs().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn find_listener(&self, marker: &str) -> Option<SocketAddr> {
        let logs = self.logs.lock().unwrap();
        logs.iter().find_map(|line| {
            let rest = &line[line.find(marker)? + marker.len()..];
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                .collect();
            addr.parse().ok()
        })
    }

    pub fn line_addr(&self) -> SocketAddr {
        self.line_addr
    }

    pub fn frame_addr(&self) -> SocketAddr {
        self.frame_addr
    }

    /// The line-over-TLS listener; panics unless the server was started with
    /// `--line-tls-addr`.
    pub fn line_tls_addr(&self) -> SocketAddr {
        self.line_tls_addr.expect("started with --line-tls-addr")
    }

    /// The frame-over-TLS listener; panics unless the server was started with
    /// `--frame-tls-addr`.
    pub fn frame_tls_addr(&self) -> SocketAddr {
        self.frame_tls_addr.expect("started with --frame-tls-addr")
    }

    /// The metrics listener's address, as logged (`metrics listener on ...`); started with
    /// `--metrics-addr`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("started with --metrics-addr")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connected socket on the line port, with timeouts and `TCP_NODELAY`.
    pub fn connect_line(&self) -> TcpStream {
        connect(self.line_addr)
    }

    /// A connected socket on the frame port, with timeouts and `TCP_NODELAY`.
    pub fn connect_frame(&self) -> TcpStream {
        connect(self.frame_addr)
    }

    /// A buffered line-protocol client.
    pub fn line_client(&self) -> LineClient {
        LineClient::new(self.connect_line())
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // not yet reaped while `self.child` has not returned a status.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    /// Polls for the child's exit until `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the child is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Resident set size of the server, from `/proc/PID/status` `VmRSS`.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The highest resident set size the server has had, from `/proc/PID/status` `VmHWM`.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}:\n{status}"))
    }

    /// Every stderr line logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Whether some log line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// [`TestServer::logged`], waiting up to 5 s for the line: the server's log reaches the
    /// test through a pipe and a thread, so a line written just before a reply may still be
    /// on its way when the reply has arrived.
    pub fn logged_soon(&self, needle: &str) -> bool {
        wait_until(after(Duration::from_secs(5)), || self.logged(needle))
    }

    /// Asks for STATS on a fresh line connection and parses it. The extra connection moves
    /// `accepted`/`active`; callers compare only the counters they care about.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let mut client = self.line_client();
        let line = client.request(b"STATS");
        parse_stats(&line)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Either may fail if the child already exited and was reaped; nothing left to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            // The pipe closes with the child, so the drain thread ends promptly.
            let _ = drain.join();
        }
        if std::thread::panicking() {
            // A failed test shows what the server said, the last of it.
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let from = logs.len().saturating_sub(SHOWN_LOG_LINES);
            eprintln!("--- the server's last {} log lines:", logs.len() - from);
            for line in &logs[from..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Log lines of the server shown when a test fails.
const SHOWN_LOG_LINES: usize = 60;

/// A command that runs the server as systemd's socket activation does: `sockets` (each a
/// `FileDescriptorName=` and a descriptor of this process) at descriptors 3, 4, ... of the
/// server, not close-on-exec; `LISTEN_FDS` and `LISTEN_FDNAMES` set; and `LISTEN_PID`, which
/// must be the server's own pid, set by a shell that then `exec`s the server (exec keeps the
/// pid). Add the server's arguments to it.
pub fn activated_command(sockets: &[(&str, RawFd)]) -> Command {
    use std::os::unix::process::CommandExt;
    let names: Vec<&str> = sockets.iter().map(|&(name, _)| name).collect();
    let fds: Vec<RawFd> = sockets.iter().map(|&(_, fd)| fd).collect();
    assert!(fds.len() <= 8, "at most 8 sockets");
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_tcp-reactor"),
        ])
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    // SAFETY: between fork and exec only fcntl and dup2 run, which are async-signal-safe,
    // on a Vec allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // First out of the way (close-on-exec copies at 100 and up), so that placing one
            // at 3 cannot overwrite another that happens to be there.
            let mut high = [0; 8];
            for (slot, &fd) in high.iter_mut().zip(&fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (target, &fd) in (3..).zip(&high[..fds.len()]) {
                // dup2's copy is not close-on-exec: it survives the two execs.
                if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// Waits up to `within` for the server to exit after a signal; asserts it exited 0 and
/// logged its exit summary.
pub fn assert_clean_exit(server: &mut TestServer, within: Duration) {
    let status = server.wait_exit(within);
    let Some(status) = status else {
        panic!(
            "server still running {within:?} after the signal; log:\n{}",
            server.logs().join("\n")
        );
    };
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.logs().join("\n")
    );
    // The drain thread may still be copying the last lines.
    assert!(
        wait_until(after(Duration::from_secs(2)), || server
            .logged("exit summary:")),
        "no `exit summary:` in the log:\n{}",
        server.logs().join("\n")
    );
}

/// Connects to `addr` with read/write timeouts of [`IO_TIMEOUT`] and `TCP_NODELAY`.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Polls `cond` every few milliseconds until it holds (true) or `deadline` passes (false).
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `Instant::now() + d`, for deadlines.
pub fn after(d: Duration) -> Instant {
    Instant::now() + d
}

/// Whether an IO error is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` surface as either).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Shows bytes readably in assertion messages, truncated.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(shown));
    if bytes.len() > MAX {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

/// Asserts that the next read is a clean end of stream (`Ok(0)`, the peer's FIN). Fails on
/// data, on a timeout, and on `ECONNRESET`: a reset means the server closed with unread input
/// or aborted, and may have destroyed replies still in flight.
pub fn expect_eof(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF, got {n} more bytes: {}", show(&buf[..n])),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            panic!("expected a clean EOF, got a connection reset: {e}")
        }
        Err(e) if is_timeout(&e) => panic!("expected EOF, but the server kept the socket open"),
        Err(e) => panic!("expected EOF, got error {e} ({:?})", e.kind()),
    }
}

/// Asserts that nothing arrives within `wait` (the socket stays open and silent).
pub fn expect_silence(stream: &mut TcpStream, wait: Duration) {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    let result = stream.read(&mut buf);
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    match result {
        Err(e) if is_timeout(&e) => {}
        Ok(0) => panic!("expected silence, got EOF"),
        Ok(n) => panic!("expected silence, got {n} bytes: {}", show(&buf[..n])),
        Err(e) => panic!("expected silence, got error {e}"),
    }
}

/// Writes all of `bytes`, panicking with context on failure.
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
}

/// Encodes one frame: `47 4F 01 cmd len(u32 BE) body`.
pub fn frame(cmd: u8, body: &[u8]) -> Vec<u8> {
    let mut out = header(cmd, u32::try_from(body.len()).expect("body fits u32"));
    out.extend_from_slice(body);
    out
}

/// Encodes just a header announcing `len` body bytes (the body is not included).
pub fn header(cmd: u8, len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(cmd);
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Reads one whole frame with exact reads (never over-reads, so no bytes are lost), checks
/// magic and version, and returns `(command, body)`.
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut head)
        .unwrap_or_else(|e| panic!("reading a frame header: {e} ({:?})", e.kind()));
    assert_eq!(head[0..2], MAGIC, "reply magic, header {head:02x?}");
    assert_eq!(head[2], VERSION, "reply version, header {head:02x?}");
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("reading a {len}-byte frame body: {e}"));
    (head[3], body)
}

/// Asserts the next frame is an Error frame with exactly `reason`, followed by a clean EOF.
pub fn expect_error_frame_then_eof(stream: &mut TcpStream, reason: &str) {
    let (cmd, body) = read_frame(stream);
    assert_eq!(
        (cmd, show(&body)),
        (ERROR, show(reason.as_bytes())),
        "expected Error frame {reason:?}"
    );
    expect_eof(stream);
}

/// Parses `STATS k=v k=v ...\n` into a map, asserting the shape (prefix, numeric values,
/// no duplicate keys). `active_by_worker`, a comma-separated list, is mapped to the sum of
/// its entries (which must equal `active`); [`active_by_worker`] gives the list itself.
pub fn parse_stats(line: &[u8]) -> BTreeMap<String, u64> {
    let text = std::str::from_utf8(line).unwrap_or_else(|_| panic!("STATS: {}", show(line)));
    let text = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("STATS line without newline: {text:?}"));
    let rest = text
        .strip_prefix("STATS ")
        .unwrap_or_else(|| panic!("not a STATS line: {text:?}"));
    let mut map = BTreeMap::new();
    for pair in rest.split(' ') {
        let (k, v) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("STATS field {pair:?} is not key=value in {text:?}"));
        let v: u64 = if k == "active_by_worker" {
            parse_list(v).iter().sum()
        } else {
            v.parse()
                .unwrap_or_else(|_| panic!("STATS {k}={v:?} is not a number"))
        };
        assert!(map.insert(k.to_string(), v).is_none(), "duplicate key {k}");
    }
    if let (Some(by_worker), Some(active)) = (map.get("active_by_worker"), map.get("active")) {
        assert_eq!(
            by_worker, active,
            "active_by_worker does not add up in {text:?}"
        );
    }
    map
}

fn parse_list(value: &str) -> Vec<u64> {
    value
        .split(',')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("active_by_worker={value:?} is not a list of numbers"))
        })
        .collect()
}

/// Asks `client` for STATS until `done` holds of them (or 5 s have passed) and returns the
/// last ones read. With several workers the other workers' counters are copies as of the
/// end of their last turn: an effect a client has just seen (a reply, an EOF) may show in
/// them a moment later. The caller asserts on what is returned.
pub fn stats_when(
    client: &mut LineClient,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    parse_stats(&stats_line_when(client, done))
}

/// [`stats_when`], returning the STATS line itself (for `active_by_worker`).
pub fn stats_line_when(
    client: &mut LineClient,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = client.request(b"STATS");
        if done(&parse_stats(&line)) || Instant::now() >= deadline {
            return line;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The `active_by_worker` list of a STATS line: each worker's active connections.
pub fn active_by_worker(line: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(line);
    let value = text
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("active_by_worker="))
        .unwrap_or_else(|| panic!("no active_by_worker in {text:?}"));
    parse_list(value)
}

/// A line-protocol client that buffers what it reads, so bytes after a newline are kept for
/// the next line instead of being lost.
pub struct LineClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl LineClient {
    pub fn new(stream: TcpStream) -> LineClient {
        LineClient {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        send(&mut self.stream, bytes);
    }

    /// Sends `line` plus `\n` and returns the next reply line (including its `\n`).
    pub fn request(&mut self, line: &[u8]) -> Vec<u8> {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        self.send(&bytes);
        self.read_line()
    }

    /// The next line, byte-exact, including its `\n`. Panics on EOF, error or timeout.
    pub fn read_line(&mut self) -> Vec<u8> {
        match self.try_read_line() {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "expected a line, got EOF (pending partial line: {})",
                show(&self.buf[self.start..])
            ),
            Err(e) => panic!(
                "expected a line, got {e} ({:?}); pending: {}",
                e.kind(),
                show(&self.buf[self.start..])
            ),
        }
    }

    /// The next line including `\n`; `Ok(None)` on EOF (any trailing partial line is left
    /// in the buffer, see [`LineClient::pending`]).
    pub fn try_read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned = self.start;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i + 1;
                let line = self.buf[self.start..end].to_vec();
                self.start = end;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            if self.fill()? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 at EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Bytes read but not yet returned as a line.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Asserts nothing is buffered and the next read is a clean EOF (see [`expect_eof`]).
    pub fn expect_eof(&mut self) {
        assert!(
            self.pending().is_empty(),
            "expected EOF, but {} is buffered",
            show(self.pending())
        );
        expect_eof(&mut self.stream);
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        assert!(
            self.pending().is_empty(),
            "expected silence, but {} is buffered",
            show(self.pending())
        );
        expect_silence(&mut self.stream, wait);
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

/// `read_line` as a free function, for symmetry with [`read_frame`].
pub fn read_line(client: &mut LineClient) -> Vec<u8> {
    client.read_line()
}

/// What [`write_until_stalled`] managed to send.
pub struct Stall {
    /// Lines `0..lines` were sent, except that the last one may lack `tail`.
    pub lines: u64,
    /// The unsent end of the last line (empty if the stall fell on a line boundary); send it
    /// to leave the stream on a line boundary.
    pub tail: Vec<u8>,
    /// Bytes the kernel accepted.
    pub bytes: u64,
    /// Whether a write timed out (false: `limit_bytes` was reached first).
    pub stalled: bool,
}

/// Writes `line_at(0)`, `line_at(1)`, ... in batches, never reading, until a write makes no
/// progress for `stall` (the server stopped reading: its receive buffer and our send buffer
/// are full) or `limit_bytes` were sent. Restores the write timeout to [`IO_TIMEOUT`].
pub fn write_until_stalled(
    stream: &mut TcpStream,
    stall: Duration,
    limit_bytes: u64,
    line_at: impl Fn(u64) -> Vec<u8>,
) -> Stall {
    const BATCH_BYTES: usize = 64 * 1024;
    stream.set_write_timeout(Some(stall)).unwrap();
    let mut next = 0u64;
    let mut bytes = 0u64;
    let outcome = loop {
        if bytes >= limit_bytes {
            break Stall {
                lines: next,
                tail: Vec::new(),
                bytes,
                stalled: false,
            };
        }
        let mut chunk = Vec::new();
        let mut ends = Vec::new();
        let mut i = next;
        while chunk.len() < BATCH_BYTES {
            chunk.extend_from_slice(&line_at(i));
            ends.push(chunk.len());
            i += 1;
        }
        let mut off = 0;
        let mut timed_out = false;
        while off < chunk.len() {
            match stream.write(&chunk[off..]) {
                Ok(0) => panic!("write returned 0 after {bytes} bytes"),
                Ok(n) => {
                    off += n;
                    bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    timed_out = true;
                    break;
                }
                Err(e) => panic!("write failed after {bytes} bytes: {e}"),
            }
        }
        if !timed_out {
            next = i;
            continue;
        }
        // Lines ending at or before `off` are whole; the one containing `off` is partial.
        let whole = ends.iter().take_while(|&&end| end <= off).count();
        let start = if whole == 0 { 0 } else { ends[whole - 1] };
        let (lines, tail) = if start < off {
            (next + whole as u64 + 1, chunk[off..ends[whole]].to_vec())
        } else {
            (next + whole as u64, Vec::new())
        };
        break Stall {
            lines,
            tail,
            bytes,
            stalled: true,
        };
    };
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    outcome
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made at run time with rcgen and
/// written as PEM files to a fresh directory, removed on drop.
pub struct TestCert {
    pub dir: std::path::PathBuf,
    /// The certificate (PEM); also what a client trusts with `--ca`.
    pub cert: std::path::PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: std::path::PathBuf,
}

impl TestCert {
    pub fn new() -> TestCert {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tcp-reactor-cert-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).expect("rcgen");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).expect("write cert.pem");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
        TestCert { dir, cert, key }
    }

    /// The certificate path as a `&str`, for command lines.
    pub fn cert_arg(&self) -> &str {
        self.cert.to_str().expect("temp paths are UTF-8")
    }

    /// The key path as a `&str`, for command lines.
    pub fn key_arg(&self) -> &str {
        self.key.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A users file (`--users`) made at run time, removed on drop: `ann` with password
/// `correct horse`, `bob` with `hunter2-Xyzzy`, and `user` with `pass` (what tcp-load's
/// `login` workload and tcp-client's examples send).
pub struct UsersFile {
    pub path: std::path::PathBuf,
}

impl UsersFile {
    pub fn new() -> UsersFile {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tcp-reactor-users-{}-{n}", std::process::id()));
        let mut text = String::from("# name:argon2id hash\n");
        for (name, password) in [
            ("ann", "correct horse"),
            ("bob", "hunter2-Xyzzy"),
            ("user", "pass"),
        ] {
            let line = tcp_reactor::auth::hash_line(name, password.as_bytes()).expect("hash");
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&path, text).expect("write the users file");
        UsersFile { path }
    }

    /// The path as a `&str`, for command lines.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for UsersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How many loops the server under test runs, and how they share the listeners: the test
/// matrix of the behaviours that must not change with `--workers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// The default: one loop.
    One,
    /// `--workers 2`: worker 0 accepts and hands sockets over by least connections, so
    /// clients connecting one after another alternate between the workers.
    TwoLeastConn,
    /// `--workers 2 --balance reuseport`: the kernel picks each connection's worker.
    TwoReuseport,
}

impl Workers {
    /// The server flags of this case.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Workers::One => &[],
            Workers::TwoLeastConn => &["--workers", "2"],
            Workers::TwoReuseport => &["--workers", "2", "--balance", "reuseport"],
        }
    }

    /// `TestServer::start(args)` with this case's flags added.
    pub fn start(self, args: &[&str]) -> TestServer {
        TestServer::start(&self.with(args))
    }

    /// `args` followed by this case's flags.
    pub fn with<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend_from_slice(self.args());
        all
    }

    pub fn count(self) -> usize {
        match self {
            Workers::One => 1,
            Workers::TwoLeastConn | Workers::TwoReuseport => 2,
        }
    }
}

/// Declares a test run once per [`Workers`] case: `over_workers! { fn name(workers) { ... } }`
/// makes the module `name` with the tests `one`, `two_least_conn` and `two_reuseport`, so a
/// failure names its case (`chat::say_reaches_everyone::two_least_conn`).
#[macro_export]
macro_rules! over_workers {
    ($($(#[$meta:meta])* fn $name:ident($workers:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                fn case($workers: $crate::common::Workers) $body

                #[test]
                fn one() {
                    case($crate::common::Workers::One)
                }

                #[test]
                fn two_least_conn() {
                    case($crate::common::Workers::TwoLeastConn)
                }

                #[test]
                fn two_reuseport() {
                    case($crate::common::Workers::TwoReuseport)
                }
            }
        )*
    };
}

/// A system program a test drives (haproxy, redis-server, promtool), or `None` after saying
/// why the test is skipped. Looked for on `PATH`, then in the bin and sbin directories a
/// non-root `PATH` often lacks (Debian puts haproxy in /usr/sbin). Under CI a missing one
/// is a failure: `.ci/run` installs `package`, so its absence means the install step broke.
pub fn require_tool(binary: &str, package: &str, test: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(
            [
                "/usr/bin",
                "/usr/sbin",
                "/usr/local/bin",
                "/usr/local/sbin",
                "/sbin",
            ]
            .map(Into::into),
        )
        .map(|dir: std::path::PathBuf| dir.join(binary))
        .find(|bin| bin.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{binary} is not installed and CI is set: .ci/run should have run \
             `apt-get install -y {package}`"
        );
        eprintln!("{test}: skipped: {binary} is not installed (apt-get install -y {package})");
    }
    found
}

/// `TCP_REACTOR_TEST_WORKERS=N cargo test` starts every server that names no `--workers` of
/// its own with `--workers N`, so the whole suite (protocols, timeouts, backpressure, as
/// well as the [`Workers`] matrix) can be run over several loops. Unset, the servers run
/// the default one loop.
pub fn suite_workers() -> Option<String> {
    std::env::var("TCP_REACTOR_TEST_WORKERS")
        .ok()
        .filter(|n| !n.is_empty())
}
