#!/usr/bin/env bash
# The Python package's tests, against a real agentwire built from this checkout.
# Installs the package and pytest into a virtualenv under target/ (nothing global).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/py-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e "$here[test]"
(cd "$root" && cargo build --locked -p agentwire)
cd "$here"
AGENTWIRE_BIN="$root/target/debug/agentwire" "$venv/bin/python" -m pytest -q tests
