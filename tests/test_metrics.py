"""Metrics vs scikit-learn: exact mode to 1e-6, streaming to 1e-3, merge == one pass, mIoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from anomseg.errors import InputError
from anomseg.metrics import AnomalyMetrics, ConfusionMatrix, float_keys, per_image

KEYS = ("auprc", "fpr95", "auroc")


def sk_metrics(scores, labels) -> dict[str, float]:
    """The independent reference: scikit-learn on the valid (non-255) pixels."""
    s = np.asarray(scores, dtype=np.float32).ravel()
    y = np.asarray(labels).ravel()
    v = y != 255
    s, y = s[v], y[v]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auprc": average_precision_score(y, s),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
        "auroc": roc_auc_score(y, s),
    }


def realistic(n: int, kind: str, seed: int = 0, anomaly_rate: float = 0.02):
    """Score maps shaped like real ones: rare shifted anomalies, heavy ties, ignore pixels."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < anomaly_rate).astype(np.uint8)
    if kind == "msp":  # 1 - max softmax: quantised near 0, exact zeros for confident pixels
        z = rng.normal(-6, 2, n) + 4 * y
        s = 1 / (1 + np.exp(-z))
        s = np.where(rng.random(n) < 0.2, 0.0, np.round(s * 2**14) / 2**14)
    elif kind == "maxlogit":  # unbounded, negative
        s = rng.normal(-10, 2, n) + 3 * y
    elif kind == "entropy":  # in [0, 1]
        s = np.where(y == 1, rng.beta(4, 3, n), rng.beta(2, 8, n))
    else:  # energy-like with a few very large values
        s = -rng.gamma(9, 2, n) + 6 * y
        s[rng.random(n) < 1e-3] = 1e4
    y[rng.random(n) < 0.05] = 255
    return s.astype(np.float32), y


def feed(metric: AnomalyMetrics, s, y, chunk: int) -> AnomalyMetrics:
    for i in range(0, len(s), chunk):
        metric.update(s[i : i + chunk], y[i : i + chunk])
    return metric


