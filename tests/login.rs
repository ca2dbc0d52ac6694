//! Logins on both protocols: verified off the loop (argon2id on worker threads), answered in
//! order with the requests pipelined behind them, `--require-login`, three strikes, the users
//! file, and passwords kept out of the logs.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Reads exactly `expected.len()` bytes and compares.
fn expect_bytes(stream: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    std::io::Read::read_exact(stream, &mut got).unwrap_or_else(|e| {
        panic!("reading {}: {e}", show(expected));
    });
    assert_eq!(show(&got), show(expected));
}

#[test]
fn line_logins_are_answered_in_order_with_the_requests_behind_them() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    let mut stream = server.connect_line();
    // Pipelined: the PING behind each LOGIN waits for the verdict and comes after it.
    stream
        .write_all(
            b"PING 1\nLOGIN ann wrong\nPING 2\nLOGIN nobody correct horse\nPING 3\n\
              LOGIN ann correct horse\nPING 4\nsome text\nLOGIN bob hunter2-Xyzzy\nLOGIN\n",
        )
        .unwrap();
    expect_bytes(
        &mut stream,
        b"PONG 1\nERR invalid credentials\nPONG 2\nERR invalid credentials\nPONG 3\n\
          OK\nPONG 4\nsome text\nOK\nERR usage: LOGIN <user> <password>\n",
    );
    let stats = server.stats();
    assert_eq!(
        (stats["logins"], stats["login_failures"]),
        (2, 2),
        "{stats:?}"
    );
}

#[test]
fn frame_logins_get_a_login_ack_or_an_error_frame_and_the_connection_stays() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    let mut stream = server.connect_frame();
    let mut requests = frame(LOGIN, b"ann:nope");
    requests.extend(frame(HEARTBEAT, b""));
    requests.extend(frame(LOGIN, b"no colon"));
    requests.extend(frame(LOGIN, b"bob:hunter2-Xyzzy"));
    requests.extend(frame(MESSAGE, b"hi"));
    stream.write_all(&requests).unwrap();
    let mut expected = frame(ERROR, b"invalid credentials");
    expected.extend(frame(HEARTBEAT, b""));
    expected.extend(frame(ERROR, b"usage: Login body is user:password"));
    expected.extend(frame(LOGIN_ACK, b"OK"));
    expected.extend(frame(MESSAGE, b"Server says: hi"));
    expect_bytes(&mut stream, &expected);
}

#[test]
fn a_password_may_contain_colons_and_spaces() {
    let dir = std::env::temp_dir().join(format!("tcp-reactor-colon-{}", std::process::id()));
    let line = tcp_reactor::auth::hash_line("cat", b"a:b c").unwrap();
    std::fs::write(&dir, format!("{line}\n")).unwrap();
    let server = TestServer::start(&["--users", dir.to_str().unwrap()]);
    let mut lines = server.connect_line();
    lines.write_all(b"LOGIN cat a:b c\n").unwrap();
    expect_bytes(&mut lines, b"OK\n");
    let mut frames = server.connect_frame();
    frames.write_all(&frame(LOGIN, b"cat:a:b c")).unwrap();
    expect_bytes(&mut frames, &frame(LOGIN_ACK, b"OK"));
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn three_failed_logins_close_the_connection() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    let mut stream = server.connect_line();
    stream
        .write_all(b"LOGIN ann a\nLOGIN ann b\nLOGIN nobody c\nPING\n")
        .unwrap();
    expect_bytes(&mut stream, &b"ERR invalid credentials\n".repeat(3));
    expect_eof(&mut stream);

    let mut frames = server.connect_frame();
    let mut requests = Vec::new();
    for body in [&b"ann:a"[..], b"ann:b", b"ann:c"] {
        requests.extend(frame(LOGIN, body));
    }
    requests.extend(frame(HEARTBEAT, b""));
    frames.write_all(&requests).unwrap();
    expect_bytes(&mut frames, &frame(ERROR, b"invalid credentials").repeat(3));
    expect_eof(&mut frames);
    assert_eq!(server.stats()["login_failures"], 6);
}

