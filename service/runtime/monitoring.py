"""Outlier and drift monitoring: what the anomaly scores say over time, against the calibration.

The reference is the model's calibration (`service.manifest.Calibration`): its quantiles cut the
score axis into bins whose expected share of normal data is known exactly from the quantile keys
(between "0.95" and "0.99": 4%), and its threshold flags outliers, about (100 - percentile)% of
normal data. No other reference exists at serving time, so methods without a calibration are not
monitored.

For each (model, score method) a window holds the last `size` scores in a ring. Adding a batch of
n scores costs O(n) and updates the per-bin counts and the outlier count in place (a plain Python
loop for a few scores, where numpy's per-call overhead would dominate; numpy for more), so the
outlier rate and the drift statistic are computed only when asked (a scrape or the monitoring
route), from about ten counts.

Drift is the population stability index of the window's bin shares o_i against the calibration's
e_i: PSI = sum_i (o_i - e_i) * ln(o_i / e_i), a symmetrised Kullback-Leibler divergence. The
usual reading: below 0.1 no shift, 0.1-0.2 a moderate one, above 0.2 (`PSI_THRESHOLD`) a shift
worth acting on. A window of n in-distribution scores still reads about (bins - 1) / n from
sampling noise alone (plus the calibration's own noise, about (bins - 1) / calibration.n), which
is why drift is reported only once the window holds `min_scores`. A bin the window has no score in
counts as half a score, so the index stays finite.

What counts: every score of an /anomaly-score call of a calibrated method, whatever threshold the
request gave: the outlier count and rate always use the calibrated threshold, so they stay
comparable with the expected rate (a request's own threshold changes its response's flags only).
Sampled methods (elbo, iwae) count only at the k their calibration used, `DEFAULT_K`: the IWAE
bound tightens as k grows, so scores at another k sit on another scale.

Reload: a window belongs to one model version. A reload that changes the model's version, its files
(checksums) or the method's calibration starts the window afresh (`started` says when), since
scores of another model are not comparable with the new calibration; a reload that changes none of
them (a rescan of an unchanged repository) keeps it.

Everything here runs on the event loop thread, like the data plane that calls it.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from service.capabilities import ScoreMethod
from service.runtime.model import GenerativeModel
from service.runtime.scoring import DEFAULT_K, F32

PSI_THRESHOLD = 0.2
"""PSI above this is reported as drift (`drifted`); the alert rules use the same figure."""
_SCALAR_MAX = 8  # batches up to this size take the plain Python path (measured: faster below ~10)
_EMPTY_SHARE = 0.5  # a bin with no score counts as this many scores


def bin_label(lo: float, hi: float) -> str:
    """A bin's name by the calibration probabilities it spans, e.g. '0.95-0.99' (positional
    notation: '1e-05' would not split at its '-')."""
    return f"{_positional(lo)}-{_positional(hi)}"


def _positional(p: float) -> str:
    return str(np.format_float_positional(p, trim="-"))


def bin_mass(label: str) -> float:
    """The share of normal data expected in a bin named by `bin_label`."""
    lo, _, hi = label.partition("-")
    return round(float(hi) - float(lo), 12)  # 0.15, not 0.15000000000000002


def psi(counts: Sequence[float], expected: Sequence[float]) -> float:
    """Population stability index of bin counts against expected shares (which sum to 1)."""
    n = float(sum(counts))
    if n <= 0:
        return math.nan
    total = 0.0
    for c, e in zip(counts, expected, strict=True):
        if e <= 0:
            continue
        o = max(c, _EMPTY_SHARE) / n
        total += (o - e) * math.log(o / e)
    return total


@dataclass(frozen=True)
class Reference:
    """One method's calibration as the monitor uses it: bin edges in score units, each bin's
    expected share, the threshold and the expected outlier rate."""

    method: ScoreMethod
    bounds: tuple[float, ...]
    """Upper score edge of every bin but the last (which is open): the histogram's buckets."""
    labels: tuple[str, ...]
    expected: tuple[float, ...]
    threshold: float
    expected_rate: float
    fingerprint: tuple[object, ...]

    @property
    def bins(self) -> int:
        return len(self.expected)

    @classmethod
    def of(cls, model: GenerativeModel, method: ScoreMethod) -> Reference | None:
        """The reference for `method`, or None when the model has no usable calibration."""
        cal = model.manifest.calibration.get(method.value)
        if cal is None:
            return None
        points: dict[float, float] = {}  # score edge -> calibration probability at it
        for key, value in cal.quantiles.items():
            try:
                p = float(key)
            except ValueError:
                continue
            if 0 < p < 1 and math.isfinite(value):
                points[value] = max(points.get(value, 0.0), p)  # tied quantiles: one edge
        bounds_list, probs = [], [0.0]
        for edge, p in sorted(points.items()):
            if p > probs[-1]:  # an edge out of order (a broken calibration) is left out
                bounds_list.append(edge)
                probs.append(p)
        if not bounds_list:
            return None
        probs.append(1.0)
        bounds = tuple(bounds_list)
        labels = tuple(bin_label(lo, hi) for lo, hi in zip(probs, probs[1:], strict=False))
        expected = tuple(bin_mass(label) for label in labels)
        m = model.manifest
        files = tuple(
            sorted((role.value, p.sha256, p.fp16_sha256 or "") for role, p in m.parts.items())
        )
        return cls(
            method=method,
            bounds=bounds,
            labels=labels,
            expected=expected,
            threshold=cal.threshold,
            expected_rate=(100.0 - cal.percentile) / 100.0,
            fingerprint=(m.version, model.precision, files, cal.model_dump_json()),
        )


