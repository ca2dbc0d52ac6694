//! `tcp-client line`: stdin lines to the server, the server's bytes to stdout as they arrive,
//! over plain TCP ([`run_line`]) or TLS ([`run_line_tls`]).
//!
//! # Plain: two threads, one socket
//!
//! Chat pushes (`MSG ann hi`) arrive whenever someone else speaks, also while the user is not
//! typing, so reading the socket cannot wait for stdin. The calling thread reads the socket
//! and copies its bytes to stdout, verbatim and flushed after every read; a second thread
//! forwards stdin to a clone of the socket, one line per write. The session's life is the
//! socket's: at the end of stdin the forwarder half-closes (`shutdown(Write)`), the server
//! answers what it received and closes, and the calling thread returns at that EOF. When the
//! server closes first (`QUIT`, idle timeout, shutdown), the session returns at once, and the
//! forwarder, blocked in a read of stdin that nothing can interrupt, simply ends with the
//! process.
//!
//! # TLS: one thread and a mio loop
//!
//! One TLS session cannot be driven from two threads, so the socket's side becomes one
//! thread and a mio loop over the socket: the stdin thread hands its lines over a bounded
//! channel and wakes the loop; the loop reads (TLS records in, plaintext to stdout) before it
//! writes (queued lines in, records out), and takes a new line only once the previous records
//! have left, so a server that stops reading stops stdin, as the blocked `write` does in
//! plain mode. At the end of stdin it sends `close_notify` and half-closes; the session ends
//! when the server closes (with `close_notify`, or a bare TCP close, taken as the same).
//!
//! # Invariants, both ways
//!
//! - The stdin side is the same thread either way (a `LineSink` says where its lines go): a
//!   last line without a newline gets one, a failure to read stdin is its end, and the end
//!   of stdin is told to the server as a half-close (over TLS after `close_notify`).
//! - The session ends when the server closes, never at the end of stdin; the stdin thread is
//!   never joined.
//! - Connecting (and the handshake) is bounded by [`LINE_CONNECT_TIMEOUT`]; after that
//!   nothing times out: an interactive session may be silent for as long as the server
//!   allows.
//! - The server's bytes are never interpreted, only copied.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread;
use std::time::Duration;

use log::{debug, trace, warn};
use rustls::ClientConnection;

use super::error::{ClientError, io_error};
use super::print;
use super::tls::TlsConfig;
use super::transport::{Deadline, connect, handshake};

/// How long `line` mode waits for the connection to be established (TLS: and the handshake
/// done).
pub const LINE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Over TLS, stdin lines read ahead of the socket at most: past this the stdin thread waits,
/// as it waits in a blocked `write` without TLS.
const LINES_QUEUED: usize = 64;

/// The socket's token in [`run_line_tls`]'s poll.
const SERVER: mio::Token = mio::Token(0);
/// The stdin thread's waker.
const STDIN: mio::Token = mio::Token(1);

/// A line session: `input`'s lines go to the server (from a second thread), the server's
/// bytes go to `output` as they arrive. Returns when the server closes the connection.
///
/// # Errors
///
/// Connecting fails, the connection is reset, or `output` cannot be written.
pub fn run_line<I, O>(addr: &str, input: I, output: &mut O) -> Result<(), ClientError>
where
    I: Read + Send + 'static,
    O: Write,
{
    let stream = connect(addr, &Deadline::after(LINE_CONNECT_TIMEOUT))?;
    let to_server = stream.try_clone().map_err(|source| ClientError::Io {
        doing: "cloning the socket",
        source,
    })?;
    spawn_stdin(input, to_server)?;
    copy_until_eof(stream, output)
}

/// A line session over TLS: what [`run_line`] does, driven by one thread (see the module
/// doc). Returns when the server closes the connection.
///
/// # Errors
///
/// Connecting or the handshake fails, the connection is reset, a TLS error, or `output`
/// cannot be written.
pub fn run_line_tls<I, O>(
    addr: &str,
    tls: &TlsConfig,
    input: I,
    output: &mut O,
) -> Result<(), ClientError>
where
    I: Read + Send + 'static,
    O: Write,
{
    let deadline = Deadline::after(LINE_CONNECT_TIMEOUT);
    let mut socket = connect(addr, &deadline)?;
    let session = handshake(&mut socket, tls, addr, &deadline)?;
    LineSession::start(socket, session, input)?.run(output)
}

/// Where the stdin thread puts each line: straight into the socket (plain), or into the TLS
/// loop's queue.
trait LineSink {
    /// Hands one line over; `false` when it cannot be (the rest of stdin is then not read).
    fn send(&mut self, line: &[u8]) -> bool;
    /// stdin has ended: nothing more is coming.
    fn end(self);
}

