"""Client exceptions.

LatentServeClientError
├── APIError            the server answered with an error body (status, code, message, field)
└── ConnectionFailed    no answer: connection refused, timeout, broken transfer
"""

from __future__ import annotations


class LatentServeClientError(Exception):
    pass


class APIError(LatentServeClientError):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


class ConnectionFailed(LatentServeClientError):
    pass
