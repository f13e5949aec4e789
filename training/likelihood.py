"""-ELBO and the IWAE bound of a VAE checkpoint, computed by PyTorch on any device.

`python -m training evaluate` measures an exported model through the service runtime, which is
what users get, but the IWAE bound with k = 1000 on 10,000 test images costs the CPU 20 minutes
to hours. This computes the same figures from the checkpoint (same binarized test images, same
estimators), so a run on a GPU reports its bound in seconds before it is exported; the served
figure stays the one a card records, and the two agree to within their standard errors.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from training.data import Split
from training.losses import iwae_bound, kl_to_standard_normal, log_importance_weights
from training.models import VAE
from training.train import binarized

DECODES_PER_BATCH = {"cpu": 4096, "cuda": 100_000}  # k * images decoded at once


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-image figures (in float64: the runtime's scores are
    float32); 0 for a single image rather than NaN."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1, dtype=np.float64) / math.sqrt(len(values)))


@torch.no_grad()
def checkpoint_likelihood(
    model: VAE,
    test: Split,
    k: int = 1000,
    n: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, float]:
    """The keys of `training.evaluate.likelihood_metrics` (less reconstruction_mse) for an
    unconditional VAE checkpoint: nats on the first n (default all) binarized test images."""
    if model.cfg.num_classes or model.deterministic:
        raise ValueError("the likelihood bounds need an unconditional VAE")
    model = model.to(device).eval()
    x_all = torch.from_numpy(binarized(test, seed).x[:n])  # n None: all of them
    per_batch = max(1, DECODES_PER_BATCH.get(torch.device(device).type, 4096) // k)
    torch.manual_seed(seed)
    iwae: list[np.ndarray] = []
    elbo: list[np.ndarray] = []
    t0 = time.perf_counter()
    for start in range(0, len(x_all), per_batch):
        x = x_all[start : start + per_batch].to(device)
        logits, z, mean, log_var = model.forward_samples(x, None, k)
        log_w, log_px_z, _ = log_importance_weights(logits, x, z, mean, log_var)
        iwae.append((-iwae_bound(log_w)).cpu().numpy())
        # -ELBO as the runtime's `elbo` score: one draw's reconstruction, closed-form KL
        elbo.append((-log_px_z[0] + kl_to_standard_normal(mean, log_var)).cpu().numpy())
    seconds = time.perf_counter() - t0
    nll = np.concatenate(iwae).astype(np.float64)
    return {
        "test_images": float(len(nll)),
        "iwae_k": float(k),
        "iwae_nll_nats": float(nll.mean()),
        "iwae_nll_stderr": standard_error(nll),
        "neg_elbo_nats": float(np.concatenate(elbo).mean()),
        "iwae_seconds": seconds,
    }
