#!/usr/bin/env bash
# The whole GPU check, in one run, on a machine with an NVIDIA GPU, onnxruntime-gpu and the
# service's packages (a user's GPU box after scripts/setup.sh, or the lent machine after
# ../shared/gpu/README.md's install). From the project root:
#
#   scripts/gpu-check.sh OUT_DIR [MNIST_DIR]
#
#   1. env       nvidia-smi, package versions, ONNX Runtime's providers
#   2. tests     pytest -m gpu: every bundled part on CUDAExecutionProvider against the CPU
#                (fp32 and fp16 copies), the app and a real server with LATENTSERVE_REQUIRE_GPU
#   3. training  the conv VAE and the DCGAN for one epoch on cuda, and a one-process torchrun
#                (NCCL); seconds per epoch (skipped without MNIST_DIR)
#   4. options   bench.gpu_options: cuDNN search, TF32, fp16, IO binding, CUDA graphs, in-process
#   5. tune      bench.gpu_tune: service settings (cuDNN search, ORT threads, inline batches,
#                workers) compared, the winner benchmarked in full beside in-process CUDA EP:
#                decoder, generator and scorer, n = 1 and 64, c = 1..256
#   6. fp16      the same benchmark on the fp16 copies, with the server's defaults
#
# On the lent machine (2026-11-26, H200) the pieces of ../shared/gpu/stage.sh were cut to 45 MiB
# (the tree plus a piece must fit a call's 64 MiB), wrk and libluajit were carried in .gpu/bin and
# .gpu/lib, MNIST in .gpu/mnist, and the call after the copies was:
#   cp .gpu/ort-6/* /tmp/ortp/ && bash .gpu/wheels/install.sh; export PYTHONPATH=/tmp/site:$PWD
#   PATH=$PWD/.gpu/bin:$PATH LD_LIBRARY_PATH=$PWD/.gpu/lib PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
#   GPU_CHECK_TAR=$OUT/gpu-check.tgz GPU_CHECK_PYTEST_ARGS="-W default -p pytest_asyncio.plugin
#   -p pytest_timeout"; bash scripts/gpu-check.sh /tmp/gpu-check .gpu/mnist
# (plugin autoloading off: the image's own pytest plugins are not needed, and were not tried
# beside the carried pytest).
#
# Every step has its own time limit and its own log under OUT_DIR, and a failing step does not
# stop the next. With $GPU_CHECK_TAR set, OUT_DIR is packed into that file after every step (the
# lent machine returns only a few files, and only what exists when a call ends).
set -uo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [MNIST_DIR]}
mnist=${2:-}
py=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
: >"$summary"

pack() {
  if [ -n "${GPU_CHECK_TAR:-}" ]; then
    tar czf "$GPU_CHECK_TAR.tmp" -C "$(dirname "$out")" "$(basename "$out")" &&
      mv "$GPU_CHECK_TAR.tmp" "$GPU_CHECK_TAR"
  fi
}

# step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$summary"
  tail -n "${GPU_CHECK_TAIL:-15}" "$out/$name.log"
  pack
  return 0
}

env_report() {
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py - <<'PY'
import platform
from importlib import metadata

import onnxruntime as ort

print("python", platform.python_version())
for name in ("onnxruntime-gpu", "onnxruntime", "torch", "numpy", "fastapi", "uvicorn",
             "nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "-")
ort.preload_dlls()
print("providers", ort.get_available_providers())
try:
    import torch

    print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          "device", torch.cuda.get_device_name(0))
except Exception as exc:  # the report goes on without torch
    print("torch:", exc)
PY
}

export -f env_report
export py
step env 60 bash -c env_report

export LATENTSERVE_GPU_REPORT="$out/gpu-errors.jsonl"
step tests 240 $py -m pytest tests/test_gpu.py -m gpu -q -rs -p no:cacheprovider ${GPU_CHECK_PYTEST_ARGS:-}
unset LATENTSERVE_GPU_REPORT


if [ -n "$mnist" ]; then
  runs="${TMPDIR:-/tmp}/gpu-check-runs"
  train=(-m training train --dataset mnist --data-dir "$mnist" --epochs 1 --batch-size 128
    --seed 0 --device cuda)
  vae=(--model vae --arch conv --binarize --latent-dim 32 --hidden 32 --lr 0.001)
  gan=(--model gan --arch conv --latent-dim 64 --hidden 32 --lr 0.0002)
  step train-vae-cuda 120 $py "${train[@]}" "${vae[@]}" --out "$runs/vae"
  step train-gan-cuda 120 $py "${train[@]}" "${gan[@]}" --out "$runs/gan"
  step train-vae-torchrun 120 $py -m torch.distributed.run --standalone --nproc_per_node 1 \
    "${train[@]}" "${vae[@]}" --out "$runs/vae-ddp"
  rm -rf "$runs"
fi

fp16_models="${TMPDIR:-/tmp}/gpu-check-models-fp16"
rm -rf "$fp16_models" && cp -r models "$fp16_models"
step fp16-copies 120 $py -m training fp16 "$fp16_models"/*
step options 150 $py -m bench.gpu_options --models "$fp16_models" --seconds 0.3 \
  --json "$out/gpu-options.json"

# The service settings compared one at a time, then the winner in full beside in-process CUDA
# EP: docs/benchmarks.md's GPU section (copied back from $out/benchmarks.md).
cp docs/benchmarks.md "$out/benchmarks.md"
step tune 420 $py -m bench.gpu_tune --out "$out/tune" --docs "$out/benchmarks.md" \
  --duration "${GPU_CHECK_DURATION:-1}"

# fp16 copies with the server's defaults for this host.
workloads=decode-vae-n1-json,decode-vae-n64-npy,sample-gan-n1-json,sample-gan-n64-npy
workloads+=,anomaly-vae-n1-npy,anomaly-vae-n64-npy
step bench-fp16 180 $py -m bench --providers cuda --systems service,inprocess --no-plot \
  --models "$fp16_models" --fp16 --docs "$out/benchmarks.md" --section gpu-fp16 \
  --workloads "$workloads" \
  --concurrency 1,16,64,256 --duration "${GPU_CHECK_DURATION:-1}" --warmup 0.3 \
  --json "$out/bench-gpu-fp16.json"
rm -rf "$fp16_models"

echo "=== summary"
cat "$summary"
grep -h "last epoch\|process group" "$out"/train-*.log 2>/dev/null
pack
