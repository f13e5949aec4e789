"""Keeping the worker processes of one server on the same model versions.

`serve --workers N` starts N processes behind one port; a reload request reaches one of them.
That process announces the reload by writing a token into a directory the processes share, and
every process polls the directory and repeats reloads it has not seen, so all of them serve the
new version within one poll interval. Files, not sockets: nothing to configure, and a process
that starts later begins from the tokens already there instead of replaying them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from service.errors import LatentServeError
from service.runtime.repository import ModelRepository

log = logging.getLogger("latentserve.peers")

RESCAN = "__all__"  # a model name cannot start with "_", so this cannot collide


class ReloadSignals:
    def __init__(self, directory: Path, interval_s: float = 0.5) -> None:
        self.directory = directory
        self.interval_s = interval_s
        directory.mkdir(parents=True, exist_ok=True)
        self._seen: dict[str, str] = self._tokens()

    def _tokens(self) -> dict[str, str]:
        tokens = {}
        for path in self.directory.iterdir():
            if path.suffix == ".token":
                try:
                    tokens[path.stem] = path.read_text()
                except OSError:
                    continue  # being replaced right now; the next poll reads it
        return tokens

    def announce(self, target: str) -> None:
        """Tell the other processes to reload `target` (a model name, or RESCAN for all)."""
        token = f"{os.getpid()}-{time.time_ns()}"
        tmp = self.directory / f".{target}.{os.getpid()}.tmp"
        tmp.write_text(token)
        tmp.replace(self.directory / f"{target}.token")  # atomic: readers see old or new
        self._seen[target] = token

    async def follow(
        self, repo: ModelRepository, after_change: Callable[[], None] | None = None
    ) -> None:
        """Repeat the reloads other processes announce, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            for target, token in self._tokens().items():
                if self._seen.get(target) == token:
                    continue
                self._seen[target] = token
                try:
                    if target == RESCAN:
                        await repo.load_all()
                    else:
                        await repo.reload(target)
                    log.info("followed a reload of %s by another worker", target)
                except LatentServeError as exc:  # the old version keeps serving
                    log.error("could not follow the reload of %s: %s", target, exc.message)
                if after_change is not None:
                    after_change()
