//! Accepting connections: until WouldBlock, at most `ACCEPT_BUDGET` per listener per wakeup,
//! and surviving the moment the process runs out of file descriptors.
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

use super::connection::{Connection, State, write_some};
use super::{Server, Timer, token};
use crate::handler::{self, Notice, Protocol, Session, SessionId};

/// Connections accepted per listener per wakeup before the loop goes on to serve the ones it
/// has: a connect storm must not starve established clients. The rest are taken next
/// iteration, without waiting for a new event.
const ACCEPT_BUDGET: usize = 128;

/// How long accepting stops after running out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections accepted over `--max-connections` are told so and given `LINGER` to read it;
/// past this many of them at once, new ones are closed without the courtesy.
const MAX_REJECTING: usize = 1024;

/// Raises the soft limit on open files to the hard limit, so `--max-connections` is not capped
/// by a conservative default. Returns the (soft, hard) limits found before raising.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = (limit.rlim_cur, limit.rlim_max);
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit through a valid pointer to a local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(before)
}

/// Connections the kernel may queue for a listener before `accept` takes them. mio's default
/// is 1024; a load test that opens thousands of connections at once overflows that while the
/// loop serves a wakeup, and the overflowing connects then wait for a SYN retransmit (1 s, then
/// 3 s). The kernel caps it at `net.core.somaxconn` (4096 on current kernels).
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` with `SO_REUSEADDR` (a restart does not wait out
/// TIME_WAIT) and a backlog of `LISTEN_BACKLOG`.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// The two listening sockets, each optional so shutdown can close them.
pub struct Listeners {
    pub line: Option<TcpListener>,
    pub frame: Option<TcpListener>,
    pub line_addr: SocketAddr,
    pub frame_addr: SocketAddr,
    /// The spare descriptor given up on EMFILE.
    reserve: Option<File>,
    /// Accepting is paused until this time after EMFILE.
    paused_until: Option<Instant>,
    /// For rate-limited warnings: when the last one was logged, and failures since.
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Listeners {
    pub fn bind(line: SocketAddr, frame: SocketAddr) -> io::Result<Self> {
        let bind = |addr: SocketAddr, what: &str| {
            listen(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}"))
            })
        };
        let line = bind(line, "lines")?;
        let frame = bind(frame, "frames")?;
        let line_addr = line.local_addr()?;
        let frame_addr = frame.local_addr()?;
        info!("line listener on {line_addr}");
        info!("frame listener on {frame_addr}");
        Ok(Listeners {
            line: Some(line),
            frame: Some(frame),
            line_addr,
            frame_addr,
            reserve: File::open("/dev/null").ok(),
            paused_until: None,
            last_warning: None,
            unreported: 0,
        })
    }

    fn get(&self, protocol: Protocol) -> Option<&TcpListener> {
        match protocol {
            Protocol::Line => self.line.as_ref(),
            Protocol::Frame => self.frame.as_ref(),
        }
    }
}

impl Server {
    /// Accepts from one listener until WouldBlock or the budget; see the module doc.
    pub(super) fn accept_ready(&mut self, protocol: Protocol) {
        if self.listeners.paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = self.listeners.get(protocol) else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer, protocol),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient(&e) => debug!("accept: {e} (ignored)"),
                Err(e) => {
                    self.on_accept_exhausted(protocol, &e);
                    return;
                }
            }
        }
        // Budget spent: more may be waiting, and no new edge will say so.
        self.revisit.push(listener_token(protocol));
    }

    /// Sets up an accepted socket: a connection in the slab, or a refusal if full.
    fn admit(&mut self, socket: TcpStream, peer: SocketAddr, protocol: Protocol) {
        self.stats.accepted += 1;
        // Replies are written in batches already; Nagle would only delay the last one.
        if let Err(e) = socket.set_nodelay(true) {
            debug!("set_nodelay for {peer}: {e}");
        }
        let served = self.connections.len() - self.rejecting;
        let full = served >= self.config.max_connections;
        if full {
            self.stats.rejected_full += 1;
            if self.rejecting >= MAX_REJECTING {
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
        let session = Session::new(protocol, SessionId(conn_token.0 as u64));
        let mut conn = Connection::new(socket, conn_token, session, self.now);
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
                "conn={} accepted from {peer} ({protocol:?})",
                token::show(conn_token)
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
    fn on_accept_exhausted(&mut self, protocol: Protocol, error: &io::Error) {
        self.stats.accept_emfile += 1;
        self.listeners.reserve = None;
        let mut shed = 0;
        let mut notice = crate::buffer::Buffer::new();
        handler::write_notice(protocol, Notice::ServerFull, &mut notice);
        if let Some(listener) = self.listeners.get(protocol) {
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

    /// The accept pause is over: look at both listeners again, since the connections that
    /// waited meanwhile raised no new edge.
    pub(super) fn resume_accept(&mut self) {
        self.listeners.paused_until = None;
        self.revisit.push(token::LINE_LISTENER);
        self.revisit.push(token::FRAME_LISTENER);
    }

    /// Closes both listeners: new connects are refused from now on.
    pub(super) fn close_listeners(&mut self) {
        for listener in [self.listeners.line.take(), self.listeners.frame.take()]
            .into_iter()
            .flatten()
        {
            let mut listener = listener;
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }
}

fn listener_token(protocol: Protocol) -> Token {
    match protocol {
        Protocol::Line => token::LINE_LISTENER,
        Protocol::Frame => token::FRAME_LISTENER,
    }
}

/// accept errors that concern one connection that already went away, not the listener.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    ) || error.kind() == io::ErrorKind::Interrupted
}
