"""The alert rules and the Grafana dashboard in deploy/monitoring/ watch metrics that /metrics
really exposes, with the drift threshold the service reports; promtool, where installed, checks
the rules file and runs its unit tests (deploy/monitoring/latentserve-alerts.test.yml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from service.runtime.monitoring import PSI_THRESHOLD
from tests.conftest import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "latentserve-alerts.yml"
RULE_TESTS = MONITORING / "latentserve-alerts.test.yml"
DASHBOARD = MONITORING / "grafana-outliers.json"
METRIC = re.compile(r"\blatentserve_[a-z_]+\b")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]


@pytest.fixture
async def exposed(app_with: Any, digits_test: tuple[np.ndarray, np.ndarray]) -> set[str]:
    """Every sample name in /metrics once scores, outliers and drift are there."""
    x, _ = digits_test
    async with app_with(monitor_window=100, monitor_min_scores=50) as c:
        noisy = np.concatenate([x[:80], np.random.default_rng(0).random((20, 64))])
        r = await c.post("/anomaly-score", json={"inputs": noisy.tolist()})
        assert r.status_code == 200 and any(r.json()["is_outlier"])
        text = (await c.get("/metrics")).text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_every_rule_alerts_with_a_severity_a_delay_and_an_explanation() -> None:
    names = [rule["alert"] for rule in rules()]
    assert names == [
        "LatentserveOutlierRateHigh",
        "LatentserveScoreDrift",
        "LatentserveOutlierRateHighFleetWide",
    ]
    for rule in rules():
        assert rule["labels"]["severity"] == "warning"
        assert re.fullmatch(r"\d+m", rule["for"])
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80


def test_the_rules_and_the_dashboard_use_metrics_the_service_exposes(exposed: set[str]) -> None:
    for rule in rules():
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= exposed, (rule["alert"], used - exposed)
    for expr in dashboard_exprs():
        used = set(METRIC.findall(expr))
        assert used <= exposed, (expr, used - exposed)
    assert {"latentserve_outlier_rate", "latentserve_drift_psi"} <= {
        name for expr in dashboard_exprs() for name in METRIC.findall(expr)
    }


def test_the_drift_rule_uses_the_threshold_the_route_reports() -> None:
    (drift,) = [rule for rule in rules() if rule["alert"] == "LatentserveScoreDrift"]
    match = re.fullmatch(r"\s*latentserve_drift_psi > ([0-9.]+)\s*", drift["expr"])
    assert match is not None and float(match.group(1)) == PSI_THRESHOLD


def test_the_dashboard_is_importable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "latentserve-outliers"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


@pytest.mark.parametrize(
    "command", [pytest.param(("check", "rules", RULES), id="check"), pytest.param(
        ("test", "rules", RULE_TESTS), id="unit-tests"
    )],
)  # fmt: skip
def test_promtool_accepts_the_rules(command: tuple[str, str, Path]) -> None:
    result = subprocess.run(
        [_promtool(), *map(str, command)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
