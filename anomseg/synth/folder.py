"""An unlabelled image folder (a user's dash-cam frames) as a background source.

There are no labels, so placement reads the model's own predicted segmentation: the argmax
trainIds of a given predictor, resized (nearest) to the frame. These pseudo-labels are written
once, content-addressed, to ``pseudo_labels/<hash>.png`` and *pinned* in the background id:

* ``ids()`` lists the plain ids (file names, e.g. ``frame_0001.jpg``);
* ``load("frame_0001.jpg")`` runs the predictor, stores the labels and returns a background whose
  id is ``frame_0001.jpg@<hash16>``;
* ``load("frame_0001.jpg@<hash16>")`` reads the stored labels and never runs a model.

Paste records and stored samples carry the pinned id, so re-rendering a sample is deterministic
even after the model was retrained or replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.atomic import atomic_write
from anomseg.data.benchmark import IMAGE_EXTENSIONS, natural_key
from anomseg.errors import DatasetError, InputError
from anomseg.imageio import array_sha256, resize_label
from anomseg.synth.imageio import encode_image, read_label, read_rgb
from anomseg.synth.labelled import check_size, resize_background
from anomseg.synth.sources import BACKGROUND_SOURCES, Background

PIN = "@"
HASH_CHARS = 16


def predicted_train_ids(predictor: Any, rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 argmax trainIds of ``predictor`` on ``rgb``, at the image's own size.

    ``predictor`` is an ``anomseg.predict.Predictor`` (anything with ``predict(rgb)``) or a
    callable ``rgb -> Prediction | (h, w) array of trainIds``.
    """
    out = predictor.predict(rgb) if hasattr(predictor, "predict") else predictor(rgb)
    if hasattr(out, "semantic"):
        out = out.semantic().detach().cpu().numpy()
    sem = np.asarray(out)
    if sem.ndim != 2:
        raise InputError(f"pseudo-labels: expected an (H, W) trainId map, got shape {sem.shape}")
    sem = sem.astype(np.uint8)
    H, W = rgb.shape[:2]
    if sem.shape != (H, W):
        sem = resize_label(sem, (H, W))
    return sem


def split_pinned(background_id: str) -> tuple[str, str | None]:
    """``name@hash`` -> (name, hash); a plain id -> (id, None)."""
    name, sep, digest = background_id.rpartition(PIN)
    if not sep:
        return background_id, None
    return name, digest


@BACKGROUND_SOURCES.register("folder")
class ImageFolderBackgrounds:
    """Every image of ``root`` (flat), labelled by a model's predictions (see module docstring)."""

    name = "folder"
    PATH_OPTIONS = ("root", "pseudo_labels")

    def __init__(
        self,
        root: str | Path,
        pseudo_labels: str | Path,
        predictor: Callable[[np.ndarray], Any] | Any | None = None,
        model: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.pseudo_dir = Path(pseudo_labels)
        self.predictor = predictor
        self.model = model  # the store's model name the pseudo-labels come from (provenance)
        self.size = check_size(size, "folder")
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist or is not a folder")
        files = [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")]
        others = sorted(p.name for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS)
        if others:
            more = f" and {len(others) - 5} more" if len(others) > 5 else ""
            raise InputError(
                f"image folder {self.root} holds files that are not images: "
                f"{', '.join(others[:5])}{more}; expected only {', '.join(IMAGE_EXTENSIONS)} "
                "files (move the others out)"
            )
        images = sorted(files, key=lambda p: natural_key(p.name))
        if not images:
            raise DatasetError(
                f"image folder {self.root} has no images (expected {', '.join(IMAGE_EXTENSIONS)})"
            )
        from anomseg.imageio import image_size

        for p in images:  # header check now: a broken file is named before anything is written
            try:
                image_size(p)
            except InputError as exc:
                raise InputError(f"image folder {self.root}: {exc}") from None
        self._paths = {p.name: p for p in images}
        self._ids = [p.name for p in images]

    def ids(self) -> list[str]:
        """File names in natural order (plain ids: loading one labels it)."""
        return list(self._ids)

    def _path(self, name: str) -> Path:
        p = self._paths.get(name)
        if p is None:
            raise InputError(f"unknown folder background {name!r} under {self.root}")
        return p

    def labels_path(self, digest: str) -> Path:
        """Where the pseudo-labels of hash ``digest`` are stored."""
        return self.pseudo_dir / f"{digest}.png"

    def load(self, background_id: str) -> Background:
        """The frame with pinned pseudo-labels (computed and stored on first load)."""
        name, digest = split_pinned(background_id)
        rgb = read_rgb(self._path(name))
        if digest is not None:
            lp = self.labels_path(digest)
            if not lp.is_file():
                raise DatasetError(
                    f"pseudo-labels {lp} of background {background_id!r} are missing; the "
                    "sample cannot be re-rendered without them"
                )
            labels = read_label(lp)
            rgb, _ = resize_background(rgb, np.zeros(rgb.shape[:2], np.uint8), self.size)
            if labels.shape != rgb.shape[:2]:
                raise DatasetError(
                    f"pseudo-labels {lp} are {labels.shape[1]}x{labels.shape[0]}; its frame "
                    f"{name} is {rgb.shape[1]}x{rgb.shape[0]}"
                )
            return Background(id=background_id, rgb=rgb, labels=labels)
        if self.predictor is None:
            raise InputError(
                f"folder background {name!r} has no pseudo-labels yet and no model was given to "
                "predict them"
            )
        rgb, _ = resize_background(rgb, np.zeros(rgb.shape[:2], np.uint8), self.size)
        labels = predicted_train_ids(self.predictor, rgb)
        digest = array_sha256(labels)[:HASH_CHARS]
        lp = self.labels_path(digest)
        if not lp.is_file():  # content-addressed: an existing file already holds these labels
            atomic_write(lp, encode_image(labels))
        return Background(id=f"{name}{PIN}{digest}", rgb=rgb, labels=labels)
