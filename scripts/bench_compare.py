#!/usr/bin/env python3
"""Measure tcp-reactor side by side with the servers its users would pick instead.

Run through scripts/bench-compare.sh, which builds everything first. In one run, for every
scenario and repeat, the servers are measured one after another (interleaved, so drift hits
all alike), each pinned to core 0 with tcp-load pinned to core 1. For each server and scenario
it records requests/s, latency percentiles, the server's CPU time per request over the
measured window (utime + stime from /proc/PID/stat, sampled by tcp-load itself at the start
and end of its measured window via --server-pid) and tcp-load's own CPU. It prints a Markdown
report (min/median/max over repeats; ratios as the median of per-repeat ratios) and the
targets, each met or missed with its figure.

Usage: scripts/bench-compare.sh [--repeats N] [--duration S] [--warmup S] [--quick]
                                [--only SCENARIO[,SCENARIO]] [--out FILE] [--update FILE]

A full run (no --quick, no --only) rewrites the generated part of BENCHMARKS.md (between its
bench-compare markers) and the SVG charts in docs/bench/; the rest of that file is prose.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TCP_LOAD = os.path.join(RELEASE, "tcp-load")
SERVER_CORE = "0"
LOAD_CORE = "1"

# Fixed loopback ports for the run; each server gets its own pair so none waits on TIME_WAIT.
PORTS = {
    "reactor": (18080, 18888),
    "tokio": (19080, 19888),
    "blocking": (20080, 20888),
    "floor": (21080, 21888),
    "redis": (22079, None),
}


# tcp-reactor's --workers (the script's own --workers); the other servers have one loop.
REACTOR_WORKERS = "1"


def server_command(name):
    line, frame = PORTS[name]
    if name == "reactor":
        return [os.path.join(RELEASE, "tcp-reactor"), "--line-addr", f"127.0.0.1:{line}",
                "--frame-addr", f"127.0.0.1:{frame}", "--max-connections", "19000",
                "--workers", REACTOR_WORKERS]
    if name == "tokio":
        return [os.path.join(RELEASE, "examples", "tokio_server"), "--line-addr",
                f"127.0.0.1:{line}", "--frame-addr", f"127.0.0.1:{frame}"]
    if name == "blocking":
        return [os.path.join(RELEASE, "examples", "blocking_server"), "--line-addr",
                f"127.0.0.1:{line}", "--frame-addr", f"127.0.0.1:{frame}"]
    if name == "floor":
        return [os.path.join(RELEASE, "floor"), str(line), str(frame)]
    if name == "redis":
        return ["redis-server", "--port", str(line), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--maxclients", "19000", "--loglevel", "warning"]
    raise ValueError(name)


class Server:
    def __init__(self, name):
        self.name = name
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CORE] + server_command(name),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=env, preexec_fn=raise_nofile)
        line, frame = PORTS[name]
        for port in (line, frame):
            if port is not None:
                wait_for_port(port)

    @property
    def pid(self):
        return self.proc.pid  # taskset execs the server, so this is the server's pid

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def raise_nofile():
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


# A scenario: tcp-load arguments per server (None: that server does not take part).
def load_args(kind, server, size=None, conns=50, pipeline=16):
    line, frame = PORTS[server]
    if kind == "echo":
        return ["--addr", f"127.0.0.1:{line}", "--protocol", "line", "--workload", "echo",
                "--size", str(size), "--connections", str(conns), "--pipeline", str(pipeline)]
    if kind == "ping":
        workload = ["--workload", "raw", "--request", "PING"] if server == "redis" else \
            ["--workload", "ping"]
        return ["--addr", f"127.0.0.1:{line}", "--protocol", "line", *workload,
                "--connections", str(conns), "--pipeline", str(pipeline)]
    if kind in ("heartbeat", "message"):
        return ["--addr", f"127.0.0.1:{frame}", "--protocol", "frame", "--workload", kind,
                "--size", str(size), "--connections", str(conns), "--pipeline", str(pipeline)]
    raise ValueError(kind)


SCENARIOS = [
    # name, servers, kind, size, connections, pipeline
    ("echo64-c50-p1", ["reactor", "tokio", "blocking", "floor"], "echo", 64, 50, 1),
    ("echo64-c50-p16", ["reactor", "tokio", "blocking", "floor"], "echo", 64, 50, 16),
    ("ping-c1-p1", ["reactor", "tokio", "blocking", "floor"], "ping", None, 1, 1),
    ("ping-c50-p16", ["reactor", "tokio", "blocking", "floor", "redis"], "ping", None, 50, 16),
    ("heartbeat16-c50-p16", ["reactor", "tokio", "blocking", "floor"], "heartbeat", 16, 50, 16),
    ("message4k-c50-p4", ["reactor", "tokio", "blocking"], "message", 4096, 50, 4),
]


def run_load(args, server, warmup, duration, hdr_out=None):
    command = ["taskset", "-c", LOAD_CORE, TCP_LOAD, *args, "--threads", "1", "--warmup",
               f"{warmup}s", "--duration", f"{duration}s", "--json", "--server-pid",
               str(server.pid)]
    if hdr_out:
        command += ["--hdr-out", hdr_out]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 60,
                          preexec_fn=raise_nofile)
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"tcp-load failed ({done.returncode}): {done.stderr[-2000:]}")
    result["exit"] = done.returncode
    return result


def idle_rss_per_connection(server, count):
    """Opens `count` idle connections (one PING each first, so the server really served
    them), and returns the server's RSS growth per connection in bytes."""
    before = server.rss_kib()
    line = PORTS[server.name][0]
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", line)))
        for s in sockets:
            s.sendall(b"PING\r\n")
        for s in sockets:
            s.settimeout(10)
            s.recv(64)
        time.sleep(3)  # let quiet buffers be released (2 s after the last traffic)
        after = server.rss_kib()
    finally:
        for s in sockets:
            s.close()
    return (after - before) * 1024 / count


