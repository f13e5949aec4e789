"""GAN (generator + discriminator) and conditional models through the HTTP API, checked against
numpy re-computations of tiny hand-built ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import tiny_models as tm


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    tm.write_gan(repo / "tiny-gan")
    tm.write_cvae(repo / "tiny-cvae")
    return repo


async def test_gan_samples_are_the_generator_of_seeded_gaussian_z(app_with, tiny_repo) -> None:
    async with app_with(
        model_repository=tiny_repo, enabled_models=None, default_model="tiny-gan"
    ) as c:
        info = (await c.get("/models/tiny-gan")).json()
        assert info["kind"] == "gan"
        assert set(info["operations"]) == {"sample", "decode", "interpolate", "anomaly-score"}
        assert info["score_methods"] == ["discriminator"]
        r = (
            await c.post(
                "/sample", json={"n": 5, "seed": 4, "temperature": 0.5, "return_latents": True}
            )
        ).json()
        z = np.random.default_rng(4).standard_normal((5, tm.LATENT), dtype=np.float32) * 0.5
        np.testing.assert_allclose(r["latents"], z, rtol=1e-6)
        np.testing.assert_allclose(r["samples"], tm.expected_decode(z), atol=1e-5)
        assert r["shape"] == [5, 1, tm.SIDE, tm.SIDE]


async def test_gan_discriminator_score(app_with, tiny_repo) -> None:
    async with app_with(model_repository=tiny_repo, enabled_models=None) as c:
        x = np.random.default_rng(0).uniform(size=(6, 1, tm.SIDE, tm.SIDE)).astype(np.float32)
        r = (
            await c.post(
                "/anomaly-score",
                json={"model": "tiny-gan", "inputs": x.tolist(), "method": "discriminator"},
            )
        ).json()
        expected = np.logaddexp(0, -tm.expected_logit(x))  # -log sigmoid(logit)
        np.testing.assert_allclose(r["scores"], expected, rtol=1e-4)
        assert r["threshold"] == 2.0 and r["threshold_source"] == "calibration"
        assert r["is_outlier"] == [bool(s > 2.0) for s in expected]


async def test_gan_has_no_encoder(app_with, tiny_repo) -> None:
    async with app_with(model_repository=tiny_repo, enabled_models=None) as c:
        x = np.zeros((1, 1, tm.SIDE, tm.SIDE)).tolist()
        for path, body in (
            ("/encode", {"inputs": x}),
            ("/reconstruct", {"inputs": x}),
            ("/anomaly-score", {"inputs": x, "method": "elbo"}),
        ):
            r = await c.post(path, json={"model": "tiny-gan", **body})
            assert r.status_code == 422, path
            assert r.json()["error"]["code"] == "operation_not_supported"
        z = [[0.0] * tm.LATENT, [1.0] * tm.LATENT]
        r = (await c.post("/interpolate", json={"model": "tiny-gan", "z": z, "steps": 3})).json()
        np.testing.assert_allclose(
            r["outputs"][1], tm.expected_decode(np.full((1, 4), 0.5))[0], atol=1e-5
        )


async def test_conditional_samples_use_their_labels(app_with, tiny_repo) -> None:
    async with app_with(model_repository=tiny_repo, enabled_models=None) as c:
        body = {
            "model": "tiny-cvae",
            "n": 3,
            "seed": 1,
            "labels": [0, 1, 2],
            "return_latents": True,
        }
        r = (await c.post("/sample", json=body)).json()
        z = np.array(r["latents"], dtype=np.float32)
        np.testing.assert_allclose(
            r["samples"], tm.expected_decode(z, np.array([0, 1, 2])), atol=1e-5
        )
        one = (await c.post("/sample", json={**body, "labels": 2})).json()
        np.testing.assert_allclose(
            one["samples"], tm.expected_decode(z, np.array([2, 2, 2])), atol=1e-5
        )


@pytest.mark.parametrize(
    ("labels", "field_message"),
    [
        pytest.param(None, "conditional", id="missing"),
        pytest.param([0, 1], "expected 3 labels", id="wrong-count"),
        pytest.param([0, 1, 3], "[0, 2]", id="out-of-range"),
        pytest.param([0, 1, 1.5], "integers", id="not-integers"),
    ],
)
async def test_conditional_label_errors(app_with, tiny_repo, labels, field_message) -> None:
    async with app_with(model_repository=tiny_repo, enabled_models=None) as c:
        r = await c.post("/sample", json={"model": "tiny-cvae", "n": 3, "labels": labels})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["field"] == "labels" and field_message in err["message"]


async def test_conditional_encode_and_reconstruct(app_with, tiny_repo) -> None:
    async with app_with(model_repository=tiny_repo, enabled_models=None) as c:
        x = np.random.default_rng(1).uniform(size=(2, 1, tm.SIDE, tm.SIDE)).astype(np.float32)
        enc = (
            await c.post(
                "/encode", json={"model": "tiny-cvae", "inputs": x.tolist(), "labels": [1, 2]}
            )
        ).json()
        mean = x.reshape(2, -1) @ tm.weights(0)["W_enc"]
        np.testing.assert_allclose(enc["mean"], mean, atol=1e-5)
        assert np.allclose(enc["log_var"], -1.0)
        rec = (
            await c.post(
                "/reconstruct", json={"model": "tiny-cvae", "inputs": x.tolist(), "labels": [1, 2]}
            )
        ).json()
        np.testing.assert_allclose(
            rec["outputs"], tm.expected_decode(mean, np.array([1, 2])), atol=1e-5
        )
        png = await c.post(
            "/reconstruct",
            json={"model": "tiny-cvae", "inputs": x.tolist(), "labels": [1, 2]},
            headers={"Accept": "image/png"},
        )
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
