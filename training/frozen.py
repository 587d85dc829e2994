"""The frozen model a training run is handed: what training needs to know of it, built lazily.

Training never builds a model itself: the application layer (``workbench.models.frozen_model``)
turns a store row into a ``FrozenModel`` whose ``load`` builds the Predictor on first use, so a
run whose features are all in the cache never loads the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class FrozenModel:
    """A registered model, built on first use (``load``) or handed over built (``predictor``)."""

    model_id: int
    name: str
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    input_size: tuple[int, int] | None
    load: Callable[[], Any] | None = None
    predictor: Any = None

    def __post_init__(self) -> None:
        if self.predictor is not None and self.input_size is None:
            self.input_size = tuple(self.predictor.input_size)
        if self.predictor is None and self.load is None:
            raise ValueError(f"frozen model {self.name!r}: give a predictor or a load function")

    def get_predictor(self) -> Any:
        """The Predictor (built on first use)."""
        if self.predictor is None:
            self.predictor = self.load()
        return self.predictor

    @property
    def size(self) -> tuple[int, int]:
        """The input (= scoring) size."""
        if self.input_size is not None:
            return self.input_size
        return tuple(self.get_predictor().input_size)

    @property
    def cache_key(self) -> str:
        """The checkpoint hash, or the weights' fingerprint when there is no checkpoint."""
        return self.checkpoint_sha256 or self.get_predictor().model_key.replace("@", "-")

    def predict(self, rgb: Any) -> Any:
        """One Prediction."""
        return self.get_predictor().predict(rgb)
