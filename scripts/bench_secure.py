#!/usr/bin/env python3
"""Figures for the server's defences, measured against the release build in one run.

Run through scripts/bench-secure.sh, which builds first. Each part prints what it measured;
the exit status is 0 unless something could not be measured at all (the figures are for
reading and for BENCHMARKS.md, not pass/fail thresholds; tests do the asserting).

Parts (all by default; --only NAME[,NAME] picks some):

  logins  PING latency of 50 clients at a fixed rate (open loop, tcp-load --rate), alone and
          while 50 other connections keep a login in flight each (tcp-load --workload login,
          argon2id verified on the worker pool). Alternated, --repeats times; medians.
          The server on core 0, both tcp-loads on core 1.
  fds     The server started with RLIMIT_NOFILE 64, then 300 connections opened at once: the
          server's CPU time over 5 s of overload (utime + stime from /proc), how many of the
          300 got an answer or a close instead of a hang, and whether a connection opened
          before the overload is still served.
  tls     With `tcp-load --tls`: full handshakes per second (connections that each do one
          handshake and one request), and echo at pipeline 16 over TLS next to the same run
          in the clear.

Usage: scripts/bench-secure.sh [--repeats N] [--duration S] [--only logins,fds,tls]
"""

import argparse
import json
import os
import resource
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
SERVER_CORE = "0"
LOAD_CORE = "1"


def wait_for_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --workers for every server started (the script's own --workers).
WORKERS = "1"


class Server:
    """A release tcp-reactor on fixed free ports, pinned to SERVER_CORE."""

    def __init__(self, extra=(), nofile=None, tls=None):
        self.line, self.frame = free_port(), free_port()
        cmd = [SERVER, "--line-addr", f"127.0.0.1:{self.line}",
               "--frame-addr", f"127.0.0.1:{self.frame}", "--max-connections", "19000",
               "--workers", WORKERS]
        self.line_tls = None
        if tls:
            self.line_tls = free_port()
            cmd += ["--line-tls-addr", f"127.0.0.1:{self.line_tls}",
                    "--tls-cert", tls[0], "--tls-key", tls[1]]
        cmd += list(extra)

        def limit():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CORE] + cmd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, RUST_LOG="warn"), preexec_fn=limit)
        for port in (self.line, self.frame, self.line_tls):
            if port is not None:
                wait_for_port(port)

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def tcp_load(args, wait=True):
    cmd = ["taskset", "-c", LOAD_CORE, TCP_LOAD, "--json", "--threads", "1"] + args
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    return finish(proc)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"tcp-load failed ({proc.returncode}): {err.strip()}")
    return json.loads(out)


def errors_of(result):
    return sum(result.get("errors", {}).values()) if isinstance(result.get("errors"), dict) \
        else result.get("errors", 0)


def users_file(directory):
    path = os.path.join(directory, "users.txt")
    line = subprocess.run([SERVER, "passwd", "user"], input="pass\n", capture_output=True,
                          text=True, check=True).stdout
    with open(path, "w") as f:
        f.write(line)
    return path


def part_logins(args, tmp):
    users = users_file(tmp)
    server = Server(["--users", users])
    ping = ["--addr", f"127.0.0.1:{server.line}", "--protocol", "line", "--workload", "ping",
            "--connections", "50", "--rate", "5000", "--duration", f"{args.duration}s",
            "--warmup", "1s"]
    alone, loaded, logins_per_s, login_p50 = [], [], [], []
    try:
        for _ in range(args.repeats):
            result = tcp_load(ping)
            alone.append(result["latency_us"]["p99"])
            # 50 connections, one login in flight each, running through the whole PING run.
            logins = tcp_load(["--addr", f"127.0.0.1:{server.frame}", "--protocol", "frame",
                               "--workload", "login", "--connections", "50", "--pipeline", "1",
                               "--duration", f"{args.duration + 3}s", "--warmup", "1s",
                               "--timeout", "30s"], wait=False)
            time.sleep(1.5)
            result = tcp_load(ping)
            loaded.append(result["latency_us"]["p99"])
            login_result = finish(logins)
            logins_per_s.append(login_result["requests_per_s"])
            login_p50.append(login_result["latency_us"]["p50"])
    finally:
        server.stop()
    med = statistics.median
    print("## Logins: PING p99 of 50 clients at 5,000 req/s, alone and beside 50 logins in flight")
    print()
    print(f"{args.repeats} alternated repeats of {args.duration} s each; server on core "
          f"{SERVER_CORE}, tcp-load on core {LOAD_CORE}.")
    print()
    print("| | PING p99 (µs), median | all repeats |")
    print("|---|---|---|")
    print(f"| alone | {med(alone):.0f} | {', '.join(f'{x:.0f}' for x in alone)} |")
    print(f"| with 50 logins in flight | {med(loaded):.0f} | "
          f"{', '.join(f'{x:.0f}' for x in loaded)} |")
    print()
    print(f"Ratio (median with / median alone): {med(loaded) / med(alone):.2f}x. Logins "
          f"verified meanwhile: {med(logins_per_s):.0f}/s, each answered in "
          f"{med(login_p50) / 1000:.0f} ms (p50; mostly queueing behind the others).")
    print()


