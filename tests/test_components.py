"""Component-level metrics (sIoU / PPV / F1) and the official binned pixel metric.

Hand-built masks with values computed by hand, a literal re-derivation of the benchmark's
definitions (intersection / adjustment / adjusted union per component, looped) on random maps,
streaming = exact, and the binned AP against scikit-learn where the bins resolve every score.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import label as cc_label
from sklearn.metrics import average_precision_score

from anomseg.components import (
    SIOU_THRESHOLDS,
    ComponentMetrics,
    DeferredComponents,
    image_components,
    track_for,
)
from anomseg.errors import InputError
from anomseg.smiyc import SmiycPixelMetrics, frame_bins


def _case(gt_boxes, pred_boxes, ignore_boxes=(), hw=(12, 12)):
    lab = np.zeros(hw, np.uint8)
    for r0, r1, c0, c1 in gt_boxes:
        lab[r0:r1, c0:c1] = 1
    for r0, r1, c0, c1 in ignore_boxes:
        lab[r0:r1, c0:c1] = 255
    s = np.zeros(hw, np.float32)
    for r0, r1, c0, c1 in pred_boxes:
        s[r0:r1, c0:c1] = 1.0
    return s, lab


def test_touching_components_are_one_and_sIoU_counts_background_only():
    # two 2x2 GT blocks touching at a corner: one 8-connected component of 8 px
    s, lab = _case([(1, 3, 1, 3), (3, 5, 3, 5)], [(1, 3, 1, 3), (0, 1, 1, 3)])
    c = image_components(s, lab, 0.5, 1, 1)
    assert c.gt.max() == 1 and (c.gt > 0).sum() == 8
    # prediction: the first block (4 px) + 2 background px -> sIoU = 4 / (8 + 2)
    assert c.siou_gt.tolist() == pytest.approx([0.4])
    assert c.prec_pred.tolist() == pytest.approx([4 / 6])
    # predicted component: 4 / (6 + 4 GT px it does not cover)
    assert c.siou_pred.tolist() == pytest.approx([0.4])


def test_ignore_stripe_splits_a_component_and_adjustment_spares_other_components():
    # anomaly rows 4-5 over all columns, column 5 ignored: two GT components (10 px, 8 px)
    s, lab = _case([(4, 6, 0, 10)], [(3, 6, 0, 10)], ignore_boxes=[(4, 6, 5, 6)], hw=(10, 10))
    c = image_components(s, lab, 0.5, 1, 1)
    assert c.gt.max() == 2
    assert sorted(np.bincount(c.gt.ravel())[1:].tolist()) == [8, 10]
    # one predicted component (row 3 joins both halves): 10 normal + 18 anomaly px = 28
    assert c.pred.max() == 1 and (c.pred > 0).sum() == 28
    by_size = dict(zip(np.bincount(c.gt.ravel())[1:].tolist(), c.siou_gt.tolist(), strict=True))
    # sIoU: the other component's pixels are not counted against this one (plain IoU: 10/28)
    assert by_size[10] == pytest.approx(10 / 20)
    assert by_size[8] == pytest.approx(8 / 18)
    assert c.prec_pred.tolist() == pytest.approx([18 / 28])
    assert c.siou_pred.tolist() == pytest.approx([18 / 28])


def test_one_prediction_covering_two_ground_truth_components():
    s, lab = _case([(1, 3, 1, 4), (1, 3, 6, 9)], [(1, 3, 1, 9)])
    c = image_components(s, lab, 0.5, 1, 1)
    assert c.gt.max() == 2 and c.pred.max() == 1
    assert c.siou_gt.tolist() == pytest.approx([6 / 10, 6 / 10])  # 6 px + 4 px of the gap
    assert c.prec_pred.tolist() == pytest.approx([12 / 16])
    assert c.siou_pred.tolist() == pytest.approx([12 / 16])


def test_f1_over_the_eleven_siou_thresholds():
    # GT 7 px, prediction = GT + 5 background px: sIoU = precision = 7/12 = 0.583
    s, lab = _case([(1, 2, 1, 8)], [(1, 2, 1, 8), (2, 3, 1, 6)])
    m = ComponentMetrics(0.5, track="anomaly")
    m.add(image_components(s, lab, 0.5, 1, 1))
    r = m.compute()
    # t in 0.25..0.55 (7 of 11): TP=1, FN=0, FP=0 -> F1 1; t in 0.60..0.75: TP=0, FN=1, FP=1 -> 0
    assert r["f1_mean"] == pytest.approx(7 / 11)
    assert r["f1_25"] == 1.0 and r["f1_50"] == 1.0 and r["f1_75"] == 0.0
    assert r["siou"] == pytest.approx(7 / 12) and r["ppv"] == pytest.approx(7 / 12)
    assert (r["n_gt"], r["n_pred"]) == (1, 1)


def test_size_filters_drop_small_predictions_and_ignore_small_ground_truth():
    # a 3 px GT component (below min 4) becomes ignore; a 2 px prediction (below 3) is dropped
    s, lab = _case([(0, 1, 0, 3), (5, 8, 5, 8)], [(0, 1, 0, 3), (10, 11, 10, 12), (5, 8, 5, 8)])
    c = image_components(s, lab, 0.5, min_pred_size=3, min_gt_size=4)
    assert c.gt.max() == 1 and not c.roi[0, :3].any()
    # the prediction on the removed GT lies wholly in the new ignore region: not counted
    assert c.siou_gt.tolist() == [1.0] and c.prec_pred.tolist() == [1.0]
    assert (c.pred[10, 10:12] == 0).all()


def test_threshold_is_strict_and_bad_shapes_are_refused():
    s = np.full((4, 4), 0.5, np.float32)
    lab = np.ones((4, 4), np.uint8)
    assert image_components(s, lab, 0.5, 1, 1).pred.max() == 0  # 0.5 > 0.5 is false
    assert image_components(s, lab, 0.49, 1, 1).pred.max() == 1
    with pytest.raises(InputError, match="shape"):
        image_components(s, lab[:3], 0.5)
    assert track_for("RoadObstacle21") == "obstacle" and track_for("fs_static") == "anomaly"


def _official_by_loops(s, lab, thr, min_pred, min_gt):
    """The benchmark's definitions written out literally: components, filters, then per
    component intersection, adjustment and adjusted union over the region of interest."""
    st = np.ones((3, 3))
    gt_i, n_gt = cc_label(lab == 1, st)
    pred_i, n_pr = cc_label((s > thr) & (lab != 255), st)
    for k in range(1, n_pr + 1):
        if (pred_i == k).sum() < min_pred:
            pred_i[pred_i == k] = 0
    lab = lab.copy()
    for k in range(1, n_gt + 1):
        if (gt_i == k).sum() < min_gt:
            lab[gt_i == k] = 255
    roi = lab != 255
    G, P = gt_i[roi], pred_i[roi]
    siou_gt = []
    for k in np.unique(G[G > 0]):
        on = P[G == k]
        segs = np.unique(on[on > 0])
        inter = np.isin(on, segs).sum() if len(segs) else 0
        adj = (~np.isin(G, [0, k]) & np.isin(P, segs)).sum()
        union = np.isin(P, segs).sum() + (G == k).sum() - inter - adj
        siou_gt.append(inter / union)
    prec = []
    for j in np.unique(P[P > 0]):
        on = G[P == j]
        prec.append((on > 0).sum() / (P == j).sum())
    return np.array(siou_gt), np.array(prec)


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_literal_loop_over_the_official_definitions(seed):
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    lab = np.zeros((h, w), np.uint8)
    for _ in range(5):
        r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
        lab[r : r + rng.integers(2, 12), c : c + rng.integers(2, 12)] = 1
    lab[:, rng.integers(0, w)] = 255
    lab[rng.random((h, w)) < 0.01] = 255
    s = (lab == 1) * 0.6 + rng.random((h, w)) * 0.7
    from scipy.ndimage import uniform_filter

    s = uniform_filter(s, 3).astype(np.float32)
    thr, mp, mg = 0.55, 6, 5
    c = image_components(s, lab, thr, mp, mg)
    siou, prec = _official_by_loops(s, lab, thr, mp, mg)
    assert len(siou) >= 1
    np.testing.assert_allclose(np.sort(c.siou_gt), np.sort(siou), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.sort(c.prec_pred), np.sort(prec), rtol=0, atol=1e-12)


def test_streaming_equals_exact_and_shards_merge():
    rng = np.random.default_rng(3)
    imgs = []
    for _ in range(5):
        lab = np.zeros((40, 40), np.uint8)
        lab[5:15, 5:15] = 1
        lab[25:35, rng.integers(0, 20) :][:, :8] = 1
        lab[0, :] = 255
        imgs.append((((lab == 1) * 0.5 + rng.random((40, 40)) * 0.6).astype(np.float32), lab))
    whole = ComponentMetrics(0.5)
    for s, lab in imgs:
        whole.update(s, lab, scale=0.05)
    parts = [ComponentMetrics(0.5) for _ in range(2)]
    for i, (s, lab) in enumerate(imgs):
        parts[i % 2].update(s, lab, scale=0.05)
    merged = parts[0].merge(parts[1])
    assert merged.compute() == whole.compute()
    restored = ComponentMetrics(0.5)
    restored.load_state_dict(merged.state_dict())
    assert restored.compute() == whole.compute()
    # deferred (threshold known later), sharded like DDP ranks: same numbers, per-image by index
    a, b = DeferredComponents(), DeferredComponents()
    for i, (s, lab) in enumerate(imgs):
        (a if i % 2 == 0 else b).update(s, lab, index=i, native_hw=(160, 200))  # scale 0.05
    res = a.merge(b).compute(0.5)
    per = res.pop("per_image")
    assert res == whole.compute()
    assert sorted(per) == list(range(5))
    with pytest.raises(InputError):
        ComponentMetrics(0.5).merge(ComponentMetrics(0.4))


def test_dataset_values_pool_components_not_images():
    s1, l1 = _case([(1, 2, 1, 8)], [(1, 2, 1, 8), (2, 3, 1, 6)])  # sIoU 7/12
    s2, l2 = _case([(1, 3, 1, 4), (1, 3, 6, 9)], [(1, 3, 1, 9)])  # 0.6, 0.6
    m = ComponentMetrics(0.5)
    m.add(image_components(s1, l1, 0.5, 1, 1))
    m.add(image_components(s2, l2, 0.5, 1, 1))
    assert m.compute()["siou"] == pytest.approx((7 / 12 + 0.6 + 0.6) / 3)
    assert m.compute()["ppv"] == pytest.approx((7 / 12 + 0.75) / 2)
    assert len(SIOU_THRESHOLDS) == 11


# ----------------------------------------------------------------------------- smiyc pixel metric


def test_binned_ap_equals_sklearn_when_every_score_has_its_own_bin():
    # 257 pixels per class (quantile positions k/256 * 256 are exact in binary) and scores in
    # (0, 1): the quantile edges are the scores themselves, one bin per distinct score
    rng = np.random.default_rng(0)
    m = SmiycPixelMetrics()
    all_s, all_y = [], []
    for _ in range(3):
        y = rng.permutation(np.repeat(np.array([0, 1], np.uint8), 257))
        s = np.round(rng.random(514) * 0.7 + 0.05 + 0.2 * y, 3).clip(0.01, 0.99)
        s = s.astype(np.float16).astype(np.float32)  # the stored precision
        m.update(s, y)
        all_s.append(s)
        all_y.append(y)
    s, y = np.concatenate(all_s), np.concatenate(all_y)
    r = m.compute()
    assert r["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert r["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_binned_ap_on_many_pixels_is_close_but_not_exact():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 300)) < 0.05).astype(np.uint8)
    s = (rng.normal(size=y.shape) + 1.5 * y).astype(np.float32) / 4 + 0.5
    m = SmiycPixelMetrics()
    m.update(s, y)
    ap = average_precision_score(y.ravel(), s.ravel().astype(np.float16))
    assert m.compute()["auprc"] == pytest.approx(ap, abs=5e-3)
    assert np.isfinite(m.best_f1_threshold())
    # shards merge to the same frames
    a, b = SmiycPixelMetrics(), SmiycPixelMetrics()
    a.update(s[:100], y[:100])
    b.update(s[100:], y[100:])
    one = SmiycPixelMetrics()
    one.update(s[:100], y[:100])
    one.update(s[100:], y[100:])
    assert a.merge(b).compute() == one.compute()
    restored = SmiycPixelMetrics()
    restored.load_state_dict(one.state_dict())
    assert restored.compute() == one.compute()


def test_frame_bins_by_hand():
    # edges: min - 0.01, max + 0.01 (eps = max(1 % of 0.8, 0.01)) and each class's 3 quantiles
    pos = np.array([0.5, 0.7, 0.9], np.float32)
    neg = np.array([0.1, 0.2, 0.3], np.float32)
    thr, pc, nc = frame_bins(np.concatenate([pos, neg]), np.array([1, 1, 1, 0, 0, 0], bool))
    f16 = [float(np.float16(v)) for v in (0.9, 0.7, 0.5, 0.3, 0.2, 0.1)]
    low = float(np.float16(0.1) - np.float16(0.01))
    assert thr.tolist() == [*f16, low]  # lower bin edges, high to low (top edge max + eps)
    assert pc.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert nc.tolist() == [0, 0, 0, 1, 1, 1, 0]


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_best_f1_threshold_matches_a_brute_force_sweep(mode):
    from anomseg.metrics import AnomalyMetrics

    rng = np.random.default_rng(5)
    y = (rng.random(20_000) < 0.1).astype(np.uint8)
    s = np.round(rng.normal(size=y.size) + 1.2 * y, 2).astype(np.float32)  # many ties
    m = AnomalyMetrics(mode=mode)
    m.update(s, y)
    p = m.best_f1_threshold()

    def f1(thr):
        pred = s > thr
        tp = int((pred & (y == 1)).sum())
        return 2 * tp / (pred.sum() + (y == 1).sum())

    best = max(f1(np.nextafter(u, np.float32(-np.inf))) for u in np.unique(s[y == 1]))
    # the rule ``score > p`` at the returned p reaches the best F1 of any threshold
    assert f1(p) == pytest.approx(best, abs=1e-12 if mode == "exact" else 2e-3)
