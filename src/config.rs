//! The server's command line: every knob a user can turn, with its default and its unit.
//!
//! clap does the parsing; this module only adds the one value syntax clap does not know,
//! durations (`DUR`), and keeps the defaults in one place so `--help`, the README and the code
//! cannot disagree. Defaults match the original Go programs: text on 8080, frames on 8888, a
//! 10 MiB frame limit and a 60 s idle deadline.
//!
//! One subcommand, `passwd`, makes a line for the users file instead of serving; with no
//! subcommand the program is the server, as it always was.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

/// `--max-line`'s default: the longest line accepted, in bytes, not counting its ending.
pub const DEFAULT_MAX_LINE_BYTES: usize = 65_536;
/// `--max-frame`'s default: the largest frame body accepted, in bytes (10 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 10_485_760;

/// Everything one reactor needs to know before it binds.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tcp-reactor",
    version,
    about = "A single-threaded mio reactor serving a line protocol and a binary frame protocol.",
    long_about = "A single-threaded mio reactor serving a newline text protocol (echo, PING, \
                  HELLO, SAY, LOGIN, STATS, QUIT) and a length-prefixed binary frame protocol \
                  (Heartbeat, Message, Login). See docs/PROTOCOL.md.\n\n\
                  DUR values are seconds (`30`, `0.5`) or a number with a unit: `500ms`, `2s`, `1m`.\n\n\
                  `tcp-reactor passwd NAME` prints a line for the --users file instead of serving.",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Config {
    /// Address of the line (text) protocol listener; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub line_addr: SocketAddr,

    /// Address of the binary frame protocol listener; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8888")]
    pub frame_addr: SocketAddr,

    /// Also serve the line protocol over TLS on this address (off unless given; needs
    /// --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub line_tls_addr: Option<SocketAddr>,

    /// Also serve the frame protocol over TLS on this address (off unless given; needs
    /// --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub frame_tls_addr: Option<SocketAddr>,

    /// Also serve Prometheus metrics on this address (off unless given): `GET /metrics`
    /// answers every STATS counter and the loops' own figures in the Prometheus text format,
    /// then closes. Served by worker 0, under the same --idle-timeout and --request-timeout.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// The TLS listeners' certificate chain, PEM (the server's certificate first). Needs a
    /// TLS listener: --line-tls-addr, --frame-tls-addr, or one passed by systemd (checked
    /// at startup, since clap cannot see the sockets passed).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Longest accepted line in bytes, not counting the line ending; a longer one gets
    /// `ERR line too long` and the connection closes.
    #[arg(long = "max-line", value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,

    /// Largest accepted frame body in bytes (10 MiB); the header alone decides, the body is
    /// never waited for.
    #[arg(long = "max-frame", value_name = "BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: u32,

    /// Connections served at once, both listeners together; the next one gets
    /// `ERR server full` (or an Error frame) and is closed.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Close a connection that has had no traffic for this long (`0` disables).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// A line or frame that has started arriving must be complete within this long, else
    /// `ERR request timeout` (or an Error frame) and a close (`0` disables). This is what stops
    /// a client dribbling a byte at a time, which the idle timeout alone cannot.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to keep flushing replies before closing what is left.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// The users who may log in: one `name:argon2id-hash` line each, made with
    /// `tcp-reactor passwd NAME`; blank lines and lines starting with `#` are ignored. Without
    /// it logins are not checked: every LOGIN is answered `OK` (a Login frame LoginAck `OK`),
    /// as in the original protocol.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,

    /// Until a session has logged in, serve only PING, LOGIN and QUIT on the line protocol
    /// and Heartbeat and Login frames on the frame protocol. Needs --users.
    #[arg(long)]
    pub require_login: bool,

    /// With --require-login: the largest request a session that has not logged in may send
    /// (a line's content, or a frame's body), in bytes, `KiB`, `MiB` or `GiB`. A larger one
    /// gets `ERR line too long` (an Error frame `frame too large: ...`) and a close, as for
    /// the other limits: a client that has proven nothing must not make the server hold
    /// megabytes for it.
    #[arg(
        long = "max-unauthenticated-request",
        value_name = "BYTES",
        default_value = "64KiB",
        value_parser = parse_size
    )]
    pub max_unauthenticated_request_bytes: usize,

    /// The memory budget for everything held on the clients' behalf, all connections
    /// together: input of incomplete or held-back requests and replies not yet written, by
    /// allocated size (and a fixed charge per TLS session). As it runs short, connections
    /// whose requests would need more than is left stop being read; past it, the connections
    /// holding the most are closed, largest first, told `ERR server out of memory` (an Error
    /// frame on the frame port). Bytes, `KiB`, `MiB` or `GiB`; `0` means no limit.
    #[arg(
        long = "client-memory",
        value_name = "BYTES",
        default_value = "1GiB",
        value_parser = parse_size
    )]
    pub client_memory_bytes: usize,

    /// Event loops to run, one per thread, each with its own poll, connections, timers and
    /// buffers (shared-nothing): a number, or `auto` for the cores available to the process.
    /// The limits (--max-connections, --client-memory, the login pool) and the chat room
    /// stay those of the whole process; --client-memory is split evenly among the loops.
    #[arg(long, value_name = "N|auto", default_value = "1", value_parser = parse_workers)]
    pub workers: Workers,

    /// With several workers, how connections reach them. `least-conn`: one loop accepts and
    /// hands each socket to the worker with the fewest connections (long-lived sessions).
    /// `reuseport`: every worker has its own SO_REUSEPORT listeners and the kernel spreads
    /// the connects by a hash of their addresses (many short connections).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Balance::LeastConn)]
    pub balance: Balance,

    /// Every connection, on every listener, must begin with a PROXY protocol header (v1 or
    /// v2, as HAProxy's `send-proxy`/`send-proxy-v2` send it; over TLS, before the
    /// ClientHello), and is served as coming from the client it names. A connection without
    /// a valid header within --request-timeout is closed without a reply (`proxy_errors` in
    /// STATS). Without this flag a PROXY header is just bytes.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// With --proxy-protocol: the only peers that may connect (the balancers), as networks
    /// (`10.0.0.0/8`, `2001:db8::/32`) or addresses, comma-separated; others are closed at
    /// accept (`proxy_errors`). Without it any peer may send a header.
    #[arg(
        long,
        value_name = "CIDR[,CIDR...]",
        value_delimiter = ',',
        value_parser = parse_network,
        requires = "proxy_protocol"
    )]
    pub proxy_from: Vec<IpNet>,

    /// At most this many connections at once from one client address (the address a PROXY
    /// header names, with --proxy-protocol; else the peer's), all workers together. The next
    /// one gets `ERR too many connections from your address` (an Error frame on the frame
    /// port) and is closed (`rejected_per_ip` in STATS). `0`: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Share one chat room with the other nodes that name the same Redis (and
    /// `--cluster-channel`): SAYs cross over Redis pub/sub, and HELLO names are claimed in
    /// Redis so that they are unique across the nodes (see docs/PROTOCOL.md, "Cluster").
    #[arg(long, value_name = "HOST:PORT")]
    pub cluster_redis: Option<String>,

    /// With --cluster-redis: the pub/sub channel, and the prefix of the name keys
    /// (`<channel>:name:<name>`). Nodes share a room only if they use the same one.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "tcp-reactor",
        requires = "cluster_redis"
    )]
    pub cluster_channel: String,

    /// What to do instead of serving; none runs the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Parses one of `--proxy-from`'s networks: `10.0.0.0/8`, `::1/128`, or a bare address (the
