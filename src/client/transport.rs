//! Reaching the server, for both modes: resolve and connect under a deadline, then, with
//! `--tls`, the blocking TLS handshake under the same deadline.
//!
//! # Invariants
//!
//! - A deadline bounds a whole step (all the addresses tried, every handshake round trip),
//!   not each call: each blocking call gets the time left, and a deadline that has passed is
//!   never turned into a zero timeout (which the socket would take as "none").
//! - A handshake failure says which of the three it was: the certificate or the protocol
//!   (rustls's reason), the server closing (likely not a TLS listener), or the deadline.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::debug;
use rustls::ClientConnection;

use super::error::{ClientError, io_error};
use super::tls::{TlsConfig, rustls_error};

/// `SO_RCVTIMEO`/`SO_SNDTIMEO` expiring surface as either kind.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects to the first address `addr` resolves to that accepts, all tries together
/// bounded by `deadline`.
pub(super) fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, ClientError> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for candidate in resolved {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
            break;
        };
        match TcpStream::connect_timeout(&candidate, left) {
            Ok(stream) => {
                debug!("connected to {candidate}");
                return Ok(stream);
            }
            Err(e) => {
                debug!("connect {candidate}: {e}");
                last = e;
            }
        }
    }
    Err(ClientError::Connect {
        addr: addr.to_string(),
        source: last,
    })
}

/// Starts a TLS session on the connected `socket` and completes its handshake, blocking,
/// all before `deadline`. The socket's timeouts are left set.
pub(super) fn handshake(
    socket: &mut TcpStream,
    tls: &TlsConfig,
    addr: &str,
    deadline: Instant,
) -> Result<ClientConnection, ClientError> {
    let mut session = tls.session().map_err(|source| ClientError::Handshake {
        addr: addr.to_string(),
        source,
    })?;
    let started = Instant::now();
    while session.is_handshaking() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ClientError::HandshakeTimeout {
                timeout: Duration::ZERO,
            })?;
        socket
            .set_read_timeout(Some(left))
            .and_then(|()| socket.set_write_timeout(Some(left)))
            .map_err(|source| io_error("setting the socket timeouts", source))?;
        match session.complete_io(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(if let Some(source) = rustls_error(&e) {
                    ClientError::Handshake {
                        addr: addr.to_string(),
                        source: source.clone(),
                    }
                } else if e.kind() == io::ErrorKind::UnexpectedEof {
                    ClientError::HandshakeClosed {
                        addr: addr.to_string(),
                    }
                } else if is_timeout(&e) {
                    ClientError::HandshakeTimeout {
                        timeout: Duration::ZERO,
                    }
                } else {
                    io_error("TLS handshake", e)
                });
            }
        }
    }
    debug!(
        "TLS handshake with {addr} done in {:?}: {:?}, {:?}",
        started.elapsed(),
        session.protocol_version(),
        session.negotiated_cipher_suite().map(|s| s.suite())
    );
    Ok(session)
}
