#!/usr/bin/env python3
"""Noise-free per-request costs: user-space instructions (callgrind) and syscalls (strace).

Run through scripts/profile.sh, which builds everything first. For each server and workload:

- instructions per request: the server runs under `valgrind --tool=callgrind` while tcp-load
  sends a fixed number of requests; the count is taken twice, for N and for 2N requests, and
  the difference divided by N, so start-up, accepting and shutting down cancel out. Callgrind
  counts instructions, not time: the figure is the same on a loaded machine.
- syscalls per request: `strace -c -f` attached to the server (not under valgrind) for a run
  of N requests; every syscall it made in that window divided by N.

Usage: scripts/profile.sh [--requests N] [--only reactor,tokio,floor] [--workers 1,2]
                         [--balance least-conn|reuseport]

--workers gives tcp-reactor's `--workers` values to measure (a comma-separated list; the
other servers have one loop): with several, the table ends with each one's cost relative to
the first, the cost of being several loops. With 2 workers on 2 cores tcp-load shares a core
with a worker, so only the instruction counts (not throughput) mean anything here.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TCP_LOAD = os.path.join(RELEASE, "tcp-load")
LINE_PORT, FRAME_PORT = 23080, 23888


def server_command(name, workers=1, balance="least-conn"):
    if name == "reactor":
        return [os.path.join(RELEASE, "tcp-reactor"), "--line-addr", f"127.0.0.1:{LINE_PORT}",
                "--frame-addr", f"127.0.0.1:{FRAME_PORT}", "--workers", str(workers),
                "--balance", balance]
    if name == "tokio":
        return [os.path.join(RELEASE, "examples", "tokio_server"), "--line-addr",
                f"127.0.0.1:{LINE_PORT}", "--frame-addr", f"127.0.0.1:{FRAME_PORT}"]
    if name == "floor":
        return [os.path.join(RELEASE, "floor"), str(LINE_PORT), str(FRAME_PORT)]
    raise ValueError(name)


WORKLOADS = {
    "echo64-p16": ["--addr", f"127.0.0.1:{LINE_PORT}", "--protocol", "line", "--workload",
                   "echo", "--size", "64"],
    "ping-p16": ["--addr", f"127.0.0.1:{LINE_PORT}", "--protocol", "line", "--workload", "ping"],
    "heartbeat16-p16": ["--addr", f"127.0.0.1:{FRAME_PORT}", "--protocol", "frame",
                        "--workload", "heartbeat", "--size", "16"],
}


def wait_for_port(port, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def load(workload, requests):
    command = [TCP_LOAD, *WORKLOADS[workload], "--connections", "50", "--pipeline", "16",
               "--requests", str(requests), "--threads", "1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"tcp-load failed: {done.stdout} {done.stderr[-1000:]}")


def instructions(name, workload, requests, workers=1, balance="least-conn"):
    """Total user-space instructions of the server process (all its threads) for one run of
    `requests`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                 *server_command(name, workers, balance)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, RUST_LOG="warn"))
        try:
            wait_for_port(LINE_PORT)
            wait_for_port(FRAME_PORT)
            load(workload, requests)
            # Dump now: the floor has no signal handler, and a dump taken here covers the
            # same work for every server.
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
        if total == 0:
            raise RuntimeError(f"no callgrind totals for {name}")
        return total


def syscalls(name, workload, requests, workers=1, balance="least-conn"):
    proc = subprocess.Popen(server_command(name, workers, balance), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    with tempfile.NamedTemporaryFile(mode="r", suffix=".strace") as summary:
        try:
            wait_for_port(LINE_PORT)
            wait_for_port(FRAME_PORT)
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", summary.name, "-p",
                                       str(proc.pid)], stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # strace attaches to every thread
            load(workload, requests)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        calls = {}
        for line in summary.read().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
        return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--only", default="reactor,tokio,floor")
    parser.add_argument("--workers", default="1",
                        help="tcp-reactor --workers values to measure, e.g. 1,2")
    parser.add_argument("--balance", default="least-conn", choices=["least-conn", "reuseport"])
    opts = parser.parse_args()
    names = opts.only.split(",")
    worker_counts = [int(w) for w in opts.workers.split(",")]
    n = opts.requests
    print(f"# profile: c=50 P=16, N={n:,} requests (instructions: runs of N and 2N, "
          f"difference / N); tcp-reactor --workers {opts.workers} --balance {opts.balance}")
    print()
    print("| workload | server | user-space instructions/request | syscalls/request | "
          "syscalls by name (per 1000 requests) |")
    print("|---|---|---|---|---|")
    reactor = {}
    for workload in WORKLOADS:
        for name in names:
            for workers in (worker_counts if name == "reactor" else [1]):
                small = instructions(name, workload, n, workers, opts.balance)
                large = instructions(name, workload, 2 * n, workers, opts.balance)
                per_request = (large - small) / n
                calls = syscalls(name, workload, n, workers, opts.balance)
                total = sum(calls.values())
                top = ", ".join(f"{k} {1000 * v / n:.0f}" for k, v in
                                sorted(calls.items(), key=lambda kv: -kv[1])[:5])
                label = name if name != "reactor" or len(worker_counts) == 1 and workers == 1 \
                    else f"{name} --workers {workers}"
                if name == "reactor":
                    reactor[(workload, workers)] = per_request
                print(f"| {workload} | {label} | {per_request:,.0f} | {total / n:.3f} | {top} |",
                      flush=True)
    if "reactor" in names and len(worker_counts) > 1:
        base = worker_counts[0]
        print()
        print(f"| workload | " + " | ".join(f"--workers {w} / --workers {base}"
                                            for w in worker_counts[1:]) + " |")
        print("|---|" + "---|" * (len(worker_counts) - 1))
        for workload in WORKLOADS:
            ratios = " | ".join(f"{reactor[(workload, w)] / reactor[(workload, base)]:.3f}x"
                                for w in worker_counts[1:])
            print(f"| {workload} | {ratios} |")


if __name__ == "__main__":
    sys.exit(main())
