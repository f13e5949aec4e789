"""Datasets as float32 arrays in [0, 1], split deterministically into train / val / test.

Every loader returns a `Splits`; models see examples shaped like the manifest's `input.shape`.
Sources: sklearn's digits, MNIST-layout IDX files (MNIST, Fashion-MNIST; `training.download`
fetches them into a cache when asked), a folder of images, and numeric arrays (.npy, .npz, .csv)
for tabular anomaly detection, which are min-max scaled per feature with the scaling kept so the
service can take raw values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.manifest import Normalization
from training.idx import IDX_FILES, find_idx, missing_idx, read_idx

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
    image_shape: tuple[int, int, int] | None  # None for tabular data
    num_classes: int
    normalization: Normalization | None = None  # goes into the manifest as input.normalization

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def served(self, split: Split) -> Split:
        """`split` in the units a client sends the served model (raw for scaled tabular data)."""
        norm = self.normalization
        if norm is None:
            return split
        offset = np.asarray(norm.offset, dtype=np.float32)
        scale = np.asarray(norm.scale, dtype=np.float32)
        return Split((offset + scale * split.x).astype(np.float32), split.y)


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


def load_idx_dataset(
    data_dir: Path, name: str = "mnist", val_size: int = 5000, seed: int = 0, flat: bool = False
) -> Splits:
    """MNIST-layout IDX files (MNIST, Fashion-MNIST) from a folder; `val_size` training images
    picked by a shuffle seeded with `seed` (a run's seed) are held out for validation and
    calibration."""
    if missing := missing_idx(data_dir):
        if not data_dir.is_dir():
            what = "is not a folder"
        elif len(missing) == len(IDX_FILES):
            what = f"holds none of {name}'s IDX files"
        else:
            what = f"lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"--data-dir {data_dir} {what} ({name} needs {', '.join(IDX_FILES)}, each gzipped "
            f"or not); or leave out --data-dir after `python -m training download {name}`"
        )
    xs: dict[str, FloatArray] = {}
    ys: dict[str, IntArray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find_idx(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(data_dir, f"{prefix}-labels-idx1-ubyte"))
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


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    root: Path, image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0, flat: bool = False
) -> Splits:
    """Images under `root`, one subfolder per class (labels are the sorted subfolder names), or
    directly in `root` (one class). Every image is converted to grayscale or RGB and resized to
    `image_shape` (channels, height, width) by the service's own conversion, so a model sees the
    same pixels in training as in an upload; 10% validation, 20% test, seeded."""
    from PIL import Image

    from service.images import image_to_array

    c, h, w = image_shape
    if c not in (1, 3):
        raise ValueError(f"images need 1 (grayscale) or 3 (RGB) channels, not {c}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (--data-dir)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _image_files(d))
    files = [(f, i) for i, name in enumerate(classes) for f in _image_files(root / name)]
    if not classes:
        files = [(f, 0) for f in _image_files(root)]
    if len(files) < 10:
        raise ValueError(f"{root} holds {len(files)} images; need at least 10 to split")
    x = np.empty((len(files), c, h, w), dtype=np.float32)
    for row, (path, _) in enumerate(files):
        with Image.open(path) as opened:
            x[row] = image_to_array(opened, image_shape, (0.0, 1.0))
    y = np.array([label for _, label in files], dtype=np.int64)
    data = x.reshape(len(x), -1) if flat else x
    train, val, test = _split_by_index(data, y, (0.1, 0.2), seed)
    return Splits(root.name, train, val, test, image_shape, max(len(classes), 1))


def _read_table(path: Path, label_column: str | None) -> tuple[FloatArray, IntArray | None]:
    """Features and optional integer labels from .npy (N, D), .npz (`x`, optional `y`) or .csv
    (numbers, optional header row; `label_column` names or numbers the label column)."""
    suffix = path.suffix.lower()
    labels: Any = None
    if suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive:
                raise ValueError(f"{path}: an .npz needs an array named 'x' (and optionally 'y')")
            x = archive["x"]
            labels = archive["y"] if "y" in archive else None
    elif suffix == ".csv":
        with path.open() as f:
            first = f.readline().strip().split(",")
        try:
            [float(v) for v in first]
            header: list[str] | None = None
        except ValueError:
            header = [v.strip().strip('"') for v in first]
        table = np.loadtxt(path, delimiter=",", skiprows=0 if header is None else 1, ndmin=2)
        if label_column is not None:
            if header is not None and label_column in header:
                col = header.index(label_column)
            elif label_column.lstrip("-").isdigit():
                col = int(label_column) % table.shape[1]
            else:
                raise ValueError(f"{path}: no column {label_column!r} (header: {header})")
            labels = table[:, col]
            table = np.delete(table, col, axis=1)
        x = table
    else:
        raise ValueError(f"{path}: arrays must be .npy, .npz or .csv")
    if label_column is not None and suffix != ".csv":
        raise ValueError("--label-column applies to .csv files (.npz files carry 'y')")
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "biuf" or len(x) == 0:
        raise ValueError(f"{path}: features must be a non-empty 2-D numeric array, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: features hold NaN or infinite values")
    y = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(x),) or not np.all(labels == np.round(labels)) or labels.min() < 0:
            raise ValueError(f"{path}: labels must be one non-negative integer per row")
        y = labels.astype(np.int64)
    return x.astype(np.float32), y


def load_arrays(path: Path, seed: int = 0, label_column: str | None = None) -> Splits:
    """Tabular data for anomaly detection: rows of numeric features. Each feature is min-max
    scaled to [0, 1] with the training split's range (the Bernoulli decoder's domain); the map
    back to raw units travels as `Splits.normalization` into the manifest."""
    if not path.is_file():
        raise FileNotFoundError(f"--data-dir {path}: no such file (a .npy, .npz or .csv file)")
    x, y = _read_table(path, label_column)
    if len(x) < 10:
        raise ValueError(f"{path} holds {len(x)} rows; need at least 10 to split")
    labels = y if y is not None else np.zeros(len(x), dtype=np.int64)
    train, val, test = _split_by_index(x, labels, (0.1, 0.2), seed)
    offset = train.x.min(0)
    span = train.x.max(0) - offset
    scale = np.where(span > 0, span, 1.0).astype(np.float32)
    norm = Normalization(offset=offset.tolist(), scale=scale.tolist())

    def scaled(split: Split) -> Split:
        # Training rows span [0, 1] exactly; held-out rows may stray past it and are not clipped,
        # so `Splits.served` gives back their raw values.
        return Split(((split.x - offset) / scale).astype(np.float32), split.y)

    num_classes = int(labels.max()) + 1 if y is not None else 1
    return Splits(path.stem, scaled(train), scaled(val), scaled(test), None, num_classes, norm)


def load_dataset(
    name: str,
    data_dir: str | None = None,
    seed: int = 0,
    flat: bool = True,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    label_column: str | None = None,
) -> Splits:
    """Dispatch by name: 'digits'; an IDX dataset ('mnist', 'fashion-mnist') in `data_dir`, or in
    the download cache when `data_dir` is not given; 'images' (a folder, resized to
    `image_shape`); 'arrays' (a .npy/.npz/.csv file)."""
    if name == "digits":
        return load_digits(seed=seed, flat=flat)
    if name in ("mnist", "fashion-mnist"):
        from training.download import cached_dataset_dir

        folder = Path(data_dir) if data_dir is not None else cached_dataset_dir(name)
        return load_idx_dataset(folder, name=name, seed=seed, flat=flat)
    if name in ("images", "arrays") and data_dir is None:
        raise ValueError(f"--data-dir is required for {name}")
    if name == "images":
        assert data_dir is not None
        return load_image_folder(Path(data_dir), image_shape, seed=seed, flat=flat)
    if name == "arrays":
        assert data_dir is not None
        return load_arrays(Path(data_dir), seed=seed, label_column=label_column)
    raise ValueError(f"unknown dataset {name!r}: digits | mnist | fashion-mnist | images | arrays")
