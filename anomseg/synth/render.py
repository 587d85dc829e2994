"""The renderer: background + paste records + object lookup -> image, ground truth, instance masks.

Pure and deterministic: the same inputs give byte-identical outputs. Each paste is composited
only inside its own bounding box, so cost scales with object size, not image size.

Labelling rule (``rim``): a paste's pixels are its transformed mask. Where alpha is 1 (the opaque
interior) the pixel is anomaly. Where 0 < alpha < 1 (the feathered rim, ``feather`` pixels wide,
inside the mask) the label follows ``rim``:

* ``"ignore"`` (default): ignore label -- the pixel is a mix of object and background;
* ``"anomaly"``: anomaly label, i.e. the whole mask is anomaly;
* ``"normal"``: the label underneath is kept (background 0 / 255, or an earlier paste's label).

Background pixels with trainId 255 start as ignore; all other background pixels as normal. Later
pastes (higher ``order``; ties broken by position in the sequence) are drawn on top, and the
instance map holds, per pixel, the 1-based rank of the topmost paste whose mask covers it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomseg.errors import InputError
from anomseg.synth.color import match_lightness
from anomseg.synth.geometry import alpha_of, clip_box, placed_box, transform_object
from anomseg.synth.records import PasteRecord
from anomseg.synth.sources import Background, ObjectSource, SourceObject

RIM_RULES = ("ignore", "anomaly", "normal")
DEFAULT_LABELS = (0, 1, 255)  # normal, anomaly, ignore

Lookup = Callable[[str, str], SourceObject]


@dataclass(frozen=True)
class Rendered:
    """A rendered sample; ``records`` are in compositing order (instance k = records[k - 1])."""

    rgb: np.ndarray  # (H, W, 3) uint8
    gt: np.ndarray  # (H, W) uint8: normal / anomaly / ignore labels
    instances: np.ndarray  # (H, W) uint16: 0 none, k = k-th record in compositing order
    records: tuple[PasteRecord, ...]


def make_lookup(lookup: Lookup | Mapping[Any, Any]) -> Lookup:
    """Normalise an object lookup to ``f(source, object_id) -> SourceObject``.

    Accepts a callable, a mapping ``(source, object_id) -> SourceObject`` or a mapping
    ``source name -> ObjectSource``.
    """
    if callable(lookup) and not isinstance(lookup, Mapping):
        return lookup
    if not isinstance(lookup, Mapping):
        raise TypeError(f"lookup must be a callable or a mapping, got {type(lookup).__name__}")

    def find(source: str, object_id: str) -> SourceObject:
        if (source, object_id) in lookup:
            return lookup[(source, object_id)]
        src = lookup.get(source)
        if src is not None and isinstance(src, ObjectSource):
            return src.load(object_id)
        raise InputError(f"object {object_id!r} of source {source!r} is not available")

    return find


def compositing_order(records: Sequence[PasteRecord]) -> tuple[PasteRecord, ...]:
    """Records sorted by ``order``, ties kept in sequence order (a stable sort)."""
    return tuple(sorted(records, key=lambda r: r.order))


def _check_labels(labels: Sequence[int]) -> tuple[int, int, int]:
    vals = tuple(labels)
    if (
        len(vals) != 3
        or any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in vals)
        or not all(0 <= v <= 255 for v in vals)
        or len(set(vals)) != 3
    ):
        raise InputError(
            f"labels: expected three distinct integers in [0, 255] (normal, anomaly, ignore), "
            f"got {labels!r}"
        )
    return int(vals[0]), int(vals[1]), int(vals[2])


def _context(background: np.ndarray, box: tuple[int, int, int, int], footprint: np.ndarray):
    """Background pixels around ``box`` (box grown by a quarter of its size), minus the object."""
    top, left, bottom, right = box
    h, w = bottom - top, right - left
    m = max(4, round(0.25 * max(h, w)))
    H, W = background.shape[:2]
    t, lft, b, r = max(top - m, 0), max(left - m, 0), min(bottom + m, H), min(right + m, W)
    if t >= b or lft >= r:
        return background[:0, :0].reshape(0, 3)
    keep = np.ones((b - t, r - lft), dtype=bool)
    sl = clip_box(box, H, W)
    if sl is not None:
        (iy, ix), (oy, ox) = sl
        keep[iy.start - t : iy.stop - t, ix.start - lft : ix.stop - lft] &= ~footprint[oy, ox]
    # every other row and column: the statistics are the same, at a quarter of the cost
    return background[t:b:2, lft:r:2][keep[::2, ::2]]


def render(
    background: Background,
    records: Sequence[PasteRecord],
    lookup: Lookup | Mapping[Any, Any],
    *,
    rim: str = "ignore",
    labels: Sequence[int] = DEFAULT_LABELS,
) -> Rendered:
    """Composite ``records`` onto ``background``; see the module docstring for the label rule."""
    if rim not in RIM_RULES:
        raise InputError(f"rim: expected one of {', '.join(RIM_RULES)}, got {rim!r}")
    normal, anomaly, ignore = _check_labels(labels)
    find = make_lookup(lookup)
    bg_rgb = np.asarray(background.rgb)
    bg_lab = np.asarray(background.labels)
    if bg_rgb.ndim != 3 or bg_rgb.shape[2] != 3 or bg_rgb.shape[:2] != bg_lab.shape:
        raise InputError(
            f"background {background.id!r}: rgb {bg_rgb.shape} and labels {bg_lab.shape} must be "
            f"(H, W, 3) and (H, W)"
        )
    for r in records:
        if r.background_id != background.id:
            raise InputError(
                f"paste record for background {r.background_id!r} given with background "
                f"{background.id!r}"
            )
    ordered = compositing_order(records)
    if len(ordered) > np.iinfo(np.uint16).max:
        raise InputError(f"at most 65535 pastes per image, got {len(ordered)}")
    H, W = bg_lab.shape
    rgb = np.array(bg_rgb, dtype=np.uint8, copy=True)
    gt = np.full((H, W), normal, dtype=np.uint8)
    np.copyto(gt, np.uint8(ignore), where=bg_lab == 255)
    inst = np.zeros((H, W), dtype=np.uint16)

    for k, rec in enumerate(ordered, start=1):
        t = transform_object(find(rec.source, rec.object_id), rec.scale, rec.flip, rec.rotation)
        if t.mask.size == 0:
            continue
        box = placed_box(rec.x, rec.y, t.height, t.width)
        sl = clip_box(box, H, W)
        if sl is None:
            continue
        (iy, ix), (oy, ox) = sl
        obj_rgb = t.rgb
        if rec.photometric:
            obj_rgb = match_lightness(t.rgb, t.mask, _context(bg_rgb, box, t.mask))
        # Alpha from the whole object, so the image border does not create a fake rim.
        alpha = alpha_of(t.mask, rec.feather)[oy, ox]
        mask = t.mask[oy, ox]
        src = obj_rgb[oy, ox]
        interior = alpha >= 1.0
        soft = mask & ~interior
        dst = rgb[iy, ix]
        np.copyto(dst, src, where=interior[..., None])
        if soft.any():
            a = alpha[soft][:, None]
            mixed = a * src[soft].astype(np.float32) + (1.0 - a) * dst[soft].astype(np.float32)
            dst[soft] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        g = gt[iy, ix]
        g[interior] = anomaly
        if rim == "ignore":
            g[soft] = ignore
        elif rim == "anomaly":
            g[soft] = anomaly
        inst[iy, ix][mask] = k
    return Rendered(rgb=rgb, gt=gt, instances=inst, records=ordered)


class RenderCache:
    """In-memory LRU of rendered samples keyed by (background id, record hashes, rim, labels).

    A paste is data and the picture a cache: editing one record changes its hash and misses.
    The background and object sources are assumed immutable per id.
    """

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, Rendered] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        background_id: str,
        records: Sequence[PasteRecord],
        rim: str = "ignore",
        labels: Sequence[int] = DEFAULT_LABELS,
    ) -> tuple:
        """The cache key of one render call."""
        return (background_id, tuple(r.content_hash() for r in records), rim, tuple(labels))

    def render(
        self,
        background: Background,
        records: Sequence[PasteRecord],
        lookup: Lookup | Mapping[Any, Any],
        *,
        rim: str = "ignore",
        labels: Sequence[int] = DEFAULT_LABELS,
    ) -> Rendered:
        """``render(...)`` through the cache."""
        key = self.key(background.id, records, rim, labels)
        hit = self._items.get(key)
        if hit is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return hit
        self.misses += 1
        out = render(background, records, lookup, rim=rim, labels=labels)
        for arr in (out.rgb, out.gt, out.instances):
            arr.flags.writeable = False  # shared between callers: nobody may edit it in place
        self._items[key] = out
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return out

    def clear(self) -> None:
        """Drop every cached sample."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
