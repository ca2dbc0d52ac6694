//! `tcp-client frame`: one request frame, one reply frame, under one deadline, over plain TCP
//! or TLS.
//!
//! # Invariants
//!
//! - `--timeout` bounds the whole exchange (connect, handshake, write, read), not each step:
//!   every blocking call gets the time left of one `Deadline`.
//! - The reply is read until [`frame::decode`] holds a whole frame, so a reply split across
//!   reads is still one reply; bytes after it are ignored.
//! - The frame format is [`crate::protocol::frame`]'s, never re-implemented here: the request
//!   is [`frame::encode_header`] and the body, the reply is what [`frame::decode`] says.
//! - An Error frame is a reply like any other here; [`run`](super::run) decides that it
//!   fails the run.
//! - Over TLS the session is a blocking [`rustls::StreamOwned`] over the socket; leaving says
//!   goodbye with `close_notify` in one non-blocking write, so a server that stopped reading
//!   cannot hold the client past its deadline.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use log::debug;
use rustls::{ClientConnection, StreamOwned};

use crate::protocol::Decoded;
use crate::protocol::frame::{self, Command, HEADER_LEN};

use super::cli::FrameRequest;
use super::error::{ClientError, io_error};
use super::tls::TlsConfig;
use super::transport::{Deadline, connect, handshake, is_timeout};

impl FrameRequest {
    /// The command byte and body this request is sent as.
    #[must_use]
    pub fn command_and_body(&self) -> (Command, Vec<u8>) {
        use std::os::unix::ffi::OsStrExt;
        match self {
            FrameRequest::Heartbeat => (Command::Heartbeat, Vec::new()),
            FrameRequest::Message { text } => (Command::Message, text.as_bytes().to_vec()),
            FrameRequest::Login { user, pass } => {
                let mut body = user.as_bytes().to_vec();
                body.push(b':');
                body.extend_from_slice(pass.as_bytes());
                (Command::Login, body)
            }
        }
    }

