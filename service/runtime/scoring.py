"""The numbers behind anomaly scores and latent paths: pure numpy, no sessions, no I/O.

Scores are per example, higher meaning more anomalous; the variational ones are in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
DEFAULT_K = 16
"""Samples per input for elbo and iwae when a request gives none; the calibrations in the bundled
manifests are made at it too, so monitoring counts sampled scores at this k only."""
_EPS = 1e-7
_LOG_2PI = math.log(2.0 * math.pi)
_TINY_ERROR = 1e-12  # a perfect reconstruction's log error: finite, below any real one


@dataclass
class RawScores:
    scores: F32  # (B,)
    per_pixel: F32 | None  # (B, *input_shape) when asked


def squared_error(x: F32, x_hat: F32, per_pixel: bool) -> RawScores:
    """Mean squared error of each example against its reconstruction."""
    sq = np.square(x - x_hat)
    return RawScores(sq.reshape(len(x), -1).mean(1), sq if per_pixel else None)


def discriminator_scores(logits: NDArray[np.generic], n: int) -> F32:
    """-log D(x): near 0 for inputs the discriminator finds real, large for fakes and outliers."""
    flat = np.asarray(logits, dtype=np.float32).reshape(n)
    return np.logaddexp(0.0, -flat).astype(np.float32)


def draw_posterior(mean: F32, log_var: F32, k: int, seed: int) -> tuple[F32, F32]:
    """k draws z ~ q(z|x) per input, as (B, K, D), and the unit noise behind them."""
    b, d = mean.shape
    eps = np.random.default_rng(seed).standard_normal((b, k, d), dtype=np.float32)
    z = mean[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps
    return z.astype(np.float32), eps


def bernoulli_bound(
    x: F32, p: F32, mean: F32, log_var: F32, z: F32, eps: F32, iwae: bool, per_pixel: bool
) -> RawScores:
    """-ELBO (closed-form KL) or the IWAE bound -log mean_k p(x, z_k) / q(z_k | x), in nats.

    `p` holds the decoder's Bernoulli means for the (B*K) latents `z`, K per input."""
    b, k, _ = eps.shape
    p = np.clip(p, _EPS, 1 - _EPS).reshape(b, k, -1)
    xf = x.reshape(b, 1, -1)
    pixel_ll = xf * np.log(p) + (1 - xf) * np.log1p(-p)  # (B, K, P)
    log_px_z = pixel_ll.sum(-1)  # (B, K)
    if not iwae:
        kl = 0.5 * (np.square(mean) + np.exp(log_var) - 1.0 - log_var).sum(1)
        scores = -(log_px_z.mean(1) - kl)
    else:
        log_pz = -0.5 * (np.square(z) + _LOG_2PI).sum(-1).reshape(b, k)
        log_qz = -0.5 * (np.square(eps) + _LOG_2PI + log_var[:, None, :]).sum(-1)
        log_w = log_px_z + log_pz - log_qz
        m = log_w.max(1, keepdims=True)
        scores = -(m + np.log(np.exp(log_w - m).mean(1, keepdims=True)))[:, 0]
    pix = (-pixel_ll.mean(1)).reshape(x.shape).astype(np.float32) if per_pixel else None
    return RawScores(scores.astype(np.float32), pix)


def complexity_corrected(neg_elbo: F32, complexity_bits: F32) -> F32:
    """S(x) = -log p(x) - L(x) (Serra et al. 2020), both in nats: the bound minus the input's
    compressed length."""
    return (neg_elbo - complexity_bits * math.log(2.0)).astype(np.float32)


def combined(
    squared_error: F32,
    elbo_complexity: F32,
    error_scale: tuple[float, float],
    complexity_scale: tuple[float, float],
) -> F32:
    """Robust z-score of log squared error plus that of elbo-complexity; each scale is the
    (median, interquartile range) of its score (the error's logs) on calibration data. The log
    makes the error's long right tail about as symmetric as the likelihood's."""
    log_error = np.log(np.maximum(squared_error, _TINY_ERROR))
    z_error = (log_error - error_scale[0]) / error_scale[1]
    z_complexity = (elbo_complexity - complexity_scale[0]) / complexity_scale[1]
    return (z_error + z_complexity).astype(np.float32)


def linear_path(z0: F32, z1: F32, t: F32) -> F32:
    return ((1 - t) * z0[None] + t * z1[None]).astype(np.float32)


def slerp(z0: F32, z1: F32, t: F32) -> F32:
    """Spherical interpolation: stays on the shell where most of a Gaussian's mass lies."""
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 == 0 or n1 == 0:
        return linear_path(z0, z1, t)
    cos = float(np.clip(np.dot(z0 / n0, z1 / n1), -1.0, 1.0))
    omega = math.acos(cos)
    if omega < 1e-6:
        return linear_path(z0, z1, t)
    s = math.sin(omega)
    path: F32 = (np.sin((1 - t) * omega) / s * z0[None] + np.sin(t * omega) / s * z1[None]).astype(
        np.float32
    )
    return path
