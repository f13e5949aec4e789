"""Model cards: README.md with the evaluation table and how to reproduce, plus a sample grid PNG."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from service.manifest import Manifest
from training.calibrate import load_exported
from training.download import SOURCES
from training.train import Checkpoint, training_phase


def image_grid(
    images: np.ndarray, image_shape: tuple[int, int, int], cols: int = 8, scale: int = 1
) -> Image.Image:
    """(N, ...) values in [0, 1] -> one PNG-ready grid image."""
    c, h, w = image_shape
    n = len(images)
    rows = (n + cols - 1) // cols
    imgs = images.reshape(n, c, h, w)
    grid = np.ones((c, rows * (h + 1) + 1, cols * (w + 1) + 1), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            imgs[i]
        )
    arr = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def write_sample_grid(folder: Path, n: int = 64, seed: int = 0) -> Path:
    model = load_exported(folder)
    shape = model.manifest.input.image_shape
    if shape is None:
        raise ValueError("model has no image_shape")
    labels = None
    if model.manifest.num_classes:
        labels = np.arange(n, dtype=np.int64) % model.manifest.num_classes
    x, _ = asyncio.run(model.sample(n, seed=seed, labels=labels))
    scale = max(1, 224 // (8 * shape[2]))
    path = folder / "samples.png"
    image_grid(x, shape, cols=model.manifest.num_classes or 8, scale=scale).save(path)
    return path


def write_card(
    folder: Path, manifest: Manifest, reproduce: list[str], extra_sections: str = ""
) -> Path:
    lines = [
        f"# {manifest.name} (version {manifest.version})",
        "",
        manifest.description or f"A {manifest.kind.value} model.",
        "",
        f"- kind: `{manifest.kind.value}`; input shape `{manifest.input.shape}` in "
        f"{list(manifest.input.value_range)}; latent size {manifest.latent_dim}"
        + (f"; {manifest.num_classes} classes" if manifest.num_classes else ""),
        f"- parts: {', '.join(f'`{p.path}`' for p in manifest.parts.values())}",
        "",
        "## Samples",
        "",
        "![samples](samples.png)",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.4g} |" for k, v in sorted(manifest.metrics.items())],
        "",
        *_calibration_section(manifest),
        "",
        extra_sections,
        "## Reproduce",
        "",
        "```bash",
        *reproduce,
        "```",
        "",
    ]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def reproduce_commands(
    ckpt: Checkpoint,
    out: Path,
    name: str | None = None,
    version: str = "1",
    description: str = "",
) -> list[str]:
    """The exact commands that rebuild this model folder, from the checkpoint's own config and
    the export's options (name, version and description go into the manifest).

    MNIST and Fashion-MNIST come from the download cache, not from the `--data-dir` the run
    happened to use: that folder was on the trainer's machine, and a reader's clone has only
    the cache that `python -m training download` fills."""
    m, t = ckpt.model_config, ckpt.train_config
    run = f"runs/{out.name}"
    phases = ckpt.history or [training_phase(ckpt.epoch, t)]
    cached = t.dataset in SOURCES  # what `python -m training download` fetches
    download = [f"python -m training download {t.dataset}"] if cached else []
    train = [
        f"python -m training train --model {m.kind} --arch {m.arch} --dataset {t.dataset}"
        + (f" --data-dir {t.data_dir}" if t.data_dir and not cached else "")
        + (
            f" --image-size {t.image_shape[1]}x{t.image_shape[2]} --channels {t.image_shape[0]}"
            if t.image_shape is not None and t.dataset == "images"
            else ""
        )
        + (f" --label-column {t.label_column}" if t.label_column is not None else "")
        + (" --binarize" if t.binarize else "")
        + (f" --normal-class {t.normal_class}" if t.normal_class is not None else "")
        + f" --epochs {int(phase['to_epoch'])} --batch-size {t.batch_size} --lr {phase['lr']:g}"
        f" --latent-dim {m.latent_dim} --hidden {','.join(map(str, m.hidden))}"
        f" --beta {m.beta:g}"
        + (f" --pack {m.pack}" if m.pack > 1 else "")
        + (f" --clusters {m.clusters}" if m.clusters else "")
        + (f" --res-blocks {m.res_blocks}" if m.res_blocks else "")
        + (
            f" --importance-samples {int(phase['importance_samples'])}"
            if "importance_samples" in phase
            else ""
        )
        + f" --seed {t.seed} --out {run}"
        + (" --resume" if i else "")
        for i, phase in enumerate(phases)
    ]
    export = (
        f"python -m training export {run}/checkpoint.pt --out {out}"
        + (f" --name {shlex.quote(name)}" if name and name != out.name else "")
        + (f" --version {shlex.quote(version)}" if version != "1" else "")
        + (f" --description {shlex.quote(description)}" if description else "")
    )
    return [*download, *train, export]


def record_metrics(folder: Path, metrics: dict[str, float]) -> Manifest:
    """Merge evaluation figures into the manifest and the card's metrics table (the ONNX files
    and their checksums are untouched, so a served model can be evaluated in place)."""
    manifest = Manifest.load(folder)
    manifest = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
    manifest.save(folder)
    card = folder / "README.md"
    if card.exists():
        text = card.read_text()
        head, sep, rest = text.partition("## Metrics\n")
        if sep:
            _, nxt, tail = rest.partition("\n## ")
            table = [
                "",
                "| metric | value |",
                "| --- | --- |",
                *[f"| {k} | {v:.4g} |" for k, v in sorted(manifest.metrics.items())],
                "",
            ]
            card.write_text(head + sep + "\n".join(table) + nxt + tail)
    return manifest


_CALIBRATION_HEADING = "## Anomaly-score calibration"


def _calibration_section(manifest: Manifest) -> list[str]:
    return [
        _CALIBRATION_HEADING,
        "",
        "| method | held-out data | n | percentile | threshold | median |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {c.method} | {c.dataset} | {c.n} | {c.percentile:g} | {c.threshold:.4g} | "
            f"{c.quantiles.get('0.5', float('nan')):.4g} |"
            for c in manifest.calibration.values()
        ],
    ]


def refresh_calibration(folder: Path, manifest: Manifest) -> None:
    """Rewrite the card's calibration table after `calibrate`, leaving the rest of the card."""
    path = folder / "README.md"
    if not path.is_file():
        return
    text = path.read_text()
    start = text.find(_CALIBRATION_HEADING)
    if start < 0:
        return
    end = text.find("\n## ", start + len(_CALIBRATION_HEADING))
    end = len(text) if end < 0 else end + 1
    table = "\n".join(_calibration_section(manifest)) + "\n\n"
    path.write_text(text[:start] + table + text[end:])
