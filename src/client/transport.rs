//! Reaching the server, for both modes: resolve and connect under a deadline, then, with
//! `--tls`, the blocking TLS handshake under the same deadline.
//!
//! # Invariants
//!
//! - A `Deadline` bounds a whole step (all the addresses tried, every handshake round
//!   trip), not each call: each blocking call gets the time left, and a deadline that has
//!   passed is never turned into a zero timeout (which the socket would take as "none").
//! - Every socket from `connect` has `TCP_NODELAY`: line mode sends small lines one at a
//!   time and frame mode one small request, so neither should wait for the previous
//!   segment's ACK (Nagle).
//! - A handshake failure says which of the three it was: the certificate or the protocol
//!   (rustls's reason), the server closing (likely not a TLS listener), or the deadline.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::debug;
use rustls::ClientConnection;

use super::error::{ClientError, io_error};
use super::tls::{TlsConfig, rustls_error};

/// A point in time and the limit it was set from, so a timeout message can name the limit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    /// `limit` from now.
    pub(super) fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    /// The limit this deadline was set from (what a timeout message names).
    pub(super) fn limit(&self) -> Duration {
        self.limit
    }

    /// The time left, or `None` once the deadline has passed.
    pub(super) fn left(&self) -> Option<Duration> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// `SO_RCVTIMEO`/`SO_SNDTIMEO` expiring surface as either kind.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects to the first address `addr` resolves to that accepts, all tries together
/// bounded by `deadline`, and sets `TCP_NODELAY`.
pub(super) fn connect(addr: &str, deadline: &Deadline) -> Result<TcpStream, ClientError> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for candidate in resolved {
        let Some(left) = deadline.left() else {
            last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
            break;
        };
        match TcpStream::connect_timeout(&candidate, left) {
            Ok(stream) => {
                debug!("connected to {candidate}");
                if let Err(e) = stream.set_nodelay(true) {
                    debug!("TCP_NODELAY: {e}");
                }
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
    deadline: &Deadline,
) -> Result<ClientConnection, ClientError> {
    let mut session = tls.session().map_err(|source| ClientError::Handshake {
        addr: addr.to_string(),
        source,
    })?;
    let started = Instant::now();
    while session.is_handshaking() {
        let left = deadline.left().ok_or(ClientError::HandshakeTimeout {
            timeout: deadline.limit(),
        })?;
        socket
            .set_read_timeout(Some(left))
            .and_then(|()| socket.set_write_timeout(Some(left)))
            .map_err(|source| io_error("setting the socket timeouts", source))?;
        match session.complete_io(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(handshake_error(e, addr, deadline)),
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

/// What a failed `complete_io` means: rustls's reason, the server closing, or the deadline.
fn handshake_error(e: io::Error, addr: &str, deadline: &Deadline) -> ClientError {
    if let Some(source) = rustls_error(&e) {
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
            timeout: deadline.limit(),
        }
    } else {
        io_error("TLS handshake", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_names_its_limit_and_runs_out() {
        let deadline = Deadline::after(Duration::from_millis(300));
        assert_eq!(deadline.limit(), Duration::from_millis(300));
        assert!(
            deadline
                .left()
                .is_some_and(|d| d <= Duration::from_millis(300))
        );
        let passed = Deadline::after(Duration::ZERO);
        assert_eq!(
            passed.left(),
            None,
            "a passed deadline is not a zero timeout"
        );
    }

    #[test]
    fn timeouts_are_either_kind() {
        for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::TimedOut] {
            assert!(is_timeout(&io::Error::from(kind)), "{kind:?}");
        }
        assert!(!is_timeout(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }
}
