"""Model listing, reload, health, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from service.api import schemas
from service.api.deps import MetricsDep, RepositoryDep, data_plane, require_api_key
from service.api.schemas import (
    ErrorBody,
    ErrorDetail,
    Health,
    ModelInfo,
    ModelList,
    ModelMonitoring,
    PartInfo,
    QueueInfo,
    Readiness,
    ReloadFailed,
    ReloadOutcome,
    ReloadReport,
    ScoreBin,
)
from service.errors import ModelNotFound
from service.runtime.model import GenerativeModel
from service.runtime.monitoring import MethodMonitoring
from service.runtime.peers import RESCAN, ReloadSignals
from service.runtime.repository import LoadFailure, ModelRepository

models_router = APIRouter(dependencies=[Depends(require_api_key)], tags=["models"])
probes_router = APIRouter(tags=["probes"])


def describe(model: GenerativeModel, full: bool = False) -> ModelInfo:
    m = model.manifest
    caps = model.capabilities
    return ModelInfo(
        name=m.name,
        version=m.version,
        kind=m.kind.value,
        status="ready",
        provider=model.provider,
        precision=model.precision,
        input_shape=list(m.input.shape),
        image_shape=list(m.input.image_shape) if m.input.image_shape else None,
        value_range=list(m.input.value_range),
        binarized=m.input.binarized,
        latent_dim=m.latent_dim,
        num_classes=m.num_classes,
        operations=[op.value for op in caps.operations],
        score_methods=[method.value for method in caps.score_methods],
        parts=[
            PartInfo(
                role=role.value,
                file=p.path,
                inputs=[t.model_dump() for t in p.inputs],
                outputs=[t.model_dump() for t in p.outputs],
            )
            for role, p in m.parts.items()
        ],
        calibration={k: c.model_dump() for k, c in m.calibration.items()},
        metrics=m.metrics,
        queue={
            role.value: QueueInfo(
                rows_per_second=part.batcher.rows_per_second,
                queued_rows=part.batcher.queued_rows,
                expected_wait_s=part.batcher.expected_wait_s(),
            )
            for role, part in model.parts.items()
        },
        manifest=m.model_dump(mode="json") if full else None,
    )


def describe_failure(f: LoadFailure) -> ModelInfo:
    return ModelInfo(name=f.name, status="failed", error=f.error)


def _all(repo: ModelRepository) -> list[ModelInfo]:
    infos = [describe(m) for m in repo.models.values()]
    infos += [describe_failure(f) for f in repo.failures.values()]
    return sorted(infos, key=lambda i: i.name)


@models_router.get("/models", response_model=ModelList, summary="Models and their status")
async def list_models(repo: RepositoryDep, request: Request) -> ModelList:
    return ModelList(default_model=data_plane(request).default_model, models=_all(repo))


@models_router.get(
    "/models/{name}",
    response_model=ModelInfo,
    summary="One model, with manifest",
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def get_model(name: str, repo: RepositoryDep) -> ModelInfo:
    if name in repo.models:
        return describe(repo.models[name], full=True)
    if name in repo.failures:
        return describe_failure(repo.failures[name])
    raise ModelNotFound(f"no model named {name!r}", field="name")


@models_router.get(
    "/models/{name}/monitoring",
    response_model=ModelMonitoring,
    summary="Outlier rate and drift of the model's recent anomaly scores",
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def model_monitoring(name: str, request: Request) -> ModelMonitoring:
    """Per calibrated score method, the recent window of `/anomaly-score` scores against the
    calibration: the outlier rate beside the expected one, and the drift index (PSI) with its
    threshold. The figures are this process's (see `process_id`); README: Monitoring."""
    settings = request.app.state.settings
    model, methods = data_plane(request).monitoring(name)
    return ModelMonitoring(
        model=model.name,
        version=model.version,
        enabled=methods is not None,
        process_id=os.getpid(),
        min_scores=settings.monitor_min_scores,
        methods=[_method_info(m) for m in methods or []],
    )


def _time(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _method_info(m: MethodMonitoring) -> schemas.MethodMonitoring:
    return schemas.MethodMonitoring(
        method=m.method.value,
        window_size=m.window_size,
        scores=m.scores,
        outliers=m.outliers,
        outlier_rate=m.outlier_rate,
        expected_rate=m.expected_rate,
        threshold=m.threshold,
        drift=schemas.DriftInfo(
            statistic="psi",
            value=m.drift.value,
            threshold=m.drift.threshold,
            drifted=m.drift.drifted,
        ),
        started=datetime.fromtimestamp(m.started, UTC),
        since=_time(m.since),
        last=_time(m.last),
        scored=m.scored,
        quantiles=m.quantiles,
        bins=[ScoreBin(**vars(b)) for b in m.bins],
    )


@models_router.post(
    "/models/{name}/reload",
    response_model=ModelInfo,
    summary="Load the model's folder again and swap it in",
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def reload_model(
    name: str, request: Request, repo: RepositoryDep, metrics: MetricsDep
) -> ModelInfo:
    """The new version serves once fully loaded; requests in flight finish on the old one. A
    version that fails to load leaves the old one serving (409). Under `serve --workers N` the
    other processes follow within a second."""
    try:
        model = await repo.reload(name)
    finally:
        metrics.observe_repository(repo)
    _announce(request, name)
    return describe(model, full=True)


def _announce(request: Request, target: str) -> None:
    signals: ReloadSignals | None = getattr(request.app.state, "reload_signals", None)
    if signals is not None:
        signals.announce(target)


@models_router.post(
    "/models/reload",
    response_model=ReloadReport,
    summary="Rescan the repository: load new models, reload changed ones",
    responses={409: {"model": ReloadFailed}},
)
async def reload_all(request: Request, repo: RepositoryDep, metrics: MetricsDep) -> Response:
    """Every model's outcome is reported; when any failed (a model that never loaded, or a new
    version that did not load while the old one keeps serving) the answer is 409."""
    outcomes = await repo.load_all()
    metrics.observe_repository(repo)
    _announce(request, RESCAN)
    report = ReloadReport(
        default_model=data_plane(request).default_model,
        models=_all(repo),
        outcomes=[ReloadOutcome(**vars(o)) for o in outcomes],
    )
    failed = [o for o in outcomes if o.status in ("failed", "kept")]
    if not failed:
        return Response(report.model_dump_json(), media_type="application/json")
    detail = ErrorDetail(
        code="model_load_error",
        message=f"{len(failed)} of {len(outcomes)} models failed to load: "
        + "; ".join(f"{o.name}: {o.error}" for o in failed),
    )
    body = ReloadFailed(error=detail, **report.model_dump())
    return Response(body.model_dump_json(), status_code=409, media_type="application/json")


@probes_router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health()


@probes_router.get(
    "/readyz", response_model=Readiness, summary="Readiness", responses={503: {"model": Readiness}}
)
async def readyz(repo: RepositoryDep, request: Request) -> Response:
    draining = request.app.state.drain.draining
    body = Readiness(
        ready=repo.ready and not draining,
        draining=draining,
        models_loaded=sorted(repo.models),
        models_failed={k: f.error for k, f in repo.failures.items()},
    )
    return Response(
        body.model_dump_json(),
        status_code=200 if body.ready else 503,
        media_type="application/json",
    )


@probes_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(repo: RepositoryDep, metrics: MetricsDep) -> Response:
    metrics.observe_repository(repo)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
