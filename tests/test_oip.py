"""The Open Inference Protocol front door in-process: model metadata from the one mapping, REST
inference with JSON and binary tensors equal to the native routes' answers, the protocol's error
shape and statuses, the API key, metrics, the shared batcher, and the gRPC service over the same
app (with this project's generated stubs; Triton's and KServe's clients run in test_oip_clients)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bench.servers import free_port
from service.arrays import npy_bytes, read_npy
from service.oip.grpc_v2 import open_inference_grpc_pb2 as pb
from service.oip.grpc_v2 import open_inference_grpc_pb2_grpc as pb_grpc
from tests import oip_wire as wire
from tests import tiny_models as tm
from tests.conftest import MODELS, AppClient, _client_for, make_settings

NPY = "application/x-npy"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-vae, a conditional VAE and a GAN whose discriminator takes and returns float16
    (named with a dot: OIP names split at the last one)."""
    root = tmp_path_factory.mktemp("oip-models")
    shutil.copytree(MODELS / "digits-vae", root / "digits-vae")
    tm.write_cvae(root / "tiny-cvae")
    tm.write_gan(root / "tiny.gan", name="tiny.gan", half_discriminator=True)
    return root


@pytest.fixture
def serve(repository: Path):
    """Factory: the app in-process over `repository`, with settings overrides."""

    @asynccontextmanager
    async def factory(**overrides: object) -> AsyncIterator[AppClient]:
        settings = make_settings(model_repository=repository, enabled_models=None, **overrides)
        async for c in _client_for(settings):
            yield c

    return factory


async def _infer(c: AppClient, model: str, inputs: dict[str, np.ndarray], **kw: Any):
    content, headers = wire.request(inputs, **kw)
    r = await c.post(f"/v2/models/{model}/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    return wire.response(r.content, r.headers)


def _z(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# -- metadata ------------------------------------------------------------------------------------
async def test_metadata_lists_parts_and_operations_from_the_manifest(serve) -> None:
    async with serve() as c:
        server = (await c.get("/v2")).json()
        assert server["name"] == "latentserve"
        assert "binary_tensor_data" in server["extensions"]
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}

        decoder = (await c.get("/v2/models/digits-vae.decoder")).json()
        assert decoder == {
            "name": "digits-vae.decoder",
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "z", "datatype": "FP32", "shape": [-1, 8]}],
            "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
        }
        encoder = (await c.get("/v2/models/digits-vae.encoder/versions/1")).json()
        assert [o["name"] for o in encoder["outputs"]] == ["mean", "log_var"]
        score = (await c.get("/v2/models/digits-vae.anomaly-score")).json()
        assert score["platform"] == "latentserve"
        assert score["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
        assert [(o["name"], o["datatype"]) for o in score["outputs"]] == [
            ("score", "FP32"),
            ("is_outlier", "BOOL"),
            ("per_pixel", "FP32"),
        ]
        cvae = (await c.get("/v2/models/tiny-cvae.decoder")).json()
        assert cvae["inputs"][1] == {"name": "label", "datatype": "INT64", "shape": [-1]}
        sample = (await c.get("/v2/models/tiny-cvae.sample")).json()
        assert sample["inputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]
        half = (await c.get("/v2/models/tiny.gan.discriminator")).json()
        assert half["inputs"] == [{"name": "x", "datatype": "FP16", "shape": [-1, 1, 6, 6]}]
        gan_ops = {"tiny.gan.sample", "tiny.gan.decode", "tiny.gan.anomaly-score"}
        for name in gan_ops | {"tiny.gan.generator", "tiny.gan.discriminator"}:
            assert (await c.get(f"/v2/models/{name}/ready")).json() == {"name": name, "ready": True}
        assert (await c.get("/v2/models/tiny.gan.encode/ready")).status_code == 404

        bare = await c.get("/v2/models/digits-vae")
        assert bare.status_code == 404
        assert "digits-vae.decoder" in bare.json()["error"]
        other_version = await c.get("/v2/models/digits-vae.decoder/versions/2/ready")
        assert other_version.status_code == 404 and "'1'" in other_version.json()["error"]


# -- inference equals the native routes ---------------------------------------------------------
@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param({}, id="json-flat"),
        pytest.param({"nested": True}, id="json-nested"),
        pytest.param({"binary": True, "binary_outputs": True}, id="binary"),
        pytest.param({"binary": True}, id="binary-in-json-out"),
        pytest.param({"binary_outputs": True}, id="json-in-binary-out"),
    ],
)
async def test_decoder_part_answers_what_decode_answers(serve, encoding: dict[str, bool]) -> None:
    z = _z(5, 8)
    async with serve() as c:
        native = await c.post(
            "/decode", content=npy_bytes(z), headers={"content-type": NPY, "accept": NPY}
        )
        expected = read_npy(native.content, "x")
        doc, out = await _infer(c, "digits-vae.decoder", {"z": z}, request_id="r-7", **encoding)
    assert doc["id"] == "r-7"
    assert (doc["model_name"], doc["model_version"]) == ("digits-vae.decoder", "1")
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], expected)
    binary_out = encoding.get("binary_outputs", False)
    assert ("parameters" in doc["outputs"][0]) == binary_out


