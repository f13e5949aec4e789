"""Train several seeds of one VAE configuration at once within a time budget, then report each
seed's likelihood from PyTorch; made for the lent GPU, whose whole loan is about 15 minutes.

    python3 scripts/gpu-train.py WORK_DIR --data-dir MNIST_DIR [--results DIR] [--budget-s 420]
        [--seeds 0,1,2] [--device cuda] [--train-args "..."] [--anneal-share 0.2] [--k 1000,5000]

The seeds run as concurrent processes (one small model leaves most of an H100 idle). Two probe
epochs of every seed, run concurrently as the real runs will be, measure seconds per epoch; the
epochs that fit the rest of the budget are split into two phases that the model card replays:
lr 1e-3, then `--resume` at lr 2e-4 for the last `--anneal-share` of the epochs. Each phase
also has a hard time limit, and a killed run keeps its last finished epoch (checkpoints are
written after every epoch), so the call ends inside its budget whatever the probe said.

WORK_DIR holds the runs and their logs. The results folder (default WORK_DIR) receives few
files, since the lent machine returns at most 8 of at most 16 MB each: per seed `seed-S.pt`,
the checkpoint without its optimizer state (twice the model's size), then `results.jsonl`
(each seed's `likelihood` report), `summary.txt` and `logs.tgz`. Back here:
`python -m training export RESULTS/seed-S.pt --out models/NAME` and `evaluate` as usual.

On the lent machine (PyTorch is there; pydantic, which the manifest code needs, is carried as
wheels made by `pip download --python-version 3.12 --only-binary=:all: --no-deps` into
.gpu/train-wheels, and MNIST's IDX files in .gpu/mnist), one call:

    run(carry=[".gpu/train-wheels", ".gpu/mnist"], timeout_s=560, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
        ".gpu/train-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
        "python3 scripts/gpu-train.py /tmp/work --results $OUT --data-dir .gpu/mnist")
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

PROBE_EPOCHS = 2  # the second epoch is timed: the first one includes cuDNN's algorithm search


def run_seeds(
    seeds: list[int], args: list[str], out: Path, limit_s: float, log: str
) -> dict[int, int]:
    """`python -m training train ARGS --seed S --out OUT/run-S` for every seed at once; kills
    what is still running after `limit_s`. Returns each seed's exit code (-9 when killed)."""
    procs = {}
    for seed in seeds:
        cmd = [sys.executable, "-m", "training", "train", *args, "--seed", str(seed)]
        cmd += ["--out", str(out / f"run-{seed}")]
        with open(out / f"{log}-{seed}.log", "w") as f:
            procs[seed] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + limit_s
    codes = {}
    for seed, proc in procs.items():
        try:
            codes[seed] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[seed] = proc.wait()
    return codes


def checkpoint_of(out: Path, seed: int) -> Path:
    """Where `run_seeds` leaves a seed's run (the trainer's checkpoint name)."""
    return out / f"run-{seed}" / "checkpoint.pt"


