"""The web page at /ui: plain HTML, CSS and JavaScript in `static/` (no build step, no CDN).

The page is a client like any other: it reads `GET /models` and calls the inference routes,
sending the API key a person types into it. It holds no rule about models or requests; what a
model can do and what a request may ask for are the runtime's to say (`service.runtime`), and the
page shows the API's answers, errors included. `service.api.pages` serves it.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_HTML = STATIC_DIR / "index.html"

__all__ = ["INDEX_HTML", "STATIC_DIR"]
