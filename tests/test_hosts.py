"""How many workers `serve` starts by default, and the cores each one's sessions use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.servers import Server
from service.api.app import auto_intra_op_threads
from service.hosts import MAX_AUTO_WORKERS, default_workers, gpu_visible, usable_cpus
from tests.conftest import MODELS
from tests.logs import messages


def test_a_container_cpu_quota_bounds_the_usable_cores(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity  # no cgroup file: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5-core limit
    assert usable_cpus(tmp_path) == min(affinity, 1)
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core still gets one
    assert usable_cpus(tmp_path) == 1


def test_a_gpu_is_seen_by_its_device_node(tmp_path: Path) -> None:
    assert not gpu_visible(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the control node alone is not a GPU
    assert not gpu_visible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_visible(tmp_path)


@pytest.mark.parametrize(
    ("providers", "cpus", "gpu", "expected"),
    [
        (["cuda", "cpu"], 2, False, 2),  # GPU asked for but absent: a CPU host
        (["cuda", "cpu"], 16, True, 8),  # one per two cores (measured on an H200 host)
        (["cuda", "cpu"], 2, True, 1),
        (["cpu"], 16, True, min(16, MAX_AUTO_WORKERS)),  # the GPU is not used
        (["cpu"], 1, False, 1),
        (["cpu"], 64, False, MAX_AUTO_WORKERS),
    ],
)
def test_default_workers(providers: list[str], cpus: int, gpu: bool, expected: int) -> None:
    assert default_workers(providers, cpus, gpu) == expected


def test_workers_share_the_cores_for_session_threads() -> None:
    cores = usable_cpus()
    assert auto_intra_op_threads(1, 1) == cores
    assert auto_intra_op_threads(2, cores) == 1
    assert auto_intra_op_threads(1, 4 * cores) == 1  # never below one


@pytest.mark.e2e
def test_serve_starts_the_hosts_default_worker_count() -> None:
    expected = default_workers(["cpu"], usable_cpus(), gpu=False)
    env = {
        **os.environ,
        "LATENTSERVE_PROVIDERS": "cpu",
        "LATENTSERVE_MODEL_REPOSITORY": str(MODELS),
        "LATENTSERVE_ENABLED_MODELS": "digits-vae",
        "LATENTSERVE_DEFAULT_MODEL": "digits-vae",
    }
    env.pop("LATENTSERVE_WORKERS", None)
    cmd = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"]
    server = Server("latentserve", cmd, env).start()
    try:
        pids = set()
        for _ in range(40):  # keep-alive off: connections spread over the workers
            r = httpx.get(f"{server.url}/metrics", headers={"connection": "close"})
            pids.update(re.findall(r'latentserve_process_up\{pid="(\d+)"\}', r.text))
    finally:
        log = server.stop()
    noun = "process" if expected == 1 else "processes"
    assert any(f"with {expected} worker {noun}" in m for m in messages(log)), log[-2000:]
    assert len(pids) == expected


@pytest.mark.e2e
@pytest.mark.skipif(gpu_visible(), reason="needs a host where CUDA cannot start")
def test_a_worker_that_fails_to_start_fails_serve(tmp_path: Path) -> None:
    """uvicorn's supervisor exits 0 when a worker fails at startup; `serve` must not."""
    env = {
        **os.environ,
        "LATENTSERVE_PROVIDERS": "cuda",
        "LATENTSERVE_REQUIRE_GPU": "true",  # no GPU here: every worker's startup fails
        "LATENTSERVE_MODEL_REPOSITORY": str(MODELS),
        "LATENTSERVE_ENABLED_MODELS": "digits-vae",
    }
    cmd = [sys.executable, "-m", "service", "serve", "--workers", "2", "--port", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "a worker process failed to start" in done.stderr
