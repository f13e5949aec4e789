"""Inference routes: POST /sample, /encode, /decode, /reconstruct, /interpolate, /anomaly-score.

Each route parses the body (JSON, multipart or .npy), resolves the model, converts inputs to
arrays checked against the manifest, calls the runtime, and renders the result in the media type
the client accepts (JSON, .npy, or PNG)."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from numpy.typing import NDArray
from starlette.responses import Response

from service.api import codecs
from service.api.bodies import openapi_body, read_body
from service.api.deps import require_api_key, serving_state
from service.api.schemas import (
    AnomalyScoreRequest,
    AnomalyScoreResponse,
    DecodeRequest,
    EncodeRequest,
    EncodeResponse,
    ErrorBody,
    InterpolateRequest,
    OutputsResponse,
    ReconstructRequest,
    SampleRequest,
    SampleResponse,
)
from service.errors import InvalidInput, PayloadTooLarge
from service.logs import model_var
from service.runtime.model import GenerativeModel
from service.runtime.repository import ModelRepository
from service.settings import Settings

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["inference"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 406, 413, 415, 422, 503)
}
IMAGE_OUTPUTS = (codecs.JSON_MEDIA_TYPE, codecs.NPY_MEDIA_TYPE, codecs.PNG_MEDIA_TYPE)
ARRAY_OUTPUTS = (codecs.JSON_MEDIA_TYPE, codecs.NPY_MEDIA_TYPE)
F32 = NDArray[np.float32]


def _docs(schema: type, array_field: str = "inputs") -> dict[str, Any]:
    return {"responses": _ERRORS, "openapi_extra": openapi_body(schema, array_field)}


def _model(repo: ModelRepository, settings: Settings, name: str | None) -> GenerativeModel:
    name = name or settings.default_model
    if not name:
        raise InvalidInput("no model named and the server has no default model", field="model")
    model_var.set(name)  # every log record of this request names the model
    return repo.get(name)


def _check_count(n: int, settings: Settings, field: str) -> None:
    if n > settings.max_samples:
        raise PayloadTooLarge(
            f"at most {settings.max_samples} examples per request, got {n}", field=field
        )


def _check_expansion(values: int, settings: Settings, field: str) -> None:
    if values > settings.max_sampled_values:
        raise PayloadTooLarge(
            f"this request would expand to {values} values (inputs x samples x size), more than "
            f"the limit of {settings.max_sampled_values}; send fewer inputs or a smaller {field}",
            field=field,
        )


def _inputs(model: GenerativeModel, body: Any, settings: Settings) -> F32:
    """The request's examples from `inputs` arrays or `images`, validated against the manifest."""
    spec = model.manifest.input
    if body.images is not None:
        _check_count(len(body.images), settings, "images")
        x = codecs.decode_images(
            body.images, spec.image_shape, spec.value_range, tuple(spec.shape), "images"
        )
        return model.check_inputs(x, "images")
    x = codecs.to_array(body.inputs, "inputs")
    checked = model.check_inputs(x, "inputs")
    _check_count(len(checked), settings, "inputs")
    return checked


def _labels(model: GenerativeModel, raw: Any, n: int) -> NDArray[np.int64] | None:
    if raw is None:
        return model.check_labels(None, n)
    if isinstance(raw, int | float):
        raw = [raw]
    return model.check_labels(codecs.to_array(raw, "labels", np.int64), n)


def _render_examples(
    request: Request,
    model: GenerativeModel,
    x: F32,
    output_format: str,
    fields: dict[str, Any],
    array_key: str,
) -> Response:
    """JSON (arrays or base64 PNGs), .npy, or one PNG grid, by the Accept header."""
    image_shape = model.manifest.input.image_shape
    offered = IMAGE_OUTPUTS if image_shape is not None else ARRAY_OUTPUTS
    media = codecs.negotiate(request.headers.get("accept"), offered)
    vr = model.manifest.input.value_range
    headers = {"X-Model": model.name, "X-Model-Version": model.manifest.version}
    if "seed" in fields:
        headers["X-Seed"] = str(fields["seed"])
    if media == codecs.NPY_MEDIA_TYPE:
        return Response(codecs.npy_bytes(x), media_type=media, headers=headers)
    if media == codecs.PNG_MEDIA_TYPE:
        assert image_shape is not None
        return Response(codecs.png_grid(x, image_shape, vr), media_type=media, headers=headers)
    body: dict[str, Any] = {
        "model": model.name,
        "version": model.manifest.version,
        **fields,
        "shape": list(x.shape),
    }
    if output_format == "png":
        if image_shape is None:
            raise InvalidInput("this model's outputs are not images", field="output_format")
        body["images"] = codecs.png_base64_list(x, image_shape, vr)
    else:
        body[array_key] = x
    return Response(codecs.dumps_json(body), media_type=codecs.JSON_MEDIA_TYPE, headers=headers)


@router.post(
    "/sample",
    response_model=SampleResponse,
    summary="Draw samples from the prior",
    **_docs(SampleRequest),
)
async def sample(request: Request) -> Response:
    repo, settings = serving_state(request)
    body = await read_body(request, SampleRequest)
    model = _model(repo, settings, body.model)
    _check_count(body.n, settings, "n")
    labels = _labels(model, body.labels, body.n)
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    x, z = await model.sample(body.n, seed, body.temperature, labels)
    fields: dict[str, Any] = {"seed": seed}
    if body.return_latents:
        fields["latents"] = z
    return _render_examples(request, model, x, body.output_format, fields, "samples")


