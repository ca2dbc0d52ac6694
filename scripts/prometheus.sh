#!/usr/bin/env bash
# A real Prometheus scraping a real tcp-reactor: start the server with --metrics-addr on free
# ports, send it some requests, start Prometheus (Debian's `prometheus` package) with a
# generated config scraping it every second and a temporary storage directory, wait until
# Prometheus has scraped, query tcp_reactor_requests_total through its HTTP API, print it,
# and clean up.
#   scripts/prometheus.sh                 # one worker
#   scripts/prometheus.sh --workers 2     # extra server flags: series labelled by worker
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in prometheus curl python3; do
  command -v "$tool" >/dev/null || { echo "prometheus.sh: needs $tool (apt-get install -y prometheus curl)" >&2; exit 1; }
done
cargo build --release --bins -q

work=$(mktemp -d)
server_pid=
prometheus_pid=
cleanup() {
  [ -n "$prometheus_pid" ] && kill "$prometheus_pid" 2>/dev/null && wait "$prometheus_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The server binds port 0 and logs what it got.
RUST_LOG=info target/release/tcp-reactor --line-addr 127.0.0.1:0 --frame-addr 127.0.0.1:0 \
  --metrics-addr 127.0.0.1:0 "$@" 2>"$work/server.log" &
server_pid=$!
logged() { sed -n "s/.*$1 listener on \([0-9.:]*\).*/\1/p" "$work/server.log" | head -1; }
for _ in $(seq 100); do
  [ -n "$(logged metrics)" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
metrics=$(logged metrics)
line=$(logged line)
[ -n "$metrics" ] || { echo "prometheus.sh: the server logged no metrics listener" >&2; exit 1; }
echo "tcp-reactor: line $line, metrics $metrics"

# 100 PINGs and a QUIT on one connection, and its 101 replies read back.
exec 3<>"/dev/tcp/${line%:*}/${line##*:}"
for _ in $(seq 100); do printf 'PING\n' >&3; done
printf 'QUIT\n' >&3
replies=$(cat <&3 | wc -l)
exec 3<&-
echo "sent 101 requests, read $replies replies"

# Prometheus cannot report a port 0 it bound: ask the kernel for a free one.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tcp-reactor
    static_configs:
      - targets: ["$metrics"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" 2>"$work/prometheus.log" &
prometheus_pid=$!
echo "prometheus: 127.0.0.1:$port, scraping $metrics every 1 s"

query="http://127.0.0.1:$port/api/v1/query?query=tcp_reactor_requests_total"
answer=
for _ in $(seq 60); do
  kill -0 "$prometheus_pid" 2>/dev/null || { tail -20 "$work/prometheus.log" >&2; exit 1; }
  answer=$(curl -sf "$query" || true)
  case "$answer" in *'"result":[{'*) break ;; esac
  sleep 0.5
done
case "$answer" in
  *'"result":[{'*) ;;
  *) echo "prometheus.sh: no sample within 30 s; last answer: $answer" >&2; tail -20 "$work/prometheus.log" >&2; exit 1 ;;
esac
echo "GET /api/v1/query?query=tcp_reactor_requests_total"
echo "$answer"
python3 -c '
import json, sys
for series in json.loads(sys.argv[1])["data"]["result"]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()) if k != "__name__")
    value = series["value"][1]
    print(f"tcp_reactor_requests_total{{{labels}}} = {value}")
' "$answer"
health=$(curl -sf "http://127.0.0.1:$port/api/v1/targets" | python3 -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    print(t["scrapeUrl"], t["health"], t["lastError"] or "no error")')
echo "target: $health"
