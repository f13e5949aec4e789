"""The batcher merges concurrent calls, keeps incompatible ones apart, and sheds load."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.errors import Overloaded
from service.runtime.batching import Batcher, BatchingConfig, Feeds, Outputs


class Recorder:
    def __init__(self, delay: float = 0.02) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, feeds: Feeds) -> Outputs:
        x = feeds["x"]
        with self.lock:
            self.batches.append(len(x))
        time.sleep(self.delay)
        return [x * 2, x.sum(axis=tuple(range(1, x.ndim)))]


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def batch_done(
        self, part: str, requests: int, rows: int, queue_s: object, run_s: float
    ) -> None:
        self.calls.append((requests, rows))


@pytest.fixture
def executor():
    with ThreadPoolExecutor(2) as ex:
        yield ex


async def test_concurrent_calls_are_merged_and_split_back(executor) -> None:
    run = Recorder()
    obs = Observer()
    b = Batcher("m/p", run, executor, BatchingConfig(max_batch_size=64, max_delay_ms=5), obs)
    inputs = [np.full((i % 3 + 1, 4), i, dtype=np.float32) for i in range(20)]
    outs = await asyncio.gather(*(b.run({"x": x}) for x in inputs))
    for x, (doubled, sums) in zip(inputs, outs, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(1))
    assert len(run.batches) < 20  # merged
    assert sum(run.batches) == sum(len(x) for x in inputs)
    assert max(r for r, _ in obs.calls) > 1
    await b.close()


async def test_batches_never_exceed_max_batch_size(executor) -> None:
    run = Recorder()
    b = Batcher("m/p", run, executor, BatchingConfig(max_batch_size=8, max_delay_ms=5))
    await asyncio.gather(*(b.run({"x": np.zeros((3, 2), np.float32)}) for _ in range(12)))
    assert max(run.batches) <= 8
    await b.close()


async def test_incompatible_shapes_are_not_merged(executor) -> None:
    run = Recorder()
    b = Batcher("m/p", run, executor, BatchingConfig(max_batch_size=64, max_delay_ms=5))
    a_in = [np.zeros((1, 4), np.float32) for _ in range(5)]
    b_in = [np.zeros((1, 6), np.float32) for _ in range(5)]
    outs = await asyncio.gather(*(b.run({"x": x}) for x in a_in + b_in))
    assert [o[0].shape for o in outs] == [(1, 4)] * 5 + [(1, 6)] * 5
    assert len(run.batches) >= 2
    await b.close()


async def test_queue_limit_answers_overloaded(executor) -> None:
    run = Recorder(delay=0.2)
    b = Batcher(
        "m/p", run, executor, BatchingConfig(max_batch_size=4, max_delay_ms=0, max_queue_rows=6)
    )
    tasks = [asyncio.create_task(b.run({"x": np.zeros((2, 2), np.float32)})) for _ in range(10)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    assert overloaded and all(r.retry_after_s > 0 for r in overloaded)
    assert any(not isinstance(r, Exception) for r in results)
    await b.close()


async def test_errors_reach_every_caller_of_the_batch(executor) -> None:
    def broken(feeds: Feeds) -> Outputs:
        raise RuntimeError("boom")

    b = Batcher("m/p", broken, executor, BatchingConfig(max_delay_ms=5))
    results = await asyncio.gather(
        *(b.run({"x": np.zeros((1, 2), np.float32)}) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    # and the batcher still works afterwards
    b2 = Batcher("m/q", Recorder(0), executor, BatchingConfig())
    assert (await b2.run({"x": np.ones((1, 2), np.float32)}))[0].tolist() == [[2.0, 2.0]]
    await b.close()
    await b2.close()


async def test_disabled_batching_runs_each_call_alone(executor) -> None:
    run = Recorder(delay=0.01)
    b = Batcher("m/p", run, executor, BatchingConfig(enabled=False))
    await asyncio.gather(*(b.run({"x": np.zeros((1, 2), np.float32)}) for _ in range(6)))
    assert run.batches == [1] * 6


async def test_close_drains_then_later_calls_still_run(executor) -> None:
    run = Recorder(delay=0.02)
    b = Batcher("m/p", run, executor, BatchingConfig(max_delay_ms=1))
    pending = [asyncio.create_task(b.run({"x": np.ones((1, 2), np.float32)})) for _ in range(5)]
    await asyncio.sleep(0)
    await b.close()
    assert all(t.done() and not t.exception() for t in pending)
    out = await b.run({"x": np.ones((1, 2), np.float32)})  # a caller holding the old model
    assert out[0].tolist() == [[2.0, 2.0]]


class Overlap:
    """Runs that sleep, counting how many are in flight at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, feeds: Feeds) -> Outputs:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.03)
        with self.lock:
            self.active -= 1
        return [feeds["x"]]


