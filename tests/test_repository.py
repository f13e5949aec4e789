"""Loading, verification, skipping broken models, and hot reload."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.manifest import Manifest

ROW = [[0.5] * 64]


async def test_checksum_mismatch_is_reported_and_others_serve(app_with, model_copy: Path) -> None:
    shutil.copytree(model_copy / "digits-vae", model_copy / "broken")
    manifest = json.loads((model_copy / "broken" / "model.json").read_text())
    manifest["name"] = "broken"
    (model_copy / "broken" / "model.json").write_text(json.dumps(manifest))
    with (model_copy / "broken" / "decoder.onnx").open("ab") as f:
        f.write(b"tampered")
    async with app_with(model_repository=model_copy, enabled_models=None) as c:
        models = {m["name"]: m for m in (await c.get("/models")).json()["models"]}
        assert models["digits-vae"]["status"] == "ready"
        assert models["broken"]["status"] == "failed"
        assert "sha256" in models["broken"]["error"]
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and "broken" in ready.json()["models_failed"]
        r = await c.post("/sample", json={"model": "broken"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert (await c.post("/sample", json={"model": "digits-vae"})).status_code == 200


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda m: m.pop("parts"), id="missing-parts"),
        pytest.param(lambda m: m.update(kind="diffusion"), id="unknown-kind"),
        pytest.param(
            lambda m: m["parts"]["encoder"].update(path="../../etc/passwd.onnx"), id="path-escape"
        ),
        pytest.param(lambda m: m.update(name="other"), id="name-mismatch"),
        pytest.param(lambda m: m.update(format_version=99), id="future-format"),
    ],
)
async def test_invalid_manifests_are_skipped(app_with, model_copy: Path, corrupt) -> None:
    path = model_copy / "digits-vae" / "model.json"
    manifest = json.loads(path.read_text())
    corrupt(manifest)
    path.write_text(json.dumps(manifest))
    async with app_with(model_repository=model_copy) as c:
        info = (await c.get("/models/digits-vae")).json()
        assert info["status"] == "failed" and info["error"]
        assert (await c.get("/readyz")).status_code == 503
        assert (await c.get("/healthz")).status_code == 200


async def test_reload_swaps_version_and_keeps_old_on_failure(app_with, model_copy: Path) -> None:
    folder = model_copy / "digits-vae"
    async with app_with(model_repository=model_copy) as c:
        before = (await c.post("/sample", json={"n": 2, "seed": 1})).json()
        manifest = Manifest.load(folder)
        manifest.model_copy(update={"version": "2"}).save(folder)
        r = await c.post("/models/digits-vae/reload")
        assert r.status_code == 200 and r.json()["version"] == "2"
        after = (await c.post("/sample", json={"n": 2, "seed": 1})).json()
        assert after["version"] == "2" and after["samples"] == before["samples"]

        (folder / "encoder.onnx").write_bytes(b"not a model")
        r = await c.post("/models/digits-vae/reload")
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_load_error"
        still = await c.post("/encode", json={"inputs": ROW})
        assert still.status_code == 200
        assert (await c.get("/models/digits-vae")).json()["version"] == "2"


async def test_reload_under_concurrent_load_fails_no_request(app_with, model_copy: Path) -> None:
    folder = model_copy / "digits-vae"
    async with app_with(model_repository=model_copy) as c:
        stop = asyncio.Event()
        statuses: list[int] = []

        async def hammer() -> None:
            i = 0
            while not stop.is_set():
                r = await c.post(
                    "/anomaly-score", json={"inputs": ROW, "method": "elbo", "seed": i}
                )
                statuses.append(r.status_code)
                i += 1

        workers = [asyncio.create_task(hammer()) for _ in range(8)]
        for version in ("2", "3", "4"):
            Manifest.load(folder).model_copy(update={"version": version}).save(folder)
            assert (await c.post("/models/digits-vae/reload")).status_code == 200
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)
        assert len(statuses) > 20 and set(statuses) == {200}


async def test_repository_rescan_picks_up_new_models(app_with, model_copy: Path) -> None:
    async with app_with(model_repository=model_copy, enabled_models=None) as c:
        assert [m["name"] for m in (await c.get("/models")).json()["models"]] == ["digits-vae"]
        shutil.copytree(model_copy / "digits-vae", model_copy / "digits-vae-b")
        m = Manifest.load(model_copy / "digits-vae-b")
        m.model_copy(update={"name": "digits-vae-b"}).save(model_copy / "digits-vae-b")
        r = (await c.post("/models/reload")).json()
        assert sorted(x["name"] for x in r["models"]) == ["digits-vae", "digits-vae-b"]
        out = (await c.post("/sample", json={"model": "digits-vae-b", "seed": 0})).json()
        ref = (await c.post("/sample", json={"model": "digits-vae", "seed": 0})).json()
        np.testing.assert_array_equal(out["samples"], ref["samples"])


async def test_require_gpu_refuses_to_start_without_cuda(app_with) -> None:
    from service.errors import ProviderUnavailable
    from tests.gpu import cuda_works

    if cuda_works():
        pytest.skip("this machine has a working CUDA provider")
    with pytest.raises(ProviderUnavailable):
        async with app_with(providers=["cuda"], require_gpu=True):
            pass


async def test_enabled_model_without_folder_is_reported(app_with, model_copy: Path) -> None:
    async with app_with(
        model_repository=model_copy, enabled_models=["digits-vae", "not-there"]
    ) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        assert "has no folder not-there/" in ready.json()["models_failed"]["not-there"]
        assert (await c.post("/sample", json={"n": 1})).status_code == 200
