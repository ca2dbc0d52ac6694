//! Socket activation: serving on listening sockets a service manager bound and passed in,
//! by systemd's `sd_listen_fds` protocol, instead of binding the configured addresses.
//!
//! The protocol (sd_listen_fds(3)): the manager starts the process with the sockets open as
//! descriptors `3 .. 3 + n` and three variables in its environment:
//!
//! ```text
//! LISTEN_PID=<pid of the process meant>   not ours: the variables were meant for a parent,
//!                                         and are ignored (our own addresses are bound)
//! LISTEN_FDS=<n>                          how many descriptors, from 3
//! LISTEN_FDNAMES=line:frame               one name per descriptor, in order, `:` between
//! ```
//!
//! The names map the descriptors to listeners: `line`, `frame`, `line-tls`, `frame-tls`
//! (systemd's `FileDescriptorName=`, one per socket unit). Each is checked to be a listening
//! TCP stream socket, then made non-blocking and close-on-exec.
//!
//! Why this is not in `net`: net holds plumbing with no policy that the tools share; this is
//! the server's startup policy (which names exist, what counts as an error) and produces the
//! reactor's [`ListenerId`]s, so it lives beside the [`Acceptor`](super::accept::Acceptor)
//! that takes its result.
//!
//! Invariants and refusals:
//! - Only the listeners passed are served: a socket unit that passes `line` alone gets no
//!   frame listener, rather than one bound on the default port beside it by surprise.
//! - Every inconsistency is a startup error, never a guess: an unknown or repeated name, a
//!   count that does not match the names, a descriptor that is not a listening TCP socket, a
//!   TLS listener without `--tls-cert`/`--tls-key`, or `--balance reuseport` (each worker
//!   would need a socket of its own, and the manager passes one per address).
//! - The variables are read and unset once, before any thread exists ([`Environment::take`]):
//!   the programs this one may start must not inherit them, and `remove_var` is only sound
//!   while no other thread can read the environment.
//! - The sockets outlive this process: the manager holds its own copies. So a shutdown only
//!   closes this process's copies and leaves what waits in the backlog to the next process
//!   (see `Server::begin_shutdown`).

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use log::info;
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::accept::ListenerId;
use crate::config::{Balance, Config};

/// The first descriptor passed (`SD_LISTEN_FDS_START`): 0, 1 and 2 are stdio.
pub const FIRST_FD: RawFd = 3;

/// The protocol's variables as this process found them; unset once read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    pid: Option<String>,
    fds: Option<String>,
    names: Option<String>,
}

impl Environment {
    /// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` and removes them from the
    /// environment, as `sd_listen_fds(1)` does: a program started later must not take them
    /// for its own.
    ///
    /// # Safety
    ///
    /// No other thread may exist (or at least none that reads or writes the environment):
    /// call it first thing in `main`. See [`std::env::remove_var`].
    pub unsafe fn take() -> Environment {
        let read = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let environment = Environment {
            pid: read("LISTEN_PID"),
            fds: read("LISTEN_FDS"),
            names: read("LISTEN_FDNAMES"),
        };
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: the caller promises that no other thread exists.
            unsafe { std::env::remove_var(name) };
        }
        environment
    }

    /// Values as given, for tests.
    pub fn from_values(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Self {
        Environment {
            pid: pid.map(str::to_owned),
            fds: fds.map(str::to_owned),
            names: names.map(str::to_owned),
        }
    }
}

