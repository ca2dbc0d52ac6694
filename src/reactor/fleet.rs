//! Several loops in one process (`--workers N`): what they share, and how they talk.
//!
//! Each worker is a whole [`Server`](super::Server) on its own thread: its own poll, slab,
//! timer wheel, buffers and counters. Serving a request touches nothing but that worker's
//! own memory, so the loops scale like separate processes (nginx's workers, gnet's loops).
//! What they share lives here, in one [`Fleet`], and is touched only by events rarer than a
//! request:
//!
//! - **Placing connections** ([`Balance`]). With `least-conn`, worker 0 alone owns the
//!   listeners: it accepts a burst, picks for each socket the worker with the fewest
//!   connections (a load count per worker, raised by the acceptor as it places, lowered by
//!   the owner as a connection closes), and sends it down that worker's hand-off channel.
//!   With `reuseport`, every worker binds its own `SO_REUSEPORT` listeners and the kernel
//!   picks, by a hash of the connection's addresses.
//!   Under socket activation worker 0 serves the listeners passed in and places as with
//!   least-conn; reuseport is refused then (the service manager passes one socket per
//!   address, and each worker would need its own).
//! - **The limits.** `--max-connections` is one count for the process (an atomic taken at
//!   admission, given back when the session ends); the login pool is one pool
//!   ([`Logins`]); `--client-memory` is split evenly, each worker holding its share.
//! - **The chat room.** Names are unique across workers ([`Names`], a lock taken by HELLO and
//!   by a session's end). A SAY is delivered by its own worker to its local sessions, and
//!   posted once to every other worker's inbox: a channel of shared message bytes, bounded
//!   at [`INBOX_BYTES`], that its owner drains on its next wakeup and delivers to its own
//!   sessions. One sender's messages enter each inbox in the order sent and leave it in that
//!   order, so every session sees each sender's messages in order, once.
//! - **STATS.** Each worker publishes a copy of its counters (and its loop figures, for the
//!   metrics endpoint) at the end of every turn; the worker answering STATS adds the others'
//!   copies to its own live counters, and worker 0 labels each in a scrape. A STATS is a
//!   census: it waits until every other worker has published once after it arrived (each
//!   is woken for it), so the sums hold whatever any worker did before the request.
//!
//! Waking: a worker that hands a socket over or posts a message sets the receiver's
//! `signalled` flag and, if it was clear, calls its `mio::Waker` (one eventfd write); the
//! receiver clears the flag before it drains. So a burst of hand-offs or posts costs one
//! wakeup, however many it holds.
//!
//! What it refuses to do: block. An inbox that is full does not make the sender wait; the
//! message is not queued, and a loss marker (an empty message, one at most waiting at a
//! time) takes its place in the inbox's order. When the receiving worker reaches it, it
//! disconnects its identified sessions as slow readers before delivering anything posted
//! after the loss: they missed a message, and a session never silently misses one (it is
//! dropped, as at the push cap).
//! A worker that falls behind therefore costs its own sessions, never the other workers.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use log::{error, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::Server;
use super::accept::ListenerId;
use super::activation::{ActivationError, Inherited};
use super::cluster::Cluster;
use super::connection::State;
use super::logins::Logins;
use super::metrics::LoopMetrics;
use super::proxy::Addresses;
use super::token;
use crate::config::{Balance, Config};
use crate::handler::Names;
use crate::stats::{Stats, Totals};

/// Chat bytes one worker may have waiting in its inbox from the others. A worker drains its
/// inbox on every wakeup, so this is reached only by one that has stopped keeping up: 8 MiB
/// is eight full push caps (`PUSH_CAP`), several thousand SAYs of ordinary length.
pub const INBOX_BYTES: usize = 8 << 20;

/// A socket accepted by the worker that owns the listeners, for another one to serve.
pub struct Handoff {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub listener: ListenerId,
}

