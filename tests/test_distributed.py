"""torchrun on CPU processes (gloo): with two, both train and rank 0 alone writes the checkpoint;
with one, the process still joins its group of one (on one GPU that is NCCL)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.train import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(processes: int, epochs: int, out: Path) -> subprocess.CompletedProcess[str]:
    """A small digits VAE trained under torchrun with `processes` CPU processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += [str(processes), "-m", "training", "train", "--model", "vae", "--dataset", "digits"]
    cmd += ["--epochs", str(epochs), "--latent-dim", "2", "--hidden", "16", "--out", str(out)]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    proc = _torchrun(2, 2, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.epoch == 2 and ckpt.metrics["val_loss"] < 60
    assert proc.stdout.count("checkpoint:") == 2  # both ranks ran to the end
    assert "process group: gloo, world size 2" in proc.stderr  # said by rank 0 alone


@pytest.mark.slow
def test_torchrun_with_one_process_joins_its_process_group(tmp_path: Path) -> None:
    """One process under torchrun trains through the same process group and DDP path as many
    (on one GPU: NCCL), instead of quietly skipping it."""
    proc = _torchrun(1, 1, tmp_path / "run")
    assert "process group: gloo, world size 1" in proc.stderr
    assert "last epoch:" in proc.stdout and "s on cpu" in proc.stdout


def test_asking_for_cuda_without_it_is_refused_not_run_on_the_cpu() -> None:
    import torch

    from training import distributed

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="--device cuda: PyTorch sees no CUDA device"):
        distributed.setup("cuda")
