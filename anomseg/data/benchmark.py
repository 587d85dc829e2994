"""Anomaly benchmarks read by layout: ``<root>/images/*`` paired with ``<root>/labels_masks/*``.

Every public anomaly benchmark in the SegmentMeIfYouCan / Fishyscapes layout (RoadAnomaly21,
RoadObstacle21, Fishyscapes Static and Lost&Found, Road Anomaly) is read by this one class, never
by a hard-coded dataset name:

* images: ``<root>/images/<stem>.{png,jpg,jpeg,webp}`` (hidden files such as ``.DS_Store`` or
  ``._0.png`` and files of other types are ignored);
* labels: ``<root>/labels_masks/<stem>.png`` (or the official SegmentMeIfYouCan name
  ``<stem>_labels_semantic.png``), 8-bit, coded 0 = normal, 1 = anomaly, 255 = ignore.

Some copies code anomaly differently (Road Anomaly: 2 = anomaly). ``remap`` maps label values
before validation; ``remap="auto"`` (the default) looks the root folder's name up in
``KNOWN_REMAPS``. Any value left outside {0, 1, 255} is an error naming the file and the values.

Resizing follows the seed protocol (as torchvision's ``Resize`` on a PIL image does): the image
bilinearly, the label with nearest neighbour, both through Pillow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomseg.errors import DatasetError, InputError
from anomseg.imageio import image_sha256, image_size, read_image, read_label, resize_image
from anomseg.imageio import resize_label as _resize_label
from anomseg.labels import ANOMALY, IGNORE, NORMAL
from anomseg.registry import Registry

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
LABEL_VALUES: tuple[int, ...] = (NORMAL, ANOMALY, IGNORE)

# Dataset folder name -> label value remap applied by remap="auto".
KNOWN_REMAPS: Registry[dict[int, int]] = Registry("dataset remap")
KNOWN_REMAPS.register("RoadAnomaly", {2: ANOMALY})

Remap = Mapping[int, int] | None


def known_remap(name: str) -> dict[int, int] | None:
    """The registered remap for a dataset folder name (case-insensitive), or None."""
    for key, remap in KNOWN_REMAPS.items():
        if key.casefold() == name.casefold():
            return dict(remap)
    return None


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", name)]


def _is_junk(p: Path) -> bool:
    return p.name.startswith(".") or not p.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (by extension, hidden files ignored), naturally sorted."""
    files = [
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not _is_junk(p)
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image bilinearly and its label with nearest neighbour to ``size`` = (H, W)."""
    if size is None:
        return image, label
    return resize_image(image, size), None if label is None else _resize_label(label, size)


def _lut(remap: Mapping[int, int]) -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    for src, dst in remap.items():
        if not (0 <= int(src) <= 255 and 0 <= int(dst) <= 255):
            raise InputError(f"label remap {src}->{dst}: values must lie in 0..255")
        lut[int(src)] = int(dst)
    return lut


def check_label_values(label: np.ndarray, allowed: np.ndarray, path: Path, hint: str) -> None:
    """Raise DatasetError listing the values of ``label`` that ``allowed`` (256 bools) refuses."""
    bad = ~allowed[label]
    if bad.any():
        values = np.unique(label[bad]).tolist()
        shown = ", ".join(map(str, values[:20])) + (" ..." if len(values) > 20 else "")
        raise DatasetError(f"{path}: unexpected label values {shown}; {hint}")


LABEL_DIRS: tuple[str, ...] = ("labels_masks", "labels")
_ALLOWED = np.isin(np.arange(256), LABEL_VALUES)


def read_anomaly_label(
    root: str | os.PathLike, image_path: str, remap: Remap = None
) -> np.ndarray | None:
    """The 0/1/255 ground truth of an image of a dataset folder, or None when it has none.

    Looked up beside the image's stem in ``labels_masks/`` then ``labels/``, as ``<stem>.png``
    or the official ``<stem>_labels_semantic.png``; values are remapped (``remap``, else the
    folder's known remap) and then must be 0, 1 or 255.
    """
    root = Path(root)
    stem = Path(image_path).stem
    for labels_dir in LABEL_DIRS:
        for cand in (f"{stem}.png", f"{stem}_labels_semantic.png"):
            p = root / labels_dir / cand
            if p.is_file():
                label = read_label(p)
                remap = remap or known_remap(root.name)
                if remap:
                    label = _lut(remap)[label]
                check_label_values(label, _ALLOWED, p, "expected 0 / 1 / 255")
                return label
    return None


@dataclass(frozen=True)
class Sample:
    """One image/label file pair of a dataset."""

    name: str
    image_path: Path
    label_path: Path | None


class PairedDataset:
    """Base of the folder readers: a list of ``Sample`` pairs, read and checked on access.

    ``__getitem__`` returns ``(image uint8 (H, W, 3), label uint8 (H, W), name)``, resized to
    ``size`` when one is given. Subclasses fill ``self.samples`` and define ``_check_values``.
    """

    name: str
    samples: list[Sample]
    size: tuple[int, int] | None = None
    max_pixels: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None, str]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)})"

    @property
    def names(self) -> list[str]:
        """Sample names, in order."""
        return [s.name for s in self.samples]

    def read_image(self, i: int) -> np.ndarray:
        """The i-th image at its stored size (errors name the file)."""
        try:
            return read_image(self.samples[i].image_path, self.max_pixels)
        except InputError as exc:
            raise DatasetError(str(exc)) from None

    def read_label(self, i: int) -> np.ndarray | None:
        """The i-th label map at its stored size, remapped and checked (errors name the file)."""
        s = self.samples[i]
        if s.label_path is None:
            return None
        try:
            label = read_label(s.label_path, self.max_pixels)
        except InputError as exc:
            raise DatasetError(str(exc)) from None
        return self._check_values(label, s.label_path)

    def _check_values(self, label: np.ndarray, path: Path) -> np.ndarray:
        return label

    def read_pair(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and label at their stored size, checked to have the same size."""
        image = self.read_image(i)
        label = self.read_label(i)
        if label is not None and label.shape[:2] != image.shape[:2]:
            s = self.samples[i]
            raise DatasetError(_size_mismatch(s, image.shape[:2], label.shape[:2]))
        return image, label

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} samples")
        i = i % len(self)
        image, label = self.read_pair(i)
        image, label = resize_pair(image, label, self.size)
        return image, label, self.samples[i].name

    def check_sizes(self) -> None:
        """Compare image and label sizes from the file headers only (cheap)."""
        for s in self.samples:
            if s.label_path is None:
                continue
            try:
                hi, hl = image_size(s.image_path), image_size(s.label_path)
            except InputError as exc:
                raise DatasetError(str(exc)) from None
            if hi != hl:
                raise DatasetError(_size_mismatch(s, hi, hl))

    def validate(self) -> None:
        """Decode every pair and check it (sizes and label values); raises on the first problem."""
        for i in range(len(self)):
            self.read_pair(i)


def _size_mismatch(s: Sample, hw_image: tuple[int, ...], hw_label: tuple[int, ...]) -> str:
    return (
        f"{s.label_path}: label is {hw_label[1]}x{hw_label[0]} (WxH) but its image "
        f"{s.image_path} is {hw_image[1]}x{hw_image[0]}; expected the same size"
    )


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} is not a directory")


