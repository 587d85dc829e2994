"""Pure rendering helpers for the dashboard: heat maps, overlays, outlines and Plotly figures.

Everything here is a function of numpy arrays (or data frames) to numpy arrays (or figures): no
gradio, no database, no model. That keeps slider moves cheap (re-rendering only) and testable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from anomseg.registry import Registry

# --------------------------------------------------------------------------- colour maps

COLORMAPS: Registry[np.ndarray] = Registry("colour map")


def _lut_from_hex(stops: Sequence[str], n: int = 256) -> np.ndarray:
    """A (n, 3) uint8 look-up table linearly interpolated between hex colour stops."""
    rgb = np.array([[int(s[i : i + 2], 16) for i in (1, 3, 5)] for s in stops], dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, xs, rgb[:, c]) for c in range(3)], axis=1)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


def _register_plotly_maps() -> None:
    # Plotly ships the perceptual maps as hex stops; reuse them so figures and overlays match.
    import plotly.colors as pc

    for name, stops in (
        ("inferno", pc.sequential.Inferno),
        ("viridis", pc.sequential.Viridis),
        ("turbo", pc.sequential.Turbo),
        ("magma", pc.sequential.Magma),
    ):
        COLORMAPS.register(name, _lut_from_hex(stops))


_register_plotly_maps()


def normalise(score: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map scores to [0, 1] with ``vmin -> 0`` and ``vmax -> 1`` (clipped; NaN -> 0)."""
    span = float(vmax) - float(vmin)
    if not np.isfinite(span) or span <= 0:
        span = 1e-12
    out = (np.asarray(score, dtype=np.float32) - np.float32(vmin)) / np.float32(span)
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0)


