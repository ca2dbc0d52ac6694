//! tcp-load: the load generator that measures tcp-reactor (or any line server, e.g. Redis).
//!
//! ```text
//! tcp-load --addr HOST:PORT [--addr HOST:PORT ...] --protocol line|frame
//!          --workload echo|ping|raw|chat|heartbeat|message|login
//!          [--size BYTES (64)] [--request TEXT (raw only)]
//!          [--connections N (50)] [--connect-rate PER_SEC (2000)] [--pipeline P (1)]
//!          [--requests-per-connection N (0: for the whole run) [--close rst|fin (rst)]]
//!          [--duration DUR (10s)] [--warmup DUR (1s)] | [--requests N]
//!          [--rate R] [--threads T (cores)] [--source-addr IP[,IP...]] [--timeout DUR (5s)]
//!          [--drain DUR (2s, chat only)] [--json] [--hdr-out FILE] [--progress]
//!          [--tls (--ca FILE | --insecure) [--server-name NAME]]
//!          [--proxy-header v1|v2 [--proxy-source IP|IP:PORT]]
//! ```
//!
//! # How a run goes
//!
//! `--connections` are dealt round-robin to `--threads` workers (`worker.rs`), each with its
//! own `mio::Poll`, connections and histogram. Connects are paced at `--connect-rate` in total.
//! With several `--addr`, connection `j` (counted over all threads) goes to address `j mod n`,
//! so the addresses take turns and their shares differ by at most one; the summary's title
//! and the JSON `settings.addrs` list them all (`settings.addr` stays the first).
//! Each connection keeps up to `--pipeline` requests in flight:
//!
//! - **closed loop** (default): a reply frees a slot and the slot is refilled at once; all the
//!   requests due on a connection go out in one `write`. Latency = receive time - send time.
//! - **open loop** (`--rate R`): requests follow a fixed global timetable (R per second, spread
//!   evenly over the connections); latency counts from the *scheduled* send time, so a server
//!   stall shows in full even while the pipeline is full (wrk2's coordinated-omission
//!   correction).
//!
//! The measured window: with `--duration D`, once every connection is established (or has
//! failed) the main thread sets one start instant, `--warmup` from then, for all workers; the
//! replies received in `[start, start + D)` are recorded (warmup replies are verified, not
//! recorded). With `--requests N`, every request sent after the warmup (none unless
//! `--warmup` is given) is measured, exactly N of them are sent (N split evenly over the
//! threads; requests sent during a warmup come on top), and the window ends with the last
//! reply. Without a warmup the window opens at time zero, so it includes the connects.
//!
//! Errors (`connect`, `reset`, `eof`, `timeout`, `mismatch`) are counted by kind; the
//! connection is closed and not reopened. Exit status: 0 without errors, 1 with any, 2 for bad
//! arguments.
//!
//! # Short connections (`--requests-per-connection N`)
//!
//! With N > 0 each connection sends N requests (closed loop, at most `--pipeline` in flight
//! and never more than it has left), verifies every reply, closes, and at once opens a new
//! connection in its place: to the same `--addr`, from the next `--source-addr` in turn.
//! `--connect-rate` paces only the first connect of each place. `connects` counts the
//! connections established (TCP, before any TLS handshake) in the measured window, by the
//! rule that records replies; `connects_per_s` divides it by the window, and the connect
//! latency (the `connect()` call to its writable edge) is recorded for the same connects.
//! With `--requests M` and no warmup every connect is in the window and each takes its N
//! requests from the budget when it starts, so `connects` is exactly the sum over the threads
//! of ⌈share / N⌉ (M itself when N = 1); with `--duration` and N = 1, `connects` and
//! `requests` differ by at most `--connections` (the connections open across the window's
//! start, whose replies count but not their connects, and those open across its end).
//!
//! The client closes first, so its side of every connection would wait in TIME_WAIT for 60 s:
//! at 20,000 connects per second the 28,232 ports of the default `ip_local_port_range` last
//! under two seconds (Linux's `tcp_tw_reuse = 2` reuses them only on loopback, and only a
//! second later). So by default (`--close rst`) a connection closes with `SO_LINGER` 0: an
//! RST, no TIME_WAIT, its port free at once. It closes only once every reply has been read
//! and verified, so nothing the server sent is lost, and tcp-reactor counts a reset as an
//! ordinary close (not a protocol error). `--close fin` closes normally, for a server whose
//! FIN path is what is measured: then ports do wait, and several `--source-addr` multiply
//! them (a port is unique per source and destination).
//!
//! `--workload chat` refuses N > 0 (a session must live through the run to receive every
//! message), and so does `--rate`: short connections run closed loop only (an open-loop
//! timetable would have to carry its slots over each reconnect, which is not done).
//!
//! # Chat (`--workload chat`)
//!
//! Every connection is a chat session (`chat.rs`): `HELLO` with a name unique to the run, then
//! `SAY`s carrying their seq and send time, each answered `OK` (the requests measured as
//! above) and pushed by the server to every other session, where tcp-load checks that each
//! arrives once and in order. The window (with its warmup) opens only once every session has
//! its WELCOME, so every SAY reaches every session. When sending ends, the threads publish
//! their senders' counts and read on for up to `--drain` until what is in flight has come. A
//! delivery (a push of a message sent in the window) is timed from its SAY's send time to its
//! receipt; the summary adds deliveries, their rate and latency percentiles, and the missing,
//! duplicated and reordered messages, which count as errors (exit status 1).
//!
//! # Over TLS (`--tls`)
//!
//! Each connection runs a rustls client session inside the same non-blocking loop (flags and
//! config in [`crate::client::tls`]). The name verified and sent as SNI is `--server-name`, or
//! else the host part of the connection's own `--addr` (`settings.server_name` shows the
//! first address's). The handshake is part of connecting: a connection is up,
//! and its requests start, once the handshake is done; a handshake that fails (a certificate
//! that does not verify, say) or is not done within `--timeout` is a `connect` error, and its
//! reason is listed in the summary. Handshakes are timed from the TCP connection's
//! establishment to the handshake's end and reported apart (count, p50, p99); request
//! latency stays what it is without TLS, request to reply. Byte rates count the requests'
//! and replies' bytes, not the TLS records carrying them.
//!
//! # Behind a balancer (`--proxy-header v1|v2`)
//!
//! Every connection (every workload, every reconnect, TLS too) first sends a PROXY protocol
//! header (`proxy.rs`), in the clear and before anything else (over TLS, before the
//! ClientHello), in a `write` of its own as soon as the connect is done. Its destination is
//! the `--addr` connected to; its source is made up, distinct per connection over the run
//! (from 198.18.0.0/15, or 2001:2::/48 to an IPv6 address: `proxy.rs` has the scheme), or
//! `--proxy-source` for every connection, so that a server's per-address limits can be hit
//! on purpose. The header is not counted in the byte rates; replies are verified as ever.
//!
//! # Invariants
//!
//! - The main thread never touches a socket: it spawns the workers (`crew.rs`), paces the
//!   phases (window start, CPU samples, progress: `pacing.rs`) and merges the workers'
//!   reports (`totals.rs`). Workers share nothing but a few atomics.
//! - tcp-load's CPU time (`getrusage(RUSAGE_SELF)`, user + system) is sampled at the window's
//!   start and after the last worker has stopped but before any socket is closed, so connect
//!   and teardown costs are not charged to the requests.

