"""Where the optional real data lives (``../shared`` next to the repository, or $ANOMSEG_SHARED)."""

from __future__ import annotations

from pathlib import Path

from anomseg.settings import REPO_ROOT, shared_candidate

__all__ = ["REPO_ROOT", "shared_dir"]


def shared_dir() -> Path | None:
    """The shared real-data folder if present, else None (the product runs without it)."""
    cand = shared_candidate()
    return cand if cand.is_dir() else None
