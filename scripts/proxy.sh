#!/usr/bin/env bash
# What the PROXY protocol and HAProxy in front cost (scripts/proxy.py): short connections
# and held ones with and without --proxy-protocol, and PING through HAProxy against direct.
#   scripts/proxy.sh                                 # 3 runs of 5 s each
#   scripts/proxy.sh --repeats 5 --parts haproxy --json proxy.json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec python3 scripts/proxy.py "$@"
