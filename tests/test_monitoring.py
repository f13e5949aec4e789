"""Outlier and drift monitoring through the real app: held-out digits keep the outlier rate near
the calibrated 1% and the drift index low; noise and another dataset raise both; the route and
/metrics agree; reloads keep or reset the window as documented; two worker processes pool their
windows in /metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service.api.metrics import Metrics, observe_binned
from service.capabilities import ScoreMethod
from service.manifest import Manifest
from service.runtime.monitoring import PSI_THRESHOLD, Reference, ScoreWindow, psi
from service.settings import Settings
from tests.conftest import MODELS, AppClient, LiveServer

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
METHODS = ("reconstruction", "elbo", "iwae", "elbo-complexity", "combined")


def parse(text: str) -> Series:
    """Every sample of a /metrics answer by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


async def metrics(client: AppClient) -> Series:
    return parse((await client.get("/metrics")).text)


async def monitoring(client: AppClient, model: str = "digits-vae") -> dict[str, dict[str, Any]]:
    r = await client.get(f"/models/{model}/monitoring")
    assert r.status_code == 200, r.text
    return {m["method"]: m for m in r.json()["methods"]}


async def score(client: AppClient, x: np.ndarray, chunk: int = 64, **body: Any) -> list[float]:
    """Scores of `x` posted `chunk` examples at a time (small chunks take the window's scalar
    path, larger ones its numpy path)."""
    scores: list[float] = []
    for i in range(0, len(x), chunk):
        r = await client.post("/anomaly-score", json={"inputs": x[i : i + chunk].tolist(), **body})
        assert r.status_code == 200, r.text
        scores += r.json()["scores"]
    return scores


