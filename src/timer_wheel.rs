//! A hashed timing wheel: O(1) schedule, cancel and reset, with time entering as tick numbers.
//!
//! # Why
//! Every connection carries an idle timeout that is pushed back on every request and almost
//! never fires. A binary heap would pay O(log n) on each of those resets and cannot cancel by
//! id cheaply; a wheel makes "re-arm this connection's timer" two pointer unlinks and a push.
//!
//! # The paper
//! Varghese & Lauck, "Hashed and Hierarchical Timing Wheels: Data Structures for the Efficient
//! Implementation of a Timer Facility" (SOSP 1987), scheme 6: an array of `slots` lists, and a
//! timer with deadline `d` lives in slot `d mod slots` (a mask, since `slots` is a power of two).
//! Starting and stopping a timer is O(1); moving time forward costs the slots that hold timers
//! and the timers in them. Netty's `HashedWheelTimer` is this scheme; tokio's `runtime/time` is
//! the paper's hierarchical variant.
//!
//! # Slot width, range, resolution, drift
//! - **Slot width** is one tick, and the caller decides what a tick is. The server uses 10 ms
//!   ticks and 4096 slots, so one revolution is 4096 × 10 ms = 40.96 s.
//! - **Range** is any `u64` deadline. A deadline one revolution or more ahead is *parked* in the
//!   slot of its own deadline anyway; each time `advance` passes that slot it sees the deadline is
//!   still in the future and leaves it there. So a long timer costs one extra visit per
//!   revolution, which is why the server keeps a revolution longer than its common timeouts
//!   (the 5 s shutdown grace, short idle timeouts); the default 60 s idle timeout pays one extra
//!   visit, noise beside the reads that keep resetting it.
//! - **Resolution**: a timer fires at the first `advance` whose tick is >= its deadline, so it is
//!   never early in ticks. Rounding the deadline *up* to a whole tick keeps it never early in
//!   real time too; it can then be late by up to one tick plus however late the caller is in
//!   calling `advance`.
//! - **Drift**: the wheel never counts ticks itself. The caller computes ticks from a
//!   monotonic `Instant`: the reactor takes `now_tick = nanos(now - epoch) / TICK_NANOS`
//!   (rounded down: the tick `now` falls in) and a deadline's tick as
//!   `nanos(deadline - epoch).div_ceil(TICK_NANOS)` (rounded up: never early), so a slow loop
//!   makes timers late once but never shifts later ones.
//!
//! # Invariants
//! - A live entry sits in exactly one slot list: slot `deadline mod slots` when
//!   `deadline > now`, else slot `now mod slots`. The second kind is *due* (scheduled for the past
//!   since the last `advance`); `due` counts them, so `next_deadline` and `advance` can tell them
//!   apart from an entry parked a revolution ahead in the current slot.
//! - Bit `s` of `occupied` is set exactly when slot `s`'s list is non-empty.
//! - After `advance(t)`, no live entry has a deadline <= `t`.
//!
//! # What it refuses to do
//! It owns no clock, never sleeps, runs no callbacks (fired values are handed back), never moves
//! time backwards, promises no order among timers of one slot, has no hierarchical levels, and
//! holds fewer than `u32::MAX` timers. A generation is 32 bits, so an id would only be mistaken
//! for a newer timer after its entry was reused 2^32 times.

/// "No entry" in the slot lists and the free list; the arena therefore holds at most
/// `u32::MAX - 1` entries.
const NIL: u32 = u32::MAX;
/// Slots per occupancy word.
const WORD_BITS: usize = u64::BITS as usize;

/// Names one scheduled timer. Once it fires or is cancelled the id goes stale for good, even
/// after its arena entry is reused, because the entry's generation moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    key: u32,
    generation: u32,
}

struct Entry<T> {
    /// Bumped each time the entry is freed, so ids handed out earlier stop matching.
    generation: u32,
    deadline: u64,
    /// Slot-list neighbours while live; `next` is the free-list link while free.
    prev: u32,
    next: u32,
    /// `Some` exactly while the timer is live.
    value: Option<T>,
}

