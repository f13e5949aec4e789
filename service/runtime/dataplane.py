"""The data plane: the one entry to the runtime for every front door (native REST today; the
Open Inference Protocol and the web page next). A front door parses its wire format, calls one
method here, and renders the result; everything about what a model supports and what a request
may contain is decided here and in the modules it calls:

- which operations and score methods a model serves: `service.capabilities`
- shapes, value ranges, NaN/Inf and labels against the manifest: `service.runtime.contract`
- counts, k, steps, temperature, seeds and how far a request may expand: `RequestLimits` below
- which threshold applies to a score, and the request's timeout: below
- admission by expected queue wait: `service.runtime.batching`
- raw tensor-in, tensor-out runs of one ONNX part (`infer_part`, for protocols that address
  graphs directly, like the Open Inference Protocol): names, dtypes and shapes against the
  manifest's `TensorSpec`s, through the same batcher as the operations
- what the anomaly scores say over time (outlier rate, drift): `service.runtime.monitoring`,
  fed here so that every front door's scores reach the same monitor

Arguments arrive as the front door decoded them (nested lists, arrays, image bytes), so every
front door gets the same conversion and the same errors, each naming the field at fault.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.arrays import to_array
from service.capabilities import Operation, ScoreMethod
from service.errors import DeadlineExceeded, InvalidInput, OperationNotSupported, PayloadTooLarge
from service.images import decode_images
from service.logs import model_var
from service.manifest import PartRole, TensorSpec
from service.runtime.batching import request_deadline
from service.runtime.contract import F32, Labels
from service.runtime.model import LABEL_INPUT, GenerativeModel, InterpolationMode
from service.runtime.monitoring import MethodMonitoring, ScoreMonitor
from service.runtime.repository import ModelRepository
from service.runtime.scoring import DEFAULT_K

T = TypeVar("T")
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**63  # exclusive
ThresholdSource = Literal["calibration", "request", "none"]
INTERPOLATION_MODES: tuple[InterpolationMode, ...] = ("linear", "spherical")


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask for (from settings; the README lists them)."""

    max_samples: int = 1024
    max_iwae_k: int = 1024
    max_sampled_values: int = 2**25
    max_interpolation_steps: int = 256
    request_timeout_s: float | None = None


@dataclass(frozen=True)
class Examples:
    """A request's examples: numeric arrays (nested lists or an ndarray) or encoded images
    (PNG/JPEG bytes or base64 strings); exactly one of the two."""

    arrays: Any = None
    images: Sequence[bytes | str] | None = None
    arrays_field: str = "inputs"
    images_field: str = "images"

    @property
    def count(self) -> int | None:
        """How many examples, when that is known without converting anything."""
        return _rows(self.arrays) if self.images is None else len(self.images)


@dataclass
class Generated:
    """Outputs of sample, decode, reconstruct and interpolate, in the model's input units."""

    model: GenerativeModel
    outputs: F32
    latents: F32 | None = None
    seed: int | None = None


@dataclass
class Encoded:
    model: GenerativeModel
    mean: F32
    log_var: F32
    z: F32 | None  # (n, samples_per_input, latent_dim) when draws were asked for


@dataclass
class Scored:
    model: GenerativeModel
    method: ScoreMethod
    scores: F32
    threshold: float | None
    threshold_source: ThresholdSource
    is_outlier: NDArray[np.bool_] | None
    per_pixel: F32 | None
    input_warnings: tuple[str, ...] = ()
    """What about the inputs makes the scores mean less than they say (e.g. grayscale inputs to
    a likelihood fit to binary ones); empty when nothing does."""


def _likelihood_warnings(
    m: GenerativeModel, method: ScoreMethod, x: NDArray[np.float32]
) -> tuple[str, ...]:
    """A likelihood fit to binary inputs, asked about other values, still answers, but its number
    is not what it would be for any input the model was trained on: say so."""
    if not method.likelihood_based or not m.manifest.input.binarized:
        return ()
    lo, hi = m.manifest.input.value_range
    between = np.count_nonzero((x != lo) & (x != hi))
    if not between:
        return ()
    return (
        f"model {m.name}'s likelihood was fit to binarized inputs ({lo:g} or {hi:g}), and "
        f"{between} of the {x.size} input values lie between: {method.value} scores of such "
        "inputs are not likelihoods the model was trained to give (binarize them first, or use "
        "reconstruction)",
    )


