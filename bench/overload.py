"""`python -m bench.overload`: what the service does when more work arrives than it can serve.

Closed-loop clients post the same `/decode` request (64 latents of the VAE, JSON) and send the
next one as soon as an answer arrives, including after a 503: the clients that retry at once
are the hard case, since every refusal comes straight back. Two scenarios on one server with
default settings:

- `nominal`: 256 clients, the load that used to get 503 for most requests under the old row cap.
- `overload`: 10x the clients, so the queue that 256 clients fill is asked to hold 10x as much.

For each: requests served and their p50/p99, refusals (503) and how fast they came back, and any
other failure. Beside them, the HTTP floor: the same clients against the bare ASGI app
(`bench/bare_server.py`) answering at once with a body the size of the service's 503. With this
many clients on the same cores as the server, the client and the HTTP stack alone take time
per answer; a refusal cannot come back faster than the floor, and every served request's latency
includes it. The promise under test: everything is served at the nominal load; under
overload the served requests' p99 stays within the queue-wait deadline (plus one batch) and the
rest are refused in milliseconds.

    python -m bench.overload                       # writes docs/overload.json and its docs section
    python -m bench.overload --duration 3 --no-docs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from bench import report
from bench.bare_server import key_of
from bench.loadgen import percentiles
from bench.servers import ROOT, default_service_workers, make_server
from bench.workloads import HttpRequest

DOC_START = "<!-- bench:overload:start -->"
DOC_END = "<!-- bench:overload:end -->"


@dataclass
class OverloadResult:
    scenario: str
    clients: int
    duration_s: float
    served: int
    served_p50_ms: float
    served_p99_ms: float
    refused: int
    refused_p50_ms: float
    refused_p99_ms: float
    failed: int  # neither 200 nor 503: errors the promise does not allow
    refusal_bytes: int = 0  # the size of a 503 answer (the floor answers with as many)
    floor_p50_ms: float = float("nan")  # the bare app's latency for the same clients
    floor_p99_ms: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


async def run_scenario(
    url: str, request: HttpRequest, scenario: str, clients: int, warmup_s: float, duration_s: float
) -> OverloadResult:
    served: list[float] = []
    refused: list[float] = []
    failed = 0
    refusal_bytes = 0
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_s
    stop_at = measure_from + duration_s
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal failed, refusal_bytes
            while loop.time() < stop_at:
                t0 = loop.time()
                try:
                    async with session.post(
                        request.path, data=request.content, headers=request.headers
                    ) as resp:
                        body = await resp.read()
                        status = resp.status
                        if status == 503:
                            refusal_bytes = len(body)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                t1 = loop.time()
                if t1 < measure_from or t1 > stop_at:
                    continue
                if status == 200:
                    served.append(t1 - t0)
                elif status == 503:
                    refused.append(t1 - t0)
                else:
                    failed += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    s50, _, s99 = percentiles(served)
    r50, _, r99 = percentiles(refused)
    return OverloadResult(
        scenario,
        clients,
        duration_s,
        len(served),
        s50,
        s99,
        len(refused),
        r50,
        r99,
        failed,
        refusal_bytes,
    )


def measure_floor(
    request: HttpRequest, results: list[OverloadResult], warmup_s: float, duration_s: float
) -> None:
    """Each scenario's clients against the bare app answering like a refusal (fills floor_*)."""
    answer = max((r.refusal_bytes for r in results), default=0) or 200
    key = key_of(request)
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        sizes = Path(tmp) / "sizes.json"
        sizes.write_text(json.dumps({key: ["application/json", answer]}))
        bare = make_server("bare", ROOT, [], {}, sizes_file=sizes).start()
        try:
            for r in results:
                f = asyncio.run(
                    run_scenario(bare.url, request, "floor", r.clients, warmup_s, duration_s)
                )
                r.floor_p50_ms, r.floor_p99_ms = f.served_p50_ms, f.served_p99_ms
        finally:
            bare.stop()


def decode_request(model: str, latent_dim: int, rows: int) -> HttpRequest:
    z = np.random.default_rng(0).standard_normal((rows, latent_dim)).astype(np.float32)
    body = orjson.dumps({"model": model, "z": z}, option=orjson.OPT_SERIALIZE_NUMPY)
    return HttpRequest("/decode", body, {"content-type": "application/json"})


def _floor(r: OverloadResult) -> float:
    """What any answer takes at this client count (0 where the floor was not measured)."""
    return 0.0 if math.isnan(r.floor_p50_ms) else r.floor_p50_ms


