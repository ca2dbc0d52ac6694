//! tcp-reactor: a TCP server whose whole concurrency is one hand-rolled event loop over mio.
//!
//! # Layout
//! - [`config`]: the command line (clap) and `DUR` parsing.
//! - [`auth`]: the users file and argon2id verification.
//! - [`reactor`]: the loop ([`reactor::Server`]): poll, accept, read, execute, write, timers;
//!   closing marks a connection and the turn's end frees it (the liveness rule).
//!   - `reactor::token`: what a mio `Token` means; generations against stale events.
//!   - `reactor::accept`: the acceptor: accept bursts, the per-wakeup cap, surviving EMFILE.
//!   - `reactor::activation`: socket activation: the listeners systemd passes in, checked.
//!   - `reactor::connection`: one connection's socket, buffers and state machine; hides TLS.
//!   - `reactor::fleet`: several loops in one process (`--workers`): placing connections,
//!     the shared limits, chat across workers, summed STATS, the worker threads.
//!   - `reactor::logins`: the blocking-work bridge: login verification on worker threads,
//!     verdicts through the waker.
//!   - `reactor::memory`: the client-memory budget: the ledger, throttling, evictions
//!     largest first, giving freed memory back.
//!   - `reactor::metrics`: `--metrics-addr`: `GET /metrics` for Prometheus, gathered from
//!     the counters when scraped; the loop's busy time and histograms.
//!   - `reactor::tls`: TLS on a non-blocking socket, rustls driven by readiness.
//! - [`net`]: socket helpers shared by the server and the tools: `read_some`, `write_some`,
//!   the listening socket, the open-files limit.
//! - [`buffer`]: the input/output byte buffers and the backpressure marks.
//! - [`timer_wheel`]: the hashed timer wheel behind idle timeouts and close deadlines.
//! - [`protocol`]: the pure codecs: [`protocol::line`] and [`protocol::frame`] (and the PROXY
//!   header, and the HTTP request head of a scrape).
//! - [`handler`]: what each request means: replies, sessions, the chat room.
//! - [`stats`]: the counters shown by `STATS`, each with its kind and HELP for the metrics.
//! - [`load`]: `tcp-load`, the load generator: per-thread mio loops, pipelined batches, latency.
//!   - `load::crew`: the worker threads: spawned with their plans, woken, released, joined.
//!   - `load::pacing`: the main thread's loop: window start, CPU samples, progress line.
//!   - `load::worker`: one thread's loop: connects, batches, replies verified in place.
//!   - `load::stream`: a connection's socket, plain or TLS, behind `receive` and `send`.
//!   - [`load::proxy`]: the PROXY protocol header (v1, v2) a connection sends first, and the
//!     made-up source it names.
//!   - `load::totals`: the workers' reports merged into the summary.
//!   - `load::cpu`: CPU time of tcp-load and of `--server-pid` over the window.
//!   - [`load::report`]: the summary (text, JSON), the percentile table, the progress line.
//!   - [`load::workload`]: what a request is, and how its reply is verified.
//!   - [`load::chat`]: the chat workload: names, SAY lines, pushes parsed and checked in order.
//! - [`client`]: `tcp-client`, a line session or one frame exchange against the server.
//!   - [`client::cli`]: the command line; every usage error is found before connecting.
//!   - [`client::line`]: the line session, plain (two threads) or TLS (one mio loop).
//!   - [`client::exchange`](mod@client::exchange): one request frame, one reply frame,
//!     under one deadline.
//!   - [`client::transport`]: connecting under a deadline, the blocking TLS handshake.
//!   - [`client::error`]: `ClientError`, the one message a failed run prints.
//!   - [`client::tls`]: the TLS flags of both tools and the rustls client config they make.
//!
//! The layers only look downwards: the reactor moves bytes and never matches on a verb, the
//! handler turns requests into replies and never sees a socket, the codecs see only `&[u8]`.

pub mod auth;
pub mod buffer;
pub mod client;
pub mod config;
pub mod handler;
pub mod load;
pub mod net;
pub mod protocol;
pub mod reactor;
pub mod stats;
pub mod timer_wheel;

pub use config::Config;
pub use reactor::{Server, ShutdownHandle};
