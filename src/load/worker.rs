//! One load-generating thread: one `mio::Poll`, its share of the connections, its own
//! latency histogram.
//!
//! One turn of the loop:
//!
//! ```text
//! learn the measured window (set by the main thread once every connection is up)
//! start the connects that are due (--connect-rate, spread over threads)
//! open loop: send the requests whose scheduled time has come
//! every SCAN: close connections that got no reply for --timeout
//! poll(timeout = next connect / scan / end of window; open loop: a timerfd for the next send)
//!   -> for each event: connecting  => connected? (--proxy-header: write the PROXY header)
//!                                     send the first batch (TLS: the ClientHello)
//!                      handshaking => TLS only: records in and out until the handshake is
//!                                     done, then send the first batch
//!                      open        => read until a short read, verify every reply in place,
//!                                     record latencies, refill the free slots, write the
//!                                     whole batch with one write
//! ```
//!
//! # The shape of a batch
//!
//! All requests of a connection are the same bytes, so what it owes the socket is a position
//! in the periodic stream `request request ...` ([`Periodic`]): `unsent` bytes starting at
//! `send_phase`. Refilling `k` slots adds `k * request_len` to `unsent`, and one `write` of
//! one slice of the thread's batch buffer sends them all (the buffer holds a pipeline's worth
//! of copies, up to 64 KiB; it is per thread rather than per connection because every
//! connection sends the same bytes, so 15,000 connections share one). Replies are verified
//! the same way, against the periodic expected stream, by comparing the read buffer in place
//! ([`Verifier::check`]); a reply split across reads costs nothing but its phase. Send times
//! live in a ring of `--pipeline` entries per connection, in request order: a reply pops the
//! oldest.
//!
//! # The clock
//!
//! `CLOCK_MONOTONIC` in nanoseconds, read once per wakeup (after `poll`) and once per batch of
//! replies (after the reads that brought it). Replies read together share a receive time;
//! requests queued together share a send time (the same reading: a reply's arrival is the
//! moment its slot is refilled). No clock read per request. Chat reads it once per `read`
//! instead, so a push that came in a later read of a long batch is not timed before its SAY
//! was sent.
//!
//! # Open loop (`--rate R`)
//!
//! The timetable is global: slot `n` is due at `epoch + n / R`, and slots are dealt round-robin
//! to the connections (connection `j` owns slots `j, j + C, j + 2C, ...`), so sends are spread
//! evenly in time. A request's latency is measured from its *scheduled* time: if its
//! connection already has `--pipeline` requests in flight it waits, and the wait counts (the
//! coordinated-omission correction of wrk2). A cursor walks this thread's slots in time order,
//! so finding what is due costs O(1) per request; a `timerfd` armed at the next slot wakes the
//! loop at nanosecond precision, where `epoll_wait` would round up to a millisecond.
//!
//! # Readiness rules (as in the server, `reactor/mod.rs`)
//!
//! - Sockets are registered once for READABLE | WRITABLE and never re-registered:
//!   edge-triggered, a writable edge costs nothing until a write has filled the socket buffer.
//! - A read that returned less than the buffer has drained the socket; later bytes raise a
//!   new edge. So no second read just to see WouldBlock; likewise a write that took everything.
//!   Read-closed/error flags are hints: then read until EOF or WouldBlock.
//! - Connect completion is a writable edge; `take_error` then `peer_addr` tell the outcome
//!   (mio's `TcpStream::connect` recipe).
//!
//! # Short connections (`--requests-per-connection N`)
//!
//! A connection place (`Conn`) then holds one connection after another. Each starts with
//! `left = N` requests to queue; refilling takes at most `left` (one `min` per batch: the
//! persistent path's `left` is `u64::MAX` and never runs out). Once `left` is 0 and the last
//! reply is verified, [`Worker::recycle`] closes the socket (an RST with `--close rst`:
//! `SO_LINGER` 0 was set when it was made) and starts the next connect in the same place, at
//! once. With `--requests`, a connection started in the measured window pays its N (or what
//! is left of the budget) when it starts, so no connection is opened that would have nothing
//! to send; one started before the window (during a warmup) pays per batch, as a persistent
//! connection does. Connects are timed from the `connect()` call to the writable edge that
//! reports it done, and counted when that edge comes in the window.
//!
//! ```text
//! open -> N requests queued (pipeline at most) -> N replies verified -> close (RST | FIN)
//!      -> connect again, same --addr, next --source-addr -> open ...
//! ```
//!
//! # Over TLS
//!
//! An open connection's socket is a [`Stream`]: plain, or with a rustls session on it
//! (boxed: the plain path pays one branch per batch). [`Worker::read_replies`] and
//! [`Worker::flush`] are one path for both; `stream.rs` hides the difference (one `read` of
//! records per batch, plaintext into the same scratch buffer, verified as without TLS). The
//! flow is the one of rustls's `tlsclient-mio` example, driven by the same edge-triggered
//! readiness. The handshake (state `Handshaking`) runs until done before the first request;
//! its time, from TCP establishment to the handshake's end, goes to a histogram of its own,
//! and a failure is a `connect` error whose reason is kept for the summary. A connection
//! closed while open says `close_notify` first (one write, best effort), and so does every
//! connection still open when the worker ends.
//!
//! # Chat (`--workload chat`)
//!
//! Each open connection carries a [`Session`] (`chat.rs`): the one case where requests
//! differ, so the session holds its own outgoing bytes instead of a phase in the periodic
//! stream, and where pushes come between the replies, so the read buffer is parsed by lines
//! rather than compared. The rest is the same loop, with three differences of timing:
//!
//! ```text
//! open        -> HELLO is the first request in flight; the thread is "connected" for the
//!                main thread only once every session has its WELCOME (or has failed)
//! window set  -> the first SAYs, on every session at once (open loop: from the next slot)
//! sending done (window over / budget spent and answered / no connection left)
//!             -> stop: publish each sender's final count, and keep reading
//! every thread stopped -> wait until each session has got what was sent to it, or
//!                --drain has passed; what never came is then missing
//! ```
//!
//! # Invariants
//!
//! - `in_flight <= pipeline` on every connection; the ring holds exactly `in_flight` send
//!   times; `unsent <= in_flight * request_len` (chat: `unsent` is the session's unsent
//!   bytes).
//! - No allocation per request: rings are allocated once per connection place (not again at
//!   a reconnect), the batch buffers and the read buffer once per thread (chat: a session's
//!   buffers once per connection, reused). A short connection's socket and, over TLS, its
//!   session are allocated per connect.
//! - A connection with an error is closed and counted, never reopened (in its place, neither).
//! - `reserved` is the sum of `left` over the connections that paid for theirs.
//!
//! # What it refuses to do
//!
//! It does not reconnect after an error (nor ever without `--requests-per-connection`), does
//! not balance budgets across threads (each thread gets an equal share of `--requests`), and
//! does not read replies after the measured window ends (chat: after the drain).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use hdrhistogram::Histogram;
use log::{debug, trace, warn};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Socket, Type};

use super::Close;
use super::chat::{ChatPlan, Moment, Session, Tally};
use super::proxy::Proxy;
use super::report::{ErrorKind, Errors, new_histogram};
use super::stream::{Reading, Received, Stream, TlsStream};
use super::workload::{Exchange, Periodic, Verifier};
use crate::client::tls::TlsConfig;
use crate::net::write_some;

/// Wakes a worker when the main thread has set the measured window.
const WAKER: Token = Token(usize::MAX);
/// The open-loop timerfd.
const TIMER: Token = Token(usize::MAX - 1);

