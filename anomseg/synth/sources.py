"""The two interfaces the paste engine reads from: object sources and backgrounds.

An object source (COCO instances, the built-in procedural object bank) hands out cut-out
objects by a stable id; a background source (Cityscapes, the built-in procedural scenes) hands
out an image with trainId labels by a stable id. Paste records refer to both by id only, so a
record is small data and the picture is a pure function of the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from anomseg.registry import Registry


@dataclass(frozen=True)
class SourceObject:
    """A cut-out object: tight crop of RGB pixels and its boolean mask (same h x w)."""

    id: str
    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool
    category: str = "object"


@dataclass(frozen=True)
class Background:
    """A background image with Cityscapes trainId labels (255 = ignore)."""

    id: str
    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8 trainIds


@runtime_checkable
class ObjectSource(Protocol):
    name: str

    def ids(self) -> list[str]:
        """All object ids this source can load, in a stable order."""
        ...

    def load(self, object_id: str) -> SourceObject:
        """The object with this id; raises anomseg.errors.InputError for an unknown id."""
        ...


@runtime_checkable
class BackgroundSource(Protocol):
    name: str

    def ids(self) -> list[str]:
        """All background ids, in a stable order."""
        ...

    def load(self, background_id: str) -> Background:
        """The background with this id; raises anomseg.errors.InputError for an unknown id."""
        ...


# name -> builder(**config) returning an ObjectSource / BackgroundSource.
OBJECT_SOURCES: Registry = Registry(
    "object source", builtins=("anomseg.synth.coco", "anomseg.world.objects")
)
BACKGROUND_SOURCES: Registry = Registry(
    "background source",
    builtins=(
        "anomseg.synth.cityscapes",
        "anomseg.synth.labelled",
        "anomseg.synth.folder",
        "anomseg.world.scenes",
    ),
)
