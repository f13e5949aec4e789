"""The benchmark runs end to end (three real servers plus the in-process ceiling) and reports what
it measured; its target checks compute the right ratios. No timing is asserted: this machine is
shared and noisy, the numbers live in docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from bench.__main__ import main, median_rounds, select_workloads
from bench.loadgen import StepResult
from bench.naive_server import create_app as create_naive_app
from bench.pytriton_server import decode_part
from bench.report import check_targets, markers, stem, table
from bench.servers import PYTRITON_PYTHON_ENV, make_server, pytriton_python
from bench.workloads import OIP_WORKLOADS
from tests.conftest import MODELS
from tests.tiny_models import write_gan

WORKLOADS = (
    "sample-vae-n1-json",
    "sample-gan-n64-npy",
    "sample-gan-n64-json",
    "anomaly-vae-n64-npy",
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-models")
    shutil.copytree(MODELS / "digits-vae", root / "digits-vae")
    write_gan(root / "tiny-gan")
    return root


def run_bench(repository: Path, out: Path, *options: str) -> int:
    """`python -m bench` on the test repository, JSON to `out`, no plot."""
    models = ["--models", str(repository), "--vae-model", "digits-vae", "--gan-model", "tiny-gan"]
    return main([*models, "--json", str(out), "--no-plot", *options])


@pytest.mark.e2e
def test_quick_run_measures_every_system_and_workload(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = run_bench(
        repository,
        out,
        "--workloads", ",".join(WORKLOADS),
        "--concurrency", "1,8",
        "--duration", "0.2",
        "--warmup", "0.05",
        "--no-docs",
        "--loadgen", "aiohttp",  # wrk's windows are whole seconds: tests/test_bench_wrk
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    results = doc["results"]
    seen = {(r["workload"], r["system"], r["concurrency"]) for r in results}
    systems = ("service", "service-nobatch", "naive", "bare", "inprocess")
    assert seen == {(w, s, c) for w in WORKLOADS for s in systems for c in (1, 8)}
    for r in results:
        assert r["errors"] == 0, r
        assert r["requests"] > 0, r
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["samples_per_s"] == pytest.approx(r["rps"] * r["n"], rel=0.01, abs=0.1)
        if r["system"] == "inprocess":  # the ceiling runs what a perfect batcher would merge
            assert r["batch"] == min(r["concurrency"] * r["n"], 256)
    assert set(doc["startup_s"]) == {"service", "service-nobatch", "naive", "bare"}
    assert all(0 < t < 60 for t in doc["startup_s"].values())
    names = [t["name"] for t in doc["targets"]]
    assert "service startup to ready" in names
    assert any("vs in-process" in n for n in names)
    assert any(".npy vs JSON" in n for n in names)
    assert doc["meta"]["models"] == ["digits-vae", "tiny-gan"]


@pytest.mark.e2e
def test_front_doors_run_side_by_side_into_their_own_docs_section(
    repository: Path, tmp_path: Path
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\nprose\n\n<!-- bench:results:start -->\nkept\n<!-- bench:results:end -->\n"
    )
    out = tmp_path / "oip.json"
    code = run_bench(
        repository,
        out,
        "--workloads", "oip",
        "--systems", "service,naive,inprocess",
        "--concurrency", "1,4",
        "--duration", "0.2",
        "--warmup", "0.05",
        "--rounds", "2",
        "--interleave-workloads",
        "--section", "oip",
        "--docs", str(docs),
        "--loadgen", "aiohttp",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    seen = [(r["workload"], r["system"], r["concurrency"]) for r in doc["results"]]
    names = [w.name for w in OIP_WORKLOADS]
    # c outer, workloads inner; the naive baseline has no /decode or /v2 and is left out
    assert seen == [(w, s, c) for c in (1, 4) for w in names for s in ("service", "inprocess")]
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in doc["results"])
    assert {t["name"] for t in doc["targets"]} >= {
        "decode-vae-n64-oip-binary: vs the native .npy route at c=4",
        "decode-vae-n64-grpc: vs the native .npy route at c=4",
    }
    text = docs.read_text()
    start, end = markers("oip")
    assert "kept" in text and start in text and end in text
    assert "2 rounds, each step's median round kept" in text
    assert "| decode-vae-n64-grpc | service | 4 |" in text


def test_workload_selection_and_median_rounds() -> None:
    assert [w.name for w in select_workloads("oip")] == [w.name for w in OIP_WORKLOADS]
    assert [w.name for w in select_workloads("sample-vae-n1-json,oip")][:2] == [
        "sample-vae-n1-json",
        "decode-vae-n64-npy",
    ]
    with pytest.raises(SystemExit, match="unknown workload 'nope'"):
        select_workloads("nope")
    assert stem("decode-vae-n64-oip-binary") == stem("decode-vae-n64-npy") == "decode-vae-n64"
    rounds = [_step("service", "w", 64, 1, n, 1.0) for n in (300, 100, 200)]
    assert [r.requests for r in median_rounds(rounds)] == [200]


def _step(system: str, workload: str, c: int, n: int, requests: int, p50: float) -> StepResult:
    return StepResult(system, workload, c, n, requests, 0, 1.0, p50, p50, p50, None)


def test_targets_are_ratios_of_the_same_run() -> None:
    results = [
        _step("service", "sample-vae-n64-npy", 64, 64, 90, 700.0),
        _step("inprocess", "sample-vae-n64-npy", 1, 64, 100, 5.0),
        _step("service", "sample-vae-n64-json", 64, 64, 20, 3000.0),
        _step("service", "sample-vae-n1-json", 64, 1, 3000, 20.0),
        _step("naive", "sample-vae-n1-json", 64, 1, 500, 100.0),
        _step("service", "sample-vae-n1-json", 1, 1, 400, 2.5),
        _step("inprocess", "sample-vae-n1-json", 1, 1, 9000, 0.1),
    ]
    targets = {t.name: t for t in check_targets(results, {"service": 2.5})}
    batch = targets["sample-vae-n64-npy: service at c=64 vs in-process at batch None"]
    assert batch.measured.endswith("= 0.90x") and batch.met
    # the JSON variant runs the same graphs in-process: the faster of the two runs is the ceiling
    results.append(_step("inprocess", "sample-vae-n64-json", 1, 64, 120, 4.0))
    targets = {t.name: t for t in check_targets(results, {"service": 2.5})}
    batch = targets["sample-vae-n64-npy: service at c=64 vs in-process at batch None"]
    assert batch.measured == "5760 / 7680 = 0.75x (in-process: best of 2)" and not batch.met
    results.pop()
    naive = targets["sample-vae-n1-json: service vs naive at c=64"]
    assert naive.measured.endswith("= 6.0x") and naive.met
    p50 = targets["sample-vae-n1-json: p50 at c=1, service minus in-process"]
    assert p50.measured.endswith("= 2.40 ms") and not p50.met
    npy = targets["sample-vae-n64: .npy vs JSON responses at c=64"]
    assert npy.measured.endswith("= 4.5x") and npy.met
    startup = targets["service startup to ready"]
    assert not startup.met
    results += [
        _step("service", "decode-vae-n64-npy", 64, 64, 400, 50.0),
        _step("service", "decode-vae-n64-oip-binary", 64, 64, 380, 50.0),
        _step("service", "decode-vae-n64-grpc", 64, 64, 340, 50.0),
    ]
    targets = {t.name: t for t in check_targets(results, {})}
    binary = targets["decode-vae-n64-oip-binary: vs the native .npy route at c=64"]
    assert binary.measured == "380 / 400 = 0.95x" and binary.met
    grpc = targets["decode-vae-n64-grpc: vs the native .npy route at c=64"]
    assert grpc.measured == "340 / 400 = 0.85x" and not grpc.met
    text = table(results)
    assert text.splitlines()[0].split()[:3] == ["workload", "system", "c"]
    assert len(text.splitlines()) == len(results) + 1


async def test_naive_baseline_answers_the_same_requests(repository: Path) -> None:
    app = create_naive_app(repository)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://naive") as client:
        r = await client.post("/sample", json={"model": "tiny-gan", "n": 3, "seed": 1})
        assert r.status_code == 200
        samples = np.asarray(r.json()["samples"])
        assert samples.shape[0] == 3 and np.all((samples >= 0) & (samples <= 1))
        x = np.zeros((2, 64), dtype=np.float32)
        r = await client.post(
            "/anomaly-score",
            json={"model": "digits-vae", "inputs": x.tolist(), "method": "reconstruction"},
        )
        assert r.status_code == 200
        scores = r.json()["scores"]
        assert len(scores) == 2 and scores[0] == pytest.approx(scores[1]) and scores[0] > 0


def test_the_bare_server_answers_with_the_service_sizes(repository: Path) -> None:
    from bench.bare_server import BareApp, key_of, response_sizes
    from bench.workloads import HOT_PATH_WORKLOADS, prepare

    prepared, _ = prepare(HOT_PATH_WORKLOADS, {"vae": "digits-vae"}, repository)
    sizes = response_sizes(prepared, repository)
    assert len(sizes) == len(HOT_PATH_WORKLOADS)

    async def ask_bare() -> None:
        transport = httpx.ASGITransport(app=BareApp(sizes))
        async with httpx.AsyncClient(transport=transport, base_url="http://bare") as c:
            for p in prepared:
                accept = p.request.headers.get("accept", "")  # none: not httpx's default
                headers = {**p.request.headers, "accept": accept}
                r = await c.post(p.request.path, content=p.request.content, headers=headers)
                media, length = sizes[key_of(p.request)]
                assert r.status_code == 200 and len(r.content) == length
                assert r.headers["content-type"] == media
            assert (await c.get("/readyz")).status_code == 200

    asyncio.run(ask_bare())


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_drives_the_service_and_the_http_limit(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = run_bench(
        repository,
        out,
        "--workloads", "decode-vae-n1-json",
        "--systems", "service,bare",
        "--concurrency", "4",
        "--duration", "1",
        "--warmup", "0",
        "--loadgen", "wrk",
        "--no-docs",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["loadgen"] == "wrk"
    by_system = {r["system"]: r for r in doc["results"]}
    assert set(by_system) == {"service", "bare"}
    for r in by_system.values():
        assert r["errors"] == 0 and r["requests"] > 10, r
        assert 0.9 < r["duration_s"] < 2.0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert any("HTTP limit" in t["name"] for t in doc["targets"])


def test_peer_targets_compare_p99_with_pytriton_at_the_same_concurrency() -> None:
    results = [
        _step("service", "decode-vae-n1-json", 64, 1, 3000, 20.0),
        _step("service", "decode-vae-n1-oip-json", 64, 1, 2000, 40.0),
        _step("pytriton", "decode-vae-n1-oip-json", 64, 1, 1500, 30.0),
        _step("pytriton", "decode-vae-n1-oip-json", 1, 1, 50, 2.0),
    ]
    targets = {t.name: t for t in check_targets(results, {})}
    native = targets["decode-vae-n1-json vs PyTriton's decode-vae-n1-oip-json: p99 at c=64"]
    assert native.met and native.measured.startswith("20.0 vs 30.0 ms")
    same = targets["decode-vae-n1-oip-json vs PyTriton's decode-vae-n1-oip-json: p99 at c=64"]
    assert same.met is False and same.measured.startswith("40.0 vs 30.0 ms")


def test_pytriton_serves_the_graph_behind_decode_under_the_oip_name(
    repository: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert decode_part(repository / "digits-vae")[0] == "decoder"
    assert decode_part(repository / "tiny-gan")[0] == "generator"
    monkeypatch.setenv(PYTRITON_PYTHON_ENV, str(tmp_path / "missing" / "python"))
    assert pytriton_python() is None
    with pytest.raises(SystemExit):  # asked for by name without the interpreter: a clear error
        main(["--systems", "pytriton", "--no-docs", "--no-plot"])
    python = Path(sys.executable)
    monkeypatch.setenv(PYTRITON_PYTHON_ENV, str(python))
    server = make_server("pytriton", repository, ["digits-vae", "tiny-gan"], {})
    assert server.ready_path == "/v2/models/tiny-gan.generator/ready"
    assert server.command[:3] == [str(python), "-m", "bench.pytriton_server"]
    assert server.command.count("--model") == 2 and server.grpc_port is not None
    lib = server.env["LD_LIBRARY_PATH"].split(":")[0]
    assert any(p.name.startswith("libpython") for p in Path(lib).iterdir())


@pytest.mark.e2e
@pytest.mark.skipif(
    pytriton_python() is None, reason="PyTriton is not installed (scripts/install-pytriton.sh)"
)
def test_pytriton_answers_the_same_protocol_requests(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    workloads = ("n1-oip-json", "n64-oip-binary", "n64-grpc", "n1-json")
    code = run_bench(
        repository,
        out,
        "--workloads", ",".join(f"decode-vae-{w}" for w in workloads),
        "--systems", "service,pytriton",
        "--concurrency", "4",
        "--duration", "0.5",
        "--warmup", "0",
        "--loadgen", "aiohttp",
        "--no-docs",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    runs = {(r["system"], r["workload"]): r for r in doc["results"]}
    assert ("pytriton", "decode-vae-n1-json") not in runs  # the peer has no native route
    for workload in ("decode-vae-n1-oip-json", "decode-vae-n64-oip-binary", "decode-vae-n64-grpc"):
        for system in ("service", "pytriton"):
            r = runs[(system, workload)]
            assert r["errors"] == 0 and r["requests"] > 5, r
    assert any("PyTriton" in t["name"] for t in doc["targets"])
    assert "nvidia-pytriton 0.7.0" in doc["peers"]["pytriton"]
    # and answers with the graph's values
    server = make_server("pytriton", repository, ["digits-vae"], {}).start()
    try:
        z = np.random.default_rng(0).standard_normal((3, 8), dtype=np.float32)
        body = {
            "inputs": [
                {"name": "z", "datatype": "FP32", "shape": [3, 8], "data": z.ravel().tolist()}
            ]
        }
        r = httpx.post(f"{server.url}/v2/models/digits-vae.decoder/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        server.stop()
    out_tensor = r.json()["outputs"][0]
    folder = repository / "digits-vae"
    session = ort.InferenceSession(str(folder / decode_part(folder)[1]["path"]))
    expected = session.run(None, {"z": z})[0]
    assert out_tensor["shape"] == list(expected.shape)
    np.testing.assert_allclose(
        np.asarray(out_tensor["data"]).reshape(expected.shape), expected, rtol=1e-5, atol=1e-6
    )


def test_a_gpu_run_asks_every_system_for_the_gpu_and_holds_the_gpu_goal() -> None:
    """`--providers cuda` must never measure the CPU fallback: the servers are told to refuse
    it and the ceiling's sessions too; `--fp16` serves and calls the fp16 copies; on a GPU the
    64-row target of every route, the scorer's too, is the GPU issue's 0.7x."""
    from bench.inprocess import ceiling_config

    server = make_server("service", MODELS, ["digits-vae"], {}, providers=("cuda",), fp16=True)
    assert server.env["LATENTSERVE_PROVIDERS"] == "cuda"
    assert server.env["LATENTSERVE_REQUIRE_GPU"] == "true"
    assert server.env["LATENTSERVE_PREFER_FP16"] == "true"
    cpu = make_server("service", MODELS, ["digits-vae"], {})
    assert cpu.env["LATENTSERVE_PROVIDERS"] == "cpu"
    assert cpu.env["LATENTSERVE_REQUIRE_GPU"] == "false"
    cfg = ceiling_config(("cuda",), fp16=True)
    assert cfg.require_gpu and cfg.prefer_fp16 and cfg.providers == ("cuda",)
    assert not ceiling_config().require_gpu

    results = [
        _step("service", "anomaly-vae-n64-npy", 64, 64, 75, 50.0),
        _step("inprocess", "anomaly-vae-n64-npy", 1, 64, 100, 5.0),
    ]
    assert not [t for t in check_targets(results, {}) if "vs in-process at batch" in t.name]
    (gpu,) = [t for t in check_targets(results, {}, gpu=True) if "vs in-process" in t.name]
    assert gpu.goal == ">= 0.7x samples/s" and gpu.measured.endswith("= 0.75x") and gpu.met


def test_a_gpu_run_says_which_gpu_and_providers_in_the_docs() -> None:
    from bench.report import gpu_lines

    meta: dict[str, Any] = {"machine": {"gpu": {}}, "providers": ["cpu"]}
    assert gpu_lines(meta) == []
    meta = {
        "machine": {
            "gpu": {"name": "NVIDIA H200", "memory": "143771 MiB", "driver": "580", "cuda": "13.0"}
        },
        "providers": ["cuda"],
        "fp16": True,
        "service_workers": 8,
    }
    assert gpu_lines(meta) == [
        "- Providers: cuda; fp16 copies; 8 service worker(s).",
        "- GPU: NVIDIA H200 (143771 MiB), driver 580, CUDA 13.0 (nvidia-smi).",
    ]


def test_gpu_tuning_spells_out_every_setting_and_ranks_by_geometric_mean(tmp_path: Path) -> None:
    from bench.gpu_tune import VARIANTS, bench_command, score

    for env, workers in VARIANTS.values():  # the table means the same whatever the defaults
        assert {"LATENTSERVE_CUDNN_CONV_ALGO_SEARCH", "LATENTSERVE_INTRA_OP_THREADS"} <= set(env)
        assert workers >= 1
    cmd = bench_command(tmp_path / "x.json", {"A": "1"}, 4, "service", "w", "16", 1.0, None, "tune")
    assert cmd[cmd.index("--providers") + 1] == "cuda" and "--no-docs" in cmd
    assert cmd[cmd.index("--service-workers") + 1] == "4" and cmd[-2:] == ["--server-env", "A=1"]
    rows = [
        {"system": "service", "samples_per_s": 100.0},
        {"system": "service", "samples_per_s": 400.0},
        {"system": "inprocess", "samples_per_s": 1e9},  # not the service's
    ]
    assert score(rows) == pytest.approx(200.0)
    assert score([*rows, {"system": "service", "samples_per_s": 0.0}]) < 100.0


def test_graph_comparison_prints_both_graphs_and_their_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import graphs
    from tests.conftest import MODELS

    decoder = MODELS / "digits-vae" / "decoder.onnx"
    assert graphs.main([str(decoder), str(decoder), "--rows", "1,8", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [
        line.split("|")[1:-1]
        for line in lines
        if line.startswith("| 1 ") or line.startswith("| 8 ")
    ]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (n, g) for n in ("1", "8") for g in ("A", "B", "B / A")
    ]
    for r in rows:
        if r[1].strip() != "B / A":
            assert float(r[2].replace(",", "")) > 0 and 0 < float(r[3]) <= float(r[4])
    ratios = [float(r[3].strip().rstrip("x")) for r in rows if r[1].strip() == "B / A"]
    assert all(0.2 < x < 5 for x in ratios)  # the same graph: near 1 on a quiet machine
