"""ASGI middleware: request ids, access logs, request metrics and the request-size limit.

Written as plain ASGI (not BaseHTTPMiddleware) so it adds no task or buffering per request.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.codecs import dumps_json
from service.api.metrics import Metrics
from service.errors import PayloadTooLarge
from service.logs import model_var, request_id_from, request_id_var

log = logging.getLogger("latentserve.access")

_UNMETERED = {"/metrics", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_request_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes

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
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
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
                self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
                self.metrics.request_seconds.labels(endpoint).observe(elapsed)
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
