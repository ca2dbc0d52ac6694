//! Accepting connections: until WouldBlock, at most `ACCEPT_BUDGET` per listener per wakeup,
//! and surviving the moment the process runs out of file descriptors.
//!
//! Up to four listeners feed the one loop: lines and frames, each in the clear and, when
//! configured, over TLS ([`ListenerId`]). A TLS connection is an ordinary connection whose
//! bytes pass through a rustls session (`reactor::tls`); everything past the accept is shared.
//!
//! The EMFILE trap: when `accept` fails with EMFILE the pending connection stays in the
//! listen backlog, so the listener stays readable. A loop that just retries spins at 100 % CPU
//! and the clients in the backlog hang until they time out. The cure (as in libuv and Node):
//! keep one spare descriptor open (`/dev/null`); on EMFILE close it, accept the waiting
//! connections and close them at once, so the clients get an answer instead of a hang, open the
//! spare again, and stop accepting for `ACCEPT_PAUSE` so the process cannot spin. Listeners
//! are edge-triggered, so when the pause ends they are revisited without waiting for an event.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};

use super::connection::{Connection, State};
use super::tls::TlsSession;
use super::{Server, Timer, token};
use crate::config::Config;
use crate::handler::{self, Notice, Protocol, Session, SessionId};
use crate::net::{listen, write_some};

/// One of the listeners: the protocol it serves and whether over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerId {
    Line,
    Frame,
    LineTls,
    FrameTls,
}

impl ListenerId {
    pub const ALL: [ListenerId; 4] = [
        ListenerId::Line,
        ListenerId::Frame,
        ListenerId::LineTls,
        ListenerId::FrameTls,
    ];

    pub fn protocol(self) -> Protocol {
        match self {
            ListenerId::Line | ListenerId::LineTls => Protocol::Line,
            ListenerId::Frame | ListenerId::FrameTls => Protocol::Frame,
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ListenerId::LineTls | ListenerId::FrameTls)
    }

    pub fn token(self) -> Token {
        match self {
            ListenerId::Line => token::LINE_LISTENER,
            ListenerId::Frame => token::FRAME_LISTENER,
            ListenerId::LineTls => token::LINE_TLS_LISTENER,
            ListenerId::FrameTls => token::FRAME_TLS_LISTENER,
        }
    }

    /// The listener a token names, if it names one.
    pub fn of_token(token: Token) -> Option<ListenerId> {
        ListenerId::ALL.into_iter().find(|id| id.token() == token)
    }

    /// As in the startup log: `line`, `frame TLS`.
    pub fn name(self) -> &'static str {
        match self {
            ListenerId::Line => "line",
            ListenerId::Frame => "frame",
            ListenerId::LineTls => "line TLS",
            ListenerId::FrameTls => "frame TLS",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Where the configuration asks this listener to be; `None`: not wanted.
    fn configured(self, config: &Config) -> Option<SocketAddr> {
        match self {
            ListenerId::Line => Some(config.line_addr),
            ListenerId::Frame => Some(config.frame_addr),
            ListenerId::LineTls => config.line_tls_addr,
            ListenerId::FrameTls => config.frame_tls_addr,
        }
    }
}

/// Connections accepted per listener per wakeup before the loop goes on to serve the ones it
/// has: a connect storm must not starve established clients. The rest are taken next
/// iteration, without waiting for a new event.
const ACCEPT_BUDGET: usize = 128;

/// How long accepting stops after running out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections accepted over `--max-connections` are told so and given `LINGER` to read it;
/// past this many of them at once, new ones are closed without the courtesy.
const MAX_REJECTING: usize = 1024;

/// The listening sockets, each optional: TLS ones only when configured, and shutdown closes
/// them all.
pub struct Listeners {
    sockets: [Option<TcpListener>; 4],
    addrs: [Option<SocketAddr>; 4],
    /// The spare descriptor given up on EMFILE.
    reserve: Option<File>,
    /// Accepting is paused until this time after EMFILE.
    paused_until: Option<Instant>,
    /// For rate-limited warnings: when the last one was logged, and failures since.
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Listeners {
    /// Binds every listener the configuration asks for.
    pub fn bind(config: &Config) -> io::Result<Self> {
        let mut sockets = [None, None, None, None];
        let mut addrs = [None; 4];
        for id in ListenerId::ALL {
            let Some(addr) = id.configured(config) else {
                continue;
            };
            let listener = listen(addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen for {} on {addr}: {e}", id.name()),
                )
            })?;
            let bound = listener.local_addr()?;
            info!("{} listener on {bound}", id.name());
            sockets[id.index()] = Some(listener);
            addrs[id.index()] = Some(bound);
        }
        Ok(Listeners {
            sockets,
            addrs,
            reserve: File::open("/dev/null").ok(),
            paused_until: None,
            last_warning: None,
            unreported: 0,
        })
    }

    /// Registers every open listener with the poll.
    pub fn register(&mut self, registry: &mio::Registry) -> io::Result<()> {
        for id in ListenerId::ALL {
            if let Some(listener) = self.sockets[id.index()].as_mut() {
                registry.register(listener, id.token(), Interest::READABLE)?;
            }
        }
        Ok(())
    }

    /// The address a listener is bound to (`None` if it is not configured).
    pub fn addr(&self, id: ListenerId) -> Option<SocketAddr> {
        self.addrs[id.index()]
    }

    fn get(&self, id: ListenerId) -> Option<&TcpListener> {
        self.sockets[id.index()].as_ref()
    }
}

