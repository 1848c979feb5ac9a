#!/usr/bin/env bash
# Scenario d of bench/run.sh (token streaming: 100 runs x 200 deltas/s, one
# subscriber each) three ways in one run: agentwire on its durable store with a
# request per delta, agentwire with the deltas over one publisher WebSocket
# (--stream-publish), and socket.io 4. Prints the server CPU per delivered
# event of each and the ratios to socket.io's.
#   bench/stream_d.sh [seconds]      (default 8; loopback only, bounded)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-8}"
cd "$root"
cargo build --release --locked -p agentwire -p agentwire-bench >/dev/null
(cd bench/peers/socketio && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data="$(mktemp -d)"
server_pid=""
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$data"' EXIT
args=(--threads 100 --subs 1 --rate 20000 --seconds "$seconds" --shape delta)

run() { # name system [loadgen args...]
  local name=$1 system=$2 port; shift 2
  port=$(free_port)
  rm -rf "$data/aw"
  case "$system" in
    agentwire) AGENTWIRE_LOG=warn ./target/release/agentwire serve --listen "127.0.0.1:$port" \
        --data-dir "$data/aw" --max-connections-per-user 1000000 --max-connections-per-ip 1000000 \
        --publish-rate 0 --send-queue 65536 >/dev/null 2>&1 & ;;
    socketio) PORT="$port" node bench/peers/socketio/server.mjs >/dev/null 2>&1 & ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  ./target/release/loadgen --target "$system" --url "http://127.0.0.1:$port" --pid "$server_pid" "${args[@]}" "$@" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], d["published"], d["deliveries"], d["cpu_seconds"], d["latency_ms"]["p99"], d.get("refused", 0))' "$name"
  kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

{
  run "agentwire, a request per delta" agentwire
  run "agentwire, one publisher WebSocket" agentwire --stream-publish
  run "socket.io 4" socketio
} | python3 -c '
import sys
rows = [line.rsplit(" ", 5) for line in sys.stdin.read().splitlines()]
peer = rows[-1]
peer_cpu = float(peer[3]) / max(int(peer[2]), 1)
print("| system | published | delivered | server CPU | CPU per delivered event | vs socket.io | p99 | refused |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, published, delivered, cpu, p99, refused in rows:
    per = float(cpu) / max(int(delivered), 1)
    print(f"| {name} | {published} | {delivered} | {float(cpu):.2f} s | {per*1e6:.1f} µs | {per/peer_cpu:.2f}x | {float(p99):.1f} ms | {refused} |")
'
