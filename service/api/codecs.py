"""Turning request bodies into arrays and arrays into response bodies.

Inputs: nested JSON arrays, base64 PNG/JPEG strings, uploaded image files, `.npy` bodies.
Outputs: JSON (orjson, numpy-native), `.npy`, one PNG per example (base64) or a PNG grid.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput, NotAcceptable

NPY_MEDIA_TYPE = "application/x-npy"
PNG_MEDIA_TYPE = "image/png"
JSON_MEDIA_TYPE = "application/json"
MAX_IMAGE_PIXELS = 4096 * 4096


def to_array(value: Any, field: str, dtype: type = np.float32) -> NDArray[Any]:
    """Nested lists (or an array already) -> ndarray; ragged or non-numeric input names `field`."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise InvalidInput(
                "must be a rectangular nested array of numbers (every row the same length)",
                field=field,
            ) from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InvalidInput("must be an array of numbers", field=field)
    if dtype is np.int64:
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise InvalidInput("must be integers", field=field)
        return arr.astype(np.int64)
    return arr.astype(dtype, copy=False)


def _image_bytes(item: str | bytes, field: str) -> bytes:
    if isinstance(item, bytes):
        return item
    if item.startswith("data:"):
        _, _, item = item.partition(",")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("must be base64-encoded PNG or JPEG data", field=field) from None


def decode_image(
    item: str | bytes,
    image_shape: tuple[int, int, int],
    value_range: tuple[float, float],
    field: str,
) -> NDArray[np.float32]:
    """PNG/JPEG -> (C, H, W) float32 in the model's value range, resized to the model's size."""
    try:
        with Image.open(io.BytesIO(_image_bytes(item, field))) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise InvalidInput("image is too large", field=field)
            return image_to_array(opened, image_shape, value_range)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidInput("is not a readable PNG or JPEG image", field=field) from None


def image_to_array(
    img: Image.Image, image_shape: tuple[int, int, int], value_range: tuple[float, float]
) -> NDArray[np.float32]:
    """Grayscale or RGB, bilinear resize to (C, H, W), scaled into `value_range`: the one
    conversion for uploads and for training on image folders, so both see the same pixels."""
    c, h, w = image_shape
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    lo, hi = value_range
    return (lo + arr * (hi - lo)).astype(np.float32)


def decode_images(
    items: list[str] | list[bytes] | list[str | bytes],
    image_shape: tuple[int, int, int] | None,
    value_range: tuple[float, float],
    example_shape: tuple[int, ...],
    field: str,
) -> NDArray[np.float32]:
    if image_shape is None:
        raise InvalidInput("this model does not take images; send 'inputs' arrays", field=field)
    if not items:
        raise InvalidInput("at least one image is required", field=field)
    arrays = []
    for i, item in enumerate(items):
        arrays.append(decode_image(item, image_shape, value_range, f"{field}[{i}]"))
    return np.stack(arrays).reshape(len(arrays), *example_shape)


def to_uint8_images(
    x: NDArray[np.float32], image_shape: tuple[int, int, int], value_range: tuple[float, float]
) -> NDArray[np.uint8]:
    """(N, ...) model outputs -> (N, H, W) or (N, H, W, 3) uint8."""
    c, h, w = image_shape
    lo, hi = value_range
    scaled = np.clip((x.reshape(len(x), c, h, w) - lo) / (hi - lo), 0.0, 1.0)
    u8: NDArray[np.uint8] = (scaled * 255.0 + 0.5).astype(np.uint8)
    return u8[:, 0] if c == 1 else u8.transpose(0, 2, 3, 1)


def png_bytes(image: NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def png_base64_list(
    x: NDArray[np.float32], image_shape: tuple[int, int, int], value_range: tuple[float, float]
) -> list[str]:
    return [
        base64.b64encode(png_bytes(img)).decode("ascii")
        for img in to_uint8_images(x, image_shape, value_range)
    ]


def png_grid(
    x: NDArray[np.float32],
    image_shape: tuple[int, int, int],
    value_range: tuple[float, float],
    columns: int | None = None,
) -> bytes:
    """All examples tiled into one PNG, with a 1-pixel white border between cells."""
    images = to_uint8_images(x, image_shape, value_range)
    n = len(images)
    cols = columns or min(n, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    _, h, w = image_shape
    shape = (rows * (h + 1) + 1, cols * (w + 1) + 1) + images.shape[3:]
    grid = np.full(shape, 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img
    return png_bytes(grid)


def npy_bytes(x: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def read_npy(body: bytes, field: str) -> NDArray[Any]:
    try:
        return np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InvalidInput(
            "body is not a valid .npy array (pickled arrays are refused)", field=field
        ) from None


def dumps_json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """Pick the response media type from an Accept header (quality values honoured)."""
    if not accept:
        return offered[0]
    best: tuple[float, int, str] | None = None
    for position, raw in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in raw.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in ("*/*", "application/*") or media == "":
            candidate = offered[0]
        elif media == "image/*" and PNG_MEDIA_TYPE in offered:
            candidate = PNG_MEDIA_TYPE
        elif media in offered:
            candidate = media
        else:
            continue
        key = (q, -position, candidate)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise NotAcceptable(f"cannot produce {accept!r}; this endpoint offers {', '.join(offered)}")
    return best[2]
