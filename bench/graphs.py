"""`python -m bench.graphs A.onnx B.onnx`: what a new version of one part costs in ONNX Runtime.

Two graphs of the same role (e.g. `mnist-dcgan` version 1's generator and version 2's) run
in-process on the CPU, no HTTP, in interleaved rounds (A, B, A, B, ...), so a change in the
machine's load hits both alike; per batch size: rows/s, p50 and p99 of a call, and B over A,
measured in the same run. Inputs are random: standard normal for float inputs, zeros for
integer ones, the first axis set to the batch size.

    git show REV:models/mnist-dcgan/generator.onnx > /tmp/generator-v1.onnx
    python -m bench.graphs /tmp/generator-v1.onnx models/mnist-dcgan/generator.onnx --rows 1,64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray


def _feeds(session: ort.InferenceSession, rows: int) -> dict[str, NDArray[np.generic]]:
    rng = np.random.default_rng(0)
    feeds: dict[str, NDArray[np.generic]] = {}
    for spec in session.get_inputs():
        dims = [rows, *(d if isinstance(d, int) else 1 for d in spec.shape[1:])]
        if "float" in spec.type:
            feeds[spec.name] = rng.standard_normal(dims).astype(np.float32)
        else:
            feeds[spec.name] = np.zeros(dims, dtype=np.int64)
    return feeds


def _call_ms(
    session: ort.InferenceSession, feeds: dict[str, NDArray[np.generic]], n: int
) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, feeds)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.graphs", description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="the baseline graph")
    p.add_argument("b", type=Path, help="the graph compared with it")
    p.add_argument("--rows", default="1,64", help="batch sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=200, help="calls per graph and round at 1 row")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in (("A", args.a), ("B", args.b))
    }
    print(f"A: {args.a}\nB: {args.b}\n{args.threads} intra-op thread(s), {args.rounds} rounds")
    print("| rows | graph | rows/s | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
    for rows in (int(r) for r in args.rows.split(",")):
        feeds = {name: _feeds(s, rows) for name, s in sessions.items()}
        calls = max(10, args.calls // max(1, rows // 8))
        times: dict[str, list[float]] = {"A": [], "B": []}
        for name, s in sessions.items():
            _call_ms(s, feeds[name], 5)  # warm-up, not recorded
        for _ in range(args.rounds):
            for name, s in sessions.items():
                times[name] += _call_ms(s, feeds[name], calls)
        p50 = {}
        for name, t in times.items():
            p50[name], p99 = np.percentile(t, [50, 99])
            rate = rows * 1000 / np.mean(t)
            print(f"| {rows} | {name} | {rate:,.0f} | {p50[name]:.3f} | {p99:.3f} |")
        print(f"| {rows} | B / A | | {p50['B'] / p50['A']:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