def many_clients(server, count, duration, sources):
    line = PORTS[server.name][0]
    command = ["taskset", "-c", LOAD_CORE, TCP_LOAD, "--addr", f"127.0.0.1:{line}",
               "--protocol", "line", "--workload", "ping", "--connections", str(count),
               "--connect-rate", "2000", "--rate", str(count), "--warmup", "2s",
               "--duration", f"{duration}s", "--source-addr", sources, "--threads", "1",
               "--json", "--server-pid", str(server.pid)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120,
                          preexec_fn=raise_nofile)
    result = json.loads(done.stdout)
    result["exit"] = done.returncode
    return result


def redis_benchmark(requests):
    port = PORTS["redis"][0]
    done = subprocess.run(["taskset", "-c", LOAD_CORE, "redis-benchmark", "-p", str(port), "-P",
                           "16", "-c", "50", "-t", "ping_inline", "-n", str(requests), "-q"],
                          capture_output=True, text=True, timeout=300)
    # "PING_INLINE: 123456.79 requests per second, p50=0.103 msec"
    for part in done.stdout.replace("\r", "\n").split("\n"):
        if "requests per second" in part:
            return float(part.split(":")[1].split()[0])
    raise RuntimeError(f"redis-benchmark printed nothing usable: {done.stdout} {done.stderr}")


def spread(values):
    return min(values), statistics.median(values), max(values)


