//! What tcp-load prints: the summary (text or JSON), the HdrHistogram percentile table, and
//! the once-a-second progress line.
//!
//! Latencies are recorded in nanoseconds (so a 25 µs round trip keeps 3 significant digits)
//! and shown in microseconds: with 1 decimal in the summary, with 3 in the percentile table.
//! MB is 10^6 bytes. Rates are over the measured window only (after the warmup).
//!
//! # Invariants
//!
//! - Formatting only: a [`Report`] is plain numbers gathered by the workers; nothing here
//!   reads a socket or a clock, so every format is unit-tested on a handmade report.
//! - The JSON keys and the percentile table layout are a contract with scripts and plotters:
//!   `requests`, `duration_s`, `requests_per_s`, `mb_per_s_sent`, `mb_per_s_received`,
//!   `latency_us {min,p50,p90,p99,p999,max}`, `errors {connect,reset,eof,timeout,mismatch}`,
//!   `connections` (connection places established at least once), `connects` (connections
//!   established in the measured window: with `--requests-per-connection`, every reconnect),
//!   `connects_per_s`, `connect_latency_us {min,p50,p90,p99,p999,max}` (those connects,
//!   `connect()` to established), `threads`, `cpu_s`, `cpu_us_per_request`, `server_cpu_s` and
//!   `server_cpu_us_per_request` (null without `--server-pid`), `tls` (null without `--tls`,
//!   else `{handshakes, handshake_us {p50,p99,max}, failures {REASON: count}}`: handshakes
//!   done, their times, and why the failed ones failed), `chat` (null but with
//!   `--workload chat`, else `{names, sessions, messages, deliveries, deliveries_per_s,
//!   delivery_latency_us {min,p50,p90,p99,p999,max}, missing, duplicated, reordered,
//!   disconnected, foreign}`: see `chat.rs` for what each counts), `settings {...}` (with
//!   `--tls`: `tls`, `ca`, `insecure`, `server_name`); the table is the one Java
//!   HdrHistogram's `outputPercentileDistribution` writes (and wrk2 prints), which the
//!   HdrHistogram plotter reads.
//! - The text summary's lines keep their order and layout; `--requests-per-connection` adds
//!   its `connects` and `connect µs` lines after `connections`, `--tls` a `tls` line (and a
//!   `tls failed` line per reason) after those, and `--workload chat` its `chat`,
//!   `delivery µs` and `chat errors` lines after those.
//! - The exit status counts every error: the kinds of [`Errors`], and with chat the missing,
//!   duplicated and reordered messages ([`Report::error_total`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use super::Close;
use super::chat::Tally;

/// The lowest discernible latency: 1 ns, not 1 µs. HdrHistogram's lowest value sets the step
/// of its first bucket: with 1 µs (recorded in ns) the steps would be 512 ns all the way up to
/// 1 ms, so 25.0 and 25.4 µs would merge; with 1 ns every value keeps 3 significant digits.
/// The cost is a few more buckets (about 220 KB per histogram, one per thread).
pub const LOWEST_NS: u64 = 1;
/// Latencies above this (60 s) are recorded as this.
pub const HIGHEST_NS: u64 = 60_000_000_000;
/// Significant digits kept at every magnitude: 3 gives 0.1 % resolution, so 25.0 µs and
/// 25.1 µs stay apart, as do 60.00 s and 60.06 s.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in nanoseconds, 1 ns .. 60 s, 3 significant digits
/// (about 220 KB).
#[must_use]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

/// The kinds of error counted; each closes its connection (which is not reopened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection could not be established: refused, unreachable, no descriptor, or not
    /// connected within `--timeout`.
    Connect,
    /// A read or write failed on an open connection (ECONNRESET, EPIPE, ...).
    Reset,
    /// The server closed the connection while requests were outstanding or more were to be
    /// sent.
    Eof,
    /// Requests outstanding and no reply for `--timeout`.
    Timeout,
    /// A reply's bytes differ from the expected ones, or a reply came that was not asked for.
    Mismatch,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Reset,
        ErrorKind::Eof,
        ErrorKind::Timeout,
        ErrorKind::Mismatch,
    ];

    /// The key in the summary and the JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Eof => "eof",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Mismatch => "mismatch",
        }
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors([u64; 5]);

