"""`python -m bench.monitoring`: what score monitoring adds to an /anomaly-score call.

In one process, on the server's sessions and batchers, blocks of two measurements alternate:
`anomaly_score` calls of the data plane without monitoring, and the monitoring of the same
scores alone (`ScoreMonitor.record` with the server's metrics observer: window, histogram,
counter, window gauges) fed a varied stream of real scores, so ring slots keep changing bins as
they do under traffic. The figures are the median block of each, and their ratio the share of a
call that monitoring adds; an HTTP request adds parsing, routing and rendering to the same work,
so its share of a request is smaller still. Timing the small cost directly in a tight loop holds
on a busy machine, where the difference of two noisy request timings (or the HTTP benchmark's
run-to-run noise of about 10%) would hide a cost of 1%.

    python -m bench.monitoring                   # mnist-conv-vae and digits-vae, n = 1 and 64
    python -m bench.monitoring --blocks 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.servers import ROOT
from bench.workloads import example_inputs
from service.api.metrics import Metrics
from service.capabilities import ScoreMethod
from service.runtime.batching import BatchingConfig
from service.runtime.dataplane import DataPlane, Examples
from service.runtime.model import GenerativeModel
from service.runtime.monitoring import ScoreMonitor
from service.runtime.repository import ModelRepository
from service.runtime.scoring import DEFAULT_K, F32
from service.runtime.sessions import SessionConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m bench.monitoring", description=doc)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--model", action="append", default=None, help="default: both VAEs")
    p.add_argument("--n", default="1,64", help="examples per call (comma separated)")
    p.add_argument("--method", default="reconstruction")
    p.add_argument("--blocks", type=int, default=20, help="blocks of each measurement")
    p.add_argument("--calls", type=int, default=20, help="anomaly_score calls per block")
    p.add_argument("--records", type=int, default=2000, help="record calls per block")
    args = p.parse_args(argv)
    args.model = args.model or ["mnist-conv-vae", "digits-vae"]
    args.n = [int(n) for n in args.n.split(",")]
    return args


async def _measure(args: argparse.Namespace) -> list[dict[str, float | str | int]]:
    executor = ThreadPoolExecutor(2)
    repo = ModelRepository(
        args.models,
        SessionConfig(providers=("cpu",), intra_op_threads=1),
        BatchingConfig(max_concurrent_batches=2),
        executor,
        enabled=frozenset(args.model),
    )
    await repo.load_all()
    metrics = Metrics()
    monitor = ScoreMonitor(1000, 300, metrics)
    metrics.watch(monitor)
    metrics.observe_repository(repo)
    plane = DataPlane(repo)  # without monitoring: the call the monitoring is added to
    method = ScoreMethod(args.method)
    rows = []
    for name in args.model:
        model = repo.get(name)
        for n in args.n:
            streams = [
                Examples(arrays=example_inputs(model.manifest, n, seed)) for seed in range(17)
            ]
            examples = streams[0]
            scores = [(await plane.anomaly_score(name, e, method=method)).scores for e in streams]

            async def calls(model_name: str = name, examples: Examples = examples) -> float:
                count: int = args.calls
                t0 = time.perf_counter()
                for _ in range(count):
                    await plane.anomaly_score(model_name, examples, method=method)
                return (time.perf_counter() - t0) / count * 1e6

            def records(model: GenerativeModel = model, scores: list[F32] = scores) -> float:
                count: int = args.records
                record, k = monitor.record, DEFAULT_K
                t0 = time.perf_counter()
                for i in range(count):
                    record(model, method, scores[i % len(scores)], k)
                return (time.perf_counter() - t0) / count * 1e6

            await calls()  # warm-up
            call_us, record_us = [], []
            for _ in range(args.blocks):
                call_us.append(await calls())
                record_us.append(records())
            call, cost = statistics.median(call_us), statistics.median(record_us)
            rows.append({"model": name, "n": n, "call_us": call, "cost_us": cost})
            print(
                f"{name:<16} n={n:<4} anomaly_score {call:9.1f} us/call  monitoring "
                f"{cost:6.2f} us/call ({100 * cost / call:.2f}% of the call)",
                flush=True,
            )
    await repo.close()
    executor.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = asyncio.run(_measure(args))
    print()
    print("| model | n | anomaly_score call (µs) | monitoring (µs) | share of the call |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        call, cost = float(r["call_us"]), float(r["cost_us"])
        print(f"| {r['model']} | {r['n']} | {call:,.1f} | {cost:,.2f} | {100 * cost / call:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
