"""The one reader of the ``ANOMSEG_*`` environment variables; every other module asks here.

Each function reads the environment at call time (not at import), so a test or a command that
sets a variable before calling sees it.

* ``ANOMSEG_WORKSPACE``: the workspace folder (store, heads, caches); default ``./workspace``.
* ``ANOMSEG_DB_URL``: a database URL used instead of the workspace's SQLite file.
* ``ANOMSEG_SHARED``: the real-data folder; default ``../shared`` next to the repository.
* ``ANOMSEG_MAX_PIXELS``: the decoded-image pixel limit; default 64 MP.
* ``ANOMSEG_PREDICTION_CACHE_MB`` / ``ANOMSEG_MAP_CACHE_MB``: the app's byte budgets for cached
  model outputs (one budget shared by every loaded model) and scored maps; defaults 512 / 384.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomseg.errors import InputError

WORKSPACE_ENV = "ANOMSEG_WORKSPACE"
DB_URL_ENV = "ANOMSEG_DB_URL"
SHARED_ENV = "ANOMSEG_SHARED"
MAX_PIXELS_ENV = "ANOMSEG_MAX_PIXELS"
PREDICTION_CACHE_ENV = "ANOMSEG_PREDICTION_CACHE_MB"
MAP_CACHE_ENV = "ANOMSEG_MAP_CACHE_MB"
# a real ERFNet prediction at 512x1024 is 40 MB of logits (+ up to 12 MB of scoring memo): the
# default keeps ~10 of them, enough to step back and forth in Compare without a new forward
DEFAULT_PREDICTION_CACHE_MB = 512
DEFAULT_MAP_CACHE_MB = 384

DEFAULT_WORKSPACE = "workspace"
DEFAULT_MAX_PIXELS = 64_000_000
REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str) -> str | None:
    """The variable's value, None when unset or blank (a blank value means "use the default")."""
    value = os.environ.get(name)
    return value if value and value.strip() else None


def workspace_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` if given, else ``$ANOMSEG_WORKSPACE``, else ``./workspace`` (not resolved)."""
    if explicit:
        return Path(explicit)
    return Path(_env(WORKSPACE_ENV) or DEFAULT_WORKSPACE)


def db_url() -> str | None:
    """``$ANOMSEG_DB_URL`` or None."""
    return _env(DB_URL_ENV)


def shared_candidate() -> Path:
    """Where the real-data folder would be: ``$ANOMSEG_SHARED`` or ``../shared`` by the repo."""
    env = _env(SHARED_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared"


def max_pixels_env() -> int | None:
    """``$ANOMSEG_MAX_PIXELS`` as a positive int, None when unset; InputError when malformed."""
    env = os.environ.get(MAX_PIXELS_ENV)
    if env is None or env.strip() == "":
        return None
    try:
        value = int(env)
    except ValueError:
        raise InputError(
            f"${MAX_PIXELS_ENV}={env!r} is not an integer; expected a pixel count such as 64000000"
        ) from None
    if value <= 0:
        raise InputError(f"${MAX_PIXELS_ENV}={env!r}; expected a positive pixel count")
    return value


def _megabytes(name: str, default_mb: int) -> int:
    """``$name`` (whole MB, 0 = cache nothing) in bytes, else ``default_mb``; InputError when
    malformed."""
    env = _env(name)
    if env is None:
        return default_mb << 20
    try:
        value = int(env)
    except ValueError:
        raise InputError(
            f"${name}={env!r} is not an integer; expected megabytes such as 512"
        ) from None
    if value < 0:
        raise InputError(f"${name}={env!r}; expected megabytes >= 0")
    return value << 20


def prediction_cache_bytes() -> int:
    """The app's budget for cached predictions, shared by all its loaded models (bytes)."""
    return _megabytes(PREDICTION_CACHE_ENV, DEFAULT_PREDICTION_CACHE_MB)


def map_cache_bytes() -> int:
    """The app's budget for scored maps (bytes)."""
    return _megabytes(MAP_CACHE_ENV, DEFAULT_MAP_CACHE_MB)