def photo_tiles() -> np.ndarray:
    """Another dataset in digits' format: 8x8 grey tiles of sklearn's two sample photos."""
    from sklearn.datasets import load_sample_images

    tiles = []
    for image in load_sample_images().images:
        grey = image.mean(axis=2) / 255.0
        h, w = grey.shape[0] // 32 * 32, grey.shape[1] // 32 * 32
        pooled = grey[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
        rows, cols = pooled.shape[0] // 8, pooled.shape[1] // 8
        tiles.append(pooled.reshape(rows, 8, cols, 8).transpose(0, 2, 1, 3).reshape(-1, 64))
    return np.concatenate(tiles).astype(np.float32)


def uniform_noise(n: int = 400) -> np.ndarray:
    return np.random.default_rng(0).random((n, 64), dtype=np.float32)


def digits_vae() -> Any:
    from training.calibrate import load_exported

    return load_exported(MODELS / "digits-vae")


# -- the statistic and the window ----------------------------------------------------------------
def test_psi_is_zero_on_the_calibration_shares_and_large_when_all_scores_are_extreme() -> None:
    expected = [0.01, 0.04, 0.2, 0.25, 0.25, 0.15, 0.05, 0.04, 0.009, 0.001]
    assert psi([1000 * e for e in expected], expected) == pytest.approx(0.0, abs=1e-12)
    # all 400 in the last bin; the empty bins count as half a score each
    tail = [0.0] * 9 + [400.0]
    by_hand = sum((0.5 / 400 - e) * math.log(0.5 / 400 / e) for e in expected[:9])
    by_hand += (1 - 0.001) * math.log(1 / 0.001)
    assert psi(tail, expected) == pytest.approx(by_hand)
    assert psi(tail, expected) > 10


def test_the_reference_bins_at_the_calibration_quantiles() -> None:
    model = digits_vae()
    ref = Reference.of(model, ScoreMethod.ELBO)
    assert ref is not None
    cal = model.manifest.calibration["elbo"]
    assert ref.bounds == tuple(cal.quantiles.values())
    assert ref.labels[0] == "0-0.01" and ref.labels[-2:] == ("0.99-0.999", "0.999-1")
    assert ref.expected == (0.01, 0.04, 0.2, 0.25, 0.25, 0.15, 0.05, 0.04, 0.009, 0.001)
    assert ref.threshold == cal.threshold and ref.expected_rate == 0.01


def test_tied_quantiles_become_one_bin() -> None:
    model = digits_vae()
    cal = model.manifest.calibration["reconstruction"]
    quantiles = dict(cal.quantiles, **{"0.25": cal.quantiles["0.5"]})  # q25 == q50
    tied = cal.model_copy(update={"quantiles": quantiles})
    model.manifest = model.manifest.model_copy(update={"calibration": {"reconstruction": tied}})
    ref = Reference.of(model, ScoreMethod.RECONSTRUCTION)
    assert ref is not None
    assert "0.05-0.5" in ref.labels and len(ref.bounds) == 8
    assert sum(ref.expected) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("size", "threshold"),
    [
        pytest.param(7, None, id="tiny-window"),
        pytest.param(50, None, id="threshold-at-p99-edge"),
        pytest.param(50, 0.05, id="threshold-between-edges"),
    ],
)
def test_the_window_always_holds_exactly_the_last_scores(
    size: int, threshold: float | None
) -> None:
    model = digits_vae()
    if threshold is not None:
        cal = model.manifest.calibration["reconstruction"]
        moved = cal.model_copy(update={"threshold": threshold})
        model.manifest = model.manifest.model_copy(
            update={"calibration": {"reconstruction": moved}}
        )
    ref = Reference.of(model, ScoreMethod.RECONSTRUCTION)
    assert ref is not None and (threshold is None) == (ref.threshold in ref.bounds)
    window = ScoreWindow("digits-vae", ref, size)
    rng = np.random.default_rng(1)
    seen: list[float] = []
    for n in [1, 3, 8, 9, 1, 64, 2, 200, 5, 1, 1, 30]:  # both paths, wrapping, and n > size
        scores = (rng.random(n) * 0.07).astype(np.float32)
        before = window.counts
        added = window.add(scores)
        seen += scores.tolist()
        last = np.array(seen[-size:], dtype=np.float32)
        bins = np.searchsorted(np.array(ref.bounds), last)
        assert window.counts == np.bincount(bins, minlength=ref.bins).tolist()
        assert window.outliers == int((last > np.float32(ref.threshold)).sum())
        assert sorted(window.scores().tolist()) == sorted(last.tolist())
        batch_bins = np.bincount(np.searchsorted(np.array(ref.bounds), scores), minlength=ref.bins)
        assert dict(added.binned) == {i: int(c) for i, c in enumerate(batch_bins) if c}
        assert added.outliers == int((scores > np.float32(ref.threshold)).sum())
        now = window.counts
        moved = {(i, b) for i, (a, b) in enumerate(zip(before, now, strict=True)) if a != b}
        assert moved <= set(added.changed)
        assert all(now[i] == count for i, count in added.changed)
    assert window.filled == size and window.scored == len(seen)


def test_bulk_histogram_increments_equal_one_observe_per_score() -> None:
    bounds = (0.1, 0.2, 0.5)
    scores = [0.05, 0.1, 0.15, 0.3, 0.3, 0.9, 2.0]
    one = Histogram("h", "h", ["model"], buckets=bounds, registry=None)
    for s in scores:
        one.labels("m").observe(s)
    bulk = Histogram("h", "h", ["model"], buckets=bounds, registry=None)
    bins = np.bincount(np.searchsorted(bounds, scores), minlength=4)
    observe_binned(bulk.labels("m"), [(i, int(c)) for i, c in enumerate(bins) if c], sum(scores))

    def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for s in list(h.collect())[0].samples
            if "created" not in s.name
        ]

    assert samples(bulk) == samples(one)


def test_the_window_must_hold_the_scores_drift_needs() -> None:
    with pytest.raises(ValidationError, match="monitor_min_scores"):
        Settings(monitor_window=100, monitor_min_scores=200)


