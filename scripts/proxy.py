#!/usr/bin/env python3
"""What the PROXY protocol and a balancer in front cost: tcp-reactor with and without
--proxy-protocol, and PING through HAProxy against PING direct.

Run through scripts/proxy.sh, which builds everything first. Parts (each prints a markdown
table; medians of --repeats runs, each run a fresh server):
- short:   connect, PING, close (tcp-load --requests-per-connection 1 --connections 50): the
           header is read once per connection, so this is where it shows. Without the flag,
           and with it and tcp-load --proxy-header v1 / v2: connects/s and the server's CPU
           per connection (tcp-load --server-pid).
- long:    PING at c=50 P=16 on held connections: the server's CPU per request, without and
           with the flag (v2 headers): the header costs nothing per request.
- instructions: user-space instructions per short connection (callgrind, which does not drift
           with the machine's load: runs of N and 2N connections, the difference over N),
           without the flag and with it and v1 / v2 headers; and per request on held
           connections (PING c=50 P=16), without and with (v2). The noise-free figures.
- haproxy: PING, c=50, one request in flight per connection (closed loop), direct and through
           a real HAProxy (mode tcp, send-proxy-v2 to a node run with --proxy-protocol):
           requests/s and latency p50/p99. The three processes share the machine's cores.

Usage: scripts/proxy.sh [--repeats 3] [--duration 5] [--parts short,long,instructions,haproxy]
                        [--workers 1] [--json FILE]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
SERVER = os.path.join(RELEASE, "tcp-reactor")
TCP_LOAD = os.path.join(RELEASE, "tcp-load")
LINE_PORT, FRAME_PORT, BALANCER_PORT = 27080, 27888, 27081


def wait_listening(port, proc, what):
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not listen on {port}")
            time.sleep(0.05)


class Server:
    """tcp-reactor on the script's ports, killed on exit from the `with` block."""

    def __init__(self, workers, extra=()):
        self.command = [SERVER, "--line-addr", f"127.0.0.1:{LINE_PORT}", "--frame-addr",
                        f"127.0.0.1:{FRAME_PORT}", "--workers", str(workers), *extra]

    def __enter__(self):
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, RUST_LOG="warn"))
        # A bare connect is a proxy error under --proxy-protocol, harmlessly: it is closed.
        wait_listening(LINE_PORT, self.proc, "tcp-reactor")
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


HAPROXY_CONFIG = """\
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend line
    bind 127.0.0.1:{balancer}
    default_backend nodes
backend nodes
    server n1 127.0.0.1:{line} send-proxy-v2
"""