#[test]
fn without_a_users_file_every_login_is_answered_ok_as_in_the_original_protocol() {
    let server = TestServer::start(&[]);
    assert!(
        server.logged("logins are not checked"),
        "{:?}",
        server.logs()
    );
    let mut stream = server.connect_line();
    stream
        .write_all(b"LOGIN ann correct horse\nLOGIN nobody x\nLOGIN\nPING\n")
        .unwrap();
    expect_bytes(
        &mut stream,
        b"OK\nOK\nERR usage: LOGIN <user> <password>\nPONG\n",
    );

    // The original client's Login, whatever its body: a LoginAck `OK` each.
    let mut frames = server.connect_frame();
    let mut requests = frame(LOGIN, b"ann:pw");
    requests.extend(frame(LOGIN, b"no colon"));
    requests.extend(frame(LOGIN, b""));
    requests.extend(frame(HEARTBEAT, b"after"));
    frames.write_all(&requests).unwrap();
    for _ in 0..3 {
        assert_eq!(read_frame(&mut frames), (LOGIN_ACK, b"OK".to_vec()));
    }
    assert_eq!(read_frame(&mut frames), (HEARTBEAT, b"after".to_vec()));
    let stats = server.stats();
    assert_eq!(
        (stats["logins"], stats["login_failures"]),
        (5, 0),
        "{stats:?}"
    );
}

#[test]
fn require_login_without_a_users_file_is_refused_at_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tcp-reactor"))
        .args(["--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0"])
        .arg("--require-login")
        .output()
        .expect("run tcp-reactor");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--require-login needs --users FILE"),
        "{stderr}"
    );
}

#[test]
fn require_login_serves_only_ping_login_and_quit_until_a_login() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg(), "--require-login"]);
    let mut stream = server.connect_line();
    stream
        .write_all(
            b"good morning\nSTATS\nHELLO ann\nSAY hi\nPING\nLOGIN ann\nLOGIN ann bad\n\
              LOGIN ann correct horse\ngood morning\nHELLO ann\nQUIT\n",
        )
        .unwrap();
    expect_bytes(
        &mut stream,
        b"ERR login required\nERR login required\nERR login required\nERR login required\n\
          PONG\nERR usage: LOGIN <user> <password>\nERR invalid credentials\nOK\n\
          good morning\nWELCOME ann\nBYE\n",
    );
    expect_eof(&mut stream);

    let mut frames = server.connect_frame();
    let mut requests = frame(MESSAGE, b"early");
    requests.extend(frame(HEARTBEAT, b""));
    requests.extend(frame(LOGIN, b"bob:hunter2-Xyzzy"));
    requests.extend(frame(MESSAGE, b"late"));
    frames.write_all(&requests).unwrap();
    let mut expected = frame(ERROR, b"login required");
    expected.extend(frame(HEARTBEAT, b""));
    expected.extend(frame(LOGIN_ACK, b"OK"));
    expected.extend(frame(MESSAGE, b"Server says: late"));
    expect_bytes(&mut frames, &expected);
}

#[test]
fn the_loop_keeps_serving_while_logins_are_verified() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    // 40 logins on 40 connections; each verification takes tens of milliseconds of a
    // worker's time, so all of them take about a second or more.
    let mut waiting: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = server.connect_line();
            stream.write_all(b"LOGIN ann correct horse\n").unwrap();
            stream
        })
        .collect();
    // STATS goes through the loop after every LOGIN above was read: had the loop verified
    // them itself, all 40 would be done by the time it answers.
    let mut other = server.line_client();
    assert_eq!(other.request(b"PING"), b"PONG\n");
    let stats = parse_stats(&other.request(b"STATS"));
    let verified = stats["logins"] + stats["login_failures"];
    assert!(
        verified < 40,
        "the loop answered only after all logins: {stats:?}"
    );
    for stream in &mut waiting {
        expect_bytes(stream, b"OK\n");
    }
    assert_eq!(server.stats()["logins"], 40);
}

#[test]
fn sigterm_during_a_login_answers_it_then_closes() {
    let users = UsersFile::new();
    let mut server = TestServer::start(&["--users", users.arg()]);
    let mut stream = server.connect_line();
    stream
        .write_all(b"LOGIN ann correct horse\nPING\n")
        .unwrap();
    server.signal(libc::SIGTERM);
    expect_bytes(&mut stream, b"OK\nPONG\n");
    expect_eof(&mut stream);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status}");
}