/// A hashed timing wheel of `T` payloads; see the module docs.
pub struct TimerWheel<T> {
    /// Arena of entries, reused through `free_head`, so steady state never allocates.
    entries: Vec<Entry<T>>,
    free_head: u32,
    /// Head entry of each slot's doubly linked list.
    heads: Vec<u32>,
    /// One bit per slot, set while the slot's list is non-empty.
    occupied: Vec<u64>,
    /// `slots - 1`: `tick & mask` is `tick mod slots`.
    mask: usize,
    now: u64,
    len: usize,
    /// Live entries with `deadline <= now`, all in the current slot.
    due: usize,
}

impl<T> TimerWheel<T> {
    /// `slots` must be a power of two (asserted: it is a programmer's choice, not a peer's).
    pub fn new(slots: usize, now_tick: u64) -> Self {
        assert!(slots.is_power_of_two(), "{slots} slots: not a power of two");
        Self {
            entries: Vec::new(),
            free_head: NIL,
            heads: vec![NIL; slots],
            occupied: vec![0; slots.div_ceil(WORD_BITS)],
            mask: slots - 1,
            now: now_tick,
            len: 0,
            due: 0,
        }
    }

    /// O(1). A deadline at or before the wheel's current tick fires on the next advance.
    pub fn schedule(&mut self, deadline_tick: u64, value: T) -> TimerId {
        let key = match self.free_head {
            NIL => {
                let key = u32::try_from(self.entries.len())
                    .ok()
                    .filter(|&key| key != NIL)
                    .expect("a timer wheel holds fewer than u32::MAX timers");
                self.entries.push(Entry {
                    generation: 0,
                    deadline: deadline_tick,
                    prev: NIL,
                    next: NIL,
                    value: None,
                });
                key
            }
            key => {
                self.free_head = self.entries[key as usize].next;
                key
            }
        };
        let entry = &mut self.entries[key as usize];
        entry.deadline = deadline_tick;
        entry.value = Some(value);
        let generation = entry.generation;
        self.link(key);
        self.len += 1;
        TimerId { key, generation }
    }

