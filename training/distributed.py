"""Multi-process data parallelism: `torchrun --nproc_per_node N -m training train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; each process it starts joins a process group
(NCCL on GPUs, gloo on CPUs) and trains a DistributedDataParallel replica on its shard of every
epoch, and rank 0 alone evaluates and writes checkpoints. One process under torchrun
(`--nproc_per_node 1`) still joins its group of one, so a single-GPU machine runs the same NCCL
path a multi-GPU one does. Without torchrun nothing here changes anything.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: in a process group, however small

    @property
    def enabled(self) -> bool:
        return self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        # refused, not quietly trained on the CPU: a run asked for the GPU to measure or use it
        raise RuntimeError(f"--device {device}: PyTorch sees no CUDA device here")
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return DistContext(), torch.device(device)
    ctx = DistContext(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
        launched=True,
    )
    use_cuda = device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        if use_cuda:  # the device named up front: barrier() need not guess it (and warn)
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", ctx.local_rank))
        else:
            dist.init_process_group(backend="gloo")
        if ctx.is_main:  # said once, so a run's log shows which collective backend trained it
            sys.stderr.write(f"process group: {dist.get_backend()}, world size {ctx.world_size}\n")
    if use_cuda:
        return ctx, torch.device("cuda", ctx.local_rank)
    return ctx, torch.device("cpu")


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
