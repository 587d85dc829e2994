"""The placement sampler: proposes paste records (never pixels) for one background.

Deterministic per (seed, background id): the random stream comes from a numpy Generator seeded
with a hash of both, so a background's proposal does not depend on which other backgrounds are
processed, in which order, or by how many workers.

A candidate is accepted only when its exact transformed footprint (the same mask the renderer
pastes) lies inside the image (``border_margin``), covers the target classes for at least
``min_coverage`` of its pixels, covers forbidden classes for at most ``max_forbidden``, covers
earlier pastes for at most ``max_overlap`` and has an area ratio in ``area_ratio``.

Perspective law: the desired object height (before rotation) at anchor row ``y`` is
``H * (height_top + (height_bottom - height_top) * t) * U(1 - scale_jitter, 1 + scale_jitter)``
with ``t = clip((y - horizon * H) / ((H - 1) - horizon * H), 0, 1)``: objects grow linearly
from the horizon row to the bottom row. ``scale`` = desired height / crop height.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np

from anomseg.data.classes import CITYSCAPES_CLASSES, TRAIN_ID
from anomseg.errors import InputError
from anomseg.synth.geometry import placed_box, transform_mask
from anomseg.synth.records import ROTATION_RANGE, SCALE_RANGE, PasteRecord, short_repr
from anomseg.synth.sources import Background, ObjectSource, SourceObject

DEFAULT_FORBIDDEN = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A Generator seeded from sha256 of (seed, keys): stable across runs, processes, platforms."""
    h = hashlib.sha256(str(int(seed)).encode())
    for k in keys:
        h.update(b"\x00" + str(k).encode("utf-8"))
    return np.random.default_rng(int.from_bytes(h.digest()[:16], "little"))


def _err(key: str, expected: str, got: object) -> InputError:
    return InputError(f"placement.{key}: expected {expected}, got {short_repr(got)}")


def _num(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 1e300 and math.isfinite(value)  # big ints compare before float()


def _check_fraction(key: str, value: object, *, open_low: bool = False) -> None:
    if not _num(value) or not (0 < value if open_low else 0 <= value) or value > 1:
        raise _err(key, "a number in (0, 1]" if open_low else "a number in [0, 1]", value)


def _check_range(key: str, value: object, lo: float, hi: float) -> None:
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(_num(v) for v in value)
        or not lo <= value[0] <= value[1] <= hi
    ):
        raise _err(key, f"[low, high] with {lo} <= low <= high <= {hi}", value)


