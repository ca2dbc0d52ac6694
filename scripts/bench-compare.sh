#!/usr/bin/env bash
# Builds tcp-reactor, tcp-load and the comparison servers in release mode, then measures them
# side by side in one run (see scripts/bench_compare.py for the method and options).
#   scripts/bench-compare.sh                 # 5 repeats: the figures in BENCHMARKS.md
#   scripts/bench-compare.sh --quick         # 1 short repeat: a smoke run
#   scripts/bench-compare.sh --only ping-c50-p16,idle --repeats 3
set -euo pipefail
cd "$(dirname "$0")/.."

command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server for the Redis comparison" >&2
  (apt-get install -y redis-server >/dev/null 2>&1 \
    || (apt-get update >/dev/null 2>&1 && apt-get install -y redis-server >/dev/null 2>&1)) \
    || echo "could not install redis-server: the Redis rows will be missing" >&2
fi
# A Redis started by the package would hold its port and CPU during the measurements.
pgrep -x redis-server >/dev/null && { echo "stop the running redis-server first" >&2; exit 1; }

cargo build --release --bins --examples
cc -O2 -o target/release/floor bench/floor.c
exec python3 scripts/bench_compare.py "$@"