async def test_operations_answer_what_the_native_routes_answer(serve) -> None:
    x = np.random.default_rng(3).uniform(size=(4, 64)).astype(np.float32)
    async with serve() as c:
        doc, out = await _infer(
            c, "digits-vae.sample", {}, parameters={"n": 6, "seed": 11, "temperature": 0.5}
        )
        native = (
            await c.post(
                "/sample", json={"n": 6, "seed": 11, "temperature": 0.5, "return_latents": True}
            )
        ).json()
        np.testing.assert_array_equal(out["x"], np.asarray(native["samples"], np.float32))
        np.testing.assert_array_equal(out["z"], np.asarray(native["latents"], np.float32))
        assert doc["parameters"] == {"seed": 11}

        _, out = await _infer(
            c,
            "digits-vae.encode",
            {"x": x},
            binary_outputs=True,
            parameters={"samples_per_input": 3, "seed": 2},
        )
        native = (
            await c.post("/encode", json={"inputs": x.tolist(), "samples_per_input": 3, "seed": 2})
        ).json()
        for key in ("mean", "log_var", "z"):
            np.testing.assert_array_equal(out[key], np.asarray(native[key], np.float32))
        assert out["z"].shape == (4, 3, 8)

        _, out = await _infer(c, "digits-vae.reconstruct", {"x": x}, binary=True)
        native = (await c.post("/reconstruct", json={"inputs": x.tolist()})).json()
        np.testing.assert_array_equal(out["x"], np.asarray(native["outputs"], np.float32))

        ends = _z(2, 8, seed=4)
        _, out = await _infer(
            c, "digits-vae.interpolate", {"z": ends}, parameters={"steps": 5, "mode": "spherical"}
        )
        native = (
            await c.post("/interpolate", json={"z": ends.tolist(), "steps": 5, "mode": "spherical"})
        ).json()
        np.testing.assert_array_equal(out["x"], np.asarray(native["outputs"], np.float32))
        np.testing.assert_array_equal(out["z"], np.asarray(native["latents"], np.float32))

        doc, out = await _infer(
            c,
            "digits-vae.anomaly-score",
            {"x": x},
            parameters={"method": "elbo", "k": 4, "seed": 1},
            outputs=["is_outlier", "score", "per_pixel"],
        )
        native = (
            await c.post(
                "/anomaly-score",
                json={"inputs": x.tolist(), "method": "elbo", "k": 4, "seed": 1, "per_pixel": True},
            )
        ).json()
    assert [o["name"] for o in doc["outputs"]] == ["is_outlier", "score", "per_pixel"]
    np.testing.assert_array_equal(out["score"], np.asarray(native["scores"], np.float32))
    np.testing.assert_array_equal(out["is_outlier"], np.asarray(native["is_outlier"]))
    np.testing.assert_array_equal(out["per_pixel"], np.asarray(native["per_pixel"], np.float32))
    assert out["is_outlier"].dtype == np.bool_
    assert doc["parameters"] == {
        "method": "elbo",
        "threshold": native["threshold"],
        "threshold_source": "calibration",
    }


