//! The blocking-work bridge: password verification on worker threads, verdicts back to the
//! loop through its `mio::Waker`.
//!
//! A reactor must never block, and verifying an argon2id hash takes tens of milliseconds of
//! CPU. So the loop hands each LOGIN to a [`VerifierPool`] as a [`LoginJob`] and goes on
//! serving; a worker verifies it, sends a [`LoginResult`] back through a channel and calls
//! [`mio::Waker::wake`]; the loop's waker event collects every result waiting
//! ([`LoginBridge::next_verdict`]). The same pattern fits any blocking work a reactor must do.
//!
//! Invariants:
//! - One pool serves every loop of the process ([`Logins`]); each job carries the channel
//!   and waker of the loop that submitted it ([`Reply`]), so its verdict goes back there.
//! - At most [`MAX_LOGINS_IN_FLIGHT`] jobs are queued or being verified, all connections of
//!   all loops together; past that a LOGIN is answered "busy" at once ([`Submitted::Busy`]), so a flood
//!   of logins cannot queue minutes of hashing. A connection has at most one job in flight
//!   (it waits in `Verifying`).
//! - Every job submitted gets exactly one [`LoginResult`], even if a worker panics or every
//!   worker is gone: a connection waiting for a verdict is never stranded.
//! - A job's password is overwritten with zeros as soon as it has been verified, or when an
//!   unprocessed job is dropped; no `Debug` output ever shows it.
//! - The workers start at the first LOGIN: a server nobody logs in to runs one thread, and
//!   its socket calls skip the bookkeeping glibc adds once a process has threads.
//!
//! What it refuses to do: it knows nothing of connections or replies. A verdict names a
//! ticket (the connection's token); whether that connection still waits for it is the loop's
//! business.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use log::{debug, error, warn};
use mio::{Token, Waker};

use crate::auth::{Users, wipe};
use crate::handler::Credentials;

/// Logins being verified at once, all connections together. Past this a LOGIN is answered
/// `ERR server busy, try again` at once: a flood of logins must not queue minutes of hashing
/// (each takes tens of milliseconds of a worker's CPU).
pub const MAX_LOGINS_IN_FLIGHT: usize = 256;

/// Worker threads for password hashing: all cores but the loop's, at least one, at most
/// four. They run at a lower priority than the loop, so logins slow down before the other
/// clients do.
fn login_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, 4)
}

/// What became of a LOGIN handed to the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Queued: its verdict comes back through [`LoginBridge::next_verdict`].
    Verifying,
    /// Too many in flight (or no worker could be started): answer "busy" now.
    Busy,
}

/// What every loop of the process shares of the bridge: the users, the one pool of workers
/// (started on first use) and the count of jobs in flight, all loops together.
///
/// Only a LOGIN touches it (a lock to start the pool or queue a job, an atomic for the cap):
/// nothing on the path of any other request.
pub struct Logins {
    users: Arc<Users>,
    pool: Mutex<Option<VerifierPool>>,
    in_flight: AtomicUsize,
}

