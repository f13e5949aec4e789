"""The one mapping between latentserve models and Open Inference Protocol models.

Every latentserve model `M` appears as several OIP models, named `M.<suffix>`:

- one per ONNX part, `M.encoder`, `M.decoder`, `M.generator`, `M.discriminator`: the graph itself,
  tensor in, tensor out, with the input and output names, datatypes and shapes the manifest
  declares (platform `onnxruntime_onnx`), run by `DataPlane.infer_part`;
- one per operation the model serves (`service.capabilities`), `M.sample`, `M.decode`,
  `M.encode`, `M.reconstruct`, `M.interpolate`, `M.anomaly-score` (platform `latentserve`): the
  native route's computation, with its options as request parameters and its arrays as tensors
  (`OPERATIONS` below), run by the data plane's method of the same name.

So `mnist-conv-vae.decoder` and `POST /decode` run the same graph through the same batcher, and
`mnist-conv-vae.sample` with parameter `seed` returns what `POST /sample` returns for that seed.
Names split at the last dot, so model names may contain dots. docs/open-inference-protocol.md
has the tables users read.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from service.capabilities import Operation
from service.errors import InvalidInput, ModelNotFound
from service.manifest import PartRole, TensorSpec
from service.oip.protocol import InferRequest, InferResponse, Param, Tensor, datatype_of
from service.runtime.dataplane import DataPlane, Examples
from service.runtime.model import LABEL_INPUT, GenerativeModel

PART_PLATFORM = "onnxruntime_onnx"  # Triton's name for ONNX Runtime models
OPERATION_PLATFORM = "latentserve"
SEPARATOR = "."
TRITON_TIMEOUT_PARAMETER = "timeout"  # Triton's per-request timeout, in microseconds


@dataclass(frozen=True)
class TensorMeta:
    """An input or output as model metadata lists it; -1 marks a variable axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    """An input a request may leave out (labels of unconditional use, one of two ends)."""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Target:
    """One OIP model: a part or an operation of a loaded model."""

    name: str
    model: GenerativeModel
    part: PartRole | None
    operation: Operation | None
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]

    @property
    def platform(self) -> str:
        return PART_PLATFORM if self.part is not None else OPERATION_PLATFORM

    @property
    def version(self) -> str:
        return self.model.version


# -- names and metadata -------------------------------------------------------------------------
def _meta(spec: TensorSpec) -> TensorMeta:
    return TensorMeta(
        spec.name, datatype_of(spec.dtype), tuple(-1 if d is None else d for d in spec.shape)
    )


def _operation_tensors(
    model: GenerativeModel, op: Operation
) -> tuple[tuple[TensorMeta, ...], tuple[TensorMeta, ...]]:
    """The tensors of an operation, from the manifest: examples `x` [-1, *input shape], latents
    `z` [-1, latent_dim], class labels `label` [-1] on conditional models."""
    m = model.manifest
    x = TensorMeta("x", "FP32", (-1, *m.input.shape))
    z = TensorMeta("z", "FP32", (-1, m.latent_dim))
    labels = (TensorMeta(LABEL_INPUT, "INT64", (-1,)),) if m.conditional else ()
    optional_labels = tuple(TensorMeta(t.name, t.datatype, t.shape, True) for t in labels)
    if op is Operation.SAMPLE:
        return optional_labels, (x, z)
    if op is Operation.DECODE:
        return (z, *labels), (x,)
    if op is Operation.ENCODE:
        draws = TensorMeta("z", "FP32", (-1, -1, m.latent_dim))
        return (x, *labels), (
            TensorMeta("mean", "FP32", z.shape),
            TensorMeta("log_var", "FP32", z.shape),
            draws,
        )
    if op is Operation.RECONSTRUCT:
        return (x, *labels), (x,)
    if op is Operation.INTERPOLATE:
        ends = (TensorMeta("x", "FP32", x.shape, True), TensorMeta("z", "FP32", z.shape, True))
        return (*ends, *labels), (x, z)
    # anomaly score: one score per example; a flag where a threshold applies; per-pixel terms
    # when the request asks for that output
    return (x, *labels), (
        TensorMeta("score", "FP32", (-1,)),
        TensorMeta("is_outlier", "BOOL", (-1,)),
        TensorMeta("per_pixel", "FP32", x.shape),
    )


def _build_targets(model: GenerativeModel) -> dict[str, Target]:
    found: dict[str, Target] = {}
    for role, part in model.manifest.parts.items():
        name = f"{model.name}{SEPARATOR}{role.value}"
        ins = tuple(_meta(t) for t in part.inputs)
        outs = tuple(_meta(t) for t in part.outputs)
        found[role.value] = Target(name, model, role, None, ins, outs)
    for op in model.capabilities.operations:
        ins, outs = _operation_tensors(model, op)
        found[op.value] = Target(f"{model.name}{SEPARATOR}{op.value}", model, None, op, ins, outs)
    return found


