"""Fitting a head on a pixel set: BCE-with-logits (pos_weight, per-pixel weights), AdamW,
balanced pixel batches.

``train_pixels`` is the pure core (a ``PixelSet`` in, a trained head out); it runs in one process
or as one rank of DistributedDataParallel (``training.ddp``). The store-facing run around it is
``training.trainer.train_head``.

DDP equivalence (why a 2-process run matches a 1-process run): every rank draws the same seeded
global batch and takes ``batch[rank::world]`` (equal shares); each rank's loss is the *mean* of
its weighted per-pixel losses, and DDP averages gradients, so the averaged gradient is exactly
the gradient of the global batch's mean loss. The weights start identical (same seed, and DDP
broadcasts rank 0's). Only dropout differs (each rank draws its own masks), so the equivalence
test disables it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.errors import AnomsegError, InputError
from anomseg.models.heads import Head, bilinear_corners, create_head
from training.config import TrainConfig
from training.dataset import BalancedSampler, PixelSet
from training.recipes import RECIPES, ImageSampler

Progress = Callable[[float, str], None]


class Cancelled(AnomsegError):
    """Training was cancelled (by the job's cancel flag)."""


@dataclass
class TrainResult:
    """A trained head and what happened while training it."""

    head: Head
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # mean loss per epoch


class PixelModule(nn.Module):
    """Wraps a head so DDP sees one ``forward`` over sampled pixels."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.head = head

    def forward(
        self,
        stats: torch.Tensor,
        cell_feats: torch.Tensor | None = None,
        corner_idx: torch.Tensor | None = None,
        corner_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head.forward_pixels(stats, cell_feats, corner_idx, corner_w)


def build_head(config: TrainConfig, feat_dim: int | None) -> Head:
    """A freshly initialised head for ``config`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    if config.head == "features":
        if feat_dim is None:
            raise InputError(
                "the feature-enriched head needs patch features, but the training set has none; "
                "use --head stats for pixel models"
            )
        return create_head("features", feat_dim=feat_dim, dropout=config.dropout)
    return create_head(config.head, dropout=config.dropout)


class BatchMaker:
    """Turns global-batch indices into the tensors a head's ``forward_pixels`` takes."""

    def __init__(self, pixels: PixelSet, device: torch.device) -> None:
        self.px = pixels
        self.device = device
        self.flat = None
        if pixels.features is not None:
            n, d, h, w = pixels.features.shape
            # (n * h * w, D) rows: a corner gather is one index_select
            self.flat = pixels.features.permute(0, 2, 3, 1).reshape(n * h * w, d)
            self.grid = (h, w)

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(stats, target, weight, cell features, corner indices, corner weights) of a batch."""
        px = self.px
        stats = px.stats[idx].float()
        target, weight = px.target[idx], px.weight[idx]
        feats = ci = cw = None
        if self.flat is not None:
            W = px.size[1]
            pos = px.pos[idx]
            ci, cw = bilinear_corners(pos // W, pos % W, px.size, self.grid)
            ci = ci + (px.image[idx] * (self.grid[0] * self.grid[1])).unsqueeze(1)
            # pixels share grid cells (16x16 patches): gather and project each cell once
            cells, ci = torch.unique(ci, return_inverse=True)
            feats = self.flat[cells].float().to(self.device)
            ci, cw = ci.to(self.device), cw.to(self.device)
        dev = self.device
        return stats.to(dev), target.to(dev), weight.to(dev), feats, ci, cw


def pixel_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    """Mean over pixels of weight * BCE-with-logits(pos_weight)."""
    pw = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    return (per * weight).mean()


def train_pixels(
    pixels: PixelSet,
    config: TrainConfig,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    rank: int = 0,
    world: int = 1,
    device: str | torch.device = "cpu",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainResult:
    """Train a fresh head on ``pixels``; in DDP each rank calls this with its rank and ``wrap``."""
    before = torch.get_num_threads()
    threads = config.threads or (1 if config.head == "stats" else before)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        return _train(pixels, config, progress, should_stop, rank, world, device, wrap)
    finally:
        if threads != before:
            torch.set_num_threads(before)


def _train(
    pixels: PixelSet,
    config: TrainConfig,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    rank: int,
    world: int,
    device: str | torch.device,
    wrap: Callable[[nn.Module], nn.Module] | None,
) -> TrainResult:
    device = torch.device(device)
    head = build_head(config, pixels.feat_dim).to(device)
    module: nn.Module = PixelModule(head)
    if wrap is not None:
        module = wrap(module)
    # dropout masks: own stream per rank (the init above used the shared seed)
    torch.manual_seed(config.seed * 7919 + 1 + rank)
    opt = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    recipe = RECIPES.get(config.recipe)
    if recipe.sampler == "images":
        sampler: Any = ImageSampler(pixels.image, config.seed)
    else:
        sampler = BalancedSampler(
            pixels.target,
            config.batch_pixels,
            config.seed,
            config.steps_per_epoch,
            world,
            flagged=pixels.flagged,
            flag_share=config.flag_share,
            min_steps=len(pixels.image_hashes),
        )
    make = BatchMaker(pixels, device)
    total = config.epochs * sampler.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: recipe.lr_factor(s, total))
    history: list[float] = []
    t0 = last = time.perf_counter()
    step = 0
    module.train()
    for epoch in range(config.epochs):
        running, count = 0.0, 0
        for batch in sampler.epoch(epoch):
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            local = batch[rank::world]
            stats, target, weight, feats, ci, cw = make(local)
            loss = pixel_loss(module(stats, feats, ci, cw), target, weight, config.pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            running += float(loss.detach())
            count += 1
            step += 1
            now = time.perf_counter()
            if progress is not None and (now - last > 0.5 or step == total):
                last = now
                progress(
                    step / total, f"epoch {epoch + 1}/{config.epochs} loss {running / count:.4f}"
                )
        history.append(running / max(count, 1))
    head.eval()
    metrics = {
        "final_loss": history[-1],
        "steps": total,
        "steps_per_epoch": sampler.steps,
        "batch_pixels": sampler.batch,
        "seconds": round(time.perf_counter() - t0, 3),
        "positives": pixels.n_pos,
        "negatives": pixels.n_neg,
        "world_size": world,
    }
    return TrainResult(head=head.cpu(), metrics=metrics, history=history)
