"""Just enough of kustomize to render deploy/k8s's overlays in the tests: `resources` (files and
folders with a kustomization.yaml), `images` (newName/newTag/digest) and `patches` of files
applied as strategic merge patches (lists of containers, volumes, env, ports and volume mounts
merge by their key; other lists are replaced; a null value deletes the key).

Why not the real one: neither kustomize nor kubectl installs from PyPI, and the CI machine
may not have them. Where `kubectl` is on PATH, tests/test_kubernetes.py checks that
`kubectl kustomize` renders the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

# the strategic merge keys of the lists these manifests patch (Kubernetes' patchMergeKey)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next(
                (i for i, b in enumerate(merged_list) if b.get(key) == item.get(key)), None
            )
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec)
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def _set_image(resource: Resource, images: list[dict[str, str]]) -> None:
    for container in _containers(resource):
        image = container.get("image", "")
        name = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
        for rule in images:
            if rule["name"] != name:
                continue
            new = rule.get("newName", name)
            if "digest" in rule:
                container["image"] = f"{new}@{rule['digest']}"
            else:
                tag = rule.get("newTag") or (image[len(name) + 1 :] if image != name else "")
                container["image"] = f"{new}:{tag}" if tag else new


def _key(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def render(directory: Path) -> list[Resource]:
    """The objects `kustomize build directory` would print (in resource order)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch_entry in kustomization.get("patches", []):
        for patch in yaml.safe_load_all((directory / patch_entry["path"]).read_text()):
            matches = [i for i, r in enumerate(resources) if _key(r) == _key(patch)]
            if len(matches) != 1:
                raise ValueError(f"patch {patch_entry['path']} matches {len(matches)} resources")
            resources[matches[0]] = strategic_merge(resources[matches[0]], patch)
    for resource in resources:
        _set_image(resource, kustomization.get("images", []))
    return resources
