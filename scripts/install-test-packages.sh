#!/usr/bin/env bash
# Debian packages some tests use, where this machine allows it (as root with apt-get):
#   chromium (+ a font)  the browser tests (tests/test_browser.py); Playwright's own browser
#                        download is not used (it cannot happen on a closed network)
#   wrk                  the benchmark's C load generator (bench/wrk.py, tests/test_bench.py)
# Without them those tests are skipped, with the reason.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "not installed (needs root and apt-get): ${missing[*]}; their tests will be skipped" >&2
  exit 0
fi
echo "== ${missing[*]} (apt-get, for the browser and benchmark tests)"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
if [ -x /usr/bin/chromium ]; then /usr/bin/chromium --version 2>/dev/null || true; fi
