"""Command line: `python -m training train|export|calibrate|evaluate|debias ...`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.data import Splits

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

Dataset = Annotated[str, typer.Option(help="digits | mnist | fashion-mnist | images | arrays")]
DataDir = Annotated[
    str | None,
    typer.Option(
        help="mnist, fashion-mnist: folder of IDX files (default: the download cache); "
        "images: folder (one subfolder per class); arrays: a .npy, .npz or .csv file"
    ),
]
ImageSize = Annotated[
    str, typer.Option(help="images: HEIGHTxWIDTH every image is resized to, e.g. 28x28")
]
Channels = Annotated[int, typer.Option(help="images: 1 (grayscale) or 3 (RGB)")]
LabelColumn = Annotated[
    str | None, typer.Option(help="arrays (.csv): name or index of the label column")
]


def _flat(dataset: str, arch: str) -> bool:
    """Flat vectors for the MLP digits models and tabular arrays; images stay [C, H, W]."""
    return dataset == "arrays" or (dataset == "digits" and arch == "mlp")


def _image_shape(size: str, channels: int) -> tuple[int, int, int]:
    h, _, w = size.lower().partition("x")
    try:
        shape = (channels, int(h), int(w or h))
    except ValueError:
        raise typer.BadParameter(f"image size must look like 28x28, not {size!r}") from None
    if channels not in (1, 3) or min(shape[1:]) < 4:
        raise typer.BadParameter("images need 1 or 3 channels and at least 4x4 pixels")
    return shape


def _load_data(
    dataset: str,
    data_dir: str | None,
    *,
    seed: int = 0,
    flat: bool,
    image_shape: tuple[int, int, int] | None = None,
    label_column: str | None = None,
) -> Splits:
    """`load_dataset` for every command. What the loaders raise for data the user supplies (a
    dataset not yet downloaded, a folder without its files, an unreadable table) is printed as
    one line on stderr, exit code 2: the fix is a command or a flag, which the message names,
    and a stack trace through numpy would only hide it."""
    from training.data import load_dataset

    try:
        return load_dataset(
            dataset,
            data_dir,
            seed=seed,
            flat=flat,
            image_shape=image_shape or (1, 28, 28),
            label_column=label_column,
        )
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(2) from None


def _data_dir_here(tc: TrainConfig) -> str | None:
    """The folder a checkpoint was trained from, or None (the download cache) when that folder
    is not on this machine and the cache can hold the dataset: a checkpoint made elsewhere
    names the trainer's path, and MNIST is MNIST wherever it was read from."""
    from training.download import SOURCES

    if tc.data_dir is not None and tc.dataset in SOURCES and not Path(tc.data_dir).exists():
        return None
    return tc.data_dir


def _load_training_data(tc: TrainConfig, flat: bool, data_dir: str | None) -> Splits:
    """The data a run trains (or a checkpoint was trained) on, split as it was, read from
    `data_dir` (None: the download cache)."""
    return _load_data(
        tc.dataset,
        data_dir,
        seed=tc.seed,
        flat=flat,
        image_shape=tc.image_shape,
        label_column=tc.label_column,
    )


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="mnist | fashion-mnist")],
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Default: $LATENTSERVE_DATA_CACHE or ~/.cache/latentserve/datasets"),
    ] = None,
) -> None:
    """Download a dataset's IDX files into the cache (checked before they are kept); later
    commands find it there when no --data-dir is given."""
    from training.download import download as fetch

    typer.echo(f"{name}: {fetch(name, cache_dir)}")


