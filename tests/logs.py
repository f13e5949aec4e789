"""Reading a server's JSON log lines in tests."""

from __future__ import annotations

import json
from typing import Any


def records(log: str) -> list[dict[str, Any]]:
    """Every JSON line of `log` (other lines, e.g. uvicorn's own, are skipped)."""
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def messages(log: str) -> list[str]:
    return [str(r.get("message")) for r in records(log)]
