#!/usr/bin/env python3
"""Memory under attack: the server's RSS and PING latency while clients park large partial frames.

Run through scripts/memory-attack.sh, which builds first. For every budget in --budgets and
every attacker count in --attackers (and --repeats times each), a fresh release tcp-reactor is
started on free ports (port 0, the bound addresses read from its log), pinned to core 0, with
--max-connections room for every client, then:

  - tcp-load runs PING on the line port at a fixed open-loop rate (--ping-rate in total over
    --ping-connections, 1 s warmup, then --duration s measured), pinned to core 1;
  - just after it starts, N attackers connect to the frame port, each sends a Heartbeat header
    declaring --frame-bytes and then all of the body but its last byte, and waits, never
    sending the last byte, until tcp-load is done. They run in one thread of this script (core
    1, non-blocking sockets, `selectors`): a socket the server no longer reads is simply not
    written to while the others go on. "Offered" is the bytes each send handed to the kernel.
    An attacker the server closes (EOF, ECONNRESET, EPIPE) counts as closed by the server, and
    what the server sent it is decoded as frames: "told" counts the attackers that got exactly
    one Error frame with body `server out of memory`;
  - the server's VmRSS is sampled every 100 ms; when tcp-load ends, VmHWM (the peak RSS) and
    STATS are read (client_memory_peak, memory_evictions, memory_throttles: absent on a server
    that predates --client-memory), then the attackers close. A close hands the server what their send
    buffers still held, then the FIN, so the peak may come after it: once STATS shows every
    attacker gone (at most --settle s) and 1 s more, VmRSS ("RSS after") and VmHWM again
    ("VmHWM after the close") are read.

A budget is `default` (no --client-memory flag: the server's own default) or any value the flag
takes (`256MiB`, `1GiB`, `0` = no limit). With no budget in force (`0`, or a server without
the flag), a cell whose attackers would offer more than half of MemAvailable is skipped rather
than run into the OOM killer.

Prints a Markdown table, one row per (budget, attackers), medians over the repeats, and under
it notes per run: what the closed attackers were sent, and the kernel's own trouble (TCP memory
over its pressure mark; retransmit timeouts and receive-queue drops, machine-wide, over the
run), which tells a slow PING that the kernel caused from one the server did.
--json FILE also writes every run's figures. --check-peak-rss MIB turns it into a test: a
PASS/FAIL line per cell and exit 1 unless every run's VmHWM (the later reading, so the whole
run) is under MIB MiB and PING saw 0 errors.

Usage: scripts/memory-attack.sh [--budgets default,256MiB] [--attackers 0,100,1000]
                                [--duration S] [--repeats K] [--frame-bytes N]
                                [--ping-rate R] [--ping-connections C] [--server-args "..."]
                                [--json FILE] [--check-peak-rss MIB]
"""

import argparse
import errno
import json
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
SERVER = os.path.join(RELEASE, "tcp-reactor")
TCP_LOAD = os.path.join(RELEASE, "tcp-load")
SERVER_CORE = "0"
CLIENT_CORE = 1
MIB = 1 << 20

HEADER = struct.Struct(">2sBBI")  # magic "GO", version 1, command, body length
HEARTBEAT, ERROR = 0, 4
OUT_OF_MEMORY = b"server out of memory"
TOLD = HEADER.pack(b"GO", 1, ERROR, len(OUT_OF_MEMORY)) + OUT_OF_MEMORY


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_size(text):
    """Bytes in a --client-memory value: plain bytes, or KiB / MiB / GiB."""
    match = re.fullmatch(r"\s*(\d+)\s*(KiB|MiB|GiB)?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with KiB, MiB or GiB)")
    return int(match.group(1)) << {None: 0, "KiB": 10, "MiB": 20, "GiB": 30}[match.group(2)]


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def tcp_memory_pages():
    """Pages all TCP sockets hold in the kernel (/proc/net/sockstat), and the pressure mark
    (tcp_mem's middle value): over it the kernel shrinks every socket's buffers, the PING
    clients' too, so a slow PING there is not the server's doing alone."""
    try:
        with open("/proc/net/sockstat") as f:
            used = int(re.search(r"^TCP:.* mem (\d+)", f.read(), re.M).group(1))
        with open("/proc/sys/net/ipv4/tcp_mem") as f:
            pressure = int(f.read().split()[1])
        return used, pressure
    except (OSError, AttributeError, ValueError, IndexError):
        return None, None


