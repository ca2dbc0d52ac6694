//! The metrics endpoint (`--metrics-addr`): `GET /metrics` in the Prometheus text format,
//! served by the loop itself, and the loop's own figures behind it.
//!
//! ```text
//! GET /metrics HTTP/1.1            HTTP/1.1 200 OK
//! Host: ...                 ->     Content-Type: text/plain; version=0.0.4; charset=utf-8
//!                                  Content-Length: 6170
//!                                  Connection: close
//!
//!                                  # HELP tcp_reactor_requests_total Requests executed.
//!                                  # TYPE tcp_reactor_requests_total counter
//!                                  tcp_reactor_requests_total 52
//!                                  ...
//! ```
//!
//! **Gathered when scraped, not when counted.** Nothing on the request path knows metrics
//! exist: a scrape reads the STATS counters the loop keeps anyway (`Stats`, every key of the
//! `counters!` list, with its kind and HELP), and, with `--workers N`, the copies the other
//! workers publish at the end of each turn (`Fleet::publish`). Worker 0 owns the listener and
//! answers from its live counters and the others' published ones, each series labelled
//! `worker="i"`. The text is written by `prometheus-client`'s Prometheus text encoder from a
//! [`Collector`] made for the scrape, so the format (escaping, `_total`, `le` buckets) is the
//! crate's, not ours.
//!
//! **The loop's own figures** ([`LoopMetrics`]) are kept in the loop's memory, as plain adds:
//! the time it spent outside `poll` (from the clock reads of each wakeup: the one after
//! `poll` that every turn makes, and one before it), and two histograms, events per wakeup
//! and bytes per read, each a bucket index computed with one `leading_zeros` and one
//! increment. No lock and no atomic: they are published with the counters.
//!
//! **A metrics client is not a connection.** It has its own small slab here, its own tokens
//! (`token::metrics_client`) and three phases: reading the request head (at most
//! `MAX_HEAD_BYTES`), writing the one reply, then lingering until the client's EOF (our FIN
//! is out) so that closing does not turn into a reset that could destroy the reply. Answers:
//! `200` for `GET /metrics`, `405` for another method there, `404` for any other path, `400`
//! for anything that is not a request head of at most 8 KiB; each followed by a close. Idle
//! and request timeouts are the connections' (`--idle-timeout`, `--request-timeout`), the
//! linger the connections' `LINGER`; at most `token::METRICS_CLIENTS` are open at once, and
//! a client over that is closed at its accept.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as Metrics;
use slab::Slab;

use super::connection::LINGER;
use super::{Server, Timer, token};
use crate::config::Config;
use crate::net::{listen, read_some, write_some};
use crate::protocol::Decoded;
use crate::protocol::http::{self, RequestHead};
use crate::stats::{Kind, Stats};

/// Upper bounds of the events-per-wakeup buckets: 0 (a timeout), then powers of two up to
/// the 1024 events one `poll` can return (`EVENTS_CAPACITY`). Below 8 the loop is mostly
/// waiting; near 1024 it is saturated, and `poll` hands it a full list each time.
pub const EVENT_BOUNDS: [u64; 12] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Upper bounds of the bytes-per-read buckets: powers of two from 1 to 64 KiB, the most one
/// read takes (`READ_CHUNK`). A single PING is 5 bytes, a pipelined batch of 16 about 100;
/// reads that fill the 64 KiB bucket are bulk transfers or a client the loop is behind on.
pub const READ_BOUNDS: [u64; 17] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];

/// How many metrics clients one wakeup accepts before coming back for the rest next turn.
const ACCEPT_BUDGET: usize = 16;

/// Reads per metrics client per wakeup: a request head is one read in practice, and the cap
/// keeps one client that trickles bytes from holding the loop.
const READS_PER_WAKEUP: usize = 4;

/// One read of a metrics client: a whole head of any scraper fits.
const READ_BYTES: usize = 2048;

/// The loop's own figures, kept in its memory and published with its counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoopMetrics {
    /// Nanoseconds spent outside `poll`: from each wakeup to the next `poll`.
    busy_nanos: u64,
    /// Wakeups by events returned (`EVENT_BOUNDS`), and the events in all.
    events: [u64; EVENT_BOUNDS.len()],
    events_sum: u64,
    /// Reads by bytes returned (`READ_BOUNDS`), and the bytes in all.
    reads: [u64; READ_BOUNDS.len()],
    read_bytes: u64,
}

