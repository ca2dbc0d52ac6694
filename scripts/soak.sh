#!/usr/bin/env bash
# Soak test: well-behaved tcp-load clients next to abusive ones, then check the server came
# back to its baseline.
#
#   scripts/soak.sh DURATION_SECONDS [--workers N]
#
# --workers N (default 1) starts the server with that many loops; every check is the same
# (STATS gives the sums over the workers; the memory budget is split among them).
#
# Starts target/release/tcp-reactor on free ports, with a line-over-TLS listener (a
# self-signed certificate made with openssl) and a users file (made with `tcp-reactor
# passwd`), and
#   --max-connections 200 --request-timeout 2s --idle-timeout 5s --client-memory 64MiB
# (64 MiB: the memory attackers below offer well over 100 MiB at once, so the budget is
# always under pressure; eight 10 MiB partial frames alone pass it) and records its open fds
# and RSS, then for DURATION seconds runs
#   - tcp-load line/ping (--rate 2000 --connections 20), frame/heartbeat (--rate 1000
#     --connections 10) and frame/login (--rate 5 --connections 2, argon2id verified for
#     real), open loop, every reply checked byte for byte;
#   - abusive python3 clients: random garbage and HTTP requests, resets (SO_LINGER 0) mid-frame
#     and mid-line, half-closes, slowloris (one byte per 200 ms), never-readers (PINGs until
#     the server pushes back, never read), floods of 300 connections held for 1 s (beyond
#     --max-connections), password guessers (three wrong LOGINs, then the close), and on the
#     TLS port: garbage instead of a ClientHello, and handshakes stalled halfway;
#   - memory attackers: 8 connections each parking a Heartbeat declaring 10 MiB without its
#     last byte, 100 connections each parking 60 KiB of a line without its newline, 4 sessions
#     that say HELLO and never read again while a talker SAYs 60 KiB lines to them (their
#     pending output grows). Each reconnects when the server closes it. All of them together
#     with the clients above stay under --max-connections 200 (about 155 held at once), except
#     the floods, which are meant to pass it.
# After the abusive clients stop and the server settles, it checks: 0 tcp-load errors (the
# server evicts the largest holders first, which must be the attackers), the server's peak
# RSS (VmHWM) within the 64 MiB budget + its baseline RSS + 32 MiB (the allowance: the login
# worker's argon2id memory, 19 MiB, the budget's lag of up to a wakeup's reads, allocator
# slack; measured at 26 MiB, client_memory_peak 3-4 MiB past the budget, in 20 s and 60 s
# soaks; without the memory attackers the soak peaks at baseline + 21 MiB), memory_evictions
# > 0 (when STATS has it), open fds back to baseline +/- 2, RSS within 4 MiB of baseline,
# STATS active == 1 (the STATS client itself) and accepted == closed + active, logins at least
# tcp-load's login count and login_failures at least three per guesser, and that every
# abusive client got only replies the protocol allows (for the memory attackers: the
# timeouts, `server full` and `server out of memory`). Then it replays
# tests/random_shutdown.rs (SIGTERM in the middle of random mixed traffic) with DURATION/10
# seeds (at least 3) beyond the ones `cargo test` runs.
# Prints each figure with PASS/FAIL; exits 1 if any check fails.
# A server without --client-memory is started without it, and the memory attackers and their
# checks are left out; SOAK_MEMORY_ATTACK=1 runs the attackers anyway (their checks then only
# print their figures), SOAK_MEMORY_ATTACK=0 leaves them out in any case.
# Everything it starts is killed on exit.
set -uo pipefail

