"""The `combined` score: reconstruction error and elbo-complexity, each standardised by the
model's own calibration, summed; offered only where both calibrations exist, through the real
app, and calibrated after the scores it reads."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.capabilities import Capabilities, ScoreMethod, combined_scales
from service.manifest import Calibration, Manifest
from tests.conftest import MODELS


def _calibration(method: str, q25: float, q50: float, q75: float) -> Calibration:
    return Calibration(
        method=method,
        dataset="test",
        n=100,
        quantiles={"0.25": q25, "0.5": q50, "0.75": q75},
        percentile=99.0,
        threshold=q75,
    )


def test_robust_scale_is_median_and_interquartile_range() -> None:
    cal = _calibration("elbo-complexity", -30.0, -20.0, -5.0)
    assert cal.robust_scale() == (-20.0, 25.0)
    errors = _calibration("reconstruction", 0.01, 0.02, 0.04)
    centre, spread = errors.robust_scale(log=True) or (0.0, 0.0)
    assert centre == pytest.approx(math.log(0.02)) and spread == pytest.approx(math.log(4.0))
    # unusable: no spread, logs of non-positive scores, quantiles missing
    assert _calibration("elbo", 1.0, 1.0, 1.0).robust_scale() is None
    assert _calibration("elbo-complexity", -3.0, -2.0, -1.0).robust_scale(log=True) is None
    assert cal.model_copy(update={"quantiles": {"0.5": 1.0}}).robust_scale() is None


def test_offered_only_where_both_scores_are_calibrated() -> None:
    vae = Manifest.load(MODELS / "digits-vae")
    assert ScoreMethod.COMBINED in Capabilities.of(vae).score_methods
    for missing in ("reconstruction", "elbo-complexity"):
        kept = {k: v for k, v in vae.calibration.items() if k != missing}
        uncalibrated = vae.model_copy(update={"calibration": kept})
        assert combined_scales(uncalibrated) is None
        assert ScoreMethod.COMBINED not in Capabilities.of(uncalibrated).score_methods
    flat = vae.model_copy(update={"input": vae.input.model_copy(update={"image_shape": None})})
    assert ScoreMethod.COMBINED not in Capabilities.of(flat).score_methods  # no complexity
    gan = Manifest.load(MODELS / "mnist-dcgan")
    assert ScoreMethod.COMBINED not in Capabilities.of(gan).score_methods


async def test_the_score_is_the_sum_of_robust_z_scores(client, digits_test) -> None:
    x = digits_test[0][:8]
    body = {"inputs": x.tolist(), "k": 16, "seed": 5}
    answers = {}
    for method in ("reconstruction", "elbo-complexity", "combined"):
        r = await client.post("/anomaly-score", json={**body, "method": method})
        assert r.status_code == 200, r.text
        answers[method] = r.json()
    scales = combined_scales(Manifest.load(MODELS / "digits-vae"))
    assert scales is not None
    (rc, rs), (cc, cs) = scales
    error = np.asarray(answers["reconstruction"]["scores"])
    corrected = np.asarray(answers["elbo-complexity"]["scores"])
    expected = (np.log(error) - rc) / rs + (corrected - cc) / cs
    np.testing.assert_allclose(answers["combined"]["scores"], expected, rtol=1e-5, atol=1e-4)
    combined = answers["combined"]
    assert combined["threshold_source"] == "calibration"
    assert combined["is_outlier"] == [s > combined["threshold"] for s in combined["scores"]]
    # the same seed and k give the same scores; the elbo part is sampled, so another seed differs
    again = await client.post("/anomaly-score", json={**body, "method": "combined"})
    assert again.json()["scores"] == combined["scores"]
    other = await client.post("/anomaly-score", json={**body, "method": "combined", "seed": 6})
    assert other.json()["scores"] != combined["scores"]


async def test_per_pixel_is_refused_naming_the_field(client, digits_test) -> None:
    x = digits_test[0][:2]
    r = await client.post(
        "/anomaly-score", json={"inputs": x.tolist(), "method": "combined", "per_pixel": True}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "per_pixel"


async def test_a_model_without_the_calibrations_names_its_methods(
    app_with, tmp_path: Path, digits_test
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "digits-vae", repo / "digits-vae")
    m = Manifest.load(repo / "digits-vae")
    m.model_copy(update={"calibration": {}}).save(repo / "digits-vae")
    async with app_with(model_repository=repo) as c:
        r = await c.post(
            "/anomaly-score", json={"inputs": digits_test[0][:2].tolist(), "method": "combined"}
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "method" and "elbo-complexity" in error["message"]
        assert (await c.get("/healthz")).status_code == 200


def test_calibration_comes_after_the_scores_it_reads(tmp_path: Path) -> None:
    from training.calibrate import calibrate
    from training.data import load_digits

    folder = tmp_path / "digits-vae"
    shutil.copytree(MODELS / "digits-vae", folder)
    m = Manifest.load(folder)
    m.model_copy(update={"calibration": {}}).save(folder)
    val = load_digits(seed=0).val
    manifest = calibrate(folder, val, "digits val")
    assert list(manifest.calibration)[-1] == "combined"
    bundled = Manifest.load(MODELS / "digits-vae").calibration
    for method in ("reconstruction", "elbo-complexity"):
        assert manifest.calibration[method].quantiles == pytest.approx(
            bundled[method].quantiles, rel=1e-5
        )
    combined = manifest.calibration["combined"]
    # standardised on the same data: the median of the sum sits near 0, in z units
    assert abs(combined.quantiles["0.5"]) < 1.0 and combined.n == len(val)
    # recalibrating one score alone leaves no combined calibration made with the old scales
    only = calibrate(folder, val, "digits val", methods=(ScoreMethod.RECONSTRUCTION,))
    assert "combined" not in only.calibration
