#!/usr/bin/env bash
# Set up everything (first run only) and run lint, types and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] && .venv/bin/python -c "import torch, fastapi, onnx, fastapi_offline, playwright" 2>/dev/null \
  || scripts/setup.sh all
. .venv/bin/activate
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy service training tests $([ -d bench ] && echo bench)
echo "== pytest"; python -m pytest "$@"
