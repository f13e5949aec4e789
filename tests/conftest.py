"""Shared fixtures: the bundled model repository, an in-process app (with its lifespan), a real
uvicorn server on 127.0.0.1, and held-out digits."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.servers import Server, free_port
from service.api.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds, instead of sleeping for a guess of how long that takes:
    a slow or busy machine only waits longer, and a fast one does not wait at all."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The test split of sklearn digits with the seed digits-vae was trained with: never seen in
    training or calibration."""
    from training.data import load_digits

    splits = load_digits(seed=0)
    return splits.test.x, splits.test.y


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests run last. Playwright's sync API (behind pytest-playwright's session-wide
    `playwright` fixture) leaves its event loop marked as running in the main thread until the
    session ends, so an asyncio test after a browser test could not run its own loop."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "model_repository": MODELS,
        "providers": ["cpu"],
        "log_json": True,
        "log_level": "WARNING",
        "enabled_models": ["digits-vae"],
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


class AppClient(httpx.AsyncClient):
    app: object


async def _client_for(settings: Settings) -> AsyncIterator[AppClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AppClient(transport=transport, base_url="http://test") as client:
            client.app = app
            yield client


@pytest.fixture
async def client() -> AsyncIterator[AppClient]:
    """The real app in-process, lifespan included (models loaded, sessions created)."""
    async for c in _client_for(make_settings()):
        yield c


@pytest.fixture
def app_with():
    """Factory: an in-process client for custom settings (async context manager)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def factory(**overrides: object) -> AsyncIterator[AppClient]:
        async for c in _client_for(make_settings(**overrides)):
            yield c

    return factory


class LiveServer(Server):
    """A real `python -m service serve` on 127.0.0.1 on the CPU; `args` adds `serve` options,
    e.g. ("--workers", "2"). Spawning, the wait for /readyz and stopping are the benchmark's."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        if "--workers" not in args:  # one process unless a test asks for more (the default
            args = ("--workers", "1", *args)  # follows the host's cores: tests/test_hosts.py)
        super().__init__(
            "latentserve",
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", *args],
            {**os.environ, "LATENTSERVE_PROVIDERS": "cpu", "LATENTSERVE_LOG_LEVEL": "INFO", **env},
        )


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """A real `python -m service serve` process on the bundled models, shared by e2e tests,
    with the Open Inference Protocol's gRPC service on `grpc_port`."""
    grpc_port = free_port()
    env = {"LATENTSERVE_MODEL_REPOSITORY": str(MODELS), "LATENTSERVE_GRPC_PORT": str(grpc_port)}
    server = LiveServer(env)
    server.grpc_port = grpc_port
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A writable copy of the repository holding digits-vae only (for reload/corruption tests)."""
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copytree(MODELS / "digits-vae", repo / "digits-vae")
    return repo
