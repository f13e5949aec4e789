"""Which service settings serve best on this GPU: each variant is one `python -m bench` run of the
service alone on the same workloads; the table compares them by samples/s per step, and the
winner (highest geometric mean of samples/s over the steps) is then benchmarked in full beside
in-process CUDA EP, as the GPU section of docs/benchmarks.md.

    python -m bench.gpu_tune --out DIR [--docs FILE]

Variants change one thing at a time against the defaults: the cuDNN algorithm search (EXHAUSTIVE
benchmarks every convolution again for each new batch size the batcher forms; HEURISTIC picks
without running), ONNX Runtime's CPU threads per session (on a GPU they only run the few CPU-side
nodes, and 16 idle pools per model part compete with the HTTP server), running small batches on
the event loop, and the number of server processes (each holds its own CUDA context).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUNE_WORKLOADS = "decode-vae-n1-json,decode-vae-n64-npy,anomaly-vae-n64-npy"
FULL_WORKLOADS = (
    "decode-vae-n1-json,decode-vae-n64-npy,sample-gan-n1-json,sample-gan-n64-npy,"
    "anomaly-vae-n1-npy,anomaly-vae-n64-npy"
)
EXHAUSTIVE = {"LATENTSERVE_CUDNN_CONV_ALGO_SEARCH": "EXHAUSTIVE"}
HEURISTIC = {"LATENTSERVE_CUDNN_CONV_ALGO_SEARCH": "HEURISTIC"}
ONE_THREAD = {"LATENTSERVE_INTRA_OP_THREADS": "1"}
EIGHT_THREADS = {"LATENTSERVE_INTRA_OP_THREADS": "8"}
# name -> (server environment, service workers). Every setting is spelled out, so the table
# means the same whatever the defaults are. The first is what the defaults were before this
# comparison on a 16-core host (8 threads = 16 cores / 2 concurrent batches), the last what
# they are now there (docs/benchmarks.md#gpu).
VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "exhaustive+8-threads+1-worker": ({**EXHAUSTIVE, **EIGHT_THREADS}, 1),
    "heuristic+8-threads+1-worker": ({**HEURISTIC, **EIGHT_THREADS}, 1),
    "heuristic+1-thread+1-worker": ({**HEURISTIC, **ONE_THREAD}, 1),
    "heuristic+8-threads+1-worker+no-inline": (
        {**HEURISTIC, **EIGHT_THREADS, "LATENTSERVE_INLINE_MAX_MS": "0"},
        1,
    ),
    "heuristic+1-thread+4-workers": ({**HEURISTIC, **ONE_THREAD}, 4),
    "heuristic+1-thread+8-workers": ({**HEURISTIC, **ONE_THREAD}, 8),
}


def bench_command(
    json_path: Path,
    env: dict[str, str],
    workers: int,
    systems: str,
    workloads: str,
    concurrency: str,
    duration: float,
    docs: Path | None,
    section: str,
) -> list[str]:
    cmd = [sys.executable, "-m", "bench", "--providers", "cuda", "--systems", systems]
    cmd += ["--workloads", workloads, "--concurrency", concurrency, "--no-plot"]
    cmd += ["--duration", str(duration), "--warmup", "0.3", "--service-workers", str(workers)]
    cmd += ["--json", str(json_path), "--section", section]
    cmd += ["--no-docs"] if docs is None else ["--docs", str(docs)]
    for key, value in env.items():
        cmd += ["--server-env", f"{key}={value}"]
    return cmd


def score(results: list[dict[str, object]]) -> float:
    """Geometric mean of the service's samples/s over its steps; a step that completed nothing
    counts as 1 sample/s, so it sinks the variant without hiding the others' figures."""
    values = [max(float(str(r["samples_per_s"])), 1.0) for r in results if r["system"] == "service"]
    if not values:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_tune", description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--docs", type=Path, default=None, help="write the winner's full run here")
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    steps: dict[str, dict[tuple[str, int], float]] = {}
    for name in args.variants.split(","):
        env, workers = VARIANTS[name]
        path = args.out / f"tune-{name}.json"
        cmd = bench_command(
            path, env, workers, "service", TUNE_WORKLOADS, "16,64,256", args.duration, None, "tune"
        )
        print(f"=== {name}: {' '.join(cmd[3:])}", flush=True)
        done = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True)
        (args.out / f"tune-{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not path.exists():
            print(f"{name}: failed (rc {done.returncode})\n{done.stderr[-1500:]}", flush=True)
            scores[name] = 0.0
            continue
        results = json.loads(path.read_text())["results"]
        scores[name] = score(results)
        steps[name] = {
            (str(r["workload"]), int(r["concurrency"])): float(r["samples_per_s"]) for r in results
        }
        print(f"{name}: geometric mean {scores[name]:,.0f} samples/s", flush=True)
    keys = sorted({k for s in steps.values() for k in s})
    print("\n| variant | " + " | ".join(f"{w} c={c}" for w, c in keys) + " | geo. mean |")
    print("| --- | " + " | ".join("---:" for _ in keys) + " | ---: |")
    for name, value in scores.items():
        cells = [f"{steps.get(name, {}).get(k, 0):,.0f}" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + f" | {value:,.0f} |")
    best = max(scores, key=lambda n: scores[n])
    (args.out / "tune-summary.json").write_text(
        json.dumps({"scores": scores, "best": best, "variants": VARIANTS}, indent=1) + "\n"
    )
    if scores[best] <= 0:
        print("no variant ran", flush=True)
        return 1
    env, workers = VARIANTS[best]
    print(f"\n=== best: {best}; its full run beside in-process CUDA EP", flush=True)
    cmd = bench_command(
        args.out / "bench-gpu-tuned.json",
        env,
        workers,
        "service,inprocess",
        FULL_WORKLOADS,
        "1,16,64,256",
        args.duration,
        args.docs,
        "gpu-tuned",
    )
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
