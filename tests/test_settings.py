"""Settings come from LATENTSERVE_* variables and fail fast on unusable values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.api.app import session_config
from service.settings import Settings


def test_environment_variables_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTSERVE_PROVIDERS", "CUDA, cpu")
    monkeypatch.setenv("LATENTSERVE_ENABLED_MODELS", "a,b")
    monkeypatch.setenv("LATENTSERVE_CUDA_OPTIONS", '{"enable_cuda_graph": "1"}')
    monkeypatch.setenv("LATENTSERVE_CUDA_MEM_LIMIT_MB", "512")
    monkeypatch.setenv("LATENTSERVE_API_KEY", "s3cr3t-key")
    s = Settings()
    assert s.providers == ["cuda", "cpu"] and s.enabled_models == ["a", "b"]
    cfg = session_config(s)
    assert cfg.providers == ("cuda", "cpu")
    assert cfg.extra_cuda_options == {"enable_cuda_graph": "1"}
    assert cfg.cuda_mem_limit_bytes == 512 * 2**20
    assert "s3cr3t-key" not in repr(s)  # the key is a secret
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cr3t-key"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("LATENTSERVE_PROVIDERS", "rocm", id="unknown-provider"),
        pytest.param("LATENTSERVE_MAX_BATCH_SIZE", "0", id="zero-batch"),
        pytest.param("LATENTSERVE_GRAPH_OPTIMIZATION", "max", id="bad-level"),
        pytest.param("LATENTSERVE_CUDA_OPTIONS", "not json", id="bad-json"),
        pytest.param("LATENTSERVE_GRPC_PORT", "70000", id="grpc-port-out-of-range"),
    ],
)
def test_unusable_values_fail_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, SettingsError)):
        Settings()


@pytest.mark.parametrize("enabled", [False, True])
async def test_opentelemetry_setting_decides_whether_fastapi_looks_for_a_tracer(
    app_with: Any, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """Off by default because FastAPI's per-request provider lookup showed in the profile."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        pytest.skip("this FastAPI has no native OpenTelemetry")
    from opentelemetry import trace

    lookups = 0
    real = trace.get_tracer_provider

    def counting() -> Any:
        nonlocal lookups
        lookups += 1
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counting)
    async with app_with(opentelemetry=enabled) as client:
        for seed in range(3):
            r = await client.post("/sample", json={"n": 1, "seed": seed})
            assert r.status_code == 200 and len(r.json()["samples"]) == 1
    assert (lookups >= 3) if enabled else (lookups == 0)