def fmt3(values, digits=0):
    lo, mid, hi = spread(values)
    return f"{mid:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", default="1", help="tcp-reactor --workers (N or auto)")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 s: a smoke run")
    parser.add_argument("--only", default="", help="comma-separated scenario names, or idle, many")
    parser.add_argument("--out", default="", help="also write the report to this file")
    parser.add_argument("--update", default="", metavar="BENCHMARKS.md",
                        help="replace the generated section of this file (between its "
                             "bench-compare markers) with the report, and write the charts "
                             "next to it in docs/bench/")
    opts = parser.parse_args()
    global REACTOR_WORKERS
    REACTOR_WORKERS = opts.workers
    if opts.quick:
        opts.repeats, opts.duration = 1, 2.0
    only = set(filter(None, opts.only.split(",")))
    want = lambda name: not only or name in only

    have_redis = shutil.which("redis-server") is not None
    os.makedirs(HDR_DIR, exist_ok=True)
    names = ["reactor", "tokio", "blocking", "floor"] + (["redis"] if have_redis else [])
    servers = {name: Server(name) for name in names}
    report = []
    out = lambda line="": (print(line, flush=True), report.append(line))
    try:
        out(f"# bench-compare: {opts.repeats} repeat(s) x {opts.duration:g} s after "
            f"{opts.warmup:g} s warmup; servers on core {SERVER_CORE}, tcp-load on core "
            f"{LOAD_CORE}")
        out(f"machine: {os.cpu_count()} cores, {platform_line()}")
        results = {}  # (scenario, server) -> list of per-repeat results
        for repeat in range(opts.repeats):
            for name, members, kind, size, conns, pipeline in SCENARIOS:
                if not want(name):
                    continue
                for server in members:
                    if server not in servers:
                        continue
                    args = load_args(kind, server, size, conns, pipeline)
                    # The last repeat also keeps each server's latency distribution.
                    hdr = os.path.join(HDR_DIR, f"{name}.{server}.hgrm") \
                        if repeat == opts.repeats - 1 else None
                    result = run_load(args, servers[server], opts.warmup, opts.duration, hdr)
                    results.setdefault((name, server), []).append(result)
                    print(f"  repeat {repeat + 1} {name} {server}: "
                          f"{result['requests_per_s']:,.0f} req/s, p99 "
                          f"{result['latency_us']['p99']} us, server "
                          f"{server_us_per_request(result):.3f} us/req", file=sys.stderr)

        targets = []
        for name, members, *_ in SCENARIOS:
            if not want(name):
                continue
            out()
            out(f"## {name}")
            out()
            out("| server | requests/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | "
                "tcp-load CPU µs/req | errors | req/s ratio (reactor/x) | CPU ratio (reactor/x) |")
            out("|---|---|---|---|---|---|---|---|---|---|")
            base = results.get((name, "reactor"), [])
            for server in members:
                runs = results.get((name, server))
                if not runs:
                    continue
                rps = [r["requests_per_s"] for r in runs]
                cpu = [server_us_per_request(r) for r in runs]
                ratio_rps = [b["requests_per_s"] / r["requests_per_s"]
                             for b, r in zip(base, runs)]
                ratio_cpu = [server_us_per_request(b) / server_us_per_request(r)
                             for b, r in zip(base, runs)]
                out(f"| {server} | {fmt3(rps)} | "
                    f"{statistics.median(r['latency_us']['p50'] for r in runs):.1f} | "
                    f"{statistics.median(r['latency_us']['p99'] for r in runs):.1f} | "
                    f"{statistics.median(r['latency_us']['p999'] for r in runs):.1f} | "
                    f"{fmt3(cpu, 3)} | "
                    f"{statistics.median(1e6 * r['cpu_s'] / r['requests'] for r in runs):.3f} | "
                    f"{sum(sum(r['errors'].values()) for r in runs)} | "
                    f"{statistics.median(ratio_rps):.2f} | {statistics.median(ratio_cpu):.2f} |")
                results[(name, server, "ratio_rps")] = statistics.median(ratio_rps)
                results[(name, server, "ratio_cpu")] = statistics.median(ratio_cpu)
                results[(name, server, "p99")] = statistics.median(
                    r["latency_us"]["p99"] for r in runs)

        def ratio(name, server, what):
            return results.get((name, server, what))

        for name in ("echo64-c50-p16", "ping-c50-p16", "heartbeat16-c50-p16"):
            floor, tokio = ratio(name, "floor", "ratio_cpu"), ratio(name, "tokio", "ratio_cpu")
            if floor is not None:
                targets.append((f"{name}: server CPU/request <= 1.05x the floor",
                                floor <= 1.05, f"{floor:.2f}x"))
            if tokio is not None:
                targets.append((f"{name}: server CPU/request below tokio", tokio < 1.0,
                                f"{tokio:.2f}x"))
        for name, *_ in SCENARIOS:
            value = ratio(name, "tokio", "ratio_rps")
            if value is not None:
                targets.append((f"{name}: requests/s not below tokio", value >= 1.0,
                                f"{value:.2f}x"))
        value = ratio("ping-c50-p16", "redis", "ratio_rps")
        if value is not None:
            targets.append(("PING c=50 P=16: >= 1.3x Redis requests/s", value >= 1.3,
                            f"{value:.2f}x"))
            cpu = ratio("ping-c50-p16", "redis", "ratio_cpu")
            targets.append(("PING c=50 P=16: <= 0.7x Redis CPU/request", cpu <= 0.7,
                            f"{cpu:.2f}x"))
        ours, blocking = ratio("ping-c1-p1", "reactor", "p99"), ratio("ping-c1-p1", "blocking",
                                                                       "p99")
        if ours is not None and blocking is not None:
            targets.append(("c=1 P=1: p99 within 1.1x the blocking server",
                            ours <= 1.1 * blocking, f"{ours:.1f} vs {blocking:.1f} µs "
                            f"({ours / blocking:.2f}x)"))

        if want("idle"):
            out()
            out("## 10,000 idle connections: server RSS per connection")
            out()
            out("| server | bytes per connection |")
            out("|---|---|")
            for server in ("reactor", "tokio", "blocking", "redis"):
                if server in servers:
                    per = idle_rss_per_connection(servers[server], 10_000)
                    out(f"| {server} | {per:,.0f} |")
                    if server == "reactor":
                        targets.append(("<= 1 KiB of RSS per idle connection (aim 512 B)",
                                        per <= 1024, f"{per:,.0f} B"))

        if want("many"):
            out()
            out("## 15,000 connections, one PING per second each (open loop)")
            out()
            sources = ",".join(f"127.0.0.{i}" for i in range(1, 5))
            result = many_clients(servers["reactor"], 15_000, max(10, int(opts.duration)),
                                  sources)
            errors = sum(result["errors"].values())
            lat = result["latency_us"]
            out(f"reactor: {result['requests']:,} requests, {errors} errors, p50 {lat['p50']} "
                f"µs, p99 {lat['p99']} µs, p99.9 {lat['p999']} µs, max {lat['max']} µs")
            targets.append(("15,000 connections at 1 PING/s: 0 errors, p99 < 2 ms",
                            errors == 0 and lat["p99"] < 2000,
                            f"{errors} errors, p99 {lat['p99']} µs"))

        if have_redis and want("ping-c50-p16"):
            ours = [r["requests_per_s"] for r in results.get(("ping-c50-p16", "redis"), [])]
            theirs = [redis_benchmark(2_000_000) for _ in range(min(opts.repeats, 3))]
            out()
            out(f"tcp-load vs redis-benchmark against Redis (PING inline, c=50, P=16, one "
                f"core): tcp-load {fmt3(ours)} req/s, redis-benchmark {fmt3(theirs)} req/s")
            targets.append(("tcp-load drives Redis at >= redis-benchmark's rate",
                            statistics.median(ours) >= statistics.median(theirs),
                            f"{statistics.median(ours) / statistics.median(theirs):.2f}x"))

        out()
        out("## Targets")
        out()
        for what, met, figure in targets:
            out(f"- {'met' if met else 'MISSED'}: {what}: {figure}")
    finally:
        for server in servers.values():
            server.stop()
    if opts.out:
        with open(opts.out, "w") as f:
            f.write("\n".join(report) + "\n")
    # A full run regenerates BENCHMARKS.md; a quick or partial one only if asked to.
    update = opts.update or ("" if opts.quick or opts.only else
                             os.path.join(ROOT, "BENCHMARKS.md"))
    if update:
        update_benchmarks(update, report, results, opts)


