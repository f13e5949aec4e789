"""deploy/k8s and deploy/kserve, offline: both overlays render (tests/kustomize_lite.py, checked
against `kubectl kustomize` where kubectl exists) into objects that `kubernetes-validate
--strict` accepts for the oldest and the newest Kubernetes they target; the InferenceService
validates against KServe's CRD schema (vendored) with unknown fields rejected; and the
manifests agree with the image and the settings (probes, user, graceful stop, GPU only where
asked, settings that exist)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.dockerfile_model import stages

yaml = pytest.importorskip("yaml", reason="PyYAML is in the deploy extra")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the deploy extra")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the deploy extra"
)

from tests.kustomize_lite import render  # noqa: E402 (needs PyYAML)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
OVERLAYS = ("cpu", "gpu")
# preStop's sleep action needs 1.30; validate against that and the newest schemas shipped
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CORE_KINDS = {
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}

Resource = dict[str, Any]


def _by_kind(resources: list[Resource]) -> dict[str, Resource]:
    found = {r["kind"]: r for r in resources}
    assert len(found) == len(resources)
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[str, Resource]]:
    name: str = request.param
    return name, _by_kind(render(K8S / "overlays" / name))


def _image_cmd() -> list[str]:
    return stages(ROOT / "Dockerfile")["cpu"].exec_form("CMD")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_strict_validation(
    overlay: tuple[str, dict[str, Resource]], version: str
) -> None:
    _, objects = overlay
    assert set(objects) == CORE_KINDS
    for resource in objects.values():
        kubernetes_validate.validate(resource, version, strict=True)
    loader = yaml.safe_load((K8S / "models-loader.yaml").read_text())
    kubernetes_validate.validate(loader, version, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_kubernetes_validate_command_accepts_the_rendered_overlay(
    name: str, tmp_path: Path
) -> None:
    """The same check through the command line the issue names, on the rendered YAML."""
    import sys

    rendered = tmp_path / f"{name}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(K8S / "overlays" / name)))
    command = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(command), "--strict", "-k", KUBERNETES_VERSIONS[0], str(rendered)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(CORE_KINDS), result.stdout


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = _by_kind(render(K8S / "overlays/cpu"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
@pytest.mark.parametrize("name", OVERLAYS)
def test_the_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / name)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert _by_kind(render(K8S / "overlays" / name)) == _by_kind(theirs)


def _pod(objects: dict[str, Resource]) -> dict[str, Any]:
    spec: dict[str, Any] = objects["Deployment"]["spec"]["template"]["spec"]
    return spec


def test_probes_user_and_filesystem_match_the_image(
    overlay: tuple[str, dict[str, Resource]],
) -> None:
    _, objects = overlay
    pod = _pod(objects)
    (container,) = pod["containers"]
    assert container["args"] == _image_cmd()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    uid, gid = stages(ROOT / "Dockerfile")["cpu"].last("USER").split(":")  # type: ignore[union-attr]
    context = pod["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (
        True,
        int(uid),
        int(gid),
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/models", "/tmp"} and mounts["/models"]["readOnly"] is True


def test_termination_grace_outlasts_prestop_and_the_graceful_timeout(
    overlay: tuple[str, dict[str, Resource]],
) -> None:
    _, objects = overlay
    pod = _pod(objects)
    (container,) = pod["containers"]
    args = container["args"]
    graceful = float(args[args.index("--graceful-timeout") + 1])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful


def test_settings_come_from_the_configmap_and_are_real_settings(
    overlay: tuple[str, dict[str, Resource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    data = objects["ConfigMap"]["data"]
    (container,) = _pod(objects)["containers"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}}
    ]
    for key, value in data.items():
        assert key.startswith("LATENTSERVE_") and key[12:].lower() in Settings.model_fields
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.providers == (["cpu"] if name == "cpu" else ["cuda", "cpu"])
    assert settings.require_gpu is (name == "gpu")
    # the model repository is the volume, mounted where the settings look
    (volume,) = [v for v in _pod(objects)["volumes"] if v["name"] == "models"]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == objects["PersistentVolumeClaim"]["metadata"]["name"]
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert Path(mount["mountPath"]) == settings.model_repository
    # ONNX Runtime's threads fit the CPU limit (the container sees the node's cores)
    limit = float(container["resources"]["limits"]["cpu"])
    assert settings.intra_op_threads * settings.max_concurrent_batches <= limit


def test_only_the_gpu_overlay_asks_for_a_gpu(overlay: tuple[str, dict[str, Resource]]) -> None:
    name, objects = overlay
    (container,) = _pod(objects)["containers"]
    resources = container["resources"]
    if name == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
        assert container["image"] == "latentserve:cuda"
        assert _pod(objects)["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert "nvidia.com/gpu" not in json.dumps(objects)
        assert container["image"] == "latentserve:cpu"


def test_service_hpa_and_pdb_point_at_the_deployment(
    overlay: tuple[str, dict[str, Resource]],
) -> None:
    _, objects = overlay
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert all(c["resources"]["requests"].get("cpu") for c in _pod(objects)["containers"])


# -- KServe ------------------------------------------------------------------------------------

KSERVE = ROOT / "deploy/kserve/inferenceservice.yaml"


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the structural schema does not declare (the API server would prune them; here,
    like kubernetes-validate --strict, they are errors)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                problems += _unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                problems += _unknown_fields(item, extra, f"{path}.{key}")
            elif properties is not None and path not in ("", ".metadata"):
                problems.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += _unknown_fields(item, schema["items"], f"{path}[{i}]")
    return problems


@pytest.fixture(scope="module")
def kserve_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        (ROOT / "deploy/schemas/kserve-inferenceservice-v1beta1.json").read_text()
    )
    return schema


@pytest.fixture
def isvc() -> Resource:
    loaded: Resource = yaml.safe_load(KSERVE.read_text())
    return loaded


def test_the_inferenceservice_validates_against_kserves_schema(
    kserve_schema: dict[str, Any], isvc: Resource
) -> None:
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    validator = jsonschema.Draft7Validator(kserve_schema)
    assert [e.message for e in validator.iter_errors(isvc)] == []
    assert _unknown_fields(isvc, kserve_schema) == []
    # both checks bite: a wrong type, and a misspelt field
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    assert not validator.is_valid(isvc)
    isvc["spec"]["predictor"]["minReplicas"] = 1
    isvc["spec"]["predictor"]["containers"][0]["readinesProbe"] = {}
    assert _unknown_fields(isvc, kserve_schema) == [".spec.predictor.containers[0].readinesProbe"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_predictor_pod_is_a_valid_kubernetes_pod(isvc: Resource, version: str) -> None:
    predictor = isvc["spec"]["predictor"]
    kserve_only = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "latentserve-predictor"},
        "spec": {k: v for k, v in predictor.items() if k not in kserve_only},
    }
    kubernetes_validate.validate(pod, version, strict=True)


def test_the_predictor_runs_the_image_with_the_native_protocol(isvc: Resource) -> None:
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # what KServe treats as the predictor
    assert container["args"] == _image_cmd()
    assert container["ports"][0]["containerPort"] == 8000
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "PROTOCOL" not in env  # not v1/v2 until the Open Inference Protocol lands
    assert re.search(r"^\s*# - name: PROTOCOL\n\s*#\s+value: v2$", KSERVE.read_text(), re.M)
    assert env["STORAGE_URI"] == "pvc://latentserve-models"
    assert env["LATENTSERVE_MODEL_REPOSITORY"] == "/mnt/models"
    assert env["LATENTSERVE_REQUIRE_GPU"] == "true"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["terminationGracePeriodSeconds"] > 5 + 30
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