/// What the other workers may touch of one worker. Aligned to two cache lines so that one
/// worker's counters never share a line with another's (adjacent-line prefetch included).
#[repr(align(128))]
struct Member {
    waker: Arc<Waker>,
    /// Set by whoever hands over or posts; cleared by the owner before it drains.
    signalled: AtomicBool,
    handoffs: Sender<Handoff>,
    inbox: Sender<Arc<[u8]>>,
    /// Bytes posted to the inbox and not yet taken out.
    inbox_bytes: AtomicUsize,
    /// A message could not be posted and the loss marker is in the inbox, not yet taken out:
    /// at most one marker waits at a time.
    lost: AtomicBool,
    /// Connections placed on this worker and not yet closed (least-conn only).
    load: AtomicUsize,
    /// The worker's counters and loop figures as of the end of its last turn.
    published: Mutex<(Stats, LoopMetrics)>,
    /// How many times `published` has been written: a STATS waits for the count to move.
    publishes: AtomicU64,
    /// The worker has left its loop: what it published last is final.
    retired: AtomicBool,
    /// The worker has STATS waiting for the others' next publish: wake it after each one.
    awaits: AtomicBool,
}

/// The workers of one process and what they share; see the module doc.
pub struct Fleet {
    members: Box<[Member]>,
    balance: Balance,
    /// Sessions served now (not counting refusals), all workers together.
    served: AtomicUsize,
    /// Workers whose listeners are still open. A worker in a shutdown exits only once this
    /// is 0: until then a socket may still be accepted and handed to it.
    accepting: AtomicUsize,
    /// The listeners were passed in by a service manager (socket activation): worker 0
    /// serves them, and a shutdown leaves their backlog to the next process.
    inherited: bool,
    names: Arc<Names>,
    logins: Arc<Logins>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections per client address, for `--max-connections-per-ip`.
    addresses: Addresses,
    /// With `--cluster-redis`: the links to the other nodes, one pair for the process.
    cluster: Option<Arc<Cluster>>,
    /// Workers with `awaits` set. Read at every publish, written only by a STATS: on a line
    /// of its own, so that the accept path's writes to `served` do not move it.
    awaiting: Padded<AtomicUsize>,
}

/// A value alone on its two cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// What one worker is given to be built from: its poll (with the waker the others use and
/// its signals already registered) and its mailbox.
pub struct Seat {
    pub poll: Poll,
    pub waker: Arc<Waker>,
    /// SIGINT and SIGTERM, for this worker. Every seat's are in place before any listener
    /// is bound: a signal sent the moment a port is open reaches every worker.
    pub signals: Signals,
    pub mailbox: Mailbox,
}

/// One worker's place in the fleet: its index, the fleet, and the receiving ends of its
/// hand-off channel and chat inbox.
pub struct Mailbox {
    index: usize,
    fleet: Arc<Fleet>,
    handoffs: Receiver<Handoff>,
    inbox: Receiver<Arc<[u8]>>,
}

