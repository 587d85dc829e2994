"""A thread-safe LRU bounded by entry count and/or total bytes.

One implementation for every in-process cache (predictions, scored maps, loaded heads, renders):
caches here are performance only, never state; the store holds the state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class LRU:
    """A thread-safe LRU bounded by entry count and (optionally) by total bytes."""

    def __init__(
        self,
        max_items: int = 64,
        max_bytes: int | None = None,
        sizeof: Callable[[Any], int] | None = None,
    ) -> None:
        self.max_items = int(max_items)
        self.max_bytes = max_bytes
        self._sizeof = sizeof or (lambda v: 0)
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def get(self, key: Any) -> Any:
        """The value (marked most recently used), or None."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Any, value: Any) -> None:
        """Store a value, evicting least recently used entries beyond the bounds."""
        size = int(self._sizeof(value))
        if self.max_bytes is not None and size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._items[key] = (value, size)
            self.nbytes += size
            self._evict()

    def resize(self, key: Any) -> None:
        """Re-measure an entry whose value grew or shrank in place, evicting beyond the bounds
        (a key no longer held is ignored)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return
            size = int(self._sizeof(entry[0]))
            self.nbytes += size - entry[1]
            self._items[key] = (entry[0], size)
            self._evict()

    def _evict(self) -> None:
        while len(self._items) > self.max_items or (
            self.max_bytes is not None and self.nbytes > self.max_bytes
        ):
            _, (_, s) = self._items.popitem(last=False)
            self.nbytes -= s

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def info(self) -> dict[str, int]:
        """Entries, bytes held, byte limit, hits and misses."""
        return {
            "entries": len(self._items),
            "bytes": self.nbytes,
            "max_bytes": -1 if self.max_bytes is None else int(self.max_bytes),
            "hits": self.hits,
            "misses": self.misses,
        }
