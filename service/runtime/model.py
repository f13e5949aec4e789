"""A loaded generative model: its manifest, what it can do, one batched part per ONNX graph, and
the operations over them (sample, encode, decode, reconstruct, interpolate, anomaly scores).

Operations take arrays already checked by the model's `InputContract` (the data plane does that)
and return arrays in the units clients use. All randomness comes from numpy generators seeded
per request, so a seed fixes the output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.capabilities import Capabilities, Operation, ScoreMethod, combined_scales
from service.images import png_complexity_bits
from service.manifest import Manifest, ModelKind, PartRole
from service.runtime import scoring
from service.runtime.batching import BatchingConfig, BatchObserver
from service.runtime.contract import F32, InputContract, Labels
from service.runtime.parts import Part
from service.runtime.scoring import RawScores
from service.runtime.sessions import ProviderState, SessionConfig

InterpolationMode = Literal["linear", "spherical"]
T = TypeVar("T")

LABEL_INPUT = "label"
"""The graph input carrying class labels in conditional models (int64, one per row)."""

INLINE_MATH_VALUES = 1 << 16
"""numpy work on fewer values than this runs on the event loop: a thread hop costs more."""


async def _compute(size: int, fn: Callable[..., T], *args: object) -> T:
    """Run `fn` off the event loop unless the work is smaller than the hop to a thread."""
    if size < INLINE_MATH_VALUES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class GenerativeModel:
    def __init__(self, manifest: Manifest, folder: Path, parts: dict[PartRole, Part]) -> None:
        self.manifest = manifest
        self.folder = folder
        self.parts = parts
        self.capabilities = Capabilities.of(manifest)
        self.contract = InputContract(manifest)
        self.loaded_at = time.time()

    @classmethod
    def load(
        cls,
        folder: Path,
        session_cfg: SessionConfig,
        batching: BatchingConfig,
        executor: Executor,
        observer: BatchObserver | None = None,
        manifest: Manifest | None = None,
        provider_state: ProviderState | None = None,
    ) -> GenerativeModel:
        """Load every part; `provider_state` is shared with the other models of the same owner
        (the repository), so a GPU that failed to start for one part is not retried for each."""
        if manifest is None:
            manifest = Manifest.load(folder)
        state = provider_state if provider_state is not None else ProviderState()
        parts = {
            role: Part(
                manifest.name, role, spec, folder, session_cfg, batching, executor, observer, state
            )
            for role, spec in manifest.parts.items()
        }
        sizes = tuple(sorted({1, batching.max_batch_size})) if batching.enabled else (1,)
        for part in parts.values():
            part.warm_up(sizes)
        return cls(manifest, folder, parts)

    # -- introspection -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def provider(self) -> str:
        return next(iter(self.parts.values())).provider

    @property
    def precision(self) -> str:
        return next(iter(self.parts.values())).precision

    @property
    def kind(self) -> ModelKind:
        return self.manifest.kind

    @property
    def _generator(self) -> Part:
        return self.parts.get(PartRole.DECODER) or self.parts[PartRole.GENERATOR]

    async def close(self) -> None:
        await asyncio.gather(*(p.batcher.close() for p in self.parts.values()))

    def admit(self, work: Operation | ScoreMethod, rows: int, k: int = 1) -> None:
        """Ask each part that `work` on `rows` examples will run whether its queue can take it
        in time (raises `Overloaded` if not): a cheap early refusal, before any conversion."""
        for part, part_rows in self._parts_for(work, rows, k):
            part.batcher.admit(part_rows)

    def _parts_for(
        self, work: Operation | ScoreMethod, rows: int, k: int
    ) -> list[tuple[Part, int]]:
        if work in (Operation.SAMPLE, Operation.DECODE, Operation.INTERPOLATE):
            return [(self._generator, rows)]
        encoder = self.parts.get(PartRole.ENCODER)
        if work is Operation.ENCODE and encoder is not None:
            return [(encoder, rows)]
        if work in (Operation.RECONSTRUCT, ScoreMethod.RECONSTRUCTION) and encoder is not None:
            return [(encoder, rows), (self._generator, rows)]
        if work in (ScoreMethod.ELBO, ScoreMethod.IWAE, ScoreMethod.ELBO_COMPLEXITY) and encoder:
            return [(encoder, rows), (self._generator, rows * k)]
        if work is ScoreMethod.COMBINED and encoder is not None:
            return [(encoder, 2 * rows), (self._generator, rows * (k + 1))]
        if work is ScoreMethod.DISCRIMINATOR and PartRole.DISCRIMINATOR in self.parts:
            return [(self.parts[PartRole.DISCRIMINATOR], rows)]
        return []

    # -- graph runs (model units) --------------------------------------------------------------
    async def _encode(self, x: F32, labels: Labels | None) -> tuple[F32, F32]:
        mean, log_var = await self.parts[PartRole.ENCODER].run(_feeds("x", x, labels))
        return mean.astype(np.float32, copy=False), log_var.astype(np.float32, copy=False)

    async def _decode(self, z: F32, labels: Labels | None) -> F32:
        (x,) = await self._generator.run(_feeds("z", z, labels))
        return x.astype(np.float32, copy=False)

    async def _reconstruct(self, x: F32, labels: Labels | None) -> F32:
        mean, _ = await self._encode(x, labels)
        return await self._decode(mean, labels)

    # -- operations (client units) -------------------------------------------------------------
    async def encode(self, x: F32, labels: Labels | None = None) -> tuple[F32, F32]:
        self.capabilities.require(Operation.ENCODE)
        return await self._encode(self.contract.feed(self.contract.to_model(x)), labels)

    async def posterior_draws(self, mean: F32, log_var: F32, k: int, seed: int) -> F32:
        """k draws z ~ q(z|x) per input, (n, k, latent_dim)."""
        z, _ = await _compute(mean.size * k, scoring.draw_posterior, mean, log_var, k, seed)
        return z

    async def decode(self, z: F32, labels: Labels | None = None) -> F32:
        self.capabilities.require(Operation.DECODE)
        return self.contract.to_raw(await self._decode(z, labels))

    def draw_latents(self, n: int, seed: int, temperature: float) -> F32:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.manifest.latent_dim), dtype=np.float32)
        return (z * np.float32(temperature)).astype(np.float32)

    async def sample(
        self, n: int, seed: int, temperature: float = 1.0, labels: Labels | None = None
    ) -> tuple[F32, F32]:
        self.capabilities.require(Operation.SAMPLE)
        z = self.draw_latents(n, seed, temperature)
        return await self.decode(z, labels), z

    async def reconstruct(self, x: F32, labels: Labels | None = None) -> F32:
        self.capabilities.require(Operation.RECONSTRUCT)
        x_model = self.contract.feed(self.contract.to_model(x))
        return self.contract.to_raw(await self._reconstruct(x_model, labels))

    async def interpolate(
        self,
        z0: F32,
        z1: F32,
        steps: int,
        mode: InterpolationMode,
        labels: Labels | None = None,
    ) -> tuple[F32, F32]:
        """Decode `steps` points from z0 to z1 (both ends included)."""
        self.capabilities.require(Operation.INTERPOLATE)
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        path = scoring.slerp if mode == "spherical" else scoring.linear_path
        z = path(z0, z1, t)
        if labels is not None and labels.shape[0] != steps:
            labels = np.repeat(labels[:1], steps)
        return await self.decode(z, labels), z

    async def anomaly_scores(
        self,
        x: F32,
        method: ScoreMethod = ScoreMethod.RECONSTRUCTION,
        k: int = 16,
        seed: int = 0,
        labels: Labels | None = None,
        per_pixel: bool = False,
    ) -> RawScores:
        """Scores in model units: for tabular models a squared error of 1 is a feature's whole
        training range, and values beyond that range still count in full."""
        self.capabilities.require_method(method)
        if method is ScoreMethod.COMBINED:
            return await self._combined_scores(x, k, seed, labels)
        x_model = self.contract.to_model(x)
        fed = self.contract.feed(x_model)
        if method is ScoreMethod.RECONSTRUCTION:
            x_hat = await self._reconstruct(fed, labels)
            return await _compute(x.size, scoring.squared_error, x_model, x_hat, per_pixel)
        if method is ScoreMethod.DISCRIMINATOR:
            (logits,) = await self.parts[PartRole.DISCRIMINATOR].run(_feeds("x", fed, labels))
            return RawScores(scoring.discriminator_scores(logits, len(x)), None)
        mean, log_var = await self._encode(fed, labels)
        z, eps = await _compute(mean.size * k, scoring.draw_posterior, mean, log_var, k, seed)
        rep_labels = None if labels is None else np.repeat(labels, k)
        p = await self._decode(z.reshape(len(x) * k, -1), rep_labels)
        iwae = method is ScoreMethod.IWAE
        bound = await _compute(
            p.size, scoring.bernoulli_bound, fed, p, mean, log_var, z, eps, iwae, per_pixel
        )
        if method is ScoreMethod.ELBO_COMPLEXITY:
            spec = self.manifest.input
            assert spec.image_shape is not None  # the capability needs it
            bits = await _compute(
                x.size * 64, png_complexity_bits, x_model, spec.image_shape, spec.value_range
            )
            return RawScores(scoring.complexity_corrected(bound.scores, bits), None)
        return bound

    async def _combined_scores(self, x: F32, k: int, seed: int, labels: Labels | None) -> RawScores:
        scales = combined_scales(self.manifest)
        assert scales is not None  # the capability needs them
        error, corrected = await asyncio.gather(
            self.anomaly_scores(x, ScoreMethod.RECONSTRUCTION, labels=labels),
            self.anomaly_scores(x, ScoreMethod.ELBO_COMPLEXITY, k, seed, labels),
        )
        scores = scoring.combined(error.scores, corrected.scores, *scales)
        return RawScores(scores, None)


def _feeds(name: str, value: F32, labels: Labels | None) -> dict[str, NDArray[np.generic]]:
    if labels is None:
        return {name: value}
    return {name: value, LABEL_INPUT: labels}