/// Plain: one write per line, then a half-close so the server knows nothing more is coming.
impl LineSink for TcpStream {
    fn send(&mut self, line: &[u8]) -> bool {
        match self.write_all(line) {
            Ok(()) => true,
            Err(e) => {
                // The reading side sees the same failure (EOF or reset) and reports it.
                debug!("stdin thread: write to server failed: {e}");
                false
            }
        }
    }

    fn end(self) {
        debug!("end of stdin: shutting down the write side");
        if let Err(e) = self.shutdown(Shutdown::Write) {
            debug!("shutdown(Write): {e}");
        }
    }
}

/// TLS: the bounded queue to the loop, and its waker. `None` is the end of input.
struct LineQueue {
    lines: SyncSender<Option<Vec<u8>>>,
    waker: Arc<mio::Waker>,
}

impl LineSink for LineQueue {
    fn send(&mut self, line: &[u8]) -> bool {
        self.lines.send(Some(line.to_vec())).is_ok() && self.waker.wake().is_ok()
    }

    fn end(self) {
        if self.lines.send(None).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Starts the stdin thread: each line of `input` to `sink`, then `sink.end()` unless the
/// sink refused a line.
fn spawn_stdin<I>(input: I, mut sink: impl LineSink + Send + 'static) -> Result<(), ClientError>
where
    I: Read + Send + 'static,
{
    // Not joined: when the server closes first, this thread may be blocked reading stdin
    // forever, and ends with the process.
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            if each_line(BufReader::new(input), |line| sink.send(line)) {
                sink.end();
            }
        })
        .map(drop)
        .map_err(|source| ClientError::Io {
            doing: "starting the stdin thread",
            source,
        })
}

/// Hands each line of `input` to `send`, adding a `\n` to a last line without one. Returns
/// `false` if `send` refused a line (then the rest is not read), `true` at the end of input
/// (a failure to read stdin is taken as its end).
fn each_line(mut input: impl BufRead, mut send: impl FnMut(&[u8]) -> bool) -> bool {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return true,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if !send(&line) {
                    return false;
                }
            }
            Err(e) => {
                warn!("reading stdin failed, ending input: {e}");
                return true;
            }
        }
    }
}

/// Copies the server's bytes to `output`, flushing after every read so a push shows at once.
fn copy_until_eof(mut stream: TcpStream, output: &mut impl Write) -> Result<(), ClientError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                debug!("server closed the connection");
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("reading from the server", e)),
        };
        print(output, &buf[..n])?;
    }
}

/// How far [`LineSession`]'s writing side has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Taking stdin lines, each once the records before it have left.
    Lines,
    /// stdin has ended: `close_notify` is queued, the half-close follows once it has left.
    Goodbye,
    /// Nothing more will be written: half-closed after `close_notify`, or a write failed.
    Done,
}

/// [`run_line_tls`]'s state: the poll, the socket, its TLS session, and how far writing is.
struct LineSession {
    poll: mio::Poll,
    /// Held here too: a waker dropped by the exiting stdin thread would close its eventfd,
    /// and epoll forgets the pending wakeup of a closed descriptor.
    _waker: Arc<mio::Waker>,
    socket: mio::net::TcpStream,
    session: ClientConnection,
    /// Lines from the stdin thread; `None` is the end of input.
    from_stdin: Receiver<Option<Vec<u8>>>,
    plaintext: Vec<u8>,
    sending: Sending,
}

