"""What makes ONNX Runtime fast on a GPU, measured per model part and batch, in-process.

    python -m bench.gpu_options --models models --json gpu-options.json

Each variant calls the same graph with the same host (numpy) input and reads the output back to
the host, as the service must; only how ORT is asked to do it differs:

- `cpu`: the CPU provider, for scale.
- `cuda`: a CUDA session as the service had it before the H200 run (`session.run`, cuDNN
  EXHAUSTIVE search, TF32 off); the service now searches with HEURISTIC (the next variant).
- `cuda-heuristic`: cuDNN's HEURISTIC algorithm choice instead of the exhaustive search.
- `cuda-tf32`: TF32 matrix units for fp32 convolutions and products.
- `cuda-fp16`: the part's fp16 copy (where the manifest lists one).
- `cuda-iobinding`: input and output bound to preallocated device buffers, the input copied in
  place and the output copied out (no per-call allocation on either side).
- `cuda-graph`: the same buffers replayed as a captured CUDA graph (`enable_cuda_graph`): one
  session per batch size, as a server would need one per batch bucket.

Prints a table (median ms per call, rows/s, speed-up over `cuda`) and writes JSON. A variant ORT
refuses is reported with its error instead of a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.manifest import Manifest, PartRole
from service.runtime.sessions import SessionConfig, create_session

ROOT = Path(__file__).resolve().parent.parent
PARTS = (
    ("mnist-conv-vae", PartRole.DECODER),
    ("mnist-conv-vae", PartRole.ENCODER),
    ("mnist-dcgan", PartRole.GENERATOR),
)
BATCHES = (1, 64, 256)
VARIANTS = (
    "cpu",
    "cuda",
    "cuda-heuristic",
    "cuda-tf32",
    "cuda-fp16",
    "cuda-iobinding",
    "cuda-graph",
)


@dataclass
class Timing:
    model: str
    part: str
    batch: int
    variant: str
    median_ms: float | None
    rows_per_s: float | None
    max_rel_err: float | None  # against the CPU provider's output for the same input
    error: str = ""


def _input(manifest: Manifest, role: PartRole, batch: int, seed: int) -> np.ndarray:
    spec = manifest.parts[role].inputs[0]
    shape = [batch, *[int(d or 1) for d in spec.shape[1:]]]
    rng = np.random.default_rng(seed)
    if role == PartRole.ENCODER:
        return (rng.random(shape) > 0.5).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _config(variant: str) -> SessionConfig:
    if variant == "cpu":
        return SessionConfig(providers=("cpu",))
    extra = {"cuda-tf32": {"use_tf32": "1"}, "cuda-graph": {"enable_cuda_graph": "1"}}
    return SessionConfig(
        providers=("cuda",),
        require_gpu=True,
        cudnn_conv_algo_search="HEURISTIC" if variant == "cuda-heuristic" else "EXHAUSTIVE",
        extra_cuda_options=extra.get(variant, {}),
    )


def _bound_call(
    session: ort.InferenceSession, x: np.ndarray, outputs: list[np.ndarray]
) -> Callable[[], Any]:
    """Preallocated device input and outputs (shaped like the CPU reference's `outputs`); each
    call copies the host input in and the first output out."""
    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    binding.bind_ortvalue_input(session.get_inputs()[0].name, x_dev)
    values = []
    for meta, like in zip(session.get_outputs(), outputs, strict=True):
        value = ort.OrtValue.ortvalue_from_shape_and_type(like.shape, like.dtype, "cuda", 0)
        binding.bind_ortvalue_output(meta.name, value)
        values.append(value)

    def call() -> Any:
        x_dev.update_inplace(x)
        session.run_with_iobinding(binding)
        return values[0].numpy()

    return call


def _time(call: Callable[[], Any], seconds: float) -> float:
    for _ in range(10):
        call()
    samples: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(samples) < 20:
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def _variant_call(
    models: Path, model: str, path: str, variant: str, x: np.ndarray, reference: list[np.ndarray]
) -> Callable[[], Any]:
    session = create_session(models / model / path, _config(variant))
    if variant in ("cuda-iobinding", "cuda-graph"):
        return _bound_call(session, x, reference)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})[0]


def measure(models: Path, seconds: float) -> list[Timing]:
    results: list[Timing] = []
    for model, role in PARTS:
        manifest = Manifest.load(models / model)
        part = manifest.parts[role]
        cpu = create_session(models / model / part.path, SessionConfig(providers=("cpu",)))
        for batch in BATCHES:
            x = _input(manifest, role, batch, seed=batch)
            reference = cpu.run(None, {cpu.get_inputs()[0].name: x})
            ref = reference[0]
            for variant in VARIANTS:
                path = part.path
                if variant == "cuda-fp16":
                    if part.fp16_path is None:
                        results.append(
                            Timing(model, role.value, batch, variant, None, None, None, "no copy")
                        )
                        print(_row(results[-1], results), flush=True)
                        continue
                    path = part.fp16_path
                try:
                    call = _variant_call(models, model, path, variant, x, reference)
                    out = np.asarray(call())
                    err = float(np.linalg.norm(out - ref) / max(float(np.linalg.norm(ref)), 1e-12))
                    ms = _time(call, seconds)
                    results.append(
                        Timing(model, role.value, batch, variant, ms, batch / ms * 1e3, err)
                    )
                except Exception as exc:  # a refused variant is a result, not the end of the run
                    message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                    results.append(
                        Timing(model, role.value, batch, variant, None, None, None, message)
                    )
                print(_row(results[-1], results), flush=True)
    return results


def _row(t: Timing, results: list[Timing]) -> str:
    base = next(
        (
            r
            for r in results
            if (r.model, r.part, r.batch, r.variant) == (t.model, t.part, t.batch, "cuda")
        ),
        None,
    )
    if t.median_ms is None:
        return f"| {t.model} {t.part} | {t.batch} | {t.variant} | | | | {t.error} |"
    speedup = ""
    if base is not None and base.median_ms:
        speedup = f"{base.median_ms / t.median_ms:.2f}x"
    return (
        f"| {t.model} {t.part} | {t.batch} | {t.variant} | {t.median_ms:.3f} | "
        f"{t.rows_per_s:,.0f} | {speedup} | rel. err {t.max_rel_err:.1e} |"
    )


def table(results: list[Timing]) -> str:
    head = (
        "| part | batch | variant | median ms/call | rows/s | vs cuda | note |\n"
        "| --- | ---: | --- | ---: | ---: | ---: | --- |"
    )
    return "\n".join([head, *(_row(t, results) for t in results)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_options", description=__doc__)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--seconds", type=float, default=0.4, help="measured seconds per variant")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results = measure(args.models, args.seconds)
    print()
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
