"""Closed-set segmentation readers (for mIoU): Cityscapes and a plain ``images/ + labels/`` folder.

Labels come out as Cityscapes trainIds (0..18, 255 = ignore):

* ``CityscapesDataset``: the official layout
  ``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<x>_gtFine_labelTrainIds.png`` (used as is when present) or
  ``<x>_gtFine_labelIds.png`` (mapped labelId -> trainId by ``anomseg.data.classes``).
* ``SegmentationFolder``: ``<root>/images/<stem>.{png,jpg,jpeg,webp}`` with
  ``<root>/labels/<stem>.png`` holding trainIds (the built-in world's held-out split).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomseg.data.benchmark import (
    PairedDataset,
    Sample,
    _require_dir,
    check_label_values,
    list_images,
    natural_key,
)
from anomseg.data.classes import CITYSCAPES_CLASSES, IGNORE, label_ids_to_train_ids
from anomseg.errors import DatasetError, InputError

_TRAIN_ID_OK = np.zeros(256, dtype=bool)
_TRAIN_ID_OK[: len(CITYSCAPES_CLASSES)] = True
_TRAIN_ID_OK[IGNORE] = True

LABEL_KINDS = ("auto", "labelTrainIds", "labelIds")


class CityscapesDataset(PairedDataset):
    """Cityscapes ``leftImg8bit`` images with ``gtFine`` labels as trainIds."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        label_kind: str = "auto",
        size: tuple[int, int] | None = None,
        max_pixels: int | None = None,
        check_sizes: bool = False,
    ) -> None:
        if label_kind not in LABEL_KINDS:
            raise InputError(f"label_kind {label_kind!r}; expected one of {', '.join(LABEL_KINDS)}")
        self.root = Path(root)
        self.split = split
        self.name = f"cityscapes-{split}"
        self.size = size
        self.max_pixels = max_pixels
        _require_dir(self.root, "Cityscapes root")
        img_root = self.root / "leftImg8bit" / split
        gt_root = self.root / "gtFine" / split
        _require_dir(img_root, f"Cityscapes images of split {split!r}")
        _require_dir(gt_root, f"Cityscapes gtFine labels of split {split!r}")
        self.samples = []
        self._kinds: list[str] = []
        suffix = "_leftImg8bit.png"
        files = sorted(img_root.glob(f"*/*{suffix}"), key=lambda p: natural_key(str(p)))
        files = [p for p in files if not p.name.startswith(".")]
        if not files:
            raise DatasetError(f"{img_root}: no '*{suffix}' images found under <city>/ folders")
        for img in files:
            stem = img.name[: -len(suffix)]
            city = img.parent.name
            kind, label = self._find_label(gt_root / city, stem, label_kind)
            if label is None:
                raise DatasetError(
                    f"{img}: image has no label file; expected "
                    f"{gt_root / city / (stem + '_gtFine_labelIds.png')} (or *_labelTrainIds.png)"
                )
            self.samples.append(Sample(stem, img, label))
            self._kinds.append(kind)
        if check_sizes:
            self.check_sizes()

    @staticmethod
    def _find_label(folder: Path, stem: str, label_kind: str) -> tuple[str, Path | None]:
        kinds = ("labelTrainIds", "labelIds") if label_kind == "auto" else (label_kind,)
        for kind in kinds:
            p = folder / f"{stem}_gtFine_{kind}.png"
            if p.is_file():
                return kind, p
        return label_kind, None

    def read_label(self, i: int) -> np.ndarray | None:
        """The i-th label as trainIds (labelIds files are mapped, trainId files checked)."""
        s = self.samples[i]
        label = PairedDataset.read_label(self, i)
        if label is None:
            return None
        if self._kinds[i] == "labelIds":
            return label_ids_to_train_ids(label)
        return _check_train_ids(label, s.label_path)


def _check_train_ids(label: np.ndarray, path: Path | None) -> np.ndarray:
    check_label_values(
        label,
        _TRAIN_ID_OK,
        Path(str(path)),
        f"expected Cityscapes trainIds 0..{len(CITYSCAPES_CLASSES) - 1} or {IGNORE} (ignore)",
    )
    return label


class SegmentationFolder(PairedDataset):
    """``<root>/images/*`` with ``<root>/labels/<stem>.png`` trainId maps."""

    def __init__(
        self,
        root: str | os.PathLike,
        size: tuple[int, int] | None = None,
        name: str | None = None,
        images_dir: str = "images",
        labels_dir: str = "labels",
        max_pixels: int | None = None,
        check_sizes: bool = True,
    ) -> None:
        self.root = Path(root)
        self.name = name or self.root.name
        self.size = size
        self.max_pixels = max_pixels
        _require_dir(self.root, "dataset root")
        img_dir, lab_dir = self.root / images_dir, self.root / labels_dir
        _require_dir(img_dir, f"images folder of dataset {self.name!r}")
        _require_dir(lab_dir, f"labels folder of dataset {self.name!r}")
        images = list_images(img_dir)
        if not images:
            raise DatasetError(f"{img_dir}: no images found")
        self.samples = []
        for img in images:
            label = lab_dir / f"{img.stem}.png"
            if not label.is_file():
                raise DatasetError(f"{img}: image has no label file; expected {label}")
            self.samples.append(Sample(img.stem, img, label))
        if check_sizes:
            self.check_sizes()

    def _check_values(self, label: np.ndarray, path: Path) -> np.ndarray:
        return _check_train_ids(label, path)
