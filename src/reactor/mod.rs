//! The event loop: one thread, one `mio::Poll`, every connection in one `Slab`.
//!
//! One turn of the loop:
//!
//! ```text
//! poll(timeout = time to the next timer, 0 if work was deferred)
//!   -> for each event: listener => accept until WouldBlock (at most ACCEPT_BUDGET), admit each
//!                      signal   => begin a graceful shutdown (a second one: exit now)
//!                      waker    => a shutdown asked for by a ShutdownHandle, login verdicts
//!                                  from the verifier threads: answer them; with several
//!                                  workers, sockets and chat handed over by the others
//!                                  (`fleet`): admit them, deliver it
//!                      conn     => read until drained or READ_BUDGET, execute every complete
//!                                  request, write the replies with one write
//!   -> revisit what was deferred last turn (budgets spent, connections un-paused)
//!   -> flush connections that received chat pushes
//!   -> advance the timer wheel: idle, request and TLS-handshake timeouts, linger deadlines,
//!      buffers to give back, accept pauses
//!   -> let connections throttled for client memory read again, as far as memory allows
//!   -> reap: free the slab slots of the connections closed during this turn
//!   -> after a large drop in client memory, have the allocator give the pages back
//! ```
//!
//! Every connection settled after work is charged its buffers in the client-memory ledger
//! ([`memory`]); reads into large requests share a per-wakeup bulk budget.
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
//!
//! **Liveness.** Any call that may write may close: a write fails on a reset socket, a
//! broadcast drops a slow reader. Closing never frees anything the caller may still hold:
//! [`Server::close`] only marks the connection `Closed` (deregistered, its timer cancelled,
//! counted) and queues its key; the slab slot is freed by `reap` at the end of the turn. So a
//! key taken in this turn stays valid for the whole turn, and every operation on a Closed
//! connection is a no-op (its state allows no read, no write and no deadline). Nothing looks a
//! key up again to learn whether the connection still exists. Across turns connections are
//! named by tokens, which carry a generation ([`token`]): a stale token (an event, a revisit,
//! a login verdict, a timer for a connection since closed, whose slot may hold a newcomer) is
//! recognised and dropped.
//!
//! The whole state of one loop is this one `Server` value: no globals, so several loops can
//! run side by side, one per core.

pub mod accept;
pub mod activation;
pub mod cluster;
pub mod connection;
pub mod fleet;
pub mod logins;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod tls;
pub mod token;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{Level, debug, info, log_enabled, trace, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::auth::Users;
use crate::buffer::{Buffer, HIGH_WATER, LOW_WATER, PUSH_CAP};
use crate::config::Config;
use crate::handler::{
    ClaimVerdict, Context, Credentials, Limits, LoginRules, Notice, Outcome, Room, Session,
    SessionId,
};
use crate::stats::Stats;
use crate::timer_wheel::{TimerId, TimerWheel};
use accept::{Acceptor, Burst, ListenerId};
use activation::Inherited;
use cluster::ClusterBridge;
use connection::{
    CloseReason, Connection, Discarded, QUIET, State, Timeouts, Written, count_written,
};
use fleet::{Census, Fleet, Mailbox};
use logins::{LoginBridge, Logins, Submitted};
use memory::Budget;
use metrics::{Endpoint, LoopMetrics};
use proxy::Preamble;
use tls::TlsSession;

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

/// Bytes read per wakeup, over all connections, into requests that take more than one read
/// (large frames, long lines). Past it, such connections wait for the next wakeup. A wakeup
/// that read 256 KiB from each of a thousand connections sending large requests would keep
/// every other client waiting for that quarter gigabyte to be copied (and, the first time,
/// faulted in); with this, the wait behind bulk transfers is about a millisecond, and the
/// transfers themselves lose little: the next wakeup comes at once (poll with no timeout).
const BULK_BUDGET: usize = 16 * READ_CHUNK;

/// Under socket activation, how long a shutdown waits for the first request of a connection
/// that has sent none (see `Server::spares`). A client sends its request right after its
/// connect completes, so this only has to outlast a scheduling delay on its side; it is
/// short because a silent connection holds up the exit by this much, and with it the start
/// of the next process.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Events taken from one `poll`.
const EVENTS_CAPACITY: usize = 1024;

/// A buffer that emptied and holds more than this is freed at once rather than at the quiet
/// deadline: a connection that once sent a 10 MiB frame must not keep 10 MiB.
const KEEP_BYTES: usize = 64 * 1024;

/// Connections accepted over `--max-connections` are told so and given `LINGER` to read it;
/// past this many of them at once, new ones are closed without the courtesy.
const MAX_REJECTING: usize = 1024;

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
    /// Look at this connection: idle? too slow with its request? quiet enough to free its
    /// buffers? past its linger?
    Connection(Token),
    /// The pause after running out of descriptors is over.
    ResumeAccept,
    /// Look at this metrics client ([`metrics`]): too slow, or done lingering?
    Metrics(usize),
}

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

