"""Triton's and KServe's own clients, used as their users use them, against a real
`python -m service serve` with the gRPC port on and an API key: readiness, metadata, inference
with JSON and binary tensors, errors with the protocol's statuses, and outputs equal to the
native routes' for the same inputs. Ends with a SIGTERM while gRPC calls are in flight."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from bench.servers import free_port
from service.client import Client
from service.oip.grpc_v2 import open_inference_grpc_pb2 as pb
from service.oip.grpc_v2 import open_inference_grpc_pb2_grpc as pb_grpc
from tests.conftest import MODELS, ROOT, LiveServer

pytestmark = pytest.mark.e2e
KEY = "oip-test-key"
DECODER = "mnist-conv-vae.decoder"


class OipServer(LiveServer):
    """The live server with an API key and the gRPC service on."""

    def __init__(self) -> None:
        grpc_port = free_port()
        super().__init__(
            {
                "LATENTSERVE_MODEL_REPOSITORY": str(MODELS),
                "LATENTSERVE_API_KEY": KEY,
                "LATENTSERVE_GRPC_PORT": str(grpc_port),
            }
        )
        self.grpc_port = grpc_port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@pytest.fixture(scope="module")
def server() -> Iterator[OipServer]:
    s = OipServer().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def native(server: OipServer) -> Iterator[Client]:
    """The native routes, through the SDK: the answers the protocol must reproduce."""
    with Client(server.url, api_key=KEY) as c:
        yield c


def _z(n: int = 16, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)


# -- Triton, HTTP -------------------------------------------------------------------------------
def auth() -> dict[str, str]:
    """Fresh headers per call: tritonclient.http adds Inference-Header-Content-Length to the
    dict it is given, so a dict reused for the next call would carry a stale length."""
    return {"Authorization": f"Bearer {KEY}"}


def test_triton_http_client(server: OipServer, native: Client) -> None:
    c = triton_http.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(DECODER, headers=auth())
    assert not c.is_model_ready("nope.decoder", headers=auth())
    assert c.get_server_metadata(headers=auth())["name"] == "latentserve"
    meta = c.get_model_metadata(DECODER, headers=auth())
    assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 32]}]
    assert meta["outputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]

    z = _z()
    expected = native.decode(z, model="mnist-conv-vae")
    for binary in (False, True):
        tensor = triton_http.InferInput("z", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z, binary_data=binary)
        wanted = [triton_http.InferRequestedOutput("x", binary_data=binary)]
        result = c.infer(
            DECODER, [tensor], outputs=wanted, request_id=f"t-{binary}", headers=auth()
        )
        np.testing.assert_array_equal(result.as_numpy("x"), expected)
        assert result.get_response()["id"] == f"t-{binary}"

    sampled = c.infer("mnist-conv-vae.sample", [], parameters={"n": 4, "seed": 3}, headers=auth())
    np.testing.assert_array_equal(
        sampled.as_numpy("x"), native.sample(4, seed=3, model="mnist-conv-vae")
    )

    labels = np.array([3, 1], np.int64)
    z16 = _z(2)[:, :16].copy()
    tensors = [
        triton_http.InferInput("z", [2, 16], "FP32"),
        triton_http.InferInput("label", [2], "INT64"),
    ]
    tensors[0].set_data_from_numpy(z16)
    tensors[1].set_data_from_numpy(labels, binary_data=False)
    result = c.infer("mnist-cvae.decoder", tensors, headers=auth())
    np.testing.assert_array_equal(
        result.as_numpy("x"), native.decode(z16, labels=labels, model="mnist-cvae")
    )

    for model, status, text in [
        ("nope.decoder", "404", "no model named 'nope.decoder'"),
        ("mnist-dcgan.encode", "404", "mnist-dcgan.generator"),
    ]:
        tensor = triton_http.InferInput("z", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z)
        with pytest.raises(InferenceServerException) as err:
            c.infer(model, [tensor], headers=auth())
        assert err.value.status() == status and text in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata(DECODER)  # no key
    assert err.value.status() == "401"
    c.close()


# -- Triton, gRPC -------------------------------------------------------------------------------
def test_triton_grpc_client(server: OipServer, native: Client) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    c = triton_grpc.InferenceServerClient(url=server.grpc_target)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(DECODER, headers=headers)
    assert c.get_server_metadata(headers=headers, as_json=True)["name"] == "latentserve"
    meta = c.get_model_metadata(DECODER, headers=headers, as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", "32"]}]

    z = _z()
    tensor = triton_grpc.InferInput("z", list(z.shape), "FP32")
    tensor.set_data_from_numpy(z)
    result = c.infer(DECODER, [tensor], request_id="g-1", headers=headers)
    np.testing.assert_array_equal(result.as_numpy("x"), native.decode(z, model="mnist-conv-vae"))
    assert result.get_response().id == "g-1"

    x = native.sample(8, seed=1, model="mnist-conv-vae")
    tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = c.infer(
        "mnist-conv-vae.anomaly-score",
        [tensor],
        outputs=[triton_grpc.InferRequestedOutput("score")],
        parameters={"method": "iwae", "k": 8, "seed": 2},
        headers=headers,
    )
    expected = native.anomaly_score(x, method="iwae", k=8, seed=2, model="mnist-conv-vae")
    np.testing.assert_array_equal(result.as_numpy("score"), expected.scores)
    assert result.as_numpy("is_outlier") is None  # only the requested output came back

    for model, hdrs, status in [
        ("nope.decoder", headers, "StatusCode.NOT_FOUND"),
        (DECODER, {}, "StatusCode.UNAUTHENTICATED"),
    ]:
        tensor = triton_grpc.InferInput("z", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z)
        with pytest.raises(InferenceServerException) as err:
            c.infer(model, [tensor], headers=hdrs)
        assert err.value.status() == status
    tensor = triton_grpc.InferInput("z", [16, 31], "FP32")
    tensor.set_data_from_numpy(z[:, :31].copy())
    with pytest.raises(InferenceServerException) as err:
        c.infer(DECODER, [tensor], headers=headers)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected shape [n, 32], got [16, 31]" in err.value.message()
    c.close()


# -- KServe -------------------------------------------------------------------------------------
def test_kserve_rest_client(server: OipServer, native: Client, tmp_path: Path) -> None:
    out = tmp_path / "kserve.npz"
    script = ROOT / "tests" / "kserve_v2_client.py"
    done = subprocess.run(
        [sys.executable, str(script), server.url, KEY, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads(out.with_suffix(".json").read_text())
    assert facts["live"] is True and facts["ready"] is True
    assert facts["model_ready"] is True and facts["unknown_ready"] is False
    assert facts["id_False"] == "kserve-False" and facts["id_True"] == "kserve-True"
    assert "404 Not Found" in facts["unknown_error"] and "nope.sample" in facts["unknown_error"]
    arrays = np.load(out)
    expected = native.decode(arrays["z"], model="mnist-conv-vae")
    np.testing.assert_array_equal(arrays["x_json"], expected)
    np.testing.assert_array_equal(arrays["x_binary"], expected)
    np.testing.assert_array_equal(
        arrays["sample"], native.sample(3, seed=5, model="mnist-conv-vae")
    )


# -- the README ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("index", "printed"),
    [
        pytest.param(0, "(64, 1, 28, 28)", id="triton"),
        pytest.param(1, "(8, 1, 28, 28)", id="kserve"),
    ],
)
def test_readme_snippets_run_as_written(live_server: LiveServer, index: int, printed: str) -> None:
    """The README's client snippets, with the test server's ports for 8000 and 8001."""
    section = (ROOT / "README.md").read_text().split("## From Triton and KServe clients", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    assert live_server.grpc_target is not None
    code = (
        blocks[index]
        .replace("localhost:8000", f"127.0.0.1:{live_server.port}")
        .replace("localhost:8001", live_server.grpc_target)
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert printed in done.stdout


# -- shutdown -----------------------------------------------------------------------------------
def test_sigterm_lets_grpc_calls_in_flight_finish() -> None:
    s = OipServer().start()
    z = _z(128)
    request = pb.ModelInferRequest(model_name=DECODER)
    request.inputs.add(name="z", datatype="FP32", shape=z.shape)
    request.raw_input_contents.append(z.tobytes())
    metadata = (("authorization", f"Bearer {KEY}"),)

    async def calls() -> tuple[list[object], int, object]:
        async with grpc.aio.insecure_channel(s.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerReady(pb.ServerReadyRequest())  # connected
            pending = [
                asyncio.ensure_future(stub.ModelInfer(request, metadata=metadata))
                for _ in range(12)
            ]
            await asyncio.sleep(0.05)  # sent, and queued behind each other on the server
            assert s.proc is not None
            s.proc.send_signal(signal.SIGTERM)
            in_flight = sum(not p.done() for p in pending)
            results = await asyncio.gather(*pending, return_exceptions=True)
            # gRPC serves through the HTTP drain (LATENTSERVE_SHUTDOWN_DRAIN_S) and closes with
            # the server: poll until it does.
            after: object = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    after = await stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
                except grpc.aio.AioRpcError as exc:
                    after = exc.code()
                    break
                await asyncio.sleep(0.1)
            return results, in_flight, after

    try:
        results, in_flight, after = asyncio.run(calls())
        assert s.proc is not None
        assert s.proc.wait(timeout=60) == 0  # a clean drain exits 0
    finally:
        log = s.stop()
    assert in_flight > 0, "every call finished before SIGTERM: nothing was in flight"
    failed = [r for r in results if not isinstance(r, pb.ModelInferResponse)]
    assert failed == [] and len(results) == 12
    assert after == grpc.StatusCode.UNAVAILABLE  # the port closed with the server
    assert "shut down" in log