impl Logins {
    pub fn new(users: Users) -> Arc<Logins> {
        Arc::new(Logins {
            users: Arc::new(users),
            pool: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Takes a slot under `MAX_LOGINS_IN_FLIGHT`; `false`: all are taken.
    fn reserve(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LOGINS_IN_FLIGHT).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Queues `job` on the pool, starting it first if this is the first LOGIN.
    fn queue(&self, job: LoginJob) -> Result<(), LoginJob> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.is_none() {
            match VerifierPool::new(Arc::clone(&self.users), login_threads()) {
                Ok(started) => *pool = Some(started),
                Err(e) => {
                    warn!("cannot start the login workers: {e}");
                    return Err(job);
                }
            }
        }
        match pool.as_ref() {
            Some(pool) => {
                pool.submit(job);
                Ok(())
            }
            None => Err(job),
        }
    }
}

/// One loop's side of the bridge: the shared [`Logins`], and the channel and waker its
/// verdicts come back through.
pub struct LoginBridge {
    shared: Arc<Logins>,
    reply: Reply,
    verdicts: Receiver<LoginResult>,
}

impl LoginBridge {
    pub fn new(shared: Arc<Logins>, waker: Arc<Waker>) -> LoginBridge {
        let (results, verdicts) = mpsc::channel();
        LoginBridge {
            shared,
            reply: Reply { results, waker },
            verdicts,
        }
    }

    /// Hands `credentials` to the workers; the verdict for `ticket` comes back later.
    pub fn submit(&mut self, ticket: Token, credentials: Credentials) -> Submitted {
        if !self.shared.reserve() {
            return Submitted::Busy;
        }
        let job = LoginJob {
            ticket: ticket.0 as u64,
            credentials,
            reply: self.reply.clone(),
        };
        match self.shared.queue(job) {
            Ok(()) => Submitted::Verifying,
            Err(_) => {
                self.shared.release();
                Submitted::Busy
            }
        }
    }

    /// The next verdict waiting, if any: the connection's token and whether the password was
    /// right. Never blocks.
    pub fn next_verdict(&mut self) -> Option<(Token, bool)> {
        let result = self.verdicts.try_recv().ok()?;
        self.shared.release();
        Some((Token(result.ticket as usize), result.ok))
    }
}

/// Where a job's verdict goes: the submitting loop's channel, and its waker.
#[derive(Clone)]
pub struct Reply {
    results: Sender<LoginResult>,
    waker: Arc<Waker>,
}

impl Reply {
    /// Sends the verdict and wakes its loop. A loop that has exited has dropped its
    /// receiver: the verdict has nobody to go to, and that is fine.
    fn send(&self, result: LoginResult) {
        if self.results.send(result).is_err() {
            return;
        }
        if let Err(e) = self.waker.wake() {
            error!("login verifier: wake failed: {e}");
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

/// One login to verify. `ticket` is the caller's; it comes back in the [`LoginResult`]. The
/// password is wiped when the job is dropped, verified or not ([`Credentials`]).
#[derive(Debug)]
pub struct LoginJob {
    pub ticket: u64,
    pub credentials: Credentials,
    pub reply: Reply,
}

/// The answer to one [`LoginJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResult {
    pub ticket: u64,
    pub ok: bool,
}

/// Worker threads verifying logins off the event loops: one pool for the whole process.
///
/// The job queue has no bound of its own: [`Logins`] keeps at most [`MAX_LOGINS_IN_FLIGHT`]
/// jobs queued or running, and a connection has at most one (it waits in `Verifying`), so a
/// client cannot queue a second login behind its first. Each job carries its [`Reply`]: the
/// worker sends the verdict to the loop that submitted it and wakes that loop, which drains
/// its verdicts with [`LoginBridge::next_verdict`].
///
/// Dropping the pool closes the job queue, abandons the jobs still queued (their passwords
/// are wiped as they are dropped), and joins the threads, which waits for at most one
/// verification per thread.
pub struct VerifierPool {
    /// `None` only inside `drop`, to close the queue before joining.
    jobs: Option<Sender<LoginJob>>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

/// How much nicer than the loop the workers run (`nice` +10): when cores are short the
/// scheduler gives the loop its time first, so a burst of logins slows logins, not the
/// other clients.
const WORKER_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority. On Linux `setpriority(PRIO_PROCESS,
/// tid)` applies to one thread. Best effort: a failure leaves the thread at the loop's
/// priority, which is only slower for the others under load.
fn lower_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICENESS)
    };
    if rc != 0 {
        debug!(
            "could not lower a login worker's priority: {}",
            io::Error::last_os_error()
        );
    }
}

impl VerifierPool {
    /// Starts `threads` workers, named `argon2-0`, `argon2-1`, ...; at least one is needed.
    pub fn new(users: Arc<Users>, threads: usize) -> io::Result<VerifierPool> {
        if threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the login verifier pool needs at least one thread",
            ));
        }
        let (jobs, job_rx) = mpsc::channel::<LoginJob>();
        // std's receiver has one owner; the workers take turns at it through the mutex, and
        // only while waiting for a job, never while verifying one.
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut pool = VerifierPool {
            jobs: Some(jobs),
            stopping: Arc::new(AtomicBool::new(false)),
            workers: Vec::with_capacity(threads),
        };
        for n in 0..threads {
            let worker = Worker {
                jobs: Arc::clone(&job_rx),
                users: Arc::clone(&users),
                stopping: Arc::clone(&pool.stopping),
            };
            // On failure `pool` is dropped here, which stops and joins the workers started.
            let handle = thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    lower_priority();
                    worker.run()
                })?;
            pool.workers.push(handle);
        }
        debug!("login verifier pool: {threads} threads");
        Ok(pool)
    }

    /// Queues a job; its verdict goes to the job's [`Reply`].
    pub fn submit(&self, job: LoginJob) {
        let job = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        // Every worker is gone (each would have had to panic outside a verification).
        // Refuse the login rather than leave the caller waiting for ever.
        error!(
            "login verifier pool has no threads left: refusing ticket {}",
            job.ticket
        );
        job.reply.send(LoginResult {
            ticket: job.ticket,
            ok: false,
        });
    }
}

