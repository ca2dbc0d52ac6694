#!/usr/bin/env python3
"""What several loops cost and what they give: tcp-reactor with --workers 1 and more.

Run through scripts/workers.sh, which builds everything first. Every part takes --workers, so
the same script runs unchanged on a larger machine; on a 2-core machine tcp-load needs one of
the cores, so throughput cannot show the scaling there and the CPU figures are what count.

Parts (each prints a markdown table; medians of --repeats runs):
- cpu:     server CPU per request (tcp-load --server-pid) at c=50 P=16 for line echo 64 B,
           PING and 16-byte Heartbeats, per worker count, and the ratio to the first count:
           the cost of being several loops.
- balance: 10,000 connections opened at 2,000/s and held, then STATS active_by_worker:
           max/min for each --balance mode, with the largest worker count.
- short:   connect, PING, close, per second (tcp-load --requests-per-connection 1), with one
           worker and with each mode at the largest worker count.
- chat:    1,000 sessions, each SAY to all others (tcp-load --workload chat): deliveries/s,
           delivery p50/p99, server CPU per delivery, per worker count; closed loop (as
           fast as it goes), then open loop at 1,000 SAYs/s (999,000 deliveries/s), where
           the latency is not the queue a saturated closed loop builds.
- projection: from the per-request CPU figures, what 8 and 16 cores should reach, with the
           assumptions printed beside it.

Placement: the server and tcp-load are pinned to separate cores (taskset), so that what a run
measures does not depend on how the scheduler happens to mix their threads. With W workers on
a machine of C usable cores, the server gets the first min(W, C - 1) cores and tcp-load the
rest (`--threads` = its core count). On 2 cores that is one core each, whatever W: with 2
workers both loops share the server's core, so the per-request ratio counts, besides what
being several costs each loop, the switches between the two (an upper bound of the cost;
on a larger machine each worker has a core of its own). Unpinned, with the server's workers
and tcp-load's threads contending for 2 cores, the CPU per request moved between sessions
from 0.88x to 0.52x for 2 workers against 1: more contention made bigger batches, not a
cheaper loop. `--no-pin` runs that way anyway.

Usage: scripts/workers.sh [--workers 1,2] [--repeats 3] [--parts cpu,balance,short,chat]
                          [--duration 5] [--json FILE] [--no-pin]
"""

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
SERVER = os.path.join(RELEASE, "tcp-reactor")
TCP_LOAD = os.path.join(RELEASE, "tcp-load")
LINE_PORT, FRAME_PORT = 26080, 26888

CPU_WORKLOADS = {
    "echo 64 B": ["--addr", f"127.0.0.1:{LINE_PORT}", "--protocol", "line", "--workload",
                  "echo", "--size", "64"],
    "PING": ["--addr", f"127.0.0.1:{LINE_PORT}", "--protocol", "line", "--workload", "ping"],
    "Heartbeat 16 B": ["--addr", f"127.0.0.1:{FRAME_PORT}", "--protocol", "frame",
                       "--workload", "heartbeat", "--size", "16"],
}


# Set by main from --no-pin: pin the server and tcp-load to separate cores (see the doc above).
PIN = True


def placement(workers):
    """(server cores, tcp-load cores) for a server of `workers` loops; (None, None) unpinned."""
    cores = sorted(os.sched_getaffinity(0))
    if not PIN or len(cores) < 2:
        return None, None
    server = min(workers, len(cores) - 1)
    return cores[:server], cores[server:]


def named(cores):
    """`core 0` or `cores 0,1`: a placement as the header prints it."""
    return ("core " if len(cores) == 1 else "cores ") + ",".join(map(str, cores))


def taskset(cores):
    """The command prefix that runs a program on `cores` (nothing when unpinned)."""
    return [] if cores is None else ["taskset", "-c", ",".join(map(str, cores))]


class Server:
    """tcp-reactor on the script's ports, killed on exit from the `with` block."""

    def __init__(self, workers, balance="least-conn", extra=()):
        self.workers = workers
        # taskset execs the server, so the child's pid is the server's (for --server-pid).
        self.command = [*taskset(placement(workers)[0]), SERVER, "--line-addr",
                        f"127.0.0.1:{LINE_PORT}", "--frame-addr", f"127.0.0.1:{FRAME_PORT}",
                        "--workers", str(workers), "--balance", balance, *extra]

    def __enter__(self):
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, RUST_LOG="warn"))
        deadline = time.time() + 30
        for port in (LINE_PORT, FRAME_PORT):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.time() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"tcp-reactor did not listen on {port}")
                    time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    @property
    def pid(self):
        return self.proc.pid


