"""Images in and out of the service: PNG/JPEG to model arrays, model arrays to PNG.

Pillow and numpy only (no HTTP, no JSON library), so `training` converts image folders with the
very function that converts uploads: a model sees the same pixels in training and in serving.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput

MAX_IMAGE_PIXELS = 4096 * 4096
ImageShape = tuple[int, int, int]  # (channels, height, width)
ValueRange = tuple[float, float]


def image_to_array(
    img: Image.Image, image_shape: ImageShape, value_range: ValueRange
) -> NDArray[np.float32]:
    """Grayscale or RGB, bilinear resize to (C, H, W), scaled into `value_range`."""
    c, h, w = image_shape
    img = img.convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    lo, hi = value_range
    return (lo + arr * (hi - lo)).astype(np.float32)


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
    item: str | bytes, image_shape: ImageShape, value_range: ValueRange, field: str
) -> NDArray[np.float32]:
    """PNG/JPEG (bytes or base64) -> (C, H, W) float32 in the model's value range."""
    try:
        with Image.open(io.BytesIO(_image_bytes(item, field))) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise InvalidInput("image is too large", field=field)
            return image_to_array(opened, image_shape, value_range)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidInput("is not a readable PNG or JPEG image", field=field) from None


def decode_images(
    items: Sequence[str | bytes], image_shape: ImageShape, value_range: ValueRange, field: str
) -> NDArray[np.float32]:
    """(N, C, H, W) from N images; an unreadable one names its index, e.g. `images[2]`."""
    if not items:
        raise InvalidInput("at least one image is required", field=field)
    return np.stack(
        [
            decode_image(item, image_shape, value_range, f"{field}[{i}]")
            for i, item in enumerate(items)
        ]
    )


def to_uint8_images(
    x: NDArray[np.float32], image_shape: ImageShape, value_range: ValueRange, scale: int = 1
) -> NDArray[np.uint8]:
    """(N, ...) model outputs -> (N, H*scale, W*scale[, 3]) uint8, enlarged by pixel repetition
    (nearest neighbour keeps small digits crisp instead of blurring them)."""
    c, h, w = image_shape
    lo, hi = value_range
    scaled = np.clip((x.reshape(len(x), c, h, w) - lo) / (hi - lo), 0.0, 1.0)
    u8: NDArray[np.uint8] = (scaled * 255.0 + 0.5).astype(np.uint8)
    if scale > 1:
        u8 = u8.repeat(scale, axis=2).repeat(scale, axis=3)
    return u8[:, 0] if c == 1 else u8.transpose(0, 2, 3, 1)


def png_bytes(image: NDArray[np.uint8] | NDArray[np.bool_], compress_level: int = 6) -> bytes:
    """A PNG of a (H, W[, 3]) uint8 image, or a 1-bit PNG of a boolean one."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=compress_level)
    return buf.getvalue()


def png_complexity_bits(
    x: NDArray[np.float32], image_shape: ImageShape, value_range: ValueRange
) -> NDArray[np.float32]:
    """Each example's length in bits as a losslessly compressed PNG (zlib level 9): the generic
    estimate of an input's complexity of Serra et al., "Input complexity and out-of-distribution
    detection with likelihood-based generative models" (ICLR 2020).

    The image compressed is the one a Bernoulli likelihood models: each value above the middle
    of the range is ink (one 1-bit PNG, channels stacked vertically). An 8-bit grayscale PNG
    codes detail the likelihood never sees and was measured to swamp it (one-class AUROC for
    digit 1: 0.11)."""
    c, h, w = image_shape
    lo, hi = value_range
    ink = x.reshape(len(x), c * h, w) > (lo + hi) / 2
    bits = [8 * len(png_bytes(plane, compress_level=9)) for plane in ink]
    return np.asarray(bits, dtype=np.float32)


def png_base64_list(
    x: NDArray[np.float32], image_shape: ImageShape, value_range: ValueRange, scale: int = 1
) -> list[str]:
    return [
        base64.b64encode(png_bytes(img)).decode("ascii")
        for img in to_uint8_images(x, image_shape, value_range, scale)
    ]


def png_grid(
    x: NDArray[np.float32],
    image_shape: ImageShape,
    value_range: ValueRange,
    columns: int | None = None,
    scale: int = 1,
) -> bytes:
    """All examples tiled into one PNG, with a 1-pixel white border between cells."""
    images = to_uint8_images(x, image_shape, value_range, scale)
    n = len(images)
    cols = columns or min(n, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    h, w = images.shape[1:3]
    shape = (rows * (h + 1) + 1, cols * (w + 1) + 1) + images.shape[3:]
    grid = np.full(shape, 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img
    return png_bytes(grid)
