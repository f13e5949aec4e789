"""Autoencoder-family models. Decoders return logits; export appends the sigmoid so served outputs
lie in the manifest's value range [0, 1]."""

from __future__ import annotations

import math
from typing import Any

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


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3, same channels and size: depth at one resolution
    that learns a correction to its input, so gradients reach the layers before it through the
    identity path however many blocks are stacked."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.body(x)
        return out


def _blocks(channels: int, n: int) -> list[nn.Module]:
    return [ResidualBlock(channels) for _ in range(n)]


class ConvEncoder(nn.Module):
    """(B, 1, 28, 28) [+ one-hot label] -> (B, latent) mean and log-variance; `res_blocks`
    residual blocks after each downsampling (none: the original two-layer model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.input_shape
        ch = cfg.hidden[0] if cfg.hidden else 32
        n = cfg.res_blocks
        self.conv = nn.Sequential(
            nn.Conv2d(c, ch, 4, 2, 1),
            *_blocks(ch, n),
            nn.ReLU(),  # (B, ch, H/2, W/2)
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),
            *_blocks(2 * ch, n),
            nn.ReLU(),  # (B, 2ch, H/4, W/4)
        )
        flat = 2 * ch * (h // 4) * (w // 4)
        self.fc = nn.Sequential(nn.Linear(flat + (cfg.num_classes or 0), 256), nn.ReLU())
        self.head = nn.Linear(256, 2 * cfg.latent_dim)

    def forward(self, x: Tensor, onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.conv(x).flatten(1)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        mean, log_var = self.head(self.fc(h)).chunk(2, dim=1)
        return mean, log_var


class ConvDecoder(nn.Module):
    """(B, latent) [+ one-hot label] -> (B, 1, 28, 28) logits; mirrors ConvEncoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.input_shape
        ch = cfg.hidden[0] if cfg.hidden else 32
        self.grid = (2 * ch, h // 4, w // 4)
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim + (cfg.num_classes or 0), 256),
            nn.ReLU(),
            nn.Linear(256, math.prod(self.grid)),
            nn.ReLU(),
        )
        n = cfg.res_blocks
        self.deconv = nn.Sequential(
            *_blocks(2 * ch, n),
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1),
            *_blocks(ch, n),
            nn.ReLU(),  # (B, ch, H/2, W/2)
            nn.ConvTranspose2d(ch, c, 4, 2, 1),  # (B, c, H, W)
        )

    def forward(self, z: Tensor, onehot: Tensor | None = None) -> Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        logits: Tensor = self.deconv(self.fc(z).view(-1, *self.grid))
        return logits


class VAE(nn.Module):
    """Encoder q(z|x) = N(mean, exp(log_var)), decoder p(x|z) Bernoulli(sigmoid(logits)).

    With ``deterministic=True`` (the plain AE) the latent is the mean and there is no KL term.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        conv = cfg.arch == "conv"
        self.encoder: nn.Module = ConvEncoder(cfg) if conv else MLPEncoder(cfg)
        self.decoder: nn.Module = ConvDecoder(cfg) if conv else MLPDecoder(cfg)
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

    def forward_samples(
        self, x: Tensor, y: Tensor | None, k: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """k latent draws per example for the IWAE objective: logits (k, B, ...), z (k, B, L),
        and q's mean and log-variance (B, L); the decoder runs once on all k * B draws."""
        c = self.onehot(y)
        mean, log_var = self.encoder(x, c)
        z = self.reparametrize(mean.expand(k, *mean.shape), log_var.expand(k, *log_var.shape))
        logits = self.decoder(z.flatten(0, 1), None if c is None else c.repeat(k, 1))
        return logits.view(k, *x.shape), z, mean, log_var

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        z = torch.randn(n, self.cfg.latent_dim)
        return torch.sigmoid(self.decoder(z, self.onehot(y)))


def build_model(cfg: ModelConfig) -> Any:
    """The model family member a config describes (VAE family or GAN)."""
    if cfg.kind in ("ae", "vae", "cvae") and cfg.arch in ("mlp", "conv"):
        return VAE(cfg)
    if cfg.kind in ("gan", "cgan"):
        from training.gan import GAN

        return GAN(cfg)
    raise ValueError(f"unsupported model {cfg.kind}/{cfg.arch}")
