#!/usr/bin/env bash
# Per-request costs that do not drift with machine load: callgrind instructions and strace
# syscalls, for tcp-reactor, the tokio server and the bare epoll floor (scripts/profile.py).
#   scripts/profile.sh                  # N = 100,000 requests per measurement
#   scripts/profile.sh --requests 50000 --only reactor,floor
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind strace; do
  command -v "$tool" >/dev/null || apt-get install -y "$tool" >/dev/null
done
cargo build --release --bins --examples
cc -O2 -o target/release/floor bench/floor.c
exec python3 scripts/profile.py "$@"