HDR_DIR = os.path.join(ROOT, "target", "bench-compare")
CHART_DIR = os.path.join(ROOT, "docs", "bench")
BEGIN, END = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"
COLORS = {"reactor": "#1f77b4", "tokio": "#ff7f0e", "blocking": "#2ca02c", "floor": "#7f7f7f",
          "redis": "#d62728"}


def update_benchmarks(path, report, results, opts):
    """Writes the charts and puts the report between the markers of `path`."""
    os.makedirs(CHART_DIR, exist_ok=True)
    with open(os.path.join(CHART_DIR, "requests_per_s.svg"), "w") as f:
        f.write(bars_svg(results))
    charts = ["![requests/s per server and scenario](docs/bench/requests_per_s.svg)"]
    for name, *_ in SCENARIOS:
        curves = {}
        for server in COLORS:
            hgrm = os.path.join(HDR_DIR, f"{name}.{server}.hgrm")
            if os.path.exists(hgrm):
                curves[server] = read_hgrm(hgrm)
        if curves:
            with open(os.path.join(CHART_DIR, f"latency_{name}.svg"), "w") as f:
                f.write(latency_svg(name, curves))
            charts.append(f"![latency percentiles, {name}](docs/bench/latency_{name}.svg)")
    # The report's sections sit under BENCHMARKS.md's own "## Results" heading.
    body = [("#" + line) if line.startswith("## ") else line for line in report[1:]]
    generated = "\n".join([BEGIN, "", *body, "", "### Charts", "",
                           *[c + "\n" for c in charts], END])
    with open(path) as f:
        text = f.read()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + generated + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + generated + "\n"
    with open(path, "w") as f:
        f.write(text)


