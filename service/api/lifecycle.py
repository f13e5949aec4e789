"""Shutdown as load balancers and clients with kept-alive connections need it.

On SIGTERM uvicorn stops listening and closes idle connections at once; a client that sends a
request on a kept-alive connection at that moment reads a closed socket, and the request fails
although nothing was wrong with it. So the first SIGTERM starts a drain instead: for
`shutdown_drain_s` the server keeps serving, answers `Connection: close` on every response (each
client drops its connection after its next answer and opens a new one) and reports not-ready on
/readyz (load balancers stop sending); then it stops listening, gives requests already sent a
quarter of a second to arrive, and uvicorn's own graceful shutdown runs. A drain that
ended with every request answered exits with status 0 instead of re-raising the signal (143).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("latentserve")
_LAST_REQUESTS_S = 0.25


class Drain:
    """Started by SIGTERM while the app runs under uvicorn; a no-op elsewhere (tests)."""

    def __init__(self) -> None:
        self.draining = False
        self._server: Any = None  # the uvicorn.Server whose signal handler we wrap
        self._previous: Any = None

    def install(self, drain_s: float) -> None:
        import uvicorn

        current = signal.getsignal(signal.SIGTERM)
        server = getattr(current, "__self__", None)
        if not isinstance(server, uvicorn.Server) or not callable(current):
            return  # not served by uvicorn in this thread: nothing to wrap
        handler: Callable[[int, FrameType | None], Any] = current
        loop = asyncio.get_running_loop()
        self._server, self._previous = server, handler

        def stop_listening(sig: int) -> None:
            # New connections are refused (a client can retry those: it sent nothing); requests
            # already sent on open connections get a moment to be read before uvicorn closes
            # the connections it finds idle.
            for listener in getattr(server, "servers", []):
                listener.close()
            loop.call_later(_LAST_REQUESTS_S, handler, sig, None)

        def begin(sig: int) -> None:
            self.draining = True
            log.info("SIGTERM: draining for %.1f s before shutting down", drain_s)
            loop.call_later(drain_s, stop_listening, sig)

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.draining or drain_s <= 0:
                handler(sig, frame)  # a second signal: stop draining now
                return
            # Signal handlers run inside whatever task was current: a fresh context keeps that
            # request's id off the drain's log line.
            loop.call_soon_threadsafe(begin, sig, context=contextvars.Context())

        signal.signal(signal.SIGTERM, on_sigterm)

    def finished(self) -> None:
        """At lifespan shutdown: after a clean drain (every connection and task done), let
        the process exit 0 rather than re-raise the signal uvicorn captured."""
        server = self._server
        if server is None:
            return
        state = server.server_state
        if self.draining and not state.connections and not state.tasks:
            captured = getattr(server, "_captured_signals", None)
            if isinstance(captured, list):
                captured[:] = [s for s in captured if s != signal.SIGTERM]
