//! The same two protocols served the way most Rust users would write it: tokio.
//!
//! This is the comparison server the benchmark figures call "the tokio server". It is meant to
//! be an honest, idiomatic tokio program, not a strawman and not a tuned one:
//!
//! - `#[tokio::main(flavor = "current_thread")]`: one thread, like tcp-reactor, so the
//!   comparison is event loop against event loop and not one core against several;
//! - one task per connection (`tokio::spawn`), the stream `split` into a `BufReader` and a
//!   `BufWriter` with their default 8 KiB buffers;
//! - lines with `read_until(b'\n')` into a reused `Vec`, frames with `read_exact`;
//! - replies are written into the `BufWriter` and flushed only when the `BufReader` holds no
//!   further complete request, so a pipelined batch read in one `read` is answered with one
//!   `write`, as tcp-reactor does;
//! - `TCP_NODELAY` on every accepted socket.
//!
//! It answers the subset of docs/PROTOCOL.md the benchmarks use:
//!
//! ```text
//! line  (--line-addr)   PING -> PONG, PING <x> -> PONG <x>, any other line echoed
//! frame (--frame-addr)  Heartbeat -> same frame, Message B -> Message "Server says: " + B,
//!                       Login -> LoginAck "OK"; anything invalid closes the connection
//! ```
//!
//! with tcp-reactor's limits (`--max-line`, `--max-frame`) but none of its other features: no
//! chat room, no STATS, no idle timeout, no connection limit, no Error frames, no graceful
//! drain (SIGINT/SIGTERM end the process at once, with exit status 0).
//!
//! ```text
//! cargo run --release --example tokio_server -- --line-addr 127.0.0.1:0 --frame-addr 127.0.0.1:0
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Command line: the listener addresses and limits of tcp-reactor, with its defaults.
#[derive(Parser, Debug, Clone, Copy)]
#[command(about = "tokio comparison server: line and frame protocols, one task per connection")]
struct Args {
    /// Address of the line protocol listener; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    line_addr: SocketAddr,

    /// Address of the frame protocol listener; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8888")]
    frame_addr: SocketAddr,

    /// Longest accepted line in bytes, not counting the line ending.
    #[arg(long = "max-line", value_name = "BYTES", default_value_t = 65_536)]
    max_line_bytes: usize,

    /// Largest accepted frame body in bytes (10 MiB).
    #[arg(long = "max-frame", value_name = "BYTES", default_value_t = 10_485_760)]
    max_frame_bytes: u32,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Line,
    Frame,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let args = Args::parse();

    let line_listener = TcpListener::bind(args.line_addr).await?;
    let frame_listener = TcpListener::bind(args.frame_addr).await?;
    eprintln!("line listener on {}", line_listener.local_addr()?);
    eprintln!("frame listener on {}", frame_listener.local_addr()?);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    // Returning from main drops the runtime, and with it every connection task.
    tokio::select! {
        () = accept_loop(line_listener, Protocol::Line, args) => {}
        () = accept_loop(frame_listener, Protocol::Frame, args) => {}
        _ = sigint.recv() => eprintln!("SIGINT: exiting"),
        _ = sigterm.recv() => eprintln!("SIGTERM: exiting"),
    }
    Ok(())
}

/// Accepts forever, one spawned task per connection.
async fn accept_loop(listener: TcpListener, protocol: Protocol, args: Args) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and the like: retrying at once would spin, so back off a little.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            // A peer's reset or a protocol error ends only its own connection; nothing to
            // report, and printing per connection would perturb the benchmark.
            let _ = match protocol {
                Protocol::Line => serve_lines(stream, args.max_line_bytes).await,
                Protocol::Frame => serve_frames(stream, args.max_frame_bytes).await,
            };
        });
    }
}

