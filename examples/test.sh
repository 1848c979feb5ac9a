#!/usr/bin/env bash
# Runs every example against a real agentwire and checks the events it produces.
# Uses the Python virtualenv the Python package's tests made (target/py-venv, with
# the framework extras), installs the Node example's packages, builds agentwire
# and the Rust example.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/target/py-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e "$root/clients/python[test]"
(cd "$root/clients/typescript" && npm ci --no-audit --no-fund --loglevel=error)
(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
(cd "$root" && cargo build --locked -p agentwire -p agentwire-example-rust-agent)
cd "$here"
AGENTWIRE_BIN="$root/target/debug/agentwire" "$venv/bin/python" -m pytest -q test_examples.py