impl LoopMetrics {
    /// A wakeup returned `events` events.
    #[inline]
    pub fn record_wakeup(&mut self, events: usize) {
        // 0 -> 0; n -> 1 + ceil(log2 n): 1 -> 1, 2 -> 2, 3..=4 -> 3, ..., 1024 -> 11.
        let index = if events == 0 {
            0
        } else {
            1 + (usize::BITS - (events - 1).leading_zeros()) as usize
        };
        self.events[index.min(EVENT_BOUNDS.len() - 1)] += 1;
        self.events_sum += events as u64;
    }

    /// A read returned `bytes` (at least 1) bytes.
    #[inline]
    pub fn record_read(&mut self, bytes: usize) {
        // ceil(log2 n): 1 -> 0, 2 -> 1, 3..=4 -> 2, ..., 65536 -> 16.
        let index = (usize::BITS - bytes.saturating_sub(1).leading_zeros()) as usize;
        self.reads[index.min(READ_BOUNDS.len() - 1)] += 1;
        self.read_bytes += bytes as u64;
    }

    /// The events-per-wakeup buckets (`EVENT_BOUNDS`) and the events in all.
    fn events(&self) -> (&[u64], u64) {
        (&self.events, self.events_sum)
    }

    /// The bytes-per-read buckets (`READ_BOUNDS`) and the bytes in all.
    fn reads(&self) -> (&[u64], u64) {
        (&self.reads, self.read_bytes)
    }

    /// The loop was busy from `woke` (its wakeup) until `sleeps` (its next `poll`).
    #[inline]
    pub fn record_busy(&mut self, woke: Instant, sleeps: Instant) {
        let busy = sleeps.saturating_duration_since(woke);
        self.busy_nanos += busy.as_secs() * 1_000_000_000 + u64::from(busy.subsec_nanos());
    }
}

/// The metrics listener, if this loop has one, and its clients.
pub struct Endpoint {
    listener: Option<TcpListener>,
    clients: Slab<Client>,
}

/// One metrics client.
struct Client {
    socket: TcpStream,
    peer: SocketAddr,
    phase: Phase,
    /// The request head read so far.
    head: Vec<u8>,
    /// The reply, and how much of it is written.
    reply: Vec<u8>,
    written: usize,
    accepted: Instant,
    last_activity: Instant,
    /// The tick its timer in the wheel is due, if one is armed.
    timer: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reading,
    Writing,
    /// Our FIN is out: input is read and dropped until the client's EOF.
    Lingering,
}

/// What a read of a metrics client came to.
enum Progress {
    /// Nothing more to do until the next event.
    Waiting,
    /// A complete head (or a bad one): this is the answer.
    Answer(Answer),
    /// Done with: the client left, or an IO error.
    Close(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Metrics,
    BadRequest,
    NotFound,
    MethodNotAllowed,
}

impl Answer {
    fn route(head: RequestHead<'_>) -> Answer {
        match (head.method, head.path) {
            ("GET", "/metrics") => Answer::Metrics,
            (_, "/metrics") => Answer::MethodNotAllowed,
            _ => Answer::NotFound,
        }
    }
}

impl Endpoint {
    /// The listener on `--metrics-addr`, when given and this loop is the one to own it
    /// (worker 0); else an endpoint that never has a client.
    pub fn bind(config: &Config, owner: bool) -> io::Result<Endpoint> {
        let listener = match config.metrics_addr {
            Some(addr) if owner => {
                let listener = listen(addr, false).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen for metrics on {addr}: {e}"),
                    )
                })?;
                info!("metrics listener on {}", listener.local_addr()?);
                Some(listener)
            }
            _ => None,
        };
        Ok(Endpoint {
            listener,
            clients: Slab::new(),
        })
    }

    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        match self.listener.as_mut() {
            Some(listener) => {
                registry.register(listener, token::METRICS_LISTENER, Interest::READABLE)
            }
            None => Ok(()),
        }
    }

    /// Where the listener is bound, if there is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Stops listening (a shutdown); clients being served finish or time out.
    pub fn close_listener(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
    }
}