/// network of that address alone).
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("expected a network such as 10.0.0.0/8 or an address, got {text:?}"))
}

/// `--workers`: a count, or as many as the cores available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Count(usize),
    Auto,
}

impl Workers {
    /// How many loops to run: `auto` is the cores this process may run on (its CPU
    /// affinity and cgroup quota, as `std::thread::available_parallelism` reads them).
    pub fn count(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The most workers accepted: far past any core count, low enough that a typo (`--workers
/// 10000`) is refused instead of starting ten thousand threads.
pub const MAX_WORKERS: usize = 1024;

/// Parses `--workers`: `auto`, or a whole number from 1 to `MAX_WORKERS`.
pub fn parse_workers(text: &str) -> Result<Workers, String> {
    if text == "auto" {
        return Ok(Workers::Auto);
    }
    match text.parse::<usize>() {
        Ok(n @ 1..=MAX_WORKERS) => Ok(Workers::Count(n)),
        _ => Err(format!(
            "expected `auto` or a number of workers from 1 to {MAX_WORKERS}, got {text:?}"
        )),
    }
}

/// `--balance`: how accepted connections are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// One loop accepts and hands each socket to the least loaded worker.
    LeastConn,
    /// Each worker accepts on its own SO_REUSEPORT listeners.
    Reuseport,
}

/// The subcommands: tools that run and exit instead of serving.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print a users file line for NAME, with the password read from standard input.
    ///
    /// The password is the first line of standard input (its `\n` or `\r\n` is not part of
    /// it). It is hashed with argon2id, the default parameters and a random salt, and
    /// `NAME:$argon2id$...` is printed. Exits 2 on a bad name or an empty password.
    ///
    /// Example: `tcp-reactor passwd alice >> users.txt`, then type the password and Enter.
    Passwd {
        /// The user name: 1 to 64 bytes, no spaces, tabs, `:` or control characters.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

impl Config {
    /// The idle timeout, or `None` when disabled with `0`.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }

    /// The defaults, with both listeners on free loopback ports (port 0): for servers run
    /// in-process by tests and benches.
    pub fn on_free_ports() -> Self {
        Config::parse_from([
            "tcp-reactor",
            "--line-addr",
            "127.0.0.1:0",
            "--frame-addr",
            "127.0.0.1:0",
        ])
    }

    /// The client-memory budget, or `None` when disabled with `0`.
    pub fn client_memory(&self) -> Option<usize> {
        (self.client_memory_bytes != 0).then_some(self.client_memory_bytes)
    }

    /// The request timeout, or `None` when disabled with `0`.
    pub fn request_timeout(&self) -> Option<Duration> {
        (!self.request_timeout.is_zero()).then_some(self.request_timeout)
    }
}

/// Parses `DUR`: a plain number of seconds (`30`, `0.5`) or a number with one of the units
/// `ms`, `s`, `m`.
///
/// ```text
/// 60      -> 60 s        0.25   -> 250 ms
/// 500ms   -> 500 ms      2s     -> 2 s       1m -> 60 s
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, seconds_per_unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("`{text}` is not a duration: use seconds (`30`, `0.5`) or `500ms`, `2s`, `1m`")
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "`{text}` is not a duration: it must be a finite number >= 0"
        ));
    }
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("`{text}` is too long a duration"))
}