_TARGETS: weakref.WeakKeyDictionary[GenerativeModel, dict[str, Target]] = (
    weakref.WeakKeyDictionary()
)


def targets(model: GenerativeModel) -> dict[str, Target]:
    """The OIP models of one loaded model by suffix (computed once per loaded version)."""
    found = _TARGETS.get(model)
    if found is None:
        found = _TARGETS[model] = _build_targets(model)
    return found


def all_targets(plane: DataPlane) -> list[Target]:
    return [t for m in plane.repository.models.values() for t in targets(m).values()]


def resolve(plane: DataPlane, name: str, version: str | None = None) -> Target:
    """The OIP model called `name` (and `version`, when given)."""
    base, sep, suffix = name.rpartition(SEPARATOR)
    if not sep or not base:
        models = plane.repository.models
        if name in models:
            served = ", ".join(t.name for t in targets(models[name]).values())
            raise ModelNotFound(
                f"model {name!r} is served as one OIP model per part and operation: {served}"
            )
        raise ModelNotFound(
            f"no model named {name!r}; OIP model names are <model>.<part> or "
            f"<model>.<operation>, and the loaded models are {', '.join(models) or 'none'}"
        )
    try:
        model = plane.model(base)
    except ModelNotFound:
        raise ModelNotFound(
            f"no model named {name!r}: there is no model {base!r} (loaded: "
            f"{', '.join(plane.repository.models) or 'none'})"
        ) from None
    found = targets(model).get(suffix)
    if found is None:
        served = ", ".join(t.name for t in targets(model).values())
        raise ModelNotFound(f"no model named {name!r}; model {base} is served as {served}")
    if version and version != model.version:
        raise ModelNotFound(f"model {name} has version {model.version!r} loaded, not {version!r}")
    return found


# -- inference ----------------------------------------------------------------------------------
class Parameters:
    """Request parameters read with the type each operation needs; a wrong type names the
    parameter. Unknown parameters are ignored, as the protocol's servers do (clients add their
    own, such as Triton's `binary_data_output`)."""

    def __init__(self, values: dict[str, Param]) -> None:
        self.values = values

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise InvalidInput(f"must be {what}, got {value!r}", field=f"parameters.{name}")
        return value

    def integer(self, name: str, default: int) -> int:
        value = self._get(name, (int,), "an integer")
        return default if value is None else int(value)

    def optional_integer(self, name: str) -> int | None:
        value = self._get(name, (int,), "an integer")
        return None if value is None else int(value)

    def number(self, name: str, default: float | None) -> float | None:
        value = self._get(name, (int, float), "a number")
        return default if value is None else float(value)

    def text(self, name: str, default: str) -> str:
        value = self._get(name, (str,), "a string")
        return default if value is None else str(value)


Arrays = dict[str, NDArray[Any]]
OperationResult = tuple[Arrays, dict[str, Param]]


@dataclass
class _Call:
    plane: DataPlane
    model: str
    inputs: Arrays
    params: Parameters
    wanted: list[str] | None
    timeout_s: float | None

    @property
    def labels(self) -> NDArray[Any] | None:
        return self.inputs.get(LABEL_INPUT)

    def examples(self) -> Examples:
        return Examples(arrays=self.inputs.get("x"), arrays_field="x")


async def _sample(c: _Call) -> OperationResult:
    labels = c.labels
    n = c.params.integer("n", 1 if labels is None or labels.ndim != 1 else len(labels))
    temperature = c.params.number("temperature", 1.0)
    assert temperature is not None
    r = await c.plane.sample(
        c.model,
        n=n,
        seed=c.params.optional_integer("seed"),
        temperature=temperature,
        labels=labels,
        timeout_s=c.timeout_s,
    )
    assert r.latents is not None and r.seed is not None
    return {"x": r.outputs, "z": r.latents}, {"seed": r.seed}


async def _decode(c: _Call) -> OperationResult:
    r = await c.plane.decode(c.model, c.inputs["z"], labels=c.labels, timeout_s=c.timeout_s)
    return {"x": r.outputs}, {}


async def _encode(c: _Call) -> OperationResult:
    r = await c.plane.encode(
        c.model,
        c.examples(),
        labels=c.labels,
        samples_per_input=c.params.integer("samples_per_input", 0),
        seed=c.params.integer("seed", 0),
        timeout_s=c.timeout_s,
    )
    outputs = {"mean": r.mean, "log_var": r.log_var}
    if r.z is not None:
        outputs["z"] = r.z
    return outputs, {}


async def _reconstruct(c: _Call) -> OperationResult:
    r = await c.plane.reconstruct(c.model, c.examples(), labels=c.labels, timeout_s=c.timeout_s)
    return {"x": r.outputs}, {}


async def _interpolate(c: _Call) -> OperationResult:
    r = await c.plane.interpolate(
        c.model,
        examples=c.examples() if "x" in c.inputs else None,
        z=c.inputs.get("z"),
        steps=c.params.integer("steps", 8),
        mode=c.params.text("mode", "linear"),
        labels=c.labels,
        timeout_s=c.timeout_s,
    )
    assert r.latents is not None
    return {"x": r.outputs, "z": r.latents}, {}