# -- through the app -----------------------------------------------------------------------------
async def test_held_out_digits_keep_the_rate_near_one_percent_and_no_drift(
    client: AppClient, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    scores = {}
    for method in METHODS:
        scores[method] = await score(client, x[:24], chunk=3, method=method)  # the scalar path
        scores[method] += await score(client, x[24:], chunk=64, method=method)
    report = await monitoring(client)
    series = await metrics(client)
    assert set(report) == set(METHODS)
    for method in METHODS:
        m = report[method]
        assert m["scores"] == len(x) == m["scored"]
        assert m["expected_rate"] == 0.01
        assert m["outlier_rate"] <= 0.03, m  # 359 scores at 1%: 3.6 expected
        assert m["drift"]["value"] < 0.15 and not m["drift"]["drifted"], m
        assert sum(b["observed"] for b in m["bins"]) == pytest.approx(1.0)
        for q in ("0.5", "0.99"):
            assert m["quantiles"][q] == pytest.approx(np.quantile(scores[method], float(q)))
        labels = {"model": "digits-vae", "method": method}
        assert value(series, "latentserve_monitor_window_scores", **labels) == len(x)
        assert value(series, "latentserve_outlier_rate", **labels) == pytest.approx(
            m["outlier_rate"]
        )
        assert value(series, "latentserve_drift_psi", **labels) == pytest.approx(
            m["drift"]["value"]
        )
        assert value(series, "latentserve_outliers_total", **labels) == m["outliers"]
        assert value(series, "latentserve_anomaly_score_count", **labels) == len(x)
        assert value(series, "latentserve_outlier_rate_expected", **labels) == 0.01


async def test_the_histogram_buckets_are_the_calibration_quantiles(
    client: AppClient, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    scores = np.array(await score(client, x), dtype=np.float32)
    series = await metrics(client)
    cal = Manifest.load(MODELS / "digits-vae").calibration["reconstruction"]
    for q, bound in cal.quantiles.items():
        got = series[
            (
                "latentserve_anomaly_score_bucket",
                frozenset(
                    {"model": "digits-vae", "method": "reconstruction", "le": repr(bound)}.items()
                ),
            )
        ]
        assert got == int((scores <= np.float32(bound)).sum()), q
    labels = {"model": "digits-vae", "method": "reconstruction"}
    assert value(series, "latentserve_anomaly_score_sum", **labels) == pytest.approx(
        float(scores.sum()), rel=1e-5
    )


@pytest.mark.parametrize(
    "inputs",
    [pytest.param(uniform_noise, id="uniform-noise"), pytest.param(photo_tiles, id="photo-tiles")],
)
async def test_inputs_unlike_the_training_data_raise_the_rate_and_the_drift(
    client: AppClient, inputs: Any
) -> None:
    x = inputs()[:400]
    for method in METHODS:
        await score(client, x, method=method)
    report = await monitoring(client)
    series = await metrics(client)
    for method in METHODS:
        m = report[method]
        assert m["outlier_rate"] > 0.95 and m["drift"]["value"] > 5 and m["drift"]["drifted"]
        assert m["bins"][-1]["observed"] > 0.95  # nearly all above the calibration's 99.9%
        labels = {"model": "digits-vae", "method": method}
        assert value(series, "latentserve_drift_psi", **labels) == pytest.approx(
            m["drift"]["value"]
        )
        assert value(series, "latentserve_outliers_total", **labels) == m["outliers"] > 380


async def test_a_fifth_of_noise_among_digits_shows_in_rate_and_drift(
    client: AppClient, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    mixed = np.concatenate([x, uniform_noise(90)])[np.random.default_rng(2).permutation(449)]
    await score(client, mixed)
    m = (await monitoring(client))["reconstruction"]
    assert 0.18 < m["outlier_rate"] < 0.25  # 90/449 = 0.20 from the noise, plus digits' 1%
    # about 1.2, nearly all from the top bin: 20% where 0.1% belongs
    assert 0.8 < m["drift"]["value"] < 2 and m["drift"]["value"] > PSI_THRESHOLD
    assert m["drift"]["drifted"] and m["bins"][-1]["observed"] > 0.18


async def test_inputs_easier_than_the_calibration_data_drift_without_outliers(
    client: AppClient, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """The model's own reconstructions reconstruct almost perfectly: no outlier, yet the scores
    have left the calibration distribution, which the drift index sees and the rate cannot."""
    x, _ = digits_test
    r = await client.post("/reconstruct", json={"inputs": x.tolist()})
    await score(client, np.array(r.json()["outputs"], dtype=np.float32))
    m = (await monitoring(client))["reconstruction"]
    assert m["outliers"] == 0 and m["outlier_rate"] == 0.0
    assert m["drift"]["drifted"] and m["drift"]["value"] > 5
    assert m["bins"][0]["observed"] > 0.9  # below the calibration's 1st percentile


async def test_a_request_threshold_changes_its_flags_not_the_outlier_count(
    client: AppClient, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    r = await client.post("/anomaly-score", json={"inputs": x[:20].tolist(), "threshold": 0.0})
    assert all(r.json()["is_outlier"])
    m = (await monitoring(client))["reconstruction"]
    series = await metrics(client)
    labels = {"model": "digits-vae", "method": "reconstruction"}
    calibrated = sum(s > m["threshold"] for s in r.json()["scores"])
    assert m["scores"] == 20 and m["outliers"] == calibrated < 20
    assert value(series, "latentserve_outliers_total", **labels) == calibrated
    assert value(series, "latentserve_anomaly_score_count", **labels) == 20


async def test_sampled_scores_count_only_at_the_calibrated_k(
    client: AppClient, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    await score(client, x[:10], method="iwae", k=4)
    await score(client, x[:10], method="elbo", k=64)
    report = await monitoring(client)
    assert report["iwae"]["scores"] == report["elbo"]["scores"] == 0
    await score(client, x[:10], method="iwae", k=16)
    assert (await monitoring(client))["iwae"]["scores"] == 10


async def test_drift_waits_for_the_minimum_window(
    app_with: Any, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    async with app_with(monitor_window=200, monitor_min_scores=100) as c:
        await score(c, x[:99])
        m = (await monitoring(c))["reconstruction"]
        assert m["drift"]["value"] is None and m["outlier_rate"] is not None
        assert ("latentserve_drift_psi", frozenset(
            {"model": "digits-vae", "method": "reconstruction"}.items()
        )) not in await metrics(c)  # fmt: skip
        await score(c, x[99:])
        m = (await monitoring(c))["reconstruction"]
        assert m["window_size"] == m["scores"] == 200 and m["scored"] == len(x)
        assert m["drift"]["value"] is not None
        assert m["since"] is not None and m["since"] <= m["last"]


async def test_monitoring_off_records_nothing(
    app_with: Any, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    async with app_with(monitoring=False) as c:
        await score(c, x[:16])
        r = (await c.get("/models/digits-vae/monitoring")).json()
        assert r["enabled"] is False and r["methods"] == []
        text = (await c.get("/metrics")).text
        assert "latentserve_anomaly_score_bucket" not in text
        assert "latentserve_monitor_window_scores{" not in text


async def test_the_route_names_a_model(client: AppClient) -> None:
    r = await client.get("/models/no-such-model/monitoring")
    assert r.status_code == 404 and r.json()["error"]["field"] == "name"


# -- reloads -------------------------------------------------------------------------------------
async def test_a_reload_that_changes_nothing_keeps_the_window_and_a_new_version_resets_it(
    app_with: Any, model_copy: Path, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    labels = {"model": "digits-vae", "method": "reconstruction"}
    async with app_with(model_repository=model_copy) as c:
        await score(c, x[:100])
        before = (await monitoring(c))["reconstruction"]
        assert (await c.post("/models/reload")).status_code == 200  # a rescan, nothing changed
        kept = (await monitoring(c))["reconstruction"]
        assert kept["scores"] == 100 and kept["started"] == before["started"]

        folder = model_copy / "digits-vae"
        Manifest.load(folder).model_copy(update={"version": "2"}).save(folder)
        assert (await c.post("/models/digits-vae/reload")).json()["version"] == "2"
        fresh = (await monitoring(c))["reconstruction"]
        assert fresh["scores"] == fresh["outliers"] == fresh["scored"] == 0
        assert fresh["started"] > before["started"] and fresh["since"] is None
        series = await metrics(c)
        assert value(series, "latentserve_monitor_window_scores", **labels) == 0
        assert value(series, "latentserve_outlier_rate", **labels) is None
        # the counters are cumulative: they keep what the old version counted
        assert value(series, "latentserve_anomaly_score_count", **labels) == 100
        await score(c, x[100:110])
        assert (await monitoring(c))["reconstruction"]["scores"] == 10


async def test_scores_of_a_request_that_began_before_a_reload_stay_out_of_the_new_window(
    app_with: Any, model_copy: Path, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    async with app_with(model_repository=model_copy) as c:
        old = c.app.state.repository.get("digits-vae")  # type: ignore[attr-defined]
        folder = model_copy / "digits-vae"
        Manifest.load(folder).model_copy(update={"version": "2"}).save(folder)
        assert (await c.post("/models/digits-vae/reload")).status_code == 200
        await score(c, x[:5])
        started = (await monitoring(c))["reconstruction"]["started"]
        monitor = c.app.state.data_plane.monitor  # type: ignore[attr-defined]
        monitor.record(old, ScoreMethod.RECONSTRUCTION, np.full(3, 0.01, np.float32), 16)
        now = (await monitoring(c))["reconstruction"]
        assert now["scores"] == 5 and now["started"] == started


async def test_a_recalibration_resets_the_window_and_keeps_the_old_buckets_counts(
    app_with: Any, model_copy: Path, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    labels = {"model": "digits-vae", "method": "reconstruction"}
    folder = model_copy / "digits-vae"
    async with app_with(model_repository=model_copy) as c:
        await score(c, x[:50])
        manifest = Manifest.load(folder)
        cal = manifest.calibration["reconstruction"]
        scaled = {q: v * 2 for q, v in cal.quantiles.items()}
        new = cal.model_copy(update={"quantiles": scaled, "threshold": cal.threshold * 2})
        only_reconstruction = {"reconstruction": new}  # elbo and iwae lose their calibration
        manifest.model_copy(update={"calibration": only_reconstruction}).save(folder)
        assert (await c.post("/models/digits-vae/reload")).status_code == 200
        report = await monitoring(c)
        assert set(report) == {"reconstruction"}  # uncalibrated methods are not monitored
        assert report["reconstruction"]["scores"] == 0
        assert report["reconstruction"]["threshold"] == cal.threshold * 2
        await score(c, x[50:80])
        await score(c, x[:5], method="elbo")
        series = await metrics(c)
        bounds = sorted(
            float(dict(key[1])["le"])
            for key in series
            if key[0] == "latentserve_anomaly_score_bucket"
            and dict(key[1])["method"] == "reconstruction"
        )
        assert len(bounds) == 19  # both calibrations' 9 quantiles, and +Inf
        assert value(series, "latentserve_anomaly_score_count", **labels) == 80
        assert value(series, "latentserve_monitor_window_scores", **labels) == 30
        elbo = {"model": "digits-vae", "method": "elbo"}
        assert value(series, "latentserve_monitor_window_scores", **elbo) is None
        assert value(series, "latentserve_outlier_rate_expected", **elbo) is None


def test_one_metrics_object_tracks_several_models_apart() -> None:
    """The observer keys every series by (model, method): two models' windows never mix."""
    metrics = Metrics()
    model = digits_vae()
    ref = Reference.of(model, ScoreMethod.RECONSTRUCTION)
    assert ref is not None
    a, b = ScoreWindow("a", ref, 10), ScoreWindow("b", ref, 10)
    for w in (a, b):
        metrics.window_started(w)
    metrics.scores_added(a, a.add(np.array([0.01, 0.2], dtype=np.float32)))
    series = parse(metrics.exposition().decode())
    assert (
        value(series, "latentserve_monitor_window_scores", model="a", method="reconstruction") == 2
    )
    assert (
        value(series, "latentserve_monitor_window_scores", model="b", method="reconstruction") == 0
    )
    assert value(series, "latentserve_outlier_rate", model="a", method="reconstruction") == 0.5
    metrics.window_cleared(a)
    series = parse(metrics.exposition().decode())
    assert (
        value(series, "latentserve_monitor_window_scores", model="a", method="reconstruction")
        is None
    )
    assert value(series, "latentserve_anomaly_score_count", model="a", method="reconstruction") == 2


# -- several worker processes ---------------------------------------------------------------------
@pytest.fixture
def two_workers(model_copy: Path) -> Iterator[LiveServer]:
    env = {"LATENTSERVE_MODEL_REPOSITORY": str(model_copy), "LATENTSERVE_LOG_LEVEL": "WARNING"}
    server = LiveServer(env, args=("--workers", "2")).start(timeout_s=60)
    try:
        yield server
    finally:
        log = server.stop()
        assert "Traceback" not in log, log


@pytest.mark.e2e
def test_two_workers_pool_their_windows_in_metrics(
    two_workers: LiveServer, model_copy: Path, digits_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits_test
    url = two_workers.url
    flagged = 0
    for i in range(0, len(x), 12):  # a new connection each time, so both processes take some
        r = httpx.post(f"{url}/anomaly-score", json={"inputs": x[i : i + 12].tolist()})
        assert r.status_code == 200
        flagged += sum(r.json()["is_outlier"])
    series = parse(httpx.get(f"{url}/metrics").text)
    labels = {"model": "digits-vae", "method": "reconstruction"}
    assert value(series, "latentserve_anomaly_score_count", **labels) == len(x)
    assert value(series, "latentserve_outliers_total", **labels) == flagged
    assert value(series, "latentserve_monitor_window_scores", **labels) == len(x)
    assert value(series, "latentserve_outlier_rate", **labels) == pytest.approx(flagged / len(x))
    assert value(series, "latentserve_outlier_rate_expected", **labels) == pytest.approx(0.01)
    psi_value = value(series, "latentserve_drift_psi", **labels)
    assert psi_value is not None and psi_value < 0.15
    # the route answers for one process: its own share of the scores
    answers = [httpx.get(f"{url}/models/digits-vae/monitoring").json() for _ in range(8)]
    per_process = {
        a["process_id"]: next(m for m in a["methods"] if m["method"] == "reconstruction")
        for a in answers
    }
    assert all(0 <= m["scores"] <= len(x) for m in per_process.values())
    if len(per_process) == 2:
        assert sum(m["scores"] for m in per_process.values()) == len(x)
    # a reload in one process resets the windows of both (the other follows within a second);
    # the cumulative counters keep what they counted
    folder = model_copy / "digits-vae"
    Manifest.load(folder).model_copy(update={"version": "2"}).save(folder)
    assert httpx.post(f"{url}/models/digits-vae/reload").status_code == 200
    time.sleep(1.5)  # three poll intervals
    series = parse(httpx.get(f"{url}/metrics").text)
    assert value(series, "latentserve_monitor_window_scores", **labels) == 0
    assert value(series, "latentserve_outlier_rate", **labels) is None
    assert value(series, "latentserve_anomaly_score_count", **labels) == len(x)