class Added(NamedTuple):
    """What one batch changed, for an observer: the histogram's and counter's increments and the
    window bins whose count moved (a tuple: built on every call, it must be cheap)."""

    binned: list[tuple[int, int]]
    """(bin, scores of this batch in it), bins with none left out."""
    score_sum: float
    outliers: int
    """Scores of this batch above the calibrated threshold."""
    changed: list[tuple[int, int]]
    """(bin, its count in the window now) for every bin whose count changed."""


class ScoreWindow:
    """The last `size` scores of one model's score method, binned at its calibration.

    The ring holds the scores only: a score overwritten is binned and compared with the
    threshold again to take it out of the counts, which costs less than keeping its bin and
    flag (a request of one score would touch two more arrays; one of 64 would loop over them).
    The counts are a Python list: a numpy scalar access costs several times a list's."""

    def __init__(self, model: str, reference: Reference, size: int) -> None:
        self.model = model
        self.reference = reference
        self.size = size
        self.manifest: object = None
        """The manifest object this window was last found current for (set by the monitor)."""
        self.loaded_at = 0.0
        """When that model version was loaded: scores of an older one are not added."""
        self.started = time.time()
        self._bounds = list(reference.bounds)
        self._bounds_array = np.asarray(reference.bounds, dtype=np.float64)
        # Compared as float32, like the scores and like the data plane's own flags.
        self._threshold = float(np.float32(reference.threshold))
        at = [i for i, edge in enumerate(reference.bounds) if edge == self._threshold]
        self._threshold_bin = at[0] if at else None  # scores above it: bins after this one
        self._scores = np.zeros(size, dtype=np.float32)
        self._times = np.zeros(size, dtype=np.float64)
        self._counts = [0] * reference.bins
        self._filled = 0
        self._pos = 0  # the next slot to write; while filling, also the count of scores
        self.outliers = 0
        """Scores in the window above the calibrated threshold."""
        self.scored = 0
        """Scores added since the window started (not only those still in it)."""

    @property
    def method(self) -> ScoreMethod:
        return self.reference.method

    @property
    def filled(self) -> int:
        return self._filled

    @property
    def counts(self) -> list[int]:
        """Scores in the window per bin."""
        return list(self._counts)

    @property
    def since(self) -> float | None:
        """When the oldest score in the window arrived (None: empty)."""
        if not self._filled:
            return None
        return float(self._times[self._pos if self._filled == self.size else 0])

    @property
    def last(self) -> float | None:
        """When the newest score arrived (None: empty)."""
        if not self._filled:
            return None
        return float(self._times[self._pos - 1])

    def scores(self) -> F32:
        """The scores in the window, in no particular order."""
        return self._scores[: self._filled].copy()

    def add(self, scores: F32) -> Added:
        self.scored += len(scores)
        if len(scores) <= _SCALAR_MAX:
            return self._add_few(scores)
        return self._add_many(scores)

    def _add_few(self, scores: F32) -> Added:
        threshold, bounds, size, pos = self._threshold, self._bounds, self.size, self._pos
        now = time.time()
        binned: dict[int, int] = {}
        changed: set[int] = set()
        total, outliers, window_outliers = 0.0, 0, self.outliers
        counts, ring, times, filled = self._counts, self._scores, self._times, self._filled
        for s in scores.tolist():
            b = bisect.bisect_left(bounds, s)
            is_outlier = s > threshold
            binned[b] = binned.get(b, 0) + 1
            total += s
            outliers += is_outlier
            window_outliers += is_outlier
            if filled == size:  # the oldest score leaves
                old = ring.item(pos)
                window_outliers -= old > threshold
                old_bin = bisect.bisect_left(bounds, old)
                if old_bin != b:
                    counts[old_bin] -= 1
                    counts[b] += 1
                    changed.add(old_bin)
                    changed.add(b)
            else:
                filled += 1
                counts[b] += 1
                changed.add(b)
            ring[pos] = s
            times[pos] = now
            pos = pos + 1 if pos + 1 < size else 0
        self._pos, self._filled, self.outliers = pos, filled, window_outliers
        return Added(list(binned.items()), total, outliers, [(b, counts[b]) for b in changed])

    def _add_many(self, scores: F32) -> Added:
        size, n, pos = self.size, len(scores), self._pos
        added, outliers = self._bin_counts(scores)
        binned = [(i, c) for i, c in enumerate(added) if c]
        total = float(scores.sum(dtype=np.float64))
        now = time.time()
        if n >= size:  # only the last `size` stay: they are the whole window
            self._scores[:] = scores[-size:]
            self._times[:] = now
            new_counts, self.outliers = self._bin_counts(self._scores)
            self._pos, self._filled = 0, size
        else:
            # The slots written: one run from `pos`, and a second from 0 when the ring wraps.
            # The scores leaving are all of them once the window is full; while it fills, the
            # slots from `pos` on are empty and a wrapped run holds its oldest scores.
            first = min(n, size - pos)
            ring = self._scores
            if self._filled == size:
                leaving = (
                    ring[pos : pos + n]
                    if first == n
                    else np.concatenate((ring[pos:], ring[: n - first]))
                )
            else:
                leaving = ring[: n - first]
            removed, removed_outliers = self._bin_counts(leaving)
            ring[pos : pos + first] = scores[:first]
            self._times[pos : pos + first] = now
            if first < n:
                ring[: n - first] = scores[first:]
                self._times[: n - first] = now
            self._pos = (pos + n) % size
            self._filled = min(size, self._filled + n)
            self.outliers += outliers - removed_outliers
            new_counts = [c + a - r for c, a, r in zip(self._counts, added, removed, strict=True)]
        was = self._counts
        changed = [(i, c) for i, c in enumerate(new_counts) if c != was[i]]
        self._counts = new_counts
        return Added(binned, total, outliers, changed)

    def _bin_counts(self, values: F32) -> tuple[list[int], int]:
        """Scores per bin, and how many are above the threshold: read off the bins when the
        threshold is one of their edges (as at a calibrated percentile), else compared."""
        counts: list[int] = np.bincount(
            self._bounds_array.searchsorted(values), minlength=self.reference.bins
        ).tolist()
        if self._threshold_bin is not None:
            return counts, sum(counts[self._threshold_bin + 1 :])
        return counts, int(np.count_nonzero(values > self._threshold))


