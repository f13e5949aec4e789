"""Closed-loop HTTP load from wrk (https://github.com/wg/wrk), a C load generator, when it is
installed: one thread, `concurrency` connections, each sending the next request as soon as the
last one answered.

Why: on a 2-core machine the load generator shares the CPU with the server it measures. The
aiohttp client (`bench.loadgen`) costs tens of microseconds of Python per request, so at tens of
thousands of requests per second it measures itself; wrk costs a few. Steps run wrk twice: the
warm-up (discarded), then the measured window. Its Lua `done` hook prints the counts and the
latency percentiles as one JSON line, read back here into the same `StepResult` as the aiohttp
client's. (wrk's durations are whole seconds: shorter windows are rounded up to 1 s.)
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import tempfile
from pathlib import Path

from bench.loadgen import StepResult
from bench.workloads import HttpRequest

_SCRIPT = """
local f = assert(io.open(@BODY@, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
@HEADERS@
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_script(request: HttpRequest, folder: Path) -> Path:
    body = folder / "body.bin"
    body.write_bytes(request.content)
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items()
    )
    script = folder / "request.lua"
    script.write_text(
        _SCRIPT.replace("@BODY@", _lua_string(str(body))).replace("@HEADERS@", headers)
    )
    return script


async def _wrk(
    url: str, script: Path, concurrency: int, seconds: float, timeout_s: float
) -> dict[str, int]:
    duration = max(1, math.ceil(seconds))
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{duration}s",
        f"--timeout={max(1, math.ceil(timeout_s))}s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    for line in reversed(text.splitlines()):
        if line.startswith('{"requests"'):
            parsed: dict[str, int] = json.loads(line)
            return parsed
    raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}):\n{text[-2000:]}")


async def run_wrk_step(
    base_url: str,
    request: HttpRequest,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    system: str,
    workload: str,
    n: int,
    timeout_s: float = 30.0,
) -> StepResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = write_script(request, Path(tmp))
        url = base_url + request.path
        if warmup_s > 0:
            await _wrk(url, script, concurrency, warmup_s, timeout_s)
        s = await _wrk(url, script, concurrency, duration_s, timeout_s)
    errors = s["status_errors"] + s["socket_errors"]
    return StepResult(
        system,
        workload,
        concurrency,
        n,
        requests=max(0, s["requests"] - s["status_errors"]),
        errors=errors,
        duration_s=s["duration_us"] / 1e6,
        p50_ms=s["p50_us"] / 1000,
        p95_ms=s["p95_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
    )
