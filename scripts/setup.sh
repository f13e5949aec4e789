#!/usr/bin/env bash
# Create .venv and install latentserve with the given extras (default: server).
#   scripts/setup.sh server            # serve only
#   scripts/setup.sh all               # every extra: server, grpc, training, client, bench,
#                                      # dev and test-clients (what the tests need)
# Torch is installed first and pinned, so pip does not pull a multi-GB CUDA build on a CPU
# machine; set TORCH_INDEX_URL (e.g. the PyTorch CPU wheel index) where plain PyPI would.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-server}
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$extras" = "all" ]; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" --index-url "$TORCH_INDEX_URL"
  else
    python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  fi
  extras="server,grpc,training,client,bench,dev,test-clients"
fi
python -m pip install -q -e ".[${extras}]"
echo "installed latentserve[${extras}] into .venv"
