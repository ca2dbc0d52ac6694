//! The workers' reports merged into the run's [`Report`]: histograms added, counts summed,
//! TLS failures added up by reason.
//!
//! The measured window's length is `--duration` as given; with `--requests` it runs from
//! the earliest window start a worker used to the last reply any worker recorded (zero if
//! none was), so it holds every measured request and no idle tail.
//!
//! A histogram that cannot be merged (it cannot happen: every one has the same bounds) is
//! logged and left out; it never stops the summary.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use log::warn;

use super::LoadConfig;
use super::chat::Tally;
use super::cpu::CpuSpent;
use super::report::{ChatSummary, Errors, Report, ShortConnections, TlsSummary, new_histogram};
use super::worker::WorkerReport;

/// The sums so far.
pub(super) struct Totals {
    histogram: Histogram<u64>,
    tls: Option<TlsSummary>,
    /// Chat: the sessions' names, and the counts.
    chat: Option<ChatSummary>,
    errors: Errors,
    requests: u64,
    bytes_sent: u64,
    bytes_received: u64,
    connected: u64,
    connects: u64,
    connect_times: Histogram<u64>,
    last_reply_ns: u64,
    /// The earliest window start a worker used (`u64::MAX`: none).
    first_start_ns: u64,
}

impl Totals {
    /// Nothing merged yet; `tls`: the run has handshakes to sum; `chat_names`: it is a chat
    /// run, its sessions so named.
    pub fn new(tls: bool, chat_names: Option<String>) -> Totals {
        Totals {
            histogram: new_histogram(),
            tls: tls.then(|| TlsSummary {
                handshakes: new_histogram(),
                failures: BTreeMap::new(),
            }),
            chat: chat_names.map(|names| ChatSummary {
                names,
                tally: Tally::default(),
            }),
            errors: Errors::default(),
            requests: 0,
            bytes_sent: 0,
            bytes_received: 0,
            connected: 0,
            connects: 0,
            connect_times: new_histogram(),
            last_reply_ns: 0,
            first_start_ns: u64::MAX,
        }
    }

    /// Adds one worker's report.
    pub fn add(&mut self, report: &WorkerReport) {
        if self.histogram.add(&report.histogram).is_err() {
            warn!("could not merge a latency histogram");
        }
        if self.connect_times.add(&report.connect_times).is_err() {
            warn!("could not merge a connect time histogram");
        }
        if let (Some(summary), Some(handshakes)) = (self.tls.as_mut(), &report.handshakes) {
            if summary.handshakes.add(handshakes).is_err() {
                warn!("could not merge a handshake histogram");
            }
            for (reason, count) in &report.tls_failures {
                *summary.failures.entry(reason.clone()).or_default() += count;
            }
        }
        if let (Some(summary), Some(tally)) = (self.chat.as_mut(), &report.chat) {
            summary.tally.add(tally);
        }
        self.errors.add(&report.errors);
        self.requests += report.requests;
        self.bytes_sent += report.bytes_sent;
        self.bytes_received += report.bytes_received;
        self.connected += report.connected;
        self.connects += report.connects;
        self.last_reply_ns = self.last_reply_ns.max(report.last_reply_ns);
        if report.start_ns != 0 {
            self.first_start_ns = self.first_start_ns.min(report.start_ns);
        }
    }

    /// The measured window's length.
    fn duration(&self, config: &LoadConfig) -> Duration {
        match config.requests {
            None => config.duration,
            Some(_) if self.last_reply_ns > self.first_start_ns => {
                Duration::from_nanos(self.last_reply_ns - self.first_start_ns)
            }
            Some(_) => Duration::ZERO,
        }
    }

