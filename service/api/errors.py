"""The one place where errors become HTTP responses: `{"error": {"code", "message", "field"}}`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.api.codecs import dumps_json
from service.errors import LatentServeError, Overloaded

log = logging.getLogger("latentserve.api")


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return Response(
        dumps_json(body), status_code=status, media_type="application/json", headers=headers
    )


def _loc_to_field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def validation_response(errors: Sequence[Any]) -> Response:
    """pydantic's error list -> our error body, naming the first failing field."""
    if not errors:
        return error_response(422, "invalid_input", "invalid request", "body")
    field = _loc_to_field(tuple(errors[0].get("loc", ())))
    message = str(errors[0].get("msg", "invalid request"))
    if len(errors) > 1:
        others = ", ".join(sorted({_loc_to_field(tuple(e.get("loc", ()))) for e in errors[1:]}))
        message += f" (also: {others})"
    return error_response(422, "invalid_input", f"{field}: {message}", field)


def response_for(exc: Exception) -> Response:
    """The error response for any exception a request raised: every front door that renders our
    error body (FastAPI's handlers, the direct inference routes) goes through here."""
    if isinstance(exc, LatentServeError):
        headers = None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        if exc.status_code >= 500 and not isinstance(exc, Overloaded):
            log.error("request failed: %s", exc.message)
        return error_response(exc.status_code, exc.code, exc.message, exc.field, headers)
    if isinstance(exc, RequestValidationError | ValidationError):
        return validation_response(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), None, dict(exc.headers) if exc.headers else None
        )
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> Response:
        return response_for(exc)

    for kind in (
        LatentServeError,
        RequestValidationError,
        ValidationError,
        StarletteHTTPException,
        Exception,
    ):
        app.add_exception_handler(kind, handler)
