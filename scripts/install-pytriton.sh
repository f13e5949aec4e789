#!/usr/bin/env bash
# The benchmark's peer, NVIDIA PyTriton (Triton Inference Server with its Python backend), in its
# own virtual environment .venv-pytriton: it pins its own numpy and gRPC, which must not move the
# service's. `python -m bench --systems service,bare,pytriton ...` then finds it (bench/servers.py).
# The wheel (~55 MB) bundles tritonserver for x86-64 Linux with glibc >= 2.35.
#   PYTHON=python3.11 scripts/install-pytriton.sh    # interpreter to base it on (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
"$python" -m venv .venv-pytriton
.venv-pytriton/bin/pip install -q --upgrade pip
.venv-pytriton/bin/pip install -q "nvidia-pytriton==0.7.0" "onnxruntime>=1.20"
.venv-pytriton/bin/python -c "import pytriton, onnxruntime; print('pytriton ready:', onnxruntime.__version__)"
