"""Head training recipes: ours ("default") and the seed research's ("seed"), side by side.

A recipe fixes what a researcher would otherwise have to get right by hand to reproduce a
published head: optimiser settings, learning-rate schedule, how pixels are drawn into batches
and what void (label 255) pixels count as. ``TrainConfig(recipe=...)`` takes its learning rate
and weight decay from here unless given explicitly.

* ``default``: AdamW lr 3e-3, weight decay 1e-4, constant rate, 50/50 balanced pixel batches
  (``BalancedSampler``), void ignored.
* ``seed`` (the seed's two head branches): AdamW lr 1e-4, weight decay 0.05, 200-step linear
  warm-up then poly(0.9) decay to 0, one whole image per step at its natural class frequency
  (``ImageSampler``), void pixels normal for the stats head and ignored for the feature head.

Both use BCE-with-logits with ``pos_weight`` 10. No torch at import (``training.config`` reads
the names for ``--help``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from anomseg.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """What a recipe sets; ``void_normal_for`` lists the head kinds whose void pixels are normal."""

    name: str
    lr: float
    weight_decay: float
    warmup_steps: int = 0
    poly_power: float | None = None  # None: constant learning rate after the warm-up
    sampler: str = "balanced"  # "balanced" (50/50 pixel batches) or "images" (one image a step)
    void_normal_for: tuple[str, ...] = ()
    description: str = ""

    def void_as_normal(self, head_kind: str) -> bool:
        """Whether void (255) ground-truth pixels train as normal for this head kind."""
        return head_kind in self.void_normal_for

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of the base learning rate at optimiser step ``step`` of ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.poly_power is None:
            return 1.0
        span = max(1, total - self.warmup_steps)
        return max(0.0, 1.0 - (step - self.warmup_steps) / span) ** self.poly_power


RECIPES: Registry[Recipe] = Registry("training recipe")
RECIPES.register(
    "default",
    Recipe(
        "default",
        lr=3e-3,
        weight_decay=1e-4,
        description="ours: lr 3e-3, wd 1e-4, constant, 50/50 balanced pixel batches, void ignored",
    ),
)
RECIPES.register(
    "seed",
    Recipe(
        "seed",
        lr=1e-4,
        weight_decay=0.05,
        warmup_steps=200,
        poly_power=0.9,
        sampler="images",
        void_normal_for=("stats",),
        description="the seed's: lr 1e-4, wd 0.05, 200-step warm-up + poly(0.9), whole images "
        "at natural class frequency, void normal (stats head) / ignored (feature head)",
    ),
)


class ImageSampler:
    """One whole image's labelled pixels per step, images in a seeded order per epoch.

    The seed's loop: every pixel of the image at its natural class frequency (no balancing).
    ``batch[rank::world]`` splits an image across DDP ranks like ``BalancedSampler``'s batches.
    """

    def __init__(self, image: Any, seed: int = 0) -> None:
        import torch

        order = torch.argsort(image, stable=True)
        counts = torch.bincount(image[order]) if len(image) else torch.zeros(0, dtype=torch.long)
        self._groups = [g for g in torch.split(order, counts.tolist()) if len(g)]
        self.seed = int(seed)
        self.steps = len(self._groups)
        self.batch = round(len(image) / max(1, self.steps))  # mean pixels per step

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The steps of one epoch: index tensors of one image's pixels each."""
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        for i in torch.randperm(self.steps, generator=g).tolist():
            yield self._groups[i]
