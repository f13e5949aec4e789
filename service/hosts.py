"""What this host offers a server: usable CPU cores and whether a GPU is visible. `serve` chooses
its worker count from these, and each worker its share of the cores for ONNX Runtime's threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

GPU_PROVIDERS = frozenset(
    {"cuda", "tensorrt", "CUDAExecutionProvider", "TensorrtExecutionProvider"}
)
MAX_AUTO_WORKERS = 8
"""Auto workers stop here: every worker holds its own copy of the models and batches only its
own requests (a bound on memory and on how thin batches get; measured on 2 cores only)."""


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU quota in cores (cgroup v2 `cpu.max`), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, bounded by a container's CPU quota (a
    Kubernetes CPU limit shows up there, not in the core count)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def gpu_visible(dev: Path = Path("/dev")) -> bool:
    """An NVIDIA device node is present (a container started with GPUs gets them too)."""
    try:
        return any(p.name[len("nvidia") :].isdigit() for p in dev.glob("nvidia*"))
    except OSError:
        return False


def asks_for_gpu(providers: Iterable[str]) -> bool:
    """Whether any of these execution providers runs on a GPU."""
    return any(p in GPU_PROVIDERS for p in providers)


def default_workers(providers: list[str], cpus: int, gpu: bool) -> int:
    """One worker per usable core on a CPU host (up to `MAX_AUTO_WORKERS`); one per two cores
    where a GPU provider is asked for and a GPU is present. One process cannot keep a GPU busy:
    on an H200 with 16 cores it served 1,400-1,800 64-row requests/s, a fifth to a half of what
    the GPU runs in-process, while 4 and 8 workers gave 2.6x and 3.7x its throughput
    (docs/benchmarks.md#gpu). Each worker holds its own CUDA context and model copies, so
    large models on a small GPU want fewer (`--workers`)."""
    if gpu and asks_for_gpu(providers):
        return max(1, min(cpus // 2, MAX_AUTO_WORKERS))
    return max(1, min(cpus, MAX_AUTO_WORKERS))