impl LineSession {
    /// Registers the handshaken `socket` with a new poll and starts the stdin thread.
    fn start<I>(
        socket: TcpStream,
        session: ClientConnection,
        input: I,
    ) -> Result<LineSession, ClientError>
    where
        I: Read + Send + 'static,
    {
        let setup = |doing| move |source| ClientError::Io { doing, source };
        socket
            .set_nonblocking(true)
            .map_err(setup("making the socket non-blocking"))?;
        let mut socket = mio::net::TcpStream::from_std(socket);
        let poll = mio::Poll::new().map_err(setup("creating the poll"))?;
        // Registered once, edge-triggered: each step of `run` goes on until WouldBlock.
        poll.registry()
            .register(
                &mut socket,
                SERVER,
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .map_err(setup("registering the socket"))?;
        let waker =
            Arc::new(mio::Waker::new(poll.registry(), STDIN).map_err(setup("creating a waker"))?);
        let (lines, from_stdin) = std::sync::mpsc::sync_channel(LINES_QUEUED);
        let queue = LineQueue {
            lines,
            waker: Arc::clone(&waker),
        };
        spawn_stdin(input, queue)?;
        Ok(LineSession {
            poll,
            _waker: waker,
            socket,
            session,
            from_stdin,
            plaintext: vec![0u8; 64 * 1024],
            sending: Sending::Lines,
        })
    }

    /// The loop: read, then write, then wait, until the server closes.
    fn run(mut self, output: &mut impl Write) -> Result<(), ClientError> {
        let mut events = mio::Events::with_capacity(8);
        loop {
            // Read before write; both also run before the first poll, for what the handshake
            // left behind.
            if self.read(output)? {
                self.say_goodbye();
                return Ok(());
            }
            self.write();
            match self.poll.poll(&mut events, None) {
                Ok(()) => trace!("wakeup: {} event(s)", events.iter().count()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        doing: "waiting for the socket or stdin",
                        source,
                    });
                }
            }
        }
    }

    /// Reads the socket until WouldBlock, decrypting as it goes and copying the plaintext to
    /// `output`. `Ok(true)` once the server has closed (with `close_notify`, or a bare TCP
    /// close, taken as the same since the server's bytes are printed as they come anyway).
    fn read(&mut self, output: &mut impl Write) -> Result<bool, ClientError> {
        loop {
            let at_eof = match self.session.read_tls(&mut self.socket) {
                Ok(0) => true,
                Ok(n) => {
                    trace!("read {n} TLS bytes");
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("reading from the server", e)),
            };
            if let Err(e) = self.session.process_new_packets() {
                // Tell the server why (the alert rustls queued), best effort.
                let _ = self.session.write_tls(&mut self.socket);
                return Err(ClientError::Tls(e));
            }
            if self.print_plaintext(output)? || at_eof {
                return Ok(true);
            }
        }
    }

    /// Copies all the plaintext rustls holds to `output`, so its buffer never fills.
    /// `Ok(true)` when the server's stream has ended.
    fn print_plaintext(&mut self, output: &mut impl Write) -> Result<bool, ClientError> {
        loop {
            match self.session.reader().read(&mut self.plaintext) {
                Ok(0) => {
                    debug!("server sent close_notify");
                    return Ok(true);
                }
                Ok(n) => print(output, &self.plaintext[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    debug!("server closed the connection without close_notify");
                    return Ok(true);
                }
                Err(e) => return Err(io_error("reading from the server", e)),
            }
        }
    }

    /// Writes the session's records until WouldBlock, taking the next stdin line only once
    /// everything before it has left. At the end of input: `close_notify`, then a half-close.
    /// A failed write stops writing; the read side sees the same failure and reports it.
    fn write(&mut self) {
        while self.sending != Sending::Done {
            while self.session.wants_write() {
                match self.session.write_tls(&mut self.socket) {
                    Ok(n) => trace!("wrote {n} TLS bytes"),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("write to server failed: {e}");
                        self.sending = Sending::Done;
                        return;
                    }
                }
            }
            if self.sending == Sending::Goodbye {
                debug!("end of stdin: close_notify sent, shutting down the write side");
                if let Err(e) = self.socket.shutdown(Shutdown::Write) {
                    debug!("shutdown(Write): {e}");
                }
                self.sending = Sending::Done;
                return;
            }
            match self.from_stdin.try_recv() {
                Ok(Some(line)) => {
                    if let Err(e) = self.session.writer().write_all(&line) {
                        debug!("TLS writer: {e}");
                        self.sending = Sending::Done;
                    }
                }
                // Disconnected without `None`: the stdin thread died; its input has ended.
                Ok(None) | Err(TryRecvError::Disconnected) => {
                    self.session.send_close_notify();
                    self.sending = Sending::Goodbye;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// The server has closed: answer with `close_notify` (if not sent yet), best effort.
    fn say_goodbye(&mut self) {
        if self.sending == Sending::Lines {
            self.session.send_close_notify();
            self.sending = Sending::Goodbye;
        }
        while self.session.wants_write() && self.sending != Sending::Done {
            if self.session.write_tls(&mut self.socket).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what [`each_line`] hands over, refusing after `accept` lines.
    fn lines_of(input: &[u8], accept: usize) -> (bool, Vec<Vec<u8>>) {
        let mut sent = Vec::new();
        let all = each_line(input, |line| {
            if sent.len() == accept {
                return false;
            }
            sent.push(line.to_vec());
            true
        });
        (all, sent)
    }

    #[test]
    fn each_line_is_handed_over_with_its_newline() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"", &[]),
            (b"PING\n", &[b"PING\n"]),
            (b"PING", &[b"PING\n"]),
            (
                b"ping x\r\nhello\nPING",
                &[b"ping x\r\n", b"hello\n", b"PING\n"],
            ),
            (b"\n\n", &[b"\n", b"\n"]),
        ];
        for (input, lines) in cases {
            assert_eq!(
                lines_of(input, usize::MAX),
                (true, lines.iter().map(|l| l.to_vec()).collect()),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_refused_line_stops_the_input() {
        assert_eq!(lines_of(b"a\nb\nc\n", 1), (false, vec![b"a\n".to_vec()]));
    }
}
