#!/usr/bin/env bash
# Set up (first run only) and serve the bundled models on http://127.0.0.1:8000.
# Uses the GPU through ONNX Runtime's CUDA provider when one works, else the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/latentserve ] || scripts/setup.sh server
exec .venv/bin/latentserve serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" "$@"
