//! One chat room across nodes (`--cluster-redis`): SAYs over Redis pub/sub, HELLO names
//! claimed in Redis. The loops never touch Redis; two threads of the process do.
//!
//! ```text
//!  loops --(bounded queue: Claim, Release, Publish)--> cluster-cmd --> Redis (commands)
//!  loops <--(claim verdicts + Waker)------------------ cluster-cmd
//!  loops <--(fleet inboxes + Waker)------------------- cluster-sub <-- Redis (SUBSCRIBE)
//! ```
//!
//! - **cluster-cmd** owns the command link (a blocking `std::net::TcpStream` with read and
//!   write timeouts). It takes what the loops queue, in order, a batch at a time: pipelined
//!   in one write, the replies read back in the same order. A claim is
//!   `SET <channel>:name:<name> <node> NX PX <NAME_TTL>`; its verdict goes back to the loop
//!   that asked, through a channel and that loop's `mio::Waker` (as `logins` does). Every
//!   `REFRESH` it renews the names of this node's live sessions ([`CLAIM_OR_REFRESH`], a Lua
//!   script that renews a key only if its value is still this node's) or, with none, PINGs;
//!   a name released is deleted only if it is still ours ([`DELETE_IF_OURS`]).
//! - **cluster-sub** owns the subscription link: `SUBSCRIBE <channel>`, then every message
//!   from another node goes into every worker's inbox (`fleet::Fleet::post`, bounded at
//!   `fleet::INBOX_BYTES`), each worker woken once.
//!
//! Every message published starts with this node's id (a random `u64` chosen at start, 8
//! bytes big-endian) before the `MSG <name> <text>\n` line; a node skips its own coming back,
//! since its loops have delivered them locally already. One command link publishes in the
//! order the loops queued, and Redis delivers a channel's messages to each subscriber in the
//! order published: every node sees each sender's messages in order.
//!
//! Invariants:
//! - The loops never block on Redis: they `try_send` into a queue bounded at
//!   [`OUTBOUND_COMMANDS`]. A message that does not fit, or that is published while Redis is
//!   unreachable, is dropped and counted (`cluster_dropped`); a claim that cannot be made is
//!   answered `Unavailable` at once.
//! - Every claim queued gets exactly one verdict, even if the queue or the thread goes away
//!   (a [`ClaimJob`] that is dropped unanswered answers `Unavailable`).
//! - Names are unique across the cluster while Redis is up: HELLO is refused while it is
//!   down. A node that dies leaves its names to expire within [`NAME_TTL`].
//! - Links that fail are reconnected with a backoff from 100 ms doubling to 5 s; once the
//!   command link is back, the names of the live sessions are claimed again (a name another
//!   node took meanwhile stays its session's here, logged at warn, and is no longer renewed).
//!
//! What it refuses to do: queue without bound, retry a message (pub/sub is at-most-once), or
//! know anything of connections: a verdict names a ticket, and whether that connection still
//! waits for it is the loop's business.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::{Token, Waker};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use super::fleet::Fleet;
use crate::handler::ClaimVerdict;
use crate::stats::Stats;

/// Commands the loops may have queued for Redis at once, all workers together. At a
/// typical 100-byte chat line that is about 400 KiB waiting; a Redis that is slower than the
/// chat for longer than that costs messages (counted), never memory.
pub const OUTBOUND_COMMANDS: usize = 4096;

/// How long a name claimed in Redis lives without being renewed: a node that dies frees its
/// names within this.
pub const NAME_TTL: Duration = Duration::from_secs(5);

/// How often the command link renews the names of its live sessions: three renewals fit in
/// one `NAME_TTL`, so a name survives two lost ones.
pub const REFRESH: Duration = Duration::from_millis(1500);

/// The first wait before reconnecting, doubled after each failure up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a command link waits for Redis's replies before it counts the link as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the subscription thread looks up from its socket to see whether the process is
/// still running.
const SUBSCRIBER_TICK: Duration = Duration::from_millis(250);

