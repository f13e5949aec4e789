"""End to end: a real `python -m service serve` process on 127.0.0.1, driven through the SDK."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from service.client import APIError, AsyncClient, Client, ConnectionFailed
from tests.conftest import MODELS, LiveServer, wait_for
from tests.logs import messages

pytestmark = pytest.mark.e2e


def test_sdk_values_against_a_real_server(
    live_server: LiveServer, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    noise = np.random.default_rng(1).uniform(size=(300, 64)).astype(np.float32)
    with Client(live_server.url) as c:
        assert c.ready()
        bundled = sorted(p.parent.name for p in MODELS.glob("*/model.json"))
        assert [m["name"] for m in c.models()] == bundled
        assert {m["status"] for m in c.models()} == {"ready"}
        a, b = c.sample(8, seed=11), c.sample(8, seed=11)
        assert a.shape == (8, 64) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)

        rec_digits = ((c.reconstruct(x) - x) ** 2).mean(1)
        rec_noise = ((c.reconstruct(noise) - noise) ** 2).mean(1)
        assert np.median(rec_digits) < 0.25 * np.median(rec_noise)

        digits = c.anomaly_score(x)
        outliers = c.anomaly_score(noise)
        assert digits.threshold == outliers.threshold and digits.threshold is not None
        assert digits.is_outlier is not None and outliers.is_outlier is not None
        assert digits.is_outlier.mean() <= 0.05  # >= 95% of held-out digits are inliers
        assert outliers.is_outlier.mean() >= 0.95  # >= 95% of uniform noise is flagged

        enc = c.encode(x[:4])
        np.testing.assert_allclose(c.decode(enc.mean), c.reconstruct(x[:4]), atol=1e-6)
        path = c.interpolate(x[0], x[1], steps=6)
        assert path.shape == (6, 64)
        png = c.sample_png(16, seed=0)
        assert png.startswith(b"\x89PNG")

        with pytest.raises(APIError) as err:
            c.sample(1, model="missing")
        assert err.value.status == 404 and err.value.field == "model"


def test_async_sdk_and_batching_is_visible_in_metrics(live_server: LiveServer) -> None:
    def batch_count() -> tuple[float, float]:
        text = httpx.get(f"{live_server.url}/metrics").text
        values = []
        for stat in ("sum", "count"):
            pattern = rf'latentserve_batch_requests_{stat}\{{part="digits-vae/decoder"\}} (\S+)'
            match = re.search(pattern, text)
            assert match is not None, text
            values.append(float(match.group(1)))
        return values[0], values[1]

    before_sum, before_count = batch_count()

    async def burst() -> list[np.ndarray]:
        async with AsyncClient(live_server.url) as c:
            return await asyncio.gather(*(c.sample(1, seed=i) for i in range(64)))

    results = asyncio.run(burst())
    with Client(live_server.url) as c:
        for i in (0, 17, 63):  # merged requests still get their own seed's sample
            np.testing.assert_array_equal(results[i], c.sample(1, seed=i))
    after_sum, after_count = batch_count()
    requests, batches = after_sum - before_sum, after_count - before_count
    assert requests >= 64
    assert batches < requests  # some session runs served several requests


def test_connection_refused_is_a_clear_client_error() -> None:
    from bench.servers import free_port

    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as c:
        assert not c.ready()
        with pytest.raises(ConnectionFailed):
            c.sample(1)


def test_client_installs_without_server_dependencies() -> None:
    """Import the SDK with fastapi, onnxruntime, pydantic_settings and torch made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi', 'onnxruntime', 'torch', 'starlette',\n"
        "                                  'pydantic_settings', 'uvicorn', 'PIL', 'orjson'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from service.client import Client, AsyncClient\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(MODELS.parent),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_sigterm_finishes_in_flight_requests(tmp_path) -> None:
    server = LiveServer({"LATENTSERVE_MODEL_REPOSITORY": str(MODELS)}).start()
    results: list[int | str] = []
    rows, k, requests = 256, 1024, 4

    def slow_request() -> None:
        try:  # iwae with large k takes a noticeable time on CPU
            r = httpx.post(
                f"{server.url}/anomaly-score",
                json={"inputs": [[0.5] * 64] * rows, "method": "iwae", "k": k},
                timeout=60,
            )
            results.append(r.status_code)
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    def encoded_rows() -> float:
        """Rows the encoder has run: each request passes it first, then spends most of its time
        in the decoder (rows * k rows)."""
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        pattern = r'^latentserve_batch_size_sum\{part="digits-vae/encoder"\} (\S+)$'
        match = re.search(pattern, text, re.M)
        return float(match.group(1)) if match else 0.0

    threads = [threading.Thread(target=slow_request) for _ in range(requests)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: encoded_rows() >= requests * rows, "every request reached the model")
        answered_before = len(results)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        server.proc.wait(30)
    finally:
        log = server.stop()
    assert answered_before == 0, "a request finished before SIGTERM: it was not in flight"
    assert results == [200] * requests, log
    assert "shut down" in messages(log)


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")} - {"close", "aclose"}

    assert public(Client) == public(AsyncClient)