@pytest.mark.parametrize("slots", [1, 2])
async def test_at_most_max_concurrent_batches_run_at_once(slots: int) -> None:
    run = Overlap()
    obs = Observer()
    with ThreadPoolExecutor(4) as ex:
        cfg = BatchingConfig(max_batch_size=2, max_concurrent_batches=slots)
        b = Batcher("m/p", run, ex, cfg, obs)
        xs = [np.full((1, 3), i, dtype=np.float32) for i in range(12)]
        outs = await asyncio.gather(*(b.run({"x": x}) for x in xs))
        await b.close()
    for x, (y,) in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(y, x)
    assert run.peak == slots
    assert sum(rows for _, rows in obs.calls) == 12 and max(rows for _, rows in obs.calls) == 2


async def test_admission_by_expected_wait(executor) -> None:
    """A call is admitted while queued rows / measured rate stays under the deadline; the
    refusal's retry delay is the queue's expected wait, rounded up."""
    run = Recorder(delay=0.1)  # 4 rows per 0.1 s batch: 40 rows/s per slot
    cfg = BatchingConfig(max_batch_size=4, max_queue_rows=10_000, max_queue_wait_s=0.5)
    b = Batcher("m/p", run, executor, cfg)
    b.observe_rate(4, 0.1)
    assert b.rows_per_second == pytest.approx(40.0)
    tasks = [asyncio.create_task(b.run({"x": np.zeros((2, 2), np.float32)})) for _ in range(40)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if not isinstance(r, Exception)]
    # 0.5 s at 40 rows/s admits about 20 rows (10 calls of 2), a batch or so more once running
    assert 8 <= len(served) <= 16, len(served)
    assert len(refused) == 40 - len(served)
    assert all(r.retry_after_s >= 1 and "would wait about" in r.message for r in refused)
    await b.close()


async def test_rates_are_kept_per_batch_size(executor) -> None:
    b = Batcher("m/p", Recorder(0), executor, BatchingConfig(max_batch_size=256))
    assert b.expected_wait_s(1000) == 0.0  # unmeasured: no basis to refuse
    b.observe_rate(1, 0.001)  # 1,000 rows/s in batches of one
    b.observe_rate(256, 0.01)  # 25,600 rows/s in full batches
    assert b.rows_per_second == pytest.approx(25_600)
    # a deep queue runs in full batches; a short one takes the time interpolated between the
    # measured sizes: 129 rows take 1 ms + (128 / 255) * 9 ms
    assert b.expected_wait_s(2560) == pytest.approx(0.1)
    assert b.expected_wait_s(1) == pytest.approx(0.001)
    assert b.expected_wait_s(129) == pytest.approx(0.001 + 128 / 255 * 0.009)


async def test_request_deadline_refuses_and_drops(executor) -> None:
    from service.errors import DeadlineExceeded
    from service.runtime.batching import request_deadline

    b = Batcher("m/p", Recorder(0.05), executor, BatchingConfig(max_batch_size=4))
    b.observe_rate(4, 0.1)  # 40 rows/s with one slot
    blockers = [asyncio.create_task(b.run({"x": np.zeros((2, 2), np.float32)})) for _ in range(4)]
    await asyncio.sleep(0)
    token = request_deadline.set(time.perf_counter() + 0.01)
    try:
        with pytest.raises(DeadlineExceeded, match="past its timeout"):
            await b.run({"x": np.zeros((2, 2), np.float32)})
    finally:
        request_deadline.reset(token)
    await asyncio.gather(*blockers)
    await b.close()


async def test_large_call_on_an_idle_queue_is_admitted(executor) -> None:
    """Admission weighs the wait ahead of a call, not its own size: on an idle server a call
    larger than the queue cap, and slower than the queue-wait deadline, still runs."""
    cfg = BatchingConfig(max_batch_size=4, max_queue_rows=8, max_queue_wait_s=0.01)
    b = Batcher("m/p", Recorder(0.001), executor, cfg)
    b.observe_rate(4, 0.1)  # 40 rows/s: 100 rows would take 2.5 s
    out = await b.run({"x": np.ones((100, 2), np.float32)})
    assert out[0].shape == (100, 2)
    out = await b.run({"x": np.ones((3, 2), np.float32)})
    assert out[0].shape == (3, 2)
    await b.close()


