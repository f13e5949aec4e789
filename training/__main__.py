"""Command line: `python -m training train|export|calibrate|evaluate|debias ...`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

Dataset = Annotated[str, typer.Option(help="digits | mnist | fashion-mnist")]
DataDir = Annotated[str | None, typer.Option(help="Folder with IDX files (mnist)")]


def _flat(dataset: str, arch: str) -> bool:
    """Flat vectors only for the MLP digits models; MNIST-like data stays [1, 28, 28]."""
    return dataset == "digits" and arch == "mlp"


@app.command()
def train(
    model: Annotated[str, typer.Option(help="ae | vae | cvae | gan | cgan")] = "vae",
    arch: Annotated[str, typer.Option(help="mlp | conv (GANs are always conv)")] = "mlp",
    binarize: Annotated[bool, typer.Option(help="Dynamic binarization of inputs")] = False,
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Run folder for checkpoint.pt")] = Path("runs/run"),
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 2e-3,
    latent_dim: int = 8,
    hidden: Annotated[str, typer.Option(help="Hidden sizes (MLP) or base channels (conv)")] = (
        "128,64"
    ),
    beta: Annotated[float, typer.Option(help="KL weight (beta-VAE when > 1)")] = 1.0,
    normal_class: Annotated[int | None, typer.Option(help="Train on this class only")] = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
) -> None:
    """Train a model and write OUT/checkpoint.pt after every epoch."""
    from training.config import ModelConfig, TrainConfig
    from training.data import load_dataset
    from training.gan import train_gan
    from training.train import train as run_training

    if model in ("gan", "cgan"):
        arch = "conv"
    splits = load_dataset(dataset, data_dir, seed=seed, flat=_flat(dataset, arch))
    model_cfg = ModelConfig(
        kind=model,
        arch=arch,
        input_shape=splits.input_shape,
        image_shape=splits.image_shape,
        latent_dim=latent_dim,
        hidden=tuple(int(h) for h in hidden.split(",")),
        num_classes=splits.num_classes if model in ("cvae", "cgan") else None,
        beta=beta,
    )
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
    )
    if model in ("gan", "cgan"):
        path = train_gan(model_cfg, train_cfg, out, splits=splits)
    else:
        path = run_training(model_cfg, train_cfg, out, splits=splits, resume=resume)
    typer.echo(f"checkpoint: {path}")


@app.command()
def export(
    checkpoint: Path,
    out: Annotated[Path, typer.Option(help="Model folder to write")],
    name: Annotated[str | None, typer.Option(help="Model name (default: folder name)")] = None,
    version: str = "1",
    description: str = "",
    calibrate_percentile: float = 99.0,
    fp16: Annotated[bool, typer.Option(help="Also write fp16 copies of every part")] = False,
) -> None:
    """Export CHECKPOINT to ONNX, check it against PyTorch, calibrate and write the model card."""
    from training.calibrate import calibrate as run_calibration
    from training.calibrate import methods_for
    from training.card import reproduce_commands, write_card, write_sample_grid
    from training.data import load_dataset
    from training.export import export_checkpoint
    from training.train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    manifest = export_checkpoint(ckpt, out, name or out.name, version, description, half=fp16)
    tc = ckpt.train_config
    splits = load_dataset(
        tc.dataset, tc.data_dir, seed=tc.seed, flat=len(ckpt.model_config.input_shape) == 1
    )
    manifest = run_calibration(
        out,
        splits.val,
        f"{tc.dataset} validation split",
        methods=methods_for(manifest),
        percentile=calibrate_percentile,
    )
    write_sample_grid(out)
    write_card(out, manifest, reproduce=reproduce_commands(ckpt, out))
    typer.echo(f"exported {manifest.name} to {out}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
