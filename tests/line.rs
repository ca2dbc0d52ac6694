//! Line protocol over a real socket: echo, PING, QUIT, usage errors, STATS.

mod common;

use common::{STATS_KEYS, TestServer, parse_stats, show};
use std::thread;

#[test]
fn echo_returns_the_line_unchanged() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    assert_eq!(c.request(b"echo me please"), b"echo me please\n");
    assert_eq!(
        c.request(b"  leading and trailing  "),
        b"  leading and trailing  \n"
    );
    // Only an exact verb is a command: PINGX is text.
    assert_eq!(c.request(b"PINGX"), b"PINGX\n");
}

#[test]
fn ping_variants() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    assert_eq!(c.request(b"PING"), b"PONG\n");
    assert_eq!(c.request(b"PING x"), b"PONG x\n");
    assert_eq!(c.request(b"ping"), b"PONG\n");
    assert_eq!(c.request(b"PiNg hello world"), b"PONG hello world\n");
}

#[test]
fn empty_line_is_echoed_as_empty_line() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    assert_eq!(c.request(b""), b"\n");
    c.send(b"\r\n");
    assert_eq!(c.read_line(), b"\n");
}

#[test]
fn invalid_utf8_and_control_bytes_are_echoed_unchanged() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    let weird: &[u8] = b"\xff\xfe\x00\x01\x07\x1b[31mred\x1b[0m\x7f\xc3\x28 tail";
    let mut expected = weird.to_vec();
    expected.push(b'\n');
    assert_eq!(show(&c.request(weird)), show(&expected));
    // A lone CR in the middle is content, not a terminator.
    assert_eq!(c.request(b"a\rb"), b"a\rb\n");
}

#[test]
fn crlf_is_stripped_once() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    c.send(b"PING\r\n");
    assert_eq!(c.read_line(), b"PONG\n");
    c.send(b"some text\r\n");
    assert_eq!(c.read_line(), b"some text\n");
    // Exactly one trailing CR is dropped; a second one is content.
    c.send(b"some text\r\r\n");
    assert_eq!(c.read_line(), b"some text\r\n");
}

#[test]
fn quit_says_bye_then_closes_cleanly() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    assert_eq!(c.request(b"PING"), b"PONG\n");
    assert_eq!(c.request(b"QUIT"), b"BYE\n");
    c.expect_eof();
}

#[test]
fn quit_is_case_insensitive() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    assert_eq!(c.request(b"quit"), b"BYE\n");
    c.expect_eof();
}

#[test]
fn requests_after_quit_in_the_same_write_are_not_executed() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    c.send(b"QUIT\nPING\nPING again\n");
    assert_eq!(c.read_line(), b"BYE\n");
    c.expect_eof();
}

#[test]
fn quit_followed_by_a_megabyte_of_junk_still_closes_cleanly() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    let mut bytes = b"QUIT\n".to_vec();
    // Junk lines, so no part of it is "too long" if the server did parse it.
    while bytes.len() < 1024 * 1024 {
        bytes.extend_from_slice(b"junk junk junk junk junk junk junk junk junk junk junk junk\n");
    }
    // The write runs in its own thread: a server that stops reading after QUIT would
    // otherwise block us before we read BYE. Its result is irrelevant (the server may close
    // its read side once it has said BYE).
    let mut writer = c.stream.try_clone().unwrap();
    let handle = thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut writer, &bytes);
    });
    assert_eq!(c.read_line(), b"BYE\n");
    c.expect_eof();
    handle.join().unwrap();
}

#[test]
fn usage_errors_keep_the_connection_open() {
    let server = TestServer::start(&[]);
    let mut c = server.line_client();
    let cases: &[(&[u8], &[u8])] = &[
        (b"QUIT now", b"ERR usage: QUIT\n"),
        (b"STATS please", b"ERR usage: STATS\n"),
        (b"HELLO", b"ERR usage: HELLO <name>\n"),
        (b"HELLO ", b"ERR usage: HELLO <name>\n"),
        (b"SAY", b"ERR usage: SAY <text>\n"),
        (b"SAY ", b"ERR usage: SAY <text>\n"),
        (b"say", b"ERR usage: SAY <text>\n"),
    ];
    for (req, want) in cases {
        assert_eq!(show(&c.request(req)), show(want), "request {}", show(req));
        assert_eq!(
            c.request(b"PING"),
            b"PONG\n",
            "still open after {}",
            show(req)
        );
    }
}

over_workers! {
    fn stats_has_every_key_and_counters_move(workers) {
        let server = workers.start(&[]);
        let mut c = server.line_client();
        let first = c.request(b"STATS");
        assert!(first.starts_with(b"STATS accepted="), "{}", show(&first));
        assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 1);
        let before = parse_stats(&first);
        for key in STATS_KEYS {
            assert!(
                before.contains_key(key),
                "STATS lacks {key}: {}",
                show(&first)
            );
        }
        assert!(before["accepted"] >= 1, "{before:?}");
        assert!(before["active"] >= 1, "{before:?}");

        for i in 0..3 {
            assert_eq!(
                c.request(format!("PING {i}").as_bytes()),
                format!("PONG {i}\n").as_bytes()
            );
        }
        let after = parse_stats(&c.request(b"stats"));
        for key in STATS_KEYS {
            assert!(after.contains_key(key), "STATS lacks {key}: {after:?}");
        }
        assert!(
            after["requests"] >= before["requests"] + 3,
            "requests did not count 3 PINGs: {} -> {}",
            before["requests"],
            after["requests"]
        );
        assert!(
            after["bytes_in"] > before["bytes_in"],
            "{before:?} -> {after:?}"
        );
        assert!(
            after["bytes_out"] > before["bytes_out"],
            "{before:?} -> {after:?}"
        );
        assert_eq!(
            after["accepted"], before["accepted"],
            "no new connection was made"
        );
    }
}

#[test]
fn stats_counts_connections() {
    let server = TestServer::start(&[]);
    let mut a = server.line_client();
    let before = parse_stats(&a.request(b"STATS"));
    let mut b = server.line_client();
    assert_eq!(b.request(b"PING"), b"PONG\n");
    let during = parse_stats(&a.request(b"STATS"));
    assert_eq!(
        during["accepted"],
        before["accepted"] + 1,
        "{before:?} -> {during:?}"
    );
    assert_eq!(
        during["active"],
        before["active"] + 1,
        "{before:?} -> {during:?}"
    );
    assert_eq!(b.request(b"QUIT"), b"BYE\n");
    b.expect_eof();
    // Our FIN completes the close (the server may wait for it after BYE).
    drop(b);
    // The close is processed asynchronously: poll until it is counted.
    let ok = common::wait_until(common::after(std::time::Duration::from_secs(5)), || {
        let now = parse_stats(&a.request(b"STATS"));
        now["active"] == before["active"] && now["closed"] == before["closed"] + 1
    });
    assert!(
        ok,
        "closed connection never counted: {:?}",
        parse_stats(&a.request(b"STATS"))
    );
}