@router.post(
    "/encode",
    response_model=EncodeResponse,
    summary="Posterior q(z|x) of inputs",
    **_docs(EncodeRequest),
)
async def encode(request: Request) -> Response:
    repo, settings = serving_state(request)
    body = await read_body(request, EncodeRequest)
    model = _model(repo, settings, body.model)
    x = _inputs(model, body, settings)
    labels = _labels(model, body.labels, len(x))
    mean, log_var = await model.encode(x, labels)
    media = codecs.negotiate(request.headers.get("accept"), ARRAY_OUTPUTS)
    if media == codecs.NPY_MEDIA_TYPE:  # (2, n, latent_dim): mean then log_var
        return Response(codecs.npy_bytes(np.stack([mean, log_var])), media_type=media)
    out: dict[str, Any] = {
        "model": model.name,
        "version": model.manifest.version,
        "mean": mean,
        "log_var": log_var,
    }
    if body.samples_per_input:
        _check_expansion(
            len(x) * body.samples_per_input * mean.shape[1], settings, "samples_per_input"
        )
        rng = np.random.default_rng(body.seed)
        eps = rng.standard_normal((len(x), body.samples_per_input, mean.shape[1]), dtype=np.float32)
        out["z"] = mean[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps
    return Response(codecs.dumps_json(out), media_type=codecs.JSON_MEDIA_TYPE)


@router.post(
    "/decode",
    response_model=OutputsResponse,
    summary="Decode latents z to outputs",
    **_docs(DecodeRequest, "z"),
)
async def decode(request: Request) -> Response:
    repo, settings = serving_state(request)
    body = await read_body(request, DecodeRequest, array_field="z")
    model = _model(repo, settings, body.model)
    z = model.check_latents(codecs.to_array(body.z, "z"))
    _check_count(len(z), settings, "z")
    x = await model.decode(z, _labels(model, body.labels, len(z)))
    return _render_examples(request, model, x, body.output_format, {}, "outputs")


@router.post(
    "/reconstruct",
    response_model=OutputsResponse,
    summary="Decode the posterior mean of inputs",
    **_docs(ReconstructRequest),
)
async def reconstruct(request: Request) -> Response:
    repo, settings = serving_state(request)
    body = await read_body(request, ReconstructRequest)
    model = _model(repo, settings, body.model)
    x = _inputs(model, body, settings)
    x_hat = await model.reconstruct(x, _labels(model, body.labels, len(x)))
    return _render_examples(request, model, x_hat, body.output_format, {}, "outputs")


@router.post(
    "/interpolate",
    response_model=OutputsResponse,
    summary="Decode a path between two inputs or two latents",
    **_docs(InterpolateRequest),
)
async def interpolate(request: Request) -> Response:
    repo, settings = serving_state(request)
    body = await read_body(request, InterpolateRequest)
    model = _model(repo, settings, body.model)
    if body.steps > settings.max_interpolation_steps:
        raise PayloadTooLarge(f"at most {settings.max_interpolation_steps} steps", field="steps")
    if body.z is not None:
        z = model.check_latents(codecs.to_array(body.z, "z"))
        field, count = "z", len(z)
    else:
        x = _inputs(model, body, settings)
        field, count = ("images" if body.images is not None else "inputs"), len(x)
    if count != 2:
        raise InvalidInput(f"give exactly two examples (start and end), got {count}", field=field)
    labels = _labels(model, body.labels, 2)
    if body.z is None:
        z, _ = await model.encode(x, labels)
    x_path, z_path = await model.interpolate(z[0], z[1], body.steps, body.mode, labels)
    return _render_examples(
        request, model, x_path, body.output_format, {"latents": z_path}, "outputs"
    )


@router.post(
    "/anomaly-score",
    response_model=AnomalyScoreResponse,
    summary="Outlier scores with the model's calibrated threshold",
    **_docs(AnomalyScoreRequest),
)
async def anomaly_score(request: Request) -> Response:
    repo, settings = serving_state(request)
    body = await read_body(request, AnomalyScoreRequest)
    model = _model(repo, settings, body.model)
    if body.k > settings.max_iwae_k:
        raise PayloadTooLarge(f"k is at most {settings.max_iwae_k}", field="k")
    x = _inputs(model, body, settings)
    if body.method in ("elbo", "iwae"):
        _check_expansion(len(x) * body.k * x[0].size, settings, "k")
    labels = _labels(model, body.labels, len(x))
    result = await model.anomaly_scores(x, body.method, body.k, body.seed, labels, body.per_pixel)
    calibration = model.manifest.calibration.get(body.method)
    if body.threshold is not None:
        threshold, source = body.threshold, "request"
    elif calibration is not None:
        threshold, source = calibration.threshold, "calibration"
    else:
        threshold, source = None, "none"
    headers = {"X-Model": model.name, "X-Model-Version": model.manifest.version}
    if threshold is not None:
        headers["X-Anomaly-Threshold"] = repr(threshold)
    media = codecs.negotiate(request.headers.get("accept"), ARRAY_OUTPUTS)
    if media == codecs.NPY_MEDIA_TYPE:
        return Response(codecs.npy_bytes(result.scores), media_type=media, headers=headers)
    out: dict[str, Any] = {
        "model": model.name,
        "version": model.manifest.version,
        "method": body.method,
        "scores": result.scores,
        "threshold": threshold,
        "threshold_source": source,
        "is_outlier": None if threshold is None else result.scores > threshold,
    }
    if result.per_pixel is not None:
        out["per_pixel"] = result.per_pixel
    return Response(codecs.dumps_json(out), media_type=codecs.JSON_MEDIA_TYPE, headers=headers)