async def test_labels_and_half_precision_tensors(serve) -> None:
    z = _z(3, tm.LATENT)
    labels = np.array([0, 2, 1], np.int64)
    x = np.random.default_rng(5).uniform(size=(2, 1, 6, 6)).astype(np.float32)
    async with serve() as c:
        _, out = await _infer(c, "tiny-cvae.decoder", {"z": z, "label": labels}, binary=True)
        np.testing.assert_allclose(out["x"], tm.expected_decode(z, labels), rtol=1e-5)
        doc, out = await _infer(c, "tiny-cvae.sample", {"label": labels}, parameters={"seed": 3})
        assert out["x"].shape == (3, 1, 6, 6)  # n follows the labels
        native = (
            await c.post(
                "/sample", json={"model": "tiny-cvae", "n": 3, "seed": 3, "labels": labels.tolist()}
            )
        ).json()
        np.testing.assert_array_equal(out["x"], np.asarray(native["samples"], np.float32))

        # FP16 travels as binary both ways, even when JSON outputs were asked for
        doc, out = await _infer(
            c, "tiny.gan.discriminator", {"x": x.astype(np.float16)}, binary=True
        )
        assert doc["outputs"][0]["datatype"] == "FP16" and out["logit"].dtype == np.float16
        expected = tm.expected_logit(x.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(out["logit"].reshape(-1), expected, rtol=2e-3, atol=2e-3)
        content, headers = wire.request({"x": x.astype(np.float16)})
        r = await c.post(
            "/v2/models/tiny.gan.discriminator/infer", content=content, headers=headers
        )
        assert r.status_code == 400 and "binary" in r.json()["error"]


# -- errors -------------------------------------------------------------------------------------
Z8 = np.zeros((2, 8), np.float32)


def _body(inputs: dict[str, np.ndarray], **kw: Any) -> tuple[bytes, dict[str, str]]:
    return wire.request(inputs, **kw)


def _raw(doc: str, extra: bytes = b"", length: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A hand-written body; with `extra` bytes after the JSON, the header gives the JSON's
    length (or `length`)."""
    headers = {"content-type": "application/json"}
    if extra or length is not None:
        headers["inference-header-content-length"] = str(len(doc) if length is None else length)
    return doc.encode() + extra, headers


@pytest.mark.parametrize(
    ("model", "body", "status", "message"),
    [
        pytest.param(
            "nope.decoder",
            _body({"z": Z8}),
            404,
            "no model named 'nope.decoder'",
            id="unknown-model",
        ),
        pytest.param(
            "digits-vae.generator", _body({"z": Z8}), 404, "digits-vae.decoder", id="unknown-part"
        ),
        pytest.param(
            "digits-vae.decoder",
            _body({"z": Z8.astype(np.float16)}, binary=True),
            400,
            "takes FP32",
            id="wrong-datatype",
        ),
        pytest.param(
            "digits-vae.decoder",
            _body({"z": np.zeros((2, 7), np.float32)}),
            400,
            "z: expected shape [n, 8], got [2, 7]",
            id="wrong-shape",
        ),
        pytest.param("digits-vae.decoder", _body({}), 400, "needs input 'z'", id="missing-input"),
        pytest.param(
            "digits-vae.decode", _body({}), 400, "needs input 'z'", id="missing-operation-input"
        ),
        pytest.param(
            "digits-vae.decoder", _body({"z": Z8, "w": Z8}), 400, "no input 'w'", id="unknown-input"
        ),
        pytest.param(
            "tiny-cvae.decoder",
            _body({"z": np.zeros((2, 4), np.float32), "label": np.zeros(3, np.int64)}),
            400,
            "same batch size",
            id="rows-differ",
        ),
        pytest.param(
            "tiny-cvae.decoder",
            _body({"z": np.zeros((1, 4), np.float32), "label": np.array([7])}),
            400,
            "labels must be integers in [0, 2]",
            id="label-out-of-range",
        ),
        pytest.param(
            "digits-vae.decoder",
            _body({"z": np.full((1, 8), np.nan, np.float32)}, binary=True),
            400,
            "finite",
            id="nan",
        ),
        pytest.param(
            "digits-vae.decoder",
            _body({"z": np.zeros((1025, 8), np.float32)}, binary=True),
            413,
            "at most 1024",
            id="too-many-rows",
        ),
        pytest.param(
            "digits-vae.decoder",
            _body({"z": Z8}, outputs=["y"]),
            400,
            "no output 'y'",
            id="unknown-output",
        ),
        pytest.param(
            "tiny-cvae.anomaly-score",
            _body(
                {"x": np.zeros((1, 1, 6, 6), np.float32), "label": np.array([1])},
                outputs=["is_outlier"],
            ),
            400,
            "no threshold applies",
            id="no-threshold",
        ),
        pytest.param(
            "digits-vae.sample",
            _body({}, parameters={"n": "six"}),
            400,
            "parameters.n: must be an integer",
            id="parameter-type",
        ),
        pytest.param(
            "digits-vae.sample",
            _body({}, parameters={"n": 2000}),
            413,
            "n: at most 1024",
            id="parameter-limit",
        ),
        pytest.param(
            "digits-vae.decoder",
            _raw(
                '{"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 8], "data": [1, 2]}]}'
            ),
            400,
            "needs 16 values, got 2",
            id="data-size",
        ),
        pytest.param(
            "digits-vae.decoder",
            _raw(
                '{"inputs": [{"name": "z", "datatype": "FP32", '
                '"shape": [1, 8], "parameters": {"binary_data_size": 32}}]}',
                b"\0" * 16,
            ),
            400,
            "runs past the end",
            id="binary-short",
        ),
        pytest.param(
            "digits-vae.decoder",
            _raw(
                '{"inputs": [{"name": "z", "datatype": "FP32", '
                '"shape": [1, 8], "parameters": {"binary_data_size": 32}}]}',
                b"\0" * 40,
            ),
            400,
            "8 bytes after",
            id="binary-left-over",
        ),
        pytest.param(
            "digits-vae.decoder",
            _raw('{"inputs": []}', b"", 999),
            400,
            "Inference-Header-Content-Length",
            id="header-length",
        ),
        pytest.param("digits-vae.decoder", _raw("{not json"), 400, "not valid JSON", id="not-json"),
    ],
)
async def test_errors_take_the_protocols_shape(
    serve, model: str, body: tuple[bytes, dict[str, str]], status: int, message: str
) -> None:
    async with serve() as c:
        r = await c.post(f"/v2/models/{model}/infer", content=body[0], headers=body[1])
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and message in error


async def test_unknown_routes_and_the_api_key(serve) -> None:
    async with serve(api_key="s3cret") as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 200
        denied = await c.get("/v2/models/digits-vae.decoder")
        assert denied.status_code == 401 and "Bearer" in denied.json()["error"]
        auth = {"authorization": "Bearer s3cret"}
        assert (await c.get("/v2/models/digits-vae.decoder", headers=auth)).status_code == 200
        missing = await c.get("/v2/repository/index", headers=auth)
        assert missing.status_code == 404 and "is not served" in missing.json()["error"]


async def test_oip_requests_share_the_native_batcher_and_metrics(serve) -> None:
    z = _z(3, 8)
    async with serve(max_delay_ms=300) as c:  # the first call waits for company
        content, headers = wire.request({"z": z}, binary=True)
        oip, native = await asyncio.gather(
            c.post("/v2/models/digits-vae.decoder/infer", content=content, headers=headers),
            c.post("/decode", json={"z": z.tolist()}),
        )
        assert oip.status_code == native.status_code == 200
        text = (await c.get("/metrics")).text
    batches = re.search(
        r'latentserve_batch_requests_count\{part="digits-vae/decoder"\} (\S+)', text
    )
    merged = re.search(r'latentserve_batch_requests_sum\{part="digits-vae/decoder"\} (\S+)', text)
    assert batches and merged
    assert (float(batches.group(1)), float(merged.group(1))) == (1.0, 2.0)  # one run, two calls
    assert (
        'latentserve_requests_total{endpoint="/v2/models/{model_name}/infer",method="POST",'
        'status="200"} 1.0' in text
    )


# -- gRPC ---------------------------------------------------------------------------------------
def _grpc_request(model: str, inputs: dict[str, np.ndarray], raw: bool = True, **kw: Any):
    req = pb.ModelInferRequest(model_name=model, **kw)
    for name, arr in inputs.items():
        t = req.inputs.add(name=name, datatype=wire.NAMES[arr.dtype], shape=arr.shape)
        if raw:
            req.raw_input_contents.append(arr.tobytes())
        else:
            t.contents.fp32_contents.extend(arr.reshape(-1).tolist())
    return req


async def test_grpc_service_over_the_same_runtime(serve) -> None:
    port = free_port()
    z = _z(4, 8)
    async with serve(grpc_port=port, api_key="k") as c:
        native = read_npy(
            (
                await c.post(
                    "/decode",
                    json={"z": z.tolist()},
                    headers={"accept": NPY, "authorization": "Bearer k"},
                )
            ).content,
            "x",
        )
        auth = (("authorization", "Bearer k"), ("x-request-id", "grpc-1"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(pb.ServerLiveRequest())).live
            assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.ServerMetadata(pb.ServerMetadataRequest())
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            meta = await stub.ModelMetadata(
                pb.ModelMetadataRequest(name="digits-vae.decoder"), metadata=auth
            )
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
                ("z", "FP32", [-1, 8])
            ]
            ready = await stub.ModelReady(
                pb.ModelReadyRequest(name="digits-vae.sample"), metadata=auth
            )
            assert ready.ready
            for raw in (True, False):
                call = stub.ModelInfer(
                    _grpc_request("digits-vae.decoder", {"z": z}, raw=raw, id="q"), metadata=auth
                )
                answer = await call
                assert (answer.model_name, answer.id) == ("digits-vae.decoder", "q")
                x = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(4, 64)
                np.testing.assert_array_equal(x, native)
                assert ("x-request-id", "grpc-1") in tuple(await call.trailing_metadata())
            sample = _grpc_request("digits-vae.sample", {})
            sample.parameters["n"].int64_param = 2
            sample.parameters["seed"].int64_param = 9
            answer = await stub.ModelInfer(sample, metadata=auth)
            assert answer.parameters["seed"].int64_param == 9
            assert [o.name for o in answer.outputs] == ["x", "z"]
            for request, code, text in [
                (_grpc_request("nope.decoder", {"z": z}), "NOT_FOUND", "no model named"),
                (
                    _grpc_request("digits-vae.decoder", {"z": z[:, :7].copy()}),
                    "INVALID_ARGUMENT",
                    "expected shape",
                ),
                (
                    _grpc_request(
                        "digits-vae.decoder",
                        {"z": z},
                        parameters={"timeout": pb.InferParameter(int64_param=1)},
                    ),
                    "DEADLINE_EXCEEDED",
                    "timeout",
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ModelInfer(request, metadata=auth)
                assert err.value.code() == grpc.StatusCode[code]
                assert text in (err.value.details() or "")
        text = (await c.get("/metrics")).text
    assert (
        'latentserve_requests_total{endpoint="/inference.GRPCInferenceService/ModelInfer",'
        'method="GRPC",status="NOT_FOUND"} 1.0' in text
    )


async def test_a_taken_grpc_port_stops_startup_with_the_reason(serve) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            async with serve(grpc_port=port):
                pass


def test_generated_grpc_code_is_what_the_script_makes(tmp_path: Path) -> None:
    """The committed code is grpcio-tools' output for the vendored proto, plus the script's one
    edit: regenerating changes nothing."""
    committed = Path(__file__).resolve().parent.parent / "service" / "oip" / "grpc_v2"
    out = tmp_path / "service" / "oip" / "grpc_v2"
    out.mkdir(parents=True)
    shutil.copy(committed / "open_inference_grpc.proto", out)
    script = committed.parent.parent.parent / "scripts" / "gen_oip_grpc.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        made = (out / f"open_inference_grpc{name}").read_text()
        assert made == (committed / f"open_inference_grpc{name}").read_text(), name
