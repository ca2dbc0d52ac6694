//! TLS on a non-blocking socket: rustls's `ServerConnection` driven by the loop's readiness.
//!
//! rustls does no IO of its own. It is a state machine with two byte queues per direction:
//!
//! ```text
//!   socket --read_tls--> [TLS records in] --process_new_packets--> [plaintext in]  --reader()--> requests
//!   socket <--write_tls-- [TLS records out] <--------(encrypts)---- [plaintext out] <--writer()-- replies
//! ```
//!
//! The reactor keeps its shape: a connection's `receive` yields plaintext where a plain
//! connection's yields socket bytes, and `send` takes plaintext. What changes underneath:
//!
//! - **Reading.** Plaintext already decrypted is handed out first; only when rustls has none
//!   is the socket read. So "a read shorter than the buffer drained the socket" no longer
//!   holds (one record is at most 16 KiB of plaintext; the socket may hold more): a TLS
//!   connection is always read until WouldBlock.
//! - **Writing.** `writer()` accepts plaintext up to rustls's buffer limit (`SEND_LIMIT` of
//!   encrypted bytes not yet on the socket), and `write_tls` moves records to the socket.
//!   [`TlsSession::send`] alternates the two until everything is taken or the socket is
//!   full, so when it reports
//!   fewer bytes than offered the socket really is full and a writable edge will follow; the
//!   same promise the reactor relies on for a plain `write`.
//! - **Bytes the application never asked for.** The handshake, alerts and `close_notify` are
//!   records rustls queues on its own. After every read the loop flushes, and a flush sends
//!   these even when no reply is pending ([`TlsSession::wants_write`]).
//! - **Handshake time** counts against `--request-timeout` from the accept, so a client that
//!   opens a connection and stalls mid-handshake is cut off like a slowloris.
//! - **Closing.** Our side of the close is `close_notify` then FIN. A peer's `close_notify`
//!   and a bare TCP EOF both read as end of stream.
//!
//! Errors (a malformed record, garbage instead of a ClientHello, a failed handshake) come back
//! from `process_new_packets`; the alert rustls queued for the peer is written once, best
//! effort, and the connection is closed.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Encrypted bytes rustls may hold for the socket before `writer()` stops taking plaintext:
/// the same 64 KiB as one read, so a TLS connection buffers about what a plain one would.
const SEND_LIMIT: usize = 64 * 1024;

/// Loads a certificate chain and its private key (PEM files) into a server configuration using
/// the ring crypto provider. Errors name the file and what is wrong with it.
pub fn load_config(cert_path: &Path, key_path: &Path) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let open = |path: &Path, what: &str| {
        File::open(path).map(BufReader::new).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read {what} {}: {e}", path.display()),
            )
        })
    };
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_reader_iter(open(cert_path, "TLS certificate")?) {
        let cert =
            cert.map_err(|e| invalid(format!("TLS certificate {}: {e}", cert_path.display())))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(invalid(format!(
            "TLS certificate {}: no CERTIFICATE block in the file",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_reader(open(key_path, "TLS key")?).map_err(|e| {
        invalid(format!(
            "TLS key {}: no usable private key ({e})",
            key_path.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(format!(
                "TLS certificate {} and key {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
    Ok(Arc::new(config))
}

/// The TLS state of one connection.
pub struct TlsSession {
    conn: ServerConnection,
    /// When the connection was accepted: the handshake must be over by this plus the
    /// request timeout.
    pub started: Instant,
    /// `close_notify` has been queued: nothing more will be written.
    closing: bool,
}

impl TlsSession {
    pub fn new(config: &Arc<ServerConfig>, now: Instant) -> Result<TlsSession, rustls::Error> {
        let mut conn = ServerConnection::new(Arc::clone(config))?;
        conn.set_buffer_limit(Some(SEND_LIMIT));
        Ok(TlsSession {
            conn,
            started: now,
            closing: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// rustls holds records for the socket: handshake messages, alerts, encrypted replies.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Plaintext from the connection: `Ok(Some(n))` bytes, `Ok(Some(0))` at the end of the
    /// stream (`close_notify` or a TCP EOF), `Ok(None)` when the socket has nothing more for
    /// now (WouldBlock). Reads the socket only when rustls holds no plaintext.
    pub fn receive(
        &mut self,
        socket: &mut TcpStream,
        into: &mut [u8],
    ) -> io::Result<Option<usize>> {
        loop {
            match self.conn.reader().read(into) {
                Ok(n) => return Ok(Some(n)), // 0: the peer's close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(socket) {
                Ok(0) => return Ok(Some(0)),
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        // Tell the peer why (rustls queued an alert), best effort.
                        let _ = self.conn.write_tls(socket);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Records that arrived before the session could read the socket itself: the bytes that
    /// followed a PROXY header in the same read. Processed as if just read.
    pub fn take_early(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.conn.read_tls(&mut bytes)? == 0 {
                break;
            }
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(())
    }

    /// Hands `bytes` (plaintext) to rustls and moves records to the socket, until everything
    /// is taken and written or the socket is full. `Ok(Some(n))`: `n` bytes taken, and when
    /// `n < bytes.len()` the socket is full; `Ok(None)`: nothing taken, the socket is full.
    ///
    /// During the handshake rustls cannot encrypt yet and takes plaintext only into a queue of
    /// its own; the server never has replies before the handshake ends, so this does not
    /// arise, but if it did the bytes would simply wait in the connection's output.
    pub fn send(&mut self, socket: &mut TcpStream, bytes: &[u8]) -> io::Result<Option<usize>> {
        let mut taken = 0;
        loop {
            if self.flush(socket)? || taken == bytes.len() || self.conn.is_handshaking() {
                break;
            }
            match self.conn.writer().write(&bytes[taken..]) {
                Ok(0) => break,
                Ok(n) => taken += n,
                Err(e) => return Err(e),
            }
        }
        Ok(if taken == 0 && !bytes.is_empty() {
            None
        } else {
            Some(taken)
        })
    }

    /// Writes queued records until none is left or the socket is full; `Ok(true)` when the
    /// socket is full (a writable edge will follow).
    pub fn flush(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(socket) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket took no bytes",
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Queues `close_notify` (once) and tries to write it: `Ok(true)` once every record,
    /// `close_notify` included, is on the socket and the FIN may follow.
    pub fn close(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        if !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
        }
        Ok(!self.flush(socket)?)
    }
}
