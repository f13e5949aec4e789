"""Configs that travel inside every checkpoint, so export and evaluation rebuild the exact model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Architecture of one model family member."""

    kind: str = "vae"  # ae | vae | cvae | gan | cgan
    arch: str = "mlp"  # mlp | conv
    input_shape: tuple[int, ...] = (64,)
    image_shape: tuple[int, int, int] | None = (1, 8, 8)
    latent_dim: int = 8
    hidden: tuple[int, ...] = (128, 64)
    res_blocks: int = 0  # conv VAEs: residual blocks after each resolution change
    num_classes: int | None = None
    beta: float = 1.0
    pack: int = 1  # GANs: the discriminator judges packs of this many images (PacGAN)
    clusters: int = 0  # unconditional GANs: condition on this many k-means clusters of the data

    @property
    def conditions(self) -> int:
        """How many values the generator's one-hot input takes: classes or clusters (0: none)."""
        return self.num_classes or self.clusters

    @property
    def served_latent_dim(self) -> int:
        """The served z: the latent code, and for a self-conditioned GAN one more coordinate
        that picks the cluster."""
        return self.latent_dim + (1 if self.clusters else 0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["hidden"] = tuple(d["hidden"])
        if d.get("image_shape") is not None:
            d["image_shape"] = tuple(d["image_shape"])
        return cls(**d)


@dataclass
class TrainConfig:
    """How a model was trained: data, optimisation, seed."""

    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    normal_class: int | None = None  # one-class training for anomaly detection
    binarize: bool = False  # dynamic binarization: fresh x ~ Bernoulli(pixel) every batch
    image_shape: tuple[int, int, int] | None = None  # images: (channels, height, width)
    label_column: str | None = None  # arrays (.csv): the column holding class labels
    importance_samples: int = 1  # > 1: train on the IWAE bound with this many samples
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if d.get("image_shape") is not None:
            d["image_shape"] = tuple(d["image_shape"])
        return cls(**d)


def to_dict(cfg: ModelConfig | TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