def table(results: list[OverloadResult], deadline_ms: float, markdown: bool = False) -> str:
    head = (
        "scenario", "clients", "served/s", "served p50 ms", "served p99 ms", "refused/s",
        "refused p50 ms", "refused p99 ms", "HTTP floor p50 / p99 ms", "other errors",
        "p99 within deadline",
    )  # fmt: skip
    rows = [
        (
            r.scenario,
            str(r.clients),
            f"{r.served / r.duration_s:.1f}",
            f"{r.served_p50_ms:.1f}",
            f"{r.served_p99_ms:.1f}",
            f"{r.refused / r.duration_s:.1f}",
            f"{r.refused_p50_ms:.1f}",
            f"{r.refused_p99_ms:.1f}",
            f"{r.floor_p50_ms:.1f} / {r.floor_p99_ms:.1f}",
            str(r.failed),
            "yes" if r.served_p99_ms <= deadline_ms + _floor(r) else "no",
        )
        for r in results
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*row) for row in rows)])


def write_docs(path: Path, document: dict[str, Any], results: list[OverloadResult]) -> None:
    meta = document["meta"]
    block = "\n".join(
        [
            DOC_START,
            "",
            f"Generated by `{meta['command']}` at {meta['started']} (commit "
            f"`{meta['machine']['commit']}`; {meta['machine']['cores']} cores shared by the "
            f"server and the load generator; load average {meta['machine']['load_average']}).",
            f"Model {meta['model']}, `/decode` of {meta['rows']} latents (JSON both ways), "
            f"server settings at their defaults{meta['env_note']} ({meta['workers']} worker "
            f"process{'' if meta['workers'] == 1 else 'es'}): queue-wait deadline "
            f"{meta['deadline_ms']:.0f} ms. Clients retry at once after a 503. "
            f"{meta['warmup_s']} s warm-up, then {meta['duration_s']} s measured per scenario.",
            "",
            table(results, meta["deadline_ms"] + meta["batch_ms"], markdown=True),
            "",
            f"'p99 within deadline' compares with the deadline plus one full batch "
            f"({meta['batch_ms']:.0f} ms measured at load), since a request admitted at the "
            "deadline still waits for the batch it joins to run, plus the HTTP floor's p50 at "
            "that client count: what the clients and HTTP take for any answer, outside the "
            "server's queue.",
            "",
            DOC_END,
        ]
    )
    report.replace_marked(path, DOC_START, DOC_END, block, heading="## Overload\n\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="mnist-conv-vae")
    p.add_argument("--rows", type=int, default=64, help="latents per request")
    p.add_argument("--clients", type=int, default=256, help="clients at the nominal load")
    p.add_argument("--factor", type=int, default=10, help="overload = factor x clients")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--workers", type=int, default=0, help="server processes (0: the default for this host)"
    )
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "overload.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--no-floor", action="store_true", help="skip the bare-app floor runs")
    args = p.parse_args(argv)

    from service.manifest import Manifest
    from service.settings import Settings

    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    deadline_ms = float(
        extra_env.get("LATENTSERVE_MAX_QUEUE_WAIT_MS", Settings().max_queue_wait_ms)
    )
    manifest = Manifest.load(args.models / args.model)
    request = decode_request(args.model, manifest.latent_dim, args.rows)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    workers = args.workers or default_service_workers()
    server = make_server("service", args.models, [args.model], extra_env, workers).start()
    try:
        batch_ms = _full_batch_ms(server.url, args.model)
        scenarios = [("nominal", args.clients), ("overload", args.clients * args.factor)]
        results = []
        for name, clients in scenarios:
            r = asyncio.run(
                run_scenario(server.url, request, name, clients, args.warmup, args.duration)
            )
            results.append(r)
            print(
                f"{name:<9} clients={clients:<5} served {r.served} (p99 {r.served_p99_ms:.0f} "
                f"ms), refused {r.refused} (p99 {r.refused_p99_ms:.1f} ms), other {r.failed}",
                flush=True,
            )
    finally:
        server.stop()
    if not args.no_floor:
        measure_floor(request, results, args.warmup, args.duration)
    env_note = (
        "" if not extra_env else " except " + ", ".join(f"`{k}={v}`" for k, v in extra_env.items())
    )
    document = {
        "meta": {
            "command": "python -m bench.overload "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "started": started,
            "machine": report.machine_info(),
            "model": args.model,
            "rows": args.rows,
            "deadline_ms": deadline_ms,
            "batch_ms": batch_ms,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "env_note": env_note,
            "workers": workers,
        },
        "results": [r.as_dict() for r in results],
    }
    print()
    print(table(results, deadline_ms + batch_ms))
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    if not args.no_docs:
        write_docs(args.docs, document, results)
    return 0


def _full_batch_ms(url: str, model: str) -> float:
    """A full batch's run time as the server measured it at load (from its decoder's rate)."""
    import httpx

    info = httpx.get(f"{url}/models/{model}", timeout=10).json()
    rate = info.get("queue", {}).get("decoder", {}).get("rows_per_second")
    return 0.0 if not rate else 256 / rate * 1000.0


if __name__ == "__main__":
    sys.exit(main())
