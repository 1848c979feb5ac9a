#!/usr/bin/env bash
# agentwire on one node with the embedded store, side by side with 1 and 3
# nodes over Redis Streams and NATS JetStream (the machine's own services).
# Same workload for each: subscribers spread over the nodes, publishes spread
# over the nodes, every delivery checked and timed by loadgen. Loopback only;
# each run is bounded by --seconds. Prints a markdown table.
#   bench/cluster.sh [seconds] [publishes-per-second]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-5}"
rate="${2:-2000}"
redis_url="${REDIS_URL:-redis://127.0.0.1:6379}"
nats_url="${NATS_URL:-nats://127.0.0.1:4222}"
cd "$root"
cargo build --release --locked -p agentwire -p agentwire-bench >/dev/null
data="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$data"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_nodes N backbone prefix: starts N nodes; sets $urls and $node_pids (comma-separated).
start_nodes() {
  local n=$1 backbone=$2 prefix=$3 ports=() started=()
  for i in $(seq "$n"); do
    local p; p=$(free_port)
    AGENTWIRE_LOG=warn ./target/release/agentwire serve --listen "127.0.0.1:$p" --backbone "$backbone" --allow-weak-durability \
      --backbone-prefix "$prefix" --node-id "bench$i" --data-dir "$data/$prefix-$i" \
      --max-connections-per-user 1000000 --max-connections-per-ip 1000000 --publish-rate 0 >/dev/null 2>&1 &
    pids+=($!); started+=($!); ports+=("$p")
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.1; done
  done
  urls=$(printf 'http://127.0.0.1:%s,' "${ports[@]}"); urls=${urls%,}
  node_pids=$(IFS=,; echo "${started[*]}")
}

stop_nodes() { IFS=, read -ra ps <<<"$node_pids"; kill "${ps[@]}" 2>/dev/null || true; wait "${ps[@]}" 2>/dev/null || true; }

echo "| setup | publishes/s taken | deliveries/s | lost / dup | latency p50 / p99 / p999 / max (ms) | servers' CPU (s) | deliveries vs embedded |"
echo "|---|---:|---:|---|---|---:|---:|"
base_rate=""
measure() { # label nodes backbone
  local label=$1 n=$2 backbone=$3 prefix="bench$RANDOM$RANDOM"
  start_nodes "$n" "$backbone" "$prefix"
  local report
  report=$(./target/release/loadgen --target agentwire --url "$urls" --threads 10 --subs 10 \
    --rate "$rate" --seconds "$seconds" --pid "$node_pids" 2>/dev/null)
  stop_nodes
  local row
  row=$(python3 - "$label" "$base_rate" "$report" <<'PY'
import json, sys
label, base, d = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
l = d["latency_ms"]
rate = d["published"] / d["publish_seconds"]
ratio = "1.00" if not base else "{:.2f}".format(d["deliveries_per_s"] / float(base))
print("| {} | {:,.0f} | {:,.0f} | {} / {} | {} / {} / {} / {} | {:.2f} | {} |\t{}".format(
    label, rate, d["deliveries_per_s"], d["lost"], d["duplicated"],
    l["p50"], l["p99"], l["p999"], l["max"], d["cpu_seconds"], ratio, d["deliveries_per_s"]))
PY
)
  echo "${row%%$'\t'*}"
  [ -n "$base_rate" ] || base_rate="${row##*$'\t'}"
}
measure "embedded, 1 node" 1 embedded
measure "Redis Streams, 1 node" 1 "$redis_url"
measure "Redis Streams, 3 nodes" 3 "$redis_url"
measure "NATS JetStream, 1 node" 1 "$nats_url"
measure "NATS JetStream, 3 nodes" 3 "$nats_url"
echo
echo "10 threads x 10 subscribers, $rate publishes/s for $seconds s; subscribers and publishes spread over the nodes."
