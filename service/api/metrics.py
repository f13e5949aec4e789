"""Prometheus metrics, one registry per app (so several apps in one process stay apart).

Under `serve --workers N` the processes write their values to files in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode) and /metrics, in whichever process answers, sums the
counters and histograms of all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from service.runtime.repository import ModelRepository


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """Implements the runtime's `BatchObserver` and the HTTP request counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "latentserve_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "latentserve_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "latentserve_batch_size",
            "Rows per session run (after merging)",
            ["part"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "latentserve_batch_requests",
            "Requests merged into one session run",
            ["part"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "latentserve_queue_seconds",
            "Time a call waited before its batch ran",
            ["part"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "latentserve_inference_seconds",
            "Session run time per batch",
            ["part"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Gauges: the largest value among live processes (they load the same repository).
        self.models_loaded = Gauge(
            "latentserve_models_loaded", "Models serving", registry=r, multiprocess_mode="livemax"
        )
        self.models_failed = Gauge(
            "latentserve_models_failed",
            "Models that failed to load",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_rows = Gauge(
            "latentserve_queue_rows",
            "Rows waiting for a batch, per model part (at the last scrape)",
            ["part"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_expected_wait = Gauge(
            "latentserve_queue_expected_wait_seconds",
            "Queued rows / measured rows per second: what admission compares with its deadline",
            ["part"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.part_rows_per_second = Gauge(
            "latentserve_part_rows_per_second",
            "Measured throughput of a model part with full batches in every slot",
            ["part"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.processes = Gauge(
            "latentserve_process_up",
            "1 per serving process (one series per pid under --workers)",
            registry=r,
            multiprocess_mode="liveall",
        )

    def observe_repository(self, repo: ModelRepository) -> None:
        """Set the model gauges; called at startup, after reloads and on every scrape."""
        self.models_loaded.set(len(repo.models))
        self.models_failed.set(len(repo.failures))
        self.processes.set(1)
        for model in repo.models.values():
            for part in model.parts.values():
                b = part.batcher
                self.queue_rows.labels(b.name).set(b.queued_rows)
                self.queue_expected_wait.labels(b.name).set(b.expected_wait_s())
                if b.rows_per_second is not None:
                    self.part_rows_per_second.labels(b.name).set(b.rows_per_second)

    def exposition(self) -> bytes:
        """The text /metrics returns: this app's registry, or every worker's values summed."""
        if _multiprocess():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def process_exiting(self) -> None:
        """Drop this process's live gauges from the shared files."""
        if _multiprocess():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def batch_done(
        self, part: str, requests: int, rows: int, queue_s: Sequence[float], run_s: float
    ) -> None:
        self.batch_rows.labels(part).observe(rows)
        self.batch_requests.labels(part).observe(requests)
        queue_hist = self.queue_seconds.labels(part)
        for q in queue_s:
            queue_hist.observe(q)
        self.inference_seconds.labels(part).observe(run_s)
