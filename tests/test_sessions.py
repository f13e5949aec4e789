"""Execution providers: what one app learns about the GPU stays in that app's repository, and the
provider an app reports is the one its sessions say they run on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from service.runtime import sessions
from service.runtime.sessions import ProviderState, SessionConfig, create_session
from tests.conftest import MODELS

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class _Reported:
    """A real CPU session that reports the providers a real one would have come up on."""

    def __init__(self, session: ort.InferenceSession, providers: list[str]) -> None:
        self._session = session
        self._providers = providers

    def get_providers(self) -> list[str]:
        return self._providers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class SimulatedGpu:
    """onnxruntime on a machine that lists CUDA: sessions run on the CPU, and come up on CUDA
    (by their own report) only while `works` is set and CUDA was asked for. `asked` records the
    providers each session start asked for, in order."""

    def __init__(self) -> None:
        self.works = False
        self.asked: list[list[str]] = []
        self.threads: list[int] = []  # each start's intra-op threads
        self._real = ort.InferenceSession

    def session(self, path: str, sess_options: Any = None, providers: Any = ()) -> _Reported:
        asked = [p if isinstance(p, str) else p[0] for p in providers]
        self.asked.append(asked)
        self.threads.append(sess_options.intra_op_num_threads)
        real = self._real(path, sess_options=sess_options, providers=[CPU])
        return _Reported(real, asked if self.works and asked[0] == CUDA else [CPU])


@pytest.fixture
def simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> SimulatedGpu:
    gpu = SimulatedGpu()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", gpu.session)
    monkeypatch.setattr(sessions, "_preload_cuda_libraries", lambda: None)
    return gpu


async def test_a_gpu_failure_in_one_app_does_not_reach_the_next(
    app_with: Any, simulated_gpu: SimulatedGpu
) -> None:
    # One thread on the GPU and on the CPU alike, so the fallback needs no second start.
    async with app_with(providers=["cuda", "cpu"], intra_op_threads=1) as first:
        assert (await first.get("/models/digits-vae")).json()["provider"] == "cpu"
    # The encoder tried CUDA and came up on the CPU; the decoder of the same app skipped the retry.
    assert simulated_gpu.asked == [[CUDA, CPU], [CPU]]

    simulated_gpu.asked.clear()
    simulated_gpu.works = True  # e.g. the driver is back: a new app must try again
    async with app_with(providers=["cuda", "cpu"], intra_op_threads=1) as second:
        assert (await second.get("/models/digits-vae")).json()["provider"] == "cuda"
        assert second.app.state.repository.provider_state == ProviderState()  # type: ignore[attr-defined]
    assert simulated_gpu.asked == [[CUDA, CPU], [CUDA, CPU]]


def test_the_provider_state_records_the_fallback_once(
    simulated_gpu: SimulatedGpu, caplog: pytest.LogCaptureFixture
) -> None:
    path = MODELS / "digits-vae" / "decoder.onnx"
    state = ProviderState()
    cfg = SessionConfig(providers=("cuda", "cpu"))
    used = [create_session(path, cfg, state).get_providers()[0] for _ in range(3)]
    assert used == [CPU, CPU, CPU]
    assert state == ProviderState(gpu_failed=True, fallback_reported=True)
    assert simulated_gpu.asked == [[CUDA, CPU], [CPU], [CPU], [CPU]]
    warnings = [r.getMessage() for r in caplog.records if r.name == "latentserve.runtime"]
    assert warnings == [
        "GPU execution provider requested (cuda,cpu) but unavailable; running on CPU"
    ]
    # Without a state of its own, every start is a first start.
    simulated_gpu.asked.clear()
    create_session(Path(path), cfg)
    create_session(Path(path), cfg)
    assert simulated_gpu.asked == [[CUDA, CPU], [CPU], [CUDA, CPU], [CPU]]


def test_a_gpu_session_gets_one_thread_and_a_fallback_the_cpu_threads(
    simulated_gpu: SimulatedGpu,
) -> None:
    """On a GPU a session runs only its CPU-side nodes on its own threads, and a pool of all
    the cores per part and worker took the HTTP servers' cores (docs/benchmarks.md#gpu); when
    the GPU fails, the CPU session that serves instead gets the CPU's threads."""
    path = MODELS / "digits-vae" / "decoder.onnx"
    cfg = SessionConfig(providers=("cuda", "cpu"), intra_op_threads=6, gpu_intra_op_threads=1)
    simulated_gpu.works = True
    assert create_session(path, cfg).get_providers()[0] == CUDA
    assert (simulated_gpu.asked, simulated_gpu.threads) == ([[CUDA, CPU]], [1])
    simulated_gpu.asked.clear()
    simulated_gpu.threads.clear()
    simulated_gpu.works = False
    assert create_session(path, cfg).get_providers()[0] == CPU
    assert (simulated_gpu.asked, simulated_gpu.threads) == ([[CUDA, CPU], [CPU]], [1, 6])
    simulated_gpu.threads.clear()
    create_session(path, SessionConfig(providers=("cpu",), intra_op_threads=6))
    assert simulated_gpu.threads == [6]