impl Client {
    /// When it must be done with its phase: its request within `--request-timeout` of the
    /// accept, and some traffic every `--idle-timeout`; then the linger.
    fn deadline(&self, server: &Server) -> Option<Instant> {
        let timeouts = server.timeouts();
        let idle = timeouts.idle.map(|idle| self.last_activity + idle);
        match self.phase {
            Phase::Reading => {
                let request = timeouts.request.map(|request| self.accepted + request);
                match (idle, request) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Writing => idle,
            Phase::Lingering => Some(self.last_activity + LINGER),
        }
    }

    /// Reads what the client sent: the request head, or (lingering) whatever it still sends.
    fn read(&mut self, now: Instant) -> Progress {
        let mut chunk = [0u8; READ_BYTES];
        for _ in 0..READS_PER_WAKEUP {
            let n = match read_some(&mut self.socket, &mut chunk) {
                Ok(None) => return Progress::Waiting,
                Ok(Some(0)) if self.phase == Phase::Lingering => {
                    return Progress::Close("closed after the peer's EOF");
                }
                Ok(Some(0)) => return Progress::Close("EOF before a whole request"),
                Ok(Some(n)) => n,
                Err(_) => return Progress::Close("read error"),
            };
            self.last_activity = now;
            if self.phase != Phase::Reading {
                continue;
            }
            self.head.extend_from_slice(&chunk[..n]);
            match http::decode(&self.head) {
                Ok(Decoded::Complete { request, .. }) => {
                    return Progress::Answer(Answer::route(request));
                }
                Ok(Decoded::Incomplete) => {}
                Err(e) => {
                    debug!("conn={} bad request: {e}", self.shown());
                    return Progress::Answer(Answer::BadRequest);
                }
            }
        }
        Progress::Waiting
    }

    /// Writes what is left of the reply; `Ok(true)` once all of it is written and our FIN
    /// is out.
    fn write(&mut self, now: Instant) -> io::Result<bool> {
        while self.written < self.reply.len() {
            match write_some(&mut self.socket, &self.reply[self.written..])? {
                Some(n) => {
                    self.written += n;
                    self.last_activity = now;
                }
                None => return Ok(false),
            }
        }
        self.socket.shutdown(Shutdown::Write)?;
        self.phase = Phase::Lingering;
        self.reply = Vec::new();
        self.head = Vec::new();
        Ok(true)
    }

    fn shown(&self) -> impl fmt::Display + '_ {
        struct Shown<'a>(&'a Client);
        impl fmt::Display for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "metrics from {}", self.0.peer)
            }
        }
        Shown(self)
    }
}

/// The loop's side: accepting and serving metrics clients, and gathering a scrape.
impl Server {
    /// An event (or a revisit) for the metrics listener or one of its clients.
    pub(super) fn on_metrics(&mut self, token: Token) {
        if token == token::METRICS_LISTENER {
            return self.accept_metrics();
        }
        if let Some(key) = token::metrics_client_key(token) {
            self.serve_metrics(key);
        }
    }

    /// A metrics client's timer fired: past its deadline it is closed, else armed again.
    pub(super) fn on_metrics_timer(&mut self, key: usize) {
        let now = self.now;
        let Some(client) = self.metrics.clients.get_mut(key) else {
            return;
        };
        client.timer = None;
        let client = &self.metrics.clients[key];
        match client.deadline(self) {
            Some(deadline) if now >= deadline => {
                let why = match client.phase {
                    Phase::Reading => "no whole request in time",
                    Phase::Writing => "reply not read in time",
                    Phase::Lingering => "linger deadline",
                };
                self.close_metrics(key, why);
            }
            _ => self.arm_metrics_timer(key),
        }
    }

