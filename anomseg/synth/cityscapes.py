"""Cityscapes as a background source: ``leftImg8bit`` images with ``gtFine`` trainId labels.

Layout (official): ``<root>/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` and
``<root>/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png`` (preferred, as written by
cityscapesScripts' createTrainIdLabelImgs) or ``..._gtFine_labelIds.png`` (mapped to trainIds).
Background ids are ``<split>/<city>/<frame>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomseg.data.cityscapes import CityscapesDataset
from anomseg.errors import DatasetError, InputError
from anomseg.synth.sources import BACKGROUND_SOURCES, Background


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
        # discovery, pairing and label decoding are the dataset reader's; ids are ours
        self._items: dict[str, tuple[CityscapesDataset, int]] = {}
        for sp in splits:
            ds = CityscapesDataset(self.root, split=sp)
            for i, smp in enumerate(ds.samples):
                city = smp.image_path.parent.name
                if cities is None or city in cities:
                    self._items[f"{sp}/{city}/{smp.name}"] = (ds, i)
        self._ids = sorted(self._items)

    def ids(self) -> list[str]:
        """``<split>/<city>/<frame>`` ids in sorted order."""
        return list(self._ids)

    def load(self, background_id: str) -> Background:
        """The frame's RGB and trainIds (255 = ignore), resized if ``size`` was given."""
        item = self._items.get(background_id)
        if item is None:
            raise InputError(f"unknown Cityscapes background {background_id!r} under {self.root}")
        ds, i = item
        try:
            rgb, lab = ds.read_pair(i)
        except InputError as exc:  # a broken source file is a dataset problem here
            raise DatasetError(str(exc)) from None
        if self.size is not None and (rgb.shape[1], rgb.shape[0]) != self.size:
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize(self.size, Image.Resampling.BILINEAR))
            lab = np.asarray(Image.fromarray(lab).resize(self.size, Image.Resampling.NEAREST))
        return Background(id=background_id, rgb=rgb, labels=lab)
