//! The `chat` workload: every connection is a chat session, every `SAY` it sends must reach
//! every other session exactly once and in order. The wire words are docs/PROTOCOL.md's
//! "Chat room"; this file knows them, the worker only moves bytes.
//!
//! ```text
//! session j:  HELLO c<run><j>                  <- WELCOME c<run><j>
//!             SAY <seq> <t_ns> <padding>        <- OK
//! every other identified session k:           <- MSG c<run><j> <seq> <t_ns> <padding>
//! ```
//!
//! - `<run>` is 8 base-36 characters drawn once per run ([`Names`]), so two runs against one
//!   server never claim the same name, and `<j>` is the connection's global index: a receiver
//!   reads the sender's index straight out of the name, and its per-sender state is a slot of
//!   a `Vec`, not a hash of a string. With at most 1,000,000 connections a name is at most
//!   1 + 8 + 6 = 15 bytes, inside the server's 32.
//! - `<seq>` counts each sender's SAYs from 0; `<t_ns>` is the send time in nanoseconds since
//!   the run's epoch (one `CLOCK_MONOTONIC` reading every thread knows), so a receiver on any
//!   thread computes the delivery latency as `now - epoch - t_ns` with no shared table. In
//!   open loop it is the *scheduled* send time, as for request latency.
//! - `<padding>` is `--size` bytes of `0123456789...` (none with `--size 0`, and then no space
//!   before it either); a push must carry it byte for byte.
//!
//! # What is checked, and the names of what goes wrong
//!
//! A receiver keeps, per sender, the next seq it expects ([`Ledger`]). A push of seq `s` when
//! `e` is expected is:
//!
//! - in order (`s == e`): a **delivery**;
//! - **reordered** (`s > e`): it overtook `s - e` earlier messages of that sender; it is still
//!   a delivery, the `s - e` it overtook are counted **missing** at once, and `e` becomes
//!   `s + 1`;
//! - **duplicated** (`s < e`): a repeat, or one that arrived after a later one overtook it
//!   (no history is kept to tell the two apart); not a delivery.
//!
//! When the run ends, a receiver still connected counts as **missing** every message of each
//! other sender it has not got to: the sender's final count (its SAYs, or for a sender that
//! was disconnected, those whose `OK` it saw) less the receiver's next expected seq. So for
//! the receivers connected at the end, deliveries + missing = what was sent to them, and
//! duplicates come on top. A session that ends early (the server closed it, e.g. as a slow
//! reader, or an error closed it) is counted **disconnected** and owes nothing after that.
//! Pushes from names of another run are counted **foreign** and otherwise ignored.
//!
//! Only messages sent in the measured window count as deliveries and have their latency
//! recorded (the receiver knows from `<t_ns>`); every message is checked for order, warmup
//! included. No SAY is sent before every session has its WELCOME, so each one reaches every
//! session there is.
//!
//! # Invariants
//!
//! - Pure: bytes in, verdicts and counts out; no socket, no clock (times are passed in).
//! - No allocation per line: pushes are parsed in place in the read buffer; only a line cut
//!   by the end of a read is copied, into the session's own reused carry-over buffer.
//! - A session's state is its name, its outgoing bytes, that carry-over and a [`Ledger`] of
//!   4 bytes per sender: `C²` × 4 bytes in all, 4 MB at 1,000 sessions, hence
//!   [`MAX_SESSIONS`].

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use hdrhistogram::Histogram;
use memchr::memchr;

use super::report::new_histogram;
use super::workload::{MAX_RAW_REPLY, escape};

/// The most sessions a chat run may have: each keeps a 4-byte expected seq per sender, so
/// 10,000 sessions hold 10,000² × 4 bytes = 400 MB of ledgers (and every SAY is then 9,999
/// pushes).
pub const MAX_SESSIONS: u32 = 10_000;
/// Bytes of a SAY line besides its padding and newline: `SAY ` (4) + a seq (at most 20
/// digits) + ` ` + a time (at most 20) + ` `.
const SAY_OVERHEAD: usize = 4 + 20 + 1 + 20 + 1;
/// Largest `--size` (padding) for chat: the SAY line, newline included, fits the server's
/// default `--max-line` and `--max-unauthenticated-request` of 64 KiB.
pub const MAX_PADDING: usize = 64 * 1024 - SAY_OVERHEAD - 1;
/// A received line longer than this is garbage (a mismatch), so a peer that never sends `\n`
/// cannot make a session buffer forever.
pub const MAX_LINE: usize = MAX_RAW_REPLY;
/// Characters of the run's part of the names.
const RUN_CHARS: usize = 8;
/// `c` + the run's characters.
const PREFIX_LEN: usize = 1 + RUN_CHARS;