@dataclass
class PlacementConfig:
    """Where, how big and how many objects go on a background (see module docstring)."""

    target_classes: dict[str, float] = field(default_factory=lambda: {"road": 0.7, "sidewalk": 0.3})
    forbidden_classes: tuple[str, ...] = DEFAULT_FORBIDDEN
    min_coverage: float = 0.8
    max_forbidden: float = 0.0
    max_overlap: float = 0.3
    horizon: float = 0.4
    height_top: float = 0.02
    height_bottom: float = 0.3
    scale_jitter: float = 0.25
    area_ratio: tuple[float, float] = (0.0002, 0.1)
    border_margin: int = 1
    flip_prob: float = 0.5
    rotation_range: tuple[float, float] = (0.0, 0.0)
    feather: float = 2.0
    photometric_prob: float = 0.5
    max_retries: int = 50

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming ``placement.<field>`` and the allowed values."""
        names = ", ".join(CITYSCAPES_CLASSES)
        tc = self.target_classes
        if not isinstance(tc, dict) or not tc:
            raise _err("target_classes", "a non-empty mapping class name -> weight", tc)
        for name, w in tc.items():
            if name not in TRAIN_ID:
                raise _err(f"target_classes.{name}", f"a Cityscapes class name ({names})", name)
            if not _num(w) or w < 0:
                raise _err(f"target_classes.{name}", "a weight >= 0", w)
        if sum(tc.values()) <= 0:
            raise _err("target_classes", "at least one weight > 0", tc)
        if isinstance(self.forbidden_classes, str) or not isinstance(
            self.forbidden_classes, tuple | list
        ):
            raise _err(
                "forbidden_classes", "a list of Cityscapes class names", self.forbidden_classes
            )
        for name in self.forbidden_classes:
            if name not in TRAIN_ID:
                raise _err("forbidden_classes", f"Cityscapes class names ({names})", name)
            if name in tc:
                raise _err("forbidden_classes", "no class that is also a target class", name)
        self.forbidden_classes = tuple(self.forbidden_classes)
        _check_fraction("min_coverage", self.min_coverage)
        _check_fraction("max_forbidden", self.max_forbidden)
        _check_fraction("max_overlap", self.max_overlap)
        if not _num(self.horizon) or not 0 <= self.horizon < 1:
            raise _err("horizon", "a number in [0, 1)", self.horizon)
        _check_fraction("height_top", self.height_top, open_low=True)
        _check_fraction("height_bottom", self.height_bottom, open_low=True)
        if not _num(self.scale_jitter) or not 0 <= self.scale_jitter < 1:
            raise _err("scale_jitter", "a number in [0, 1)", self.scale_jitter)
        _check_range("area_ratio", self.area_ratio, 0.0, 1.0)
        self.area_ratio = (float(self.area_ratio[0]), float(self.area_ratio[1]))
        bm = self.border_margin
        if isinstance(bm, bool) or not isinstance(bm, int) or not 0 <= bm <= 10_000:
            raise _err("border_margin", "an integer in [0, 10000]", bm)
        _check_fraction("flip_prob", self.flip_prob)
        _check_range("rotation_range", self.rotation_range, *ROTATION_RANGE)
        self.rotation_range = (float(self.rotation_range[0]), float(self.rotation_range[1]))
        if not _num(self.feather) or not 0 <= self.feather <= 64:
            raise _err("feather", "a number in [0, 64]", self.feather)
        _check_fraction("photometric_prob", self.photometric_prob)
        mr = self.max_retries
        if isinstance(mr, bool) or not isinstance(mr, int) or not 1 <= mr <= 100_000:
            raise _err("max_retries", "an integer in [1, 100000]", mr)

    @classmethod
    def from_dict(cls, data: dict) -> PlacementConfig:
        """Build from a config section; unknown keys raise InputError naming them."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(
                f"placement.{unknown[0]}: unknown key; expected one of: {', '.join(known)}"
            )
        return cls(**data)

    def desired_height(self, row: int, image_h: int) -> float:
        """Object height in px the perspective law asks for at ``row`` (before jitter)."""
        h0 = self.horizon * image_h
        t = (row - h0) / max((image_h - 1) - h0, 1e-9)
        t = min(max(t, 0.0), 1.0)
        return image_h * (self.height_top + (self.height_bottom - self.height_top) * t)


