"""Inference routes: POST /sample, /encode, /decode, /reconstruct, /interpolate, /anomaly-score.

Each route parses the body (JSON, multipart or .npy) into its schema, makes one call to the data
plane (which owns every rule about models and requests), and renders the result in the media
type the client accepts (JSON, .npy, or PNG)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.api import codecs
from service.api.bodies import openapi_body, read_body
from service.api.deps import data_plane, request_timeout, require_api_key
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
from service.arrays import npy_bytes
from service.errors import InvalidInput
from service.images import png_base64_list, png_grid
from service.runtime.dataplane import Examples, Generated
from service.runtime.model import GenerativeModel

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["inference"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 406, 413, 415, 422, 503)
}
IMAGE_OUTPUTS = (codecs.JSON_MEDIA_TYPE, codecs.NPY_MEDIA_TYPE, codecs.PNG_MEDIA_TYPE)
ARRAY_OUTPUTS = (codecs.JSON_MEDIA_TYPE, codecs.NPY_MEDIA_TYPE)


def _docs(schema: type, array_field: str = "inputs") -> dict[str, Any]:
    return {"responses": _ERRORS, "openapi_extra": openapi_body(schema, array_field)}


def _examples(body: Any) -> Examples:
    return Examples(arrays=body.inputs, images=body.images)


def _headers(model: GenerativeModel) -> dict[str, str]:
    return {"X-Model": model.name, "X-Model-Version": model.version}


def _render_examples(
    request: Request,
    result: Generated,
    output_format: str,
    scale: int,
    fields: dict[str, Any],
    array_key: str,
) -> Response:
    """JSON (arrays or base64 PNGs), .npy, or one PNG grid, by the Accept header."""
    model, x = result.model, result.outputs
    image_shape = model.manifest.input.image_shape
    offered = IMAGE_OUTPUTS if model.capabilities.image_outputs else ARRAY_OUTPUTS
    media = codecs.negotiate(request.headers.get("accept"), offered)
    vr = model.manifest.input.value_range
    headers = _headers(model)
    if result.seed is not None:
        headers["X-Seed"] = str(result.seed)
    if media == codecs.NPY_MEDIA_TYPE:
        return Response(npy_bytes(x), media_type=media, headers=headers)
    if media == codecs.PNG_MEDIA_TYPE:
        assert image_shape is not None
        return Response(
            png_grid(x, image_shape, vr, scale=scale), media_type=media, headers=headers
        )
    body: dict[str, Any] = {"model": model.name, "version": model.version}
    if result.seed is not None:
        body["seed"] = result.seed
    body.update(fields)
    body["shape"] = list(x.shape)
    if output_format == "png":
        if image_shape is None:
            raise InvalidInput("this model's outputs are not images", field="output_format")
        body["images"] = png_base64_list(x, image_shape, vr, scale=scale)
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
    body = await read_body(request, SampleRequest)
    result = await data_plane(request).sample(
        body.model,
        n=body.n,
        seed=body.seed,
        temperature=body.temperature,
        labels=body.labels,
        timeout_s=request_timeout(request),
    )
    fields = {"latents": result.latents} if body.return_latents else {}
    return _render_examples(request, result, body.output_format, body.scale, fields, "samples")


@router.post(
    "/encode",
    response_model=EncodeResponse,
    summary="Posterior q(z|x) of inputs",
    **_docs(EncodeRequest),
)
async def encode(request: Request) -> Response:
    body = await read_body(request, EncodeRequest)
    media = codecs.negotiate(request.headers.get("accept"), ARRAY_OUTPUTS)
    result = await data_plane(request).encode(
        body.model,
        _examples(body),
        labels=body.labels,
        samples_per_input=body.samples_per_input if media == codecs.JSON_MEDIA_TYPE else 0,
        seed=body.seed,
        timeout_s=request_timeout(request),
    )
    headers = _headers(result.model)
    if media == codecs.NPY_MEDIA_TYPE:  # (2, n, latent_dim): mean then log_var
        stacked = np.stack([result.mean, result.log_var])
        return Response(npy_bytes(stacked), media_type=media, headers=headers)
    out: dict[str, Any] = {
        "model": result.model.name,
        "version": result.model.version,
        "mean": result.mean,
        "log_var": result.log_var,
    }
    if result.z is not None:
        out["z"] = result.z
    return Response(codecs.dumps_json(out), media_type=codecs.JSON_MEDIA_TYPE, headers=headers)


@router.post(
    "/decode",
    response_model=OutputsResponse,
    summary="Decode latents z to outputs",
    **_docs(DecodeRequest, "z"),
)
async def decode(request: Request) -> Response:
    body = await read_body(request, DecodeRequest, array_field="z")
    result = await data_plane(request).decode(
        body.model, body.z, labels=body.labels, timeout_s=request_timeout(request)
    )
    return _render_examples(request, result, body.output_format, body.scale, {}, "outputs")


@router.post(
    "/reconstruct",
    response_model=OutputsResponse,
    summary="Decode the posterior mean of inputs",
    **_docs(ReconstructRequest),
)
async def reconstruct(request: Request) -> Response:
    body = await read_body(request, ReconstructRequest)
    result = await data_plane(request).reconstruct(
        body.model, _examples(body), labels=body.labels, timeout_s=request_timeout(request)
    )
    return _render_examples(request, result, body.output_format, body.scale, {}, "outputs")


@router.post(
    "/interpolate",
    response_model=OutputsResponse,
    summary="Decode a path between two inputs or two latents",
    **_docs(InterpolateRequest),
)
async def interpolate(request: Request) -> Response:
    body = await read_body(request, InterpolateRequest)
    from_examples = body.inputs is not None or body.images is not None
    result = await data_plane(request).interpolate(
        body.model,
        examples=_examples(body) if from_examples else None,
        z=body.z,
        steps=body.steps,
        mode=body.mode,
        labels=body.labels,
        timeout_s=request_timeout(request),
    )
    fields = {"latents": result.latents}
    return _render_examples(request, result, body.output_format, body.scale, fields, "outputs")


@router.post(
    "/anomaly-score",
    response_model=AnomalyScoreResponse,
    summary="Outlier scores with the model's calibrated threshold",
    **_docs(AnomalyScoreRequest),
)
async def anomaly_score(request: Request) -> Response:
    body = await read_body(request, AnomalyScoreRequest)
    media = codecs.negotiate(request.headers.get("accept"), ARRAY_OUTPUTS)
    result = await data_plane(request).anomaly_score(
        body.model,
        _examples(body),
        method=body.method,
        k=body.k,
        seed=body.seed,
        labels=body.labels,
        per_pixel=body.per_pixel,
        threshold=body.threshold,
        timeout_s=request_timeout(request),
    )
    headers = _headers(result.model)
    if result.threshold is not None:
        headers["X-Anomaly-Threshold"] = repr(result.threshold)
    if result.input_warnings:
        headers["X-Input-Warning"] = " | ".join(result.input_warnings)
    if media == codecs.NPY_MEDIA_TYPE:
        return Response(npy_bytes(result.scores), media_type=media, headers=headers)
    out: dict[str, Any] = {
        "model": result.model.name,
        "version": result.model.version,
        "method": result.method.value,
        "scores": result.scores,
        "threshold": result.threshold,
        "threshold_source": result.threshold_source,
        "is_outlier": result.is_outlier,
    }
    if result.per_pixel is not None:
        out["per_pixel"] = result.per_pixel
    out["input_warnings"] = list(result.input_warnings)
    return Response(codecs.dumps_json(out), media_type=codecs.JSON_MEDIA_TYPE, headers=headers)