# Machine-wide kernel TCP counters (/proc/net/snmp, /proc/net/netstat) whose growth over a run
# says the kernel, not the server, dropped or delayed packets: retransmits, retransmit
# timeouts, segments dropped for a full receive queue, queues pruned under memory pressure.
KERNEL_COUNTERS = ("Tcp:RetransSegs", "TcpExt:TCPTimeouts", "TcpExt:TCPRcvQDrop",
                   "TcpExt:PruneCalled", "TcpExt:TCPMemoryPressures")


def kernel_tcp_counters():
    counters = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            prefix = names.split()[0]
            for name, value in zip(names.split()[1:], values.split()[1:]):
                if prefix + name in KERNEL_COUNTERS:
                    counters[prefix + name] = int(value)
    return counters


def pinned(command, core):
    return (["taskset", "-c", str(core)] + command) if shutil.which("taskset") else command


class Server:
    """A release tcp-reactor on ports it picks itself, its log in `log_path`."""

    def __init__(self, budget, extra, max_connections, log_path):
        command = [SERVER, "--line-addr", "127.0.0.1:0", "--frame-addr", "127.0.0.1:0",
                   "--max-connections", str(max_connections)]
        if budget != "default":
            command += ["--client-memory", budget]
        command += extra
        self.command = command
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(pinned(command, SERVER_CORE), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=dict(os.environ, RUST_LOG="info"),
                                     preexec_fn=raise_nofile)
        self.line = self.frame = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (self.line and self.frame):
            with open(log_path) as f:
                text = f.read()
            line = re.search(r"line listener on ([0-9.]+):(\d+)", text)
            frame = re.search(r"frame listener on ([0-9.]+):(\d+)", text)
            self.line = (line.group(1), int(line.group(2))) if line else None
            self.frame = (frame.group(1), int(frame.group(2))) if frame else None
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not (self.line and self.frame):
            self.stop()
            with open(log_path) as f:
                raise RuntimeError(f"the server did not log its listeners: {f.read()[-2000:]}")

    @property
    def pid(self):
        return self.proc.pid  # taskset execs the server, so this is the server's pid

    def rss_kib(self):
        return proc_status_kib(self.pid, "VmRSS")

    def cpu_seconds(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hwm_kib(self):
        return proc_status_kib(self.pid, "VmHWM")

    def stats(self):
        """STATS as a dict of ints, on a connection of its own; {} if it could not be read."""
        try:
            with socket.create_connection(self.line, timeout=5) as s:
                s.sendall(b"STATS\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
        except OSError:
            return {}
        fields = buf.decode(errors="replace").split()
        if not fields or fields[0] != "STATS":
            return {}
        return {k: int(v) for k, v in (f.split("=", 1) for f in fields[1:] if "=" in f)
                if v.isdigit()}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RssSampler(threading.Thread):
    """VmRSS of `pid` every `interval` s until stopped: the largest sample and the count."""

    def __init__(self, pid, interval=0.1):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval = pid, interval
        self.max_kib, self.samples = 0, 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.max_kib, self.samples = max(self.max_kib, rss), self.samples + 1
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(timeout=5)


class Attacker:
    """One connection parking a Heartbeat that lacks its last byte."""

    __slots__ = ("sock", "sent", "received", "state", "end")

    def __init__(self, sock):
        self.sock, self.sent, self.received = sock, 0, bytearray()
        self.state = "connecting"  # -> sending -> waiting -> closed
        self.end = None  # why it closed: "eof", "reset", "epipe", "connect", "ours"


class Attackers(threading.Thread):
    """`count` attackers on `addr`, driven from one selector loop until `stop()`.

    Connects are started at most CONNECTS_IN_FLIGHT at a time, so a thousand of them do not
    all land in the SYN queue in the same millisecond."""

    CONNECTS_IN_FLIGHT = 200
    KEEP_RECEIVED = 4096  # an Error frame is tens of bytes; more than this is kept as a sample

    def __init__(self, addr, count, frame_bytes):
        super().__init__(name="attackers", daemon=True)
        self.addr, self.count = addr, count
        # One shared payload, sent from by every connection: header, then body but its last byte.
        self.payload = memoryview(HEADER.pack(b"GO", 1, HEARTBEAT, frame_bytes) +
                                  bytes(frame_bytes - 1))
        self.attackers = []
        self.selector = selectors.DefaultSelector()
        self.halt = threading.Event()
        self.failure = None

    def run(self):
        # Below tcp-load on their shared core: a PING delayed by the attackers' own sends
        # would be blamed on the server. (On Linux, PRIO_PROCESS of a thread id is that thread.)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            self.loop()
        except Exception as e:  # reported with the results; the run goes on without attackers
            self.failure = f"{type(e).__name__}: {e}"
        finally:
            for a in self.attackers:
                if a.state != "closed":
                    self.drain(a)
                    self.close(a, a.end or "ours")
            self.selector.close()

    def loop(self):
        connecting = 0
        while not self.halt.is_set():
            while len(self.attackers) < self.count and connecting < self.CONNECTS_IN_FLIGHT:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                attacker = Attacker(sock)
                self.attackers.append(attacker)
                code = sock.connect_ex(self.addr)
                if code not in (0, errno.EINPROGRESS):
                    self.close(attacker, "connect")
                    continue
                connecting += 1
                self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                       attacker)
            for key, mask in self.selector.select(timeout=0.05):
                attacker = key.data
                if attacker.state == "connecting":
                    connecting -= 1
                    if attacker.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self.close(attacker, "connect")
                        continue
                    attacker.state = "sending"
                if mask & selectors.EVENT_READ:
                    self.drain(attacker)
                if attacker.state == "sending" and mask & selectors.EVENT_WRITE:
                    self.send(attacker)

    def send(self, a):
        try:
            while a.sent < len(self.payload):
                a.sent += a.sock.send(self.payload[a.sent:])
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError) as e:
            a.end = "epipe" if isinstance(e, BrokenPipeError) else "reset"
            self.drain(a)  # what the server said before it closed is still readable
            self.close(a, a.end)
            return
        a.state = "waiting"
        self.selector.modify(a.sock, selectors.EVENT_READ, a)

    def drain(self, a):
        """Reads what the server sent until it would block; closes on EOF or a reset."""
        if a.state == "closed":
            return
        while True:
            try:
                chunk = a.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionResetError, BrokenPipeError):
                self.close(a, a.end or "reset")
                return
            except OSError:
                self.close(a, a.end or "reset")
                return
            if not chunk:
                self.close(a, a.end or "eof")
                return
            if len(a.received) < self.KEEP_RECEIVED:
                a.received += chunk[:self.KEEP_RECEIVED - len(a.received)]

    def close(self, a, end):
        if a.state == "closed":
            return
        try:
            self.selector.unregister(a.sock)
        except (KeyError, ValueError):
            pass  # a connect that failed at once was never registered
        a.sock.close()
        a.state, a.end = "closed", end

    def stop(self):
        self.halt.set()
        self.join(timeout=30)

    def summary(self):
        ends, replies = {}, {}
        for a in self.attackers:
            ends[a.end or "open"] = ends.get(a.end or "open", 0) + 1
            if a.received:
                what = describe_frames(bytes(a.received))
                replies[what] = replies.get(what, 0) + 1
        by_server = [a for a in self.attackers if a.end in ("eof", "reset", "epipe")]
        return {
            "attackers": self.count,
            "connected": sum(1 for a in self.attackers if a.end != "connect"),
            "offered_bytes": sum(a.sent for a in self.attackers),
            "sent_all_but_last_byte": sum(1 for a in self.attackers
                                          if a.sent == len(self.payload)),
            "closed_by_server": len(by_server),
            "told_out_of_memory": sum(1 for a in self.attackers if bytes(a.received) == TOLD),
            "ends": ends,
            "replies": replies,
            "failure": self.failure,
        }


