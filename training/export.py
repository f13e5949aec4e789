"""Export a checkpoint to a served model folder: ONNX parts, numeric check, manifest.

Each part is exported with a dynamic batch axis and checked against PyTorch on random inputs with
ONNX Runtime; an export whose outputs drift more than `MAX_ABS_ERROR` is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from service.manifest import (
    InputSpec,
    Manifest,
    ModelKind,
    Normalization,
    OnnxPart,
    PartRole,
    TensorSpec,
    sha256_file,
)
from training.config import to_dict
from training.train import Checkpoint, training_phase

log = logging.getLogger("training.export")

MAX_ABS_ERROR = 1e-4
OPSET = 18


class _EncoderGraph(nn.Module):
    """x (B, *shape) [, label (B,) int64] -> mean (B, L), log_var (B, L)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, label: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_var = self.model.encoder(x, self.model.onehot(label))
        return mean, log_var


class _DecoderGraph(nn.Module):
    """z (B, L) [, label (B,) int64] -> x (B, *shape) in [0, 1]."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.model.decoder(z, self.model.onehot(label)))


class _GeneratorGraph(nn.Module):
    """z (B, L) [, label] -> x (B, *shape) in [0, 1]."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        out: Tensor = self.model.generate(z, self.model.onehot(label))
        return out


class _DiscriminatorGraph(nn.Module):
    """x (B, *shape) [, label] -> logit (B, 1) that x is real."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        logit: Tensor = self.model.discriminate(x, self.model.onehot(label))
        return logit


def write_fp16_copy(path: Path) -> Path:
    """Half-precision weights and activations, fp32 at the graph's inputs and outputs, so the
    service can swap it in without changing what clients send or receive."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    out = path.with_suffix(".fp16.onnx")
    onnx.save(model, str(out))
    return out


def _fp16_fields(path: Path) -> dict[str, str]:
    """The manifest fields of the fp16 copy written beside the graph at `path`."""
    fp16_path = write_fp16_copy(path)
    return {"fp16_path": fp16_path.name, "fp16_sha256": sha256_file(fp16_path)}


TIMING_METRICS = frozenset({"epoch_s"})


