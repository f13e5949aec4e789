"""The experiments behind docs/evaluation.md: one-class anomaly AUROC per digit, and DB-VAE
debiasing on a biased MNIST. Each prints a markdown table and returns its numbers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from service.manifest import Manifest
from training.calibrate import calibrate
from training.classifier import predict, train_classifier
from training.config import ModelConfig, TrainConfig, to_dict
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
    splits: Splits,
    epochs: int = 20,
    latent_dim: int = 16,
    seed: int = 0,
    arch: str = "mlp",
    keep: Path | None = None,
) -> dict[int, dict[str, float]]:
    """For each digit: a VAE trained on that digit only, calibrated on the digit's validation
    images (which the `combined` score standardises by), scores the whole test set.

    With `keep`, the models stay in that folder, and a model already there with the same
    training configuration is scored again instead of trained again."""
    rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = keep if keep is not None else Path(tmp)
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
            folder = root / f"one-class-{digit}"
            if not _trained_as(folder, cfg, tc):
                ckpt = train(cfg, tc, root / f"run{digit}", splits=splits, progress=False)
                export_checkpoint(load_checkpoint(ckpt), folder, f"one-class-{digit}")
            heldout = f"{splits.name} validation split, digit {digit}"
            calibrate(folder, splits.val.only(digit), heldout)
            rows[digit] = one_class_auroc(folder, splits.test, digit)
    return rows


def _trained_as(folder: Path, cfg: ModelConfig, tc: TrainConfig) -> bool:
    """An exported model in `folder` whose manifest records this very training configuration."""
    try:
        training = Manifest.load(folder).training
    except (OSError, ValueError):
        return False
    wanted = json.loads(json.dumps({"model": to_dict(cfg), "train": to_dict(tc)}))
    return bool(
        training.get("model") == wanted["model"] and training.get("train") == wanted["train"]
    )


def seed_summary(runs: list[dict[int, dict[str, float]]]) -> str:
    """Markdown: each digit's AUROC per method as mean +- sd over the runs (one per seed)."""
    methods = list(next(iter(runs[0].values())))
    lines = [
        "| normal digit | " + " | ".join(methods) + " |",
        "| --- |" + " --- |" * len(methods),
    ]

    def cell(values: list[float]) -> str:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return f"{np.mean(values):.3f} ± {sd:.3f}"

    for digit in runs[0]:
        cells = [cell([run[digit][m] for run in runs]) for m in methods]
        lines.append(f"| {digit} | " + " | ".join(cells) + " |")
    means = [cell([float(np.mean([r[m] for r in run.values()])) for run in runs]) for m in methods]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)


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