def propose(
    background: Background,
    objects: ObjectSource,
    n: int,
    cfg: PlacementConfig | None = None,
    seed: int = 0,
) -> tuple[list[PasteRecord], str | None]:
    """Up to ``n`` paste records for ``background``, plus why fewer were placed (else None)."""
    cfg = cfg or PlacementConfig()
    if n <= 0:
        return [], None
    labels = np.asarray(background.labels)
    H, W = labels.shape
    targets = [(TRAIN_ID[c], w) for c, w in cfg.target_classes.items() if w > 0]
    target_ids = np.array([c for c, _ in targets], dtype=np.uint8)
    forbidden_ids = np.array([TRAIN_ID[c] for c in cfg.forbidden_classes], dtype=np.uint8)
    present = []
    for cid, w in targets:
        ys, xs = np.nonzero(labels == cid)
        if ys.size:
            present.append((ys, xs, w))
    if not present:
        names = "/".join(c for c, w in cfg.target_classes.items() if w > 0)
        return [], f"no {names} pixels in background"
    ids = objects.ids()
    if not ids:
        return [], f"object source {objects.name!r} has no objects"
    weights = np.array([w for *_, w in present], dtype=np.float64)
    weights /= weights.sum()

    rng = rng_for(seed, background.id)
    loaded: dict[str, SourceObject] = {}
    occupied = np.zeros((H, W), dtype=bool)
    records: list[PasteRecord] = []
    rejected: Counter[str] = Counter()
    image_area = float(H * W)
    m = cfg.border_margin

    for _i in range(n):
        for _ in range(cfg.max_retries):
            ys, xs, _w = present[int(rng.choice(len(present), p=weights))]
            j = int(rng.integers(ys.size))
            y, x = int(ys[j]), int(xs[j])
            oid = ids[int(rng.integers(len(ids)))]
            flip = bool(rng.random() < cfg.flip_prob)
            lo, hi = cfg.rotation_range
            rotation = round(float(rng.uniform(lo, hi)), 1) if hi > lo else lo
            jitter = float(rng.uniform(1 - cfg.scale_jitter, 1 + cfg.scale_jitter))
            photometric = bool(rng.random() < cfg.photometric_prob)

            obj = loaded.get(oid)
            if obj is None:
                obj = loaded[oid] = objects.load(oid)
            crop_h = obj.mask.shape[0]
            scale = round(cfg.desired_height(y, H) * jitter / max(crop_h, 1), 4)
            if not SCALE_RANGE[0] < scale <= SCALE_RANGE[1]:
                rejected["scale out of range"] += 1
                continue
            mask = transform_mask(obj, scale, flip, rotation)
            if mask.size == 0:
                rejected["object vanished at this scale"] += 1
                continue
            top, left, bottom, right = placed_box(x, y, *mask.shape)
            if top < m or left < m or bottom > H - m or right > W - m:
                rejected["touches the border"] += 1
                continue
            area = int(mask.sum())
            if not cfg.area_ratio[0] <= area / image_area <= cfg.area_ratio[1]:
                rejected["area ratio out of range"] += 1
                continue
            under = labels[top:bottom, left:right][mask]
            if np.isin(under, target_ids).mean() < cfg.min_coverage:
                rejected["target coverage too low"] += 1
                continue
            if forbidden_ids.size and np.isin(under, forbidden_ids).mean() > cfg.max_forbidden:
                rejected["overlaps a forbidden class"] += 1
                continue
            occ = occupied[top:bottom, left:right]
            if occ[mask].mean() > cfg.max_overlap:
                rejected["overlaps an earlier paste"] += 1
                continue
            occ |= mask
            records.append(
                PasteRecord(
                    background_id=background.id,
                    source=objects.name,
                    object_id=oid,
                    x=x,
                    y=y,
                    scale=scale,
                    flip=flip,
                    rotation=rotation,
                    feather=float(cfg.feather),
                    photometric=photometric,
                    order=len(records),
                )
            )
            break
    if len(records) == n:
        return records, None
    why = ", ".join(f"{k} x{v}" for k, v in rejected.most_common())
    return records, f"placed {len(records)} of {n} after {cfg.max_retries} tries each ({why})"


# where a hand-moved paste may stand (the drivable / walkable ground the demo pastes use)
EDIT_TARGET_CLASSES = ("road", "sidewalk", "terrain")
EDIT_MIN_COVERAGE = 0.8


def check_placement(
    labels: np.ndarray,
    record: PasteRecord,
    obj: SourceObject,
    target_classes: tuple[str, ...] = EDIT_TARGET_CLASSES,
    min_coverage: float = EDIT_MIN_COVERAGE,
) -> None:
    """Raise InputError when an edited paste leaves the frame or does not stand on the ground.

    ``labels`` are the background's train ids; ``obj`` is the record's source object. The
    footprint is the renderer's exact transformed mask, as in ``propose``.
    """
    mask = transform_mask(obj, record.scale, record.flip, record.rotation)
    if mask.size == 0 or not mask.any():
        raise InputError(f"paste {record.object_id}: the object vanishes at scale {record.scale}")
    H, W = labels.shape
    top, left, bottom, right = placed_box(record.x, record.y, *mask.shape)
    if top < 0 or left < 0 or bottom > H or right > W:
        raise InputError(
            f"paste moved off the image: the object would span x {left}..{right}, "
            f"y {top}..{bottom} of a {W}x{H} frame; move it further inside"
        )
    under = labels[top:bottom, left:right][mask]
    cover = float(np.isin(under, [TRAIN_ID[c] for c in target_classes]).mean())
    if cover < min_coverage:
        raise InputError(
            f"paste moved off the road: only {cover:.0%} of the object stands on "
            f"{' / '.join(target_classes)} (at least {min_coverage:.0%} needed); not saved"
        )
