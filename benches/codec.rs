//! Codec throughput: how fast the pure codecs turn buffered bytes into requests, and replies
//! into bytes, with no socket and no handler in the way.
//!
//! # What is measured
//!
//! Four request streams, each one buffer of pipelined requests as a busy client would send:
//!
//! ```text
//! stream          requests   one request                       bytes
//! ping            1000       "PING\n"                          5 000
//! echo_64B        1000       63 bytes of text + "\n"           64 000
//! heartbeat_16B   1000       8-byte header + 16-byte body      24 000
//! message_4KiB     100       8-byte header + 4096-byte body    410 400
//! ```
//!
//! - `line_decode` / `frame_decode`, `whole`: the stream in one buffer, decoded request by
//!   request (`line::decode` + `line::parse`, or `frame::decode`) until it is used up: the
//!   best case, one `read` that holds the whole batch.
//! - `.../split_7B`: the same stream as the reactor sees it when every read ends in the middle
//!   of a request: it arrives 7 bytes at a time, and each chunk goes through the reactor's own
//!   steps (`Server::execute`): decode straight from the chunk while nothing is carried over,
//!   otherwise append the chunk to the carried tail (a [`Buffer`], as the connection's input)
//!   and decode again from the start of that tail. So every chunk costs at least one
//!   `Incomplete` answer, and a line is rescanned for its `\n` once per chunk: the worst case.
//! - `line_encode` / `frame_encode`: replies to the same streams built into one reused `Vec`.
//!   Lines as the handler builds them: `PONG\n` is a constant, an echo is one copy of the line
//!   as received. Frames with `frame::encode_header` + body: the Heartbeat as a client builds
//!   one (the server echoes a Heartbeat's bytes as received, a plain copy), and the Message
//!   reply, header + `Server says: ` + body, as the server builds it.
//!
//! # How to read the numbers
//!
//! Every benchmark reports the time for the whole stream and two throughputs: `elem/s` is
//! requests (or replies) per second, the bytes figure is stream (or reply) bytes per second.
//! Divide the time by the request count for the cost of one request, and compare it with what
//! the kernel's TCP work costs per request at pipeline 16 on a 2-core loopback machine, about
//! 0.55-0.6 µs (`read` + `write` + `epoll_wait` in a bare C epoll loop): the codecs should be
//! a small fraction of that. `whole` against `split_7B` is the price of unlucky segmentation.
//! `frame::decode` never looks at a body, so `message_4KiB/whole` shows absurd byte rates;
//! its `split_7B` pays for copying the body into the carried tail 7 bytes at a time.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tcp_reactor::buffer::Buffer;
use tcp_reactor::protocol::frame::{self, Command as FrameCommand, HEADER_LEN};
use tcp_reactor::protocol::line::{self, Command as LineCommand};
use tcp_reactor::protocol::{Decoded, ProtocolError};

/// The server's defaults (`--max-line`, `--max-frame`).
const MAX_LINE: usize = 65_536;
const MAX_FRAME: u32 = 10_485_760;

/// The read size of the split benchmarks. 7 shares no factor with the request lengths (5, 64,
/// 24, 4104), so a read ends exactly between two requests only once every 7 requests.
const CHUNK: usize = 7;

/// One request stream: its name, bytes and request count.
struct Stream {
    name: &'static str,
    bytes: Vec<u8>,
    requests: u64,
}

impl Stream {
    fn throughput(&self) -> Throughput {
        Throughput::ElementsAndBytes {
            elements: self.requests,
            bytes: self.bytes.len() as u64,
        }
    }
}

fn echo_line() -> Vec<u8> {
    let mut line: Vec<u8> = (0..63).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    line
}

fn line_streams() -> [Stream; 2] {
    [
        Stream {
            name: "ping",
            bytes: b"PING\n".repeat(1000),
            requests: 1000,
        },
        Stream {
            name: "echo_64B",
            bytes: echo_line().repeat(1000),
            requests: 1000,
        },
    ]
}