def describe_frames(data):
    """The frames in `data`, e.g. `Error "server out of memory"`, for the summary."""
    parts = []
    while data:
        if len(data) < HEADER.size:
            parts.append(f"{len(data)} stray bytes")
            break
        magic, version, command, length = HEADER.unpack_from(data)
        if magic != b"GO" or version != 1:
            parts.append(f"not a frame: {data[:16]!r}")
            break
        body = data[HEADER.size:HEADER.size + length]
        name = {0: "Heartbeat", 1: "Message", 3: "LoginAck", 4: "Error"}.get(command,
                                                                            f"command {command}")
        parts.append(f"{name} {body[:60].decode(errors='replace')!r}" +
                     ("" if len(body) == length else f" (cut at {len(body)} of {length} bytes)"))
        data = data[HEADER.size + length:]
    return ", ".join(parts)


def run_ping(server, opts):
    command = pinned([TCP_LOAD, "--addr", f"{server.line[0]}:{server.line[1]}", "--protocol",
                      "line", "--workload", "ping", "--rate", str(opts.ping_rate),
                      "--connections", str(opts.ping_connections), "--duration",
                      f"{opts.duration:g}s", "--warmup", "1s", "--threads", "1", "--json"],
                     CLIENT_CORE)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=raise_nofile)


