#!/usr/bin/env bash
# Scenario c of bench/run.sh (100 threads x 1 subscriber, 10,000 publishes/s)
# on agentwire's durable store, then its memory store, `runs` times each in
# turn. Prints per run: publish -> delivery p50 / p99 as the load generator
# sees it, the server's own append -> socket-write lag (its
# agentwire_delivery_lag_seconds histogram, read from /metrics before and
# after), the server's CPU and the load generator's own CPU.
#   bench/scenario_c.sh [runs] [seconds]      (default 5 runs of 4 s; loopback only, bounded)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-5}"
seconds="${2:-4}"
cd "$root"
cargo build --release --locked -p agentwire -p agentwire-bench >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data="$(mktemp -d)"
server_pid=""
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$data"' EXIT

run() { # store n
  local store=$1 n=$2 port
  port=$(free_port)
  rm -rf "$data/aw"
  AGENTWIRE_LOG=warn ./target/release/agentwire serve --listen "127.0.0.1:$port" --store "$store" \
    --data-dir "$data/aw" --max-connections-per-user 1000000 --max-connections-per-ip 1000000 \
    --publish-rate 0 --send-queue 65536 >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  ./target/release/loadgen --target agentwire --url "http://127.0.0.1:$port" --pid "$server_pid" \
    --threads 100 --subs 1 --rate 10000 --seconds "$seconds" \
    | python3 -c '
import json, sys
d = json.load(sys.stdin)
lag = d.get("delivery_lag_ms") or {}
l = d["latency_ms"]
row = [sys.argv[1], sys.argv[2], d["deliveries"], d["lost"],
       "%.2f / %.2f ms" % (float(l["p50"]), float(l["p99"])),
       "%.2f / %.2f ms" % (lag.get("p50", float("nan")), lag.get("p99", float("nan"))),
       "%.2f s" % d["cpu_seconds"], "%.2f s" % d["loadgen_cpu_seconds"]]
print("| " + " | ".join(str(c) for c in row) + " |")
' "$store" "$n"
  kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

echo "| store | run | delivered | lost | publish -> delivery p50 / p99 | server lag p50 / p99 | server CPU | load generator CPU |"
echo "|---|---:|---:|---:|---|---|---:|---:|"
for n in $(seq "$runs"); do
  run embedded "$n"
  run memory "$n"
done
