"""The Compare tab's method panels as one HTML block (pure: panels in, HTML text out).

A gallery widget crops its items to square cells, scrolls inside a fixed-height box and cuts
captions with "…"; a researcher comparing methods needs every panel whole, at the image's own
aspect ratio, with its figures and a colour bar in the method's units. So each panel is a
``<figure>``: the rendered map (inline JPEG), a colour bar (the exact ramp ``render_panel``
draws, over grey) with its end values and unit, and the full caption. A click on a panel
reports ``select`` with the panel's index and method name (see ``PANELS_JS``).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dashboard import render

# js_on_load of the gr.HTML: a click on a figure selects that method for the full-size view
PANELS_JS = """
if (!element.dataset.anomsegWired) {  // once per element: a re-render must not add listeners
  element.dataset.anomsegWired = '1';
  element.addEventListener('click', (e) => {
    const f = e.target.closest('[data-method]');
    if (f) trigger('select', {index: Number(f.dataset.index), value: f.dataset.method});
  });
}
"""


@dataclass(frozen=True)
class PanelCard:
    """What one panel shows: its map image, caption parts and colour bar."""

    method: str  # method name ("msp", "head:2"): what a click selects
    label: str
    image: np.ndarray  # (h, w, 3) uint8
    vmin: float
    vmax: float
    unit: str
    auprc: float | None = None
    fpr95: float | None = None
    threshold: float | None = None

    def caption(self) -> str:
        """Method, AuPRC, FPR95 (percent) and threshold, in full."""
        parts = [self.label]
        parts.append(f"AuPRC {_pct(self.auprc)}")
        parts.append(f"FPR95 {_pct(self.fpr95)}")
        if self.threshold is not None:
            parts.append(f"threshold {_num(self.threshold)}")
        return " · ".join(parts)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


def _num(v: float, digits: int = 3) -> str:
    """A colour-bar / threshold value with ``digits`` significant digits (no "-0")."""
    text = f"{v:.{digits}g}"
    return "0" if text in ("-0", "0") else text


def bar_labels(lo: float, hi: float) -> tuple[str, str]:
    """The two ends of a colour bar, with as many digits as it takes to tell them apart."""
    for digits in range(3, 9):
        a, b = _num(lo, digits), _num(hi, digits)
        if a != b:
            return a, b
    return _num(lo, 9), _num(hi, 9)


def jpeg_data_uri(rgb: np.ndarray, quality: int = 88) -> str:
    """An (h, w, 3) uint8 image as a ``data:image/jpeg;base64,…`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gradient_css(cmap: str, opacity: float) -> str:
    """CSS ``linear-gradient`` of the panel ramp (``render.colorbar_stops``)."""
    stops = render.colorbar_stops(cmap, opacity)
    return "linear-gradient(90deg, " + ", ".join(f"rgb{c}" for c in stops) + ")"


def panels_html(
    cards: Sequence[PanelCard], cmap: str, opacity: float, legend: str = ""
) -> str:
    """The panel grid: one ``<figure>`` per card, then an optional legend line."""
    if not cards:
        return '<div class="anomseg-panels-empty">Pick an image on the left (or upload one).</div>'
    ramp = gradient_css(cmap, opacity)
    figs = []
    for i, c in enumerate(cards):
        h, w = c.image.shape[:2]
        lo, hi = bar_labels(c.vmin, c.vmax)
        figs.append(
            f'<figure class="anomseg-panel" data-index="{i}" '
            f'data-method="{html.escape(c.method, quote=True)}">'
            f'<img src="{jpeg_data_uri(c.image)}" width="{w}" height="{h}" '
            f'alt="{html.escape(c.label, quote=True)} heat map">'
            '<div class="anomseg-cbar">'
            f'<span class="anomseg-cbar-lo">{html.escape(lo)}</span>'
            f'<span class="anomseg-cbar-ramp" style="background: {ramp}"></span>'
            f'<span class="anomseg-cbar-hi">{html.escape(hi)}</span>'
            "</div>"
            f'<div class="anomseg-cbar-unit">{html.escape(c.unit)}</div>'
            f"<figcaption>{html.escape(c.caption())}</figcaption>"
            "</figure>"
        )
    legend_html = f'<p class="anomseg-panels-legend">{html.escape(legend)}</p>' if legend else ""
    return f'<div class="anomseg-panels">{"".join(figs)}</div>{legend_html}'


PANELS_CSS = """
.anomseg-panels { display: grid; gap: 14px;
  grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); }
.anomseg-panel { margin: 0; cursor: pointer; border-radius: 8px; padding: 6px;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.anomseg-panel:hover { border-color: var(--color-accent); }
.anomseg-panel img { display: block; width: 100%; height: auto; border-radius: 4px; }
.anomseg-cbar { display: flex; align-items: center; gap: 6px; margin-top: 6px;
  font-size: .78rem; font-variant-numeric: tabular-nums; }
.anomseg-cbar-ramp { flex: 1; height: 10px; border-radius: 3px; }
.anomseg-cbar-unit { font-size: .75rem; text-align: center;
  color: var(--body-text-color-subdued); }
.anomseg-panel figcaption { font-size: .86rem; margin-top: 4px; white-space: normal;
  overflow-wrap: anywhere; line-height: 1.3; }
.anomseg-panels-legend, .anomseg-panels-empty { font-size: .82rem;
  color: var(--body-text-color-subdued); margin-top: 6px; }
"""
