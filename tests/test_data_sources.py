"""Data sources beyond digits and IDX folders: image folders, tabular arrays (trained, exported
and served in raw units), and the opt-in download into a cache (from a mirror on 127.0.0.1)."""

from __future__ import annotations

import gzip
import http.server
import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from service.manifest import InputSpec
from training.__main__ import app as training_cli
from training.data import load_arrays, load_dataset, load_image_folder
from training.download import DownloadError, cached_dataset_dir, download


# -- image folders -------------------------------------------------------------------------------
def _write_images(folder: Path, count: int, value: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, (value, value, (value + i) % 256)).save(folder / f"{i:03}.png")


def test_image_folder_classes_sizes_and_channels(tmp_path: Path) -> None:
    _write_images(tmp_path / "cats", 12, 40, (20, 30))
    _write_images(tmp_path / "dogs", 8, 200, (16, 16))
    (tmp_path / "notes.txt").write_text("not an image")

    gray = load_image_folder(tmp_path, (1, 8, 8), seed=0)
    assert gray.num_classes == 2 and gray.image_shape == (1, 8, 8)
    x = np.concatenate([gray.train.x, gray.val.x, gray.test.x])
    y = np.concatenate([gray.train.y, gray.val.y, gray.test.y])
    assert x.shape == (20, 1, 8, 8) and sorted(np.bincount(y)) == [8, 12]
    # class order is the sorted folder names: cats (dark) are 0, dogs (light) are 1
    assert x[y == 0].mean() < 0.25 < 0.7 < x[y == 1].mean()

    rgb = load_image_folder(tmp_path, (3, 12, 10), seed=0, flat=True)
    assert rgb.train.x.shape[1:] == (3 * 12 * 10,)
    assert 0.0 <= rgb.train.x.min() and rgb.train.x.max() <= 1.0


def test_image_folder_without_subfolders_is_one_class(tmp_path: Path) -> None:
    _write_images(tmp_path / "all", 10, 90, (8, 8))
    splits = load_dataset("images", str(tmp_path / "all"), image_shape=(1, 8, 8))
    assert splits.num_classes == 1 and len(splits.train) + len(splits.val) + len(splits.test) == 10


def test_image_folder_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    _write_images(tmp_path / "few", 3, 0, (8, 8))
    with pytest.raises(ValueError, match="at least 10"):
        load_image_folder(tmp_path / "few")