    fn accept_metrics(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = self.metrics.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit_metrics(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors, mostly: the next connect raises a new edge.
                    warn!("metrics accept: {e}");
                    return;
                }
            }
        }
        // More may be waiting, and no new edge will say so.
        self.revisit.push(token::METRICS_LISTENER);
    }

    fn admit_metrics(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        if self.metrics.clients.len() >= token::METRICS_CLIENTS {
            warn!(
                "metrics from {peer} refused: {} scrapes already open",
                token::METRICS_CLIENTS
            );
            return; // dropped: closed
        }
        let entry = self.metrics.clients.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut socket, token::metrics_client(key), interest)
        {
            warn!("register metrics client {peer}: {e}");
            return;
        }
        debug!("conn={} accepted", token::show(token::metrics_client(key)));
        entry.insert(Client {
            socket,
            peer,
            phase: Phase::Reading,
            head: Vec::new(),
            reply: Vec::new(),
            written: 0,
            accepted: self.now,
            last_activity: self.now,
            timer: None,
        });
        self.arm_metrics_timer(key);
    }

    fn serve_metrics(&mut self, key: usize) {
        let now = self.now;
        let Some(client) = self.metrics.clients.get_mut(key) else {
            return; // a stale event: that client has gone
        };
        if client.phase != Phase::Writing {
            match client.read(now) {
                Progress::Waiting => {}
                Progress::Close(why) => return self.close_metrics(key, why),
                Progress::Answer(answer) => {
                    let reply = self.reply(answer);
                    let client = &mut self.metrics.clients[key];
                    client.reply = reply;
                    client.phase = Phase::Writing;
                }
            }
        }
        let client = &mut self.metrics.clients[key];
        if client.phase == Phase::Writing {
            match client.write(now) {
                // The client's EOF may be in already, with no edge left to announce it.
                Ok(true) => {
                    if let Progress::Close(why) = client.read(now) {
                        return self.close_metrics(key, why);
                    }
                }
                Ok(false) => {}
                Err(_) => return self.close_metrics(key, "write error"),
            }
        }
        self.arm_metrics_timer(key);
    }

    /// Makes sure the client's timer is due by its deadline (lazily, as for connections: a
    /// timer that fires early re-arms).
    fn arm_metrics_timer(&mut self, key: usize) {
        let client = &self.metrics.clients[key];
        let Some(deadline) = client.deadline(self) else {
            return;
        };
        let tick = self.tick_at(deadline).max(self.tick_now() + 1);
        if client.timer.is_none_or(|armed| tick < armed) {
            self.wheel.schedule(tick, Timer::Metrics(key));
            self.metrics.clients[key].timer = Some(tick);
        }
    }

    fn close_metrics(&mut self, key: usize, why: &str) {
        let mut client = self.metrics.clients.remove(key);
        debug!("conn={} closed: {why}", client.shown());
        let _ = self.poll.registry().deregister(&mut client.socket);
    }

    /// The whole reply to `answer`: status line, headers and body.
    fn reply(&self, answer: Answer) -> Vec<u8> {
        let (status, content_type, body) = match answer {
            Answer::Metrics => match self.scrape() {
                Ok(text) => ("200 OK", prometheus_text::CONTENT_TYPE, text),
                Err(_) => {
                    error!("encoding the metrics failed");
                    (
                        "500 Internal Server Error",
                        PLAIN,
                        "encoding failed\n".into(),
                    )
                }
            },
            Answer::BadRequest => ("400 Bad Request", PLAIN, "bad request\n".into()),
            Answer::NotFound => ("404 Not Found", PLAIN, "not found: try /metrics\n".into()),
            Answer::MethodNotAllowed => ("405 Method Not Allowed", PLAIN, "use GET\n".into()),
        };
        let allow = if answer == Answer::MethodNotAllowed {
            "Allow: GET\r\n"
        } else {
            ""
        };
        let mut reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             {allow}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        reply.extend_from_slice(body.as_bytes());
        reply
    }

    /// The metrics text: this loop's live figures and, with several workers, the others'
    /// as they published them at the end of their last turn.
    pub(super) fn scrape(&self) -> Result<String, fmt::Error> {
        let fleet = self.mailbox.fleet();
        let me = self.mailbox.index();
        // The cluster's figures are the process's (one Redis link for all the loops): they
        // go on worker 0's series, so that a sum over `worker` is the process's, as for the
        // others.
        let row =
            |worker: usize, label: Option<usize>, stats: &Stats, loops: &LoopMetrics| match fleet
                .cluster()
            {
                Some(cluster) if worker == 0 => {
                    let mut stats = stats.clone();
                    cluster.figures(&mut stats);
                    Row::new(label, &stats, loops)
                }
                _ => Row::new(label, stats, loops),
            };
        let rows = if fleet.is_alone() {
            vec![row(0, None, &self.stats, &self.loop_metrics)]
        } else {
            (0..fleet.workers())
                .map(|worker| match worker == me {
                    true => row(worker, Some(worker), &self.stats, &self.loop_metrics),
                    false => {
                        let (stats, loops) = fleet.published(worker);
                        row(worker, Some(worker), &stats, &loops)
                    }
                })
                .collect()
        };
        let mut metrics = Metrics::default();
        metrics.register_collector(Box::new(Snapshot {
            workers: fleet.workers(),
            rows,
        }));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &metrics)?;
        Ok(text)
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// One worker's figures in a scrape; `worker` is its label (none for a loop alone).
#[derive(Debug)]
struct Row {
    worker: Option<usize>,
    values: Vec<u64>,
    loops: LoopMetrics,
}

