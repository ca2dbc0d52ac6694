//! One client connection: its socket, its buffers, and the state machine that decides what the
//! reactor may do with it.
//!
//! ```text
//!            output > HIGH_WATER
//!   Open  ----------------------->  Paused
//!    |    <-----------------------    |
//!    |       output < LOW_WATER       |
//!    |  LOGIN           result
//!    +--------> Verifying ------> Open    (a password is being checked off the loop)
//!    |                                |    QUIT, protocol error, peer EOF, idle timeout,
//!    +----------------+---------------+    server full, shutdown, failed logins
//!                     v
//!              Draining(reason)   flush every reply owed; input is read and discarded
//!                     |  output empty: shutdown(Write) sends our FIN
//!                     v
//!              Lingering(reason)  discard input until the peer's EOF (or a deadline)
//!                     |
//!                     v
//!                  closed (removed from the slab)
//! ```
//!
//! Why Lingering exists: on Linux, `close()` on a socket whose receive queue still holds bytes
//! sends a RST instead of a FIN, and a RST makes the peer's kernel throw away replies it has
//! received but the application has not read yet. So a connection that is owed replies is
//! closed in two steps: our FIN first (the peer reads every reply, then EOF), then the close
//! once the peer has closed too and nothing unread is left. A peer that never closes is cut off
//! at the linger deadline.
//!
//! `set_state` is the only writer of `state`, so every transition is traced in one place.

use std::io;
use std::time::{Duration, Instant};

use log::trace;
use mio::Token;
use mio::net::TcpStream;

use super::tls::TlsSession;
use super::token;
use crate::buffer::Buffer;
use crate::handler::Session;
use crate::net::{read_some, write_some};
use crate::timer_wheel::TimerId;

/// How long a closing connection may go without progress before it is cut off: while
/// Draining, from the last byte written (a slow but live reader keeps it going); while
/// Lingering, from our FIN (input discarded meanwhile does not count, or a peer that keeps
/// sending could hold the socket forever). Short enough that a peer that stopped reading
/// cannot hold a socket for long.
pub const LINGER: Duration = Duration::from_secs(5);

/// How long a connection must go without traffic before the memory of its (empty) buffers is
/// given back. Short, so that thousands of quiet connections cost almost nothing; not so short
/// that a connection sending a request every few hundred milliseconds reallocates each time.
pub const QUIET: Duration = Duration::from_secs(2);

/// The configured per-connection timeouts (`None`: disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub request: Option<Duration>,
}

/// Why a connection is being closed; shown in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent QUIT.
    Quit,
    /// The client broke the protocol; the error reply is the last thing it gets.
    ProtocolError,
    /// The client closed its write side; its replies are still delivered.
    PeerClosed,
    /// No traffic for `--idle-timeout`.
    IdleTimeout,
    /// A request took longer than `--request-timeout` to arrive.
    RequestTimeout,
    /// Too many failed logins on this connection.
    LoginFailures,
    /// Over `--max-connections`.
    ServerFull,
    /// The server is shutting down.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Read, execute, reply.
    Open,
    /// Replies are piling up unread: no reading or executing until they drain below
    /// `LOW_WATER`.
    Paused,
    /// A LOGIN is being verified on the worker pool: no reading or executing until the
    /// verdict comes back; the requests after the LOGIN wait in `input`, in order.
    Verifying,
    /// No more requests: flush what is owed, then send our FIN.
    Draining(CloseReason),
    /// Our FIN is sent: discard input until the peer's EOF, then close.
    Lingering(CloseReason),
}

pub struct Connection {
    pub socket: TcpStream,
    pub token: Token,
    state: State,
    /// Bytes received but not yet executed: the start of an incomplete request, or requests
    /// held back while Paused. Empty (and usually unallocated) between batches.
    pub input: Buffer,
    /// Replies not yet accepted by the socket. Empty (and usually unallocated) when the
    /// client keeps up.
    pub output: Buffer,
    pub session: Session,
    /// The wakeup time of the last byte read or written: what the idle timeout measures from.
    pub last_activity: Instant,
    /// The connection's one timer, and the tick it is due at.
    pub timer: Option<(TimerId, u64)>,
    /// When the first bytes of the incomplete request at the end of `input` arrived (`None`
    /// while `input` holds no incomplete request). Restarted whenever a request completes,
    /// so a client that keeps finishing requests is never cut off, however long its stream.
    pub request_started: Option<Instant>,
    /// The peer's EOF has been read: nothing more can arrive.
    pub peer_closed: bool,
    /// Accepted over `--max-connections` only to be told so; not counted as served.
    pub rejected: bool,
    /// The TLS session of a connection accepted on a TLS listener: every byte read or
    /// written passes through it. Boxed: a plain connection pays one pointer for it.
    pub tls: Option<Box<TlsSession>>,
}

