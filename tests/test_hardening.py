"""What testing as a new user found (issue 12), each fixed behaviour pinned through the real app:
reload outcomes, the documentation behind the API key, no server paths in errors, request
fields named in every refusal, response headers, the default model, and shutdown under load."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.manifest import Manifest
from tests.conftest import MODELS, LiveServer
from tests.logs import messages

ROW = [[0.5] * 64]


def _second_model(repo: Path, name: str = "digits-vae-b") -> Path:
    shutil.copytree(repo / "digits-vae", repo / name)
    m = Manifest.load(repo / name)
    m.model_copy(update={"name": name}).save(repo / name)
    return repo / name


async def test_reload_all_reports_each_outcome_and_409_when_any_failed(
    app_with, model_copy: Path
) -> None:
    async with app_with(model_repository=model_copy, enabled_models=None) as c:
        ok = await c.post("/models/reload")
        assert ok.status_code == 200
        assert ok.json()["outcomes"] == [
            {"name": "digits-vae", "status": "loaded", "version": "1", "error": None}
        ]
        broken = _second_model(model_copy, "broken")
        (broken / "decoder.onnx").write_bytes(b"not a model")
        (model_copy / "digits-vae" / "encoder.onnx").write_bytes(b"not a model either")
        r = await c.post("/models/reload")
        assert r.status_code == 409
        body = r.json()
        assert body["error"]["code"] == "model_load_error"
        assert body["error"]["message"].startswith("2 of 2 models failed to load")
        outcomes = {o["name"]: o["status"] for o in body["outcomes"]}
        assert outcomes == {"broken": "failed", "digits-vae": "kept"}
        assert (await c.post("/sample", json={"n": 1})).status_code == 200  # the old one serves


async def test_reload_of_a_model_that_never_loaded_is_409(app_with, model_copy: Path) -> None:
    broken = _second_model(model_copy, "broken")
    (broken / "decoder.onnx").write_bytes(b"junk")
    async with app_with(model_repository=model_copy, enabled_models=None) as c:
        r = await c.post("/models/broken/reload")
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_load_error"
        assert "sha256" in r.json()["error"]["message"]


async def test_errors_name_model_and_part_not_server_paths(app_with, model_copy: Path) -> None:
    folder = model_copy / "digits-vae"
    async with app_with(model_repository=model_copy) as c:
        manifest = json.loads((folder / "model.json").read_text())
        (folder / "decoder.onnx").write_bytes(b"garbage that is not ONNX")
        manifest["parts"]["decoder"]["sha256"] = (
            __import__("hashlib").sha256(b"garbage that is not ONNX").hexdigest()
        )
        (folder / "model.json").write_text(json.dumps(manifest))
        r = await c.post("/models/digits-vae/reload")
        assert r.status_code == 409
        message = r.json()["error"]["message"]
        assert "digits-vae" in message and "decoder" in message
        assert str(model_copy) not in message and "/tmp" not in message
        shutil.rmtree(folder)
        r = await c.post("/models/digits-vae/reload")
        assert r.status_code == 404 and str(model_copy) not in r.json()["error"]["message"]


async def test_docs_need_the_api_key_unless_opened(app_with) -> None:
    key = {"Authorization": "Bearer s3cret"}
    async with app_with(api_key="s3cret") as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = await c.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "unauthorized"
            assert (await c.get(path, headers=key)).status_code == 200
    async with app_with(api_key="s3cret", docs_require_api_key=False) as c:
        assert (await c.get("/openapi.json")).status_code == 200
    async with app_with() as c:  # no key: nothing to guard
        assert (await c.get("/openapi.json")).status_code == 200


async def test_multipart_refusals_name_the_field(client) -> None:
    png = (MODELS / "digits-vae" / "samples.png").read_bytes()
    r = await client.post("/anomaly-score", files={"picture": ("a.png", png, "image/png")})
    assert r.status_code == 422 and r.json()["error"]["field"] == "picture"
    r = await client.post(
        "/anomaly-score",
        content=b"--xyz\r\nnot a real part",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code in (200, 422)  # python-multipart may read it as an empty form
    if r.status_code == 422:
        assert r.json()["error"]["field"] in ("body", "inputs")
    r = await client.post(
        "/anomaly-score", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"


async def test_empty_model_name_is_refused(client) -> None:
    r = await client.post("/sample", json={"model": ""})
    assert r.status_code == 422 and r.json()["error"]["field"] == "model"


async def test_openapi_lists_our_error_body_only(client) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in json.dumps(spec)


async def test_security_and_cache_headers(client) -> None:
    r = await client.post("/sample", json={"n": 1})
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    bad = await client.post("/sample", json={"n": 0})
    assert bad.headers["x-content-type-options"] == "nosniff"
    assert bad.headers["cache-control"] == "no-store"


async def test_default_model_follows_the_repository(app_with, tmp_path: Path, caplog) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copytree(MODELS / "mnist-dcgan", repo / "mnist-dcgan")
    async with app_with(model_repository=repo, enabled_models=None) as c:  # one model: it
        r = await c.post("/sample", json={"n": 1, "seed": 0})
        assert r.status_code == 200 and r.json()["model"] == "mnist-dcgan"
        assert (await c.get("/models")).json()["default_model"] == "mnist-dcgan"
    shutil.copytree(MODELS / "digits-vae", repo / "other-vae")
    m = Manifest.load(repo / "other-vae")
    m.model_copy(update={"name": "other-vae"}).save(repo / "other-vae")
    caplog.set_level("WARNING", logger="latentserve")
    async with app_with(model_repository=repo, enabled_models=None, log_json=False) as c:
        r = await c.post("/sample", json={"n": 1})
        assert r.status_code == 422 and r.json()["error"]["field"] == "model"
        assert (await c.post("/sample", json={"model": "other-vae"})).status_code == 200


@pytest.mark.e2e
def test_sigterm_under_load_fails_no_request_and_exits_zero() -> None:
    """Clients on kept-alive connections keep sending while the server gets SIGTERM. During the
    drain every answer says `Connection: close`, so no client reuses a connection the server is
    about to close: no request fails, every client is told to go, and a clean drain exits 0.
    (A client that then reconnects may find the listener gone: refused or reset before it
    was read, which the SDK retries; this test's clients leave when told to.)"""
    server = LiveServer({"LATENTSERVE_MODEL_REPOSITORY": str(MODELS)}).start()
    assert f"listening on http://127.0.0.1:{server.port}" in server.output()
    failures: list[str] = []
    answered: list[int] = []
    told_to_go: list[bool] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while True:
                try:
                    r = http.post("/sample", json={"n": 4, "seed": 1})
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                    return
                answered.append(r.status_code)
                if r.headers.get("connection", "").lower() == "close":
                    told_to_go.append(True)
                    return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 50 and time.monotonic() < deadline:  # every client is under way
        time.sleep(0.01)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(60)
    for t in threads:
        t.join(30)
    log = server.stop()
    assert failures == [], log[-3000:]
    assert set(answered) == {200} and len(told_to_go) == len(threads)
    assert code == 0, log[-3000:]
    assert "draining" in log and "shut down" in messages(log)
