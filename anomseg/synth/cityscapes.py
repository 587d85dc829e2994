"""Cityscapes as a background source: ``leftImg8bit`` images with ``gtFine`` trainId labels.

Layout (official): ``<root>/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` and
``<root>/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png`` (preferred, as written by
cityscapesScripts' createTrainIdLabelImgs) or ``..._gtFine_labelIds.png`` (mapped to trainIds).
Background ids are ``<split>/<city>/<frame>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomseg.data.classes import label_ids_to_train_ids
from anomseg.errors import DatasetError, InputError
from anomseg.synth.imageio import read_label, read_rgb
from anomseg.synth.sources import BACKGROUND_SOURCES, Background

IMG_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


@BACKGROUND_SOURCES.register("cityscapes")
class CityscapesBackgrounds:
    """Cityscapes frames of one or more splits, optionally resized to ``size`` = [W, H]."""

    name = "cityscapes"

    def __init__(
        self,
        root: str | Path,
        split: str | list[str] = "train",
        cities: list[str] | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        splits = [split] if isinstance(split, str) else list(split)
        if size is not None:
            ok = (
                isinstance(size, list | tuple)
                and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            )
            if not ok:
                raise InputError(f"cityscapes size: expected [width, height] > 0, got {size!r}")
            size = (int(size[0]), int(size[1]))
        self.size = size
        self._items: dict[str, tuple[Path, Path, bool]] = {}
        for sp in splits:
            img_dir = self.root / "leftImg8bit" / sp
            if not img_dir.is_dir():
                raise DatasetError(
                    f"Cityscapes images folder {img_dir} does not exist (expected "
                    f"<root>/leftImg8bit/<split>/<city>/*{IMG_SUFFIX})"
                )
            for img in sorted(img_dir.glob(f"*/*{IMG_SUFFIX}")):
                city = img.parent.name
                if cities is not None and city not in cities:
                    continue
                frame = img.name[: -len(IMG_SUFFIX)]
                gt_dir = self.root / "gtFine" / sp / city
                train_ids = gt_dir / f"{frame}{TRAIN_IDS_SUFFIX}"
                label_ids = gt_dir / f"{frame}{LABEL_IDS_SUFFIX}"
                if train_ids.is_file():
                    self._items[f"{sp}/{city}/{frame}"] = (img, train_ids, True)
                elif label_ids.is_file():
                    self._items[f"{sp}/{city}/{frame}"] = (img, label_ids, False)
                else:
                    raise DatasetError(f"no label for {img}: expected {train_ids} or {label_ids}")
        self._ids = sorted(self._items)

    def ids(self) -> list[str]:
        """``<split>/<city>/<frame>`` ids in sorted order."""
        return list(self._ids)

    def load(self, background_id: str) -> Background:
        """The frame's RGB and trainIds (255 = ignore), resized if ``size`` was given."""
        item = self._items.get(background_id)
        if item is None:
            raise InputError(f"unknown Cityscapes background {background_id!r} under {self.root}")
        img_path, lab_path, is_train_ids = item
        rgb = read_rgb(img_path)
        lab = read_label(lab_path)
        if not is_train_ids:
            lab = label_ids_to_train_ids(lab)
        if lab.shape != rgb.shape[:2]:
            raise DatasetError(
                f"label {lab_path} is {lab.shape[1]}x{lab.shape[0]} but image {img_path} is "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        if self.size is not None and (rgb.shape[1], rgb.shape[0]) != self.size:
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize(self.size, Image.Resampling.BILINEAR))
            lab = np.asarray(Image.fromarray(lab).resize(self.size, Image.Resampling.NEAREST))
        return Background(id=background_id, rgb=rgb, labels=lab)