#[test]
fn passwords_never_reach_the_logs_even_at_trace_level() {
    let users = UsersFile::new();
    let server = TestServer::start_logging(&["--users", users.arg()], "trace");
    let mut stream = server.connect_line();
    stream
        .write_all(b"LOGIN bob hunter2-Xyzzy\nLOGIN ann hunter2-Wrong\n")
        .unwrap();
    expect_bytes(&mut stream, b"OK\nERR invalid credentials\n");
    let mut frames = server.connect_frame();
    frames
        .write_all(&frame(LOGIN, b"ann:hunter2-Other"))
        .unwrap();
    expect_bytes(&mut frames, &frame(ERROR, b"invalid credentials"));
    drop(stream);
    drop(frames);
    let logs = server.logs();
    assert!(logs.iter().any(|l| l.contains("login")), "no login traced");
    for line in &logs {
        assert!(!line.contains("hunter2"), "a password in the logs: {line}");
    }
}

#[test]
fn a_malformed_users_file_stops_the_server_naming_the_line() {
    let path = std::env::temp_dir().join(format!("tcp-reactor-bad-users-{}", std::process::id()));
    let good = tcp_reactor::auth::hash_line("ann", b"pw").unwrap();
    std::fs::write(&path, format!("{good}\nbob has no hash\n")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tcp-reactor"))
        .args(["--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0"])
        .args(["--users", path.to_str().unwrap()])
        .output()
        .expect("run tcp-reactor");
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn verified_logins_leave_no_memory_resident() {
    // Each verification allocates argon2's 19 MiB and frees it. glibc used to keep such
    // blocks resident (160 MiB after 20 logins); the server pins its mmap threshold so they
    // go back to the system.
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    let before = server.rss_kib();
    let mut stream = server.connect_line();
    stream.write_all(&b"LOGIN user pass\n".repeat(20)).unwrap();
    expect_bytes(&mut stream, &b"OK\n".repeat(20));
    let after = server.rss_kib();
    assert!(
        after < before + 8 * 1024,
        "RSS {before} KiB before 20 logins, {after} KiB after"
    );
}

#[test]
fn past_256_logins_in_flight_the_next_is_told_to_try_again() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    // 300 connections, one LOGIN each, sent before any verdict can be back for most of them:
    // each verification takes tens of milliseconds, so 256 are queued and the rest refused.
    let mut streams: Vec<TcpStream> = (0..300).map(|_| server.connect_line()).collect();
    for stream in &mut streams {
        stream.write_all(b"LOGIN user wrong\n").unwrap();
    }
    let (mut busy, mut verified) = (0, 0);
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reply = [0u8; 64];
        let n = std::io::Read::read(stream, &mut reply).unwrap();
        match &reply[..n] {
            b"ERR server busy, try again\n" => busy += 1,
            b"ERR invalid credentials\n" => verified += 1,
            other => panic!("unexpected reply {}", show(other)),
        }
    }
    assert!(busy >= 1, "none refused: {verified} verified");
    assert!(verified >= 256, "only {verified} verified, {busy} refused");
    // A refusal is not a failed login, and the connection stays usable.
    let stats = server.stats();
    assert_eq!(stats["login_failures"], verified, "{stats:?}");
    streams[0].write_all(b"PING\n").unwrap();
    expect_bytes(&mut streams[0], b"PONG\n");
}

/// Under `--require-login`, a session that has not logged in may not make the server hold
/// more than `--max-unauthenticated-request` for one request; once logged in, the configured
/// `--max-line` and `--max-frame` apply again.
#[test]
fn before_a_login_requests_are_held_to_max_unauthenticated_request() {
    let users = UsersFile::new();
    let server = TestServer::start(&[
        "--users",
        users.arg(),
        "--require-login",
        "--max-unauthenticated-request",
        "1KiB",
    ]);
    let mut at_limit = server.connect_line();
    let mut line = vec![b'a'; 1024];
    line.push(b'\n');
    at_limit.write_all(&line).unwrap();
    expect_bytes(&mut at_limit, b"ERR login required\n");
    line.insert(0, b'a');
    at_limit.write_all(&line).unwrap();
    expect_bytes(&mut at_limit, b"ERR line too long\n");
    expect_eof(&mut at_limit);

    let mut frames = server.connect_frame();
    frames.write_all(&header(MESSAGE, 1025)).unwrap();
    expect_error_frame_then_eof(&mut frames, "frame too large: 1025 bytes (max 1024)");

    // Logged in, the same sizes and larger are served.
    let mut logged_in = server.connect_line();
    let mut requests = b"LOGIN ann correct horse\n".to_vec();
    let long = vec![b'b'; 5000];
    requests.extend_from_slice(&long);
    requests.push(b'\n');
    logged_in.write_all(&requests).unwrap();
    let mut expected = b"OK\n".to_vec();
    expected.extend_from_slice(&long);
    expected.push(b'\n');
    expect_bytes(&mut logged_in, &expected);
}