def test_conv_vae_trains_on_an_rgb_image_folder_and_exports(tmp_path: Path) -> None:
    for name, value in (("red", 220), ("blue", 30)):
        _write_images(tmp_path / "data" / name, 12, value, (12, 12))
    cli = CliRunner()
    common = ["--dataset", "images", "--data-dir", str(tmp_path / "data"), "--channels", "3"]
    bad = cli.invoke(training_cli, ["train", "--arch", "conv", *common, "--image-size", "10x10"])
    assert bad.exit_code != 0 and "multiples of 4" in bad.output
    run, out = tmp_path / "run", tmp_path / "models" / "colors"
    result = cli.invoke(
        training_cli,
        ["train", "--model", "vae", "--arch", "conv", *common, "--image-size", "8x8",
         "--epochs", "2", "--hidden", "4", "--latent-dim", "2", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli.invoke(training_cli, ["export", str(run / "checkpoint.pt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["input"]["image_shape"] == [3, 8, 8] and manifest["input"]["shape"] == [3, 8, 8]
    assert (out / "samples.png").exists()
    assert "--image-size 8x8 --channels 3" in (out / "README.md").read_text()


# -- tabular arrays ------------------------------------------------------------------------------
def _tabular(n: int, seed: int = 0) -> np.ndarray:
    """Three correlated features on very different scales (what raw tabular data looks like)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    columns: np.ndarray = np.c_[
        1000 + 500 * t + rng.normal(0, 10, n),
        0.01 * t + rng.normal(0, 0.0005, n),
        -3 + 2 * t**2 + rng.normal(0, 0.02, n),
    ]
    return columns.astype(np.float32)


def test_csv_with_header_and_label_column_is_scaled_per_feature(tmp_path: Path) -> None:
    x = _tabular(200)
    y = (x[:, 0] > 1250).astype(int)
    path = tmp_path / "sensors.csv"
    rows = [
        ",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)
    ]
    path.write_text("pressure,flow,temperature,label\n" + "\n".join(rows) + "\n")

    splits = load_arrays(path, label_column="label")
    assert splits.input_shape == (3,) and splits.num_classes == 2 and splits.image_shape is None
    assert splits.train.x.min() == 0.0 and splits.train.x.max() == 1.0
    np.testing.assert_allclose(splits.train.x.min(0), 0.0)
    np.testing.assert_allclose(splits.train.x.max(0), 1.0)
    norm = splits.normalization
    assert norm is not None and norm.scale[0] > 400 and norm.scale[1] < 0.02
    # held-out rows come back in raw units exactly (what calibration sends the service)
    raw_val = splits.served(splits.val).x
    written = np.loadtxt(path, delimiter=",", skiprows=1)[:, :3]
    matches = np.isclose(raw_val[:, None, :], written[None], rtol=1e-5, atol=1e-7)
    assert np.all(np.any(np.all(matches, axis=-1), axis=1))

    by_index = load_arrays(path, label_column="-1")
    np.testing.assert_array_equal(by_index.train.y, splits.train.y)


def test_npy_and_npz_arrays_and_bad_files(tmp_path: Path) -> None:
    x = _tabular(50)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(50) % 3)
    assert load_arrays(tmp_path / "x.npy").num_classes == 1
    assert load_arrays(tmp_path / "xy.npz").num_classes == 3

    bad = x.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 20, dtype=object))
    np.save(tmp_path / "flat.npy", x[:, 0])
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    for name, message in [
        ("nan.npy", "NaN"),
        ("objects.npy", "pickle"),  # numpy refuses object arrays without allow_pickle
        ("flat.npy", "2-D"),
        ("x.parquet", ".npy, .npz or .csv"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_arrays(tmp_path / name)


def test_normalization_must_match_the_input_size() -> None:
    with pytest.raises(ValueError, match="one offset and one scale"):
        InputSpec(shape=[3], normalization={"offset": [0.0, 1.0], "scale": [1.0, 1.0]})
    with pytest.raises(ValueError, match="positive"):
        InputSpec(shape=[2], normalization={"offset": [0.0, 1.0], "scale": [1.0, 0.0]})


def test_tabular_vae_is_trained_exported_and_served_in_raw_units(
    tmp_path: Path, app_with: Any
) -> None:
    """The whole path a PyOD user would take: CSV in, raw feature values to /anomaly-score."""
    import asyncio

    x = _tabular(3000, seed=1)
    path = tmp_path / "normal.csv"
    np.savetxt(path, x, delimiter=",", header="pressure,flow,temperature", comments="")
    run, model_dir = tmp_path / "run", tmp_path / "models" / "sensors"
    cli = CliRunner()
    result = cli.invoke(
        training_cli,
        ["train", "--dataset", "arrays", "--data-dir", str(path), "--model", "vae", "--arch",
         "mlp", "--latent-dim", "2", "--hidden", "32,16", "--epochs", "40", "--lr", "3e-3",
         "--beta", "0.02", "--out", str(run)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli.invoke(
        training_cli, ["export", str(run / "checkpoint.pt"), "--out", str(model_dir)]
    )
    assert result.exit_code == 0, result.output
    card = (model_dir / "README.md").read_text()
    assert "--dataset arrays" in card and not (model_dir / "samples.png").exists()

    normal = _tabular(200, seed=7)
    outliers = normal[:50].copy()
    outliers[:, 2] = x[:, 2].max() + 1.0  # half the feature's range past anything seen

    async def served() -> None:
        async with app_with(
            model_repository=tmp_path / "models", enabled_models=["sensors"]
        ) as client:
            body = {"model": "sensors", "inputs": normal.tolist()}
            r = await client.post("/anomaly-score", json=body)
            assert r.status_code == 200, r.text  # raw values far outside [0, 1] are accepted
            normal_flags = np.array(r.json()["is_outlier"])
            body = {"model": "sensors", "inputs": outliers.tolist()}
            r = await client.post("/anomaly-score", json=body)
            outlier_flags = np.array(r.json()["is_outlier"])
            assert normal_flags.mean() <= 0.05 and outlier_flags.mean() >= 0.9

            r = await client.post(
                "/reconstruct", json={"model": "sensors", "inputs": normal.tolist()}
            )
            recon = np.array(r.json()["outputs"])
            err = np.abs(recon - normal).mean(0) / normal.std(0)
            assert np.all(err < 0.5), err  # raw units back, close to the inputs

            for bad, field in [
                ({"inputs": normal[:2, :2].tolist()}, "inputs"),
                ({"inputs": [["a", "b", "c"]]}, "inputs"),
                ({"images": ["iVBORw0KGgo="]}, "images"),
            ]:
                r = await client.post("/anomaly-score", json={"model": "sensors", **bad})
                assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
            r = await client.post(
                "/sample", json={"model": "sensors", "n": 2}, headers={"accept": "image/png"}
            )
            assert r.status_code == 406, r.text

            huge = normal[:2].tolist()
            huge[1][1] = 1e38  # finite in float32, infinite once divided by the flow's scale
            r = await client.post("/anomaly-score", json={"model": "sensors", "inputs": huge})
            assert r.status_code == 422 and r.json()["error"]["field"] == "inputs"

            r = await client.post("/sample", json={"model": "sensors", "n": 500, "seed": 0})
            samples = np.array(r.json()["samples"])
            assert 900 < samples[:, 0].mean() < 1600 and samples[:, 1].max() < 0.05

    asyncio.run(served())


# -- downloads -----------------------------------------------------------------------------------
def _idx(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 holding small IDX files in the MNIST layout."""
    root = tmp_path / "mirror"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28)))
        )
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(n) % 10))
    with _static_server(root) as url:
        yield url, root


