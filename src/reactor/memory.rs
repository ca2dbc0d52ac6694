//! The client-memory budget: one ledger of every byte the loop holds on its clients' behalf,
//! and what the loop does as it runs short.
//!
//! **What is counted.** Each connection's [`Connection::footprint`]: the allocated size of its
//! input and output buffers (capacity, not length: RSS sees what was allocated), plus a fixed
//! charge per TLS session. The ledger (`client_memory` in STATS) is the sum of what each
//! connection was last charged. A connection is recharged when the loop settles it after any
//! work (one compare when nothing changed, which is nearly always), and when it closes (its
//! memory is freed at once). Between two looks a connection can grow by at most one wakeup's
//! reads (`READ_BUDGET`) and its replies up to the high-water mark, so the ledger lags the
//! truth by that much at most, for one connection at a time. A held request's buffer grows
//! by doubling, but never past what is left of the budget ([`Budget::room`]), so that growth
//! cannot leap over the pressure mark and the budget both at once.
//!
//! **What is done as it runs short**, in this order:
//! 1. *Backpressure on input.* Over the pressure mark (three quarters of the budget), a
//!    connection whose incomplete request holds at least [`THROTTLE_FLOOR`] and would need
//!    more than the budget has left to complete is not read any more (`Throttled`). Its bytes
//!    wait in the kernel, not in our heap; its idle and request timeouts keep running. At the
//!    end of every turn, throttled connections resume: all of them once the ledger is back
//!    under the pressure mark, otherwise those whose requests now fit in what is left,
//!    smallest need first. A request that can finish within the budget is let finish.
//! 2. *Eviction.* If the ledger still passes the budget (newcomers, replies, chat pushes),
//!    the connections holding the most are closed, largest first, until it is back under:
//!    each is told `ERR server out of memory` (an Error frame on the frame port) and then
//!    closed as after any notice. One that is not reading its replies could never read the
//!    notice either: it is closed at once, like a slow reader at the push cap.
//!
//! Small requests (a PING, a short line, a Heartbeat) never hold [`THROTTLE_FLOOR`] and are
//! never the largest, so the clients sending them are served throughout.
//!
//! What it refuses to do: it does not look inside the allocator. Memory the allocator keeps
//! after a buffer is freed, the loop's own scratch buffers and the kernel's socket buffers are
//! outside the ledger; docs/ARCHITECTURE.md ("Where the memory goes") gives their sizes.

use log::{debug, info};
use mio::Token;

use super::Server;
use super::connection::{CloseReason, State};
use crate::buffer::LOW_WATER;
use crate::handler::Notice;

/// Incomplete requests holding less than this are never throttled: throttling them would
/// save nothing, and they are what well-behaved clients send.
pub const THROTTLE_FLOOR: usize = 16 * 1024;

/// How far the ledger must fall below its high point before the allocator is asked to give
/// the freed memory back to the kernel. glibc keeps freed chunks for reuse, and after large
/// frees raises its own thresholds, so without asking RSS stays near its peak long after the
/// clients have gone; asking costs a walk of the heap, so it is done only after a real drop:
/// `TRIM_STEP`, or half of what was held if that is at least `TRIM_MIN` (so that the last
/// few MiB are given back too when everything has gone).
const TRIM_STEP: u64 = 8 << 20;
const TRIM_MIN: u64 = 1 << 20;

/// The configured budget and the mark where backpressure begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
    pressure: u64,
}

