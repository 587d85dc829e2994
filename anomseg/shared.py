"""Where the optional real data lives (``../shared`` next to the repository, or $ANOMSEG_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """The shared real-data folder if present, else None (the product runs without it)."""
    env = os.environ.get("ANOMSEG_SHARED")
    cand = Path(env) if env else REPO_ROOT.parent / "shared"
    return cand if cand.is_dir() else None
