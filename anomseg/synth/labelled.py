"""A labelled road dataset as a background source: images + label maps + a class map.

Layout: ``<root>/<images>/<stem>.{png,jpg,jpeg,webp}`` with ``<root>/<labels>/<stem>.png``
holding the dataset's own label values (CamVid: ``train/`` + ``trainannot/``). The class map
(``anomseg.data.classmap``) turns them into Cityscapes trainIds, unmapped values into 255, so the
placement engine's constraints (target road / sidewalk, forbidden person / car ...) read a CamVid
frame exactly as a Cityscapes one. Background ids are the image stems.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomseg.data.benchmark import list_images
from anomseg.data.classmap import ClassMap, load_class_map
from anomseg.errors import DatasetError, InputError
from anomseg.synth.imageio import read_label, read_rgb
from anomseg.synth.sources import BACKGROUND_SOURCES, Background


def check_size(size: object, what: str) -> tuple[int, int] | None:
    """``None`` or a validated [width, height] > 0 as a tuple."""
    if size is None:
        return None
    ok = (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    )
    if not ok:
        raise InputError(f"{what} size: expected [width, height] > 0, got {size!r}")
    return int(size[0]), int(size[1])


def resize_background(
    rgb: np.ndarray, labels: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` = (W, H): image bilinear, labels nearest (the eval protocol)."""
    if size is None or (rgb.shape[1], rgb.shape[0]) == size:
        return rgb, labels
    from PIL import Image

    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    labels = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
    return rgb, labels


@BACKGROUND_SOURCES.register("labelled")
class LabelledBackgrounds:
    """Frames of a labelled road dataset, labels mapped to trainIds by ``class_map``."""

    name = "labelled"
    PATH_OPTIONS = ("root",)  # images / labels are folder names under the root

    def __init__(
        self,
        root: str | Path,
        images: str = "train",
        labels: str = "trainannot",
        class_map: str | ClassMap = "camvid",
        size: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.size = check_size(size, "labelled")
        # the class map first: a map naming unknown classes is refused before any file is read
        self.class_map = class_map if isinstance(class_map, ClassMap) else load_class_map(class_map)
        self.images_dir, self.labels_dir = self.root / images, self.root / labels
        for d, what in ((self.images_dir, "images"), (self.labels_dir, "labels")):
            if not d.is_dir():
                raise DatasetError(
                    f"labelled backgrounds: {what} folder {d} does not exist (expected "
                    f"<root>/{images}/ images and <root>/{labels}/ label maps)"
                )
        self._items: dict[str, tuple[Path, Path]] = {}
        for img in list_images(self.images_dir):
            lab = self.labels_dir / f"{img.stem}.png"
            if not lab.is_file():
                raise DatasetError(f"{img}: image has no label map; expected {lab}")
            self._items[img.stem] = (img, lab)
        if not self._items:
            raise DatasetError(f"labelled backgrounds: no images found in {self.images_dir}")
        self._ids = list(self._items)  # list_images' natural order

    def ids(self) -> list[str]:
        """Image stems in natural order."""
        return list(self._ids)

    def _item(self, background_id: str) -> tuple[Path, Path]:
        item = self._items.get(background_id)
        if item is None:
            raise InputError(f"unknown labelled background {background_id!r} under {self.root}")
        return item

    def load(self, background_id: str) -> Background:
        """The frame's RGB and trainIds (255 = ignore), resized if ``size`` was given."""
        img, lab = self._item(background_id)
        rgb, raw = read_rgb(img), read_label(lab)
        if raw.shape != rgb.shape[:2]:
            raise DatasetError(
                f"{lab}: label map is {raw.shape[1]}x{raw.shape[0]} but its image {img} is "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        rgb, labels = resize_background(rgb, self.class_map.apply(raw), self.size)
        return Background(id=background_id, rgb=rgb, labels=labels)
