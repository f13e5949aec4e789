#!/usr/bin/env bash
# Refresh the dependency locks requirements/*.txt from pyproject.toml's server and client extras
# (needs PyPI; uv resolves for CPython 3.11 on Linux x86_64). Existing pins are kept where they
# still fit; `scripts/lock.sh --upgrade` moves every pin to the newest release.
# `python -m deploy.lock --check` (and tests/test_lock.py) fail until this has been run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || scripts/setup.sh all
"$py" -c "import uv" 2>/dev/null || "$py" -m pip install -q "uv>=0.5"
exec "$py" -m deploy.lock "$@"