def bars_svg(results):
    """One panel per scenario: a bar per server, median requests/s, scaled to the panel."""
    rows = []
    for name, members, *_ in SCENARIOS:
        medians = [(server, statistics.median(r["requests_per_s"] for r in results[(name, server)]))
                   for server in members if (name, server) in results]
        if medians:
            rows.append((name, medians))
    bar_h, gap, left, width = 16, 26, 170, 420
    height = sum(len(m) * bar_h + gap for _, m in rows) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 110}" '
             f'height="{height}" font-family="sans-serif" font-size="11">']
    y = 10
    for name, medians in rows:
        parts.append(f'<text x="4" y="{y + 10}" font-weight="bold">{name}</text>')
        y += 14
        top = max(v for _, v in medians)
        for server, value in medians:
            w = max(1, width * value / top)
            parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{server}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 3}" '
                         f'fill="{COLORS[server]}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 11}">{value:,.0f}/s</text>')
            y += bar_h
        y += gap - 14
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def read_hgrm(path):
    """(percentile, latency µs) points of a tcp-load --hdr-out file."""
    points = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and not line.startswith("#"):
                try:
                    value, percentile = float(fields[0]), float(fields[1])
                except ValueError:
                    continue
                if percentile < 1.0:
                    points.append((percentile, value))
    return points


def latency_svg(name, curves):
    """Latency against percentile, x on the usual 1/(1-p) log scale (50 %, 90 %, ... 99.99 %)."""
    import math
    left, top, width, height = 60, 24, 460, 240
    xmax = 4.0  # up to 99.99 %
    ymax = max(v for points in curves.values() for _, v in points if _ <= 0.9999)
    ymax = 10 ** math.ceil(math.log10(max(ymax, 1.0)))
    ymin = 10.0
    def px(p):
        return left + width * min(-math.log10(1 - p), xmax) / xmax
    def py(v):
        v = min(max(v, ymin), ymax)
        return top + height * (1 - (math.log10(v) - math.log10(ymin)) /
                               (math.log10(ymax) - math.log10(ymin)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" '
             f'height="{top + height + 40}" font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="14" font-weight="bold">{name}: latency (µs, log) by '
             f'percentile</text>',
             f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" '
             f'stroke="#999"/>']
    for i, label in enumerate(["0%", "90%", "99%", "99.9%", "99.99%"]):
        x = left + width * i / xmax
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + height}" '
                     f'stroke="#eee"/><text x="{x:.1f}" y="{top + height + 14}" '
                     f'text-anchor="middle">{label}</text>')
    decade = ymin
    while decade <= ymax:
        y = py(decade)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" '
                     f'stroke="#eee"/><text x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{decade:g}</text>')
        decade *= 10
    for i, (server, points) in enumerate(curves.items()):
        path = " ".join(f"{px(p):.1f},{py(v):.1f}" for p, v in points if p <= 0.9999)
        parts.append(f'<polyline fill="none" stroke="{COLORS[server]}" stroke-width="1.5" '
                     f'points="{path}"/>')
        parts.append(f'<text x="{left + width + 8}" y="{top + 12 + 14 * i}" '
                     f'fill="{COLORS[server]}">{server}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def server_us_per_request(result):
    return 1e6 * result["server_cpu_s"] / max(result["requests"], 1)


def platform_line():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


if __name__ == "__main__":
    main()
