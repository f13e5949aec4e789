#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_browser.py), where this machine allows it:
# as root with apt-get. Playwright's own browser download is not used (it cannot happen on a
# closed network). Without /usr/bin/chromium the browser tests are skipped, with the reason.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "chromium: not installed (needs root and apt-get); the browser tests will be skipped" >&2
  exit 0
fi
echo "== chromium (apt-get, for the browser tests)"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium \
  fonts-dejavu-core; } >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
rm -f "$log"
/usr/bin/chromium --version 2>/dev/null
