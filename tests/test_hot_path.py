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

from service.api.direct import DirectRoutes, direct_route
from service.api.errors import response_for
from service.api.inference import router as inference_router
from service.oip.errors import INTERNAL_MESSAGE, rest_response_for
from service.oip.rest import infer_routes as oip_infer_routes
from service.settings import Settings

Z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def test_every_inference_route_is_dispatched_directly() -> None:
    direct = DirectRoutes(None, [*inference_router.routes, *oip_infer_routes()], Settings())  # type: ignore[arg-type]
    assert set(direct.fixed) == {
        "/sample",
        "/encode",
        "/decode",
        "/reconstruct",
        "/interpolate",
        "/anomaly-score",
    }
    assert sorted(d.route.path for d in direct.templated) == [
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ]
    route, params = direct.match("/v2/models/m.decoder/versions/2/infer")  # type: ignore[misc]
    assert params == {"model_name": "m.decoder", "model_version": "2"}
    assert route.error_response is rest_response_for  # the protocol's error shape
    assert direct.fixed["/decode"].error_response is response_for
    assert direct.match("/v2/models/m/ready") is None and direct.match("/models/m/reload") is None


def test_a_route_fastapi_must_convert_for_cannot_be_direct() -> None:
    router = APIRouter()

    @router.post("/things/{n}")
    async def thing(n: int) -> dict[str, int]:
        return {"n": n}

    @router.post("/named")
    async def named(name: str) -> dict[str, str]:  # a required query parameter
        return {"name": name}

    with pytest.raises(ValueError, match="string parameters only"):
        direct_route(router.routes[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="optional query parameters only"):
        direct_route(router.routes[1])  # type: ignore[arg-type]


async def test_protocol_inference_keeps_the_protocol_shapes_when_direct(
    app_with, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {
        "inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 8], "data": Z.ravel().tolist()}]
    }
    async with app_with(api_key="s3cret") as c:
        denied = await c.post("/v2/models/digits-vae.decoder/infer", json=body)
        assert denied.status_code == 401
        assert denied.json() == {"error": denied.json()["error"]}
        assert denied.json()["error"].startswith("Authorization: ")
        auth = {"authorization": "Bearer s3cret"}
        ok = await c.post("/v2/models/digits-vae.decoder/infer", json=body, headers=auth)
        assert ok.status_code == 200
        out = ok.json()["outputs"][0]
        assert out["shape"][0] == 2 and len(out["data"]) == int(np.prod(out["shape"]))
        versioned = await c.post(
            "/v2/models/digits-vae.decoder/versions/1/infer", json=body, headers=auth
        )
        assert versioned.status_code == 200 and versioned.json()["model_version"] == "1"
        query = await c.post(
            "/v2/models/digits-vae.decoder/infer?model_version=9", json=body, headers=auth
        )  # FastAPI took the version from the query on this route: so does the direct path
        assert query.status_code == 404, query.text
        bad = await c.post("/v2/models/digits-vae.decoder/infer", json={"inputs": []}, headers=auth)
        assert bad.status_code == 400 and set(bad.json()) == {"error"}

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr("service.oip.mapping.infer", broken)
        r = await c.post("/v2/models/digits-vae.decoder/infer", json=body, headers=auth)
        assert r.status_code == 500 and r.json() == {"error": INTERNAL_MESSAGE}
        metrics = (await c.get("/metrics")).text
        assert 'endpoint="/v2/models/{model_name}/infer",method="POST",status="500"' in metrics


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