/// Commands taken from the queue for one pipelined write.
const BATCH: usize = 256;

/// A reply or message larger than this is refused and the link dropped: nothing this
/// server publishes comes near it (a SAY is at most one `--max-line`).
const MAX_RESP_BYTES: usize = 16 << 20;

/// Renews `KEYS[1]` for `ARGV[2]` ms if it is free or ours (`ARGV[1]`); 1: it is ours, 0:
/// another node holds it.
pub const CLAIM_OR_REFRESH: &str = "local v = redis.call('GET', KEYS[1]) \
     if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
     if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
     return 0";

/// Deletes `KEYS[1]` only if it still holds `ARGV[1]`.
pub const DELETE_IF_OURS: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";

/// The node id every message and name value carries: random per process start.
fn random_node_id() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// What the loops and the two threads share: where Redis is, and the counters.
struct Shared {
    addr: String,
    channel: Box<str>,
    node: u64,
    subscribed: AtomicBool,
    commanding: AtomicBool,
    /// Set by cluster-sub when its link fails: the command link, idle, may not have noticed
    /// yet that Redis went away, and is made anew before it is trusted again.
    recheck: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.commanding.load(Ordering::Acquire)
    }

    fn name_key(&self, name: &str) -> Vec<u8> {
        format!("{}:name:{name}", self.channel).into_bytes()
    }

    fn node_value(&self) -> Vec<u8> {
        self.node.to_string().into_bytes()
    }
}

/// The process's side of the cluster, held by the fleet: the queue to cluster-cmd and the
/// shared counters.
pub struct Cluster {
    shared: Arc<Shared>,
    commands: SyncSender<Command>,
    /// Taken by [`Cluster::start`].
    queue: std::sync::Mutex<Option<Receiver<Command>>>,
}

impl Cluster {
    /// The cluster of `--cluster-redis addr` on `channel`; nothing is connected until
    /// [`Cluster::start`].
    pub fn new(addr: &str, channel: &str) -> Arc<Cluster> {
        let (commands, queue) = mpsc::sync_channel(OUTBOUND_COMMANDS);
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            channel: channel.into(),
            node: random_node_id(),
            subscribed: AtomicBool::new(false),
            commanding: AtomicBool::new(false),
            recheck: AtomicBool::new(false),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        Arc::new(Cluster {
            shared,
            commands,
            queue: std::sync::Mutex::new(Some(queue)),
        })
    }

    /// Starts the two threads. They stop on their own once the fleet is gone: cluster-cmd
    /// when the queue closes (the fleet held its sending end), cluster-sub at its next look
    /// up from the socket.
    pub fn start(&self, fleet: Weak<Fleet>) -> io::Result<()> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(queue) = queue else {
            return Ok(()); // started already
        };
        info!(
            "cluster: node {:016x} on Redis {} channel {:?}",
            self.shared.node, self.shared.addr, self.shared.channel
        );
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name("cluster-cmd".into())
            .spawn(move || Commander::new(shared, queue).run())?;
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name("cluster-sub".into())
            .spawn(move || subscribe(&shared, &fleet))?;
        Ok(())
    }

    /// The cluster's four STATS figures, written over `stats`' own.
    pub fn figures(&self, stats: &mut Stats) {
        let shared = &self.shared;
        stats.cluster_up = u64::from(shared.is_up());
        stats.cluster_published = shared.published.load(Ordering::Relaxed);
        stats.cluster_received = shared.received.load(Ordering::Relaxed);
        stats.cluster_dropped = shared.dropped.load(Ordering::Relaxed);
    }

    fn try_queue(&self, command: Command) -> Result<(), Command> {
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(c) | TrySendError::Disconnected(c) => c,
        })
    }
}

/// What a loop asks of cluster-cmd.
enum Command {
    Claim(ClaimJob),
    Release(Box<str>),
    Publish(Box<[u8]>),
}

/// A HELLO's claim on its way to Redis. Answered exactly once: if it is dropped unanswered
/// (the queue closed, the link failed), it answers `Unavailable` itself.
pub struct ClaimJob {
    ticket: u64,
    name: Box<str>,
    reply: ClaimReply,
    answered: bool,
}