/// One `read` takes at most this much (as the server's scratch buffer).
const READ_CHUNK: usize = 64 * 1024;
/// Events taken from one `poll`.
const EVENTS_CAPACITY: usize = 1024;
/// Connects started per wakeup at most; the rest next turn (a late thread must not stall its
/// open connections behind a burst of `connect` calls).
const CONNECT_BUDGET: usize = 256;
/// Open-loop slots visited per wakeup at most, for the same reason.
const SLOT_BUDGET: usize = 4096;
/// How often connections are checked for `--timeout` (at most; a shorter timeout scans more
/// often).
const SCAN_EVERY_NS: u64 = 100_000_000;
/// While waiting for chat pushes after sending has stopped: how often to look whether every
/// thread has stopped and every session has got what was sent to it.
const DRAIN_CHECK_NS: u64 = 10_000_000;
/// How often a worker publishes a histogram snapshot for the progress line.
const SNAPSHOT_EVERY_NS: u64 = 1_000_000_000;
/// Errors of each kind logged at warn, process-wide; the rest at debug.
const WARNINGS_PER_KIND: u32 = 3;
/// `start_ns` before the main thread has set the measured window.
pub(crate) const UNKNOWN: u64 = u64::MAX;

static WARNINGS: [AtomicU32; 5] = [const { AtomicU32::new(0) }; 5];

/// `CLOCK_MONOTONIC` in nanoseconds: what `Instant` reads, as a plain number that a timerfd
/// can be armed with.
#[must_use]
pub(crate) fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one thread is to do; built by `load::run`.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// This thread's index `t` and the number of threads `T`: it owns the connections whose
    /// global index `j` satisfies `j % T == t`.
    pub thread: usize,
    pub threads: usize,
    /// `C`, all threads together.
    pub connections: usize,
    /// The `--addr` values, in order (never empty): connection `j` goes to
    /// `destinations[j % n]`.
    pub destinations: Arc<[Destination]>,
    /// Local addresses to bind, round-robin by global connection index, plus one for each
    /// reconnect in the same place (empty: any).
    pub sources: Arc<[IpAddr]>,
    pub pipeline: u32,
    /// `--requests-per-connection`: 0 keeps every connection for the whole run.
    pub requests_per_connection: u64,
    /// How a connection that has sent its `requests_per_connection` closes.
    pub close: Close,
    pub exchange: Arc<Exchange>,
    /// Nanoseconds between two connection attempts, all threads together.
    pub connect_interval_ns: f64,
    /// Open loop: nanoseconds between two slots of the global timetable (`1e9 / R`).
    pub slot_ns: Option<f64>,
    /// `--requests`: this thread's share. `None`: run for `duration_ns`.
    pub budget: Option<u64>,
    pub duration_ns: u64,
    pub timeout_ns: u64,
    /// Time zero of the run: connects and the open-loop timetable count from here.
    pub epoch_ns: u64,
    /// Publish progress counters and snapshots for the progress line.
    pub progress: bool,
    /// `--workload chat`: what every thread shares of the room.
    pub chat: Option<Arc<ChatPlan>>,
    /// `--proxy-header`: every connection sends its PROXY header first.
    pub proxy: Option<Proxy>,
}

impl Plan {
    /// Connections this thread owns.
    fn local_connections(&self) -> usize {
        (self.connections + self.threads - 1 - self.thread) / self.threads
    }

    fn global_index(&self, local: usize) -> usize {
        local * self.threads + self.thread
    }

    /// Where the connection of global index `j` goes: the addresses in turn.
    fn destination(&self, j: usize) -> &Destination {
        &self.destinations[j % self.destinations.len()]
    }

    /// Whether the connections speak TLS (all of them or none: `--tls` is for every address).
    fn tls(&self) -> bool {
        self.destinations.iter().any(|d| d.tls.is_some())
    }
}

/// One `--addr`, resolved, with its TLS settings.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub addr: SocketAddr,
    /// `--tls`: the session settings of every connection to `addr` (the server name is
    /// `--server-name` or this address's host part).
    pub tls: Option<TlsConfig>,
}

/// State shared with the main thread: written rarely, read once per wakeup.
pub(crate) struct Shared {
    /// Start of the measured window (`CLOCK_MONOTONIC` ns), or [`UNKNOWN`].
    pub start_ns: AtomicU64,
    /// One per worker, for the progress line.
    pub progress: Box<[Progress]>,
}

impl Shared {
    pub fn new(threads: usize, start_ns: u64) -> Shared {
        Shared {
            start_ns: AtomicU64::new(start_ns),
            progress: (0..threads).map(|_| Progress::default()).collect(),
        }
    }
}

/// A worker's progress counters, on a cache line of their own: only that worker writes them.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Progress {
    /// Replies received (warmup included).
    pub replies: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

/// From a worker to the main thread.
pub(crate) enum Message {
    /// Every connection of this worker is established or has failed.
    Connected(usize),
    /// The histogram so far, for the progress line's p99.
    Snapshot(usize, Box<Histogram<u64>>),
    /// The worker stopped; it closes its sockets once the main thread drops its release
    /// channel (after sampling CPU time).
    Done(usize, Box<WorkerReport>),
}

/// A worker's totals over the measured window.
pub(crate) struct WorkerReport {
    pub histogram: Histogram<u64>,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: Errors,
    /// Connection places ever established (each counted once, however often it reconnects).
    pub connected: u64,
    /// Connections established in the measured window, and how long their connects took (ns).
    pub connects: u64,
    pub connect_times: Histogram<u64>,
    /// Receive time of the last recorded reply (0: none).
    pub last_reply_ns: u64,
    /// The window start this worker used.
    pub start_ns: u64,
    /// With `--tls`: handshake durations (ns) and failed handshakes by reason.
    pub handshakes: Option<Histogram<u64>>,
    pub tls_failures: BTreeMap<String, u64>,
    /// `--workload chat`: the deliveries and what went wrong with them.
    pub chat: Option<Tally>,
}

/// Where a connection is; a connection that has a socket is a state that carries it
/// (dropping it closes the socket, which deregisters it).
enum ConnState {
    /// Its connect is not due yet.
    Waiting,
    /// `connect` returned EINPROGRESS; waiting for the writable edge.
    Connecting(TcpStream),
    /// TLS: connected, handshake under way; no request yet.
    Handshaking(Box<TlsStream>),
    Open(Stream),
    /// Failed, closed by the server, or done (with `--requests-per-connection`, only for a
    /// moment, unless the run is ending).
    Closed,
}

/// One connection.
struct Conn {
    state: ConnState,
    /// Requests sent or queued, not yet answered.
    in_flight: u32,
    /// Send times (or scheduled times) of the in-flight requests, oldest at `head`.
    ring: Box<[u64]>,
    head: u32,
    /// Request bytes owed to the socket, starting at `send_phase` within a request.
    unsent: usize,
    send_phase: usize,
    /// Bytes of the current reply already verified.
    reply_phase: usize,
    /// Connecting: when the connect began. Open: the last reply, or the send that ended an
    /// idle spell; `--timeout` counts from here.
    since_ns: u64,
    /// Open loop: the global slot of this connection's next request.
    next_slot: u64,
    /// Requests this connection may still queue: `--requests-per-connection` at each connect,
    /// `u64::MAX` without it.
    left: u64,
    /// `left` was paid from the `--requests` budget when the connection started.
    paid: bool,
    /// Connects started in this place so far.
    generation: u64,
    /// `--workload chat`, once open: the session (its own bytes to send, its ledger).
    session: Option<Box<Session>>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            state: ConnState::Waiting,
            in_flight: 0,
            ring: Box::new([]),
            head: 0,
            unsent: 0,
            send_phase: 0,
            reply_phase: 0,
            since_ns: 0,
            next_slot: 0,
            left: u64::MAX,
            paid: false,
            generation: 0,
            session: None,
        }
    }
}

