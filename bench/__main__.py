"""`python -m bench`: sweep concurrency over every workload and system; print a table, write JSON,
the docs section and the plot.

    python -m bench                       # full run (~5 min), writes docs/benchmarks.{md,json,png}
    python -m bench --quick --no-docs     # smoke test (< 30 s)
    python -m bench --workloads oip --systems service --concurrency 1,16,64 --section oip \\
        --interleave-workloads            # native vs Open Inference Protocol front doors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report, wrk
from bench.bare_server import response_sizes
from bench.inprocess import Ceiling, ceiling_config
from bench.loadgen import StepResult, run_grpc_step, run_step
from bench.servers import (
    DEFAULT_SYSTEMS,
    HTTP_SYSTEMS,
    ROOT,
    SYSTEMS,
    Server,
    default_service_workers,
    make_server,
    pytriton_python,
)
from bench.workloads import (
    ALL_WORKLOADS,
    DEFAULT_WORKLOADS,
    OIP_ENCODINGS,
    QUICK_WORKLOADS,
    WORKLOAD_GROUPS,
    Prepared,
    Workload,
    prepare_or_report,
)
from service.hosts import asks_for_gpu
from service.runtime.sessions import PROVIDER_ALIASES

DEFAULT_CONCURRENCY = (1, 4, 16, 64, 256)
QUICK_CONCURRENCY = (1, 16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=ROOT / "models", help="model repository")
    p.add_argument("--vae-model", default="mnist-conv-vae", help="VAE for /sample and scoring")
    p.add_argument("--gan-model", default="mnist-dcgan", help="GAN for /sample")
    p.add_argument("--concurrency", default=None, help="comma separated (default 1,4,16,64,256)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=None, help="unrecorded seconds per step")
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help="subset of " + ",".join(SYSTEMS) + " (default: all but pytriton)",
    )
    p.add_argument(
        "--workloads",
        default=None,
        help="comma separated workload names, or groups: " + ", ".join(WORKLOAD_GROUPS),
    )
    p.add_argument(
        "--interleave-workloads",
        action="store_true",
        help="run every workload at one concurrency before the next, so workloads compared with "
        "each other meet the same load on a shared machine",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the sweep and keep, per step, the round with the median requests/s (a "
        "shared machine's bursts of load hit one round, not the median)",
    )
    p.add_argument(
        "--section",
        default="results",
        help="the generated section of docs/benchmarks.md to rewrite (its own JSON and plot)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=256,
        help="largest batch of the in-process ceiling and of pytriton (latentserve's default)",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 3 workloads, c=1,16, short")
    p.add_argument("--json", type=Path, default=None, help="default docs/benchmarks[-SECTION].json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--plot", type=Path, default=None, help="default docs/benchmarks[-SECTION].png")
    p.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the latentserve servers (repeatable)",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="HTTP load generator: wrk (C, little CPU per request) when installed, else the "
        "aiohttp client (auto); gRPC steps always use grpc.aio",
    )
    p.add_argument(
        "--service-workers",
        type=int,
        default=0,
        help="processes per latentserve server (`serve --workers`); 0: the server's default "
        "for this host (one per usable core on a CPU host)",
    )
    p.add_argument(
        "--providers",
        default="cpu",
        help="execution providers of latentserve and the in-process ceiling, in order (cpu; "
        "cuda for the GPU, where a GPU provider must load or the run stops)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="serve and call each part's fp16 copy (models without one are refused)",
    )
    args = p.parse_args(argv)
    args.providers = tuple(x.strip() for x in args.providers.split(",") if x.strip())
    if not args.providers or set(args.providers) - set(PROVIDER_ALIASES):
        p.error(f"--providers: choose from {', '.join(PROVIDER_ALIASES)}, got {args.providers}")
    conc = args.concurrency or ",".join(
        map(str, QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY)
    )
    args.concurrency = tuple(int(c) for c in conc.split(","))
    if args.service_workers == 0:
        args.service_workers = default_service_workers(args.providers)
    args.duration = args.duration or (0.3 if args.quick else 1.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.3)
    args.systems = tuple(s for s in args.systems.split(",") if s)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if wrk.available() else "aiohttp"
    elif args.loadgen == "wrk" and not wrk.available():
        p.error("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    if "pytriton" in args.systems and pytriton_python() is None:
        p.error("--systems pytriton: run scripts/install-pytriton.sh first")
    if args.workloads is None and args.quick:
        args.workloads = ",".join(QUICK_WORKLOADS)
    suffix = "" if args.section == "results" else f"-{args.section}"
    args.json = args.json or ROOT / "docs" / f"benchmarks{suffix}.json"
    args.plot = args.plot or ROOT / "docs" / f"benchmarks{suffix}.png"
    return args


def select_workloads(spec: str | None) -> tuple[Workload, ...]:
    """Workloads by name or group, in the order given (the default group when none)."""
    if not spec:
        return DEFAULT_WORKLOADS
    by_name = {w.name: w for w in ALL_WORKLOADS}
    chosen: list[Workload] = []
    for item in spec.split(","):
        found = WORKLOAD_GROUPS.get(item) or ((by_name[item],) if item in by_name else None)
        if found is None:
            known = ", ".join([*WORKLOAD_GROUPS, *by_name])
            raise SystemExit(f"unknown workload {item!r}; choose from {known}")
        chosen += [w for w in found if w not in chosen]
    return tuple(chosen)


async def sweep(
    args: argparse.Namespace, prepared: list[Prepared], servers: dict[str, Server]
) -> list[StepResult]:
    ceiling = None
    if "inprocess" in args.systems:
        ceiling = Ceiling(args.models, ceiling_config(args.providers, args.fp16))
    results: list[StepResult] = []
    if args.interleave_workloads:
        steps = [(p, c) for c in args.concurrency for p in prepared]
    else:
        steps = [(p, c) for p in prepared for c in args.concurrency]
    for p, c in steps * args.rounds:
        # systems interleaved per step, so a change in the shared CPU's load hits all alike
        for system in args.systems:
            if system == "naive" and p.workload.latentserve_only:
                continue  # the baseline has no such route
            if system == "bare" and p.workload.encoding == "grpc":
                continue  # HTTP only
            if system == "pytriton" and p.workload.encoding not in OIP_ENCODINGS:
                continue  # the peer speaks only the Open Inference Protocol
            if system == "inprocess":
                assert ceiling is not None
                r = ceiling.run_step(p, c, args.warmup, args.duration, args.max_batch)
            elif p.workload.encoding == "grpc":
                target = servers[system].grpc_target
                assert target is not None
                r = await run_grpc_step(
                    target, p.request, c, args.warmup, args.duration, system, p.name, p.workload.n
                )
            else:
                step = wrk.run_wrk_step if args.loadgen == "wrk" else run_step
                r = await step(
                    servers[system].url,
                    p.request,
                    c,
                    args.warmup,
                    args.duration,
                    system,
                    p.name,
                    p.workload.n,
                )
            results.append(r)
            print(
                f"{p.name:<26} {system:<16} c={c:<4} {r.rps:9.1f} req/s "
                f"{r.samples_per_s:10.0f} samples/s  p50 {r.p50_ms:8.2f} ms  "
                f"p99 {r.p99_ms:8.2f} ms  errors {r.errors}",
                flush=True,
            )
    return median_rounds(results)


def median_rounds(results: list[StepResult]) -> list[StepResult]:
    """One result per (workload, system, concurrency): the round with the median requests/s
    (the lower of the two middle ones for an even count), in the order steps first ran."""
    rounds: dict[tuple[str, str, int], list[StepResult]] = {}
    for r in results:
        rounds.setdefault((r.workload, r.system, r.concurrency), []).append(r)
    return [sorted(rs, key=lambda r: r.rps)[(len(rs) - 1) // 2] for rs in rounds.values()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.perf_counter()
    load_start = report.machine_info()["load_average"]
    workloads = select_workloads(args.workloads)
    models = {"vae": args.vae_model, "gan": args.gan_model}
    prepared, skipped = prepare_or_report(workloads, models, args.models)
    if not prepared:
        return 2
    used_models = sorted({p.model for p in prepared})
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sizes_file = None
        if "bare" in args.systems:
            sizes_file = Path(tmp) / "sizes.json"
            sizes_file.write_text(json.dumps(response_sizes(prepared, args.models)))
        try:
            for system in args.systems:
                if system in HTTP_SYSTEMS:
                    servers[system] = make_server(
                        system,
                        args.models,
                        used_models,
                        extra_env,
                        args.service_workers,
                        sizes_file,
                        args.max_batch,
                        args.providers,
                        args.fp16,
                    ).start()
            results = asyncio.run(sweep(args, prepared, servers))
        finally:
            for s in servers.values():
                s.stop()
    startup = {k: round(s.startup_s, 3) for k, s in servers.items()}
    targets = report.check_targets(results, startup, gpu=asks_for_gpu(args.providers))
    machine = report.machine_info()
    document: dict[str, Any] = {
        "meta": {
            "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
            "started": started,
            "wall_s": round(time.perf_counter() - t0, 1),
            "machine": machine,
            "load_average_start": load_start,
            "load_average_end": machine["load_average"],
            "repository": str(args.models),
            "models": used_models,
            "systems": list(args.systems),
            "concurrency": list(args.concurrency),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "server_env": extra_env,
            "providers": list(args.providers),
            "fp16": args.fp16,
            "service_workers": args.service_workers,
            "loadgen": args.loadgen,
            "interleave_workloads": args.interleave_workloads,
            "rounds": args.rounds,
        },
        "startup_s": startup,
        "peers": {k: s.about for k, s in servers.items() if s.about},
        "skipped": skipped,
        "results": [r.as_dict() for r in results],
        "targets": [t.as_dict() for t in targets],
    }
    print()
    print(report.table(results))
    print()
    print(report.targets_text(targets))
    print("startup to ready: " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    plot_path = None
    if not args.no_plot:
        plot_path = args.plot
        report.plot(results, plot_path)
    if not args.no_docs:
        report.write_docs(args.docs, document, results, targets, plot_path, args.section)
    print(f"wrote {args.json}" + ("" if plot_path is None else f", {plot_path}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
