"""The server's heap after startup: out of the garbage collector's way.

CPython's cyclic collector walks every tracked object of the generation it collects, and a full
(generation 2) collection walks them all. Once a server has started, nearly all of them are the
libraries' and models' (FastAPI's routes, pydantic's validators, numpy, ONNX Runtime's bindings,
the manifests): about 80,000 objects, 60 ms per full collection on the benchmark machine. The
event loop serves nobody meanwhile, so every request in flight waits: with 64 clients in flight
that was the p99 of a one-row request (86 -> 45 ms with the heap frozen,
docs/benchmarks.md#hot-path). These objects live until shutdown, so `gc.freeze()` (which
CPython's documentation suggests for servers) moves them to a permanent generation the
collector skips; what requests allocate is still collected as before.

Frozen objects are never collected, even when they become cyclic garbage. A model replaced by a
reload, or unloaded, would leak that way, so the repository calls `model_released` afterwards:
the heap is thawed, collected and frozen again (one full collection per reload). `thaw` at
shutdown leaves the process as it found it.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("latentserve")

_frozen = False


def freeze() -> int:
    """Collect once, then freeze what survives; returns how many objects are frozen."""
    global _frozen
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    _frozen = True
    count = gc.get_freeze_count()
    log.debug("froze %d objects in %.1f ms", count, (time.perf_counter() - t0) * 1e3)
    return count


def thaw() -> None:
    """Give the frozen objects back to the collector."""
    global _frozen
    if _frozen:
        gc.unfreeze()
        _frozen = False


def model_released() -> None:
    """A model was replaced or unloaded: collect what it left behind, then freeze again."""
    if _frozen:
        thaw()
        freeze()
