#!/usr/bin/env bash
# Builds the release binaries, then measures the server's defences: PING latency beside logins
# being verified, CPU while out of descriptors, TLS throughput and handshakes (see
# scripts/bench_secure.py for the method).
#   scripts/bench-secure.sh                      # every part, 3 repeats
#   scripts/bench-secure.sh --only logins --repeats 5
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl is required (it makes the test certificate)" >&2; exit 1; }
cargo build --release --bins
exec python3 scripts/bench_secure.py "$@"
