"""The seed's head recipe and geometry next to ours: schedule, sampling, void, per-window heads.

References are independent: the recipe's schedule written out as the seed describes it (linear
warm-up over 200 steps, then (1 - progress)^0.9), brute-force loops over images and pixels, and
for the per-window geometry the network run on each window crop by itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomseg.errors import InputError
from anomseg.models import create_model
from anomseg.models.heads import create_head, head_anomaly_map, head_scorer, load_head, save_head
from anomseg.predict import Predictor
from anomseg.scoring import uncertainty_stats
from training.dataset import FlagRegion, TrainImage, build_pixel_set
from training.features import FeatureCache
from training.fit import train_pixels
from training.recipes import RECIPES, ImageSampler
from training.trainer import TrainConfig


def _toy(n_img=3, side=8, seed=0):
    from tests.test_trainer import toy_pixels

    return toy_pixels(n_img=n_img, size=(side, side), seed=seed)


def test_recipes_set_the_optimiser_and_explicit_values_win():
    seed, ours = TrainConfig(recipe="seed"), TrainConfig()
    assert (seed.lr, seed.weight_decay) == (1e-4, 0.05)
    assert (ours.lr, ours.weight_decay, ours.recipe) == (3e-3, 1e-4, "default")
    assert ours.head_geometry == "window"  # the better-measured default (README)
    assert TrainConfig(recipe="seed", lr=5e-4).lr == 5e-4
    with pytest.raises(InputError, match="training recipe 'nope'; expected one of default, seed"):
        TrainConfig(recipe="nope")
    with pytest.raises(InputError, match="head geometry 'tiles'; expected one of stitched, window"):
        TrainConfig(head_geometry="tiles")


def test_seed_schedule_is_warmup_then_poly():
    r, total = RECIPES.get("seed"), 1000

    def seed_lr(step):  # the schedule as the seed states it
        if step < 200:
            return (step + 1) / 200
        return (1 - (step - 200) / (total - 200)) ** 0.9

    for step in (0, 1, 99, 199, 200, 201, 600, 999):
        assert r.lr_factor(step, total) == pytest.approx(seed_lr(step), rel=1e-12)
    assert RECIPES.get("default").lr_factor(500, total) == 1.0


def test_training_under_the_seed_recipe_follows_the_schedule(monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *a, **kw):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    px = _toy(n_img=5)
    res = train_pixels(px, TrainConfig(recipe="seed", epochs=2, seed=3))
    # whole images: one step per image per epoch, whatever the batch size says
    assert res.metrics["steps"] == len(seen) == 10
    want = [1e-4 * (s + 1) / 200 for s in range(10)]  # all 10 steps are inside the warm-up
    assert [lr for lr, _ in seen] == pytest.approx(want, rel=1e-9)
    assert {wd for _, wd in seen} == {0.05}


def test_image_sampler_gives_each_whole_image_once_per_epoch():
    px = _toy(n_img=4, side=6)
    s = ImageSampler(px.image, seed=2)
    assert s.steps == 4
    orders = []
    for epoch in range(3):
        batches = list(s.epoch(epoch))
        imgs = [set(px.image[b].tolist()) for b in batches]
        assert all(len(i) == 1 for i in imgs)  # one image a step
        orders.append([next(iter(i)) for i in imgs])
        for b in batches:  # every pixel of that image, no other
            img = int(px.image[b[0]])
            assert sorted(b.tolist()) == [j for j in range(len(px)) if px.image[j] == img]
        assert sorted(orders[-1]) == [0, 1, 2, 3]
    assert len({tuple(o) for o in orders}) > 1  # reshuffled per epoch
    assert [b.tolist() for b in ImageSampler(px.image, seed=2).epoch(1)] == [
        b.tolist() for b in s.epoch(1)
    ]


@pytest.fixture
def fake_scoring(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("anomseg.scoring")
    mod.uncertainty_stats = lambda pred: pred.logits[:4].clone()
    monkeypatch.setitem(sys.modules, "anomseg.scoring", mod)


def test_void_counts_as_normal_only_where_the_recipe_says(tmp_path, fake_scoring):
    from tests.test_trainer import fake_predict

    H = W = 16
    rgb = np.zeros((H, W, 3), np.uint8)
    gt = np.zeros((H, W), np.uint8)
    gt[2:6, 2:6] = 1
    gt[10:, :] = 255  # void
    ign = np.zeros((H, W), bool)
    ign[0:2, :] = True  # an ignore flag is not void: it stays out under both rules
    images = [
        TrainImage("sample:1", "h1", lambda: rgb, lambda: gt, [FlagRegion(3, "ignore", ign)]),
        TrainImage("image:2", "h2", lambda: rgb, None, [FlagRegion(4, "false_negative", ign)]),
    ]
    cache = FeatureCache(tmp_path, stride=2)
    kw = {"fp_weight": 2.0, "fn_weight": 2.0}
    plain, _ = build_pixel_set(images, cache, "m", (8, 8), fake_predict, **kw)
    void, _ = build_pixel_set(images, cache, "m", (8, 8), fake_predict, void_as_normal=True, **kw)

    def lattice(codes_fn):  # brute force over the 4x4 lattice of the 8x8 model size
        out = []
        for img in (0, 1):
            for r in (1, 3, 5, 7):
                for c in (1, 3, 5, 7):
                    y, x = int((r + 0.5) * 2), int((c + 0.5) * 2)
                    v = codes_fn(img, y, x)
                    if v is not None:
                        out.append((img, r * 8 + c, v))
        return sorted(out)

    def codes(img, y, x, void_normal):
        if ign[y, x]:
            return 1 if img == 1 else None  # image 2's only label is its FN flag
        if img == 1:
            return None  # no ground truth: unlabelled, never "void"
        if gt[y, x] == 255:
            return 0 if void_normal else None
        return int(gt[y, x])

    for px, vn in ((plain, False), (void, True)):
        got = sorted(zip(px.image.tolist(), px.pos.tolist(), px.target.int().tolist(), strict=True))
        assert got == lattice(lambda i, y, x, vn=vn: codes(i, y, x, vn))
    assert len(void) - len(plain) == 8  # image 1's two void lattice rows (y = 11, 15)
    assert RECIPES.get("seed").void_as_normal("stats")
    assert not RECIPES.get("seed").void_as_normal("features")
    assert not RECIPES.get("default").void_as_normal("stats")


# --- geometry: the head per EoMT window vs once on the stitched maps -----------------------------


def _eomt():
    torch.manual_seed(5)
    model = create_model("eomt_tiny", img_size=(32, 64), input_size=(32, 64), num_q=6)
    with torch.no_grad():
        for blk in model.encoder.backbone.blocks:
            blk.ls1.gamma.fill_(1.0)
            blk.ls2.gamma.fill_(1.0)
        model.class_head.weight.mul_(20)
    return model.eval()


def _head(kind, feat_dim=192):
    torch.manual_seed(6)
    head = create_head(kind, **({"feat_dim": feat_dim} if kind == "features" else {}))
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3)
    return head.eval()


@pytest.mark.parametrize("kind", ["stats", "features"])
def test_window_geometry_equals_the_head_run_on_each_window_crop(kind):
    model = _eomt()
    head = _head(kind)
    head.geometry = "window"
    im = (np.random.default_rng(3).random((32, 100, 3)) * 255).astype(np.uint8)
    predictor = Predictor(model, device="cpu", input_size="native")
    pred = predictor.predict(im)
    got = head_scorer(head)(pred)
    # independent: each window (columns 0..64 and 36..100) predicted alone, the head on it,
    # probabilities averaged where the two overlap
    maps = []
    for left in (0, 36):
        crop = predictor.predict(np.ascontiguousarray(im[:, left : left + 64]))
        assert crop.window_scores is None  # one window that is the image: no per-window copy
        maps.append(head_anomaly_map(head, uncertainty_stats(crop), crop.features).numpy())
    want = np.zeros((32, 100))
    count = np.zeros((32, 100))
    for left, m in zip((0, 36), maps, strict=True):
        want[:, left : left + 64] += m
        count[:, left : left + 64] += 1
    np.testing.assert_allclose(got, want / count, atol=1e-5)
    # the stitched geometry is another map where the windows overlap, the same outside
    head.geometry = "stitched"
    stitched = head_scorer(head)(pred)
    assert np.abs(stitched - got)[:, 36:64].max() > 1e-3
    if kind == "stats":  # (the feature head's projection is blended across the seam too)
        np.testing.assert_allclose(stitched[:, :30], got[:, :30], atol=1e-5)


def test_geometries_agree_when_one_window_is_the_image_and_differ_when_rescaled():
    model = _eomt()
    head = _head("stats")
    predictor = Predictor(model, device="cpu", input_size="native")
    one = predictor.predict((np.random.default_rng(4).random((32, 64, 3)) * 255).astype(np.uint8))
    big = predictor.predict((np.random.default_rng(4).random((64, 128, 3)) * 255).astype(np.uint8))
    out = {}
    for g in ("stitched", "window"):
        head.geometry = g
        out[g] = (head_scorer(head)(one), head_scorer(head)(big))
    assert np.array_equal(out["stitched"][0], out["window"][0])
    assert big.window_scores.shape == (1, 19, 32, 64)  # one window over the shrunk image
    assert np.abs(out["stitched"][1] - out["window"][1]).max() > 1e-3


def test_geometry_is_stored_with_the_head(tmp_path):
    head = _head("stats")  # a head built in code (or saved before geometries) is "stitched"
    save_head(head, tmp_path / "x.safetensors")
    assert load_head(tmp_path / "x.safetensors")[0].geometry == "stitched"
    head.geometry = "window"
    save_head(head, tmp_path / "w.safetensors")
    back, meta = load_head(tmp_path / "w.safetensors")
    assert back.geometry == meta["head_geometry"] == "window"
