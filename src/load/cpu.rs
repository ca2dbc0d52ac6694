//! CPU time, sampled at the measured window's edges: tcp-load's own (`getrusage`, all
//! threads) and, with `--server-pid`, the server's (`/proc/PID/stat`).
//!
//! A sample is two readings and no more: the main thread takes one when the window opens and
//! one after the last worker has stopped but before any socket is closed, so connect and
//! teardown costs are not charged to the requests. A reading that fails counts as zero (ours)
//! or as absent (the server's); it never stops a run.

use std::time::Duration;

/// CPU time used so far.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuSample {
    ours: Duration,
    server: Option<Duration>,
}

/// CPU time spent between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CpuSpent {
    pub ours: Duration,
    /// `None` without `--server-pid`, or if either reading of it failed.
    pub server: Option<Duration>,
}

impl CpuSample {
    /// Reads the clocks now: ours, and the `server_pid` process's if given.
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            ours: cpu_time(),
            server: server_pid.and_then(process_cpu_time),
        }
    }

    /// What was spent from `self` until `later`.
    pub fn until(self, later: CpuSample) -> CpuSpent {
        CpuSpent {
            ours: later.ours.saturating_sub(self.ours),
            server: self
                .server
                .zip(later.server)
                .map(|(a, b)| b.saturating_sub(a)),
        }
    }
}

/// tcp-load's CPU time so far (user + system, all threads).
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a valid pointer to a local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Another process's CPU time so far (user + system, all its threads), from
/// `/proc/PID/stat` fields 14 and 15; `None` if it cannot be read.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: count fields after its `)`.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ours_ms: u64, server_ms: Option<u64>) -> CpuSample {
        CpuSample {
            ours: Duration::from_millis(ours_ms),
            server: server_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn spent_is_the_difference_and_the_server_needs_both_readings() {
        let spent = sample(10, Some(100)).until(sample(25, Some(160)));
        assert_eq!(spent.ours, Duration::from_millis(15));
        assert_eq!(spent.server, Some(Duration::from_millis(60)));
        assert_eq!(sample(10, Some(1)).until(sample(20, None)).server, None);
        assert_eq!(sample(10, None).until(sample(20, Some(1))).server, None);
        // A clock read as zero (getrusage failed) never makes a negative time.
        assert_eq!(sample(10, None).until(sample(0, None)).ours, Duration::ZERO);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_time() > Duration::ZERO);
        assert!(process_cpu_time(std::process::id()).is_some());
        assert_eq!(process_cpu_time(u32::MAX), None);
    }
}