@contextmanager
def _static_server(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a dataset mirror); yields its base URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_fills_the_cache_and_loaders_find_it(
    mirror: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = mirror
    cache = tmp_path / "cache"
    monkeypatch.setenv("LATENTSERVE_DATA_CACHE", str(cache))
    with pytest.raises(FileNotFoundError, match="python -m training download fashion-mnist"):
        load_dataset("fashion-mnist")
    dead = "http://127.0.0.1:9/"  # nothing listens: the next mirror is tried
    folder = download("fashion-mnist", mirrors=(dead, url), progress=False)
    assert folder == cache / "fashion-mnist" == cached_dataset_dir("fashion-mnist")
    assert not list(folder.glob("*.partial.gz"))
    from training.data import load_idx_dataset

    splits = load_idx_dataset(folder, "fashion-mnist", val_size=5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, 10)


def test_download_refuses_files_that_fail_their_checks(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = mirror
    # MNIST's published MD5s cannot match these small files: nothing may enter the cache
    with pytest.raises(DownloadError, match="MD5"):
        download("mnist", cache_dir=tmp_path / "c1", mirrors=(url,), progress=False)
    assert not list((tmp_path / "c1" / "mnist").iterdir())
    # a truncated file fails the IDX check
    images = root / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-5]))
    with pytest.raises(DownloadError, match="train-images"):
        download("fashion-mnist", cache_dir=tmp_path / "c2", mirrors=(url,), progress=False)
    assert not (tmp_path / "c2" / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST files are not on this machine")
def test_real_mnist_passes_the_published_checksums(tmp_path: Path) -> None:
    """The MD5s are of the decompressed files, so a recompressed mirror copy still passes."""
    with _static_server(SHARED_MNIST) as url:
        folder = download("mnist", cache_dir=tmp_path, mirrors=(url,), progress=False)
    splits = load_dataset("mnist", str(folder))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
