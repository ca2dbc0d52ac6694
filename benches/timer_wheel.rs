//! Timer wheel costs per operation with 10 000 and 100 000 live timers. The claim to check:
//! schedule, reset, cancel and advance are O(1), so each costs the same work at both sizes.
//!
//! # The wheel under test
//!
//! The server's: 4096 slots of one 10 ms tick each, `u64` payloads (the server's is a token
//! of the same size). It is loaded as a server with that many idle connections would have it:
//! one idle timer per connection, 60 s = 6000 ticks after its last activity, with the last
//! activities spread evenly over the past minute, so deadlines cover the next 6000 ticks
//! (about 1.5 revolutions: a third of them are parked a revolution ahead). New deadlines are
//! 6000 ticks ahead ± 500 ticks of jitter.
//!
//! Two layouts of the same timers in the wheel's entry arena:
//!
//! - `scattered`: arena order unrelated to deadline order (as after hours of accepts and
//!   closes), and connections picked at random for cancel and reset. Every entry touched is a
//!   random address: the realistic, cache-unfriendly case.
//! - `in_order`: arena order is deadline order (connections that arrived one after another),
//!   picked in arena order. Entries that follow each other in a slot list or in the benchmark
//!   follow each other in memory.
//!
//! The wheel does the same operations in both; only where its memory accesses land differs.
//!
//! # What is measured
//!
//! ```text
//! group          one iteration                                  kept steady by (untimed)
//! schedule       schedule one timer (scattered)                 cancelling each batch of 1024
//! cancel         cancel one live timer                          re-scheduling each batch
//! reset          move one live timer to a new deadline          -
//! advance_empty  advance one tick onto an empty slot            passing the occupied slot
//! advance_expire advance 600 ticks one by one, firing live/10   re-arming the fired timers
//!                timers (each on its own tick), as the loop     6000 ticks later
//!                does at 100 wakeups/s
//! ```
//!
//! In `advance_empty` all live timers are parked in one slot far ahead (a connect storm, then
//! quiet), so 4095 ticks out of 4096 have nothing due and nothing in their slot; the one tick
//! that looks at them all is left out of the timing. In `advance_expire` the fired count per
//! iteration is exact (deadlines are spread evenly) and is the benchmark's element count.
//!
//! # How to read the numbers
//!
//! For schedule, cancel, reset and advance_empty the time is per operation. For
//! advance_expire read `elem/s` (expired timers per second), or divide the time by the element
//! count (live/10) for the cost per expired timer, including its share of the 600 slot visits
//! and of the parked timers passed over.
//!
//! O(1) shows as equal times at `10000` and `100000` in the `in_order` layout and for
//! schedule and advance_empty. In the `scattered` layout 100 000 timers cost more per
//! operation than 10 000 even so: 10 000 entries (40 bytes each, 400 KB) fit a 512 KiB L2
//! cache, 100 000 (4 MB) do not, and a scattered cancel, reset or expiry then waits for
//! L3 or memory on each entry and list neighbour it touches (expiry walks a linked list, so those
//! waits do not overlap). That is the price of memory, not of more work: the same operations
//! in the `in_order` layout cost the same at both sizes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use tcp_reactor::timer_wheel::{TimerId, TimerWheel};

/// The server's wheel: 4096 slots of 10 ms, 40.96 s a revolution.
const SLOTS: usize = 4096;
/// The default idle timeout, 60 s, in 10 ms ticks.
const IDLE_TICKS: u64 = 6000;
/// New deadlines are `IDLE_TICKS` ahead, give or take half of this.
const JITTER_TICKS: u64 = 1000;
/// Live timers: a busy server, and ten times that.
const LIVE: [usize; 2] = [10_000, 100_000];
/// Timed operations between two untimed restorations of the live count: small beside the
/// live count, large enough that reading the clock costs nothing per operation.
const BATCH: usize = 1024;
/// Ticks per `advance_expire` iteration: 6 s of wheel time, a tenth of the idle timeout, so
/// each iteration fires exactly a tenth of the live timers.
const WINDOW_TICKS: u64 = 600;

