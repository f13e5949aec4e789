"""Request and response bodies, named by role. Array fields are nested JSON arrays of numbers;
their shapes are checked against the model's manifest (see GET /models/{name})."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.capabilities import ScoreMethod
from service.runtime.dataplane import MAX_SEED, MAX_TEMPERATURE

OutputFormat = Literal["array", "png"]
MAX_PNG_SCALE = 16

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
    examples=["array"],
)
_SCALE: Any = Field(
    default=1,
    ge=1,
    le=MAX_PNG_SCALE,
    description="PNG outputs only: each pixel drawn as a scale x scale block (crisp, not "
    "blurred), e.g. 8 turns 8x8 digits into 64x64 images.",
    examples=[1],
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
    examples=[
        [
            "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAIAQAAAADcdoHbAAAADklEQVR4nGNgwAEYcAEAABkAAfNR8XkAAAAASUVORK5CYII="
        ]
    ],
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
        lt=MAX_SEED,
        description="Seed for the latent draw; the same seed gives the same samples. "
        "A random one is chosen (and returned) when omitted.",
        examples=[42],
    )
    temperature: float = Field(
        default=1.0,
        gt=0,
        le=MAX_TEMPERATURE,
        description="Scale of z ~ N(0, temperature² I).",
        examples=[0.8],
    )
    labels: Any = _LABELS
    return_latents: bool = Field(
        default=False, description="Also return the latents z.", examples=[False]
    )
    output_format: OutputFormat = _OUTPUT_FORMAT
    scale: int = _SCALE


class EncodeRequest(_WithInputs):
    samples_per_input: int = Field(
        default=0, ge=0, description="Also draw this many z ~ q(z|x) per input.", examples=[0]
    )
    seed: int = Field(
        default=0, ge=0, lt=MAX_SEED, description="Seed for the z draws.", examples=[0]
    )


class DecodeRequest(_Request):
    model: str | None = _MODEL
    z: Any = Field(description="Latents, nested array [n, latent_dim].", examples=[[[0.0] * 8]])
    labels: Any = _LABELS
    output_format: OutputFormat = _OUTPUT_FORMAT
    scale: int = _SCALE


class ReconstructRequest(_WithInputs):
    output_format: OutputFormat = _OUTPUT_FORMAT
    scale: int = _SCALE


class InterpolateRequest(_Request):
    model: str | None = _MODEL
    inputs: Any = Field(
        default=None,
        description="Two examples [2, *input_shape]: start and end (encoded first).",
        examples=[[[0.0] * 64, [1.0] * 64]],
    )
    images: list[str] | list[bytes] | None = Field(
        default=None, description="Two base64 images: start and end.", examples=[None]
    )
    z: Any = Field(
        default=None,
        description="Two latents [2, latent_dim]: start and end.",
        examples=[[[-1.0] * 8, [1.0] * 8]],
    )
    steps: int = Field(
        default=8, ge=2, description="Points from start to end, both included.", examples=[8]
    )
    mode: Literal["linear", "spherical"] = Field(
        default="linear",
        description="'spherical' (slerp) keeps the norm typical of N(0, I).",
        examples=["spherical"],
    )
    labels: Any = _LABELS
    output_format: OutputFormat = _OUTPUT_FORMAT
    scale: int = _SCALE

    @model_validator(mode="after")
    def _one_source(self) -> InterpolateRequest:
        if sum(v is not None for v in (self.inputs, self.images, self.z)) != 1:
            raise ValueError("give exactly one of 'inputs', 'images' or 'z' (two of them)")
        return self


class AnomalyScoreRequest(_WithInputs):
    method: ScoreMethod = Field(
        default=ScoreMethod.RECONSTRUCTION,
        description="reconstruction: mean squared error of x against decode(mean(x)), "
        "deterministic. elbo: -ELBO in nats (k samples of q(z|x)). iwae: the importance-weighted "
        "bound on -log p(x) in nats (k samples; tighter as k grows). discriminator: -log D(x) "
        "for GANs that export a discriminator.",
        examples=["elbo"],
    )
    k: int = Field(
        default=16, ge=1, description="Samples per input for elbo and iwae.", examples=[64]
    )
    seed: int = Field(
        default=0, ge=0, lt=MAX_SEED, description="Seed for elbo/iwae sampling.", examples=[0]
    )
    threshold: float | None = Field(
        default=None,
        description="Outlier threshold; the model's calibrated one when omitted.",
        examples=[None],
    )
    per_pixel: bool = Field(
        default=False, description="Also return per-pixel scores.", examples=[False]
    )


# -- responses ---------------------------------------------------------------------------------
class _Response(BaseModel):
    model: str = Field(description="Model that answered.", examples=["digits-vae"])
    version: str = Field(description="Its version.", examples=["1"])


class SampleResponse(_Response):
    seed: int = Field(description="Seed used (the request's or the one chosen).", examples=[42])
    shape: list[int] = Field(description="Shape of `samples`.", examples=[[16, 64]])
    samples: list[Any] | None = Field(
        default=None, description="Samples, [n, *input_shape].", examples=[[[0.0] * 64]]
    )
    images: list[str] | None = Field(
        default=None, description="Base64 PNGs (output_format=png).", examples=[None]
    )
    latents: list[list[float]] | None = Field(
        default=None, description="z, [n, latent_dim] (return_latents).", examples=[None]
    )


class EncodeResponse(_Response):
    mean: list[list[float]] = Field(
        description="Posterior means, [n, latent_dim].", examples=[[[0.1] * 8]]
    )
    log_var: list[list[float]] = Field(
        description="Posterior log-variances, [n, latent_dim].", examples=[[[-2.0] * 8]]
    )
    z: list[list[list[float]]] | None = Field(
        default=None,
        description="Draws z ~ q(z|x), [n, samples_per_input, latent_dim].",
        examples=[None],
    )


class OutputsResponse(_Response):
    shape: list[int] = Field(description="Shape of `outputs`.", examples=[[1, 64]])
    outputs: list[Any] | None = Field(
        default=None, description="[n, *input_shape].", examples=[[[0.0] * 64]]
    )
    images: list[str] | None = Field(
        default=None, description="Base64 PNGs (output_format=png).", examples=[None]
    )
    latents: list[list[float]] | None = Field(
        default=None,
        description="Latents that were decoded (interpolation path).",
        examples=[None],
    )


class AnomalyScoreResponse(_Response):
    method: str = Field(description="Scoring method used.", examples=["reconstruction"])
    scores: list[float] = Field(
        description="One score per input; higher is more anomalous.", examples=[[0.021, 0.31]]
    )
    threshold: float | None = Field(
        description="Threshold applied (null: none is known).", examples=[0.054]
    )
    threshold_source: Literal["calibration", "request", "none"] = Field(
        description="Where the threshold came from.", examples=["calibration"]
    )
    is_outlier: list[bool] | None = Field(
        description="score > threshold, per input.", examples=[[False, True]]
    )
    per_pixel: list[Any] | None = Field(
        default=None, description="[n, *input_shape] scores (per_pixel).", examples=[None]
    )
    input_warnings: list[str] = Field(
        default=[],
        description="What about the inputs makes the scores mean less than they say, e.g. "
        "grayscale inputs to a likelihood fit to binarized ones (the model's `input.binarized`). "
        "Also in the `X-Input-Warning` header, for .npy answers.",
        examples=[[]],
    )


class PartInfo(BaseModel):
    role: str = Field(
        description="encoder, decoder, generator or discriminator.", examples=["decoder"]
    )
    file: str = Field(description="ONNX file in the model folder.", examples=["decoder.onnx"])
    inputs: list[dict[str, Any]] = Field(
        description="Graph inputs.",
        examples=[[{"name": "z", "shape": [None, 8], "dtype": "float32"}]],
    )
    outputs: list[dict[str, Any]] = Field(
        description="Graph outputs.",
        examples=[[{"name": "x", "shape": [None, 64], "dtype": "float32"}]],
    )


class QueueInfo(BaseModel):
    rows_per_second: float | None = Field(
        description="Measured throughput of this part with full batches in every slot (null "
        "before its first run).",
        examples=[11790.0],
    )
    queued_rows: int = Field(description="Rows waiting for a batch now.", examples=[0])
    expected_wait_s: float = Field(
        description="queued_rows / rows_per_second: what admission compares with "
        "LATENTSERVE_MAX_QUEUE_WAIT_MS.",
        examples=[0.0],
    )


class ModelInfo(BaseModel):
    name: str = Field(description="Model name.", examples=["digits-vae"])
    version: str | None = Field(default=None, description="Model version.", examples=["1"])
    kind: str | None = Field(
        default=None, description="ae, vae, cvae, gan or cgan.", examples=["vae"]
    )
    status: Literal["ready", "failed"] = Field(description="Serving or not.", examples=["ready"])
    error: str | None = Field(default=None, description="Why it failed to load.", examples=[None])
    provider: str | None = Field(
        default=None, description="Execution provider in use: cuda or cpu.", examples=["cpu"]
    )
    precision: str | None = Field(
        default=None,
        description="fp32, or fp16 when the fp16 copies are served.",
        examples=["fp32"],
    )
    input_shape: list[int] | None = Field(
        default=None, description="Shape of one example.", examples=[[64]]
    )
    image_shape: list[int] | None = Field(
        default=None, description="[C, H, W] for images.", examples=[[1, 8, 8]]
    )
    value_range: list[float] | None = Field(
        default=None, description="Input/output range.", examples=[[0.0, 1.0]]
    )
    binarized: bool | None = Field(
        default=None,
        description="The likelihood was fit to binary inputs (the range's ends only): its "
        "scores of other values come with `input_warnings`.",
        examples=[False],
    )
    latent_dim: int | None = Field(default=None, description="Size of z.", examples=[8])
    num_classes: int | None = Field(
        default=None, description="Labels (conditional models).", examples=[None]
    )
    operations: list[str] = Field(
        default_factory=list,
        description="Endpoints it answers.",
        examples=[["sample", "decode", "encode"]],
    )
    score_methods: list[str] = Field(
        default_factory=list,
        description="anomaly-score methods.",
        examples=[["reconstruction", "elbo", "iwae"]],
    )
    parts: list[PartInfo] = Field(default_factory=list, description="Its ONNX graphs.")
    calibration: dict[str, Any] = Field(
        default_factory=dict,
        description="Anomaly-score calibration per method.",
        examples=[{}],
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Evaluation figures.", examples=[{"val_loss": 23.9}]
    )
    queue: dict[str, QueueInfo] = Field(
        default_factory=dict,
        description="Per part (encoder, decoder, ...): measured rate and queue, now.",
        examples=[{}],
    )
    manifest: dict[str, Any] | None = Field(
        default=None, description="The full manifest (GET /models/{name} only).", examples=[None]
    )


class ModelList(BaseModel):
    default_model: str | None = Field(
        description="Used when a request names no model.", examples=["digits-vae"]
    )
    models: list[ModelInfo] = Field(description="Loaded and failed models.")


class Health(BaseModel):
    status: Literal["ok"] = Field(
        default="ok", description="Always ok while the process serves.", examples=["ok"]
    )


class Readiness(BaseModel):
    ready: bool = Field(
        description="Every enabled model loaded and the server not shutting down.", examples=[True]
    )
    draining: bool = Field(
        default=False,
        description="SIGTERM received: finishing work, not taking new clients.",
        examples=[False],
    )
    models_loaded: list[str] = Field(description="Models serving.", examples=[["digits-vae"]])
    models_failed: dict[str, str] = Field(
        description="Models that failed, with the reason.", examples=[{}]
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code.", examples=["invalid_input"])
    message: str = Field(
        description="What is wrong, for humans.",
        examples=["expected examples of shape [64], got shape [1, 63]"],
    )
    field: str | None = Field(
        default=None, description="The request field at fault.", examples=["inputs"]
    )


class ErrorBody(BaseModel):
    error: ErrorDetail = Field(description="The error.")


class ScoreBin(BaseModel):
    bin: str = Field(
        description="The calibration probabilities the bin spans: the scores between those two "
        "calibration quantiles.",
        examples=["0.95-0.99"],
    )
    upper_score: float | None = Field(
        description="The bin's upper edge in score units, a calibration quantile (null: the "
        "last bin, open above).",
        examples=[0.0544],
    )
    expected: float = Field(description="Share of normal data expected in it.", examples=[0.04])
    observed: float | None = Field(
        description="Share of the window's scores in it (null: the window is empty).",
        examples=[0.042],
    )


class DriftInfo(BaseModel):
    statistic: Literal["psi"] = Field(
        description="psi: population stability index of the window's shares per calibration "
        "bin against the shares expected from the calibration quantiles.",
        examples=["psi"],
    )
    value: float | None = Field(
        description="The index (null until the window holds `min_scores` scores). About "
        "9/n from sampling noise alone; below 0.1: no shift, 0.1-0.2: moderate, above 0.2: drift.",
        examples=[0.031],
    )
    threshold: float = Field(
        description="Values above it count as drift (the alert rules use the same figure).",
        examples=[0.2],
    )
    drifted: bool = Field(description="value > threshold.", examples=[False])


class MethodMonitoring(BaseModel):
    method: str = Field(description="Score method (one with a calibration).", examples=["elbo"])
    window_size: int = Field(
        description="Most scores the window holds (LATENTSERVE_MONITOR_WINDOW).", examples=[1000]
    )
    scores: int = Field(description="Scores in the window now.", examples=[1000])
    outliers: int = Field(
        description="Of those, scores above the calibrated threshold (whatever threshold the "
        "requests gave).",
        examples=[11],
    )
    outlier_rate: float | None = Field(
        description="outliers / scores (null: no score yet).", examples=[0.011]
    )
    expected_rate: float = Field(
        description="Share of normal data above the calibrated threshold: 1 - percentile/100.",
        examples=[0.01],
    )
    threshold: float = Field(description="The calibrated threshold.", examples=[29.92])
    drift: DriftInfo = Field(description="The window's distribution against the calibration.")
    started: datetime = Field(
        description="When this window began: the server's start, or the reload that replaced "
        "the model's version, files or calibration.",
        examples=["2025-01-01T12:00:00Z"],
    )
    since: datetime | None = Field(
        description="Arrival of the oldest score in the window (null: empty).",
        examples=["2025-01-01T12:00:00Z"],
    )
    last: datetime | None = Field(
        description="Arrival of the newest score (null: empty).",
        examples=["2025-01-01T12:05:00Z"],
    )
    scored: int = Field(
        description="Scores added since `started`, including those the window no longer holds.",
        examples=[52000],
    )
    quantiles: dict[str, float] = Field(
        description="The window's score quantiles at the calibration's probabilities, to set "
        "beside the manifest's calibration quantiles (empty: no score yet).",
        examples=[{"0.5": 23.9, "0.99": 30.4}],
    )
    bins: list[ScoreBin] = Field(
        description="Expected and observed share of every calibration bin: where the "
        "distribution moved."
    )


class ModelMonitoring(BaseModel):
    model: str = Field(description="Model name.", examples=["digits-vae"])
    version: str = Field(description="Version serving.", examples=["1"])
    enabled: bool = Field(
        description="false: LATENTSERVE_MONITORING is off, nothing is recorded.", examples=[True]
    )
    process_id: int = Field(
        description="The process that answered. The windows are per process: under `serve "
        "--workers N` each worker keeps its own and this answer covers the requests this "
        "worker served; /metrics pools the windows of all workers.",
        examples=[4242],
    )
    min_scores: int = Field(
        description="Scores a window needs before drift is reported "
        "(LATENTSERVE_MONITOR_MIN_SCORES).",
        examples=[300],
    )
    methods: list[MethodMonitoring] = Field(
        description="One entry per calibrated score method (uncalibrated ones are not monitored)."
    )


class ReloadOutcome(BaseModel):
    name: str = Field(description="Model name.", examples=["digits-vae"])
    status: Literal["loaded", "failed", "kept", "unloaded"] = Field(
        description="loaded: this version serves; failed: the model does not serve; kept: the "
        "new version failed and the one loaded before keeps serving; unloaded: its folder is "
        "gone.",
        examples=["loaded"],
    )
    version: str | None = Field(
        default=None, description="Version serving after the reload.", examples=["1"]
    )
    error: str | None = Field(default=None, description="Why it failed.", examples=[None])


class ReloadReport(ModelList):
    outcomes: list[ReloadOutcome] = Field(description="What the reload did to each model.")


class ReloadFailed(ReloadReport):
    error: ErrorDetail = Field(description="Which models failed, and why.")
