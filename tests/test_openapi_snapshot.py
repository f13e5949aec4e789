"""A snapshot of /openapi.json catches accidental API changes. After an intended change:
`UPDATE_SNAPSHOTS=1 python -m pytest tests/test_openapi_snapshot.py` and review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import AppClient

SNAPSHOT = Path(__file__).parent / "data" / "openapi.json"


async def test_openapi_matches_snapshot(client: AppClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert json.loads(SNAPSHOT.read_text()) == spec, (
        "the API changed; if intended, regenerate with UPDATE_SNAPSHOTS=1"
    )
