//! Both protocols over TLS, through the same loop: whole sessions, backpressure through
//! rustls, clients that stall mid-handshake or send garbage instead of a ClientHello, and a
//! shutdown with TLS clients connected. Certificates are made at run time (rcgen); the client
//! side is rustls in blocking mode.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

fn client_config(cert: &TestCert) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(&cert.cert).expect("read cert.pem") {
        roots.add(der.expect("parse cert.pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr`, handshake done, trusting `cert` for `localhost`.
fn tls_connect(addr: SocketAddr, cert: &TestCert) -> TlsStream {
    tls_handshake(connect(addr), cert)
}

/// Completes a TLS handshake on a connected socket.
fn tls_handshake(socket: TcpStream, cert: &TestCert) -> TlsStream {
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(client_config(cert), name).expect("client connection");
    let mut stream = StreamOwned::new(conn, socket);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake with the server");
    }
    stream
}

/// Reads until `expected.len()` bytes have arrived and compares them.
fn expect_bytes(stream: &mut TlsStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got).expect("read over TLS");
    assert_eq!(show(&got), show(expected));
}

/// Reads to the end of the TLS stream: the server's close_notify (rustls reports a clean
/// end as 0) and nothing more.
fn expect_tls_eof(stream: &mut TlsStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes: {}", show(&rest)),
        Err(e) => panic!(
            "expected close_notify then EOF, got {e} after {}",
            show(&rest)
        ),
    }
}

#[test]
fn a_line_session_over_tls_is_the_plain_session() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let mut stream = tls_connect(server.line_tls_addr(), &cert);
    stream
        .write_all(b"PING\nsome words over tls\nHELLO ada\nQUIT\n")
        .unwrap();
    expect_bytes(
        &mut stream,
        b"PONG\nsome words over tls\nWELCOME ada\nBYE\n",
    );
    expect_tls_eof(&mut stream);
}

/// Behind a balancer (`--proxy-protocol`) the PROXY header comes in the clear, before the
/// ClientHello: sent on its own, or with the ClientHello in the same write.
#[test]
fn behind_a_balancer_the_proxy_header_comes_before_the_client_hello() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &["--proxy-protocol"]);
    let addr = server.line_tls_addr();
    let header = format!(
        "PROXY TCP4 203.0.113.7 {} 51234 {}\r\n",
        addr.ip(),
        addr.port()
    );
    for together in [false, true] {
        let mut socket = connect(addr);
        let name = ServerName::try_from("localhost").expect("server name");
        let mut conn = ClientConnection::new(client_config(&cert), name).expect("client");
        let mut first = header.clone().into_bytes();
        if together {
            conn.write_tls(&mut first).expect("the ClientHello");
        }
        socket.write_all(&first).expect("write the header");
        let mut stream = StreamOwned::new(conn, socket);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake after the PROXY header");
        }
        stream.write_all(b"PING\n").unwrap();
        expect_bytes(&mut stream, b"PONG\n");
    }
}

#[test]
fn a_frame_session_over_tls_is_the_plain_session() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let mut stream = tls_connect(server.frame_tls_addr(), &cert);
    let mut request = frame(HEARTBEAT, b"");
    request.extend(frame(MESSAGE, b"over tls"));
    // A 1 MiB body spans many TLS records and many reads.
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    request.extend(frame(MESSAGE, &big));
    stream.write_all(&request).unwrap();
    let mut expected = frame(HEARTBEAT, b"");
    expected.extend(frame(MESSAGE, b"Server says: over tls"));
    expected.extend(frame(
        MESSAGE,
        &[b"Server says: ".as_slice(), &big].concat(),
    ));
    expect_bytes(&mut stream, &expected);

    // A bad header gets its Error frame, then close_notify and EOF.
    stream.write_all(&[0x00, 0x00, 1, 0, 0, 0, 0, 0]).unwrap();
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(&header[..2], &MAGIC);
    assert_eq!(header[3], ERROR);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(show(&body), show(b"bad magic 0x0000"));
    expect_tls_eof(&mut stream);
}

#[test]
fn replies_piling_up_behind_a_client_that_does_not_read_all_arrive_in_order() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    // A small receive buffer, set before connecting so the window stays small: the server's
    // replies back up quickly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket
        .connect_timeout(&server.line_tls_addr().into(), IO_TIMEOUT)
        .unwrap();
    let socket: TcpStream = socket.into();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut stream = tls_handshake(socket, &cert);

    // 2,000,000 requests, 16 MB of replies, sent by another thread while this one reads
    // nothing until the server has paused the connection (backpressure) with replies queued
    // in its buffer, in rustls's and in the socket's.
    let count = 2_000_000;
    let batch: Vec<u8> = (0..count)
        .flat_map(|i| format!("{i:07}\n").into_bytes())
        .collect();
    let mut records = Vec::new();
    stream.conn.set_buffer_limit(None);
    stream.conn.writer().write_all(&batch).unwrap();
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut records).unwrap();
    }
    let mut sock = stream.sock.try_clone().unwrap();
    let writer = std::thread::spawn(move || sock.write_all(&records));
    let paused = wait_until(after(Duration::from_secs(10)), || {
        server.stats()["backpressure_pauses"] >= 1
    });
    assert!(paused, "the server never paused: {:?}", server.stats());

    let mut got = vec![0u8; batch.len()];
    stream.read_exact(&mut got).unwrap();
    writer.join().unwrap().unwrap();
    if let Some(at) = (0..got.len()).find(|&i| got[i] != batch[i]) {
        let from = at.saturating_sub(16);
        panic!(
            "replies differ from the requests at byte {at}: got {} expected {}",
            show(&got[from..(at + 16).min(got.len())]),
            show(&batch[from..(at + 16).min(batch.len())])
        );
    }
}

