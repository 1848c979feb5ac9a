#!/usr/bin/env bash
# Runs agentwire and its peers on the same fan-out workloads, one after another,
# and prints a markdown table. Loopback only; every run is bounded by --seconds.
# Installs the peers' packages (npm; a virtualenv under target/) if missing.
#   bench/compare.sh [seconds]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-3}"
venv="$root/target/py-venv"
cd "$root"
cargo build --release --locked -p agentwire -p agentwire-bench >/dev/null
(cd bench/peers/ws-fanout && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/peers/fastapi/requirements.txt

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

start() { # name port command...
  local name=$1 port=$2; shift 2
  "$@" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  eval "pid_$name=$!"
  eval "url_$name=http://127.0.0.1:$port"
}

p=$(free_port); start agentwire "$p" env AGENTWIRE_LOG=warn ./target/release/agentwire serve --listen "127.0.0.1:$p" --store memory \
  --max-connections-per-user 1000000 --max-connections-per-ip 1000000 --send-queue 65536
p=$(free_port); start ws "$p" env PORT="$p" node bench/peers/ws-fanout/server.mjs
p=$(free_port); start fastapi "$p" env PORT="$p" "$venv/bin/python" bench/peers/fastapi/server.py

echo "| scenario | system | deliveries/s | lost / dup | latency p50 / p99 / p999 / max (ms) | server CPU (s) | RSS per connection (KiB) |"
echo "|---|---|---:|---|---|---:|---:|"
run() { # scenario threads subs rate
  for system in agentwire ws fastapi; do
    local pid url
    eval "pid=\$pid_$system; url=\$url_$system"
    ./target/release/loadgen --target "$system" --url "$url" --threads "$2" --subs "$3" --rate "$4" --seconds "$seconds" --pid "$pid" 2>/dev/null \
      | python3 bench/row.py "$1"
  done
}
run "10 threads x 10 subscribers, 2,000 publishes/s" 10 10 2000
run "1 thread x 1,000 subscribers, 200 publishes/s" 1 1000 200
run "100 threads x 10 subscribers, 2,000 publishes/s" 100 10 2000