/// One reactor: its poll, listeners, connections, timers and counters.
pub struct Server {
    config: Config,
    limits: Limits,
    login_rules: LoginRules,
    poll: Poll,
    events: Events,
    acceptor: Acceptor,
    /// The sockets of one accept burst, on their way to `admit`. Reused.
    accepted: Vec<(TcpStream, SocketAddr)>,
    /// The certificate and settings of the TLS listeners, if any.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    signals: Signals,
    /// Woken by a [`ShutdownHandle`] (which sets `shutdown_requested`) and by the login
    /// workers (which leave a verdict in their channel).
    waker: Arc<Waker>,
    shutdown_requested: Arc<AtomicBool>,
    /// Verifies passwords off the loop; see [`logins`].
    logins: LoginBridge,
    /// With `--cluster-redis`: HELLO claims and SAYs to the other nodes; see [`cluster`].
    cluster: Option<ClusterBridge>,
    connections: Slab<Connection>,
    /// The generation given to the last connection accepted.
    generation: u32,
    /// Refusals (over `--max-connections`) still telling their client so.
    rejecting: usize,
    /// Keys of the connections closed during this turn, freed at its end.
    closed: Vec<usize>,
    wheel: TimerWheel<Timer>,
    fired: Vec<(TimerId, Timer)>,
    /// Tick 0 of the wheel.
    epoch: Instant,
    /// The time of the current wakeup: read once per wakeup, used for every deadline in it.
    now: Instant,
    /// The tick `now` falls in, worked out once per wakeup.
    now_tick: u64,
    /// Bytes read during this wakeup into requests larger than one read; see `BULK_BUDGET`.
    bulk_read: usize,
    /// Connections whose bulk reads wait for the next wakeup, served first then.
    deferred: Vec<Token>,
    /// Every read lands here first; only the unfinished tail of a request is copied into the
    /// connection's own buffer. So a connection between requests owns no input memory.
    scratch_in: Box<[u8]>,
    /// Replies of the connection being served, when it had nothing pending; written with one
    /// `write`, and only what the socket did not take is copied to the connection.
    scratch_out: Buffer,
    room: Room,
    stats: Stats,
    /// The loop's own figures for the metrics endpoint: busy time, events per wakeup, bytes
    /// per read.
    loop_metrics: LoopMetrics,
    /// `--metrics-addr` (worker 0 only) and its clients; see [`metrics`].
    metrics: Endpoint,
    /// This worker's place among the loops of the process (alone, with `--workers 1`).
    mailbox: Mailbox,
    /// What STATS reports: these counters and the other workers'.
    census: Census,
    /// Workers that were handed sockets or posted chat messages this turn, to wake.
    to_wake: Vec<usize>,
    /// STATS requests waiting for the other workers' next publish, each with the publish
    /// counts that meet it, oldest first.
    censuses: Vec<(Token, Box<[u64]>)>,
    /// Work deferred to the next turn: listeners and connections that stopped early.
    revisit: Vec<Token>,
    /// Connections that received chat pushes during this turn.
    flush_later: Vec<Token>,
    /// Slow readers to disconnect after a broadcast.
    doomed: Vec<usize>,
    /// `--client-memory`; see [`memory`].
    budget: Option<Budget>,
    /// Connections not read for lack of client memory, with what each may still need.
    throttled: Vec<(usize, Token)>,
    /// Every connection's footprint and key, largest first, while choosing whom to evict.
    by_size: Vec<(usize, usize)>,
    /// The highest `client_memory` since the allocator last gave memory back.
    trim_high: u64,
    /// Set once a shutdown has begun: when it must be over.
    shutdown_deadline: Option<Instant>,
    /// A second signal: exit now.
    exit_now: bool,
    /// This worker owns listeners that are still open: until they close, sockets may be
    /// accepted here (and, with least-conn, handed to the other workers).
    listening: bool,
}

impl Server {
    /// Binds the listeners and sets up the loop, alone in its process; nothing is served
    /// until [`Server::run`].
    pub fn bind(config: Config) -> io::Result<Server> {
        Server::bind_listeners(config, None)
    }

    /// Like [`Server::bind`], serving the `inherited` listeners instead of binding the
    /// configured addresses, when a service manager passed some ([`activation`]).
    pub fn bind_listeners(config: Config, inherited: Option<Inherited>) -> io::Result<Server> {
        let (logins, tls) = Server::shared_setup(&config)?;
        let seat = Fleet::seats(&config, 1, logins, tls, inherited.is_some())?
            .pop()
            .ok_or_else(|| io::Error::other("no seat for the one worker"))?;
        Server::bind_worker(config, seat, inherited)
    }

