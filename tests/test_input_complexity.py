"""The `elbo-complexity` score (Serra et al. 2020) and the warning for inputs a binarized
likelihood was not fit to, through the real app."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.capabilities import Capabilities, ScoreMethod
from service.images import png_complexity_bits
from service.manifest import Manifest
from tests.conftest import MODELS

SHAPE = (1, 8, 8)


def test_more_strokes_cost_more_bits() -> None:
    shape = (1, 28, 28)
    blank = np.zeros((1, *shape), np.float32)
    bar = blank.copy()
    bar[0, 0, 4:24, 12:16] = 1.0
    cross = bar.copy()
    cross[0, 0, 12:16, 4:24] = 1.0
    noise = (np.random.default_rng(0).random((1, *shape)) > 0.5).astype(np.float32)
    bits = png_complexity_bits(np.concatenate([blank, bar, cross, noise]), shape, (0.0, 1.0))
    assert bits[0] < bits[1] < bits[2] < bits[3]
    # grey values code as the ink the Bernoulli likelihood sees: below the middle is none
    faint = np.full((1, *shape), 0.4, np.float32)
    assert png_complexity_bits(faint, shape, (0.0, 1.0))[0] == bits[0]


def test_only_image_models_with_a_bernoulli_likelihood_offer_it() -> None:
    vae = Manifest.load(MODELS / "digits-vae")
    assert ScoreMethod.ELBO_COMPLEXITY in Capabilities.of(vae).score_methods
    flat = vae.model_copy(update={"input": vae.input.model_copy(update={"image_shape": None})})
    assert ScoreMethod.ELBO_COMPLEXITY not in Capabilities.of(flat).score_methods
    assert ScoreMethod.ELBO in Capabilities.of(flat).score_methods
    gan = Manifest.load(MODELS / "mnist-dcgan")
    assert ScoreMethod.ELBO_COMPLEXITY not in Capabilities.of(gan).score_methods


async def test_the_score_is_the_elbo_minus_the_png_length_in_nats(client, digits_test) -> None:
    x = digits_test[0][:6]
    body = {"inputs": x.tolist(), "k": 16, "seed": 3}
    elbo = await client.post("/anomaly-score", json={**body, "method": "elbo"})
    corrected = await client.post("/anomaly-score", json={**body, "method": "elbo-complexity"})
    assert elbo.status_code == corrected.status_code == 200, corrected.text
    bits = png_complexity_bits(x.reshape(len(x), *SHAPE).astype(np.float32), SHAPE, (0.0, 1.0))
    expected = np.asarray(elbo.json()["scores"]) - bits * math.log(2.0)
    np.testing.assert_allclose(corrected.json()["scores"], expected, rtol=1e-5, atol=1e-3)
    answer = corrected.json()
    assert answer["threshold_source"] == "calibration"  # the bundled models are calibrated
    assert answer["input_warnings"] == []
    per_pixel = await client.post(
        "/anomaly-score", json={**body, "method": "elbo-complexity", "per_pixel": True}
    )
    assert per_pixel.status_code == 422 and per_pixel.json()["error"]["field"] == "per_pixel"


@pytest.fixture
def binarized_repo(tmp_path: Path) -> Path:
    """digits-vae, declared as fit to binarized inputs."""
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "digits-vae", repo / "digits-vae")
    m = Manifest.load(repo / "digits-vae")
    m.model_copy(update={"input": m.input.model_copy(update={"binarized": True})}).save(
        repo / "digits-vae"
    )
    return repo


async def test_grayscale_inputs_to_a_binarized_likelihood_are_flagged(
    app_with, binarized_repo: Path, digits_test
) -> None:
    grey = digits_test[0][:4]
    binary = (grey > 0.5).astype(np.float32)
    async with app_with(model_repository=binarized_repo) as c:
        info = (await c.get("/models/digits-vae")).json()
        assert info["binarized"] is True
        for method in ("elbo", "iwae", "elbo-complexity"):
            r = await c.post("/anomaly-score", json={"inputs": grey.tolist(), "method": method})
            assert r.status_code == 200
            (warning,) = r.json()["input_warnings"]
            assert "binarized" in warning and method in warning
            assert r.headers["x-input-warning"] == warning
            ok = await c.post("/anomaly-score", json={"inputs": binary.tolist(), "method": method})
            assert ok.json()["input_warnings"] == [] and "x-input-warning" not in ok.headers
        # reconstruction error is not a likelihood: no warning
        rec = await c.post("/anomaly-score", json={"inputs": grey.tolist()})
        assert rec.json()["input_warnings"] == []
        npy = await c.post(
            "/anomaly-score?method=elbo",
            content=_npy(grey),
            headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
        )
        assert npy.status_code == 200 and "binarized" in npy.headers["x-input-warning"]


def _npy(x: np.ndarray) -> bytes:
    from service.arrays import npy_bytes

    return npy_bytes(x.astype(np.float32))
