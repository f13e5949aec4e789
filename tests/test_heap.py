"""The heap is frozen once the app has started (service/heap.py): full collections no longer
walk the libraries and models, and a model a reload replaces is still collected."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

from service.manifest import Manifest


async def test_startup_freezes_the_heap_and_shutdown_thaws_it(app_with) -> None:
    assert gc.get_freeze_count() == 0
    async with app_with() as c:
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the libraries and the model, not a handful
        assert (await c.post("/sample", json={"n": 2, "seed": 0})).status_code == 200
        assert gc.get_freeze_count() <= frozen  # requests freeze nothing
    assert gc.get_freeze_count() == 0
    async with app_with(gc_freeze=False):
        assert gc.get_freeze_count() == 0


async def test_a_model_replaced_or_unloaded_is_collected_though_frozen(
    app_with, model_copy: Path
) -> None:
    shutil.copytree(model_copy / "digits-vae", model_copy / "second")
    manifest = Manifest.load(model_copy / "second")
    manifest.model_copy(update={"name": "second"}).save(model_copy / "second")
    async with app_with(model_repository=model_copy, enabled_models=None) as c:
        repo = c.app.state.repository  # type: ignore[attr-defined]
        assert gc.get_freeze_count() > 0
        old = repo.get("digits-vae")
        old.cycle = old  # only the cyclic collector can free it, and it skips frozen objects
        gone = weakref.ref(old)
        del old
        assert (await c.post("/models/digits-vae/reload")).status_code == 200
        assert gone() is None
        assert repo.get("digits-vae") is not None and gc.get_freeze_count() > 0
        second = repo.get("second")
        second.cycle = second
        gone = weakref.ref(second)
        del second
        shutil.rmtree(model_copy / "second")
        r = await c.post("/models/reload")
        assert {o["name"]: o["status"] for o in r.json()["outcomes"]}["second"] == "unloaded"
        assert gone() is None
        r = await c.post("/sample", json={"model": "digits-vae", "n": 1})
        assert r.status_code == 200