pub mod chat;
mod cpu;
mod crew;
mod pacing;
pub mod proxy;
pub mod report;
mod stream;
mod totals;
mod worker;
pub mod workload;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use log::{debug, warn};
use serde_json::{Map, Value, json};

use crate::client::tls::{TlsArgs, TlsConfig, TlsError};
use crate::config::parse_duration;
use crate::net::raise_fd_limit;
use chat::ChatPlan;
use cpu::{CpuSample, CpuSpent};
use crew::Crew;
use pacing::Pacer;
use proxy::Proxy;
use report::Report;
use totals::Totals;
use worker::{Destination, Plan, Shared, UNKNOWN, clock_ns};
use workload::{Exchange, MAX_SIZE, Protocol, Workload};

/// Default `--warmup` with `--duration`.
const DEFAULT_WARMUP: Duration = Duration::from_secs(1);
/// Default `--drain`: pushes normally arrive within milliseconds; two seconds leave room for
/// a loaded server without making a broken run wait long.
const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

/// tcp-load's command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tcp-load",
    version,
    about = "A load generator for tcp-reactor's line and frame protocols (and other line servers).",
    long_about = "A load generator for tcp-reactor's line and frame protocols, and for other line \
                  servers (--workload raw, e.g. Redis inline PING). Closed loop by default; open \
                  loop with --rate, latency then measured from the scheduled send time.\n\n\
                  DUR values are seconds (`30`, `0.5`) or a number with a unit: `500ms`, `2s`, \
                  `1m`. Exit status: 0 without errors, 1 with any error, 2 for bad arguments.\n\n\
                  --tls speaks TLS on every connection (with --ca FILE or --insecure): a \
                  connection is up once its handshake is done, a failed handshake is a \
                  connect error with its reason in the summary, and the summary adds the \
                  handshake count and times (p50, p99).\n\n\
                  --addr may be given several times: connection j goes to address j mod n; \
                  over TLS each address's host part is its default server name.\n\n\
                  --requests-per-connection N: each connection sends N requests, verifies \
                  the replies, closes and is replaced at once by a new one to the same \
                  address (--connect-rate paces only the first connects). The summary adds \
                  connects (TCP connections established in the window), connects/s and the \
                  connect latency. The client closing first would leave every port in \
                  TIME_WAIT for 60 s and run out of ports within seconds, so by default \
                  (--close rst) a connection is closed with SO_LINGER 0, an RST: no \
                  TIME_WAIT, and only once every reply is read and verified. --close fin \
                  closes normally (ports then wait; several --source-addr multiply them). \
                  Not with --workload chat nor --rate.\n\n\
                  --workload chat: every connection says HELLO with a name unique to the run \
                  and, once every session has its WELCOME, SAYs `<seq> <send time> \
                  <--size bytes>` (closed loop, or --rate in total). Every SAY must reach \
                  every other session once and in order; after the run tcp-load waits up to \
                  --drain for the pushes in flight. The summary adds messages sent, \
                  deliveries (pushes received), deliveries/s, delivery latency (SAY sent to \
                  push received) and the messages missing, duplicated or reordered (errors), \
                  the sessions disconnected and the pushes of other runs (foreign).\n\n\
                  --proxy-header v1|v2: every connection (every workload and reconnect; over \
                  TLS before the ClientHello) first sends a PROXY protocol header (HAProxy's \
                  v1 text or v2 binary, TCP4 or TCP6, no TLVs) naming the --addr as the \
                  destination and a made-up source, distinct per connection: connection n of \
                  the run (n = g*C + j for the g-th connect of place j, C = --connections) \
                  comes from 198.18.0.0/15 (RFC 2544) skipping .0 and .255, host n mod \
                  130048 (198.18.0.1, ..., 198.18.0.254, 198.18.1.1, ...), port 1024 + \
                  floor(n / 130048) mod 64512; to an IPv6 --addr from 2001:2::(n+1), port \
                  1024. --proxy-source IP names that address for every connection (port 1024 \
                  + n mod 64512), IP:PORT exactly that: to hit a per-address limit on \
                  purpose. A header names one family: an IPv4 address beside an IPv6 one is \
                  written IPv4-mapped."
)]
pub struct LoadConfig {
    /// Server address; a host name is resolved once, at start. Given more than once, the
    /// connections are spread over the addresses in turn: connection j goes to address
    /// j mod n (the n addresses in the order given).
    #[arg(long = "addr", value_name = "HOST:PORT", value_parser = parse_addr, required = true)]
    pub addrs: Vec<Target>,

