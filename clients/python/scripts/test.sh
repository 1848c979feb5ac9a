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
# The package builds as its ecosystem expects: a wheel and an sdist that carry the
# type marker, every module and the extras.
"$venv/bin/pip" install --quiet --disable-pip-version-check build
rm -rf "$root/target/py-dist"
"$venv/bin/python" -m build --sdist --wheel --outdir "$root/target/py-dist" "$here" >/dev/null
rm -rf "$here/build"   # setuptools' scratch copy, not the project's
"$venv/bin/python" scripts/check_dist.py "$root/target/py-dist"
