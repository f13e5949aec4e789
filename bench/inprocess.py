"""The ceiling: the same ONNX graphs called in-process with the service's session options, no HTTP.

At concurrency c a perfect batching server merges the rows of c requests into one session run (at
most `max_batch` rows), so the ceiling's step at c runs batches of min(c * n, max_batch) rows and
counts each run as rows / n requests. At c = 1 it is one plain call at the request's own batch.
`/sample` draws the latents and decodes; `/decode` (in any encoding) decodes the workload's
latents; `/anomaly-score` (reconstruction) encodes, decodes and takes the mean squared error, as
the service does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.loadgen import StepResult, percentiles
from bench.workloads import Prepared, example_inputs, example_latents
from service.hosts import asks_for_gpu
from service.manifest import PartRole
from service.runtime.sessions import ProviderState, SessionConfig, create_session

CallFn = Callable[[], object]


def ceiling_config(providers: tuple[str, ...] = ("cpu",), fp16: bool = False) -> SessionConfig:
    """ONNX Runtime's own defaults (spinning threads included): the best a caller gets without an
    HTTP server to share the cores with; on `providers`, a GPU one required to load."""
    return SessionConfig(
        providers=providers,
        require_gpu=asks_for_gpu(providers),
        intra_op_spinning=True,
        prefer_fp16=fp16,
    )


class Ceiling:
    """Sessions for each model, created once and reused across workloads."""

    def __init__(self, repository: Path, config: SessionConfig | None = None) -> None:
        self.repository = repository
        self.config = config or ceiling_config()
        self._sessions: dict[tuple[str, PartRole], object] = {}
        self._provider_state = ProviderState()  # one GPU fallback for all sessions, as in the app

    def _session(self, p: Prepared, role: PartRole) -> object:
        key = (p.model, role)
        if key not in self._sessions:
            part = p.manifest.parts[role]
            path = part.path
            if self.config.prefer_fp16:
                if part.fp16_path is None:
                    raise SystemExit(f"--fp16: {p.model}'s {role.value} has no fp16 copy")
                path = part.fp16_path
            self._sessions[key] = create_session(
                self.repository / p.model / path, self.config, self._provider_state
            )
        return self._sessions[key]

    def call(self, p: Prepared, rows: int) -> CallFn:
        """A zero-argument function doing the work of `rows` rows of this workload."""
        m = p.manifest
        if p.workload.route in ("sample", "decode"):
            role = PartRole.DECODER if PartRole.DECODER in m.parts else PartRole.GENERATOR
            dec = self._session(p, role)
            z_name = m.parts[role].inputs[0].name
            rng = np.random.default_rng(0)

            def sample() -> object:
                z = rng.standard_normal((rows, m.latent_dim), dtype=np.float32)
                return dec.run(None, {z_name: z})[0]  # type: ignore[attr-defined]

            if p.workload.route == "decode":
                z_fixed = example_latents(m, rows)
                return lambda: dec.run(None, {z_name: z_fixed})[0]  # type: ignore[attr-defined]
            return sample
        enc = self._session(p, PartRole.ENCODER)
        dec = self._session(p, PartRole.DECODER)
        x = example_inputs(m, rows)
        x_name = m.parts[PartRole.ENCODER].inputs[0].name
        z_name = m.parts[PartRole.DECODER].inputs[0].name

        def score() -> object:
            mean, _ = enc.run(None, {x_name: x})  # type: ignore[attr-defined]
            x_hat = dec.run(None, {z_name: mean})[0]  # type: ignore[attr-defined]
            return np.square(x - x_hat).reshape(rows, -1).mean(1)

        return score

    def run_step(
        self, p: Prepared, concurrency: int, warmup_s: float, duration_s: float, max_batch: int
    ) -> StepResult:
        n = p.workload.n
        rows = min(concurrency * n, max(max_batch, n))
        per_call = rows / n
        fn = self.call(p, rows)
        t_end = time.perf_counter() + warmup_s
        while time.perf_counter() < t_end:
            fn()
        latencies: list[float] = []
        start = time.perf_counter()
        stop = start + duration_s
        while (t0 := time.perf_counter()) < stop:
            fn()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        p50, p95, p99 = percentiles(latencies)
        requests = int(round(len(latencies) * per_call))
        return StepResult(
            "inprocess", p.name, concurrency, n, requests, 0, elapsed, p50, p95, p99, batch=rows
        )
