"""ONNX Runtime session creation: execution provider choice, provider options, threading.

The provider actually used is read back from the session (`get_providers()`), never assumed:
onnxruntime-gpu lists CUDA as available on machines without a usable GPU and silently falls back.

What one session start learns (the GPU did not start; the fallback was already reported) is kept
in a `ProviderState` owned by whoever builds the sessions (one per model repository, so one per
app), not in module globals: a second app in the same process, as in the tests, starts clean.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.errors import ProviderUnavailable

log = logging.getLogger("latentserve.runtime")

PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass
class ProviderState:
    """What earlier session starts of one owner found out."""

    gpu_failed: bool = False
    """A GPU provider was asked for and the session came up on the CPU: later sessions of this
    owner go straight to the CPU instead of paying for the failed start again."""
    fallback_reported: bool = False
    """The one warning about that fallback has been logged."""


@dataclass(frozen=True)
class SessionConfig:
    """How to build sessions; filled from `Settings` by the API layer."""

    providers: tuple[str, ...] = ("cuda", "cpu")
    require_gpu: bool = False
    cuda_device_id: int = 0
    cuda_mem_limit_bytes: int | None = None
    cudnn_conv_algo_search: str = "HEURISTIC"
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per core)
    gpu_intra_op_threads: int = 1  # for a session that runs on a GPU provider
    inter_op_threads: int = 1
    intra_op_spinning: bool = False  # see Settings.intra_op_spinning
    graph_optimization: str = "all"
    prefer_fp16: bool = False  # load a part's fp16 copy when its manifest lists one
    extra_cuda_options: dict[str, str] = field(default_factory=dict)


def _provider_list(cfg: SessionConfig) -> list[str | tuple[str, dict[str, Any]]]:
    available = set(ort.get_available_providers())
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for alias in cfg.providers:
        name = PROVIDER_ALIASES.get(alias.lower(), alias)
        if name not in available:
            continue
        if name == "CUDAExecutionProvider":
            opts: dict[str, Any] = {
                "device_id": cfg.cuda_device_id,
                "cudnn_conv_algo_search": cfg.cudnn_conv_algo_search,
                # ORT runs fp32 convolutions and matrix products in TF32 on Ampere and later
                # unless told not to: about 1e-3 relative error, where a served fp32 model must
                # match its CPU outputs; the fp16 copies are the fast, less exact choice.
                "use_tf32": "0",
                **cfg.extra_cuda_options,
            }
            if cfg.cuda_mem_limit_bytes:
                opts["gpu_mem_limit"] = cfg.cuda_mem_limit_bytes
            chosen.append((name, opts))
        else:
            chosen.append(name)
    if "CPUExecutionProvider" not in [c if isinstance(c, str) else c[0] for c in chosen]:
        chosen.append("CPUExecutionProvider")
    return chosen


@functools.cache
def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from pip-installed nvidia packages or torch.
    Once per process (`functools.cache`): loaded libraries stay loaded, whichever app asked."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                preload()
        except Exception as exc:  # best effort: the session start reports the real outcome
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
        if captured.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", captured.getvalue().strip())


def create_session(
    path: Path, cfg: SessionConfig, state: ProviderState | None = None
) -> ort.InferenceSession:
    """Create a session on the first provider in `cfg.providers` that really loads; `state`
    carries what earlier starts of the same owner learnt (a fresh one when not given)."""
    state = state if state is not None else ProviderState()
    wants_gpu = any(
        PROVIDER_ALIASES.get(p.lower(), p) != "CPUExecutionProvider" for p in cfg.providers
    )
    if wants_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        _preload_cuda_libraries()
    providers = _provider_list(cfg)
    if state.gpu_failed and not cfg.require_gpu:
        providers = ["CPUExecutionProvider"]
    on_gpu = wants_gpu and providers != ["CPUExecutionProvider"]
    session = _start(path, cfg, providers, cfg.gpu_intra_op_threads if on_gpu else None)
    used = session.get_providers()[0]
    if wants_gpu and used == "CPUExecutionProvider":
        state.gpu_failed = True
        if cfg.require_gpu:
            raise ProviderUnavailable(
                f"a GPU provider was required ({', '.join(cfg.providers)}) but ONNX Runtime "
                f"could only start {used}; available: {ort.get_available_providers()}"
            )
        if not state.fallback_reported:
            state.fallback_reported = True
            log.warning(
                "GPU execution provider requested (%s) but unavailable; running on CPU",
                ",".join(cfg.providers),
            )
        if on_gpu and cfg.gpu_intra_op_threads != cfg.intra_op_threads:
            # started with a GPU session's threads: the CPU does all the work now
            session = _start(path, cfg, ["CPUExecutionProvider"], None)
    return session


def _start(
    path: Path,
    cfg: SessionConfig,
    providers: list[str | tuple[str, dict[str, Any]]],
    intra_op_threads: int | None,
) -> ort.InferenceSession:
    """One InferenceSession; `intra_op_threads` overrides the config's (a session on a GPU
    runs only its few CPU-side nodes on them, and one pool per part and worker of all the
    cores took the cores the HTTP servers need: docs/benchmarks.md#gpu)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads if intra_op_threads is None else intra_op_threads
    so.inter_op_num_threads = cfg.inter_op_threads
    so.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if cfg.intra_op_spinning else "0"
    )
    if cfg.intra_op_spinning:
        # Spin between the parallel sections of a run, not after it: idle spinning threads
        # would take the cores the HTTP event loop needs between requests.
        so.add_session_config_entry("session.force_spinning_stop", "1")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization]
    so.log_severity_level = 3
    # ORT reports a GPU provider that cannot load through its default logger, several lines per
    # session; one warning of ours (create_session) says the same once.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers)
    finally:
        ort.set_default_logger_severity(2)


def provider_short_name(provider: str) -> str:
    for alias, name in PROVIDER_ALIASES.items():
        if name == provider:
            return alias
    return provider
