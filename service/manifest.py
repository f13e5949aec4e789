"""The model manifest: the one contract between `training` (which writes it) and `service`
(which validates it before serving a model).

A model folder in the repository looks like::

    models/digits-vae/
        model.json      <- this Manifest, as JSON
        encoder.onnx    <- x -> (mean, log_var)
        decoder.onnx    <- z -> x
        README.md       <- model card (metrics, sample grid)

Only pydantic and the standard library are imported here so that training, the server and the
client can all depend on it. See docs/model-format.md for the field-by-field documentation.
"""

from __future__ import annotations

import hashlib
import math
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FILENAME = "model.json"
FORMAT_VERSION = 1


class ModelKind(StrEnum):
    """What the model is; decides which ONNX parts must exist and which operations it serves."""

    AE = "ae"
    VAE = "vae"
    CVAE = "cvae"
    GAN = "gan"
    CGAN = "cgan"


class PartRole(StrEnum):
    """The role of one ONNX file inside a model."""

    ENCODER = "encoder"
    DECODER = "decoder"
    GENERATOR = "generator"
    DISCRIMINATOR = "discriminator"


REQUIRED_PARTS: dict[ModelKind, tuple[PartRole, ...]] = {
    ModelKind.AE: (PartRole.ENCODER, PartRole.DECODER),
    ModelKind.VAE: (PartRole.ENCODER, PartRole.DECODER),
    ModelKind.CVAE: (PartRole.ENCODER, PartRole.DECODER),
    ModelKind.GAN: (PartRole.GENERATOR,),
    ModelKind.CGAN: (PartRole.GENERATOR,),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One named input or output of an ONNX graph. ``None`` in ``shape`` is a dynamic axis."""

    name: str
    shape: list[int | None]
    dtype: Literal["float32", "float16", "int64"] = "float32"


class OnnxPart(_Strict):
    """One ONNX file of the model, with the checksum the service verifies before loading it."""

    path: str = Field(description="File name relative to the model folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fp16_path: str | None = Field(
        default=None, description="Optional half-precision copy of the same graph."
    )
    fp16_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _fp16_pair(self) -> OnnxPart:
        if (self.fp16_path is None) != (self.fp16_sha256 is None):
            raise ValueError("fp16_path and fp16_sha256 go together")
        return self

    @field_validator("path", "fp16_path")
    @classmethod
    def _relative_inside_folder(cls, value: str | None) -> str | None:
        if value is None:
            return value
        p = Path(value)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a path inside the model folder")
        if not value.endswith(".onnx"):
            raise ValueError("must name an .onnx file")
        return value


class Normalization(_Strict):
    """Per-feature map between the units clients send and the model's own values:
    raw = offset + scale * model_value. Tabular models are trained on min-max scaled features;
    with this in the manifest the service takes and returns raw values."""

    offset: list[float] = Field(description="One value per feature: raw value at model value 0.")
    scale: list[float] = Field(description="One positive value per feature: raw units per 1.0.")

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.offset) != len(self.scale):
            raise ValueError("offset and scale must have one value per feature")
        if not all(math.isfinite(v) for v in self.offset) or not all(
            math.isfinite(v) and v > 0 for v in self.scale
        ):
            raise ValueError("offsets must be finite and scales finite and positive")
        return self


class InputSpec(_Strict):
    """What one example looks like: its shape without the batch axis, and its value range."""

    shape: list[int] = Field(
        description="Shape of one example, e.g. [1, 28, 28] for MNIST or [64] for flat digits."
    )
    value_range: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="Range of the model's values. Inputs outside it are refused, unless "
        "`normalization` is set: then inputs are raw values of any size (unusual values are what "
        "anomaly scores are for) and the model sees them mapped and clipped into this range.",
    )
    normalization: Normalization | None = Field(
        default=None, description="Raw-unit mapping of tabular inputs (see Normalization)."
    )
    image_shape: tuple[int, int, int] | None = Field(
        default=None,
        description="(channels, height, width) when examples are images; used to convert PNG/JPEG "
        "uploads and to render outputs as PNG.",
    )
    binarized: bool = Field(
        default=False,
        description="The likelihood was fit to binary inputs (training drew each pixel as 0 or "
        "1 with its intensity as probability): the likelihood scores (elbo, iwae, "
        "elbo-complexity) are likelihoods of 0/1 inputs. Other inputs are still scored, and the "
        "answer says so (`input_warnings`).",
    )

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if not self.shape or any(d <= 0 for d in self.shape):
            raise ValueError("shape must be non-empty with positive sizes")
        lo, hi = self.value_range
        if not lo < hi:
            raise ValueError("value_range must be (low, high) with low < high")
        if self.normalization is not None and len(self.normalization.offset) != self.size:
            raise ValueError("normalization needs one offset and one scale per input value")
        if self.image_shape is not None:
            c, h, w = self.image_shape
            if c not in (1, 3) or c * h * w != self.size:
                raise ValueError(
                    "image_shape must have 1 or 3 channels and as many values as shape"
                )
        return self

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Calibration(_Strict):
    """Distribution of an anomaly score on held-out normal data, and the threshold derived from it.

    ``threshold`` is the score at ``percentile`` of the held-out scores: a new example scoring above
    it is flagged as an outlier, so about (100 - percentile)% of normal data is flagged.
    """

    method: str = Field(description="Anomaly score this calibrates, e.g. 'reconstruction'.")
    dataset: str = Field(description="Held-out data the scores were computed on.")
    n: int = Field(gt=0, description="Number of held-out examples scored.")
    quantiles: dict[str, float] = Field(description="Score quantiles keyed by probability, '0.5'.")
    percentile: float = Field(gt=0, lt=100)
    threshold: float

    def robust_scale(self, log: bool = False) -> tuple[float, float] | None:
        """(median, interquartile range) of the held-out scores, or of their logs: the centre and
        scale that make scores of different methods comparable (a robust z-score, which one
        outlier in the held-out data cannot move). None where the quantiles lack them or the
        range is empty."""
        try:
            q25, q50, q75 = (self.quantiles[q] for q in ("0.25", "0.5", "0.75"))
        except KeyError:
            return None
        if log:
            if min(q25, q50, q75) <= 0:
                return None
            q25, q50, q75 = math.log(q25), math.log(q50), math.log(q75)
        spread = q75 - q25
        if not (math.isfinite(q50) and math.isfinite(spread) and spread > 0):
            return None
        return q50, spread


class Manifest(_Strict):
    """A served model: its identity, the ONNX parts, the data contract, calibration and metrics."""

    format_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    kind: ModelKind
    description: str = ""
    input: InputSpec
    latent_dim: int = Field(gt=0)
    num_classes: int | None = Field(
        default=None, gt=1, description="Number of class labels for conditional models."
    )
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        default="bernoulli",
        description="Observation model of the decoder output, used by the elbo/iwae scores.",
    )
    parts: dict[PartRole, OnnxPart]
    calibration: dict[str, Calibration] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="Training config.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final evaluation figures.")

    @model_validator(mode="after")
    def _check_parts(self) -> Manifest:
        missing = [r.value for r in REQUIRED_PARTS[self.kind] if r not in self.parts]
        if missing:
            raise ValueError(f"a {self.kind.value} model needs parts {missing}")
        conditional = self.kind in (ModelKind.CVAE, ModelKind.CGAN)
        if conditional != (self.num_classes is not None):
            raise ValueError("num_classes is required for conditional kinds and only for them")
        return self

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((folder / MANIFEST_FILENAME).read_bytes())

    def save(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILENAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large graphs do not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