impl Fleet {
    /// The shared state of `workers` loops, and a seat for each.
    pub fn seats(
        config: &Config,
        workers: usize,
        logins: Arc<Logins>,
        tls: Option<Arc<rustls::ServerConfig>>,
        inherited: bool,
    ) -> io::Result<Vec<Seat>> {
        let mut polls = Vec::with_capacity(workers);
        let mut members = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), token::WAKER)?);
            let mut signals = Signals::new([SIGINT, SIGTERM])?;
            poll.registry()
                .register(&mut signals, token::SIGNALS, Interest::READABLE)?;
            let (handoffs, handoffs_rx) = mpsc::channel();
            let (inbox, inbox_rx) = mpsc::channel();
            members.push(Member {
                waker: Arc::clone(&waker),
                signalled: AtomicBool::new(false),
                handoffs,
                inbox,
                inbox_bytes: AtomicUsize::new(0),
                lost: AtomicBool::new(false),
                load: AtomicUsize::new(0),
                published: Mutex::new((Stats::default(), LoopMetrics::default())),
                publishes: AtomicU64::new(0),
                retired: AtomicBool::new(false),
                awaits: AtomicBool::new(false),
            });
            polls.push((poll, waker, signals));
            receivers.push((handoffs_rx, inbox_rx));
        }
        let fleet = Arc::new(Fleet {
            members: members.into_boxed_slice(),
            balance: config.balance,
            served: AtomicUsize::new(0),
            accepting: AtomicUsize::new(if config.balance == Balance::Reuseport {
                workers
            } else {
                1
            }),
            inherited,
            names: Arc::new(Names::default()),
            logins,
            tls,
            addresses: Addresses::new(config.max_connections_per_ip),
            cluster: config
                .cluster_redis
                .as_deref()
                .map(|addr| Cluster::new(addr, &config.cluster_channel)),
            awaiting: Padded::default(),
        });
        if let Some(cluster) = &fleet.cluster {
            cluster.start(Arc::downgrade(&fleet))?;
        }
        Ok(polls
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(
                |(index, ((poll, waker, signals), (handoffs, inbox)))| Seat {
                    poll,
                    waker,
                    signals,
                    mailbox: Mailbox {
                        index,
                        fleet: Arc::clone(&fleet),
                        handoffs,
                        inbox,
                    },
                },
            )
            .collect())
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.members.len()
    }

    /// Whether this worker is the only one: then nothing here is ever contended or posted.
    pub fn is_alone(&self) -> bool {
        self.members.len() == 1
    }

    pub fn logins(&self) -> Arc<Logins> {
        Arc::clone(&self.logins)
    }

    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.clone()
    }

    /// The cluster this process is a node of (`--cluster-redis`), if any.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
    }

    /// The per-address connection counts, one for the whole process.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The names every worker's room shares; `None` for a worker alone, whose room needs
    /// no lock.
    pub fn names(&self) -> Option<Arc<Names>> {
        (!self.is_alone()).then(|| Arc::clone(&self.names))
    }

    /// Whether `worker` binds listeners of its own.
    pub fn listens(&self, worker: usize) -> bool {
        worker == 0 || self.balance == Balance::Reuseport
    }

    /// Whether the listeners were passed in by a service manager (socket activation): they
    /// outlive the process, and the connections in their backlog are the next process's.
    pub fn inherits_listeners(&self) -> bool {
        self.inherited
    }

    /// Whether the listeners are bound with `SO_REUSEPORT`, shared by every worker.
    pub fn reuse_port(&self) -> bool {
        !self.is_alone() && self.balance == Balance::Reuseport
    }

    /// Workers whose listeners are still open.
    pub fn accepting(&self) -> usize {
        self.accepting.load(Ordering::Acquire)
    }

    /// A worker has closed its listeners (for good): every other worker is woken to see
    /// whether it may now exit. Everything it handed over before is in the channels by now.
    pub fn stop_accepting(&self) {
        let _ = self
            .accepting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if self.is_alone() {
            return;
        }
        for member in self.members.iter() {
            member.signalled.store(true, Ordering::Release);
            if let Err(e) = member.waker.wake() {
                error!("waking a worker at the close of the listeners: {e}");
            }
        }
    }

    /// Takes one of the `max` session slots of the process; `false`: all are taken.
    pub fn take_slot(&self, max: usize) -> bool {
        self.served
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A session has ended: its slot is free.
    pub fn free_slot(&self) {
        self.served.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether connections are placed by their count (least-conn over several workers).
    fn places(&self) -> bool {
        !self.is_alone() && self.balance == Balance::LeastConn
    }

    /// The worker that should serve the next accepted socket: the one with the fewest
    /// connections (the lowest index among equals), which is counted as having one more.
    pub fn place(&self, from: usize) -> usize {
        if !self.places() {
            return from;
        }
        let (target, _) = self
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| (index, member.load.load(Ordering::Relaxed)))
            .min_by_key(|&(index, load)| (load, index))
            .unwrap_or((from, 0));
        self.members[target].load.fetch_add(1, Ordering::Relaxed);
        target
    }

    /// A connection placed on `worker` has closed (or never became one).
    pub fn leave(&self, worker: usize) {
        if self.places() {
            let _ =
                self.members[worker]
                    .load
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// A socket placed on `from` is served by `to` after all.
    pub fn moved(&self, from: usize, to: usize) {
        if self.places() {
            self.leave(from);
            self.members[to].load.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a socket to `worker`; it is woken by [`Fleet::wake`]. A worker that has already
    /// exited gives the socket back.
    pub fn hand_off(&self, worker: usize, handoff: Handoff) -> Result<(), Handoff> {
        self.members[worker]
            .handoffs
            .send(handoff)
            .map_err(|mpsc::SendError(handoff)| handoff)
    }

    /// Posts a chat message to `worker`'s inbox; it is woken by [`Fleet::wake`]. Over
    /// `INBOX_BYTES` the message is not queued: a loss marker (an empty message) takes its
    /// place in the order, unless one is already waiting there.
    pub fn post(&self, worker: usize, message: &Arc<[u8]>) {
        let member = &self.members[worker];
        let len = message.len();
        let waiting = member.inbox_bytes.fetch_add(len, Ordering::AcqRel);
        if waiting + len > INBOX_BYTES {
            member.inbox_bytes.fetch_sub(len, Ordering::AcqRel);
            if !member.lost.swap(true, Ordering::AcqRel) {
                let _ = member.inbox.send(Arc::from(&[][..]));
            }
            return;
        }
        if member.inbox.send(Arc::clone(message)).is_err() {
            // The worker has exited: nobody is left there to deliver to.
            member.inbox_bytes.fetch_sub(len, Ordering::AcqRel);
        }
    }

    /// Wakes `worker` unless it was woken since it last drained its mail.
    pub fn wake(&self, worker: usize) -> io::Result<()> {
        let member = &self.members[worker];
        if member.signalled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        member.waker.wake()
    }

    /// Publishes `worker`'s counters for the others' STATS, and its loop figures with them
    /// for the metrics endpoint; then wakes the workers whose STATS wait for it.
    pub fn publish(&self, worker: usize, stats: &Stats, loops: &LoopMetrics) {
        let member = &self.members[worker];
        {
            let mut published = member
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            published.0.clone_from(stats);
            published.1.clone_from(loops);
            // Counted once the copy is in place: a count seen to pass a census's target
            // stands for a copy taken after the census asked.
            member.publishes.fetch_add(1, Ordering::SeqCst);
        }
        if self.awaiting.0.load(Ordering::SeqCst) == 0 {
            return;
        }
        for (index, other) in self.members.iter().enumerate() {
            if index != worker
                && other.awaits.load(Ordering::SeqCst)
                && let Err(e) = self.wake(index)
            {
                error!("waking worker {index} for its STATS: {e}");
            }
        }
    }

    /// `worker` has left its loop for good: its last counters are published, and a STATS
    /// waits for it no more.
    pub fn retire(&self, worker: usize, stats: &Stats, loops: &LoopMetrics) {
        // Before the last publish, whose wake then finds it: a census asked from now on
        // counts this worker as done, and one asked earlier is met by that publish.
        self.members[worker].retired.store(true, Ordering::SeqCst);
        self.publish(worker, stats, loops);
    }

    /// Begins a census for a STATS on `worker`: the publish count every other worker must
    /// reach for its copy to have been taken after now. `worker` is woken after each
    /// publish until [`Fleet::stop_awaiting`].
    ///
    /// The orders match [`Fleet::publish`]'s (all `SeqCst`): either a publish's count is
    /// seen here, and a later one is waited for, or that publish sees `awaits` and wakes.
    pub fn ask(&self, worker: usize) -> Box<[u64]> {
        if !self.members[worker].awaits.swap(true, Ordering::SeqCst) {
            self.awaiting.0.fetch_add(1, Ordering::SeqCst);
        }
        self.members
            .iter()
            .map(|member| member.publishes.load(Ordering::SeqCst) + 1)
            .collect()
    }

    /// Whether every worker but `worker` has published since the census that set `targets`
    /// was asked, or has retired.
    pub fn counted(&self, worker: usize, targets: &[u64]) -> bool {
        self.members
            .iter()
            .zip(targets)
            .enumerate()
            .all(|(index, (member, &target))| {
                index == worker
                    || member.retired.load(Ordering::SeqCst)
                    || member.publishes.load(Ordering::SeqCst) >= target
            })
    }

    /// `worker` has no STATS waiting any more.
    pub fn stop_awaiting(&self, worker: usize) {
        if self.members[worker].awaits.swap(false, Ordering::SeqCst) {
            self.awaiting.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// What `worker` published at the end of its last turn.
    pub fn published(&self, worker: usize) -> (Stats, LoopMetrics) {
        self.members[worker]
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The sums over every worker, `own` (the caller's live counters) standing for
    /// `worker`'s, and each worker's active connections in worker order.
    pub fn totals(&self, worker: usize, own: &Stats) -> (Stats, Vec<u64>) {
        let mut sum = Stats::default();
        let mut active = Vec::with_capacity(self.members.len());
        for (index, member) in self.members.iter().enumerate() {
            if index == worker {
                sum.absorb(own);
                active.push(own.active);
            } else {
                let published = member
                    .published
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                sum.absorb(&published.0);
                active.push(published.0.active);
            }
        }
        (sum, active)
    }
}

impl Mailbox {
    /// This worker's index: 0 to `workers - 1`.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Begins taking the mail: the `signalled` flag is cleared first, so anything handed
    /// over or posted after this call wakes the worker again.
    pub fn open(&self) {
        self.fleet.members[self.index]
            .signalled
            .store(false, Ordering::Release);
    }

    /// The next piece of mail, if any: sockets first, then messages in the order posted.
    pub fn next(&self) -> Option<Delivery> {
        let member = &self.fleet.members[self.index];
        if let Ok(handoff) = self.handoffs.try_recv() {
            return Some(Delivery::Socket(handoff));
        }
        let bytes = self.inbox.try_recv().ok()?;
        if bytes.is_empty() {
            // Cleared before the loss is acted on: a loss after this point sends a marker
            // of its own, and every loss before it is covered by acting on this one.
            member.lost.store(false, Ordering::Release);
            return Some(Delivery::Lost);
        }
        member.inbox_bytes.fetch_sub(bytes.len(), Ordering::AcqRel);
        Some(Delivery::Message(bytes))
    }

    /// STATS's view of the process from this worker.
    pub fn census(&self) -> Census {
        Census {
            fleet: Arc::clone(&self.fleet),
            index: self.index,
        }
    }
}

/// One piece of mail: a socket to serve, or a chat message to deliver.
pub enum Delivery {
    Socket(Handoff),
    Message(Arc<[u8]>),
    /// Messages were dropped here for want of inbox room: everything after this was posted
    /// after the loss.
    Lost,
}

/// STATS from one worker: its own counters summed with the others' published ones.
pub struct Census {
    fleet: Arc<Fleet>,
    index: usize,
}

impl Totals for Census {
    fn gathers(&self) -> bool {
        !self.fleet.is_alone()
    }

    fn write_stats(&self, own: &Stats, out: &mut dyn Write) -> io::Result<()> {
        if self.fleet.is_alone() {
            let Some(cluster) = &self.fleet.cluster else {
                return crate::stats::Alone.write_stats(own, out);
            };
            let mut own = own.clone();
            cluster.figures(&mut own);
            return crate::stats::Alone.write_stats(&own, out);
        }
        let (mut sum, active) = self.fleet.totals(self.index, own);
        if let Some(cluster) = &self.fleet.cluster {
            cluster.figures(&mut sum);
        }
        sum.write_pairs(&mut *out)?;
        write!(out, " workers={} active_by_worker=", self.fleet.workers())?;
        for (n, count) in active.iter().enumerate() {
            let separator = if n == 0 { "" } else { "," };
            write!(out, "{separator}{count}")?;
        }
        Ok(())
    }
}

/// Pieces of mail taken per wakeup: past it the worker wakes itself and takes the rest in
/// its next turn, so a stream of chat from the other workers cannot hold its own clients up.
const MAIL_BUDGET: usize = 1024;

/// The loop's side: placing accepted sockets, taking mail, posting chat, publishing.
impl Server {
    /// Serves an accepted socket here, or hands it to the worker with the fewest
    /// connections (woken at the end of the accept burst).
    pub(super) fn place(&mut self, socket: TcpStream, peer: SocketAddr, id: ListenerId) {
        let me = self.mailbox.index();
        let fleet = self.mailbox.fleet();
        let target = fleet.place(me);
        if target == me {
            return self.admit(socket, peer, id);
        }
        let handoff = Handoff {
            socket,
            peer,
            listener: id,
        };
        match fleet.hand_off(target, handoff) {
            Ok(()) => self.wake_later(target),
            Err(handoff) => {
                // That worker has exited (a shutdown is under way): serve it here.
                fleet.moved(target, me);
                self.admit(handoff.socket, handoff.peer, handoff.listener);
            }
        }
    }

    fn wake_later(&mut self, worker: usize) {
        if !self.to_wake.contains(&worker) {
            self.to_wake.push(worker);
        }
    }

    /// Wakes the workers handed sockets or posted messages since the last call.
    pub(super) fn wake_others(&mut self) {
        for worker in self.to_wake.drain(..) {
            if let Err(e) = self.mailbox.fleet().wake(worker) {
                error!("waking worker {worker}: {e}");
            }
        }
    }

    /// The end of a turn with other workers about: counters for their STATS, and a wake
    /// for the ones given work.
    pub(super) fn tell_fleet(&mut self) {
        if !self.censuses.is_empty() {
            // Met already if every other worker has retired: nobody would wake us for it.
            self.count_censuses();
        }
        self.mailbox
            .fleet()
            .publish(self.mailbox.index(), &self.stats, &self.loop_metrics);
        self.wake_others();
    }

    /// A STATS with other workers about: the connection waits in `Verifying` (the requests
    /// after it wait in order, as behind a LOGIN) until every other worker has published
    /// its counters after this moment, so that the sums hold everything any worker did
    /// before the request arrived. Each is woken for it, at the end of this turn.
    pub(super) fn start_census(&mut self, key: usize) {
        let me = self.mailbox.index();
        let targets = self.mailbox.fleet().ask(me);
        let conn = &mut self.connections[key];
        conn.set_state(State::Verifying);
        self.censuses.push((conn.token(), targets));
        for worker in (0..self.mailbox.fleet().workers()).filter(|&w| w != me) {
            self.wake_later(worker);
        }
    }

    /// Answers the STATS whose census is complete: every other worker has published
    /// since (or retired). One that has gone, or begun closing, meanwhile is dropped.
    pub(super) fn count_censuses(&mut self) {
        let me = self.mailbox.index();
        let mut censuses = std::mem::take(&mut self.censuses);
        // Asked in order, so met in order: a later census's targets are never lower.
        let met = censuses
            .iter()
            .take_while(|(_, targets)| self.mailbox.fleet().counted(me, targets))
            .count();
        for (token, _) in censuses.drain(..met) {
            self.answer_census(token);
        }
        // An answer may have let held requests run (in a shutdown), a STATS among them.
        censuses.append(&mut self.censuses);
        if censuses.is_empty() {
            self.mailbox.fleet().stop_awaiting(me);
        }
        self.censuses = censuses;
    }

    fn answer_census(&mut self, token: Token) {
        let waiting = self
            .key_of(token)
            .filter(|&key| self.connections[key].state() == State::Verifying);
        let Some(key) = waiting else {
            return;
        };
        // As from a loop alone, whose reply is written before its request is counted, a
        // STATS does not count itself (it was counted when executed).
        let mut own = self.stats.clone();
        own.requests = own.requests.saturating_sub(1);
        self.connections[key].answer_stats(&self.census, &own);
        if self.shutdown_deadline.is_some() {
            return self.shut_down_connection(key);
        }
        // The requests held behind the STATS, then whatever the socket holds.
        self.revisit_next_turn(key);
        self.settle(key);
    }

    /// A SAY's message for the sessions of the other workers: one shared copy, posted to
    /// each inbox in the order the SAYs were executed.
    pub(super) fn post_to_others(&mut self, message: &[u8]) {
        let me = self.mailbox.index();
        let bytes: Arc<[u8]> = Arc::from(message);
        for worker in (0..self.mailbox.fleet().workers()).filter(|&w| w != me) {
            self.mailbox.fleet().post(worker, &bytes);
            self.wake_later(worker);
        }
    }

    /// Woken by the other workers: serve the sockets they handed over, deliver the chat
    /// messages they posted.
    pub(super) fn take_mail(&mut self) {
        self.mailbox.open();
        for _ in 0..MAIL_BUDGET {
            match self.mailbox.next() {
                None => return,
                Some(Delivery::Socket(handoff)) => {
                    self.admit(handoff.socket, handoff.peer, handoff.listener);
                }
                Some(Delivery::Message(bytes)) => self.deliver(&bytes, None),
                Some(Delivery::Lost) => self.drop_chat_sessions(),
            }
        }
        // More may be waiting, and nothing else would wake us for it.
        let me = self.mailbox.index();
        if let Err(e) = self.mailbox.fleet().wake(me) {
            error!("waking worker {me} for its mail: {e}");
        }
    }

    /// Messages for this worker's sessions were lost (its inbox was full): every identified
    /// session has missed one, and is disconnected as a slow reader rather than go on with
    /// a gap it cannot see.
    #[cold]
    fn drop_chat_sessions(&mut self) {
        warn!("chat inbox over {INBOX_BYTES} bytes: dropping this worker's chat sessions");
        let mut doomed = std::mem::take(&mut self.doomed);
        doomed.extend(
            self.room
                .members()
                .filter_map(|id| self.key_of(Token(id.0 as usize))),
        );
        for &key in &doomed {
            self.stats.slow_reader_drops += 1;
            self.close(key, "slow reader: its worker's chat inbox overflowed");
        }
        doomed.clear();
        self.doomed = doomed;
    }
}

/// Runs `--workers` loops until every one has finished its shutdown, and returns the sums
/// of their counters (also logged as the exit summary). One worker runs on the calling
/// thread as a plain [`Server`]; several run on threads named `w0`, `w1`, ..., which is how
/// their log lines name them. Should one fail, the others are shut down.
///
/// With `inherited` listeners (socket activation) worker 0 serves them and places what it
/// accepts as with least-conn; `--balance reuseport` cannot be served so (each worker would
/// need a socket of its own) and is refused.
pub fn run(config: Config, inherited: Option<Inherited>) -> io::Result<Stats> {
    let workers = config.workers.count();
    if workers == 1 {
        return Server::bind_listeners(config, inherited)?.run();
    }
    if inherited.is_some() && config.balance == Balance::Reuseport {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            ActivationError::Reuseport.to_string(),
        ));
    }
    let (logins, tls) = Server::shared_setup(&config)?;
    let seats = Fleet::seats(&config, workers, logins, tls, inherited.is_some())?;
    let cluster = seats
        .first()
        .and_then(|seat| seat.mailbox.fleet().cluster());
    let mut config = config;
    let mut inherited = inherited;
    let mut servers = Vec::with_capacity(workers);
    for seat in seats {
        let server = Server::bind_worker(config.clone(), seat, inherited.take())?;
        if servers.is_empty() {
            // Worker 0 resolved any port 0: the others' listeners share its ports.
            for id in ListenerId::ALL {
                let addr = server.addr(id);
                match id {
                    ListenerId::Line => config.line_addr = addr.unwrap_or(config.line_addr),
                    ListenerId::Frame => config.frame_addr = addr.unwrap_or(config.frame_addr),
                    ListenerId::LineTls => config.line_tls_addr = addr,
                    ListenerId::FrameTls => config.frame_tls_addr = addr,
                }
            }
        }
        servers.push(server);
    }
    info!(
        "{workers} workers, connections placed by {}",
        match config.balance {
            Balance::LeastConn => "least-conn: worker 0 accepts and hands them over",
            Balance::Reuseport => "reuseport: each worker accepts on its own listeners",
        }
    );
    let handles: Vec<_> = servers.iter().map(Server::shutdown_handle).collect();
    let (done, finished) = mpsc::channel();
    let mut threads = Vec::with_capacity(workers);
    for (index, server) in servers.into_iter().enumerate() {
        let done = done.clone();
        let thread = std::thread::Builder::new()
            .name(format!("w{index}"))
            .spawn(move || {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run()))
                        .unwrap_or_else(|_| Err(io::Error::other("the worker panicked")));
                let _ = done.send((index, result));
            })?;
        threads.push(thread);
    }
    drop(done);
    let mut sum = Stats::default();
    let mut failure = None;
    for (index, result) in finished.iter() {
        match result {
            Ok(stats) => sum.absorb(&stats),
            Err(e) => {
                error!("worker {index} failed: {e}; shutting the others down");
                for handle in &handles {
                    let _ = handle.shutdown();
                }
                failure.get_or_insert(e);
            }
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    if let Some(cluster) = cluster {
        cluster.figures(&mut sum);
    }
    super::log_summary(&sum);
    match failure {
        Some(e) => Err(e),
        None => Ok(sum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;

    fn seats(workers: usize) -> Vec<Seat> {
        let config = Config::on_free_ports();
        let users = Users::parse("").expect("no users");
        Fleet::seats(&config, workers, Logins::new(users), None, false).expect("seats")
    }

    #[test]
    fn least_conn_places_on_the_fewest_and_counts_at_once() {
        let seats = seats(3);
        let fleet = seats[0].mailbox.fleet();
        let placed: Vec<usize> = (0..7).map(|_| fleet.place(0)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2, 0]);
        fleet.leave(1);
        fleet.leave(1);
        assert_eq!(fleet.place(0), 1);
        fleet.moved(1, 2);
        assert_eq!(fleet.place(0), 1);
    }

    #[test]
    fn session_slots_are_one_count_for_every_worker() {
        let seats = seats(2);
        let fleet = seats[1].mailbox.fleet();
        assert!(fleet.take_slot(2) && fleet.take_slot(2));
        assert!(!fleet.take_slot(2));
        fleet.free_slot();
        assert!(fleet.take_slot(2));
    }

    #[test]
    fn messages_leave_an_inbox_in_order_with_a_loss_in_its_place() {
        let seats = seats(2);
        let fleet = seats[0].mailbox.fleet();
        let inbox = &seats[1].mailbox;
        let first: Arc<[u8]> = Arc::from(&b"MSG a 1\n"[..]);
        let second: Arc<[u8]> = Arc::from(&b"MSG a 2\n"[..]);
        fleet.post(1, &first);
        fleet.post(1, &second);
        let big: Arc<[u8]> = Arc::from(vec![b'x'; INBOX_BYTES + 1]);
        fleet.post(1, &big); // over the bound: not queued, a marker in its place
        fleet.post(1, &big); // a second loss behind the same marker
        let third: Arc<[u8]> = Arc::from(&b"MSG a 3\n"[..]);
        fleet.post(1, &third);
        inbox.open();
        let mut seen = Vec::new();
        while let Some(delivery) = inbox.next() {
            match delivery {
                Delivery::Message(bytes) => seen.push(bytes.to_vec()),
                Delivery::Socket(_) => panic!("no socket was handed over"),
                Delivery::Lost => seen.push(b"lost".to_vec()),
            }
        }
        assert_eq!(
            seen,
            [
                b"MSG a 1\n".to_vec(),
                b"MSG a 2\n".to_vec(),
                b"lost".to_vec(),
                b"MSG a 3\n".to_vec(),
            ]
        );
        // Once the marker is taken out, a new loss gets a marker of its own.
        fleet.post(1, &big);
        assert!(matches!(inbox.next(), Some(Delivery::Lost)));
        assert!(inbox.next().is_none());
        assert_eq!(
            fleet.members[1].inbox_bytes.load(Ordering::Acquire),
            0,
            "every byte posted was taken out"
        );
    }

    #[test]
    fn stats_are_the_sums_with_each_workers_active_in_order() {
        let seats = seats(2);
        let fleet = seats[0].mailbox.fleet();
        let other = Stats {
            accepted: 5,
            active: 2,
            closed: 3,
            ..Stats::default()
        };
        fleet.publish(1, &other, &LoopMetrics::default());
        let own = Stats {
            accepted: 4,
            active: 4,
            ..Stats::default()
        };
        let mut out = Vec::new();
        seats[0]
            .mailbox
            .census()
            .write_stats(&own, &mut out)
            .expect("write to a Vec");
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.starts_with("accepted=9 active=6 closed=3 "), "{text}");
        assert!(text.ends_with(" workers=2 active_by_worker=4,2"), "{text}");
    }

    #[test]
    fn a_census_is_met_by_a_publish_after_it_or_a_retirement() {
        let seats = seats(3);
        let fleet = seats[0].mailbox.fleet();
        let (stats, loops) = (Stats::default(), LoopMetrics::default());
        fleet.publish(1, &stats, &loops);
        fleet.publish(2, &stats, &loops);
        let targets = fleet.ask(0);
        // What was published before the ask does not count.
        assert!(!fleet.counted(0, &targets));
        fleet.publish(1, &stats, &loops);
        assert!(!fleet.counted(0, &targets));
        fleet.retire(2, &stats, &loops);
        assert!(fleet.counted(0, &targets));
        // A retired worker counts for a census asked after it left, too.
        let later = fleet.ask(0);
        fleet.publish(1, &stats, &loops);
        assert!(fleet.counted(0, &later));
        assert_eq!(fleet.awaiting.0.load(Ordering::SeqCst), 1);
        fleet.stop_awaiting(0);
        fleet.stop_awaiting(0);
        assert_eq!(fleet.awaiting.0.load(Ordering::SeqCst), 0);
    }
}