/// Why the passed sockets cannot be served: each is a startup error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationError {
    /// `LISTEN_FDS` (or `LISTEN_PID`) is not a number.
    BadNumber {
        var: &'static str,
        value: String,
    },
    /// Descriptors were passed with no `LISTEN_FDNAMES`: nothing says which is which.
    NoNames {
        fds: usize,
    },
    NamesMismatch {
        fds: usize,
        names: usize,
    },
    UnknownName {
        fd: RawFd,
        name: String,
    },
    DuplicateName {
        name: String,
    },
    NotListening {
        fd: RawFd,
        name: String,
        why: String,
    },
    TlsWithoutCertificate {
        name: String,
    },
    Reuseport,
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: &str = "line, frame, line-tls or frame-tls";
        match self {
            ActivationError::BadNumber { var, value } => {
                write!(f, "{var}={value:?} is not a number")
            }
            ActivationError::NoNames { fds } => write!(
                f,
                "LISTEN_FDS={fds} but no LISTEN_FDNAMES: name each socket ({NAMES}) with \
                 FileDescriptorName="
            ),
            ActivationError::NamesMismatch { fds, names } => write!(
                f,
                "LISTEN_FDS={fds} but LISTEN_FDNAMES has {names} name(s): one per descriptor"
            ),
            ActivationError::UnknownName { fd, name } => {
                write!(f, "fd {fd} is named {name:?}: expected {NAMES}")
            }
            ActivationError::DuplicateName { name } => {
                write!(
                    f,
                    "two descriptors are named {name:?}: one socket per listener"
                )
            }
            ActivationError::NotListening { fd, name, why } => {
                write!(f, "fd {fd} ({name}) is not a listening TCP socket: {why}")
            }
            ActivationError::TlsWithoutCertificate { name } => write!(
                f,
                "a {name} socket was passed, but TLS needs --tls-cert and --tls-key"
            ),
            ActivationError::Reuseport => write!(
                f,
                "--balance reuseport needs a listener per worker, and the service manager \
                 passes one socket per address: use --balance least-conn (the default)"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

/// What the variables say, before any descriptor is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No `LISTEN_PID`, no `LISTEN_FDS`, or `LISTEN_FDS=0`: bind the configured addresses.
    NotActivated,
    /// `LISTEN_PID` names another process: the variables were not for us, and are ignored.
    NotOurs { pid: String },
    /// Serve these descriptors, each as the listener it is named for.
    Passed(Vec<(RawFd, ListenerId)>),
}

/// Reads the variables as `sd_listen_fds_with_names` does, and maps the names to listeners.
/// Pure: no descriptor is looked at.
pub fn plan(environment: &Environment, own_pid: u32) -> Result<Plan, ActivationError> {
    let Some(pid) = &environment.pid else {
        return Ok(Plan::NotActivated);
    };
    if pid.trim().parse::<u32>().ok() != Some(own_pid) {
        return Ok(Plan::NotOurs { pid: pid.clone() });
    }
    let Some(fds) = &environment.fds else {
        return Ok(Plan::NotActivated);
    };
    let count: usize = fds.trim().parse().map_err(|_| ActivationError::BadNumber {
        var: "LISTEN_FDS",
        value: fds.clone(),
    })?;
    if count == 0 {
        return Ok(Plan::NotActivated);
    }
    let Some(names) = &environment.names else {
        return Err(ActivationError::NoNames { fds: count });
    };
    let names: Vec<&str> = names.split(':').collect();
    if names.len() != count {
        return Err(ActivationError::NamesMismatch {
            fds: count,
            names: names.len(),
        });
    }
    let mut passed: Vec<(RawFd, ListenerId)> = Vec::with_capacity(count);
    for (fd, name) in (FIRST_FD..).zip(names) {
        let id = listener_named(name).ok_or_else(|| ActivationError::UnknownName {
            fd,
            name: name.to_owned(),
        })?;
        if passed.iter().any(|&(_, seen)| seen == id) {
            return Err(ActivationError::DuplicateName {
                name: name.to_owned(),
            });
        }
        passed.push((fd, id));
    }
    Ok(Plan::Passed(passed))
}

/// The listener a `FileDescriptorName=` stands for.
pub fn listener_named(name: &str) -> Option<ListenerId> {
    ListenerId::ALL
        .into_iter()
        .find(|id| id.activation_name() == name)
}

/// One listening socket handed over by the service manager.
#[derive(Debug)]
pub struct Passed {
    pub id: ListenerId,
    pub fd: RawFd,
    pub addr: SocketAddr,
    pub listener: TcpListener,
}

/// The listeners the service manager passed, checked and ready for the poll.
#[derive(Debug)]
pub struct Inherited {
    passed: Vec<Passed>,
}

impl Inherited {
    pub fn into_passed(self) -> Vec<Passed> {
        self.passed
    }

    pub fn ids(&self) -> impl Iterator<Item = ListenerId> + '_ {
        self.passed.iter().map(|p| p.id)
    }
}