/// xorshift64 (Marsaglia 2003): reproducible randomness with no crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Where the timers' arena entries sit relative to their deadlines.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Arena order unrelated to deadline order, as after hours of accepts and closes; picks
    /// (for cancel and reset) in random order. Each touched entry is a random address.
    Scattered,
    /// Arena order is deadline order, as in a server whose connections arrived one after
    /// another; picks in arena order. Neighbours in a slot list are neighbours in memory.
    InOrder,
}

impl Layout {
    const ALL: [Layout; 2] = [Layout::Scattered, Layout::InOrder];

    fn name(self) -> &'static str {
        match self {
            Layout::Scattered => "scattered",
            Layout::InOrder => "in_order",
        }
    }

    /// Puts `items` in this layout's order.
    fn arrange<T>(self, items: &mut [T], rng: &mut Rng) {
        match self {
            Layout::Scattered => rng.shuffle(items),
            Layout::InOrder => {}
        }
    }
}

/// Every layout at every size, sizes inner: `scattered/10000`, `scattered/100000`, ...
fn cases() -> impl Iterator<Item = (Layout, usize)> {
    Layout::ALL
        .into_iter()
        .flat_map(|layout| LIVE.map(|live| (layout, live)))
}

/// A wheel holding `live` idle timers; the payload of each is its deadline, so a fired or
/// cancelled timer can be put back where it was.
struct Loaded {
    wheel: TimerWheel<u64>,
    /// `ids[i]` is live, due at `deadlines[i]`; when loaded, `i` is also its arena position.
    ids: Vec<TimerId>,
    deadlines: Vec<u64>,
}

fn loaded(live: usize, layout: Layout, rng: &mut Rng) -> Loaded {
    let mut wheel = TimerWheel::new(SLOTS, 0);
    // Evenly spread over ticks 1..=6000: exactly live/10 due in every 600-tick window.
    let mut deadlines: Vec<u64> = (0..live as u64)
        .map(|i| 1 + i * IDLE_TICKS / live as u64)
        .collect();
    layout.arrange(&mut deadlines, rng);
    let ids = deadlines.iter().map(|&d| wheel.schedule(d, d)).collect();
    Loaded {
        wheel,
        ids,
        deadlines,
    }
}

/// Deadlines for timers set now: the idle timeout, with jitter.
fn jittered_deadlines(now: u64, count: usize, rng: &mut Rng) -> Vec<u64> {
    (0..count)
        .map(|_| now + IDLE_TICKS - JITTER_TICKS / 2 + rng.below(JITTER_TICKS))
        .collect()
}

/// The order in which "some connection" is picked to cancel or reset its timer.
fn pick_order(live: usize, layout: Layout, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..live).collect();
    layout.arrange(&mut order, rng);
    order
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group
}

fn schedule(c: &mut Criterion) {
    let mut group = group(c, "schedule");
    for live in LIVE {
        let mut rng = Rng::new(live as u64);
        let Loaded { mut wheel, .. } = loaded(live, Layout::Scattered, &mut rng);
        let deadlines = jittered_deadlines(wheel.now(), 16 * BATCH, &mut rng);
        let mut next = deadlines.iter().copied().cycle();
        let mut batch = Vec::with_capacity(BATCH);
        group.bench_function(BenchmarkId::from_parameter(live), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH as u64);
                    let start = Instant::now();
                    for deadline in next.by_ref().take(n as usize) {
                        batch.push(wheel.schedule(deadline, deadline));
                    }
                    timed += start.elapsed();
                    for id in batch.drain(..) {
                        wheel.cancel(id);
                    }
                    left -= n;
                }
                timed
            });
        });
        assert_eq!(wheel.len(), live);
    }
    group.finish();
}

