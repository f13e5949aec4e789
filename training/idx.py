"""IDX files, the MNIST layout: read and check. Shared by the loaders and the download, which
checks every file before keeping it."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Read an IDX file (MNIST layout), gzipped or not, checking its magic number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} values")
    return arr.reshape(dims)


# The four files of the MNIST layout (MNIST, Fashion-MNIST), each gzipped or not.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _candidates(data_dir: Path, stem: str) -> tuple[Path, Path]:
    return data_dir / f"{stem}.gz", data_dir / stem


def missing_idx(data_dir: Path) -> list[str]:
    """The stems of `IDX_FILES` that `data_dir` lacks (in neither form), so a loader can name
    every missing file at once instead of failing on the first."""
    return [s for s in IDX_FILES if not any(p.is_file() for p in _candidates(data_dir, s))]


def find_idx(data_dir: Path, stem: str) -> Path:
    for candidate in _candidates(data_dir, stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{stem}(.gz) not found in {data_dir}")
