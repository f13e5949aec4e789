"""`python -m service.healthcheck [URL]`: exit 0 when URL (default: the image's `/readyz`)
answers 200 within the timeout, 1 otherwise.

The images' HEALTHCHECK runs this instead of curl (one tool fewer in the image), standard
library only so that it starts in tens of milliseconds. Readiness, not liveness: a container
whose models failed to load reports unhealthy instead of healthy-but-useless.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/readyz"
TIMEOUT_S = 2.0


def check(url: str = DEFAULT_URL, timeout_s: float = TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):  # refused, timed out, or an HTTP error status
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return 0 if check(args[0] if args else DEFAULT_URL) else 1


if __name__ == "__main__":
    raise SystemExit(main())
