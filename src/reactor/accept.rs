//! Accepting connections: until WouldBlock, at most `ACCEPT_BUDGET` per listener per wakeup,
//! and surviving the moment the process runs out of file descriptors.
//!
//! The [`Acceptor`] owns the listening sockets and hands what it accepts to the loop as a
//! batch of sockets (one burst per listener per wakeup); it knows nothing of connections,
//! the slab or the limits. The loop decides what becomes of each socket (`Server::admit`).
//!
//! The sockets come from the configuration (bound here, [`Acceptor::bind`]) or from a service
//! manager that bound them and passed them in (socket activation, [`Acceptor::inherited`]).
//! The one difference after that is at the end: inherited sockets outlive the process, so
//! closing them closes only this process's copy, and their backlog is left to the next one.
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
use mio::{Interest, Registry, Token};

use super::activation::Inherited;
use super::token;
use crate::buffer::Buffer;
use crate::config::Config;
use crate::handler::{self, Notice, Protocol};
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

    /// Its name in socket activation (systemd's `FileDescriptorName=`, `LISTEN_FDNAMES`).
    pub fn activation_name(self) -> &'static str {
        match self {
            ListenerId::Line => "line",
            ListenerId::Frame => "frame",
            ListenerId::LineTls => "line-tls",
            ListenerId::FrameTls => "frame-tls",
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

/// The listening sockets, each optional: TLS ones only when configured, and shutdown closes
/// them all. They come from one of two sources: bound here from the configuration
/// ([`Acceptor::bind`]), or passed in by a service manager ([`Acceptor::inherited`]); past
/// that, accepting is the same.
pub struct Acceptor {
    sockets: [Option<TcpListener>; 4],
    addrs: [Option<SocketAddr>; 4],
    /// The sockets were passed in by the service manager, which keeps its own copies open.
    inherited: bool,
    /// The spare descriptor given up on EMFILE.
    reserve: Option<File>,
    /// Accepting is paused until this time after EMFILE.
    paused_until: Option<Instant>,
    /// For rate-limited warnings: when the last one was logged, and failures since.
    last_warning: Option<Instant>,
    unreported: u64,
}

/// How an accept burst ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burst {
    /// WouldBlock: the backlog is empty (or the listener is closed, or accepting is paused).
    Drained,
    /// `ACCEPT_BUDGET` sockets taken; more may be waiting and no new edge will say so: come
    /// back next turn.
    BudgetSpent,
    /// Out of descriptors: the waiting connections were shed and accepting stops until
    /// the given time; then call [`Acceptor::resume`].
    Paused(Instant),
}

impl Acceptor {
    /// Binds every listener the configuration asks for; with `reuse_port`, as one of
    /// several sockets on each address (see [`listen`]).
    pub fn bind(config: &Config, reuse_port: bool) -> io::Result<Self> {
        let mut sockets = [None, None, None, None];
        let mut addrs = [None; 4];
        for id in ListenerId::ALL {
            let Some(addr) = id.configured(config) else {
                continue;
            };
            let listener = listen(addr, reuse_port).map_err(|e| {
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
        Ok(Acceptor {
            sockets,
            addrs,
            inherited: false,
            reserve: File::open("/dev/null").ok(),
            paused_until: None,
            last_warning: None,
            unreported: 0,
        })
    }

    /// The listeners a service manager passed in (socket activation, [`activation`](super::activation)): only
    /// those are served, whatever addresses the configuration names.
    pub fn inherited(inherited: Inherited) -> Self {
        let mut acceptor = Acceptor::none();
        acceptor.inherited = true;
        acceptor.reserve = File::open("/dev/null").ok();
        for passed in inherited.into_passed() {
            info!(
                "{} listener on {} (from systemd, fd {})",
                passed.id.name(),
                passed.addr,
                passed.fd
            );
            acceptor.sockets[passed.id.index()] = Some(passed.listener);
            acceptor.addrs[passed.id.index()] = Some(passed.addr);
        }
        acceptor
    }

    /// An acceptor with no listeners: a worker that is handed its sockets by another.
    pub fn none() -> Self {
        Acceptor {
            sockets: [None, None, None, None],
            addrs: [None; 4],
            inherited: false,
            reserve: None,
            paused_until: None,
            last_warning: None,
            unreported: 0,
        }
    }

    /// Registers every open listener with the poll.
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
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

    /// Accepts from one listener until WouldBlock or `ACCEPT_BUDGET`, pushing each socket
    /// (with `TCP_NODELAY` set) and its peer onto `into`; see the module doc.
    pub fn accept_ready(
        &mut self,
        id: ListenerId,
        now: Instant,
        into: &mut Vec<(TcpStream, SocketAddr)>,
    ) -> Burst {
        if self.paused_until.is_some() {
            return Burst::Drained;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = self.get(id) else {
                return Burst::Drained;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    // Replies are written in batches already; Nagle would only delay the last.
                    if let Err(e) = socket.set_nodelay(true) {
                        debug!("set_nodelay for {peer}: {e}");
                    }
                    into.push((socket, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Burst::Drained,
                Err(e) if is_transient(&e) => debug!("accept: {e} (ignored)"),
                Err(e) => return Burst::Paused(self.on_exhausted(id, &e, now)),
            }
        }
        Burst::BudgetSpent
    }

    /// accept failed with something other than WouldBlock: almost always EMFILE/ENFILE (out of
    /// descriptors) or ENOBUFS/ENOMEM. See the module doc. Returns when to resume.
    /// Over TLS the waiting clients get a plain close: a notice would need a handshake.
    fn on_exhausted(&mut self, id: ListenerId, error: &io::Error, now: Instant) -> Instant {
        self.reserve = None;
        let mut shed = 0;
        let mut notice = Buffer::new();
        if !id.is_tls() {
            handler::write_notice(id.protocol(), Notice::ServerFull, &mut notice);
        }
        if let Some(listener) = self.get(id) {
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
        self.reserve = File::open("/dev/null").ok();
        let resume = now + ACCEPT_PAUSE;
        self.paused_until = Some(resume);

        self.unreported += 1;
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1));
        if due {
            warn!(
                "accept failed: {error} ({} time(s) since the last warning); shed {shed} waiting \
                 connection(s), pausing accepts for {ACCEPT_PAUSE:?}",
                self.unreported
            );
            self.last_warning = Some(now);
            self.unreported = 0;
        }
        resume
    }

    /// The accept pause is over. Returns the open listeners: the loop must look at each
    /// again, since the connections that waited meanwhile raised no new edge.
    pub fn resume(&mut self) -> impl Iterator<Item = ListenerId> + '_ {
        self.paused_until = None;
        ListenerId::ALL
            .into_iter()
            .filter(|id| self.sockets[id.index()].is_some())
    }

    /// Whether the listeners were passed in by a service manager (socket activation): then
    /// they outlive this process, and what waits in their backlog is not its to take.
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    /// Closes every listener: new connects are refused from now on. Inherited ones only
    /// close this process's copy: the service manager's keeps the socket listening, and
    /// new connects wait in its backlog for the next process.
    pub fn close_all(&mut self, registry: &Registry) {
        for slot in &mut self.sockets {
            if let Some(mut listener) = slot.take() {
                let _ = registry.deregister(&mut listener);
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
