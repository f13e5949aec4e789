"""The application factory: settings in, FastAPI app out. Sessions are created in the lifespan."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import __version__, heap
from service.api import schemas
from service.api.admin import models_router, probes_router
from service.api.direct import DirectRoutes
from service.api.errors import install_error_handlers
from service.api.inference import router as inference_router
from service.api.lifecycle import Drain
from service.api.metrics import Metrics
from service.api.middleware import DocsGuard, RequestContextMiddleware
from service.api.pages import install_pages
from service.hosts import usable_cpus
from service.logs import configure_logging
from service.oip.rest import infer_routes as oip_infer_routes
from service.oip.rest import probes as oip_probes
from service.oip.rest import router as oip_router
from service.runtime.batching import BatchingConfig
from service.runtime.dataplane import DataPlane, RequestLimits, choose_default_model
from service.runtime.monitoring import ScoreMonitor
from service.runtime.peers import ReloadSignals
from service.runtime.repository import ModelRepository
from service.runtime.sessions import SessionConfig
from service.settings import STARTUP_FAILED_MARKER, Settings, get_settings

if TYPE_CHECKING:
    from service.oip.grpc_server import GrpcFrontDoor

log = logging.getLogger("latentserve")

_BODY_SCHEMAS = (
    schemas.SampleRequest,
    schemas.EncodeRequest,
    schemas.DecodeRequest,
    schemas.ReconstructRequest,
    schemas.InterpolateRequest,
    schemas.AnomalyScoreRequest,
)


def auto_intra_op_threads(concurrent_batches: int, workers: int = 1) -> int:
    """The usable cores shared out among the batches that may run at once in every worker
    process, so they do not fight over them (ONNX Runtime's own default gives every session all
    cores)."""
    return max(1, usable_cpus() // (concurrent_batches * max(1, workers)))


def session_config(s: Settings) -> SessionConfig:
    return SessionConfig(
        providers=tuple(s.providers),
        require_gpu=s.require_gpu,
        cuda_device_id=s.cuda_device_id,
        cuda_mem_limit_bytes=s.cuda_mem_limit_mb * 2**20 if s.cuda_mem_limit_mb else None,
        cudnn_conv_algo_search=s.cudnn_conv_algo_search,
        extra_cuda_options=dict(s.cuda_options),
        intra_op_threads=s.intra_op_threads
        or auto_intra_op_threads(s.max_concurrent_batches, s.workers),
        gpu_intra_op_threads=s.intra_op_threads or 1,
        inter_op_threads=s.inter_op_threads,
        intra_op_spinning=s.intra_op_spinning,
        graph_optimization=s.graph_optimization,
        prefer_fp16=s.prefer_fp16,
    )


def batching_config(s: Settings) -> BatchingConfig:
    return BatchingConfig(
        enabled=s.batching,
        max_batch_size=s.max_batch_size,
        max_delay_ms=s.max_delay_ms,
        inline_max_s=s.inline_max_ms / 1000.0,
        max_queue_rows=s.max_queue_rows,
        max_concurrent_batches=s.max_concurrent_batches,
        max_queue_wait_s=s.max_queue_wait_ms / 1000.0,
    )


def request_limits(s: Settings) -> RequestLimits:
    return RequestLimits(
        max_samples=s.max_samples,
        max_iwae_k=s.max_iwae_k,
        max_sampled_values=s.max_sampled_values,
        max_interpolation_steps=s.max_interpolation_steps,
        request_timeout_s=s.request_timeout_s,
    )


async def start_grpc(app: FastAPI) -> GrpcFrontDoor | None:
    """The Open Inference Protocol's gRPC server on `grpc_port`, or None when it is off. grpcio
    is imported only here, so a server without the grpc extra serves HTTP as before."""
    settings: Settings = app.state.settings
    if not settings.grpc_port:
        return None
    try:
        from service.oip.grpc_server import GrpcFrontDoor
    except ImportError as exc:
        raise RuntimeError(
            f"LATENTSERVE_GRPC_PORT is set but gRPC cannot load ({exc}); install the grpc "
            "extra: pip install 'latentserve[grpc]'"
        ) from exc
    door = GrpcFrontDoor(app.state.data_plane, settings, app.state.metrics)
    await door.start()
    return door


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """`_serve` below; a startup that fails under `serve --workers N` is also written to the
    shared directory: uvicorn's supervisor stops the other workers but exits 0, and `serve`
    turns the marker into a failing exit status."""
    started = False
    try:
        async with _serve(app):
            started = True
            yield
    except BaseException:
        shared = app.state.settings.shared_state_dir
        if not started and shared is not None:
            (shared / STARTUP_FAILED_MARKER).touch()
        raise


@asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="inference")
    repo = ModelRepository(
        settings.model_repository,
        session_config(settings),
        batching_config(settings),
        executor,
        observer=app.state.metrics,
        enabled=frozenset(settings.enabled_models) if settings.enabled_models else None,
    )
    await repo.load_all()
    app.state.repository = repo
    default_model, warning = choose_default_model(
        settings.default_model,
        "default_model" in settings.model_fields_set,
        sorted(repo.models),
        sorted(repo.failures),
    )
    if warning:
        log.warning("%s; set LATENTSERVE_DEFAULT_MODEL to choose one", warning)
    metrics: Metrics = app.state.metrics
    monitor = None
    if settings.monitoring:
        monitor = ScoreMonitor(settings.monitor_window, settings.monitor_min_scores, metrics)
        metrics.watch(monitor)
    app.state.data_plane = DataPlane(repo, request_limits(settings), default_model, monitor)
    metrics.observe_repository(repo)
    follower: asyncio.Task[None] | None = None
    app.state.reload_signals = None
    if settings.shared_state_dir is not None:
        signals = ReloadSignals(settings.shared_state_dir / "reloads")
        app.state.reload_signals = signals
        follower = asyncio.create_task(
            signals.follow(repo, after_change=lambda: metrics.observe_repository(repo))
        )
    drain: Drain = app.state.drain
    drain.install(settings.shutdown_drain_s)
    log.info(
        "serving %d model(s) from %s: %s",
        len(repo.models),
        settings.model_repository,
        ", ".join(f"{n} on {m.provider}" for n, m in repo.models.items()) or "none",
    )
    grpc_door: GrpcFrontDoor | None = None
    try:
        grpc_door = await start_grpc(app)
        if settings.gc_freeze:
            heap.freeze()
        yield
    finally:
        if grpc_door is not None:
            await grpc_door.stop()  # in-flight calls finish before the models close
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await repo.close()
        heap.thaw()
        executor.shutdown(wait=True)
        metrics.process_exiting()
        drain.finished()
        log.info("shut down")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """Routes parse their bodies themselves (JSON, multipart, .npy); add their schemas here."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in _BODY_SCHEMAS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    app.openapi_schema = spec
    return spec


