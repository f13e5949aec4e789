"""The experiments behind docs/evaluation.md: one-class anomaly AUROC per digit, and DB-VAE
debiasing on a biased MNIST. Each prints a markdown table and returns its numbers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from training.classifier import predict, train_classifier
from training.config import ModelConfig, TrainConfig
from training.data import Splits
from training.debias import (
    Style,
    VaeData,
    biased_split,
    effective_sample_size,
    restyled,
    train_debiased,
)
from training.evaluate import one_class_auroc
from training.export import export_checkpoint
from training.train import load_checkpoint, train


def one_class_table(
    splits: Splits, epochs: int = 20, latent_dim: int = 16, seed: int = 0, arch: str = "mlp"
) -> dict[int, dict[str, float]]:
    """For each digit: a VAE trained on that digit only scores the whole test set."""
    rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for digit in range(splits.num_classes):
            cfg = ModelConfig(
                kind="vae",
                arch=arch,
                input_shape=splits.input_shape,
                image_shape=splits.image_shape,
                latent_dim=latent_dim,
                hidden=(256, 128) if arch == "mlp" else (32,),
            )
            tc = TrainConfig(
                dataset=splits.name,
                epochs=epochs,
                batch_size=128,
                lr=1e-3,
                seed=seed,
                normal_class=digit,
            )
            ckpt = train(cfg, tc, Path(tmp) / f"run{digit}", splits=splits, progress=False)
            folder = Path(tmp) / f"one-class-{digit}"
            export_checkpoint(load_checkpoint(ckpt), folder, f"one-class-{digit}")
            rows[digit] = one_class_auroc(folder, splits.test, digit)
    return rows


def debias_experiment(
    splits: Splits,
    rare_fraction: float = 0.015,
    epochs: int = 3,
    seed: int = 0,
    style: Style = "invert",
    alpha: float = 0.5,
    vae_sees: VaeData = "uniform",
    uniform_share: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Classifiers on a training set where `style` (inverted, thickened or mirrored digits) is
    `rare_fraction` of the examples, with and without DB-VAE resampling, tested on the normal and
    the fully restyled test set."""
    biased, rare = biased_split(splits.train, rare_fraction, seed, style)
    rare_test = restyled(splits.test, style)

    def accuracy(model: object, split_x: np.ndarray, y: np.ndarray) -> float:
        predicted, _ = predict(model, split_x)  # type: ignore[arg-type]
        return float((predicted == y).mean())

    results: dict[str, dict[str, float]] = {}
    plain = train_classifier(biased, epochs=epochs, seed=seed, progress=False)
    debiased = train_debiased(
        biased,
        epochs=epochs,
        alpha=alpha,
        seed=seed,
        progress=False,
        vae_sees=vae_sees,
        uniform_share=uniform_share,
    )
    for name, clf in (("uniform sampling", plain), ("DB-VAE resampling", debiased.classifier)):
        results[name] = {
            "accuracy_overall": accuracy(clf, splits.test.x, splits.test.y),
            "accuracy_rare_style": accuracy(clf, rare_test.x, rare_test.y),
        }
    w = debiased.weights
    results["weights"] = {
        "rare_examples": float(rare.sum()),
        "rare_share_of_data": float(rare.mean()),
        "rare_share_of_sampling_mass": float(w[rare].sum()),
        "mean_weight_ratio_rare_to_common": float(w[rare].mean() / w[~rare].mean()),
        "effective_sample_size": effective_sample_size(w),
        "examples": float(len(w)),
    }
    return results
