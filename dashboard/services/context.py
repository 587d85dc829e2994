"""What the dashboard's services share: the workspace, its store, the byte-bounded map cache,
the per-image figures cache and one lock per model."""

from __future__ import annotations

import threading
from typing import Any

from anomseg import settings
from anomseg.cache import LRU

DEFAULT_MAP_CACHE_BYTES = settings.DEFAULT_MAP_CACHE_MB << 20


def _map_bytes(entry: Any) -> int:
    arr = entry[0] if isinstance(entry, tuple) else entry
    return int(getattr(arr, "nbytes", 0)) + 256


class MapCache(LRU):
    """Scored maps keyed by (model key, image hash, method spec), bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAP_CACHE_BYTES) -> None:
        super().__init__(max_items=1 << 16, max_bytes=max_bytes, sizeof=_map_bytes)


class ServiceContext:
    """The workspace (``Workspace`` of ``workbench.workspace``) and the caches the services share."""

    def __init__(self, workspace: Any, map_cache_bytes: int | None = None) -> None:
        self.ws = workspace
        self.store = workspace.store
        # scored maps and their grid copies: Compare, Flag and Leaderboard draw the same maps;
        # the budget is anomseg.settings' (ANOMSEG_MAP_CACHE_MB) unless given
        budget = settings.map_cache_bytes() if map_cache_bytes is None else map_cache_bytes
        self.maps = MapCache(budget)
        # colour ranges and per-image AuPRC / FPR95 of those maps
        self.metrics = LRU(max_items=4096)
        self._model_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def lock_for(self, model: str) -> threading.Lock:
        """One lock per model: one forward per (model, image) when two sessions ask at once."""
        with self._locks_guard:
            return self._model_locks.setdefault(model, threading.Lock())
