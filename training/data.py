"""Datasets as float32 arrays in [0, 1], split deterministically into train / val / test.

Every loader returns a `Splits`; models see examples shaped like the manifest's `input.shape`.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]


@dataclass
class Split:
    x: FloatArray
    y: IntArray

    def __len__(self) -> int:
        return len(self.x)

    def only(self, label: int) -> Split:
        keep = self.y == label
        return Split(self.x[keep], self.y[keep])


@dataclass
class Splits:
    name: str
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, int, int]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def _split_by_index(
    x: FloatArray, y: IntArray, fractions: tuple[float, float], seed: int
) -> tuple[Split, Split, Split]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = int(round(len(x) * fractions[0]))
    n_test = int(round(len(x) * fractions[1]))
    val, test, train = (
        order[:n_val],
        order[n_val : n_val + n_test],
        order[n_val + n_test :],
    )
    return Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test])


def load_digits(seed: int = 0, flat: bool = True) -> Splits:
    """sklearn's bundled 8x8 digits (1797 images, values 0..16): small enough for tests."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train, val, test = _split_by_index(x, y, (0.1, 0.2), seed)
    return Splits("digits", train, val, test, (1, 8, 8), 10)


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


def _find_idx(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{stem}(.gz) not found in {data_dir}")


def load_idx_dataset(
    data_dir: Path, name: str = "mnist", val_size: int = 5000, seed: int = 0, flat: bool = False
) -> Splits:
    """MNIST-layout IDX files (MNIST, Fashion-MNIST) from a folder; the last `val_size` training
    images (after a seeded shuffle) are held out for validation and calibration."""
    xs: dict[str, FloatArray] = {}
    ys: dict[str, IntArray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(data_dir, f"{prefix}-labels-idx1-ubyte"))
        x = (images.astype(np.float32) / 255.0)[:, None, :, :]
        xs[split] = x.reshape(len(x), -1) if flat else x
        ys[split] = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xs["train"]))
    val_idx, train_idx = order[:val_size], order[val_size:]
    h, w = xs["test"].shape[-2:] if not flat else (28, 28)
    return Splits(
        name,
        Split(xs["train"][train_idx], ys["train"][train_idx]),
        Split(xs["train"][val_idx], ys["train"][val_idx]),
        Split(xs["test"], ys["test"]),
        (1, int(h), int(w)),
        10,
    )


def load_dataset(
    name: str, data_dir: str | None = None, seed: int = 0, flat: bool = True
) -> Splits:
    """Dispatch by name: 'digits' or an IDX dataset ('mnist', 'fashion-mnist') in `data_dir`."""
    if name == "digits":
        return load_digits(seed=seed, flat=flat)
    if name in ("mnist", "fashion-mnist"):
        if data_dir is None:
            raise ValueError(f"--data-dir is required for {name}")
        return load_idx_dataset(Path(data_dir), name=name, seed=seed, flat=flat)
    raise ValueError(f"unknown dataset {name!r}")