impl Conn {
    /// The socket, if the connection is open.
    fn open_stream(&mut self) -> Option<&mut Stream> {
        match &mut self.state {
            ConnState::Open(stream) => Some(stream),
            _ => None,
        }
    }

    fn is_open(&self) -> bool {
        matches!(self.state, ConnState::Open(_))
    }

    /// Every request this connection was to send has been answered (never without
    /// `--requests-per-connection`).
    fn spent(&self) -> bool {
        self.left == 0 && self.in_flight == 0
    }

    /// Moves the connection to the state `next` makes of its current one (its socket moves
    /// along); `next` hands back a state it has no move for.
    fn advance(&mut self, next: impl FnOnce(ConnState) -> ConnState) {
        let state = std::mem::replace(&mut self.state, ConnState::Closed);
        self.state = next(state);
    }

    /// Over TLS, on an open connection: queue `close_notify` and try one write. Best effort:
    /// the connection is being closed either way.
    fn say_goodbye(&mut self) {
        if let Some(stream) = self.open_stream() {
            stream.say_goodbye();
        }
    }
}

/// The open-loop wake-up: a `timerfd` armed at an absolute `CLOCK_MONOTONIC` time. Never read:
/// arming resets its expiry count, and each expiry raises a new edge. Registered through
/// `mio::unix::SourceFd` (mio's `os-ext` feature, which signal-hook-mio turns on).
struct Timer {
    fd: OwnedFd,
    armed_ns: u64,
}

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory preconditions; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd, armed_ns: 0 })
    }

    /// A new timer, registered with `poll` as [`TIMER`].
    fn registered(poll: &Poll) -> io::Result<Timer> {
        let timer = Timer::new()?;
        poll.registry().register(
            &mut SourceFd(&timer.fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(timer)
    }

    fn arm(&mut self, at_ns: u64) {
        if at_ns == self.armed_ns {
            return;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid fd and pointers to a local itimerspec; the old value is not asked for.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            self.armed_ns = at_ns;
        } else {
            debug!("timerfd_settime: {}", io::Error::last_os_error());
        }
    }
}

/// One worker thread's loop and everything it owns.
pub(crate) struct Worker {
    plan: Plan,
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    timer: Option<Timer>,
    shared: Arc<Shared>,
    to_main: Sender<Message>,
    release: Receiver<()>,
    conns: Vec<Conn>,
    /// `pipeline` copies of the request: a batch is one slice of it.
    requests: Periodic,
    request_len: usize,
    verifier: Verifier,
    scratch: Box<[u8]>,
    /// `--tls`: records read from a socket, before rustls decrypts them into `scratch`.
    reading: Reading,
    histogram: Histogram<u64>,
    /// Connects established in the window, and their durations (ns).
    connects: u64,
    connect_times: Histogram<u64>,
    /// `--tls`: handshake durations (ns), and failed handshakes by reason.
    handshakes: Option<Histogram<u64>>,
    tls_failures: BTreeMap<String, u64>,
    /// The latest clock reading.
    now: u64,
    /// The measured window as this worker applies it: `[start, end)`.
    start: Option<u64>,
    end: u64,
    /// `--requests`: measured requests this thread may still send.
    budget: Option<u64>,
    /// Sum of `in_flight` over connections.
    outstanding: u64,
    /// Requests paid from the budget and not yet queued: the sum of `left` over the
    /// connections that paid for theirs (`--requests-per-connection` with `--requests`).
    reserved: u64,
    next_connect: usize,
    /// Connections not yet established nor failed.
    pending: usize,
    /// Places whose first connect is not yet established nor failed: the main thread waits
    /// for these only (short connections keep reconnecting).
    unresolved: usize,
    open: u64,
    connected: u64,
    told_connected: bool,
    /// Open loop: the next slot to visit, as (round, local connection).
    cursor: (u64, usize),
    next_scan: u64,
    scan_every: u64,
    next_snapshot: u64,
    requests_done: u64,
    replies: u64,
    bytes_sent: u64,
    bytes_received: u64,
    errors: Errors,
    last_reply_ns: u64,
    /// `--workload chat`: this thread's part of the room.
    chat: Option<ChatThread>,
}

/// A worker's chat state: sessions greeting, counts, and the end of the run (stop sending,
/// publish the senders' final counts, wait for the pushes still in flight).
struct ChatThread {
    plan: Arc<ChatPlan>,
    tally: Tally,
    /// Open sessions still waiting for their WELCOME.
    greeting: usize,
    /// This thread has stopped sending and published its senders' final counts.
    stopped: bool,
    /// Once every thread has stopped: until when to wait, and how many messages were sent
    /// in all.
    drain: Option<(u64, u64)>,
}

impl Drop for ChatThread {
    /// A thread that never got to stop (its loop failed, or it panicked) still counts as
    /// stopped, so that the other threads do not wait for it.
    fn drop(&mut self) {
        if !self.stopped {
            self.plan.stop();
        }
    }
}

impl Worker {
    /// Sets up the poll (and the timerfd in open loop); no connection is opened before `run`.
    pub fn new(
        plan: Plan,
        shared: Arc<Shared>,
        to_main: Sender<Message>,
        release: Receiver<()>,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let timer = match plan.slot_ns {
            Some(_) => Some(Timer::registered(&poll)?),
            None => None,
        };
        let pipeline = plan.pipeline as usize;
        let requests = Periodic::for_batch(&plan.exchange.request, pipeline);
        let verifier = Verifier::new(&plan.exchange.reply, pipeline);
        let local = plan.local_connections();
        let start = shared.start_ns.load(Ordering::Acquire);
        let scan_every = (plan.timeout_ns / 8).clamp(1_000_000, SCAN_EVERY_NS);
        Ok(Worker {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            waker,
            timer,
            shared,
            to_main,
            release,
            conns: (0..local).map(|_| Conn::new()).collect(),
            request_len: plan.exchange.request.len(),
            requests,
            verifier,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            reading: Reading::new(if plan.tls() { READ_CHUNK } else { 0 }),
            histogram: new_histogram(),
            connects: 0,
            connect_times: new_histogram(),
            handshakes: plan.tls().then(new_histogram),
            tls_failures: BTreeMap::new(),
            now: plan.epoch_ns,
            start: (start != UNKNOWN).then_some(start),
            end: u64::MAX,
            budget: plan.budget,
            outstanding: 0,
            reserved: 0,
            next_connect: 0,
            pending: local,
            unresolved: local,
            open: 0,
            connected: 0,
            told_connected: false,
            cursor: (0, 0),
            next_scan: plan.epoch_ns + scan_every,
            scan_every,
            next_snapshot: plan.epoch_ns + SNAPSHOT_EVERY_NS,
            requests_done: 0,
            replies: 0,
            bytes_sent: 0,
            bytes_received: 0,
            errors: Errors::default(),
            last_reply_ns: 0,
            chat: plan.chat.as_ref().map(|chat| ChatThread {
                plan: Arc::clone(chat),
                tally: Tally::default(),
                greeting: 0,
                stopped: false,
                drain: None,
            }),
            plan,
        })
    }

    /// Wakes this worker from `poll` (the main thread calls it after setting the window).
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Runs the loop until the measured window ends (or the requests are done, or every
    /// connection is gone), reports, waits for the main thread's release, then closes.
    pub fn run(mut self) {
        // Timer expirations as precise as the hardware allows (the default slack is 50 µs).
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        if let Err(e) = self.serve() {
            log::error!("thread {}: event loop failed: {e}", self.plan.thread);
        }
        self.count_missing();
        let Worker {
            plan,
            to_main,
            release,
            conns,
            histogram,
            start,
            requests_done,
            bytes_sent,
            bytes_received,
            errors,
            connected,
            connects,
            connect_times,
            last_reply_ns,
            handshakes,
            tls_failures,
            chat,
            ..
        } = self; // the poll and buffers go; the sockets (in `conns`) stay open for now
        let report = WorkerReport {
            histogram,
            requests: requests_done,
            bytes_sent,
            bytes_received,
            errors,
            connected,
            connects,
            connect_times,
            last_reply_ns,
            start_ns: start.unwrap_or(0),
            handshakes,
            tls_failures,
            chat: chat.as_ref().map(|chat| chat.tally.clone()),
        };
        let _ = to_main.send(Message::Done(plan.thread, Box::new(report)));
        // Dropped before waiting, so that if another worker panicked (and never reports), the
        // main thread sees the channel disconnect once the rest are done instead of waiting.
        drop(to_main);
        // Closing thousands of sockets costs CPU that is not the measurement's: wait until the
        // main thread has read the CPU clock. Err means it has dropped the sender: go.
        let _ = release.recv();
        let mut conns = conns;
        for conn in &mut conns {
            conn.say_goodbye();
        }
        drop(conns);
    }

    fn serve(&mut self) -> io::Result<()> {
        self.now = clock_ns();
        loop {
            self.learn_window();
            self.connect_due();
            self.send_scheduled();
            if self.now >= self.next_scan {
                self.scan_timeouts();
                self.next_scan = self.now + self.scan_every;
            }
            self.tell_main();
            if self.chat.is_some() {
                self.chat_turn();
            }
            if self.finished() {
                return Ok(());
            }
            let timeout = self.poll_timeout();
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = clock_ns();
            self.handle_events();
        }
    }

    /// Picks up the window start once the main thread has set it.
    fn learn_window(&mut self) {
        if self.start.is_some() {
            return;
        }
        let start = self.shared.start_ns.load(Ordering::Acquire);
        if start == UNKNOWN {
            return;
        }
        if self.plan.budget.is_some() {
            // Requests sent before now were not counted against the budget: if the news came
            // late, the window starts now for this thread, so none of them is measured.
            self.start = Some(start.max(self.now));
        } else {
            self.start = Some(start);
            self.end = start.saturating_add(self.plan.duration_ns);
        }
        debug!("thread {}: measured window set", self.plan.thread);
        if self.chat.is_some() {
            self.start_chatting();
        }
    }

    /// Whether this thread's part of the run is over: with chat, once it has stopped sending
    /// and waited for the pushes in flight ([`Worker::chat_turn`]).
    fn finished(&self) -> bool {
        if let Some(chat) = &self.chat {
            return chat.stopped && (self.open == 0 || chat.drain.is_some_and(|d| self.drained(d)));
        }
        self.sending_done()
    }

    /// No more requests: the window is over, the budget spent and answered, or no connection
    /// is left.
    fn sending_done(&self) -> bool {
        self.now >= self.end
            || (self.budget == Some(0) && self.outstanding == 0 && self.reserved == 0)
            || (self.pending == 0 && self.open == 0)
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        let mut next = self.next_scan;
        if self.end > self.now {
            next = next.min(self.end);
        }
        if let Some(chat) = self.chat.as_ref().filter(|chat| chat.stopped) {
            next = next.min(self.now + DRAIN_CHECK_NS);
            if let Some((until, _)) = chat.drain {
                next = next.min(until);
            }
        }
        if self.next_connect < self.conns.len() {
            next = next.min(self.connect_time(self.next_connect));
        }
        if self.plan.progress {
            next = next.min(self.next_snapshot);
        }
        if let Some(slot_ns) = self.plan.slot_ns {
            let due = self.slot_time(self.cursor_slot(), slot_ns);
            if due <= self.now {
                next = self.now; // a spent slot budget: come straight back
            } else if let Some(timer) = self.timer.as_mut() {
                timer.arm(due);
            }
        }
        Some(Duration::from_nanos(next.saturating_sub(self.now)))
    }

    fn handle_events(&mut self) {
        // Taken out so that handling an event may borrow the whole worker.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                WAKER | TIMER => {} // the loop's top does the work
                Token(i) => {
                    let to_end = event.is_read_closed() || event.is_error();
                    self.connection_ready(i, event.is_readable() || to_end, to_end);
                }
            }
        }
        self.events = events;
    }

    /// An event for connection `i`: finish connecting (and the TLS handshake), read and
    /// verify, refill, write.
    fn connection_ready(&mut self, i: usize, readable: bool, to_end: bool) {
        match self.conns[i].state {
            ConnState::Connecting(_) => {
                if !self.finish_connect(i) {
                    return;
                }
            }
            ConnState::Handshaking(_) => {
                if !self.handshake(i) {
                    return;
                }
            }
            ConnState::Open(_) => {
                if readable && !self.read_replies(i, to_end) {
                    return;
                }
                // One test of the plan per batch; persistent connections look no further.
                if self.plan.requests_per_connection > 0 && self.conns[i].spent() {
                    self.recycle(i);
                    return;
                }
            }
            ConnState::Waiting | ConnState::Closed => return, // stale
        }
        self.refill(i);
        self.flush(i);
    }

    // ---- connecting ----

    fn connect_time(&self, local: usize) -> u64 {
        let j = self.plan.global_index(local) as f64;
        self.plan.epoch_ns + (j * self.plan.connect_interval_ns) as u64
    }

    fn connect_due(&mut self) {
        let mut started = 0;
        while self.next_connect < self.conns.len()
            && started < CONNECT_BUDGET
            && self.connect_time(self.next_connect) <= self.now
            && self.budget != Some(0)
        {
            self.start_connect(self.next_connect);
            self.next_connect += 1;
            started += 1;
        }
    }

    /// Starts a connect in place `i` (in state `Waiting`). Its `g`-th connect goes from source
    /// `(j + g) mod n`, so short connections take the `--source-addr` values in turn.
    fn start_connect(&mut self, i: usize) {
        let j = self.plan.global_index(i);
        let generation = self.conns[i].generation;
        self.conns[i].generation += 1;
        if self.plan.requests_per_connection > 0 {
            self.allow(i);
        }
        let source = match self.plan.sources.len() {
            0 => None,
            n => Some(self.plan.sources[((j as u64 + generation) % n as u64) as usize]),
        };
        let addr = self.plan.destination(j).addr;
        let reset = self.plan.close == Close::Rst;
        // The connect is timed from here: the clock is read for it (the loop's reading may be
        // a whole batch of events old).
        self.now = clock_ns();
        let result = open_socket(addr, source, reset).and_then(|mut socket| {
            self.poll.registry().register(
                &mut socket,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(socket)
        });
        let conn = &mut self.conns[i];
        match result {
            Ok(socket) => {
                conn.state = ConnState::Connecting(socket);
                conn.since_ns = self.now;
                trace!("conn={}.{i} connecting", self.plan.thread);
            }
            Err(e) => self.fail(i, ErrorKind::Connect, &e.to_string()),
        }
    }

    /// Short connections: what connection `i`, starting now, may send. In the measured window
    /// with `--requests` it pays for its requests at once (what is left of the budget, if less);
    /// otherwise it pays per batch, if at all.
    fn allow(&mut self, i: usize) {
        let n = self.plan.requests_per_connection;
        let measured = self.measured(self.now);
        let conn = &mut self.conns[i];
        match self.budget.as_mut().filter(|_| measured) {
            Some(budget) => {
                let paid = n.min(*budget);
                *budget -= paid;
                self.reserved += paid;
                (conn.left, conn.paid) = (paid, true);
            }
            None => (conn.left, conn.paid) = (n, false),
        }
    }

    /// Connection `i` has had all its requests answered: close it and, unless the run is
    /// ending (the window is over, or the budget is spent), connect again in its place.
    ///
    /// Kept out of line: inlined, it grew the event handler enough that the compiler stopped
    /// inlining the read path into it, which cost the persistent connections' every batch.
    #[cold]
    #[inline(never)]
    fn recycle(&mut self, i: usize) {
        trace!(
            "conn={}.{i} done: {} closing",
            self.plan.thread,
            self.plan.close.name()
        );
        self.close(i);
        let budget_spent = self.budget == Some(0) && self.measured(self.now);
        if self.now >= self.end || budget_spent {
            return;
        }
        self.conns[i].state = ConnState::Waiting;
        self.pending += 1;
        self.start_connect(i);
    }

    /// After an event on a connecting socket: `true` once it is open (over TLS: once the
    /// handshake is done, which may take this same event if the server is quick).
    fn finish_connect(&mut self, i: usize) -> bool {
        let ConnState::Connecting(socket) = &self.conns[i].state else {
            debug_assert!(false, "finish_connect on a connection not connecting");
            return false;
        };
        match connect_outcome(socket) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                self.fail(i, ErrorKind::Connect, &e.to_string());
                return false;
            }
        }
        if self.in_window() {
            let took = self.now.saturating_sub(self.conns[i].since_ns);
            self.connect_times.saturating_record(took);
            self.connects += 1;
        }
        if self.plan.proxy.is_some() && !self.send_proxy_header(i) {
            return false;
        }
        let j = self.plan.global_index(i);
        let session = match self
            .plan
            .destination(j)
            .tls
            .as_ref()
            .map(TlsConfig::session)
        {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => {
                self.tls_failed(i, &e.to_string());
                return false;
            }
        };
        self.conns[i].advance(|state| match (state, session) {
            (ConnState::Connecting(socket), None) => ConnState::Open(Stream::Plain(socket)),
            (ConnState::Connecting(socket), Some(session)) => {
                ConnState::Handshaking(Box::new(TlsStream::new(socket, session, clock_ns())))
            }
            (other, _) => other,
        });
        if self.conns[i].is_open() {
            self.opened(i);
            return true;
        }
        trace!("conn={}.{i} TLS handshake", self.plan.thread);
        self.handshake(i)
    }

    /// `--proxy-header`: writes connection `i`'s PROXY header, its first bytes (before any
    /// TLS record). `false` if that failed, a `connect` error.
    ///
    /// One `write` of at most 107 bytes on a socket just connected: its send buffer is empty
    /// and never smaller than 4 KiB (Linux's `SO_SNDBUF` floor), so it takes the whole header;
    /// a short write is reported, not retried, rather than carried as state of its own.
    #[cold]
    fn send_proxy_header(&mut self, i: usize) -> bool {
        let Some(proxy) = self.plan.proxy else {
            return true;
        };
        let j = self.plan.global_index(i);
        let dst = self.plan.destination(j).addr;
        // Connection number n of the run: the g-th connect of place j (`generation` counts
        // the connects started, this one included).
        let g = self.conns[i].generation - 1;
        let n = g * self.plan.connections as u64 + j as u64;
        let header = proxy.header(n, dst);
        let bytes = header.as_bytes();
        let ConnState::Connecting(socket) = &mut self.conns[i].state else {
            debug_assert!(false, "a PROXY header on a connection not connecting");
            return false;
        };
        let failure = match write_some(socket, bytes) {
            Ok(Some(k)) if k == bytes.len() => {
                trace!("conn={}.{i} PROXY header: {k} bytes", self.plan.thread);
                return true;
            }
            Ok(taken) => format!(
                "PROXY header: the socket took {} of {} bytes",
                taken.unwrap_or(0),
                bytes.len()
            ),
            Err(e) => format!("PROXY header: {e}"),
        };
        self.fail(i, ErrorKind::Connect, &failure);
        false
    }

    /// Moves the TLS handshake of connection `i` on: records out, records in, until it is
    /// done (`true`: the connection is open) or the socket has nothing more (`false`).
    fn handshake(&mut self, i: usize) -> bool {
        let ConnState::Handshaking(tls) = &mut self.conns[i].state else {
            debug_assert!(false, "handshake on a connection not handshaking");
            return false;
        };
        match tls.handshake() {
            Ok(true) => {
                let took = clock_ns().saturating_sub(tls.connected_ns);
                if let Some(handshakes) = self.handshakes.as_mut() {
                    handshakes.saturating_record(took);
                }
                trace!(
                    "conn={}.{i} TLS handshake done in {took} ns",
                    self.plan.thread
                );
                self.conns[i].advance(|state| match state {
                    ConnState::Handshaking(tls) => ConnState::Open(Stream::Tls(tls)),
                    other => other,
                });
                self.opened(i);
                true
            }
            Ok(false) => false,
            Err(reason) => {
                self.tls_failed(i, &reason);
                false
            }
        }
    }

    /// A TLS handshake failed: a `connect` error, its reason kept for the summary.
    fn tls_failed(&mut self, i: usize, reason: &str) {
        *self.tls_failures.entry(reason.to_string()).or_default() += 1;
        self.fail(i, ErrorKind::Connect, &format!("TLS handshake: {reason}"));
    }

    /// Open loop: connection `i`'s first slot at or after now (0 in closed loop).
    fn first_slot(&self, i: usize) -> u64 {
        self.plan.slot_ns.map_or(0, |slot_ns| {
            let j = self.plan.global_index(i) as u64;
            let c = self.plan.connections as u64;
            let elapsed = self.now.saturating_sub(self.plan.epoch_ns);
            let elapsed_slots = (elapsed as f64 / slot_ns) as u64;
            let round = elapsed_slots.saturating_sub(j).div_ceil(c);
            j + round * c
        })
    }

    /// Connection `i` has just become `Open`: its ring, its first slot, the counts; with
    /// chat, its session, whose HELLO is its first request.
    fn opened(&mut self, i: usize) {
        let now = self.now;
        let pipeline = self.plan.pipeline as usize;
        let first_slot = self.first_slot(i);
        let j = self.plan.global_index(i);
        let conn = &mut self.conns[i];
        debug_assert!(conn.is_open(), "opened a connection that is not open");
        if conn.ring.len() != pipeline {
            conn.ring = vec![0; pipeline].into_boxed_slice(); // once per place, not per connect
        }
        conn.since_ns = now;
        conn.next_slot = first_slot;
        if let Some(chat) = self.chat.as_mut() {
            let session = Box::new(Session::new(j, &chat.plan));
            conn.unsent = session.unsent().len();
            conn.session = Some(session);
            conn.ring[0] = now;
            conn.in_flight = 1;
            self.outstanding += 1;
            chat.greeting += 1;
        }
        if conn.generation == 1 {
            self.unresolved -= 1;
            self.connected += 1;
        }
        self.pending -= 1;
        self.open += 1;
        debug!("conn={}.{i} connected", self.plan.thread);
    }

    // ---- replies ----

    /// Reads until a short read (or EOF/WouldBlock when `to_end`), verifying as it goes.
    /// `false` if the connection was closed.
    fn read_replies(&mut self, i: usize, to_end: bool) -> bool {
        let mut clock_read = false;
        self.reading.start(to_end);
        loop {
            let Some(stream) = self.conns[i].open_stream() else {
                return false;
            };
            let received = match stream.receive(&mut self.scratch, &mut self.reading) {
                Ok(received) => received,
                Err(e) => {
                    self.fail(i, ErrorKind::Reset, &e.to_string());
                    return false;
                }
            };
            let n = match received {
                Received::Drained => return true, // later bytes raise a new edge
                Received::Closed => {
                    self.closed_by_server(i);
                    return false;
                }
                Received::Records(n) | Received::Plaintext(n) => n,
            };
            trace!(
                "conn={}.{i} read: {n} bytes ({received:?})",
                self.plan.thread
            );
            if !clock_read {
                // One reading for the whole batch: its replies share a receive time. Chat
                // reads the clock per read instead: a long batch of pushes may hold some sent
                // after its first read, and a delivery must never look earlier than its SAY.
                self.now = clock_ns();
                clock_read = self.chat.is_none();
            }
            if let Received::Plaintext(n) = received {
                if self.in_window() {
                    self.bytes_received += n as u64;
                }
                if !self.verify(i, n) {
                    return false;
                }
            }
        }
    }

    /// The server closed connection `i` (EOF; over TLS, also `close_notify`): an error if
    /// requests were outstanding or more were to be sent.
    fn closed_by_server(&mut self, i: usize) {
        trace!("conn={}.{i} read: EOF", self.plan.thread);
        let conn = &self.conns[i];
        if conn.session.is_some() {
            // A chat session is never done before the run is: the server dropped it (as a
            // slow reader, say).
            self.fail(i, ErrorKind::Eof, "chat session closed by the server");
        } else if conn.in_flight > 0 || self.budget != Some(0) {
            self.fail(i, ErrorKind::Eof, "closed by the server");
        } else {
            self.close(i);
        }
    }

    /// Verifies `scratch[..n]` in place and completes the replies it holds. `false` if the
    /// connection was closed for a mismatch.
    fn verify(&mut self, i: usize, n: usize) -> bool {
        if self.chat.is_some() {
            return self.hear(i, n);
        }
        let data = &self.scratch[..n];
        let conn = &mut self.conns[i];
        let mut phase = conn.reply_phase;
        let in_flight = u64::from(conn.in_flight);
        let problem = match self.verifier.check(&mut phase, data) {
            Ok(done) if done < in_flight || (done == in_flight && phase == 0) => {
                conn.reply_phase = phase;
                self.complete(i, done as u32);
                return true;
            }
            Ok(done) => (
                done,
                format!(
                    "a reply that was not asked for ({in_flight} request(s) outstanding): \"{}\"",
                    super::workload::escape(data)
                ),
            ),
            Err(mismatch) => (
                mismatch.complete,
                self.verifier
                    .describe(self.plan.exchange.protocol, data, &mismatch),
            ),
        };
        let (good, problem) = problem;
        // The replies before the bad one were right: they count.
        self.complete(i, good.min(in_flight) as u32);
        self.fail(i, ErrorKind::Mismatch, &problem);
        false
    }

    /// Pops `k` send times and records the latencies of those in the measured window. Runs of
    /// equal send times (a batch) are recorded with one `record_n`.
    fn complete(&mut self, i: usize, k: u32) {
        if k == 0 {
            return;
        }
        let now = self.now;
        let conn = &mut self.conns[i];
        let pipeline = conn.ring.len() as u32;
        let by_receive_time = self.budget.is_none();
        let mut left = k;
        while left > 0 {
            let stamp = conn.ring[conn.head as usize];
            let mut run = 0;
            while run < left && conn.ring[conn.head as usize] == stamp {
                run += 1;
                conn.head += 1;
                if conn.head == pipeline {
                    conn.head = 0;
                }
            }
            left -= run;
            // Duration mode: replies received inside the window. Requests mode: replies to
            // requests sent inside it (those are the ones the budget paid for).
            let recorded = match self.start {
                None => false,
                Some(start) if by_receive_time => now >= start && now < self.end,
                Some(start) => stamp >= start,
            };
            if recorded {
                self.histogram
                    .saturating_record_n(now.saturating_sub(stamp), u64::from(run));
                self.requests_done += u64::from(run);
                self.last_reply_ns = now;
            }
        }
        conn.in_flight -= k;
        conn.since_ns = now;
        self.outstanding -= u64::from(k);
        self.replies += u64::from(k);
    }

    // ---- requests ----

    /// Whether a request stamped `stamp` is measured (and so paid from the budget).
    fn measured(&self, stamp: u64) -> bool {
        self.start.is_some_and(|start| stamp >= start)
    }

    /// Fills the free slots of connection `i` (closed loop: all of them, stamped now; open
    /// loop: those whose scheduled time has come, stamped with it). Bytes are only queued;
    /// [`Worker::flush`] writes them.
    fn refill(&mut self, i: usize) {
        let pipeline = self.plan.pipeline;
        let conn = &self.conns[i];
        if !conn.is_open() || conn.in_flight >= pipeline {
            return;
        }
        if let Some(chat) = &self.chat {
            // SAYs only once every session is identified (the window is known) and until
            // this thread stops sending.
            let identified = conn.session.as_ref().is_some_and(|s| s.identified());
            if !identified || self.start.is_none() || chat.stopped || self.now >= self.end {
                return;
            }
        }
        match self.plan.slot_ns {
            None => {
                // Never more than the connection has left (`queue` takes them from it).
                let mut k = (pipeline - conn.in_flight).min(clamp_u32(conn.left));
                if conn.paid {
                    self.reserved -= u64::from(k);
                } else if self.measured(self.now)
                    && let Some(budget) = self.budget.as_mut()
                {
                    k = k.min(clamp_u32(*budget));
                    *budget -= u64::from(k);
                }
                let now = self.now;
                self.queue(i, k, |_| now);
            }
            Some(slot_ns) => {
                let c = self.plan.connections as u64;
                let mut k = 0;
                let mut slot = conn.next_slot;
                while conn.in_flight + k < pipeline {
                    let due = self.slot_time(slot, slot_ns);
                    if due > self.now {
                        break;
                    }
                    if self.measured(due)
                        && let Some(budget) = self.budget.as_mut()
                    {
                        if *budget == 0 {
                            break;
                        }
                        *budget -= 1;
                    }
                    k += 1;
                    slot += c;
                }
                let first = conn.next_slot;
                let epoch = self.plan.epoch_ns;
                self.queue(i, k, |n| {
                    slot_time(epoch, first + u64::from(n) * c, slot_ns)
                });
                self.conns[i].next_slot = slot;
            }
        }
    }

    /// Adds `k` requests to connection `i`'s in-flight ring, the `n`-th stamped `stamp(n)`, and
    /// takes them from what it has `left`.
    fn queue(&mut self, i: usize, k: u32, stamp: impl Fn(u32) -> u64) {
        if k == 0 {
            return;
        }
        let conn = &mut self.conns[i];
        let pipeline = conn.ring.len() as u32;
        debug_assert!(
            conn.in_flight + k <= pipeline,
            "more in flight than --pipeline"
        );
        if conn.in_flight == 0 {
            conn.since_ns = self.now;
        }
        let mut slot = conn.head + conn.in_flight;
        for n in 0..k {
            if slot >= pipeline {
                slot -= pipeline;
            }
            conn.ring[slot as usize] = stamp(n);
            slot += 1;
        }
        conn.in_flight += k;
        conn.left -= u64::from(k);
        self.outstanding += u64::from(k);
        match (conn.session.as_mut(), self.chat.as_mut()) {
            (Some(session), Some(chat)) => {
                let (epoch, start, end) = (self.plan.epoch_ns, self.start, self.end);
                for n in 0..k {
                    let at = stamp(n);
                    conn.unsent += session.queue_say(at.saturating_sub(epoch), &chat.plan.padding);
                    if start.is_some_and(|start| at >= start) && at < end {
                        chat.tally.messages += 1;
                    }
                }
            }
            _ => conn.unsent += k as usize * self.request_len,
        }
    }

    /// Writes what connection `i` owes until done or the socket is full: one `write` when the
    /// batch fits the batch buffer, which it does for requests up to 64 KiB / pipeline. Over
    /// TLS the batch goes into the session and its records to the socket (records made
    /// earlier first, even when nothing is owed).
    fn flush(&mut self, i: usize) {
        loop {
            let conn = &mut self.conns[i];
            let ConnState::Open(stream) = &mut conn.state else {
                return;
            };
            let window = match &conn.session {
                Some(session) => session.unsent(),
                None => self.requests.window(conn.send_phase, conn.unsent),
            };
            let n = match stream.send(window) {
                Ok(Some(0) | None) => return, // nothing owed, or the socket is full
                Ok(Some(n)) => n,
                Err(e) => return self.fail(i, ErrorKind::Reset, &e.to_string()),
            };
            trace!(
                "conn={}.{i} write: {n} of {} bytes",
                self.plan.thread, conn.unsent
            );
            // A short write means the socket buffer is full: a writable edge will follow.
            let more = n == window.len() && conn.unsent > n;
            conn.unsent -= n;
            match conn.session.as_mut() {
                Some(session) => session.wrote(n),
                None => conn.send_phase = self.requests.advance(conn.send_phase, n),
            }
            if self.in_window() {
                self.bytes_sent += n as u64;
            }
            if !more {
                return;
            }
        }
    }

    fn in_window(&self) -> bool {
        self.start.is_some_and(|start| self.now >= start) && self.now < self.end
    }

    // ---- open loop ----

    fn slot_time(&self, slot: u64, slot_ns: f64) -> u64 {
        slot_time(self.plan.epoch_ns, slot, slot_ns)
    }

    fn cursor_slot(&self) -> u64 {
        let (round, local) = self.cursor;
        round * self.plan.connections as u64 + self.plan.global_index(local) as u64
    }

    /// Visits this thread's slots that have come due, in time order, and sends what each
    /// connection has due (a connection with a full pipeline sends when a reply frees a slot).
    fn send_scheduled(&mut self) {
        let Some(slot_ns) = self.plan.slot_ns else {
            return;
        };
        if self.conns.is_empty() {
            return;
        }
        for _ in 0..SLOT_BUDGET {
            if self.slot_time(self.cursor_slot(), slot_ns) > self.now {
                return;
            }
            let (round, local) = self.cursor;
            if self.conns[local].is_open() {
                self.refill(local);
                self.flush(local);
            }
            self.cursor = if local + 1 == self.conns.len() {
                (round + 1, 0)
            } else {
                (round, local + 1)
            };
        }
    }

    // ---- chat ----

    /// The window is known, so every session of the run is identified: the first SAYs (in
    /// open loop, from the first slot after now: the greeting was no part of the timetable).
    fn start_chatting(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].is_open() {
                self.conns[i].next_slot = self.first_slot(i);
                self.refill(i);
                self.flush(i);
            }
        }
    }

    /// Chat: takes `scratch[..n]` into connection `i`'s session. Own replies answer requests;
    /// pushes are checked and counted. `false` if the connection was closed for a line it may
    /// not receive.
    fn hear(&mut self, i: usize, n: usize) -> bool {
        let start = self.shared.start_ns.load(Ordering::Acquire);
        // The window as the senders apply it, whether or not this thread has learnt it yet.
        let window = (start != UNKNOWN).then(|| match self.plan.budget {
            Some(_) => (start, u64::MAX),
            None => (start, start.saturating_add(self.plan.duration_ns)),
        });
        let moment = Moment {
            now_ns: self.now,
            epoch_ns: self.plan.epoch_ns,
            window,
        };
        let conn = &mut self.conns[i];
        let in_flight = conn.in_flight;
        let (Some(chat), Some(session)) = (self.chat.as_mut(), conn.session.as_mut()) else {
            debug_assert!(false, "chat bytes for a connection without a session");
            return false;
        };
        let data = &self.scratch[..n];
        let (taken, refused) =
            match session.receive(data, in_flight, &chat.plan, moment, &mut chat.tally) {
                Ok(taken) => (taken, None),
                Err(refused) => (refused.taken, Some(refused.detail)),
            };
        if taken.welcomed {
            chat.greeting -= 1;
            chat.tally.sessions += 1;
        }
        self.complete(i, taken.replies);
        match refused {
            None => true,
            Some(detail) => {
                self.fail(i, ErrorKind::Mismatch, &detail);
                false
            }
        }
    }

    /// Each turn with chat: once sending is done, stop ([`Worker::stop_chat`]); once every
    /// thread has, wait up to `--drain` for the pushes still in flight.
    fn chat_turn(&mut self) {
        if self.sending_done() {
            self.stop_chat();
        }
        let now = self.now;
        if let Some(chat) = self.chat.as_mut()
            && chat.stopped
            && chat.drain.is_none()
            && chat.plan.all_stopped()
        {
            chat.drain = Some((now.saturating_add(chat.plan.drain_ns), chat.plan.total()));
            debug!("thread {}: every thread stopped sending", self.plan.thread);
        }
    }

    /// No more SAYs from this thread: publishes each sender's final count (every SAY queued
    /// if it is connected, they will all be written; the answered ones if not), once.
    fn stop_chat(&mut self) {
        let Some(chat) = self.chat.as_mut().filter(|chat| !chat.stopped) else {
            return;
        };
        for (i, conn) in self.conns.iter().enumerate() {
            if let Some(session) = &conn.session {
                let j = self.plan.global_index(i);
                chat.plan.publish(j, session.floor(conn.is_open()));
            }
        }
        chat.stopped = true;
        chat.plan.stop();
        debug!("thread {}: stopped sending", self.plan.thread);
    }

    /// Whether every open session of this thread has got to as many messages as the other
    /// senders sent (`total` less its own), or the wait `until` is over.
    fn drained(&self, (until, total): (u64, u64)) -> bool {
        let Some(chat) = self.chat.as_ref().filter(|_| self.now < until) else {
            return true;
        };
        self.conns
            .iter()
            .enumerate()
            .all(|(i, conn)| match &conn.session {
                Some(session) if conn.is_open() => {
                    let own = u64::from(chat.plan.floor(self.plan.global_index(i)));
                    session.passed() >= total.saturating_sub(own)
                }
                _ => true,
            })
    }

    /// At the end: what each session still connected never got to is missing (once every
    /// thread has stopped; otherwise the final counts are not known).
    fn count_missing(&mut self) {
        self.stop_chat();
        let Some(chat) = self.chat.as_mut().filter(|chat| chat.plan.all_stopped()) else {
            return;
        };
        for conn in &self.conns {
            let session = conn.session.as_ref();
            if let Some(session) = session.filter(|s| conn.is_open() && s.identified()) {
                chat.tally.missing += session.missing(&chat.plan);
            }
        }
    }

    // ---- timeouts, closing, reporting ----

    fn scan_timeouts(&mut self) {
        let timeout = self.plan.timeout_ns;
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            let waited = self.now.saturating_sub(conn.since_ns);
            match conn.state {
                ConnState::Connecting(_) if waited >= timeout => {
                    self.fail(i, ErrorKind::Connect, "not connected within --timeout");
                }
                ConnState::Handshaking(_) if waited >= timeout => {
                    self.tls_failed(i, "not done within --timeout");
                }
                ConnState::Open(_) if conn.in_flight > 0 && waited >= timeout => {
                    let detail = format!(
                        "no reply for {:?} with {} request(s) outstanding",
                        Duration::from_nanos(waited),
                        conn.in_flight
                    );
                    self.fail(i, ErrorKind::Timeout, &detail);
                }
                _ => {}
            }
        }
    }

    /// Counts an error of `kind` and closes connection `i`.
    fn fail(&mut self, i: usize, kind: ErrorKind, detail: &str) {
        self.errors.count(kind);
        let thread = self.plan.thread;
        if WARNINGS[kind as usize].fetch_add(1, Ordering::Relaxed) < WARNINGS_PER_KIND {
            warn!(
                "conn={thread}.{i} {} error ({}): {detail}",
                kind.name(),
                self.plan.destination(self.plan.global_index(i)).addr
            );
        } else {
            debug!("conn={thread}.{i} {} error: {detail}", kind.name());
        }
        self.close(i);
    }

    /// Closes connection `i` for good (dropping the socket deregisters it).
    fn close(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        match conn.state {
            ConnState::Waiting | ConnState::Connecting(_) | ConnState::Handshaking(_) => {
                self.pending -= 1;
                if conn.generation <= 1 {
                    self.unresolved -= 1;
                }
            }
            ConnState::Open(_) => {
                self.open -= 1;
                if let (Some(session), Some(chat)) = (&conn.session, self.chat.as_mut()) {
                    if session.identified() {
                        chat.tally.disconnected += 1;
                    } else {
                        chat.greeting -= 1;
                    }
                }
            }
            ConnState::Closed => return,
        }
        conn.say_goodbye();
        self.outstanding -= u64::from(conn.in_flight);
        if conn.paid {
            self.reserved -= conn.left;
            (conn.left, conn.paid) = (0, false);
        }
        conn.in_flight = 0;
        conn.unsent = 0;
        conn.send_phase = 0;
        conn.reply_phase = 0;
        conn.state = ConnState::Closed;
        debug!("conn={}.{i} closed", self.plan.thread);
    }

    /// Tells the main thread what it waits for: connects resolved, progress, snapshots.
    fn tell_main(&mut self) {
        let thread = self.plan.thread;
        let greeting = self.chat.as_ref().map_or(0, |chat| chat.greeting);
        if !self.told_connected && self.unresolved == 0 && greeting == 0 {
            self.told_connected = true;
            let _ = self.to_main.send(Message::Connected(thread));
        }
        if !self.plan.progress {
            return;
        }
        let progress = &self.shared.progress[thread];
        progress.replies.store(self.replies, Ordering::Relaxed);
        progress.open.store(self.open, Ordering::Relaxed);
        progress
            .errors
            .store(self.errors.total(), Ordering::Relaxed);
        if self.now >= self.next_snapshot {
            self.next_snapshot = self.now + SNAPSHOT_EVERY_NS;
            let snapshot = Box::new(self.histogram.clone());
            let _ = self.to_main.send(Message::Snapshot(thread, snapshot));
        }
    }
}