/// The names of one run's sessions: `c` + 8 base-36 characters + the global index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: [u8; PREFIX_LEN],
}

/// Whose a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOf {
    /// One of this run's, with its global index.
    Ours(usize),
    /// Another run's, or anyone else's.
    Foreign,
    /// This run's prefix, but no index after it.
    Malformed,
}

impl Names {
    /// The names of the run identified by `run` (any number; only its base-36 digits show).
    #[must_use]
    pub fn new(run: u64) -> Names {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut prefix = [b'c'; PREFIX_LEN];
        let mut rest = run;
        for byte in prefix[1..].iter_mut().rev() {
            *byte = DIGITS[(rest % 36) as usize];
            rest /= 36;
        }
        Names { prefix }
    }

    /// Names unique to this process and moment: the pid and the wall clock, mixed
    /// (splitmix64's finalizer), so concurrent runs differ in their pids and consecutive ones
    /// in their start times.
    #[must_use]
    pub fn for_this_run() -> Names {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut z = (u64::from(std::process::id()) << 40) ^ nanos;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Names::new(z ^ (z >> 31))
    }

    /// Appends session `j`'s name to `out`.
    pub fn write(&self, j: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        push_decimal(out, j as u64);
    }

    /// Session `j`'s name.
    #[must_use]
    pub fn name(&self, j: usize) -> Vec<u8> {
        let mut name = Vec::with_capacity(PREFIX_LEN + 7);
        self.write(j, &mut name);
        name
    }

    /// The run's part, for logs: `c` + 8 characters.
    #[must_use]
    pub fn prefix(&self) -> &str {
        std::str::from_utf8(&self.prefix).expect("the prefix is ASCII")
    }

    /// Whose `name` is: this run's (and which index), or not.
    #[must_use]
    pub fn index(&self, name: &[u8]) -> NameOf {
        match name.strip_prefix(&self.prefix) {
            None => NameOf::Foreign,
            Some(digits) if digits.len() > 7 => NameOf::Malformed,
            Some(digits) => {
                parse_decimal(digits).map_or(NameOf::Malformed, |j| NameOf::Ours(j as usize))
            }
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A decimal number of 1 to 20 digits that fits a `u64`.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// One line a session received, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// `OK`: a SAY answered.
    Ok,
    /// `WELCOME <name>`.
    Welcome(&'a [u8]),
    /// `MSG` from one of this run's sessions.
    Push(Push),
    /// `MSG` from a name of another run.
    Foreign,
}

/// A push from one of this run's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    pub sender: usize,
    pub seq: u32,
    /// The SAY's send time, nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Neither `OK`, `WELCOME <name>` nor `MSG <name> <text>`.
    Unexpected,
    /// A `MSG` with no text after the name.
    NoText,
    /// A `MSG` from this run's prefix whose index is not a session of the run.
    Sender,
    /// The text does not start with a seq (a `u32`) and a space.
    Seq,
    /// The seq is not followed by a send time (a `u64`).
    SentTime,
    /// The padding after the send time differs from `--size` bytes of `0123456789...`.
    Padding,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Unexpected => "a line that is neither OK, WELCOME nor MSG",
            Fault::NoText => "a MSG without text",
            Fault::Sender => "a MSG from a name of this run that is no session of it",
            Fault::Seq => "a MSG whose text does not start with a sequence number",
            Fault::SentTime => "a MSG without its send time after the sequence number",
            Fault::Padding => "a MSG whose padding is not the one sent",
        })
    }
}

