"""Learned heads as a scorer family: the one place a ``head:`` method string is read.

A method ``head:<suffix>`` names a learned anomaly head: ``head:3`` (version 3 of the model's
head, ``head:v3`` too) or ``head:PATH.safetensors`` (a head file). Which file a suffix means is
known only to whoever holds the store, so the caller injects it as ``lookup(suffix) -> HeadRef``;
``HeadScorers`` turns the file into an ``anomseg.scoring.ScorerSpec`` (loaded once per file
version) that every path scores with: ``anomseg eval``/``export``, the evaluate job, Compare.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomseg.errors import InputError
from anomseg.models.heads import head_spec, load_head

PREFIX = "head"
FILE_SUFFIX = ".safetensors"


def head_method(suffix: int | str) -> str:
    """The method string of a head: ``head_method(3) == "head:3"``."""
    return f"{PREFIX}:{suffix}"


def head_suffix(method: str) -> str | None:
    """What follows ``head:`` (stripped), or None when ``method`` is no head method."""
    prefix, sep, rest = method.strip().partition(":")
    return rest.strip() if sep and prefix.strip() == PREFIX else None


def is_head_method(method: str) -> bool:
    """Whether ``method`` names a learned head (``head:...``)."""
    return head_suffix(method) is not None


def head_version(method: str) -> int | None:
    """The version number of ``head:N`` / ``head:vN``; None for other methods and head files."""
    suffix = head_suffix(method)
    if suffix is None:
        return None
    digits = suffix[1:] if suffix[:1] in ("v", "V") else suffix
    return int(digits) if digits.isdigit() else None


def is_head_file(suffix: str) -> bool:
    """Whether a ``head:`` suffix names a head file rather than a version."""
    return suffix.endswith(FILE_SUFFIX)


def require_version(method: str) -> int:
    """The version of a ``head:N`` method; InputError naming the method otherwise."""
    version = head_version(method)
    if version is None:
        raise InputError(
            f"method {method!r}: expected head:N (a version number) or head:FILE{FILE_SUFFIX}"
        )
    return version


@dataclass(frozen=True)
class HeadRef:
    """Where a head method's file is, and what it must match."""

    path: Path
    kind: str | None = None  # the kind the store recorded (checked against the file)
    base: str | Path | None = None  # the model checkpoint an outlier-exposure head was tuned from
    model_sha256: str | None = None  # the model checkpoint the head must have been trained for
    owner: str = ""  # the registered model whose head it is (shown in the label)


HeadLookup = Callable[[str], HeadRef]


def file_lookup(base: str | Path | None = None, model_sha256: str | None = None) -> HeadLookup:
    """A lookup for ``head:FILE.safetensors`` suffixes only (no store)."""

    def lookup(suffix: str) -> HeadRef:
        if not is_head_file(suffix):
            raise InputError(
                f"{head_method(suffix)}: no store to look versions up in; "
                f"expected head:FILE{FILE_SUFFIX}"
            )
        return HeadRef(Path(suffix), base=base, model_sha256=model_sha256)

    return lookup


class HeadScorers:
    """Resolves ``head:`` methods to ScorerSpecs through ``lookup``; thread-safe.

    Loaded heads are kept per (file, modification time, size), at most ``max_items``: a version
    re-trained under the same path is read again. Without a ``lookup`` only ``spec_for`` (the
    caller already found the file) is available.
    """

    def __init__(self, lookup: HeadLookup | None = None, max_items: int = 16) -> None:
        self.lookup = lookup
        self.max_items = max_items
        self._specs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def spec(self, method: str) -> Any:
        """The ScorerSpec of one ``head:`` method, named as written (``head:3``)."""
        suffix = head_suffix(method)
        if suffix is None:
            raise InputError(f"method {method!r} is not a learned head; expected head:<version>")
        if not suffix:
            raise InputError(f"method {method!r}: expected head:N or head:FILE{FILE_SUFFIX}")
        if not is_head_file(suffix):
            require_version(method)
        if self.lookup is None:
            raise InputError(f"{method}: no store to look heads up in")
        return self.spec_for(head_method(suffix), self.lookup(suffix))

    def spec_for(self, name: str, ref: HeadRef) -> Any:
        """The ScorerSpec called ``name`` of the head file ``ref`` points at (cached)."""
        path = Path(ref.path)
        if not path.is_file():
            raise InputError(f"{name}: head checkpoint {path} not found")
        st = path.stat()
        key = (name, str(path.resolve()), st.st_mtime_ns, st.st_size, ref.kind, str(ref.base),
               ref.model_sha256, ref.owner)  # fmt: skip
        with self._lock:
            if key in self._specs:
                self._specs.move_to_end(key)
                return self._specs[key]
        spec = _load_spec(name, ref, path)
        with self._lock:
            self._specs[key] = spec
            while len(self._specs) > self.max_items:
                self._specs.popitem(last=False)
        return spec

    def specs(self, methods: Iterable[str]) -> dict[str, Any]:
        """``{name: ScorerSpec}`` for the ``head:`` methods among ``methods`` (others skipped)."""
        return {head_method(head_suffix(m)): self.spec(m) for m in methods if is_head_method(m)}


def _load_spec(name: str, ref: HeadRef, path: Path) -> Any:
    head, meta = load_head(path, kind=ref.kind, base=ref.base)
    trained_for = meta.get("model_sha256")
    if ref.model_sha256 is not None and trained_for not in (None, ref.model_sha256):
        raise InputError(
            f"{name} was trained for the checkpoint with sha256 {str(trained_for)[:12]}…, "
            f"not the model given ({ref.model_sha256[:12]}…)"
        )
    label = f"{name} ({meta['kind']}{', ' + ref.owner if ref.owner else ''})"
    return head_spec(name, head, label=label)


def resolve_head_methods(methods: Iterable[str], lookup: HeadLookup) -> dict[str, Any]:
    """One-off ``HeadScorers(lookup).specs(methods)``."""
    return HeadScorers(lookup).specs(methods)
