"""Fetch MNIST or Fashion-MNIST into a local cache, only when a user asks (`python -m training
download NAME`); loaders never touch the network.

Every file is written to a temporary name and kept only after it reads as the IDX array it should
be (magic number, 28x28 images, one label per image) and, for MNIST, after its decompressed bytes
match the published MD5s, so an interrupted or altered download never poisons the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from training.idx import IDX_FILES, read_idx

FILES = IDX_FILES


@dataclass(frozen=True)
class Source:
    mirrors: tuple[str, ...]
    # MD5 of each decompressed file (mirrors recompress; the content is what must match).
    md5: dict[str, str]


SOURCES: dict[str, Source] = {
    "mnist": Source(
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion-mnist": Source(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={},  # checked structurally only
    ),
}


class DownloadError(RuntimeError):
    pass


def default_cache_dir() -> Path:
    """$LATENTSERVE_DATA_CACHE, else $XDG_CACHE_HOME/latentserve/datasets (~/.cache/...)."""
    if env := os.environ.get("LATENTSERVE_DATA_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "latentserve" / "datasets"


def cached_dataset_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The cache folder of `name`; FileNotFoundError (one line, naming the command that fills
    it) when any of its files is missing, which the command line prints as its only output."""
    folder = (cache_dir or default_cache_dir()) / name
    if not all((folder / f"{stem}.gz").is_file() for stem in FILES):
        raise FileNotFoundError(
            f"{name} is not in the download cache ({folder}): run `python -m training download "
            f"{name}` once while online, or pass --data-dir with a folder of its IDX files"
        )
    return folder


def _verify(path: Path, stem: str, source: Source) -> None:
    arr = read_idx(path)  # raises on a wrong magic number or a truncated body
    if "images" in stem and arr.shape[1:] != (28, 28):
        raise DownloadError(f"{stem}: expected 28x28 images, got {arr.shape}")
    if "labels" in stem and (arr.ndim != 1 or arr.max() > 9):
        raise DownloadError(f"{stem}: expected one label 0-9 per image")
    if expected := source.md5.get(stem):
        with gzip.open(path, "rb") as f:
            digest = hashlib.md5(f.read(), usedforsecurity=False).hexdigest()
        if digest != expected:
            raise DownloadError(f"{stem}: MD5 {digest} differs from the published {expected}")


def _fetch(url: str, dest: Path, progress: bool) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def download(
    name: str,
    cache_dir: Path | None = None,
    mirrors: tuple[str, ...] | None = None,
    progress: bool = True,
) -> Path:
    """Download `name` ('mnist' or 'fashion-mnist') unless cached; returns its folder."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {', '.join(SOURCES)}")
    source = SOURCES[name]
    folder = (cache_dir or default_cache_dir()) / name
    folder.mkdir(parents=True, exist_ok=True)
    for stem in FILES:
        final = folder / f"{stem}.gz"
        if final.exists():
            continue
        partial = folder / f"{stem}.partial.gz"  # .gz: read_idx decompresses by suffix
        errors: list[str] = []
        for base in mirrors or source.mirrors:
            try:
                _fetch(f"{base}{stem}.gz", partial, progress)
                _verify(partial, stem, source)
            except (OSError, ValueError, DownloadError, urllib.error.URLError) as exc:
                errors.append(f"{base}: {exc}")
                partial.unlink(missing_ok=True)
                continue
            partial.replace(final)
            break
        else:
            raise DownloadError(f"could not download {stem}.gz:\n  " + "\n  ".join(errors))
    return folder
