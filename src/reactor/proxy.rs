//! Connections behind a load balancer: the PROXY header, read before anything else, and the
//! per-address limit that uses the client address it names.
//!
//! With `--proxy-protocol`, every accepted connection starts in `State::AwaitingProxy`. Its
//! bytes are read straight from the socket (over TLS too: the balancer writes the header in
//! the clear, before the ClientHello) and decoded (`protocol::proxy`) after every read: where
//! they were read when the header comes in one read, as it nearly always does; otherwise the
//! start is kept in the connection's input buffer and decoded with each read joined to it, so
//! a header split over any number of reads is the same header. Once it is complete:
//!
//! - the client's address is the header's source (or, for a v2 `LOCAL` health check or a v1
//!   `UNKNOWN`, the socket's own peer), logged as `conn=... from 203.0.113.7:51234 via
//!   127.0.0.1:40412`;
//! - the per-address limit counts the connection for that address, when the header names
//!   one: a `LOCAL` or `UNKNOWN` connection is the balancer's own (its health checks), not a
//!   client's, and refusing a health check for a client limit would mark a healthy node down;
//! - the bytes after the header are the first request, executed at once (over TLS, the first
//!   records, handed to the TLS session).
//!
//! Anything else is closed without a reply and counted in `proxy_errors`: bytes that are not
//! a header, a malformed one, an EOF in the middle of one, and one not complete within
//! `--request-timeout` of the accept (the connection's timer; an idle timeout that comes
//! first ends it the same way). Nothing is said because nothing can be said safely: the peer
//! is not a balancer we know, or not speaking the protocol it was configured to.
//!
//! `--proxy-from` is checked before any of this, at the accept: a peer outside those networks
//! never gets a connection.
//!
//! **The per-address limit** (`--max-connections-per-ip`) is one count per client address
//! for the whole process ([`Addresses`]), taken when the address is known (at the accept, or
//! after the header) and given back when the session ends, with the `--max-connections`
//! slot. It is touched once per connection, never per request, so a mutex is the simple and
//! right tool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;
use log::{debug, log_enabled};

use super::Server;
use super::connection::CloseReason;
use super::token;
use crate::handler::Notice;
use crate::protocol::Decoded;
use crate::protocol::proxy::{self, ProxyHeader};

/// What became of a connection awaiting its PROXY header after a read.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// Not complete yet: nothing more to read for now.
    Waiting,
    /// Complete: the connection is Open (or was refused by the per-address limit). What
    /// followed the header waits in its input (or its TLS session), or is the first `n`
    /// bytes of `scratch_in`, fresh for `execute`.
    Done(usize),
    /// Closed.
    Closed,
}

