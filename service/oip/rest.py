"""The Open Inference Protocol's REST routes under `/v2`: health, server and model metadata,
model readiness and inference (JSON tensors and the binary tensor data extension).

Each route parses the protocol's request, makes one call through `mapping` to the data plane the
native routes use, and renders the answer; every error, however raised, is rendered by
`service.oip.errors` as `{"error": "<message>"}` (`OipRoute`). Health needs no API key, like
`/healthz` and `/readyz`; everything else does. The routes stay out of /openapi.json: the
protocol has its own OpenAPI document (docs/open-inference-protocol.md links it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import BaseRoute

from service import __version__
from service.api.deps import data_plane, request_timeout, require_api_key
from service.errors import ModelUnavailable
from service.oip import mapping
from service.oip.errors import rest_response, rest_response_for
from service.oip.protocol import EXTENSIONS, SERVER_NAME
from service.oip.rest_body import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH,
    JSON_MEDIA_TYPE,
    decode_request,
    encode_response,
)

log = logging.getLogger("latentserve.oip")


class OipRoute(APIRoute):
    """A route whose errors, its dependencies' included, take the protocol's shape."""

    error_response = staticmethod(rest_response_for)  # also what `DirectRoutes` renders with

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return rest_response_for(exc)

        return route


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON_MEDIA_TYPE)


probes = APIRouter(route_class=OipRoute, include_in_schema=False)
router = APIRouter(
    route_class=OipRoute, include_in_schema=False, dependencies=[Depends(require_api_key)]
)


@probes.get("/v2/health/live")
async def live() -> Response:
    return _json({"live": True})


@probes.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """Ready when every enabled model loaded, as `/readyz` (503 with `"ready": false` before)."""
    is_ready = data_plane(request).repository.ready
    return _json({"ready": is_ready}, 200 if is_ready else 503)


@router.get("/v2")
async def server_metadata() -> Response:
    return _json({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


@router.get("/v2/models/{model_name}")
@router.get("/v2/models/{model_name}/versions/{model_version}")
async def model_metadata(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    t = mapping.resolve(data_plane(request), model_name, model_version)
    return _json(
        {
            "name": t.name,
            "versions": [t.version],
            "platform": t.platform,
            "inputs": [m.as_dict() for m in t.inputs],
            "outputs": [m.as_dict() for m in t.outputs],
        }
    )


@router.get("/v2/models/{model_name}/ready")
@router.get("/v2/models/{model_name}/versions/{model_version}/ready")
async def model_ready(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    """200 when the model serves; 503 when it failed to load; 404 when there is no such model."""
    try:
        t = mapping.resolve(data_plane(request), model_name, model_version)
    except ModelUnavailable as exc:
        log.info("model %s is not ready: %s", model_name, exc.message)
        return _json({"name": model_name, "ready": False}, 503)
    return _json({"name": t.name, "ready": True})


@router.post("/v2/models/{model_name}/infer")
@router.post("/v2/models/{model_name}/versions/{model_version}/infer")
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    plane = data_plane(request)
    target = mapping.resolve(plane, model_name, model_version)
    body = await request.body()
    parsed, encoding = decode_request(
        body, request.headers.get(HEADER_LENGTH), model_name, model_version
    )
    parsed.timeout_s = request_timeout(request)
    answer = await mapping.infer(plane, target, parsed)
    content, header_length = encode_response(answer, encoding)
    if header_length is None:
        return Response(content, media_type=JSON_MEDIA_TYPE)
    headers = {"Inference-Header-Content-Length": str(header_length)}
    return Response(content, media_type=BINARY_MEDIA_TYPE, headers=headers)


def infer_routes() -> list[BaseRoute]:
    """The protocol's inference routes, for `service.api.direct` to dispatch."""
    return [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is infer]


@router.api_route("/v2/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def unknown(request: Request, path: str) -> Response:
    """The protocol's error shape for routes it has and this server does not serve (Triton's
    repository, statistics and shared-memory extensions, for one)."""
    return rest_response(
        404,
        f"{request.method} /v2/{path} is not served: this server speaks the Open Inference "
        "Protocol's health, metadata and inference routes (docs/open-inference-protocol.md)",
    )
