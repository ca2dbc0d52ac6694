//! One client connection: its socket, its buffers, and the state machine that decides what the
//! reactor may do with it.
//!
//! ```text
//!   AwaitingProxy --(a valid PROXY header)--> Open   (with --proxy-protocol; anything else,
//!                                                     or none in time: Closed, no reply)
//!
//!            output > HIGH_WATER
//!   Open  ----------------------->  Paused
//!    |    <-----------------------    |
//!    |       output < LOW_WATER       |
//!    |  LOGIN           verdict
//!    +--------> Verifying ------> Open    (a password is being checked off the loop, or,
//!    |  clustered HELLO                    with --cluster-redis, a name claimed in Redis,
//!    |  STATS (workers > 1)                or the other workers' counters are awaited)
//!    |  client memory short    memory freed
//!    +--------> Throttled ------> Open    (its request would need more than is left)
//!    |              |                 |
//!    |              | shutdown, 3rd failed login (after the verdict), idle timeout
//!    |              v                 |    QUIT, protocol error, peer EOF, idle timeout,
//!    +--------> Draining <------------+    request timeout, server full, shutdown,
//!                   |                      failed logins
//!                   |  Draining { reason, peer_done }: flush every reply owed; input is
//!                   |  read and discarded
//!                   |  output empty: shutdown(Write) sends our FIN; the session has ended
//!                   v
//!              Lingering(reason)  discard input until the peer's EOF (or a deadline)
//!                   |
//!                   v
//!                Closed   deregistered, counted; its slab slot is freed at the end of the
//!                         wakeup ("reaped")
//! ```
//!
//! Any state goes straight to Closed on a read or write error, a TLS handshake timeout, the
//! linger deadline, a slow reader dropped at the push cap, or the shutdown deadline. Closed is
//! final: [`Connection::set_state`] never leaves it, and every operation on a Closed connection
//! is a no-op (nothing to read, nothing to write, no deadline), so code that still holds its
//! key during the same wakeup cannot do harm with it (docs/ARCHITECTURE.md, "Liveness").
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
use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::trace;
use mio::net::TcpStream;
use mio::{Registry, Token};

use super::tls::TlsSession;
use super::token;
use crate::buffer::Buffer;
use crate::handler::{self, Context, Limits, Notice, Outcome, Processed, Session};
use crate::net::{read_some, write_some};
use crate::protocol::proxy;
use crate::stats::{Stats, Totals};
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

/// What a TLS session is charged in the client-memory ledger, beyond the connection's own
/// buffers: rustls keeps its records and plaintext in buffers it does not expose. Measured:
/// 1,000 established sessions at one request a second each added 8.3 MiB of RSS; this
/// charges about twice that, room for one 16 KiB record in flight (docs/ARCHITECTURE.md,
/// "Where the memory goes").
pub const TLS_SESSION_BYTES: usize = 16 * 1024;

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
    /// Closed to bring the client memory back under `--client-memory`: it held the most.
    OutOfMemory,
    /// Over `--max-connections-per-ip`.
    TooManyFromAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// With `--proxy-protocol`: nothing is executed until the PROXY header has arrived
    /// (`reactor::proxy`); its bytes gather in `input`. The request deadline runs from the
    /// accept.
    AwaitingProxy,
    /// Read, execute, reply.
    Open,
    /// The client memory is short and the incomplete request in `input` would need more than
    /// is left: no reading until memory frees (the loop resumes it); its idle and request
    /// timeouts keep running.
    Throttled,
    /// Replies are piling up unread: no reading or executing until they drain below
    /// `LOW_WATER`.
    Paused,
    /// A LOGIN is being verified on the worker pool (or, in a cluster, a HELLO's name is
    /// being claimed in Redis; or, with several workers, a STATS waits for each of the
    /// others to publish its counters): no reading or executing until the verdict comes
    /// back; the requests after it wait in `input`, in order.
    Verifying,
    /// No more requests: flush what is owed, then send our FIN. `peer_done`: the peer's EOF
    /// has been read, so once the FIN is out nothing is left to wait for.
    Draining {
        reason: CloseReason,
        peer_done: bool,
    },
    /// Our FIN is sent and the session is over: discard input until the peer's EOF, then
    /// close.
    Lingering(CloseReason),
    /// Deregistered and counted; the slot is freed at the end of the wakeup.
    Closed,
}

