"""The API-key check every front door shares (REST's `Authorization` header, gRPC's
`authorization` metadata), so one key guards every protocol the same way."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

API_KEY_HINT = "missing or wrong API key: send 'Authorization: Bearer <key>'"


def api_key_accepted(expected: SecretStr | None, authorization: str | None) -> bool:
    """True when no key is configured, or `authorization` is `Bearer <the key>` (compared in
    constant time, so the answer's timing tells nothing about the key)."""
    if expected is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    key = expected.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)