impl Errors {
    pub fn count(&mut self, kind: ErrorKind) {
        self.0[kind as usize] += 1;
    }

    #[must_use]
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize]
    }

    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, other: &Errors) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

/// Everything the summary shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// One line naming the target and the load shape.
    pub title: String,
    /// The resolved command line, for the JSON `settings` object.
    pub settings: Map<String, Value>,
    /// Replies recorded in the measured window.
    pub requests: u64,
    /// The measured window: `--duration`, or from the start to the last reply (`--requests`).
    pub duration: Duration,
    /// Bytes written and read during the measured window.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Latencies of the recorded replies, in nanoseconds.
    pub histogram: Histogram<u64>,
    pub errors: Errors,
    /// Connection places established at least once, and asked for.
    pub connections: u64,
    pub connections_wanted: u64,
    /// Connections established in the measured window, and their connect times (ns).
    pub connects: u64,
    pub connect_times: Histogram<u64>,
    /// With `--requests-per-connection`: how connections come and go.
    pub short: Option<ShortConnections>,
    pub threads: usize,
    /// tcp-load's own CPU time (user + system) during the measured window.
    pub cpu: Duration,
    /// The `--server-pid` process's CPU time over the same window, if asked for.
    pub server_cpu: Option<Duration>,
    /// With `--tls`: the handshakes.
    pub tls: Option<TlsSummary>,
    /// With `--workload chat`: the deliveries.
    pub chat: Option<ChatSummary>,
}

/// A run of short connections: `--requests-per-connection` and `--close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortConnections {
    pub requests_per_connection: u64,
    pub close: Close,
}

/// A chat run's deliveries and what went wrong with them.
#[derive(Debug, Clone)]
pub struct ChatSummary {
    /// How the sessions were named: `c` + the run's characters + `<index>`.
    pub names: String,
    pub tally: Tally,
}

/// The TLS handshakes of a run (all of them: they happen while connecting, before the
/// measured window).
#[derive(Debug, Clone)]
pub struct TlsSummary {
    /// Durations of the handshakes done, in nanoseconds: from the TCP connection's
    /// establishment to the handshake's end.
    pub handshakes: Histogram<u64>,
    /// Handshakes that failed (each also a `connect` error), by reason.
    pub failures: BTreeMap<String, u64>,
}

/// Handshake time percentiles, in microseconds (all 0 without handshakes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandshakeTimes {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl TlsSummary {
    #[must_use]
    pub fn times(&self) -> HandshakeTimes {
        let h = &self.handshakes;
        if h.is_empty() {
            return HandshakeTimes {
                p50: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        HandshakeTimes {
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
        }
    }
}

/// The latency percentiles shown, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Report {
    #[must_use]
    pub fn requests_per_s(&self) -> f64 {
        per_second(self.requests as f64, self.duration)
    }

    #[must_use]
    pub fn connects_per_s(&self) -> f64 {
        per_second(self.connects as f64, self.duration)
    }

    #[must_use]
    pub fn mb_per_s_sent(&self) -> f64 {
        per_second(self.bytes_sent as f64 / 1e6, self.duration)
    }

    #[must_use]
    pub fn mb_per_s_received(&self) -> f64 {
        per_second(self.bytes_received as f64 / 1e6, self.duration)
    }

    /// CPU microseconds per recorded request; 0 without requests.
    #[must_use]
    pub fn cpu_us_per_request(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1e6 / self.requests as f64
        }
    }

    /// The server's CPU microseconds per recorded request, with `--server-pid`.
    #[must_use]
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        Some(if self.requests == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / self.requests as f64
        })
    }

    /// Percentiles in µs (all 0 without requests).
    #[must_use]
    pub fn latency(&self) -> Latency {
        Latency::of(&self.histogram)
    }

    /// Chat: deliveries per second of the measured window.
    #[must_use]
    pub fn deliveries_per_s(&self) -> Option<f64> {
        let chat = self.chat.as_ref()?;
        Some(per_second(chat.tally.deliveries as f64, self.duration))
    }

    /// Every error counted, what the exit status goes by.
    #[must_use]
    pub fn error_total(&self) -> u64 {
        self.errors.total() + self.chat.as_ref().map_or(0, |chat| chat.tally.errors())
    }
}