fn cancel(c: &mut Criterion) {
    let mut group = group(c, "cancel");
    for (layout, live) in cases() {
        let mut rng = Rng::new(live as u64);
        let Loaded {
            mut wheel,
            mut ids,
            deadlines,
        } = loaded(live, layout, &mut rng);
        let order = pick_order(live, layout, &mut rng);
        let mut next = order.chunks(BATCH).cycle();
        group.bench_function(BenchmarkId::new(layout.name(), live), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let picks = next.next().expect("cycle never ends");
                    let picks = &picks[..picks.len().min(left as usize)];
                    let start = Instant::now();
                    for &i in picks {
                        black_box(wheel.cancel(ids[i]));
                    }
                    timed += start.elapsed();
                    for &i in picks {
                        ids[i] = wheel.schedule(deadlines[i], deadlines[i]);
                    }
                    left -= picks.len() as u64;
                }
                timed
            });
        });
        assert_eq!(wheel.len(), live);
    }
    group.finish();
}

fn reset(c: &mut Criterion) {
    let mut group = group(c, "reset");
    for (layout, live) in cases() {
        let mut rng = Rng::new(live as u64);
        let Loaded { mut wheel, ids, .. } = loaded(live, layout, &mut rng);
        let order = pick_order(live, layout, &mut rng);
        let deadlines = jittered_deadlines(wheel.now(), 16 * BATCH, &mut rng);
        let mut next = order.iter().zip(deadlines.iter().cycle()).cycle();
        group.bench_function(BenchmarkId::new(layout.name(), live), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for (&i, &deadline) in next.by_ref().take(iters as usize) {
                    black_box(wheel.reset(ids[i], deadline));
                }
                start.elapsed()
            });
        });
        assert_eq!(wheel.len(), live);
    }
    group.finish();
}

fn advance_empty(c: &mut Criterion) {
    let mut group = group(c, "advance_empty");
    for live in LIVE {
        // All timers parked in the last slot, far beyond any tick this benchmark reaches.
        let parked_slot = SLOTS as u64 - 1;
        let far = (1 << 40) * SLOTS as u64 + parked_slot;
        let mut wheel = TimerWheel::new(SLOTS, 0);
        for _ in 0..live {
            wheel.schedule(far, far);
        }
        let mut fired = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(live), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let now = wheel.now();
                    // Empty slots between now and the parked one.
                    let empty =
                        (parked_slot + SLOTS as u64 - (now + 1) % SLOTS as u64) % SLOTS as u64;
                    if empty == 0 {
                        // The parked slot: every timer is looked at and left. Not timed.
                        wheel.advance(now + 1, &mut fired);
                        continue;
                    }
                    let n = left.min(empty);
                    let start = Instant::now();
                    for tick in now + 1..=now + n {
                        wheel.advance(tick, &mut fired);
                    }
                    timed += start.elapsed();
                    left -= n;
                }
                timed
            });
        });
        assert!(fired.is_empty() && wheel.len() == live);
    }
    group.finish();
}

fn advance_expire(c: &mut Criterion) {
    let mut group = group(c, "advance_expire");
    for (layout, live) in cases() {
        let mut rng = Rng::new(live as u64);
        let Loaded { mut wheel, .. } = loaded(live, layout, &mut rng);
        let expired_per_window = live as u64 * WINDOW_TICKS / IDLE_TICKS;
        let mut fired = Vec::new();
        group.throughput(Throughput::Elements(expired_per_window));
        group.bench_function(BenchmarkId::new(layout.name(), live), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let from = wheel.now();
                    let start = Instant::now();
                    for tick in from + 1..=from + WINDOW_TICKS {
                        wheel.advance(tick, &mut fired);
                    }
                    timed += start.elapsed();
                    assert_eq!(fired.len() as u64, expired_per_window);
                    // As the server's lazy re-arming: the connection was active, next deadline.
                    for (_, deadline) in fired.drain(..) {
                        let next = deadline + IDLE_TICKS;
                        wheel.schedule(next, next);
                    }
                }
                timed
            });
        });
        assert_eq!(wheel.len(), live);
    }
    group.finish();
}

criterion_group!(
    benches,
    schedule,
    reset,
    cancel,
    advance_empty,
    advance_expire
);
criterion_main!(benches);
