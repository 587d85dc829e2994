"""The metric base class: states declared once; merge == one pass; a 2-process gloo sync equals
the single-process result (ConfusionMatrix included), checked against sklearn / numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from anomseg.components import ComponentMetrics
from anomseg.errors import InputError
from anomseg.metric_base import Metric
from anomseg.metrics import AnomalyMetrics, ConfusionMatrix
from anomseg.smiyc import SmiycPixelMetrics

C = 5


class Extremes(Metric):
    """A toy metric using every reduction: count (sum), min, max and the values seen (cat)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", np.zeros(1, np.int64), "sum")
        self.add_state("lo", np.full(1, np.inf), "min")
        self.add_state("hi", np.full(1, -np.inf), "max")
        self.add_state("seen", np.float64, "cat")

    def update(self, x) -> None:
        x = np.asarray(x, np.float64).ravel()
        self.n += len(x)
        self.lo = np.minimum(self.lo, x.min(initial=np.inf))
        self.hi = np.maximum(self.hi, x.max(initial=-np.inf))
        self.seen.append(x)

    def compute(self) -> dict:
        seen = np.concatenate(self.seen) if self.seen else np.zeros(0)
        return {"n": int(self.n[0]), "lo": float(self.lo[0]), "hi": float(self.hi[0]),
                "sum": float(np.sort(seen).sum())}  # fmt: skip


def _data(seed: int = 0, n_img: int = 6):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, C, (n_img, 20, 24))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target % C, rng.integers(0, C, target.shape))
    labels = (rng.random((n_img, 20, 24)) < 0.1).astype(np.uint8)
    labels[:, :2] = 255
    labels[:, 8:14, 8:14] = 1  # one big component per image
    scores = (rng.normal(0, 1, labels.shape) + 2.5 * (labels == 1)).astype(np.float32)
    return pred, target, scores, labels


def _metrics() -> dict[str, Metric]:
    return {
        "confusion": ConfusionMatrix(C),
        "exact": AnomalyMetrics("exact"),
        "streaming": AnomalyMetrics("streaming", bins=1 << 12),
        "smiyc": SmiycPixelMetrics(num_bins=64),
        "components": ComponentMetrics(threshold=1.0),
        "extremes": Extremes(),
    }


def _feed(metrics: dict[str, Metric], idx, data) -> dict[str, Metric]:
    pred, target, scores, labels = data
    for i in idx:
        metrics["confusion"].update(pred[i], target[i])
        for k in ("exact", "streaming", "smiyc"):
            metrics[k].update(scores[i], labels[i])
        metrics["components"].update(scores[i], labels[i])
        metrics["extremes"].update(scores[i])
    return metrics


def _results(metrics: dict[str, Metric]) -> dict[str, np.ndarray]:
    out = {}
    for k, m in metrics.items():
        r = m.compute()
        vals = [np.ravel(r[key]).astype(np.float64) for key in sorted(r)]
        out[k] = np.concatenate(vals) if vals else np.zeros(0)
    return out


def _assert_same(a: dict, b: dict) -> None:
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12, equal_nan=True, err_msg=k)


def test_states_are_declared_once():
    assert ConfusionMatrix(3).reductions == {"matrix": "sum"}
    assert AnomalyMetrics("streaming").reductions == {"hist": "sum", "lo_min": "min",
                                                      "lo_max": "max"}  # fmt: skip
    assert AnomalyMetrics("exact").reductions == {"pos": "cat", "neg": "cat"}
    assert set(ComponentMetrics(0.5).reductions.values()) == {"sum"}
    with pytest.raises(ValueError, match="reduction"):
        Extremes().add_state("x", np.zeros(1), "mean")


def test_merge_of_shards_equals_one_pass_and_sklearn():
    data = _data(1)
    one = _results(_feed(_metrics(), range(6), data))
    shards = [_feed(_metrics(), idx, data) for idx in ([0, 3], [1], [2, 4, 5])]
    for name in shards[0]:
        merged = type(shards[0][name]).merged([s[name] for s in shards])
        _assert_same({name: _results({name: merged})[name]}, {name: one[name]})
    # the confusion matrix against sklearn, the toy metric against numpy
    pred, target, scores, _ = data
    v = target != 255
    cm = ConfusionMatrix.merged([s["confusion"] for s in shards])
    np.testing.assert_array_equal(cm.matrix, confusion_matrix(target[v], pred[v], labels=range(C)))
    ext = Extremes.merged([s["extremes"] for s in shards]).compute()
    assert ext == {"n": scores.size, "lo": float(scores.min()), "hi": float(scores.max()),
                   "sum": float(np.sort(scores.ravel().astype(np.float64)).sum())}  # fmt: skip


def test_reset_and_empty_like_forget_everything():
    data = _data(2)
    fresh = _results(_metrics())
    used = _feed(_metrics(), range(3), data)
    empties = {k: m.empty_like() for k, m in used.items()}
    for m in used.values():
        m.reset()
    _assert_same(_results(used), fresh)
    _assert_same(_results(empties), fresh)


def test_bad_state_or_merge_changes_nothing():
    cm = _feed(_metrics(), [0], _data(3))["confusion"]
    before = cm.matrix.copy()
    with pytest.raises(InputError, match="keys"):
        cm.load_state_dict({"bogus": torch.zeros(1)})
    with pytest.raises(InputError, match="shape"):
        cm.load_state_dict({"matrix": torch.zeros(2, 2, dtype=torch.int64)})
    with pytest.raises(InputError, match="class"):
        cm.merge(ConfusionMatrix(C + 1))
    with pytest.raises(InputError, match="mode"):
        AnomalyMetrics("exact").merge(AnomalyMetrics("streaming"))
    np.testing.assert_array_equal(cm.matrix, before)


def test_sync_without_a_process_group_is_a_no_op():
    assert not torch.distributed.is_initialized()
    cm = _feed(_metrics(), [0, 1], _data(4))["confusion"]
    before = cm.matrix.copy()
    cm.sync_distributed()
    np.testing.assert_array_equal(cm.matrix, before)


def _gloo_worker(rank: int, world: int, path: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    # uneven shards: rank 0 gets 4 images, rank 1 gets 2 ("cat" states of different lengths)
    metrics = _feed(_metrics(), [0, 2, 3, 5] if rank == 0 else [1, 4], _data(5))
    for m in metrics.values():
        m.sync_distributed()
    np.savez(f"{out}-{rank}.npz", **_results(metrics))
    dist.destroy_process_group()


@pytest.mark.slow
def test_sync_in_a_two_process_gloo_group_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "res")
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    one = _results(_feed(_metrics(), range(6), _data(5)))
    for rank in (0, 1):  # every rank holds the combined state after the sync
        with np.load(f"{out}-{rank}.npz") as got:
            _assert_same({k: got[k] for k in one}, one)
