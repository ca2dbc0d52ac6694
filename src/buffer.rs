//! Byte buffers for one connection's unprocessed input and unwritten output.
//!
//! A `Buffer` is a window `start..end` into a zero-initialised `Vec<u8>`. Reads land in the
//! spare room after `end` (`spare_mut` + `commit`), the codec consumes from the front
//! (`consume`), replies are appended at the back (`extend_from_slice`). Consuming only moves
//! `start`; the bytes are moved to the front (compaction) only when the back runs out of room,
//! so a pipelined batch costs one `memmove` at most, not one per request.
//!
//! Invariants: `start <= end <= storage.len()`; when the window empties both indices return to
//! 0, so a buffer that is drained between batches never compacts at all. The storage is
//! allocated lazily (a new buffer owns no heap memory) and is only ever grown by doubling, so a
//! connection in steady state allocates nothing; input whose final size is known doubles only
//! up to that size (`extend_capped`), so a large frame costs what it declares. `release` gives the memory back once the
//! buffer is empty; the reactor calls it when a connection goes quiet, which is what keeps an
//! idle connection at a few hundred bytes.
//!
//! What it refuses to do: it does not bound itself. Limits belong to the caller, which knows
//! why bytes are there (a line limit, a frame limit, the high-water mark below).

use std::io;

/// Pending output above which the reactor stops reading (and executing) a connection's
/// requests: the client is not reading its replies, so more requests would only grow memory.
/// 256 KiB is a few socket buffers' worth: enough to keep a fast pipelining client busy.
pub const HIGH_WATER: usize = 256 * 1024;

/// Pending output below which a paused connection is read again. Well under `HIGH_WATER` so a
/// connection does not flap between paused and open on every write.
pub const LOW_WATER: usize = 64 * 1024;

/// Pending output above which a pushed chat message drops the receiving session instead of
/// being queued: a reader that is this far behind is not going to catch up, and every session
/// it is not reading for would otherwise grow the server's memory.
pub const PUSH_CAP: usize = 1024 * 1024;

/// The smallest allocation a buffer makes: most requests and replies here are tens of bytes.
const MIN_CAPACITY: usize = 512;

#[derive(Debug, Default)]
pub struct Buffer {
    storage: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// An empty buffer; allocates nothing until the first byte arrives.
    pub const fn new() -> Self {
        Buffer {
            storage: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// The buffered bytes, oldest first.
    pub fn data(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes of heap memory held, used or not.
    pub fn capacity(&self) -> usize {
        self.storage.capacity()
    }

    /// Drops the first `n` buffered bytes (they were written, or decoded).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(
            n <= self.len(),
            "consume({n}) past the end of {} bytes",
            self.len()
        );
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends `bytes` after the buffered ones. Always inlined: it runs once or twice per
    /// reply, and a constant reply (`PONG\n`) then becomes a few moves instead of a `memcpy`
    /// call. A plain `#[inline]` is only a hint, and callgrind showed the compiler dropping it
    /// as the handler grew (+14 instructions per echo).
    #[inline(always)]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.end + bytes.len();
        if end > self.storage.len() {
            self.reserve(bytes.len());
        }
        let end = self.end + bytes.len();
        self.storage[self.end..end].copy_from_slice(bytes);
        self.end = end;
    }

    /// Appends `bytes` like [`Buffer::extend_from_slice`], but when the storage must grow it
    /// doubles only up to `cap` bytes (more only if the bytes themselves need it). For input
    /// whose final size is known, a frame whose header declared its body: the buffer grows
    /// with what arrives and never past what was declared, instead of doubling past it (a
    /// 10 MiB frame would otherwise cost 16 MiB).
    pub fn extend_capped(&mut self, bytes: &[u8], cap: usize) {
        if self.storage.len() - self.end < bytes.len() {
            self.grow(bytes.len(), cap);
        }
        self.extend_from_slice(bytes);
    }

    /// At least `min` bytes of writable room after the buffered bytes, for a `read` to fill;
    /// follow with `commit(n)` for the `n` bytes it wrote.
    pub fn spare_mut(&mut self, min: usize) -> &mut [u8] {
        self.reserve(min);
        &mut self.storage[self.end..]
    }

    /// Marks `n` bytes of the room handed out by `spare_mut` as buffered.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.storage.len());
        self.end = (self.end + n).min(self.storage.len());
    }