impl Latency {
    /// The percentiles of `h` (nanoseconds) in µs; all 0 if it is empty.
    #[must_use]
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                min: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Latency {
            min: us(h.min()),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// `{min, p50, p90, p99, p999, max}`, as `latency_us` has it.
    fn json(&self) -> Value {
        json!({
            "min": self.min,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
        })
    }
}

fn per_second(amount: f64, duration: Duration) -> f64 {
    let seconds = duration.as_secs_f64();
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

/// The human summary, several lines, each ending in `\n`.
#[must_use]
pub fn summary_text(report: &Report) -> String {
    let l = report.latency();
    let mut text = String::new();
    let _ = writeln!(text, "tcp-load {}", report.title);
    let _ = writeln!(
        text,
        "  requests     {} in {:.3} s = {:.1} requests/s",
        report.requests,
        report.duration.as_secs_f64(),
        report.requests_per_s()
    );
    let _ = writeln!(
        text,
        "  transfer     sent {:.2} MB/s, received {:.2} MB/s",
        report.mb_per_s_sent(),
        report.mb_per_s_received()
    );
    latency_line(&mut text, "latency µs", &l);
    let _ = write!(text, "  errors      ");
    for kind in ErrorKind::ALL {
        let _ = write!(text, " {} {}", kind.name(), report.errors.get(kind));
    }
    text.push('\n');
    let _ = writeln!(
        text,
        "  connections  {} of {} established, {} thread(s)",
        report.connections, report.connections_wanted, report.threads
    );
    if let Some(short) = &report.short {
        connect_lines(&mut text, report, short);
    }
    if let Some(tls) = &report.tls {
        tls_lines(&mut text, tls);
    }
    if let Some(chat) = &report.chat {
        chat_lines(&mut text, report, &chat.tally);
    }
    let _ = writeln!(
        text,
        "  cpu          tcp-load {:.3} s user+sys = {:.3} µs/request",
        report.cpu.as_secs_f64(),
        report.cpu_us_per_request()
    );
    if let (Some(cpu), Some(per)) = (report.server_cpu, report.server_cpu_us_per_request()) {
        let _ = writeln!(
            text,
            "  cpu          server {:.3} s user+sys = {per:.3} µs/request",
            cpu.as_secs_f64()
        );
    }
    text
}

/// A summary line of latency percentiles: `label` (as wide as the other lines' labels), then
/// min, p50, p90, p99, p99.9 and max in µs.
fn latency_line(text: &mut String, label: &str, l: &Latency) {
    let _ = writeln!(
        text,
        "  {label:<13}min {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        l.min, l.p50, l.p90, l.p99, l.p999, l.max
    );
}

/// The summary's `connects` and `connect µs` lines.
fn connect_lines(text: &mut String, report: &Report, short: &ShortConnections) {
    let l = Latency::of(&report.connect_times);
    let _ = writeln!(
        text,
        "  connects     {} in {:.3} s = {:.1} connects/s, {} request(s) each, close {}",
        report.connects,
        report.duration.as_secs_f64(),
        report.connects_per_s(),
        short.requests_per_connection,
        short.close.name()
    );
    latency_line(text, "connect µs", &l);
}

/// The summary's `tls` line, and a `tls failed` line per reason.
fn tls_lines(text: &mut String, tls: &TlsSummary) {
    let t = tls.times();
    let _ = writeln!(
        text,
        "  tls          handshakes {}  p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
        tls.handshakes.len(),
        t.p50,
        t.p99,
        t.max
    );
    for (reason, count) in &tls.failures {
        let _ = writeln!(text, "  tls failed   {count} x {reason}");
    }
}

/// The summary's `chat`, `delivery µs` and `chat errors` lines.
fn chat_lines(text: &mut String, report: &Report, tally: &Tally) {
    let l = Latency::of(&tally.latency);
    let _ = writeln!(
        text,
        "  chat         {} sessions, {} messages, {} deliveries = {:.1} deliveries/s",
        tally.sessions,
        tally.messages,
        tally.deliveries,
        report.deliveries_per_s().unwrap_or(0.0)
    );
    latency_line(text, "delivery µs", &l);
    let _ = writeln!(
        text,
        "  chat errors  missing {} duplicated {} reordered {} disconnected {} (foreign {})",
        tally.missing, tally.duplicated, tally.reordered, tally.disconnected, tally.foreign
    );
}

/// The summary's `chat` object.
fn chat_json(report: &Report, chat: &ChatSummary) -> Value {
    let t = &chat.tally;
    let l = Latency::of(&t.latency);
    json!({
        "names": chat.names,
        "sessions": t.sessions,
        "messages": t.messages,
        "deliveries": t.deliveries,
        "deliveries_per_s": report.deliveries_per_s(),
        "delivery_latency_us": l.json(),
        "missing": t.missing,
        "duplicated": t.duplicated,
        "reordered": t.reordered,
        "disconnected": t.disconnected,
        "foreign": t.foreign,
    })
}

/// The summary as one JSON object (keys in the module doc).
#[must_use]
pub fn summary_json(report: &Report) -> Value {
    let l = report.latency();
    let mut errors = Map::new();
    for kind in ErrorKind::ALL {
        errors.insert(kind.name().to_string(), json!(report.errors.get(kind)));
    }
    json!({
        "requests": report.requests,
        "duration_s": report.duration.as_secs_f64(),
        "requests_per_s": report.requests_per_s(),
        "mb_per_s_sent": report.mb_per_s_sent(),
        "mb_per_s_received": report.mb_per_s_received(),
        "latency_us": l.json(),
        "errors": errors,
        "connections": report.connections,
        "connects": report.connects,
        "connects_per_s": report.connects_per_s(),
        "connect_latency_us": Latency::of(&report.connect_times).json(),
        "threads": report.threads,
        "cpu_s": report.cpu.as_secs_f64(),
        "cpu_us_per_request": report.cpu_us_per_request(),
        "server_cpu_s": report.server_cpu.map(|cpu| cpu.as_secs_f64()),
        "server_cpu_us_per_request": report.server_cpu_us_per_request(),
        "tls": report.tls.as_ref().map(|tls| {
            let t = tls.times();
            json!({
                "handshakes": tls.handshakes.len(),
                "handshake_us": { "p50": t.p50, "p99": t.p99, "max": t.max },
                "failures": tls.failures,
            })
        }),
        "chat": report.chat.as_ref().map(|chat| chat_json(report, chat)),
        "settings": report.settings,
    })
}

/// Writes the percentile distribution of `histogram` (nanoseconds) in microseconds, in the
/// text format of Java HdrHistogram's `outputPercentileDistribution(out, 1, 1000.0)`:
///
/// ```text
///        Value     Percentile TotalCount 1/(1-Percentile)
///
///       25.023 0.000000000000          1           1.00
///       ...
///      812.543 1.000000000000      40000
/// #[Mean    =       31.234, StdDeviation   =        4.567]
/// #[Max     =      812.543, Total count    =        40000]
/// #[Buckets =           26, SubBuckets     =         2048]
/// ```
///
/// One tick per half distance (`iter_quantiles(1)`): the steps are 0, 50, 75, 87.5, ... %.
///
/// # Errors
///
/// Whatever writing to `out` fails with.
pub fn write_percentiles(histogram: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    const SCALE: f64 = 1000.0; // ns -> µs
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(1) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / SCALE;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(out, "{value:12.3} {quantile:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            histogram.mean() / SCALE,
            histogram.stdev() / SCALE,
            histogram.max() as f64 / SCALE,
        )
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        histogram.len()
    )?;
    // Java's subBucketCount: 2 * 10^digits rounded up to a power of two.
    let sub_buckets = (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two();
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        histogram.buckets()
    )
}

/// The progress line (no newline): elapsed time, open connections, replies per second over
/// the last interval, p99 of the measured window so far (`None` during warmup), errors.
#[must_use]
pub fn progress_line(
    elapsed: Duration,
    open: u64,
    per_second: f64,
    p99_us: Option<f64>,
    errors: u64,
) -> String {
    let p99 = match p99_us {
        Some(p99) => format!("p99 {p99:.1} µs"),
        None => "warmup".to_string(),
    };
    format!(
        "[{:6.1}s] connections {open}  requests/s {per_second:.0}  {p99}  errors {errors}",
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(latencies_ns: &[u64]) -> Report {
        let mut histogram = new_histogram();
        for &ns in latencies_ns {
            histogram.record(ns).unwrap();
        }
        let mut errors = Errors::default();
        errors.count(ErrorKind::Timeout);
        errors.count(ErrorKind::Timeout);
        errors.count(ErrorKind::Mismatch);
        let mut settings = Map::new();
        settings.insert("pipeline".into(), json!(16));
        Report {
            title: "127.0.0.1:8080 line/ping".into(),
            settings,
            requests: latencies_ns.len() as u64,
            duration: Duration::from_secs(2),
            bytes_sent: 3_000_000,
            bytes_received: 1_000_000,
            histogram,
            errors,
            connections: 49,
            connections_wanted: 50,
            connects: 0,
            connect_times: new_histogram(),
            short: None,
            threads: 2,
            cpu: Duration::from_millis(500),
            server_cpu: None,
            tls: None,
            chat: None,
        }
    }

    fn with_tls(mut report: Report) -> Report {
        let mut handshakes = new_histogram();
        for ns in [800_000, 900_000, 2_000_000] {
            handshakes.record(ns).unwrap();
        }
        let mut failures = BTreeMap::new();
        failures.insert("invalid peer certificate: UnknownIssuer".to_string(), 2);
        report.tls = Some(TlsSummary {
            handshakes,
            failures,
        });
        report
    }

    #[test]
    fn tls_figures_in_json_and_text() {
        let plain = report(&[25_000]);
        assert_eq!(summary_json(&plain)["tls"], Value::Null);
        assert!(!summary_text(&plain).contains("tls"));

        let tls = with_tls(report(&[25_000]));
        let value = summary_json(&tls);
        assert_eq!(value["tls"]["handshakes"], 3);
        let p50 = value["tls"]["handshake_us"]["p50"].as_f64().unwrap();
        let p99 = value["tls"]["handshake_us"]["p99"].as_f64().unwrap();
        assert!((p50 - 900.0).abs() < 1.0, "{p50}");
        assert!((p99 - 2000.0).abs() < 2.0, "{p99}");
        assert_eq!(
            value["tls"]["failures"]["invalid peer certificate: UnknownIssuer"],
            2
        );
        let text = summary_text(&tls);
        for needle in [
            "\n  tls          handshakes 3  p50 900.1 µs  p99 2000.9 µs  max 2000.9 µs\n",
            "\n  tls failed   2 x invalid peer certificate: UnknownIssuer\n",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        // The lines scripts read are unchanged, and in the same order.
        let plain_text = summary_text(&report(&[25_000]));
        let without_tls: Vec<&str> = text.lines().filter(|l| !l.starts_with("  tls")).collect();
        assert_eq!(without_tls, plain_text.lines().collect::<Vec<_>>());
    }

    fn with_chat(mut report: Report) -> Report {
        let mut tally = Tally::default();
        for ns in [100_000, 200_000, 4_000_000] {
            tally.latency.record(ns).unwrap();
        }
        (tally.sessions, tally.messages, tally.deliveries) = (20, 100, 1900);
        (tally.missing, tally.duplicated, tally.reordered) = (3, 2, 1);
        (tally.disconnected, tally.foreign) = (1, 7);
        report.chat = Some(ChatSummary {
            names: "cabcdefgh<index>".to_string(),
            tally,
        });
        report
    }

    /// A latency object's keys, in the order serde_json keeps them (sorted).
    const LATENCY_KEYS: [&str; 6] = ["max", "min", "p50", "p90", "p99", "p999"];

    fn keys(object: &Value) -> Vec<&str> {
        object
            .as_object()
            .expect("a JSON object")
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn connect_figures_in_json_and_text() {
        let persistent = report(&[25_000]);
        let value = summary_json(&persistent);
        assert_eq!(
            (value["connects"].clone(), value["connects_per_s"].clone()),
            (json!(0), json!(0.0))
        );
        assert_eq!(value["connect_latency_us"]["p99"], 0.0);
        assert!(!summary_text(&persistent).contains("connects"));

        let mut short = report(&[25_000]);
        short.connects = 5;
        for ns in [20_000, 40_000, 40_000, 40_000, 900_000] {
            short.connect_times.record(ns).unwrap();
        }
        short.short = Some(ShortConnections {
            requests_per_connection: 1,
            close: Close::Rst,
        });
        let value = summary_json(&short);
        assert_eq!(value["connects"], 5);
        assert_eq!(value["connects_per_s"], 2.5);
        assert_eq!(keys(&value["connect_latency_us"]), LATENCY_KEYS);
        let text = summary_text(&short);
        for needle in [
            "\n  connections  49 of 50 established, 2 thread(s)\n  connects     5 in 2.000 s = \
             2.5 connects/s, 1 request(s) each, close rst\n",
            "\n  connect µs   min 20.0  p50 40.0  p90 900.1  p99 900.1  p99.9 900.1  max 900.1\n",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        // The other lines are unchanged, and in the same order.
        let others: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("  connect "))
            .filter(|l| !l.starts_with("  connects"))
            .collect();
        assert_eq!(
            others,
            summary_text(&persistent).lines().collect::<Vec<_>>()
        );
    }

    #[test]
    fn chat_figures_in_json_and_text() {
        let plain = report(&[25_000]);
        assert_eq!(summary_json(&plain)["chat"], Value::Null);
        assert_eq!(plain.error_total(), 3);
        let chat = with_chat(report(&[25_000]));
        assert_eq!(
            chat.error_total(),
            3 + 3 + 2 + 1,
            "missing, duplicated, reordered"
        );
        let value = summary_json(&chat);
        let c = &value["chat"];
        assert_eq!(c["names"], "cabcdefgh<index>");
        assert_eq!(
            (c["sessions"].clone(), c["messages"].clone()),
            (json!(20), json!(100))
        );
        assert_eq!(c["deliveries"], 1900);
        assert_eq!(c["deliveries_per_s"], 950.0);
        for (key, count) in [
            ("missing", 3),
            ("duplicated", 2),
            ("reordered", 1),
            ("disconnected", 1),
            ("foreign", 7),
        ] {
            assert_eq!(c[key], count, "{key}");
        }
        assert_eq!(keys(&c["delivery_latency_us"]), LATENCY_KEYS);
        let p50 = c["delivery_latency_us"]["p50"].as_f64().unwrap();
        assert!((p50 - 200.0).abs() < 0.2, "{p50}");
        let text = summary_text(&chat);
        for needle in [
            "\n  chat         20 sessions, 100 messages, 1900 deliveries = 950.0 deliveries/s\n",
            "\n  delivery µs  min 100.0  p50 200.1  p90 4001.8  p99 4001.8  p99.9 4001.8  max \
             4001.8\n",
            "\n  chat errors  missing 3 duplicated 2 reordered 1 disconnected 1 (foreign 7)\n",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        // The other lines are unchanged, and in the same order.
        let plain_text = summary_text(&plain);
        let others: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("  chat") && !l.starts_with("  delivery"))
            .collect();
        assert_eq!(others, plain_text.lines().collect::<Vec<_>>());
    }

    #[test]
    fn json_has_the_contract_keys() {
        let value = summary_json(&report(&[25_000, 30_000, 1_000_000]));
        let object = value.as_object().unwrap();
        for key in [
            "requests",
            "duration_s",
            "requests_per_s",
            "mb_per_s_sent",
            "mb_per_s_received",
            "latency_us",
            "errors",
            "connections",
            "connects",
            "connects_per_s",
            "connect_latency_us",
            "threads",
            "cpu_s",
            "server_cpu_s",
            "server_cpu_us_per_request",
            "settings",
        ] {
            assert!(object.contains_key(key), "missing {key} in {value}");
        }
        let latency = value["latency_us"].as_object().unwrap();
        let keys: Vec<&str> = latency.keys().map(String::as_str).collect();
        for key in ["min", "p50", "p90", "p99", "p999", "max"] {
            assert!(keys.contains(&key), "latency_us.{key}");
        }
        let errors = value["errors"].as_object().unwrap();
        assert_eq!(errors.len(), 5);
        assert_eq!(value["errors"]["timeout"], 2);
        assert_eq!(value["errors"]["mismatch"], 1);
        assert_eq!(value["errors"]["connect"], 0);
        assert_eq!(value["requests"], 3);
        assert_eq!(value["requests_per_s"], 1.5);
        assert_eq!(value["mb_per_s_sent"], 1.5);
        assert_eq!(value["mb_per_s_received"], 0.5);
        assert_eq!(value["connections"], 49);
        assert_eq!(value["threads"], 2);
        assert_eq!(value["cpu_s"], 0.5);
        assert_eq!(value["settings"]["pipeline"], 16);
        // 3 significant digits: 25 µs and 1 ms come back within 0.1 %.
        let min = value["latency_us"]["min"].as_f64().unwrap();
        let max = value["latency_us"]["max"].as_f64().unwrap();
        assert!((min - 25.0).abs() < 0.03, "{min}");
        assert!((max - 1000.0).abs() < 1.0, "{max}");
    }

    #[test]
    fn text_summary_shows_every_figure() {
        let text = summary_text(&report(&[25_000, 30_000, 1_000_000]));
        assert!(
            text.starts_with("tcp-load 127.0.0.1:8080 line/ping\n"),
            "{text}"
        );
        for needle in [
            "3 in 2.000 s = 1.5 requests/s",
            "sent 1.50 MB/s, received 0.50 MB/s",
            "min 25.0  p50 30.0",
            "max 1000.4",
            "connect 0 reset 0 eof 0 timeout 2 mismatch 1",
            "49 of 50 established, 2 thread(s)",
            "tcp-load 0.500 s user+sys = 166666.667 µs/request",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
    }

    #[test]
    fn empty_report_has_zeros_not_panics() {
        let mut empty = report(&[]);
        empty.duration = Duration::ZERO;
        let value = summary_json(&empty);
        assert_eq!(value["requests_per_s"], 0.0);
        assert_eq!(value["latency_us"]["p99"], 0.0);
        assert_eq!(value["cpu_us_per_request"], 0.0);
        let mut out = Vec::new();
        write_percentiles(&empty.histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Total count    =            0]"), "{text}");
    }

    /// The layout of Java's `outputPercentileDistribution`, whole, for a histogram small
    /// enough to follow by hand: 1, 2, 3, 4 µs, one sample each. Values are each bucket's
    /// highest equivalent value (3 µs -> 3.001 at 3 significant digits), as in Java; the steps
    /// halve the distance to 100 %; the last row has no 1/(1-Percentile).
    #[test]
    fn percentile_table_matches_the_java_layout() {
        let mut histogram = new_histogram();
        for ns in [1000, 2000, 3000, 4000] {
            histogram.record(ns).unwrap();
        }
        let mut out = Vec::new();
        write_percentiles(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "       Value     Percentile TotalCount 1/(1-Percentile)\n\
                        \n\
                        \x20      1.000 0.000000000000          1           1.00\n\
                        \x20      2.000 0.500000000000          2           2.00\n\
                        \x20      3.001 0.750000000000          3           4.00\n\
                        \x20      4.001 0.875000000000          4           8.00\n\
                        \x20      4.001 1.000000000000          4\n\
                        #[Mean    =        2.501, StdDeviation   =        1.118]\n\
                        #[Max     =        4.001, Total count    =            4]\n\
                        #[Buckets =           26, SubBuckets     =         2048]\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn progress_line_shows_warmup_then_p99() {
        assert_eq!(
            progress_line(Duration::from_millis(1500), 50, 12345.6, None, 0),
            "[   1.5s] connections 50  requests/s 12346  warmup  errors 0"
        );
        assert_eq!(
            progress_line(Duration::from_secs(3), 48, 100.0, Some(123.45), 2),
            "[   3.0s] connections 48  requests/s 100  p99 123.5 µs  errors 2"
        );
    }

    #[test]
    fn errors_add_up_by_kind() {
        let mut a = Errors::default();
        a.count(ErrorKind::Connect);
        let mut b = Errors::default();
        b.count(ErrorKind::Connect);
        b.count(ErrorKind::Eof);
        a.add(&b);
        assert_eq!(a.get(ErrorKind::Connect), 2);
        assert_eq!(a.get(ErrorKind::Eof), 1);
        assert_eq!(a.total(), 3);
    }
}