async def _anomaly_score(c: _Call) -> OperationResult:
    r = await c.plane.anomaly_score(
        c.model,
        c.examples(),
        method=c.params.text("method", "reconstruction"),
        k=c.params.integer("k", 16),
        seed=c.params.integer("seed", 0),
        labels=c.labels,
        per_pixel=c.wanted is not None and "per_pixel" in c.wanted,
        threshold=c.params.number("threshold", None),
        timeout_s=c.timeout_s,
    )
    outputs: Arrays = {"score": r.scores}
    params: dict[str, Param] = {"method": r.method.value, "threshold_source": r.threshold_source}
    if r.is_outlier is not None:
        outputs["is_outlier"] = r.is_outlier
    if r.threshold is not None:
        params["threshold"] = r.threshold
    if r.per_pixel is not None:
        outputs["per_pixel"] = r.per_pixel
    return outputs, params


OPERATIONS: dict[Operation, Callable[[_Call], Awaitable[OperationResult]]] = {
    Operation.SAMPLE: _sample,
    Operation.DECODE: _decode,
    Operation.ENCODE: _encode,
    Operation.RECONSTRUCT: _reconstruct,
    Operation.INTERPOLATE: _interpolate,
    Operation.ANOMALY_SCORE: _anomaly_score,
}
"""How each operation's tensors and parameters become its data plane call, and its result
tensors (parameters: sample `n`, `seed`, `temperature`; encode `samples_per_input`, `seed`;
interpolate `steps`, `mode`; anomaly-score `method`, `k`, `seed`, `threshold`)."""

_UNAVAILABLE_OUTPUTS = {
    "is_outlier": "no threshold applies: calibrate the model or pass parameter 'threshold'",
    "z": "pass parameter 'samples_per_input' to draw latents",
}


def _timeout(request: InferRequest, params: Parameters) -> float | None:
    """The tighter of the transport's timeout and Triton's `timeout` parameter (microseconds)."""
    micros = params.optional_integer(TRITON_TIMEOUT_PARAMETER)
    limits = [t for t in (request.timeout_s, None if not micros else micros / 1e6) if t]
    return min(limits) if limits else None


def _inputs(target: Target, request: InferRequest) -> Arrays:
    """The request's tensors by name, each one the model lists, with the datatype it lists."""
    declared = {t.name: t for t in target.inputs}
    arrays: Arrays = {}
    for t in request.inputs:
        meta = declared.get(t.name)
        if meta is None:
            names = ", ".join(declared) or "none"
            raise InvalidInput(
                f"{target.name} has no input {t.name!r}; its inputs: {names}", field=t.name
            )
        if t.datatype != meta.datatype:
            raise InvalidInput(
                f"{target.name} takes {meta.datatype} for {t.name!r}, got {t.datatype}",
                field=t.name,
            )
        if t.name in arrays:
            raise InvalidInput(f"input {t.name!r} is given twice", field=t.name)
        arrays[t.name] = t.data
    for meta in target.inputs:
        if not meta.optional and meta.name not in arrays:
            raise InvalidInput(f"{target.name} needs input {meta.name!r}", field=meta.name)
    return arrays


def _pick(target: Target, produced: Arrays, wanted: list[str] | None) -> list[Tensor]:
    """The outputs the request asked for (every one produced, when it named none), in the order
    it asked for them or the model lists them."""
    listed = [t.name for t in target.outputs]
    names = [n for n in listed if n in produced] if wanted is None else wanted
    tensors = []
    for name in names:
        if name not in listed:
            raise InvalidInput(
                f"{target.name} has no output {name!r}; its outputs: {', '.join(listed)}", name
            )
        if name not in produced:
            why = _UNAVAILABLE_OUTPUTS.get(name, "this request does not produce it")
            raise InvalidInput(f"output {name!r} is not available: {why}", field=name)
        data = produced[name]
        tensors.append(Tensor(name, datatype_of(data.dtype), data))
    return tensors


async def infer(plane: DataPlane, target: Target, request: InferRequest) -> InferResponse:
    """Run `request` on `target` through the data plane; the answer names the OIP model and the
    loaded version, and echoes the request's id."""
    params = Parameters(request.parameters)
    arrays = _inputs(target, request)
    timeout_s = _timeout(request, params)
    model = target.model.name
    response_params: dict[str, Param] = {}
    if target.part is not None:
        ran = await plane.infer_part(
            model, target.part, arrays, outputs=request.outputs, timeout_s=timeout_s
        )
        produced = ran.outputs
    else:
        assert target.operation is not None
        call = _Call(plane, model, arrays, params, request.outputs, timeout_s)
        produced, response_params = await OPERATIONS[target.operation](call)
    return InferResponse(
        model_name=target.name,
        model_version=target.version,
        id=request.id,
        outputs=_pick(target, produced, request.outputs),
        parameters=response_params,
    )
