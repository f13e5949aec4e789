"""`python -m bench.ab`: what one setting costs, as a throughput ratio on a shared machine.

Two latentserve servers run side by side on the same models: A with the settings as they are, B
with `--env-b` on top (e.g. `LATENTSERVE_MONITORING=false`). Every (workload, concurrency) step
is measured in rounds that alternate the servers in ABBA order, so a change in the machine's
load during a step hits both alike; the ratio of a step is the median over rounds of
A's throughput over B's. Two runs of `python -m bench` minutes apart on this 2-core machine
differ by about 10%, more than the costs this is meant to show.

    python -m bench.ab --env-b LATENTSERVE_MONITORING=false \\
        --workloads anomaly-vae-n1-json,anomaly-vae-n64-npy --concurrency 1,64 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.loadgen import StepResult, run_step
from bench.servers import ROOT, Server, make_server
from bench.workloads import DEFAULT_WORKLOADS, Prepared, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    p.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE", required=True)
    p.add_argument("--models", type=Path, default=ROOT / "models", help="model repository")
    p.add_argument("--vae-model", default="mnist-conv-vae")
    p.add_argument("--gan-model", default="mnist-dcgan")
    p.add_argument("--workloads", default="anomaly-vae-n1-json,anomaly-vae-n64-npy")
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--rounds", type=int, default=6, help="ABBA rounds per step (even)")
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=0.3)
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    args = p.parse_args(argv)
    args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    args.env_b = dict(kv.split("=", 1) for kv in args.env_b)
    return args


async def _measure(
    args: argparse.Namespace, prepared: list[Prepared], servers: dict[str, Server]
) -> list[dict[str, Any]]:
    steps = []
    for p in prepared:
        for c in args.concurrency:
            runs: dict[str, list[StepResult]] = {"A": [], "B": []}
            for i in range(args.rounds):
                order = ("A", "B") if i % 2 == 0 else ("B", "A")
                for side in order:
                    r = await run_step(
                        servers[side].url,
                        p.request,
                        c,
                        args.warmup,
                        args.duration,
                        side,
                        p.name,
                        p.workload.n,
                    )
                    runs[side].append(r)
            ratios = [a.rps / b.rps for a, b in zip(runs["A"], runs["B"], strict=True) if b.rps]
            step = {
                "workload": p.name,
                "concurrency": c,
                "a_rps": [round(r.rps, 1) for r in runs["A"]],
                "b_rps": [round(r.rps, 1) for r in runs["B"]],
                "a_p50_ms": statistics.median(r.p50_ms for r in runs["A"]),
                "b_p50_ms": statistics.median(r.p50_ms for r in runs["B"]),
                "errors": sum(r.errors for side in runs.values() for r in side),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
            print(
                f"{p.name:<22} c={c:<4} A {statistics.median(step['a_rps']):9.1f} req/s  "
                f"B {statistics.median(step['b_rps']):9.1f} req/s  A/B {step['ratio_median']:.3f} "
                f"(rounds {step['ratio_min']:.3f}-{step['ratio_max']:.3f})",
                flush=True,
            )
            steps.append(step)
    return steps


def markdown(steps: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | c | A req/s (median) | B req/s (median) | A/B (median of rounds) | "
        "rounds' range | p50 A / B (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        lines.append(
            f"| {s['workload']} | {s['concurrency']} | {statistics.median(s['a_rps']):,.0f} | "
            f"{statistics.median(s['b_rps']):,.0f} | {s['ratio_median']:.3f} | "
            f"{s['ratio_min']:.3f} - {s['ratio_max']:.3f} | "
            f"{s['a_p50_ms']:.2f} / {s['b_p50_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.workloads.split(","))
    workloads = tuple(w for w in DEFAULT_WORKLOADS if w.name in wanted)
    models = {"vae": args.vae_model, "gan": args.gan_model}
    prepared, skipped = prepare(workloads, models, args.models)
    for reason in skipped:
        print(f"skipping workload {reason}", file=sys.stderr)
    if not prepared:
        print("no workload has its model; nothing to measure", file=sys.stderr)
        return 2
    used = sorted({p.model for p in prepared})
    t0, load_start = time.perf_counter(), report.machine_info()["load_average"]
    servers: dict[str, Server] = {}
    try:
        servers["A"] = make_server("service", args.models, used, {}).start()
        servers["B"] = make_server("service", args.models, used, args.env_b).start()
        steps = asyncio.run(_measure(args, prepared, servers))
    finally:
        for s in servers.values():
            s.stop()
    print()
    print(f"A: defaults; B: {' '.join(f'{k}={v}' for k, v in args.env_b.items())}")
    print(markdown(steps))
    if args.json is not None:
        machine = report.machine_info()
        meta = {
            "command": "python -m bench.ab " + " ".join(sys.argv[1:] if argv is None else argv),
            "env_b": args.env_b,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "wall_s": round(time.perf_counter() - t0, 1),
            "load_average_start": load_start,
            "load_average_end": machine["load_average"],
            "machine": machine,
        }
        args.json.write_text(json.dumps({"meta": meta, "steps": steps}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
