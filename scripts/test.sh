#!/usr/bin/env bash
# Set up everything (first run, or when an extra is missing) and run lint, types and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] && .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(
    u.find_spec(m) is None for m in ('torch', 'fastapi', 'onnx', 'grpc', 'tritonclient', 'kserve',
    'ray', 'yaml', 'jsonschema', 'kubernetes_validate', 'dockerfile_parse', 'uv', 'fastapi_offline',
    'playwright')))" 2>/dev/null || scripts/setup.sh all
. .venv/bin/activate
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy service training tests $([ -d bench ] && echo bench) deploy
echo "== pytest"; python -m pytest "$@"