    /// The whole request frame, header from [`frame::encode_header`] then the body.
    ///
    /// # Errors
    ///
    /// [`ClientError::BodyTooLarge`] when the body does not fit the header's u32 length.
    pub fn encode(&self) -> Result<Vec<u8>, ClientError> {
        let (command, body) = self.command_and_body();
        let len = u32::try_from(body.len()).map_err(|_| ClientError::BodyTooLarge(body.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&frame::encode_header(command, len));
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// Sends `request` to `addr` and reads one reply frame, all within `timeout`. Returns the
/// reply's command and body, an Error frame included (the caller decides what it means).
///
/// # Errors
///
/// Connecting fails, the deadline passes, the server closes or resets before a whole frame,
/// or the reply is not a frame.
pub fn exchange(
    addr: &str,
    request: &FrameRequest,
    timeout: Duration,
    tls: Option<&TlsConfig>,
) -> Result<(Command, Vec<u8>), ClientError> {
    let deadline = Deadline::after(timeout);
    let bytes = request.encode()?;
    let mut stream = Stream::open(addr, tls, &deadline)?;
    send_request(&mut stream, &bytes, &deadline)?;
    debug!("sent {} bytes to {addr}", bytes.len());
    read_reply(&mut stream, &deadline)
}

/// No whole reply frame by `deadline`, with `received` bytes of one.
fn timed_out(deadline: &Deadline, received: usize) -> ClientError {
    ClientError::Timeout {
        timeout: deadline.limit(),
        received,
    }
}

/// Writes the whole request (over TLS: and the records the session still holds).
fn send_request(stream: &mut Stream, bytes: &[u8], deadline: &Deadline) -> Result<(), ClientError> {
    let left = deadline.left().ok_or_else(|| timed_out(deadline, 0))?;
    stream
        .socket()
        .set_write_timeout(Some(left))
        .map_err(|source| io_error("setting the write timeout", source))?;
    // `flush` pushes out the TLS records still held by the session (a no-op on plain TCP).
    stream
        .write_all(bytes)
        .and_then(|()| stream.flush())
        .map_err(|e| {
            if is_timeout(&e) {
                timed_out(deadline, 0)
            } else {
                io_error("sending the frame", e)
            }
        })
}

/// Reads until one whole frame has arrived and returns its command and body.
fn read_reply(stream: &mut Stream, deadline: &Deadline) -> Result<(Command, Vec<u8>), ClientError> {
    let mut reply = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // The client trusts the server with any length: it only holds what actually arrives,
        // and the deadline bounds that.
        match frame::decode(&reply, u32::MAX) {
            Ok(Decoded::Complete { request, consumed }) => {
                debug!("reply: {consumed} bytes, command {:?}", request.command);
                return Ok((request.command, request.body.to_vec()));
            }
            Ok(Decoded::Incomplete) => {}
            Err(e) => return Err(ClientError::BadReply(e)),
        }
        let left = deadline
            .left()
            .ok_or_else(|| timed_out(deadline, reply.len()))?;
        stream
            .socket()
            .set_read_timeout(Some(left))
            .map_err(|source| io_error("setting the read timeout", source))?;
        match stream.read(&mut chunk) {
            // Over TLS, a TCP close without close_notify is `UnexpectedEof`: still a close.
            Ok(0) => {
                return Err(ClientError::ClosedEarly {
                    received: reply.len(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ClientError::ClosedEarly {
                    received: reply.len(),
                });
            }
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(timed_out(deadline, reply.len())),
            Err(e) => return Err(io_error("reading the reply", e)),
        }
    }
}

/// The frame exchange's connection: plain TCP, or a TLS session over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// Connects to `addr` and, with `tls`, completes the handshake, all before `deadline`.
    fn open(
        addr: &str,
        tls: Option<&TlsConfig>,
        deadline: &Deadline,
    ) -> Result<Stream, ClientError> {
        let mut socket = connect(addr, deadline)?;
        Ok(match tls {
            None => Stream::Plain(socket),
            Some(tls) => {
                let session = handshake(&mut socket, tls, addr, deadline)?;
                Stream::Tls(Box::new(StreamOwned::new(session, socket)))
            }
        })
    }

    /// The socket underneath, for its timeouts.
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl Drop for Stream {
    /// Over TLS, says goodbye with `close_notify`: one non-blocking write, so a server that
    /// stopped reading cannot hold the client past its deadline.
    fn drop(&mut self) {
        if let Stream::Tls(tls) = self {
            tls.conn.send_close_notify();
            if tls.sock.set_nonblocking(true).is_ok()
                && let Err(e) = tls.conn.write_tls(&mut tls.sock)
            {
                debug!("close_notify: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn requests_encode_as_the_go_client_does() {
        let cases: &[(FrameRequest, &[u8])] = &[
            // The Go client's bare heartbeat.
            (FrameRequest::Heartbeat, b"\x47\x4F\x01\x00\x00\x00\x00\x00"),
            (
                FrameRequest::Message { text: "hi".into() },
                b"\x47\x4F\x01\x01\x00\x00\x00\x02hi",
            ),
            (
                FrameRequest::Message { text: "".into() },
                b"\x47\x4F\x01\x01\x00\x00\x00\x00",
            ),
            (
                FrameRequest::Message {
                    text: OsString::from_vec(vec![0xff, b'\n']),
                },
                b"\x47\x4F\x01\x01\x00\x00\x00\x02\xff\n",
            ),
            (
                FrameRequest::Login {
                    user: "ann".into(),
                    pass: "s:cret".into(),
                },
                b"\x47\x4F\x01\x02\x00\x00\x00\x0aann:s:cret",
            ),
            (
                FrameRequest::Login {
                    user: "".into(),
                    pass: "".into(),
                },
                b"\x47\x4F\x01\x02\x00\x00\x00\x01:",
            ),
        ];
        for (request, wire) in cases {
            assert_eq!(request.encode().unwrap(), *wire, "{request:?}");
        }
    }
}
