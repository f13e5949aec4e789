"""The request mix: which route, model, batch size and encodings each workload sends.

A workload is described once and rendered to the same HTTP request for every server, and to the
same arrays for the in-process ceiling. Inputs take their shape from the model's manifest, so the
default MNIST workloads (28x28) and the test's tiny models share the code.

The `decode` workloads send the same latents through every front door latentserve has: the
native `/decode` route (JSON or `.npy`), the Open Inference Protocol's REST route with JSON or
binary tensors, and its gRPC service (raw tensor contents); the protocol's requests address the
model's decoder part (`<model>.decoder`), the graph behind `/decode`. `OIP_WORKLOADS` is the
comparison docs/benchmarks.md records; the default sweep leaves them out.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from service.api.codecs import NPY_MEDIA_TYPE
from service.arrays import npy_bytes
from service.manifest import Manifest, PartRole

Route = Literal["sample", "anomaly-score", "decode"]
Encoding = Literal["json", "npy", "oip-json", "oip-binary", "grpc"]
OIP_ENCODINGS = ("oip-json", "oip-binary", "grpc")
GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Workload:
    route: Route
    model_key: Literal["vae", "gan"]  # which --*-model option names its model
    n: int
    encoding: Encoding  # request body (anomaly-score) and response: JSON or .npy

    @property
    def name(self) -> str:
        what = "anomaly" if self.route == "anomaly-score" else self.route
        return f"{what}-{self.model_key}-n{self.n}-{self.encoding}"

    @property
    def latentserve_only(self) -> bool:
        """Routes only latentserve has (the naive baseline serves /sample and /anomaly-score)."""
        return self.route == "decode"


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
    inputs: np.ndarray | None  # anomaly-score examples or decode latents, float32
    request: HttpRequest  # for grpc: the serialized ModelInferRequest in `content`

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
OIP_WORKLOADS: tuple[Workload, ...] = (
    Workload("decode", "vae", 64, "npy"),
    Workload("decode", "vae", 64, "oip-binary"),
    Workload("decode", "vae", 64, "grpc"),
    Workload("decode", "vae", 64, "oip-json"),
    Workload("decode", "vae", 64, "json"),
)
HOT_PATH_WORKLOADS: tuple[Workload, ...] = (
    Workload("decode", "vae", 1, "json"),
    Workload("decode", "vae", 1, "oip-json"),  # what PyTriton serves (`--systems ...,pytriton`)
    Workload("sample", "vae", 1, "json"),
    Workload("decode", "vae", 64, "npy"),
    Workload("sample", "vae", 64, "npy"),
)
ALL_WORKLOADS = tuple(dict.fromkeys(DEFAULT_WORKLOADS + OIP_WORKLOADS + HOT_PATH_WORKLOADS))
WORKLOAD_GROUPS = {
    "default": DEFAULT_WORKLOADS,
    "oip": OIP_WORKLOADS,
    "hot-path": HOT_PATH_WORKLOADS,
}


def example_inputs(manifest: Manifest, n: int, seed: int = 0) -> np.ndarray:
    lo, hi = manifest.input.value_range
    x = np.random.default_rng(seed).uniform(lo, hi, (n, *manifest.input.shape))
    return x.astype(np.float32)


def example_latents(manifest: Manifest, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, manifest.latent_dim), dtype=np.float32)


def _oip_request(w: Workload, model: str, manifest: Manifest, z: np.ndarray) -> HttpRequest:
    """`z` to the model's decoder part in the protocol's encodings."""
    role = PartRole.DECODER if PartRole.DECODER in manifest.parts else PartRole.GENERATOR
    part = f"{model}.{role.value}"
    name = manifest.parts[role].inputs[0].name
    tensor: dict[str, object] = {"name": name, "datatype": "FP32", "shape": list(z.shape)}
    if w.encoding == "grpc":
        from service.oip.grpc_v2 import open_inference_grpc_pb2 as pb

        message = pb.ModelInferRequest(model_name=part, raw_input_contents=[z.tobytes()])
        message.inputs.add(name=name, datatype="FP32", shape=z.shape)
        return HttpRequest(GRPC_INFER_METHOD, message.SerializeToString(), {})
    path = f"/v2/models/{part}/infer"
    if w.encoding == "oip-json":
        body = orjson.dumps(
            {"inputs": [{**tensor, "data": z.reshape(-1)}]}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        return HttpRequest(path, body, {"content-type": "application/json"})
    head = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": z.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
    return HttpRequest(path, head + z.tobytes(), headers)


def build_request(
    w: Workload, model: str, x: np.ndarray | None, manifest: Manifest | None = None
) -> HttpRequest:
    accept = "application/json" if w.encoding == "json" else NPY_MEDIA_TYPE
    if w.route == "decode":
        assert x is not None and manifest is not None
        if w.encoding in OIP_ENCODINGS:
            return _oip_request(w, model, manifest, x)
        if w.encoding == "json":
            body = orjson.dumps({"model": model, "z": x}, option=orjson.OPT_SERIALIZE_NUMPY)
            return HttpRequest("/decode", body, {"content-type": "application/json"})
        headers = {"content-type": NPY_MEDIA_TYPE, "accept": NPY_MEDIA_TYPE}
        return HttpRequest(f"/decode?model={model}", npy_bytes(x), headers)
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
        x = None
        if w.route == "anomaly-score":
            x = example_inputs(manifest, w.n)
        elif w.route == "decode":
            x = example_latents(manifest, w.n)
        prepared.append(Prepared(w, model, manifest, x, build_request(w, model, x, manifest)))
    return prepared, skipped


def prepare_or_report(
    workloads: tuple[Workload, ...], models: dict[str, str], repository: Path
) -> tuple[list[Prepared], list[str]]:
    """`prepare`, telling stderr which workloads were skipped and when none is left to run."""
    prepared, skipped = prepare(workloads, models, repository)
    for reason in skipped:
        print(f"skipping workload {reason}", file=sys.stderr)
    if not prepared:
        print("no workload has its model; nothing to measure", file=sys.stderr)
    return prepared, skipped