def choose_default_model(
    configured: str | None, explicit: bool, loaded: Sequence[str], failed: Sequence[str]
) -> tuple[str | None, str | None]:
    """The model that answers requests naming none, and a warning for the operator if the
    choice is not the configured one. A repository with one model serves it by default; a
    configured default that failed to load stays (its requests get 503 with the reason)."""
    if configured in loaded:
        return configured, None
    if explicit and configured in failed:
        return configured, f"the default model {configured!r} failed to load"
    names = ", ".join(sorted(loaded)) or "none"
    if len(loaded) == 1:
        only = loaded[0]
        if not explicit:
            return only, None
        return only, f"the default model {configured!r} is not in the repository; {only!r} is"
    what = "no default model is set"
    if configured:
        what = f"the default model {configured!r} is not in the repository"
    return None, f"{what}, so every request must name a model (loaded: {names})"


def _rows(value: Any) -> int | None:
    """Examples in a nested list or an array, without converting it (None: not knowable)."""
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim else None
    return len(value) if isinstance(value, list) else None


@dataclass
class PartOutputs:
    """What one ONNX part returned, by output name, in the order the manifest lists them."""

    model: GenerativeModel
    role: PartRole
    outputs: dict[str, NDArray[Any]]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        limits: RequestLimits | None = None,
        default_model: str | None = None,
        monitor: ScoreMonitor | None = None,
    ) -> None:
        self.repository = repository
        self.limits = limits or RequestLimits()
        self.default_model = default_model
        self.monitor = monitor

    # -- models --------------------------------------------------------------------------------
    def model(self, name: str | None, field: str = "model") -> GenerativeModel:
        """The named model, or the default one when the request names none."""
        if name is None:
            name = self.default_model
            if not name:
                raise InvalidInput("name a model: this server has no default model", field=field)
        elif not name:
            raise InvalidInput("must name a model, or be left out for the default", field=field)
        model_var.set(name)  # every log record of this request names the model
        return self.repository.get(name, field)

    # -- operations ----------------------------------------------------------------------------
    async def sample(
        self,
        model: str | None,
        *,
        n: int = 1,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: Any = None,
        timeout_s: float | None = None,
    ) -> Generated:
        m = self.model(model)
        m.capabilities.require(Operation.SAMPLE)
        self._count(n, "n")
        if seed is None:
            seed = secrets.randbits(63)
        self._seed(seed, "seed")
        if not (math.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
            raise InvalidInput(f"must be in (0, {MAX_TEMPERATURE:g}]", field="temperature")
        self._admit(m, Operation.SAMPLE, n, timeout_s)
        y = self._labels(m, labels, n)
        x, z = await self._bounded(timeout_s, lambda: m.sample(n, seed, temperature, y))
        return Generated(m, x, z, seed)

    async def encode(
        self,
        model: str | None,
        examples: Examples,
        *,
        labels: Any = None,
        samples_per_input: int = 0,
        seed: int = 0,
        timeout_s: float | None = None,
    ) -> Encoded:
        m = self.model(model)
        m.capabilities.require(Operation.ENCODE)
        if samples_per_input < 0:
            raise InvalidInput("must be 0 or more", field="samples_per_input")
        self._seed(seed, "seed")
        self._admit(m, Operation.ENCODE, examples.count, timeout_s)
        x = self._examples(m, examples)
        y = self._labels(m, labels, len(x))
        if samples_per_input:
            self._expansion(len(x) * samples_per_input * m.manifest.latent_dim, "samples_per_input")
        mean, log_var = await self._bounded(timeout_s, lambda: m.encode(x, y))
        z = None
        if samples_per_input:
            z = await m.posterior_draws(mean, log_var, samples_per_input, seed)
        return Encoded(m, mean, log_var, z)

    async def decode(
        self, model: str | None, z: Any, *, labels: Any = None, timeout_s: float | None = None
    ) -> Generated:
        m = self.model(model)
        m.capabilities.require(Operation.DECODE)
        self._admit(m, Operation.DECODE, _rows(z), timeout_s)
        latents = m.contract.latents(to_array(z, "z"), "z")
        self._count(len(latents), "z")
        y = self._labels(m, labels, len(latents))
        x = await self._bounded(timeout_s, lambda: m.decode(latents, y))
        return Generated(m, x)

    async def reconstruct(
        self,
        model: str | None,
        examples: Examples,
        *,
        labels: Any = None,
        timeout_s: float | None = None,
    ) -> Generated:
        m = self.model(model)
        m.capabilities.require(Operation.RECONSTRUCT)
        self._admit(m, Operation.RECONSTRUCT, examples.count, timeout_s)
        x = self._examples(m, examples)
        y = self._labels(m, labels, len(x))
        return Generated(m, await self._bounded(timeout_s, lambda: m.reconstruct(x, y)))

    async def interpolate(
        self,
        model: str | None,
        *,
        examples: Examples | None = None,
        z: Any = None,
        steps: int = 8,
        mode: str = "linear",
        labels: Any = None,
        timeout_s: float | None = None,
    ) -> Generated:
        """A path of `steps` decoded points between two latents, or between the posterior means
        of two examples (which needs an encoder)."""
        m = self.model(model)
        m.capabilities.require(Operation.INTERPOLATE)
        if (examples is None) == (z is None):
            raise InvalidInput("give exactly one of 'inputs', 'images' or 'z' (two of them)", "z")
        if not 2 <= steps <= self.limits.max_interpolation_steps:
            raise (PayloadTooLarge if steps > 2 else InvalidInput)(
                f"must be from 2 to {self.limits.max_interpolation_steps}", field="steps"
            )
        if mode not in INTERPOLATION_MODES:
            raise InvalidInput(f"must be one of {', '.join(INTERPOLATION_MODES)}", field="mode")
        interpolation: InterpolationMode = "spherical" if mode == "spherical" else "linear"
        self._admit(m, Operation.INTERPOLATE, steps, timeout_s)
        if examples is not None:
            m.capabilities.require(
                Operation.ENCODE, " (interpolating between examples encodes them first)"
            )
            ends = self._examples(m, examples)
            field = examples.images_field if examples.images is not None else examples.arrays_field
        else:
            ends = m.contract.latents(to_array(z, "z"), "z")
            field = "z"
        if len(ends) != 2:
            raise InvalidInput(f"give exactly two (start and end), got {len(ends)}", field=field)
        y = self._labels(m, labels, 2)

        async def run() -> tuple[F32, F32]:
            ends_z = (await m.encode(ends, y))[0] if examples is not None else ends
            return await m.interpolate(ends_z[0], ends_z[1], steps, interpolation, y)

        x_path, z_path = await self._bounded(timeout_s, run)
        return Generated(m, x_path, z_path)

    async def anomaly_score(
        self,
        model: str | None,
        examples: Examples,
        *,
        method: str = ScoreMethod.RECONSTRUCTION,
        k: int = DEFAULT_K,
        seed: int = 0,
        labels: Any = None,
        per_pixel: bool = False,
        threshold: float | None = None,
        timeout_s: float | None = None,
    ) -> Scored:
        m = self.model(model)
        m.capabilities.require(Operation.ANOMALY_SCORE)
        try:
            score_method = ScoreMethod(method)
        except ValueError:
            known = ", ".join(ScoreMethod)
            raise InvalidInput(f"unknown method {method!r}; use one of {known}", "method") from None
        m.capabilities.require_method(score_method)
        if k < 1:
            raise InvalidInput("must be at least 1", field="k")
        if k > self.limits.max_iwae_k:
            raise PayloadTooLarge(f"k is at most {self.limits.max_iwae_k}", field="k")
        self._seed(seed, "seed")
        if per_pixel and not score_method.per_pixel:
            raise InvalidInput(
                "per-pixel scores need a reconstruction-based method", field="per_pixel"
            )
        if threshold is not None and not math.isfinite(threshold):
            raise InvalidInput("must be a finite number", field="threshold")
        self._admit(m, score_method, examples.count, timeout_s, k)
        x = self._examples(m, examples)
        if score_method.sampled:
            self._expansion(len(x) * k * x[0].size, "k")
        y = self._labels(m, labels, len(x))
        raw = await self._bounded(
            timeout_s, lambda: m.anomaly_scores(x, score_method, k, seed, y, per_pixel)
        )
        source: ThresholdSource = "request"
        if threshold is None:
            calibration = m.manifest.calibration.get(score_method.value)
            threshold = None if calibration is None else calibration.threshold
            source = "none" if calibration is None else "calibration"
        flags = None if threshold is None else raw.scores > threshold
        if self.monitor is not None:
            self.monitor.record(m, score_method, raw.scores, k)
        warnings = _likelihood_warnings(m, score_method, x)
        return Scored(
            m, score_method, raw.scores, threshold, source, flags, raw.per_pixel, warnings
        )

    async def infer_part(
        self,
        model: str | None,
        role: PartRole | str,
        inputs: Mapping[str, NDArray[Any]],
        *,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> PartOutputs:
        """Run one ONNX part on the caller's own tensors: the graph's inputs by name, checked
        against the manifest's `TensorSpec`s (every input present, nothing else, dtype and shape,
        one batch size for all, finite values, labels in range), then run through the part's
        batcher, so these calls merge with the operations' calls and meet the same admission.
        `outputs` picks outputs by name (default: all)."""
        m = self.model(model)
        try:
            part = m.parts[PartRole(role)]
        except (ValueError, KeyError):
            have = ", ".join(m.parts) or "none"
            raise OperationNotSupported(
                f"model {m.name} has no {role} part; its parts: {have}", field="part"
            ) from None
        specs = part.spec.inputs
        unknown = sorted(set(inputs) - {t.name for t in specs})
        if unknown:
            names = ", ".join(t.name for t in specs)
            raise InvalidInput(
                f"the {part.role.value} of {m.name} has no input {unknown[0]!r}; it takes {names}",
                field=unknown[0],
            )
        rows: int | None = None
        feeds: dict[str, NDArray[Any]] = {}
        for spec in specs:
            if spec.name not in inputs:
                raise InvalidInput(f"input {spec.name!r} is missing", field=spec.name)
            value = self._tensor(spec, inputs[spec.name])
            if rows is None:
                rows = len(value)
                self._count(rows, spec.name)
            elif len(value) != rows:
                raise InvalidInput(
                    f"has {len(value)} rows, but {specs[0].name!r} has {rows}: every input "
                    "needs the same batch size",
                    field=spec.name,
                )
            if spec.name == LABEL_INPUT and m.manifest.conditional:
                m.contract.labels(value, rows, field=spec.name)
            feeds[spec.name] = value
        returned = [t.name for t in part.spec.outputs]
        wanted = returned if outputs is None else list(outputs)
        for name in wanted:
            if name not in returned:
                raise InvalidInput(
                    f"the {part.role.value} of {m.name} has no output {name!r}; it returns "
                    f"{', '.join(returned)}",
                    field=name,
                )
        results = await self._bounded(timeout_s, lambda: part.run(feeds))
        by_name = dict(zip(returned, results, strict=True))
        return PartOutputs(m, part.role, {name: by_name[name] for name in wanted})

    def monitoring(self, model: str) -> tuple[GenerativeModel, list[MethodMonitoring] | None]:
        """The named model and its score windows in this process (None: monitoring is off)."""
        m = self.model(model, field="name")
        return m, None if self.monitor is None else self.monitor.report(m)

    # -- request checks ------------------------------------------------------------------------
    def _admit(
        self,
        m: GenerativeModel,
        work: Operation | ScoreMethod,
        rows: int | None,
        timeout_s: float | None,
        k: int = 1,
    ) -> None:
        """Refuse work the model's queues cannot take in time before converting its inputs, so
        that under overload a refusal costs little (the batcher checks again when queueing)."""
        timeout = self._timeout(timeout_s)
        if rows is None or rows < 1 or rows > self.limits.max_samples:
            return  # the checks that follow give the precise error
        if timeout is None:
            m.admit(work, rows, k)
            return
        token = request_deadline.set(time.perf_counter() + timeout)
        try:
            m.admit(work, rows, k)
        finally:
            request_deadline.reset(token)

    @staticmethod
    def _tensor(spec: TensorSpec, value: NDArray[Any]) -> NDArray[Any]:
        """One input of a part as its graph declares it: dtype, rank, fixed sizes, finite."""
        if value.dtype != np.dtype(spec.dtype):
            raise InvalidInput(
                f"expected {spec.dtype} values, got {value.dtype.name}", field=spec.name
            )
        declared = "[" + ", ".join("n" if d is None else str(d) for d in spec.shape) + "]"
        if value.ndim != len(spec.shape) or any(
            d is not None and d != got for d, got in zip(spec.shape, value.shape, strict=True)
        ):
            raise InvalidInput(
                f"expected shape {declared}, got {list(value.shape)}", field=spec.name
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InvalidInput("values must be finite numbers (no NaN or infinity)", spec.name)
        return value

    def _count(self, n: int, field: str) -> None:
        if n < 1:
            raise InvalidInput("at least one example is required", field=field)
        if n > self.limits.max_samples:
            raise PayloadTooLarge(
                f"at most {self.limits.max_samples} examples per request, got {n}", field=field
            )

    @staticmethod
    def _seed(seed: int, field: str) -> None:
        if not 0 <= seed < MAX_SEED:
            raise InvalidInput("must be an integer in [0, 2**63)", field=field)

    def _expansion(self, values: int, field: str) -> None:
        if values > self.limits.max_sampled_values:
            raise PayloadTooLarge(
                f"this request would expand to {values} values (inputs x samples x size), more "
                f"than the limit of {self.limits.max_sampled_values}; send fewer inputs or a "
                f"smaller {field}",
                field=field,
            )

    def _examples(self, m: GenerativeModel, ex: Examples) -> F32:
        if (ex.arrays is None) == (ex.images is None):
            raise InvalidInput(
                f"give exactly one of '{ex.arrays_field}' (arrays) or '{ex.images_field}' "
                "(PNG/JPEG)",
                field=ex.arrays_field,
            )
        if ex.images is not None:
            image_shape = m.manifest.input.image_shape
            if image_shape is None:
                raise InvalidInput(
                    f"this model does not take images; send '{ex.arrays_field}' arrays",
                    field=ex.images_field,
                )
            self._count(len(ex.images), ex.images_field)
            images = decode_images(
                ex.images, image_shape, m.manifest.input.value_range, ex.images_field
            )
            return m.contract.inputs(
                images.reshape(len(images), *m.contract.shape), ex.images_field
            )
        x = m.contract.inputs(to_array(ex.arrays, ex.arrays_field), ex.arrays_field)
        self._count(len(x), ex.arrays_field)
        return x

    @staticmethod
    def _labels(m: GenerativeModel, raw: Any, n: int) -> Labels | None:
        if raw is None:
            return m.contract.labels(None, n)
        if isinstance(raw, int | float):
            raw = [raw]
        return m.contract.labels(to_array(raw, "labels", np.int64), n)

    # -- timeouts ------------------------------------------------------------------------------
    def _timeout(self, timeout_s: float | None) -> float | None:
        timeout = timeout_s if timeout_s is not None else self.limits.request_timeout_s
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise InvalidInput("must be a positive number of seconds", field="timeout")
        return timeout

    async def _bounded(self, timeout_s: float | None, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`, answered within the request's timeout (or the server's default one)."""
        timeout = self._timeout(timeout_s)
        if timeout is None:
            return await work()
        token = request_deadline.set(time.perf_counter() + timeout)
        try:
            async with asyncio.timeout(timeout):
                return await work()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within the request's timeout of {timeout:g} s", retry_after_s=1.0
            ) from None
        finally:
            request_deadline.reset(token)