/// The connections open per client address, all workers together, for
/// `--max-connections-per-ip`.
#[derive(Debug, Default)]
pub struct Addresses {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Addresses {
    /// `limit` 0: no limit, and nothing is counted.
    pub fn new(limit: usize) -> Addresses {
        Addresses {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.limit > 0
    }

    /// Counts one more connection from `ip`; `false` (and nothing counted) when it already
    /// has `limit`.
    pub fn take(&self, ip: IpAddr) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    /// One connection from `ip` has ended.
    pub fn free(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }

    /// Connections counted for `ip` now.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// The address a limit or a network check sees: an IPv4 client on a dual-stack listener
/// (`::ffff:192.0.2.1`) is the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Whether `peer` may connect under `--proxy-from` (everyone, when it is empty).
pub fn is_trusted(networks: &[IpNet], peer: IpAddr) -> bool {
    let peer = canonical(peer);
    networks.is_empty() || networks.iter().any(|net| net.contains(&peer))
}

impl Server {
    /// Reads what the socket holds of a connection's PROXY header, and acts once it is
    /// complete or proven bad. Once per connection, and kept out of the read loop's code.
    #[cold]
    #[inline(never)]
    pub(super) fn read_preamble(&mut self, key: usize) -> Preamble {
        let mut fresh;
        loop {
            let conn = &mut self.connections[key];
            match conn.receive_preamble(&mut self.scratch_in) {
                Err(e) => {
                    debug!("conn={} read error: {e}", token::show(conn.token()));
                    self.close(key, "read error");
                    return Preamble::Closed;
                }
                Ok(None) => {
                    self.stats.read_would_block += 1;
                    return Preamble::Waiting;
                }
                Ok(Some(0)) => {
                    let why = if conn.preamble().is_empty() {
                        "closed by the peer before its PROXY header"
                    } else {
                        self.stats.proxy_errors += 1;
                        "EOF inside its PROXY header"
                    };
                    self.close(key, why);
                    return Preamble::Closed;
                }
                Ok(Some(n)) => {
                    self.stats.bytes_in += n as u64;
                    conn.touch(self.now);
                    fresh = n;
                }
            }
            // Decoded where it was read when nothing is held: a header nearly always comes
            // in one read.
            let conn = &mut self.connections[key];
            let read = &self.scratch_in[..fresh];
            let held = !conn.preamble().is_empty();
            if held {
                conn.hold_preamble(read);
            }
            let decoded = proxy::decode(if held { conn.preamble() } else { read });
            match decoded {
                Ok(Decoded::Incomplete) => {
                    if !held {
                        conn.hold_preamble(read);
                    }
                    continue;
                }
                Ok(Decoded::Complete { request, consumed }) => {
                    return self.end_preamble(key, request, consumed, fresh);
                }
                Err(e) => {
                    let conn = &self.connections[key];
                    debug!("conn={} bad PROXY header: {e}", token::show(conn.token()));
                    self.stats.proxy_errors += 1;
                    self.close(key, "bad PROXY header");
                    return Preamble::Closed;
                }
            }
        }
    }

    /// The header is complete: the connection is its client's from here.
    /// `fresh`: the bytes of the read that completed it, in `scratch_in`.
    fn end_preamble(
        &mut self,
        key: usize,
        header: ProxyHeader,
        consumed: usize,
        fresh: usize,
    ) -> Preamble {
        let conn = &mut self.connections[key];
        let shown = token::show(conn.token());
        if log_enabled!(log::Level::Debug) {
            let peer = conn
                .peer_addr()
                .map_or_else(|e| format!("? ({e})"), |peer| peer.to_string());
            match header.source {
                Some(source) => debug!("conn={shown} from {source} via {peer}"),
                None => debug!("conn={shown} PROXY header names no client: {peer} stands"),
            }
        }
        let held = !conn.preamble().is_empty();
        if let Err(e) = conn.end_preamble(consumed, &self.scratch_in[..fresh]) {
            debug!("conn={shown} TLS: {e}");
            self.close(key, "TLS error");
            return Preamble::Closed;
        }
        // Requests that came with the header in one read are executed from where they were
        // read, as any others are: moved to the front of the scratch buffer.
        let rest = if held || conn.is_tls() {
            0
        } else {
            self.scratch_in.copy_within(consumed..fresh, 0);
            fresh - consumed
        };
        if let Some(client) = header.source {
            self.admit_address(key, client.ip());
        }
        if self.connections[key].is_closed() {
            Preamble::Closed
        } else {
            Preamble::Done(rest)
        }
    }

    /// Counts the connection for its client's address under `--max-connections-per-ip`;
    /// over the limit it is refused (told so, when it can be) and `false` is returned.
    pub(super) fn admit_address(&mut self, key: usize, ip: IpAddr) -> bool {
        let addresses = self.mailbox.fleet().addresses();
        if !addresses.is_limited() {
            return true;
        }
        let ip = canonical(ip);
        if addresses.take(ip) {
            self.connections[key].hold_address(ip);
            return true;
        }
        self.stats.rejected_per_ip += 1;
        let conn = &mut self.connections[key];
        debug!(
            "conn={} refused: too many connections from {ip}",
            token::show(conn.token())
        );
        if conn.is_handshaking() {
            // Nothing can be said before the handshake, and a refusal must not cost one.
            self.close(key, "too many connections from its address");
            return false;
        }
        // Not a session: its `--max-connections` slot is free at once.
        self.release_slot(key);
        let conn = &mut self.connections[key];
        conn.notify(Notice::TooManyFromAddress);
        self.drain(key, CloseReason::TooManyFromAddress);
        false
    }

    /// A connection's timer found it still awaiting its header past a deadline.
    pub(super) fn preamble_timed_out(&mut self, key: usize) {
        self.stats.proxy_errors += 1;
        self.close(key, "no PROXY header in time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_each_back() {
        let addresses = Addresses::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(addresses.take(a) && addresses.take(a));
        assert!(!addresses.take(a), "a third from one address");
        assert!(addresses.take(b), "another address is not affected");
        addresses.free(a);
        assert_eq!(addresses.count(a), 1);
        assert!(addresses.take(a));
        addresses.free(a);
        addresses.free(a);
        addresses.free(b);
        assert_eq!((addresses.count(a), addresses.count(b)), (0, 0));
        assert!(
            addresses.open.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn proxy_from_admits_its_networks_and_ipv4_on_a_dual_stack_socket() {
        let networks: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(is_trusted(&networks, "10.1.2.3".parse().unwrap()));
        assert!(is_trusted(&networks, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(is_trusted(&networks, "::1".parse().unwrap()));
        assert!(!is_trusted(&networks, "192.0.2.1".parse().unwrap()));
        assert!(is_trusted(&[], "192.0.2.1".parse().unwrap()));
    }
}