impl Row {
    fn new(worker: Option<usize>, stats: &Stats, loops: &LoopMetrics) -> Row {
        Row {
            worker,
            values: stats.values().collect(),
            loops: loops.clone(),
        }
    }
}

/// Everything one scrape shows, encoded by `prometheus-client` as one collector.
#[derive(Debug)]
struct Snapshot {
    workers: usize,
    rows: Vec<Row>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (index, key) in Stats::KEYS.iter().enumerate() {
            let name = format!("tcp_reactor_{}", key.name);
            let kind = match key.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(&name, key.help.trim(), None, kind)?;
            for row in &self.rows {
                let value = row.values[index];
                labelled(&mut metric, row.worker, |m| match kind {
                    MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&value, None),
                    _ => m.encode_gauge(&value),
                })?;
            }
        }
        let workers = self.workers as u64;
        encoder
            .encode_descriptor(
                "tcp_reactor_workers",
                "Event loops serving (--workers).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&workers)?;

        let mut metric = encoder.encode_descriptor(
            "tcp_reactor_loop_busy_seconds",
            "Time the loop spent outside poll (handling events, timers, writes): its \
             saturation is the rate of this.",
            None,
            MetricType::Counter,
        )?;
        for row in &self.rows {
            let seconds = row.loops.busy_nanos as f64 / 1e9;
            labelled(&mut metric, row.worker, |m| {
                m.encode_counter::<NoLabelSet, _, u64>(&seconds, None)
            })?;
        }

        histogram_family(
            &mut encoder,
            "tcp_reactor_events_per_wakeup",
            "Events returned by one poll.",
            &self.rows,
            &EVENT_BOUNDS,
            LoopMetrics::events,
        )?;
        histogram_family(
            &mut encoder,
            "tcp_reactor_read_bytes",
            "Bytes returned by one read from a client.",
            &self.rows,
            &READ_BOUNDS,
            LoopMetrics::reads,
        )?;
        Ok(())
    }
}

/// Encodes one sample of `metric`, with the label `worker="i"` when there is a worker.
fn labelled(
    metric: &mut MetricEncoder,
    worker: Option<usize>,
    sample: impl FnOnce(&mut MetricEncoder) -> Result<(), fmt::Error>,
) -> Result<(), fmt::Error> {
    match worker {
        Some(worker) => {
            let labels = [("worker", worker)];
            sample(&mut metric.encode_family(&labels)?)
        }
        None => sample(metric),
    }
}

/// One of the loops' histograms, a series per row: `pick` gives a row's bucket counts (one
/// per bound in `bounds`) and the sum of what was observed.
fn histogram_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[Row],
    bounds: &[u64],
    pick: fn(&LoopMetrics) -> (&[u64], u64),
) -> Result<(), fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for row in rows {
        let (counts, sum) = pick(&row.loops);
        let buckets = histogram(bounds, counts);
        let count = counts.iter().sum();
        labelled(&mut metric, row.worker, |m| {
            m.encode_histogram::<NoLabelSet>(sum as f64, count, &buckets, None)
        })?;
    }
    Ok(())
}

