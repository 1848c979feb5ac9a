#!/usr/bin/env bash
# Property-based API tests: schemathesis generates requests from /openapi.json and
# checks that no answer is a server error, and that every answer's status, content
# type and body match the spec. Bounded in examples and time; loopback only. Once
# with a user's token and once with a publish key, so both kinds of routes are reached.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/py-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"
(cd "$root" && cargo build --locked -p agentwire)

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
data="$(mktemp -d)"
env -u AGENTWIRE_JWT_SECRET -u AGENTWIRE_PUBLISH_KEY AGENTWIRE_LOG=warn \
  "$root/target/debug/agentwire" serve --listen "127.0.0.1:$port" --data-dir "$data" --demo-step-delay 0s >/dev/null &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
token="$(curl -sf "$base/dev/token?user=schemathesis" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

# schemathesis keeps a cache in its working directory: keep it under target/.
cd "$root/target"
for bearer in "$token" "dev-publish-key"; do
  timeout 300 "$venv/bin/schemathesis" run "$base/openapi.json" \
    -H "Authorization: Bearer $bearer" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples 25 --seed 1 \
    --exclude-path /v1/ws --exclude-path /v1/publish --exclude-path /v1/agui \
    --exclude-path /v1/admin/stream --exclude-path '/v1/threads/{thread_id}/stream'
done