fn frame(command: FrameCommand, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("bench bodies are small");
    let mut bytes = frame::encode_header(command, len).to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn message_body() -> Vec<u8> {
    (0..4096).map(|i| b' ' + (i % 95) as u8).collect()
}

fn frame_streams() -> [Stream; 2] {
    [
        Stream {
            name: "heartbeat_16B",
            bytes: frame(FrameCommand::Heartbeat, b"0123456789abcdef").repeat(1000),
            requests: 1000,
        },
        Stream {
            name: "message_4KiB",
            bytes: frame(FrameCommand::Message, &message_body()).repeat(100),
            requests: 100,
        },
    ]
}

/// Decodes and parses every line at the front of `buf`; returns (requests, bytes consumed).
fn decode_lines(buf: &[u8]) -> Result<(u64, usize), ProtocolError> {
    let (mut requests, mut used) = (0, 0);
    while let Decoded::Complete { request, consumed } = line::decode(&buf[used..], MAX_LINE)? {
        black_box(line::parse(request));
        requests += 1;
        used += consumed;
    }
    Ok((requests, used))
}

/// Decodes every frame at the front of `buf`; returns (requests, bytes consumed).
fn decode_frames(buf: &[u8]) -> Result<(u64, usize), ProtocolError> {
    let (mut requests, mut used) = (0, 0);
    while let Decoded::Complete { request, consumed } = frame::decode(&buf[used..], MAX_FRAME)? {
        black_box(request);
        requests += 1;
        used += consumed;
    }
    Ok((requests, used))
}

type DecodeAll = fn(&[u8]) -> Result<(u64, usize), ProtocolError>;

/// Feeds `stream` in `chunk`-byte reads through the reactor's carry-over logic: decode from
/// the fresh bytes while nothing is carried, else append them to `carried` and decode from
/// there; keep the unfinished tail. Returns the requests decoded.
fn decode_in_chunks(stream: &[u8], chunk: usize, carried: &mut Buffer, decode: DecodeAll) -> u64 {
    let mut requests = 0;
    for fresh in stream.chunks(chunk) {
        if carried.is_empty() {
            let (n, used) = decode(fresh).expect("bench streams are valid");
            requests += n;
            carried.extend_from_slice(&fresh[used..]);
        } else {
            carried.extend_from_slice(fresh);
            let (n, used) = decode(carried.data()).expect("bench streams are valid");
            requests += n;
            carried.consume(used);
        }
    }
    requests
}

fn bench_decode(c: &mut Criterion, group_name: &str, streams: &[Stream], decode: DecodeAll) {
    let mut group = c.benchmark_group(group_name);
    for stream in streams {
        // The benchmarks below measure what they claim only if the stream decodes fully.
        assert_eq!(
            decode(&stream.bytes),
            Ok((stream.requests, stream.bytes.len()))
        );
        let mut carried = Buffer::new();
        assert_eq!(
            decode_in_chunks(&stream.bytes, CHUNK, &mut carried, decode),
            stream.requests
        );
        assert!(carried.is_empty());

        group.throughput(stream.throughput());
        group.bench_function(BenchmarkId::new(stream.name, "whole"), |b| {
            b.iter(|| decode(black_box(&stream.bytes)));
        });
        group.bench_function(BenchmarkId::new(stream.name, "split_7B"), |b| {
            b.iter(|| decode_in_chunks(black_box(&stream.bytes), CHUNK, &mut carried, decode));
        });
    }
    group.finish();
}

fn line_decode(c: &mut Criterion) {
    bench_decode(c, "line_decode", &line_streams(), decode_lines);
}

fn frame_decode(c: &mut Criterion) {
    bench_decode(c, "frame_decode", &frame_streams(), decode_frames);
}

/// The handler's frame reply: the header for the parts' total length, then the parts.
fn write_frame(out: &mut Vec<u8>, command: FrameCommand, parts: &[&[u8]]) {
    let body_len: usize = parts.iter().map(|part| part.len()).sum();
    let body_len = u32::try_from(body_len).expect("bench bodies are small");
    out.extend_from_slice(&frame::encode_header(command, body_len));
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Benchmarks building `count` replies into one reused `Vec`; `reply` appends one.
fn bench_encode(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    count: u64,
    reply: impl Fn(&mut Vec<u8>),
) {
    let mut out = Vec::new();
    for _ in 0..count {
        reply(&mut out);
    }
    group.throughput(Throughput::ElementsAndBytes {
        elements: count,
        bytes: out.len() as u64,
    });
    group.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..count {
                reply(&mut out);
            }
            black_box(out.len())
        });
    });
}

fn line_encode(c: &mut Criterion) {
    // As `handler::execute_line` answers them: a bare PING with a constant, an echo line that
    // ended in a bare "\n" with one copy of the bytes as received, terminator included.
    let line = echo_line();
    let content = &line[..line.len() - 1];
    assert_eq!(line::parse(content), LineCommand::Echo(content));
    assert_eq!(line::parse(b"PING"), LineCommand::Ping { suffix: b"" });
    let mut group = c.benchmark_group("line_encode");
    bench_encode(&mut group, "pong", 1000, |out| {
        out.extend_from_slice(black_box(b"PONG\n"));
    });
    bench_encode(&mut group, "echo_64B", 1000, |out| {
        out.extend_from_slice(black_box(&line));
    });
    group.finish();
}

fn frame_encode(c: &mut Criterion) {
    let body = message_body();
    // The replies must be frames a client decodes whole, or the figures mean nothing.
    let mut out = Vec::new();
    write_frame(&mut out, FrameCommand::Message, &[b"Server says: ", &body]);
    assert!(matches!(
        frame::decode(&out, MAX_FRAME),
        Ok(Decoded::Complete { request, consumed })
            if consumed == out.len() && request.body.len() == 13 + body.len()
    ));
    assert_eq!(out.len(), HEADER_LEN + 13 + 4096);
    let mut group = c.benchmark_group("frame_encode");
    bench_encode(&mut group, "heartbeat_16B", 1000, |out| {
        write_frame(
            out,
            FrameCommand::Heartbeat,
            &[black_box(b"0123456789abcdef")],
        );
    });
    bench_encode(&mut group, "message_4KiB", 100, |out| {
        write_frame(
            out,
            FrameCommand::Message,
            &[b"Server says: ", black_box(&body)],
        );
    });
    group.finish();
}

criterion_group!(
    benches,
    line_decode,
    frame_decode,
    line_encode,
    frame_encode
);
criterion_main!(benches);