async def test_sustained_rate_replaces_an_optimistic_estimate(executor) -> None:
    """A rate measured on an idle machine (here 40,000 rows/s) gives way, once the queue stays
    busy, to what the part really completes (4 rows per 20 ms batch: 200 rows/s)."""
    cfg = BatchingConfig(max_batch_size=4, max_queue_rows=10_000, max_queue_wait_s=60)
    b = Batcher("m/p", Recorder(0.02), executor, cfg)
    b.observe_rate(4, 0.0001)
    assert b.rows_per_second == pytest.approx(40_000)
    calls = [asyncio.create_task(b.run({"x": np.zeros((2, 2), np.float32)})) for _ in range(40)]
    await asyncio.gather(*calls[:30])
    assert b.rows_per_second is not None and 100 < b.rows_per_second < 250
    await asyncio.gather(*calls[30:])
    await b.close()


class ThreadRecorder(Recorder):
    """Also records which thread ran each batch."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.threads: list[str] = []

    def __call__(self, feeds: Feeds) -> Outputs:
        self.threads.append(threading.current_thread().name)
        return super().__call__(feeds)


def _inline_batcher(run: Recorder, executor, **cfg: float) -> Batcher:
    config = BatchingConfig(**{"max_batch_size": 64, "inline_max_s": 0.05, **cfg})  # type: ignore[arg-type]
    b = Batcher("m/p", run, executor, config)
    b.observe_rate(1, 0.001)  # measured: one row takes 1 ms
    return b


async def test_a_lone_small_call_runs_on_the_event_loop_thread(executor) -> None:
    run = ThreadRecorder()
    b = _inline_batcher(run, executor)
    here = threading.current_thread().name
    for i in range(3):  # one after another, each in a new turn (as requests from a socket)
        (out, _) = await b.run({"x": np.full((1, 4), i, dtype=np.float32)})
        np.testing.assert_array_equal(out, np.full((1, 4), 2 * i))
        await asyncio.sleep(0)
    assert run.threads == [here] * 3
    # two calls in one turn: the second goes to a thread
    await b.run({"x": np.zeros((1, 4), dtype=np.float32)})
    await b.run({"x": np.zeros((1, 4), dtype=np.float32)})
    assert run.threads[3] == here and run.threads[4] != here
    await b.close()


async def test_calls_arriving_together_still_batch_after_the_first(executor) -> None:
    """Requests that arrive together are handled one after another in one turn of the event
    loop: only the first may run inline; the others queue and merge on a thread."""
    run = ThreadRecorder(delay=0.01)
    b = _inline_batcher(run, executor)
    inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(16)]
    outs = await asyncio.gather(*(b.run({"x": x}) for x in inputs))
    for x, (doubled, _) in zip(inputs, outs, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
    here = threading.current_thread().name
    assert run.threads[0] == here and here not in run.threads[1:]
    assert run.batches[0] == 1 and len(run.batches) < 16 and sum(run.batches) == 16
    await b.close()


@pytest.mark.parametrize(
    ("rows", "cfg"),
    [
        (64, {}),  # measured at 64 ms: longer than inline_max_s (50 ms)
        (1, {"inline_max_s": 0.0}),  # off
        (1, {"max_delay_ms": 5.0}),  # told to wait for company
    ],
)
async def test_no_inline_run_when_it_would_block_or_is_not_wanted(executor, rows, cfg) -> None:
    run = ThreadRecorder()
    b = _inline_batcher(run, executor, **cfg)
    await b.run({"x": np.zeros((rows, 4), dtype=np.float32)})
    assert run.threads and threading.current_thread().name not in run.threads
    await b.close()


async def test_an_error_in_an_inline_run_reaches_its_caller_only(executor) -> None:
    def fail(feeds: Feeds) -> Outputs:
        raise RuntimeError("graph failed")

    b = _inline_batcher(fail, executor)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="graph failed"):
        await b.run({"x": np.zeros((1, 4), dtype=np.float32)})
    await b.close()
