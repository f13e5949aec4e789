"""FastAPI dependencies: the repository, settings, metrics and API-key auth.

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a thread hop per
dependency per request for work that takes microseconds.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request

from service.api.metrics import Metrics
from service.auth import API_KEY_HINT, api_key_accepted
from service.errors import InvalidInput, Unauthorized
from service.runtime.dataplane import DataPlane
from service.runtime.repository import ModelRepository
from service.settings import Settings


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_repository(request: Request) -> ModelRepository:
    repo: ModelRepository = request.app.state.repository
    return repo


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def data_plane(request: Request) -> DataPlane:
    """The data plane of the app serving `request`. Inference routes call this instead of
    declaring a dependency: FastAPI's dependency resolution took a tenth of the event loop's
    time per request under load (docs/benchmarks.md)."""
    plane: DataPlane = request.app.state.data_plane
    return plane


TIMEOUT_HEADER = "x-request-timeout"


def request_timeout(request: Request) -> float | None:
    """The request's own timeout in seconds, from the `X-Request-Timeout` header (None: the
    server's default applies)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInput("must be a positive number of seconds", field="X-Request-Timeout")
    return seconds


async def require_api_key(request: Request) -> None:
    """Bearer-token check in constant time; a no-op when no key is configured."""
    settings: Settings = request.app.state.settings
    if not api_key_accepted(settings.api_key, request.headers.get("authorization")):
        raise Unauthorized(API_KEY_HINT, field="Authorization")


def has_api_key(settings: Settings, authorization: str | None) -> bool:
    """True when no key is configured or `authorization` is `Bearer <key>` (constant time)."""
    return api_key_accepted(settings.api_key, authorization)


UNAUTHORIZED = API_KEY_HINT
