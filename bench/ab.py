"""`python -m bench.ab`: what one setting costs, as a throughput ratio on a shared machine.

Two latentserve servers run side by side on the same models: A with the settings as they are, B
with `--env-b` on top (e.g. `LATENTSERVE_MONITORING=false`). Every (workload, concurrency) step
is measured in rounds that alternate the servers in ABBA order, so a change in the machine's
load during a step hits both alike; the ratio of a step is the median over rounds of
A's throughput over B's. Two runs of `python -m bench` minutes apart on this 2-core machine
differ by about 10%, more than the costs this is meant to show.

Throughput still moves with whatever else the machine runs. The server's own CPU time per
request (user + system, all threads, read from /proc) moves much less, since time spent waiting
for a core is not counted: on a busy machine, compare the CPU ratio.

    python -m bench.ab --env-b LATENTSERVE_MONITORING=false \\
        --workloads anomaly-vae-n1-json,anomaly-vae-n64-npy --concurrency 1,64 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import report
from bench.loadgen import StepResult, run_step
from bench.servers import ROOT, Server, make_server
from bench.workloads import DEFAULT_WORKLOADS, Prepared, prepare_or_report


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
            cpu = {"A": 0.0, "B": 0.0}
            answered = {"A": 0.0, "B": 0.0}  # requests served, warm-ups included, like the CPU
            for i in range(args.rounds):
                order = ("A", "B") if i % 2 == 0 else ("B", "A")
                for side in order:
                    # the scrape first: its own CPU time stays out of the run's
                    served_before = served(servers[side], p.request.path)
                    cpu_before = cpu_seconds(servers[side])
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
                    cpu[side] += cpu_seconds(servers[side]) - cpu_before
                    answered[side] += served(servers[side], p.request.path) - served_before
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
                "a_cpu_ms": 1000 * cpu["A"] / max(1.0, answered["A"]),
                "b_cpu_ms": 1000 * cpu["B"] / max(1.0, answered["B"]),
            }
            step["cpu_ratio"] = step["a_cpu_ms"] / step["b_cpu_ms"] if step["b_cpu_ms"] else 0
            print(
                f"{p.name:<22} c={c:<4} A {statistics.median(step['a_rps']):9.1f} req/s  "
                f"B {statistics.median(step['b_rps']):9.1f} req/s  A/B {step['ratio_median']:.3f} "
                f"(rounds {step['ratio_min']:.3f}-{step['ratio_max']:.3f})  CPU/request "
                f"A {step['a_cpu_ms']:.3f} ms B {step['b_cpu_ms']:.3f} ms "
                f"A/B {step['cpu_ratio']:.3f}",
                flush=True,
            )
            steps.append(step)
    return steps


def cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server process so far (all its threads)."""
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(server: Server, path: str) -> float:
    """Requests the server has answered on `path` (its own counter in /metrics); each call
    costs the server one scrape, on both sides alike."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as r:
        text = r.read().decode()
    route = path.split("?", 1)[0]  # .npy requests carry their fields in the query string
    pattern = rf'^latentserve_requests_total\{{endpoint="{re.escape(route)}",[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def markdown(steps: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | c | A req/s | B req/s | A/B throughput (median of rounds; range) | "
        "A / B server CPU per request | A/B CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        lines.append(
            f"| {s['workload']} | {s['concurrency']} | {statistics.median(s['a_rps']):,.0f} | "
            f"{statistics.median(s['b_rps']):,.0f} | {s['ratio_median']:.3f} "
            f"({s['ratio_min']:.2f} - {s['ratio_max']:.2f}) | "
            f"{s['a_cpu_ms']:.3f} / {s['b_cpu_ms']:.3f} ms | {s['cpu_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.workloads.split(","))
    workloads = tuple(w for w in DEFAULT_WORKLOADS if w.name in wanted)
    models = {"vae": args.vae_model, "gan": args.gan_model}
    prepared, skipped = prepare_or_report(workloads, models, args.models)
    if not prepared:
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
