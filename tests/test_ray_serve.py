"""Ray Serve (service/ray_serve.py). The options come from settings (no Ray needed for those);
then a real local Ray on 127.0.0.1 (2 CPUs, no dashboard, an 80 MiB object store, token
authentication off, every socket on loopback) serves the app from 2 replicas: both answer
/sample and /anomaly-score with the same values, and a replica killed under load is replaced
with no failed request except those it was running."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.servers import free_port
from service.ray_serve import (
    DEPLOYMENT_NAME,
    REPLICA_HEADER,
    deployment_options,
    replica_settings,
)
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_a_fixed_replica_count_from_settings() -> None:
    s = Settings(ray_num_replicas=3, ray_replica_cpus=2, ray_max_ongoing_requests=64)
    assert deployment_options(s) == {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": 64,
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.0},
        "num_replicas": 3,
    }


def test_autoscaling_from_settings_replaces_the_fixed_count() -> None:
    s = Settings(
        ray_autoscaling=True,
        ray_min_replicas=1,
        ray_max_replicas=8,
        ray_target_ongoing_requests=16,
        ray_replica_gpus=0.5,
    )
    options = deployment_options(s)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 16.0,
    }
    assert options["ray_actor_options"]["num_gpus"] == 0.5


def test_ray_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTSERVE_RAY_NUM_REPLICAS", "4")
    monkeypatch.setenv("LATENTSERVE_RAY_AUTOSCALING", "false")
    assert deployment_options(Settings())["num_replicas"] == 4
    monkeypatch.setenv("LATENTSERVE_RAY_MIN_REPLICAS", "5")
    monkeypatch.setenv("LATENTSERVE_RAY_MAX_REPLICAS", "2")
    with pytest.raises(ValueError, match="ray_min_replicas"):
        Settings()


@pytest.mark.parametrize(
    ("cpus", "batches", "threads"), [(1.0, 2, 1), (4.0, 2, 2), (8.0, 1, 8), (0.5, 2, 1)]
)
def test_replica_threads_follow_its_cpus_not_the_nodes(
    cpus: float, batches: int, threads: int
) -> None:
    s = Settings(ray_replica_cpus=cpus, max_concurrent_batches=batches)
    assert replica_settings(s).intra_op_threads == threads
    assert replica_settings(Settings(intra_op_threads=3)).intra_op_threads == 3  # set by hand


def test_the_serve_config_validates_and_its_args_are_settings() -> None:
    pytest.importorskip("ray.serve", reason="Ray Serve is the ray extra")
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the deploy extra")
    from ray.serve.schema import ServeDeploySchema

    import service.ray_serve

    config = yaml.safe_load((ROOT / "deploy/ray/serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    module, function = app.import_path.split(":")
    assert getattr(__import__(module, fromlist=[function]), function) is service.ray_serve.build_app
    settings = Settings(**app.args)
    assert settings.ray_autoscaling and settings.ray_min_replicas == 2
    assert deployment_options(settings)["autoscaling_config"]["max_replicas"] == 8
    assert replica_settings(settings).intra_op_threads == 1  # 2 CPUs / 2 concurrent batches


# -- a real local Ray --------------------------------------------------------------------------

# Before Ray is imported: a single-node Ray on loopback (Linux Ray otherwise binds and advertises
# the machine's routable address), no token authentication, no usage reporting.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass
class RayApp:
    url: str
    start_s: float
    replicas: int


def _replica_actors() -> list[str]:
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{DEPLOYMENT_NAME}#")
    ]


def _running_replicas() -> int:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    app = serve.status().applications[DEPLOYMENT_NAME]
    return app.deployments[DEPLOYMENT_NAME].replica_states.get(ReplicaState.RUNNING, 0)


def _memory_mib() -> dict[str, float]:
    """RSS of the Ray processes this test started, by role (replicas summed)."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        role = Path(cmd[0]).name.strip() if cmd else proc.name()
        if role.startswith("python"):  # Ray's Python daemons: name them by their script
            role = Path(next((a for a in cmd[1:] if not a.startswith("-")), role)).stem
        role = role.split(".")[0]  # Ray's titles name the actor's current method after a dot
        if "ServeReplica" in role:
            role = "replicas"
        out[role] = out.get(role, 0.0) + rss
    return out


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayApp]:
    ray = pytest.importorskip("ray", reason="Ray is the ray extra: pip install -e '.[ray]'")
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is the ray extra")
    from service.ray_serve import build_app

    port = free_port()
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = {
            "ray_num_replicas": "2",
            "providers": "cpu",
            "model_repository": str(ROOT / "models"),
            "log_level": "WARNING",
        }
        serve.run(build_app(settings), name=DEPLOYMENT_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        start_s = time.perf_counter() - t0
        yield RayApp(url, start_s, 2)
    finally:
        serve.shutdown()
        ray.shutdown()


def _loopback(ip_text: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(ip_text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.mark.ray
@pytest.mark.slow
def test_ray_advertises_and_talks_to_loopback_only(ray_app: RayApp) -> None:
    import psutil
    import ray

    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    with httpx.Client(base_url=ray_app.url) as client:
        assert client.post("/sample", json={"n": 1}).status_code == 200
    listening, peers = [], []
    for proc in psutil.Process().children(recursive=True):
        title = " ".join(proc.cmdline())[:50].strip()
        # psutil 6 renamed connections() (kserve, in the same venv, keeps psutil 5)
        connections = getattr(proc, "net_connections", None) or proc.connections
        for c in connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                listening.append((c.laddr.ip, title))
            elif c.raddr:
                peers.append((c.raddr.ip, title))
    assert peers and all(_loopback(ip) for ip, _ in peers), peers
    # Ray Serve 2.60 binds each replica's inter-deployment gRPC server to [::] (hard-coded in
    # ray/serve/_private/replica.py); it is reached at the node address, 127.0.0.1, like the rest
    elsewhere = {(ip, title) for ip, title in listening if not _loopback(ip)}
    assert all("ServeReplica" in title for _, title in elsewhere), elsewhere


@pytest.mark.ray
@pytest.mark.slow
def test_both_replicas_answer_sample_and_anomaly_score_alike(ray_app: RayApp) -> None:
    answers: dict[str, dict[str, object]] = {"/sample": {}, "/anomaly-score": {}}
    bodies = {
        "/sample": {"n": 3, "seed": 7},
        "/anomaly-score": {"inputs": [[0.5] * 64, [0.0] * 64], "method": "reconstruction"},
    }
    with httpx.Client(base_url=ray_app.url, timeout=30) as client:
        for _ in range(100):
            for route, body in bodies.items():
                r = client.post(route, json=body)
                assert r.status_code == 200, r.text
                answers[route][r.headers[REPLICA_HEADER]] = r.json()
            if all(len(a) == ray_app.replicas for a in answers.values()):
                break
    for route, by_replica in answers.items():
        assert len(by_replica) == ray_app.replicas, route  # Ray spread requests over both
        first, second = by_replica.values()
        assert first == second, route  # same seed, same samples; same scores
    scores = next(iter(answers["/anomaly-score"].values()))
    assert isinstance(scores, dict) and len(scores["scores"]) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_a_replica_killed_under_load_is_replaced_without_other_failures(
    ray_app: RayApp,
) -> None:
    import ray

    records: list[tuple[float, float, bool, str | None]] = []  # start, end, ok, replica
    concurrency = 8

    async def client_loop(client: httpx.AsyncClient, stop: float) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                r = await client.post("/sample", json={"n": 4, "seed": 1})
                ok, replica = r.status_code == 200, r.headers.get(REPLICA_HEADER)
            except httpx.HTTPError:
                ok, replica = False, None
            records.append((started, time.perf_counter(), ok, replica))

    def wait_until_gone(name: str) -> float:
        """When the killed replica is gone from the cluster (its name no longer resolves)."""
        while True:
            try:
                ray.get_actor(name, namespace="serve")
            except ValueError:
                return time.perf_counter()
            time.sleep(0.01)

    async def load_and_kill() -> tuple[float, float, str]:
        async with httpx.AsyncClient(base_url=ray_app.url, timeout=30) as client:
            stop = time.perf_counter() + 10
            tasks = [asyncio.create_task(client_loop(client, stop)) for _ in range(concurrency)]
            await asyncio.sleep(2)
            victim = _replica_actors()[0]
            killed_at = time.perf_counter()
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            gone_at = await asyncio.to_thread(wait_until_gone, victim)
            await asyncio.gather(*tasks)
            return killed_at, gone_at, victim.rsplit("#", 1)[1]

    killed_at, gone_at, victim_id = asyncio.run(load_and_kill())
    failures = [r for r in records if not r[2]]
    # in flight on the replica while it died: started before it was gone, not done at the kill
    in_flight = [r for r in records if r[0] <= gone_at and r[1] >= killed_at]
    # load on both sides of the kill (counts depend on the machine: no fixed number)
    assert sum(1 for start, end, ok, _ in records if ok and end < killed_at) >= concurrency
    assert sum(1 for start, end, ok, _ in records if ok and start > gone_at) >= concurrency
    report = [(round(a - killed_at, 3), round(b - killed_at, 3)) for a, b, _, _ in failures]
    assert all(r in in_flight for r in failures), (round(gone_at - killed_at, 3), report)
    assert len(failures) <= concurrency
    # Ray starts a replacement: two replicas run again, and the new one answers
    deadline = time.perf_counter() + 120
    while _running_replicas() < 2 or len(_replica_actors()) < 2:
        assert time.perf_counter() < deadline, "no replacement replica within 120 s"
        time.sleep(0.5)
    replaced_s = time.perf_counter() - killed_at
    seen: set[str] = set()
    deadline = time.perf_counter() + 30
    with httpx.Client(base_url=ray_app.url, timeout=30) as client:
        while len(seen) < 2 and time.perf_counter() < deadline:
            seen.add(client.post("/sample", json={"n": 1}).headers[REPLICA_HEADER])
    assert len(seen) == 2 and victim_id not in seen
    memory = _memory_mib()
    print(
        f"\nray: 2 replicas ready {ray_app.start_s:.1f} s after ray.init; {len(records)} "
        f"requests, {len(failures)} failed (in flight as it died: {len(in_flight)}, gone "
        f"{gone_at - killed_at:.2f} s after ray.kill); "
        f"replacement running {replaced_s:.1f} s after the kill; RSS MiB: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(memory.items()))
        + f"; total {sum(memory.values()):.0f}"
    )
