//! Socket helpers shared by the server and the tools: the one module both sides import.
//!
//! What lives here is plain socket plumbing with no policy of its own: a `read` or `write`
//! that reports WouldBlock as an outcome rather than an error, the listening socket's options,
//! and the open-files limit. Everything that decides *when* to read or write stays with the
//! caller (the reactor, tcp-load's worker loops, tcp-client).

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Socket, Type};

/// One `read`, retried on EINTR. `Ok(None)` is WouldBlock: the socket is drained.
pub fn read_some(socket: &mut TcpStream, into: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match sys::recv(socket, into) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One `write`, retried on EINTR. `Ok(None)` is WouldBlock: the socket buffer is full.
pub fn write_some(socket: &mut TcpStream, bytes: &[u8]) -> io::Result<Option<usize>> {
    loop {
        match sys::send(socket, bytes) {
            Ok(0) if !bytes.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "socket took no bytes",
                ));
            }
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The two calls of the request path, made as raw system calls on Linux.
///
/// Why not the socket's `Read`/`Write` (glibc's `recv`/`send`): those are POSIX cancellation
/// points, and once a process has a second thread (a second worker, or the login pool) glibc
/// turns asynchronous cancellation on and off around every one of them. That is 6 of the
/// 155 user-space instructions of a Heartbeat with `--workers 2` (callgrind); nothing here
/// ever cancels a thread, so the raw call does the same work without them. The calls and
/// flags are the ones std makes (`recvfrom` with no flags, `sendto` with `MSG_NOSIGNAL`), so
/// `strace` shows the same names either way.
#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::os::fd::AsRawFd;

    use mio::net::TcpStream;

    pub fn recv(socket: &TcpStream, into: &mut [u8]) -> io::Result<usize> {
        let fd = libc::c_long::from(socket.as_raw_fd());
        // Every argument is passed as a full register (`c_long`, `usize`, pointers): the
        // variadic `syscall` leaves the upper half of a narrower one undefined.
        // SAFETY: recvfrom writes at most `into.len()` bytes into `into`, which is valid and
        // exclusively borrowed for the call; the address arguments are null (not wanted).
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                fd,
                into.as_mut_ptr(),
                into.len(),
                0 as libc::c_long,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    pub fn send(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
        let fd = libc::c_long::from(socket.as_raw_fd());
        // SAFETY: sendto reads at most `bytes.len()` bytes from `bytes`, valid for the call;
        // no destination address (a connected socket), so a null pointer and length 0.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                bytes.as_ptr(),
                bytes.len(),
                libc::c_long::from(libc::MSG_NOSIGNAL),
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::c_long,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;

    use mio::net::TcpStream;

    pub fn recv(mut socket: &TcpStream, into: &mut [u8]) -> io::Result<usize> {
        socket.read(into)
    }

    pub fn send(mut socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
        socket.write(bytes)
    }
}

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
/// TIME_WAIT) and a backlog of `LISTEN_BACKLOG`. With `reuse_port`, also `SO_REUSEPORT`:
/// several sockets of this process (one per worker) then listen on the same address, each
/// with its own backlog, and the kernel gives each new connection to one of them by a hash
/// of its addresses.
pub fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}
