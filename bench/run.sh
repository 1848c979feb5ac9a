#!/usr/bin/env bash
# The whole comparison in one command: agentwire (embedded store, and memory
# store) against socket.io 4, Node.js ws and the seed stack (FastAPI + uvicorn),
# over every scenario of issue 8, then BENCHMARKS.md's generated section and the
# charts under docs/bench/ are rewritten from the results.
#   bench/run.sh [seconds-per-run]        (about 10 minutes with the default 4)
# Loopback only; every run is bounded by its seconds plus a drain of at most 10 s;
# each system is started fresh for each scenario and stopped after it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-4}"
venv="$root/target/py-venv"
out="$root/target/bench"
cd "$root"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

cargo build --release --locked -p agentwire -p agentwire-bench >/dev/null
for peer in ws-fanout socketio; do
  (cd "bench/peers/$peer" && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
done
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/peers/fastapi/requirements.txt
# Tens of thousands of sockets: as many descriptors as this machine allows.
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data="$(mktemp -d)"
server_pid=""
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$data"' EXIT

start() { # system -> sets server_pid, url
  local system=$1 port; port=$(free_port)
  case "$system" in
    agentwire | agentwire-memory)
      local store=embedded; [ "$system" = agentwire-memory ] && store=memory
      rm -rf "$data/aw"
      AGENTWIRE_LOG=warn ./target/release/agentwire serve --listen "127.0.0.1:$port" --store "$store" \
        --data-dir "$data/aw" --max-connections-per-user 1000000 --max-connections-per-ip 1000000 \
        --publish-rate 0 --send-queue 65536 >/dev/null 2>&1 &;;
    socketio) PORT="$port" node bench/peers/socketio/server.mjs >/dev/null 2>&1 &;;
    ws) PORT="$port" node bench/peers/ws-fanout/server.mjs >/dev/null 2>&1 &;;
    fastapi) PORT="$port" "$venv/bin/python" bench/peers/fastapi/server.py >/dev/null 2>&1 &;;
  esac
  server_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  url="http://127.0.0.1:$port"
}

stop() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

scenario() { # id title loadgen-args...
  local id=$1 title=$2; shift 2
  for system in agentwire agentwire-memory socketio ws fastapi; do
    local target=${system%-memory}
    start "$system"
    echo "== $id: $system" >&2
    local report
    if report=$(./target/release/loadgen --target "$target" --url "$url" --pid "$server_pid" --seconds "$seconds" "$@"); then
      python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(scenario=sys.argv[1], title=sys.argv[2], system=sys.argv[4]); print(json.dumps(d))' \
        "$id" "$title" "$report" "$system" >>"$results"
    else
      python3 -c 'import json,sys; print(json.dumps(dict(scenario=sys.argv[1], title=sys.argv[2], system=sys.argv[3], failed=True)))' \
        "$id" "$title" "$system" >>"$results"
    fi
    stop
  done
}

scenario a1 "fan-out: 1 thread x 1,000 subscribers, 1,500 publishes/s" --threads 1 --subs 1000 --rate 1500
scenario a2 "fan-out: 1,000 threads x 1 subscriber, 2,000 publishes/s" --threads 1000 --subs 1 --rate 2000
scenario b10 "idle: 10,000 connections" --threads 100 --subs 100 --mode idle --sources 16
scenario b19 "idle: 19,000 connections (this machine's descriptor limit is 20,000 per process)" --threads 190 --subs 100 --mode idle --sources 16
scenario c "steady: 100 threads x 1 subscriber, 10,000 publishes/s" --threads 100 --subs 1 --rate 10000
scenario d "token streaming: 100 runs x 200 deltas/s" --threads 100 --subs 1 --rate 20000 --shape delta
scenario e "reconnect storm: 5,000 subscribers reconnect at once, 500 publishes/s" --threads 50 --subs 100 --rate 500 --mode storm

cp "$results" docs/bench/results.jsonl
python3 bench/report.py "$results" BENCHMARKS.md docs/bench
echo "wrote BENCHMARKS.md and docs/bench/*.svg from $results" >&2
