"""Property-based fuzzing of every inference route against a real server: whatever the body, the
answer is a well-formed response or a 4xx error body naming the problem — never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer

pytestmark = pytest.mark.e2e

ROUTES = ["/sample", "/encode", "/decode", "/reconstruct", "/interpolate", "/anomaly-score"]
FIELDS = [
    "model",
    "n",
    "seed",
    "temperature",
    "labels",
    "inputs",
    "images",
    "z",
    "steps",
    "mode",
    "method",
    "k",
    "threshold",
    "per_pixel",
    "output_format",
    "samples_per_input",
    "return_latents",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
small_rows = st.lists(
    st.lists(st.floats(-2, 2, allow_nan=False), min_size=0, max_size=70), min_size=0, max_size=3
)
values = st.one_of(
    scalars,
    small_rows,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    st.just([[0.5] * 64]),
    st.just([[0.0] * 8, [1.0] * 8]),
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        err = response.json()["error"]
        assert err["code"] and err["message"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_json_bodies_never_cause_a_server_error(
    live_server: LiveServer, route: str, body: dict[str, Any]
) -> None:
    _check(httpx.post(live_server.url + route, json=body, timeout=30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=st.sampled_from(ROUTES),
    content=st.binary(max_size=300),
    ctype=st.sampled_from(
        [
            "application/json",
            "application/x-npy",
            "multipart/form-data",
            "image/png",
            "multipart/form-data; boundary=x",
        ]
    ),
    accept=st.sampled_from(
        [
            "*/*",
            "application/x-npy",
            "image/png",
            "text/html",
            "image/*;q=0.5, application/json",
            "nonsense;;q=x",
        ]
    ),
)
def test_raw_bodies_never_cause_a_server_error(
    live_server: LiveServer, route: str, content: bytes, ctype: str, accept: str
) -> None:
    headers = {"Content-Type": ctype, "Accept": accept}
    _check(httpx.post(live_server.url + route, content=content, headers=headers, timeout=30))


def test_server_still_healthy_after_fuzzing(live_server: LiveServer) -> None:
    assert httpx.get(live_server.url + "/readyz").status_code == 200
    r = httpx.post(live_server.url + "/sample", json={"n": 1, "seed": 0})
    assert r.status_code == 200
