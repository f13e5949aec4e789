"""Closed-loop HTTP load: `concurrency` workers each send the next request as soon as the last one
answers, for a warm-up (not recorded) and then a fixed measured duration.

Requests that complete inside the measured window are recorded (throughput = completions /
window); at the end the workers stop sending and in-flight requests are awaited, so the next step
starts on an idle server. Bodies are read but not parsed: the client's work per request stays
small and the same for every server.

The client is aiohttp, not httpx: on this 2-core machine an httpx AsyncClient with 64 connections
tops out near 120 requests/s (its pool costs grow with the connection count) while aiohttp sends
over 1,500/s to the same server, so with httpx every system would measure the client. gRPC steps
use grpc.aio on one channel (HTTP/2 streams, as gRPC clients do), sending the serialized request
and keeping the answer's bytes unparsed, like the HTTP steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import numpy as np

from bench.workloads import HttpRequest

Send = Callable[[], Awaitable[bool]]


@dataclass
class StepResult:
    """One (system, workload, concurrency) measurement."""

    system: str
    workload: str
    concurrency: int
    n: int  # samples (rows) per request
    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    batch: int | None = None  # rows per session run (in-process ceiling only)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.rps * self.n

    def as_dict(self) -> dict[str, object]:
        return {
            "system": self.system,
            "workload": self.workload,
            "concurrency": self.concurrency,
            "n": self.n,
            "batch": self.batch,
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 4),
            "rps": round(self.rps, 2),
            "samples_per_s": round(self.samples_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
        }


def percentiles(latencies_s: list[float]) -> tuple[float, float, float]:
    if not latencies_s:
        return (float("nan"),) * 3
    p50, p95, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 95, 99])
    return float(p50), float(p95), float(p99)


async def _closed_loop(
    send: Send,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    system: str,
    workload: str,
    n: int,
) -> StepResult:
    """`concurrency` workers calling `send` (True: answered, False: an error) back to back."""
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    # A step whose requests take longer than the window would record almost nothing: the window
    # stretches until `concurrency` requests completed in it (up to 10x its length).
    hard_stop = measure_from + 10 * duration_s
    need = concurrency
    end: float | None = None

    async def worker() -> None:
        nonlocal errors, end
        while end is None and loop.time() < hard_stop:
            t0 = loop.time()
            ok = await send()
            t1 = loop.time()
            if t1 < measure_from or (end is not None and t1 > end):
                continue  # warm-up, or after the window closed
            if ok:
                latencies.append(t1 - t0)
            else:
                errors += 1
            if t1 >= stop_at and (len(latencies) + errors >= need or t1 >= hard_stop):
                end = t1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    window = (end if end is not None else loop.time()) - measure_from
    p50, p95, p99 = percentiles(latencies)
    completed = len(latencies)
    return StepResult(system, workload, concurrency, n, completed, errors, window, p50, p95, p99)


async def run_step(
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
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as client:

        async def send() -> bool:
            try:
                async with client.post(
                    request.path, data=request.content, headers=request.headers
                ) as resp:
                    await resp.read()
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        return await _closed_loop(send, concurrency, warmup_s, duration_s, system, workload, n)


async def run_grpc_step(
    target: str,
    request: HttpRequest,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    system: str,
    workload: str,
    n: int,
    timeout_s: float = 30.0,
) -> StepResult:
    """A closed loop of unary gRPC calls: `request.path` is the method, `request.content` the
    serialized request message."""
    import grpc

    options = [("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        # no serializers: bytes in, bytes out
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(request.path)

        async def send() -> bool:
            try:
                await call(request.content, timeout=timeout_s)
                return True
            except grpc.aio.AioRpcError:
                return False

        return await _closed_loop(send, concurrency, warmup_s, duration_s, system, workload, n)
