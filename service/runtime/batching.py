"""Dynamic batching for one ONNX Runtime session.

Concurrent calls are queued; a worker takes every queued call that shares the batch's input
signature (trailing shapes and dtypes), up to `max_batch_size` rows, waiting at most
`max_delay_ms` after the first for more, runs the session once in a thread, and splits the outputs
back by row counts. At most `max_concurrent_batches` batches of one session run at once (like
Triton's model instances: ONNX Runtime sessions are thread-safe); the next batch is formed only
when a slot frees, so while every slot is busy newcomers queue and batches grow with load,
without any wait at low load. The queue is bounded in rows: past `max_queue_rows` a call fails
fast with `Overloaded` instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from service.errors import Overloaded

Feeds = dict[str, NDArray[np.generic]]
Outputs = list[NDArray[np.generic]]
RunFn = Callable[[Feeds], Outputs]
Signature = tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...]


class BatchObserver(Protocol):
    """Receives one call per executed batch (metrics live outside the runtime)."""

    def batch_done(
        self, part: str, requests: int, rows: int, queue_s: Sequence[float], run_s: float
    ) -> None: ...


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = True
    max_batch_size: int = 256
    max_delay_ms: float = 0.0
    max_queue_rows: int = 16384
    max_concurrent_batches: int = 1


@dataclass
class _Call:
    feeds: Feeds
    rows: int
    signature: Signature
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)


def signature_of(feeds: Feeds) -> Signature:
    return tuple((k, v.shape[1:], v.dtype) for k, v in sorted(feeds.items()))


def split_rows(outputs: Outputs, counts: Sequence[int]) -> list[Outputs]:
    offsets = np.cumsum(counts)[:-1]
    per_output = [np.split(o, offsets) for o in outputs]
    return [[chunks[i] for chunks in per_output] for i in range(len(counts))]


class Batcher:
    """Merges concurrent `run` calls on one session; see the module docstring."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        executor: Executor,
        config: BatchingConfig,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self._executor = executor
        self._cfg = config
        self._observer = observer
        self._queue: deque[_Call] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None  # created on the serving loop
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def run(self, feeds: Feeds) -> Outputs:
        rows = int(next(iter(feeds.values())).shape[0])
        if self._closed or not self._cfg.enabled or rows >= self._cfg.max_batch_size:
            # A closed batcher (its model was just replaced by a reload) still answers callers
            # that picked it up before the swap, one call at a time.
            return await self._execute_alone(feeds, rows)
        if self._queued_rows + rows > self._cfg.max_queue_rows:
            raise Overloaded(
                f"model {self.name} has {self._queued_rows} rows queued; try again shortly",
                retry_after_s=1.0,
            )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        call = _Call(feeds, rows, signature_of(feeds), asyncio.get_running_loop().create_future())
        self._queue.append(call)
        self._queued_rows += rows
        self._wakeup.set()
        return await call.future

    async def _execute_alone(self, feeds: Feeds, rows: int) -> Outputs:
        t0 = time.perf_counter()
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feeds)
        if self._observer is not None:
            self._observer.batch_done(self.name, 1, rows, [0.0], time.perf_counter() - t0)
        return out

    def _take_compatible(self, batch: list[_Call], rows: int) -> int:
        """Move queued calls with the batch's signature into it, keeping order for the rest."""
        signature = batch[0].signature
        kept: deque[_Call] = deque()
        while self._queue:
            call = self._queue.popleft()
            if call.signature == signature and rows + call.rows <= self._cfg.max_batch_size:
                batch.append(call)
                rows += call.rows
                self._queued_rows -= call.rows
            else:
                kept.append(call)
        self._queue = kept
        return rows

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        slots = self._slots = self._slots or asyncio.Semaphore(self._cfg.max_concurrent_batches)
        while True:
            if not self._queue:
                if self._closed:
                    if self._running:
                        await asyncio.gather(*self._running)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await slots.acquire()  # a free slot first: calls keep queueing (and merging) meanwhile
            if not self._queue:
                slots.release()
                continue
            first = self._queue.popleft()
            self._queued_rows -= first.rows
            batch = [first]
            rows = self._take_compatible(batch, first.rows)
            deadline = first.enqueued + self._cfg.max_delay_ms / 1000.0
            while rows < self._cfg.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
                rows = self._take_compatible(batch, rows)
            task = loop.create_task(self._execute(batch, rows, loop))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _execute(
        self, batch: list[_Call], rows: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        live = [c for c in batch if not c.future.done()]  # skip callers that went away
        if not live:
            return
        started = time.perf_counter()
        try:
            if len(live) == 1:
                feeds = live[0].feeds
            else:
                feeds = {k: np.concatenate([c.feeds[k] for c in live]) for k in live[0].feeds}
            outputs = await loop.run_in_executor(self._executor, self._run, feeds)
        except Exception as exc:  # delivered to every caller of the batch
            for c in live:
                if not c.future.done():
                    c.future.set_exception(exc)
            return
        run_s = time.perf_counter() - started
        parts = [outputs] if len(live) == 1 else split_rows(outputs, [c.rows for c in live])
        for c, out in zip(live, parts, strict=True):
            if not c.future.done():
                c.future.set_result(out)
        if self._observer is not None:
            self._observer.batch_done(
                self.name,
                len(live),
                sum(c.rows for c in live),
                [started - c.enqueued for c in live],
                run_s,
            )

    async def close(self) -> None:
        """Stop taking calls; the worker finishes every queued and running batch, then exits."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