    /// The summary of a run of `config` on `threads` workers that spent `cpu`.
    pub fn into_report(self, config: &LoadConfig, threads: usize, cpu: CpuSpent) -> Report {
        Report {
            title: config.title(threads),
            settings: config.settings(threads),
            requests: self.requests,
            duration: self.duration(config),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            histogram: self.histogram,
            errors: self.errors,
            connections: self.connected,
            connections_wanted: u64::from(config.connections),
            connects: self.connects,
            connect_times: self.connect_times,
            short: (config.requests_per_connection > 0).then(|| ShortConnections {
                requests_per_connection: config.requests_per_connection,
                close: config.close(),
            }),
            threads,
            cpu: cpu.ours,
            server_cpu: cpu.server,
            tls: self.tls,
            chat: self.chat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::ErrorKind;

    fn config(args: &[&str]) -> LoadConfig {
        let mut all = vec!["tcp-load", "--addr", "127.0.0.1:8080", "--protocol", "line"];
        all.extend_from_slice(&["--workload", "ping"]);
        all.extend_from_slice(args);
        LoadConfig::try_parse_args_from(all).unwrap()
    }

    fn worker_report(latencies_ns: &[u64], start_ns: u64, last_reply_ns: u64) -> WorkerReport {
        let mut histogram = new_histogram();
        for &ns in latencies_ns {
            histogram.record(ns).unwrap();
        }
        let mut errors = Errors::default();
        errors.count(ErrorKind::Timeout);
        WorkerReport {
            histogram,
            requests: latencies_ns.len() as u64,
            bytes_sent: 50,
            bytes_received: 40,
            errors,
            connected: 3,
            connects: 4,
            connect_times: new_histogram(),
            last_reply_ns,
            start_ns,
            handshakes: None,
            tls_failures: BTreeMap::new(),
            chat: None,
        }
    }

    #[test]
    fn reports_add_up() {
        let mut totals = Totals::new(false, None);
        totals.add(&worker_report(&[1_000, 2_000], 100, 900));
        totals.add(&worker_report(&[3_000], 50, 700));
        let spent = CpuSpent {
            ours: Duration::from_millis(7),
            server: None,
        };
        let report = totals.into_report(&config(&["--requests", "3"]), 2, spent);
        assert_eq!(report.requests, 3);
        assert_eq!(report.histogram.len(), 3);
        assert_eq!(
            report.histogram.max(),
            report.histogram.highest_equivalent(3_000)
        );
        assert_eq!((report.bytes_sent, report.bytes_received), (100, 80));
        assert_eq!(report.errors.get(ErrorKind::Timeout), 2);
        assert_eq!(report.errors.total(), 2);
        assert_eq!((report.connections, report.connections_wanted), (6, 50));
        assert_eq!(report.connects, 8);
        assert!(report.short.is_none(), "no --requests-per-connection");
        assert_eq!(report.threads, 2);
        assert_eq!(report.cpu, Duration::from_millis(7));
        // --requests: from the earliest start (50) to the last reply (900).
        assert_eq!(report.duration, Duration::from_nanos(850));
        assert!(report.tls.is_none());
        let mut short = Totals::new(false, None);
        short.add(&worker_report(&[1_000], 10, 20));
        let config = config(&["--requests-per-connection", "2"]);
        let report = short.into_report(&config, 1, spent);
        let expected = ShortConnections {
            requests_per_connection: 2,
            close: crate::load::Close::Rst,
        };
        assert_eq!(report.short, Some(expected));
    }

    #[test]
    fn the_window_is_the_duration_or_start_to_last_reply() {
        let mut idle = Totals::new(false, None);
        // A worker that never learned the window (start 0) does not count for its start.
        idle.add(&worker_report(&[], 0, 0));
        assert_eq!(idle.duration(&config(&["--requests", "5"])), Duration::ZERO);
        let mut timed = Totals::new(false, None);
        timed.add(&worker_report(&[1_000], 10, 20));
        let by_duration = config(&["--duration", "3s"]);
        assert_eq!(timed.duration(&by_duration), Duration::from_secs(3));
    }

    #[test]
    fn chat_tallies_add_up() {
        let mut totals = Totals::new(false, Some("cx<index>".to_string()));
        for (deliveries, missing) in [(10, 1), (5, 0)] {
            let mut report = worker_report(&[], 1, 2);
            let mut tally = Tally {
                deliveries,
                missing,
                ..Tally::default()
            };
            tally.latency.record(1_000).unwrap();
            report.chat = Some(tally);
            totals.add(&report);
        }
        let spent = CpuSpent {
            ours: Duration::ZERO,
            server: None,
        };
        let report = totals.into_report(&config(&[]), 2, spent);
        let chat = report.chat.expect("a chat run has a chat summary");
        assert_eq!(chat.names, "cx<index>");
        assert_eq!((chat.tally.deliveries, chat.tally.missing), (15, 1));
        assert_eq!(chat.tally.latency.len(), 2);
        // Without chat, worker tallies (there are none) are not asked for.
        assert!(Totals::new(false, None).chat.is_none());
    }

    #[test]
    fn tls_handshakes_and_failures_add_up_by_reason() {
        let mut totals = Totals::new(true, None);
        for (reason, count) in [("bad certificate", 2), ("timeout", 1)] {
            let mut report = worker_report(&[], 1, 2);
            let mut handshakes = new_histogram();
            handshakes.record(500_000).unwrap();
            report.handshakes = Some(handshakes);
            report.tls_failures.insert(reason.to_string(), count);
            report.tls_failures.insert("shared".to_string(), 1);
            totals.add(&report);
        }
        let tls = totals.tls.expect("a TLS run has a TLS summary");
        assert_eq!(tls.handshakes.len(), 2);
        let failures: Vec<(&str, u64)> =
            tls.failures.iter().map(|(r, &n)| (r.as_str(), n)).collect();
        assert_eq!(
            failures,
            [("bad certificate", 2), ("shared", 2), ("timeout", 1)]
        );
    }
}
