"""Figures as the tabs print them (percent, finite or None)."""

from __future__ import annotations

import math
from typing import Any


def pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}"


def finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def round_pct(v: Any) -> float | None:
    f = finite(v)
    return None if f is None else round(100 * f, 2)
