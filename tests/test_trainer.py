"""Trainer core and training set: loss formula, balanced batches, labels from GT + flags, learning."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from anomseg.errors import InputError
from anomseg.prediction import Prediction
from training.dataset import (
    BalancedSampler,
    FlagRegion,
    PixelSet,
    TrainImage,
    build_pixel_set,
)
from training.features import FeatureCache
from training.fit import pixel_loss, train_pixels
from training.trainer import TrainConfig


def test_pixel_loss_matches_formula():
    torch.manual_seed(0)
    x, y = torch.randn(50), (torch.rand(50) > 0.7).float()
    w = torch.rand(50) + 0.5
    s = 1 / (1 + np.exp(-x.double().numpy()))
    ref = -(10 * y.numpy() * np.log(s) + (1 - y.numpy()) * np.log(1 - s)) * w.numpy()
    assert pixel_loss(x, y, w, 10.0).item() == pytest.approx(ref.mean(), rel=1e-5)


def test_balanced_sampler():
    target = torch.zeros(1000)
    target[:37] = 1
    s = BalancedSampler(target, batch_pixels=64, seed=3)
    batches = list(s.epoch(0))
    assert len(batches) == s.steps == 2  # ceil(2 * 37 / 64): each positive once per epoch
    for b in batches:
        assert b.numel() == 64 and int(target[b].sum()) == 32
    pos = torch.cat([b[:32] for b in batches])
    assert set(pos[:37].tolist()) == set(range(37))  # every positive before any repeats
    negs = torch.cat([b[32:] for b in batches])
    assert negs.unique().numel() == negs.numel() and bool((negs >= 37).all())
    again = list(BalancedSampler(target, 64, seed=3).epoch(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = list(BalancedSampler(target, 64, seed=4).epoch(0))
    assert not torch.equal(batches[0], other[0])
    assert not torch.equal(batches[0], next(s.epoch(1)))
    # ranks: equal halves of the same global batch
    s2 = BalancedSampler(target, batch_pixels=66, seed=3, world=2)
    assert s2.batch == 64
    with pytest.raises(InputError, match="both"):
        BalancedSampler(torch.zeros(10), 4)


def test_flagged_pixels_get_their_share():
    target = torch.zeros(1000)
    target[:100] = 1
    flagged = torch.zeros(1000, dtype=torch.bool)
    flagged[500:510] = True  # 10 false-positive pixels among 900 normal ones
    s = BalancedSampler(target, 64, seed=0, steps_per_epoch=50, flagged=flagged, flag_share=0.25)
    for b in s.epoch(0):
        neg = b[target[b] == 0]
        assert neg.numel() == 32 and int(flagged[neg].sum()) == 8  # round(0.25 * 32)
        assert int(target[b].sum()) == 32
    # no flagged positives: the positive half is all plain positives; share 0 = uniform
    s0 = BalancedSampler(target, 64, seed=0, steps_per_epoch=50, flagged=flagged, flag_share=0.0)
    share = torch.cat([b for b in s0.epoch(0)])
    assert float(flagged[share].float().mean()) < 0.05


def toy_pixels(n_img=4, size=(16, 16), seed=0, feat_dim=None) -> PixelSet:
    """Positives have high 'entropy' stats (+ a distinctive feature when feat_dim is set)."""
    g = torch.Generator().manual_seed(seed)
    n = n_img * size[0] * size[1]
    target = (torch.rand(n, generator=g) < 0.1).float()
    stats = torch.rand(n, 4, generator=g) * 0.5
    stats[:, 1] += target * (1.0 if feat_dim is None else 0.0)
    image = torch.arange(n) // (size[0] * size[1])
    pos = torch.arange(n) % (size[0] * size[1])
    feats = None
    if feat_dim is not None:
        # stats say nothing; the feature grid (one cell per pixel) tells positives apart
        feats = torch.randn(n_img, feat_dim, *size, generator=g) * 0.1
        f = feats.permute(0, 2, 3, 1).reshape(n, feat_dim)
        f[:, 0] += target * 2.0
        feats = f.reshape(n_img, *size, feat_dim).permute(0, 3, 1, 2).contiguous().half()
    return PixelSet(
        stats, target, torch.ones(n), image, pos, size, feats, [f"h{i}" for i in range(n_img)]
    )


def scores_of(head, px: PixelSet) -> np.ndarray:
    from training.fit import BatchMaker

    stats, _, _, feats, ci, cw = BatchMaker(px, torch.device("cpu"))(torch.arange(len(px)))
    with torch.no_grad():
        return head.forward_pixels(stats, feats, ci, cw).numpy()


@pytest.mark.parametrize("kind", ["stats", "features"])
def test_training_learns_and_is_seeded(kind):
    px = toy_pixels(feat_dim=8 if kind == "features" else None)
    cfg = TrainConfig(head=kind, epochs=4, lr=1e-2, batch_pixels=256, seed=1)
    seen = []
    res = train_pixels(px, cfg, progress=lambda f, m: seen.append(f))
    ap = average_precision_score(px.target.numpy(), scores_of(res.head, px))
    assert ap > 0.95, ap
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    assert res.history[-1] < res.history[0]
    res2 = train_pixels(px, cfg)
    for a, b in zip(res.head.state_dict().values(), res2.head.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_cancel_stops_training():
    from training.fit import Cancelled

    with pytest.raises(Cancelled):
        train_pixels(toy_pixels(), TrainConfig(epochs=3), should_stop=lambda: True)


def test_bad_options_are_named():
    with pytest.raises(InputError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(InputError, match="feature"):
        train_pixels(toy_pixels(), TrainConfig(head="features"))


# --- the training set from images + flags --------------------------------------------------------


@pytest.fixture
def fake_scoring(monkeypatch):
    mod = types.ModuleType("anomseg.scoring")
    mod.uncertainty_stats = lambda pred: pred.logits[:4].clone()
    monkeypatch.setitem(sys.modules, "anomseg.scoring", mod)


def fake_predict(rgb: np.ndarray) -> Prediction:
    """Stats channel 0 = red / 255 at the model size 8x8, so values identify pixels."""
    import torch.nn.functional as F

    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(8, 8), mode="nearest")[0]
    return Prediction(logits=torch.cat([x, x[:1]]), features=torch.randn(5, 2, 2))


def test_build_pixel_set_labels_weights_and_refusals(tmp_path, fake_scoring):
    H = W = 16
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = (np.arange(H * W).reshape(H, W) % 251).astype(np.uint8)
    gt = np.zeros((H, W), np.uint8)
    gt[2:6, 2:6] = 1
    gt[12:, :] = 255
    fp = np.zeros((H, W), bool)
    fp[8:12, 8:16] = True
    ign = np.zeros((H, W), bool)
    ign[0:2, :] = True
    fn_only = np.zeros((H, W), bool)
    fn_only[4:8, 4:8] = True
    images = [
        TrainImage(
            "sample:1",
            "h1",
            lambda: rgb,
            lambda: gt,
            [FlagRegion(10, "false_positive", fp), FlagRegion(11, "ignore", ign)],
        ),
        TrainImage(
            "image:7",
            "h2",
            lambda: rgb,
            None,
            [FlagRegion(12, "false_negative", fn_only)],
            role="train",
        ),
        TrainImage("image:9", "h3", lambda: rgb, lambda: gt, [], role="eval"),
    ]
    cache = FeatureCache(tmp_path, stride=2)
    px, snap = build_pixel_set(
        images, cache, "m", (8, 8), fake_predict, fp_weight=4.0, fn_weight=3.0, need_features=True
    )
    # brute force: model size 8x8 = every 2nd image pixel (nearest), lattice stride 2 -> rows 1,3,5,7
    exp = []
    for img_i, (lab, flags) in enumerate(
        [(gt, [(fp, 0, 4.0), (ign, 255, 1)]), (None, [(fn_only, 1, 3.0)])]
    ):
        for r in (1, 3, 5, 7):
            for c in (1, 3, 5, 7):
                # labels: Pillow nearest picks floor((r + 0.5) * 2); the fake model's torch
                # nearest resize reads its statistic at (2r, 2c)
                y, x = int((r + 0.5) * 2), int((c + 0.5) * 2)
                v, w = (255 if lab is None else int(lab[y, x])), 1.0
                for m, val, wt in flags:
                    if m[y, x]:
                        v, w = val, wt
                if v != 255:
                    exp.append((img_i, r * 8 + c, v, w, rgb[2 * r, 2 * c, 0] / 255))
    assert len(px) == len(exp)
    got = sorted(
        zip(
            px.image.tolist(),
            px.pos.tolist(),
            px.target.tolist(),
            px.weight.tolist(),
            px.stats[:, 0].tolist(),
            strict=True,
        )
    )
    for g, e in zip(got, sorted(exp), strict=True):
        assert g[:4] == pytest.approx(e[:4]) and g[4] == pytest.approx(e[4], abs=1e-3)
    assert torch.equal(px.flagged, px.weight != 1)  # flagged pixels are exactly the reweighted ones
    assert int(px.flagged.sum()) == sum(1 for e in exp if e[3] != 1.0) > 0
    assert snap.refused == ["image:9"] and sorted(snap.flag_ids) == [10, 11, 12]
    assert [i["key"] for i in snap.images] == ["sample:1", "image:7"]
    assert snap.counts["positives"] == px.n_pos and snap.counts["fp_flag_pixels"] > 0
    assert px.features.shape == (2, 5, 2, 2)
    # the set survives the file round trip DDP ranks use
    px.save(tmp_path / "px.safetensors")
    back = PixelSet.load(tmp_path / "px.safetensors")
    assert (
        torch.equal(back.stats, px.stats)
        and torch.equal(back.flagged, px.flagged)
        and back.size == (8, 8)
        and back.image_hashes == ["h1", "h2"]
    )


def test_no_usable_samples(tmp_path, fake_scoring):
    rgb = np.zeros((8, 8, 3), np.uint8)
    cache = FeatureCache(tmp_path)
    only_eval = [
        TrainImage("image:1", "h", lambda: rgb, lambda: np.ones((8, 8), np.uint8), role="eval")
    ]
    with pytest.raises(InputError, match="no usable training samples"):
        build_pixel_set(only_eval, cache, "m", (8, 8), fake_predict)
    no_anomaly = [TrainImage("sample:1", "h", lambda: rgb, lambda: np.zeros((8, 8), np.uint8))]
    with pytest.raises(InputError, match="no anomalous pixels"):
        build_pixel_set(no_anomaly, cache, "m", (8, 8), fake_predict)
    wrong = [
        TrainImage(
            "sample:1",
            "h",
            lambda: rgb,
            lambda: np.zeros((8, 8), np.uint8),
            [FlagRegion(1, "false_positive", np.ones((4, 4), bool))],
        )
    ]
    with pytest.raises(InputError, match="flag 1: mask of size 4x4 does not match its image 8x8"):
        build_pixel_set(wrong, cache, "m", (8, 8), fake_predict)


def test_training_images_from_store(tmp_path):
    from PIL import Image as PILImage

    from db import Store, catalog, flags, pastes
    from training.dataset import revisions_hash, training_images_from_store

    roots = {n: tmp_path / n for n in ("syn", "city", "bench")}
    for r in roots.values():
        (r / "images").mkdir(parents=True)
    rgb = np.full((6, 8, 3), 100, np.uint8)
    gt = np.zeros((6, 8), np.uint8)
    gt[2:4, 2:4] = 1
    for name in ("s0", "s1", "s2"):
        PILImage.fromarray(rgb).save(roots["syn"] / "images" / f"{name}.png")
        PILImage.fromarray(gt).save(roots["syn"] / "images" / f"{name}_gt.png")
    PILImage.fromarray(rgb).save(roots["city"] / "images" / "c.png")
    PILImage.fromarray(rgb).save(roots["bench"] / "images" / "b.png")
    m = np.zeros((6, 8), bool)
    m[0, 0] = True
    with Store.open(workspace=tmp_path) as store:
        with store.session() as s:
            model = catalog.register_model(s, "m", "erfnet", "/x.pth", sha256="0" * 64)
            syn = catalog.register_dataset(s, "syn", "synthetic", roots["syn"])
            city = catalog.register_dataset(s, "city", "train", roots["city"])
            bench = catalog.register_dataset(s, "bench", "eval", roots["bench"])
            s0 = catalog.register_images(s, syn, [roots["syn"] / "images/s0.png"])[0]
            c = catalog.register_images(s, city, [roots["city"] / "images/c.png"])[0]
            b = catalog.register_images(s, bench, [roots["bench"] / "images/b.png"])[0]
            ids = []
            for i, status in enumerate(["accepted", "accepted", "proposed"]):
                smp = pastes.create_sample(s, syn.id, f"bg{i}", {"p": {"v": i}}, status=status)
                ids.append(smp.id)
                revs = {p.key: r.content_hash for p, r in pastes.current_revisions(s, smp.id)}
                cache = {
                    "image": f"images/s{i}.png",
                    "gt": f"images/s{i}_gt.png",
                    "revisions_hash": revisions_hash(revs) if i != 1 else "stale",
                }
                pastes.set_render_cache(s, smp.id, cache)
            fp = flags.add_flag(s, s0.id, model.id, "msp", "false_positive", m).id
            fn = flags.add_flag(s, c.id, model.id, "msp", "false_negative", m).id
            flags.add_flag(s, b.id, model.id, "msp", "false_positive", m)  # eval: never trains
            other = catalog.register_model(s, "m2", "erfnet", "/y.pth", sha256="1" * 64)
            flags.add_flag(s, c.id, other.id, "msp", "ignore", m)  # another model's flag
        with store.read() as s:
            items, notes = training_images_from_store(s, model.id)
            rendered = []
            items2, notes2 = training_images_from_store(
                s, model.id, render_sample=lambda smp, recs: rendered.append(recs) or (rgb, gt)
            )
    assert [i.key for i in items] == [f"sample:{ids[0]}", f"image:{c.id}"]
    assert notes == [f"sample:{ids[1]}: not rendered (no render cache, or it is stale)"]
    sample, city_img = items
    assert [f.id for f in sample.flags] == [fp] and sample.info["image_id"] == s0.id
    assert np.array_equal(sample.load_target(), gt) and np.array_equal(sample.load_rgb(), rgb)
    assert sample.image_hash == catalog.sha256_file(roots["syn"] / "images/s0.png")
    assert city_img.load_target is None and [f.id for f in city_img.flags] == [fn]
    assert city_img.flags[0].load().sum() == 1 and city_img.role == "train"
    # a stale render is re-rendered by the caller's function from the current records
    assert [i.key for i in items2][:2] == [f"sample:{ids[0]}", f"sample:{ids[1]}"]
    assert rendered == [{"p": {"v": 1}}] and notes2 == []


def test_epoch_has_at_least_one_step_per_image():
    target = torch.zeros(1000)
    target[:10] = 1
    assert BalancedSampler(target, 64, min_steps=7).steps == 7  # balanced pass alone: 1
    assert BalancedSampler(target, 64, min_steps=7, steps_per_epoch=3).steps == 3