def run_cell(budget, attackers, opts, log_path):
    """One fresh server, PING clients, `attackers` attackers: the figures of one run."""
    server = Server(budget, opts.extra, attackers + opts.ping_connections + 64, log_path)
    sampler = RssSampler(server.pid)
    attack = Attackers(server.frame, attackers, opts.frame_bytes) if attackers else None
    load = None
    result = {"budget": budget, "attackers": attackers, "server_command": server.command}
    kernel_before = kernel_tcp_counters()
    try:
        sampler.start()
        load = run_ping(server, opts)
        time.sleep(0.2)  # tcp-load connects first; its 1 s warmup then covers the attack's start
        if attack:
            attack.start()
        try:
            out, err = load.communicate(timeout=opts.duration + 60)
        except subprocess.TimeoutExpired:
            load.kill()
            out, err = load.communicate()
        try:
            ping = json.loads(out)
            errors = sum(ping.get("errors", {}).values())
            result["ping"] = {"p50_ms": ping["latency_us"]["p50"] / 1000,
                              "p99_ms": ping["latency_us"]["p99"] / 1000,
                              "p999_ms": ping["latency_us"]["p999"] / 1000,
                              "requests": ping["requests"], "errors": errors,
                              "error_kinds": ping.get("errors", {}), "exit": load.returncode}
        except (json.JSONDecodeError, KeyError, TypeError):
            result["ping"] = {"p50_ms": None, "p99_ms": None, "requests": 0, "errors": None,
                              "exit": load.returncode, "stderr": err[-2000:]}
        result["peak_rss_kib"] = server.hwm_kib()
        result["server_cpu_s"] = server.cpu_seconds()
        result["tcp_mem_pages"], result["tcp_mem_pressure_pages"] = tcp_memory_pages()
        kernel_after = kernel_tcp_counters()
        result["kernel_tcp"] = {k: kernel_after[k] - kernel_before.get(k, 0)
                                for k in kernel_after}
        result["server_alive"] = server.proc.poll() is None
        stats = server.stats()
        result["stats"] = stats
        result["client_memory_peak"] = stats.get("client_memory_peak")
        result["memory_evictions"] = stats.get("memory_evictions")
        result["memory_throttles"] = stats.get("memory_throttles")
        if attack:
            attack.stop()
            result["attack"] = attack.summary()
        else:
            result["attack"] = {"offered_bytes": 0, "told_out_of_memory": 0,
                                "closed_by_server": 0}
        # Closing hands the server what the attackers' send buffers still held, then the FIN;
        # wait (at most --settle s) until it has read that and let go of every attacker.
        settle_start = time.monotonic()
        while time.monotonic() - settle_start < opts.settle:
            after = server.stats()
            if after.get("active") == 1 and after.get("lingering", 0) == 0:
                time.sleep(1.0)  # then 1 s more for what is freed a moment after the close
                break
            time.sleep(0.2)
        result["settle_s"] = time.monotonic() - settle_start
        result["rss_after_kib"] = server.rss_kib()
        result["peak_rss_at_exit_kib"] = server.hwm_kib()
        after = server.stats()
        result["stats_after"] = after
        result["client_memory_after"] = after.get("client_memory")
        sampler.stop()
        result["sampled_max_rss_kib"], result["rss_samples"] = sampler.max_kib, sampler.samples
    finally:
        if load and load.poll() is None:
            load.kill()
            load.wait()
        if attack and attack.is_alive():
            attack.stop()
        sampler.stop()
        server.stop()
    return result


