"""Structured logging: one named logger tree (`latentserve.*`), JSON lines with the request id
and model name when `log_json` is on. The request id travels in a context variable set by the
HTTP middleware, so runtime code logs it without knowing about requests."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
model_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("model", default=None)

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(incoming: str | None) -> str:
    """The caller's request id when it is a sane token (so its logs and ours correlate), else a
    fresh random one. Shared by every front door (HTTP header, gRPC metadata)."""
    if incoming and _VALID_REQUEST_ID.match(incoming):
        return incoming
    return os.urandom(16).hex()


_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        model = model_var.get()
        if model is not None:
            payload["model"] = model
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return f"{base} request_id={request_id_var.get()}"


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("latentserve")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
