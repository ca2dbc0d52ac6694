//! A connection's byte stream as a worker sees it: the socket, and with `--tls` the rustls
//! session on it. The worker reads and writes through [`Stream::receive`] and
//! [`Stream::send`], one path for both; only this file asks "is this TLS?" (as the server's
//! `Connection` hides TLS behind `receive` and `send`).
//!
//! # Reading: one `read` per batch of replies
//!
//! ```text
//! plain: read(socket, scratch)                                    -> Plaintext(n)
//! TLS:   read(socket, records)                                    -> Records(n)
//!        read_tls(records[fed..]) -> process_new_packets
//!          -> reader().read(scratch)                              -> Plaintext(n)
//! ```
//!
//! Over TLS, records are read from the socket into a 64 KiB buffer of the thread's
//! ([`Reading`]) and fed to rustls from there (rustls reads at most 4 KiB per `read_tls`
//! from a socket), so a batch still costs one `read`. The short-read rule holds on both: a
//! `read` that returned less than its buffer has drained the socket, so once its bytes are
//! used the batch is over ([`Received::Drained`]) with no second `read` to see WouldBlock.
//! rustls's plaintext is emptied before more records are fed, so its buffer never fills.
//! Plaintext lands in the scratch buffer the plain path reads into, so verification is
//! shared.
//!
//! # Writing
//!
//! ```text
//! plain: write(socket, batch window)
//! TLS:   write_tls(socket) until done -> writer().write(batch window) -> write_tls ...
//! ```
//!
//! Either way `send` takes fewer bytes than offered only when the socket is full, so a
//! writable edge will follow.
//!
//! # Invariants
//!
//! - The plain path pays one branch per call over a bare `read` or `write`: no allocation,
//!   no extra syscall. rustls allocates its records' buffers: the no-allocation-per-request
//!   rule holds without TLS only.
//! - A handshake ([`TlsStream::handshake`]) is over before the first `send`.

use std::fmt;
use std::io::{self, Read as _, Write as _};

use log::trace;
use mio::net::TcpStream;
use rustls::ClientConnection;

use crate::net::{read_some, write_some};

/// A connected socket, plain or carrying a TLS session.
pub(super) enum Stream {
    Plain(TcpStream),
    /// Boxed: the session is large, and the plain variant should not pay for it.
    Tls(Box<TlsStream>),
}

/// A socket with its rustls client session.
pub(super) struct TlsStream {
    socket: TcpStream,
    session: ClientConnection,
    /// When the TCP connection was established: the handshake's time counts from here.
    pub connected_ns: u64,
}

/// What one [`Stream::receive`] brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    /// `n` bytes of plaintext at the start of the buffer given.
    Plaintext(usize),
    /// TLS: `n` bytes of records came from the socket; their plaintext comes next.
    Records(usize),
    /// Nothing more until the next edge.
    Drained,
    /// The server closed: EOF, or over TLS its `close_notify`.
    Closed,
}

/// Which step of a stream failed; the worker counts each as a `reset`.
#[derive(Debug)]
pub(super) enum StreamError {
    Read(io::Error),
    Write(io::Error),
    /// rustls refused records or plaintext.
    Tls(io::Error),
    /// The records did not decrypt or broke the protocol.
    Rejected(rustls::Error),
    /// The session took no plaintext although its records were all written.
    TookNothing,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Read(e) => write!(f, "read: {e}"),
            StreamError::Write(e) => write!(f, "write: {e}"),
            StreamError::Tls(e) => write!(f, "TLS: {e}"),
            StreamError::Rejected(e) => write!(f, "TLS: {e}"),
            StreamError::TookNothing => f.write_str("TLS: the session took no bytes"),
        }
    }
}

/// The reading of one connection in one wakeup: the thread's record buffer (TLS only), how
/// much of it rustls has taken, and whether the last `read` drained the socket. One per
/// thread, reset by [`Reading::start`] for each connection.
pub(super) struct Reading {
    /// Records as read from the socket; empty without TLS.
    records: Box<[u8]>,
    /// `records[fed..len]` is still to be handed to rustls.
    fed: usize,
    len: usize,
    /// Read until EOF or WouldBlock, not only until a short read (read-closed/error hints).
    to_end: bool,
    /// The last `read` was short (and `to_end` is off): its bytes are the batch's last.
    drained: bool,
}

impl Reading {
    /// `record_bytes`: the record buffer's size, 0 without TLS.
    pub fn new(record_bytes: usize) -> Reading {
        Reading {
            records: vec![0; record_bytes].into_boxed_slice(),
            fed: 0,
            len: 0,
            to_end: false,
            drained: false,
        }
    }

    /// Starts reading a connection: nothing read yet.
    pub fn start(&mut self, to_end: bool) {
        self.fed = 0;
        self.len = 0;
        self.to_end = to_end;
        self.drained = false;
    }

    /// Notes a `read` of `n` bytes into a buffer of `capacity`.
    fn read(&mut self, n: usize, capacity: usize) {
        self.drained = n < capacity && !self.to_end;
    }
}