def part_fds(args, tmp):
    server = Server(["--idle-timeout", "60s"], nofile=64)
    try:
        keeper = socket.create_connection(("127.0.0.1", server.line), timeout=5)
        keeper.sendall(b"PING\n")
        assert keeper.recv(16) == b"PONG\n"
        flood = []
        for _ in range(300):
            s = socket.socket()
            s.settimeout(5)
            s.connect(("127.0.0.1", server.line))
            flood.append(s)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        time.sleep(5)
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
        keeper.sendall(b"PING\n")
        kept = keeper.recv(16) == b"PONG\n"
        answered = hung = 0
        for s in flood:
            s.settimeout(0.2)
            try:
                s.recv(64)  # `ERR server full`, or b"" (EOF)
                answered += 1
            except socket.timeout:
                hung += 1  # accepted and served (a slot it got), or still waiting
            except OSError:
                answered += 1  # reset
        for s in flood:
            s.close()
        time.sleep(0.5)
        after = socket.create_connection(("127.0.0.1", server.line), timeout=5)
        after.sendall(b"PING\n")
        recovered = after.recv(16) == b"PONG\n"
        after.close()
        keeper.close()
    finally:
        server.stop()
    cpu_ms_per_s = (cpu1 - cpu0) * 1000 / (t1 - t0)
    print("## Out of descriptors: RLIMIT_NOFILE 64, 300 connections at once")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| server CPU during 5 s of overload | {cpu_ms_per_s:.0f} ms per second |")
    print(f"| connections answered (`ERR server full`, EOF or reset) | {answered} of 300 |")
    print(f"| connections still open after 5 s (served, or waiting in the backlog) | {hung} |")
    print(f"| the connection opened before the flood still served | {'yes' if kept else 'NO'} |")
    print(f"| a new connection served after the flood closed | {'yes' if recovered else 'NO'} |")
    print()


def part_tls(args, tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = Server(tls=(cert, key))
    echo = ["--protocol", "line", "--workload", "echo", "--connections", "50",
            "--pipeline", "16", "--duration", f"{args.duration}s", "--warmup", "1s"]
    plain, secure, handshakes, hs_cpu, hs_p50, hs_p99 = [], [], [], [], [], []
    try:
        for _ in range(args.repeats):
            plain.append(tcp_load(["--addr", f"127.0.0.1:{server.line}"] + echo)
                         ["requests_per_s"])
            secure.append(tcp_load(["--addr", f"127.0.0.1:{server.line_tls}", "--tls",
                                    "--ca", cert] + echo)["requests_per_s"])
            # Handshakes: 2,000 connections, each one full handshake (tcp-load offers no
            # resumption) and one PING, opened as fast as tcp-load can. Rate = handshakes over
            # the wall time of the whole run; the server's CPU per handshake from /proc.
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            result = tcp_load(["--addr", f"127.0.0.1:{server.line_tls}", "--tls", "--ca", cert,
                               "--protocol", "line", "--workload", "ping",
                               "--connections", "2000", "--connect-rate", "100000",
                               "--requests", "2000", "--timeout", "30s"])
            cpu1, t1 = server.cpu_seconds(), time.monotonic()
            tls = result["tls"]
            handshakes.append(tls["handshakes"] / (t1 - t0))
            hs_cpu.append((cpu1 - cpu0) * 1e6 / tls["handshakes"])
            hs_p50.append(tls["handshake_us"]["p50"])
            hs_p99.append(tls["handshake_us"]["p99"])
    finally:
        server.stop()
    med = statistics.median
    print("## TLS (rustls, ring; TLS 1.3, ECDSA P-256 certificate)")
    print()
    print(f"{args.repeats} repeats; server on core {SERVER_CORE}, tcp-load on core {LOAD_CORE}.")
    print()
    print("| scenario | median | all repeats |")
    print("|---|---|---|")
    print(f"| echo 64 B, c=50 P=16, plain (req/s) | {med(plain):,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in plain)} |")
    print(f"| echo 64 B, c=50 P=16, TLS (req/s) | {med(secure):,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in secure)} |")
    print(f"| full handshakes per second (2,000 connections, one PING each) | "
          f"{med(handshakes):,.0f} | {', '.join(f'{x:,.0f}' for x in handshakes)} |")
    print(f"| server CPU per handshake (µs) | {med(hs_cpu):,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in hs_cpu)} |")
    print(f"| handshake time p50 / p99 (µs) | {med(hs_p50):,.0f} / {med(hs_p99):,.0f} | |")
    print()
    print(f"TLS echo runs at {med(secure) / med(plain):.2f}x the plain requests/s.")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    parser.add_argument("--only", default="logins,fds,tls")
    parser.add_argument("--workers", default="1", help="tcp-reactor --workers (N or auto)")
    args = parser.parse_args()
    global WORKERS
    WORKERS = args.workers
    parts = {"logins": part_logins, "fds": part_fds, "tls": part_tls}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            if name not in parts:
                sys.exit(f"unknown part {name!r}: choose from {', '.join(parts)}")
            parts[name](args, tmp)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
