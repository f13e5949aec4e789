"""torchrun with two CPU processes (gloo): both train, rank 0 alone writes the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.train import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "train",
        "--model",
        "vae",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--latent-dim",
        "2",
        "--hidden",
        "16",
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.epoch == 2 and ckpt.metrics["val_loss"] < 60
    assert proc.stdout.count("checkpoint:") == 2  # both ranks ran to the end


@pytest.mark.slow
def test_torchrun_with_one_process_joins_its_process_group(tmp_path: Path) -> None:
    """One process under torchrun trains through the same process group and DDP path as many
    (on one GPU: NCCL), instead of quietly skipping it."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "training",
        "train",
        "--model",
        "vae",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--latent-dim",
        "2",
        "--hidden",
        "16",
        "--out",
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process group: gloo, world size 1" in proc.stderr
    assert "last epoch:" in proc.stdout and "s on cpu" in proc.stdout


def test_asking_for_cuda_without_it_is_refused_not_run_on_the_cpu() -> None:
    import torch

    from training import distributed

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="--device cuda: PyTorch sees no CUDA device"):
        distributed.setup("cuda")
