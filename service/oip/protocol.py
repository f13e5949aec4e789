"""The Open Inference Protocol's data, independent of the wire: datatypes, tensors, an inference
request and its response. REST and gRPC decode into these and render from them, so both parse
tensors the same way and the mapping (`mapping.py`) never sees JSON or protobuf.

Tensors arrive as raw little-endian bytes (REST's binary extension, gRPC's `raw_*_contents`) or
as values (JSON `data`, flat or nested; gRPC `contents`); either way the declared shape must
account for exactly the values sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput

SERVER_NAME = "latentserve"
EXTENSIONS = ("binary_tensor_data", "parameters")
"""Extensions served: Triton's binary tensor data (REST) and request parameters."""

Param = bool | int | float | str
"""A request or response parameter value (the protocol's bool, int64, double or string)."""

DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "INT64": np.dtype("<i8"),
    "BOOL": np.dtype(np.bool_),
}
"""The protocol's datatypes this server uses, as numpy dtypes in the protocol's byte order."""

BINARY_ONLY = frozenset({"FP16"})
"""Datatypes with no JSON or protobuf value form: the protocol carries them as raw bytes."""

_DATATYPE_OF: dict[np.dtype[Any], str] = {
    np.dtype(v.newbyteorder("=")): k for k, v in DATATYPES.items()
}
_MAX_ELEMENTS = 2**31


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The protocol's name for a numpy dtype (float32 -> FP32)."""
    found = _DATATYPE_OF.get(np.dtype(dtype))
    if found is None:
        raise ValueError(f"no Open Inference Protocol datatype for {np.dtype(dtype)}")
    return found


@dataclass
class Tensor:
    name: str
    datatype: str
    data: NDArray[Any]


@dataclass
class InferRequest:
    model_name: str
    model_version: str | None = None
    id: str | None = None
    inputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Param] = field(default_factory=dict)
    outputs: list[str] | None = None
    """Requested outputs by name; None: every output the model produced."""
    timeout_s: float | None = None
    """From the transport (REST `X-Request-Timeout`, the gRPC deadline); None: the default."""


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[Tensor]
    parameters: dict[str, Param] = field(default_factory=dict)


# -- tensors in ---------------------------------------------------------------------------------
def _dtype(datatype: Any, name: str) -> np.dtype[Any]:
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        known = ", ".join(DATATYPES)
        raise InvalidInput(f"datatype {datatype!r} is not served here; use {known}", field=name)
    return dtype


def shape_of(raw: Any, name: str) -> tuple[int, ...]:
    """A declared shape: a list of non-negative integers."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise InvalidInput("shape must be a list of integers", field=name)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise InvalidInput(f"shape must be non-negative integers, got {list(raw)}", field=name)
    shape = tuple(int(d) for d in raw)
    if math.prod(shape) > _MAX_ELEMENTS:
        raise InvalidInput(f"shape {list(shape)} is too large", field=name)
    return shape


def tensor_from_bytes(name: str, datatype: Any, shape: tuple[int, ...], raw: Any) -> Tensor:
    """A tensor viewing `raw` (bytes or a memoryview, not copied): row-major, no padding."""
    dtype = _dtype(datatype, name)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"shape {list(shape)} of {datatype} takes {expected} bytes, got {len(raw)}", field=name
        )
    data = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return Tensor(name, datatype, data)


def tensor_from_values(name: str, datatype: Any, shape: tuple[int, ...], values: Any) -> Tensor:
    """A tensor from JSON or protobuf values, flat or nested, in row-major order."""
    dtype = _dtype(datatype, name)
    if datatype in BINARY_ONLY:
        raise InvalidInput(f"{datatype} values travel as binary (raw) data only", field=name)
    if values is None:
        raise InvalidInput("give its values in 'data' (or binary data)", field=name)
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise InvalidInput("data must be a flat or nested list of numbers", field=name) from None
    if arr.size == 0:
        arr = arr.astype(dtype)
    elif dtype.kind == "b":
        if arr.dtype.kind != "b":
            raise InvalidInput("BOOL data must be true or false", field=name)
    elif dtype.kind == "i":
        if arr.dtype.kind not in "iu":
            raise InvalidInput(f"{datatype} data must be integers", field=name)
    elif arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{datatype} data must be numbers", field=name)
    if arr.size != math.prod(shape):
        raise InvalidInput(
            f"shape {list(shape)} needs {math.prod(shape)} values, got {arr.size}", field=name
        )
    with np.errstate(over="ignore"):  # out-of-range floats become inf: refused as not finite
        data = arr.astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    return Tensor(name, datatype, data)


# -- tensors out --------------------------------------------------------------------------------
def tensor_bytes(t: Tensor) -> bytes:
    """Raw little-endian row-major bytes, as the binary extension and raw contents carry them."""
    return np.ascontiguousarray(t.data, dtype=DATATYPES[t.datatype]).tobytes()


def json_values(t: Tensor) -> NDArray[Any]:
    """Flat values for a JSON `data` field (orjson writes numpy arrays itself)."""
    return t.data.reshape(-1)
