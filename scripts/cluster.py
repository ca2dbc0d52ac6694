"""Chat across nodes over Redis (`--cluster-redis`), measured with tcp-load's chat workload.

Each run starts a fresh `redis-server` (no persistence) and two tcp-reactor nodes, then one
tcp-load `--workload chat` with every session on node A, or spread over A and B (`--addr`
twice: connection j goes to address j mod 2). Cases:

- plain:    the two nodes without --cluster-redis, every session on A (the baseline);
- one-node: both nodes clustered, every session on A (each SAY still published to Redis);
- across:   both nodes clustered, half the sessions on each (half the deliveries cross).

Prints a Markdown table of medians, and each run's figures with the node's cluster_* keys.
Usage: scripts/cluster.sh [--sessions 200] [--duration 5] [--repeats 3] [--rate SAYS_PER_S]
                          [--workers N]
"""

import argparse
import json
import socket
import statistics
import subprocess
import time

RELEASE = "target/release/"
REDIS_PORT = 16390
NODES = [(17101, 17102), (17111, 17112)]


def wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def stats(port):
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(b"STATS\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(4096)
    return dict(pair.split("=") for pair in line.decode().split()[1:])


def run(case, opts):
    redis = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--save", "",
                              "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = []
    try:
        wait_for(lambda: answers(REDIS_PORT), "redis-server")
        for line, frame in NODES:
            args = [RELEASE + "tcp-reactor", "--line-addr", f"127.0.0.1:{line}",
                    "--frame-addr", f"127.0.0.1:{frame}", "--workers", str(opts.workers)]
            if case != "plain":
                args += ["--cluster-redis", f"127.0.0.1:{REDIS_PORT}"]
            nodes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            wait_for(lambda: answers(line), f"node on {line}")
            if case != "plain":
                wait_for(lambda: stats(line)["cluster_up"] == "1", f"cluster_up on {line}")
        addrs = ["--addr", f"127.0.0.1:{NODES[0][0]}"]
        if case == "across":
            addrs += ["--addr", f"127.0.0.1:{NODES[1][0]}"]
        command = [RELEASE + "tcp-load", *addrs, "--protocol", "line", "--workload", "chat",
                   "--connections", str(opts.sessions), "--duration", f"{opts.duration}s",
                   "--warmup", "1s", "--json"]
        if opts.rate:
            command += ["--rate", str(opts.rate)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        cluster = {k: v for k, v in stats(NODES[0][0]).items() if k.startswith("cluster_")}
    finally:
        for node in nodes:
            node.terminate()
            node.wait()
        redis.terminate()
        redis.wait()
    report = json.loads(out.stdout)
    chat = report["chat"]
    errors = chat["missing"] + chat["duplicated"] + chat["reordered"] + \
        chat["disconnected"] + sum(report["errors"].values())
    latency = chat["delivery_latency_us"]
    return chat["deliveries_per_s"], latency["p50"], latency["p99"], errors, cluster


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, help="SAYs per second in total (open loop)")
    parser.add_argument("--workers", type=int, default=1, help="--workers of each node")
    opts = parser.parse_args()
    loop = f"open loop, {opts.rate:,} SAYs/s" if opts.rate else "closed loop"
    print(f"## Chat over Redis: {opts.sessions} sessions, {loop}\n")
    rows = []
    for case in ("plain", "one-node", "across"):
        runs = [run(case, opts) for _ in range(opts.repeats)]
        for figures in runs:
            print(f"  {case}: {figures}", flush=True)
        rows.append((case, statistics.median(r[0] for r in runs),
                     statistics.median(r[1] for r in runs),
                     statistics.median(r[2] for r in runs), sum(r[3] for r in runs)))
    print("\n| sessions | deliveries/s | delivery p50 (ms) | delivery p99 (ms) | errors |")
    print("|---|---|---|---|---|")
    for case, rate, p50, p99, errors in rows:
        print(f"| {case} | {rate:,.0f} | {p50 / 1000:.1f} | {p99 / 1000:.1f} | {errors} |")


if __name__ == "__main__":
    main()