impl Stream {
    /// The next piece of the batch: plaintext into `into`, or (TLS) records read. Reads the
    /// socket only when the previous `read`'s bytes are used and it was not short.
    #[inline]
    pub fn receive(
        &mut self,
        into: &mut [u8],
        reading: &mut Reading,
    ) -> Result<Received, StreamError> {
        match self {
            Stream::Plain(socket) => {
                if reading.drained {
                    return Ok(Received::Drained);
                }
                match read_some(socket, into).map_err(StreamError::Read)? {
                    None => Ok(Received::Drained),
                    Some(0) => Ok(Received::Closed),
                    Some(n) => {
                        reading.read(n, into.len());
                        Ok(Received::Plaintext(n))
                    }
                }
            }
            Stream::Tls(tls) => tls.receive(into, reading),
        }
    }

    /// Writes `bytes` (a window of the batch): `Ok(Some(n))` bytes taken, fewer than offered
    /// only when the socket is full; `Ok(None)` nothing taken, the socket is full. Either
    /// way a writable edge will follow. Over TLS, records made earlier go first, even when
    /// `bytes` is empty.
    #[inline]
    pub fn send(&mut self, bytes: &[u8]) -> Result<Option<usize>, StreamError> {
        match self {
            Stream::Plain(_) if bytes.is_empty() => Ok(Some(0)),
            Stream::Plain(socket) => write_some(socket, bytes).map_err(StreamError::Write),
            Stream::Tls(tls) => tls.send(bytes),
        }
    }

    /// Over TLS: queue `close_notify` and try one write. Best effort: the connection is being
    /// closed either way.
    pub fn say_goodbye(&mut self) {
        if let Stream::Tls(tls) = self {
            tls.session.send_close_notify();
            if let Err(e) = tls.session.write_tls(&mut tls.socket) {
                trace!("close_notify: {e}");
            }
        }
    }
}

impl TlsStream {
    pub fn new(socket: TcpStream, session: ClientConnection, connected_ns: u64) -> TlsStream {
        TlsStream {
            socket,
            session,
            connected_ns,
        }
    }

    /// Moves the handshake on: records out, records in, until it is done (`Ok(true)`) or the
    /// socket has nothing more for now (`Ok(false)`). `Err` says why it failed, for the
    /// summary.
    pub fn handshake(&mut self) -> Result<bool, String> {
        let (session, socket) = (&mut self.session, &mut self.socket);
        loop {
            // Out first: the ClientHello, then (once the server's flight is in) Finished.
            if let Err(e) = write_records(session, socket) {
                return Err(format!("write: {e}"));
            }
            if !session.is_handshaking() {
                return Ok(true);
            }
            match session.read_tls(socket) {
                Ok(0) => return Err("closed by the server during the TLS handshake".to_string()),
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // Send the alert that says why, best effort.
                        let _ = session.write_tls(socket);
                        return Err(e.to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// [`Stream::receive`] over TLS: plaintext rustls holds, else records not yet fed to it,
    /// else one `read` of records from the socket.
    fn receive(&mut self, into: &mut [u8], reading: &mut Reading) -> Result<Received, StreamError> {
        loop {
            match self.session.reader().read(into) {
                Ok(0) => return Ok(Received::Closed), // close_notify
                Ok(n) => return Ok(Received::Plaintext(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(StreamError::Tls(e)),
            }
            if reading.fed < reading.len {
                self.feed(reading)?;
                continue;
            }
            if reading.drained {
                return Ok(Received::Drained);
            }
            match read_some(&mut self.socket, &mut reading.records).map_err(StreamError::Read)? {
                None => return Ok(Received::Drained),
                Some(0) => return Ok(Received::Closed),
                Some(n) => {
                    reading.fed = 0;
                    reading.len = n;
                    reading.read(n, reading.records.len());
                    return Ok(Received::Records(n));
                }
            }
        }
    }

    /// Hands the session the next records of `reading` (as many as it takes at once) and
    /// decrypts them.
    fn feed(&mut self, reading: &mut Reading) -> Result<(), StreamError> {
        let mut rest = &reading.records[reading.fed..reading.len];
        match self.session.read_tls(&mut rest) {
            Ok(0) => {
                // After close_notify rustls takes nothing more: drop the rest.
                reading.fed = reading.len;
                return Ok(());
            }
            Ok(n) => reading.fed += n,
            Err(e) => return Err(StreamError::Tls(e)),
        }
        if let Err(e) = self.session.process_new_packets() {
            let _ = self.session.write_tls(&mut self.socket); // the alert that says why
            return Err(StreamError::Rejected(e));
        }
        Ok(())
    }

    /// [`Stream::send`] over TLS: records out, plaintext in, until everything is taken and
    /// its records written or the socket is full.
    fn send(&mut self, bytes: &[u8]) -> Result<Option<usize>, StreamError> {
        let mut taken = 0;
        loop {
            let done = write_records(&mut self.session, &mut self.socket);
            if !done.map_err(StreamError::Write)? || taken == bytes.len() {
                break; // the socket is full, or everything is taken and written
            }
            // With its records all written, the session takes at least one record's worth.
            match self.session.writer().write(&bytes[taken..]) {
                Ok(0) => return Err(StreamError::TookNothing),
                Ok(n) => {
                    trace!("TLS write: {n} of {} bytes", bytes.len() - taken);
                    taken += n;
                }
                Err(e) => return Err(StreamError::Tls(e)),
            }
        }
        Ok(if taken == 0 && !bytes.is_empty() {
            None
        } else {
            Some(taken)
        })
    }
}

/// Writes the session's pending records until done (`Ok(true)`) or the socket is full
/// (`Ok(false)`: a writable edge will follow).
fn write_records(session: &mut ClientConnection, socket: &mut TcpStream) -> io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
