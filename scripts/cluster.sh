#!/usr/bin/env bash
# Chat over two nodes sharing one Redis (scripts/cluster.py): deliveries/s and delivery
# latency for sessions on one node against sessions spread over two, with every delivery
# checked by tcp-load.
#   scripts/cluster.sh                          # 200 sessions, closed loop, 3 runs of 5 s
#   scripts/cluster.sh --rate 1000 --repeats 5  # open loop: 1,000 SAYs/s in total
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || apt-get install -y redis-server >/dev/null
cargo build --release --bins
exec python3 scripts/cluster.py "$@"
