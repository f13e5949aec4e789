"""The request mix: which route, model, batch size and encodings each workload sends.

A workload is described once and rendered to the same HTTP request for every server, and to the
same arrays for the in-process ceiling. Inputs take their shape from the model's manifest, so the
default MNIST workloads (28x28) and the test's tiny models share the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from service.api.codecs import NPY_MEDIA_TYPE
from service.arrays import npy_bytes
from service.manifest import Manifest

Route = Literal["sample", "anomaly-score"]
Encoding = Literal["json", "npy"]


@dataclass(frozen=True)
class Workload:
    route: Route
    model_key: Literal["vae", "gan"]  # which --*-model option names its model
    n: int
    encoding: Encoding  # request body (anomaly-score) and response: JSON or .npy

    @property
    def name(self) -> str:
        what = "sample" if self.route == "sample" else "anomaly"
        return f"{what}-{self.model_key}-n{self.n}-{self.encoding}"


@dataclass(frozen=True)
class HttpRequest:
    path: str
    content: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Prepared:
    """A workload bound to a model: the request every client sends and the arrays behind it."""

    workload: Workload
    model: str
    manifest: Manifest
    inputs: np.ndarray | None  # anomaly-score examples, (n, *input shape), float32
    request: HttpRequest

    @property
    def name(self) -> str:
        return self.workload.name


DEFAULT_WORKLOADS: tuple[Workload, ...] = (
    Workload("sample", "vae", 1, "json"),
    Workload("sample", "vae", 64, "json"),
    Workload("sample", "vae", 64, "npy"),
    Workload("sample", "gan", 1, "json"),
    Workload("sample", "gan", 64, "json"),
    Workload("sample", "gan", 64, "npy"),
    Workload("anomaly-score", "vae", 1, "json"),
    Workload("anomaly-score", "vae", 1, "npy"),
    Workload("anomaly-score", "vae", 64, "json"),
    Workload("anomaly-score", "vae", 64, "npy"),
)
QUICK_WORKLOADS = ("sample-vae-n1-json", "sample-gan-n64-npy", "anomaly-vae-n64-npy")


def example_inputs(manifest: Manifest, n: int, seed: int = 0) -> np.ndarray:
    lo, hi = manifest.input.value_range
    x = np.random.default_rng(seed).uniform(lo, hi, (n, *manifest.input.shape))
    return x.astype(np.float32)


def build_request(w: Workload, model: str, x: np.ndarray | None) -> HttpRequest:
    accept = "application/json" if w.encoding == "json" else NPY_MEDIA_TYPE
    if w.route == "sample":
        body = orjson.dumps({"model": model, "n": w.n, "seed": 0})
        headers = {"content-type": "application/json", "accept": accept}
        return HttpRequest("/sample", body, headers)
    assert x is not None
    if w.encoding == "json":
        body = orjson.dumps(
            {"model": model, "inputs": x, "method": "reconstruction"},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        headers = {"content-type": "application/json", "accept": accept}
        return HttpRequest("/anomaly-score", body, headers)
    headers = {"content-type": NPY_MEDIA_TYPE, "accept": accept}
    return HttpRequest(f"/anomaly-score?model={model}&method=reconstruction", npy_bytes(x), headers)


def prepare(
    workloads: tuple[Workload, ...], models: dict[str, str], repository: Path
) -> tuple[list[Prepared], list[str]]:
    """Bind workloads to models; those whose model folder is missing are skipped with a reason."""
    prepared: list[Prepared] = []
    skipped: list[str] = []
    for w in workloads:
        model = models[w.model_key]
        folder = repository / model
        if not (folder / "model.json").is_file():
            skipped.append(f"{w.name}: model {model!r} not found in {repository}")
            continue
        manifest = Manifest.load(folder)
        x = example_inputs(manifest, w.n) if w.route == "anomaly-score" else None
        prepared.append(Prepared(w, model, manifest, x, build_request(w, model, x)))
    return prepared, skipped
