"""The one place where the service's errors (`service.errors`) become the Open Inference
Protocol's: REST `{"error": "<message>"}` with a status, gRPC a status code and details.

| error                               | REST | gRPC                |
| ----------------------------------- | ---- | ------------------- |
| InvalidInput, OperationNotSupported | 400  | INVALID_ARGUMENT    |
| PayloadTooLarge                     | 413  | RESOURCE_EXHAUSTED  |
| Unauthorized                        | 401  | UNAUTHENTICATED     |
| ModelNotFound                       | 404  | NOT_FOUND           |
| DeadlineExceeded                    | 503  | DEADLINE_EXCEEDED   |
| Overloaded, ModelUnavailable        | 503  | UNAVAILABLE         |
| ModelLoadError                      | 409  | FAILED_PRECONDITION |
| anything else                       | 500  | INTERNAL            |

REST keeps the native routes' statuses except 422, which the protocol (and Triton and KServe)
answer with 400. Overload carries `Retry-After` as a header (REST) or trailing metadata (gRPC).
The message names the field at fault first (`z: expected ...`), as the protocol has no field.
"""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from service.errors import (
    DeadlineExceeded,
    LatentServeError,
    ModelLoadError,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
)

INTERNAL_MESSAGE = "internal server error; see the server log"

log = logging.getLogger("latentserve.oip")


def message(exc: LatentServeError) -> str:
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


def rest_status(exc: LatentServeError) -> int:
    return 400 if exc.status_code == 422 else exc.status_code


def retry_after(exc: LatentServeError) -> str | None:
    """Whole seconds to wait before retrying, for overload errors."""
    if isinstance(exc, Overloaded):
        return str(max(1, round(exc.retry_after_s)))
    return None


def rest_response(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": text})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def rest_error(exc: LatentServeError) -> Response:
    wait = retry_after(exc)
    headers = {"Retry-After": wait} if wait is not None else None
    return rest_response(rest_status(exc), message(exc), headers)


def rest_response_for(exc: Exception) -> Response:
    """The REST error response for any exception a protocol request raised, however it was
    dispatched (FastAPI's router, or the direct inference path)."""
    if isinstance(exc, LatentServeError):
        if exc.status_code >= 500 and exc.status_code != 503:
            log.error("request failed: %s", exc.message)
        return rest_error(exc)
    log.exception("unhandled error", exc_info=exc)
    return rest_response(500, INTERNAL_MESSAGE)


def grpc_code_name(exc: LatentServeError) -> str:
    """The `grpc.StatusCode` member's name (the runtime imports no gRPC)."""
    if isinstance(exc, DeadlineExceeded):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, ModelNotFound):
        return "NOT_FOUND"
    if isinstance(exc, Unauthorized):
        return "UNAUTHENTICATED"
    if isinstance(exc, PayloadTooLarge):
        return "RESOURCE_EXHAUSTED"
    if isinstance(exc, ModelLoadError):
        return "FAILED_PRECONDITION"
    if exc.status_code == 503:
        return "UNAVAILABLE"
    if exc.status_code < 500:
        return "INVALID_ARGUMENT"
    return "INTERNAL"
