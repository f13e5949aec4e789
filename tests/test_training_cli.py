"""The training command line as a new user meets it: data that is not there yet is one line that
says what to run, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import MODELS
from training.__main__ import app as training_cli

ROOT = MODELS.parent
FIX = "python -m training download mnist"


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A download cache with nothing in it, as in a fresh clone."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LATENTSERVE_DATA_CACHE", str(cache))
    return cache


def _one_error_line(args: list[str]) -> str:
    result = CliRunner().invoke(training_cli, args)
    assert isinstance(result.exception, SystemExit), result.exception  # exited, did not raise
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


DIGITS_VAE = str(MODELS / "digits-vae")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["train", "--dataset", "mnist"], id="train"),
        pytest.param(["train", "--model", "gan", "--dataset", "mnist"], id="train-gan"),
        pytest.param(["evaluate", DIGITS_VAE], id="evaluate"),
        pytest.param(["calibrate", DIGITS_VAE, "--dataset", "mnist"], id="calibrate"),
        pytest.param(["debias"], id="debias"),
        pytest.param(["experiment", "one-class"], id="experiment"),
    ],
)
def test_an_empty_cache_is_one_line_naming_the_download(empty_cache: Path, args: list[str]) -> None:
    line = _one_error_line(args)
    assert f"`{FIX}`" in line and str(empty_cache / "mnist") in line


def test_fashion_mnist_names_its_own_download(empty_cache: Path) -> None:
    line = _one_error_line(["train", "--dataset", "fashion-mnist"])
    assert "`python -m training download fashion-mnist`" in line


def test_a_data_dir_without_the_files_names_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    line = _one_error_line(["train", "--dataset", "mnist", "--data-dir", str(folder)])
    assert line == (
        f"error: --data-dir {folder} holds none of mnist's IDX files (mnist needs "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, each gzipped or not); or leave out --data-dir after "
        f"`{FIX}`"
    )
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (folder / "train-labels-idx1-ubyte").write_bytes(b"")
    line = _one_error_line(["evaluate", DIGITS_VAE, "--data-dir", str(folder)])
    assert line.startswith(
        f"error: --data-dir {folder} lacks t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte ("
    )
    line = _one_error_line(["debias", "--data-dir", str(tmp_path / "nowhere")])
    assert line.startswith(f"error: --data-dir {tmp_path / 'nowhere'} is not a folder (")


def test_missing_images_and_arrays_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    line = _one_error_line(["train", "--dataset", "images", "--data-dir", str(missing)])
    assert line == f"error: image folder {missing} does not exist (--data-dir)"
    table = tmp_path / "sensors.csv"
    line = _one_error_line(["train", "--dataset", "arrays", "--data-dir", str(table)])
    assert line == f"error: --data-dir {table}: no such file (a .npy, .npz or .csv file)"
    line = _one_error_line(["train", "--dataset", "arrays"])
    assert line == "error: --data-dir is required for arrays"


def test_the_real_entry_point_prints_one_line(empty_cache: Path) -> None:
    """`python -m training` as a user runs it: logging configured, nothing caught by a runner."""
    env = {**os.environ, "LATENTSERVE_DATA_CACHE": str(empty_cache)}
    out = subprocess.run(
        [sys.executable, "-m", "training", "train", "--dataset", "mnist"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and f"`{FIX}`" in out.stderr, out.stderr


def test_gans_refuse_resume_instead_of_restarting(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        training_cli, ["train", "--model", "gan", "--resume", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and "GANs cannot resume yet" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args", [["--model", "gan"], ["--model", "vae", "--beta", "2"], ["--model", "ae"]]
)
def test_iwae_objective_is_refused_where_it_bounds_nothing(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        training_cli,
        ["train", *args, "--importance-samples", "5", "--out", str(tmp_path / "run")],
    )
    assert result.exit_code == 2 and "--importance-samples" in result.output
    assert "--beta 1" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "cgan", "--pack", "2"], "unconditional GANs"),
        (["--model", "vae", "--pack", "2"], "unconditional GANs"),
        (["--model", "gan", "--pack", "3", "--batch-size", "64"], "not a multiple of --pack 3"),
        (["--model", "cgan", "--clusters", "10"], "unconditional GAN"),
        (["--model", "gan", "--clusters", "10", "--pack", "2"], "mix clusters"),
    ],
)
def test_packing_and_clusters_are_refused_where_they_cannot_apply(
    args: list[str], says: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(training_cli, ["train", *args, "--out", str(tmp_path / "run")])
    option = "--clusters" if "--clusters" in args else "--pack"
    assert result.exit_code == 2 and option in result.output and says in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["--model", "gan"], ["--model", "vae", "--arch", "mlp"]])
def test_residual_blocks_are_refused_outside_conv_autoencoders(
    args: list[str], tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        training_cli, ["train", *args, "--res-blocks", "1", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and "--res-blocks" in result.output
    assert "--arch conv" in result.output
    assert not (tmp_path / "run").exists()


def test_likelihood_refuses_checkpoints_without_a_bernoulli_bound(tmp_path: Path) -> None:
    checkpoint = _checkpoint_made_elsewhere(tmp_path)  # trained without --binarize
    result = CliRunner().invoke(training_cli, ["likelihood", str(checkpoint)])
    assert result.exit_code == 2 and "binarized" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_likelihood_refuses_a_gpu_this_machine_lacks(tmp_path: Path) -> None:
    checkpoint = _checkpoint_made_elsewhere(tmp_path)
    result = CliRunner().invoke(training_cli, ["likelihood", str(checkpoint), "--device", "cuda"])
    assert result.exit_code == 2 and "--device" in result.output and "no CUDA" in result.output


def _checkpoint_made_elsewhere(tmp_path: Path) -> Path:
    """An untrained MNIST checkpoint whose config names a data folder this machine lacks."""
    import torch

    from training.config import ModelConfig, TrainConfig
    from training.models import build_model
    from training.train import save_checkpoint

    cfg = ModelConfig(kind="vae", input_shape=(1, 28, 28), image_shape=(1, 28, 28), hidden=(8,))
    model = build_model(cfg)
    path = tmp_path / "run" / "checkpoint.pt"
    train_cfg = TrainConfig(dataset="mnist", data_dir=str(tmp_path / "elsewhere"))
    save_checkpoint(path, model, torch.optim.Adam(model.parameters()), train_cfg, 1, {})
    return path


def test_export_reads_the_cache_when_the_recorded_folder_is_not_here(
    empty_cache: Path, tmp_path: Path
) -> None:
    checkpoint, out = _checkpoint_made_elsewhere(tmp_path), tmp_path / "model"
    line = _one_error_line(["export", str(checkpoint), "--out", str(out)])
    assert f"`{FIX}`" in line and str(empty_cache / "mnist") in line  # the cache, not elsewhere/
    mine = tmp_path / "mine"
    mine.mkdir()
    line = _one_error_line(["export", str(checkpoint), "--out", str(out), "--data-dir", str(mine)])
    assert line.startswith(f"error: --data-dir {mine} holds none of mnist's IDX files")
    assert not out.exists()


async def test_fp16_copies_join_an_exported_model_and_are_served(tmp_path: Path) -> None:
    """`python -m training fp16 DIR` adds a half-precision copy of every part beside the fp32
    graphs (left byte for byte) and lists it in the manifest, checksum included; an app with
    PREFER_FP16 then serves the copies, close to the fp32 numbers."""
    import shutil

    import numpy as np

    from service.manifest import Manifest
    from tests.conftest import _client_for, make_settings

    model = tmp_path / "digits-vae"
    shutil.copytree(MODELS / "digits-vae", model)
    before = Manifest.load(model)
    result = CliRunner().invoke(training_cli, ["fp16", str(model)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "digits-vae: encoder.fp16.onnx, decoder.fp16.onnx"
    after = Manifest.load(model)
    for role, part in after.parts.items():
        assert part.path == before.parts[role].path and part.sha256 == before.parts[role].sha256
        assert part.fp16_path == f"{role.value}.fp16.onnx" and (model / part.fp16_path).is_file()
    z = np.random.default_rng(0).standard_normal((4, 8)).tolist()
    outputs = {}
    for fp16 in (False, True):
        settings = make_settings(model_repository=tmp_path, prefer_fp16=fp16)
        async for client in _client_for(settings):
            info = (await client.get("/models/digits-vae")).json()
            assert info["precision"] == ("fp16" if fp16 else "fp32")
            decoded = await client.post("/decode", json={"z": z})
            outputs[fp16] = np.array(decoded.json()["outputs"])
    err = np.linalg.norm(outputs[True] - outputs[False]) / np.linalg.norm(outputs[False])
    assert 0 < err < 2e-3