@app.command()
def train(
    model: Annotated[str, typer.Option(help="ae | vae | cvae | gan | cgan")] = "vae",
    arch: Annotated[str, typer.Option(help="mlp | conv (GANs are always conv)")] = "mlp",
    binarize: Annotated[bool, typer.Option(help="Dynamic binarization of inputs")] = False,
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    image_size: ImageSize = "28x28",
    channels: Channels = 1,
    label_column: LabelColumn = None,
    out: Annotated[Path, typer.Option(help="Run folder for checkpoint.pt")] = Path("runs/run"),
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 2e-3,
    latent_dim: int = 8,
    hidden: Annotated[str, typer.Option(help="Hidden sizes (MLP) or base channels (conv)")] = (
        "128,64"
    ),
    beta: Annotated[float, typer.Option(help="KL weight (beta-VAE when > 1)")] = 1.0,
    pack: Annotated[
        int,
        typer.Option(min=1, help="GANs: the discriminator judges packs of this many images"),
    ] = 1,
    clusters: Annotated[
        int,
        typer.Option(
            min=0,
            help="GANs: condition on this many k-means clusters of the data, drawn in their "
            "data shares (a self-conditioned GAN; no labels used)",
        ),
    ] = 0,
    importance_samples: Annotated[
        int,
        typer.Option(min=1, help="Train a VAE on the IWAE bound with this many samples (> 1)"),
    ] = 1,
    res_blocks: Annotated[
        int,
        typer.Option(min=0, help="Conv autoencoders: residual blocks after each resolution change"),
    ] = 0,
    normal_class: Annotated[int | None, typer.Option(help="Train on this class only")] = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
) -> None:
    """Train a model and write OUT/checkpoint.pt after every epoch."""
    import torch

    from training.config import ModelConfig, TrainConfig
    from training.gan import packing_problem, train_gan
    from training.train import bounds_likelihood
    from training.train import train as run_training

    if model in ("gan", "cgan"):
        arch = "conv"
        if resume:  # train_gan starts from epoch 0: a silent restart would undo the run
            raise typer.BadParameter("GANs cannot resume yet: train them in one run")
    problem = packing_problem(model, pack, clusters, batch_size)
    if problem is not None:
        raise typer.BadParameter(problem[1], param_hint=problem[0])
    if importance_samples > 1 and not bounds_likelihood(model, beta):
        raise typer.BadParameter(
            "the IWAE objective bounds log p(x): use it with --model vae or cvae and --beta 1",
            param_hint="--importance-samples",
        )
    if res_blocks and (model not in ("ae", "vae", "cvae") or arch != "conv"):
        raise typer.BadParameter(
            "residual blocks belong to the conv autoencoders: use --arch conv with --model "
            "ae, vae or cvae",
            param_hint="--res-blocks",
        )
    if dataset == "arrays" and arch != "mlp":
        raise typer.BadParameter("tabular arrays need --arch mlp (and a VAE or AE)")
    train_cfg = TrainConfig(
        dataset=dataset,
        data_dir=data_dir,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        binarize=binarize,
        normal_class=normal_class,
        image_shape=_image_shape(image_size, channels) if dataset == "images" else None,
        label_column=label_column,
        importance_samples=importance_samples,
    )
    splits = _load_training_data(train_cfg, _flat(dataset, arch), data_dir)
    if arch == "conv" and splits.image_shape and any(d % 4 for d in splits.image_shape[1:]):
        raise typer.BadParameter(
            "convolutional models halve the image twice: sides must be multiples of 4 "
            "(e.g. --image-size 28x28)"
        )
    model_cfg = ModelConfig(
        kind=model,
        arch=arch,
        input_shape=splits.input_shape,
        image_shape=splits.image_shape,
        latent_dim=latent_dim,
        hidden=tuple(int(h) for h in hidden.split(",")),
        num_classes=splits.num_classes if model in ("cvae", "cgan") else None,
        beta=beta,
        pack=pack,
        clusters=clusters,
        res_blocks=res_blocks,
    )
    if model in ("gan", "cgan"):
        path = train_gan(model_cfg, train_cfg, out, splits=splits)
    else:
        path = run_training(model_cfg, train_cfg, out, splits=splits, resume=resume)
    typer.echo(f"checkpoint: {path}")
    metrics = torch.load(path, map_location="cpu", weights_only=True).get("metrics", {})
    if "epoch_s" in metrics:
        typer.echo(f"last epoch: {metrics['epoch_s']:.2f} s on {train_cfg.device}")


@app.command()
def export(
    checkpoint: Path,
    out: Annotated[Path, typer.Option(help="Model folder to write")],
    name: Annotated[str | None, typer.Option(help="Model name (default: folder name)")] = None,
    version: str = "1",
    description: str = "",
    calibrate_percentile: float = 99.0,
    fp16: Annotated[bool, typer.Option(help="Also write fp16 copies of every part")] = False,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="Where the checkpoint's dataset is on this machine (default: the folder it was "
            "trained from; for mnist and fashion-mnist the download cache if that is not here)"
        ),
    ] = None,
) -> None:
    """Export CHECKPOINT to ONNX, check it against PyTorch, calibrate and write the model card."""
    from training.calibrate import calibrate as run_calibration
    from training.card import reproduce_commands, write_card, write_sample_grid
    from training.export import export_checkpoint
    from training.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    tc = ckpt.train_config
    flat = len(ckpt.model_config.input_shape) == 1
    splits = _load_training_data(tc, flat, data_dir if data_dir is not None else _data_dir_here(tc))
    manifest = export_checkpoint(
        ckpt,
        out,
        name or out.name,
        version,
        description,
        half=fp16,
        normalization=splits.normalization,
    )
    manifest = run_calibration(
        out,
        splits.served(splits.val),
        f"{tc.dataset} validation split",
        percentile=calibrate_percentile,
    )
    if manifest.input.image_shape is not None:
        write_sample_grid(out)
    commands = reproduce_commands(ckpt, out, name, version, description)
    write_card(out, manifest, reproduce=commands)
    typer.echo(f"exported {manifest.name} to {out}")