/// The listeners to serve if this process was socket-activated, checked against the
/// configuration; `None`: bind the configured addresses. Takes ownership of the descriptors
/// named by the variables.
pub fn inherit(
    environment: &Environment,
    config: &Config,
) -> Result<Option<Inherited>, ActivationError> {
    let passed = match plan(environment, std::process::id())? {
        Plan::NotActivated => return Ok(None),
        Plan::NotOurs { pid } => {
            info!(
                "LISTEN_PID={pid} is not this process ({}): LISTEN_FDS ignored, binding the \
                 configured addresses",
                std::process::id()
            );
            return Ok(None);
        }
        Plan::Passed(passed) => passed,
    };
    let tls = config.tls_cert.is_some() && config.tls_key.is_some();
    if let Some(&(_, id)) = passed.iter().find(|(_, id)| id.is_tls() && !tls) {
        return Err(ActivationError::TlsWithoutCertificate {
            name: id.activation_name().to_owned(),
        });
    }
    if config.balance == Balance::Reuseport && config.workers.count() > 1 {
        return Err(ActivationError::Reuseport);
    }
    let passed = passed
        .into_iter()
        .map(|(fd, id)| adopt(fd, id))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<&str> = passed.iter().map(|p| p.id.name()).collect();
    info!(
        "socket activation: serving only the {} passed listener(s) ({}); the configured \
         addresses are not bound",
        passed.len(),
        names.join(", ")
    );
    Ok(Some(Inherited { passed }))
}

