"""Shared fixtures: the bundled model repository, an in-process app (with its lifespan), a real
uvicorn server on 127.0.0.1, and held-out digits."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.api.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The test split of sklearn digits with the seed digits-vae was trained with: never seen in
    training or calibration."""
    from training.data import load_digits

    splits = load_digits(seed=0)
    return splits.test.x, splits.test.y


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(
        self, env: dict[str, str], port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.args = args  # more `serve` options, e.g. ("--workers", "2")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "LATENTSERVE_PROVIDERS": "cpu",
            "LATENTSERVE_LOG_LEVEL": "INFO",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        # a file, not a pipe: a pipe nobody reads fills up and blocks the server's logging
        self.log = tempfile.NamedTemporaryFile(prefix="latentserve-", suffix=".log", delete=False)

    def start(self, timeout: float = 30.0) -> LiveServer:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    self.startup_s = time.perf_counter() - t0
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not become ready")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.log.close()
        out = self.output()
        Path(self.log.name).unlink(missing_ok=True)
        return out

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """A real `python -m service serve` process on the bundled models, shared by e2e tests."""
    server = LiveServer({"LATENTSERVE_MODEL_REPOSITORY": str(MODELS)}).start()
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
