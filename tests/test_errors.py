"""Every bad input gets a 4xx JSON error naming the field, and the server keeps serving."""

from __future__ import annotations

import pytest

from tests.conftest import AppClient

ROW = [0.5] * 64

CASES = [
    pytest.param("/sample", {"n": 0}, 422, "n", id="n-zero"),
    pytest.param("/sample", {"n": 100000}, 413, "n", id="n-too-large"),
    pytest.param("/sample", {"n": "many"}, 422, "n", id="n-not-int"),
    pytest.param("/sample", {"temperature": -1}, 422, "temperature", id="negative-temperature"),
    pytest.param("/sample", {"seed": -5}, 422, "seed", id="negative-seed"),
    pytest.param("/sample", {"model": "nope"}, 404, "model", id="unknown-model"),
    pytest.param("/sample", {"labels": [1]}, 422, "labels", id="labels-unconditional"),
    pytest.param("/sample", {"bogus": 1}, 422, "bogus", id="unknown-field"),
    pytest.param("/encode", {"inputs": [[0.5] * 63]}, 422, "inputs", id="wrong-width"),
    pytest.param("/encode", {"inputs": [[0.5] * 64, [0.5] * 3]}, 422, "inputs", id="ragged"),
    pytest.param("/encode", {"inputs": [["a"] * 64]}, 422, "inputs", id="strings"),
    pytest.param("/encode", {"inputs": [[2.0] * 64]}, 422, "inputs", id="out-of-range"),
    pytest.param("/encode", {"inputs": []}, 422, "inputs", id="empty"),
    pytest.param("/encode", {}, 422, "body", id="no-inputs"),
    pytest.param("/encode", {"inputs": [ROW], "images": ["x"]}, 422, "body", id="both-sources"),
    pytest.param("/encode", {"images": ["not base64!"]}, 422, "images[0]", id="bad-base64"),
    pytest.param("/encode", {"images": ["aGVsbG8="]}, 422, "images[0]", id="not-an-image"),
    pytest.param("/decode", {"z": [[0.0] * 7]}, 422, "z", id="z-wrong-dim"),
    pytest.param("/decode", {}, 422, "z", id="z-missing"),
    pytest.param("/interpolate", {"z": [[0.0] * 8]}, 422, "z", id="one-endpoint"),
    pytest.param("/interpolate", {"z": [[0.0] * 8] * 2, "steps": 1}, 422, "steps", id="one-step"),
    pytest.param(
        "/interpolate", {"z": [[0.0] * 8] * 2, "mode": "cubic"}, 422, "mode", id="bad-mode"
    ),
    pytest.param(
        "/anomaly-score", {"inputs": [ROW], "method": "magic"}, 422, "method", id="bad-method"
    ),
    pytest.param(
        "/anomaly-score",
        {"inputs": [ROW], "method": "discriminator"},
        422,
        "method",
        id="no-discriminator",
    ),
    pytest.param(
        "/anomaly-score",
        {"inputs": [ROW], "k": 100000, "method": "iwae"},
        413,
        "k",
        id="k-too-large",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), CASES)
async def test_bad_input_gets_a_clear_4xx(
    client: AppClient, path: str, body: dict[str, object], status: int, field: str | None
) -> None:
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and err["message"]
    assert err["field"] == field
    # and the server still answers
    assert (await client.post("/sample", json={"n": 1, "seed": 0})).status_code == 200


async def test_nan_is_rejected(client: AppClient) -> None:
    body = b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}"
    r = await client.post("/encode", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"


@pytest.mark.parametrize(
    ("content", "ctype", "status", "code"),
    [
        pytest.param(b"{", "application/json", 422, "invalid_input", id="broken-json"),
        pytest.param(b"[1, 2]", "application/json", 422, "invalid_input", id="json-array"),
        pytest.param(b"", "application/json", 422, "invalid_input", id="empty-body"),
        pytest.param(b"n=1", "text/plain", 415, "unsupported_media_type", id="text-plain"),
        pytest.param(b"\x93NUMPY garbage", "application/x-npy", 422, "invalid_input", id="bad-npy"),
    ],
)
async def test_bad_bodies(
    client: AppClient, content: bytes, ctype: str, status: int, code: str
) -> None:
    r = await client.post("/sample", content=content, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_pickled_npy_is_refused(client: AppClient) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = await client.post(
        "/encode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"}
    )
    assert r.status_code == 422 and "pickle" in r.json()["error"]["message"]


async def test_unacceptable_accept_header(client: AppClient) -> None:
    r = await client.post("/encode", json={"inputs": [ROW]}, headers={"Accept": "image/png"})
    assert r.status_code == 406 and r.json()["error"]["code"] == "not_acceptable"


async def test_unknown_route_and_method(client: AppClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/sample")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_body_size_limit(app_with) -> None:  # type: ignore[no-untyped-def]
    async with app_with(max_request_bytes=2048) as c:
        r = await c.post("/encode", json={"inputs": [ROW] * 100})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert (await c.get("/healthz")).status_code == 200


async def test_api_key(app_with) -> None:  # type: ignore[no-untyped-def]
    async with app_with(api_key="s3cret") as c:
        r = await c.post("/sample", json={"n": 1})
        assert r.status_code == 401 and r.json()["error"]["field"] == "Authorization"
        r = await c.post("/sample", json={"n": 1}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = await c.post("/sample", json={"n": 1}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert (await c.get("/models")).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(open_path)).status_code == 200


async def test_sampling_expansion_is_bounded(app_with) -> None:
    async with app_with(max_sampled_values=64 * 64 * 10) as c:
        ok = await c.post("/anomaly-score", json={"inputs": [ROW] * 10, "method": "iwae", "k": 64})
        assert ok.status_code == 200
        r = await c.post("/anomaly-score", json={"inputs": [ROW] * 11, "method": "iwae", "k": 64})
        assert r.status_code == 413 and r.json()["error"]["field"] == "k"
        r = await c.post("/encode", json={"inputs": [ROW] * 100, "samples_per_input": 1000})
        assert r.status_code == 413 and r.json()["error"]["field"] == "samples_per_input"


async def test_full_queue_answers_503_with_retry_after(app_with) -> None:
    import asyncio

    async with app_with(max_queue_rows=4, max_delay_ms=50) as c:
        rs = await asyncio.gather(*(c.post("/sample", json={"n": 3, "seed": i}) for i in range(12)))
        codes = [r.status_code for r in rs]
        assert 503 in codes and 200 in codes
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "overloaded"