impl State {
    /// Draining for `reason`, the peer still sending.
    pub fn draining(reason: CloseReason) -> State {
        State::Draining {
            reason,
            peer_done: reason == CloseReason::PeerClosed,
        }
    }
}

/// What a write did, for the loop's counters and its "is the socket full" reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes the socket (or rustls) took.
    pub taken: usize,
    /// Bytes offered.
    pub offered: usize,
}

/// What discarding a closing connection's input found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discarded {
    /// The peer's EOF.
    Eof,
    /// Bytes thrown away; `protocol_bytes` of them count as `bytes_in` (none over TLS, where
    /// they are records, not protocol bytes).
    Dropped { protocol_bytes: usize },
    /// Nothing more for now.
    Drained,
}

/// One client connection. Its fields are private: the loop says what should happen
/// (receive, execute, send, flush, send the FIN, discard) and the connection does it, TLS or
/// not.
pub struct Connection {
    socket: TcpStream,
    token: Token,
    state: State,
    /// Bytes received but not yet executed: the start of an incomplete request, or requests
    /// held back while Paused or Verifying. Empty (and usually unallocated) between batches.
    input: Buffer,
    /// Replies not yet accepted by the socket. Empty (and usually unallocated) when the
    /// client keeps up.
    output: Buffer,
    session: Session,
    /// The wakeup time of the last byte read or written: what the idle timeout measures from.
    last_activity: Instant,
    /// The connection's one timer, and the tick it is due at.
    timer: Option<(TimerId, u64)>,
    /// When the first bytes of the incomplete request at the end of `input` arrived (`None`
    /// while `input` holds no incomplete request). Restarted whenever a request completes,
    /// so a client that keeps finishing requests is never cut off, however long its stream.
    request_started: Option<Instant>,
    /// The TLS session of a connection accepted on a TLS listener: every byte read or
    /// written passes through it. Boxed: a plain connection pays one pointer for it.
    tls: Option<Box<TlsSession>>,
    /// What this connection is counted for in the loop's client-memory ledger: its
    /// [`Connection::footprint`] when last looked at.
    charged: usize,
    /// The connection is on the loop's list of work for the next turn (or for later in this
    /// one), so that it is on it once.
    queued: bool,
    /// The connection holds one of the process's `--max-connections` slots: from its
    /// admission (a refusal holds none) until the session ends.
    holds_slot: bool,
    /// The client address whose `--max-connections-per-ip` count this connection is in, from
    /// its admission until the session ends.
    address_slot: Option<IpAddr>,
    /// At least one request has been executed: the client has been served something.
    executed: bool,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        token: Token,
        session: Session,
        tls: Option<Box<TlsSession>>,
        now: Instant,
    ) -> Self {
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
            tls,
            charged: 0,
            queued: false,
            holds_slot: false,
            address_slot: None,
            executed: false,
        }
    }

    /// A connection that must begin with a PROXY header: its request clock runs from now.
    pub fn await_proxy_header(&mut self, now: Instant) {
        self.set_state(State::AwaitingProxy);
        self.request_started = Some(now);
    }

    /// Reads bytes of the PROXY header into `scratch`, straight from the socket (never
    /// through TLS: the header comes before the ClientHello). `Ok(Some(0))` at EOF, `Ok(None)`
    /// when there is nothing more for now. Never more than the longest header can still use:
    /// with what is held, at most `MAX_HEADER_LEN` bytes.
    pub fn receive_preamble(&mut self, scratch: &mut [u8]) -> io::Result<Option<usize>> {
        let room = proxy::MAX_HEADER_LEN.saturating_sub(self.input.len());
        let len = room.min(scratch.len());
        read_some(&mut self.socket, &mut scratch[..len])
    }

    /// Keeps the start of a PROXY header that is not complete yet (usually it comes in one
    /// read and is decoded where it was read, never copied).
    pub fn hold_preamble(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The socket's peer: the balancer, behind `--proxy-protocol`.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.socket.peer_addr()
    }

    /// The start of the PROXY header held from earlier reads (empty if none).
    pub fn preamble(&self) -> &[u8] {
        self.input.data()
    }

    /// The header took the first `consumed` bytes of the held preamble, or, with none held,
    /// of `fresh` (the read that completed it), and the connection is Open. What follows it
    /// is the first request: left in the input when it was held, else in `fresh` for the
    /// caller to execute; over TLS it is the first records, handed to the TLS session. The
    /// request clock stops unless a request has begun.
    pub fn end_preamble(&mut self, consumed: usize, fresh: &[u8]) -> io::Result<()> {
        let held = !self.input.is_empty();
        if held {
            self.input.consume(consumed);
        }
        if let Some(tls) = &mut self.tls {
            if held {
                let early = std::mem::take(&mut self.input);
                tls.take_early(early.data())?;
            } else {
                tls.take_early(&fresh[consumed..])?;
            }
        }
        if self.input.is_empty() {
            self.request_started = None;
        }
        self.set_state(State::Open);
        Ok(())
    }

    /// Counts the connection in `ip`'s `--max-connections-per-ip` slots (taken by the caller).
    pub fn hold_address(&mut self, ip: IpAddr) {
        self.address_slot = Some(ip);
    }

    /// Gives the address slot up (the session is ending): the address it was counted for.
    pub fn release_address(&mut self) -> Option<IpAddr> {
        self.address_slot.take()
    }

    /// Records that the connection was admitted into one of the `--max-connections` slots.
    pub fn hold_slot(&mut self) {
        self.holds_slot = true;
    }

    /// Gives its slot up (the session is ending); `true` if it held one.
    pub fn release_slot(&mut self) -> bool {
        std::mem::take(&mut self.holds_slot)
    }

    /// Marks the connection as on the loop's revisit list; `false` if it already was.
    pub fn mark_queued(&mut self) -> bool {
        !std::mem::replace(&mut self.queued, true)
    }

    /// The loop has taken the connection off its revisit list to serve it.
    pub fn unmark_queued(&mut self) {
        self.queued = false;
    }

    /// The memory this connection holds for its client, as RSS sees it: the allocated size of
    /// its buffers, and a fixed charge for a TLS session (rustls's own buffers, which it does
    /// not expose). Zero once Closed: closing frees it all.
    #[inline]
    pub fn footprint(&self) -> usize {
        let tls = if self.tls.is_some() {
            TLS_SESSION_BYTES
        } else {
            0
        };
        self.input.capacity() + self.output.capacity() + tls
    }

    /// What the ledger counts this connection for.
    #[inline]
    pub fn charged(&self) -> usize {
        self.charged
    }

    pub fn set_charged(&mut self, bytes: usize) {
        self.charged = bytes;
    }

    /// Memory held for input: the incomplete request being received.
    pub fn input_capacity(&self) -> usize {
        self.input.capacity()
    }

    /// How many more bytes the incomplete request in `input` may still need, at most: to the
    /// size its frame header declared, or to the line limit.
    pub fn request_need(&self, limits: Limits) -> usize {
        handler::request_bound(self.session.protocol, self.input.data(), limits)
            .saturating_sub(self.input.len())
    }

    pub fn token(&self) -> Token {
        self.token
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Traffic (or a state change that restarts a deadline) happened at `now`.
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
    }

    pub fn timer(&self) -> Option<(TimerId, u64)> {
        self.timer
    }

    pub fn set_timer(&mut self, timer: Option<(TimerId, u64)>) {
        self.timer = timer;
    }

    /// Request bytes from the peer: `Ok(Some(n))`, `Ok(Some(0))` at the end of the stream,
    /// `Ok(None)` when there are none for now. Plaintext from rustls over TLS.
    pub fn receive(&mut self, into: &mut [u8]) -> io::Result<Option<usize>> {
        match &mut self.tls {
            None => read_some(&mut self.socket, into),
            Some(tls) => tls.receive(&mut self.socket, into),
        }
    }

    /// Accepted on a TLS listener.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a read shorter than the buffer proves the socket drained. Over TLS it proves
    /// nothing: rustls hands out one record at a time.
    pub fn short_read_drains(&self) -> bool {
        self.tls.is_none()
    }

    /// Writes `bytes` (replies): `Ok(Some(n))` bytes taken, `Ok(None)` the socket is full.
    /// Taking fewer than offered means the socket is full and a writable edge will follow.
    #[inline]
    fn send(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        match &mut self.tls {
            None => write_some(&mut self.socket, bytes),
            Some(tls) => tls.send(&mut self.socket, bytes),
        }
    }

    /// Writes a fresh batch of replies that was built outside the connection (the loop's
    /// scratch buffer; the connection had nothing pending), keeping what the socket did not
    /// take. One `write`. `batch` is left empty, whatever happens.
    pub fn send_batch(&mut self, batch: &mut Buffer) -> io::Result<Written> {
        debug_assert!(self.output.is_empty(), "a batch overtaking pending output");
        let offered = batch.len();
        let result = self.send(batch.data());
        let taken = match result {
            Ok(taken) => taken.unwrap_or(0),
            Err(e) => {
                batch.clear();
                return Err(e);
            }
        };
        self.output.extend_from_slice(&batch.data()[taken..]);
        batch.clear();
        Ok(Written { taken, offered })
    }

    /// Writes the pending output (and, over TLS, records rustls made on its own: handshake
    /// messages, alerts). One `write`: one that does not take everything has filled the
    /// socket buffer and a writable edge will follow. `Ok(None)`: nothing was owed.
    pub fn flush(&mut self) -> io::Result<Option<Written>> {
        if !self.has_output() {
            return Ok(None);
        }
        let offered = self.output.len();
        let taken = match &mut self.tls {
            None => write_some(&mut self.socket, self.output.data())?,
            Some(tls) => tls.send(&mut self.socket, self.output.data())?,
        }
        .unwrap_or(0);
        self.output.consume(taken);
        Ok(Some(Written { taken, offered }))
    }

    /// Something is owed to the socket: replies, or records rustls made on its own.
    #[inline]
    fn has_output(&self) -> bool {
        self.state != State::Closed
            && (!self.output.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write()))
    }

    /// Replies not yet taken by the socket, in bytes.
    pub fn pending_output(&self) -> usize {
        self.output.len()
    }

    /// Queues a chat push behind the pending replies, unless that would pass `cap`: then
    /// `false`, and the caller drops the connection as a slow reader.
    pub fn push(&mut self, message: &[u8], cap: usize) -> bool {
        if self.output.len() + message.len() > cap {
            return false;
        }
        self.output.extend_from_slice(message);
        true
    }

    /// Forgets the requests not executed yet (and frees their memory) and queues `notice` as
    /// the last reply, before a close the client is told about (a timeout, server full, out
    /// of memory).
    pub fn notify(&mut self, notice: Notice) {
        self.input.clear();
        self.input.release();
        handler::write_notice(self.session.protocol, notice, &mut self.output);
    }

    /// A TLS connection whose handshake is not over: it cannot be sent a notice.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// Our FIN, after the last reply: over TLS, `close_notify` and every record before it go
    /// first. `Ok(true)` once the FIN is sent; `Ok(false)` when the socket is full and the
    /// writable edge will bring the connection back here.
    pub fn send_fin(&mut self) -> io::Result<bool> {
        if let Some(tls) = &mut self.tls
            && !tls.close(&mut self.socket)?
        {
            return Ok(false);
        }
        // An error here (the peer already reset) changes nothing: the close follows anyway.
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
        Ok(true)
    }

    /// Reads and drops input of a closing connection (one read).
    pub fn discard(&mut self, scratch: &mut [u8]) -> io::Result<Discarded> {
        Ok(match read_some(&mut self.socket, scratch)? {
            Some(0) => Discarded::Eof,
            Some(n) => Discarded::Dropped {
                protocol_bytes: if self.tls.is_none() { n } else { 0 },
            },
            None => Discarded::Drained,
        })
    }

    /// The peer's EOF arrived while the connection drains: after our FIN, nothing is left to
    /// wait for.
    pub fn note_peer_eof(&mut self) {
        if let State::Draining { reason, .. } = self.state {
            self.set_state(State::Draining {
                reason,
                peer_done: true,
            });
        }
    }

    /// Stops polling the socket. The descriptor itself is closed when the connection is
    /// dropped, at the end of the wakeup.
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.socket);
    }

    /// Joins `fresh` bytes to requests held from earlier reads, if there are any: then they
    /// are executed from the held input. Returns how much of `fresh` that used up. The input
    /// grows toward what the unfinished request can need and no further (plus the bytes of
    /// this read, which may hold the next requests): see [`handler::request_bound`]. Nor does
    /// it grow more than `room` past its present size, save for the bytes it must take in:
    /// what is left of the client-memory budget.
    pub fn join_held(&mut self, fresh: &[u8], limits: Limits, room: usize) -> usize {
        if self.input.is_empty() {
            return 0;
        }
        let bound = handler::request_bound(self.session.protocol, self.input.data(), limits);
        let cap = bound
            .saturating_add(fresh.len())
            .min(self.input.capacity().saturating_add(room));
        self.input.extend_capped(fresh, cap);
        fresh.len()
    }

    /// Whether the incomplete request being received has already taken more than `chunk`
    /// bytes: a large frame or a long line, arriving over many reads.
    #[inline]
    pub fn receives_bulk(&self, chunk: usize) -> bool {
        self.input.len() >= chunk
    }

    /// Whether requests received earlier wait to be executed (held back by a pause or a
    /// login).
    pub fn holds_requests(&self) -> bool {
        !self.input.is_empty()
    }

    /// Runs the handler over the requests waiting: the held input if there is any, else
    /// `fresh[*offset..]` (advancing `offset`). Replies go to the pending output, or to
    /// `scratch_out` when nothing is pending, so that they leave in one `write`. `None` when
    /// there is nothing to execute or the connection may not execute. The flag says the
    /// output reached `out_limit`.
    #[inline]
    pub fn execute_some(
        &mut self,
        fresh: &[u8],
        offset: &mut usize,
        scratch_out: &mut Buffer,
        out_limit: usize,
        cx: &mut Context<'_>,
    ) -> Option<(Processed, bool)> {
        if !self.may_execute() {
            return None;
        }
        let from_held = !self.input.is_empty();
        let input: &[u8] = if from_held {
            self.input.data()
        } else {
            &fresh[*offset..]
        };
        if input.is_empty() {
            return None;
        }
        let out = replies_to(&mut self.output, scratch_out);
        let processed = handler::process(&mut self.session, input, out, out_limit, cx);
        let over_limit = out.len() >= out_limit;
        if from_held {
            self.input.consume(processed.consumed);
        } else {
            *offset += processed.consumed;
        }
        self.executed |= processed.consumed > 0;
        Some((processed, over_limit))
    }

    /// After executing: keeps `unexecuted` (the start of an incomplete request, or requests
    /// held back), and moves the request clock: started by a request's first bytes,
    /// restarted by every request completed, stopped when nothing incomplete is left.
    /// `Some(true)` when the read ended a request in the middle (`partial_reads`).
    pub fn keep_unexecuted(
        &mut self,
        unexecuted: &[u8],
        fresh: bool,
        executed_any: bool,
        now: Instant,
    ) -> bool {
        if self.is_closing() {
            self.input.clear();
            return false;
        }
        self.input.extend_from_slice(unexecuted);
        let partial = fresh && !self.input.is_empty() && self.may_execute();
        if self.input.is_empty() {
            self.request_started = None;
        } else if executed_any || self.request_started.is_none() {
            self.request_started = Some(now);
        }
        partial
    }

    /// Forgets the requests not executed yet: after the peer's EOF an unfinished one will
    /// never be complete, and after a closing verdict none is executed.
    pub fn forget_input(&mut self) {
        self.input.clear();
    }

    /// Answers a LOGIN that could not be handed to the workers: "busy, try again".
    pub fn answer_busy(&mut self, scratch_out: &mut Buffer) {
        let out = replies_to(&mut self.output, scratch_out);
        handler::abandon_login(&mut self.session, out);
    }

    /// Answers the LOGIN being verified with its verdict, and goes back to Open; what the
    /// handler says next (go on, or close after too many failures).
    pub fn answer_login(&mut self, ok: bool, stats: &mut Stats) -> Outcome {
        let outcome = handler::finish_login(&mut self.session, ok, &mut self.output, stats);
        self.set_state(State::Open);
        outcome
    }

    /// Answers the STATS that waited for the other workers' counters, and goes back to Open.
    pub fn answer_stats(&mut self, totals: &dyn Totals, own: &Stats) {
        handler::write_stats(totals, own, &mut self.output);
        self.set_state(State::Open);
    }

    /// Answers a HELLO's claim with the cluster's verdict, and goes back to Open if it was
    /// waiting for it (else the reply goes out with the fresh batch in `scratch_out`).
    /// `false`: no claim was pending, and nothing was answered.
    pub fn answer_claim(
        &mut self,
        verdict: handler::ClaimVerdict,
        room: &mut handler::Room,
        scratch_out: &mut Buffer,
    ) -> bool {
        let waiting = self.state == State::Verifying;
        let out = if waiting {
            &mut self.output
        } else {
            replies_to(&mut self.output, scratch_out)
        };
        let answered = handler::finish_hello(&mut self.session, verdict, room, out);
        if waiting {
            self.set_state(State::Open);
        }
        answered
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The sole writer of `state`. Closed is final.
    pub fn set_state(&mut self, next: State) {
        if self.state == next {
            return;
        }
        if self.state == State::Closed {
            debug_assert!(false, "conn={} leaving Closed", token::show(self.token));
            log::error!(
                "conn={} bug: asked to leave Closed for {next:?}",
                token::show(self.token)
            );
            return;
        }
        if next == State::Closed {
            // Nothing is read or written from here: the memory goes now, not at the reap.
            self.input = Buffer::new();
            self.output = Buffer::new();
            self.tls = None;
        }
        trace!(
            "conn={} {:?}=>{:?}",
            token::show(self.token),
            self.state,
            next
        );
        self.state = next;
    }

    /// Whether a request of this connection has been executed yet.
    pub fn has_executed(&self) -> bool {
        self.executed
    }

    /// Requests may be read and executed.
    pub fn may_execute(&self) -> bool {
        self.state == State::Open
    }

    /// The connection is on its way out (or gone): input is discarded, not executed.
    pub fn is_closing(&self) -> bool {
        matches!(
            self.state,
            State::Draining { .. } | State::Lingering(_) | State::Closed
        )
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Accepted over `--max-connections` only to be told so, and not yet past our FIN.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.state,
            State::Draining {
                reason: CloseReason::ServerFull,
                ..
            }
        )
    }

    /// When the connection's timer should next look at it: its idle deadline, its request
    /// deadline, the moment its buffers may be given back, or its linger deadline.
    pub fn deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        match self.state {
            State::AwaitingProxy
            | State::Open
            | State::Paused
            | State::Verifying
            | State::Throttled => {
                let idle = timeouts.idle.map(|timeout| self.last_activity + timeout);
                let quiet = self.holds_idle_memory().then(|| self.last_activity + QUIET);
                [idle, quiet, self.request_deadline(timeouts)]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Draining { .. } | State::Lingering(_) => Some(self.last_activity + LINGER),
            State::Closed => None,
        }
    }

    /// When the incomplete request being received must be complete. Only an Open connection
    /// is waiting on its client; a Paused one is waiting on the server's own output. A
    /// Throttled one is waiting on memory, but its clock keeps running: a client cannot hold
    /// memory for longer by being too large to serve. A TLS handshake is a request like any
    /// other: it must be over this long after the accept.
    pub fn request_deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        if !matches!(
            self.state,
            State::AwaitingProxy | State::Open | State::Throttled
        ) {
            return None;
        }
        // AwaitingProxy: the request clock started at the accept, as a TLS session's did.
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

    /// Gives back the memory of empty buffers larger than `keep`: a connection that once sent
    /// a 10 MiB frame must not keep 10 MiB.
    pub fn release_large_buffers(&mut self, keep: usize) {
        if self.output.is_empty() {
            self.output.release_if_larger_than(keep);
        }
        if self.input.is_empty() {
            self.input.release_if_larger_than(keep);
        }
    }
}

/// Where new replies go: behind the pending output if there is any, else into the loop's
/// scratch buffer, so that a batch leaves in one `write` and only what the socket did not take
/// is copied into the connection.
fn replies_to<'a>(output: &'a mut Buffer, scratch_out: &'a mut Buffer) -> &'a mut Buffer {
    if output.is_empty() {
        scratch_out
    } else {
        output
    }
}

/// Counts a write in the loop's counters; `true` when it moved bytes (activity).
pub fn count_written(written: Written, stats: &mut Stats) -> bool {
    stats.bytes_out += written.taken as u64;
    if written.taken == 0 && written.offered > 0 {
        stats.write_would_block += 1;
    } else if written.taken < written.offered {
        stats.partial_writes += 1;
    }
    written.taken > 0
}
