"""The SDK retries what is safe to retry (503 and broken connections) with backoff that honours
Retry-After, and sends large arrays as .npy bodies with the same results as JSON."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.client import APIError, AsyncClient, Client, ConnectionFailed, RetryPolicy

OK = {"model": "m", "version": "1", "mean": [[0.0]], "log_var": [[0.0]]}


def _busy(retry_after: str = "2") -> httpx.Response:
    return httpx.Response(
        503,
        json={"error": {"code": "overloaded", "message": "busy", "field": None}},
        headers={"Retry-After": retry_after},
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr("service.client._client.time.sleep", waited.append)
    return waited


def test_503_is_retried_after_the_servers_delay(sleeps: list[float]) -> None:
    answers = iter([_busy("2"), _busy("1"), httpx.Response(200, json=OK)])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    with Client(transport=httpx.MockTransport(handler)) as c:
        enc = c.encode(np.zeros((1, 1)))
    assert enc.mean.shape == (1, 1) and len(seen) == 3
    assert sleeps[0] == pytest.approx(2.0) and sleeps[1] >= 1.0


def test_broken_connections_are_retried_with_growing_backoff(sleeps: list[float]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=OK)

    policy = RetryPolicy(attempts=3, backoff_s=0.1)
    with Client(transport=httpx.MockTransport(handler), retries=policy) as c:
        c.encode(np.zeros((1, 1)))
    assert calls == 3 and len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_retries_end_with_the_servers_error(sleeps: list[float]) -> None:
    with Client(transport=httpx.MockTransport(lambda r: _busy()), retries=2) as c:
        with pytest.raises(APIError) as err:
            c.encode(np.zeros((1, 1)))
    assert err.value.status == 503 and err.value.retry_after == 2.0 and len(sleeps) == 1

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with Client(transport=httpx.MockTransport(refuse), retries=None) as c:
        with pytest.raises(ConnectionFailed):
            c.encode(np.zeros((1, 1)))
    assert len(sleeps) == 1  # no retry without a policy


def test_client_errors_are_not_retried(sleeps: list[float]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(422, json={"error": {"code": "x", "message": "y", "field": "n"}})

    with Client(transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(APIError):
            c.sample(0)
    assert calls == 1 and sleeps == []


def test_large_arrays_travel_as_npy_small_as_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={**OK, "scores": [0.0], "threshold": None})

    with Client(transport=httpx.MockTransport(handler), model="m") as c:
        c.anomaly_score(np.zeros((1, 64)), method="iwae", labels=[3])
        c.anomaly_score(np.zeros((64, 784)), method="iwae", labels=[3])
    small, large = seen
    assert small.headers["content-type"] == "application/json"
    assert large.headers["content-type"] == "application/x-npy"
    assert large.url.params["method"] == "iwae" and large.url.params["labels"] == "[3]"
    assert large.url.params["model"] == "m"
    assert len(large.content) < 64 * 784 * 4 + 200


async def test_npy_and_json_bodies_give_the_same_answers(client) -> None:
    """Against the real app: the same inputs as .npy and as JSON, every array route."""
    x = np.random.default_rng(0).uniform(0, 1, (40, 64)).astype(np.float32)
    transport = httpx.ASGITransport(app=client.app)  # type: ignore[arg-type]
    async with (
        AsyncClient("http://test", transport=transport, npy_body_bytes=1) as as_npy,
        AsyncClient("http://test", transport=transport, npy_body_bytes=10**9) as as_json,
    ):
        for c in (as_npy, as_json):
            assert c._r.npy_body_bytes in (1, 10**9)
        a = await as_npy.anomaly_score(x, method="elbo", k=4, seed=3)
        b = await as_json.anomaly_score(x, method="elbo", k=4, seed=3)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        np.testing.assert_array_equal(await as_npy.reconstruct(x), await as_json.reconstruct(x))
        e1, e2 = await as_npy.encode(x), await as_json.encode(x)
        np.testing.assert_array_equal(e1.mean, e2.mean)
        z = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
        np.testing.assert_array_equal(await as_npy.decode(z), await as_json.decode(z))
