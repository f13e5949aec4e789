"""The inference routes' hot path: a POST to `/sample`, `/decode`, ... or to the Open Inference
Protocol's `/v2/models/{model_name}/infer` goes straight from our request middleware to its
endpoint function, past FastAPI's router, dependency resolution and exception middlewares.

Why: those layers cost more of the event loop than everything the request itself needs (parse,
one data-plane call, render): profiled under load, a one-row `/decode` spent about half of its
event-loop time in them (docs/benchmarks.md#hot-path). The endpoints stay registered with FastAPI,
unchanged, so the OpenAPI schema, other methods (405) and any app that mounts the router see the
same routes; only the dispatch of the hot calls is direct. What the skipped layers did for these
routes is done here, by the same code: the API-key check (`has_api_key`), path and optional
query parameters (strings: nothing to convert), and the error body (`response_for`, the one
mapping of exceptions to HTTP, or the route class's own: the protocol's `rest_response_for`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.deps import has_api_key, require_api_key
from service.api.errors import response_for
from service.auth import API_KEY_HINT
from service.errors import Unauthorized
from service.settings import Settings

Endpoint = Callable[..., Awaitable[Response]]
ErrorResponse = Callable[[Exception], Response]


@dataclass(frozen=True)
class DirectRoute:
    """A route dispatched directly: its error renderer (the route class's `error_response`, e.g.
    the Open Inference Protocol's shape, else ours), and the optional string query parameters
    FastAPI would pass its endpoint, with their defaults."""

    route: APIRoute
    error_response: ErrorResponse
    query: tuple[tuple[str, object], ...]


def direct_route(route: APIRoute) -> DirectRoute:
    """Check that `route` needs nothing FastAPI resolves beyond the request, string path
    parameters, optional string query parameters and the API-key check (done here)."""
    dependant = route.dependant
    where = f"{route.path}: direct routes take"
    if dependant.header_params or dependant.body_params or dependant.cookie_params:
        raise ValueError(f"{where} no headers, cookies or bodies as parameters")
    if any(d.call is not require_api_key for d in dependant.dependencies):
        raise ValueError(f"{where} no dependencies but the API key check")
    for field in [*dependant.path_params, *dependant.query_params]:
        if field.field_info.annotation not in (str, str | None):
            raise ValueError(f"{where} string parameters only ({field.name})")
    query = tuple((f.name, f.field_info.default) for f in dependant.query_params)
    if any(f.field_info.is_required() for f in dependant.query_params):
        raise ValueError(f"{where} optional query parameters only")
    error_response: ErrorResponse = getattr(route, "error_response", response_for)
    return DirectRoute(route, error_response, query)


class DirectRoutes:
    """ASGI: dispatches POSTs to the given routes directly; everything else goes on to the app.
    Fixed paths are one dictionary lookup; paths with parameters (the protocol's
    `/v2/models/{model_name}/infer`) are matched with the route's own regular expression."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute], settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.fixed: dict[str, DirectRoute] = {}
        self.templated: list[DirectRoute] = []
        for route in routes:
            if isinstance(route, APIRoute) and "POST" in (route.methods or ()):
                direct = direct_route(route)
                if route.dependant.path_params:
                    self.templated.append(direct)
                else:
                    self.fixed[route.path] = direct

    def match(self, path: str) -> tuple[DirectRoute, dict[str, str]] | None:
        found = self.fixed.get(path)
        if found is not None:
            return found, {}
        for direct in self.templated:
            m = direct.route.path_regex.match(path)
            if m is not None:
                return direct, m.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.match(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        direct, path_params = found
        scope["route"] = direct.route  # as the router would set them: metrics label by route
        scope["path_params"] = path_params
        request = Request(scope, receive, send)
        try:
            if not has_api_key(self.settings, request.headers.get("authorization")):
                raise Unauthorized(API_KEY_HINT, field="Authorization")
            kwargs: dict[str, object] = dict(path_params)
            if direct.query:
                query = request.query_params
                kwargs.update((name, query.get(name, default)) for name, default in direct.query)
            endpoint: Endpoint = direct.route.endpoint
            response = await endpoint(request, **kwargs)
        except Exception as exc:  # every error, our own or not, becomes the route's error body
            response = direct.error_response(exc)
        await response(scope, receive, send)
