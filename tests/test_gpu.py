"""The CUDA path on a real GPU: every bundled part runs on CUDAExecutionProvider (read back from the
session) and computes what the CPU computes; the app and a real server start with
LATENTSERVE_REQUIRE_GPU=true and serve the same numbers. Skipped where CUDA cannot run.

`LATENTSERVE_GPU_REPORT=FILE` appends each comparison's measured error as JSON lines, which
scripts/gpu-check.sh collects into docs/benchmarks.md's GPU section.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.servers import make_server
from service.manifest import Manifest, PartRole
from service.runtime.sessions import SessionConfig, create_session
from tests.conftest import MODELS, AppClient, _client_for, make_settings
from tests.gpu import cuda_works
from training.export import chooses_discretely

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_works(), reason="needs CUDA and onnxruntime's CUDA provider"),
]

FP32_REL_ERR = 1e-4  # the bound; TF32 is off in the service's CUDA options
# fp16 copies (10-bit mantissa): each part within 2e-3 (5.9e-4 at most on an H200,
# docs/benchmarks.md#gpu); what the app serves from them (two parts and a score) within 1e-2
FP16_PART_REL_ERR = 2e-3
FP16_REL_ERR = 1e-2
BUNDLED = sorted(p.name for p in MODELS.iterdir() if (p / "model.json").is_file())
PARTS = [(m, role) for m in BUNDLED for role in Manifest.load(MODELS / m).parts]
# parts whose export wrapper picks a cluster stay fp32 (training.export.add_fp16_copies)
FP16_PARTS = [
    (m, role)
    for m, role in PARTS
    if not chooses_discretely(MODELS / m / Manifest.load(MODELS / m).parts[role].path)
]
ALL_FP32 = set(BUNDLED) - {m for m, _ in FP16_PARTS}
BATCHES = (1, 3, 64)


def _report(record: dict[str, object]) -> None:
    path = os.environ.get("LATENTSERVE_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _feed(manifest: Manifest, role: PartRole, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Fresh random inputs of each of the part's tensors: labels where it takes them, binary
    images where it reads images, standard normal latents otherwise."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in manifest.parts[role].inputs:
        shape = [batch, *[int(d or 1) for d in spec.shape[1:]]]
        if spec.dtype == "int64":
            feed[spec.name] = rng.integers(0, manifest.num_classes or 1, shape).astype(np.int64)
        elif role in (PartRole.ENCODER, PartRole.DISCRIMINATOR):
            feed[spec.name] = (rng.random(shape) > 0.5).astype(np.float32)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    assert np.isfinite(out).all()
    return float(np.linalg.norm(out - ref) / max(float(np.linalg.norm(ref)), 1e-12))


@pytest.fixture(scope="session")
def fp16_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled models with fp16 copies added (`python -m training fp16`), as a user serving
    them with LATENTSERVE_PREFER_FP16 on a GPU would make them; the repository ships fp32 only."""
    from training.export import add_fp16_copies

    root = tmp_path_factory.mktemp("models-fp16")
    for name in BUNDLED:
        shutil.copytree(MODELS / name, root / name)
        add_fp16_copies(root / name)
    return root


def _compare(repository: Path, model: str, role: PartRole, fp16: bool) -> float:
    manifest = Manifest.load(repository / model)
    part = manifest.parts[role]
    path = part.fp16_path if fp16 else part.path
    assert path is not None
    cuda = create_session(
        repository / model / path, SessionConfig(providers=("cuda",), require_gpu=True)
    )
    assert cuda.get_providers()[0] == "CUDAExecutionProvider"
    cpu = create_session(repository / model / part.path, SessionConfig(providers=("cpu",)))
    worst = 0.0
    for batch in BATCHES:
        feed = _feed(manifest, role, batch, seed=batch)
        got, want = cuda.run(None, feed), cpu.run(None, feed)
        for meta, g, w in zip(cpu.get_outputs(), got, want, strict=True):
            assert g.shape == w.shape and g.dtype == np.float32
            err = _rel_err(g, w)
            worst = max(worst, err)
            _report(
                {
                    "model": model,
                    "part": role.value,
                    "output": meta.name,
                    "batch": batch,
                    "precision": "fp16" if fp16 else "fp32",
                    "rel_err": err,
                }
            )
    return worst


