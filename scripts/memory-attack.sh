#!/usr/bin/env bash
# Builds the release binaries, then measures the server's memory and PING latency while
# attackers park large partial frames (see scripts/memory_attack.py for the method).
#   scripts/memory-attack.sh                                  # budgets default,256MiB x 0,100,1000
#   scripts/memory-attack.sh --budgets 64MiB --attackers 0,1000 --repeats 3
#   scripts/memory-attack.sh --check-peak-rss 1200 --json target/memory-attack.json
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
cargo build --release --bins
exec python3 scripts/memory_attack.py "$@"
