"""Object geometry shared by placement and renderer: flip, scale, rotate, feather, place.

Placement and rendering must agree pixel for pixel on where an object lands (placement checks
the exact footprint against the background labels), so both go through ``transform_object`` and
``placed_box`` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from anomseg.synth.sources import SourceObject

_PAD = 2  # transparent margin before rotation, identical for mask and colours


@dataclass(frozen=True)
class Transformed:
    """An object after flip / scale / rotation, cropped to its mask's tight box."""

    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool: the object's pixels (alpha > 0)

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def _resized_mask(mask: np.ndarray, out_h: int, out_w: int, rotation: float) -> np.ndarray:
    """The uint8 (0..255) coverage of ``mask`` after resize and rotation (before threshold)."""
    m8 = mask.astype(np.uint8) * 255
    if m8.shape != (out_h, out_w):
        m8 = np.asarray(Image.fromarray(m8).resize((out_w, out_h), Image.Resampling.BILINEAR))
    if rotation % 360.0 != 0.0:
        m8 = np.asarray(
            Image.fromarray(np.pad(m8, _PAD)).rotate(
                rotation, Image.Resampling.BILINEAR, expand=True
            )
        )
    return m8


def _prepare(
    obj: SourceObject, scale: float, flip: bool
) -> tuple[np.ndarray, np.ndarray, int, int]:
    rgb = np.asarray(obj.rgb)
    mask = np.asarray(obj.mask, dtype=bool)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != mask.shape or rgb.dtype != np.uint8:
        raise ValueError(
            f"object {obj.id!r}: rgb {rgb.shape} {rgb.dtype} and mask {mask.shape} must be "
            f"(h, w, 3) uint8 and (h, w)"
        )
    if flip:
        rgb = rgb[:, ::-1]
        mask = mask[:, ::-1]
    h, w = mask.shape
    return rgb, mask, max(1, round(h * scale)), max(1, round(w * scale))


def _tight(binary: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(binary.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(binary.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def transform_mask(obj: SourceObject, scale: float, flip: bool, rotation: float) -> np.ndarray:
    """Only the mask of ``transform_object`` (same pixels), for cheap placement checks."""
    _, mask, out_h, out_w = _prepare(obj, scale, flip)
    binary = _resized_mask(mask, out_h, out_w, rotation) >= 128
    box = _tight(binary)
    if box is None:
        return np.zeros((0, 0), bool)
    r0, r1, c0, c1 = box
    return np.ascontiguousarray(binary[r0:r1, c0:c1])


def transform_object(obj: SourceObject, scale: float, flip: bool, rotation: float) -> Transformed:
    """Flip, then resize by ``scale``, then rotate ``rotation`` degrees CCW; crop to the mask.

    Returns an empty (0 x 0) result when the object vanishes (e.g. scaled below one pixel).
    """
    rgb, mask, out_h, out_w = _prepare(obj, scale, flip)
    # RGBA with the mask as alpha: Pillow resamples RGBA premultiplied, so edge pixels average
    # object colours only and never the crop's original surroundings (no halo).
    rgba = np.empty((*mask.shape, 4), np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = mask.astype(np.uint8) * 255
    if rgba.shape[:2] != (out_h, out_w):
        rgba = np.asarray(Image.fromarray(rgba).resize((out_w, out_h), Image.Resampling.BILINEAR))
    if rotation % 360.0 != 0.0:
        rgba = np.asarray(
            Image.fromarray(np.pad(rgba, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)))).rotate(
                rotation, Image.Resampling.BILINEAR, expand=True
            )
        )
    # The alpha band is resampled exactly like the L mask of ``transform_mask`` (same filter,
    # same 8-bit arithmetic; tested), so placement and rendering see the same footprint.
    binary = rgba[..., 3] >= 128
    box = _tight(binary)
    if box is None:
        return Transformed(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), bool))
    r0, r1, c0, c1 = box
    return Transformed(
        np.ascontiguousarray(rgba[r0:r1, c0:c1, :3]), np.ascontiguousarray(binary[r0:r1, c0:c1])
    )


def _disc_offsets(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (dy, dx) with 0 < dy^2 + dx^2 < radius^2 and their lengths, shortest first."""
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d2 = dy * dy + dx * dx
    keep = (d2 > 0) & (d2 < radius * radius)
    dy, dx, d2 = dy[keep], dx[keep], d2[keep]
    order = np.argsort(d2, kind="stable")
    return dy[order], dx[order], np.sqrt(d2[order].astype(np.float64))


def alpha_of(mask: np.ndarray, feather: float) -> np.ndarray:
    """Feathered alpha (float32, 0..1) inside ``mask``: ``min(1, d / (feather + 1))``.

    ``d`` is the Euclidean distance from a mask pixel to the nearest non-mask pixel (pixels
    beyond the crop count as non-mask), so the boundary pixel has d = 1. Alpha is 0 outside the
    mask, exactly 1 where ``d >= feather + 1`` (the opaque interior) and in (0, 1) on the rim.
    """
    alpha = mask.astype(np.float32)
    if feather <= 0 or not mask.any():
        return alpha
    # Only pixels within feather + 1 of the outside can be on the rim: find them with a cheap
    # box erosion, then take the exact Euclidean distance over the few offsets of a small disc
    # (a full distance transform of the object would cost ~10x more).
    radius = float(feather) + 1.0
    r = int(math.ceil(radius))
    padded = np.pad(mask, r)
    inner = ndimage.minimum_filter(padded.view(np.uint8), size=2 * r + 1, mode="constant")
    ys, xs = np.nonzero(padded & (inner == 0))
    if ys.size == 0:
        return alpha
    flat = padded.ravel()
    stride = padded.shape[1]
    todo = ys * stride + xs
    where = np.arange(ys.size)
    best = np.full(ys.size, radius, dtype=np.float64)
    # offsets by increasing length: the first one that lands outside gives the exact distance
    for dy, dx, d in zip(*_disc_offsets(radius), strict=True):
        hit = ~flat[todo + (dy * stride + dx)]
        best[where[hit]] = d
        keep = ~hit
        todo, where = todo[keep], where[keep]
        if todo.size == 0:
            break
    alpha[ys - r, xs - r] = np.minimum(best / radius, 1.0).astype(np.float32)
    return alpha


def placed_box(x: int, y: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a transformed object anchored at bottom-centre (x, y).

    Bottom and right are exclusive; the box may extend beyond the image.
    """
    top = y - height + 1
    left = x - width // 2
    return top, left, y + 1, left + width


def clip_box(
    box: tuple[int, int, int, int], image_h: int, image_w: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Image-side and object-side slices of ``box`` clipped to the image; None if disjoint."""
    top, left, bottom, right = box
    t, lft = max(top, 0), max(left, 0)
    b, r = min(bottom, image_h), min(right, image_w)
    if t >= b or lft >= r:
        return None
    return (slice(t, b), slice(lft, r)), (slice(t - top, b - top), slice(lft - left, r - left))