impl ClaimJob {
    fn answer(mut self, verdict: ClaimVerdict) {
        self.answered = true;
        self.reply.send(ClaimResult {
            ticket: self.ticket,
            name: std::mem::take(&mut self.name),
            verdict,
        });
    }
}

impl Drop for ClaimJob {
    fn drop(&mut self) {
        if !self.answered {
            self.reply.send(ClaimResult {
                ticket: self.ticket,
                name: std::mem::take(&mut self.name),
                verdict: ClaimVerdict::Unavailable,
            });
        }
    }
}

/// The answer to one claim, for the loop that asked.
#[derive(Debug)]
pub struct ClaimResult {
    pub ticket: u64,
    pub name: Box<str>,
    pub verdict: ClaimVerdict,
}

/// Where a claim's verdict goes: the asking loop's channel, and its waker.
#[derive(Clone)]
struct ClaimReply {
    results: Sender<ClaimResult>,
    waker: Arc<Waker>,
}

impl ClaimReply {
    fn send(&self, result: ClaimResult) {
        if self.results.send(result).is_err() {
            return; // that loop has exited
        }
        if let Err(e) = self.waker.wake() {
            error!("cluster: wake failed: {e}");
        }
    }
}

/// One loop's side of the cluster: claims out, verdicts back, messages out.
pub struct ClusterBridge {
    cluster: Arc<Cluster>,
    reply: ClaimReply,
    verdicts: Receiver<ClaimResult>,
}

impl ClusterBridge {
    pub fn new(cluster: Arc<Cluster>, waker: Arc<Waker>) -> ClusterBridge {
        let (results, verdicts) = mpsc::channel();
        ClusterBridge {
            cluster,
            reply: ClaimReply { results, waker },
            verdicts,
        }
    }

    /// Queues the claim of `name` for `ticket`; `false`: Redis is unreachable or the queue
    /// is full, and the HELLO is to be answered "unavailable" now.
    pub fn claim(&self, ticket: Token, name: Box<str>) -> bool {
        if !self.cluster.shared.is_up() {
            return false;
        }
        let job = ClaimJob {
            ticket: ticket.0 as u64,
            name,
            reply: self.reply.clone(),
            answered: false,
        };
        match self.cluster.try_queue(Command::Claim(job)) {
            Ok(()) => true,
            Err(Command::Claim(mut job)) => {
                job.answered = true; // answered by the caller, at once
                false
            }
            Err(_) => false,
        }
    }

    /// The next verdict waiting, if any. Never blocks.
    pub fn next_verdict(&self) -> Option<ClaimResult> {
        self.verdicts.try_recv().ok()
    }

    /// Gives up this node's claim on `name` (its session ended, or the claim's connection
    /// had gone when the verdict came). If the queue is full the key expires on its own
    /// within `NAME_TTL`.
    pub fn release(&self, name: &str) {
        if self
            .cluster
            .try_queue(Command::Release(name.into()))
            .is_err()
        {
            debug!("cluster: release of {name:?} not queued; it expires within {NAME_TTL:?}");
        }
    }

    /// Sends a SAY's `MSG` line to the other nodes, or counts it dropped.
    pub fn publish(&self, message: &[u8]) {
        let shared = &self.cluster.shared;
        if !shared.is_up() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut payload = Vec::with_capacity(8 + message.len());
        payload.extend_from_slice(&shared.node.to_be_bytes());
        payload.extend_from_slice(message);
        if self
            .cluster
            .try_queue(Command::Publish(payload.into_boxed_slice()))
            .is_err()
        {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The wait before the next connection attempt: 100 ms doubling to 5 s, back to 100 ms once
/// connected.
struct Backoff {
    wait: Duration,
    next_try: Instant,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            wait: BACKOFF_MIN,
            next_try: Instant::now(),
        }
    }

    fn failed(&mut self) -> Duration {
        let waited = self.wait;
        self.next_try = Instant::now() + waited;
        self.wait = (self.wait * 2).min(BACKOFF_MAX);
        waited
    }

    fn succeeded(&mut self) {
        self.wait = BACKOFF_MIN;
    }
}

/// Appends one command, as a RESP array of bulk strings, to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by `encode_len`, so encoding cannot run short.
    if let Err(e) = encode_borrowed(&mut out[start..], &frame, false) {
        error!("cluster: RESP encoding failed: {e}");
        out.truncate(start);
    }
}

