"""One ONNX part of a model (encoder, decoder, generator or discriminator): its file checked
against the manifest, its ONNX Runtime session, and the batcher in front of it."""

from __future__ import annotations

import time
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from service.errors import ChecksumMismatch, ModelLoadError, ProviderUnavailable
from service.manifest import OnnxPart, PartRole, sha256_file
from service.runtime.batching import Batcher, BatchingConfig, BatchObserver, Feeds, Outputs
from service.runtime.sessions import (
    ProviderState,
    SessionConfig,
    create_session,
    provider_short_name,
)


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
        provider_state: ProviderState | None = None,
    ) -> None:
        use_fp16 = session_cfg.prefer_fp16 and spec.fp16_path is not None
        file, expected = (
            (spec.fp16_path, spec.fp16_sha256) if use_fp16 else (spec.path, spec.sha256)
        )
        assert file is not None
        path = folder / file
        # Messages name the model, the part and the file, never the server's paths.
        where = f"model {model_name}, {role.value} ({file})"
        if not path.is_file():
            raise ModelLoadError(f"{where}: the file is missing")
        digest = sha256_file(path)
        if digest != expected:
            raise ChecksumMismatch(f"{where}: sha256 is {digest}, the manifest says {expected}")
        self.precision = "fp16" if use_fp16 else "fp32"
        try:
            self.session = create_session(path, session_cfg, provider_state)
        except ProviderUnavailable:
            raise
        except Exception as exc:
            reason = str(exc).replace(str(path), file).replace(str(folder), model_name)
            raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {reason}") from exc
        names = [i.name for i in self.session.get_inputs()]
        if names != [t.name for t in spec.inputs]:
            raise ModelLoadError(f"{where}: graph inputs {names} differ from the manifest")
        self.role = role
        self.spec = spec
        self.provider = provider_short_name(self.session.get_providers()[0])
        self._output_names = [o.name for o in spec.outputs]
        self.batcher = Batcher(
            f"{model_name}/{role.value}", self.run_sync, executor, batching, observer
        )

    def run_sync(self, feeds: Feeds) -> Outputs:
        return list(self.session.run(self._output_names, feeds))

    async def run(self, feeds: Feeds) -> Outputs:
        return await self.batcher.run(feeds)

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run zeros through the graph at load: the first request does not pay for lazy
        initialisation (memory arenas, kernel selection), and the batcher starts with a
        measured rate for each size, so admission by expected wait works from the first burst."""
        for rows in batch_sizes:
            feeds: Feeds = {}
            for spec in self.spec.inputs:
                shape = [rows if d is None else d for d in spec.shape]
                feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
            self.run_sync(feeds)  # the first run of a size initialises; the second is timed
            started = time.perf_counter()
            self.run_sync(feeds)
            self.batcher.observe_rate(rows, time.perf_counter() - started)
