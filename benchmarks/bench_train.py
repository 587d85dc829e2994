"""Benchmark: retraining an anomaly head from the feature cache vs re-running the backbone.

Ours ("cached retrain"): the frozen model's statistics (and patch features) of every training
image are already in the on-disk feature cache (a previous training put them there); a retrain
reads them back (checksums verified), builds the balanced pixel set and trains the head for
``--epochs`` epochs with the default settings (one balanced pass per epoch, 4096 pixels per
step). The backbone is never called (the predict function raises if it is).

Baseline ("the seed's way"): every epoch, every training image goes through the frozen model
again (no cache), the four statistics are computed at full resolution and the head is trained on
the whole map (BCE with pos_weight 10, AdamW), one image per step, as the seed's training loop
did.

Both train the same head kind from the same seed on the same images; the script also prints both
heads' AuPRC on held-out images so the speed does not come from learning less. A third line
isolates the cache alone: our training schedule plus one backbone pass per epoch (measured
backbone-pass time x epochs + our retrain time).

Note what differs besides the cache: the seed's epoch is every pixel of every full-resolution map
(one image per step); ours is one balanced pass over the cached lattice (every anomalous pixel
once, as many normal ones; see ``training.dataset.BalancedSampler``).

Model: the demo EoMT (``eomt_tiny``: ViT with 192-dim tokens, 12 blocks, 256x512 input) with its
initial weights (timing does not depend on the weights). Images: the built-in world's procedural
scenes with pasted rectangles of random colour as anomalies.

    python benchmarks/bench_train.py                # 12 images, 5 epochs, stats head
    python benchmarks/bench_train.py --head features
    python benchmarks/bench_train.py --quick        # 4 images
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anomseg.imageio import array_sha256
from anomseg.metrics import AnomalyMetrics
from anomseg.models.heads import head_scorer
from anomseg.models.registry import create_model
from anomseg.predict import Predictor
from anomseg.scoring import uncertainty_stats
from training.dataset import TrainImage, build_pixel_set
from training.features import FeatureCache
from training.fit import build_head, train_pixels
from training.trainer import TrainConfig


def make_images(n: int, size: tuple[int, int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Procedural scenes with 1-3 pasted rectangles each: (rgb uint8, gt 0/1)."""
    from anomseg.world.scenes import generate_scene

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bg = generate_scene(seed * 1000 + i, size)
        rgb, gt = bg.rgb.copy(), np.zeros(size, np.uint8)
        for _ in range(rng.integers(1, 4)):
            h, w = (
                rng.integers(size[0] // 12, size[0] // 4),
                rng.integers(size[1] // 24, size[1] // 8),
            )
            y, x = rng.integers(size[0] // 2, size[0] - h), rng.integers(0, size[1] - w)
            rgb[y : y + h, x : x + w] = rng.integers(0, 256, 3)
            gt[y : y + h, x : x + w] = 1
        out.append((rgb, gt))
    return out


def seed_way(model, images, cfg: TrainConfig) -> tuple[torch.nn.Module, float]:
    """Every epoch: forward every image through the frozen model, train on the full map."""
    predictor = Predictor(model, device="cpu", cache_bytes=0)
    feat_dim = model.encoder.backbone.embed_dim if cfg.head == "features" else None
    head = build_head(cfg, feat_dim)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pw = torch.tensor(cfg.pos_weight)
    head.train()
    t0 = time.perf_counter()
    for _epoch in range(cfg.epochs):
        for rgb, gt in images:
            pred = predictor.predict(rgb)  # the frozen backbone, again
            stats = uncertainty_stats(pred)[None]
            feats = None if pred.features is None else pred.features[None]
            logits = head(stats, feats)[0, 0]
            target = torch.from_numpy(gt).float()
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval(), time.perf_counter() - t0


def cached_retrain(
    cache, key, size, images, cfg: TrainConfig
) -> tuple[torch.nn.Module, float, dict]:
    """Read the cache, build the pixel set, train: the whole retrain, timed."""

    def no_backbone(_rgb):
        raise AssertionError("the backbone must not run on a warm cache")

    items = [
        TrainImage(f"img:{i}", array_sha256(rgb), lambda r=rgb: r, lambda g=gt: g)
        for i, (rgb, gt) in enumerate(images)
    ]
    t0 = time.perf_counter()
    pixels, snap = build_pixel_set(
        items, cache, key, size, no_backbone, need_features=cfg.head == "features"
    )
    t_load = time.perf_counter() - t0
    res = train_pixels(pixels, cfg)
    total = time.perf_counter() - t0
    return (
        res.head,
        total,
        {
            "load_s": t_load,
            "train_s": total - t_load,
            "pixels": len(pixels),
            "steps": res.metrics["steps"],
        },
    )


def auprc(head, model, images) -> float:
    """AuPRC (%) of a head on images (one forward each)."""
    predictor = Predictor(model, device="cpu")
    score = head_scorer(head)
    m = AnomalyMetrics("exact")
    for rgb, gt in images:
        m.update(score(predictor.predict(rgb)), gt)
    return 100 * m.compute()["auprc"]


def main() -> None:
    """Run both trainings and print the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--head", choices=["stats", "features"], default="stats")
    ap.add_argument("--quick", action="store_true", help="4 images")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for everything (default: torch's own setting)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 4 if args.quick else args.images
    torch.manual_seed(0)
    model = create_model("eomt_tiny").eval()
    size = tuple(model.default_input_size)
    print(
        f"model eomt_tiny (initial weights), input {size[0]}x{size[1]}, {n} training images, "
        f"{args.epochs} epochs, {args.head} head, {torch.get_num_threads()} torch threads"
    )
    images = make_images(n, size, seed=1)
    held_out = make_images(3, size, seed=2)
    cfg = TrainConfig(head=args.head, epochs=args.epochs)

    # one-time costs (lazy imports on the first optimizer step, the first forward) are paid
    # here, outside both timings
    warm = TrainImage("warm", "warm", lambda: images[0][0], lambda: images[0][1])
    with tempfile.TemporaryDirectory() as tmp:
        p = Predictor(model, device="cpu", cache_bytes=0)
        px, _ = build_pixel_set(
            [warm],
            FeatureCache(tmp),
            "warm",
            size,
            p.predict,
            need_features=args.head == "features",
        )
        train_pixels(px, TrainConfig(head=args.head, epochs=1, steps_per_epoch=1))

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp) / "cache")
        predictor = Predictor(model, device="cpu", cache_bytes=0)
        key = predictor.model_key
        t0 = time.perf_counter()
        for rgb, _gt in images:  # the first training's cost: one forward per image, cached
            cache.get_or_compute(key, array_sha256(rgb), size, lambda r=rgb: predictor.predict(r))
        t_fill = time.perf_counter() - t0
        mb = cache.size_on_disk() / 2**20
        head_c, t_cached, info = cached_retrain(cache, key, size, images, cfg)

    head_s, t_seed = seed_way(model, images, cfg)
    ap_c, ap_s = auprc(head_c, model, held_out), auprc(head_s, model, held_out)
    print(f"\nfilling the cache once (first training): {t_fill:7.2f} s, {mb:.1f} MiB on disk")
    print(f"{'method':44s} {'seconds':>8s} {'ratio':>7s} {'held-out AuPRC':>15s}")
    print(f"{'seed: backbone every epoch, full maps':44s} {t_seed:8.2f} {1.0:6.1f}x {ap_s:14.2f}%")
    print(
        f"{'anomseg: retrain from the feature cache':44s} {t_cached:8.2f} "
        f"{t_seed / t_cached:6.1f}x {ap_c:14.2f}%"
    )
    print(
        f"  (cache read + pixel set {info['load_s']:.2f} s, training {info['train_s']:.2f} s: "
        f"{info['steps']} steps over {info['pixels']} cached pixels)"
    )
    # the cache's own share: the same training schedule, plus one backbone pass per epoch
    same = args.epochs * t_fill + t_cached
    print(f"{'same schedule + backbone every epoch (sum)':44s} {same:8.2f} {same / t_cached:6.1f}x")
    print(
        f"\nspeed-up at {args.epochs} epochs vs the seed's way: {t_seed / t_cached:.1f}x "
        "(target >= 20x)"
    )


if __name__ == "__main__":
    main()
