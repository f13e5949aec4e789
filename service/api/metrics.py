"""Prometheus metrics, one registry per app (so several apps in one process stay apart)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.models_loaded = Gauge("latentserve_models_loaded", "Models serving", registry=r)
        self.models_failed = Gauge(
            "latentserve_models_failed", "Models that failed to load", registry=r
        )

    def batch_done(
        self, part: str, requests: int, rows: int, queue_s: Sequence[float], run_s: float
    ) -> None:
        self.batch_rows.labels(part).observe(rows)
        self.batch_requests.labels(part).observe(requests)
        queue_hist = self.queue_seconds.labels(part)
        for q in queue_s:
            queue_hist.observe(q)
        self.inference_seconds.labels(part).observe(run_s)
