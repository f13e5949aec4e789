"""The log handler writes lines in blocks without losing or delaying them past its interval."""

from __future__ import annotations

import io
import json
import logging
import time

from service.logs import BufferedStreamHandler, JsonFormatter, model_var, request_id_var
from tests.conftest import wait_for


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(f"latentserve.test.{name}")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def test_lines_wait_for_the_interval_then_all_arrive_in_order() -> None:
    out = io.StringIO()
    handler = BufferedStreamHandler(out, flush_interval_s=0.2)
    log = _logger(handler, "interval")
    started = time.monotonic()
    for i in range(100):
        log.info("line %d", i)
    assert out.getvalue() == ""  # nothing written per line
    wait_for(lambda: out.getvalue().count("\n") == 100, "the block", timeout_s=5)
    assert time.monotonic() - started >= 0.2
    assert out.getvalue().splitlines() == [f"line {i}" for i in range(100)]
    handler.close()


def test_a_warning_and_a_full_buffer_are_written_at_once() -> None:
    out = io.StringIO()
    handler = BufferedStreamHandler(out, flush_interval_s=60, max_bytes=1000)
    log = _logger(handler, "eager")
    log.info("first")
    log.warning("trouble")
    assert out.getvalue().splitlines() == ["first", "trouble"]
    for _ in range(100):
        log.info("x" * 20)
    assert out.getvalue().count("\n") >= 2 + 40  # written in blocks of about 1,000 bytes
    handler.close()
    assert out.getvalue().count("\n") == 102  # close writes out the rest


def test_json_lines_carry_the_request_context() -> None:
    out = io.StringIO()
    handler = BufferedStreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = _logger(handler, "json")
    rid, model = request_id_var.set("req-7"), model_var.set("digits-vae")
    try:
        log.info("POST %s %d", "/decode", 200, extra={"status": 200})
    finally:
        request_id_var.reset(rid)
        model_var.reset(model)
    handler.flush()
    record = json.loads(out.getvalue())
    assert record["message"] == "POST /decode 200" and record["status"] == 200
    assert record["request_id"] == "req-7" and record["model"] == "digits-vae"
    assert record["ts"].endswith("Z") and record["level"] == "INFO"
    handler.close()
