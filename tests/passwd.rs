//! `tcp-reactor passwd NAME` as an operator runs it: the real binary, the password on stdin,
//! exact stdout, stderr and exit status; the line it prints must verify with [`Users`].
//!
//! Every run is bounded: stdin is closed after the password, the exit is polled with a
//! deadline, and a child still running then is killed and the test fails.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tcp_reactor::auth::Users;

/// How long one run may take: one default-cost argon2id hash, well under a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Kills and reaps the child if the test fails before it exits.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tcp-reactor ARGS` with `stdin` as its whole standard input.
fn run(args: &[&str], stdin: &[u8]) -> Finished {
    let child = Command::new(env!("CARGO_BIN_EXE_tcp-reactor"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcp-reactor");
    let mut child = Reaped(child);
    {
        let mut pipe = child.0.stdin.take().expect("stdin is piped");
        // A child that exits early (bad name) closes the pipe: a failed write is fine then.
        let _ = pipe.write_all(stdin);
    }
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "passwd {args:?} still running");
        thread::sleep(Duration::from_millis(10));
    };
    // The outputs are a line each, far below a pipe's capacity: reading after the exit
    // cannot have blocked the child.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.0.stdout.take() {
        out.read_to_string(&mut stdout).expect("stdout");
    }
    if let Some(mut err) = child.0.stderr.take() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    Finished {
        status,
        stdout,
        stderr,
    }
}

fn only_line(stdout: &str) -> &str {
    let line = stdout.strip_suffix('\n').expect("output ends in a newline");
    assert!(!line.contains('\n'), "one line only: {stdout:?}");
    line
}

#[test]
fn passwd_prints_a_line_that_verifies() {
    let run = run(&["passwd", "alice"], b"correct horse: battery\n");
    assert!(run.status.success(), "{:?} {}", run.status, run.stderr);
    assert_eq!(run.stderr, "");
    let line = only_line(&run.stdout);
    assert!(
        line.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"),
        "{line}"
    );

    let users = Users::parse(line).expect("the printed line parses");
    assert_eq!(users.len(), 1);
    assert!(users.verify(b"alice", b"correct horse: battery"));
    assert!(!users.verify(b"alice", b"correct horse: battery\n"));
    assert!(!users.verify(b"alice", b"correct horse"));
}

#[test]
fn passwd_takes_only_the_first_line_without_its_crlf() {
    let run = run(&["passwd", "bob"], b"s3cret\r\nsecond line\n");
    assert!(run.status.success(), "{:?} {}", run.status, run.stderr);
    let users = Users::parse(only_line(&run.stdout)).expect("parse");
    assert!(users.verify(b"bob", b"s3cret"));
    assert!(!users.verify(b"bob", b"s3cret\r"));
}

#[test]
fn passwd_accepts_a_last_line_without_a_newline() {
    let run = run(&["passwd", "carol"], b"no newline");
    assert!(run.status.success(), "{:?} {}", run.status, run.stderr);
    let users = Users::parse(only_line(&run.stdout)).expect("parse");
    assert!(users.verify(b"carol", b"no newline"));
}

#[test]
fn passwd_refuses_a_bad_name_or_an_empty_password_with_status_2() {
    let long = "x".repeat(65);
    let table: [(&str, &[u8], &str); 6] = [
        (
            "a b",
            b"pw\n",
            "tcp-reactor passwd: user name may not contain spaces, tabs or ':'\n",
        ),
        (
            "a:b",
            b"pw\n",
            "tcp-reactor passwd: user name may not contain spaces, tabs or ':'\n",
        ),
        ("", b"pw\n", "tcp-reactor passwd: empty user name\n"),
        (
            &long,
            b"pw\n",
            "tcp-reactor passwd: user name is 65 bytes, the limit is 64\n",
        ),
        ("alice", b"\n", "tcp-reactor passwd: empty password\n"),
        ("alice", b"", "tcp-reactor passwd: empty password\n"),
    ];
    for (name, stdin, message) in table {
        let run = run(&["passwd", name], stdin);
        assert_eq!(run.status.code(), Some(2), "{name:?} {stdin:?}");
        assert_eq!(run.stdout, "", "{name:?}");
        assert_eq!(run.stderr, message, "{name:?} {stdin:?}");
    }
}

#[test]
fn passwd_without_a_name_is_a_usage_error() {
    let run = run(&["passwd"], b"pw\n");
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("<NAME>"), "{}", run.stderr);
}