DURATION=${1:?usage: scripts/soak.sh DURATION_SECONDS [--workers N]}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 3 ]] || { echo "DURATION_SECONDS: an integer >= 3" >&2; exit 2; }
WORKERS=1
if [[ $# -ge 2 ]]; then
    [[ $2 == --workers && $# -eq 3 ]] || { echo "usage: scripts/soak.sh DURATION_SECONDS [--workers N]" >&2; exit 2; }
    WORKERS=$3
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
SETTLE_SECONDS=15   # longest wait for the server to come back: idle 5 s + LINGER 5 s + margin
RSS_SLACK_KIB=4096
FD_SLACK=2
CLIENT_MEMORY=64MiB
CLIENT_MEMORY_KIB=65536
PEAK_ALLOWANCE_KIB=32768  # over the budget and the baseline RSS: argon2id's 19 MiB + slack (see above)

WORK=$(mktemp -d -t soak.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building"
(cd "$ROOT" && cargo build --release --bins --quiet) || { echo "build failed" >&2; exit 1; }

command -v openssl >/dev/null || { echo "openssl is required (for the TLS listener's certificate)" >&2; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null \
    || { echo "openssl could not make a certificate" >&2; exit 1; }
printf 'pass\n' | "$BIN/tcp-reactor" passwd user >"$WORK/users.txt" \
    || { echo "tcp-reactor passwd failed" >&2; exit 1; }

MEMORY_FLAGS=()
if "$BIN/tcp-reactor" --help | grep -q -- --client-memory; then
    MEMORY_FLAGS=(--client-memory "$CLIENT_MEMORY")
    MEMORY_ATTACK=${SOAK_MEMORY_ATTACK:-1}
else
    echo "note: this tcp-reactor has no --client-memory: no memory budget" >&2
    MEMORY_ATTACK=${SOAK_MEMORY_ATTACK:-0}
fi
[[ $MEMORY_ATTACK == 1 ]] || echo "note: memory attackers off" >&2

echo "== starting tcp-reactor"
RUST_LOG=info "$BIN/tcp-reactor" --line-addr 127.0.0.1:0 --frame-addr 127.0.0.1:0 \
    --line-tls-addr 127.0.0.1:0 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
    --users "$WORK/users.txt" \
    --max-connections 200 --request-timeout 2s --idle-timeout 5s "${MEMORY_FLAGS[@]}" \
    --workers "$WORKERS" \
    </dev/null >/dev/null 2>"$WORK/server.log" &
SERVER=$!
PIDS+=("$SERVER")

LINE_ADDR= FRAME_ADDR= TLS_ADDR=
for _ in $(seq 100); do
    LINE_ADDR=$(grep -o 'line listener on [0-9.:]*' "$WORK/server.log" | head -n1 | awk '{print $4}')
    FRAME_ADDR=$(grep -o 'frame listener on [0-9.:]*' "$WORK/server.log" | head -n1 | awk '{print $4}')
    TLS_ADDR=$(grep -o 'line TLS listener on [0-9.:]*' "$WORK/server.log" | head -n1 | awk '{print $5}')
    [[ -n $LINE_ADDR && -n $FRAME_ADDR && -n $TLS_ADDR ]] && break
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $LINE_ADDR || -z $FRAME_ADDR || -z $TLS_ADDR ]]; then
    echo "server did not log its listeners; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi
echo "line $LINE_ADDR, frame $FRAME_ADDR, line over TLS $TLS_ADDR, pid $SERVER"

fds() { ls "/proc/$SERVER/fd" 2>/dev/null | wc -l; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz}' "/proc/$SERVER/stat" 2>/dev/null; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status" 2>/dev/null; }
peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER/status" 2>/dev/null; }
# One STATS line, on a connection of its own (closed before this returns).
stats() {
    python3 - "$LINE_ADDR" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
s.sendall(b"STATS\n")
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
s.close()
print(buf.decode().strip())
PY
}
stat_field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k {print $2}'; }

BASE_FDS=$(fds)
BASE_RSS=$(rss_kib)
echo "baseline: fds $BASE_FDS, rss ${BASE_RSS} KiB"

cat >"$WORK/abuse.py" <<'PY'
"""Abusive clients for the soak test; runs for DURATION seconds, prints a JSON summary.

Each behaviour is a thread looping until the deadline. Replies are checked against what the
protocol allows (docs/PROTOCOL.md); anything else is counted in `unexpected` with a sample.
"""
import json, random, selectors, socket, struct, sys, threading, time

line_addr, frame_addr, tls_addr, duration = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
MEMORY_ATTACK = sys.argv[5:6] == ["1"]
def parse(a):
    h, p = a.rsplit(":", 1)
    return (h, int(p))
LINE, FRAME, TLS = parse(line_addr), parse(frame_addr), parse(tls_addr)
DEADLINE = time.monotonic() + duration
rng = random.Random(0x50AC)
lock = threading.Lock()
counts = {}
unexpected = []

def count(key, n=1):
    with lock:
        counts[key] = counts.get(key, 0) + n

def odd(what, data):
    with lock:
        counts["unexpected"] = counts.get("unexpected", 0) + 1
        if len(unexpected) < 10:
            unexpected.append(f"{what}: {data[:120]!r}")

def running():
    return time.monotonic() < DEADLINE

def connect(addr, timeout=5.0):
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def read_all(s):
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return buf, "reset"
        except socket.timeout:
            return buf, "timeout"
        if not chunk:
            return buf, "eof"
        buf += chunk

def error_frame(body):
    return b"GO\x01\x04" + struct.pack(">I", len(body)) + body

FULL_LINE = b"ERR server full\n"
FULL_FRAME = error_frame(b"server full")

def rst(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()

def guarded(name, body):
    def run():
        while running():
            try:
                body()
            except (ConnectionError, socket.timeout, OSError) as e:
                # A connect refused or reset while the flood fills the server is expected;
                # anything else is worth a look, but is not a server reply.
                count(f"{name}_oserror_{type(e).__name__}")
                time.sleep(0.05)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t

def garbage():
    data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(512, 4096)))
    if data[:2] == b"GO":
        data = b"X" + data[1:]
    s = connect(FRAME)
    s.sendall(data)
    buf, end = read_all(s)
    s.close()
    want = error_frame(b"bad magic 0x%04x" % struct.unpack(">H", data[:2])[0])
    if (buf, end) in ((want, "eof"), (FULL_FRAME, "eof")):
        count("garbage_ok")
    else:
        odd(f"garbage ({end})", buf)

HTTP = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
def http_frame():
    s = connect(FRAME)
    s.sendall(HTTP)
    buf, end = read_all(s)
    s.close()
    if (buf, end) in ((error_frame(b"bad magic 0x4745"), "eof"), (FULL_FRAME, "eof")):
        count("http_frame_ok")
    else:
        odd(f"http to frame port ({end})", buf)

def http_line():
    s = connect(LINE)
    s.sendall(HTTP)
    s.shutdown(socket.SHUT_WR)
    buf, end = read_all(s)
    s.close()
    if (buf, end) in ((b"GET / HTTP/1.1\nHost: x\n\n", "eof"), (FULL_LINE, "eof")):
        count("http_line_ok")
    else:
        odd(f"http to line port ({end})", buf)

def resets():
    kind = rng.randrange(3)
    if kind == 0:
        s, data = connect(FRAME), b"GO\x01\x01"[: rng.randrange(1, 5)]
    elif kind == 1:
        s, data = connect(FRAME), b"GO\x01\x01\x00\x00\x01\x00" + b"b" * rng.randrange(1, 256)
    else:
        s, data = connect(LINE), b"PING 1\nPING half a li"
    s.sendall(data)
    time.sleep(0.01)
    rst(s)
    count(("reset_half_header", "reset_half_body", "reset_half_line")[kind])
    time.sleep(0.01)

def half_close():
    s = connect(LINE)
    s.sendall(b"PING a\nPING b\nPING unfinish")
    s.shutdown(socket.SHUT_WR)
    buf, end = read_all(s)
    s.close()
    if (buf, end) in ((b"PONG a\nPONG b\n", "eof"), (FULL_LINE, "eof")):
        count("half_close_ok")
    else:
        odd(f"half-close ({end})", buf)
    time.sleep(0.02)

def slowloris(payload):
    def body():
        s = connect(LINE, timeout=1.0)
        got = b""
        i = 0
        while running():
            try:
                s.send(payload[i % len(payload):i % len(payload) + 1])
            except OSError:
                break
            i += 1
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            except socket.timeout:
                pass
            except OSError:
                break
            time.sleep(0.2)
        s.close()
        count("slowloris_conns")
        for line in got.splitlines(keepends=True):
            if line not in (b"PONG\n", b"ERR request timeout\n", FULL_LINE):
                odd("slowloris", got)
                break
    return body

def never_reader():
    s = connect(LINE, timeout=0.5)
    sent = 0
    try:
        while running():
            s.sendall(b"PING\n" * 2000)
            sent += 10000
    except socket.timeout:
        pass
    count("never_reader_bytes", sent)
    # Hold the connection, still not reading, for a while (past the idle timeout sometimes).
    end = min(DEADLINE, time.monotonic() + rng.uniform(1, 7))
    while time.monotonic() < end:
        time.sleep(0.1)
    rst(s)
    count("never_reader_conns")

INVALID = b"ERR invalid credentials\n"
def guesser():
    s = connect(LINE)
    s.sendall(b"LOGIN user guess1\nLOGIN nobody guess2\nLOGIN user guess3\nPING\n")
    buf, end = read_all(s)
    s.close()
    if (buf, end) == (INVALID * 3, "eof"):
        count("guesser_ok")
    elif (buf, end) == (FULL_LINE, "eof"):
        count("guesser_full")
    else:
        odd(f"password guesser ({end})", buf)
    time.sleep(0.2)

def tls_garbage():
    s = connect(TLS)
    s.sendall(rng.choice((HTTP, b"PING\n", bytes(rng.getrandbits(8) for _ in range(300)))))
    buf, end = read_all(s)
    s.close()
    # Nothing, or a TLS alert record (content type 21), then the close.
    if end in ("eof", "reset") and (buf == b"" or buf[:1] == b"\x15"):
        count("tls_garbage_ok")
    else:
        odd(f"garbage to the TLS port ({end})", buf)
    time.sleep(0.02)

def tls_stall():
    s = connect(TLS)
    s.sendall(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03")  # half a ClientHello
    buf, end = read_all(s)  # closed at --request-timeout (2 s)
    s.close()
    if end in ("eof", "reset") and (buf == b"" or buf[:1] == b"\x15"):
        count("tls_stall_ok")
    else:
        odd(f"stalled TLS handshake ({end})", buf)

def flood():
    socks = []
    for _ in range(300):
        try:
            socks.append(connect(rng.choice((LINE, FRAME)), timeout=2.0))
        except OSError as e:
            count(f"flood_connect_{type(e).__name__}")
    count("flood_conns", len(socks))
    time.sleep(1.0)
    for s in socks:
        s.close()
    time.sleep(2.0)

# Memory attackers: each holds as much of the server's memory as one connection can, and comes
# back when the server closes it. Allowed endings: the server's timeouts, `server full`, and
# `server out of memory` (an eviction: the largest holders go first).
OOM_LINE = b"ERR server out of memory\n"
OOM_FRAME = error_frame(b"server out of memory")
LINE_ENDS = {OOM_LINE: "oom", b"ERR request timeout\n": "request_timeout",
             b"ERR idle timeout\n": "idle_timeout", FULL_LINE: "full"}
FRAME_ENDS = {OOM_FRAME: "oom", error_frame(b"request timeout"): "request_timeout",
              error_frame(b"idle timeout"): "idle_timeout", FULL_FRAME: "full"}
PARTIAL_BODY = 10 * 1024 * 1024
PARTIAL = memoryview(b"GO\x01\x00" + struct.pack(">I", PARTIAL_BODY) + bytes(PARTIAL_BODY - 1))
FAT_LINE = b"x" * (60 * 1024)  # under --max-line (64 KiB), and never a newline
TCP_ESTABLISHED = 1

def judge(kind, buf, end, ends):
    if end in ("eof", "reset") and buf in ends:
        count(f"{kind}_{ends[buf]}")
    else:
        odd(f"{kind} ({end})", buf)

def hold(s):
    """Reads until the server closes `s` (its bytes, "eof" or "reset"), or the soak ends ("held")."""
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if not running():
                return buf, "held"
            continue
        except OSError:
            return buf, "reset"
        if not chunk:
            return buf, "eof"
        buf += chunk

def partial_frame():
    s = connect(FRAME, timeout=0.5)
    sent = 0
    try:
        while running() and sent < len(PARTIAL):
            try:
                sent += s.send(PARTIAL[sent:sent + 256 * 1024])
            except socket.timeout:
                pass  # the server is not reading this one now: memory is short
    except OSError:
        pass  # closed while sending; what it was told is still readable
    count("partial_frame_bytes", sent)
    buf, end = hold(s)
    s.close()
    if end == "held":
        count("partial_frame_held")
    else:
        judge("partial_frame", buf, end, FRAME_ENDS)
    time.sleep(0.05)

def fat_lines(n):
    """`n` connections in one selector loop, each parking FAT_LINE, reopened when closed."""
    def body():
        sel = selectors.DefaultSelector()
        reopen = [time.monotonic()] * n  # when each slot opens its next connection
        try:
            while running():
                now = time.monotonic()
                for i, at in enumerate(reopen):
                    if at is not None and at <= now:
                        s = socket.socket()
                        s.setblocking(False)
                        s.connect_ex(LINE)
                        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                     {"slot": i, "sent": 0, "got": b""})
                        reopen[i] = None
                        count("fat_line_conns")
                for key, mask in sel.select(timeout=0.1):
                    s, st = key.fileobj, key.data
                    end = None
                    if mask & selectors.EVENT_WRITE and st["sent"] < len(FAT_LINE):
                        try:
                            st["sent"] += s.send(FAT_LINE[st["sent"]:])
                        except BlockingIOError:
                            pass
                        except OSError:
                            end = "reset"
                        if st["sent"] == len(FAT_LINE):
                            sel.modify(s, selectors.EVENT_READ, st)
                    if mask & selectors.EVENT_READ and end is None:
                        try:
                            chunk = s.recv(4096)
                            if chunk:
                                st["got"] += chunk
                            else:
                                end = "eof"
                        except BlockingIOError:
                            pass
                        except OSError:
                            end = "reset"
                    if end:
                        sel.unregister(s)
                        s.close()
                        judge("fat_line", st["got"], end, LINE_ENDS)
                        reopen[st["slot"]] = time.monotonic() + 0.05
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            sel.close()
    return body

def hoarder(i):
    """Says HELLO, then never reads: the talker's pushes pile up in the server for it. Without
    reading it cannot see the server drop it (the FIN waits behind pushes its full window
    refuses), so each session ends after 3-6 s, with a reset, or sooner if a reset or a FIN
    does show in the TCP state; then a new session, with a new name."""
    session = [0]
    def body():
        session[0] += 1
        s = connect(LINE, timeout=2.0)
        s.sendall(b"HELLO hoard%dx%d\n" % (i, session[0]))
        count("hoarder_sessions")
        end = min(DEADLINE, time.monotonic() + rng.uniform(3, 6))
        while time.monotonic() < end:
            if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED:
                count("hoarder_closed_seen")
                break
            time.sleep(0.1)
        rst(s)
        time.sleep(0.05)
    return body

def talker():
    session = [0]
    say = b"SAY " + b"y" * (60 * 1024) + b"\n"
    def body():
        session[0] += 1
        name = b"talker%d" % session[0]
        s = connect(LINE, timeout=5.0)
        replies = s.makefile("rb")
        s.sendall(b"HELLO " + name + b"\n")
        line = replies.readline()
        while line == b"OK\n" or line == b"WELCOME " + name + b"\n":
            count("talker_says" if line == b"OK\n" else "talker_sessions")
            if not running():
                s.close()
                return
            time.sleep(0.02)  # 50 SAYs/s: 3 MB/s to each hoarder
            s.sendall(say)
            line = replies.readline()
        rest, end = hold(s)
        s.close()
        judge("talker", line + rest, end, LINE_ENDS)
        time.sleep(0.05)
    return body

memory_threads = [
    *[guarded(f"partial_frame{i}", partial_frame) for i in range(8)],
    guarded("fat_lines", fat_lines(100)),
    *[guarded(f"hoarder{i}", hoarder(i)) for i in range(4)],
    guarded("talker", talker()),
] if MEMORY_ATTACK else []

threads = memory_threads + [
    guarded("garbage", garbage),
    guarded("http_frame", http_frame),
    guarded("http_line", http_line),
    guarded("resets", resets),
    guarded("half_close", half_close),
    guarded("slowloris_endless", slowloris(b"x")),
    guarded("slowloris_endless2", slowloris(b"PING PING PING ")),
    guarded("slowloris_lines", slowloris(b"PING\n")),
    guarded("never_reader", never_reader),
    guarded("never_reader2", never_reader),
    guarded("flood", flood),
    guarded("guesser", guesser),
    guarded("tls_garbage", tls_garbage),
    guarded("tls_stall", tls_stall),
]
for t in threads:
    t.join(timeout=max(0, DEADLINE - time.monotonic()) + 15)
print(json.dumps({"counts": counts, "unexpected": unexpected}, sort_keys=True))
PY

echo "== soaking for ${DURATION}s"
"$BIN/tcp-load" --addr "$LINE_ADDR" --protocol line --workload ping \
    --rate 2000 --connections 20 --duration "${DURATION}s" --json >"$WORK/line.json" 2>"$WORK/line.err" &
LOAD_LINE=$!
PIDS+=("$LOAD_LINE")
"$BIN/tcp-load" --addr "$FRAME_ADDR" --protocol frame --workload heartbeat --size 16 \
    --rate 1000 --connections 10 --duration "${DURATION}s" --json >"$WORK/frame.json" 2>"$WORK/frame.err" &
LOAD_FRAME=$!
PIDS+=("$LOAD_FRAME")
"$BIN/tcp-load" --addr "$FRAME_ADDR" --protocol frame --workload login \
    --rate 5 --connections 2 --duration "${DURATION}s" --timeout 10s --json >"$WORK/login.json" 2>"$WORK/login.err" &
LOAD_LOGIN=$!
PIDS+=("$LOAD_LOGIN")
# Let tcp-load connect before the floods fill --max-connections (its 1 s warmup covers this).
sleep 0.5
python3 "$WORK/abuse.py" "$LINE_ADDR" "$FRAME_ADDR" "$TLS_ADDR" "$DURATION" "$MEMORY_ATTACK" >"$WORK/abuse.json" 2>"$WORK/abuse.err" &
ABUSE=$!
PIDS+=("$ABUSE")

wait "$LOAD_LINE"; LINE_RC=$?
wait "$LOAD_FRAME"; FRAME_RC=$?
wait "$LOAD_LOGIN"; LOGIN_RC=$?
wait "$ABUSE"; ABUSE_RC=$?
SOAK_CPU=$(cpu_seconds)

FAILED=0
check() { # check NAME OK(0/1) DETAIL
    if [[ $2 == 1 ]]; then
        printf '%-28s %-6s %s\n' "$1" PASS "$3"
    else
        printf '%-28s %-6s %s\n' "$1" FAIL "$3"
        FAILED=1
    fi
}

kill -0 "$SERVER" 2>/dev/null; check "server alive" $(( $? == 0 )) "pid $SERVER"

echo "== settling (up to ${SETTLE_SECONDS}s)"
SETTLE_START=$SECONDS
while (( SECONDS - SETTLE_START < SETTLE_SECONDS )); do
    S=$(stats 2>/dev/null) || S=
    if [[ -n $S && $(stat_field "$S" active) == 1 ]] && (( $(fds) <= BASE_FDS + FD_SLACK )); then
        break
    fi
    sleep 0.5
done
echo "settled after $(( SECONDS - SETTLE_START ))s"

echo "== results"
for kind in line frame login; do
    json=$WORK/$kind.json
    rc_var=${kind^^}_RC
    summary=$(python3 - "$json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"-1 no JSON ({e})")
    sys.exit()
errors = r.get("errors", {})
total = sum(errors.values())
print(total, f"requests {r.get('requests')} errors {json.dumps(errors, separators=(',', ':'))}")
PY
)
    total=${summary%% *}
    check "tcp-load $kind errors" $(( total == 0 && ${!rc_var} == 0 )) "exit ${!rc_var}, ${summary#* }"
    if (( total != 0 || ${!rc_var} != 0 )); then sed 's/^/    /' "$WORK/$kind.err" | tail -n 5; fi
done

ABUSE_SUMMARY=$(cat "$WORK/abuse.json")
UNEXPECTED=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["counts"].get("unexpected", 0))' "$ABUSE_SUMMARY" 2>/dev/null || echo -1)
check "abusive replies as specified" $(( ABUSE_RC == 0 && UNEXPECTED == 0 )) "exit $ABUSE_RC, unexpected $UNEXPECTED"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("    counts:", json.dumps(d["counts"], sort_keys=True)); [print("    unexpected:", u) for u in d["unexpected"]]' "$ABUSE_SUMMARY" 2>/dev/null \
    || sed 's/^/    /' "$WORK/abuse.err" | tail -n 5

# Information only: tcp-load's 3000 requests/s cost little; a spinning loop shows up here.
printf '%-28s %-6s %s\n' "server cpu (info)" "-" "${SOAK_CPU}s user+sys over the ${DURATION}s soak"

END_FDS=$(fds)
check "open fds" $(( END_FDS >= BASE_FDS - FD_SLACK && END_FDS <= BASE_FDS + FD_SLACK )) \
    "baseline $BASE_FDS, now $END_FDS (+/- $FD_SLACK)"

END_RSS=$(rss_kib)
check "rss" $(( ${END_RSS:-999999999} <= BASE_RSS + RSS_SLACK_KIB )) \
    "baseline ${BASE_RSS} KiB, now ${END_RSS:-?} KiB (limit +$RSS_SLACK_KIB KiB)"

# VmHWM: the most the server's RSS ever was, soak and settling included.
PEAK_RSS=$(peak_rss_kib)
PEAK_LIMIT_KIB=$(( CLIENT_MEMORY_KIB + BASE_RSS + PEAK_ALLOWANCE_KIB ))
if (( ${#MEMORY_FLAGS[@]} )); then
    check "peak rss" $(( ${PEAK_RSS:-999999999} <= PEAK_LIMIT_KIB )) \
        "VmHWM ${PEAK_RSS:-?} KiB, limit $PEAK_LIMIT_KIB KiB ($CLIENT_MEMORY budget + baseline ${BASE_RSS} KiB + $PEAK_ALLOWANCE_KIB KiB)"
else
    printf '%-28s %-6s %s\n' "peak rss (info)" "-" "VmHWM ${PEAK_RSS:-?} KiB (no memory budget)"
fi

S=$(stats 2>/dev/null) || S=
ACCEPTED=$(stat_field "$S" accepted); ACTIVE=$(stat_field "$S" active); CLOSED=$(stat_field "$S" closed)
check "stats active" $(( ${ACTIVE:--1} == 1 )) "active=${ACTIVE:-?} (the STATS client itself)"
check "stats accepted" $(( ${ACCEPTED:--1} == ${CLOSED:--2} + ${ACTIVE:--2} )) \
    "accepted=${ACCEPTED:-?} closed=${CLOSED:-?} active=${ACTIVE:-?}"
LOGINS=$(stat_field "$S" logins); LOGIN_FAILURES=$(stat_field "$S" login_failures)
LOGIN_REQUESTS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$WORK/login.json" 2>/dev/null || echo -1)
GUESSERS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["counts"].get("guesser_ok", 0))' "$ABUSE_SUMMARY" 2>/dev/null || echo -1)
check "stats logins" $(( ${LOGINS:--1} >= LOGIN_REQUESTS && LOGIN_REQUESTS > 0 )) \
    "logins=${LOGINS:-?}, tcp-load login requests answered $LOGIN_REQUESTS"
check "stats login_failures" $(( ${LOGIN_FAILURES:--1} >= 3 * GUESSERS && GUESSERS > 0 )) \
    "login_failures=${LOGIN_FAILURES:-?}, guessers turned away $GUESSERS (3 failures each)"
EVICTIONS=$(stat_field "$S" memory_evictions)
MEMORY_NOW=$(stat_field "$S" client_memory); MEMORY_PEAK=$(stat_field "$S" client_memory_peak)
if [[ $MEMORY_ATTACK == 1 && -n $EVICTIONS ]]; then
    check "stats memory_evictions" $(( EVICTIONS > 0 )) \
        "memory_evictions=$EVICTIONS, client_memory_peak=${MEMORY_PEAK:-?} client_memory=${MEMORY_NOW:-?}"
elif [[ $MEMORY_ATTACK == 1 ]]; then
    printf '%-28s %-6s %s\n' "stats memory_evictions" "-" "not in this server's STATS"
fi
echo "    $S"

# More seeds of the randomized shutdown test than `cargo test` runs (it runs 1-5).
SEED_COUNT=$(( DURATION / 10 > 3 ? DURATION / 10 : 3 ))
FIRST_SEED=$(( $(date +%s) % 100000 + 1000 ))
LAST_SEED=$(( FIRST_SEED + SEED_COUNT - 1 ))
(cd "$ROOT" && SHUTDOWN_SEEDS="$FIRST_SEED-$LAST_SEED" cargo test --quiet --test random_shutdown) \
    >"$WORK/random_shutdown.log" 2>&1
RANDOM_RC=$?
check "random shutdown seeds" $(( RANDOM_RC == 0 )) "seeds $FIRST_SEED-$LAST_SEED, exit $RANDOM_RC"
(( RANDOM_RC == 0 )) || grep -E "panicked|seed" "$WORK/random_shutdown.log" | head -n 5 | sed 's/^/    /'

if (( FAILED )); then
    echo "SOAK FAIL"
    echo "--- server log (last 20 lines)"
    tail -n 20 "$WORK/server.log"
    exit 1
fi
echo "SOAK PASS"
