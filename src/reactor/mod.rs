//! The event loop: one thread, one `mio::Poll`, every connection in one `Slab`.
//!
//! One turn of the loop:
//!
//! ```text
//! poll(timeout = time to the next timer, 0 if work was deferred)
//!   -> for each event: listener => accept until WouldBlock (at most ACCEPT_BUDGET)
//!                      signal   => begin a graceful shutdown (a second one: exit now)
//!                      conn     => read until drained or READ_BUDGET, execute every complete
//!                                  request, write the replies with one write
//!   -> revisit what was deferred last turn (budgets spent, connections un-paused)
//!   -> flush connections that received chat pushes
//!   -> advance the timer wheel: idle timeouts, linger deadlines, accept pauses
//! ```
//!
//! The readiness rules this relies on (mio's `Poll` documentation, and Linux epoll in
//! edge-triggered mode, which is what mio uses):
//! - Events are edge-triggered: an event says the socket *became* readable or writable, once.
//!   A socket must be drained (read until WouldBlock) or the loop must remember to come back to
//!   it itself; no second event will come for bytes already there. Hence the `revisit` list
//!   for connections that stopped early (a spent budget, a pause for backpressure).
//! - A `read` that returned fewer bytes than the buffer could hold has drained the socket at
//!   that moment, and bytes arriving later raise a new edge; so the loop does not spend a
//!   second `read` just to see WouldBlock. The same holds for a `write` that took everything.
//! - Events can be spurious: a readable event may find nothing (WouldBlock) and that is fine.
//! - Read-closed and error flags are hints; the `read` that follows tells the truth (0 for
//!   EOF, or the error), so they are treated as "readable".
//! - Sockets are registered once, for READABLE | WRITABLE, and never re-registered: with edge
//!   triggering a writable edge costs nothing until a write has filled the socket buffer, and
//!   the loop keeps track itself of which connections have output pending. No `epoll_ctl` per
//!   request.
//! - One batch of events can hold an event for a connection that an earlier event in the same
//!   batch closed; tokens carry a generation so such an event is recognised and dropped
//!   ([`token`]).
//!
//! The whole state of one loop is this one `Server` value: no globals, so several loops can
//! run side by side, one per core.

pub mod connection;
pub mod listener;
pub mod tls;
pub mod token;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{Level, debug, info, log_enabled, trace, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::auth::{LoginJob, LoginResult, Users, VerifierPool};
use crate::buffer::{Buffer, HIGH_WATER, LOW_WATER, PUSH_CAP};
use crate::config::Config;
use crate::handler::{self, Context, Limits, Logins, Notice, Outcome, Room};
use crate::net::read_some;
use crate::stats::Stats;
use crate::timer_wheel::{TimerId, TimerWheel};
use connection::{CloseReason, Connection, QUIET, State, Timeouts};
use listener::{ListenerId, Listeners};

/// The timer wheel's slot width. Idle timeouts are whole seconds in practice; 10 ms keeps the
/// wheel's own wakeups rare while no deadline is more than 10 ms late because of it.
const TICK: Duration = Duration::from_millis(10);

/// `TICK` in nanoseconds, for tick arithmetic in `u64` (a `Duration`'s own is `u128`).
const TICK_NANOS: u64 = TICK.as_nanos() as u64;

/// 4096 slots of 10 ms: one revolution is 40.96 s, longer than the linger and quiet deadlines,
/// so only idle timeouts over 41 s ever wait a second revolution (one extra look each).
const WHEEL_SLOTS: usize = 4096;

/// One `read` takes at most this much: the shared scratch buffer's size. 64 KiB holds a
/// pipelined batch of a thousand small requests and matches the kernel's usual segment
/// aggregation on loopback.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes read from one connection per wakeup before the loop moves on to the others: a
/// fire-hose client gets its turn again on the next iteration, after everyone else.
const READ_BUDGET: usize = 4 * READ_CHUNK;

/// Events taken from one `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// A buffer that emptied and holds more than this is freed at once rather than at the quiet
/// deadline: a connection that once sent a 10 MiB frame must not keep 10 MiB.
const KEEP_BYTES: usize = 64 * 1024;

/// What an event asks of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// Writable only: flush.
    Writable,
    /// Readable: read until a short read (the socket is drained), then flush.
    Readable,
    /// Read until WouldBlock or EOF, then flush: the read side closed, or edges were missed.
    ReadToEnd,
}

/// What a timer in the wheel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Look at this connection: idle? quiet enough to free its buffers? past its linger?
    Connection(Token),
    /// The pause after running out of descriptors is over.
    ResumeAccept,
}

/// Logins being verified at once, all connections together. Past this a LOGIN is answered
/// `ERR server busy, try again` at once: a flood of logins must not queue minutes of hashing
/// (each takes tens of milliseconds of a worker's CPU).
const MAX_LOGINS_IN_FLIGHT: usize = 256;