impl Budget {
    /// `None` for no limit.
    pub fn new(limit: Option<usize>) -> Option<Budget> {
        let limit = limit? as u64;
        Some(Budget {
            limit,
            pressure: limit - limit / 4,
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether a connection whose incomplete request holds `input` bytes and may need `need`
    /// more should stop being read, with `held` bytes held in all.
    pub fn should_throttle(&self, held: u64, input: usize, need: usize) -> bool {
        held > self.pressure
            && input >= THROTTLE_FLOOR
            && held.saturating_add(need as u64) > self.limit
    }

    /// What is left of the budget with `held` bytes held: how far a held request's buffer
    /// may grow past what it must take in. Doubling alone could take a buffer from under the
    /// pressure mark to over the limit in one step, and its sender would be evicted where it
    /// should have been throttled.
    pub fn room(&self, held: u64) -> usize {
        usize::try_from(self.limit.saturating_sub(held)).unwrap_or(usize::MAX)
    }

    pub fn is_exceeded(&self, held: u64) -> bool {
        held > self.limit
    }

    /// Of the throttled connections, `(need, token)`, how many may resume with `held` bytes
    /// held: all under the pressure mark; otherwise those whose needs fit together in what
    /// is left, smallest first. Sorts `waiting` so that they are at its front.
    pub fn resumable(&self, held: u64, waiting: &mut [(usize, Token)]) -> usize {
        if held <= self.pressure {
            return waiting.len();
        }
        waiting.sort_unstable_by_key(|&(need, _)| need);
        let mut room = self.limit.saturating_sub(held);
        waiting
            .iter()
            .take_while(|&&(need, _)| {
                let fits = need as u64 <= room;
                room = room.saturating_sub(need as u64);
                fits
            })
            .count()
    }
}

impl Server {
    /// The budget, logged once at start (by worker 0 for all, with several).
    pub(super) fn log_budget(&self) {
        if self.mailbox.index() != 0 {
            return;
        }
        let workers = self.mailbox.fleet().workers();
        match self.budget {
            Some(budget) if workers > 1 => info!(
                "client memory budget: {} MiB per worker, {workers} workers (--client-memory)",
                budget.limit() >> 20
            ),
            Some(budget) => info!(
                "client memory budget: {} MiB (--client-memory)",
                budget.limit() >> 20
            ),
            None => info!("client memory: no limit (--client-memory 0)"),
        }
    }

    /// Brings the ledger up to date with a connection after work on it, and acts if it grew
    /// past the budget's marks. Inlined: what runs per request batch is one compare.
    #[inline]
    pub(super) fn account(&mut self, key: usize) {
        let conn = &self.connections[key];
        let footprint = conn.footprint();
        if footprint != conn.charged() {
            self.recharge(key, footprint);
        }
    }

    #[cold]
    fn recharge(&mut self, key: usize, footprint: usize) {
        if !self.recount(key, footprint) {
            return;
        }
        let Some(budget) = self.budget else {
            return;
        };
        let held = self.stats.client_memory;
        let conn = &mut self.connections[key];
        if conn.state() == State::Open
            && budget.should_throttle(held, conn.input_capacity(), conn.request_need(self.limits))
        {
            debug!(
                "conn={} throttled: {} bytes of request held, client memory at {held}",
                super::token::show(conn.token()),
                conn.input_capacity()
            );
            conn.set_state(State::Throttled);
            self.throttled.push((0, conn.token()));
            self.stats.memory_throttles += 1;
        }
        if budget.is_exceeded(self.stats.client_memory) {
            self.evict_largest(budget);
        }
    }

    /// Moves the ledger by what the connection's footprint became; `true` if it grew. No
    /// policy: safe from anywhere, eviction included.
    pub(super) fn recount(&mut self, key: usize, footprint: usize) -> bool {
        let conn = &mut self.connections[key];
        let was = conn.charged();
        conn.set_charged(footprint);
        let stats = &mut self.stats;
        stats.client_memory = (stats.client_memory + footprint as u64).saturating_sub(was as u64);
        stats.client_memory_peak = stats.client_memory_peak.max(stats.client_memory);
        footprint > was
    }

    /// Closes the connections holding the most, largest first, until the ledger is back
    /// under the budget.
    #[cold]
    fn evict_largest(&mut self, budget: Budget) {
        let mut order = std::mem::take(&mut self.by_size);
        order.extend(
            self.connections
                .iter()
                .filter(|(_, conn)| !conn.is_closed() && conn.charged() > 0)
                .map(|(key, conn)| (conn.charged(), key)),
        );
        order.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, key) in &order {
            if !budget.is_exceeded(self.stats.client_memory) {
                break;
            }
            self.evict(key);
        }
        order.clear();
        self.by_size = order;
    }

    /// Closes one connection for memory: told so when it can still read the notice.
    fn evict(&mut self, key: usize) {
        self.stats.memory_evictions += 1;
        let conn = &mut self.connections[key];
        debug!(
            "conn={} evicted: holds {} bytes, client memory at {}",
            super::token::show(conn.token()),
            conn.charged(),
            self.stats.client_memory
        );
        if conn.is_closing()
            || conn.is_handshaking()
            || conn.state() == State::AwaitingProxy
            || conn.pending_output() > LOW_WATER
        {
            // Not reading what it is owed (or unable to be told anything): a notice would
            // only wait behind the rest.
            return self.close(key, "out of memory");
        }
        conn.notify(Notice::OutOfMemory);
        self.drain(key, CloseReason::OutOfMemory);
        let footprint = self.connections[key].footprint();
        self.recount(key, footprint);
        self.flush(key);
        let footprint = self.connections[key].footprint();
        self.recount(key, footprint);
        self.arm_timer(key);
    }

    /// At the end of a turn: once client memory has fallen far enough from its high point
    /// (`TRIM_STEP`), has the allocator give the freed pages back to the kernel.
    #[inline]
    pub(super) fn trim_allocator(&mut self) {
        let held = self.stats.client_memory;
        if held > self.trim_high {
            self.trim_high = held;
        } else if self.trim_high - held >= TRIM_STEP
            || (self.trim_high - held >= TRIM_MIN && held <= self.trim_high / 2)
        {
            debug!(
                "client memory down from {} to {held} bytes: freed memory back to the kernel",
                self.trim_high
            );
            self.trim_high = held;
            trim();
        }
    }

    /// At the end of a turn: lets throttled connections read again, as far as memory allows.
    pub(super) fn resume_throttled(&mut self) {
        if self.throttled.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.throttled);
        // Only those still throttled (not closed, not taken over by a shutdown) wait.
        waiting.retain_mut(|(need, token)| {
            let Some(key) = self.key_of(*token) else {
                return false;
            };
            let conn = &self.connections[key];
            *need = conn.request_need(self.limits);
            conn.state() == State::Throttled
        });
        let resume = match self.budget {
            Some(budget) => budget.resumable(self.stats.client_memory, &mut waiting),
            None => waiting.len(),
        };
        for (_, token) in waiting.drain(..resume) {
            if let Some(key) = self.key_of(token) {
                self.connections[key].set_state(State::Open);
                // Bytes that arrived meanwhile raise no new edge: come back for them.
                self.revisit_next_turn(key);
            }
        }
        self.throttled = waiting;
    }
}

/// Returns the free pages of the heap to the kernel.
#[cold]
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn budget(mib: usize) -> Budget {
        Budget::new(Some(mib * MIB)).unwrap()
    }

