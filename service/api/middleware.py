"""ASGI middleware: request ids, access logs, request metrics, the request-size limit, and the
headers every response carries (`X-Content-Type-Options: nosniff`; `Cache-Control: no-store`
unless a route set its own: answers depend on the model version behind a name; `Connection:
close` while the server drains before shutdown).

Written as plain ASGI (not BaseHTTPMiddleware) so it adds no task or buffering per request.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.codecs import dumps_json
from service.api.deps import UNAUTHORIZED, has_api_key
from service.api.lifecycle import Drain
from service.api.metrics import Metrics
from service.errors import PayloadTooLarge
from service.logs import model_var, request_id_from, request_id_var
from service.settings import Settings

log = logging.getLogger("latentserve.access")

_UNMETERED = {"/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_request_bytes: int, drain: Drain | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_from(headers.get(b"x-request-id", b"").decode("latin-1"))
        token = request_id_var.set(request_id)
        model_token = model_var.set(None)
        started = time.perf_counter()
        status = 500
        path: str = scope["path"]

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = list(message.get("headers", []))
                out.append((b"x-request-id", request_id.encode()))
                out.append((b"x-content-type-options", b"nosniff"))
                if not any(k.lower() == b"cache-control" for k, _ in out):
                    out.append((b"cache-control", b"no-store"))
                if self.drain is not None and self.drain.draining:
                    out.append((b"connection", b"close"))
                message["headers"] = out
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
                await self._reject_too_large(send_with_id)
                return
            await self.app(scope, self._limited(receive, send_with_id), send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or ("unmatched" if status == 404 else path)
            if path not in _UNMETERED:
                self.metrics.request_done(endpoint, scope["method"], status, elapsed)
                log.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    path,
                    status,
                    elapsed * 1000,
                    extra={"status": status, "duration_ms": round(elapsed * 1000, 3)},
                )
            request_id_var.reset(token)
            model_var.reset(model_token)

    def _limited(self, receive: Receive, send: Send) -> Receive:
        """Counts bytes of chunked bodies too, which carry no Content-Length."""
        seen = 0
        limit = self.max_request_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            return message

        return wrapped

    async def _reject_too_large(self, send: Send) -> None:
        body = dumps_json(
            {
                "error": {
                    "code": "payload_too_large",
                    "message": f"request body exceeds {self.max_request_bytes} bytes",
                    "field": None,
                }
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class DocsGuard:
    """The API documentation (`/docs`, `/redoc`, `/openapi.json`) behind the API key when one is
    set and `docs_require_api_key` is on: the schema lists every route and field, which a
    server that asks for a key on its routes should not hand to anyone. (A browser sends no
    key to these pages: set `docs_require_api_key=false` to browse them on such a server.)"""

    PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.active = settings.api_key is not None and settings.docs_require_api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active and scope["type"] == "http" and self._guarded(scope["path"]):
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            if not has_api_key(self.settings, authorization):
                body = dumps_json(
                    {"error": {"code": "unauthorized", "message": UNAUTHORIZED, "field": None}}
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _guarded(self, path: str) -> bool:
        return path.rstrip("/") in self.PATHS  # the pages' script and style files stay public