    /// What every worker of the process shares and that is read from files once: the users
    /// (in the login pool) and the TLS configuration.
    pub fn shared_setup(
        config: &Config,
    ) -> io::Result<(Arc<Logins>, Option<Arc<rustls::ServerConfig>>)> {
        if config.require_login && config.users.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--require-login needs --users FILE: without a users file nobody could log in",
            ));
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load_config(cert, key)?),
            _ => None,
        };
        Ok((Logins::new(load_users(config)?), tls))
    }

    /// Sets up one worker of a fleet ([`fleet`]) in its seat (which brings its signals): its
    /// listeners, if it has any of its own (worker 0, or every worker with `--balance
    /// reuseport`), and its share of the client-memory budget. Under socket activation worker 0 is given
    /// the `inherited` listeners; the others, none.
    pub fn bind_worker(
        config: Config,
        seat: fleet::Seat,
        inherited: Option<Inherited>,
    ) -> io::Result<Server> {
        let fleet::Seat {
            poll,
            waker,
            signals,
            mailbox,
        } = seat;
        let fleet = mailbox.fleet();
        let workers = fleet.workers();
        let mut acceptor = match inherited {
            Some(inherited) => Acceptor::inherited(inherited),
            None if fleet.listens(mailbox.index()) && !fleet.inherits_listeners() => {
                Acceptor::bind(&config, fleet.reuse_port())?
            }
            None => Acceptor::none(),
        };
        let registry = poll.registry();
        acceptor.register(registry)?;
        let mut metrics = Endpoint::bind(&config, mailbox.index() == 0)?;
        metrics.register(registry)?;
        let login_rules = LoginRules {
            required: config.require_login,
            checked: config.users.is_some(),
            max_unauthenticated_bytes: config.max_unauthenticated_request_bytes,
        };
        // An even share each: a connection's memory is its own worker's business.
        let budget = Budget::new(config.client_memory().map(|bytes| (bytes / workers).max(1)));
        let room = match fleet.names() {
            Some(names) => Room::shared(names),
            None => Room::default(),
        };
        let cluster = fleet
            .cluster()
            .map(|cluster| ClusterBridge::new(cluster, Arc::clone(&waker)));
        let room = if cluster.is_some() {
            room.clustered()
        } else {
            room
        };
        let logins = LoginBridge::new(fleet.logins(), Arc::clone(&waker));
        let tls_config = fleet.tls();
        let census = mailbox.census();
        let listening = fleet.listens(mailbox.index());
        let now = Instant::now();
        let server = Server {
            limits: Limits {
                max_line_bytes: config.max_line_bytes,
                max_frame_bytes: config.max_frame_bytes,
            },
            login_rules,
            config,
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            acceptor,
            accepted: Vec::new(),
            tls_config,
            signals,
            logins,
            cluster,
            waker,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            connections: Slab::new(),
            generation: 0,
            rejecting: 0,
            closed: Vec::new(),
            wheel: TimerWheel::new(WHEEL_SLOTS, 0),
            fired: Vec::new(),
            epoch: now,
            now,
            now_tick: 0,
            bulk_read: 0,
            deferred: Vec::new(),
            scratch_in: vec![0; READ_CHUNK].into_boxed_slice(),
            scratch_out: Buffer::new(),
            room,
            stats: Stats::default(),
            loop_metrics: LoopMetrics::default(),
            metrics,
            mailbox,
            census,
            to_wake: Vec::new(),
            censuses: Vec::new(),
            revisit: Vec::new(),
            flush_later: Vec::new(),
            doomed: Vec::new(),
            budget,
            throttled: Vec::new(),
            by_size: Vec::new(),
            trim_high: 0,
            shutdown_deadline: None,
            exit_now: false,
            listening,
        };
        server.log_budget();
        Ok(server)
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
        self.acceptor.addr(id)
    }

    /// Where the metrics listener is bound (`--metrics-addr`, on worker 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.addr()
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
        let served = loop {
            match self.turn(None) {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        };
        // Whatever ended the loop, the other workers must not wait for this one's listeners.
        self.stop_listening();
        let alone = self.mailbox.fleet().is_alone();
        if !alone {
            // Whatever ended the loop, no STATS may wait for this worker any more.
            self.mailbox
                .fleet()
                .retire(self.mailbox.index(), &self.stats, &self.loop_metrics);
        }
        served?;
        if alone {
            if let Some(cluster) = self.mailbox.fleet().cluster() {
                cluster.figures(&mut self.stats);
            }
            log_summary(&self.stats);
        } else {
            // The fleet logs the sums once every worker is done.
            debug!("worker done: served {} connections", self.stats.accepted);
        }
        Ok(self.stats)
    }

    /// One turn of the loop (see the module doc); `Ok(true)` when the server is done.
    /// `max_wait` caps the poll timeout (tests drive the loop turn by turn).
    pub fn turn(&mut self, max_wait: Option<Duration>) -> io::Result<bool> {
        let timeout = match (self.poll_timeout(), max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Busy from the last wakeup until now: the second of the turn's two clock reads.
        self.loop_metrics.record_busy(self.now, Instant::now());
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.now = Instant::now();
        self.now_tick = nanos_since(self.epoch, self.now) / TICK_NANOS;
        self.bulk_read = 0;
        self.stats.wakeups += 1;
        self.handle_events();
        if self.exit_now {
            info!("second signal: exiting now");
            return Ok(true);
        }
        self.handle_revisits();
        self.queue_deferred();
        self.flush_pushed();
        self.fire_timers();
        self.resume_throttled();
        self.reap();
        self.trim_allocator();
        if !self.mailbox.fleet().is_alone() {
            self.tell_fleet();
        }
        let Some(deadline) = self.shutdown_deadline else {
            return Ok(false);
        };
        if self.connections.is_empty() && self.nothing_more_to_come() {
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
            self.reap();
            return Ok(true);
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
            trace_events(&events);
        }
        let mut count = 0;
        for event in events.iter() {
            count += 1;
            match event.token() {
                token::SIGNALS => self.on_signals(),
                token::WAKER => self.on_wake(),
                listener if let Some(id) = ListenerId::of_token(listener) => self.on_listener(id),
                metrics if token::is_metrics(metrics) => self.on_metrics(metrics),
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
        self.loop_metrics.record_wakeup(count);
        self.events = events;
    }

    fn handle_revisits(&mut self) {
        if self.revisit.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.revisit);
        for &token in &pending {
            if let Some(id) = ListenerId::of_token(token) {
                self.on_listener(id);
                continue;
            }
            if token::is_metrics(token) {
                self.on_metrics(token);
                continue;
            }
            let Some(key) = self.key_of(token) else {
                continue;
            };
            let conn = &mut self.connections[key];
            conn.unmark_queued();
            // Requests held back while the connection was paused or verifying come first.
            if conn.may_execute() && conn.holds_requests() {
                self.execute(key, 0);
            }
            // Edges that came while it was paused were not acted on: read to the end.
            self.read_ready(key, READ_BUDGET, true);
            self.settle(key);
        }
        // Keep the allocation of the longer of the two lists.
        pending.clear();
        if self.revisit.is_empty() {
            self.revisit = pending;
        }
    }

    /// Connections left over by the bulk budget are revisited next turn, ahead of the rest,
    /// so that none waits twice in a row.
    fn queue_deferred(&mut self) {
        if !self.deferred.is_empty() {
            self.deferred.append(&mut self.revisit);
            std::mem::swap(&mut self.deferred, &mut self.revisit);
        }
    }

    /// Whether this wakeup's bulk budget is spent and the connection is receiving a large
    /// request, so that its next read waits for the next wakeup. Not during a shutdown: what
    /// arrived before the signal is read in the shutdown's own turn.
    #[inline]
    fn bulk_spent(&self, key: usize) -> bool {
        self.bulk_read >= BULK_BUDGET && self.shutdown_deadline.is_none() && {
            let conn = &self.connections[key];
            conn.may_execute() && conn.receives_bulk(READ_CHUNK)
        }
    }

    /// Counts a full read into a large request against the wakeup's bulk budget; `true`: the
    /// connection has had its read for this wakeup and is revisited in the next.
    fn count_bulk(&mut self, key: usize, n: usize) -> bool {
        if !self.connections[key].receives_bulk(READ_CHUNK) {
            return false;
        }
        self.bulk_read += n;
        true
    }

    /// Queues a connection to be served again (next turn, or later in this one if the
    /// revisits have not run yet), once however often it is asked.
    fn revisit_next_turn(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        if conn.mark_queued() {
            self.revisit.push(conn.token());
        }
    }

    /// A connection left for the next wakeup by the bulk budget: served first then. Once,
    /// however often it is asked: every new segment from a sender raises an event, and a
    /// connection queued once per event would pile up while the budget stays spent.
    fn defer(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        if conn.mark_queued() {
            self.deferred.push(conn.token());
        }
    }

    /// A throttled connection that must be looked at anyway: its peer reset or closed.
    #[cold]
    fn wake_throttled(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        if conn.state() == State::Throttled {
            conn.set_state(State::Open);
        }
    }

    /// The slab key of a live connection token; `None` for a stale one (its connection has
    /// closed, and its slot may hold a newer one).
    fn key_of(&self, token: Token) -> Option<usize> {
        let (key, _) = token::split(token);
        self.connections
            .get(key)
            .filter(|conn| conn.token() == token && !conn.is_closed())
            .map(|_| key)
    }

    /// One listener is readable (or was left with connections waiting): accept a burst and
    /// admit each socket.
    fn on_listener(&mut self, id: ListenerId) {
        let mut batch = std::mem::take(&mut self.accepted);
        let burst = self.acceptor.accept_ready(id, self.now, &mut batch);
        for (socket, peer) in batch.drain(..) {
            self.place(socket, peer, id);
        }
        self.accepted = batch;
        self.wake_others();
        match burst {
            Burst::Drained => {}
            // More may be waiting, and no new edge will say so.
            Burst::BudgetSpent => self.revisit.push(id.token()),
            Burst::Paused(resume) => {
                self.stats.accept_emfile += 1;
                let tick = self.tick_at(resume);
                self.wheel.schedule(tick, Timer::ResumeAccept);
            }
        }
    }

    /// Sets up an accepted socket: a connection in the slab, or a refusal if full.
    ///
    /// A refusal is a courtesy that costs a connection slot for up to `LINGER`; a TLS client
    /// would need a whole handshake before it could read it, so TLS refusals are plain closes.
    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr, id: ListenerId) {
        self.stats.accepted += 1;
        if self.config.proxy_protocol && !proxy::is_trusted(&self.config.proxy_from, peer.ip()) {
            debug!("refusing {peer}: not in --proxy-from, closed at once");
            self.stats.proxy_errors += 1;
            self.stats.closed += 1;
            return self.mailbox.fleet().leave(self.mailbox.index());
        }
        let full = !self.mailbox.fleet().take_slot(self.config.max_connections);
        if full {
            self.stats.rejected_full += 1;
            if self.rejecting >= MAX_REJECTING || id.is_tls() {
                debug!("refusing {peer}: server full, closed at once");
                self.stats.closed += 1;
                return self.mailbox.fleet().leave(self.mailbox.index());
            }
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        self.generation = token::next_generation(self.generation);
        let conn_token = token::connection(key, self.generation);
        let registry = self.poll.registry();
        if let Err(e) = registry.register(
            &mut socket,
            conn_token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register {peer}: {e}");
            return self.never_served(full);
        }
        let tls = match (&self.tls_config, id.is_tls()) {
            (Some(config), true) => match TlsSession::new(config, self.now) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => {
                    warn!("TLS session for {peer}: {e}");
                    let _ = registry.deregister(&mut socket);
                    return self.never_served(full);
                }
            },
            _ => None,
        };
        let session = Session::new(id.protocol(), SessionId(conn_token.0 as u64));
        let mut conn = Connection::new(socket, conn_token, session, tls, self.now);
        if !full {
            conn.hold_slot();
        }
        self.stats.active += 1;
        let shown = token::show(conn_token);
        if full {
            debug!("conn={shown} from {peer} refused: server full");
            self.rejecting += 1;
            conn.notify(Notice::ServerFull);
            conn.set_state(State::draining(CloseReason::ServerFull));
        } else if self.config.proxy_protocol {
            debug!(
                "conn={shown} accepted from {peer} ({}), awaiting its PROXY header",
                id.name()
            );
            conn.await_proxy_header(self.now);
        } else {
            debug!("conn={shown} accepted from {peer} ({})", id.name());
        }
        entry.insert(conn);
        if !full && !self.config.proxy_protocol {
            self.admit_address(key, peer.ip());
        }
        if self.shutdown_deadline.is_some() {
            // Handed over by the acceptor just before its shutdown began.
            return self.shut_down_connection(key);
        }
        self.settle(key);
    }

    /// An accepted socket that could not be set up: counted as closed, its slot given back.
    fn never_served(&mut self, refusal: bool) {
        self.stats.closed += 1;
        let fleet = self.mailbox.fleet();
        if !refusal {
            fleet.free_slot();
        }
        fleet.leave(self.mailbox.index());
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
        if readiness == Readiness::ReadToEnd {
            // A throttled connection whose peer has reset or finished sending is read now:
            // the read finds the error (and closes it) or the rest of its request.
            self.wake_throttled(key);
        }
        if readiness != Readiness::Writable {
            self.read_ready(key, READ_BUDGET, readiness == Readiness::ReadToEnd);
        }
        if self.shutdown_deadline.is_some() && self.connections[key].state() == State::Open {
            // Spared by the shutdown until its first requests (`spares`): now served?
            return self.shut_down_connection(key);
        }
        self.settle(key);
    }

    /// After any work on a connection: write what it is owed, bring the client-memory ledger
    /// up to date with it, then make sure its timer is due by its next deadline. All do
    /// nothing for a connection that closed meanwhile.
    fn settle(&mut self, key: usize) {
        self.flush(key);
        self.account(key);
        self.arm_timer(key);
    }

    /// Reads until the socket is drained, `budget` bytes were read, or the connection stops
    /// accepting input; executes what each read completes. A short read counts as drained
    /// unless `to_end`: then only WouldBlock or EOF does, because an EOF that arrived with the
    /// last bytes raises no edge of its own.
    fn read_ready(&mut self, key: usize, budget: usize, to_end: bool) {
        let conn = &self.connections[key];
        let token = conn.token();
        let to_end = to_end || !conn.short_read_drains();
        let mut left = budget;
        loop {
            if self.bulk_spent(key) {
                return self.defer(key);
            }
            let conn = &mut self.connections[key];
            match conn.state() {
                State::Open => {}
                State::AwaitingProxy => {
                    match self.read_preamble(key) {
                        Preamble::Done(fresh) => self.execute(key, fresh),
                        Preamble::Waiting | Preamble::Closed => return,
                    }
                    continue;
                }
                State::Paused | State::Verifying | State::Throttled | State::Closed => return,
                State::Draining { .. } | State::Lingering(_) => return self.discard_input(key),
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
                    // Everything complete has been executed; an unfinished request never will be.
                    conn.forget_input();
                    return self.drain(key, CloseReason::PeerClosed);
                }
                Ok(Some(n)) => {
                    trace!("conn={} read: {n} bytes", token::show(token));
                    self.stats.bytes_in += n as u64;
                    self.loop_metrics.record_read(n);
                    conn.touch(self.now);
                    self.execute(key, n);
                    if n < self.scratch_in.len() && !to_end {
                        return; // drained: later bytes raise a new edge
                    }
                    left = left.saturating_sub(n);
                    if left == 0 || self.count_bulk(key, n) {
                        return self.revisit_next_turn(key);
                    }
                }
            }
        }
    }

    /// Executes the requests completed by the `fresh` bytes just read into `scratch_in`
    /// (joined to the connection's unfinished ones, if any), then writes the replies.
    fn execute(&mut self, key: usize, fresh: usize) {
        let out_limit = self.out_limit();
        let room = match self.budget {
            Some(budget) if self.connections[key].holds_requests() => {
                budget.room(self.stats.client_memory)
            }
            _ => usize::MAX,
        };
        let mut offset =
            self.connections[key].join_held(&self.scratch_in[..fresh], self.limits, room);
        let mut executed_any = false;
        loop {
            let mut cx = Context {
                limits: self.limits,
                room: &mut self.room,
                stats: &mut self.stats,
                totals: &self.census,
                logins: self.login_rules,
            };
            let Some((processed, over_limit)) = self.connections[key].execute_some(
                &self.scratch_in[..fresh],
                &mut offset,
                &mut self.scratch_out,
                out_limit,
                &mut cx,
            ) else {
                break;
            };
            executed_any |= processed.consumed > 0;
            match processed.outcome {
                // Write before executing more: the client may be keeping up after all.
                Outcome::Continue if over_limit => self.write_replies(key),
                Outcome::Continue => break,
                Outcome::Broadcast(message) => self.broadcast(key, &message),
                Outcome::Quit => self.drain(key, CloseReason::Quit),
                Outcome::ProtocolError => self.drain(key, CloseReason::ProtocolError),
                Outcome::Login(credentials) => self.start_login(key, *credentials),
                Outcome::LoginFailures => self.drain(key, CloseReason::LoginFailures),
                Outcome::Claim(name) => self.start_claim(key, name),
                Outcome::Census => self.start_census(key),
            }
        }
        let unexecuted = &self.scratch_in[offset..fresh];
        if self.connections[key].keep_unexecuted(unexecuted, fresh > 0, executed_any, self.now) {
            self.stats.partial_reads += 1;
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
        if conn.is_closed() {
            self.scratch_out.clear();
            return;
        }
        match conn.send_batch(&mut self.scratch_out) {
            Ok(written) => self.note_written(key, written),
            Err(e) => {
                debug!("conn={} write error: {e}", token::show(conn.token()));
                return self.close(key, "write error");
            }
        }
        // A batch of large replies must not leave the loop holding megabytes for good.
        self.scratch_out.release_if_larger_than(KEEP_BYTES);
        self.after_write(key);
    }

    /// Writes the connection's pending output: one `write`, since one that does not take
    /// everything has filled the socket buffer and a writable edge will follow.
    fn flush(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        if conn.is_closed() {
            return;
        }
        match conn.flush() {
            Ok(Some(written)) => self.note_written(key, written),
            // Nothing owed and nothing to decide: an Open connection's output is as the last
            // write left it (a Draining one may still owe its FIN).
            Ok(None) if conn.state() == State::Open => return,
            Ok(None) => {}
            Err(e) => {
                debug!("conn={} write error: {e}", token::show(conn.token()));
                return self.close(key, "write error");
            }
        }
        self.after_write(key);
    }

    fn note_written(&mut self, key: usize, written: Written) {
        let conn = &mut self.connections[key];
        if written.taken == 0 && written.offered > 0 {
            trace!("conn={} write: WouldBlock", token::show(conn.token()));
        } else {
            trace!(
                "conn={} write: {} of {} bytes",
                token::show(conn.token()),
                written.taken,
                written.offered
            );
        }
        if count_written(written, &mut self.stats) {
            conn.touch(self.now);
        }
    }

    /// State changes that follow from how much output is left: pause, resume, finish a close.
    fn after_write(&mut self, key: usize) {
        let shutting_down = self.shutdown_deadline.is_some();
        let conn = &mut self.connections[key];
        let pending = conn.pending_output();
        match conn.state() {
            State::Open if pending >= HIGH_WATER && !shutting_down => {
                conn.set_state(State::Paused);
                self.stats.backpressure_pauses += 1;
            }
            State::Paused if pending < LOW_WATER => {
                conn.set_state(State::Open);
                conn.release_large_buffers(KEEP_BYTES);
                // Held-back requests and unread bytes raise no new edge: come back for them.
                return self.revisit_next_turn(key);
            }
            State::Draining { reason, peer_done } if pending == 0 => {
                return self.finish_draining(key, reason, peer_done);
            }
            State::Closed => return,
            _ => {}
        }
        conn.release_large_buffers(KEEP_BYTES);
    }

    /// Everything owed is written: our FIN goes out after the last reply, so the peer reads
    /// everything, then EOF. From here the session is over (counted `closed`, its slot free);
    /// the socket lingers until the peer's EOF, unless that came already.
    fn finish_draining(&mut self, key: usize, reason: CloseReason, peer_done: bool) {
        self.release_slot(key);
        let conn = &mut self.connections[key];
        match conn.send_fin() {
            Ok(true) => {}
            Ok(false) => return, // close_notify waits for the writable edge
            Err(e) => {
                debug!("conn={} write error: {e}", token::show(conn.token()));
                return self.close(key, "write error");
            }
        }
        if peer_done {
            return self.close(key, "closed after flushing");
        }
        let refusal = conn.is_refusal();
        conn.set_state(State::Lingering(reason));
        conn.touch(self.now);
        self.end_session(refusal);
        self.stats.lingering += 1;
        self.discard_input(key);
    }

    /// Reads and drops input of a closing connection, so that the final close finds nothing
    /// unread (which would turn our FIN into a RST); closes once the peer's EOF arrives after
    /// our FIN.
    fn discard_input(&mut self, key: usize) {
        let token = self.connections[key].token();
        for _ in 0..READ_BUDGET / READ_CHUNK {
            let conn = &mut self.connections[key];
            match conn.discard(&mut self.scratch_in) {
                Ok(Discarded::Eof) => {
                    trace!("conn={} read while closing: EOF", token::show(token));
                    if matches!(conn.state(), State::Lingering(_)) {
                        return self.close(key, "closed after the peer's EOF");
                    }
                    return conn.note_peer_eof();
                }
                Ok(Discarded::Dropped { protocol_bytes }) => {
                    trace!("conn={} discarded input", token::show(token));
                    self.stats.bytes_in += protocol_bytes as u64;
                }
                Ok(Discarded::Drained) => {
                    self.stats.read_would_block += 1;
                    return;
                }
                Err(e) => {
                    debug!("conn={} read error while closing: {e}", token::show(token));
                    return self.close(key, "read error");
                }
            }
        }
        self.revisit_next_turn(key);
    }

    /// Delivers `message` to every identified session but the sender; sessions too far
    /// behind are disconnected instead.
    fn broadcast(&mut self, sender_key: usize, message: &[u8]) {
        let sender = self.connections[sender_key].session().id;
        if !self.mailbox.fleet().is_alone() {
            self.post_to_others(message);
        }
        if let Some(cluster) = &self.cluster {
            cluster.publish(message);
        }
        self.deliver(message, Some(sender));
    }

    /// Pushes `message` to every identified session of this worker but `except`.
    fn deliver(&mut self, message: &[u8], except: Option<SessionId>) {
        for member in self.room.members() {
            if Some(member) == except {
                continue;
            }
            let token = Token(member.0 as usize);
            let (key, _) = token::split(token);
            let Some(conn) = self.connections.get_mut(key).filter(|c| c.token() == token) else {
                continue;
            };
            if conn.is_closing() {
                continue;
            }
            if conn.push(message, PUSH_CAP) {
                self.flush_later.push(token);
            } else {
                self.doomed.push(key);
            }
        }
        while let Some(key) = self.doomed.pop() {
            self.stats.slow_reader_drops += 1;
            self.close(key, "slow reader: over the push cap");
        }
    }

    fn flush_pushed(&mut self) {
        while let Some(token) = self.flush_later.pop() {
            if let Some(key) = self.key_of(token) {
                self.settle(key);
            }
        }
    }

    /// Makes sure the connection's timer is due no later than its next deadline. Deadlines
    /// only move later with activity, so a read or write leaves the wheel alone; the timer
    /// then fires early, finds the connection active, and is re-armed (lazy re-arming).
    #[inline]
    fn arm_timer(&mut self, key: usize) {
        let Some(deadline) = self.connections[key].deadline(self.timeouts()) else {
            return;
        };
        self.arm_timer_at(key, deadline);
    }

    /// Makes sure the connection's timer is due no later than `deadline`.
    #[inline]
    fn arm_timer_at(&mut self, key: usize, deadline: Instant) {
        let conn = &self.connections[key];
        // Never earlier than the next tick: a deadline that is already past but not acted on
        // would otherwise fire on every wakeup and spin the loop.
        let tick = self.tick_at(deadline).max(self.tick_now() + 1);
        let conn_token = conn.token();
        let timer = match conn.timer() {
            None => Some((
                self.wheel.schedule(tick, Timer::Connection(conn_token)),
                tick,
            )),
            Some((id, armed)) if tick < armed && self.wheel.reset(id, tick) => Some((id, tick)),
            Some(_) => None,
        };
        if timer.is_some() {
            self.connections[key].set_timer(timer);
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
                Timer::ResumeAccept => {
                    let open = self.acceptor.resume().map(ListenerId::token);
                    self.revisit.extend(open);
                }
                Timer::Metrics(key) => self.on_metrics_timer(key),
                Timer::Connection(token) => {
                    let Some(key) = self.key_of(token) else {
                        continue;
                    };
                    let conn = &mut self.connections[key];
                    if conn.timer().is_some_and(|(armed, _)| armed == id) {
                        conn.set_timer(None);
                    }
                    self.on_connection_timer(key);
                }
            }
        }
        self.fired = fired;
    }

    /// A connection's timer fired: act on whichever of its deadlines has passed, then arm it
    /// for the next one.
    fn on_connection_timer(&mut self, key: usize) {
        if self.shutdown_deadline.is_some()
            && matches!(
                self.connections[key].state(),
                State::Open | State::AwaitingProxy
            )
        {
            // Spared by the shutdown (`spares`): its grace is over, or it was served.
            return self.shut_down_connection(key);
        }
        let now = self.now;
        let timeouts = self.timeouts();
        let conn = &mut self.connections[key];
        let token = token::show(conn.token());
        match conn.state() {
            State::AwaitingProxy
            | State::Open
            | State::Paused
            | State::Verifying
            | State::Throttled => {
                let idle = timeouts
                    .idle
                    .is_some_and(|timeout| now >= conn.last_activity() + timeout);
                let slow = conn
                    .request_deadline(timeouts)
                    .is_some_and(|deadline| now >= deadline);
                if (idle || slow) && conn.state() == State::AwaitingProxy {
                    debug!("conn={token} no PROXY header in time");
                    return self.preamble_timed_out(key);
                }
                if idle {
                    self.stats.idle_timeouts += 1;
                } else if slow {
                    self.stats.request_timeouts += 1;
                }
                if (idle || slow) && conn.is_handshaking() {
                    // Nothing can be said to a client that has not finished its handshake.
                    debug!("conn={token} TLS handshake not finished in time");
                    return self.close(key, "TLS handshake timeout");
                } else if idle || slow {
                    let (notice, reason) = if idle {
                        (Notice::IdleTimeout, CloseReason::IdleTimeout)
                    } else {
                        (Notice::RequestTimeout, CloseReason::RequestTimeout)
                    };
                    debug!("conn={token} {reason:?}");
                    conn.notify(notice);
                    self.drain(key, reason);
                } else if now >= conn.last_activity() + QUIET {
                    conn.release_buffers();
                }
            }
            State::Draining { .. } | State::Lingering(_) => {
                if now >= conn.last_activity() + connection::LINGER {
                    return self.close(key, "linger deadline");
                }
            }
            State::Closed => return,
        }
        self.settle(key);
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
    /// Listeners of our own are emptied first; inherited ones (socket activation) are not,
    /// their backlog being the next process's.
    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        info!(
            "shutting down ({why}): {} connection(s) to flush, up to {:?}",
            self.connections.len(),
            self.config.shutdown_timeout
        );
        if self.acceptor.is_inherited() {
            // The sockets outlive this process (the service manager holds them open): what
            // waits in their backlog is the next process's to serve. Only our copies close.
            info!("listeners passed by systemd: their backlog is left to the next process");
        } else {
            // Connections the kernel completed before the signal are served like the
            // others: closing the listener would reset them.
            self.accept_backlog();
        }
        self.acceptor.close_all(self.poll.registry());
        self.metrics.close_listener(self.poll.registry());
        self.stop_listening();
        self.shutdown_deadline = Some(self.now + self.config.shutdown_timeout);
        // Keys stay valid for the rest of this turn, whatever closes meanwhile.
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            // A LOGIN being verified is answered first: `finish_login` comes back here.
            if !matches!(
                self.connections[key].state(),
                State::Verifying | State::Closed
            ) {
                self.shut_down_connection(key);
            }
        }
    }

    /// Takes every connection waiting in the listeners' backlogs (each burst capped as usual,
    /// at most `BACKLOG_BURSTS` of them per listener) and admits or hands it over.
    fn accept_backlog(&mut self) {
        /// 32 bursts of 128: more than the 4,096 connects a backlog holds.
        const BACKLOG_BURSTS: usize = 32;
        for id in ListenerId::ALL {
            for _ in 0..BACKLOG_BURSTS {
                let mut batch = std::mem::take(&mut self.accepted);
                let burst = self.acceptor.accept_ready(id, self.now, &mut batch);
                for (socket, peer) in batch.drain(..) {
                    self.place(socket, peer, id);
                }
                self.accepted = batch;
                if burst != Burst::BudgetSpent {
                    break;
                }
            }
        }
        self.wake_others();
    }

    /// This worker's listeners are closed (or it is exiting): the others are told, since
    /// they wait for every listener to close before they may exit.
    fn stop_listening(&mut self) {
        if std::mem::take(&mut self.listening) {
            self.mailbox.fleet().stop_accepting();
        }
    }

    /// A worker with no connections left in a shutdown may exit once no socket can reach
    /// it any more: every listener of the process is closed, and what was handed over
    /// before that has been taken (and served, if it was). A worker alone has nobody to
    /// wait for.
    fn nothing_more_to_come(&mut self) -> bool {
        let fleet = self.mailbox.fleet();
        if fleet.is_alone() {
            return true;
        }
        if fleet.accepting() > 0 {
            return false; // woken when the last listener closes
        }
        self.take_mail();
        self.reap();
        self.connections.is_empty()
    }

    /// A connection's part of a shutdown: answer what it sent before the signal, then close.
    /// Under socket activation a connection that has sent no request yet is spared a while
    /// first (see [`Server::spares`]).
    fn shut_down_connection(&mut self, key: usize) {
        if self.spares(key) {
            return;
        }
        let conn = &mut self.connections[key];
        if conn.state() == State::AwaitingProxy {
            // Nothing was asked yet, and nothing can be said to it.
            return self.close(key, "shutdown before its PROXY header");
        }
        if matches!(conn.state(), State::Paused | State::Throttled) {
            conn.set_state(State::Open);
        }
        if conn.may_execute() {
            // What arrived before the signal is answered: execute held-back requests,
            // then read what the socket holds.
            self.execute(key, 0);
            self.read_ready(key, usize::MAX, true);
        }
        let conn = &self.connections[key];
        if conn.state() == State::Verifying {
            // A LOGIN (or a STATS with other workers about) among the requests just read:
            // `finish_login` (`answer_census`) comes back here.
            return;
        }
        if !conn.is_closing() {
            self.drain(key, CloseReason::Shutdown);
        }
        self.settle(key);
    }

    /// Whether a shutdown leaves this connection Open (or awaiting its PROXY header) for now:
    /// under socket activation, one that has not sent a complete request yet, for `FIRST_REQUEST_GRACE` after the
    /// shutdown began (or after its last activity, if later: its accept, for one handed
    /// over since). Its client cannot tell it from a connection still waiting in the
    /// backlog, which the next process will serve: so it is served here too, once. Its
    /// first requests are answered, then it closes like the others (`connection_ready` and
    /// `on_connection_timer` bring it back here). Without activation, the listeners close
    /// with the process and a connect that comes later is refused anyway; the shutdown
    /// stays as prompt as it was.
    fn spares(&mut self, key: usize) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        let began = deadline - self.config.shutdown_timeout;
        let conn = &self.connections[key];
        let until = conn.last_activity().max(began) + FIRST_REQUEST_GRACE;
        let spared = self.mailbox.fleet().inherits_listeners()
            && matches!(conn.state(), State::Open | State::AwaitingProxy)
            && !conn.has_executed()
            && self.now < until;
        if spared {
            self.settle(key);
            self.arm_timer_at(key, until);
        }
        spared
    }

    /// The waker fired: a shutdown was requested, or login verdicts are waiting (or both).
    fn on_wake(&mut self) {
        if self.shutdown_requested.swap(false, Ordering::SeqCst) {
            self.begin_shutdown("shutdown requested");
        }
        while let Some((token, ok)) = self.logins.next_verdict() {
            self.finish_login(token, ok);
        }
        if self.cluster.is_some() {
            while let Some(result) = self.cluster.as_ref().and_then(ClusterBridge::next_verdict) {
                self.finish_claim(Token(result.ticket as usize), &result.name, result.verdict);
            }
            // Messages from the other nodes come through this worker's inbox.
            self.take_mail();
        } else if !self.mailbox.fleet().is_alone() {
            self.take_mail();
        }
        if !self.censuses.is_empty() {
            self.count_censuses();
        }
    }

    /// Hands the LOGIN that stopped `execute` to the workers; the connection waits in
    /// `Verifying`. When too many are in flight it is answered "busy" at once instead.
    fn start_login(&mut self, key: usize, credentials: Credentials) {
        let conn = &mut self.connections[key];
        let token = conn.token();
        let user = log_enabled!(Level::Trace)
            .then(|| String::from_utf8_lossy(&credentials.user).into_owned());
        match self.logins.submit(token, credentials) {
            Submitted::Verifying => {
                if let Some(user) = user {
                    trace!(
                        "conn={} login for {user:?} sent to the workers",
                        token::show(token)
                    );
                }
                conn.set_state(State::Verifying);
            }
            Submitted::Busy => conn.answer_busy(&mut self.scratch_out),
        }
    }

    /// A verdict from the workers: answer the LOGIN, then go on with the requests that
    /// waited behind it. A verdict for a connection that has gone, or has begun closing
    /// meanwhile (idle timeout, shutdown timeout), is dropped.
    fn finish_login(&mut self, token: Token, ok: bool) {
        let Some(key) = self.key_of(token) else {
            trace!(
                "conn={} login verdict for a closed connection",
                token::show(token)
            );
            return;
        };
        let conn = &mut self.connections[key];
        if conn.state() != State::Verifying {
            return;
        }
        let verdict = if ok { "accepted" } else { "refused" };
        debug!("conn={} login {verdict}", token::show(token));
        if conn.answer_login(ok, &mut self.stats) == Outcome::LoginFailures {
            conn.forget_input();
            self.drain(key, CloseReason::LoginFailures);
        } else if self.shutdown_deadline.is_some() {
            return self.shut_down_connection(key);
        } else {
            // The requests held behind the LOGIN, then whatever the socket holds.
            self.revisit_next_turn(key);
        }
        self.settle(key);
    }

    /// A HELLO in a cluster: its name is reserved here, and claimed in Redis while the
    /// connection waits in `Verifying` (the requests after it wait in order, as behind a
    /// LOGIN). With Redis out of reach it is answered "unavailable" at once.
    fn start_claim(&mut self, key: usize, name: Box<str>) {
        let conn = &mut self.connections[key];
        let token = conn.token();
        let queued = self
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.claim(token, name));
        if queued {
            trace!("conn={} name claim sent to Redis", token::show(token));
            conn.set_state(State::Verifying);
        } else {
            conn.answer_claim(
                ClaimVerdict::Unavailable,
                &mut self.room,
                &mut self.scratch_out,
            );
        }
    }

    /// The cluster's verdict on a HELLO's claim: answer it, then go on with the requests
    /// that waited behind it. A name claimed for a connection that has gone, or stopped
    /// waiting, is given back.
    fn finish_claim(&mut self, token: Token, name: &str, verdict: ClaimVerdict) {
        let waiting = self
            .key_of(token)
            .filter(|&key| self.connections[key].state() == State::Verifying);
        let Some(key) = waiting else {
            if verdict == ClaimVerdict::Claimed
                && let Some(cluster) = &self.cluster
            {
                cluster.release(name);
            }
            return;
        };
        debug!("conn={} name claim: {verdict:?}", token::show(token));
        let conn = &mut self.connections[key];
        if !conn.answer_claim(verdict, &mut self.room, &mut self.scratch_out)
            && verdict == ClaimVerdict::Claimed
            && let Some(cluster) = &self.cluster
        {
            cluster.release(name);
        }
        if self.shutdown_deadline.is_some() {
            return self.shut_down_connection(key);
        }
        self.revisit_next_turn(key);
        self.settle(key);
    }

    /// Stops executing a connection's requests; what it is owed is flushed, then it closes.
    /// Its chat name is free from now on: the session is over even if the socket lingers.
    fn drain(&mut self, key: usize, reason: CloseReason) {
        let conn = &mut self.connections[key];
        conn.set_state(State::draining(reason));
        self.leave_room(key);
    }

    /// Frees the session's chat name, here and, in a cluster, in Redis.
    fn leave_room(&mut self, key: usize) {
        let session = self.connections[key].session();
        if let Some(name) = self.room.leave(session)
            && let Some(cluster) = &self.cluster
        {
            cluster.release(name);
        }
    }

    /// The session ended (our FIN is out, or the connection closed before that): it counts
    /// as closed, and its `--max-connections` slot is free.
    fn end_session(&mut self, refusal: bool) {
        self.stats.active -= 1;
        self.stats.closed += 1;
        if refusal {
            self.rejecting -= 1;
        }
    }

    /// Gives the connection's `--max-connections` slot back, if it still holds one. Done
    /// before our FIN goes out: a client that has read its EOF must find the slot free, on
    /// whichever worker its next connection lands.
    fn release_slot(&mut self, key: usize) {
        let conn = &mut self.connections[key];
        let fleet = self.mailbox.fleet();
        if conn.release_slot() {
            fleet.free_slot();
        }
        if let Some(ip) = conn.release_address() {
            fleet.addresses().free(ip);
        }
    }

    /// Closes a connection: deregisters it, cancels its timer, frees its chat name and counts
    /// it. Replies still owed are lost, so callers owe none (or have given up on delivering
    /// them). The slab slot is freed at the end of the turn ([`Server::reap`]): until then
    /// the key stays valid and the connection is a Closed one, on which every operation is a
    /// no-op. Closing a Closed connection does nothing.
    fn close(&mut self, key: usize, why: &str) {
        let conn = &mut self.connections[key];
        let was = conn.state();
        if was == State::Closed {
            return;
        }
        debug!("conn={} closed: {why}", token::show(conn.token()));
        let refusal = conn.is_refusal();
        self.release_slot(key);
        let conn = &mut self.connections[key];
        conn.set_state(State::Closed);
        conn.deregister(self.poll.registry());
        self.recount(key, 0);
        let conn = &mut self.connections[key];
        if let Some((id, _)) = conn.timer() {
            self.wheel.cancel(id);
            conn.set_timer(None);
        }
        self.leave_room(key);
        if matches!(was, State::Lingering(_)) {
            self.stats.lingering -= 1;
        } else {
            self.end_session(refusal);
        }
        self.mailbox.fleet().leave(self.mailbox.index());
        self.closed.push(key);
    }

    /// Frees the slots of the connections closed during this turn (and their descriptors).
    fn reap(&mut self) {
        for key in self.closed.drain(..) {
            self.connections.remove(key);
        }
    }

    /// The tick at or after `instant`: a timer set for it never fires before `instant`.
    fn tick_at(&self, instant: Instant) -> u64 {
        nanos_since(self.epoch, instant).div_ceil(TICK_NANOS)
    }

    /// The tick `now` falls in.
    fn tick_now(&self) -> u64 {
        self.now_tick
    }

    fn instant_of(&self, tick: u64) -> Instant {
        self.epoch + TICK * u32::try_from(tick).unwrap_or(u32::MAX)
    }
}