/// `n`, or `u32::MAX` if it is more.
fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// When slot `slot` of the open-loop timetable is due.
fn slot_time(epoch_ns: u64, slot: u64, slot_ns: f64) -> u64 {
    epoch_ns + (slot as f64 * slot_ns) as u64
}

/// How a connect that was in progress went: `Ok(true)` connected, `Ok(false)` not yet (a
/// spurious edge), `Err` failed (mio's `TcpStream::connect` recipe).
fn connect_outcome(socket: &TcpStream) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e)
            if e.kind() == io::ErrorKind::NotConnected
                || e.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A nonblocking TCP socket connecting to `addr` from `source` (any port), with TCP_NODELAY;
/// with `reset`, `SO_LINGER` 0, so that closing it sends an RST and leaves no TIME_WAIT.
///
/// With a source address, `IP_BIND_ADDRESS_NO_PORT` defers the port choice to `connect`, so a
/// port is only unique per (source, destination) pair: several source IPs multiply the
/// connections one destination can take.
fn open_socket(addr: SocketAddr, source: Option<IpAddr>, reset: bool) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if reset {
        socket.set_linger(Some(Duration::ZERO))?;
    }
    if let Some(ip) = source {
        if ip.is_ipv4() {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int through a valid pointer of the given size.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    std::ptr::from_ref(&on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                debug!("IP_BIND_ADDRESS_NO_PORT: {}", io::Error::last_os_error());
            }
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(thread: usize, threads: usize, connections: usize) -> Plan {
        Plan {
            thread,
            threads,
            connections,
            destinations: Arc::from(vec![Destination {
                addr: "127.0.0.1:1".parse().unwrap(),
                tls: None,
            }]),
            sources: Arc::from(Vec::new()),
            pipeline: 1,
            requests_per_connection: 0,
            close: Close::Fin,
            exchange: Arc::new(super::super::workload::exchange(
                super::super::workload::Workload::Ping,
                0,
                b"",
            )),
            connect_interval_ns: 0.0,
            slot_ns: None,
            budget: None,
            duration_ns: 0,
            timeout_ns: 1,
            epoch_ns: 0,
            progress: false,
            chat: None,
            proxy: None,
        }
    }

    #[test]
    fn connections_are_dealt_round_robin() {
        let counts: Vec<usize> = (0..3).map(|t| plan(t, 3, 10).local_connections()).collect();
        assert_eq!(counts, [4, 3, 3]);
        assert_eq!(plan(1, 3, 10).global_index(2), 7);
        assert_eq!(plan(0, 1, 5).local_connections(), 5);
    }

    #[test]
    fn connections_take_the_addresses_in_turn() {
        let mut p = plan(1, 2, 7);
        p.destinations = ["127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"]
            .iter()
            .map(|addr| Destination {
                addr: addr.parse().unwrap(),
                tls: None,
            })
            .collect();
        let ports: Vec<u16> = (0..7).map(|j| p.destination(j).addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
        // This thread's connections (global 1, 3, 5) by local index.
        let mine: Vec<u16> = (0..p.local_connections())
            .map(|i| p.destination(p.global_index(i)).addr.port())
            .collect();
        assert_eq!(mine, [2, 1, 3]);
        assert!(!p.tls());
    }

    #[test]
    fn the_clock_is_monotonic_nanoseconds() {
        let a = clock_ns();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock_ns();
        assert!(b - a >= 2_000_000, "{a} {b}");
    }
}