@pytest.mark.parametrize("seed", range(4))
def test_exact_equals_sklearn_with_ties_and_ignore(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    s = np.round(rng.normal(0, 1, n), 1 + seed % 3).astype(np.float32)  # many ties
    s[rng.random(n) < 0.1] = -0.0  # -0.0 ties with +0.0, as in sklearn
    y = (rng.random(n) < 0.1 + 0.3 * (s > 1)).astype(np.uint8)
    y[rng.random(n) < 0.1] = 255
    got = feed(AnomalyMetrics("exact"), s.reshape(100, 200), y.reshape(100, 200), 3_000 // 200)
    ref = sk_metrics(s, y)
    res = got.compute()
    for k in KEYS:
        assert abs(res[k] - ref[k]) < 1e-6, k
    assert res["n_anomaly"] == int((y == 1).sum()) and res["n_normal"] == int((y == 0).sum())


@pytest.mark.parametrize("kind", ["msp", "maxlogit", "entropy", "energy"])
def test_exact_and_streaming_on_realistic_maps(kind):
    s, y = realistic(600_000, kind, seed=1)
    ref = sk_metrics(s, y)
    ex = feed(AnomalyMetrics("exact", threads=2), s, y, 100_000).compute()
    stm = feed(AnomalyMetrics("streaming"), s, y, 100_000).compute()
    for k in KEYS:
        assert abs(ex[k] - ref[k]) < 1e-6, k
        assert abs(stm[k] - ex[k]) < 1e-3, (k, stm[k], ex[k])


def test_streaming_coarse_bins_are_worse_but_finer_bins_are_within_tolerance():
    s, y = realistic(400_000, "maxlogit", seed=2)
    ex = feed(AnomalyMetrics("exact"), s, y, 200_000).compute()
    errs = {}
    for bins in (2**12, 2**20):
        res = feed(AnomalyMetrics("streaming", bins=bins), s, y, 200_000).compute()
        errs[bins] = max(abs(res[k] - ex[k]) for k in ("auprc", "fpr95"))
    assert errs[2**20] < 1e-3 and errs[2**20] <= errs[2**12]


def test_streaming_exact_ties_are_not_interpolated():
    # a few distinct values with huge ties: every bin holds one value, so streaming is exact
    rng = np.random.default_rng(3)
    n = 200_000
    y = (rng.random(n) < 0.05).astype(np.uint8)
    s = rng.choice(np.array([0.0, 0.25, 0.5, 1.0, 3.0], np.float32), n) + y * 0.25
    ref = sk_metrics(s, y)
    res = feed(AnomalyMetrics("streaming"), s, y, 50_000).compute()
    for k in KEYS:
        assert abs(res[k] - ref[k]) < 1e-9, k


def test_fpr95_is_first_roc_threshold_reaching_95_tpr():
    # hand-checked: anomalies 0.9 .. 0.0 (20 of them), normals 0..1; the 19th anomaly reaches 95%
    pos = np.linspace(1.0, 0.05, 20, dtype=np.float32)
    neg = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    s = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(20, np.uint8), np.zeros(101, np.uint8)])
    res = per_image(s, y)
    thr = pos[18]  # 19/20 = 0.95
    assert res["fpr95"] == pytest.approx((neg >= thr).sum() / 101, abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert res["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_merge_of_chunks_equals_single_pass(mode):
    s, y = realistic(300_000, "entropy", seed=4)
    one = feed(AnomalyMetrics(mode), s, y, len(s)).compute()
    parts = [feed(AnomalyMetrics(mode), s[i::3], y[i::3], 40_000) for i in range(3)]
    merged = AnomalyMetrics.merged(parts).compute()
    tree = parts[2].merge(parts[0].merge(parts[1]))  # any grouping
    for k in KEYS:
        assert merged[k] == pytest.approx(one[k], abs=1e-12)
        assert tree.compute()[k] == pytest.approx(one[k], abs=1e-12)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_state_dict_reduction_equals_single_pass(mode):
    """What all_reduce / all_gather would do across 2 processes, done by hand on the tensors."""
    s, y = realistic(200_000, "msp", seed=5)
    one = feed(AnomalyMetrics(mode), s, y, 50_000).compute()
    a = feed(AnomalyMetrics(mode), s[:70_000], y[:70_000], 50_000)
    b = feed(AnomalyMetrics(mode), s[70_000:], y[70_000:], 50_000)
    sa, sb = a.state_dict(), b.state_dict()
    ops = {"sum": torch.add, "min": torch.minimum, "max": torch.maximum}
    red = {}
    for key, how in a.reductions.items():
        assert isinstance(sa[key], torch.Tensor)
        red[key] = torch.cat([sa[key], sb[key]]) if how == "cat" else ops[how](sa[key], sb[key])
    c = AnomalyMetrics(mode)
    c.load_state_dict(red)
    for k in KEYS:
        assert c.compute()[k] == pytest.approx(one[k], abs=1e-12)
    with pytest.raises(InputError, match="keys"):
        c.load_state_dict({"bogus": torch.zeros(1)})


def _ddp_worker(rank: int, world: int, path: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    s, y = realistic(100_000, "energy", seed=6)
    res = []
    for mode in ("exact", "streaming"):
        m = feed(AnomalyMetrics(mode), s[rank::world], y[rank::world], 30_000)
        m.sync_distributed()
        res.append([m.compute()[k] for k in KEYS])
    if rank == 0:
        np.save(out, np.array(res))
    dist.destroy_process_group()


@pytest.mark.slow
def test_sync_distributed_two_processes(tmp_path):
    """Two gloo processes, each with half the pixels, all-reduce to the one-pass result."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "res.npy")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    s, y = realistic(100_000, "energy", seed=6)
    for row, mode in zip(np.load(out), ("exact", "streaming"), strict=True):
        one = feed(AnomalyMetrics(mode), s, y, 100_000).compute()
        np.testing.assert_allclose(row, [one[k] for k in KEYS], atol=1e-12, err_msg=mode)


def test_per_image_nan_without_anomaly_and_torch_inputs():
    rng = np.random.default_rng(7)
    s = torch.from_numpy(rng.random((16, 16), dtype=np.float32))
    y = torch.zeros(16, 16, dtype=torch.int64)
    res = per_image(s, y)
    assert all(np.isnan(res[k]) for k in KEYS) and res["n_anomaly"] == 0
    y[:2] = 1
    y[-1] = 255
    res = per_image(s, y)
    ref = sk_metrics(s.numpy(), y.numpy())
    for k in KEYS:
        assert res[k] == pytest.approx(ref[k], abs=1e-9)
    only_anomaly = per_image(s[:2], torch.ones(2, 16, dtype=torch.uint8))
    assert only_anomaly["auprc"] == 1.0 and np.isnan(only_anomaly["fpr95"])
    empty = AnomalyMetrics("streaming").compute()
    assert all(np.isnan(empty[k]) for k in KEYS)


def test_input_errors():
    m = AnomalyMetrics()
    with pytest.raises(InputError, match="NaN"):
        m.update(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(InputError, match=r"\[2\]"):
        m.update(np.array([0.1, 0.2]), np.array([0, 2], np.uint8))
    with pytest.raises(InputError, match="shape"):
        m.update(np.zeros((4, 4)), np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="power of two"):
        AnomalyMetrics("streaming", bins=1000)
    with pytest.raises(InputError, match="metric mode"):
        AnomalyMetrics("approx")
    with pytest.raises(InputError, match="merge"):
        AnomalyMetrics("exact").merge(AnomalyMetrics("streaming"))


def test_float_keys_preserve_order():
    vals = np.array(
        [-np.inf, -1e30, -2.5, -1e-40, -0.0, 0.0, 1e-45, 1e-3, 0.5, 1.0, 3e38, np.inf], np.float32
    )
    k = float_keys(vals)
    assert (np.diff(k.astype(np.int64)) >= 0).all()
    assert k[4] == k[5]  # -0.0 == +0.0
    assert (np.diff(k.astype(np.int64))[np.arange(len(vals) - 1) != 4] > 0).all()


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_curves_lie_on_sklearn_curves_and_are_downsampled(mode):
    s, y = realistic(60_000, "entropy", seed=8)
    m = feed(AnomalyMetrics(mode), s, y, 20_000)
    c = m.curves(max_points=300)
    assert 10 < len(c["recall"]) <= 300 and 10 < len(c["fpr"]) <= 300
    assert c["recall"][0] == 0 and c["recall"][-1] == 1 and c["fpr"][-1] == 1
    assert (np.diff(c["recall"]) >= 0).all() and (np.diff(c["fpr"]) >= 0).all()
    if mode == "exact":
        v = y != 255
        prec, rec, _ = precision_recall_curve(y[v], s[v])
        ref = {(round(r, 12), round(p, 12)) for r, p in zip(rec, prec, strict=True)}
        assert all(
            (round(r, 12), round(p, 12)) in ref
            for r, p in zip(c["recall"], c["precision"], strict=True)
        )
        fpr, tpr, _ = roc_curve(y[v], s[v], drop_intermediate=False)
        ref = {(round(f, 12), round(t, 12)) for f, t in zip(fpr, tpr, strict=True)}
        assert all(
            (round(f, 12), round(t, 12)) in ref for f, t in zip(c["fpr"], c["tpr"], strict=True)
        )
    # the area under the plotted points approximates AUROC
    auc = np.trapezoid(c["tpr"], c["fpr"])
    assert auc == pytest.approx(m.compute()["auroc"], abs=5e-3)


scores_st = st.lists(
    st.sampled_from([-0.0, 0.0, 0.1, 0.2, 0.3, 1.0, -1.0, 2.5, 1e-30, 7.0]), min_size=2, max_size=60
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_exact_equals_sklearn_and_merge_is_associative(data):
    s = np.array(data.draw(scores_st), np.float32)
    y = np.array(
        data.draw(st.lists(st.sampled_from([0, 1, 255]), min_size=len(s), max_size=len(s)))
    )
    v = y != 255
    if not ((y[v] == 1).any() and (y[v] == 0).any()):
        return
    ref = sk_metrics(s, y)
    cut1 = data.draw(st.integers(0, len(s)))
    cut2 = data.draw(st.integers(cut1, len(s)))
    parts = []
    for lo, hi in ((0, cut1), (cut1, cut2), (cut2, len(s))):
        m = AnomalyMetrics("exact")
        m.update(s[lo:hi], y[lo:hi])
        parts.append(m)
    left = AnomalyMetrics("exact").merge(parts[0]).merge(parts[1]).merge(parts[2]).compute()
    right = AnomalyMetrics("exact").merge(parts[0]).merge(parts[1].merge(parts[2])).compute()
    stream = AnomalyMetrics("streaming", bins=1 << 16)
    stream.update(s, y)
    for k in KEYS:
        assert left[k] == pytest.approx(ref[k], abs=1e-9)
        assert right[k] == pytest.approx(left[k], abs=1e-12)
        # these values are far apart in float bits: one value per bin, streaming is exact too
        assert stream.compute()[k] == pytest.approx(ref[k], abs=1e-9)


def test_confusion_matrix_vs_sklearn_and_bruteforce_iou():
    rng = np.random.default_rng(9)
    C = 6
    target = rng.integers(0, C, (4, 30, 40))
    target[rng.random(target.shape) < 0.1] = 255
    target[target == 5] = 0  # class 5 absent from ground truth ...
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, C - 1, target.shape))
    pred[target == 255] = rng.integers(0, C, (target == 255).sum())
    pred = np.where(pred == 255, 0, pred)
    pred[pred == 5] = 4  # ... and from prediction: IoU NaN, excluded from the mean
    a, b = ConfusionMatrix(C), ConfusionMatrix(C)
    a.update(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]))
    b.update(pred[2:], target[2:])
    cm = a.merge(b)
    v = target != 255
    ref = confusion_matrix(target[v], pred[v], labels=list(range(C)))
    np.testing.assert_array_equal(cm.matrix, ref)
    res = cm.compute()
    for c in range(C - 1):
        inter = ((pred == c) & (target == c) & v).sum()
        union = (((pred == c) | (target == c)) & v).sum()
        assert res["iou"][c] == pytest.approx(inter / union)
    assert np.isnan(res["iou"][5])
    assert res["miou"] == pytest.approx(np.mean(res["iou"][:5]))
    assert res["pixel_accuracy"] == pytest.approx((pred[v] == target[v]).mean())
    with pytest.raises(InputError, match="class ids"):
        cm.update(np.array([0, 7]), np.array([0, 1]))
    with pytest.raises(InputError, match="class ids"):
        cm.update(np.array([0, 1]), np.array([0, 9]))
