"""A tiny name -> entry registry, in the spirit of timm's ``register_model``.

Used for models, scorers, heads, object sources and backgrounds so that adding one is one
function plus one decorator line, and the CLI / app can list what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries; ``register`` works as a decorator or a plain call."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        # modules whose import registers the built-in entries; imported on first lookup so that
        # the registry's module never imports its implementations (no import cycles)
        self._builtins = builtins
        self._loaded = not builtins

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import importlib

            for mod in self._builtins:
                importlib.import_module(mod)

    def register(self, name: str, entry: T | None = None):
        if entry is not None:
            self._add(name, entry)
            return entry

        def deco(obj: T) -> T:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            from anomseg.errors import InputError

            raise InputError(f"unknown {self.kind} {name!r}; expected one of: {known}") from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())


Builder = Callable[..., object]