/// Line protocol: one request per `\n`, one trailing `\r` dropped.
///
/// ```text
/// PING       -> PONG
/// PING <x>   -> PONG <x>     (verb matched ASCII case-insensitively)
/// other      -> other
/// too long   -> ERR line too long, then close
/// ```
async fn serve_lines(mut stream: TcpStream, max_line_bytes: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.split();
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(write_half);
    let mut line = Vec::new();

    loop {
        line.clear();
        // `take` bounds the memory one line may use: the longest acceptable line is
        // max + 2 bytes with its `\r\n`.
        let limit = max_line_bytes as u64 + 2;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?;
        if line.last() != Some(&b'\n') {
            if n as u64 == limit {
                writer.write_all(b"ERR line too long\n").await?;
            }
            // Otherwise EOF, possibly inside an unfinished line, which is dropped.
            break;
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > max_line_bytes {
            writer.write_all(b"ERR line too long\n").await?;
            break;
        }

        if is_ping(&line) {
            writer.write_all(b"PONG").await?;
            writer.write_all(&line[4..]).await?;
        } else {
            writer.write_all(&line).await?;
        }
        writer.write_all(b"\n").await?;

        // One write per batch: flush only when no further complete line is already buffered.
        if !reader.buffer().contains(&b'\n') {
            writer.flush().await?;
        }
    }
    writer.flush().await
}

/// `PING` alone or followed by a space; the verb is ASCII case-insensitive.
fn is_ping(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"PING")
        && line.get(4).is_none_or(|&b| b == b' ')
}

/// Frame header: magic 0x474F ("GO"), version 1, command, u32 body length, big-endian.
const HEADER_LEN: usize = 8;
const MAGIC: [u8; 2] = *b"GO";
const VERSION: u8 = 1;
const HEARTBEAT: u8 = 0;
const MESSAGE: u8 = 1;
const LOGIN: u8 = 2;
const LOGIN_ACK: u8 = 3;
const MESSAGE_PREFIX: &[u8] = b"Server says: ";

/// Frame protocol: Heartbeat echoed, Message prefixed, Login acknowledged; anything else
/// (bad magic or version, a server-only or unknown command, a body over the limit) flushes
/// the replies owed and closes.
async fn serve_frames(mut stream: TcpStream, max_frame_bytes: u32) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.split();
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(write_half);
    let mut header = [0u8; HEADER_LEN];
    let mut body = Vec::new();

    loop {
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            // EOF between frames or inside one: an unfinished frame is dropped.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if header[0..2] != MAGIC || header[2] != VERSION || len > max_frame_bytes {
            break;
        }
        body.resize(len as usize, 0);
        match reader.read_exact(&mut body).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }

        match header[3] {
            HEARTBEAT => {
                writer.write_all(&header).await?;
                writer.write_all(&body).await?;
            }
            MESSAGE => {
                let Ok(reply_len) = u32::try_from(MESSAGE_PREFIX.len() + body.len()) else {
                    break;
                };
                writer.write_all(&reply_header(MESSAGE, reply_len)).await?;
                writer.write_all(MESSAGE_PREFIX).await?;
                writer.write_all(&body).await?;
            }
            LOGIN => {
                writer.write_all(&reply_header(LOGIN_ACK, 2)).await?;
                writer.write_all(b"OK").await?;
            }
            _ => break,
        }

        // One write per batch: flush only when no further complete frame is already buffered.
        if !frame_buffered(reader.buffer()) {
            writer.flush().await?;
        }
    }
    writer.flush().await
}

fn reply_header(command: u8, len: u32) -> [u8; HEADER_LEN] {
    let [a, b, c, d] = len.to_be_bytes();
    [MAGIC[0], MAGIC[1], VERSION, command, a, b, c, d]
}

/// Whether `buffered` starts with a whole frame (header and body). A bad header counts as
/// whole too when its length is small: the next read refuses it and the flush at the end
/// delivers what is owed.
fn frame_buffered(buffered: &[u8]) -> bool {
    let Some(header) = buffered.get(..HEADER_LEN) else {
        return false;
    };
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    buffered.len() - HEADER_LEN >= len
}