/// Buckets as the encoder takes them: upper bound and count (not cumulative).
fn histogram(bounds: &[u64], counts: &[u64]) -> Vec<(f64, u64)> {
    bounds
        .iter()
        .zip(counts)
        .map(|(&bound, &count)| (bound as f64, count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_the_bucket_of_their_upper_bound() {
        let mut loops = LoopMetrics::default();
        for events in [0, 1, 2, 3, 4, 5, 1000, 1024, 5000] {
            loops.record_wakeup(events);
        }
        // 0 | 1 | 2 | 3,4 | 5 (<=8) | ... | 1000, 1024 (<=1024) and 5000 (clamped)
        assert_eq!(loops.events, [1, 1, 1, 2, 1, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(loops.events_sum, 7039);
        for (index, &bound) in EVENT_BOUNDS.iter().enumerate() {
            let mut one = LoopMetrics::default();
            one.record_wakeup(bound as usize);
            assert_eq!(one.events[index], 1, "{bound}");
        }
    }

    #[test]
    fn reads_land_in_the_bucket_of_their_upper_bound() {
        for (index, &bound) in READ_BOUNDS.iter().enumerate() {
            let mut loops = LoopMetrics::default();
            loops.record_read(bound as usize);
            assert_eq!(loops.reads[index], 1, "{bound}");
            if bound > 1 {
                let mut above = LoopMetrics::default();
                above.record_read(bound as usize / 2 + 1);
                assert_eq!(above.reads[index], 1, "{bound} / 2 + 1");
            }
        }
        let mut loops = LoopMetrics::default();
        loops.record_read(1 << 20);
        assert_eq!(loops.reads[READ_BOUNDS.len() - 1], 1, "clamped");
    }

    fn snapshot(rows: Vec<Row>) -> String {
        let mut metrics = Metrics::default();
        let workers = rows.len();
        metrics.register_collector(Box::new(Snapshot { workers, rows }));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &metrics).unwrap();
        text
    }

    #[test]
    fn every_key_is_a_metric_with_help_type_and_suffix() {
        let stats = Stats {
            requests: 52,
            active: 3,
            ..Stats::default()
        };
        let mut loops = LoopMetrics::default();
        loops.record_wakeup(3);
        loops.record_read(100);
        loops.busy_nanos = 1_500_000_000;
        let text = snapshot(vec![Row::new(None, &stats, &loops)]);
        assert!(text.contains(
            "# HELP tcp_reactor_requests_total Requests executed.\n\
             # TYPE tcp_reactor_requests_total counter\n\
             tcp_reactor_requests_total 52\n"
        ));
        assert!(text.contains(
            "# HELP tcp_reactor_active Connections open now.\n\
             # TYPE tcp_reactor_active gauge\ntcp_reactor_active 3\n"
        ));
        for key in Stats::KEYS {
            let name = match key.kind {
                Kind::Counter => format!("tcp_reactor_{}_total", key.name),
                Kind::Gauge => format!("tcp_reactor_{}", key.name),
            };
            assert!(
                text.contains(&format!("\n{name} 0\n")) || text.contains(&format!("\n{name} "))
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(
            text.contains("tcp_reactor_loop_busy_seconds_total 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("tcp_reactor_events_per_wakeup_bucket{le=\"4\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tcp_reactor_read_bytes_bucket{le=\"64\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("tcp_reactor_read_bytes_bucket{le=\"128\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tcp_reactor_read_bytes_sum 100.0\n"),
            "{text}"
        );
        assert!(text.contains("tcp_reactor_read_bytes_count 1\n"), "{text}");
    }

    #[test]
    fn workers_are_labelled() {
        let one = Stats {
            requests: 1,
            ..Stats::default()
        };
        let two = Stats {
            requests: 2,
            ..Stats::default()
        };
        let loops = LoopMetrics::default();
        let text = snapshot(vec![
            Row::new(Some(0), &one, &loops),
            Row::new(Some(1), &two, &loops),
        ]);
        assert!(
            text.contains("tcp_reactor_requests_total{worker=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tcp_reactor_requests_total{worker=\"1\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("tcp_reactor_workers 2\n"), "{text}");
        assert!(
            text.contains("tcp_reactor_read_bytes_bucket{worker=\"1\",le=\"+Inf\"} 0\n")
                || text.contains("tcp_reactor_read_bytes_bucket{le=\"+Inf\",worker=\"1\"} 0\n"),
            "{text}"
        );
    }
}
