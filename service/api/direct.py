"""The inference routes' hot path: a POST to `/sample`, `/decode`, ... goes straight from our
request middleware to its endpoint function, past FastAPI's router, dependency resolution and
exception middlewares.

Why: those layers cost more of the event loop than everything the request itself needs (parse,
one data-plane call, render): profiled under load, a one-row `/decode` spent about half of its
event-loop time in them (docs/benchmarks.md#hot-path). The endpoints stay registered with FastAPI,
unchanged, so the OpenAPI schema, other methods (405) and any app that mounts the router see the
same routes; only the dispatch of the hot calls is direct. What the skipped layers did for these
routes is done here, by the same code: the API-key check (`has_api_key`) and the error body
(`response_for`, the one mapping of exceptions to HTTP).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import has_api_key
from service.api.errors import response_for
from service.auth import API_KEY_HINT
from service.errors import Unauthorized
from service.settings import Settings

Endpoint = Callable[[Request], Awaitable[Response]]


def direct_endpoints(routes: Iterable[BaseRoute]) -> dict[str, tuple[APIRoute, Endpoint]]:
    """POST routes whose endpoint takes only the request: path -> (route, endpoint)."""
    found: dict[str, tuple[APIRoute, Endpoint]] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or "POST" not in (route.methods or ()):
            continue
        params = route.dependant.path_params + route.dependant.query_params
        params += route.dependant.header_params + route.dependant.body_params
        if params or "{" in route.path:
            raise ValueError(f"{route.path}: direct routes take only the request")
        found[route.path] = (route, route.endpoint)
    return found


class DirectRoutes:
    """ASGI: dispatches POSTs to the given paths directly; everything else goes on to the app."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute], settings: Settings) -> None:
        self.app = app
        self.endpoints = direct_endpoints(routes)
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.endpoints.get(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        route, endpoint = found
        scope["route"] = route  # as the router would set it: metrics label by route
        request = Request(scope, receive, send)
        try:
            if not has_api_key(self.settings, request.headers.get("authorization")):
                raise Unauthorized(API_KEY_HINT, field="Authorization")
            response = await endpoint(request)
        except Exception as exc:  # every error, our own or not, becomes our error body
            response = response_for(exc)
        await response(scope, receive, send)
