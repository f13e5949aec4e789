"""`python -m bench.sdk_bodies`: what the SDK's .npy request bodies buy over JSON.

One client (the SDK, sequential requests) against one real server: `/anomaly-score` and
`/reconstruct` with 64 examples, sent as JSON (`npy_body_bytes` above the array's size) and as
.npy; median and p90 time per request, and the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.servers import ROOT, make_server
from service.client import Client


def _times(call: Callable[[], object], repeats: int) -> list[float]:
    call()  # warm the connection and the server's path
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sdk_bodies")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="mnist-conv-vae")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args(argv)
    from service.manifest import Manifest

    shape = Manifest.load(args.models / args.model).input.shape
    x = np.random.default_rng(0).uniform(0, 1, (args.rows, *shape)).astype(np.float32)
    server = make_server("service", args.models, [args.model], {}).start()
    rows = []
    try:
        clients = {
            "json": Client(server.url, model=args.model, npy_body_bytes=x.nbytes + 1),
            "npy": Client(server.url, model=args.model, npy_body_bytes=1),
        }
        calls: dict[str, Callable[[Client], object]] = {
            "anomaly-score": lambda c: c.anomaly_score(x),
            "reconstruct": lambda c: c.reconstruct(x),
        }
        for route, call in calls.items():
            med = {}
            for body, c in clients.items():
                t = _times(functools.partial(call, c), args.repeats)
                med[body] = statistics.median(t)
                p90 = statistics.quantiles(t, n=10)[-1]
                rows.append(f"| {route} | {body} | {med[body]:.2f} | {p90:.2f} |")
            rows.append(f"| {route} | json / npy | {med['json'] / med['npy']:.2f}x | |")
        for c in clients.values():
            c.close()
    finally:
        server.stop()
    print(f"{args.model}, {args.rows} examples of {list(shape)} per request, one client")
    print("| route | request body | median ms | p90 ms |\n| --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
