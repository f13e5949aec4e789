"""The model repository: every folder under the root that holds a `model.json`.

Loading verifies each manifest and checksum; a model that fails is recorded with its error and
skipped while the others serve. Reloading builds the new version completely before swapping it in,
so requests in flight finish on the old one and a broken version never replaces a working one.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from service import heap
from service.errors import ModelLoadError, ModelNotFound, ModelUnavailable, ProviderUnavailable
from service.manifest import MANIFEST_FILENAME, Manifest
from service.runtime.batching import BatchingConfig, BatchObserver
from service.runtime.model import GenerativeModel
from service.runtime.sessions import ProviderState, SessionConfig

log = logging.getLogger("latentserve.runtime")


@dataclass
class LoadFailure:
    name: str
    folder: Path
    error: str


LoadStatus = Literal["loaded", "failed", "kept", "unloaded"]


@dataclass
class LoadOutcome:
    """What one (re)load did to one model: `kept` means the new version failed and the loaded
    one keeps serving."""

    name: str
    status: LoadStatus
    version: str | None = None
    error: str | None = None


class ModelRepository:
    def __init__(
        self,
        root: Path,
        session_cfg: SessionConfig,
        batching: BatchingConfig,
        executor: Executor,
        observer: BatchObserver | None = None,
        enabled: frozenset[str] | None = None,
    ) -> None:
        self.root = root
        self._session_cfg = session_cfg
        self._batching = batching
        self._executor = executor
        self._observer = observer
        self._enabled = enabled
        # What session starts learnt (a GPU that did not start) holds for this repository's
        # loads and reloads only: another app in the same process starts clean.
        self.provider_state = ProviderState()
        self._models: dict[str, GenerativeModel] = {}
        self._failures: dict[str, LoadFailure] = {}
        self._lock = asyncio.Lock()

    # -- queries -------------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, GenerativeModel]:
        return dict(self._models)

    @property
    def failures(self) -> dict[str, LoadFailure]:
        return dict(self._failures)

    def get(self, name: str, field: str = "model") -> GenerativeModel:
        model = self._models.get(name)
        if model is not None:
            return model
        if name in self._failures:
            raise ModelUnavailable(f"model {name!r} failed to load: {self._failures[name].error}")
        known = ", ".join(sorted(self._models)) or "none"
        raise ModelNotFound(f"no model named {name!r}; loaded models: {known}", field=field)

    @property
    def ready(self) -> bool:
        """True when at least one model serves and every enabled model loaded."""
        if not self._models:
            return False
        if self._enabled is not None:
            return self._enabled <= set(self._models)
        return not self._failures

    # -- loading -------------------------------------------------------------------------------
    def discover(self) -> dict[str, Path]:
        """Model folders by folder name (the manifest's `name` must match it)."""
        if not self.root.is_dir():
            log.error("model repository %s does not exist", self.root)
            return {}
        found = {p.parent.name: p.parent for p in sorted(self.root.glob(f"*/{MANIFEST_FILENAME}"))}
        if self._enabled is not None:
            found = {k: v for k, v in found.items() if k in self._enabled}
        return found

    def _load_folder(self, name: str, folder: Path) -> GenerativeModel:
        try:
            manifest = Manifest.load(folder)
        except ValidationError as exc:
            raise ModelLoadError(f"invalid {MANIFEST_FILENAME}: {exc}") from exc
        except OSError as exc:  # its message would show the server's path
            reason = exc.strerror or type(exc).__name__
            raise ModelLoadError(f"cannot read {name}/{MANIFEST_FILENAME}: {reason}") from exc
        except ValueError as exc:
            raise ModelLoadError(f"cannot read {name}/{MANIFEST_FILENAME}: {exc}") from exc
        if manifest.name != name:
            raise ModelLoadError(f"manifest name {manifest.name!r} differs from folder {name!r}")
        return GenerativeModel.load(
            folder,
            self._session_cfg,
            self._batching,
            self._executor,
            self._observer,
            manifest,
            self.provider_state,
        )

    async def load_all(self) -> list[LoadOutcome]:
        """Load every model folder (again), unload models whose folder is gone; one outcome per
        model, so a caller can tell a partial failure from success."""
        outcomes: list[LoadOutcome] = []
        async with self._lock:
            folders = self.discover()
            for name in sorted((self._enabled or frozenset()) - set(folders)):
                error = f"enabled, but the repository has no folder {name}/ with a model.json"
                self._failures[name] = LoadFailure(name, self.root / name, error)
                log.error("model %s is enabled but has no folder in the repository", name)
                outcomes.append(LoadOutcome(name, "failed", error=error))
            for name, folder in folders.items():
                try:
                    await self._load_one(name, folder)
                except ModelLoadError as exc:  # a loaded model's new version failed: it stays
                    version = self._models[name].manifest.version
                    outcomes.append(LoadOutcome(name, "kept", version, exc.message))
                    continue
                if name in self._failures:
                    outcomes.append(LoadOutcome(name, "failed", error=self._failures[name].error))
                else:
                    outcomes.append(LoadOutcome(name, "loaded", self._models[name].version))
            for name in set(self._models) - set(folders):  # removed from disk
                old = self._models.pop(name)
                await old.close()
                outcomes.append(LoadOutcome(name, "unloaded", old.version))
                del old
                heap.model_released()
                log.info("model %s unloaded: its folder is gone", name)
        return sorted(outcomes, key=lambda o: o.name)

    async def reload(self, name: str) -> GenerativeModel:
        async with self._lock:
            folder = self.discover().get(name)
            if folder is None:
                raise ModelNotFound(
                    f"the repository has no model folder named {name!r}", field="name"
                )
            await self._load_one(name, folder)
            if name in self._failures:  # it had never loaded and still does not
                raise ModelLoadError(f"model {name!r} failed to load: {self._failures[name].error}")
            return self.get(name)

    async def _load_one(self, name: str, folder: Path) -> None:
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._executor, self._load_folder, name, folder)
        except ProviderUnavailable:
            raise
        except ModelLoadError as exc:
            self._record_failure(name, folder, exc.message)
            return
        except Exception as exc:  # a broken file must not stop the other models
            log.exception("model %s: unexpected error while loading", name)
            reason = str(exc).replace(str(folder), name).replace(str(self.root), "<repository>")
            self._record_failure(name, folder, f"{type(exc).__name__}: {reason}")
            return
        old = self._models.get(name)
        self._models[name] = model  # atomic swap: new requests see the new version
        self._failures.pop(name, None)
        log.info(
            "model %s version %s loaded on %s",
            name,
            model.manifest.version,
            model.provider,
            extra={"model": name},
        )
        if old is not None:
            await old.close()  # drains what was queued on the old version
            del old
            heap.model_released()

    def _record_failure(self, name: str, folder: Path, error: str) -> None:
        if name in self._models:
            log.error(
                "reload of %s failed, the loaded version keeps serving: %s",
                name,
                error,
                extra={"model": name},
            )
            raise ModelLoadError(f"reload of {name!r} failed: {error}")
        self._failures[name] = LoadFailure(name, folder, error)
        log.error("model %s failed to load and is skipped: %s", name, error, extra={"model": name})

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self._models.values()))