    /// Protocol spoken: `line` (echo, ping, raw, chat) or `frame` (heartbeat, message, login).
    #[arg(long, value_enum)]
    pub protocol: Protocol,

    /// What each request is (see docs/PROTOCOL.md for the replies checked).
    #[arg(long, value_enum)]
    pub workload: Workload,

    /// Line length (echo, without `\n`), frame body length (heartbeat, message), or the
    /// padding after each SAY's seq and send time (chat).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub size: usize,

    /// The request line for `--workload raw`, without the newline; any one line is a reply.
    #[arg(long, value_name = "TEXT")]
    pub request: Option<String>,

    /// Connections, all threads together.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// New connections per second, all threads together.
    #[arg(long, value_name = "PER_SEC", default_value_t = 2000.0, value_parser = parse_rate)]
    pub connect_rate: f64,

    /// Requests in flight per connection.
    #[arg(long, value_name = "P", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub pipeline: u32,

    /// Requests per connection: after N replies a connection closes and a new one opens in
    /// its place (0: connections stay open for the whole run).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub requests_per_connection: u64,

    /// How a connection closes after its --requests-per-connection: `rst` (SO_LINGER 0, no
    /// TIME_WAIT, so ports never run out) or `fin` (an ordinary close) [default: rst].
    #[arg(long, value_enum, value_name = "HOW")]
    pub close: Option<Close>,

    /// Measured time, after the warmup.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time after all connections are up before measuring [default: 1s; 0 with --requests].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Send exactly N measured requests in total, then stop (instead of --duration).
    #[arg(long, value_name = "N", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Open loop: R requests per second in total, on a fixed timetable.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Worker threads, each with its own event loop [default: the number of cores].
    #[arg(long, value_name = "T", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Local addresses to connect from, round-robin (more source IPs, more ports).
    #[arg(long, value_name = "IP[,IP...]", value_delimiter = ',')]
    pub source_addr: Vec<IpAddr>,

    /// A connection with requests outstanding and no reply for this long is a `timeout`
    /// error; a connect taking this long is a `connect` error.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Chat: once every thread has stopped sending, wait this long at most for the pushes
    /// still in flight; what has not arrived by then is missing [default: 2s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub drain: Option<Duration>,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Write the latency percentile distribution (HdrHistogram text format, µs) to FILE.
    #[arg(long, value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,

    /// Print a progress line every second on stderr (default: only if it is a terminal).
    #[arg(long)]
    pub progress: bool,

    /// Also measure this process's CPU time (utime + stime from /proc/PID/stat) over the
    /// measured window, and report it per request: the server's CPU cost, sampled at the same
    /// instants as tcp-load's own.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Send a PROXY protocol header first on every connection, v1 (text) or v2 (binary),
    /// naming a made-up source distinct per connection (from 198.18.0.0/15; the scheme is
    /// in the description above).
    #[arg(long, value_enum, value_name = "VERSION")]
    pub proxy_header: Option<proxy::Version>,

    /// With --proxy-header: name this source in every connection's header instead (IP: the
    /// port counts up per connection; IP:PORT: exactly that).
    #[arg(long, value_name = "IP|IP:PORT", requires = "proxy_header",
          value_parser = proxy::parse_source)]
    pub proxy_source: Option<proxy::Source>,
}

/// How a connection closes after its `--requests-per-connection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Close {
    /// `SO_LINGER` 0: the close sends an RST and the port is free at once (no TIME_WAIT).
    Rst,
    /// An ordinary close (FIN): the client's port waits in TIME_WAIT.
    Fin,
}

impl Close {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Close::Rst => "rst",
            Close::Fin => "fin",
        }
    }
}

/// One `--addr`: as given (its host part is its default TLS server name) and as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub text: String,
    pub socket: SocketAddr,
}

impl std::fmt::Display for Target {
    /// The resolved address, as the summary has always shown it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.socket.fmt(f)
    }
}