impl Connection {
    pub fn new(socket: TcpStream, token: Token, session: Session, now: Instant) -> Self {
        Connection {
            socket,
            token,
            state: State::Open,
            input: Buffer::new(),
            output: Buffer::new(),
            session,
            last_activity: now,
            timer: None,
            request_started: None,
            peer_closed: false,
            rejected: false,
            tls: None,
        }
    }

    /// Request bytes from the peer: `Ok(Some(n))`, `Ok(Some(0))` at the end of the stream,
    /// `Ok(None)` when there are none for now. Plaintext from rustls over TLS.
    #[inline]
    pub fn receive(&mut self, into: &mut [u8]) -> io::Result<Option<usize>> {
        match &mut self.tls {
            None => read_some(&mut self.socket, into),
            Some(tls) => tls.receive(&mut self.socket, into),
        }
    }

    /// Writes `bytes` (replies): `Ok(Some(n))` bytes taken, `Ok(None)` the socket is full.
    /// Taking fewer than offered means the socket is full and a writable edge will follow.
    #[inline]
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        match &mut self.tls {
            None => write_some(&mut self.socket, bytes),
            Some(tls) => tls.send(&mut self.socket, bytes),
        }
    }

    /// Writes the connection's pending output, as [`Connection::send`].
    #[inline]
    pub fn send_output(&mut self) -> io::Result<Option<usize>> {
        let bytes = self.output.data();
        match &mut self.tls {
            None => write_some(&mut self.socket, bytes),
            Some(tls) => tls.send(&mut self.socket, bytes),
        }
    }

    /// Something is owed to the socket: replies, or records rustls made on its own
    /// (handshake messages, alerts).
    #[inline]
    pub fn has_output(&self) -> bool {
        !self.output.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// A TLS connection whose handshake is not over: it cannot be sent a notice.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// Before the FIN: over TLS, `close_notify` and every record before it must be on the
    /// socket. `Ok(true)` when the FIN may go now; `Ok(false)` when the socket is full and the
    /// writable edge will bring the connection back here.
    pub fn ready_for_fin(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            None => Ok(true),
            Some(tls) => tls.close(&mut self.socket),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The sole writer of `state`.
    pub fn set_state(&mut self, next: State) {
        if self.state != next {
            trace!(
                "conn={} {:?}=>{:?}",
                token::show(self.token),
                self.state,
                next
            );
            self.state = next;
        }
    }

    /// Requests may be read and executed.
    pub fn may_execute(&self) -> bool {
        self.state == State::Open
    }

    /// The connection is on its way out: input is discarded, not executed.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Draining(_) | State::Lingering(_))
    }

    /// When the connection's timer should next look at it: its idle deadline, its request
    /// deadline, the moment its buffers may be given back, or its linger deadline.
    pub fn deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        match self.state {
            State::Open | State::Paused | State::Verifying => {
                let idle = timeouts.idle.map(|timeout| self.last_activity + timeout);
                let quiet = self.holds_idle_memory().then(|| self.last_activity + QUIET);
                [idle, quiet, self.request_deadline(timeouts)]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Draining(_) | State::Lingering(_) => Some(self.last_activity + LINGER),
        }
    }

    /// When the incomplete request being received must be complete. Only an Open connection
    /// is waiting on its client; a Paused one is waiting on the server's own output. A TLS
    /// handshake is a request like any other: it must be over this long after the accept.
    pub fn request_deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        if self.state != State::Open {
            return None;
        }
        let timeout = timeouts.request?;
        if let Some(tls) = &self.tls
            && tls.is_handshaking()
        {
            return Some(tls.started + timeout);
        }
        Some(self.request_started? + timeout)
    }

    /// A buffer that is empty but still owns memory: what `release_buffers` would free. A
    /// buffer holding bytes (a partial request, unsent replies) is not counted: it cannot be
    /// freed, and a deadline for it would fire again at once, forever.
    fn holds_idle_memory(&self) -> bool {
        let idle = |buffer: &Buffer| buffer.is_empty() && buffer.capacity() > 0;
        idle(&self.input) || idle(&self.output)
    }

    /// Gives back the memory of empty buffers.
    pub fn release_buffers(&mut self) {
        self.input.release();
        self.output.release();
    }
}
