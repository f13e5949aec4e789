"""Refresh the vendored schemas from the upstream files (the tests never download):

    python deploy/schemas/vendor.py compose PATH/TO/compose-spec/schema/compose-spec.json
    python deploy/schemas/vendor.py kserve \
        PATH/TO/kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml

then update the commits in deploy/schemas/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def _strip_descriptions(node: Any) -> Any:
    """Descriptions are two thirds of KServe's CRD and no part of validation."""
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def kserve(crd_file: Path) -> None:
    crd = yaml.safe_load(crd_file.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = _strip_descriptions(version["schema"]["openAPIV3Schema"])
    out = HERE / "kserve-inferenceservice-v1beta1.json"
    out.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")


def compose(schema_file: Path) -> None:
    (HERE / "compose-spec.json").write_text(schema_file.read_text())


if __name__ == "__main__":
    {"kserve": kserve, "compose": compose}[sys.argv[1]](Path(sys.argv[2]))
