//! Frame protocol over a real socket: replies to each command, pipelining, every error path.

mod common;

use common::{
    DEFAULT_MAX_FRAME, ERROR, HEARTBEAT, LOGIN, LOGIN_ACK, MESSAGE, TestServer, UsersFile,
    expect_error_frame_then_eof, frame, header, read_frame, send, show,
};
use std::io::{Read, Write};
use std::thread;

#[test]
fn heartbeat_with_empty_body_is_echoed() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(HEARTBEAT, b""));
    assert_eq!(read_frame(&mut s), (HEARTBEAT, Vec::new()));
}

#[test]
fn heartbeat_with_body_is_echoed_identically() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let body: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
    let request = frame(HEARTBEAT, &body);
    send(&mut s, &request);
    let mut reply = vec![0u8; request.len()];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, request);
}

#[test]
fn go_client_heartbeat_bytes_round_trip_exactly() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let go_heartbeat = [0x47, 0x4F, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00];
    send(&mut s, &go_heartbeat);
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, go_heartbeat);
    // And nothing more follows.
    common::expect_silence(&mut s, std::time::Duration::from_millis(100));
}

#[test]
fn message_gets_server_says_prefix() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(MESSAGE, b"Hello TCP World!"));
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    let expected_body = b"Server says: Hello TCP World!";
    assert_eq!(head, header(MESSAGE, expected_body.len() as u32)[..]);
    let mut body = vec![0u8; expected_body.len()];
    s.read_exact(&mut body).unwrap();
    assert_eq!(show(&body), show(expected_body));
}

#[test]
fn message_with_empty_and_binary_bodies() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(MESSAGE, b""));
    assert_eq!(read_frame(&mut s), (MESSAGE, b"Server says: ".to_vec()));
    let binary = [0u8, 0xff, b'\n', 0x47, 0x4f, 1];
    send(&mut s, &frame(MESSAGE, &binary));
    let mut want = b"Server says: ".to_vec();
    want.extend_from_slice(&binary);
    assert_eq!(read_frame(&mut s), (MESSAGE, want));
}

#[test]
fn login_gets_login_ack_ok_or_an_error_frame() {
    let users = UsersFile::new();
    let server = TestServer::start(&["--users", users.arg()]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(LOGIN, b"user:pass"));
    assert_eq!(read_frame(&mut s), (LOGIN_ACK, b"OK".to_vec()));
    send(&mut s, &frame(LOGIN, b"alice:secret"));
    assert_eq!(read_frame(&mut s), (ERROR, b"invalid credentials".to_vec()));
    send(&mut s, &frame(LOGIN, b""));
    assert_eq!(
        read_frame(&mut s),
        (ERROR, b"usage: Login body is user:password".to_vec())
    );
    send(&mut s, &frame(HEARTBEAT, b""));
    assert_eq!(read_frame(&mut s), (HEARTBEAT, Vec::new()));
}

#[test]
fn many_frames_in_one_write_are_answered_in_order() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let body = format!("frame {i}").into_bytes();
        match i % 3 {
            0 => {
                bytes.extend(frame(HEARTBEAT, &body));
                expected.push((HEARTBEAT, body));
            }
            1 => {
                bytes.extend(frame(MESSAGE, &body));
                let mut want = b"Server says: ".to_vec();
                want.extend_from_slice(&body);
                expected.push((MESSAGE, want));
            }
            _ => {
                bytes.extend(frame(HEARTBEAT, b""));
                expected.push((HEARTBEAT, Vec::new()));
            }
        }
    }
    send(&mut s, &bytes);
    for (i, want) in expected.into_iter().enumerate() {
        assert_eq!(read_frame(&mut s), want, "reply {i}");
    }
}

#[test]
fn bad_magic_gets_error_frame_then_eof() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, b"GET / HTTP/1.1\r\n\r\n");
    expect_error_frame_then_eof(&mut s, "bad magic 0x4745");
}

