"""COCO instances as an object source: cut-outs of annotated objects, filtered for clean pastes.

Masks are decoded with pycocotools (polygons, compressed and uncompressed RLE). Filters keep
objects that paste well: chosen categories, fully visible (not crowd, bbox not touching the
image border), bbox aspect ratio, area relative to the image, and solidity (mask area / convex
hull area: low solidity means a thin, fragmented or occluded object).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.errors import DatasetError, InputError
from anomseg.synth.imageio import read_rgb
from anomseg.synth.sources import OBJECT_SOURCES, SourceObject


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE with list or string counts) -> (h, w) bool."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [height, width]:
            raise ValueError(f"RLE size {segm['size']} differs from image size {[height, width]}")
        counts = segm["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = {
                "size": [height, width],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
    else:
        raise ValueError("expected a list of polygons or an RLE dict with 'counts' and 'size'")
    with warnings.catch_warnings():
        # pycocotools' C extension trips numpy 2's __array__(copy=...) deprecation; harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def solidity(mask: np.ndarray) -> float:
    """Mask area / area of the convex hull of its pixel squares (1.0 for a convex blob)."""
    from scipy.spatial import ConvexHull, QhullError

    area = int(mask.sum())
    if area == 0:
        return 0.0
    # Only boundary pixels can be hull vertices; their 4 corners make the hull cover whole pixels.
    inner = mask.copy()
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    ys, xs = np.nonzero(mask & ~inner)
    corners = np.concatenate(
        [np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    ).astype(np.float64)
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:
        return 1.0
    return float(min(1.0, area / hull_area))


def _range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(not isinstance(v, bool) and isinstance(v, int | float) for v in value)
        and lo <= value[0] <= value[1] <= hi
    )
    if not ok:
        raise InputError(
            f"coco {name}: expected [low, high] with {lo} <= low <= high <= {hi}, got {value!r}"
        )
    return float(value[0]), float(value[1])


@OBJECT_SOURCES.register("coco")
class CocoObjects:
    """Objects cut from COCO-format instance annotations (``annotations`` JSON + ``images`` dir).

    ``annotations`` and ``images`` may also be equal-length lists (several COCO files, e.g.
    train + val of two subsets): their objects are pooled. COCO annotation ids are global, so an
    id found in two files is the same object; the first file's copy is used.
    """

    name = "coco"

    def __init__(
        self,
        annotations: str | Path | list[str | Path],
        images: str | Path | list[str | Path],
        categories: list[str] | None = None,
        fully_visible: bool = True,
        border_margin: int = 1,
        aspect_ratio: tuple[float, float] = (0.2, 5.0),
        area_ratio: tuple[float, float] = (0.002, 0.6),
        min_solidity: float = 0.0,
        min_pixels: int = 64,
        cache_size: int = 128,
    ) -> None:
        self._parts: list[CocoObjects] = []
        if isinstance(annotations, list | tuple) or isinstance(images, list | tuple):
            anns_l = list(annotations) if isinstance(annotations, list | tuple) else [annotations]
            imgs_l = list(images) if isinstance(images, list | tuple) else [images]
            if not anns_l or len(anns_l) != len(imgs_l):
                raise InputError(
                    f"coco: expected as many images folders as annotation files, got "
                    f"{len(anns_l)} annotation file(s) and {len(imgs_l)} images folder(s)"
                )
            opts = dict(
                categories=categories, fully_visible=fully_visible, border_margin=border_margin,
                aspect_ratio=aspect_ratio, area_ratio=area_ratio, min_solidity=min_solidity,
                min_pixels=min_pixels, cache_size=cache_size,
            )  # fmt: skip
            self._parts = [CocoObjects(a, i, **opts) for a, i in zip(anns_l, imgs_l, strict=True)]
            owner: dict[str, CocoObjects] = {}
            for part in self._parts:
                for oid in part.ids():
                    owner.setdefault(oid, part)
            self._owner = owner
            self._ids = sorted(owner, key=lambda s: (len(s), s))
            self.available_categories = sorted(
                {c for part in self._parts for c in part.available_categories}
            )
            self.annotations_path = self._parts[0].annotations_path
            self.images_dir = self._parts[0].images_dir
            return
        self.annotations_path = Path(annotations)
        self.images_dir = Path(images)
        self.aspect_ratio = _range("aspect_ratio", aspect_ratio, 0.0, math.inf)
        self.area_ratio = _range("area_ratio", area_ratio, 0.0, 1.0)
        if not isinstance(min_solidity, int | float) or not 0 <= min_solidity <= 1:
            raise InputError(
                f"coco min_solidity: expected a number in [0, 1], got {min_solidity!r}"
            )
        if not self.images_dir.is_dir():
            raise DatasetError(f"COCO images directory {self.images_dir} does not exist")
        data = self._read_json(self.annotations_path)
        try:
            cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            self._images = {int(im["id"]): im for im in data["images"]}
            anns = list(data["annotations"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{self.annotations_path}: not a COCO instances file (needs 'images', "
                f"'annotations', 'categories' with ids and names): {exc!r}"
            ) from None
        self.available_categories = sorted(set(cats.values()))
        if categories is not None:
            if isinstance(categories, str) or not isinstance(categories, list | tuple):
                raise InputError(f"coco categories: expected a list of names, got {categories!r}")
            missing = [c for c in categories if c not in self.available_categories]
            if missing:
                raise InputError(
                    f"coco categories {missing} not found in {self.annotations_path}; available: "
                    f"{', '.join(self.available_categories) or '(none)'}"
                )
            wanted = {cid for cid, n in cats.items() if n in set(categories)}
        else:
            wanted = set(cats)
        self._cats = cats
        self._anns: dict[str, dict] = {}
        for ann in anns:
            if self._keep(ann, wanted, fully_visible, border_margin, min_solidity, min_pixels):
                self._anns[str(ann["id"])] = ann
        self._ids = sorted(self._anns, key=lambda s: (len(s), s))
        self._check_images()
        self._cache: OrderedDict[str, SourceObject] = OrderedDict()
        self._cache_size = cache_size

    def _check_images(self) -> None:
        """Refuse now, by name, image files the kept objects need but that are missing.

        Found late (mid-generation), a missing image would leave part of a batch stored.
        """
        needed = {str(self._images[int(a["image_id"])]["file_name"]) for a in self._anns.values()}
        missing = sorted(f for f in needed if not (self.images_dir / f).is_file())
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(
                f"{self.annotations_path}: {len(missing)} of the {len(needed)} images its objects "
                f"come from are missing from {self.images_dir} ({', '.join(missing[:3])}{more}); "
                "expected the annotation file next to its images folder (e.g. "
                "annotations/instances_train2017.json with train2017/)"
            )

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"COCO annotation file {path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read COCO annotation file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
        return data

    def _keep(
        self,
        ann: dict,
        wanted: set[int],
        fully_visible: bool,
        margin: int,
        min_solidity: float,
        min_pixels: int,
    ) -> bool:
        try:
            if int(ann["category_id"]) not in wanted or ann.get("iscrowd", 0):
                return False
            im = self._images[int(ann["image_id"])]
            iw, ih = int(im["width"]), int(im["height"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{self.annotations_path}: annotation {ann.get('id')!r} is malformed: {exc!r}"
            ) from None
        if w <= 0 or h <= 0 or float(ann.get("area", w * h)) < min_pixels:
            return False
        if fully_visible and (
            x < margin or y < margin or x + w > iw - margin or y + h > ih - margin
        ):
            return False
        if not self.aspect_ratio[0] <= w / h <= self.aspect_ratio[1]:
            return False
        if (
            not self.area_ratio[0]
            <= float(ann.get("area", w * h)) / (iw * ih)
            <= self.area_ratio[1]
        ):
            return False
        if min_solidity > 0:
            mask = self._decode(ann, ih, iw)
            if solidity(mask) < min_solidity:
                return False
        return True

    def _decode(self, ann: dict, h: int, w: int) -> np.ndarray:
        try:
            return decode_segmentation(ann["segmentation"], h, w)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{self.annotations_path}: annotation {ann.get('id')!r} has an unreadable "
                f"segmentation: {exc}"
            ) from None

    def ids(self) -> list[str]:
        """Annotation ids (as strings) that pass the filters, in numeric order."""
        return list(self._ids)

    def categories(self) -> list[str]:
        """All category names in the annotation file."""
        return list(self.available_categories)

    def load(self, object_id: str) -> SourceObject:
        """The cut-out of annotation ``object_id`` (tight crop of its mask)."""
        if self._parts:
            part = self._owner.get(str(object_id))
            if part is None:
                raise InputError(f"COCO object {object_id!r} is unknown or filtered out")
            return part.load(object_id)
        hit = self._cache.get(object_id)
        if hit is not None:
            self._cache.move_to_end(object_id)
            return hit
        ann = self._anns.get(str(object_id))
        if ann is None:
            raise InputError(f"COCO object {object_id!r} is unknown or filtered out")
        im = self._images[int(ann["image_id"])]
        path = self.images_dir / str(im["file_name"])
        rgb = read_rgb(path)
        ih, iw = int(im["height"]), int(im["width"])
        if rgb.shape[:2] != (ih, iw):
            raise DatasetError(
                f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but the annotations say {iw}x{ih}"
            )
        mask = self._decode(ann, ih, iw)
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            raise DatasetError(
                f"{self.annotations_path}: annotation {object_id!r} has an empty mask"
            )
        cols = np.flatnonzero(mask.any(axis=0))
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        obj = SourceObject(
            id=str(object_id),
            rgb=np.ascontiguousarray(rgb[sl]),
            mask=np.ascontiguousarray(mask[sl]),
            category=self._cats[int(ann["category_id"])],
        )
        self._cache[object_id] = obj
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return obj