    /// Empties the buffer, keeping its memory.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Frees the memory of an empty buffer; a non-empty one is left alone.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.storage = Vec::new();
            self.clear();
        }
    }

    /// Frees the memory of an empty buffer that holds more than `keep` bytes: after a large
    /// frame or a burst, a connection should not go on owning megabytes it no longer needs.
    #[inline]
    pub fn release_if_larger_than(&mut self, keep: usize) {
        if self.capacity() > keep {
            self.release();
        }
    }

    /// Makes room for `additional` bytes at the back: first by moving the buffered bytes to
    /// the front, then by doubling the storage.
    #[cold]
    fn reserve(&mut self, additional: usize) {
        self.grow(additional, usize::MAX);
    }

    /// `reserve`, with doubling stopped at `cap` bytes of storage.
    #[cold]
    fn grow(&mut self, additional: usize, cap: usize) {
        if self.storage.len() - self.end >= additional {
            return;
        }
        if self.start > 0 {
            self.storage.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.storage.len() - self.end >= additional {
                return;
            }
        }
        let needed = self.end + additional;
        let doubled = (self.storage.len() * 2).max(MIN_CAPACITY).min(cap);
        let new_len = needed.max(doubled);
        // Exactly `new_len`: Vec's own growth could round it up again.
        self.storage.reserve_exact(new_len - self.storage.len());
        // Zero-filling once per growth lets reads go straight into the Vec with no `unsafe`.
        self.storage.resize(new_len, 0);
    }
}

/// Lets replies be formatted straight into the buffer (`write!(out, ...)`), no temporary.
impl io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_new_buffer_owns_no_memory() {
        let buffer = Buffer::new();
        assert_eq!(buffer.capacity(), 0);
        assert!(buffer.is_empty());
    }

    #[test]
    fn append_consume_and_reset_to_the_front() {
        let mut buffer = Buffer::new();
        buffer.extend_from_slice(b"PING\nPING\n");
        assert_eq!(buffer.data(), b"PING\nPING\n");
        buffer.consume(5);
        assert_eq!(buffer.data(), b"PING\n");
        buffer.consume(5);
        assert!(buffer.is_empty());
        assert_eq!((buffer.start, buffer.end), (0, 0));
    }

    #[test]
    fn reads_land_in_spare_room() {
        let mut buffer = Buffer::new();
        let room = buffer.spare_mut(4);
        assert!(room.len() >= 4);
        room[..3].copy_from_slice(b"abc");
        buffer.commit(3);
        assert_eq!(buffer.data(), b"abc");
    }

    #[test]
    fn compaction_moves_the_tail_before_growing() {
        let mut buffer = Buffer::new();
        buffer.extend_from_slice(&[7u8; MIN_CAPACITY]);
        let capacity = buffer.capacity();
        buffer.consume(MIN_CAPACITY - 2);
        // Room at the back is gone, but the consumed front can take 100 more bytes.
        buffer.extend_from_slice(&[9u8; 100]);
        assert_eq!(buffer.capacity(), capacity, "compacted instead of growing");
        assert_eq!(&buffer.data()[..2], &[7, 7]);
        assert_eq!(buffer.len(), 102);
    }

    #[test]
    fn growth_keeps_every_byte_in_order() {
        let mut buffer = Buffer::new();
        let mut expected = Vec::new();
        for i in 0..10_000u32 {
            let bytes = i.to_be_bytes();
            buffer.extend_from_slice(&bytes);
            expected.extend_from_slice(&bytes);
            if i % 7 == 0 {
                buffer.consume(3);
                expected.drain(..3);
            }
        }
        assert_eq!(buffer.data(), &expected[..]);
    }

    #[test]
    fn release_frees_only_an_empty_buffer() {
        let mut buffer = Buffer::new();
        buffer.extend_from_slice(b"x");
        buffer.release();
        assert_eq!(buffer.data(), b"x");
        buffer.consume(1);
        buffer.release_if_larger_than(MIN_CAPACITY);
        assert!(buffer.capacity() > 0, "small buffers are kept");
        buffer.release();
        assert_eq!(buffer.capacity(), 0);
    }

    #[test]
    fn formatting_writes_into_the_buffer() {
        let mut buffer = Buffer::new();
        write!(buffer, "STATS accepted={}", 3).unwrap();
        assert_eq!(buffer.data(), b"STATS accepted=3");
    }

    #[test]
    fn capped_growth_stops_at_the_cap_and_still_takes_what_it_is_given() {
        let mut buffer = Buffer::new();
        let chunk = [7u8; 1000];
        let cap = 10_008;
        while buffer.len() + chunk.len() <= cap {
            buffer.extend_capped(&chunk, cap);
            assert!(buffer.capacity() <= cap, "{} past {cap}", buffer.capacity());
        }
        // Past the cap only what the bytes need, no doubling.
        buffer.extend_capped(&chunk, cap);
        assert_eq!(buffer.capacity(), buffer.len());
        assert_eq!(buffer.len(), 11_000);
        assert!(buffer.data().iter().all(|&b| b == 7));
    }
}
