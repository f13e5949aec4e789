"""Arrays in and out of the service: nested lists to ndarrays, and `.npy` bodies.

No HTTP, JSON library or ONNX Runtime here: front doors, the runtime and `training` all use it.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput

NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def to_array(value: Any, field: str, dtype: type = np.float32) -> NDArray[Any]:
    """Nested lists (or an array already) -> ndarray; ragged or non-numeric input names `field`."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(
                "must be a rectangular nested array of numbers (every row the same length)",
                field=field,
            ) from None
    if arr.dtype == object or arr.dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput("must be an array of numbers", field=field)
    if dtype is np.int64:
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise InvalidInput("must be integers", field=field)
        return arr.astype(np.int64)
    return arr.astype(dtype, copy=False)


def npy_bytes(x: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def read_npy(body: bytes, field: str) -> NDArray[Any]:
    """A `.npy` body as an array that views the body's bytes.

    The header is parsed first and the shape it declares must account for exactly the bytes that
    follow, so a header that lies (say shape (2**40, 64) over a few bytes) is refused before
    anything is allocated: the body, already bounded by the request-size limit, bounds memory.
    """
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        raise InvalidInput("body is not a valid .npy array", field=field) from None
    if dtype.hasobject:
        raise InvalidInput("pickled (object) arrays are refused", field=field)
    if dtype.kind not in NUMERIC_KINDS or dtype.itemsize == 0:
        raise InvalidInput(f"must be an array of numbers, not dtype {dtype.str}", field=field)
    count = math.prod(shape)
    data_bytes = len(body) - stream.tell()
    if count * dtype.itemsize != data_bytes:
        raise InvalidInput(
            f".npy header declares shape {list(shape)} of {dtype.name} "
            f"({count * dtype.itemsize} bytes) but {data_bytes} bytes follow it",
            field=field,
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C")
