"""Losses, summed over an example's dimensions and averaged over the batch (nats per example)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def reconstruction_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x|z) under a Bernoulli decoder, per example: (B, ...) -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def kl_to_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) in closed form, per example: (B, L) -> (B,)."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)


def vae_loss(
    logits: Tensor, x: Tensor, mean: Tensor, log_var: Tensor, beta: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Negative beta-ELBO (mean over batch) with its two parts; beta = 1 is the VAE's ELBO."""
    rec = reconstruction_nll(logits, x)
    kl = kl_to_standard_normal(mean, log_var)
    return (rec + beta * kl).mean(), rec.mean(), kl.mean()


def ae_loss(logits: Tensor, x: Tensor) -> Tensor:
    return reconstruction_nll(logits, x).mean()


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