def colorize(score: np.ndarray, vmin: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """(H, W) scores -> (H, W, 3) uint8 through a colour map over [vmin, vmax]."""
    lut = COLORMAPS.get(cmap)
    idx = np.rint(normalise(score, vmin, vmax) * (len(lut) - 1)).astype(np.intp)
    return lut[idx]


# Colour range of a heat map: from the image's median score to its 99.5th percentile. Anomalies
# are a small share of a road scene, so everything at or below the median is left uncoloured and
# the colour ramp is spent on the high tail, where the anomalies are.
HEAT_RANGE_PCT = (50.0, 99.5)


def robust_range(
    score: np.ndarray,
    lo_pct: float = 1.0,
    hi_pct: float = 99.0,
    valid: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile range of the finite scores (only where ``valid``, e.g. not ignored), so a few
    outliers do not wash out the map."""
    s = np.asarray(score, dtype=np.float32)
    if valid is not None and np.asarray(valid).shape == s.shape and np.asarray(valid).any():
        s = s[np.asarray(valid, dtype=bool)]
    s = s[np.isfinite(s)]
    if s.size == 0:
        return 0.0, 1.0
    # Sub-sample big maps: percentiles of 1/16 of the pixels are indistinguishable on screen.
    if s.size > 65536:
        s = s[:: s.size // 65536]
    lo, hi = np.percentile(s, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1e-6
    return float(lo), float(hi)


def color_ranges(
    maps: Mapping[str, np.ndarray], shared: bool, lo_pct: float = 1.0, hi_pct: float = 99.0
) -> dict[str, tuple[float, float]]:
    """Colour range per panel: each map's own robust range, or one range that covers all maps."""
    own = {k: robust_range(v, lo_pct, hi_pct) for k, v in maps.items()}
    if not shared or not own:
        return own
    return share_ranges(own, {k: "" for k in own})


def share_ranges(
    ranges: Mapping[str, tuple[float, float]], groups: Mapping[str, str]
) -> dict[str, tuple[float, float]]:
    """One range per group covering its members' ranges (methods in the same units share one;
    a map in other units keeps its own group, so it is never squashed onto a foreign scale)."""
    span: dict[str, tuple[float, float]] = {}
    for k, (lo, hi) in ranges.items():
        g = groups.get(k, k)
        a, b = span.get(g, (lo, hi))
        span[g] = (min(a, lo), max(b, hi))
    return {k: span[groups.get(k, k)] for k in ranges}


# --------------------------------------------------------------------------- geometry


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``size`` = (H, W), bilinear."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map (any integer or bool dtype) to ``size`` = (H, W), nearest neighbour."""
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    src = np.asarray(labels)
    # Index arithmetic instead of PIL so every dtype (bool, uint8, int64) keeps its values.
    rows = np.minimum((np.arange(h) + 0.5) * src.shape[0] / h, src.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(w) + 0.5) * src.shape[1] / w, src.shape[1] - 1).astype(np.intp)
    return src[rows[:, None], cols[None, :]]


def resize_map(score: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float (H, W) map to ``size`` = (H, W), bilinear."""
    h, w = size
    if score.shape == (h, w):
        return score
    img = Image.fromarray(np.asarray(score, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32)


def fit_size(size: tuple[int, int], max_side: int) -> tuple[tuple[int, int], float]:
    """The (H, W) that fits ``size`` within ``max_side`` keeping aspect, and the scale used."""
    h, w = size
    s = min(1.0, max_side / max(h, w))
    return (max(1, round(h * s)), max(1, round(w * s))), s


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean boundary of a boolean mask: pixels of the mask with a 4-neighbour outside it."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1, mode="constant", constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~inner


# --------------------------------------------------------------------------- panels

GT_COLOR = (0, 255, 128)
THRESHOLD_COLOR = (0, 200, 255)
FLAG_COLORS = {"fp": (255, 64, 64), "fn": (64, 160, 255), "ignore": (200, 200, 200)}


IGNORE_DIM = 0.45  # ignore (not evaluated) pixels are drawn darker and never coloured
DEFAULT_OPACITY = 0.9


@dataclass(frozen=True)
class PanelStyle:
    """How one heat-map panel is drawn (everything a slider controls).

    The heat colour's opacity grows with the score (0 at ``vmin``, ``opacity`` at ``vmax``) over
    a grey copy of the image: low scores leave the street scene readable, high scores stand out
    in colour. With a threshold, the region above it is coloured at ``opacity`` and outlined.
    """

    opacity: float = DEFAULT_OPACITY
    vmin: float = 0.0
    vmax: float = 1.0
    threshold: float | None = None
    cmap: str = "inferno"
    show_gt: bool = True
    outline_width: int = 2
    grey_background: bool = True


def blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """``base * (1 - alpha) + top * alpha`` in uint8; alpha a scalar or an (H, W) map."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    out = base.astype(np.float32) * (1.0 - a) + top.astype(np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def paint(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``img`` with ``mask`` pixels set to ``color``."""
    out = img.copy()
    out[np.asarray(mask, dtype=bool)] = color
    return out


def render_panel(
    rgb: np.ndarray,
    score: np.ndarray,
    style: PanelStyle,
    gt: np.ndarray | None = None,
) -> np.ndarray:
    """One heat-map panel: the score map over the image, above-threshold region, GT outline.

    ``rgb`` and ``score`` must have the same (H, W); ``gt`` uses 0 normal, 1 anomaly, 255 ignore.
    With a threshold the heat map is shown only where ``score >= threshold`` and that region is
    outlined, so the panel reads as "what this method would flag at this threshold".
    """
    if rgb.shape[:2] != score.shape:
        raise ValueError(f"image {rgb.shape[:2]} and score map {score.shape} differ in size")
    base = greyscale(rgb) if style.grey_background else rgb
    heat = colorize(score, style.vmin, style.vmax, style.cmap)
    opacity = float(np.clip(style.opacity, 0.0, 1.0))
    if style.threshold is None:
        out = blend(base, heat, normalise(score, style.vmin, style.vmax) * opacity)
    else:
        above = score >= style.threshold
        out = blend(base, heat, above.astype(np.float32) * opacity)
        out = paint(out, outline(above, 1), THRESHOLD_COLOR)
    if gt is not None and style.show_gt:
        g = resize_labels(gt, score.shape)
        ignore = g == 255
        if ignore.any():
            dim = np.rint(base[ignore].astype(np.float32) * IGNORE_DIM).astype(np.uint8)
            out[ignore] = dim
        out = paint(out, outline(g == 1, style.outline_width), GT_COLOR)
    return out


def greyscale(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 luma copy (ITU-R 601 weights), so the heat colours are the only colour."""
    luma = np.asarray(rgb, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    g = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def flag_overlay(
    rgb: np.ndarray, masks: Sequence[tuple[str, np.ndarray]], alpha: float = 0.45
) -> np.ndarray:
    """Stored flags drawn over an image: each (kind, mask) tinted in its kind's colour."""
    out = rgb.copy()
    for kind, mask in masks:
        m = resize_labels(np.asarray(mask, dtype=bool), rgb.shape[:2])
        color = np.array(FLAG_COLORS.get(kind, (255, 255, 0)), dtype=np.uint8)
        tinted = blend(out, np.broadcast_to(color, out.shape), alpha)
        out = np.where(m[..., None], tinted, out)
        out = paint(out, outline(m, 2), tuple(int(c) for c in color))
    return out


def colorbar_stops(
    cmap: str = "inferno", opacity: float = DEFAULT_OPACITY, n: int = 11, grey: int = 128
) -> list[tuple[int, int, int]]:
    """``n`` colours of the panel ramp from ``vmin`` to ``vmax`` as drawn over a mid-grey pixel
    (heat opacity growing with the score, exactly as ``render_panel`` blends it)."""
    lut = COLORMAPS.get(cmap)
    out = []
    for t in np.linspace(0.0, 1.0, n):
        c = lut[int(round(t * (len(lut) - 1)))].astype(np.float32)
        a = float(np.clip(opacity, 0, 1)) * t
        out.append(tuple(int(round(grey * (1 - a) + v * a)) for v in c))
    return out


# --------------------------------------------------------------------------- plots


def _empty_figure(message: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(template="plotly_white", height=320, margin=dict(l=20, r=20, t=40, b=20))
    return fig


def metric_bars(
    df,
    metric: str = "AuPRC",
    group: str = "method",
    color: str = "model",
    facet: str | None = "dataset",
):
    """Grouped bar chart of one metric from a leaderboard frame (one facet per dataset)."""
    import plotly.express as px

    if df is None or len(df) == 0 or metric not in df.columns:
        return _empty_figure("no results yet: run an evaluation")
    facet_col = facet if facet and facet in df.columns and df[facet].nunique() > 1 else None
    fig = px.bar(
        df,
        x=group,
        y=metric,
        color=color if color in df.columns else None,
        barmode="group",
        facet_col=facet_col,
        template="plotly_white",
        text_auto=".1f",
    )
    fig.update_layout(height=380, margin=dict(l=40, r=20, t=50, b=40), legend_title_text=color)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return fig


def pr_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str = "Precision-recall"
):
    """Line plot of precision against recall, one trace per (label, recall, precision)."""
    import plotly.graph_objects as go

    if not curves:
        return _empty_figure("select a leaderboard row to see its precision-recall curves")
    fig = go.Figure()
    for label, recall, precision in curves:
        fig.add_trace(
            go.Scatter(x=np.asarray(recall), y=np.asarray(precision), mode="lines", name=label)
        )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=380,
        xaxis_title="recall",
        yaxis_title="precision",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        margin=dict(l=50, r=20, t=50, b=40),
    )
    return fig


def head_history_plot(df, metric: str = "AuPRC"):
    """Line plot of a metric over head versions, one line per eval dataset."""
    import plotly.express as px

    if df is None or len(df) == 0 or metric not in df.columns:
        return _empty_figure("no head versions yet: press Retrain")
    fig = px.line(
        df,
        x="version",
        y=metric,
        color="dataset" if "dataset" in df.columns else None,
        markers=True,
        template="plotly_white",
    )
    fig.update_xaxes(dtick=1, title="head version")
    fig.update_layout(height=320, margin=dict(l=40, r=20, t=30, b=40))
    return fig
