"""Training loop for the autoencoder family: progress bar, seeds, resumable checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from training import distributed
from training.config import ModelConfig, TrainConfig, to_dict
from training.data import Split, Splits, load_dataset
from training.distributed import DistContext
from training.losses import ae_loss, iwae_loss, seed_everything, vae_loss
from training.models import VAE, build_model
from training.progress import batch_bar, epoch_bar

log = logging.getLogger("training")

CHECKPOINT_NAME = "checkpoint.pt"
# Training data up to this size is copied to the GPU once (MNIST: 172 MB); larger sets stay in
# host memory and travel a batch at a time.
RESIDENT_BYTES = 2 << 30


@dataclass
class Checkpoint:
    model_config: ModelConfig
    train_config: TrainConfig
    model: Any  # VAE or GAN
    optimizer_state: dict[str, Any] | None
    epoch: int
    metrics: dict[str, float]
    # One entry per training phase (`training_phase`): a run resumed with a new --lr or
    # objective has two, and the model card's reproduce commands replay each.
    history: list[dict[str, float]] = field(default_factory=list)


def bounds_likelihood(kind: str, beta: float) -> bool:
    """Whether the IWAE objective applies: it bounds log p(x), which only a VAE (or CVAE) with
    the plain KL weight has."""
    return kind in ("vae", "cvae") and beta == 1.0


def training_phase(to_epoch: int, cfg: TrainConfig) -> dict[str, float]:
    """One phase of a run: its last epoch, learning rate and, for the IWAE objective, its
    number of samples (absent for the ELBO, as in checkpoints made before the option)."""
    phase: dict[str, float] = {"to_epoch": to_epoch, "lr": cfg.lr}
    if cfg.importance_samples > 1:
        phase["importance_samples"] = cfg.importance_samples
    return phase


def _same_phase(phase: dict[str, float], cfg: TrainConfig) -> bool:
    return phase["lr"] == cfg.lr and phase.get("importance_samples", 1) == cfg.importance_samples


def save_checkpoint(
    path: Path,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    train_cfg: TrainConfig,
    epoch: int,
    metrics: dict[str, float],
    history: list[dict[str, float]] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model_config": to_dict(model.cfg),
            "train_config": to_dict(train_cfg),
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "history": history or [],
        },
        tmp,
    )
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint


def load_checkpoint(path: Path) -> Checkpoint:
    # weights_only: checkpoints hold tensors and plain containers; no arbitrary unpickling.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model_cfg = ModelConfig.from_dict(state["model_config"])
    model = build_model(model_cfg)
    model.load_state_dict(state["state_dict"])
    model.eval()
    return Checkpoint(
        model_cfg,
        TrainConfig.from_dict(state["train_config"]),
        model,
        state.get("optimizer"),
        int(state["epoch"]),
        dict(state.get("metrics", {})),
        [dict(h) for h in state.get("history", [])],
    )


def _loader(
    split: Split, batch_size: int, shuffle: bool, seed: int, ctx: DistContext | None = None
) -> DataLoader[Any]:
    ds = TensorDataset(torch.from_numpy(split.x), torch.from_numpy(split.y))
    if ctx is not None and ctx.enabled:  # each process sees its own shard of the epoch
        sampler: DistributedSampler[Any] = DistributedSampler(
            ds, ctx.world_size, ctx.rank, shuffle=shuffle, seed=seed
        )
        return DataLoader(ds, batch_size=batch_size, sampler=sampler)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g)


def _shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled batches sliced from tensors already on the training device.

    A DataLoader over a TensorDataset collates every batch from single rows in Python (0.5-0.9 s
    per MNIST epoch on a CPU core), time a GPU step of these small models cannot hide; indexing
    the resident tensors costs a fraction of that."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def _step(
    model: VAE,
    x: torch.Tensor,
    y: torch.Tensor,
    forward: torch.nn.Module | None = None,
    importance_samples: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch, and its terms detached (reading them waits for the device, so the
    loop reads them only now and then); `forward` is the DDP wrapper when training distributed
    (the IWAE objective, `importance_samples` > 1, runs in one process only)."""
    labels = y if model.cfg.num_classes else None
    if importance_samples > 1:
        logits, z, mean, log_var = model.forward_samples(x, labels, importance_samples)
        loss, rec, kl = iwae_loss(logits, x, z, mean, log_var)
    else:
        logits, mean, log_var = (forward or model)(x, labels)
        if model.deterministic:
            loss = ae_loss(logits, x)
            rec, kl = loss, torch.zeros_like(loss)
        else:
            loss, rec, kl = vae_loss(logits, x, mean, log_var, model.cfg.beta)
    return loss, {"loss": loss.detach(), "rec": rec.detach(), "kl": kl.detach()}


def binarized(split: Split, seed: int) -> Split:
    """One fixed Bernoulli(pixel) draw of a split: evaluation data for binarized models."""
    rng = np.random.default_rng(seed)
    x = (rng.random(split.x.shape, dtype=np.float32) < split.x).astype(np.float32)
    return Split(x, split.y)


