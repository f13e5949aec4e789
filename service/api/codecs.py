"""HTTP encodings: media types, JSON (orjson, numpy-native) and content negotiation.

Array and image conversion lives in `service.arrays` and `service.images` (no HTTP there).
"""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import NotAcceptable

NPY_MEDIA_TYPE = "application/x-npy"
PNG_MEDIA_TYPE = "image/png"
JSON_MEDIA_TYPE = "application/json"


def dumps_json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """Pick the response media type from an Accept header (quality values honoured)."""
    if not accept:
        return offered[0]
    best: tuple[float, int, str] | None = None
    for position, raw in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in raw.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in ("*/*", "application/*") or media == "":
            candidate = offered[0]
        elif media == "image/*" and PNG_MEDIA_TYPE in offered:
            candidate = PNG_MEDIA_TYPE
        elif media in offered:
            candidate = media
        else:
            continue
        key = (q, -position, candidate)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise NotAcceptable(f"cannot produce {accept!r}; this endpoint offers {', '.join(offered)}")
    return best[2]
