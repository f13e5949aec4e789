"""Structured logging: one named logger tree (`latentserve.*`), JSON lines with the request id
and model name when `log_json` is on. The request id travels in a context variable set by the
HTTP middleware, so runtime code logs it without knowing about requests.

The access log writes a line per request from the event loop's thread, so everything on that
path is written for the rate (docs/benchmarks.md#hot-path): the formatter uses orjson and formats
the timestamp's seconds once per second; what no formatter here prints is not collected; and lines
are written in blocks (`BufferedStreamHandler`): a write and flush per line took a tenth of the
event loop's time per one-row request. A background formatting thread (`QueueListener`) was
measured too and lost: its lock and GIL hand-offs cost more than it saved.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

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


def _json_dumps() -> Callable[[dict[str, object]], str]:
    """orjson where the server's packages are installed; the standard library's encoder where
    they are not (the runtime and `training` log through here and need no server package)."""
    try:
        import orjson
    except ImportError:
        return lambda payload: json.dumps(payload, default=str)
    return lambda payload: orjson.dumps(payload, default=str).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    _second = -1
    _stamp = ""

    def __init__(self) -> None:
        super().__init__()
        self._dumps = _json_dumps()

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
        return self._dumps(payload)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return f"{base} request_id={request_id_var.get()}"


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes lines in blocks: when `max_bytes` are waiting, at once for a
    WARNING or worse, and otherwise at most `flush_interval_s` after a line was logged (a timer
    thread that sleeps while nothing waits). `flush()`, `close()` and `logging.shutdown()` (run
    at exit) write out what waits; a process killed outright loses at most one interval."""

    def __init__(
        self, stream: TextIO, flush_interval_s: float = 0.05, max_bytes: int = 65536
    ) -> None:
        super().__init__(stream)
        self.flush_interval_s = flush_interval_s
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._waiting = threading.Event()
        self._closed = False
        self._timer = threading.Thread(target=self._flush_later, name="log-flush", daemon=True)
        self._timer.start()

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if record.levelno >= logging.WARNING or self._size >= self.max_bytes:
            self._write_out()
        elif not self._waiting.is_set():
            self._waiting.set()

    def _write_out(self) -> None:
        if not self._lines:
            return
        try:
            self.stream.write("".join(self._lines))
            self.stream.flush()
        except Exception:  # a closed or broken stream: what logging does, without a record
            pass
        self._lines.clear()
        self._size = 0

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()

    def _flush_later(self) -> None:
        while not self._closed:
            self._waiting.wait()
            time.sleep(self.flush_interval_s)
            with self.lock:  # type: ignore[union-attr]
                self._waiting.clear()
                self._write_out()

    def close(self) -> None:
        self._closed = True
        self._waiting.set()
        self.flush()
        super().close()


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Our handler on the `latentserve` logger tree. Also turns off what no formatter of ours
    prints and every record would pay for: the caller's file and line (a stack walk per record,
    the logging HOWTO's "Optimization" section), thread and process names."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BufferedStreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger("latentserve")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