@torch.no_grad()
def evaluate_loss(
    model: VAE, split: Split, batch_size: int = 512, importance_samples: int = 1
) -> dict[str, float]:
    """Mean loss terms over a split (nats per example), with a fixed seed for the noise: the
    training objective, so an IWAE run's validation loss is its IWAE bound."""
    model.eval()
    torch.manual_seed(0)
    totals: dict[str, float] = {}
    n = 0
    device = next(model.parameters()).device
    for x, y in _loader(split, batch_size, shuffle=False, seed=0):
        _, parts = _step(model, x.to(device), y.to(device), importance_samples=importance_samples)
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v.item() * len(x)
        n += len(x)
    return {k: v / n for k, v in totals.items()}


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: Path,
    splits: Splits | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train and write `out_dir/checkpoint.pt` after every epoch; returns its path."""
    seed_everything(train_cfg.seed)
    if splits is None:
        splits = load_dataset(train_cfg.dataset, train_cfg.data_dir, seed=train_cfg.seed)
    train_split = splits.train
    if train_cfg.normal_class is not None:
        train_split = train_split.only(train_cfg.normal_class)
    k = train_cfg.importance_samples
    if k < 1:
        raise ValueError(f"importance_samples must be >= 1, got {k}")
    if k > 1 and not bounds_likelihood(model_cfg.kind, model_cfg.beta):
        raise ValueError("the IWAE objective bounds log p(x): it needs a VAE with beta 1")
    ckpt_path = out_dir / CHECKPOINT_NAME
    ctx, device = distributed.setup(train_cfg.device)
    if k > 1 and ctx.enabled:
        distributed.teardown(ctx)
        raise ValueError("the IWAE objective trains in one process, not distributed")
    if device.type == "cuda":  # fixed shapes: let cuDNN time its algorithms once
        torch.backends.cudnn.benchmark = True
    model = build_model(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    start_epoch = 0
    history: list[dict[str, float]] = []
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt.model.state_dict())
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
            for group in optimizer.param_groups:  # resuming with a new --lr anneals by hand
                group["lr"] = train_cfg.lr
        start_epoch = ckpt.epoch
        history = [h for h in ckpt.history if h["to_epoch"] <= start_epoch]
        if not history or history[-1]["to_epoch"] != start_epoch:  # older checkpoints: one phase
            history.append(training_phase(start_epoch, ckpt.train_config))
        if _same_phase(history[-1], train_cfg):  # the same phase goes on
            history.pop()
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    forward: torch.nn.Module = model
    if ctx.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    if not ctx.enabled:  # one process: the training split lives on the device if it is small
        home = device if train_split.x.nbytes <= RESIDENT_BYTES else torch.device("cpu")
        train_x = torch.from_numpy(train_split.x).to(home)
        train_y = torch.from_numpy(train_split.y).to(home)
    # a DDP shard's loader knows its own length; the sliced batches are counted here
    n_batches = None if ctx.enabled else -(-len(train_split) // train_cfg.batch_size)
    metrics: dict[str, float] = {}
    show = progress and ctx.is_main
    bar = epoch_bar(start_epoch, train_cfg.epochs, show)
    for epoch in bar:
        model.train()
        epoch_seed = train_cfg.seed + epoch
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
            _loader(train_split, train_cfg.batch_size, True, epoch_seed, ctx)
            if ctx.enabled
            else _shuffled_batches(train_x, train_y, train_cfg.batch_size, epoch_seed)
        )
        batches = batch_bar(loader, epoch, train_cfg.epochs, show, total=n_batches)
        started = time.perf_counter()
        for step, (x_batch, y_batch) in enumerate(batches):
            x, y = x_batch.to(device), y_batch.to(device)
            if train_cfg.binarize:
                x = torch.bernoulli(x)
            loss, parts = _step(model, x, y, forward, importance_samples=k)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if show and step % 50 == 0:
                batches.set_postfix(loss=f"{parts['loss'].item():.2f}", refresh=False)
        last_loss = parts["loss"].item()  # waits for the epoch's last step on the device
        epoch_s = time.perf_counter() - started
        if ctx.is_main:
            val = binarized(splits.val, seed=0) if train_cfg.binarize else splits.val
            val_loss = evaluate_loss(model, val, importance_samples=k)
            metrics = {f"val_{name}": v for name, v in val_loss.items()}
            metrics["train_loss"] = last_loss
            metrics["epoch_s"] = epoch_s
            bar.set_postfix(
                train_loss=f"{metrics['train_loss']:.2f}", val_loss=f"{metrics['val_loss']:.2f}"
            )
            phases = [*history, training_phase(epoch + 1, train_cfg)]
            save_checkpoint(ckpt_path, model, optimizer, train_cfg, epoch + 1, metrics, phases)
        distributed.barrier(ctx)
    distributed.teardown(ctx)
    if not np.isfinite(metrics.get("val_loss", 0.0)):
        raise RuntimeError("training diverged: validation loss is not finite")
    return ckpt_path
