"""Anomaly-score calibration: score held-out normal data with the *exported* model, through the
service's own runtime, so the threshold in the manifest matches what the server computes."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service.capabilities import ScoreMethod
from service.manifest import Calibration, Manifest
from service.runtime.batching import BatchingConfig
from service.runtime.model import GenerativeModel
from service.runtime.sessions import SessionConfig
from training.data import Split

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


# One worker for every model the offline tools load: a pool per model left one idle thread
# behind for each of the dozens of models an experiment exports and scores one after another.
_OFFLINE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-onnx")


def load_exported(folder: Path) -> GenerativeModel:
    """An exported model folder as the service runtime serves it (CPU, no batching), for
    calibration and evaluation."""
    return GenerativeModel.load(
        folder,
        SessionConfig(providers=("cpu",)),
        BatchingConfig(enabled=False),
        _OFFLINE_POOL,
    )


def score(
    model: GenerativeModel,
    x: np.ndarray,
    method: ScoreMethod | str,
    y: np.ndarray | None = None,
    k: int = 16,
    batch_size: int = 512,
) -> np.ndarray:
    """Scores of `x` in batches, exactly as POST /anomaly-score computes them."""
    score_method = ScoreMethod(method)

    async def run() -> np.ndarray:
        out = []
        for i in range(0, len(x), batch_size):
            labels = None if y is None or not model.manifest.conditional else y[i : i + batch_size]
            res = await model.anomaly_scores(
                x[i : i + batch_size].astype(np.float32), score_method, k=k, seed=i, labels=labels
            )
            out.append(res.scores)
        return np.concatenate(out)

    return asyncio.run(run())


def calibrate(
    folder: Path,
    heldout: Split,
    dataset: str,
    methods: tuple[ScoreMethod, ...] | None = None,
    percentile: float = 99.0,
) -> Manifest:
    """Add calibration for each method to the manifest in `folder` and save it.

    `combined` comes last, from a model loaded again: it standardises by the reconstruction and
    elbo-complexity calibrations, so it must see the new ones, and it is offered only once they
    exist."""
    model = load_exported(folder)
    wanted = model.capabilities.score_methods if methods is None else methods
    first = tuple(m for m in wanted if m is not ScoreMethod.COMBINED)
    stale = (ScoreMethod.COMBINED.value,)  # its scales change with the calibrations it reads
    manifest = _calibrated(model, first, heldout, dataset, percentile, drop=stale)
    if methods is None or ScoreMethod.COMBINED in methods:
        model = load_exported(folder)
        if ScoreMethod.COMBINED in model.capabilities.score_methods:
            combined = (ScoreMethod.COMBINED,)
            manifest = _calibrated(model, combined, heldout, dataset, percentile)
    return manifest


def _calibrated(
    model: GenerativeModel,
    methods: tuple[ScoreMethod, ...],
    heldout: Split,
    dataset: str,
    percentile: float,
    drop: tuple[str, ...] = (),
) -> Manifest:
    calibration = {k: v for k, v in model.manifest.calibration.items() if k not in drop}
    for method in methods:
        s = score(model, heldout.x, method, heldout.y)
        calibration[method.value] = Calibration(
            method=method.value,
            dataset=dataset,
            n=len(s),
            quantiles={f"{q:g}": float(np.quantile(s, q)) for q in QUANTILES},
            percentile=percentile,
            threshold=float(np.percentile(s, percentile)),
        )
    manifest = model.manifest.model_copy(update={"calibration": calibration})
    manifest.save(model.folder)
    return manifest
