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
# The package packs as its ecosystem expects: the built modules with their types, for every export.
npm pack --dry-run --json --loglevel=error | node -e '
  const files = new Set(JSON.parse(require("fs").readFileSync(0, "utf8"))[0].files.map((f) => f.path));
  const exported = Object.values(require("./package.json").exports).flatMap((e) => [e.import, e.types]);
  const missing = exported.map((p) => p.replace(/^\.\//, "")).filter((p) => !files.has(p));
  if (missing.length) throw new Error(`the package lacks ${missing.join(", ")}`);
  console.log(`@agentwire/publisher packs ${files.size} files, every export with its types`);
'
