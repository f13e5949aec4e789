"""Dynamic batching for one ONNX Runtime session.

Concurrent calls are queued; a worker takes every queued call that shares the batch's input
signature (trailing shapes and dtypes), up to `max_batch_size` rows, waiting at most
`max_delay_ms` after the first for more, runs the session once in a thread, and splits the outputs
back by row counts. At most `max_concurrent_batches` batches of one session run at once (like
Triton's model instances: ONNX Runtime sessions are thread-safe); the next batch is formed only
when a slot frees, so while every slot is busy newcomers queue and batches grow with load,
without any wait at low load.

A lone call runs inline: when the part is idle (nothing queued or running), no other call has
run inline in this turn of the event loop, and the part's measured time for a batch of that size
is at most `inline_max_s` (and `max_delay_ms` does not ask calls to wait for company), the
session runs on the calling (event loop) thread. A thread hand-off costs a one-row request more
than its own run on a small model (about 0.2 ms of futex wake-ups per call on a 2-core machine).
The turn rule keeps batching intact under load: requests that arrive together are processed one
after another in the same turn, so only the first of them can run inline; the rest queue behind
a thread as before.

Admission is by time, not by a row count: each session measures the rows per second it completes
while its queue stays busy (so every kind of contention counts: the other batch slots, the event
loop, other processes), and before that the rate of one batch at a time per size; a call is
admitted only while the queue's expected wait (the rows queued ahead of it over that rate) stays
under `max_queue_wait_s`. Past it the call fails at once with
`Overloaded` and a retry delay computed from that wait, so clients are told how long the queue
needs instead of being queued behind work that would not finish in time. A call that carries a
deadline (`request_deadline`, set by the data plane from the request's timeout) is refused when
the expected wait and its own run would pass it, and dropped if its deadline passes while it
waits. The rows queued are also capped (`max_queue_rows`) because they are held in memory; an
empty queue takes any call.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from service.errors import DeadlineExceeded, Overloaded

Feeds = dict[str, NDArray[np.generic]]
Outputs = list[NDArray[np.generic]]
RunFn = Callable[[Feeds], Outputs]
Signature = tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...]

request_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)
"""`time.perf_counter()` value by which the current request must be answered, or None."""

_RATE_SMOOTHING = 0.2  # weight of the newest batch in the rows-per-second average
_SUSTAINED_WINDOW = 32  # completions under load that the sustained rate looks back on
_MIN_SUSTAINED = 4


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
    max_queue_rows: int = 65536
    max_concurrent_batches: int = 1
    max_queue_wait_s: float = 10.0
    inline_max_s: float = 0.0


@dataclass
class _Call:
    feeds: Feeds
    rows: int
    signature: Signature
    future: asyncio.Future[Outputs]
    deadline: float | None = None
    enqueued: float = field(default_factory=time.perf_counter)


def signature_of(feeds: Feeds) -> Signature:
    return tuple((k, v.shape[1:], v.dtype) for k, v in sorted(feeds.items()))


def _size_bucket(rows: int) -> int:
    """The power of two at or above `rows`: batch sizes whose rates are kept apart."""
    return 1 << (rows - 1).bit_length()


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
        self._rates: dict[int, float] = {}  # batch-size bucket -> smoothed rows/s of one batch
        self._busy_completions: deque[tuple[float, int]] = deque(maxlen=_SUSTAINED_WINDOW)
        self._ran_inline_this_turn = False
        self._sizes: list[int] = []  # sorted keys of _rates

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def rows_per_second(self) -> float | None:
        """Throughput that admission assumes: sustained under load (rows completed per second
        while the queue stayed busy, all contention included), else one full batch at a time
        (the conservative reading before the part has been loaded). None: never run."""
        sustained = self._sustained_rate()
        return sustained if sustained is not None else self._rate_for(self._cfg.max_batch_size)

    def observe_rate(self, rows: int, seconds: float) -> None:
        """Fold one run of `rows` rows that took `seconds` into the rate of its batch size."""
        if seconds <= 0 or rows <= 0:
            return
        bucket = _size_bucket(rows)
        rate = rows / seconds
        old = self._rates.get(bucket)
        self._rates[bucket] = rate if old is None else old + _RATE_SMOOTHING * (rate - old)
        if old is None:
            self._sizes = sorted(self._rates)

    def _rate_for(self, rows: int) -> float | None:
        """Rows per second of one batch of `rows` rows: a batch's time is interpolated linearly
        between the nearest measured sizes (a fixed cost per run plus a cost per row), and
        beyond them the nearest size's rate is kept."""
        if not self._rates:
            return None
        rows = max(1, min(rows, self._cfg.max_batch_size))
        sizes = self._sizes
        i = bisect.bisect_left(sizes, rows)  # sizes[i] is the first size >= rows
        if i == len(sizes):
            return self._rates[sizes[-1]]
        if sizes[i] == rows or i == 0:
            return self._rates[sizes[i]]
        lo, hi = sizes[i - 1], sizes[i]
        t_lo, t_hi = lo / self._rates[lo], hi / self._rates[hi]
        seconds = t_lo + (t_hi - t_lo) * (rows - lo) / (hi - lo)
        return rows / seconds

    def expected_wait_s(self, rows: int = 0) -> float:
        """Seconds until the queued rows, plus `rows` more, have run (0 before any measurement)."""
        queued = self._queued_rows + rows
        rate = self._sustained_rate() or self._rate_for(queued)
        return 0.0 if rate is None else queued / rate

    def _sustained_rate(self) -> float | None:
        """Rows per second over the recent completions that found the queue still busy."""
        done = self._busy_completions
        if len(done) < _MIN_SUSTAINED:
            return None
        span = done[-1][0] - done[0][0]
        rows = sum(r for _, r in list(done)[1:])
        return rows / span if span > 0 else None

    def _record_completion(self, rows: int) -> None:
        if self._queue or len(self._running) > 1:  # more work waiting: the part is saturated
            self._busy_completions.append((time.perf_counter(), rows))
        else:
            self._busy_completions.clear()

    def admit(self, rows: int) -> float | None:
        """Refuse a call of `rows` rows that the queue cannot serve in time; return its deadline.
        What counts is the wait ahead of the call: a large request on an idle server is always
        admitted. `run` asks this itself; the data plane asks it too before converting a
        request's arrays, so that refusing under overload costs little."""
        if self._closed or not self._cfg.enabled:
            return request_deadline.get()
        ahead = self.expected_wait_s()
        retry_after = max(1.0, math.ceil(ahead))
        queued = self._queued_rows
        if queued and queued + rows > self._cfg.max_queue_rows:
            raise Overloaded(
                f"model {self.name} has {queued} rows queued, the most it holds; "
                f"retry in {retry_after:.0f} s",
                retry_after_s=retry_after,
            )
        if ahead > self._cfg.max_queue_wait_s:
            raise Overloaded(
                f"model {self.name} is busy: this request would wait about {ahead:.2f} s, more "
                f"than the {self._cfg.max_queue_wait_s:g} s allowed; retry in {retry_after:.0f} s",
                retry_after_s=retry_after,
            )
        deadline = request_deadline.get()
        if deadline is not None and time.perf_counter() + self.expected_wait_s(rows) > deadline:
            raise DeadlineExceeded(
                f"model {self.name} would need about {self.expected_wait_s(rows):.2f} s for this "
                f"request, past its timeout; retry in {retry_after:.0f} s",
                retry_after_s=retry_after,
            )
        return deadline

    async def run(self, feeds: Feeds) -> Outputs:
        rows = int(next(iter(feeds.values())).shape[0])
        if self._closed or not self._cfg.enabled:
            # A closed batcher (its model was just replaced by a reload) still answers callers
            # that picked it up before the swap, one call at a time.
            return await self._execute_alone(feeds, rows)
        deadline = self.admit(rows)
        if self._may_run_inline(rows):
            return self._execute_inline(feeds, rows)
        if rows >= self._cfg.max_batch_size:  # a batch already: it runs alone
            return await self._execute_alone(feeds, rows)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        call = _Call(
            feeds, rows, signature_of(feeds), asyncio.get_running_loop().create_future(), deadline
        )
        self._queue.append(call)
        self._queued_rows += rows
        self._wakeup.set()
        return await call.future

    def _may_run_inline(self, rows: int) -> bool:
        if self._queue or self._running or self._ran_inline_this_turn:
            return False
        if self._cfg.inline_max_s <= 0 or self._cfg.max_delay_ms > 0:
            return False  # off, or told to wait for company
        rate = self._rate_for(rows)
        return rate is not None and rows / rate <= self._cfg.inline_max_s

    def _execute_inline(self, feeds: Feeds, rows: int) -> Outputs:
        self._ran_inline_this_turn = True
        asyncio.get_running_loop().call_soon(self._end_inline_turn)
        t0 = time.perf_counter()
        out = self._run(feeds)
        self._ran_alone(rows, time.perf_counter() - t0)
        self._busy_completions.clear()  # it found the part idle
        return out

    def _end_inline_turn(self) -> None:
        self._ran_inline_this_turn = False

    async def _execute_alone(self, feeds: Feeds, rows: int) -> Outputs:
        t0 = time.perf_counter()
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, feeds)
        self._ran_alone(rows, time.perf_counter() - t0)
        return out

    def _ran_alone(self, rows: int, run_s: float) -> None:
        """Account for a call that ran as its own batch, without queueing."""
        self.observe_rate(rows, run_s)
        if self._observer is not None:
            self._observer.batch_done(self.name, 1, rows, [0.0], run_s)

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
            task = loop.create_task(self._execute(batch, loop))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _execute(self, batch: list[_Call], loop: asyncio.AbstractEventLoop) -> None:
        started = time.perf_counter()
        live = []
        for c in batch:
            if c.future.done():  # the caller went away (disconnected or timed out)
                continue
            if c.deadline is not None and started > c.deadline:
                c.future.set_exception(
                    DeadlineExceeded(f"request timed out after queueing on model {self.name}")
                )
                continue
            live.append(c)
        if not live:
            return
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
        rows = sum(c.rows for c in live)
        self.observe_rate(rows, run_s)
        self._record_completion(rows)
        parts = [outputs] if len(live) == 1 else split_rows(outputs, [c.rows for c in live])
        for c, out in zip(live, parts, strict=True):
            if not c.future.done():
                c.future.set_result(out)
        if self._observer is not None:
            self._observer.batch_done(
                self.name,
                len(live),
                rows,
                [started - c.enqueued for c in live],
                run_s,
            )

    async def close(self) -> None:
        """Stop taking calls; the worker finishes every queued and running batch, then exits."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