def stats():
    """STATS of the server on the script's line port, as a dict (active_by_worker a list)."""
    s = socket.create_connection(("127.0.0.1", LINE_PORT), timeout=10)
    s.sendall(b"STATS\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    out = {}
    for pair in buf.decode().split()[1:]:
        key, value = pair.split("=", 1)
        out[key] = [int(v) for v in value.split(",")] if key == "active_by_worker" \
            else int(value)
    return out


def load(args, server, duration):
    """tcp-load with `args` against `server` for `duration` s, on the cores left to it."""
    cores = placement(server.workers)[1]
    threads = [] if cores is None else ["--threads", str(len(cores))]
    command = [*taskset(cores), TCP_LOAD, *args, *threads, "--duration", f"{duration}s",
               "--warmup", "1s", "--server-pid", str(server.pid), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"tcp-load {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stdout[-2000:]} {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def label(workers, balance):
    return "1 worker" if workers == 1 else f"{workers} workers, {balance}"


def part_cpu(opts, results):
    print("## Server CPU per request, c=50 P=16\n")
    header = " | ".join(f"--workers {w} (µs/request)" for w in opts.workers)
    ratios = " | ".join(f"{w} / {opts.workers[0]}" for w in opts.workers[1:])
    print(f"| workload | {header} | {ratios} |")
    print("|---|" + "---|" * (2 * len(opts.workers) - 1))
    table = {}
    for name, args in CPU_WORKLOADS.items():
        row = []
        for workers in opts.workers:
            runs = []
            for _ in range(opts.repeats):
                with Server(workers) as server:
                    report = load([*args, "--connections", "50", "--pipeline", "16"],
                                  server, opts.duration)
                    runs.append(report["server_cpu_us_per_request"])
            row.append(statistics.median(runs))
        table[name] = dict(zip(map(str, opts.workers), row))
        cells = " | ".join(f"{v:.3f}" for v in row)
        ratio_cells = " | ".join(f"{v / row[0]:.3f}x" for v in row[1:])
        print(f"| {name} | {cells} | {ratio_cells} |", flush=True)
    results["cpu_us_per_request"] = table
    print()


def open_held(count, per_second):
    """`count` connections to the line port, opened at `per_second`, held open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    start = time.monotonic()
    for n in range(count):
        due = start + n / per_second
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", LINE_PORT))
        held.append(s)
    return held, time.monotonic() - start


def part_balance(opts, results):
    count, rate = 10_000, 2_000
    workers = max(opts.workers)
    print(f"## Balance: {count:,} connections opened at {rate:,}/s, {workers} workers\n")
    print("| --balance | active_by_worker | max/min |")
    print("|---|---|---|")
    table = {}
    for balance in ("least-conn", "reuseport"):
        spreads = []
        for _ in range(opts.repeats):
            with Server(workers, balance, ["--max-connections", str(count + 100)]):
                held, _ = open_held(count, rate)
                deadline = time.time() + 30
                while True:
                    now = stats()
                    if now["active"] >= count + 1 or time.time() > deadline:
                        break
                    time.sleep(0.1)
                spread = now["active_by_worker"]
                for s in held:
                    s.close()
                spreads.append(spread)
        ratios = [max(s) / max(min(s), 1) for s in spreads]
        median = statistics.median(ratios)
        shown = spreads[ratios.index(sorted(ratios)[len(ratios) // 2])]
        table[balance] = {"max_over_min": median, "active_by_worker": shown,
                          "runs": spreads}
        print(f"| {balance} | {','.join(map(str, shown))} | {median:.3f} |", flush=True)
    results["balance"] = table
    print()


def part_short(opts, results):
    print("## Short connections: connect, PING, close\n")
    print("| server | connects/s | server CPU µs/connection |")
    print("|---|---|---|")
    cases = [(1, "least-conn")]
    top = max(opts.workers)
    if top > 1:
        cases += [(top, "least-conn"), (top, "reuseport")]
    table = {}
    for workers, balance in cases:
        rates, cpu = [], []
        for _ in range(opts.repeats):
            with Server(workers, balance) as server:
                report = load(["--addr", f"127.0.0.1:{LINE_PORT}", "--protocol", "line",
                               "--workload", "ping", "--connections", "50",
                               "--requests-per-connection", "1"], server, opts.duration)
                rates.append(report["connects_per_s"])
                cpu.append(report["server_cpu_s"] * 1e6 / max(report["connects"], 1))
        name = label(workers, balance)
        table[name] = {"connects_per_s": statistics.median(rates),
                       "server_cpu_us_per_connection": statistics.median(cpu)}
        print(f"| {name} | {statistics.median(rates):,.0f} | {statistics.median(cpu):.1f} |",
              flush=True)
    results["short"] = table
    print()


CHAT_RATE = 1000


def part_chat(opts, results):
    sessions = 1000
    print(f"## Chat: {sessions:,} sessions, closed loop and {CHAT_RATE:,} SAYs/s\n")
    print("| server | loop | deliveries/s | delivery p50 (ms) | delivery p99 (ms) | "
          "server CPU ns/delivery | errors |")
    print("|---|---|---|---|---|---|---|")
    table = {}
    cases = [(w, rate) for rate in (None, CHAT_RATE) for w in opts.workers]
    for workers, rate in cases:
        paced = [] if rate is None else ["--rate", str(rate)]
        runs = []
        for _ in range(opts.repeats):
            with Server(workers) as server:
                report = load(["--addr", f"127.0.0.1:{LINE_PORT}", "--protocol", "line",
                               "--workload", "chat", "--connections", str(sessions),
                               *paced], server, opts.duration)
                chat = report["chat"]
                errors = chat["missing"] + chat["duplicated"] + chat["reordered"] + \
                    chat["disconnected"] + sum(report["errors"].values())
                runs.append((chat["deliveries_per_s"], chat["delivery_latency_us"]["p50"],
                             chat["delivery_latency_us"]["p99"],
                             report["server_cpu_s"] * 1e9 / max(chat["deliveries"], 1),
                             errors))
        runs.sort()
        delivered, p50, p99, cpu, _ = runs[len(runs) // 2]
        total_errors = sum(r[4] for r in runs)
        name = label(workers, "least-conn")
        loop = "closed" if rate is None else f"{rate:,} SAYs/s"
        table[f"{name}, {loop}"] = {
            "deliveries_per_s": delivered, "delivery_p50_us": p50, "delivery_p99_us": p99,
            "server_cpu_ns_per_delivery": cpu, "errors_all_runs": total_errors}
        print(f"| {name} | {loop} | {delivered:,.0f} | {p50 / 1000:.1f} | {p99 / 1000:.1f} | "
              f"{cpu:.0f} | {total_errors} |", flush=True)
    results["chat"] = table
    print()


def part_projection(results):
    cpu = results.get("cpu_us_per_request")
    if not cpu:
        return
    print("## Projection to 8 and 16 cores\n")
    print("Assumptions: one worker per core, the load generated on other machines; the kernel")
    print("network stack (NIC queues spread over the cores) scales with the cores; a request")
    print("costs each worker what it cost one of several workers here (the largest count")
    print("measured), since nothing on the request path is shared; requests/s per core is")
    print("1 / (server CPU per request), counting user and kernel time. Where the workers")
    print("measured shared cores (more workers than the server's cores: see the placement")
    print("above), that figure includes their switches, which one worker per core avoids.\n")
    counts = sorted(int(w) for w in next(iter(cpu.values())))
    several = str(counts[-1])
    print(f"| workload | per core (from --workers {several}) | 8 cores | 16 cores |")
    print("|---|---|---|---|")
    projection = {}
    for name, row in cpu.items():
        per_core = 1e6 / row[several]
        projection[name] = {"per_core": per_core, "8": 8 * per_core, "16": 16 * per_core}
        print(f"| {name} | {per_core / 1e6:.2f} M/s | {8 * per_core / 1e6:.1f} M/s | "
              f"{16 * per_core / 1e6:.1f} M/s |")
    results["projection_requests_per_s"] = projection
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2",
                        help="tcp-reactor --workers values, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--parts", default="cpu,balance,short,chat")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the scheduler place the server and tcp-load (not pinned)")
    opts = parser.parse_args()
    global PIN
    PIN = not opts.no_pin
    opts.workers = [int(w) for w in opts.workers.split(",")]
    parts = opts.parts.split(",")
    print(f"# tcp-reactor workers: --workers {','.join(map(str, opts.workers))}, "
          f"{opts.repeats} run(s) each, {opts.duration} s after 1 s warmup, "
          f"{os.cpu_count()} cores\n")
    places = {w: placement(w) for w in opts.workers}
    for w, (server, tcp_load) in places.items():
        print(f"--workers {w}: " + ("not pinned" if server is None else
              f"server on {named(server)}, tcp-load on {named(tcp_load)}"))
    print()
    results = {"workers": opts.workers, "repeats": opts.repeats, "duration_s": opts.duration,
               "placement": {str(w): {"server": p[0], "tcp_load": p[1]}
                             for w, p in places.items()}}
    for part, run in (("cpu", part_cpu), ("balance", part_balance), ("short", part_short),
                      ("chat", part_chat)):
        if part in parts:
            run(opts, results)
    part_projection(results)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
