"""Request and response bodies, named by role. Array fields are nested JSON arrays of numbers;
their shapes are checked against the model's manifest (see GET /models/{name})."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OutputFormat = Literal["array", "png"]

_MODEL = Field(
    default=None,
    description="Model name; the server's default model when omitted.",
    examples=["digits-vae"],
)
_LABELS = Field(
    default=None,
    description="Class labels for conditional models: one per example, or one for all.",
    examples=[[3]],
)
_OUTPUT_FORMAT: Any = Field(
    default="array",
    description="'array': nested float arrays; 'png': one base64 PNG per example. Send "
    "`Accept: image/png` for a single PNG grid, `Accept: application/x-npy` for binary.",
)
_INPUTS = Field(
    default=None,
    description="Examples as a nested array [n, *input_shape] (or one example of input_shape), "
    "values in the model's value_range.",
    examples=[[[0.0] * 64]],
)
_IMAGES = Field(
    default=None,
    description="Examples as base64 PNG/JPEG images (data URLs accepted); converted to the "
    "model's shape and value range. Multipart uploads arrive here too (form field 'images').",
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class _WithInputs(_Request):
    model: str | None = _MODEL
    inputs: Any = _INPUTS
    images: list[str] | list[bytes] | None = _IMAGES
    labels: Any = _LABELS

    @model_validator(mode="after")
    def _one_source(self) -> _WithInputs:
        if (self.inputs is None) == (self.images is None):
            raise ValueError("give exactly one of 'inputs' (arrays) or 'images' (PNG/JPEG)")
        return self


class SampleRequest(_Request):
    model: str | None = _MODEL
    n: int = Field(default=1, ge=1, description="Number of samples.", examples=[16])
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**63,
        description="Seed for the latent draw; the same seed gives the same samples. "
        "A random one is chosen (and returned) when omitted.",
        examples=[42],
    )
    temperature: float = Field(
        default=1.0, gt=0, le=10, description="Scale of z ~ N(0, temperature² I).", examples=[0.8]
    )
    labels: Any = _LABELS
    return_latents: bool = Field(default=False, description="Also return the latents z.")
    output_format: OutputFormat = _OUTPUT_FORMAT


class EncodeRequest(_WithInputs):
    samples_per_input: int = Field(
        default=0, ge=0, description="Also draw this many z ~ q(z|x) per input.", examples=[0]
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seed for the z draws.")


class DecodeRequest(_Request):
    model: str | None = _MODEL
    z: Any = Field(description="Latents, nested array [n, latent_dim].", examples=[[[0.0] * 8]])
    labels: Any = _LABELS
    output_format: OutputFormat = _OUTPUT_FORMAT


class ReconstructRequest(_WithInputs):
    output_format: OutputFormat = _OUTPUT_FORMAT


class InterpolateRequest(_Request):
    model: str | None = _MODEL
    inputs: Any = Field(
        default=None, description="Two examples [2, *input_shape]: start and end (encoded first)."
    )
    images: list[str] | list[bytes] | None = Field(
        default=None, description="Two base64 images: start and end."
    )
    z: Any = Field(default=None, description="Two latents [2, latent_dim]: start and end.")
    steps: int = Field(default=8, ge=2, description="Points from start to end, both included.")
    mode: Literal["linear", "spherical"] = Field(
        default="linear", description="'spherical' (slerp) keeps the norm typical of N(0, I)."
    )
    labels: Any = _LABELS
    output_format: OutputFormat = _OUTPUT_FORMAT

    @model_validator(mode="after")
    def _one_source(self) -> InterpolateRequest:
        if sum(v is not None for v in (self.inputs, self.images, self.z)) != 1:
            raise ValueError("give exactly one of 'inputs', 'images' or 'z' (two of them)")
        return self


class AnomalyScoreRequest(_WithInputs):
    method: Literal["reconstruction", "elbo", "iwae", "discriminator"] = Field(
        default="reconstruction",
        description="reconstruction: mean squared error of x against decode(mean(x)), "
        "deterministic. elbo: -ELBO in nats (k samples of q(z|x)). iwae: the importance-weighted "
        "bound on -log p(x) in nats (k samples; tighter as k grows). discriminator: -log D(x) "
        "for GANs that export a discriminator.",
    )
    k: int = Field(default=16, ge=1, description="Samples per input for elbo and iwae.")
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seed for elbo/iwae sampling.")
    threshold: float | None = Field(
        default=None, description="Outlier threshold; the model's calibrated one when omitted."
    )
    per_pixel: bool = Field(default=False, description="Also return per-pixel scores.")


# -- responses ---------------------------------------------------------------------------------
class _Response(BaseModel):
    model: str = Field(description="Model that answered.", examples=["digits-vae"])
    version: str = Field(description="Its version.", examples=["1"])


class SampleResponse(_Response):
    seed: int = Field(description="Seed used (the request's or the one chosen).")
    shape: list[int] = Field(description="Shape of `samples`.", examples=[[16, 64]])
    samples: list[Any] | None = Field(default=None, description="Samples, [n, *input_shape].")
    images: list[str] | None = Field(default=None, description="Base64 PNGs (output_format=png).")
    latents: list[list[float]] | None = Field(default=None, description="z, [n, latent_dim].")


class EncodeResponse(_Response):
    mean: list[list[float]] = Field(description="Posterior means, [n, latent_dim].")
    log_var: list[list[float]] = Field(description="Posterior log-variances, [n, latent_dim].")
    z: list[list[list[float]]] | None = Field(
        default=None, description="Draws z ~ q(z|x), [n, samples_per_input, latent_dim]."
    )


class OutputsResponse(_Response):
    shape: list[int] = Field(description="Shape of `outputs`.")
    outputs: list[Any] | None = Field(default=None, description="[n, *input_shape].")
    images: list[str] | None = Field(default=None, description="Base64 PNGs (output_format=png).")
    latents: list[list[float]] | None = Field(
        default=None, description="Latents that were decoded (interpolation path)."
    )


class AnomalyScoreResponse(_Response):
    method: str
    scores: list[float] = Field(description="One score per input; higher is more anomalous.")
    threshold: float | None = Field(description="Threshold applied (null: none is known).")
    threshold_source: Literal["calibration", "request", "none"]
    is_outlier: list[bool] | None = Field(description="score > threshold, per input.")
    per_pixel: list[Any] | None = Field(default=None, description="[n, *input_shape] scores.")


class PartInfo(BaseModel):
    role: str
    file: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


class ModelInfo(BaseModel):
    name: str
    version: str | None = None
    kind: str | None = None
    status: Literal["ready", "failed"]
    error: str | None = None
    provider: str | None = Field(default=None, description="Execution provider in use: cuda/cpu.")
    input_shape: list[int] | None = None
    image_shape: list[int] | None = None
    value_range: list[float] | None = None
    latent_dim: int | None = None
    num_classes: int | None = None
    operations: list[str] = Field(default_factory=list, description="Endpoints it answers.")
    score_methods: list[str] = Field(default_factory=list)
    parts: list[PartInfo] = Field(default_factory=list)
    calibration: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    manifest: dict[str, Any] | None = None


class ModelList(BaseModel):
    default_model: str | None
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    models_loaded: list[str]
    models_failed: dict[str, str]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_input"])
    message: str
    field: str | None = Field(default=None, examples=["inputs"])


class ErrorBody(BaseModel):
    error: ErrorDetail
