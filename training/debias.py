"""DB-VAE debiasing (Amini et al., "Uncovering and Mitigating Algorithmic Bias through Learned
Latent Structure", 2019).

A VAE learns the latent structure of the training set; examples whose latent means fall where few
others do (rare styles the labels say nothing about) are drawn more often. Per latent dimension i a
histogram gives a density estimate Q̂ᵢ; an example's weight is

    W(x) ∝ ∏ᵢ 1 / (Q̂ᵢ(zᵢ(x)) + α)          (combine="product", the paper's, computed in log space)
    W(x) ∝ maxᵢ 1 / (Q̂ᵢ(zᵢ(x)) + α)        (combine="max", as in the MIT 6.S191 lab)

`alpha` bounds the weight of the rarest examples (densities are scaled so the peak bin is 1). With
the product over 16 dimensions a small alpha concentrates nearly all sampling mass on a handful of
examples: on MNIST with 1.5% thickened digits, alpha 0.01 put 99% of the mass on rare examples
with an effective sample size of 6; alpha 0.5 put 16% there with an effective sample size of
6,500 (docs/evaluation.md). `effective_sample_size` reports it for any weight vector.

During `train_debiased` the VAE trains together with the classifier and the weights are
recomputed from its current encoder every epoch. Two choices there, both measured on MNIST with
1.5% inverted digits (docs/evaluation.md#db-vae-debiasing):

- the VAE learns from uniformly drawn batches, not the resampled ones the classifier gets: fed the
  upweighted examples, it spread them over its latent space until they no longer looked rare
  (2.3% of the mass on them instead of 72%);
- `uniform_share` of the sampling mass stays uniform (default 0.5): weights that find the rare
  style that well otherwise starve the classifier of normal examples (overall accuracy 97.7%
  instead of 98.5%).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F
from tqdm.auto import tqdm

from training.classifier import SmallCNN
from training.config import ModelConfig
from training.data import Split
from training.losses import vae_loss
from training.models import VAE

Combine = Literal["product", "max"]
Style = Literal["thicken", "mirror", "invert"]
VaeData = Literal["uniform", "resampled"]


def resampling_weights(
    latent_means: NDArray[np.floating],
    bins: int = 10,
    alpha: float = 0.5,
    combine: Combine = "product",
) -> NDArray[np.float64]:
    """Per-example sampling probabilities (summing to 1) from (N, L) latent means."""
    z = np.asarray(latent_means, dtype=np.float64)
    n, dims = z.shape
    log_inv = np.empty((n, dims))
    for i in range(dims):
        density, edges = np.histogram(z[:, i], bins=bins, density=True)
        density = density / density.max()  # scale-free: alpha means the same for every dim
        idx = np.clip(np.digitize(z[:, i], edges[1:-1]), 0, bins - 1)
        log_inv[:, i] = -np.log(density[idx] + alpha)
    log_w = log_inv.sum(1) if combine == "product" else log_inv.max(1)
    w = np.exp(log_w - log_w.max())  # log space: a product over 32+ dims would overflow
    probabilities: NDArray[np.float64] = w / w.sum()
    return probabilities


@torch.no_grad()
def latent_means(vae: VAE, x: NDArray[np.float32]) -> NDArray[np.float32]:
    vae.eval()
    means = [
        vae.encoder(torch.from_numpy(x[i : i + 2048]))[0].numpy() for i in range(0, len(x), 2048)
    ]
    return np.concatenate(means)


def save_weights(path: Path, weights: NDArray[np.float64]) -> Path:
    """`.npy` or `.csv` (one weight per line, in training-set order) for the user's own sampler."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        np.savetxt(path, weights, fmt="%.10g")
    else:
        np.save(path, weights, allow_pickle=False)
    return path


@dataclass
class DebiasResult:
    classifier: SmallCNN
    vae: VAE
    weights: NDArray[np.float64]  # the last epoch's sampling probabilities


def train_debiased(
    train: Split,
    epochs: int = 3,
    latent_dim: int = 16,
    bins: int = 10,
    alpha: float = 0.5,
    combine: Combine = "product",
    debias: bool = True,
    seed: int = 0,
    progress: bool = True,
    vae_sees: VaeData = "uniform",
    uniform_share: float = 0.5,
) -> DebiasResult:
    """Classifier and VAE trained side by side; with `debias`, each epoch's batches are drawn
    with weights from the VAE's latents (uniform in the first epoch, before the VAE has learnt)."""
    torch.manual_seed(seed)
    side = int(round(np.sqrt(train.x[0].size)))
    clf = SmallCNN(side)
    vae = VAE(
        ModelConfig(
            kind="vae",
            arch="mlp",
            input_shape=tuple(train.x.shape[1:]),
            image_shape=(1, side, side),
            latent_dim=latent_dim,
            hidden=(256,),
        )
    )
    opt = torch.optim.Adam([*clf.parameters(), *vae.parameters()], lr=1e-3)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    g = torch.Generator().manual_seed(seed)
    weights = np.full(len(x), 1.0 / len(x))
    for epoch in tqdm(range(epochs), disable=not progress, desc="debias"):
        if debias and epoch > 0:
            weights = resampling_weights(latent_means(vae, train.x), bins, alpha, combine)
            weights = (1.0 - uniform_share) * weights + uniform_share / len(weights)
        order = torch.multinomial(torch.from_numpy(weights), len(x), replacement=True, generator=g)
        vae_order = order if vae_sees == "resampled" else torch.randperm(len(x), generator=g)
        clf.train()
        vae.train()
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            xb, vb = x[idx], x[vae_order[i : i + 128]]
            logits, mean, log_var = vae(vb)
            loss = F.cross_entropy(clf(xb), y[idx]) + vae_loss(logits, vb, mean, log_var)[0] / 784
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return DebiasResult(clf.eval(), vae.eval(), weights)


def effective_sample_size(weights: NDArray[np.float64]) -> float:
    """1 / sum(p^2) of normalised weights: N for uniform sampling, 1 when one example has it all."""
    p = weights / weights.sum()
    return float(1.0 / np.square(p).sum())


def restyle(x: NDArray[np.float32], style: Style) -> NDArray[np.float32]:
    """`thicken`: strokes dilated by a 3x3 maximum; `mirror`: flipped left-right; `invert`: dark
    strokes on a light background."""
    if style == "invert":
        return (1.0 - x).astype(np.float32)
    if style == "mirror":
        return np.ascontiguousarray(x[..., ::-1])
    side = int(round(np.sqrt(x[0].size)))
    t = torch.from_numpy(np.ascontiguousarray(x)).reshape(len(x), 1, side, side)
    return F.max_pool2d(t, 3, stride=1, padding=1).reshape(x.shape).numpy()


def biased_split(
    split: Split, rare_fraction: float, seed: int = 0, style: Style = "mirror"
) -> tuple[Split, NDArray[np.bool_]]:
    """A copy where a `rare_fraction` of the images, all classes alike, get another `style`: a
    feature the labels do not mention and a plain classifier sees too rarely to learn."""
    rng = np.random.default_rng(seed)
    rare = rng.random(len(split)) < rare_fraction
    x = split.x.copy()
    x[rare] = restyle(x[rare], style)
    return Split(x, split.y), rare


def restyled(split: Split, style: Style) -> Split:
    return Split(restyle(split.x, style), split.y)