/// Parses a `BYTES` value: a whole number of bytes, or one with a binary unit.
///
/// ```text
/// 4096 -> 4096     64KiB -> 65,536     10MiB -> 10,485,760     1GiB -> 1,073,741,824
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, unit) = [("KiB", 1usize << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, unit)))
        .unwrap_or((text, 1));
    let value: usize = number.trim().parse().map_err(|_| {
        format!("`{text}` is not a size: use bytes (`4096`) or `64KiB`, `10MiB`, `1GiB`")
    })?;
    value
        .checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large a size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_accepted_form_and_the_refused_ones() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("64KiB", 65_536),
            (" 10MiB ", 10_485_760),
            ("1GiB", 1 << 30),
            ("3 KiB", 3072),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "KiB",
            "-1",
            "1.5MiB",
            "64kb",
            "64K",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn proxy_from_networks_and_addresses_and_the_refused_forms() {
        for (text, net) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            (" 127.0.0.1 ", "127.0.0.1/32"),
            ("::1", "::1/128"),
            ("2001:db8::/32", "2001:db8::/32"),
        ] {
            assert_eq!(parse_network(text), Ok(net.parse().unwrap()), "{text}");
        }
        for text in ["", "10.0.0.0/33", "localhost", "10.0.0/8", "::1/129"] {
            assert!(parse_network(text).is_err(), "{text:?} accepted");
        }
        let config = Config::try_parse_from([
            "tcp-reactor",
            "--proxy-protocol",
            "--proxy-from",
            "10.0.0.0/8,192.0.2.1",
        ])
        .unwrap();
        assert_eq!(config.proxy_from.len(), 2);
        assert!(Config::try_parse_from(["tcp-reactor", "--proxy-from", "10.0.0.0/8"]).is_err());
    }

    #[test]
    fn workers_as_a_count_or_auto_and_the_refused_forms() {
        assert_eq!(parse_workers("1"), Ok(Workers::Count(1)));
        assert_eq!(parse_workers("16"), Ok(Workers::Count(16)));
        assert_eq!(parse_workers("auto"), Ok(Workers::Auto));
        assert!(Workers::Auto.count() >= 1);
        for text in ["0", "-1", "", "two", "1025", "AUTO"] {
            assert!(parse_workers(text).is_err(), "{text:?} accepted");
        }
        let config = Config::on_free_ports();
        assert_eq!(
            (config.workers, config.balance),
            (Workers::Count(1), Balance::LeastConn)
        );
        let config =
            Config::parse_from(["tcp-reactor", "--workers", "2", "--balance", "reuseport"]);
        assert_eq!(
            (config.workers.count(), config.balance),
            (2, Balance::Reuseport)
        );
    }

    #[test]
    fn durations_in_every_accepted_form() {
        let table = [
            ("0", Duration::ZERO),
            ("60", Duration::from_secs(60)),
            ("0.5", Duration::from_millis(500)),
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1.5m", Duration::from_secs(90)),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (text, expected) in table {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        for text in ["", "s", "ms", "abc", "-1", "1h", "NaN", "inf", "1e400"] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains("duration"), "{text}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_original_programs() {
        let config = Config::parse_from(["tcp-reactor"]);
        assert_eq!(config.line_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.frame_addr.to_string(), "127.0.0.1:8888");
        assert_eq!(config.max_line_bytes, 65_536);
        assert_eq!(config.max_frame_bytes, 10_485_760);
        assert_eq!(config.max_unauthenticated_request_bytes, 65_536);
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(config.idle_timeout(), Some(Duration::from_secs(60)));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.request_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(config.users, None);
        assert!(!config.require_login);
        assert_eq!(config.command, None);
        let off = Config::parse_from(["tcp-reactor", "--idle-timeout", "0"]);
        assert_eq!(off.idle_timeout(), None);
    }

    #[test]
    fn login_flags_parse() {
        let config = Config::parse_from(["tcp-reactor", "--users", "users.txt", "--require-login"]);
        assert_eq!(config.users, Some(PathBuf::from("users.txt")));
        assert!(config.require_login);
        assert_eq!(config.command, None);
    }

    #[test]
    fn passwd_is_a_subcommand_that_takes_no_server_options() {
        let config = Config::parse_from(["tcp-reactor", "passwd", "alice"]);
        assert_eq!(
            config.command,
            Some(Command::Passwd {
                name: "alice".into()
            })
        );
        for args in [
            &["tcp-reactor", "passwd"][..],
            &["tcp-reactor", "passwd", "alice", "bob"],
            &["tcp-reactor", "--users", "u.txt", "passwd", "alice"],
            &["tcp-reactor", "passwd", "alice", "--require-login"],
        ] {
            assert!(Config::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