/// Asks a running [`Server`] (on another thread) to shut down gracefully, as SIGTERM does.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    requested: Arc<AtomicBool>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) -> io::Result<()> {
        // The waker is shared with the login workers: the flag says which of them woke us.
        self.requested.store(true, Ordering::SeqCst);
        self.waker.wake()
    }
}

/// Worker threads for password hashing: all cores but the loop's, at least one, at most
/// four. They run at a lower priority than the loop (`auth`), so logins slow down before
/// the other clients do.
fn login_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, 4)
}

/// One reactor: its poll, listeners, connections, timers and counters.
pub struct Server {
    config: Config,
    limits: Limits,
    poll: Poll,
    events: Events,
    listeners: Listeners,
    /// The certificate and settings of the TLS listeners, if any.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    signals: Signals,
    /// Woken by a [`ShutdownHandle`] (which sets `shutdown_requested`) and by the login
    /// workers (which leave a result in their channel).
    waker: Arc<Waker>,
    shutdown_requested: Arc<AtomicBool>,
    /// Verifies passwords off the loop; see docs/ARCHITECTURE.md, "Blocking work". Started
    /// at the first LOGIN: a server nobody logs in to runs one thread, and its socket calls
    /// skip the cancellation-point bookkeeping glibc adds once a process has threads.
    verifier: Option<VerifierPool>,
    users: Arc<Users>,
    /// Jobs given to `verifier` whose result has not come back yet.
    logins_in_flight: usize,
    /// `--require-login`, and the credentials of a LOGIN on their way to `verifier`.
    logins: Logins,
    connections: Slab<Connection>,
    /// The generation given to the last connection accepted.
    generation: u32,
    /// Connections in the slab that were refused as over `--max-connections`.
    rejecting: usize,
    wheel: TimerWheel<Timer>,
    fired: Vec<(TimerId, Timer)>,
    /// Tick 0 of the wheel.
    epoch: Instant,
    /// The time of the current wakeup: read once per wakeup, used for every deadline in it.
    now: Instant,
    /// Every read lands here first; only the unfinished tail of a request is copied into the
    /// connection's own buffer. So a connection between requests owns no input memory.
    scratch_in: Box<[u8]>,
    /// Replies of the connection being served, when it had nothing pending; written with one
    /// `write`, and only what the socket did not take is copied to the connection.
    scratch_out: Buffer,
    room: Room,
    stats: Stats,
    /// Work deferred to the next turn: listeners and connections that stopped early.
    revisit: Vec<Token>,
    /// Connections that received chat pushes during this turn.
    flush_later: Vec<Token>,
    /// Slow readers to disconnect after a broadcast.
    doomed: Vec<Token>,
    /// Set once a shutdown has begun: when it must be over.
    shutdown_deadline: Option<Instant>,
    /// A second signal: exit now.
    exit_now: bool,
}

