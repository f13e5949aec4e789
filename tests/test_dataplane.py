"""The runtime as the one data plane: capabilities from the manifest, every request check in the
runtime (callable without HTTP), admission by expected wait and request timeouts through the
real app, and `.npy` bodies whose headers lie."""

from __future__ import annotations

import asyncio
import json
import re
import resource
from pathlib import Path

import numpy as np
import pytest

from service.arrays import npy_bytes, read_npy
from service.capabilities import Capabilities, Operation, ScoreMethod
from service.errors import InvalidInput, OperationNotSupported, PayloadTooLarge
from service.manifest import Manifest
from tests.conftest import MODELS

NPY = {"content-type": "application/x-npy"}


def _manifest(name: str, **update: object) -> Manifest:
    m = Manifest.load(MODELS / name)
    return m.model_copy(update=update) if update else m


# -- capabilities ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "operations", "methods"),
    [
        pytest.param(
            "digits-vae",
            {"sample", "decode", "interpolate", "encode", "reconstruct", "anomaly-score"},
            ("reconstruction", "elbo", "iwae", "elbo-complexity", "combined"),
            id="vae",
        ),
        pytest.param(
            "mnist-cvae",
            {"sample", "decode", "interpolate", "encode", "reconstruct", "anomaly-score"},
            ("reconstruction", "elbo", "iwae", "elbo-complexity", "combined"),
            id="cvae",
        ),
        pytest.param(
            "mnist-dcgan",
            {"sample", "decode", "interpolate", "anomaly-score"},
            ("discriminator",),
            id="gan-with-discriminator",
        ),
        pytest.param(
            "mnist-cdcgan",
            {"sample", "decode", "interpolate", "anomaly-score"},
            ("discriminator",),
            id="conditional-gan",
        ),
    ],
)
def test_capabilities_of_bundled_models(
    name: str, operations: set[str], methods: tuple[str, ...]
) -> None:
    caps = Capabilities.of(_manifest(name))
    assert set(caps.operations) == operations
    assert caps.score_methods == methods
    assert caps.conditional == (name in ("mnist-cvae", "mnist-cdcgan"))


def test_gan_without_discriminator_scores_nothing() -> None:
    m = _manifest("mnist-dcgan")
    parts = {r: p for r, p in m.parts.items() if r.value == "generator"}
    caps = Capabilities.of(m.model_copy(update={"parts": parts}))
    assert Operation.ANOMALY_SCORE not in caps.operations
    assert caps.score_methods == ()
    with pytest.raises(OperationNotSupported, match="cannot encode"):
        caps.require(Operation.ENCODE)


def test_gaussian_likelihood_has_no_bernoulli_bounds() -> None:
    caps = Capabilities.of(_manifest("digits-vae", likelihood="gaussian"))
    assert caps.score_methods == (ScoreMethod.RECONSTRUCTION,)
    with pytest.raises(OperationNotSupported) as err:
        caps.require_method(ScoreMethod.ELBO)
    assert err.value.field == "method"


async def test_models_route_reports_the_capabilities(app_with) -> None:
    async with app_with(enabled_models=["digits-vae", "mnist-dcgan"]) as client:
        listed = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
    for name, info in listed.items():
        caps = Capabilities.of(_manifest(name))
        assert info["operations"] == [op.value for op in caps.operations]
        assert info["score_methods"] == [m.value for m in caps.score_methods]