@app.command()
def fp16(model_dirs: list[Path]) -> None:
    """Add fp16 copies of every part to exported model folders (served on GPUs with
    LATENTSERVE_PREFER_FP16=true; inputs and outputs stay float32). Parts that pick a cluster
    (self-conditioned GANs) stay fp32: rounding would move some inputs to another cluster."""
    from training.export import add_fp16_copies

    for model_dir in model_dirs:
        manifest = add_fp16_copies(model_dir)
        names = ", ".join(
            p.fp16_path or f"{p.path} (kept fp32: it picks a cluster)"
            for p in manifest.parts.values()
        )
        typer.echo(f"{manifest.name}: {names}")


@app.command()
def calibrate(
    model_dir: Path,
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    label_column: LabelColumn = None,
    percentile: float = 99.0,
    seed: int = 0,
) -> None:
    """Recompute the anomaly thresholds of MODEL_DIR on a validation split."""
    from service.manifest import Manifest
    from training.calibrate import calibrate as run_calibration
    from training.card import refresh_calibration

    manifest = Manifest.load(model_dir)
    splits = _load_data(
        dataset,
        data_dir,
        seed=seed,
        flat=len(manifest.input.shape) == 1,
        image_shape=manifest.input.image_shape,
        label_column=label_column,
    )
    manifest = run_calibration(
        model_dir,
        splits.served(splits.val),
        f"{dataset} validation split",
        percentile=percentile,
    )
    refresh_calibration(model_dir, manifest)
    for c in manifest.calibration.values():
        typer.echo(f"{c.method}: threshold {c.threshold:.5g} at p{c.percentile:g} (n={c.n})")


@app.command()
def evaluate(
    model_dir: Path,
    dataset: Dataset = "mnist",
    data_dir: DataDir = None,
    label_column: LabelColumn = None,
    k: Annotated[int, typer.Option(help="Importance samples for the IWAE bound")] = 1000,
    n: Annotated[int | None, typer.Option(help="Evaluate the first n test images")] = None,
    classifier: Annotated[Path, typer.Option(help="Cached evaluation classifier")] = Path(
        "runs/classifier/mnist-cnn.pt"
    ),
    samples: int = 10000,
    write: Annotated[
        bool, typer.Option(help="Record the figures in the manifest and the model card")
    ] = False,
) -> None:
    """Likelihood (VAEs) and sample quality (every model that samples) of an exported model."""
    import json

    from service.capabilities import Capabilities, ScoreMethod
    from service.manifest import Manifest
    from training.calibrate import load_exported
    from training.classifier import load_or_train
    from training.evaluate import likelihood_metrics, sample_quality, tabular_scores

    manifest = Manifest.load(model_dir)
    splits = _load_data(
        dataset,
        data_dir,
        flat=len(manifest.input.shape) == 1,
        image_shape=manifest.input.image_shape,
        label_column=label_column,
    )
    report: dict[str, float] = {}
    if dataset == "arrays":
        report.update(tabular_scores(load_exported(model_dir), splits.served(splits.test), k=k))
    elif ScoreMethod.IWAE in Capabilities.of(manifest).score_methods and not manifest.conditional:
        report.update(likelihood_metrics(load_exported(model_dir), splits.test, k=k, n=n))
    if manifest.input.image_shape is not None and dataset in ("mnist", "fashion-mnist"):
        clf = load_or_train(classifier, splits.train)
        report.update(sample_quality(model_dir, clf, splits.val, splits.test, n=samples))
    typer.echo(json.dumps(report, indent=2))
    if write:
        from training.card import record_metrics

        record_metrics(model_dir, report)
        typer.echo(f"recorded in {model_dir}/model.json and README.md")


@app.command()
def likelihood(
    checkpoint: Path,
    k: Annotated[int, typer.Option(min=1, help="Importance samples for the IWAE bound")] = 1000,
    n: Annotated[int | None, typer.Option(help="Evaluate the first n test images")] = None,
    device: str = "cpu",
    data_dir: Annotated[
        str | None,
        typer.Option(help="Where the checkpoint's dataset is (default: as for export)"),
    ] = None,
) -> None:
    """-ELBO and the IWAE bound of a VAE checkpoint on its dataset's binarized test images,
    computed by PyTorch (on a GPU with --device cuda: seconds, where `evaluate` on the exported
    model takes the CPU an hour); JSON on stdout."""
    import json

    import torch

    from training.likelihood import checkpoint_likelihood
    from training.train import load_checkpoint

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("PyTorch sees no CUDA device here", param_hint="--device")
    ckpt = load_checkpoint(checkpoint)
    tc = ckpt.train_config
    if ckpt.model_config.kind != "vae" or not tc.binarize:
        raise typer.BadParameter(
            "the bounds are for unconditional VAEs trained on binarized data",
            param_hint="CHECKPOINT",
        )
    flat = len(ckpt.model_config.input_shape) == 1
    splits = _load_training_data(tc, flat, data_dir if data_dir is not None else _data_dir_here(tc))
    report = checkpoint_likelihood(ckpt.model, splits.test, k=k, n=n, device=device)
    typer.echo(json.dumps({"checkpoint": str(checkpoint), "epoch": ckpt.epoch, **report}))