/// A blocking link to Redis: a socket, and the bytes read but not decoded yet.
struct Link {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Link {
    fn connect(addr: &str, read_timeout: Duration) -> io::Result<Link> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for target in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&target, COMMAND_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(read_timeout))?;
                    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
                    return Ok(Link {
                        stream,
                        input: Vec::new(),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame from Redis; `Ok(None)` if the read timed out first.
    fn next_frame(&mut self) -> io::Result<Option<OwnedFrame>> {
        loop {
            if let Some(frame) = take_frame(&mut self.input)? {
                return Ok(Some(frame));
            }
            if self.input.len() > MAX_RESP_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a reply from Redis over 16 MiB",
                ));
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next frame, waiting no longer than the read timeout: a reply that does not come
    /// counts as a lost link.
    fn reply(&mut self) -> io::Result<OwnedFrame> {
        self.next_frame()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no reply from Redis"))
    }
}

/// Decodes one frame from the front of `input` and removes its bytes; `Ok(None)`: incomplete.
fn take_frame(input: &mut Vec<u8>) -> io::Result<Option<OwnedFrame>> {
    if input.is_empty() {
        return Ok(None);
    }
    match decode(input) {
        Ok(Some((frame, used))) => {
            input.drain(..used);
            Ok(Some(frame))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
    }
}

/// The command thread: see the module doc.
struct Commander {
    shared: Arc<Shared>,
    queue: Receiver<Command>,
    link: Option<Link>,
    backoff: Backoff,
    /// The names of this node's live sessions that it holds in Redis: renewed every
    /// `REFRESH`, claimed again after a reconnect.
    owned: HashSet<Box<str>>,
    out: Vec<u8>,
}

impl Commander {
    fn new(shared: Arc<Shared>, queue: Receiver<Command>) -> Commander {
        Commander {
            shared,
            queue,
            link: None,
            backoff: Backoff::new(),
            owned: HashSet::new(),
            out: Vec::new(),
        }
    }

    fn run(mut self) {
        let mut next_refresh = Instant::now() + REFRESH;
        loop {
            if self.shared.recheck.swap(false, Ordering::AcqRel) && self.link.take().is_some() {
                debug!("cluster: the subscription failed; making the command link anew");
            }
            if self.link.is_none() && Instant::now() >= self.backoff.next_try {
                self.reconnect();
            }
            let now = Instant::now();
            // Woken at least every SUBSCRIBER_TICK to see `recheck`.
            let mut until = next_refresh.min(now + SUBSCRIBER_TICK);
            if self.link.is_none() {
                until = until.min(self.backoff.next_try);
            }
            match self
                .queue
                .recv_timeout(until.saturating_duration_since(now))
            {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match self.queue.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    self.run_batch(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return, // the fleet is gone
            }
            if Instant::now() >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + REFRESH;
            }
        }
    }

    fn reconnect(&mut self) {
        match Link::connect(&self.shared.addr, COMMAND_TIMEOUT) {
            Ok(link) => {
                self.link = Some(link);
                self.backoff.succeeded();
                info!("cluster: command link to {} up", self.shared.addr);
                // Claim the live sessions' names again before saying we are up: a HELLO
                // must not be answered before the names it might clash with are ours.
                self.refresh();
                if self.link.is_some() {
                    self.shared.commanding.store(true, Ordering::Release);
                }
            }
            Err(e) => {
                let wait = self.backoff.failed();
                debug!(
                    "cluster: cannot reach Redis at {}: {e}; again in {wait:?}",
                    self.shared.addr
                );
            }
        }
    }

    fn lose_link(&mut self, why: &io::Error) {
        if self.link.take().is_some() {
            warn!("cluster: command link to {} lost: {why}", self.shared.addr);
        }
        self.shared.commanding.store(false, Ordering::Release);
        self.backoff.failed();
    }

    /// Pipelines the batch: every command in one write, then each reply in order.
    fn run_batch(&mut self, batch: Vec<Command>) {
        if self.link.is_none() {
            // Answered as if their replies had been lost: claims "unavailable", messages
            // dropped, releases left to expire.
            for command in batch {
                self.abandon(command);
            }
            return;
        }
        self.encode(&batch);
        let out = std::mem::take(&mut self.out);
        let sent = self.link_mut().map(|link| link.send(&out));
        self.out = out;
        if let Some(Err(e)) = sent {
            self.lose_link(&e);
            return self.run_batch(batch);
        }
        let mut commands = batch.into_iter();
        for command in commands.by_ref() {
            match self.link_mut().map(Link::reply) {
                Some(Ok(reply)) => self.answered(command, reply),
                Some(Err(e)) => {
                    self.lose_link(&e);
                    self.abandon(command);
                    break;
                }
                None => {
                    self.abandon(command);
                    break;
                }
            }
        }
        // Replies that will not come: the link was lost.
        for command in commands {
            self.abandon(command);
        }
    }

    /// The batch's commands, in order, into `out`.
    fn encode(&mut self, batch: &[Command]) {
        let ttl = NAME_TTL.as_millis().to_string();
        let node = self.shared.node_value();
        self.out.clear();
        for command in batch {
            match command {
                Command::Claim(job) => {
                    let key = self.shared.name_key(&job.name);
                    encode_command(
                        &mut self.out,
                        &[b"SET", &key, &node, b"NX", b"PX", ttl.as_bytes()],
                    );
                }
                Command::Release(name) => {
                    let key = self.shared.name_key(name);
                    encode_command(
                        &mut self.out,
                        &[b"EVAL", DELETE_IF_OURS.as_bytes(), b"1", &key, &node],
                    );
                }
                Command::Publish(payload) => {
                    let channel = self.shared.channel.as_bytes();
                    encode_command(&mut self.out, &[b"PUBLISH", channel, payload]);
                }
            }
        }
    }

    fn link_mut(&mut self) -> Option<&mut Link> {
        self.link.as_mut()
    }

    fn answered(&mut self, command: Command, reply: OwnedFrame) {
        match command {
            Command::Claim(job) => {
                let verdict = match reply {
                    OwnedFrame::SimpleString(_) => {
                        self.owned.insert(job.name.clone());
                        ClaimVerdict::Claimed
                    }
                    OwnedFrame::Null => ClaimVerdict::Taken,
                    other => {
                        warn!("cluster: claim of {:?} answered {other:?}", job.name);
                        ClaimVerdict::Unavailable
                    }
                };
                job.answer(verdict);
            }
            Command::Release(name) => {
                self.owned.remove(&name);
                if let OwnedFrame::Error(e) = reply {
                    warn!("cluster: release of {name:?}: {e}");
                }
            }
            Command::Publish(_) => match reply {
                OwnedFrame::Integer(_) => {
                    self.shared.published.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    debug!("cluster: PUBLISH answered {other:?}");
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
    }

    /// A command whose reply was lost with the link.
    fn abandon(&mut self, command: Command) {
        match command {
            Command::Claim(job) => job.answer(ClaimVerdict::Unavailable),
            Command::Release(name) => {
                self.owned.remove(&name); // the key expires within NAME_TTL
            }
            Command::Publish(_) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Renews every name held (claiming again any that expired), or PINGs with none: either
    /// way a link that has died is found out within `REFRESH`.
    fn refresh(&mut self) {
        if self.link.is_none() {
            return;
        }
        let names: Vec<Box<str>> = self.owned.iter().cloned().collect();
        let ttl = NAME_TTL.as_millis().to_string();
        let node = self.shared.node_value();
        self.out.clear();
        if names.is_empty() {
            encode_command(&mut self.out, &[b"PING"]);
        }
        for name in &names {
            let key = self.shared.name_key(name);
            encode_command(
                &mut self.out,
                &[
                    b"EVAL",
                    CLAIM_OR_REFRESH.as_bytes(),
                    b"1",
                    &key,
                    &node,
                    ttl.as_bytes(),
                ],
            );
        }
        let out = std::mem::take(&mut self.out);
        let result = self.link_mut().map(|link| link.send(&out));
        self.out = out;
        if let Some(Err(e)) = result {
            return self.lose_link(&e);
        }
        for index in 0..names.len().max(1) {
            let reply = match self.link_mut().map(Link::reply) {
                Some(Ok(reply)) => reply,
                Some(Err(e)) => return self.lose_link(&e),
                None => return,
            };
            let Some(name) = names.get(index) else {
                continue; // the PING's
            };
            if reply == OwnedFrame::Integer(0) {
                warn!(
                    "cluster: name {name:?} was taken by another node while Redis was out of \
                     reach; its session here keeps it, but it is no longer held in Redis"
                );
                self.owned.remove(name);
            }
        }
    }
}

/// The subscription thread: see the module doc. Returns once the fleet is gone.
fn subscribe(shared: &Shared, fleet: &Weak<Fleet>) {
    let mut backoff = Backoff::new();
    while fleet.strong_count() > 0 {
        match Link::connect(&shared.addr, SUBSCRIBER_TICK)
            .and_then(|link| listen(shared, fleet, link))
        {
            Ok(()) => return,
            Err(e) => {
                if shared.subscribed.swap(false, Ordering::AcqRel) {
                    warn!("cluster: subscription to {} lost: {e}", shared.addr);
                    // Down until the command link is made anew too (cluster-cmd sees
                    // `recheck` within SUBSCRIBER_TICK): an idle link may be a dead one.
                    shared.commanding.store(false, Ordering::Release);
                    shared.recheck.store(true, Ordering::Release);
                }
                let wait = backoff.failed();
                debug!("cluster: subscribing again in {wait:?} ({e})");
                let until = Instant::now() + wait;
                while Instant::now() < until && fleet.strong_count() > 0 {
                    thread::sleep(SUBSCRIBER_TICK.min(until - Instant::now()));
                }
                continue;
            }
        }
    }
}

/// Subscribes over `link`, then delivers until the link fails (`Err`) or the fleet is gone.
fn listen(shared: &Shared, fleet: &Weak<Fleet>, mut link: Link) -> io::Result<()> {
    let mut out = Vec::new();
    encode_command(&mut out, &[b"SUBSCRIBE", shared.channel.as_bytes()]);
    link.send(&out)?;
    let confirmed = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match link.next_frame()? {
            Some(OwnedFrame::Array(parts)) if is_bulk(parts.first(), b"subscribe") => break,
            Some(other) => {
                return Err(io::Error::other(format!("SUBSCRIBE answered {other:?}")));
            }
            None if Instant::now() < confirmed => {}
            None => return Err(io::Error::new(io::ErrorKind::TimedOut, "SUBSCRIBE")),
        }
    }
    info!(
        "cluster: subscribed to {:?} on {}",
        shared.channel, shared.addr
    );
    shared.subscribed.store(true, Ordering::Release);
    loop {
        let Some(frame) = link.next_frame()? else {
            if fleet.strong_count() == 0 {
                return Ok(());
            }
            continue;
        };
        let Some(message) = message_payload(frame, shared.node) else {
            continue;
        };
        let Some(fleet) = fleet.upgrade() else {
            return Ok(());
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        let bytes: Arc<[u8]> = Arc::from(message);
        for worker in 0..fleet.workers() {
            fleet.post(worker, &bytes);
            if let Err(e) = fleet.wake(worker) {
                error!("cluster: waking worker {worker}: {e}");
            }
        }
    }
}

fn is_bulk(frame: Option<&OwnedFrame>, expected: &[u8]) -> bool {
    matches!(frame, Some(OwnedFrame::BulkString(b)) if b == expected)
}

/// The `MSG` line of a pub/sub message from another node: `None` for this node's own, for
/// anything that is not a message, and for a payload that is not one `MSG ...\n` line.
pub fn message_payload(frame: OwnedFrame, node: u64) -> Option<Vec<u8>> {
    let OwnedFrame::Array(mut parts) = frame else {
        return None;
    };
    if parts.len() != 3 || !is_bulk(parts.first(), b"message") {
        return None;
    }
    let Some(OwnedFrame::BulkString(payload)) = parts.pop() else {
        return None;
    };
    let (from, line) = payload.split_at_checked(8)?;
    let from = u64::from_be_bytes(from.try_into().ok()?);
    if from == node {
        return None;
    }
    let well_formed = line.starts_with(b"MSG ")
        && line.ends_with(b"\n")
        && memchr::memchr(b'\n', line) == Some(line.len() - 1);
    if !well_formed {
        debug!("cluster: a message that is not one MSG line, ignored");
        return None;
    }
    Some(line.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"v", b"NX"]);
        encode_command(&mut out, &[b"PING"]);
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nNX\r\n*1\r\n$4\r\nPING\r\n"
        );
    }

    #[test]
    fn frames_are_taken_whole_at_every_split_point() {
        let bytes = b"+OK\r\n$-1\r\n:3\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n";
        for split in 0..bytes.len() {
            let mut input = bytes[..split].to_vec();
            let mut frames = Vec::new();
            while let Some(frame) = take_frame(&mut input).expect("valid RESP") {
                frames.push(frame);
            }
            input.extend_from_slice(&bytes[split..]);
            while let Some(frame) = take_frame(&mut input).expect("valid RESP") {
                frames.push(frame);
            }
            assert_eq!(frames.len(), 4, "split at {split}");
            assert!(input.is_empty());
            assert_eq!(frames[1], OwnedFrame::Null);
        }
        assert!(take_frame(&mut b"?what\r\n".to_vec()).is_err());
    }

    fn message(from: u64, line: &[u8]) -> OwnedFrame {
        let mut payload = from.to_be_bytes().to_vec();
        payload.extend_from_slice(line);
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"message".to_vec()),
            OwnedFrame::BulkString(b"tcp-reactor".to_vec()),
            OwnedFrame::BulkString(payload),
        ])
    }

    #[test]
    fn a_node_takes_the_others_messages_and_skips_its_own() {
        let line = b"MSG ann hi there\n";
        assert_eq!(message_payload(message(1, line), 2), Some(line.to_vec()));
        assert_eq!(message_payload(message(2, line), 2), None);
        assert_eq!(message_payload(message(1, b"MSG a\nMSG b\n"), 2), None);
        assert_eq!(message_payload(message(1, b"BYE\n"), 2), None);
        assert_eq!(message_payload(OwnedFrame::Integer(1), 2), None);
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_starts_over_once_connected() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..8)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), BACKOFF_MIN);
    }

    #[test]
    fn a_claim_dropped_unanswered_answers_unavailable() {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
        let (results, verdicts) = mpsc::channel();
        let reply = ClaimReply { results, waker };
        let job = ClaimJob {
            ticket: 7,
            name: "ann".into(),
            reply: reply.clone(),
            answered: false,
        };
        drop(job);
        let result = verdicts.try_recv().expect("a verdict");
        assert_eq!(
            (result.ticket, &*result.name, result.verdict),
            (7, "ann", ClaimVerdict::Unavailable)
        );
        ClaimJob {
            ticket: 8,
            name: "bob".into(),
            reply,
            answered: false,
        }
        .answer(ClaimVerdict::Claimed);
        let result = verdicts.try_recv().expect("a verdict");
        assert_eq!(result.verdict, ClaimVerdict::Claimed);
        assert!(verdicts.try_recv().is_err(), "answered once");
    }
}
