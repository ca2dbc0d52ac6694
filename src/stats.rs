//! Counters the loop keeps about itself, shown by `STATS` and in the exit summary.
//!
//! Plain `u64` fields on the reactor's own value: one loop is one thread, so there is nothing
//! to synchronise and a counter costs one add. Field names are spelled exactly as the STATS
//! keys, so a key leads straight to the code that moves it.

use std::io::{self, Write};

/// What a counter measures, for the metrics endpoint (`reactor::metrics`): a `Counter` only
/// ever grows (it is exposed as `tcp_reactor_<key>_total`), a `Gauge` is a level that goes up
/// and down (`tcp_reactor_<key>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One STATS key as the metrics endpoint describes it: its name, kind and doc comment (the
/// metric's HELP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// The field's doc comment, its lines joined by spaces.
    pub help: &'static str,
}

/// Declares every counter once, with its kind and doc, so that the STATS line, the sums over
/// the workers and the metrics endpoint's names, types and HELP texts all follow from this
/// one list: a key added here appears everywhere, with nothing else to edit.
///
/// ```text
/// /// Connections accepted, including those refused as over the limit.
/// counter accepted,
/// ```
macro_rules! counters {
    (@kind counter) => { Kind::Counter };
    (@kind gauge) => { Kind::Gauge };
    ($($(#[doc = $doc:literal])* $kind:ident $name:ident),* $(,)?) => {
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Stats {
            /// Every key, in declaration order (the order of [`Stats::values`]).
            pub const KEYS: &[Key] = &[$(Key {
                name: stringify!($name),
                kind: counters!(@kind $kind),
                help: concat!($($doc),*),
            }),*];

            /// Every value, in the order of [`Stats::KEYS`].
            pub fn values(&self) -> impl Iterator<Item = u64> + use<> {
                [$(self.$name),*].into_iter()
            }

            /// Writes `key=value` pairs separated by spaces, in declaration order.
            pub fn write_pairs(&self, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
                let mut separator = "";
                $(
                    write!(out, "{separator}{}={}", stringify!($name), self.$name)?;
                    separator = " ";
                )*
                let _ = separator;
                Ok(())
            }

            /// Adds `other`'s counters to these: the process's figures are the sums over its
            /// loops (`client_memory_peak` so becomes the sum of each loop's peak, an upper
            /// bound of the process's).
            pub fn absorb(&mut self, other: &Stats) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Connections accepted, including those refused as over the limit.
    counter accepted,
    /// Connections open now.
    gauge active,
    /// Connections closed, for any reason.
    counter closed,
    /// Connections closed for having had no traffic for `--idle-timeout`.
    counter idle_timeouts,
    /// Connections closed for taking longer than `--request-timeout` to send one request.
    counter request_timeouts,
    /// Connections closed for breaking the protocol (bad magic, line too long, ...).
    counter protocol_errors,
    /// Connections refused with `ERR server full` / an Error frame at `--max-connections`.
    counter rejected_full,
    /// Bytes read from clients.
    counter bytes_in,
    /// Bytes written to clients.
    counter bytes_out,
    /// Requests executed.
    counter requests,
    /// Reads that ended a request in the middle (the rest came in a later read).
    counter partial_reads,
    /// Writes that took only part of the pending output.
    counter partial_writes,
    /// Reads that found nothing and returned WouldBlock.
    counter read_would_block,
    /// Writes that found the socket buffer full and returned WouldBlock.
    counter write_would_block,
    /// Returns from `poll`.
    counter wakeups,
    /// Timers that expired (idle checks, close deadlines, accept pauses).
    counter timers_fired,
    /// Times a connection stopped being read because its replies were not being read.
    counter backpressure_pauses,
    /// Sessions disconnected for falling more than the push cap behind on chat messages.
    counter slow_reader_drops,
    /// Times accept failed for lack of file descriptors (EMFILE/ENFILE).
    counter accept_emfile,
    /// Successful logins.
    counter logins,
    /// Failed logins (wrong password or unknown user: one count, one answer).
    counter login_failures,
    /// Sockets whose session has ended (our FIN is sent, counted in `closed`) still reading
    /// and discarding input until the peer's EOF, for at most the linger deadline.
    gauge lingering,
    /// Bytes held now on the clients' behalf (buffer capacity, TLS sessions): what
    /// `--client-memory` bounds.
    gauge client_memory,
    /// The most `client_memory` has been.
    gauge client_memory_peak,
    /// Connections closed to bring `client_memory` back under `--client-memory`, largest
    /// first, told `ERR server out of memory`.
    counter memory_evictions,
    /// Times a connection stopped being read because its request would have needed more
    /// client memory than was left.
    counter memory_throttles,
    /// With `--proxy-protocol`: connections closed without a reply for not beginning with a
    /// valid PROXY header in time, or for coming from outside `--proxy-from`.
    counter proxy_errors,
    /// Connections refused with `ERR too many connections from your address` at
    /// `--max-connections-per-ip`.
    counter rejected_per_ip,
    /// With `--cluster-redis`: 1 while the links to Redis are up (subscribed, and the command
    /// link connected), else 0. Always 0 without it.
    gauge cluster_up,
    /// Chat messages published to the other nodes over Redis.
    counter cluster_published,
    /// Chat messages from other nodes received over Redis (this node's own echoes not
    /// counted).
    counter cluster_received,
    /// Chat messages not published to the other nodes: Redis was unreachable, or more were
    /// waiting to be sent than the outbound bound allows.
    counter cluster_dropped,
}

/// Where the STATS line gets the whole process's figures: the loop answering passes its own
/// counters (live), the implementor adds those of the other loops, then the two keys that
/// describe the loops: `workers=N active_by_worker=a,b,...`.
pub trait Totals {
    fn write_stats(&self, own: &Stats, out: &mut dyn Write) -> io::Result<()>;

    /// Whether a STATS must first gather the other loops' counters: it is then answered
    /// by the reactor once each has published after the request ([`Outcome::Census`]),
    /// not at once.
    ///
    /// [`Outcome::Census`]: crate::handler::Outcome::Census
    fn gathers(&self) -> bool;
}

/// A loop alone in its process: its counters are the process's.
pub struct Alone;

impl Totals for Alone {
    fn write_stats(&self, own: &Stats, out: &mut dyn Write) -> io::Result<()> {
        own.write_pairs(out)?;
        write!(out, " workers=1 active_by_worker={}", own.active)
    }

    fn gathers(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_spelled_as_the_fields() {
        let stats = Stats {
            accepted: 3,
            slow_reader_drops: 1,
            ..Stats::default()
        };
        let mut out = Vec::new();
        stats.write_pairs(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("accepted=3 active=0 closed=0 "), "{text}");
        assert!(
            text.ends_with(
                " slow_reader_drops=1 accept_emfile=0 logins=0 login_failures=0 lingering=0 \
                 client_memory=0 client_memory_peak=0 memory_evictions=0 memory_throttles=0 \
                 proxy_errors=0 rejected_per_ip=0 cluster_up=0 cluster_published=0 \
                 cluster_received=0 cluster_dropped=0"
            ),
            "{text}"
        );
        assert_eq!(text.split(' ').count(), 32);
    }

    #[test]
    fn every_key_has_a_kind_a_help_and_a_value_in_order() {
        let stats = Stats {
            requests: 7,
            ..Stats::default()
        };
        let keys: Vec<_> = Stats::KEYS.iter().zip(stats.values()).collect();
        assert_eq!(keys.len(), 32);
        let (requests, value) = keys[9];
        assert_eq!(
            (requests.name, requests.kind, value),
            ("requests", Kind::Counter, 7)
        );
        assert_eq!(requests.help.trim(), "Requests executed.");
        let gauges: Vec<_> = Stats::KEYS
            .iter()
            .filter(|key| key.kind == Kind::Gauge)
            .map(|key| key.name)
            .collect();
        assert_eq!(
            gauges,
            [
                "active",
                "lingering",
                "client_memory",
                "client_memory_peak",
                "cluster_up"
            ]
        );
        // A doc of several lines is one HELP line, its lines joined by spaces.
        let lingering = Stats::KEYS
            .iter()
            .find(|key| key.name == "lingering")
            .unwrap();
        assert!(
            lingering.help.contains("still reading and discarding"),
            "{}",
            lingering.help
        );
        assert!(Stats::KEYS.iter().all(|key| !key.help.trim().is_empty()));
    }

    #[test]
    fn a_loop_alone_reports_itself_as_the_one_worker() {
        let stats = Stats {
            active: 4,
            accepted: 9,
            ..Stats::default()
        };
        let mut sum = stats.clone();
        sum.absorb(&stats);
        assert_eq!((sum.active, sum.accepted, sum.closed), (8, 18, 0));
        let mut out = Vec::new();
        Alone.write_stats(&stats, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(" cluster_dropped=0 workers=1 active_by_worker=4"),
            "{text}"
        );
    }
}
