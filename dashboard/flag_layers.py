"""Stored flags drawn at display size from their encoded crops, one layer per kind.

Decoding every flag to a full-frame mask, resizing it and blending the image once per flag made
saving a flag slower with every flag already on the image (issue 15 §8). Here each flag's tight crop is sampled straight into the display frame with
the same nearest-neighbour rule as ``render.resize_labels`` (so the union equals resizing each
full mask), the crops are OR-ed into one boolean layer per kind, and the image is blended once
per kind: the per-flag cost is a small crop, not a frame.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dashboard import render
from db.masks import MaskCrop


def _sample_index(n_src: int, n_out: int) -> np.ndarray:
    # the source row / column each output pixel reads (render.resize_labels' rule)
    return np.minimum((np.arange(n_out) + 0.5) * n_src / n_out, n_src - 1).astype(np.intp)


def kind_layers(
    crops: Iterable[tuple[str, MaskCrop]], full_hw: tuple[int, int], out_hw: tuple[int, int]
) -> dict[str, np.ndarray]:
    """kind -> boolean (out_h, out_w) union of that kind's masks resized nearest to ``out_hw``."""
    rows, cols = _sample_index(full_hw[0], out_hw[0]), _sample_index(full_hw[1], out_hw[1])
    layers: dict[str, np.ndarray] = {}
    for kind, c in crops:
        layer = layers.get(kind)
        if layer is None:
            layer = layers[kind] = np.zeros(out_hw, dtype=bool)
        ch, cw = c.crop.shape
        if ch == 0 or cw == 0:
            continue
        # the output rows / columns whose sample falls inside the crop (indices are sorted)
        r0, r1 = np.searchsorted(rows, [c.y0, c.y0 + ch])
        c0, c1 = np.searchsorted(cols, [c.x0, c.x0 + cw])
        if r0 == r1 or c0 == c1:
            continue  # a flag thinner than one display pixel that no sample hits
        sub = c.crop[(rows[r0:r1] - c.y0)[:, None], (cols[c0:c1] - c.x0)[None, :]]
        layer[r0:r1, c0:c1] |= sub
    return layers


def draw_layers(rgb: np.ndarray, layers: dict[str, np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """``rgb`` with each kind's layer tinted in its colour and outlined.

    The tint of a channel value depends on that value alone, so it is a 256-entry table
    computed with ``render.blend``'s float32 arithmetic (identical results) and applied where
    the layer is set: no float copy of the frame per kind.
    """
    out = rgb.copy()
    a = np.float32(alpha)
    levels = np.arange(256, dtype=np.float32)
    for kind, m in layers.items():
        if not m.any():
            continue
        color = render.FLAG_COLORS.get(kind, (255, 255, 0))
        for ch in range(3):
            lut = levels * (np.float32(1.0) - a) + np.float32(color[ch]) * a
            lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
            plane = out[..., ch]
            np.copyto(plane, lut[plane], where=m)
        out[render.outline(m, 2)] = color
    return out