/// Classifies one received line (without its `\n`) of a run with `connections` sessions
/// named by `names` and SAYs padded with `padding`.
///
/// # Errors
///
/// The [`Fault`] of a line that is none of the replies and pushes a session may receive.
pub fn classify<'a>(
    line: &'a [u8],
    names: &Names,
    connections: usize,
    padding: &[u8],
) -> Result<Line<'a>, Fault> {
    if line == b"OK" {
        return Ok(Line::Ok);
    }
    if let Some(name) = line.strip_prefix(b"WELCOME ") {
        return Ok(Line::Welcome(name));
    }
    let Some(rest) = line.strip_prefix(b"MSG ") else {
        return Err(Fault::Unexpected);
    };
    let space = memchr(b' ', rest);
    let name = &rest[..space.unwrap_or(rest.len())];
    let sender = match names.index(name) {
        NameOf::Foreign => return Ok(Line::Foreign),
        NameOf::Ours(j) if j < connections => j,
        NameOf::Ours(_) | NameOf::Malformed => return Err(Fault::Sender),
    };
    let text = match space {
        Some(at) if at + 1 < rest.len() => &rest[at + 1..],
        _ => return Err(Fault::NoText),
    };
    let (seq, after) = split_number(text).ok_or(Fault::Seq)?;
    let seq = u32::try_from(seq).map_err(|_| Fault::Seq)?;
    let after = after.strip_prefix(b" ").ok_or(Fault::Seq)?;
    let (sent_ns, tail) = split_number(after).ok_or(Fault::SentTime)?;
    let padded = match tail.strip_prefix(b" ") {
        Some(rest) => !padding.is_empty() && rest == padding,
        None => tail.is_empty() && padding.is_empty(),
    };
    if !padded {
        return Err(Fault::Padding);
    }
    Ok(Line::Push(Push {
        sender,
        seq,
        sent_ns,
    }))
}

/// The decimal number at the start of `text`, and what follows it.
fn split_number(text: &[u8]) -> Option<(u64, &[u8])> {
    let end = text
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    Some((parse_decimal(&text[..end])?, &text[end..]))
}

/// Appends `SAY <seq> <sent_ns>[ <padding>]\n`.
pub fn write_say(out: &mut Vec<u8>, seq: u32, sent_ns: u64, padding: &[u8]) {
    out.extend_from_slice(b"SAY ");
    push_decimal(out, u64::from(seq));
    out.push(b' ');
    push_decimal(out, sent_ns);
    if !padding.is_empty() {
        out.push(b' ');
        out.extend_from_slice(padding);
    }
    out.push(b'\n');
}

/// Where a push stands against what its receiver expected of its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The next expected.
    InOrder,
    /// Ahead of the next expected, overtaking `skipped` earlier messages.
    Reordered { skipped: u32 },
    /// Below the next expected.
    Duplicated,
}

/// A receiver's next expected seq per sender, indexed by the sender's global index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    next: Box<[u32]>,
    /// The sum of `next`: the messages this receiver has got to, all senders together.
    passed: u64,
}

impl Ledger {
    /// Expecting seq 0 from each of `senders`.
    #[must_use]
    pub fn new(senders: usize) -> Ledger {
        Ledger {
            next: vec![0; senders].into_boxed_slice(),
            passed: 0,
        }
    }

    /// Notes a push of `seq` from `sender` (`sender < senders`).
    pub fn record(&mut self, sender: usize, seq: u32) -> Order {
        let next = &mut self.next[sender];
        let order = match seq.cmp(next) {
            std::cmp::Ordering::Equal => Order::InOrder,
            std::cmp::Ordering::Greater => Order::Reordered {
                skipped: seq - *next,
            },
            std::cmp::Ordering::Less => return Order::Duplicated,
        };
        let after = seq.saturating_add(1);
        self.passed += u64::from(after - *next);
        *next = after;
        order
    }

    #[must_use]
    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// Messages not got to: for each sender but `me`, its final count `floor(sender)` less the
    /// next expected seq.
    #[must_use]
    pub fn missing(&self, me: usize, floor: impl Fn(usize) -> u32) -> u64 {
        self.next
            .iter()
            .enumerate()
            .filter(|&(sender, _)| sender != me)
            .map(|(sender, &next)| u64::from(floor(sender).saturating_sub(next)))
            .sum()
    }
}

/// What the threads of a run share about its chat: the names, the padding, and each
/// sender's final count once its thread stops sending.
#[derive(Debug)]
pub struct ChatPlan {
    pub names: Names,
    pub padding: Box<[u8]>,
    /// Sessions (connections), all threads together.
    pub connections: usize,
    /// `--drain`: how long, once every thread has stopped sending, receivers wait for what
    /// is still in flight.
    pub drain_ns: u64,
    board: Board,
}

/// Each sender's final count, written by its own thread when it stops sending, read by every
/// thread after all have stopped.
#[derive(Debug)]
struct Board {
    floors: Box<[AtomicU32]>,
    stopped: AtomicUsize,
    threads: usize,
}

impl ChatPlan {
    #[must_use]
    pub fn new(
        names: Names,
        padding: &[u8],
        connections: usize,
        threads: usize,
        drain_ns: u64,
    ) -> ChatPlan {
        ChatPlan {
            names,
            padding: padding.into(),
            connections,
            drain_ns,
            board: Board {
                floors: (0..connections).map(|_| AtomicU32::new(0)).collect(),
                stopped: AtomicUsize::new(0),
                threads,
            },
        }
    }