    #[test]
    fn zero_is_no_budget() {
        assert_eq!(Budget::new(None), None);
    }

    #[test]
    fn throttles_only_large_requests_that_would_not_fit() {
        let b = budget(32);
        let big = 4 * MIB;
        // Under the pressure mark (24 MiB) nothing is throttled, whatever it needs.
        assert!(!b.should_throttle(24 * MIB as u64, big, 100 * MIB));
        // Over it: a request that fits in what is left goes on.
        assert!(!b.should_throttle(25 * MIB as u64, big, 7 * MIB));
        assert!(b.should_throttle(25 * MIB as u64, big, 7 * MIB + 1));
        // A small request is never throttled.
        assert!(!b.should_throttle(31 * MIB as u64, THROTTLE_FLOOR - 1, 100 * MIB));
        assert!(b.should_throttle(31 * MIB as u64, THROTTLE_FLOOR, 2 * MIB));
    }

    #[test]
    fn resumes_all_under_the_mark_else_the_smallest_needs_that_fit_together() {
        let b = budget(32);
        let mut waiting = vec![(3 * MIB, Token(1)), (MIB, Token(2)), (2 * MIB, Token(3))];
        assert_eq!(b.resumable(24 * MIB as u64, &mut waiting), 3);
        // 4 MiB left: 1 MiB, then 2 MiB fit; 3 MiB more does not.
        assert_eq!(b.resumable(28 * MIB as u64, &mut waiting), 2);
        assert_eq!(waiting[0].1, Token(2));
        assert_eq!(waiting[1].1, Token(3));
        assert_eq!(b.resumable(32 * MIB as u64, &mut waiting), 0);
    }

    #[test]
    fn exceeded_only_past_the_limit() {
        let b = budget(1);
        assert!(!b.is_exceeded(MIB as u64));
        assert!(b.is_exceeded(MIB as u64 + 1));
    }
}