class ScoreObserver(Protocol):
    """Receives every change of a window (metrics live outside the runtime)."""

    def window_started(self, window: ScoreWindow) -> None:
        """A new, empty window: a model or its new version began to be monitored."""

    def scores_added(self, window: ScoreWindow, added: Added) -> None: ...

    def window_cleared(self, window: ScoreWindow) -> None:
        """The window was dropped: a reload replaced it or its model was unloaded."""


@dataclass(frozen=True)
class Drift:
    statistic: str
    value: float | None
    """None until the window holds `min_scores`."""
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class BinShare:
    bin: str
    upper_score: float | None
    expected: float
    observed: float | None


@dataclass(frozen=True)
class MethodMonitoring:
    """One method's window, as the monitoring route reports it."""

    method: ScoreMethod
    window_size: int
    scores: int
    outliers: int
    outlier_rate: float | None
    expected_rate: float
    threshold: float
    drift: Drift
    started: float
    since: float | None
    last: float | None
    scored: int
    quantiles: dict[str, float] = field(default_factory=dict)
    bins: list[BinShare] = field(default_factory=list)


class ScoreMonitor:
    """The windows of every (model, score method), fed by the data plane."""

    def __init__(self, window: int, min_scores: int, observer: ScoreObserver | None = None) -> None:
        if not 1 <= min_scores <= window:
            raise ValueError("min_scores must be from 1 to the window size")
        self.window = window
        self.min_scores = min_scores
        self._observer = observer
        self._windows: dict[tuple[str, ScoreMethod], ScoreWindow] = {}

    def windows(self) -> list[ScoreWindow]:
        return list(self._windows.values())

    def record(self, model: GenerativeModel, method: ScoreMethod, scores: F32, k: int) -> None:
        """Add one call's scores (see the module docstring for which count)."""
        if k != DEFAULT_K and method.sampled:
            return
        window = self._windows.get((model.name, method))
        if window is None or window.manifest is not model.manifest:
            if window is not None and model.loaded_at < window.loaded_at:
                return  # a request that began before a reload: its version no longer serves
            window = self._follow(model, method)
            if window is None:
                return
        added = window.add(scores)
        if self._observer is not None:
            self._observer.scores_added(window, added)

    def sync(self, models: Mapping[str, GenerativeModel]) -> None:
        """Give every calibrated method of `models` a window, and follow reloads and unloads
        without waiting for the next score. Called at startup, after reloads (in every worker
        process) and on scrapes, so the series exist before the first score and a reset shows
        at once."""
        for (name, method), window in list(self._windows.items()):
            if name not in models:
                self._drop((name, method), window)
        for model in models.values():
            for method in model.capabilities.score_methods:
                current = self._windows.get((model.name, method))
                if current is None or current.manifest is not model.manifest:
                    self._follow(model, method)

    def report(self, model: GenerativeModel) -> list[MethodMonitoring]:
        """Every calibrated method of `model`: its window now, drift computed here."""
        out = []
        for method in model.capabilities.score_methods:
            window = self._windows.get((model.name, method))
            if window is None or window.manifest is not model.manifest:
                window = self._follow(model, method)
            if window is not None:
                out.append(self._describe(window))
        return out

    def drift(self, window: ScoreWindow) -> float | None:
        """PSI of the window against its calibration (None below `min_scores`)."""
        if window.filled < self.min_scores:
            return None
        return psi(window.counts, window.reference.expected)

    # -- internals -----------------------------------------------------------------------------
    def _follow(self, model: GenerativeModel, method: ScoreMethod) -> ScoreWindow | None:
        """The window for the model now serving: kept when its reference is unchanged, else a
        fresh one (None: the method is not calibrated)."""
        key = (model.name, method)
        old = self._windows.get(key)
        reference = Reference.of(model, method)
        if reference is None:
            if old is not None:
                self._drop(key, old)
            return None
        if old is not None and old.reference.fingerprint == reference.fingerprint:
            old.manifest, old.loaded_at = model.manifest, model.loaded_at
            return old
        if old is not None:
            self._drop(key, old)
        window = ScoreWindow(model.name, reference, self.window)
        window.manifest, window.loaded_at = model.manifest, model.loaded_at
        self._windows[key] = window
        if self._observer is not None:
            self._observer.window_started(window)
        return window

    def _drop(self, key: tuple[str, ScoreMethod], window: ScoreWindow) -> None:
        del self._windows[key]
        if self._observer is not None:
            self._observer.window_cleared(window)

    def _describe(self, w: ScoreWindow) -> MethodMonitoring:
        ref = w.reference
        filled = w.filled
        value = self.drift(w)
        counts = w.counts
        scores = w.scores()
        quantiles: dict[str, float] = {}
        if filled:
            for label in ref.labels[:-1]:
                p = label.partition("-")[2]
                quantiles[p] = float(np.quantile(scores, float(p)))
        bins = [
            BinShare(
                bin=label,
                upper_score=ref.bounds[i] if i < len(ref.bounds) else None,
                expected=ref.expected[i],
                observed=counts[i] / filled if filled else None,
            )
            for i, label in enumerate(ref.labels)
        ]
        return MethodMonitoring(
            method=ref.method,
            window_size=w.size,
            scores=filled,
            outliers=w.outliers,
            outlier_rate=w.outliers / filled if filled else None,
            expected_rate=ref.expected_rate,
            threshold=ref.threshold,
            drift=Drift("psi", value, PSI_THRESHOLD, value is not None and value > PSI_THRESHOLD),
            started=w.started,
            since=w.since,
            last=w.last,
            scored=w.scored,
            quantiles=quantiles,
            bins=bins,
        )
