"""Losses, summed over an example's dimensions and averaged over the batch (nats per example)."""

from __future__ import annotations

import math

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


def log_importance_weights(
    logits: Tensor, x: Tensor, z: Tensor, mean: Tensor, log_var: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """log p(x, z_i) - log q(z_i | x) for k draws z (k, B, L) from q, with its two parts
    log p(x | z_i) and log q(z_i | x) - log p(z_i); each (k, B)."""
    log_px_z = (
        -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        .flatten(2)
        .sum(2)
    )
    log_2pi = math.log(2 * math.pi)
    log_pz = -0.5 * (z.pow(2) + log_2pi).sum(2)
    log_qz = -0.5 * ((z - mean).pow(2) / log_var.exp() + log_var + log_2pi).sum(2)
    return log_px_z + log_pz - log_qz, log_px_z, log_qz - log_pz


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/k) sum_i w_i from log-weights (k, B): the IWAE bound on log p(x), per example."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def iwae_loss(
    logits: Tensor, x: Tensor, z: Tensor, mean: Tensor, log_var: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Negative IWAE bound (Burda et al. 2016), mean over batch, with the per-sample
    reconstruction and Monte Carlo KL averaged over the k samples (for the progress figures).

    logits (k, B, ...) are the decoder's outputs for z (k, B, L) drawn from q(z|x). The bound
    log (1/k) sum_i p(x, z_i) / q(z_i|x) tightens towards log p(x) as k grows, so training on it
    (k > 1) optimises the likelihood the served `iwae` score reports rather than the looser
    ELBO; with k = 1 it is the ELBO with a sampled KL term."""
    log_w, log_px_z, kl = log_importance_weights(logits, x, z, mean, log_var)
    return -iwae_bound(log_w).mean(), -log_px_z.mean(), kl.mean()


def ae_loss(logits: Tensor, x: Tensor) -> Tensor:
    return reconstruction_nll(logits, x).mean()


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