def median_of(runs, pick):
    values = [v for v in (pick(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=1, scale=1):
    if value is None:
        return "n/a"
    value = value / scale
    return f"{value:,.{digits}f}" if digits else f"{value:,.0f}"


COLUMNS = [
    # heading, figure of one run, digits, scale
    ("MiB offered", lambda r: r["attack"]["offered_bytes"], 0, MIB),
    ("server peak RSS MiB (VmHWM)", lambda r: r["peak_rss_kib"], 1, 1024),
    ("VmHWM after the close MiB", lambda r: r["peak_rss_at_exit_kib"], 1, 1024),
    ("client_memory_peak MiB", lambda r: r["client_memory_peak"], 1, MIB),
    ("memory_evictions", lambda r: r["memory_evictions"], 0, 1),
    ("memory_throttles", lambda r: r["memory_throttles"], 0, 1),
    ("attackers closed by server", lambda r: r["attack"]["closed_by_server"], 0, 1),
    ('attackers told "server out of memory"', lambda r: r["attack"]["told_out_of_memory"], 0, 1),
    ("PING p50 ms", lambda r: r["ping"]["p50_ms"], 3, 1),
    ("PING p99 ms", lambda r: r["ping"]["p99_ms"], 3, 1),
    ("PING errors", lambda r: r["ping"]["errors"], 0, 1),
    ("RSS after MiB", lambda r: r["rss_after_kib"], 1, 1024),
]


def interrupted(signum, frame):
    raise KeyboardInterrupt


def supports_client_memory():
    done = subprocess.run([SERVER, "--help"], capture_output=True, text=True, timeout=10)
    return "--client-memory" in done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="default,256MiB",
                        help="comma-separated --client-memory values; `default` passes none")
    parser.add_argument("--attackers", default="0,100,1000",
                        help="comma-separated attacker counts (0: the baseline)")
    parser.add_argument("--duration", type=float, default=10.0, help="PING seconds measured")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--frame-bytes", type=int, default=10485760,
                        help="body length each attacker's Heartbeat declares")
    parser.add_argument("--ping-rate", type=int, default=2000, help="PINGs per second in total")
    parser.add_argument("--ping-connections", type=int, default=20)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="longest wait, after closing the attackers, for the server to "
                             "have let go of them all before RSS after is read")
    parser.add_argument("--server-args", default="", help="extra tcp-reactor flags, one string")
    parser.add_argument("--workers", default="1", help="tcp-reactor --workers (N or auto); "
                        "the budget is split evenly among them")
    parser.add_argument("--json", default="", metavar="FILE", help="also write the figures here")
    parser.add_argument("--check-peak-rss", type=float, default=None, metavar="MIB",
                        help="exit 1 unless every run's VmHWM is under MIB and PING errors are 0")
    opts = parser.parse_args()
    opts.extra = shlex.split(opts.server_args) + ["--workers", opts.workers]
    budgets = [b.strip() for b in opts.budgets.split(",") if b.strip()]
    counts = [int(n) for n in opts.attackers.split(",") if n.strip()]
    if opts.repeats < 1 or opts.frame_bytes < 1 or opts.duration <= 0:
        parser.error("--repeats, --frame-bytes and --duration must be positive")
    for path in (SERVER, TCP_LOAD):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} is missing: build with `cargo build --release --bins`")
    has_budget = supports_client_memory()
    for budget in budgets:
        if budget != "default":
            if not has_budget:
                sys.exit(f"{SERVER} takes no --client-memory: only the budget `default` can be "
                         f"measured with it")
            try:
                parse_size(budget)
            except ValueError as e:
                sys.exit(str(e))

    raise_nofile()
    if shutil.which("taskset") and os.cpu_count() > CLIENT_CORE:
        os.sched_setaffinity(0, {CLIENT_CORE})  # the attackers share tcp-load's core
    # Ctrl-C and SIGTERM unwind through the `finally`s (even where SIGINT came in ignored, as
    # in a background job), so every server and client is stopped.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    started = time.monotonic()
    cells = []
    stopped_early = False
    with tempfile.TemporaryDirectory(prefix="memory-attack.") as tmp:
        try:
            for budget in budgets:
                for count in counts:
                    limit = parse_size(budget) if budget != "default" else (
                        1 << 30 if has_budget else 0)
                    offered = count * (opts.frame_bytes + HEADER.size - 1)
                    cell = {"budget": budget, "attackers": count, "runs": []}
                    cells.append(cell)
                    if limit == 0 and offered > mem_available_kib() * 1024 // 2:
                        cell["skipped"] = (f"no budget in force and {offered / MIB:,.0f} MiB "
                                           f"offered is over half of MemAvailable")
                        print(f"  skipped {budget} x {count}: {cell['skipped']}",
                              file=sys.stderr)
                        continue
                    for repeat in range(opts.repeats):
                        log = os.path.join(tmp, f"server.{len(cells)}.{repeat}.log")
                        run = run_cell(budget, count, opts, log)
                        with open(log) as f:
                            run["server_log_tail"] = f.read()[-3000:].splitlines()[-15:]
                        cell["runs"].append(run)
                        print(f"  {budget} x {count} attackers, run {repeat + 1}: peak RSS "
                              f"{fmt(run['peak_rss_kib'], 1, 1024)} MiB, offered "
                              f"{fmt(run['attack']['offered_bytes'], 0, MIB)} MiB, told "
                              f"{run['attack']['told_out_of_memory']}, PING p99 "
                              f"{fmt(run['ping']['p99_ms'], 3)} ms, errors "
                              f"{run['ping']['errors']}, server CPU {fmt(run['server_cpu_s'], 2)} s",
                              file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            stopped_early = True
            print("interrupted: the table has the runs finished so far", file=sys.stderr)
    elapsed = time.monotonic() - started

    print(f"# Memory under attack: {opts.repeats} run(s) per row, median shown")
    print()
    print(f"Each attacker sends a Heartbeat header declaring {opts.frame_bytes:,} bytes, then "
          f"the body but its last byte, and waits. PING: {opts.ping_rate}/s open loop over "
          f"{opts.ping_connections} connections for {opts.duration:g} s (after 1 s warmup). "
          f"Server on core {SERVER_CORE}, tcp-load and attackers on core {CLIENT_CORE}. "
          f"`default` = no --client-memory flag"
          f"{' (1GiB)' if has_budget else ' (this server has no --client-memory)'}"
          f"{'; extra server flags: ' + opts.server_args if opts.server_args else ''}.")
    print()
    print("| budget | attackers | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for cell in cells:
        if cell.get("skipped"):
            print(f"| {cell['budget']} | {cell['attackers']} | skipped: {cell['skipped']} |"
                  + " |" * (len(COLUMNS) - 1))
            continue
        if not cell["runs"]:
            continue
        cell["median"] = {heading: median_of(cell["runs"], pick)
                          for heading, pick, _, _ in COLUMNS}
        print(f"| {cell['budget']} | {cell['attackers']} | " +
              " | ".join(fmt(cell["median"][h], d, s) for h, _, d, s in COLUMNS) + " |")
    print()
    print(f"Run time: {elapsed:.0f} s.")
    notes = []
    for cell in cells:
        for i, run in enumerate(cell["runs"]):
            where = f"{cell['budget']} x {cell['attackers']}, run {i + 1}"
            if not run["server_alive"]:
                notes.append(f"{where}: the server had exited by the end of the run")
            attack = run["attack"]
            if attack.get("failure"):
                notes.append(f"{where}: the attackers failed: {attack['failure']}")
            if attack.get("replies"):
                notes.append(f"{where}: what closed attackers were sent: " +
                             "; ".join(f"{n} x {w}" for w, n in sorted(attack["replies"].items())))
            if attack.get("connected", attack.get("attackers")) != attack.get("attackers"):
                notes.append(f"{where}: {attack['attackers'] - attack['connected']} attackers "
                             f"could not connect")
            after = run.get("stats_after", {})
            if after.get("active", 1) > 1:
                notes.append(f"{where}: {run['settle_s']:.0f} s after the attackers closed, the "
                             f"server still had {after['active'] - 1} connections open and "
                             f"client_memory {fmt(after.get('client_memory'), 1, MIB)} MiB "
                             f"(RSS after is read then)")
            used, pressure = run.get("tcp_mem_pages"), run.get("tcp_mem_pressure_pages")
            if used and pressure and used > pressure:
                page = os.sysconf("SC_PAGE_SIZE")
                notes.append(f"{where}: the kernel's TCP memory was over its pressure mark at "
                             f"the end ({used * page / MIB:,.0f} MiB, mark "
                             f"{pressure * page / MIB:,.0f} MiB): every socket's buffers were "
                             f"being shrunk")
            kernel = run.get("kernel_tcp", {})
            if kernel.get("TcpExt:TCPTimeouts") or kernel.get("TcpExt:TCPRcvQDrop"):
                notes.append(f"{where}: kernel TCP counters over the PING run (machine-wide): " +
                             ", ".join(f"{k.split(':')[1]} {v:,}" for k, v in kernel.items()))
            if run["ping"]["errors"] is None:
                notes.append(f"{where}: tcp-load gave no summary: {run['ping'].get('stderr')}")
            elif run["ping"]["errors"]:
                notes.append(f"{where}: PING errors {run['ping']['error_kinds']}")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")

    failed = False
    if opts.check_peak_rss is not None:
        print()
        for cell in cells:
            if not cell["runs"]:
                continue
            peak = max(max(r["peak_rss_kib"] or 0, r["peak_rss_at_exit_kib"] or 0) / 1024
                       for r in cell["runs"])
            errors = [r["ping"]["errors"] for r in cell["runs"]]
            ok = peak < opts.check_peak_rss and all(e == 0 for e in errors)
            failed |= not ok
            print(f"{'PASS' if ok else 'FAIL'}: {cell['budget']} x {cell['attackers']} "
                  f"attackers: peak RSS {peak:,.1f} MiB (limit {opts.check_peak_rss:g}), "
                  f"PING errors {sum(e if e is not None else 1 for e in errors)} "
                  f"over {len(cell['runs'])} run(s)")
        if any(c.get("skipped") for c in cells):
            print("FAIL: some cells were skipped, so not every run was checked")
            failed = True
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"settings": {k: v for k, v in vars(opts).items()},
                       "server_has_client_memory": has_budget, "elapsed_s": elapsed,
                       "cells": cells}, f, indent=1, sort_keys=True)
    sys.exit(130 if stopped_early else 1 if failed else 0)


if __name__ == "__main__":
    main()