impl Server {
    /// Accepts from one listener until WouldBlock or the budget; see the module doc.
    pub(super) fn accept_ready(&mut self, id: ListenerId) {
        if self.listeners.paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = self.listeners.get(id) else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer, id),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient(&e) => debug!("accept: {e} (ignored)"),
                Err(e) => {
                    self.on_accept_exhausted(id, &e);
                    return;
                }
            }
        }
        // Budget spent: more may be waiting, and no new edge will say so.
        self.revisit.push(id.token());
    }

    /// Sets up an accepted socket: a connection in the slab, or a refusal if full.
    ///
    /// A refusal is a courtesy that costs a connection slot for up to `LINGER`; a TLS client
    /// would need a whole handshake before it could read it, so TLS refusals are plain closes.
    fn admit(&mut self, socket: TcpStream, peer: SocketAddr, id: ListenerId) {
        let protocol = id.protocol();
        self.stats.accepted += 1;
        // Replies are written in batches already; Nagle would only delay the last one.
        if let Err(e) = socket.set_nodelay(true) {
            debug!("set_nodelay for {peer}: {e}");
        }
        let served = self.connections.len() - self.rejecting;
        let full = served >= self.config.max_connections;
        if full {
            self.stats.rejected_full += 1;
            if self.rejecting >= MAX_REJECTING || id.is_tls() {
                debug!("refusing {peer}: server full, closed at once");
                self.stats.closed += 1;
                return;
            }
        }
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        self.generation = token::next_generation(self.generation);
        let conn_token = token::connection(key, self.generation);
        let mut socket = socket;
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            conn_token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register {peer}: {e}");
            self.stats.closed += 1;
            return;
        }
        let tls = match (&self.tls_config, id.is_tls()) {
            (Some(config), true) => match TlsSession::new(config, self.now) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => {
                    warn!("TLS session for {peer}: {e}");
                    let _ = self.poll.registry().deregister(&mut socket);
                    self.stats.closed += 1;
                    return;
                }
            },
            _ => None,
        };
        let session = Session::new(protocol, SessionId(conn_token.0 as u64));
        let mut conn = Connection::new(socket, conn_token, session, self.now);
        conn.tls = tls;
        self.stats.active += 1;
        if full {
            debug!(
                "conn={} from {peer} refused: server full",
                token::show(conn_token)
            );
            conn.rejected = true;
            self.rejecting += 1;
            handler::write_notice(protocol, Notice::ServerFull, &mut conn.output);
            conn.set_state(State::Draining(super::connection::CloseReason::ServerFull));
        } else {
            debug!(
                "conn={} accepted from {peer} ({})",
                token::show(conn_token),
                id.name()
            );
        }
        entry.insert(conn);
        self.arm_timer(key);
        if full {
            self.flush(key);
        }
    }

    /// accept failed with something other than WouldBlock: almost always EMFILE/ENFILE (out of
    /// descriptors) or ENOBUFS/ENOMEM. See the module doc.
    /// Over TLS the waiting clients get a plain close: a notice would need a handshake.
    fn on_accept_exhausted(&mut self, id: ListenerId, error: &io::Error) {
        self.stats.accept_emfile += 1;
        self.listeners.reserve = None;
        let mut shed = 0;
        let mut notice = crate::buffer::Buffer::new();
        if !id.is_tls() {
            handler::write_notice(id.protocol(), Notice::ServerFull, &mut notice);
        }
        if let Some(listener) = self.listeners.get(id) {
            // With the spare closed, each accept below has a descriptor to use, and each
            // close gives it back for the next.
            for _ in 0..ACCEPT_BUDGET {
                match listener.accept() {
                    Ok((mut socket, _)) => {
                        shed += 1;
                        // Best effort: a fresh socket's send buffer is empty, so this fits.
                        let _ = write_some(&mut socket, notice.data());
                        let _ = socket.shutdown(std::net::Shutdown::Write);
                    }
                    Err(_) => break,
                }
            }
        }
        self.listeners.reserve = File::open("/dev/null").ok();
        let resume = self.now + ACCEPT_PAUSE;
        self.listeners.paused_until = Some(resume);
        let tick = self.tick_at(resume);
        self.wheel.schedule(tick, Timer::ResumeAccept);

        self.listeners.unreported += 1;
        let due = self
            .listeners
            .last_warning
            .is_none_or(|last| self.now.duration_since(last) >= Duration::from_secs(1));
        if due {
            warn!(
                "accept failed: {error} ({} time(s) since the last warning); shed {shed} waiting \
                 connection(s), pausing accepts for {ACCEPT_PAUSE:?}",
                self.listeners.unreported
            );
            self.listeners.last_warning = Some(self.now);
            self.listeners.unreported = 0;
        }
    }

    /// The accept pause is over: look at every listener again, since the connections that
    /// waited meanwhile raised no new edge.
    pub(super) fn resume_accept(&mut self) {
        self.listeners.paused_until = None;
        for id in ListenerId::ALL {
            if self.listeners.get(id).is_some() {
                self.revisit.push(id.token());
            }
        }
    }

    /// Closes every listener: new connects are refused from now on.
    pub(super) fn close_listeners(&mut self) {
        for slot in &mut self.listeners.sockets {
            if let Some(mut listener) = slot.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
        }
    }
}

/// accept errors that concern one connection that already went away, not the listener.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    ) || error.kind() == io::ErrorKind::Interrupted
}
