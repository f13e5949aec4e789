"""The HTTP systems under test, each a real uvicorn subprocess on 127.0.0.1.

- `service`: latentserve as deployed (`python -m service serve` on the whole repository, so its
  startup time covers every bundled model), dynamic batching on, with the Open Inference
  Protocol's gRPC service on a second port (`grpc_port`).
- `service-nobatch`: the same with `LATENTSERVE_BATCHING=false`.
- `naive`: the baseline app in `bench/naive_server.py`.
- `bare`: the HTTP limit in `bench/bare_server.py` (fixed answers of latentserve's sizes).
- `pytriton`: the peer, Triton's dynamic batcher through PyTriton (`bench/pytriton_server.py`),
  under its own interpreter (`.venv-pytriton`, made by `scripts/install-pytriton.sh`, or the
  one `LATENTSERVE_BENCH_PYTRITON_PYTHON` names); it serves the Open Inference Protocol only,
  so it runs the `oip-*` and `grpc` decode workloads. Not in the default systems.

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

from bench.pytriton_server import decode_part
from service.hosts import asks_for_gpu, default_workers, gpu_visible, usable_cpus

ROOT = Path(__file__).resolve().parent.parent

SYSTEMS = ("service", "service-nobatch", "naive", "bare", "inprocess", "pytriton")
DEFAULT_SYSTEMS = SYSTEMS[:5]
HTTP_SYSTEMS = ("service", "service-nobatch", "naive", "bare", "pytriton")
PYTRITON_PYTHON_ENV = "LATENTSERVE_BENCH_PYTRITON_PYTHON"


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
    ready_path: str = "/readyz"
    about: str = ""  # a peer's own packages, for the report

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
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
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


def default_service_workers(providers: tuple[str, ...] = ("cpu",)) -> int:
    """The worker count `serve` picks on this host for the providers the servers here use."""
    gpu = asks_for_gpu(providers) and gpu_visible()
    return default_workers(list(providers), usable_cpus(), gpu=gpu)


def pytriton_python() -> Path | None:
    """The interpreter with PyTriton installed, or None when there is none."""
    path = Path(os.environ.get(PYTRITON_PYTHON_ENV) or ROOT / ".venv-pytriton" / "bin" / "python")
    return path if path.is_file() else None


def library_dir(python: Path) -> str:
    """The folder of `python`'s own libpython. Triton's Python backend stub links
    libpython3.X.so.1.0 and would load the system's copy (Debian's 3.11.2) beside this
    interpreter's standard library (pyenv's 3.11.7 here); the mismatch kills the model's start
    (`'_thread.RLock' object has no attribute '_recursion_count'`)."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_pytriton_server(
    repository: Path, models: list[str], env: dict[str, str], max_batch: int
) -> Server:
    python = pytriton_python()
    if python is None:
        raise RuntimeError(
            f"pytriton: no interpreter with PyTriton (run scripts/install-pytriton.sh, or set "
            f"{PYTRITON_PYTHON_ENV})"
        )
    libs = [library_dir(python), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    cmd = [str(python), "-m", "bench.pytriton_server", "--models", str(repository)]
    for model in models:
        cmd += ["--model", model]
    grpc_port = free_port()
    cmd += ["--grpc-port", str(grpc_port), "--metrics-port", str(free_port())]
    cmd += ["--max-batch", str(max_batch)]
    # Triton reports itself ready before PyTriton has bound the models: wait for the last one
    role, _ = decode_part(repository / models[-1])
    ready = f"/v2/models/{models[-1]}.{role}/ready"
    server = Server("pytriton", cmd, env, grpc_port=grpc_port, ready_path=ready)
    server.about = (
        "Triton's dynamic batcher through PyTriton, ONNX Runtime on the CPU ("
        + (package_versions(python, ("nvidia-pytriton", "onnxruntime", "numpy")))
        + ")"
    )
    return server


def package_versions(python: Path, names: tuple[str, ...]) -> str:
    """`name version, ...` as `python`'s environment has them."""
    code = (
        "import importlib.metadata as m, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: print(n, m.version(n))\n"
        "    except m.PackageNotFoundError: pass"
    )
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    return ", ".join(out.stdout.split("\n")[:-1]) or "versions unknown"


def make_server(
    system: str,
    repository: Path,
    models: list[str],
    extra_env: dict[str, str],
    workers: int = 1,
    sizes_file: Path | None = None,
    max_batch: int = 256,
    providers: tuple[str, ...] = ("cpu",),
    fp16: bool = False,
) -> Server:
    """A system's server, not yet started. latentserve runs on `providers` (a GPU one required to
    load, so a run meant for the GPU never measures the CPU fallback) and, with `fp16`, serves
    the manifests' fp16 copies."""
    env = {**os.environ, **extra_env}
    if system == "pytriton":
        return make_pytriton_server(repository, models, env, max_batch)
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
            "LATENTSERVE_PROVIDERS": ",".join(providers),
            "LATENTSERVE_REQUIRE_GPU": "true" if asks_for_gpu(providers) else "false",
            "LATENTSERVE_PREFER_FP16": "true" if fp16 else "false",
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