/// Takes descriptor `fd` as the listener `id`: checks that it is open and a listening TCP
/// stream socket, then sets it non-blocking and close-on-exec.
fn adopt(fd: RawFd, id: ListenerId) -> Result<Passed, ActivationError> {
    let name = id.activation_name();
    let refuse = |why: String| ActivationError::NotListening {
        fd,
        name: name.to_owned(),
        why,
    };
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF if `fd` is not
    // open, which must be known before anything takes ownership of it.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(refuse(format!(
            "not open ({})",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is open, and the protocol hands it to this process alone: nothing else
    // here owns it (each passed number is taken once, `plan` refuses repeated names and
    // the numbers are distinct).
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let check = |socket: &Socket| -> std::io::Result<Result<(), String>> {
        let domain = socket.domain()?;
        if domain != Domain::IPV4 && domain != Domain::IPV6 {
            return Ok(Err(format!("address family {domain:?}, not IPv4 or IPv6")));
        }
        if socket.r#type()? != Type::STREAM {
            return Ok(Err("not a stream socket".into()));
        }
        if socket.protocol()?.is_some_and(|p| p != Protocol::TCP) {
            return Ok(Err("not TCP".into()));
        }
        if !socket.is_listener()? {
            return Ok(Err("not listening (no listen() was called on it)".into()));
        }
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(Ok(()))
    };
    match check(&socket) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(refuse(why)),
        // ENOTSOCK and the like: a file, a pipe, a terminal.
        Err(e) => return Err(refuse(e.to_string())),
    }
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .ok_or_else(|| refuse("it has no IP address".into()))?;
    let listener = TcpListener::from_std(socket.into());
    Ok(Passed {
        id,
        fd,
        addr,
        listener,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;

    fn plan_of(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Plan {
        plan(&Environment::from_values(pid, fds, names), PID).expect("a plan")
    }

    fn error_of(fds: &str, names: Option<&str>) -> ActivationError {
        plan(
            &Environment::from_values(Some("4242"), Some(fds), names),
            PID,
        )
        .expect_err("an error")
    }

    #[test]
    fn names_map_to_listeners_from_fd_3_in_order() {
        use ListenerId::*;
        type Passed = &'static [(RawFd, ListenerId)];
        let cases: [(&str, &str, Passed); 3] = [
            ("1", "frame", &[(3, Frame)]),
            ("2", "line:frame", &[(3, Line), (4, Frame)]),
            (
                "4",
                "frame-tls:line:line-tls:frame",
                &[(3, FrameTls), (4, Line), (5, LineTls), (6, Frame)],
            ),
        ];
        for (fds, names, expected) in cases {
            assert_eq!(
                plan_of(Some("4242"), Some(fds), Some(names)),
                Plan::Passed(expected.to_vec()),
                "{fds} {names}"
            );
        }
    }

    #[test]
    fn variables_for_another_process_or_none_at_all_are_not_activation() {
        assert_eq!(plan_of(None, None, None), Plan::NotActivated);
        assert_eq!(
            plan_of(None, Some("2"), Some("line:frame")),
            Plan::NotActivated
        );
        assert_eq!(
            plan_of(Some("1"), Some("2"), Some("line:frame")),
            Plan::NotOurs { pid: "1".into() }
        );
        // Not even a number: still not ours, as sd_listen_fds treats a PID it cannot match.
        assert_eq!(
            plan_of(Some("x"), Some("bogus"), None),
            Plan::NotOurs { pid: "x".into() }
        );
        assert_eq!(plan_of(Some("4242"), None, None), Plan::NotActivated);
        assert_eq!(plan_of(Some("4242"), Some("0"), None), Plan::NotActivated);
    }

    #[test]
    fn inconsistent_variables_are_errors() {
        let cases = [
            (
                "two",
                Some("line:frame"),
                ActivationError::BadNumber {
                    var: "LISTEN_FDS",
                    value: "two".into(),
                },
            ),
            ("2", None, ActivationError::NoNames { fds: 2 }),
            (
                "2",
                Some("line"),
                ActivationError::NamesMismatch { fds: 2, names: 1 },
            ),
            (
                "1",
                Some("line:frame"),
                ActivationError::NamesMismatch { fds: 1, names: 2 },
            ),
            (
                "2",
                Some("line:http"),
                ActivationError::UnknownName {
                    fd: 4,
                    name: "http".into(),
                },
            ),
            (
                "1",
                Some(""),
                ActivationError::UnknownName {
                    fd: 3,
                    name: String::new(),
                },
            ),
            (
                "2",
                Some("line:line"),
                ActivationError::DuplicateName {
                    name: "line".into(),
                },
            ),
        ];
        for (fds, names, expected) in cases {
            assert_eq!(error_of(fds, names), expected, "{fds} {names:?}");
        }
    }

    #[test]
    fn every_listener_has_a_name_and_it_maps_back() {
        for id in ListenerId::ALL {
            assert_eq!(listener_named(id.activation_name()), Some(id));
        }
        assert_eq!(listener_named("LINE"), None);
    }

    #[test]
    fn a_descriptor_that_is_not_a_listening_tcp_socket_is_refused() {
        use std::os::fd::IntoRawFd;
        // A connected (not listening) TCP socket, a UDP socket and a file.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let connected =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let fds = [
            connected.into_raw_fd(),
            udp.into_raw_fd(),
            file.into_raw_fd(),
        ];
        for fd in fds {
            // `adopt` owns the descriptor from here, and closes it when refusing.
            let error = adopt(fd, ListenerId::Line).expect_err("refused");
            assert!(
                matches!(error, ActivationError::NotListening { fd: f, .. } if f == fd),
                "{error}"
            );
        }
        let fd = listener.into_raw_fd();
        let passed = adopt(fd, ListenerId::Frame).expect("a listening TCP socket");
        assert_eq!((passed.id, passed.fd), (ListenerId::Frame, fd));
        // SAFETY: F_GETFD reads the flags of a descriptor `passed` owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