#[test]
fn bad_magic_is_lowercase_hex() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &[0xAB, 0xCD, 0x01, 0x00, 0, 0, 0, 0]);
    expect_error_frame_then_eof(&mut s, "bad magic 0xabcd");
}

#[test]
fn bad_version_gets_error_frame_then_eof() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &[0x47, 0x4F, 0x02, 0x00, 0, 0, 0, 0]);
    expect_error_frame_then_eof(&mut s, "unsupported version 2");
}

#[test]
fn unknown_command_gets_error_frame_then_eof() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(9, b"whatever"));
    expect_error_frame_then_eof(&mut s, "unknown command 9");
}

#[test]
fn client_sent_login_ack_is_refused() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(LOGIN_ACK, b"OK"));
    expect_error_frame_then_eof(&mut s, "unexpected command 3 (LoginAck)");
}

#[test]
fn client_sent_error_is_refused() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &frame(ERROR, b"oops"));
    expect_error_frame_then_eof(&mut s, "unexpected command 4 (Error)");
}

#[test]
fn replies_before_an_error_are_delivered_and_later_frames_ignored() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let mut bytes = frame(HEARTBEAT, b"one");
    bytes.extend(frame(MESSAGE, b"two"));
    bytes.extend(frame(9, b""));
    bytes.extend(frame(HEARTBEAT, b"never"));
    send(&mut s, &bytes);
    assert_eq!(read_frame(&mut s), (HEARTBEAT, b"one".to_vec()));
    assert_eq!(read_frame(&mut s), (MESSAGE, b"Server says: two".to_vec()));
    expect_error_frame_then_eof(&mut s, "unknown command 9");
}

#[test]
fn oversize_header_is_refused_without_waiting_for_the_body() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    // Only the header: the server must decide from it alone.
    send(&mut s, &header(MESSAGE, DEFAULT_MAX_FRAME + 1));
    expect_error_frame_then_eof(&mut s, "frame too large: 10485761 bytes (max 10485760)");
}

#[test]
fn huge_declared_length_is_refused() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    send(&mut s, &header(HEARTBEAT, u32::MAX));
    expect_error_frame_then_eof(&mut s, "frame too large: 4294967295 bytes (max 10485760)");
}

#[test]
fn heartbeat_at_exactly_the_default_max_is_echoed() {
    let server = TestServer::start(&[]);
    let mut s = server.connect_frame();
    let body: Vec<u8> = (0..DEFAULT_MAX_FRAME).map(|i| (i % 251) as u8).collect();
    let request = frame(HEARTBEAT, &body);
    // Write from a thread: the echo comes back while we are still sending.
    let mut writer = s.try_clone().unwrap();
    let handle = thread::spawn(move || writer.write_all(&request));
    let (cmd, reply) = read_frame(&mut s);
    handle.join().unwrap().unwrap();
    assert_eq!(cmd, HEARTBEAT);
    assert_eq!(reply.len(), body.len());
    assert!(reply == body, "10 MiB heartbeat body differs");
    send(&mut s, &frame(HEARTBEAT, b"after"));
    assert_eq!(read_frame(&mut s), (HEARTBEAT, b"after".to_vec()));
}

#[test]
fn max_frame_flag_accepts_max_and_refuses_max_plus_one() {
    let server = TestServer::start(&["--max-frame", "16"]);
    let mut s = server.connect_frame();
    let body16 = b"0123456789abcdef";
    send(&mut s, &frame(HEARTBEAT, body16));
    assert_eq!(read_frame(&mut s), (HEARTBEAT, body16.to_vec()));
    send(&mut s, &frame(MESSAGE, body16));
    let mut reply = b"Server says: ".to_vec();
    reply.extend_from_slice(body16);
    assert_eq!(read_frame(&mut s), (MESSAGE, reply));

    let mut s = server.connect_frame();
    // Header and body both sent: the unread body must not turn the close into a reset.
    send(&mut s, &frame(HEARTBEAT, b"0123456789abcdefg"));
    expect_error_frame_then_eof(&mut s, "frame too large: 17 bytes (max 16)");
}