/// The exit summary: the counters of the loop, or the sums over the workers.
pub fn log_summary(stats: &Stats) {
    let mut pairs = Vec::new();
    let _ = stats.write_pairs(&mut pairs);
    info!(
        "exit summary: served {} connections, {} bytes in, {} bytes out, peak client memory \
         {} bytes; {}",
        stats.accepted,
        stats.bytes_in,
        stats.bytes_out,
        stats.client_memory_peak,
        String::from_utf8_lossy(&pairs)
    );
}

/// The users file, or, without `--users`, no users at all (logins are then not checked).
fn load_users(config: &Config) -> io::Result<Users> {
    let Some(path) = &config.users else {
        info!("no --users: logins are not checked, every LOGIN is answered OK");
        return Users::parse("").map_err(|e| io::Error::other(e.to_string()));
    };
    let users = Users::load(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    info!("{} user(s) from {}", users.len(), path.display());
    Ok(users)
}

/// Traces one wakeup's events: `wakeup: 2 event(s) [7.1 r w, line-listener r]`.
fn trace_events(events: &Events) {
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
        conn.token()
    }

    #[test]
    fn an_event_for_a_closed_connection_does_not_reach_the_next_one_in_its_slot() {
        let mut server = server();
        let _first = StdStream::connect(server.line_addr()).unwrap();
        turn_until(&mut server, |s| s.connections.len() == 1);
        let stale = only_token(&server);
        let (key, _) = token::split(stale);
        server.close(key, "test");
        server.reap();

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
    fn a_closed_connection_keeps_its_slot_until_the_turn_ends_and_nothing_touches_it() {
        let mut server = server();
        let mut client = StdStream::connect(server.line_addr()).unwrap();
        turn_until(&mut server, |s| s.connections.len() == 1);
        let (key, _) = token::split(only_token(&server));
        server.close(key, "test");
        let counted = server.stats.clone();
        assert_eq!((counted.active, counted.closed), (0, 1));

        // Whatever still holds the key in this turn may use it: every operation is a no-op.
        server.execute(key, 0);
        server.read_ready(key, READ_BUDGET, true);
        server.settle(key);
        server.shut_down_connection(key);
        server.close(key, "twice");
        assert_eq!(server.stats, counted);
        assert!(server.connections.contains(key));
        assert!(server.connections[key].is_closed());

        server.reap();
        assert!(!server.connections.contains(key));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(matches!(client.read(&mut byte), Ok(0) | Err(_)), "closed");
    }

    #[test]
    fn a_connection_is_queued_for_the_next_turn_once_however_often_it_is_asked() {
        let mut server = server();
        let _client = StdStream::connect(server.line_addr()).unwrap();
        turn_until(&mut server, |s| s.connections.len() == 1);
        let (key, _) = token::split(only_token(&server));
        server.revisit.clear();
        server.revisit_next_turn(key);
        server.revisit_next_turn(key);
        server.defer(key);
        assert_eq!((server.revisit.len(), server.deferred.len()), (1, 0));
        // Once served from the list, it may be queued again.
        server.turn(Some(Duration::from_millis(1))).unwrap();
        assert!(server.revisit.is_empty());
        server.defer(key);
        assert_eq!(server.deferred.len(), 1);
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
