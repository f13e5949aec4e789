"""Several worker processes behind one port: reloads reach all of them and /metrics sums them."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.manifest import Manifest
from tests.conftest import LiveServer, wait_for


async def _until(check: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_a_reload_in_one_process_reaches_the_others(
    app_with: Any, model_copy: Path, tmp_path: Path
) -> None:
    shared = {"model_repository": model_copy, "shared_state_dir": tmp_path / "shared"}
    async with app_with(**shared) as a, app_with(**shared) as b:
        folder = model_copy / "digits-vae"
        Manifest.load(folder).model_copy(update={"version": "2"}).save(folder)
        r = await a.post("/models/digits-vae/reload")
        assert r.status_code == 200 and r.json()["version"] == "2"
        announced = a.app.state.repository.get("digits-vae")  # type: ignore[attr-defined]

        async def b_serves_version_2() -> bool:
            return bool((await b.get("/models/digits-vae")).json()["version"] == "2")

        await _until(b_serves_version_2)
        await asyncio.sleep(0.6)  # a poll interval: the announcer must not reload its own
        assert a.app.state.repository.get("digits-vae") is announced  # type: ignore[attr-defined]
        r = await b.post("/sample", json={"n": 2, "seed": 3})
        assert r.status_code == 200 and r.headers["x-model-version"] == "2"


async def test_a_rescan_in_one_process_loads_new_models_in_the_others(
    app_with: Any, model_copy: Path, tmp_path: Path
) -> None:
    shared = {
        "model_repository": model_copy,
        "shared_state_dir": tmp_path / "shared",
        "enabled_models": None,
    }
    async with app_with(**shared) as a, app_with(**shared) as b:
        new = model_copy / "digits-vae-b"
        shutil.copytree(model_copy / "digits-vae", new)
        Manifest.load(new).model_copy(update={"name": "digits-vae-b"}).save(new)
        r = await a.post("/models/reload")
        assert "digits-vae-b" in [m["name"] for m in r.json()["models"]]

        async def b_lists_it() -> bool:
            return bool((await b.get("/models/digits-vae-b")).status_code == 200)

        await _until(b_lists_it)
        metrics = (await b.get("/metrics")).text
        assert re.search(r"^latentserve_models_loaded 2\.0$", metrics, re.M)


@pytest.mark.e2e
def test_two_worker_processes_sum_metrics_and_follow_reloads(model_copy: Path) -> None:
    env = {"LATENTSERVE_MODEL_REPOSITORY": str(model_copy), "LATENTSERVE_LOG_LEVEL": "WARNING"}
    server = LiveServer(env, args=("--workers", "2")).start(timeout_s=60)
    try:
        n = 40
        for seed in range(n):  # a new connection each time, so both processes take some
            r = httpx.post(f"{server.url}/sample", json={"n": 1, "seed": seed})
            assert r.status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        counted = re.findall(
            r'^latentserve_requests_total\{endpoint="/sample",method="POST",status="200"\} (\S+)$',
            text,
            re.M,
        )
        assert [float(c) for c in counted] == [n], text[:2000]  # summed over both processes
        pids = re.findall(r'^latentserve_process_up\{pid="(\d+)"\} 1\.0$', text, re.M)
        assert len(set(pids)) == 2

        folder = model_copy / "digits-vae"
        Manifest.load(folder).model_copy(update={"version": "2"}).save(folder)
        r = httpx.post(f"{server.url}/models/digits-vae/reload")
        assert r.status_code == 200 and r.json()["version"] == "2"
        url = f"{server.url}/models/digits-vae"

        def every_process_serves_version_2() -> bool:
            # a new connection each time, so both processes answer some of the 20
            return {httpx.get(url).json()["version"] for _ in range(20)} == {"2"}

        wait_for(every_process_serves_version_2, "the reload reached the other process")
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