    /// O(1). Stale ids (already fired or cancelled, even if the entry was reused) return None
    /// and change nothing.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let key = self.live_key(id)?;
        self.unlink(key);
        self.release(key)
    }

    /// O(1): move a live timer to a new deadline; returns false for a stale id.
    pub fn reset(&mut self, id: TimerId, deadline_tick: u64) -> bool {
        let Some(key) = self.live_key(id) else {
            return false;
        };
        self.unlink(key);
        self.entries[key as usize].deadline = deadline_tick;
        self.link(key);
        true
    }

    /// Move time to `now_tick` (an earlier tick is a no-op), pushing every timer whose deadline
    /// is <= `now_tick` into `fired`, in slot order from the current tick. Costs the occupied
    /// slots on the way and their entries; however far the jump, each slot is visited at most
    /// once.
    pub fn advance(&mut self, now_tick: u64, fired: &mut Vec<(TimerId, T)>) {
        if now_tick < self.now {
            return;
        }
        // Without due entries the current slot holds only parked ones: start one tick later,
        // so calling `advance` again at the same tick costs nothing.
        let start = self.now.saturating_add(u64::from(self.due == 0));
        if now_tick >= start {
            // Ticks to cover, capped at one revolution: after that the slots repeat.
            let count = (now_tick - start).min(self.mask as u64) as usize + 1;
            let first = start as usize & self.mask;
            let mut dist = 0;
            while let Some(d) = self.find_occupied((first + dist) & self.mask, count - dist) {
                self.expire_slot((first + dist + d) & self.mask, now_tick, fired);
                dist += d + 1;
            }
        }
        debug_assert_eq!(self.due, 0, "advance left a due timer behind");
        self.now = now_tick;
    }

    /// The tick at which `advance` should next be called: a lower bound on the earliest
    /// deadline (the tick of the next occupied slot), or None when empty. O(slots / 64).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if self.due > 0 {
            return Some(self.now);
        }
        // Search from now + 1: the current slot can hold only parked entries, whose deadlines
        // are >= now + slots, which is where the search reaches it last. Thus a parked entry
        // costs one wasted wake-up per revolution, never a busy loop.
        let first = self.now.wrapping_add(1) as usize & self.mask;
        let d = self.find_occupied(first, self.mask + 1)?;
        Some(self.now.saturating_add(1 + d as u64))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    fn live_key(&self, id: TimerId) -> Option<u32> {
        let entry = self.entries.get(id.key as usize)?;
        (entry.generation == id.generation && entry.value.is_some()).then_some(id.key)
    }

    /// The slot a live entry with this deadline sits in (see the invariants).
    fn slot_of(&self, deadline: u64) -> usize {
        deadline.max(self.now) as usize & self.mask
    }

    /// Push the entry at the head of the slot its deadline selects.
    fn link(&mut self, key: u32) {
        let deadline = self.entries[key as usize].deadline;
        if deadline <= self.now {
            self.due += 1;
        }
        let slot = self.slot_of(deadline);
        let head = self.heads[slot];
        let entry = &mut self.entries[key as usize];
        entry.prev = NIL;
        entry.next = head;
        if head == NIL {
            self.occupied[slot / WORD_BITS] |= 1 << (slot % WORD_BITS);
        } else {
            self.entries[head as usize].prev = key;
        }
        self.heads[slot] = key;
    }

    fn unlink(&mut self, key: u32) {
        let entry = &self.entries[key as usize];
        let (deadline, prev, next) = (entry.deadline, entry.prev, entry.next);
        if deadline <= self.now {
            self.due -= 1;
        }
        let slot = self.slot_of(deadline);
        if prev == NIL {
            self.heads[slot] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[slot] == NIL {
            self.occupied[slot / WORD_BITS] &= !(1 << (slot % WORD_BITS));
        }
    }

    /// Free an unlinked entry: take its value, stale its ids, push it on the free list.
    fn release(&mut self, key: u32) -> Option<T> {
        let entry = &mut self.entries[key as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.next = self.free_head;
        self.free_head = key;
        self.len -= 1;
        entry.value.take()
    }

    /// Fire the entries of `slot` that are due by `now_tick`; parked ones stay.
    fn expire_slot(&mut self, slot: usize, now_tick: u64, fired: &mut Vec<(TimerId, T)>) {
        let mut key = self.heads[slot];
        while key != NIL {
            let entry = &self.entries[key as usize];
            let (next, generation) = (entry.next, entry.generation);
            if entry.deadline <= now_tick {
                self.unlink(key);
                if let Some(value) = self.release(key) {
                    fired.push((TimerId { key, generation }, value));
                }
            }
            key = next;
        }
    }

    /// Distance from slot `from` (wrapping) to the first occupied slot, looking at `count` slots
    /// at most. Scans a word of 64 slots at a time.
    fn find_occupied(&self, from: usize, count: usize) -> Option<usize> {
        let mut dist = 0;
        while dist < count {
            let slot = (from + dist) & self.mask;
            let bits = self.occupied[slot / WORD_BITS] >> (slot % WORD_BITS);
            if bits != 0 {
                let found = dist + bits.trailing_zeros() as usize;
                return (found < count).then_some(found);
            }
            // To the end of this word, or of the wheel when it is narrower than a word.
            dist += (WORD_BITS - slot % WORD_BITS).min(self.mask + 1 - slot);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Advance and return the fired values, sorted (order within a slot is unspecified).
    fn fire(wheel: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut fired);
        let mut values: Vec<u32> = fired.into_iter().map(|(_, v)| v).collect();
        values.sort_unstable();
        values
    }

    #[test]
    fn fires_exactly_at_deadline_and_past_deadlines_on_next_advance() {
        let mut wheel = TimerWheel::new(16, 100);
        wheel.schedule(105, 1);
        wheel.schedule(90, 2);
        assert_eq!(
            wheel.next_deadline(),
            Some(100),
            "a past deadline is due now"
        );
        assert!(fire(&mut wheel, 50).is_empty(), "backwards is a no-op");
        assert_eq!(
            fire(&mut wheel, 100),
            vec![2],
            "same tick still fires due timers"
        );
        assert!(fire(&mut wheel, 104).is_empty(), "one tick before");
        assert_eq!((fire(&mut wheel, 105), wheel.now()), (vec![1], 105));
    }

    #[test]
    fn cancel_and_stale_ids_even_after_entry_reuse() {
        let mut wheel = TimerWheel::new(8, 0);
        let (a, b) = (wheel.schedule(3, 1), wheel.schedule(3, 2));
        assert_eq!((wheel.cancel(a), wheel.cancel(a)), (Some(1), None));
        assert_eq!(fire(&mut wheel, 3), vec![2]);
        assert_eq!(wheel.cancel(b), None, "a fired id is stale");
        let c = wheel.schedule(4, 3);
        assert_eq!(c.key, b.key, "the freed entry is reused");
        assert!(wheel.cancel(b).is_none() && !wheel.reset(b, 100));
        assert_eq!(fire(&mut wheel, 4), vec![3]);
    }

    #[test]
    fn reset_earlier_and_later() {
        let mut wheel = TimerWheel::new(8, 0);
        let (early, late) = (wheel.schedule(6, 1), wheel.schedule(2, 2));
        assert!(wheel.reset(early, 1) && wheel.reset(late, 20));
        assert_eq!(fire(&mut wheel, 1), vec![1]);
        assert!(fire(&mut wheel, 19).is_empty());
        assert_eq!(fire(&mut wheel, 20), vec![2]);
    }

    #[test]
    fn many_timers_in_one_slot_across_revolutions() {
        let mut wheel = TimerWheel::new(8, 0);
        let ids: Vec<_> = (0..300)
            .map(|v| wheel.schedule(5 + 8 * u64::from(v % 3), v))
            .collect();
        for id in ids.iter().step_by(10) {
            assert!(wheel.cancel(*id).is_some());
        }
        for (round, now) in [5, 13, 21].into_iter().enumerate() {
            let want: Vec<u32> = (0..300)
                .filter(|v| v % 10 != 0 && v % 3 == round as u32)
                .collect();
            assert_eq!(fire(&mut wheel, now), want);
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn beyond_one_revolution_fires_at_its_tick_not_earlier() {
        let mut wheel = TimerWheel::new(8, 7);
        wheel.schedule(107, 1);
        for tick in 8..107 {
            assert!(fire(&mut wheel, tick).is_empty(), "early at {tick}");
            let next = wheel.next_deadline().unwrap();
            assert!(next > tick && next <= 107, "next_deadline {next} at {tick}");
        }
        assert_eq!(fire(&mut wheel, 107), vec![1]);
    }

    #[test]
    fn big_jumps_fire_everything_without_walking_each_tick() {
        // A tick-by-tick walk would take ~10^15 steps here and never finish.
        let mut wheel = TimerWheel::new(4096, 0);
        for v in 0..10_000 {
            wheel.schedule(u64::from(v) * 99_991, v);
        }
        let all: Vec<u32> = (0..10_000).collect();
        assert_eq!(fire(&mut wheel, 1_000_000_000), all);
        for round in 1..=1000 {
            wheel.schedule(round * 1_000_000_000_000, 0);
            assert_eq!(fire(&mut wheel, round * 1_000_000_000_000), vec![0]);
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn next_deadline_and_len() {
        let mut wheel = TimerWheel::new(64, 0);
        assert_eq!((wheel.next_deadline(), wheel.len()), (None, 0));
        let a = wheel.schedule(40, 1);
        wheel.schedule(10, 2);
        wheel.schedule(1000, 3);
        assert_eq!((wheel.next_deadline(), wheel.len()), (Some(10), 3));
        wheel.cancel(a);
        assert_eq!((fire(&mut wheel, 10), wheel.len()), (vec![2], 1));
        // 1000 is parked in slot 1000 mod 64 = 40: a lower bound that wakes the caller for
        // nothing, then moves on by a revolution instead of repeating.
        assert_eq!(wheel.next_deadline(), Some(40));
        assert!(fire(&mut wheel, 40).is_empty());
        assert_eq!(wheel.next_deadline(), Some(104));
        assert_eq!(fire(&mut wheel, 2000), vec![3]);
        assert_eq!((wheel.next_deadline(), wheel.is_empty()), (None, true));
    }

    #[test]
    fn matches_a_btreemap_model() {
        for (seed, slots) in [(1, 1), (2, 2), (3, 8), (4, 8), (5, 16), (6, 64), (7, 128)] {
            // xorshift64 (Marsaglia 2003): enough randomness for a model test, no crate.
            let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
            let mut below = |n: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % n
            };
            let mut wheel = TimerWheel::new(slots, 1000);
            // Live timers as value -> (id, deadline); values are unique.
            let mut model: BTreeMap<u32, (TimerId, u64)> = BTreeMap::new();
            let mut issued = vec![(u32::MAX, wheel.schedule(0, u32::MAX))];
            wheel.advance(1000, &mut Vec::new()); // so issued[0] is stale from the start
            let span = 3 * slots as u64 + 4;
            for value in 0..4000 {
                let now = wheel.now();
                let deadline = (now + below(span)).saturating_sub(3);
                // A recent id: live or stale (cancelled, fired, or its entry reused).
                let (v, id) =
                    issued[issued.len() - 1 - below(issued.len().min(16) as u64) as usize];
                match below(10) {
                    0..=4 => {
                        let id = wheel.schedule(deadline, value);
                        model.insert(value, (id, deadline));
                        issued.push((value, id));
                    }
                    5 | 6 => assert_eq!(wheel.cancel(id), model.remove(&v).map(|_| v)),
                    7 | 8 => {
                        let live = model.get_mut(&v).map(|entry| entry.1 = deadline);
                        assert_eq!(wheel.reset(id, deadline), live.is_some());
                    }
                    _ => {
                        let to = match below(32) {
                            0 => now + below(1 << 40),
                            1..=3 => now.saturating_sub(below(5)),
                            4..=6 => now + below(span),
                            _ => now + below(slots as u64 / 16 + 2),
                        };
                        let mut fired = Vec::new();
                        wheel.advance(to, &mut fired);
                        // Within one revolution, slot order is deadline order (due ones first).
                        let ticks: Vec<u64> =
                            fired.iter().map(|(_, v)| model[v].1.max(now)).collect();
                        assert!(to.saturating_sub(now) >= slots as u64 || ticks.is_sorted());
                        let mut got: Vec<_> = fired.into_iter().map(|(id, v)| (v, id)).collect();
                        got.sort_unstable_by_key(|&(v, _)| v);
                        let want: Vec<_> = model
                            .iter()
                            .filter(|(_, (_, d))| to >= now && *d <= to)
                            .map(|(&v, &(id, _))| (v, id))
                            .collect();
                        assert_eq!(got, want, "seed {seed} advance {now} -> {to}");
                        model.retain(|_, (_, d)| to < now || *d > to);
                    }
                }
                assert_eq!(wheel.len(), model.len());
                let earliest = model.values().map(|&(_, d)| d).min();
                match (wheel.next_deadline(), earliest) {
                    (None, None) => {}
                    (Some(next), Some(earliest)) => {
                        assert!(next <= earliest.max(wheel.now()), "not a lower bound");
                        assert!(next > wheel.now() || earliest <= wheel.now(), "busy loop");
                    }
                    other => panic!("next_deadline disagrees with the model: {other:?}"),
                }
            }
        }
    }
}