    /// Sender `j` will have sent `floor` messages (its thread calls this before [`stop`]).
    ///
    /// [`stop`]: ChatPlan::stop
    pub fn publish(&self, j: usize, floor: u32) {
        self.board.floors[j].store(floor, Ordering::Relaxed);
    }

    /// One thread has stopped sending; its senders' floors are published.
    pub fn stop(&self) {
        self.board.stopped.fetch_add(1, Ordering::Release);
    }

    /// Whether every thread has stopped sending (and so every floor is final).
    #[must_use]
    pub fn all_stopped(&self) -> bool {
        self.board.stopped.load(Ordering::Acquire) >= self.board.threads
    }

    /// Sender `j`'s final count; meaningful once [`ChatPlan::all_stopped`].
    #[must_use]
    pub fn floor(&self, j: usize) -> u32 {
        self.board.floors[j].load(Ordering::Relaxed)
    }

    /// The sum of the floors.
    #[must_use]
    pub fn total(&self) -> u64 {
        (0..self.connections)
            .map(|j| u64::from(self.floor(j)))
            .sum()
    }
}

/// One thread's chat counts over the run, summed over threads for the summary.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Sessions that got their WELCOME.
    pub sessions: u64,
    /// SAYs sent in the measured window.
    pub messages: u64,
    /// Pushes of those messages received, in order or reordered.
    pub deliveries: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Sessions that ended before the run did.
    pub disconnected: u64,
    /// Pushes from names of another run.
    pub foreign: u64,
    /// Delivery latencies (SAY sent to MSG received) of the deliveries, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            sessions: 0,
            messages: 0,
            deliveries: 0,
            missing: 0,
            duplicated: 0,
            reordered: 0,
            disconnected: 0,
            foreign: 0,
            latency: new_histogram(),
        }
    }
}

impl Tally {
    /// Missing, duplicated and reordered messages: the delivery errors.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.missing + self.duplicated + self.reordered
    }

    /// Adds another thread's counts.
    pub fn add(&mut self, other: &Tally) {
        self.sessions += other.sessions;
        self.messages += other.messages;
        self.deliveries += other.deliveries;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.disconnected += other.disconnected;
        self.foreign += other.foreign;
        if self.latency.add(&other.latency).is_err() {
            log::warn!("could not merge a delivery latency histogram");
        }
    }
}

/// The clock and window a batch of received bytes is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    /// The receive time (`CLOCK_MONOTONIC` ns).
    pub now_ns: u64,
    /// The run's epoch, which `<t_ns>` counts from.
    pub epoch_ns: u64,
    /// The measured window `[start, end)` in `CLOCK_MONOTONIC` ns; `None` before it is set.
    pub window: Option<(u64, u64)>,
}

/// What a batch of received bytes did to a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    /// Own replies (WELCOME, OK) received: that many requests are answered.
    pub replies: u32,
    /// The WELCOME was among them.
    pub welcomed: bool,
}

/// A line that broke the protocol, and what the bytes before it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub taken: Taken,
    pub detail: String,
}

/// One connection's chat session.
#[derive(Debug)]
pub struct Session {
    /// This session's global index, and its name.
    me: usize,
    name: Box<[u8]>,
    identified: bool,
    /// Bytes to send: `out[written..]`.
    out: Vec<u8>,
    written: usize,
    /// A received line cut by the end of a read, to be completed by the next.
    partial: Vec<u8>,
    /// SAYs queued so far (the next seq), and those answered `OK`.
    said: u32,
    acked: u32,
    ledger: Ledger,
}

