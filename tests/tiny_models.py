"""Tiny hand-built ONNX models (no torch) for testing the GAN and conditional paths of the service.

Each graph is a linear map plus a sigmoid, so expected outputs can be computed with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.manifest import (
    Calibration,
    InputSpec,
    Manifest,
    ModelKind,
    OnnxPart,
    PartRole,
    TensorSpec,
    sha256_file,
)

LATENT = 4
SIDE = 6  # images are 1 x 6 x 6
PIXELS = SIDE * SIDE
CLASSES = 3


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_dec": rng.standard_normal((LATENT, PIXELS)).astype(np.float32),
        "E_dec": rng.standard_normal((CLASSES, PIXELS)).astype(np.float32),
        "W_enc": (rng.standard_normal((PIXELS, LATENT)) * 0.1).astype(np.float32),
        "W_dis": (rng.standard_normal((PIXELS, 1)) * 0.5).astype(np.float32),
    }


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _value(
    name: str, shape: list[int | str], dtype: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _decoder_graph(w: dict[str, np.ndarray], conditional: bool) -> onnx.GraphProto:
    """z (B, L) [label (B,)] -> x (B, 1, S, S) = sigmoid(z W [+ E[label]])."""
    nodes = [helper.make_node("MatMul", ["z", "W_dec"], ["h"])]
    inputs = [_value("z", ["B", LATENT])]
    inits = [numpy_helper.from_array(w["W_dec"], "W_dec")]
    pre = "h"
    if conditional:
        inputs.append(_value("label", ["B"], TensorProto.INT64))
        inits.append(numpy_helper.from_array(w["E_dec"], "E_dec"))
        nodes += [
            helper.make_node("Gather", ["E_dec", "label"], ["e"], axis=0),
            helper.make_node("Add", ["h", "e"], ["he"]),
        ]
        pre = "he"
    inits.append(numpy_helper.from_array(np.array([-1, 1, SIDE, SIDE], np.int64), "shape"))
    nodes += [
        helper.make_node("Sigmoid", [pre], ["flat"]),
        helper.make_node("Reshape", ["flat", "shape"], ["x"]),
    ]
    return helper.make_graph(nodes, "decoder", inputs, [_value("x", ["B", 1, SIDE, SIDE])], inits)


def _encoder_graph(w: dict[str, np.ndarray], conditional: bool) -> onnx.GraphProto:
    """x (B, 1, S, S) [label] -> mean = flat(x) W, log_var = -1 (constant)."""
    inputs = [_value("x", ["B", 1, SIDE, SIDE])]
    if conditional:
        inputs.append(_value("label", ["B"], TensorProto.INT64))
    inits = [
        numpy_helper.from_array(w["W_enc"], "W_enc"),
        numpy_helper.from_array(np.array([-1, PIXELS], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W_enc"], ["mean"]),
        helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "minus_one"], ["log_var"]),
    ]
    outputs = [_value("mean", ["B", LATENT]), _value("log_var", ["B", LATENT])]
    return helper.make_graph(nodes, "encoder", inputs, outputs, inits)


def _discriminator_graph(w: dict[str, np.ndarray], half: bool = False) -> onnx.GraphProto:
    """x (B, 1, S, S) -> logit (B, 1) = flat(x) W; with `half`, x and logit are float16 (the
    graph computes in float32 between two casts)."""
    inits = [
        numpy_helper.from_array(w["W_dis"], "W_dis"),
        numpy_helper.from_array(np.array([-1, PIXELS], np.int64), "flat_shape"),
    ]
    io_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    x_in, logit_out = ("x16", "logit32") if half else ("x", "logit")
    nodes = [
        helper.make_node("Reshape", [x_in, "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W_dis"], [logit_out]),
    ]
    if half:
        nodes.insert(0, helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Cast", ["logit32"], ["logit"], to=TensorProto.FLOAT16))
    return helper.make_graph(
        nodes,
        "discriminator",
        [_value("x", ["B", 1, SIDE, SIDE], io_type)],
        [_value("logit", ["B", 1], io_type)],
        inits,
    )


def _part(folder: Path, role: PartRole, graph: onnx.GraphProto) -> OnnxPart:
    path = folder / f"{role.value}.onnx"
    _save(graph, path)
    specs = {
        "z": [None, LATENT],
        "label": [None],
        "x": [None, 1, SIDE, SIDE],
        "mean": [None, LATENT],
        "log_var": [None, LATENT],
        "logit": [None, 1],
    }
    dtypes: dict[int, str] = {int(TensorProto.INT64): "int64", int(TensorProto.FLOAT16): "float16"}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        dtype = dtypes.get(int(v.type.tensor_type.elem_type), "float32")
        return TensorSpec.model_validate({"name": v.name, "shape": specs[v.name], "dtype": dtype})

    return OnnxPart(
        path=path.name,
        sha256=sha256_file(path),
        inputs=[spec(v) for v in graph.input],
        outputs=[spec(v) for v in graph.output],
    )


def write_gan(
    folder: Path, name: str = "tiny-gan", seed: int = 0, half_discriminator: bool = False
) -> Manifest:
    """A GAN; `half_discriminator` gives its discriminator float16 input and output (for raw
    part inference: the service's own scores feed float32)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = weights(seed)
    discriminator = _discriminator_graph(w, half=half_discriminator)
    parts = {
        PartRole.GENERATOR: _part(folder, PartRole.GENERATOR, _decoder_graph(w, False)),
        PartRole.DISCRIMINATOR: _part(folder, PartRole.DISCRIMINATOR, discriminator),
    }
    manifest = Manifest(
        name=name,
        version="1",
        kind=ModelKind.GAN,
        input=InputSpec(shape=[1, SIDE, SIDE], image_shape=(1, SIDE, SIDE)),
        latent_dim=LATENT,
        parts=parts,
        calibration={
            "discriminator": Calibration(
                method="discriminator",
                dataset="synthetic",
                n=10,
                quantiles={"0.5": 0.7},
                percentile=99,
                threshold=2.0,
            )
        },
    )
    manifest.save(folder)
    return manifest


def write_cvae(folder: Path, name: str = "tiny-cvae", seed: int = 0) -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    w = weights(seed)
    parts = {
        PartRole.ENCODER: _part(folder, PartRole.ENCODER, _encoder_graph(w, True)),
        PartRole.DECODER: _part(folder, PartRole.DECODER, _decoder_graph(w, True)),
    }
    manifest = Manifest(
        name=name,
        version="1",
        kind=ModelKind.CVAE,
        input=InputSpec(shape=[1, SIDE, SIDE], image_shape=(1, SIDE, SIDE)),
        latent_dim=LATENT,
        num_classes=CLASSES,
        parts=parts,
    )
    manifest.save(folder)
    return manifest


def expected_decode(z: np.ndarray, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    w = weights(seed)
    h = z @ w["W_dec"]
    if labels is not None:
        h = h + w["E_dec"][labels]
    x: np.ndarray = (1 / (1 + np.exp(-h))).reshape(-1, 1, SIDE, SIDE).astype(np.float32)
    return x


def expected_logit(x: np.ndarray, seed: int = 0) -> np.ndarray:
    logit: np.ndarray = (x.reshape(len(x), -1) @ weights(seed)["W_dis"]).reshape(-1)
    return logit