def test_async_client_values_match_sync(
    live_server: LiveServer, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test

    async def run() -> tuple[np.ndarray, np.ndarray, bytes]:
        async with AsyncClient(live_server.url) as c:
            path = await c.interpolate(x[0], x[1], steps=4)
            scores = (await c.anomaly_score(x[:8], method="elbo", k=8)).scores
            png = await c.sample_png(4, seed=1)
            return path, scores, png

    path, scores, png = asyncio.run(run())
    with Client(live_server.url) as c:
        np.testing.assert_allclose(path, c.interpolate(x[0], x[1], steps=4), atol=1e-6)
        np.testing.assert_allclose(
            scores, c.anomaly_score(x[:8], method="elbo", k=8).scores, rtol=1e-6
        )
        assert png == c.sample_png(4, seed=1)


def test_reload_under_load_against_a_real_server(model_copy) -> None:
    from service.manifest import Manifest

    server = LiveServer({"LATENTSERVE_MODEL_REPOSITORY": str(model_copy)}).start()
    folder = model_copy / "digits-vae"
    statuses: list[int] = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/sample", json={"n": 4, "seed": seed * 1000 + i})
                statuses.append(r.status_code)
                i += 1

    def answered(more: int) -> Callable[[], bool]:
        target = len(statuses) + more
        return lambda: len(statuses) >= target

    try:
        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for version in ("2", "3"):
            wait_for(answered(10), "10 requests under load before the reload")
            Manifest.load(folder).model_copy(update={"version": version}).save(folder)
            r = httpx.post(f"{server.url}/models/digits-vae/reload", timeout=30)
            assert r.status_code == 200 and r.json()["version"] == version
        wait_for(answered(10), "10 requests after the last reload")
        stop.set()
        for t in threads:
            t.join(30)
        final = httpx.post(f"{server.url}/sample", json={"n": 1, "seed": 0}).json()
        assert final["version"] == "3"
    finally:
        stop.set()
        log = server.stop()
    assert len(statuses) > 20 and set(statuses) == {200}, log


def test_request_id_reaches_the_json_log(model_copy) -> None:
    import json

    server = LiveServer({"LATENTSERVE_MODEL_REPOSITORY": str(model_copy)}).start()
    try:
        r = httpx.post(f"{server.url}/sample", json={"n": 1}, headers={"X-Request-ID": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42"
    finally:
        log = server.stop()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("request_id") == "trace-42"]
    assert access and access[0]["logger"] == "latentserve.access" and access[0]["status"] == 200
    assert access[0]["model"] == "digits-vae"
    assert any(r["message"].startswith("model digits-vae version") for r in records)


def test_bundled_mnist_models_serve_through_the_sdk(live_server: LiveServer) -> None:
    """The MNIST models answer with the right shapes and ranges, and tell noise from their own
    samples by the thresholds calibrated on MNIST (no MNIST files needed here)."""
    noise = np.random.default_rng(2).uniform(size=(32, 1, 28, 28)).astype(np.float32)
    with Client(live_server.url) as c:
        x = c.sample(64, seed=3, model="mnist-conv-vae")
        assert x.shape == (64, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0
        own = c.anomaly_score(x, model="mnist-conv-vae")
        flagged = c.anomaly_score(noise, model="mnist-conv-vae")
        assert own.is_outlier is not None and flagged.is_outlier is not None  # calibrated
        assert own.is_outlier.mean() <= 0.1
        assert flagged.is_outlier.all()

        digits = c.sample(20, seed=0, labels=np.arange(20) % 10, model="mnist-cvae")
        assert digits.shape == (20, 1, 28, 28)
        with pytest.raises(APIError) as err:
            c.sample(2, model="mnist-cvae")  # conditional: labels are required
        assert err.value.status == 422 and err.value.field == "labels"

        fakes = c.sample(16, seed=0, model="mnist-dcgan")
        assert fakes.shape == (16, 1, 28, 28)
        d_noise = c.anomaly_score(noise, method="discriminator", model="mnist-dcgan")
        d_fakes = c.anomaly_score(fakes, method="discriminator", model="mnist-dcgan")
        assert np.median(d_noise.scores) > np.median(d_fakes.scores)

        # the conditional GAN draws the asked-for labels and needs them to score as well
        labels = np.arange(40) % 10
        drawn = c.sample(40, seed=0, labels=labels, model="mnist-cdcgan")
        assert drawn.shape == (40, 1, 28, 28)
        d_drawn = c.anomaly_score(
            drawn, method="discriminator", labels=labels, model="mnist-cdcgan"
        )
        d_noise = c.anomaly_score(
            noise, method="discriminator", labels=np.arange(32) % 10, model="mnist-cdcgan"
        )
        assert np.median(d_noise.scores) > np.median(d_drawn.scores)
        for call in (
            lambda: c.sample(2, model="mnist-cdcgan"),
            lambda: c.anomaly_score(drawn, method="discriminator", model="mnist-cdcgan"),
        ):
            with pytest.raises(APIError) as err:
                call()
            assert err.value.status == 422 and err.value.field == "labels"