# Comparisons that pick a discrete branch: rounding their inputs to fp16 flips some choices.
_DISCRETE_OPS = frozenset({"ArgMin", "ArgMax", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"})


def chooses_discretely(path: Path) -> bool:
    """Whether the export wrapper itself (outside the networks' modules; the exporter records
    each node's module scopes) makes a discrete choice from the inputs: a self-conditioned GAN
    picks a cluster from Phi(u) against the cumulative shares, or an image's nearest centroid.
    An fp16 copy would move a boundary or a near-tie by ~1e-3 and give some inputs another
    cluster, a different image rather than a rounding error, so such a part stays fp32."""
    import onnx

    for node in onnx.load(str(path), load_external_data=False).graph.node:
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        if node.op_type in _DISCRETE_OPS and scopes is not None and "'model." not in scopes:
            return True
    return False


def add_fp16_copies(model_dir: Path) -> Manifest:
    """Write an fp16 copy of every part of an exported model folder (but parts that make a
    discrete choice, see chooses_discretely) and list it in the manifest (for
    `LATENTSERVE_PREFER_FP16` on GPUs); the fp32 graphs and everything else stay as they
    were. Converting the exported graph, not re-exporting the checkpoint, keeps the fp32 graph
    the copy came from byte for byte."""
    manifest = Manifest.load(model_dir)
    parts = {
        role: part
        if chooses_discretely(model_dir / part.path)
        else part.model_copy(update=_fp16_fields(model_dir / part.path))
        for role, part in manifest.parts.items()
    }
    manifest = manifest.model_copy(update={"parts": parts})
    manifest.save(model_dir)
    return manifest


def _spec(name: str, shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "shape": [None, *shape], "dtype": dtype})


def _like(example: Tensor, batch: int) -> Tensor:
    """A fresh random tensor like `example` but with another batch size."""
    if example.dtype == torch.int64:
        return torch.randint(0, int(example.max()) + 1, (batch, *example.shape[1:]))
    return torch.rand(batch, *example.shape[1:]) * 4 - 2


class _DropTorchvisionNotice(logging.Filter):
    """torch's ONNX registry warns, once per exported graph, for each torchvision operator it
    skips because torchvision is not installed; our models use none of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the two notices torch.onnx prints for every part and no user can act on: the
    skipped torchvision operators and the FutureWarning about `LeafSpec` that torch's own pytree
    code triggers. Only those: any other warning of the export still shows."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _DropTorchvisionNotice()
    registry_log.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
            )
            yield
    finally:
        registry_log.removeFilter(notice)


def export_graph(
    graph: nn.Module,
    inputs: dict[str, Tensor],
    output_names: list[str],
    path: Path,
) -> float:
    """Export one graph with a dynamic batch axis; returns max |ORT - torch| on fresh inputs."""
    graph.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = {name: {0: batch} for name in inputs}
    args = tuple(inputs.values())
    with quiet_exporter():
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=list(inputs),
            output_names=output_names,
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
            optimize=True,
            verbose=False,  # its step-by-step lines, 8 per part; failures still raise
        )
    # Check on a batch size different from the traced one, so the dynamic axis is exercised.
    check_inputs = {k: _like(v, 7) for k, v in inputs.items()}
    with torch.no_grad():
        expected = graph(*check_inputs.values())
    expected_list = list(expected) if isinstance(expected, tuple) else [expected]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in check_inputs.items()})
    err = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected_list, strict=True))
    if not err <= MAX_ABS_ERROR:
        raise RuntimeError(f"{path.name}: ONNX Runtime differs from PyTorch by {err:.2e}")
    return err


def export_checkpoint(
    ckpt: Checkpoint,
    out_dir: Path,
    name: str,
    version: str = "1",
    description: str = "",
    half: bool = False,
    normalization: Normalization | None = None,
) -> Manifest:
    """Write the model's ONNX parts and model.json (without calibration) into `out_dir`; with
    `half`, also fp16 copies of each part (fp32 inputs and outputs kept); `normalization` (scaled
    tabular data) goes into the manifest so the service takes raw feature values."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = ckpt.model_config
    model = ckpt.model.eval()
    shape = cfg.input_shape
    conditional = cfg.num_classes is not None
    label = {"label": torch.arange(4) % (cfg.num_classes or 1)} if conditional else {}

    latent_dim = cfg.served_latent_dim
    x_example = torch.rand(4, *shape)
    z_example = torch.randn(4, latent_dim)
    label_specs = [_spec("label", (), "int64")] if conditional else []
    x_in = ({"x": x_example, **label}, [_spec("x", shape), *label_specs])
    z_in = ({"z": z_example, **label}, [_spec("z", (latent_dim,)), *label_specs])
    graphs: list[tuple[PartRole, nn.Module, dict[str, Tensor], list[TensorSpec], list[TensorSpec]]]
    if cfg.kind in ("gan", "cgan"):
        graphs = [
            (PartRole.GENERATOR, _GeneratorGraph(model), *z_in, [_spec("x", shape)]),
            (PartRole.DISCRIMINATOR, _DiscriminatorGraph(model), *x_in, [_spec("logit", (1,))]),
        ]
    else:
        graphs = [
            (
                PartRole.ENCODER,
                _EncoderGraph(model),
                *x_in,
                [_spec("mean", (cfg.latent_dim,)), _spec("log_var", (cfg.latent_dim,))],
            ),
            (PartRole.DECODER, _DecoderGraph(model), *z_in, [_spec("x", shape)]),
        ]
    parts: dict[PartRole, OnnxPart] = {}
    for role, graph, inputs, in_specs, out_specs in graphs:
        path = out_dir / f"{role.value}.onnx"
        err = export_graph(graph, inputs, [s.name for s in out_specs], path)
        log.info("exported %s: max |onnxruntime - torch| = %.2e", path, err)
        fp16 = _fp16_fields(path) if half else {}
        parts[role] = OnnxPart(
            path=path.name, sha256=sha256_file(path), inputs=in_specs, outputs=out_specs, **fp16
        )

    kind = ModelKind(cfg.kind)
    manifest = Manifest(
        name=name,
        version=version,
        kind=kind,
        description=description,
        input=InputSpec(
            shape=list(shape),
            value_range=(0.0, 1.0),
            image_shape=cfg.image_shape,
            normalization=normalization,
            binarized=ckpt.train_config.binarize,
        ),
        latent_dim=latent_dim,
        num_classes=cfg.num_classes,
        likelihood="bernoulli",
        parts=parts,
        training={
            "model": to_dict(cfg),
            "train": to_dict(ckpt.train_config),
            "epochs": ckpt.epoch,
            # each phase (a resume with a new --lr or objective starts one), as the card replays
            "phases": ckpt.history or [training_phase(ckpt.epoch, ckpt.train_config)],
        },
        # the model's figures; an epoch's seconds say more about the machine than the model
        metrics={
            k: float(v)
            for k, v in ckpt.metrics.items()
            if math.isfinite(v) and k not in TIMING_METRICS
        },
    )
    manifest.save(out_dir)
    return manifest