@app.command()
def debias(
    dataset: Dataset = "mnist",
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Per-example weights (.npy or .csv)")] = Path(
        "runs/debias/weights.npy"
    ),
    epochs: int = 3,
    latent_dim: int = 16,
    bins: int = 10,
    alpha: float = 0.5,
    combine: Annotated[str, typer.Option(help="product | max")] = "product",
    uniform_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of the sampling mass kept uniform")
    ] = 0.5,
    seed: int = 0,
) -> None:
    """Train a classifier with DB-VAE resampling and write the final per-example weights."""
    from training.debias import save_weights, train_debiased

    if combine not in ("product", "max"):
        raise typer.BadParameter("combine must be product or max")
    splits = _load_data(dataset, data_dir, seed=seed, flat=False)
    result = train_debiased(
        splits.train,
        epochs,
        latent_dim,
        bins,
        alpha,
        "product" if combine == "product" else "max",
        seed=seed,
        uniform_share=uniform_share,
    )
    typer.echo(
        f"weights for {len(result.weights)} training examples: {save_weights(out, result.weights)}"
    )


@app.command()
def experiment(
    name: Annotated[str, typer.Argument(help="one-class | debias")],
    dataset: Dataset = "mnist",
    data_dir: DataDir = None,
    epochs: Annotated[
        int | None, typer.Option(help="training epochs (default: one-class 20, debias 3)")
    ] = None,
    rare_fraction: float = 0.015,
    arch: Annotated[str, typer.Option(help="mlp | conv (one-class models)")] = "mlp",
    latent_dim: int = 16,
    style: Annotated[
        str, typer.Option(help="debias: the rare style, invert | thicken | mirror")
    ] = "invert",
    alpha: Annotated[float, typer.Option(help="debias: density smoothing")] = 0.5,
    vae_data: Annotated[
        str,
        typer.Option(help="debias: batches the VAE learns from, uniform | resampled"),
    ] = "uniform",
    uniform_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="debias: share of the sampling mass kept uniform"),
    ] = 0.5,
    seed: int = 0,
    seeds: Annotated[
        int, typer.Option(min=1, help="one-class: run seeds SEED .. SEED+SEEDS-1, table mean +- sd")
    ] = 1,
    keep: Annotated[
        Path | None,
        typer.Option(
            help="one-class: keep the models under KEEP/seed-N (a model already there with the "
            "same training configuration is scored, not trained again)"
        ),
    ] = None,
) -> None:
    """Run an experiment of docs/evaluation.md and print its table (JSON)."""
    import json

    from training.debias import Style
    from training.experiments import debias_experiment, one_class_table, seed_summary

    if name == "one-class":
        epochs = 20 if epochs is None else epochs
        runs = []
        for run_seed in range(seed, seed + seeds):
            splits = _load_data(dataset, data_dir, seed=run_seed, flat=False)
            folder = None if keep is None else keep / f"seed-{run_seed}"
            rows = one_class_table(
                splits, epochs=epochs, latent_dim=latent_dim, seed=run_seed, arch=arch, keep=folder
            )
            typer.echo(json.dumps({"seed": run_seed, "auroc": rows}, indent=2))
            for method in next(iter(rows.values())):
                mean = sum(r[method] for r in rows.values()) / len(rows)
                typer.echo(f"seed {run_seed}: mean AUROC ({method}): {mean:.4f}")
            runs.append(rows)
        typer.echo(seed_summary(runs))
        return
    splits = _load_data(dataset, data_dir, seed=seed, flat=False)
    if name == "debias":
        styles: dict[str, Style] = {"thicken": "thicken", "mirror": "mirror", "invert": "invert"}
        if style not in styles:
            raise typer.BadParameter(f"style must be one of {', '.join(styles)}")
        chosen = styles[style]
        if vae_data not in ("uniform", "resampled"):
            raise typer.BadParameter("vae-data must be uniform or resampled")
        results = debias_experiment(
            splits,
            rare_fraction,
            3 if epochs is None else epochs,
            seed,
            chosen,
            alpha,
            "uniform" if vae_data == "uniform" else "resampled",
            uniform_share,
        )
        typer.echo(json.dumps(results, indent=2))
    else:
        raise typer.BadParameter("name must be one-class or debias")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