impl Session {
    /// Session `j` of `plan`'s run, its HELLO queued.
    #[must_use]
    pub fn new(j: usize, plan: &ChatPlan) -> Session {
        let name = plan.names.name(j).into_boxed_slice();
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"HELLO ");
        out.extend_from_slice(&name);
        out.push(b'\n');
        Session {
            me: j,
            name,
            identified: false,
            out,
            written: 0,
            partial: Vec::new(),
            said: 0,
            acked: 0,
            ledger: Ledger::new(plan.connections),
        }
    }

    #[must_use]
    pub fn identified(&self) -> bool {
        self.identified
    }

    /// Queues the next SAY, stamped `sent_ns` since the epoch; returns the bytes queued.
    pub fn queue_say(&mut self, sent_ns: u64, padding: &[u8]) -> usize {
        let before = self.out.len();
        write_say(&mut self.out, self.said, sent_ns, padding);
        self.said = self.said.saturating_add(1);
        self.out.len() - before
    }

    /// The bytes not yet written.
    #[must_use]
    pub fn unsent(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// `n` of the unsent bytes were written.
    pub fn wrote(&mut self, n: usize) {
        self.written += n;
        if self.written >= self.out.len() {
            self.out.clear();
            self.written = 0;
        }
    }

    /// This sender's final count: every SAY queued while it is connected (they will all be
    /// written), only those answered once it is not.
    #[must_use]
    pub fn floor(&self, connected: bool) -> u32 {
        if connected { self.said } else { self.acked }
    }

    /// The messages this receiver has got to.
    #[must_use]
    pub fn passed(&self) -> u64 {
        self.ledger.passed()
    }

    /// Messages of the other senders this receiver never got to, by `plan`'s final counts.
    #[must_use]
    pub fn missing(&self, plan: &ChatPlan) -> u64 {
        self.ledger.missing(self.me, |j| plan.floor(j))
    }

    /// Takes `data`, the next bytes received, with up to `in_flight` own replies owed: counts
    /// the pushes into `tally`, returns the replies. A line cut at the end is kept for the
    /// next call.
    ///
    /// # Errors
    ///
    /// The first line that is not what this session may receive; the session is then to be
    /// closed (a `mismatch`).
    pub fn receive(
        &mut self,
        data: &[u8],
        in_flight: u32,
        plan: &ChatPlan,
        moment: Moment,
        tally: &mut Tally,
    ) -> Result<Taken, Refused> {
        let mut taken = Taken::default();
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(end) = memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return self.check_partial(taken);
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            let verdict = self.line(&line, in_flight, plan, moment, tally, &mut taken);
            line.clear();
            self.partial = line; // its capacity is kept for the next cut line
            verdict?;
            rest = &rest[end + 1..];
        }
        while let Some(end) = memchr(b'\n', rest) {
            self.line(&rest[..end], in_flight, plan, moment, tally, &mut taken)?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.check_partial(taken)
    }

    fn check_partial(&self, taken: Taken) -> Result<Taken, Refused> {
        if self.partial.len() > MAX_LINE {
            return Err(Refused {
                taken,
                detail: format!(
                    "a line longer than {MAX_LINE} bytes without a newline (starts with \"{}\")",
                    escape(&self.partial[..40])
                ),
            });
        }
        Ok(taken)
    }

    /// One whole line.
    fn line(
        &mut self,
        line: &[u8],
        in_flight: u32,
        plan: &ChatPlan,
        moment: Moment,
        tally: &mut Tally,
        taken: &mut Taken,
    ) -> Result<(), Refused> {
        let refuse = |taken: &Taken, what: &str| Refused {
            taken: *taken,
            detail: format!("{what}: \"{}\"", escape(line)),
        };
        let classified = classify(line, &plan.names, plan.connections, &plan.padding)
            .map_err(|fault| refuse(taken, &fault.to_string()))?;
        match classified {
            Line::Ok | Line::Welcome(_) if taken.replies >= in_flight => {
                return Err(refuse(taken, "a reply that was not asked for"));
            }
            Line::Ok if !self.identified => return Err(refuse(taken, "OK before WELCOME")),
            Line::Ok => {
                taken.replies += 1;
                self.acked = self.acked.saturating_add(1);
            }
            Line::Welcome(name) if self.identified || name != &*self.name => {
                let expected = format!("expected WELCOME {}", escape(&self.name));
                return Err(refuse(taken, &expected));
            }
            Line::Welcome(_) => {
                taken.replies += 1;
                taken.welcomed = true;
                self.identified = true;
            }
            Line::Push(_) if !self.identified => {
                return Err(refuse(taken, "a MSG before WELCOME"));
            }
            Line::Push(push) if push.sender == self.me => {
                return Err(refuse(taken, "a MSG of this session's own SAY"));
            }
            Line::Push(push) => self.deliver(push, moment, tally),
            Line::Foreign => tally.foreign += 1,
        }
        Ok(())
    }

    /// A push from another session of the run: its order, and if it is a delivery of a
    /// message sent in the measured window, its latency.
    fn deliver(&mut self, push: Push, moment: Moment, tally: &mut Tally) {
        match self.ledger.record(push.sender, push.seq) {
            Order::InOrder => {}
            Order::Reordered { skipped } => {
                tally.reordered += 1;
                tally.missing += u64::from(skipped);
            }
            Order::Duplicated => {
                tally.duplicated += 1;
                return;
            }
        }
        let sent = moment.epoch_ns.saturating_add(push.sent_ns);
        if moment
            .window
            .is_some_and(|(start, end)| sent >= start && sent < end)
        {
            tally.deliveries += 1;
            tally
                .latency
                .saturating_record(moment.now_ns.saturating_sub(sent));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::workload::pattern;

    fn plan(connections: usize, padding: &[u8]) -> ChatPlan {
        ChatPlan::new(Names::new(42), padding, connections, 2, 0)
    }

    /// A moment 1 ms after an epoch of 1000 ns, measuring what was sent in [2000, 1_000_000).
    const MOMENT: Moment = Moment {
        now_ns: 1_000_000 + 1000,
        epoch_ns: 1000,
        window: Some((2000, 1_000_000)),
    };

    fn push_line(names: &Names, sender: usize, seq: u32, sent_ns: u64, padding: &[u8]) -> Vec<u8> {
        let mut line = b"MSG ".to_vec();
        names.write(sender, &mut line);
        let mut say = Vec::new();
        write_say(&mut say, seq, sent_ns, padding);
        line.push(b' ');
        line.extend_from_slice(&say[4..]); // the SAY's text, newline included
        line
    }

    /// Session 0 of a 3-session run, identified.
    fn welcomed(plan: &ChatPlan) -> Session {
        let mut session = Session::new(0, plan);
        let welcome = [b"WELCOME ".as_slice(), &plan.names.name(0), b"\n"].concat();
        let mut tally = Tally::default();
        let taken = session
            .receive(&welcome, 1, plan, MOMENT, &mut tally)
            .unwrap();
        assert_eq!(
            taken,
            Taken {
                replies: 1,
                welcomed: true
            }
        );
        session
    }

    #[test]
    fn names_are_short_unique_to_the_run_and_carry_the_index() {
        let names = Names::new(42);
        assert_eq!(names.prefix(), "c00000016");
        assert_eq!(names.name(7), b"c000000167");
        assert_eq!(Names::new(u64::MAX).prefix(), "c1264sgsf");
        let longest = names.name(999_999);
        assert_eq!(longest.len(), 15);
        assert!(longest.iter().all(u8::is_ascii_alphanumeric));
        assert_eq!(names.index(b"c000000167"), NameOf::Ours(7));
        assert_eq!(names.index(b"c0000001600"), NameOf::Ours(0));
        assert_eq!(names.index(b"c000000169999999"), NameOf::Ours(9_999_999));
        assert_eq!(names.index(b"c0000001699999999"), NameOf::Malformed);
        assert_eq!(names.index(b"c00000016"), NameOf::Malformed);
        assert_eq!(names.index(b"c00000016x"), NameOf::Malformed);
        assert_eq!(names.index(b"c000000177"), NameOf::Foreign);
        assert_eq!(names.index(b"ann"), NameOf::Foreign);
    }

    #[test]
    fn say_lines_and_numbers() {
        let mut out = Vec::new();
        write_say(&mut out, 0, 0, b"");
        write_say(&mut out, 12, 18_446_744_073_709_551_615, b"0123");
        assert_eq!(out, b"SAY 0 0\nSAY 12 18446744073709551615 0123\n");
        let longest = 4 + 10 + 1 + 20 + 1 + MAX_PADDING + 1;
        assert!(longest <= 64 * 1024, "{longest}");
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1a"), None);
    }

    // A table: rustfmt gives each case a line, so it runs past a screen.
    #[test]
    fn lines_are_classified_in_place() {
        let plan = plan(3, b"0123");
        let names = &plan.names;
        let ok = |line: &'static [u8]| classify(line, names, 3, b"0123");
        let good = push_line(names, 2, 5, 99, b"0123");
        assert_eq!(
            classify(&good[..good.len() - 1], names, 3, b"0123"),
            Ok(Line::Push(Push {
                sender: 2,
                seq: 5,
                sent_ns: 99
            }))
        );
        assert_eq!(ok(b"OK"), Ok(Line::Ok));
        assert_eq!(ok(b"WELCOME ann"), Ok(Line::Welcome(b"ann")));
        assert_eq!(ok(b"MSG ann hi"), Ok(Line::Foreign));
        assert_eq!(ok(b"MSG c000000177 1 2 0123"), Ok(Line::Foreign));
        let cases: &[(&[u8], Fault)] = &[
            (b"OK ", Fault::Unexpected),
            (b"ERR name taken", Fault::Unexpected),
            (b"PONG", Fault::Unexpected),
            (b"", Fault::Unexpected),
            (b"MSG c000000163 1 2 0123", Fault::Sender),
            (b"MSG c00000016 1 2 0123", Fault::Sender),
            (b"MSG c000000161", Fault::NoText),
            (b"MSG c000000161 ", Fault::NoText),
            (b"MSG c000000161 x 2 0123", Fault::Seq),
            (b"MSG c000000161 4294967296 2 0123", Fault::Seq),
            (b"MSG c000000161 1", Fault::Seq),
            (b"MSG c000000161 1x2 0123", Fault::Seq),
            (b"MSG c000000161 1 ", Fault::SentTime),
            (b"MSG c000000161 1 x 0123", Fault::SentTime),
            (b"MSG c000000161 1 2", Fault::Padding),
            (b"MSG c000000161 1 2 ", Fault::Padding),
            (b"MSG c000000161 1 2 0124", Fault::Padding),
            (b"MSG c000000161 1 2 01234", Fault::Padding),
            (b"MSG c000000161 1 2x0123", Fault::Padding),
        ];
        for &(line, fault) in cases {
            assert_eq!(ok(line), Err(fault), "{}", escape(line));
        }
        // Without padding, nothing follows the time.
        let bare = classify(b"MSG c000000161 1 2", names, 3, b"");
        assert!(matches!(bare, Ok(Line::Push(_))), "{bare:?}");
        assert_eq!(
            classify(b"MSG c000000161 1 2 ", names, 3, b""),
            Err(Fault::Padding)
        );
    }

    #[test]
    fn the_ledger_names_every_push_and_what_is_missing() {
        let mut ledger = Ledger::new(3);
        assert_eq!(ledger.record(1, 0), Order::InOrder);
        assert_eq!(ledger.record(1, 1), Order::InOrder);
        assert_eq!(ledger.record(1, 1), Order::Duplicated);
        assert_eq!(ledger.record(1, 4), Order::Reordered { skipped: 2 });
        assert_eq!(ledger.record(1, 3), Order::Duplicated);
        assert_eq!(ledger.record(2, 0), Order::InOrder);
        assert_eq!(ledger.passed(), 5 + 1);
        // Sender 1 sent 7, sender 2 sent 3; this is receiver 0 (its own count is ignored).
        let floors = [100, 7, 3];
        assert_eq!(ledger.missing(0, |j| floors[j]), 2 + 2);
        // A floor below what was passed (a disconnected sender's) owes nothing.
        assert_eq!(ledger.missing(0, |_| 1), 0);
    }

    #[test]
    fn pushes_split_at_every_byte_are_counted_once() {
        let plan = plan(3, &pattern(10));
        let names = &plan.names;
        let mut stream = push_line(names, 1, 0, 2000, &pattern(10));
        stream.extend_from_slice(b"OK\n");
        stream.extend_from_slice(&push_line(names, 2, 0, 3000, &pattern(10)));
        stream.extend_from_slice(b"MSG someone else\n");
        stream.extend_from_slice(&push_line(names, 1, 1, 10, &pattern(10)));
        for split in 0..=stream.len() {
            let mut session = welcomed(&plan);
            session.queue_say(0, b"");
            let mut tally = Tally::default();
            let a = session
                .receive(&stream[..split], 1, &plan, MOMENT, &mut tally)
                .unwrap();
            let b = session
                .receive(&stream[split..], 1 - a.replies, &plan, MOMENT, &mut tally)
                .unwrap();
            assert_eq!(a.replies + b.replies, 1, "split at {split}");
            assert_eq!(session.acked, 1);
            // Seq 1 of sender 1 was sent at 1010 ns, before the window: order only.
            assert_eq!(tally.deliveries, 2, "split at {split}");
            assert_eq!(tally.foreign, 1);
            assert_eq!(tally.errors(), 0);
            assert_eq!(session.passed(), 3);
            assert!(session.partial.is_empty());
            assert_eq!(tally.latency.len(), 2);
            let slowest = 1_000_000 + 1000 - (1000 + 2000);
            assert_eq!(
                tally.latency.max(),
                tally.latency.highest_equivalent(slowest)
            );
        }
    }

    #[test]
    fn duplicates_and_reorders_are_counted_not_refused() {
        let plan = plan(3, b"");
        let names = &plan.names;
        let mut session = welcomed(&plan);
        let mut tally = Tally::default();
        let stream = [
            push_line(names, 1, 0, 5000, b""),
            push_line(names, 1, 0, 5000, b""),
            push_line(names, 1, 2, 5000, b""),
            push_line(names, 1, 1, 5000, b""),
        ]
        .concat();
        let taken = session
            .receive(&stream, 0, &plan, MOMENT, &mut tally)
            .unwrap();
        assert_eq!(taken, Taken::default());
        assert_eq!(
            (
                tally.deliveries,
                tally.duplicated,
                tally.reordered,
                tally.missing
            ),
            (2, 2, 1, 1)
        );
        plan.publish(1, 4);
        plan.publish(2, 2);
        assert_eq!(session.missing(&plan), 1 + 2);
    }

    #[test]
    fn what_a_session_may_not_receive_is_refused() {
        let plan = plan(3, b"");
        let names = &plan.names;
        let other_welcome = [b"WELCOME ".as_slice(), &names.name(1), b"\n"].concat();
        let own_push = push_line(names, 0, 0, 5000, b"");
        let before: &[(&[u8], u32, &str)] = &[
            (b"OK\n", 1, "OK before WELCOME: \"OK\""),
            (
                &other_welcome,
                1,
                "expected WELCOME c000000160: \"WELCOME c000000161\"",
            ),
            (b"WELCOME c000000160\n", 0, "a reply that was not asked for"),
            (b"MSG c000000161 0 1\n", 1, "a MSG before WELCOME"),
            (
                b"ERR name taken\n",
                1,
                "neither OK, WELCOME nor MSG: \"ERR name taken\"",
            ),
        ];
        for &(data, in_flight, needle) in before {
            let mut session = Session::new(0, &plan);
            let refused = session
                .receive(data, in_flight, &plan, MOMENT, &mut Tally::default())
                .unwrap_err();
            assert!(refused.detail.contains(needle), "{}", refused.detail);
        }
        let after: &[(&[u8], &str)] = &[
            (b"OK\nOK\n", "a reply that was not asked for: \"OK\""),
            (b"WELCOME c000000160\n", "expected WELCOME"),
            (&own_push, "a MSG of this session's own SAY"),
            (b"MSG c000000161 0 1 x\n", "padding is not the one sent"),
        ];
        for &(data, needle) in after {
            let mut session = welcomed(&plan);
            let refused = session
                .receive(data, 1, &plan, MOMENT, &mut Tally::default())
                .unwrap_err();
            assert!(refused.detail.contains(needle), "{}", refused.detail);
        }
        // The good replies before a bad line are reported with it.
        let mut session = welcomed(&plan);
        let refused = session
            .receive(b"OK\nPONG\n", 2, &plan, MOMENT, &mut Tally::default())
            .unwrap_err();
        assert_eq!(refused.taken.replies, 1);
        // A line that never ends is refused once over the cap.
        let mut session = welcomed(&plan);
        let chunk = vec![b'M'; MAX_LINE / 2 + 1];
        let mut tally = Tally::default();
        assert!(
            session
                .receive(&chunk, 0, &plan, MOMENT, &mut tally)
                .is_ok()
        );
        let refused = session
            .receive(&chunk, 0, &plan, MOMENT, &mut tally)
            .unwrap_err();
        assert!(refused.detail.contains("without a newline"), "{refused:?}");
    }

    #[test]
    fn outgoing_bytes_are_hello_then_says_and_floors_follow_the_acks() {
        let plan = plan(3, b"01");
        let mut session = Session::new(2, &plan);
        assert_eq!(session.unsent(), b"HELLO c000000162\n");
        session.wrote(6);
        assert_eq!(session.unsent(), b"c000000162\n");
        session.wrote(11);
        assert_eq!(session.unsent(), b"");
        assert_eq!(session.queue_say(77, &plan.padding), 12);
        assert_eq!(session.queue_say(78, &plan.padding), 12);
        assert_eq!(session.unsent(), b"SAY 0 77 01\nSAY 1 78 01\n");
        session.wrote(24);
        assert!(session.unsent().is_empty() && session.out.capacity() >= 24);
        assert_eq!((session.floor(true), session.floor(false)), (2, 0));
    }

    #[test]
    fn the_board_totals_the_floors_once_every_thread_stopped() {
        let plan = plan(3, b"");
        plan.publish(0, 5);
        plan.stop();
        assert!(!plan.all_stopped());
        plan.publish(1, 7);
        plan.stop();
        assert!(plan.all_stopped());
        assert_eq!(plan.total(), 12);
        assert_eq!(plan.floor(1), 7);
    }
}
