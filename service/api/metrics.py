"""Prometheus metrics, one registry per app (so several apps in one process stay apart).

Under `serve --workers N` the processes write their values to files in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode) and /metrics, in whichever process answers, sums the
counters and histograms of all of them.

Score monitoring (`service.runtime.monitoring`; README: Monitoring) adds, per model and score
method: the `latentserve_anomaly_score` histogram with buckets at the calibration quantiles, the
`latentserve_outliers_total` counter, and each window's count per calibration bin and of outliers,
as gauges summed over the live processes. The outlier rate, the window size and the drift index
are not stored: /metrics derives them from those sums when it answers, so under `--workers N` they
describe the pooled windows of all workers (N x the window size at most), computed exactly as one
process computes its own.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from service.runtime.monitoring import Added, ScoreMonitor, ScoreWindow, bin_mass, psi

if TYPE_CHECKING:
    from service.runtime.repository import ModelRepository


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


SCORE_HISTOGRAM = "latentserve_anomaly_score"
WINDOW_BINS = "latentserve_monitor_window_bin_scores"
WINDOW_OUTLIERS = "latentserve_monitor_window_outliers"
_MONITOR_LABELS = ["model", "method"]
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _ScoreHistograms:
    """`latentserve_anomaly_score`, one histogram per (model, method) whose buckets are that
    method's calibration quantiles.

    prometheus_client gives every series of one metric the same buckets, so each set of
    buckets gets its own (unregistered) `Histogram` and this collector shows them as one
    metric. A reload that recalibrates a method changes its buckets; the counts made with the
    old ones are kept and merged by upper bound, which is what the multiprocess files do too:
    the result is still a valid cumulative histogram, exact at every bound of either set."""

    def __init__(self) -> None:
        self._by_buckets: dict[tuple[float, ...], Histogram] = {}

    def child(self, model: str, method: str, bounds: tuple[float, ...]) -> Histogram:
        hist = self._by_buckets.get(bounds)
        if hist is None:
            hist = Histogram(
                SCORE_HISTOGRAM,
                "Anomaly scores of calibrated methods; buckets at the calibration quantiles",
                _MONITOR_LABELS,
                buckets=bounds,
                registry=None,
            )
            self._by_buckets[bounds] = hist
        return hist.labels(model, method)

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily(SCORE_HISTOGRAM, "", labels=_MONITOR_LABELS)

    def collect(self) -> Iterable[Metric]:
        per_bucket: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
        sums: dict[tuple[str, str], float] = defaultdict(float)
        for hist in self._by_buckets.values():
            for metric in hist.collect():
                below: dict[tuple[str, str], float] = {}
                for sample in metric.samples:
                    key = (sample.labels["model"], sample.labels["method"])
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        counts = per_bucket[key]
                        counts[le] = counts.get(le, 0.0) + sample.value - below.get(key, 0.0)
                        below[key] = sample.value
                    elif sample.name.endswith("_sum"):
                        sums[key] += sample.value
        family = HistogramMetricFamily(
            SCORE_HISTOGRAM,
            "Anomaly scores of calibrated methods; buckets at the calibration quantiles",
            labels=_MONITOR_LABELS,
        )
        for key, counts in sorted(per_bucket.items()):
            cumulative, buckets = 0.0, []
            for le in sorted(counts):
                cumulative += counts[le]
                buckets.append((floatToGoString(le), cumulative))  # type: ignore[no-untyped-call]
            family.add_metric(list(key), buckets, sums[key])
            if min(counts) < 0:
                # prometheus_client leaves out _count and _sum of a histogram with negative
                # buckets (elbo-complexity scores are mostly negative); the count is still a
                # plain counter, and the alert rules and dashboards divide by it.
                family.add_sample(
                    SCORE_HISTOGRAM + "_count",
                    dict(zip(_MONITOR_LABELS, key, strict=True)),
                    cumulative,
                )
        yield family


def observe_binned(child: Histogram, binned: Iterable[tuple[int, int]], total: float) -> None:
    """Add a batch already counted per bucket to a histogram child: one increment per bucket
    instead of one `observe` per score (64 observes took longer than the rest of the monitoring
    of a 64-row request). prometheus_client has no public call for it; tests compare the result
    with `observe`, so a change of its internals fails there, not here."""
    buckets = child._buckets
    child._sum.inc(total)
    for bucket, count in binned:
        buckets[bucket].inc(count)


@dataclass
class _Series:
    """The metric children of one window, looked up once per window, not per request."""

    window: ScoreWindow
    histogram: Histogram
    outliers: Counter
    bins: list[Gauge]
    window_outliers: Gauge
    last_outliers: int = 0


class Metrics:
    """Implements the runtime's `BatchObserver` and `ScoreObserver`, and the HTTP request
    counters."""

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
        # Score monitoring (module docstring).
        self.scores = _ScoreHistograms()
        r.register(self.scores)
        self.outliers = Counter(
            "latentserve_outliers",
            "Scored examples above the calibrated threshold (whatever threshold the request gave)",
            _MONITOR_LABELS,
            registry=r,
        )
        self.outlier_rate_expected = Gauge(
            "latentserve_outlier_rate_expected",
            "Share of normal data above the calibrated threshold: 1 - percentile / 100",
            _MONITOR_LABELS,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.window_bins = Gauge(
            WINDOW_BINS,
            "Scores in the recent window per calibration bin (bin: the calibration probabilities "
            "it spans); summed over worker processes",
            [*_MONITOR_LABELS, "bin"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.window_outliers = Gauge(
            WINDOW_OUTLIERS,
            "Scores in the recent window above the calibrated threshold; summed over workers",
            _MONITOR_LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self._monitor: ScoreMonitor | None = None
        self._series: dict[int, _Series] = {}  # by id() of the window
        # Label children of the per-request and per-batch series, looked up once: `labels()`
        # costs more than the observation itself (keys are routes, statuses and parts: few).
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._batch_series: dict[str, tuple[Histogram, Histogram, Histogram, Histogram]] = {}

    def watch(self, monitor: ScoreMonitor) -> None:
        """Export `monitor`'s windows (it reports to this object as its observer)."""
        self._monitor = monitor

    def observe_repository(self, repo: ModelRepository) -> None:
        """Set the model gauges; called at startup, after reloads and on every scrape."""
        if self._monitor is not None:
            self._monitor.sync(repo.models)
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
        """The text /metrics returns: this app's registry, or every worker's values summed,
        with the monitoring figures derived from them."""
        if _multiprocess():
            source = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]
            families = list(source.collect())  # type: ignore[no-untyped-call]
        else:
            families = list(self.registry.collect())
        min_scores = self._monitor.min_scores if self._monitor is not None else 1
        return generate_latest(_Families(with_monitoring(families, min_scores)))

    def process_exiting(self) -> None:
        """Drop this process's live gauges from the shared files."""
        if _multiprocess():
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def request_done(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One answered HTTP request (the request middleware calls this for every one)."""
        key = (endpoint, method, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(endpoint, method, str(status)),
                self.request_seconds.labels(endpoint),
            )
        series[0].inc()
        series[1].observe(seconds)

    def batch_done(
        self, part: str, requests: int, rows: int, queue_s: Sequence[float], run_s: float
    ) -> None:
        series = self._batch_series.get(part)
        if series is None:
            series = self._batch_series[part] = (
                self.batch_rows.labels(part),
                self.batch_requests.labels(part),
                self.queue_seconds.labels(part),
                self.inference_seconds.labels(part),
            )
        batch_rows, batch_requests, queue_hist, inference = series
        batch_rows.observe(rows)
        batch_requests.observe(requests)
        for q in queue_s:
            queue_hist.observe(q)
        inference.observe(run_s)

    # -- ScoreObserver -------------------------------------------------------------------------
    def window_started(self, window: ScoreWindow) -> None:
        series = self._series_of(window)
        for gauge in series.bins:
            gauge.set(0)
        series.window_outliers.set(0)
        self.outlier_rate_expected.labels(window.model, window.method.value).set(
            window.reference.expected_rate
        )

    def scores_added(self, window: ScoreWindow, added: Added) -> None:
        series = self._series.get(id(window))  # the series holds the window: ids stay unique
        if series is None:
            series = self._series_of(window)
        observe_binned(series.histogram, added.binned, added.score_sum)
        if added.outliers:
            series.outliers.inc(added.outliers)
        for b, count in added.changed:
            series.bins[b].set(count)
        if series.last_outliers != window.outliers:
            series.window_outliers.set(window.outliers)
            series.last_outliers = window.outliers

    def window_cleared(self, window: ScoreWindow) -> None:
        """Take the window's gauges out of /metrics. In multiprocess mode a value cannot be
        removed from the shared files, so it is set to NaN, which the exposition leaves out."""
        model, method = window.model, window.method.value
        self._series.pop(id(window), None)
        labels = [(model, method, label) for label in window.reference.labels]
        if _multiprocess():
            for label_values in labels:
                self.window_bins.labels(*label_values).set(math.nan)
            self.window_outliers.labels(model, method).set(math.nan)
            self.outlier_rate_expected.labels(model, method).set(math.nan)
            return
        for label_values in labels:
            _remove(self.window_bins, *label_values)
        _remove(self.window_outliers, model, method)
        _remove(self.outlier_rate_expected, model, method)

    def _series_of(self, window: ScoreWindow) -> _Series:
        model, method = window.model, window.method.value
        series = _Series(
            window,
            self.scores.child(model, method, window.reference.bounds),
            self.outliers.labels(model, method),
            [self.window_bins.labels(model, method, label) for label in window.reference.labels],
            self.window_outliers.labels(model, method),
        )
        self._series[id(window)] = series
        return series


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class _Families:
    """Metric families already collected, as something `generate_latest` can render."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def with_monitoring(families: list[Metric], min_scores: int) -> list[Metric]:
    """`families` with the derived monitoring figures added, per (model, method), from the
    window gauges (summed over workers in multiprocess mode): the window's size, the outlier
    rate (when it holds a score) and the drift index (when it holds `min_scores`). Series set
    to NaN (windows dropped in multiprocess mode) are left out."""
    bins: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    outliers: dict[tuple[str, str], float] = {}
    out: list[Metric] = []
    for family in families:
        if family.name in (WINDOW_BINS, WINDOW_OUTLIERS, "latentserve_outlier_rate_expected"):
            family.samples = [s for s in family.samples if not math.isnan(s.value)]
        for sample in family.samples if family.name in (WINDOW_BINS, WINDOW_OUTLIERS) else ():
            key = (sample.labels["model"], sample.labels["method"])
            if family.name == WINDOW_BINS:
                bins[key].append((bin_mass(sample.labels["bin"]), sample.value))
            else:
                outliers[key] = sample.value
        out.append(family)
    size = GaugeMetricFamily(
        "latentserve_monitor_window_scores",
        "Scores in the recent window (summed over worker processes)",
        labels=_MONITOR_LABELS,
    )
    rate = GaugeMetricFamily(
        "latentserve_outlier_rate",
        "Share of the recent window's scores above the calibrated threshold",
        labels=_MONITOR_LABELS,
    )
    drift = GaugeMetricFamily(
        "latentserve_drift_psi",
        "Population stability index of the recent window against the calibration "
        "(reported once the window holds LATENTSERVE_MONITOR_MIN_SCORES scores; > 0.2: drift)",
        labels=_MONITOR_LABELS,
    )
    for key, shares in sorted(bins.items()):
        n = sum(count for _, count in shares)
        size.add_metric(list(key), n)
        if n > 0 and key in outliers:
            rate.add_metric(list(key), outliers[key] / n)
        if n >= min_scores:
            expected = [mass for mass, _ in shares]
            drift.add_metric(list(key), psi([count for _, count in shares], expected))
    return [*out, size, rate, drift]
