"""Atomic file writes: the one helper every writer of a file others may read goes through.

A file is written to a temporary name in the same folder (``.<name>.<random>.tmp``; same folder
so that ``os.replace`` is a rename on one file system), flushed to disk, then renamed over the
target. A reader sees the old file or the new one, never half of one; a failure mid-write leaves
the old file and no temporary behind. A killed process can leave a temporary: ``TMP_GLOB``
matches them for clean-ups.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"
TMP_GLOB = f".*{TMP_SUFFIX}"
# mkstemp-style 0600 would make shared checkpoints and results unreadable to other users
FILE_MODE = 0o644

Payload = bytes | str | Callable[[Path], object]


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (unique across processes and threads)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_paths(*paths: str | os.PathLike, durable: bool = True) -> Iterator[list[Path]]:
    """Yield one temporary path per target; when the block succeeds each is renamed over its target.

    Several targets (a checkpoint and its JSON sidecar) are all written before any is replaced, so
    a failure in any write replaces none. ``durable`` fsyncs each file before the rename (off for
    caches that are rebuilt when lost, where the flush costs more than it saves).
    """
    targets = [Path(p) for p in paths]
    tmps = [temp_path(p) for p in targets]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmps
        for tmp in tmps:
            if not tmp.exists():
                raise FileNotFoundError(f"atomic write of {tmp.name}: nothing was written")
            os.chmod(tmp, FILE_MODE)
            if durable:
                _fsync(tmp)
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: Payload, durable: bool = True) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or ``write(tmp_path)``) to ``path`` atomically."""
    with atomic_paths(path, durable=durable) as (tmp,):
        if isinstance(data, bytes | bytearray | memoryview):
            tmp.write_bytes(bytes(data))
        elif isinstance(data, str):
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(data)
        else:
            data(tmp)
    return Path(path)