impl Server {
    /// Binds both listeners and sets up the loop; nothing is served until [`Server::run`].
    pub fn bind(config: Config) -> io::Result<Server> {
        let tls_config = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load_config(cert, key)?),
            _ => None,
        };
        let poll = Poll::new()?;
        let mut listeners = Listeners::bind(&config)?;
        let registry = poll.registry();
        listeners.register(registry)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        registry.register(&mut signals, token::SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(registry, token::WAKER)?);
        let users = match &config.users {
            Some(path) => {
                let users =
                    Users::load(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                info!("{} user(s) from {}", users.len(), path.display());
                users
            }
            // No users: every login is refused, after the same work as a wrong password.
            None => Users::parse("").map_err(|e| io::Error::other(e.to_string()))?,
        };
        let require_login = config.require_login;
        let now = Instant::now();
        Ok(Server {
            limits: Limits {
                max_line_bytes: config.max_line_bytes,
                max_frame_bytes: config.max_frame_bytes,
            },
            config,
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            listeners,
            tls_config,
            signals,
            waker,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            verifier: None,
            users: Arc::new(users),
            logins_in_flight: 0,
            logins: Logins {
                required: require_login,
                pending: None,
            },
            connections: Slab::new(),
            generation: 0,
            rejecting: 0,
            wheel: TimerWheel::new(WHEEL_SLOTS, 0),
            fired: Vec::new(),
            epoch: now,
            now,
            scratch_in: vec![0; READ_CHUNK].into_boxed_slice(),
            scratch_out: Buffer::new(),
            room: Room::default(),
            stats: Stats::default(),
            revisit: Vec::new(),
            flush_later: Vec::new(),
            doomed: Vec::new(),
            shutdown_deadline: None,
            exit_now: false,
        })
    }

    pub fn line_addr(&self) -> SocketAddr {
        self.addr(ListenerId::Line)
            .expect("the line listener is always bound")
    }

    pub fn frame_addr(&self) -> SocketAddr {
        self.addr(ListenerId::Frame)
            .expect("the frame listener is always bound")
    }

    /// Where a listener is bound; `None` for a TLS listener that is not configured.
    pub fn addr(&self, id: ListenerId) -> Option<SocketAddr> {
        self.listeners.addr(id)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.waker),
            requested: Arc::clone(&self.shutdown_requested),
        }
    }

    /// Serves until a shutdown has completed; returns the final counters.
    pub fn run(mut self) -> io::Result<Stats> {
        while !self.turn(None)? {}
        let mut pairs = Vec::new();
        let _ = self.stats.write_pairs(&mut pairs);
        info!(
            "exit summary: served {} connections, {} bytes in, {} bytes out; {}",
            self.stats.accepted,
            self.stats.bytes_in,
            self.stats.bytes_out,
            String::from_utf8_lossy(&pairs)
        );
        Ok(self.stats)
    }

    /// One turn of the loop (see the module doc); `Ok(true)` when the server is done.
    /// `max_wait` caps the poll timeout (tests drive the loop turn by turn).
    pub fn turn(&mut self, max_wait: Option<Duration>) -> io::Result<bool> {
        let timeout = match (self.poll_timeout(), max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.now = Instant::now();
        self.stats.wakeups += 1;
        self.handle_events();
        if self.exit_now {
            info!("second signal: exiting now");
            return Ok(true);
        }
        self.handle_revisits();
        self.flush_pushed();
        self.fire_timers();
        if let Some(deadline) = self.shutdown_deadline {
            if self.connections.is_empty() {
                return Ok(true);
            }
            if self.now >= deadline {
                info!(
                    "shutdown timeout: closing {} connection(s) still open",
                    self.connections.len()
                );
                let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
                for key in keys {
                    self.close(key, "shutdown timeout");
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.revisit.is_empty() {
            return Some(Duration::ZERO);
        }
        let timer = self
            .wheel
            .next_deadline()
            .map(|tick| self.instant_of(tick).saturating_duration_since(self.now));
        let shutdown = self
            .shutdown_deadline
            .map(|deadline| deadline.saturating_duration_since(self.now));
        match (timer, shutdown) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_events(&mut self) {
        // Taken out so that handling an event may borrow the whole server.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        if log_enabled!(Level::Trace) {
            let list: Vec<String> = events
                .iter()
                .map(|e| {
                    format!(
                        "{}{}{}{}",
                        token::show(e.token()),
                        if e.is_readable() { " r" } else { "" },
                        if e.is_writable() { " w" } else { "" },
                        if e.is_read_closed() || e.is_error() {
                            " closed/err"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            trace!("wakeup: {} event(s) [{}]", list.len(), list.join(", "));
        }
        for event in events.iter() {
            match event.token() {
                token::SIGNALS => self.on_signals(),
                token::WAKER => self.on_wake(),
                listener if let Some(id) = ListenerId::of_token(listener) => self.accept_ready(id),
                conn => {
                    let readiness = if event.is_read_closed() || event.is_error() {
                        // The peer's FIN (or an error) may sit behind the data: read to the end.
                        Readiness::ReadToEnd
                    } else if event.is_readable() {
                        Readiness::Readable
                    } else {
                        Readiness::Writable
                    };
                    self.connection_ready(conn, readiness);
                }
            }
        }
        self.events = events;
    }

    fn handle_revisits(&mut self) {
        if self.revisit.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.revisit);
        for &token in &pending {
            match token {
                listener if let Some(id) = ListenerId::of_token(listener) => self.accept_ready(id),
                conn => {
                    // Requests held back while the connection was paused come first.
                    if let Some(key) = self.key_of(conn)
                        && self.connections[key].may_execute()
                        && !self.connections[key].input.is_empty()
                    {
                        self.execute(key, 0);
                    }
                    // Edges that came while it was paused were not acted on: read to the end.
                    self.connection_ready(conn, Readiness::ReadToEnd);
                }
            }
        }
        // Keep the allocation of the longer of the two lists.
        pending.clear();
        if self.revisit.is_empty() {
            self.revisit = pending;
        }
    }

    /// The slab key of a live connection token; `None` for a stale one.
    fn key_of(&self, token: Token) -> Option<usize> {
        let (key, _) = token::split(token);
        self.connections
            .get(key)
            .filter(|conn| conn.token == token)
            .map(|_| key)
    }

    /// Readiness for a connection: read (and execute) if readable, then write what is owed.
    ///
    /// The flush runs with or without a writable edge: the read may have queued replies or
    /// begun a close, and a flush with nothing to write costs no syscall.
    fn connection_ready(&mut self, token: Token, readiness: Readiness) {
        let Some(key) = self.key_of(token) else {
            trace!("conn={} stale event ignored", token::show(token));
            return;
        };
        if readiness != Readiness::Writable {
            self.read_ready(key, READ_BUDGET, readiness == Readiness::ReadToEnd);
        }
        if self.key_of(token).is_none() {
            return;
        }
        self.flush(key);
        if self.key_of(token).is_some() {
            self.arm_timer(key);
        }
    }

    /// Reads until the socket is drained, `budget` bytes were read, or the connection stops
    /// accepting input; executes what each read completes. A short read counts as drained
    /// unless `to_end`: then only WouldBlock or EOF does, because an EOF that arrived with the
    /// last bytes raises no edge of its own.
    fn read_ready(&mut self, key: usize, budget: usize, to_end: bool) {
        let token = self.connections[key].token;
        // Over TLS a short read proves nothing: rustls hands out one record at a time.
        let to_end = to_end || self.connections[key].tls.is_some();
        let mut left = budget;
        while self.key_of(token).is_some() {
            let conn = &mut self.connections[key];
            match conn.state() {
                State::Open => {}
                State::Paused | State::Verifying => return,
                State::Draining(_) | State::Lingering(_) => return self.discard_input(key),
            }
            match conn.receive(&mut self.scratch_in) {
                Err(e) => {
                    debug!("conn={} read error: {e}", token::show(token));
                    return self.close(key, "read error");
                }
                Ok(None) => {
                    self.stats.read_would_block += 1;
                    trace!("conn={} read: WouldBlock", token::show(token));
                    return;
                }
                Ok(Some(0)) => {
                    trace!("conn={} read: EOF", token::show(token));
                    conn.peer_closed = true;
                    // Everything complete has been executed; an unfinished request never will be.
                    conn.input.clear();
                    return self.drain(key, CloseReason::PeerClosed);
                }
                Ok(Some(n)) => {
                    trace!("conn={} read: {n} bytes", token::show(token));
                    self.stats.bytes_in += n as u64;
                    conn.last_activity = self.now;
                    self.execute(key, n);
                    if n < self.scratch_in.len() && !to_end {
                        return; // drained: later bytes raise a new edge
                    }
                    left = left.saturating_sub(n);
                    if left == 0 {
                        self.revisit.push(token);
                        return;
                    }
                }
            }
        }
    }

    /// Executes the requests completed by the `fresh` bytes just read into `scratch_in`
    /// (joined to the connection's unfinished ones, if any), then writes the replies.
    fn execute(&mut self, key: usize, fresh: usize) {
        let out_limit = self.out_limit();
        let token = self.connections[key].token;
        let mut executed_any = false;
        let mut offset = 0; // how much of scratch_in[..fresh] has been used
        {
            let conn = &mut self.connections[key];
            if !conn.input.is_empty() {
                conn.input.extend_from_slice(&self.scratch_in[..fresh]);
                offset = fresh;
            }
        }
        loop {
            let conn = &mut self.connections[key];
            if !conn.may_execute() {
                break;
            }
            let from_spill = !conn.input.is_empty();
            let input: &[u8] = if from_spill {
                conn.input.data()
            } else {
                &self.scratch_in[offset..fresh]
            };
            if input.is_empty() {
                break;
            }
            let out = if conn.output.is_empty() {
                &mut self.scratch_out
            } else {
                &mut conn.output
            };
            let mut cx = Context {
                limits: self.limits,
                room: &mut self.room,
                stats: &mut self.stats,
                logins: &mut self.logins,
            };
            let processed = handler::process(&mut conn.session, input, out, out_limit, &mut cx);
            let over_limit = out.len() >= out_limit;
            executed_any |= processed.consumed > 0;
            if from_spill {
                conn.input.consume(processed.consumed);
            } else {
                offset += processed.consumed;
            }
            match processed.outcome {
                Outcome::Continue if over_limit => {
                    // Write before executing more: the client may be keeping up after all.
                    self.write_replies(key);
                    if self.key_of(token).is_none() {
                        return;
                    }
                }
                Outcome::Continue => break,
                Outcome::Broadcast => self.broadcast(key),
                Outcome::Quit => self.drain(key, CloseReason::Quit),
                Outcome::ProtocolError => self.drain(key, CloseReason::ProtocolError),
                Outcome::Login => self.start_login(key),
                Outcome::LoginFailures => self.drain(key, CloseReason::LoginFailures),
            }
        }
        let conn = &mut self.connections[key];
        if offset < fresh && !conn.is_closing() {
            // The start of an incomplete request, or requests held back by backpressure.
            conn.input
                .extend_from_slice(&self.scratch_in[offset..fresh]);
        }
        if conn.is_closing() {
            conn.input.clear();
        } else if fresh > 0 && !conn.input.is_empty() && conn.may_execute() {
            self.stats.partial_reads += 1;
        }
        // The request clock: started by a request's first bytes, restarted by every request
        // completed, stopped when nothing incomplete is left.
        if conn.input.is_empty() {
            conn.request_started = None;
        } else if executed_any || conn.request_started.is_none() {
            conn.request_started = Some(self.now);
        }
        self.write_replies(key);
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            idle: self.config.idle_timeout(),
            request: self.config.request_timeout(),
        }
    }

    /// How much output may pile up before execution stops. Unlimited during shutdown: every
    /// request received before the signal is answered.
    fn out_limit(&self) -> usize {
        if self.shutdown_deadline.is_some() {
            usize::MAX
        } else {
            HIGH_WATER
        }
    }

    /// Writes the replies in `scratch_out` (the connection's fresh batch) or, failing that,
    /// the connection's own pending output: one `write` either way.
    fn write_replies(&mut self, key: usize) {
        if self.scratch_out.is_empty() {
            return self.flush(key);
        }
        let conn = &mut self.connections[key];
        debug_assert!(conn.output.is_empty(), "scratch used while output pending");
        let result = conn.send(self.scratch_out.data());
        let pending = self.scratch_out.len();
        match result {
            Ok(Some(n)) => {
                self.note_written(key, n, pending);
                let conn = &mut self.connections[key];
                conn.output.extend_from_slice(&self.scratch_out.data()[n..]);
            }
            Ok(None) => {
                self.stats.write_would_block += 1;
                trace!("conn={} write: WouldBlock", token::show(conn.token));
                conn.output.extend_from_slice(self.scratch_out.data());
            }
            Err(e) => {
                debug!("conn={} write error: {e}", token::show(conn.token));
                self.scratch_out.clear();
                return self.close(key, "write error");
            }
        }
        self.scratch_out.clear();
        self.after_write(key);
    }

    /// Writes the connection's pending output: one `write`, since one that does not take
    /// everything has filled the socket buffer and a writable edge will follow.
    fn flush(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        if conn.has_output() {
            let pending = conn.output.len();
            match conn.send_output() {
                Ok(Some(n)) => {
                    conn.output.consume(n);
                    self.note_written(key, n, pending);
                }
                Ok(None) => {
                    self.stats.write_would_block += 1;
                    trace!("conn={} write: WouldBlock", token::show(conn.token));
                }
                Err(e) => {
                    debug!("conn={} write error: {e}", token::show(conn.token));
                    return self.close(key, "write error");
                }
            }
        }
        self.after_write(key);
    }

    fn note_written(&mut self, key: usize, n: usize, pending: usize) {
        let conn = &mut self.connections[key];
        trace!(
            "conn={} write: {n} of {pending} bytes",
            token::show(conn.token)
        );
        self.stats.bytes_out += n as u64;
        if n < pending {
            self.stats.partial_writes += 1;
        }
        if n > 0 {
            conn.last_activity = self.now;
        }
    }

    /// State changes that follow from how much output is left: pause, resume, finish a close.
    fn after_write(&mut self, key: usize) {
        let shutting_down = self.shutdown_deadline.is_some();
        let conn = &mut self.connections[key];
        let pending = conn.output.len();
        match conn.state() {
            State::Open if pending >= HIGH_WATER && !shutting_down => {
                conn.set_state(State::Paused);
                self.stats.backpressure_pauses += 1;
            }
            State::Paused if pending < LOW_WATER => {
                conn.set_state(State::Open);
                // Held-back requests and unread bytes raise no new edge: come back for them.
                self.revisit.push(conn.token);
            }
            State::Draining(reason) if pending == 0 => {
                match conn.ready_for_fin() {
                    Ok(true) => {}
                    Ok(false) => return, // close_notify waits for the writable edge
                    Err(e) => {
                        debug!("conn={} write error: {e}", token::show(conn.token));
                        return self.close(key, "write error");
                    }
                }
                // Our FIN goes out after the last reply; the peer reads everything, then EOF.
                let _ = conn.socket.shutdown(std::net::Shutdown::Write);
                if conn.peer_closed {
                    return self.close(key, "closed after flushing");
                }
                conn.set_state(State::Lingering(reason));
                conn.last_activity = self.now;
                self.discard_input(key);
                return;
            }
            _ => {}
        }
        if pending == 0 {
            conn.output.release_if_larger_than(KEEP_BYTES);
        }
        if conn.input.is_empty() {
            conn.input.release_if_larger_than(KEEP_BYTES);
        }
    }

    /// Reads and drops input of a closing connection, so that the final close finds nothing
    /// unread (which would turn our FIN into a RST); closes once the peer's EOF arrives.
    fn discard_input(&mut self, key: usize) {
        let token = self.connections[key].token;
        for _ in 0..READ_BUDGET / READ_CHUNK {
            let conn = &mut self.connections[key];
            match read_some(&mut conn.socket, &mut self.scratch_in) {
                Ok(Some(0)) => {
                    trace!("conn={} read while closing: EOF", token::show(token));
                    conn.peer_closed = true;
                    if matches!(conn.state(), State::Lingering(_)) {
                        return self.close(key, "closed after the peer's EOF");
                    }
                    return;
                }
                Ok(Some(n)) => {
                    trace!("conn={} discarded {n} bytes", token::show(token));
                    // Over TLS these are records, not protocol bytes: not counted.
                    if conn.tls.is_none() {
                        self.stats.bytes_in += n as u64;
                    }
                }
                Ok(None) => {
                    self.stats.read_would_block += 1;
                    return;
                }
                Err(e) => {
                    debug!("conn={} read error while closing: {e}", token::show(token));
                    return self.close(key, "read error");
                }
            }
        }
        self.revisit.push(token);
    }

    /// Delivers `room.message` to every identified session but the sender; sessions too far
    /// behind are disconnected instead.
    fn broadcast(&mut self, sender_key: usize) {
        let sender = self.connections[sender_key].session.id;
        let message = &self.room.message;
        for member in self.room.members() {
            if member == sender {
                continue;
            }
            let token = Token(member.0 as usize);
            let (key, _) = token::split(token);
            let Some(conn) = self.connections.get_mut(key).filter(|c| c.token == token) else {
                continue;
            };
            if conn.is_closing() {
                continue;
            }
            if conn.output.len() + message.len() > PUSH_CAP {
                self.doomed.push(token);
                continue;
            }
            conn.output.extend_from_slice(message);
            self.flush_later.push(token);
        }
        while let Some(token) = self.doomed.pop() {
            if let Some(key) = self.key_of(token) {
                self.stats.slow_reader_drops += 1;
                debug!("conn={} dropped: over the push cap", token::show(token));
                self.close(key, "slow reader");
            }
        }
    }

    fn flush_pushed(&mut self) {
        while let Some(token) = self.flush_later.pop() {
            if let Some(key) = self.key_of(token) {
                self.flush(key);
                if self.key_of(token).is_some() {
                    self.arm_timer(key);
                }
            }
        }
    }

    /// Makes sure the connection's timer is due no later than its next deadline. Deadlines
    /// only move later with activity, so a read or write leaves the wheel alone; the timer
    /// then fires early, finds the connection active, and is re-armed (lazy re-arming).
    fn arm_timer(&mut self, key: usize) {
        let conn = &self.connections[key];
        let Some(deadline) = conn.deadline(self.timeouts()) else {
            return;
        };
        // Never earlier than the next tick: a deadline that is already past but not acted on
        // would otherwise fire on every wakeup and spin the loop.
        let tick = self.tick_at(deadline).max(self.tick_now() + 1);
        let conn_token = conn.token;
        let timer = match conn.timer {
            None => Some((
                self.wheel.schedule(tick, Timer::Connection(conn_token)),
                tick,
            )),
            Some((id, armed)) if tick < armed && self.wheel.reset(id, tick) => Some((id, tick)),
            Some(_) => None,
        };
        if let Some(timer) = timer {
            self.connections[key].timer = Some(timer);
        }
    }

    fn fire_timers(&mut self) {
        let now_tick = self.tick_now();
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(now_tick, &mut fired);
        for (id, timer) in fired.drain(..) {
            self.stats.timers_fired += 1;
            trace!("timer fired: {timer:?}");
            match timer {
                Timer::ResumeAccept => self.resume_accept(),
                Timer::Connection(token) => {
                    let Some(key) = self.key_of(token) else {
                        continue;
                    };
                    let conn = &mut self.connections[key];
                    if conn.timer.is_some_and(|(armed, _)| armed == id) {
                        conn.timer = None;
                    }
                    self.on_connection_timer(key);
                }
            }
        }
        self.fired = fired;
    }

    fn on_connection_timer(&mut self, key: usize) {
        let now = self.now;
        let timeouts = self.timeouts();
        let conn = &mut self.connections[key];
        let token = conn.token;
        match conn.state() {
            State::Open | State::Paused | State::Verifying => {
                let idle = timeouts
                    .idle
                    .is_some_and(|timeout| now >= conn.last_activity + timeout);
                let slow = conn
                    .request_deadline(timeouts)
                    .is_some_and(|deadline| now >= deadline);
                if (idle || slow) && conn.is_handshaking() {
                    // Nothing can be said to a client that has not finished its handshake.
                    if idle {
                        self.stats.idle_timeouts += 1;
                    } else {
                        self.stats.request_timeouts += 1;
                    }
                    debug!(
                        "conn={} TLS handshake not finished in time",
                        token::show(token)
                    );
                    return self.close(key, "TLS handshake timeout");
                } else if idle || slow {
                    let (notice, reason) = if idle {
                        self.stats.idle_timeouts += 1;
                        (Notice::IdleTimeout, CloseReason::IdleTimeout)
                    } else {
                        self.stats.request_timeouts += 1;
                        (Notice::RequestTimeout, CloseReason::RequestTimeout)
                    };
                    debug!("conn={} {reason:?}", token::show(token));
                    conn.input.clear();
                    handler::write_notice(conn.session.protocol, notice, &mut conn.output);
                    self.drain(key, reason);
                    self.flush(key);
                } else if now >= conn.last_activity + QUIET {
                    conn.release_buffers();
                }
            }
            State::Draining(_) | State::Lingering(_) => {
                if now >= conn.last_activity + connection::LINGER {
                    return self.close(key, "linger deadline");
                }
            }
        }
        if self.key_of(token).is_some() {
            self.arm_timer(key);
        }
    }

    fn on_signals(&mut self) {
        let mut received = 0;
        for signal in self.signals.pending() {
            info!("received signal {signal}");
            received += 1;
        }
        for _ in 0..received {
            if self.shutdown_deadline.is_some() {
                self.exit_now = true;
                return;
            }
            self.begin_shutdown("signal");
        }
    }

    /// Stops accepting, answers every complete request already received, and turns every
    /// connection into a Draining one; the loop exits once all are closed or at the deadline.
    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        info!(
            "shutting down ({why}): {} connection(s) to flush, up to {:?}",
            self.connections.len(),
            self.config.shutdown_timeout
        );
        self.close_listeners();
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout);
        let tokens: Vec<Token> = self
            .connections
            .iter()
            .map(|(_, conn)| conn.token)
            .collect();
        for token in tokens {
            let Some(key) = self.key_of(token) else {
                continue;
            };
            if self.connections[key].state() == State::Verifying {
                // Its LOGIN is answered first: `finish_login` closes it.
                continue;
            }
            self.shut_down_connection(key);
        }
    }

    /// A connection's part of a shutdown: answer what it sent before the signal, then close.
    fn shut_down_connection(&mut self, key: usize) {
        let token = self.connections[key].token;
        if self.connections[key].state() == State::Paused {
            self.connections[key].set_state(State::Open);
        }
        if self.connections[key].may_execute() {
            // What arrived before the signal is answered: execute held-back requests,
            // then read what the socket holds.
            self.execute(key, 0);
            self.read_ready(key, usize::MAX, true);
        }
        let Some(key) = self.key_of(token) else {
            return;
        };
        if self.connections[key].state() == State::Verifying {
            return; // a LOGIN among the requests just read: `finish_login` comes back here
        }
        if !self.connections[key].is_closing() {
            self.drain(key, CloseReason::Shutdown);
        }
        self.flush(key);
        if self.key_of(token).is_some() {
            self.arm_timer(key);
        }
    }

    /// The waker fired: a shutdown was requested, or login results are waiting (or both).
    fn on_wake(&mut self) {
        if self.shutdown_requested.swap(false, Ordering::SeqCst) {
            self.begin_shutdown("shutdown requested");
        }
        while let Some(result) = self.verifier.as_ref().and_then(VerifierPool::try_recv) {
            self.logins_in_flight = self.logins_in_flight.saturating_sub(1);
            self.finish_login(result);
        }
    }

    /// Hands the LOGIN that stopped `execute` to the workers; the connection waits in
    /// `Verifying`. Over `MAX_LOGINS_IN_FLIGHT` it is answered "busy" at once instead.
    fn start_login(&mut self, key: usize) {
        let Some(credentials) = self.logins.pending.take() else {
            return;
        };
        if self.verifier.is_none() {
            match VerifierPool::new(
                Arc::clone(&self.users),
                login_threads(),
                Arc::clone(&self.waker),
            ) {
                Ok(pool) => self.verifier = Some(pool),
                Err(e) => warn!("cannot start the login workers: {e}"),
            }
        }
        let conn = &mut self.connections[key];
        let Some(verifier) = self
            .verifier
            .as_ref()
            .filter(|_| self.logins_in_flight < MAX_LOGINS_IN_FLIGHT)
        else {
            drop(credentials);
            let out = if conn.output.is_empty() {
                &mut self.scratch_out
            } else {
                &mut conn.output
            };
            handler::abandon_login(&mut conn.session, out);
            return;
        };
        trace!(
            "conn={} login for {:?} sent to the workers",
            token::show(conn.token),
            String::from_utf8_lossy(&credentials.user)
        );
        verifier.submit(LoginJob {
            ticket: conn.token.0 as u64,
            user: credentials.user,
            password: credentials.password,
        });
        self.logins_in_flight += 1;
        conn.set_state(State::Verifying);
    }

    /// A verdict from the workers: answer the LOGIN, then go on with the requests that
    /// waited behind it. A verdict for a connection that has gone, or has begun closing
    /// meanwhile (idle timeout, shutdown timeout), is dropped.
    fn finish_login(&mut self, result: LoginResult) {
        let token = Token(result.ticket as usize);
        let Some(key) = self.key_of(token) else {
            trace!(
                "conn={} login result for a closed connection",
                token::show(token)
            );
            return;
        };
        let conn = &mut self.connections[key];
        if conn.state() != State::Verifying {
            return;
        }
        debug!(
            "conn={} login {}",
            token::show(token),
            if result.ok { "accepted" } else { "refused" }
        );
        let outcome = handler::finish_login(
            &mut conn.session,
            result.ok,
            &mut conn.output,
            &mut self.stats,
        );
        conn.set_state(State::Open);
        if outcome == Outcome::LoginFailures {
            conn.input.clear();
            self.drain(key, CloseReason::LoginFailures);
        } else if self.shutdown_deadline.is_some() {
            self.shut_down_connection(key);
            return;
        } else {
            // The requests held behind the LOGIN, then whatever the socket holds.
            self.revisit.push(token);
        }
        self.flush(key);
        if self.key_of(token).is_some() {
            self.arm_timer(key);
        }
    }

    /// Stops executing a connection's requests; what it is owed is flushed, then it closes.
    /// Its chat name is free from now on: the session is over even if the socket lingers.
    fn drain(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.connections[key];
        conn.set_state(State::Draining(reason));
        self.room.leave(&conn.session);
    }

    /// Removes a connection for good. Replies still owed are lost, so callers owe none (or
    /// have given up on delivering them).
    fn close(&mut self, key: usize, why: &str) {
        let mut conn = self.connections.remove(key);
        debug!("conn={} closed: {why}", token::show(conn.token));
        if let Some((id, _)) = conn.timer {
            self.wheel.cancel(id);
        }
        self.room.leave(&conn.session);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if conn.rejected {
            self.rejecting -= 1;
        }
        self.stats.active -= 1;
        self.stats.closed += 1;
    }

    /// The tick at or after `instant`: a timer set for it never fires before `instant`.
    fn tick_at(&self, instant: Instant) -> u64 {
        nanos_since(self.epoch, instant).div_ceil(TICK_NANOS)
    }

    /// The tick `now` falls in.
    fn tick_now(&self) -> u64 {
        nanos_since(self.epoch, self.now) / TICK_NANOS
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.epoch + TICK * u32::try_from(tick).unwrap_or(u32::MAX)
    }
}

/// Nanoseconds from `epoch` to `instant` (0 if earlier); `u64` lasts 584 years.
fn nanos_since(epoch: Instant, instant: Instant) -> u64 {
    let elapsed = instant.saturating_duration_since(epoch);
    elapsed.as_secs() * 1_000_000_000 + u64::from(elapsed.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    fn server() -> Server {
        let config = Config::on_free_ports();
        Server::bind(config).unwrap()
    }

    /// Turns the loop until `done` holds, for at most five seconds.
    fn turn_until(server: &mut Server, done: impl Fn(&Server) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(server) {
            assert!(Instant::now() < deadline, "condition not reached in 5 s");
            server.turn(Some(Duration::from_millis(20))).unwrap();
        }
    }

    fn only_token(server: &Server) -> Token {
        let (_, conn) = server.connections.iter().next().unwrap();
        conn.token
    }

    #[test]
    fn an_event_for_a_closed_connection_does_not_reach_the_next_one_in_its_slot() {
        let mut server = server();
        let _first = StdStream::connect(server.line_addr()).unwrap();
        turn_until(&mut server, |s| s.connections.len() == 1);
        let stale = only_token(&server);
        let (key, _) = token::split(stale);
        server.close(key, "test");

        let mut second = StdStream::connect(server.line_addr()).unwrap();
        turn_until(&mut server, |s| s.connections.len() == 1);
        let fresh = only_token(&server);
        assert_eq!(token::split(fresh).0, key, "the slab reused the slot");
        assert_ne!(fresh, stale);

        second.write_all(b"PING\n").unwrap();
        // Give the bytes time to reach the server's socket; only the stale event is delivered.
        std::thread::sleep(Duration::from_millis(50));
        let bytes_in = server.stats.bytes_in;
        server.connection_ready(stale, Readiness::ReadToEnd);
        assert_eq!(
            server.stats.bytes_in, bytes_in,
            "stale event read the new socket"
        );
        assert_eq!(server.connections.len(), 1);

        // The connection's own event still works.
        turn_until(&mut server, |s| s.stats.bytes_out >= 5);
        second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = [0u8; 5];
        second.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"PONG\n");
    }

    #[test]
    fn ticks_round_deadlines_up_and_now_down() {
        let server = server();
        let epoch = server.epoch;
        assert_eq!(server.tick_at(epoch), 0);
        assert_eq!(server.tick_at(epoch + Duration::from_millis(1)), 1);
        assert_eq!(server.tick_at(epoch + TICK), 1);
        assert_eq!(server.tick_at(epoch + TICK + Duration::from_nanos(1)), 2);
        assert!(
            server.instant_of(server.tick_at(epoch + Duration::from_millis(25)))
                >= epoch + Duration::from_millis(25)
        );
    }
}
