"""The `latentserve` client commands (sample, score, models) and the SDK's PIL images, against a
real `python -m service serve`: files and tables hold what the routes answer, exit statuses say
whether an input is an outlier."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from service.__main__ import cli
from service.client import AsyncClient, Client
from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e
runner = CliRunner()


def _png(path: Path, x: np.ndarray) -> Path:
    """An 8x8 digit in [0, 1] as a grayscale PNG."""
    Image.fromarray((x.reshape(8, 8) * 255).round().astype(np.uint8)).save(path)
    return path


def _as_read(x: np.ndarray) -> np.ndarray:
    """What the server reads back from `_png`: 8-bit levels over 255."""
    levels = (x * 255).round().astype(np.uint8)
    return (levels.astype(np.float32) / 255.0).reshape(len(x), 64)


def test_sample_writes_the_grid_and_the_array(live_server: LiveServer, tmp_path: Path) -> None:
    grid, array = tmp_path / "grid.png", tmp_path / "samples.npy"
    args = ["--url", live_server.url, "--model", "digits-vae", "-n", "16", "--seed", "0"]
    done = runner.invoke(cli, ["sample", *args, "--scale", "2", "-o", str(grid)])
    assert done.exit_code == 0, done.output
    assert f"wrote 16 samples to {grid}" in done.stdout
    done = runner.invoke(cli, ["sample", *args, "-o", str(array)])
    assert done.exit_code == 0, done.output
    with Client(live_server.url, model="digits-vae") as c:
        assert grid.read_bytes() == c.sample_png(16, seed=0, scale=2)
        np.testing.assert_array_equal(np.load(array), c.sample(16, seed=0))
    with Image.open(grid) as img:  # 4 x 4 cells of 16 px, 1 px borders
        assert img.size == (4 * 17 + 1, 4 * 17 + 1)
    refused = runner.invoke(cli, ["sample", *args, "-o", str(tmp_path / "x.jpg")])
    assert refused.exit_code == 2 and ".png grid or a .npy array" in refused.output


def test_score_prints_a_table_and_exits_1_on_an_outlier(
    live_server: LiveServer, tmp_path: Path, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits_test[0][:3]
    noise = np.random.default_rng(0).uniform(size=(1, 64)).astype(np.float32)
    digits = [_png(tmp_path / f"digit{i}.png", row) for i, row in enumerate(x)]
    odd = _png(tmp_path / "noise.png", noise[0])
    with Client(live_server.url, model="digits-vae") as c:
        expected = c.anomaly_score(_as_read(np.concatenate([x, noise])))
        from_files = c.anomaly_score_images([*digits, odd.read_bytes()])
    np.testing.assert_array_equal(from_files.scores, expected.scores)
    assert expected.is_outlier is not None and expected.threshold is not None
    assert expected.is_outlier.tolist() == [False, False, False, True]

    url = ["--url", live_server.url, "--model", "digits-vae"]
    inliers = runner.invoke(cli, ["score", *url, *map(str, digits)])
    assert inliers.exit_code == 0, inliers.output
    lines = inliers.stdout.splitlines()
    assert lines[0].split() == ["image", "score", "(reconstruction)", "threshold", "outlier"]
    for line, path, s in zip(lines[1:], digits, expected.scores[:3], strict=True):
        assert line.split() == [str(path), f"{s:.6g}", f"{expected.threshold:.6g}", "no"]

    flagged = runner.invoke(cli, ["score", *url, str(digits[0]), str(odd)])
    assert flagged.exit_code == 1
    assert flagged.stdout.splitlines()[2].split()[-1] == "yes"
    lenient = runner.invoke(cli, ["score", *url, "--threshold", "1e9", str(odd)])
    assert lenient.exit_code == 0 and lenient.stdout.splitlines()[1].split()[-1] == "no"

    missing = runner.invoke(cli, ["score", "--url", live_server.url, "-m", "nope", str(odd)])
    assert missing.exit_code == 2 and "404 model_not_found" in missing.stderr


def test_models_lists_what_the_server_serves(live_server: LiveServer) -> None:
    done = runner.invoke(cli, ["models", "--url", live_server.url])
    assert done.exit_code == 0, done.output
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {
        "digits-vae",
        "mnist-conv-vae",
        "mnist-cvae",
        "mnist-dcgan",
        "mnist-cdcgan",
    }
    assert rows["mnist-dcgan"][1:5] == ["2", "gan", "ready", "cpu"]
    assert "anomaly-score" in rows["mnist-dcgan"][5:][-1]
    down = runner.invoke(cli, ["models", "--url", "http://127.0.0.1:9"])
    assert down.exit_code == 2 and "error:" in down.stderr


def test_sdk_returns_pil_images_on_request(live_server: LiveServer, tmp_path: Path) -> None:
    with Client(live_server.url, model="digits-vae") as c:
        images = c.sample_images(3, seed=4, scale=2)
        x = c.sample(3, seed=4)
    levels = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(3, 8, 8)
    for img, expected in zip(images, levels, strict=True):
        assert img.size == (16, 16) and img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img)[::2, ::2], expected)

    async def twin() -> tuple[list[Image.Image], np.ndarray]:
        async with AsyncClient(live_server.url, model="digits-vae") as c:
            scored = await c.anomaly_score_images([_png(tmp_path / "a.png", x[0])])
            return await c.sample_images(3, seed=4, scale=2), scored.scores

    again, scores = asyncio.run(twin())
    assert [np.asarray(i).tolist() for i in again] == [np.asarray(i).tolist() for i in images]
    with Client(live_server.url, model="digits-vae") as c:
        np.testing.assert_array_equal(scores, c.anomaly_score(_as_read(x[:1])).scores)
