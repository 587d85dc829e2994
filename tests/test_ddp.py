"""DDP head training (2 CPU processes, gloo) equals a single-process run on the same data.

Tolerance: the ranks' weights must be bit-identical (DDP all-reduces the same averaged gradient
into both); against one process the weights may differ only by float summation order in the
gradient all-reduce, compounded over the steps: |diff| <= 1e-5 absolute (+1e-4 relative).
Dropout is disabled: each rank draws its own dropout masks, so with dropout the runs are
equivalent in distribution only.
"""

from __future__ import annotations

import pytest
import torch

from training.dataset import PixelSet
from training.ddp import train_ddp
from training.fit import build_head, train_pixels
from training.trainer import TrainConfig

ATOL, RTOL = 1e-5, 1e-4


def toy_pixels(n_img: int = 3, size: tuple[int, int] = (12, 12), feat_dim: int = 6) -> PixelSet:
    """Random stats; positives marked by feature channel 0 (one grid cell per pixel)."""
    g = torch.Generator().manual_seed(0)
    n = n_img * size[0] * size[1]
    target = (torch.rand(n, generator=g) < 0.1).float()
    f = torch.randn(n, feat_dim, generator=g) * 0.1
    f[:, 0] += 2 * target
    feats = f.reshape(n_img, *size, feat_dim).permute(0, 3, 1, 2).contiguous().half()
    image = torch.arange(n) // (size[0] * size[1])
    pos = torch.arange(n) % (size[0] * size[1])
    return PixelSet(torch.rand(n, 4, generator=g), target, torch.ones(n), image, pos, size, feats)


@pytest.mark.slow  # two spawned interpreters importing torch: ~30 s on 2 loaded cores
def test_two_process_ddp_matches_single_process():
    px = toy_pixels()
    cfg = TrainConfig(
        head="features", epochs=2, lr=5e-3, batch_pixels=128, dropout=0.0, seed=5, steps_per_epoch=6
    )
    seen = []
    ddp = train_ddp(px, cfg, nproc=2, keep_rank_states=True, progress=lambda f, m: seen.append(f))
    r0, r1 = ddp.metrics["rank_states"]
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    single = train_pixels(px, cfg)
    ref = single.head.state_dict()
    moved = 0.0
    init = build_head(cfg, px.feat_dim).state_dict()
    for k, v in ddp.head.state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=ATOL, rtol=RTOL)
        moved = max(moved, float((ref[k] - init[k]).abs().max()))
    assert moved > 1e-3  # training did move the weights, so the comparison means something
    assert ddp.metrics["world_size"] == 2 and ddp.metrics["steps"] == 12
    assert seen and seen[-1] == 1.0