class BenchmarkDataset(PairedDataset):
    """An anomaly benchmark in the ``images/`` + ``labels_masks/`` layout (see module doc)."""

    IMAGES_DIR = "images"
    LABELS_DIR = "labels_masks"

    def __init__(
        self,
        root: str | os.PathLike,
        remap: Remap | str = "auto",
        size: tuple[int, int] | None = None,
        name: str | None = None,
        max_pixels: int | None = None,
        check_sizes: bool = True,
    ) -> None:
        self.root = Path(root)
        self.name = name or self.root.name
        self.size = size
        self.max_pixels = max_pixels
        if isinstance(remap, str):
            if remap != "auto":
                raise InputError(f"remap must be a dict, None or 'auto', got {remap!r}")
            remap = known_remap(self.root.name)
        self.remap: dict[int, int] | None = dict(remap) if remap else None
        self._lut = _lut(self.remap) if self.remap else None
        self._allowed = np.zeros(256, dtype=bool)
        self._allowed[list(LABEL_VALUES)] = True

        _require_dir(self.root, "dataset root")
        images_dir, labels_dir = self.root / self.IMAGES_DIR, self.root / self.LABELS_DIR
        _require_dir(images_dir, f"images folder of dataset {self.name!r}")
        _require_dir(
            labels_dir, f"labels folder of dataset {self.name!r} (expected 'labels_masks/')"
        )
        images = list_images(images_dir)
        if not images:
            raise DatasetError(
                f"{images_dir}: no images found (expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        self.samples = []
        seen: dict[str, Path] = {}
        for img in images:
            stem = img.stem
            if stem in seen:
                raise DatasetError(
                    f"{img}: two images share the name {stem!r} ({seen[stem].name} and "
                    f"{img.name}); expected one image per label file"
                )
            seen[stem] = img
            label = self._find_label(labels_dir, stem)
            if label is None:
                raise DatasetError(
                    f"{img}: image has no label file; expected {labels_dir / (stem + '.png')}"
                )
            self.samples.append(Sample(stem, img, label))
        if check_sizes:
            self.check_sizes()

    @staticmethod
    def _find_label(labels_dir: Path, stem: str) -> Path | None:
        for cand in (f"{stem}.png", f"{stem}_labels_semantic.png"):
            p = labels_dir / cand
            if p.is_file():
                return p
        return None

    def _check_values(self, label: np.ndarray, path: Path) -> np.ndarray:
        if self._lut is not None:
            label = self._lut[label]
        if self.remap:
            hint = f"expected 0 (normal), 1 (anomaly) or 255 (ignore) after the remap {self.remap}"
        else:
            hint = (
                "expected 0 (normal), 1 (anomaly) or 255 (ignore); pass a value remap "
                "(e.g. remap={2: 1}, or --remap 2=1 on the command line) if this dataset codes "
                "its labels differently"
            )
        check_label_values(label, self._allowed, path, hint)
        return label


class PairTensorDataset:
    """A torch-style Dataset over a ``PairedDataset`` for DataLoader workers.

    Each item is ``(image uint8 (H, W, 3), label uint8 (H, W) or None, name, sha256 of the
    image file (the image identity the store and the prediction cache share), original (H,
    W))``: images are decoded, hashed and resized to ``size`` inside the worker; labels are
    resized with nearest neighbour to the same size.
    """

    def __init__(self, dataset: PairedDataset, size: tuple[int, int] | None) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(
        self, i: int
    ) -> tuple[np.ndarray, np.ndarray | None, str, str, tuple[int, int]]:
        image, label = self.dataset.read_pair(i)
        digest = image_sha256(self.dataset.samples[i].image_path)
        hw = (int(image.shape[0]), int(image.shape[1]))
        image, label = resize_pair(image, label, self.size)
        return image, label, self.dataset.samples[i].name, digest, hw
