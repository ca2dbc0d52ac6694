//! The main thread's part of a run: pacing the phases while the workers load the server.
//!
//! ```text
//! until every worker is Done (or the channel disconnects: a worker died)
//!   the window start has passed, no CPU sample yet  -> sample the CPU clocks
//!   a progress line is due                          -> print it
//!   sleep until a message, the next progress line or the window start
//!   Connected or Done from the last worker not yet resolved
//!                                                   -> start = now + warmup, wake every worker
//! ```
//!
//! # Invariants
//!
//! - It never touches a socket: it sees the workers through their messages and the atomics
//!   of [`Shared`], and no more.
//! - The window start is set once, for every worker at the same instant.
//! - No timer of its own: it sleeps in `recv_timeout` until the next thing it has to do.

use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use hdrhistogram::Histogram;
use log::debug;

use super::LoadConfig;
use super::cpu::CpuSample;
use super::crew::Crew;
use super::report::{self, new_histogram};
use super::worker::{Message, Plan, Shared, UNKNOWN, WorkerReport, clock_ns};

/// How often the progress line is printed.
const PROGRESS_EVERY_NS: u64 = 1_000_000_000;

/// What pacing gathered.
pub(super) struct Paced {
    /// The reports of the workers that got to send one.
    pub reports: Vec<WorkerReport>,
    /// The CPU clocks when the window opened (`None`: it never did).
    pub cpu_at_start: Option<CpuSample>,
}

/// When the next progress line is due, and what the last one saw (for the rate).
#[derive(Debug, Clone, Copy)]
struct ProgressClock {
    due_ns: u64,
    last_ns: u64,
    last_replies: u64,
}

/// The main thread's view of the run while it goes.
pub(super) struct Pacer<'a> {
    crew: &'a Crew,
    shared: &'a Shared,
    server_pid: Option<u32>,
    warmup_ns: u64,
    epoch_ns: u64,
    /// With the progress line: when it is due.
    progress: Option<ProgressClock>,
    /// Per worker: its connects are resolved; its report; its latest histogram snapshot.
    resolved: Vec<bool>,
    reports: Vec<Option<Box<WorkerReport>>>,
    snapshots: Vec<Option<Box<Histogram<u64>>>>,
    /// The window start, once set.
    start: Option<u64>,
    done: usize,
    cpu_at_start: Option<CpuSample>,
}

impl<'a> Pacer<'a> {
    /// `plan`: what every worker was told (epoch, progress line). `cpu_at_start`: the CPU
    /// sample taken before spawning when the window opens at once (`--requests`, no warmup).
    pub fn new(
        config: &LoadConfig,
        plan: &Plan,
        crew: &'a Crew,
        shared: &'a Shared,
        cpu_at_start: Option<CpuSample>,
    ) -> Pacer<'a> {
        let (threads, epoch) = (plan.threads, plan.epoch_ns);
        let start = shared.start_ns.load(Ordering::Acquire);
        Pacer {
            crew,
            shared,
            server_pid: config.server_pid,
            warmup_ns: config.warmup().as_nanos() as u64,
            epoch_ns: epoch,
            progress: plan.progress.then_some(ProgressClock {
                due_ns: epoch + PROGRESS_EVERY_NS,
                last_ns: epoch,
                last_replies: 0,
            }),
            resolved: vec![false; threads],
            reports: (0..threads).map(|_| None).collect(),
            snapshots: (0..threads).map(|_| None).collect(),
            // Already set when every request is measured (`--requests`, no warmup).
            start: (start != UNKNOWN).then_some(start),
            done: 0,
            cpu_at_start,
        }
    }

    /// Paces the phases until every worker has reported (or one has died).
    pub fn run(mut self) -> Paced {
        while self.done < self.resolved.len() {
            let now = clock_ns();
            if self.cpu_at_start.is_none() && self.start.is_some_and(|s| now >= s) {
                self.cpu_at_start = Some(CpuSample::take(self.server_pid));
            }
            if self.progress.is_some_and(|p| now >= p.due_ns) {
                self.print_progress(now);
            }
            match self.wait(now) {
                Ok(message) => self.take(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break, // a worker died: report what we have
            }
        }
        Paced {
            reports: self.reports.into_iter().flatten().map(|r| *r).collect(),
            cpu_at_start: self.cpu_at_start,
        }
    }

    /// Sleeps until a message, the next progress line, or the window start (CPU sample).
    fn wait(&self, now: u64) -> Result<Message, RecvTimeoutError> {
        let mut wake_at = self.progress.map_or(u64::MAX, |p| p.due_ns);
        if let Some(s) = self.start.filter(|_| self.cpu_at_start.is_none()) {
            wake_at = wake_at.min(s);
        }
        let messages = self.crew.messages();
        if wake_at == u64::MAX {
            messages.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            messages.recv_timeout(Duration::from_nanos(wake_at.saturating_sub(now)))
        }
    }

    /// One worker's message: its connects are resolved, a snapshot, or its report.
    fn take(&mut self, message: Message) {
        let thread = match message {
            Message::Connected(thread) => thread,
            Message::Snapshot(thread, histogram) => {
                self.snapshots[thread] = Some(histogram);
                return;
            }
            Message::Done(thread, report) => {
                self.reports[thread] = Some(report);
                self.done += 1;
                thread
            }
        };
        self.resolved[thread] = true;
        if self.start.is_none() && self.resolved.iter().all(|&r| r) {
            self.open_window();
        }
    }

    /// Every connection is up (or failed): the warmup starts now, for everyone.
    fn open_window(&mut self) {
        let s = clock_ns() + self.warmup_ns;
        self.start = Some(s);
        self.shared.start_ns.store(s, Ordering::Release);
        self.crew.wake_all();
        debug!(
            "all connections resolved; measuring from +{} ns",
            self.warmup_ns
        );
    }

    /// One progress line on stderr (overwriting the previous one on a terminal).
    fn print_progress(&mut self, now: u64) {
        let Some(clock) = self.progress.as_mut() else {
            return;
        };
        clock.due_ns += PROGRESS_EVERY_NS;
        let (mut replies, mut open, mut errors) = (0, 0, 0);
        for progress in self.shared.progress.iter() {
            replies += progress.replies.load(Ordering::Relaxed);
            open += progress.open.load(Ordering::Relaxed);
            errors += progress.errors.load(Ordering::Relaxed);
        }
        let seconds = now.saturating_sub(clock.last_ns) as f64 / 1e9;
        let rate = if seconds > 0.0 {
            replies.saturating_sub(clock.last_replies) as f64 / seconds
        } else {
            0.0
        };
        (clock.last_ns, clock.last_replies) = (now, replies);
        let line = report::progress_line(
            Duration::from_nanos(now.saturating_sub(self.epoch_ns)),
            open,
            rate,
            self.p99_us(now),
            errors,
        );
        eprintln!("{line}");
    }

    /// The p99 of the latest snapshots, once the window is open and something is recorded.
    fn p99_us(&self, now: u64) -> Option<f64> {
        if self.start.is_none_or(|s| now < s) {
            return None;
        }
        let mut merged = new_histogram();
        for snapshot in self.snapshots.iter().flatten() {
            let _ = merged.add(snapshot.as_ref());
        }
        // Nothing recorded yet (the first snapshot predates the window): still warming up.
        (!merged.is_empty()).then(|| merged.value_at_quantile(0.99) as f64 / 1000.0)
    }
}
