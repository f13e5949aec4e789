"""docker-compose.yml without a Docker engine: valid against the Compose Specification's JSON
schema (vendored, deploy/schemas/), profiles that never start the CPU and GPU services together,
the GPU kept to the gpu profile, Prometheus scraping the service, and a Grafana dashboard whose
every query names a metric the app really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AppClient
from tests.dockerfile_model import stages

yaml = pytest.importorskip("yaml", reason="PyYAML is in the deploy extra")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the deploy extra")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GRAFANA = ROOT / "deploy/compose/grafana"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "deploy/schemas/compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []
    # the schema rejects unknown service keys: a typo would have failed above
    broken = {**compose, "services": {"x": {"image": "a", "heathcheck": {}}}}
    assert not validator.is_valid(broken)


def _profile(compose: dict[str, Any], profile: str) -> set[str]:
    return {n for n, s in compose["services"].items() if profile in s.get("profiles", [])}


def test_profiles_start_the_cpu_or_the_gpu_service_never_both(compose: dict[str, Any]) -> None:
    assert _profile(compose, "cpu") == {"latentserve-cpu", "prometheus", "grafana"}
    assert _profile(compose, "gpu") == {"latentserve-gpu", "prometheus", "grafana"}
    assert all(s.get("profiles") for s in compose["services"].values())  # none without one


def test_only_the_gpu_service_reserves_a_gpu_and_it_refuses_cpu_fallback(
    compose: dict[str, Any],
) -> None:
    gpu, cpu = compose["services"]["latentserve-gpu"], compose["services"]["latentserve-cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert gpu["environment"]["LATENTSERVE_REQUIRE_GPU"] == "true"
    assert gpu["environment"]["LATENTSERVE_PROVIDERS"].startswith("cuda")
    assert cpu["environment"]["LATENTSERVE_PROVIDERS"] == "cpu"
    reserving = [n for n, s in compose["services"].items() if "deploy" in s]
    assert reserving == ["latentserve-gpu"]
    targets = stages(ROOT / "Dockerfile")
    assert (cpu["build"]["target"], gpu["build"]["target"]) == ("cpu", "cuda")
    assert {"cpu", "cuda"} <= set(targets)


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def test_both_services_are_hardened_and_outlast_the_graceful_timeout(
    compose: dict[str, Any],
) -> None:
    cmd = stages(ROOT / "Dockerfile")["cpu"].exec_form("CMD")
    graceful = float(cmd[cmd.index("--graceful-timeout") + 1])
    for name in ("latentserve-cpu", "latentserve-gpu"):
        service = compose["services"][name]
        assert _seconds(service["stop_grace_period"]) > graceful
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"]
        assert service["cap_drop"] == ["ALL"]
        assert service["volumes"] == ["./models:/app/models:ro"]
        assert "latentserve" in service["networks"]["default"]["aliases"]


def test_the_api_key_comes_from_an_ignored_env_file(compose: dict[str, Any]) -> None:
    for name in ("latentserve-cpu", "latentserve-gpu"):
        (env_file,) = compose["services"][name]["env_file"]
        assert env_file == {"path": "deploy/compose/latentserve.env", "required": False}
        assert "LATENTSERVE_API_KEY" not in compose["services"][name]["environment"]
    example = (ROOT / "deploy/compose/latentserve.env.example").read_text()
    assert re.search(r"^LATENTSERVE_API_KEY=\S+$", example, flags=re.M)
    assert "deploy/compose/*.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_bind_mount_exists_in_the_repository(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source in named:
                continue
            assert (ROOT / source).exists(), source


def test_prometheus_scrapes_the_service_alias() -> None:
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["latentserve:8000"]}]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "dashboards/latentserve.json").read_text())
    return loaded


def test_grafana_provisions_the_datasource_the_dashboard_uses(compose: dict[str, Any]) -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert (source["uid"], source["url"]) == ("prometheus", "http://prometheus:9090")
    provider, monitoring = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/latentserve.yml").read_text()
    )["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/compose/grafana/dashboards"] == provider["options"]["path"]
    outliers = mounts["./deploy/monitoring/grafana-outliers.json"]  # the score monitoring's
    assert outliers.rsplit("/", 1)[0] == monitoring["options"]["path"]
    for panel in _dashboard()["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    titles = " / ".join(p["title"].lower() for p in _dashboard()["panels"])
    for topic in ("requests", "latency", "batch size", "queue", "errors", "models loaded"):
        assert topic in titles, topic
    exprs = [t["expr"] for p in _dashboard()["panels"] for t in p["targets"]]
    assert any("histogram_quantile(0.99" in e and "request_duration" in e for e in exprs)


async def test_every_dashboard_query_names_a_metric_the_app_exports(client: AppClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert (await client.post("/sample", json={"n": 2, "seed": 1})).status_code == 200
    r = await client.post("/anomaly-score", json={"inputs": [[0.5] * 64]})
    assert r.status_code == 200
    assert (await client.post("/sample", json={"n": 0})).status_code == 422
    text = (await client.get("/metrics")).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    queried = {
        name
        for p in _dashboard()["panels"]
        for t in p["targets"]
        for name in re.findall(r"\b(latentserve_\w+)", t["expr"])
    }
    assert len(queried) >= 9
    assert queried - exported == set()


def test_prometheus_loads_the_alert_rules(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    assert config["rule_files"] == [mounts["./deploy/monitoring/latentserve-alerts.yml"]]
