"""Structured logging: one named logger tree (`latentserve.*`), JSON lines with the request id
and model name when `log_json` is on. The request id travels in a context variable set by the
HTTP middleware, so runtime code logs it without knowing about requests.

The access log writes a line per request from the event loop's thread, so the formatter is
written for that rate (orjson; the timestamp's seconds formatted once per second), and what no
formatter here prints is not collected (docs/benchmarks.md#hot-path). A background writer thread
(`QueueListener`) was measured too and lost: its lock and GIL hand-offs cost more than the write.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import time

import orjson

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
    """One JSON object per line."""

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        payload: dict[str, object] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
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
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return f"{base} request_id={request_id_var.get()}"


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Our handler on the `latentserve` logger tree. Also turns off what no formatter of ours
    prints and every record would pay for: the caller's file and line (a stack walk per record,
    the logging HOWTO's "Optimization" section), thread and process names."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
