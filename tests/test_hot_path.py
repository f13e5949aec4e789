"""The inference routes' direct dispatch (`service.api.direct`): what FastAPI's layers did for
them still happens (auth, error bodies, metrics labels, 405, the schema), and a lone small
request runs its session inline through the real app."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import numpy as np
import pytest
from fastapi import APIRouter

from service.api.direct import direct_endpoints
from service.api.inference import router as inference_router

Z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def test_every_inference_route_is_dispatched_directly() -> None:
    assert set(direct_endpoints(inference_router.routes)) == {
        "/sample",
        "/encode",
        "/decode",
        "/reconstruct",
        "/interpolate",
        "/anomaly-score",
    }


def test_a_route_with_parameters_cannot_be_direct() -> None:
    router = APIRouter()

    @router.post("/things/{name}")
    async def thing(name: str) -> dict[str, str]:
        return {"name": name}

    with pytest.raises(ValueError, match="take only the request"):
        direct_endpoints(router.routes)


async def test_the_api_key_is_checked_with_our_error_body(app_with) -> None:
    async with app_with(api_key="s3cret") as c:
        denied = await c.post("/decode", json={"z": Z.tolist()})
        assert denied.status_code == 401
        assert denied.json()["error"]["field"] == "Authorization"
        assert denied.headers["x-request-id"] and denied.headers["cache-control"] == "no-store"
        ok = await c.post(
            "/decode", json={"z": Z.tolist()}, headers={"authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200 and ok.json()["shape"] == [2, 64]


async def test_errors_keep_their_shape_and_an_unexpected_one_is_a_json_500(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = await client.post("/decode", json={"z": [[1.0, 2.0]]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "z"
    missing = await client.post("/sample", json={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    wrong_method = await client.get("/decode")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"

    plane = client.app.state.data_plane  # type: ignore[attr-defined]

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(plane, "decode", broken)
    crash = await client.post("/decode", json={"z": Z.tolist()})
    assert crash.status_code == 500
    assert crash.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error; see the server log",
        "field": None,
    }
    monkeypatch.undo()
    assert (await client.post("/decode", json={"z": Z.tolist()})).status_code == 200


async def test_metrics_label_direct_requests_by_route(client) -> None:
    for _ in range(3):
        assert (await client.post("/decode", json={"z": Z.tolist()})).status_code == 200
    assert (await client.post("/decode", json={"z": "x"})).status_code == 422
    text = (await client.get("/metrics")).text
    ok = re.search(
        r'latentserve_requests_total\{endpoint="/decode",method="POST",status="200"\} (\S+)', text
    )
    bad = re.search(
        r'latentserve_requests_total\{endpoint="/decode",method="POST",status="422"\} (\S+)', text
    )
    assert ok and float(ok.group(1)) == 3.0
    assert bad and float(bad.group(1)) == 1.0


async def test_the_schema_still_documents_the_direct_routes(client) -> None:
    spec = (await client.get("/openapi.json")).json()
    decode = spec["paths"]["/decode"]["post"]
    assert "application/x-npy" in decode["requestBody"]["content"]
    assert "422" in decode["responses"]


async def test_a_lone_request_runs_inline_and_answers_like_a_batched_one(app_with) -> None:
    """Through the real app: one request alone runs on the event loop's thread; the same
    latents sent with company are batched on an inference thread; the answers agree."""
    async with app_with(inline_max_ms=50.0) as c:
        part = c.app.state.repository.models["digits-vae"].parts  # type: ignore[attr-defined]
        decoder = next(p for role, p in part.items() if role.value == "decoder")
        threads: list[str] = []
        run = decoder.batcher._run

        def recording(feeds: Any) -> Any:
            threads.append(threading.current_thread().name)
            return run(feeds)

        decoder.batcher._run = recording
        alone = await c.post("/decode", json={"z": Z.tolist()})
        assert threads == [threading.current_thread().name]
        together = await asyncio.gather(
            *(c.post("/decode", json={"z": Z.tolist()}) for _ in range(8))
        )
        assert any(t.startswith("inference") for t in threads[1:])
        expected = np.asarray(alone.json()["outputs"])
        for r in together:
            np.testing.assert_allclose(np.asarray(r.json()["outputs"]), expected, atol=1e-6)
