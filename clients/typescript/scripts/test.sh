#!/usr/bin/env bash
# The Node publisher's tests: installs its npm packages (the AI SDK too, for its
# adapter's tests), builds it with tsc, builds agentwire, and runs the tests
# against real agentwire processes on loopback ports.
set -euo pipefail
pkg="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$pkg/../.." && pwd)"
cd "$pkg"
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
(cd "$root" && cargo build --locked -p agentwire)
AGENTWIRE_BIN="$root/target/debug/agentwire" npm test