@pytest.mark.parametrize(("model", "role"), PARTS, ids=[f"{m}-{r.value}" for m, r in PARTS])
def test_every_part_runs_on_cuda_and_matches_the_cpu(model: str, role: PartRole) -> None:
    assert _compare(MODELS, model, role, fp16=False) <= FP32_REL_ERR


@pytest.mark.parametrize(
    ("model", "role"), FP16_PARTS, ids=[f"{m}-{r.value}" for m, r in FP16_PARTS]
)
def test_fp16_copies_run_on_cuda_within_their_bound(
    fp16_models: Path, model: str, role: PartRole
) -> None:
    assert _compare(fp16_models, model, role, fp16=True) <= FP16_PART_REL_ERR


@asynccontextmanager
async def _app(**overrides: object) -> AsyncIterator[AppClient]:
    async for client in _client_for(make_settings(enabled_models=BUNDLED, **overrides)):
        yield client


async def _served(**overrides: object) -> tuple[dict[str, Any], list[Any], list[float]]:
    """/models, a /decode and a reconstruction /anomaly-score of the conv VAE from an app with
    these settings."""
    z = np.random.default_rng(7).standard_normal((5, 32)).astype(np.float32)
    x = (np.random.default_rng(8).random((5, 1, 28, 28)) > 0.5).astype(np.float32)
    async with _app(**overrides) as client:
        models = (await client.get("/models")).json()
        decoded = await client.post("/decode", json={"model": "mnist-conv-vae", "z": z.tolist()})
        scored = await client.post(
            "/anomaly-score?method=reconstruction",
            json={"model": "mnist-conv-vae", "inputs": x.tolist()},
        )
    assert decoded.status_code == 200 and scored.status_code == 200, decoded.text + scored.text
    return models, decoded.json()["outputs"], scored.json()["scores"]


async def test_the_app_requires_the_gpu_and_serves_what_the_cpu_serves() -> None:
    models, decoded, scores = await _served(providers=["cuda"], require_gpu=True)
    served = {m["name"]: (m["status"], m["provider"], m["precision"]) for m in models["models"]}
    assert served == dict.fromkeys(BUNDLED, ("ready", "cuda", "fp32"))
    _, cpu_decoded, cpu_scores = await _served(providers=["cpu"])
    assert _rel_err(np.array(decoded), np.array(cpu_decoded)) <= FP32_REL_ERR
    assert _rel_err(np.array(scores), np.array(cpu_scores)) <= FP32_REL_ERR


async def test_the_app_serves_fp16_copies_on_the_gpu(fp16_models: Path) -> None:
    models, decoded, scores = await _served(
        model_repository=fp16_models, providers=["cuda"], require_gpu=True, prefer_fp16=True
    )
    assert ALL_FP32 <= {"mnist-dcgan"}  # the self-conditioned GAN, nothing else
    for m in models["models"]:
        assert m["precision"] == ("fp32" if m["name"] in ALL_FP32 else "fp16"), m
    _, cpu_decoded, cpu_scores = await _served(providers=["cpu"])
    assert _rel_err(np.array(decoded), np.array(cpu_decoded)) <= FP16_REL_ERR
    assert _rel_err(np.array(scores), np.array(cpu_scores)) <= FP16_REL_ERR


@pytest.mark.e2e
def test_a_real_server_started_with_require_gpu_serves_on_cuda(tmp_path: Path) -> None:
    env = {"LATENTSERVE_ENABLED_MODELS": ",".join(BUNDLED), "LATENTSERVE_LOG_LEVEL": "WARNING"}
    server = make_server("service", MODELS, BUNDLED, env, workers=1, providers=("cuda",))
    assert server.env["LATENTSERVE_REQUIRE_GPU"] == "true"
    server.start()
    try:
        models = httpx.get(f"{server.url}/models", timeout=30).json()["models"]
        assert {m["provider"] for m in models} == {"cuda"}
        sample = httpx.post(
            f"{server.url}/sample", json={"model": "mnist-dcgan", "n": 64, "seed": 1}, timeout=30
        )
        assert sample.status_code == 200
        samples = np.array(sample.json()["samples"])
        assert samples.shape[0] == 64 and samples.size == 64 * 28 * 28
        assert np.isfinite(samples).all()
    finally:
        server.stop()