impl Drop for VerifierPool {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.jobs = None;
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                error!("a login verifier thread panicked");
            }
        }
    }
}

/// What one worker thread owns.
struct Worker {
    jobs: Arc<Mutex<Receiver<LoginJob>>>,
    users: Arc<Users>,
    stopping: Arc<AtomicBool>,
}

impl Worker {
    fn run(self) {
        loop {
            // The guard is a temporary: the lock is released before the job is verified.
            let next = self
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            let Ok(mut job) = next else {
                return; // the pool closed the queue
            };
            if self.stopping.load(Ordering::Acquire) {
                return; // `job` and the rest of the queue are dropped, and so wiped
            }
            let verified = panic::catch_unwind(AssertUnwindSafe(|| {
                self.users
                    .verify(&job.credentials.user, &job.credentials.password)
            }));
            wipe(&mut job.credentials.password);
            let ok = verified.unwrap_or_else(|_| {
                error!("login verification panicked: ticket {} refused", job.ticket);
                false
            });
            job.reply.send(LoginResult {
                ticket: job.ticket,
                ok,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cheap_line;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    fn credentials(user: &[u8], password: &[u8]) -> Credentials {
        Credentials {
            user: user.to_vec(),
            password: password.to_vec(),
        }
    }

    #[test]
    fn a_job_never_shows_its_password() {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (results, _verdicts) = mpsc::channel();
        let job = LoginJob {
            ticket: 7,
            credentials: credentials(b"alice", b"hunter2"),
            reply: Reply { results, waker },
        };
        assert_eq!(
            format!("{job:?}"),
            r#"LoginJob { ticket: 7, credentials: Credentials { user: "alice", password: "<hidden>" }, reply: Reply }"#
        );
        assert!(!format!("{job:#?}").contains("hunter2"));
    }

    #[test]
    fn the_pool_answers_every_ticket_and_wakes_the_loop() {
        const WAKE: mio::Token = mio::Token(1);
        let text = format!(
            "{}\n{}",
            cheap_line("alice", b"a-pw"),
            cheap_line("bob", b"b-pw")
        );
        let users = Arc::new(Users::parse(&text).expect("parse"));
        let mut poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).expect("waker"));
        let pool = VerifierPool::new(users, 2).expect("pool");
        let (results_tx, verdicts) = mpsc::channel();
        let reply = Reply {
            results: results_tx,
            waker,
        };

        let jobs: [(u64, &[u8], &[u8], bool); 6] = [
            (1, b"alice", b"a-pw", true),
            (2, b"alice", b"b-pw", false),
            (3, b"bob", b"b-pw", true),
            (4, b"mallory", b"a-pw", false),
            (5, b"\xff", b"a-pw", false),
            (6, b"bob", b"", false),
        ];
        for (ticket, user, password, _) in jobs {
            pool.submit(LoginJob {
                ticket,
                credentials: credentials(user, password),
                reply: reply.clone(),
            });
        }

        let mut results = HashMap::new();
        let mut events = mio::Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(30);
        while results.len() < jobs.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "results so far: {results:?}");
            poll.poll(&mut events, Some(left)).expect("poll");
            if events.iter().any(|e| e.token() == WAKE) {
                while let Ok(result) = verdicts.try_recv() {
                    assert!(results.insert(result.ticket, result.ok).is_none());
                }
            }
        }
        for (ticket, user, _, ok) in jobs {
            assert_eq!(results.get(&ticket), Some(&ok), "ticket {ticket} {user:?}");
        }
        assert!(verdicts.try_recv().is_err());
    }

    #[test]
    fn a_pool_needs_a_thread_and_drops_cleanly_with_work_queued() {
        let users = Arc::new(Users::parse(&cheap_line("alice", b"pw")).expect("parse"));
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let none = VerifierPool::new(Arc::clone(&users), 0);
        assert_eq!(
            none.err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );

        let pool = VerifierPool::new(users, 1).expect("pool");
        let (results, _verdicts) = mpsc::channel();
        let reply = Reply { results, waker };
        let names: Vec<String> = pool
            .workers
            .iter()
            .filter_map(|w| w.thread().name().map(String::from))
            .collect();
        assert_eq!(names, ["argon2-0"]);
        for ticket in 0..50 {
            pool.submit(LoginJob {
                ticket,
                credentials: credentials(b"alice", b"pw"),
                reply: reply.clone(),
            });
        }
        drop(pool); // joins; the jobs still queued are abandoned, and wiped as they drop
    }
}
