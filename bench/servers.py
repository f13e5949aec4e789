"""The HTTP systems under test, each a real uvicorn subprocess on 127.0.0.1.

- `service`: latentserve as deployed (`python -m service serve` on the whole repository, so its
  startup time covers every bundled model), dynamic batching on, with the Open Inference
  Protocol's gRPC service on a second port (`grpc_port`).
- `service-nobatch`: the same with `LATENTSERVE_BATCHING=false`.
- `naive`: the baseline app in `bench/naive_server.py`.
- `bare`: the HTTP limit in `bench/bare_server.py` (fixed answers of latentserve's sizes).

Startup is timed from spawning the process to the first 200 from `/readyz`. The tests' live
server (`tests/conftest.py`) is this same `Server`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

import httpx

ROOT = Path(__file__).resolve().parent.parent

SYSTEMS = ("service", "service-nobatch", "naive", "bare", "inprocess")
HTTP_SYSTEMS = SYSTEMS[:4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    system: str
    command: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    grpc_port: int | None = None
    startup_s: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str | None:
        return None if self.grpc_port is None else f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 60.0) -> Self:
        # a file, not a pipe: a pipe nobody reads fills up and blocks the server's logging
        self.log = tempfile.NamedTemporaryFile(prefix=f"{self.system}-", suffix=".log")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*self.command, "--port", str(self.port)],
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} exited early:\n{self.output()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    self.startup_s = time.perf_counter() - t0
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.system} did not become ready in {timeout_s} s")

    def output(self) -> str:
        """Everything the server logged so far."""
        if self.log is None:
            return ""
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> str:
        """Terminate (SIGTERM, then SIGKILL after 30 s) and return the whole log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        out = self.output()
        if self.log is not None:
            self.log.close()  # deletes the file
            self.log = None
        return out


def default_service_workers() -> int:
    """The worker count `serve` picks on this host for the CPU provider the servers here use."""
    from service.hosts import default_workers, usable_cpus

    return default_workers(["cpu"], usable_cpus(), gpu=False)


def make_server(
    system: str,
    repository: Path,
    models: list[str],
    extra_env: dict[str, str],
    workers: int = 1,
    sizes_file: Path | None = None,
) -> Server:
    env = {**os.environ, **extra_env}
    if system == "bare":
        if sizes_file is None:
            raise ValueError("the bare server needs the response sizes (bench.bare_server)")
        cmd = [sys.executable, "-m", "bench.bare_server", "--sizes", str(sizes_file)]
        return Server(system, cmd, env)
    if system == "naive":
        cmd = [sys.executable, "-m", "bench.naive_server", "--models", str(repository)]
        return Server(system, cmd, env)
    grpc_port = free_port()
    env.update(
        {
            "LATENTSERVE_MODEL_REPOSITORY": str(repository),
            "LATENTSERVE_DEFAULT_MODEL": models[0],
            "LATENTSERVE_PROVIDERS": "cpu",
            "LATENTSERVE_BATCHING": "false" if system == "service-nobatch" else "true",
            "LATENTSERVE_GRPC_PORT": str(grpc_port),
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--host",
        "127.0.0.1",
        "--workers",
        str(workers),
    ]
    return Server(system, cmd, env, grpc_port=grpc_port)
