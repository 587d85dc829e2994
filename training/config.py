"""Hyper-parameters of one head training: ``TrainConfig`` (no torch, so the CLI can show its
defaults in ``--help`` without importing the trainer). ``training.trainer`` re-exports it; the
Retrain tab, ``anomseg train`` and the job worker all take their defaults from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from anomseg.errors import InputError


@dataclass
class TrainConfig:
    """Hyper-parameters of one head training (recorded on the HeadVersion)."""

    head: str = "stats"
    epochs: int = 5
    # None: the recipe's (training.recipes); an explicit value overrides it
    lr: float | None = None
    weight_decay: float | None = None
    # "default" (ours) or "seed" (the seed research's optimiser, schedule, sampling and void)
    recipe: str = "default"
    # where the head meets EoMT's sliding windows: each "window" (the seed's; measured better,
    # README) or the "stitched" maps (anomseg.head_geometry)
    head_geometry: str = "window"
    batch_pixels: int = 4096
    pos_weight: float = 10.0
    fp_weight: float = 2.0
    fn_weight: float = 2.0
    flag_share: float = 0.25  # share of each batch half drawn from flagged pixels (if any)
    dropout: float = 0.1
    seed: int = 0
    steps_per_epoch: int | None = None
    cache_stride: int = 2
    # CPU threads while training; None: 1 for the stats head (its steps are too small to gain
    # from intra-op threads, which then only add synchronisation: 8x slower on a busy 2-core
    # machine), torch's setting for the feature head (its D-wide projection does gain)
    threads: int | None = None

    def __post_init__(self) -> None:
        from anomseg.head_geometry import GEOMETRIES
        from training.recipes import RECIPES

        if self.recipe not in RECIPES:
            raise InputError(
                f"training recipe {self.recipe!r}; expected one of {', '.join(RECIPES.names())}"
            )
        if self.head_geometry not in GEOMETRIES:
            raise InputError(
                f"head geometry {self.head_geometry!r}; expected one of {', '.join(GEOMETRIES)}"
            )
        recipe = RECIPES.get(self.recipe)
        self.lr = recipe.lr if self.lr is None else float(self.lr)
        if self.weight_decay is None:
            self.weight_decay = recipe.weight_decay
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch_pixels": self.batch_pixels >= 2,
            "pos_weight": self.pos_weight > 0,
            "fp_weight": self.fp_weight > 0,
            "fn_weight": self.fn_weight > 0,
            "flag_share": 0 <= self.flag_share < 1,
            "dropout": 0 <= self.dropout < 1,
            "cache_stride": self.cache_stride >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InputError(
                f"training option {bad[0]}={getattr(self, bad[0])!r} is out of range (epochs >= 1, "
                "lr > 0, batch_pixels >= 2, weights > 0, 0 <= dropout, flag_share < 1, "
                "cache_stride >= 1)"
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise InputError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored as the head version's hyper-parameters)."""
        return asdict(self)