def checkpoint_info(path: Path) -> dict[str, float]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"epoch": state["epoch"], **state["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--train-args",
        default="--hidden 32 --latent-dim 32 --res-blocks 1 --importance-samples 10",
        help="train options beside the dataset, seed, epochs, lr and output",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--anneal-share", type=float, default=0.2)
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument(
        "--k", default="1000,5000", help="importance samples for the reports (comma-separated)"
    )
    opts = parser.parse_args()

    started = time.monotonic()
    out = opts.work.resolve()
    results = (opts.results or out).resolve()
    for folder in (out, results):
        folder.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in opts.seeds.split(",")]
    base = [
        "--model", "vae", "--arch", "conv", "--dataset", "mnist", "--binarize",
        "--data-dir", opts.data_dir, "--device", opts.device,
        "--batch-size", str(opts.batch_size), *shlex.split(opts.train_args),
    ]  # fmt: skip
    summary = results / "summary.txt"

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        with open(summary, "a") as f:
            f.write(line + "\n")

    say(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, args: {shlex.join(base)}")
    t0 = time.monotonic()
    codes = run_seeds(
        seeds, [*base, "--epochs", str(PROBE_EPOCHS), "--lr", "0.001"], out, opts.budget_s, "probe"
    )
    probe_s = time.monotonic() - t0
    infos = {s: checkpoint_info(checkpoint_of(out, s)) for s in seeds if not codes[s]}
    if len(infos) < len(seeds):
        say(f"probe failed: exit codes {codes}; see probe-S.log in logs.tgz")
        pack_logs(out, results)
        sys.exit(1)
    epoch_s = max(info["epoch_s"] for info in infos.values())
    # the wall time of an epoch beyond training: validation, checkpoint, process start shared out
    overhead_s = max(0.0, probe_s / PROBE_EPOCHS - epoch_s)
    per_epoch = epoch_s + overhead_s
    left = opts.budget_s - (time.monotonic() - started) - 30.0  # 30 s: two process starts
    epochs = min(opts.max_epochs, math.floor(left / per_epoch))
    if epochs < 2:
        say(f"probe: {probe_s:.0f} s, {per_epoch:.1f} s per epoch: no time left to train")
        pack_logs(out, results)
        sys.exit(1)
    anneal = max(1, round(epochs * opts.anneal_share))
    say(
        f"probe: {probe_s:.0f} s for {PROBE_EPOCHS} epochs of {len(seeds)} seeds at once, "
        f"{epoch_s:.2f} s of training per epoch; planned {epochs} epochs, the last {anneal} "
        f"at lr 2e-4"
    )
    for s in seeds:  # the real runs start from scratch, not from the probe
        checkpoint_of(out, s).unlink()
    phases = [
        ([*base, "--epochs", str(epochs - anneal), "--lr", "0.001"], "phase1", 1 - anneal / epochs),
        ([*base, "--epochs", str(epochs), "--lr", "0.0002", "--resume"], "phase2", 1.0),
    ]
    for args, name, share in phases:  # each phase may use its share of the time left
        limit = share * (opts.budget_s - (time.monotonic() - started))
        t0 = time.monotonic()
        codes = run_seeds(seeds, args, out, max(10.0, limit), name)
        reached = {
            s: checkpoint_info(checkpoint_of(out, s))["epoch"]
            for s in seeds
            if checkpoint_of(out, s).exists()
        }
        say(f"{name}: {time.monotonic() - t0:.0f} s, exit codes {codes}, epochs reached {reached}")

    trained = [s for s in seeds if checkpoint_of(out, s).exists()]
    for s in trained:  # first, so they come back even if a report fails
        state = torch.load(checkpoint_of(out, s), map_location="cpu", weights_only=True)
        state.pop("optimizer", None)
        torch.save(state, results / f"seed-{s}.pt")
    pack_logs(out, results)
    for k in (int(v) for v in opts.k.split(",")):
        reports = {  # all seeds at once, as they trained
            s: subprocess.Popen(
                [sys.executable, "-m", "training", "likelihood", str(checkpoint_of(out, s))]
                + ["--k", str(k), "--device", opts.device, "--data-dir", opts.data_dir],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for s in trained
        }
        for s, proc in reports.items():
            stdout, stderr = proc.communicate()
            if proc.returncode:
                say(f"seed {s}: likelihood k={k} failed: {stderr.strip()[-500:]}")
                continue
            r = json.loads(stdout.strip().splitlines()[-1])
            with open(results / "results.jsonl", "a") as f:
                f.write(json.dumps({"seed": s, **r}) + "\n")
            say(
                f"seed {s}: epoch {r['epoch']}, IWAE k={k} {r['iwae_nll_nats']:.2f} "
                f"+- {r['iwae_nll_stderr']:.2f} nats, -ELBO {r['neg_elbo_nats']:.2f} "
                f"({r['iwae_seconds']:.0f} s)"
            )
    say(f"total {time.monotonic() - started:.0f} s")
    pack_logs(out, results)


def pack_logs(work: Path, results: Path) -> None:
    with tarfile.open(results / "logs.tgz", "w:gz") as tar:
        for log in sorted(work.glob("*.log")):
            tar.add(log, arcname=log.name)


if __name__ == "__main__":
    main()