class Haproxy:
    """A real HAProxy in front of the script's server, killed on exit."""

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="proxy-bench.")
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(HAPROXY_CONFIG.format(balancer=BALANCER_PORT, line=LINE_PORT))
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(BALANCER_PORT, self.proc, "haproxy")
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def load(args, server_pid, duration):
    command = [TCP_LOAD, *args, "--duration", f"{duration}s", "--warmup", "1s",
               "--server-pid", str(server_pid), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"tcp-load {' '.join(args)} failed ({done.returncode}): "
                           f"{done.stdout[-2000:]} {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    errors = sum(report["errors"].values())
    if errors:
        raise RuntimeError(f"tcp-load {' '.join(args)}: {errors} errors {report['errors']}")
    return report


PING = ["--protocol", "line", "--workload", "ping", "--connections", "50"]
CASES = [("without --proxy-protocol", [], []),
         ("--proxy-protocol, v1 headers", ["--proxy-protocol"], ["--proxy-header", "v1"]),
         ("--proxy-protocol, v2 headers", ["--proxy-protocol"], ["--proxy-header", "v2"])]


def part_short(opts, results):
    print("## Short connections: connect, PING, close (c=50)\n")
    print("| server | connects/s | server CPU µs/connection | ratio to without |")
    print("|---|---|---|---|")
    table, base = {}, None
    for name, server_flags, load_flags in CASES:
        rates, cpu = [], []
        for _ in range(opts.repeats):
            with Server(opts.workers, server_flags) as server:
                report = load(["--addr", f"127.0.0.1:{LINE_PORT}", *PING,
                               "--requests-per-connection", "1", *load_flags],
                              server.proc.pid, opts.duration)
                rates.append(report["connects_per_s"])
                cpu.append(report["server_cpu_s"] * 1e6 / max(report["connects"], 1))
        rate, us = statistics.median(rates), statistics.median(cpu)
        base = base or us
        table[name] = {"connects_per_s": rate, "server_cpu_us_per_connection": us}
        print(f"| {name} | {rate:,.0f} | {us:.2f} | {us / base:.3f}x |", flush=True)
    results["short"] = table
    print()


def part_long(opts, results):
    print("## Held connections: PING, c=50 P=16\n")
    print("| server | requests/s | server CPU µs/request | ratio to without |")
    print("|---|---|---|---|")
    table, base = {}, None
    for name, server_flags, load_flags in (CASES[0], CASES[2]):
        rates, cpu = [], []
        for _ in range(opts.repeats):
            with Server(opts.workers, server_flags) as server:
                report = load(["--addr", f"127.0.0.1:{LINE_PORT}", *PING, "--pipeline", "16",
                               *load_flags], server.proc.pid, opts.duration)
                rates.append(report["requests_per_s"])
                cpu.append(report["server_cpu_us_per_request"])
        rate, us = statistics.median(rates), statistics.median(cpu)
        base = base or us
        table[name] = {"requests_per_s": rate, "server_cpu_us_per_request": us}
        print(f"| {name} | {rate:,.0f} | {us:.3f} | {us / base:.3f}x |", flush=True)
    results["long"] = table
    print()


def callgrind_total(server_flags, load_args):
    """User-space instructions of the server (callgrind) over one tcp-load run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                 *Server(1, server_flags).command],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, RUST_LOG="warn"))
        try:
            wait_listening(LINE_PORT, proc, "tcp-reactor under callgrind")
            done = subprocess.run([TCP_LOAD, *load_args, "--threads", "1", "--json"],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"tcp-load failed: {done.stdout} {done.stderr[-1000:]}")
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)],
                           capture_output=True, timeout=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        total = 0
        for path in os.listdir(tmp):
            with open(os.path.join(tmp, path)) as f:
                for line in f:
                    match = re.match(r"^(?:summary|totals): (\d+)", line)
                    if match:
                        total += int(match.group(1))
                        break
        return total


def part_instructions(opts, results):
    if shutil.which("valgrind") is None:
        print("## Instructions per short connection: skipped, valgrind is not installed\n")
        return
    n = opts.connections
    print(f"## Instructions per short connection (callgrind; runs of {n:,} and {2 * n:,} "
          f"connections, each connect, PING, close; median of {opts.repeats} pairs)\n")
    print("| server | user-space instructions/connection | ratio to without |")
    print("|---|---|---|")
    table, base = {}, None
    for name, server_flags, load_flags in CASES:
        # The loop's own work between connections (timer ticks) grows with the run's length,
        # which valgrind makes depend on the machine's load: the median of --repeats pairs.
        pers = []
        for _ in range(opts.repeats):
            totals = [callgrind_total(server_flags, [
                "--addr", f"127.0.0.1:{LINE_PORT}", *PING, "--requests-per-connection", "1",
                "--requests", str(count), *load_flags]) for count in (n, 2 * n)]
            pers.append((totals[1] - totals[0]) / n)
        per = statistics.median(pers)
        base = base or per
        table[name] = {"instructions_per_connection": per}
        print(f"| {name} | {per:,.0f} | {per / base:.3f}x |", flush=True)
    print()
    requests = 100_000
    print(f"## Instructions per request on held connections (callgrind; PING c=50 P=16, runs "
          f"of {requests:,} and {2 * requests:,} requests)\n")
    print("| server | user-space instructions/request | ratio to without |")
    print("|---|---|---|")
    held, base = {}, None
    for name, server_flags, load_flags in (CASES[0], CASES[2]):
        totals = [callgrind_total(server_flags, ["--addr", f"127.0.0.1:{LINE_PORT}", *PING,
                                                 "--pipeline", "16", "--requests", str(count),
                                                 *load_flags])
                  for count in (requests, 2 * requests)]
        per = (totals[1] - totals[0]) / requests
        base = base or per
        held[name] = {"instructions_per_request": per}
        print(f"| {name} | {per:,.0f} | {per / base:.3f}x |", flush=True)
    results["instructions"] = {"short": table, "held": held}
    print()


def part_haproxy(opts, results):
    if shutil.which("haproxy") is None:
        print("## PING through HAProxy: skipped, haproxy is not installed\n")
        return
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    print(f"## PING through HAProxy ({version.splitlines()[0].split(' - ')[0]}) and direct, "
          "c=50, one request in flight each\n")
    print("| path | requests/s | p50 µs | p99 µs |")
    print("|---|---|---|---|")
    table = {}
    for name, through in (("direct", False), ("through HAProxy, send-proxy-v2", True)):
        rates, p50, p99 = [], [], []
        for _ in range(opts.repeats):
            flags = ["--proxy-protocol"] if through else []
            with Server(opts.workers, flags) as server:
                if through:
                    with Haproxy():
                        report = load(["--addr", f"127.0.0.1:{BALANCER_PORT}", *PING],
                                      server.proc.pid, opts.duration)
                else:
                    report = load(["--addr", f"127.0.0.1:{LINE_PORT}", *PING],
                                  server.proc.pid, opts.duration)
            rates.append(report["requests_per_s"])
            p50.append(report["latency_us"]["p50"])
            p99.append(report["latency_us"]["p99"])
        row = {"requests_per_s": statistics.median(rates),
               "p50_us": statistics.median(p50), "p99_us": statistics.median(p99)}
        table[name] = row
        print(f"| {name} | {row['requests_per_s']:,.0f} | {row['p50_us']:.0f} | "
              f"{row['p99_us']:.0f} |", flush=True)
    results["haproxy"] = table
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--workers", type=int, default=1, help="tcp-reactor --workers")
    parser.add_argument("--parts", default="short,long,instructions,haproxy")
    parser.add_argument("--connections", type=int, default=5000,
                        help="N, for the instructions part")
    parser.add_argument("--json", help="also write the figures to this file")
    opts = parser.parse_args()
    parts = opts.parts.split(",")
    print(f"# tcp-reactor behind a balancer: --workers {opts.workers}, {opts.repeats} run(s) "
          f"each, {opts.duration} s after 1 s warmup, {os.cpu_count()} cores\n")
    results = {"workers": opts.workers, "repeats": opts.repeats, "duration_s": opts.duration}
    for part, run in (("short", part_short), ("long", part_long),
                      ("instructions", part_instructions), ("haproxy", part_haproxy)):
        if part in parts:
            run(opts, results)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
