"""Evaluation of exported models, computed through the service runtime on the ONNX files, so the
figures describe what is served.

- ELBO and IWAE bound on -log p(x) (nats), on dynamically binarized test images (one seeded
  Bernoulli draw per pixel), and the reconstruction error;
- one-class anomaly AUROC: a model trained on one class scores the whole test set;
- sample quality with `training.classifier`: accuracy of conditional samples for their labels,
  class balance of unconditional samples, Fréchet distance in the classifier's feature space
  beside the same distance between two real sets.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from service.capabilities import ScoreMethod, combined_scales
from service.runtime import scoring
from service.runtime.model import GenerativeModel
from training.calibrate import load_exported, score
from training.classifier import SmallCNN, class_balance, frechet_distance, predict
from training.data import Split
from training.likelihood import standard_error
from training.train import binarized


def likelihood_metrics(
    model: GenerativeModel, test: Split, k: int = 1000, n: int | None = None, seed: int = 0
) -> dict[str, float]:
    """-ELBO and the IWAE bound (k samples) in nats on binarized test images, with standard
    errors; `n` evaluates the first n test images only (IWAE with large k is costly on a CPU)."""
    data = binarized(test, seed)
    x = data.x[:n] if n else data.x
    t0 = time.perf_counter()
    iwae = score(model, x, ScoreMethod.IWAE, k=k, batch_size=max(1, 4096 // k))
    seconds = time.perf_counter() - t0
    elbo = score(model, x, ScoreMethod.ELBO, k=1, batch_size=512)
    rec = score(model, test.x[: len(x)], ScoreMethod.RECONSTRUCTION, batch_size=512)
    return {
        "test_images": float(len(x)),
        "iwae_k": float(k),
        "iwae_nll_nats": float(iwae.mean()),
        "iwae_nll_stderr": standard_error(iwae),
        "neg_elbo_nats": float(elbo.mean()),
        "reconstruction_mse": float(rec.mean()),
        "iwae_seconds": seconds,
    }


def tabular_scores(model: GenerativeModel, test: Split, k: int = 16) -> dict[str, float]:
    """Mean anomaly scores of held-out rows (in raw units, as clients send them). Min-max scaled
    features are not binary, so the Bernoulli -ELBO is a fitting loss here, not a likelihood."""
    report = {
        "test_rows": float(len(test)),
        "reconstruction_mean": float(score(model, test.x, ScoreMethod.RECONSTRUCTION).mean()),
    }
    if ScoreMethod.ELBO in model.capabilities.score_methods:
        report["neg_elbo_mean"] = float(score(model, test.x, ScoreMethod.ELBO, k=min(k, 64)).mean())
    return report


def auroc(normal_scores: NDArray[np.float32], outlier_scores: NDArray[np.float32]) -> float:
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(outlier_scores))]
    return float(roc_auc_score(labels, np.r_[normal_scores, outlier_scores]))


def one_class_auroc(folder: Path, test: Split, normal_class: int) -> dict[str, float]:
    """AUROC of each score for telling `normal_class` from every other class of the test set.

    `combined` is computed from the reconstruction and elbo-complexity scores just made (the
    same k and seeds), as the server combines them, instead of running both again."""
    model = load_exported(folder)
    served = model.capabilities.score_methods
    normal = test.y == normal_class
    scores: dict[ScoreMethod, NDArray[np.float32]] = {}
    for method in (ScoreMethod.RECONSTRUCTION, ScoreMethod.ELBO, ScoreMethod.ELBO_COMPLEXITY):
        if method in served:
            scores[method] = score(model, test.x, method, k=16)
    scales = combined_scales(model.manifest)
    if ScoreMethod.COMBINED in served and scales is not None:
        scores[ScoreMethod.COMBINED] = scoring.combined(
            scores[ScoreMethod.RECONSTRUCTION], scores[ScoreMethod.ELBO_COMPLEXITY], *scales
        )
    return {method.value: auroc(s[normal], s[~normal]) for method, s in scores.items()}


def sample_quality(
    folder: Path,
    classifier: SmallCNN,
    real_a: Split,
    real_b: Split,
    n: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """Classifier-based sample quality; the real-vs-real distance is the floor to compare with."""
    model = load_exported(folder)
    classes = model.manifest.num_classes
    labels = None if classes is None else (np.arange(n) % classes).astype(np.int64)

    async def draw() -> NDArray[np.float32]:
        chunks = []
        for i in range(0, n, 1000):
            lab = None if labels is None else labels[i : i + 1000]
            x, _ = await model.sample(min(1000, n - i), seed + i, 1.0, lab)
            chunks.append(x)
        return np.concatenate(chunks)

    samples = asyncio.run(draw())
    predicted, feats = predict(classifier, samples)
    _, real_feats_a = predict(classifier, real_a.x[:n])
    _, real_feats_b = predict(classifier, real_b.x[:n])
    out: dict[str, float] = {
        "samples": float(n),
        "frechet_classifier": frechet_distance(feats, real_feats_b),
        "frechet_classifier_real_vs_real": frechet_distance(real_feats_a, real_feats_b),
        **class_balance(predicted, 10),
    }
    if labels is not None:
        out["conditional_accuracy"] = float((predicted == labels).mean())
        # the weakest label: a good mean can hide one class the model cannot draw
        out["conditional_accuracy_min"] = min(
            float((predicted[labels == c] == c).mean()) for c in np.unique(labels)
        )
    return out
