"""FastAPI dependencies: the repository, settings, metrics and API-key auth.

All are `async def`: FastAPI runs plain `def` dependencies in a thread pool, a thread hop per
dependency per request for work that takes microseconds.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.api.metrics import Metrics
from service.errors import Unauthorized
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


def serving_state(request: Request) -> tuple[ModelRepository, Settings]:
    """The repository and settings of the app serving `request`. Inference routes call this
    instead of declaring two dependencies: FastAPI's dependency resolution took a tenth of the
    event loop's time per request under load (docs/benchmarks.md)."""
    state = request.app.state
    return state.repository, state.settings


async def require_api_key(request: Request) -> None:
    """Bearer-token check in constant time; a no-op when no key is configured."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized(
            "missing or wrong API key: send 'Authorization: Bearer <key>'", field="Authorization"
        )