def _telemetry_options(enabled: bool) -> dict[str, Any]:
    """FastAPI releases with native OpenTelemetry look for a configured provider on every request
    (3% of the event loop under load); off unless asked for. Older releases lack the option."""
    if enabled or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title="latentserve",
        version=__version__,
        description="Samples, latent codes, reconstructions and outlier scores from generative "
        "models (AE, VAE, GAN) served by ONNX Runtime. Errors: "
        '`{"error": {"code", "message", "field"}}`.',
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from install_pages, with local assets
        redoc_url=None,
        **_telemetry_options(settings.opentelemetry),
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.drain = Drain()
    # innermost first: DirectRoutes sees requests after the request middleware (ids, limits,
    # logs, metrics) and before FastAPI's router
    direct = [*inference_router.routes, *oip_infer_routes()]
    app.add_middleware(DirectRoutes, routes=direct, settings=settings)
    app.add_middleware(DocsGuard, settings=settings)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=app.state.metrics,
        max_request_bytes=settings.max_request_bytes,
        drain=app.state.drain,
    )
    install_error_handlers(app)
    app.include_router(inference_router)
    app.include_router(models_router)
    app.include_router(probes_router)
    install_pages(app, ui=settings.ui)
    app.include_router(oip_probes)
    app.include_router(oip_router)  # last: it ends with the catch-all for unknown /v2 routes
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
