//! The worker threads as the main thread holds them: spawned, each with its plan; woken once
//! the measured window is set; released to close their sockets once the CPU clocks are read;
//! joined.
//!
//! # Invariants
//!
//! - Every worker gets the run's plan but for its index and its share of `--requests` (N
//!   split evenly: the first `N mod T` threads take one more).
//! - The crew keeps no sender of the workers' channel: once every worker has sent `Done` or
//!   died, [`Crew::messages`] disconnects, so the main thread never waits on a dead worker.
//! - A worker closes its sockets only after [`Crew::release_and_join`] has dropped its
//!   release channel.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use log::warn;
use mio::Waker;

use super::worker::{Message, Plan, Shared, Worker};

/// The running workers, and the ends of their channels the main thread holds.
pub(super) struct Crew {
    messages: Receiver<Message>,
    wakers: Vec<Arc<Waker>>,
    releases: Vec<Sender<()>>,
    handles: Vec<JoinHandle<()>>,
}

impl Crew {
    /// Spawns `base.threads` workers, each on `base` with its own `thread` and its share of
    /// `requests`.
    ///
    /// # Errors
    ///
    /// A worker's poll or thread could not be made (the workers already spawned are let go).
    pub fn spawn(base: &Plan, requests: Option<u64>, shared: &Arc<Shared>) -> io::Result<Crew> {
        let threads = base.threads;
        let (to_main, messages) = mpsc::channel();
        let mut crew = Crew {
            messages,
            wakers: Vec::with_capacity(threads),
            releases: Vec::with_capacity(threads),
            handles: Vec::with_capacity(threads),
        };
        for thread in 0..threads {
            let plan = Plan {
                thread,
                budget: requests.map(|n| share(n, thread, threads)),
                ..base.clone()
            };
            let (release, released) = mpsc::channel::<()>();
            let worker = Worker::new(plan, Arc::clone(shared), to_main.clone(), released)?;
            crew.wakers.push(worker.waker());
            crew.releases.push(release);
            crew.handles.push(
                thread::Builder::new()
                    .name(format!("tcp-load-{thread}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(crew)
    }

    /// What the workers say: connects resolved, snapshots, reports.
    pub fn messages(&self) -> &Receiver<Message> {
        &self.messages
    }

    /// Wakes every worker from its `poll` (after the window start is set).
    pub fn wake_all(&self) {
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    /// Lets the workers close their sockets, and waits for them to end.
    pub fn release_and_join(self) {
        drop(self.releases);
        for handle in self.handles {
            if handle.join().is_err() {
                warn!("a worker thread panicked");
            }
        }
    }
}

/// Thread `thread`'s share of `total` requests over `threads`.
fn share(total: u64, thread: usize, threads: usize) -> u64 {
    let (thread, threads) = (thread as u64, threads as u64);
    total / threads + u64::from(thread < total % threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_shared_evenly_and_add_up() {
        let shares: Vec<u64> = (0..4).map(|t| share(10, t, 4)).collect();
        assert_eq!(shares, [3, 3, 2, 2]);
        assert_eq!((0..3).map(|t| share(3, t, 3)).sum::<u64>(), 3);
        assert_eq!(share(7, 0, 1), 7);
    }
}
