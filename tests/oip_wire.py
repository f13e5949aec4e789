"""Open Inference Protocol requests and responses built and read by hand, byte for byte from
the protocol's text, so the tests do not check the server's codec with the server's codec."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def request(
    inputs: dict[str, np.ndarray],
    *,
    binary: bool = False,
    binary_outputs: bool = False,
    outputs: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    request_id: str | None = None,
    nested: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A REST inference request: JSON `data` (flat, or nested with `nested`) or binary."""
    doc: dict[str, Any] = {"inputs": []}
    blobs = []
    for name, arr in inputs.items():
        item: dict[str, Any] = {"name": name, "datatype": NAMES[arr.dtype], "shape": arr.shape}
        if binary:
            raw = np.ascontiguousarray(arr).tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = arr.tolist() if nested else arr.reshape(-1).tolist()
        doc["inputs"].append(item)
    params = dict(parameters or {})
    if binary_outputs:
        params["binary_data_output"] = True
    if params:
        doc["parameters"] = params
    if outputs is not None:
        doc["outputs"] = [{"name": n} for n in outputs]
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc).encode()
    headers = {"content-type": "application/json"}
    if blobs:
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(head)),
        }
    return head + b"".join(blobs), headers


def response(content: bytes, headers: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and every output as an array, binary or JSON."""
    length = headers.get("inference-header-content-length")
    n = len(content) if length is None else int(length)
    doc = json.loads(content[:n])
    arrays: dict[str, np.ndarray] = {}
    offset = n
    for out in doc["outputs"]:
        dtype = DTYPES[out["datatype"]]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        else:
            raw = content[offset : offset + size]
            arrays[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
            offset += size
    assert offset == len(content) or length is None
    return doc, arrays
