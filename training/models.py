"""Autoencoder-family models. Decoders return logits; export appends the sigmoid so served outputs
lie in the manifest's value range [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from training.config import ModelConfig


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """(B, *input_shape) [+ one-hot label] -> (B, latent) mean and log-variance."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d_in = math.prod(cfg.input_shape) + (cfg.num_classes or 0)
        self.body = _mlp([d_in, *cfg.hidden])
        self.head = nn.Linear(cfg.hidden[-1], 2 * cfg.latent_dim)

    def forward(self, x: Tensor, onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        mean, log_var = self.head(self.body(h)).chunk(2, dim=1)  # (B, 2L) -> 2 x (B, L)
        return mean, log_var


class MLPDecoder(nn.Module):
    """(B, latent) [+ one-hot label] -> (B, *input_shape) logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_shape = cfg.input_shape
        d_out = math.prod(cfg.input_shape)
        self.body = _mlp([cfg.latent_dim + (cfg.num_classes or 0), *reversed(cfg.hidden)])
        self.head = nn.Linear(cfg.hidden[0], d_out)

    def forward(self, z: Tensor, onehot: Tensor | None = None) -> Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        logits: Tensor = self.head(self.body(z))
        return logits.view(-1, *self.input_shape)


class VAE(nn.Module):
    """Encoder q(z|x) = N(mean, exp(log_var)), decoder p(x|z) Bernoulli(sigmoid(logits)).

    With ``deterministic=True`` (the plain AE) the latent is the mean and there is no KL term.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MLPEncoder(cfg)
        self.decoder = MLPDecoder(cfg)
        self.deterministic = cfg.kind == "ae"

    def onehot(self, y: Tensor | None) -> Tensor | None:
        if self.cfg.num_classes is None:
            return None
        if y is None:
            raise ValueError("conditional model needs labels")
        return nn.functional.one_hot(y, self.cfg.num_classes).float()

    @staticmethod
    def reparametrize(mean: Tensor, log_var: Tensor) -> Tensor:
        """z = mean + sigma * eps, eps ~ N(0, I): sampling stays differentiable in mean, log_var."""
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        c = self.onehot(y)
        mean, log_var = self.encoder(x, c)
        z = mean if self.deterministic else self.reparametrize(mean, log_var)
        return self.decoder(z, c), mean, log_var

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        z = torch.randn(n, self.cfg.latent_dim)
        return torch.sigmoid(self.decoder(z, self.onehot(y)))


def build_model(cfg: ModelConfig) -> VAE:
    if cfg.kind in ("ae", "vae", "cvae") and cfg.arch == "mlp":
        return VAE(cfg)
    raise ValueError(f"unsupported model {cfg.kind}/{cfg.arch}")