async def test_unsupported_operation_answers_422_before_reading_inputs(app_with) -> None:
    async with app_with(enabled_models=["mnist-dcgan"], default_model="mnist-dcgan") as client:
        r = await client.post("/encode", json={"inputs": "not even an array"})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "operation_not_supported"
        r = await client.post("/anomaly-score", json={"inputs": [[0.0]], "method": "elbo"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "method"


# -- the data plane without HTTP -----------------------------------------------------------------
async def test_data_plane_checks_requests_without_http(client) -> None:
    plane = client.app.state.data_plane  # type: ignore[attr-defined]
    cases: list[tuple[dict[str, object], type[InvalidInput | PayloadTooLarge], str]] = [
        ({"n": 0}, InvalidInput, "n"),
        ({"n": 10**6}, PayloadTooLarge, "n"),
        ({"temperature": float("nan")}, InvalidInput, "temperature"),
        ({"seed": -1}, InvalidInput, "seed"),
        ({"labels": [1]}, InvalidInput, "labels"),
        ({"timeout_s": -1.0}, InvalidInput, "timeout"),
    ]
    for kwargs, error, field in cases:
        with pytest.raises(error) as caught:
            await plane.sample(None, **kwargs)
        assert caught.value.field == field, kwargs
    with pytest.raises(InvalidInput) as caught:
        await plane.sample("")
    assert caught.value.field == "model"
    sampled = await plane.sample(None, n=3, seed=7)
    again = await plane.sample("digits-vae", n=3, seed=7)
    np.testing.assert_array_equal(sampled.outputs, again.outputs)
    assert sampled.outputs.shape == (3, 64) and sampled.seed == 7


async def test_threshold_is_resolved_by_the_runtime(client, digits_test) -> None:
    from service.runtime.dataplane import Examples

    plane = client.app.state.data_plane  # type: ignore[attr-defined]
    x = digits_test[0][:8]
    calibrated = await plane.anomaly_score(None, Examples(arrays=x))
    assert calibrated.threshold_source == "calibration"
    model = plane.model(None)
    assert calibrated.threshold == model.manifest.calibration["reconstruction"].threshold
    own = await plane.anomaly_score(None, Examples(arrays=x), threshold=0.0)
    assert own.threshold_source == "request" and own.is_outlier is not None
    assert own.is_outlier.all()
    with pytest.raises(OperationNotSupported) as caught:
        await plane.anomaly_score(None, Examples(arrays=x), method="discriminator")
    assert caught.value.field == "method"


async def test_encode_draws_match_the_posterior(client, digits_test) -> None:
    r = await client.post(
        "/encode", json={"inputs": digits_test[0][:4].tolist(), "samples_per_input": 4000}
    )
    body = r.json()
    z = np.asarray(body["z"])
    assert z.shape == (4, 4000, 8)
    np.testing.assert_allclose(z.mean(1), body["mean"], atol=0.1)
    np.testing.assert_allclose(np.log(z.var(1)), body["log_var"], atol=0.15)


async def test_infer_part_runs_one_graph_on_checked_tensors(client) -> None:
    plane = client.app.state.data_plane  # type: ignore[attr-defined]
    z = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    ran = await plane.infer_part("digits-vae", "decoder", {"z": z})
    np.testing.assert_array_equal(ran.outputs["x"], (await plane.decode(None, z)).outputs)
    encoded = await plane.infer_part(None, "encoder", {"x": ran.outputs["x"]}, outputs=["log_var"])
    assert list(encoded.outputs) == ["log_var"] and encoded.outputs["log_var"].shape == (5, 8)
    cases: list[tuple[str, dict[str, np.ndarray], type[Exception], str | None, str]] = [
        ("generator", {"z": z}, OperationNotSupported, "part", "its parts: encoder, decoder"),
        ("decoder", {}, InvalidInput, "z", "missing"),
        ("decoder", {"z": z, "label": np.zeros(5, np.int64)}, InvalidInput, "label", "no input"),
        ("decoder", {"z": z.astype(np.float64)}, InvalidInput, "z", "float32"),
        ("decoder", {"z": z[:, :4]}, InvalidInput, "z", "expected shape [n, 8], got [5, 4]"),
        ("decoder", {"z": z[0]}, InvalidInput, "z", "expected shape [n, 8], got [8]"),
        ("decoder", {"z": z[:0]}, InvalidInput, "z", "at least one"),
        ("decoder", {"z": np.full((1, 8), np.inf, np.float32)}, InvalidInput, "z", "finite"),
        ("decoder", {"z": np.zeros((2000, 8), np.float32)}, PayloadTooLarge, "z", "at most"),
    ]
    for role, inputs, error, field, text in cases:
        with pytest.raises(error, match=re.escape(text)) as caught:
            await plane.infer_part(None, role, inputs)
        assert caught.value.field == field, (role, text)  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="no output 'y'"):
        await plane.infer_part(None, "decoder", {"z": z}, outputs=["y"])


# -- .npy bodies ---------------------------------------------------------------------------------
def _lying_npy(shape: tuple[int, ...], payload: bytes = b"\0" * 64) -> bytes:
    header = npy_bytes(np.zeros((1, 64), np.float32))
    real = b"(1, 64)"
    lie = repr(shape).encode()
    assert real in header
    return header.replace(real, lie.ljust(len(real)) if len(lie) < len(real) else lie) + payload


def test_read_npy_checks_the_header_against_the_body() -> None:
    good = npy_bytes(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(read_npy(good, "inputs"), np.arange(6).reshape(2, 3))
    fortran = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert (read_npy(npy_bytes(fortran), "inputs") == fortran).all()
    with pytest.raises(InvalidInput, match="bytes follow it"):
        read_npy(good[:-4], "inputs")
    with pytest.raises(InvalidInput, match="bytes follow it"):
        read_npy(_lying_npy((2**40, 64)), "inputs")
    with pytest.raises(InvalidInput):
        read_npy(b"\x93NUMPY\x01\x00garbage", "inputs")


async def test_lying_npy_headers_get_422_and_memory_stays_flat(client) -> None:
    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20

    lies = [_lying_npy((2**40, 64)), _lying_npy((2**31, 2**31)), _lying_npy((10**9,))]
    for body in lies:  # warm every code path once before measuring
        r = await client.post("/anomaly-score", content=body, headers=NPY)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "inputs"
    before = rss_mb()
    for i in range(1000):
        r = await client.post("/anomaly-score", content=lies[i % 3], headers=NPY)
        assert r.status_code == 422
    assert rss_mb() - before < 20
    ok = await client.post(
        "/anomaly-score", content=npy_bytes(np.full((2, 64), 0.5, np.float32)), headers=NPY
    )
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 2


# -- admission by time, timeouts ---------------------------------------------------------------
async def test_256_clients_of_64_latents_are_all_served_by_default(client) -> None:
    """The burst that the old cap of 16,384 queued rows refused for the most part (256 x 64
    latents) queues with default settings. digits-vae keeps the test quick on a loaded machine;
    the same burst on mnist-conv-vae is measured by `python -m bench.overload`."""
    z = np.random.default_rng(0).standard_normal((64, 8)).round(4).tolist()
    body = json.dumps({"z": z})
    headers = {"content-type": "application/json", "accept": "application/x-npy"}
    rs = await asyncio.gather(
        *(client.post("/decode", content=body, headers=headers) for _ in range(256))
    )
    assert [r.status_code for r in rs] == [200] * 256
    assert all(read_npy(r.content, "x").shape == (64, 64) for r in rs)


async def test_overload_gets_fast_503_with_retry_after(app_with) -> None:
    async with app_with(
        enabled_models=["mnist-conv-vae"], default_model="mnist-conv-vae", max_queue_wait_ms=20
    ) as c:
        z = np.zeros((64, 32)).tolist()
        headers = {"accept": "application/x-npy"}
        rs = await asyncio.gather(
            *(c.post("/decode", json={"z": z}, headers=headers) for _ in range(128))
        )
        codes = [r.status_code for r in rs]
        refused = [r for r in rs if r.status_code == 503]
        assert set(codes) == {200, 503}
        for r in refused:
            assert r.json()["error"]["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1
        metrics = (await c.get("/metrics")).text
        assert 'status="503"' in metrics


async def test_request_timeout_header(client) -> None:
    heavy = {"inputs": [[0.5] * 64] * 64, "method": "iwae", "k": 1024}
    r = await client.post("/anomaly-score", json=heavy, headers={"x-request-timeout": "0.0001"})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert "retry-after" in r.headers
    r = await client.post(
        "/anomaly-score", json={"inputs": [[0.5] * 64]}, headers={"x-request-timeout": "5"}
    )
    assert r.status_code == 200
    for bad in ("soon", "0", "-1", "nan"):
        r = await client.post("/sample", json={}, headers={"x-request-timeout": bad})
        assert r.status_code == 422 and r.json()["error"]["field"] == "X-Request-Timeout"


@pytest.mark.parametrize(
    "name", ["digits-vae", "mnist-conv-vae", "mnist-cvae", "mnist-dcgan", "mnist-cdcgan"]
)
def test_every_score_method_of_a_bundled_model_is_calibrated(name: str) -> None:
    manifest = _manifest(name)
    methods = {m.value for m in Capabilities.of(manifest).score_methods}
    assert set(manifest.calibration) == methods
    for c in manifest.calibration.values():
        assert c.quantiles["0.5"] < c.threshold <= c.quantiles["0.999"]
