"""A loaded generative model: its manifest, one batched session per ONNX part, and the operations
the service offers (sample, encode, decode, reconstruct, interpolate, anomaly scores).

All randomness comes from numpy generators seeded per request, so a seed fixes the output.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import (
    ChecksumMismatch,
    InvalidInput,
    ModelLoadError,
    OperationNotSupported,
    ProviderUnavailable,
)
from service.manifest import Manifest, ModelKind, OnnxPart, PartRole, sha256_file
from service.runtime.batching import Batcher, BatchingConfig, BatchObserver, Feeds, Outputs
from service.runtime.sessions import SessionConfig, create_session, provider_short_name

log = logging.getLogger("latentserve.runtime")

F32 = NDArray[np.float32]
ScoreMethod = Literal["reconstruction", "elbo", "iwae", "discriminator"]
SCORE_METHODS: tuple[ScoreMethod, ...] = ("reconstruction", "elbo", "iwae", "discriminator")
_EPS = 1e-7
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class AnomalyResult:
    scores: F32  # (B,) higher = more anomalous
    per_pixel: F32 | None  # (B, *input_shape) when asked


class Part:
    """One ONNX graph: its session (batched) and its declared inputs and outputs."""

    def __init__(
        self,
        model_name: str,
        role: PartRole,
        spec: OnnxPart,
        folder: Path,
        session_cfg: SessionConfig,
        batching: BatchingConfig,
        executor: Executor,
        observer: BatchObserver | None,
    ) -> None:
        use_fp16 = session_cfg.prefer_fp16 and spec.fp16_path is not None
        file, expected = (
            (spec.fp16_path, spec.fp16_sha256) if use_fp16 else (spec.path, spec.sha256)
        )
        assert file is not None
        path = folder / file
        if not path.is_file():
            raise ModelLoadError(f"{role.value}: file {file} is missing")
        digest = sha256_file(path)
        if digest != expected:
            raise ChecksumMismatch(
                f"{role.value}: sha256 of {file} is {digest}, manifest says {expected}"
            )
        self.precision = "fp16" if use_fp16 else "fp32"
        try:
            self.session = create_session(path, session_cfg)
        except ProviderUnavailable:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"{role.value}: ONNX Runtime cannot load {spec.path}: {exc}"
            ) from exc
        names = [i.name for i in self.session.get_inputs()]
        if names != [t.name for t in spec.inputs]:
            raise ModelLoadError(f"{role.value}: graph inputs {names} differ from the manifest")
        self.role = role
        self.spec = spec
        self.provider = provider_short_name(self.session.get_providers()[0])
        self._output_names = [o.name for o in spec.outputs]
        self.batcher = Batcher(
            f"{model_name}/{role.value}", self._run_sync, executor, batching, observer
        )

    def _run_sync(self, feeds: Feeds) -> Outputs:
        return list(self.session.run(self._output_names, feeds))

    async def run(self, feeds: Feeds) -> Outputs:
        return await self.batcher.run(feeds)


class GenerativeModel:
    """Operations over a model's parts. Input arrays are validated against the manifest here, so
    every caller (HTTP, tests, calibration) gets the same checks and the same numbers."""

    def __init__(self, manifest: Manifest, folder: Path, parts: dict[PartRole, Part]) -> None:
        self.manifest = manifest
        self.folder = folder
        self.parts = parts
        self.loaded_at = time.time()
        norm = manifest.input.normalization
        shape = tuple(manifest.input.shape)
        self._offset: F32 | None = None
        self._scale: F32 | None = None
        if norm is not None:
            self._offset = np.asarray(norm.offset, dtype=np.float32).reshape(shape)
            self._scale = np.asarray(norm.scale, dtype=np.float32).reshape(shape)

    @classmethod
    def load(
        cls,
        folder: Path,
        session_cfg: SessionConfig,
        batching: BatchingConfig,
        executor: Executor,
        observer: BatchObserver | None = None,
        manifest: Manifest | None = None,
    ) -> GenerativeModel:
        if manifest is None:
            manifest = Manifest.load(folder)
        parts = {
            role: Part(manifest.name, role, spec, folder, session_cfg, batching, executor, observer)
            for role, spec in manifest.parts.items()
        }
        model = cls(manifest, folder, parts)
        model.warm_up()
        return model

    # -- introspection -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def provider(self) -> str:
        return next(iter(self.parts.values())).provider

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.input.shape)

    @property
    def kind(self) -> ModelKind:
        return self.manifest.kind

    def has(self, role: PartRole) -> bool:
        return role in self.parts

    def _part(self, role: PartRole, operation: str) -> Part:
        if role not in self.parts:
            raise OperationNotSupported(
                f"model {self.name} ({self.kind.value}) has no {role.value}, "
                f"so it cannot {operation}"
            )
        return self.parts[role]

    def warm_up(self) -> None:
        """One synchronous run per part at load, so the first request does not pay for lazy
        initialisation (memory arenas, kernel selection)."""
        for part in self.parts.values():
            feeds: Feeds = {}
            for spec in part.spec.inputs:
                shape = [1 if d is None else d for d in spec.shape]
                feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
            part._run_sync(feeds)

    async def close(self) -> None:
        await asyncio.gather(*(p.batcher.close() for p in self.parts.values()))

    # -- validation ----------------------------------------------------------------------------
    def check_inputs(self, x: NDArray[np.generic], field: str = "inputs") -> F32:
        shape = self.input_shape
        if x.ndim == len(shape) and tuple(x.shape) == shape:
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InvalidInput(
                f"expected examples of shape {list(shape)} (a batch of them has shape "
                f"[n, {', '.join(map(str, shape))}]), got shape {list(x.shape)}",
                field=field,
            )
        if x.shape[0] == 0:
            raise InvalidInput("at least one example is required", field=field)
        x32: F32 = np.asarray(x, dtype=np.float32)
        if not np.isfinite(x32).all():
            raise InvalidInput("values must be finite numbers (no NaN or infinity)", field=field)
        lo, hi = self.manifest.input.value_range
        if self._offset is not None:
            with np.errstate(over="ignore"):
                if not np.isfinite(self._to_model(x32)).all():
                    raise InvalidInput(
                        "values are too large for this model's feature scaling", field=field
                    )
        elif x32.min() < lo - 1e-6 or x32.max() > hi + 1e-6:
            raise InvalidInput(
                f"values must lie in the model's range [{lo}, {hi}], got [{x32.min():.4g}, "
                f"{x32.max():.4g}]",
                field=field,
            )
        return x32

    def check_latents(self, z: NDArray[np.generic], field: str = "z") -> F32:
        d = self.manifest.latent_dim
        if z.ndim == 1 and z.shape[0] == d:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != d or z.shape[0] == 0:
            raise InvalidInput(
                f"expected latents of shape [n, {d}], got shape {list(z.shape)}", field=field
            )
        z32: F32 = np.asarray(z, dtype=np.float32)
        if not np.isfinite(z32).all():
            raise InvalidInput("values must be finite numbers (no NaN or infinity)", field=field)
        return z32

    def check_labels(
        self, labels: NDArray[np.generic] | None, n: int, field: str = "labels"
    ) -> NDArray[np.int64] | None:
        k = self.manifest.num_classes
        if k is None:
            if labels is not None:
                raise InvalidInput(f"model {self.name} is not conditional", field=field)
            return None
        if labels is None:
            raise InvalidInput(f"model {self.name} is conditional: give {n} labels", field=field)
        labels = np.asarray(labels)
        if labels.shape == (1,) and n > 1:
            labels = np.repeat(labels, n)
        if labels.shape != (n,):
            raise InvalidInput(f"expected {n} labels, got shape {list(labels.shape)}", field=field)
        if labels.min() < 0 or labels.max() >= k:
            raise InvalidInput(f"labels must be integers in [0, {k - 1}]", field=field)
        return labels.astype(np.int64)

    @staticmethod
    def _with_label(feeds: Feeds, labels: NDArray[np.int64] | None) -> Feeds:
        if labels is not None:
            feeds["label"] = labels
        return feeds

    # -- units -------------------------------------------------------------------------------
    # Public operations take and return the units clients use. Models with `input.normalization`
    # (tabular data) compute on min-max scaled values; without it every map is the identity.
    def _to_model(self, x: F32) -> F32:
        if self._offset is None or self._scale is None:
            return x
        return ((x - self._offset) / self._scale).astype(np.float32)

    def _to_raw(self, x: F32) -> F32:
        if self._offset is None or self._scale is None:
            return x
        return (self._offset + self._scale * x).astype(np.float32)

    def _feed(self, x_model: F32) -> F32:
        """Model-unit inputs as the graphs saw them in training: inside the value range."""
        if self._offset is None:
            return x_model
        lo, hi = self.manifest.input.value_range
        return np.clip(x_model, lo, hi).astype(np.float32)

    # -- operations ----------------------------------------------------------------------------
    async def encode(self, x: F32, labels: NDArray[np.int64] | None = None) -> tuple[F32, F32]:
        return await self._encode(self._feed(self._to_model(x)), labels)

    async def decode(self, z: F32, labels: NDArray[np.int64] | None = None) -> F32:
        return self._to_raw(await self._decode(z, labels))

    async def _encode(self, x: F32, labels: NDArray[np.int64] | None) -> tuple[F32, F32]:
        part = self._part(PartRole.ENCODER, "encode")
        mean, log_var = await part.run(self._with_label({"x": x}, labels))
        return mean.astype(np.float32), log_var.astype(np.float32)

    async def _decode(self, z: F32, labels: NDArray[np.int64] | None) -> F32:
        role = PartRole.DECODER if self.has(PartRole.DECODER) else PartRole.GENERATOR
        part = self._part(role, "decode")
        (x,) = await part.run(self._with_label({"z": z}, labels))
        return x.astype(np.float32)

    def draw_latents(self, n: int, seed: int, temperature: float) -> F32:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.manifest.latent_dim), dtype=np.float32)
        return (z * np.float32(temperature)).astype(np.float32)

    async def sample(
        self,
        n: int,
        seed: int,
        temperature: float = 1.0,
        labels: NDArray[np.int64] | None = None,
    ) -> tuple[F32, F32]:
        z = self.draw_latents(n, seed, temperature)
        return await self.decode(z, labels), z

    async def reconstruct(self, x: F32, labels: NDArray[np.int64] | None = None) -> F32:
        return self._to_raw(await self._reconstruct(self._feed(self._to_model(x)), labels))

    async def _reconstruct(self, x: F32, labels: NDArray[np.int64] | None) -> F32:
        mean, _ = await self._encode(x, labels)
        return await self._decode(mean, labels)

    async def interpolate(
        self,
        z0: F32,
        z1: F32,
        steps: int,
        mode: Literal["linear", "spherical"],
        labels: NDArray[np.int64] | None = None,
    ) -> tuple[F32, F32]:
        """Decode `steps` points from z0 to z1 (both ends included)."""
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        if mode == "spherical":
            z = slerp(z0, z1, t)
        else:
            z = (1 - t) * z0[None] + t * z1[None]
        z = z.astype(np.float32)
        if labels is not None and labels.shape[0] != steps:
            labels = np.repeat(labels[:1], steps)
        return await self.decode(z, labels), z

    async def anomaly_scores(
        self,
        x: F32,
        method: ScoreMethod = "reconstruction",
        k: int = 16,
        seed: int = 0,
        labels: NDArray[np.int64] | None = None,
        per_pixel: bool = False,
    ) -> AnomalyResult:
        # Scores are in model units: for tabular models a squared error of 1 is a feature's
        # whole training range, and values beyond that range still count in full here.
        x_model = self._to_model(x)
        if method == "reconstruction":
            x_hat = await self._reconstruct(self._feed(x_model), labels)
            sq = np.square(x_model - x_hat)
            return AnomalyResult(sq.reshape(len(x), -1).mean(1), sq if per_pixel else None)
        if method in ("elbo", "iwae"):
            return await self._variational_score(
                self._feed(x_model), method, k, seed, labels, per_pixel
            )
        if method == "discriminator":
            part = self._part(PartRole.DISCRIMINATOR, "score with a discriminator")
            (logit,) = await part.run(self._with_label({"x": self._feed(x_model)}, labels))
            # -log D(x): near 0 for inputs the discriminator finds real, large for fakes/outliers.
            logits = np.asarray(logit, dtype=np.float32).reshape(len(x))
            scores = np.logaddexp(0.0, -logits).astype(np.float32)
            if per_pixel:
                raise InvalidInput(
                    "per-pixel scores need a reconstruction-based method", field="per_pixel"
                )
            return AnomalyResult(scores, None)
        raise InvalidInput(f"unknown method {method!r}; use one of {SCORE_METHODS}", field="method")

    async def _variational_score(
        self,
        x: F32,
        method: ScoreMethod,
        k: int,
        seed: int,
        labels: NDArray[np.int64] | None,
        per_pixel: bool,
    ) -> AnomalyResult:
        """-ELBO or the IWAE bound on -log p(x), in nats, from k samples of q(z|x) per input."""
        if self.kind == ModelKind.AE or self.manifest.likelihood != "bernoulli":
            raise OperationNotSupported(
                f"model {self.name} has no probabilistic encoder with a Bernoulli decoder; "
                "use method 'reconstruction'"
            )
        mean, log_var = await self._encode(x, labels)
        # The sampling and the bound are O(n * k * pixels) numpy work: off the event loop.
        z, eps = await asyncio.to_thread(_draw_posterior, mean, log_var, k, seed)
        rep_labels = None if labels is None else np.repeat(labels, k)
        p = await self._decode(z, rep_labels)
        return await asyncio.to_thread(
            _bernoulli_bound, x, p, mean, log_var, z, eps, method == "iwae", per_pixel
        )


def _draw_posterior(mean: F32, log_var: F32, k: int, seed: int) -> tuple[F32, F32]:
    """k draws z ~ q(z|x) per input, flattened to (B*K, D), and the unit noise behind them."""
    b, d = mean.shape
    eps = np.random.default_rng(seed).standard_normal((b, k, d), dtype=np.float32)
    z = (mean[:, None, :] + np.exp(0.5 * log_var)[:, None, :] * eps).reshape(b * k, d)
    return z.astype(np.float32), eps


def _bernoulli_bound(
    x: F32, p: F32, mean: F32, log_var: F32, z: F32, eps: F32, iwae: bool, per_pixel: bool
) -> AnomalyResult:
    """-ELBO (closed-form KL) or the IWAE bound -log mean_k p(x, z_k) / q(z_k | x), in nats."""
    b, k, _ = eps.shape
    p = np.clip(p, _EPS, 1 - _EPS).reshape(b, k, -1)
    xf = x.reshape(b, 1, -1)
    pixel_ll = xf * np.log(p) + (1 - xf) * np.log1p(-p)  # (B, K, P)
    log_px_z = pixel_ll.sum(-1)  # (B, K)
    if not iwae:
        kl = 0.5 * (np.square(mean) + np.exp(log_var) - 1.0 - log_var).sum(1)
        scores = -(log_px_z.mean(1) - kl)
    else:
        log_pz = -0.5 * (np.square(z) + _LOG_2PI).sum(1).reshape(b, k)
        log_qz = -0.5 * (np.square(eps) + _LOG_2PI + log_var[:, None, :]).sum(-1)
        log_w = log_px_z + log_pz - log_qz
        m = log_w.max(1, keepdims=True)
        scores = -(m + np.log(np.exp(log_w - m).mean(1, keepdims=True)))[:, 0]
    pix = (-pixel_ll.mean(1)).reshape(x.shape).astype(np.float32) if per_pixel else None
    return AnomalyResult(scores.astype(np.float32), pix)


def slerp(z0: F32, z1: F32, t: F32) -> F32:
    """Spherical interpolation: stays on the shell where most of a Gaussian's mass lies."""
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 == 0 or n1 == 0:
        return ((1 - t) * z0[None] + t * z1[None]).astype(np.float32)
    cos = float(np.clip(np.dot(z0 / n0, z1 / n1), -1.0, 1.0))
    omega = math.acos(cos)
    if omega < 1e-6:
        return ((1 - t) * z0[None] + t * z1[None]).astype(np.float32)
    s = math.sin(omega)
    path: F32 = (np.sin((1 - t) * omega) / s * z0[None] + np.sin(t * omega) / s * z1[None]).astype(
        np.float32
    )
    return path