fn parse_addr(text: &str) -> Result<Target, String> {
    let socket = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}` is not a HOST:PORT address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))?;
    Ok(Target {
        text: text.to_string(),
        socket,
    })
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("`{text}` is not a rate: use a number > 0")),
    }
}

impl LoadConfig {
    /// Parses the process's arguments; on an error prints it and exits with status 2.
    #[must_use]
    pub fn parse_args() -> LoadConfig {
        match Self::try_parse_args_from(std::env::args_os()) {
            Ok(config) => config,
            Err(e) => e.exit(),
        }
    }

    /// Parses and checks the combinations clap cannot express.
    ///
    /// # Errors
    ///
    /// A clap error (exit status 2, usage included) for any bad argument.
    pub fn try_parse_args_from<I, T>(args: I) -> Result<LoadConfig, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config = Self::try_parse_from(args)?;
        config.check().map_err(|message| {
            Self::command().error(clap::error::ErrorKind::ArgumentConflict, message)
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let workload = self.workload.name();
        let needs = self.workload.protocol();
        if needs != self.protocol {
            return Err(format!(
                "--workload {workload} is a {} workload; it cannot run with --protocol {}",
                needs.name(),
                self.protocol.name()
            ));
        }
        match (&self.request, self.workload) {
            (None, Workload::Raw) => {
                return Err("--workload raw needs --request TEXT".to_string());
            }
            (Some(_), w) if w != Workload::Raw => {
                return Err(format!(
                    "--request is only for --workload raw, not {workload}"
                ));
            }
            (Some(text), _) if text.contains('\n') => {
                return Err("--request must be one line (no newline)".to_string());
            }
            _ => {}
        }
        let max_size = match self.workload {
            Workload::Chat => chat::MAX_PADDING,
            _ => MAX_SIZE,
        };
        if self.workload.uses_size() && self.size > max_size {
            return Err(format!(
                "--size {} is over the limit of {max_size} bytes",
                self.size
            ));
        }
        if self.workload == Workload::Chat && self.connections > chat::MAX_SESSIONS {
            return Err(format!(
                "--workload chat takes at most {} connections (each session keeps a \
                 sequence number per sender)",
                chat::MAX_SESSIONS
            ));
        }
        if self.drain.is_some() && self.workload != Workload::Chat {
            return Err(format!(
                "--drain is only for --workload chat, not {workload}"
            ));
        }
        if self.requests_per_connection > 0 {
            if self.workload == Workload::Chat {
                return Err(
                    "--requests-per-connection is not for --workload chat: a session \
                            must stay connected to receive every message of the run"
                        .to_string(),
                );
            }
            if self.rate.is_some() {
                return Err(
                    "--requests-per-connection runs closed loop; it cannot be used \
                            with --rate"
                        .to_string(),
                );
            }
        } else if self.close.is_some() {
            return Err("--close only applies with --requests-per-connection".to_string());
        }
        if self.requests.is_none() && self.duration.is_zero() {
            return Err("--duration must be more than 0".to_string());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".to_string());
        }
        if self.addrs.is_empty() {
            return Err("--addr is required".to_string());
        }
        self.addrs
            .iter()
            .try_for_each(|addr| self.tls.check(&addr.text))
    }

    /// The first `--addr` (there is always one: parsing requires it).
    #[must_use]
    pub fn addr(&self) -> &Target {
        self.addrs
            .first()
            .expect("try_parse_args_from refuses a config without --addr")
    }

    /// The `--addr` values as shown: resolved, comma-separated.
    fn addrs_shown(&self) -> String {
        let shown: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        shown.join(",")
    }

    /// Where the connections go, in `--addr` order: the resolved address and, with `--tls`,
    /// the session settings, whose server name is `--server-name` or that address's own host
    /// part (the `--ca` file is read once).
    ///
    /// # Errors
    ///
    /// The CA file cannot be read or holds no usable certificate.
    fn destinations(&self) -> Result<Vec<Destination>, TlsError> {
        let first = self.tls.config(&self.addr().text)?;
        self.addrs
            .iter()
            .map(|addr| {
                let tls = match &first {
                    None => None,
                    Some(config) => Some(TlsConfig {
                        config: Arc::clone(&config.config),
                        server_name: self
                            .tls
                            .server_name(&addr.text)
                            .map_err(TlsError::ServerName)?,
                    }),
                };
                Ok(Destination {
                    addr: addr.socket,
                    tls,
                })
            })
            .collect()
    }

    /// Worker threads: `--threads` or the number of cores, but never more than there are
    /// connections (or requests) to give them.
    #[must_use]
    pub fn threads(&self) -> usize {
        let wanted = self.threads.map_or_else(
            || thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        );
        let mut threads = wanted.min(self.connections as usize);
        if let Some(requests) = self.requests {
            threads = threads.min(usize::try_from(requests).unwrap_or(usize::MAX));
        }
        threads.max(1)
    }

    /// The chat drain actually applied.
    #[must_use]
    pub fn drain(&self) -> Duration {
        self.drain.unwrap_or(DEFAULT_DRAIN)
    }

    /// The warmup actually applied.
    #[must_use]
    pub fn warmup(&self) -> Duration {
        match (self.warmup, self.requests) {
            (Some(warmup), _) => warmup,
            (None, Some(_)) => Duration::ZERO,
            (None, None) => DEFAULT_WARMUP,
        }
    }

    /// How a connection closes: with `--requests-per-connection`, `--close` (RST by default);
    /// without, an ordinary close, as it always was.
    #[must_use]
    pub fn close(&self) -> Close {
        match (self.requests_per_connection, self.close) {
            (0, _) => Close::Fin,
            (_, close) => close.unwrap_or(Close::Rst),
        }
    }

    /// `--proxy-header` and `--proxy-source`, if asked for.
    #[must_use]
    pub fn proxy(&self) -> Option<Proxy> {
        self.proxy_header.map(|version| Proxy {
            version,
            source: self.proxy_source,
        })
    }

    /// Whether to print the progress line.
    #[must_use]
    pub fn show_progress(&self) -> bool {
        use std::io::IsTerminal;
        self.progress || io::stderr().is_terminal()
    }

    fn title(&self, threads: usize) -> String {
        let shape = match self.rate {
            Some(rate) => format!("open loop at {rate} requests/s"),
            None => "closed loop".to_string(),
        };
        let amount = match self.requests {
            Some(n) => format!("{n} requests"),
            None => format!("{}s", self.duration.as_secs_f64()),
        };
        let short = match self.requests_per_connection {
            0 => String::new(),
            n => format!(
                ", {n} request(s) per connection (close: {})",
                self.close().name()
            ),
        };
        let proxy = self
            .proxy()
            .map_or_else(String::new, |proxy| format!(", {}", proxy.describe()));
        format!(
            "{} {}/{}: {} connection(s), {threads} thread(s), pipeline {}{short}{proxy}, \
             {shape}, {amount} after {}s warmup",
            self.addrs_shown(),
            self.protocol.name(),
            self.workload.name(),
            self.connections,
            self.pipeline,
            self.warmup().as_secs_f64()
        )
    }

    /// The resolved settings, for the JSON `settings` object.
    fn settings(&self, threads: usize) -> Map<String, Value> {
        let value = json!({
            "addr": self.addr().to_string(),
            "addrs": self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "protocol": self.protocol.name(),
            "workload": self.workload.name(),
            "size": self.size,
            "request": self.request,
            "connections": self.connections,
            "connect_rate": self.connect_rate,
            "pipeline": self.pipeline,
            "requests_per_connection": self.requests_per_connection,
            "close": (self.requests_per_connection > 0).then(|| self.close().name()),
            "duration_s": self.requests.is_none().then_some(self.duration.as_secs_f64()),
            "warmup_s": self.warmup().as_secs_f64(),
            "requests": self.requests,
            "rate": self.rate,
            "loop": if self.rate.is_some() { "open" } else { "closed" },
            "threads": threads,
            "source_addr": self.source_addr.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "timeout_s": self.timeout.as_secs_f64(),
            "drain_s": (self.workload == Workload::Chat).then(|| self.drain().as_secs_f64()),
            "tls": self.tls.tls,
            "ca": self.tls.ca.as_ref().map(|path| path.display().to_string()),
            "insecure": self.tls.insecure,
            "server_name": self
                .tls
                .tls
                .then(|| self.tls.server_name(&self.addr().text).ok())
                .flatten()
                .map(|name| name.to_str().into_owned()),
            "proxy_header": self.proxy_header.map(proxy::Version::name),
            "proxy_source": self.proxy_source.map(|source| source.to_string()),
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal is an object"),
        }
    }

    /// What every worker is told, but for its index and its share of `--requests` (set by
    /// `Crew::spawn`). `epoch_ns`: time zero of the run.
    fn plan(
        &self,
        threads: usize,
        destinations: Vec<Destination>,
        exchange: Arc<Exchange>,
        epoch_ns: u64,
        chat: Option<Arc<ChatPlan>>,
    ) -> Plan {
        Plan {
            thread: 0,
            threads,
            connections: self.connections as usize,
            destinations: Arc::from(destinations),
            sources: Arc::from(self.source_addr.clone()),
            pipeline: self.pipeline,
            requests_per_connection: self.requests_per_connection,
            close: self.close(),
            exchange,
            connect_interval_ns: 1e9 / self.connect_rate,
            slot_ns: self.rate.map(|rate| 1e9 / rate),
            budget: None,
            duration_ns: self.duration.as_nanos() as u64,
            timeout_ns: self.timeout.as_nanos() as u64,
            epoch_ns,
            progress: self.show_progress(),
            chat,
            proxy: self.proxy(),
        }
    }
}

/// Runs the load and returns the summary: the workers are spawned (`crew.rs`), the main
/// thread paces the phases (`pacing.rs`) and merges their reports (`totals.rs`).
///
/// # Errors
///
/// Setup failures only (creating a poll, spawning a thread); connection problems are counted
/// in the report's errors.
pub fn run(config: &LoadConfig) -> io::Result<Report> {
    let threads = config.threads();
    prepare_fd_limit(config, threads);
    let destinations = config
        .destinations()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let has_tls = config.tls.tls;
    let raw_request = config.request.as_deref().unwrap_or("").as_bytes();
    let exchange = Arc::new(workload::exchange(
        config.workload,
        config.size,
        raw_request,
    ));
    // With --requests and no warmup, every request is measured: the window opens at once;
    // but never before every chat session is identified (an earlier SAY would not reach all).
    let chatting = config.workload == Workload::Chat;
    let start_at_once = config.requests.is_some() && config.warmup().is_zero() && !chatting;
    let epoch = clock_ns();
    let shared = Arc::new(Shared::new(
        threads,
        if start_at_once { epoch } else { UNKNOWN },
    ));
    let cpu_at_start = start_at_once.then(|| CpuSample::take(config.server_pid));
    let chat = chatting.then(|| {
        let names = chat::Names::for_this_run();
        debug!("chat session names: {}<index>", names.prefix());
        Arc::new(ChatPlan::new(
            names,
            &workload::pattern(config.size),
            config.connections as usize,
            threads,
            config.drain().as_nanos() as u64,
        ))
    });
    let plan = config.plan(threads, destinations, exchange, epoch, chat);
    let crew = Crew::spawn(&plan, config.requests, &shared)?;

    let paced = Pacer::new(config, &plan, &crew, &shared, cpu_at_start).run();
    let cpu = paced
        .cpu_at_start
        .map_or_else(CpuSpent::default, |at_start| {
            at_start.until(CpuSample::take(config.server_pid))
        });
    crew.release_and_join(); // the workers may close their sockets now

    let chat_names = plan
        .chat
        .as_ref()
        .map(|chat| format!("{}<index>", chat.names.prefix()));
    let mut totals = Totals::new(has_tls, chat_names);
    for report in &paced.reports {
        totals.add(report);
    }
    Ok(totals.into_report(config, threads, cpu))
}

/// Raises the open-files limit, and warns if it is still too low for `--connections`.
fn prepare_fd_limit(config: &LoadConfig, threads: usize) {
    match raise_fd_limit() {
        Ok((soft, hard)) => debug!("open files limit: soft {soft} raised to hard {hard}"),
        Err(e) => warn!("could not raise the open files limit: {e}"),
    }
    let limit = fd_limit();
    let wanted = u64::from(config.connections) + 16 + 2 * threads as u64;
    if wanted > limit {
        warn!(
            "{} connections need about {wanted} file descriptors, the limit is {limit}: \
             some connects will fail",
            config.connections
        );
    }
}

/// The soft limit on open files now.
fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// Prints the summary (text or `--json`) on stdout and writes `--hdr-out`.
///
/// # Errors
///
/// Writing stdout or the `--hdr-out` file failed.
pub fn output(config: &LoadConfig, report: &Report) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    if config.json {
        writeln!(stdout, "{}", report::summary_json(report))?;
    } else {
        write!(stdout, "{}", report::summary_text(report))?;
    }
    stdout.flush()?;
    if let Some(path) = &config.hdr_out {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut out = BufWriter::new(file);
        report::write_percentiles(&report.histogram, &mut out)?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadConfig, clap::Error> {
        let mut all = vec!["tcp-load", "--addr", "127.0.0.1:8080"];
        all.extend_from_slice(args);
        LoadConfig::try_parse_args_from(all)
    }

    /// `--workload ping` with `extra`, which must parse.
    fn ping(extra: &[&str]) -> LoadConfig {
        let mut args = vec!["--protocol", "line", "--workload", "ping"];
        args.extend_from_slice(extra);
        parse(&args).unwrap()
    }

    #[test]
    fn defaults() {
        let c = parse(&["--protocol", "line", "--workload", "ping"]).unwrap();
        assert_eq!(c.size, 64);
        assert_eq!(c.connections, 50);
        assert_eq!(c.connect_rate, 2000.0);
        assert_eq!(c.pipeline, 1);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.warmup(), Duration::from_secs(1));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.requests, None);
        assert_eq!(c.rate, None);
        assert!(!c.json && !c.progress && c.hdr_out.is_none());
        let n = parse(&[
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--requests",
            "5",
        ])
        .unwrap();
        assert_eq!(n.warmup(), Duration::ZERO, "no warmup with --requests");
        assert_eq!(n.threads(), n.threads().min(5));
        let w = parse(&[
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--requests",
            "5",
            "--warmup",
            "2s",
        ])
        .unwrap();
        assert_eq!(w.warmup(), Duration::from_secs(2));
    }

    #[test]
    fn every_flag_parses() {
        let c = parse(&[
            "--protocol",
            "frame",
            "--workload",
            "message",
            "--size",
            "16",
            "--connections",
            "7",
            "--connect-rate",
            "100",
            "--pipeline",
            "16",
            "--warmup",
            "500ms",
            "--duration",
            "2s",
            "--rate",
            "1000.5",
            "--threads",
            "3",
            "--source-addr",
            "127.0.0.1,127.0.0.2",
            "--timeout",
            "1",
            "--json",
            "--hdr-out",
            "/tmp/x.hdr",
            "--progress",
        ])
        .unwrap();
        assert_eq!(c.protocol, Protocol::Frame);
        assert_eq!(c.workload, Workload::Message);
        assert_eq!(c.source_addr.len(), 2);
        assert_eq!(c.rate, Some(1000.5));
        assert_eq!(c.threads(), 3);
        assert_eq!(c.warmup(), Duration::from_millis(500));
        let settings = c.settings(3);
        assert_eq!(settings["loop"], "open");
        assert_eq!(settings["source_addr"], json!(["127.0.0.1", "127.0.0.2"]));
        // Threads never outnumber connections.
        let few = parse(&[
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--threads",
            "8",
            "--connections",
            "2",
        ])
        .unwrap();
        assert_eq!(few.threads(), 2);
    }

    #[test]
    fn short_connection_flags_and_their_defaults() {
        let persistent = ping(&[]);
        assert_eq!(persistent.requests_per_connection, 0);
        assert_eq!(
            persistent.close(),
            Close::Fin,
            "an ordinary close, as always"
        );
        let settings = persistent.settings(1);
        assert_eq!(settings["requests_per_connection"], 0);
        assert_eq!(settings["close"], Value::Null);
        assert!(!persistent.title(1).contains("per connection"));

        let short = ping(&["--requests-per-connection", "1"]);
        assert_eq!(short.close(), Close::Rst, "no TIME_WAIT by default");
        assert_eq!(short.settings(1)["requests_per_connection"], 1);
        assert_eq!(short.settings(1)["close"], "rst");
        assert!(
            short
                .title(2)
                .contains("pipeline 1, 1 request(s) per connection (close: rst), closed loop"),
            "{}",
            short.title(2)
        );
        let fin = ping(&["--requests-per-connection", "5", "--close", "fin"]);
        assert_eq!(fin.close(), Close::Fin);
        assert_eq!(fin.settings(1)["close"], "fin");
        // Every workload but chat takes it, over either protocol.
        for (protocol, workload) in [("line", "echo"), ("frame", "heartbeat"), ("frame", "login")] {
            let c = parse(&[
                "--protocol",
                protocol,
                "--workload",
                workload,
                "--requests-per-connection",
                "3",
            ])
            .unwrap();
            assert_eq!(c.requests_per_connection, 3);
        }
    }

    #[test]
    fn tls_flags_parse() {
        let plain = parse(&["--protocol", "line", "--workload", "ping"]).unwrap();
        assert!(!plain.tls.tls);
        assert_eq!(plain.settings(1)["tls"], false);
        assert_eq!(plain.settings(1)["server_name"], Value::Null);
        let c = LoadConfig::try_parse_args_from([
            "tcp-load",
            "--addr",
            "localhost:8443",
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--tls",
            "--ca",
            "ca.pem",
        ])
        .unwrap();
        assert!(c.tls.tls);
        assert_eq!(c.addr().text, "localhost:8443");
        let settings = c.settings(1);
        assert_eq!(settings["tls"], true);
        assert_eq!(settings["ca"], "ca.pem");
        assert_eq!(settings["insecure"], false);
        assert_eq!(settings["server_name"], "localhost");
        // The address shown is the resolved one, as without TLS.
        assert!(
            c.title(1)
                .starts_with(&format!("{} line/ping", c.addr().socket))
        );
        let named = parse(&[
            "--protocol",
            "frame",
            "--workload",
            "login",
            "--tls",
            "--insecure",
            "--server-name",
            "server.test",
        ])
        .unwrap();
        assert_eq!(named.settings(1)["server_name"], "server.test");
        assert_eq!(named.settings(1)["insecure"], true);
    }

    #[test]
    fn proxy_flags_parse_and_show() {
        let plain = ping(&[]);
        assert_eq!(plain.proxy(), None);
        assert_eq!(plain.settings(1)["proxy_header"], Value::Null);
        assert_eq!(plain.settings(1)["proxy_source"], Value::Null);
        assert!(!plain.title(1).contains("PROXY"));

        let counted = ping(&["--proxy-header", "v1"]);
        assert_eq!(counted.settings(1)["proxy_header"], "v1");
        assert_eq!(counted.settings(1)["proxy_source"], Value::Null);
        assert!(
            counted
                .title(1)
                .contains("pipeline 1, PROXY v1 header (sources counted), closed loop"),
            "{}",
            counted.title(1)
        );
        let fixed = ping(&["--proxy-header", "v2", "--proxy-source", "10.0.0.7:4000"]);
        let proxy = fixed.proxy().unwrap();
        assert_eq!(proxy.version, proxy::Version::V2);
        assert_eq!(fixed.settings(1)["proxy_header"], "v2");
        assert_eq!(fixed.settings(1)["proxy_source"], "10.0.0.7:4000");
        assert!(
            fixed
                .title(1)
                .contains("PROXY v2 header (source 10.0.0.7:4000)")
        );
        let ip = ping(&["--proxy-header", "v1", "--proxy-source", "fd00::1"]);
        assert_eq!(ip.settings(1)["proxy_source"], "fd00::1");
    }

    #[test]
    fn addr_may_be_given_several_times() {
        let one = parse(&["--protocol", "line", "--workload", "ping"]).unwrap();
        assert_eq!(one.addrs.len(), 1);
        assert_eq!(one.settings(1)["addrs"], json!(["127.0.0.1:8080"]));
        let c = parse(&[
            "--addr",
            "127.0.0.2:9090",
            "--protocol",
            "line",
            "--workload",
            "ping",
            "--addr",
            "localhost:7070",
        ])
        .unwrap();
        let texts: Vec<&str> = c.addrs.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(
            texts,
            ["127.0.0.1:8080", "127.0.0.2:9090", "localhost:7070"]
        );
        assert_eq!(c.addr().text, "127.0.0.1:8080");
        let settings = c.settings(1);
        assert_eq!(settings["addr"], "127.0.0.1:8080");
        let shown = c.addrs[2].socket.to_string();
        assert_eq!(
            settings["addrs"],
            json!(["127.0.0.1:8080", "127.0.0.2:9090", shown])
        );
        assert!(
            c.title(1)
                .starts_with(&format!("127.0.0.1:8080,127.0.0.2:9090,{shown} line/ping"))
        );
        let destinations = c.destinations().unwrap();
        let ports: Vec<u16> = destinations.iter().map(|d| d.addr.port()).collect();
        assert_eq!(ports, [8080, 9090, 7070]);
        assert!(destinations.iter().all(|d| d.tls.is_none()));
    }

    #[test]
    fn each_address_is_its_own_default_tls_server_name() {
        let names = |extra: &[&str]| -> Vec<String> {
            let mut args = vec![
                "tcp-load",
                "--addr",
                "localhost:8443",
                "--addr",
                "127.0.0.1:9443",
                "--protocol",
                "line",
                "--workload",
                "ping",
                "--tls",
                "--insecure",
            ];
            args.extend_from_slice(extra);
            let config = LoadConfig::try_parse_args_from(args).unwrap();
            config
                .destinations()
                .unwrap()
                .iter()
                .map(|d| d.tls.as_ref().unwrap().server_name.to_str().into_owned())
                .collect()
        };
        assert_eq!(names(&[]), ["localhost", "127.0.0.1"]);
        assert_eq!(
            names(&["--server-name", "one.test"]),
            ["one.test", "one.test"]
        );
    }

    #[test]
    fn chat_flags_and_their_limits() {
        let chat = |extra: &[&str]| {
            let mut args = vec!["--protocol", "line", "--workload", "chat"];
            args.extend_from_slice(extra);
            parse(&args)
        };
        let c = chat(&[]).unwrap();
        assert_eq!(c.workload, Workload::Chat);
        assert_eq!(c.drain(), Duration::from_secs(2));
        assert_eq!(c.settings(1)["drain_s"], 2.0);
        assert_eq!(
            chat(&["--drain", "300ms"]).unwrap().drain(),
            Duration::from_millis(300)
        );
        let biggest = chat::MAX_PADDING.to_string();
        assert_eq!(chat(&["--size", &biggest]).unwrap().size, chat::MAX_PADDING);
        let over = (chat::MAX_PADDING + 1).to_string();
        let err = chat(&["--size", &over]).unwrap_err().to_string();
        assert!(err.contains("over the limit of 65489 bytes"), "{err}");
        assert!(chat(&["--connections", "10000"]).is_ok());
        let err = chat(&["--connections", "10001"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("at most 10000 connections"),
            "{err}"
        );
        let ping = parse(&["--protocol", "line", "--workload", "ping"]).unwrap();
        assert_eq!(ping.settings(1)["drain_s"], Value::Null);
        let err = parse(&["--protocol", "frame", "--workload", "chat"]).unwrap_err();
        assert!(err.to_string().contains("line workload"), "{err}");
    }

    // A table: rustfmt gives each case several lines, so it runs past a screen.
    #[test]
    fn bad_combinations_are_usage_errors() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--protocol", "frame", "--workload", "echo"],
                "line workload",
            ),
            (
                &["--protocol", "line", "--workload", "login"],
                "frame workload",
            ),
            (
                &["--protocol", "line", "--workload", "raw"],
                "needs --request",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--request", "x"],
                "only for --workload raw",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "raw",
                    "--request",
                    "a\nb",
                ],
                "one line",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "echo",
                    "--size",
                    "20000000",
                ],
                "over the limit",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--duration",
                    "0",
                ],
                "--duration",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--pipeline",
                    "0",
                ],
                "pipeline",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--rate", "0"],
                "rate",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--requests",
                    "0",
                ],
                "requests",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--requests",
                    "5",
                    "--duration",
                    "1s",
                ],
                "cannot be used with",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--tls"],
                "pass --ca FILE",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--ca", "ca.pem"],
                "--ca only applies with --tls",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--insecure"],
                "--insecure only applies with --tls",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--server-name",
                    "x",
                ],
                "--server-name only applies with --tls",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--drain", "1s"],
                "--drain is only for --workload chat",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "chat",
                    "--requests-per-connection",
                    "1",
                ],
                "not for --workload chat",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--requests-per-connection",
                    "1",
                    "--rate",
                    "10",
                ],
                "cannot be used with --rate",
            ),
            (
                &["--protocol", "line", "--workload", "ping", "--close", "fin"],
                "--close only applies with --requests-per-connection",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--requests-per-connection",
                    "1",
                    "--close",
                    "linger",
                ],
                "linger",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--proxy-source",
                    "10.0.0.1",
                ],
                "--proxy-header <VERSION>",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--proxy-header",
                    "v3",
                ],
                "v3",
            ),
            (
                &[
                    "--protocol",
                    "line",
                    "--workload",
                    "ping",
                    "--proxy-header",
                    "v1",
                    "--proxy-source",
                    "somewhere",
                ],
                "not an IP address or IP:PORT",
            ),
            (&["--protocol", "line", "--workload", "nope"], "nope"),
            (&["--protocol", "tcp", "--workload", "ping"], "tcp"),
        ];
        for (args, needle) in cases {
            let err = parse(args).expect_err(needle);
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
        }
        let no_addr = LoadConfig::try_parse_args_from(["tcp-load", "--protocol", "line"]);
        assert_eq!(no_addr.unwrap_err().exit_code(), 2);
        let bad_addr = LoadConfig::try_parse_args_from([
            "tcp-load",
            "--addr",
            "nowhere",
            "--protocol",
            "line",
            "--workload",
            "ping",
        ]);
        assert_eq!(bad_addr.unwrap_err().exit_code(), 2);
    }
}