#[test]
fn a_client_that_stalls_mid_handshake_is_cut_off_at_the_request_timeout() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(
        &cert,
        &["--request-timeout", "500ms", "--idle-timeout", "60s"],
    );
    // Half a ClientHello: a record header promising 200 bytes, then 5 of them.
    let mut stalled = connect(server.line_tls_addr());
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xC8, 0x01, 0x00, 0x00, 0xC4, 0x03])
        .unwrap();
    // And one that connects and never says anything.
    let mut silent = connect(server.frame_tls_addr());
    let started = Instant::now();
    for stream in [&mut stalled, &mut silent] {
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("expected a close, got {}", show(&buf[..n])),
            Err(e) if is_timeout(&e) => panic!("still open after {:?}", started.elapsed()),
            Err(_) => {} // a reset: the stalled client's unread bytes
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );
    let stats = server.stats();
    assert_eq!(stats["request_timeouts"], 2, "{stats:?}");
    assert_eq!(stats["idle_timeouts"], 0, "{stats:?}");
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_at_once_and_others_are_served() {
    let cert = TestCert::new();
    let server = TestServer::start_tls(&cert, &[]);
    let inputs: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"PING\n",
        &[0x16, 0x03, 0x01, 0xFF, 0xFF, 0, 0, 0], // a record longer than TLS allows
    ];
    for (round, input) in inputs.into_iter().enumerate() {
        for addr in [server.line_tls_addr(), server.frame_tls_addr()] {
            let mut stream = connect(addr);
            stream.write_all(input).unwrap();
            let started = Instant::now();
            // rustls may answer with an alert record (content type 21) before the close.
            let mut got = Vec::new();
            match stream.read_to_end(&mut got) {
                Ok(_) => {}
                Err(e) if is_timeout(&e) => panic!("round {round}: not closed"),
                Err(_) => {} // reset: the server closed with our garbage unread
            }
            assert!(started.elapsed() < Duration::from_secs(2), "round {round}");
            assert!(
                got.is_empty() || got[0] == 21,
                "round {round}: expected nothing or an alert, got {}",
                show(&got)
            );
        }
    }
    // The server is fine: a TLS session and a plain one both work.
    let mut stream = tls_connect(server.line_tls_addr(), &cert);
    stream.write_all(b"PING\n").unwrap();
    expect_bytes(&mut stream, b"PONG\n");
    let mut line = server.line_client();
    assert_eq!(line.request(b"PING"), b"PONG\n");
}

#[test]
fn sigterm_flushes_tls_clients_then_closes_them_cleanly() {
    let cert = TestCert::new();
    let mut server = TestServer::start_tls(&cert, &[]);
    let mut line = tls_connect(server.line_tls_addr(), &cert);
    let mut frames = tls_connect(server.frame_tls_addr(), &cert);
    // A client mid-handshake when the signal comes.
    let mut half = connect(server.line_tls_addr());
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0xC8]).unwrap();
    line.write_all(b"PING\n").unwrap();
    expect_bytes(&mut line, b"PONG\n");
    frames.write_all(&frame(MESSAGE, b"last words")).unwrap();
    expect_bytes(&mut frames, &frame(MESSAGE, b"Server says: last words"));

    server.signal(libc::SIGTERM);
    expect_tls_eof(&mut line);
    expect_tls_eof(&mut frames);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    // The half-handshaken client gets at most an alert, then the close.
    let mut rest = Vec::new();
    match half.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty() || rest[0] == 21, "{}", show(&rest)),
        Err(e) => assert!(!is_timeout(&e), "not closed: {e}"),
    }
}

#[test]
fn tls_listeners_need_a_certificate_and_a_usable_one() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tcp-reactor"))
            .args(["--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run tcp-reactor")
    };
    let missing = run(&["--line-tls-addr", "127.0.0.1:0"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let orphan = run(&["--tls-cert", "a.pem", "--tls-key", "b.pem"]);
    assert_eq!(orphan.status.code(), Some(2));

    let cert = TestCert::new();
    let swapped = run(&[
        "--line-tls-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.key_arg(),
        "--tls-key",
        cert.cert_arg(),
    ]);
    assert_eq!(swapped.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&swapped.stderr);
    assert!(
        stderr.contains("no CERTIFICATE block") && stderr.contains("key.pem"),
        "{stderr}"
    );

    let absent = run(&[
        "--frame-tls-addr",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        cert.key_arg(),
    ]);
    assert_eq!(absent.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&absent.stderr);
    assert!(
        stderr.contains("cannot read TLS certificate /nonexistent/cert.pem"),
        "{stderr}"
    );
}
