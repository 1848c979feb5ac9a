#!/usr/bin/env bash
# One event per HTTP request, as `wrk` sends it (64 keep-alive connections,
# each request an `agent_thinking` with an event_id to one of 64 runs in 64
# threads), against agentwire on its durable store and on its memory store,
# one after the other in the same run. Prints requests/s, latency and server
# CPU of each, and durable / memory: the share of the memory store's rate the
# disk leaves (issue 16 wants at least 0.90).
#   bench/http_publish.sh [seconds] [connections] [nosync]   (default 10 s, 64; loopback only, bounded)
# With `nosync`, a third row runs the durable store under eatmydata (fsync
# and fdatasync do nothing, O_DSYNC is dropped at open; the journal's direct
# writes still reach the device, without its cache flush): what the store
# costs without the disk's syncs, to tell the syncs' share of the gap from
# the store's own work.
# Needs wrk (Debian: apt-get install wrk; eatmydata for `nosync`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-10}"
connections="${2:-64}"
nosync="${3:-}"
cd "$root"
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 1; }
if [ -n "$nosync" ]; then
  command -v eatmydata >/dev/null || { echo "eatmydata is not installed (Debian: apt-get install eatmydata)" >&2; exit 1; }
fi
cargo build --release --locked -p agentwire >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data="$(mktemp -d)"
server_pid=""
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$data"' EXIT

run() { # store [label] [command prefix]
  local store=$1 label=${2:-$1} port
  port=$(free_port)
  rm -rf "$data/aw"
  AGENTWIRE_LOG=warn ${3:-} ./target/release/agentwire serve --listen "127.0.0.1:$port" --store "$store" \
    --data-dir "$data/aw" --publish-rate 0 --max-connections-per-user 1000000 \
    --max-connections-per-ip 1000000 >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  : > "$data/runs"
  for i in $(seq "$connections"); do
    curl -fsS -X POST "http://127.0.0.1:$port/v1/runs" -H 'Authorization: Bearer dev-publish-key' \
      -H 'Content-Type: application/json' -d "{\"thread_id\":\"thread_wrk$i\",\"user_id\":\"bench\"}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])' >> "$data/runs"
  done
  while read -r run; do
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/v1/runs/$run/events" \
      -H 'Authorization: Bearer dev-publish-key' -H 'Content-Type: application/json' \
      -d '{"event":"agent_started","data":{"agent_name":"wrk"}}'
  done < "$data/runs"
  local ticks_before ticks_after
  ticks_before=$(awk '{print $14+$15}' "/proc/$server_pid/stat")
  RUNS_FILE="$data/runs" wrk -t2 -c"$connections" -d"${seconds}s" --latency -s bench/wrk/publish.lua \
    "http://127.0.0.1:$port" > "$data/wrk.out"
  ticks_after=$(awk '{print $14+$15}' "/proc/$server_pid/stat")
  local rate p50 p99 cpu
  rate=$(awk '/Requests\/sec/ {print $2}' "$data/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$data/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$data/wrk.out")
  cpu=$(python3 -c "print(($ticks_after-$ticks_before)/$(getconf CLK_TCK))")
  if grep -q "unexpected status" "$data/wrk.out"; then grep -m1 "unexpected status" "$data/wrk.out" >&2; fi
  echo "$label $rate $p50 $p99 $cpu"
  kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

{
  run embedded
  if [ -n "$nosync" ]; then run embedded embedded-without-syncs eatmydata; fi
  run memory
} | python3 -c '
import sys
rows = [line.split() for line in sys.stdin.read().splitlines()]
memory = float(rows[-1][1])
print("| store | requests/s (1 event each) | vs memory | latency p50 / p99 | server CPU |")
print("|---|---:|---:|---|---:|")
for store, rate, p50, p99, cpu in rows:
    print(f"| {store} | {float(rate):,.0f} | {float(rate)/memory:.2f}x | {p50} / {p99} | {float(cpu):.1f} s |")
'
