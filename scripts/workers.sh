#!/usr/bin/env bash
# What several loops cost and give (scripts/workers.py): server CPU per request with
# --workers 1 and 2, the balance of each --balance mode over 10,000 connections, short
# connections per second, chat deliveries across workers, and a projection to 8 and 16 cores.
#   scripts/workers.sh                          # --workers 1,2, 3 runs each
#   scripts/workers.sh --workers 1,4,8 --repeats 5 --json workers.json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec python3 scripts/workers.py "$@"
