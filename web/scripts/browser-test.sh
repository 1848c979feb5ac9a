#!/usr/bin/env bash
# Browser and AG-UI client tests: installs what they need (Debian's Chromium, the npm packages),
# checks that the committed web/dist matches web/src, builds agentwire, and runs
# the Playwright tests against it. UPDATE_SCREENSHOTS=1 writes docs/screenshots.
set -euo pipefail
web="$(cd "$(dirname "$0")/.." && pwd)"
root="$(cd "$web/.." && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -q chromium || { $sudo_cmd apt-get update -q && $sudo_cmd apt-get install -y -q chromium; }
fi

cd "$web"
npm ci --no-audit --no-fund --loglevel=error
npm run --silent check
(cd "$root" && cargo build --locked -p agentwire)
AGENTWIRE_BIN="$root/target/debug/agentwire" CHROMIUM="$(command -v chromium)" npm test
