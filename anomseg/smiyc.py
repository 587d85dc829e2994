"""``metric_mode="smiyc"``: the pixel AP / FPR95 as the official SegmentMeIfYouCan evaluator gets them.

The official evaluator (``road_anomaly_benchmark``, metric ``PixBinaryClass``) does not compute
exact AP. Per frame it reads the map as float16 (the file type it stores), takes the valid
pixels (label != 255) and histograms their scores into **dynamic bins**: the edges are
``min - eps`` and ``max + eps`` of the frame's scores (``eps = max(1 % of the range, 0.01)``,
in float16) and ``min(384, n)`` evenly spaced quantiles of the anomaly scores and of the normal
scores each (768 bins in all, duplicates removed). Every bin's lower edge is a threshold; the frames'
per-bin counts are concatenated, all thresholds sorted high to low, and the counts accumulated
into one confusion matrix per threshold. From those:

* repeated thresholds keep only the last matrix of each run (plus the very first one);
  this follows the evaluator's current version (its commit "fix best-f1 threshold selection")
* the curve gets a (0, 0) start and an (all, all) end when missing;
* AP = ``sum_n (R_n - R_{n-1}) P_n`` (precision 1 where nothing is predicted yet);
* FPR95 = FPR at the first point whose TPR >= 0.95 (``searchsorted``), 1.0 if never reached;
* AUROC = trapezoids over (FPR, TPR); the best-F1 threshold (the component metrics' threshold)
  is the threshold at the maximal ``2 TP / (2 TP + FP + FN)``.

So binning happens *per frame*, and a frame's quantile thresholds need not line up with another
frame's: this is where ``smiyc`` and ``exact`` differ (README has the figures on the real sets).
The state is the list of per-frame (thresholds, counts) — "cat" across processes, like exact
mode — plus two sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomseg.errors import InputError
from anomseg.metric_base import Metric
from anomseg.metrics import _prepare

NUM_BINS = 768
FPR_AT_TPR = 0.95


def frame_bins(
    scores: np.ndarray, is_anomaly: np.ndarray, num_bins: int = NUM_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's (thresholds high -> low, anomaly counts, normal counts) per dynamic bin.

    ``scores`` are the frame's valid pixels; they are used as float16 like the stored maps.
    """
    p = np.asarray(scores).astype(np.float16)
    pos, neg = p[is_anomaly], p[~is_anomaly]
    # outer edges just outside the frame's range (float16 arithmetic, as on the stored maps)
    vmin, vmax = np.min(p), np.max(p)
    eps = np.maximum((vmax - vmin) * 1e-2, 1e-2)
    parts = [np.array([vmin - eps, vmax + eps])]
    for part in (pos, neg):
        if part.size:
            parts.append(np.quantile(part, np.linspace(0, 1, min(num_bins // 2, part.size))))
    edges = np.unique(np.concatenate(parts))
    pos_hist, _ = np.histogram(pos, bins=edges)
    neg_hist, _ = np.histogram(neg, bins=edges)
    # bin k covers [edges[k], edges[k+1]): its lower edge is the threshold it adds; high first
    return edges[:-1][::-1], pos_hist[::-1], neg_hist[::-1]


def curve_from_bins(
    thresholds: np.ndarray, pos_counts: np.ndarray, neg_counts: np.ndarray, n_pos: int, n_neg: int
) -> dict[str, Any]:
    """The official PR / ROC curve and its summary numbers from concatenated per-frame bins."""
    order = np.argsort(thresholds)[::-1]
    thr = thresholds[order]
    tp = np.cumsum(pos_counts[order].astype(np.float64))
    fp = np.cumsum(neg_counts[order].astype(np.float64))
    # a run of equal thresholds is one point: its last cumulative count (and the first entry)
    keep = np.concatenate([[0], np.nonzero(thr[:-1] != thr[1:])[0], [len(thr) - 1]])
    tp, fp, thr = tp[keep], fp[keep], thr[keep]
    if tp[0] != 0 or fp[0] != 0:  # the curve starts at (0, 0) above every threshold
        tp, fp = np.concatenate([[0.0], tp]), np.concatenate([[0.0], fp])
        thr = np.concatenate([[float(np.max(thr)) + 1], thr])
    if tp[-1] != n_pos or fp[-1] != n_neg:  # ... and ends with everything predicted
        tp, fp = np.concatenate([tp, [n_pos]]), np.concatenate([fp, [n_neg]])
        thr = np.concatenate([thr, [float(np.max(thr)) - 1]])  # (sic: max - 1, as official)
    fn = n_pos - tp
    tpr = tp / n_pos if n_pos else np.full(len(tp), np.nan)
    fpr = fp / n_neg if n_neg else np.full(len(fp), np.nan)
    predicted = tp + fp
    precision = np.ones(len(tp))
    precision[predicted > 0] = tp[predicted > 0] / predicted[predicted > 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * tp / (2 * tp + fp + fn)
    at = int(np.searchsorted(tpr, FPR_AT_TPR))
    fpr95 = float(fpr[at]) if at < len(tpr) else 1.0
    best = int(np.nanargmax(f1)) if np.isfinite(f1).any() else 0
    best_thr = float(thr[best])  # the component metrics' threshold (segment: score > it)
    return {
        "auprc": float(np.sum(np.diff(tpr) * precision[1:])),
        "fpr95": fpr95,
        "auroc": float(np.trapezoid(tpr, fpr)),
        "best_f1": float(f1[best]),
        "best_f1_threshold": best_thr,
        "recall": tpr,
        "precision": precision,
        "fpr": fpr,
        "tpr": tpr,
    }


class SmiycPixelMetrics(Metric):
    """Official binned pixel AP / FPR95 / AUROC, with the ``AnomalyMetrics`` interface."""

    mode = "smiyc"

    def __init__(self, num_bins: int = NUM_BINS, **_ignored: Any) -> None:
        if num_bins < 2:
            raise InputError(f"num_bins={num_bins}; expected >= 2")
        super().__init__()
        self.num_bins = int(num_bins)
        self.bins = self.num_bins
        self.threads = None
        self._cache: dict[str, Any] | None = None
        # per frame: its bin thresholds and anomaly / normal counts per bin (frames concatenated)
        self.add_state("thresholds", np.float64, "cat")
        self.add_state("pos", np.int64, "cat")
        self.add_state("neg", np.int64, "cat")
        self.add_state("counts", np.zeros(2, dtype=np.int64), "sum")  # anomaly, normal pixels

    def _changed(self) -> None:
        self._cache = None

    def _check_mergeable(self, other: SmiycPixelMetrics) -> None:
        if not isinstance(other, SmiycPixelMetrics) or other.num_bins != self.num_bins:
            raise InputError("cannot merge: expected a smiyc metric with the same num_bins")

    @property
    def n_pixels(self) -> int:
        """Valid (non-ignored) pixels seen."""
        return int(self.counts.sum())

    def update(self, scores: Any, labels: Any) -> None:
        """Add one frame (its bins are its own, as in the official evaluator)."""
        s, codes = _prepare(scores, labels)
        valid = codes != 2
        if not valid.any():
            return
        is_anom = codes[valid] == 1
        thr, pc, nc = frame_bins(s[valid], is_anom, self.num_bins)
        self.thresholds.append(np.asarray(thr, dtype=np.float64))
        self.pos.append(pc.astype(np.int64))
        self.neg.append(nc.astype(np.int64))
        self.counts += [int(is_anom.sum()), int((~is_anom).sum())]
        self._cache = None

    def _curve(self) -> dict[str, Any]:
        if self._cache is None:
            n_pos, n_neg = int(self.counts[0]), int(self.counts[1])
            if n_pos == 0 or not sum(len(t) for t in self.thresholds):
                nan = float("nan")
                self._cache = {"auprc": nan, "fpr95": nan, "auroc": nan, "best_f1": nan,
                               "best_f1_threshold": nan}  # fmt: skip
            else:
                self._cache = curve_from_bins(
                    np.concatenate(self.thresholds), np.concatenate(self.pos),
                    np.concatenate(self.neg), n_pos, n_neg,
                )  # fmt: skip
        return self._cache

    def compute(self) -> dict[str, float]:
        """{"auprc", "fpr95", "auroc", "n_anomaly", "n_normal"} as the official evaluator."""
        c = self._curve()
        return {
            "auprc": c["auprc"],
            "fpr95": c["fpr95"],
            "auroc": c["auroc"],
            "n_anomaly": int(self.counts[0]),
            "n_normal": int(self.counts[1]),
        }

    def best_f1_threshold(self) -> float:
        """The score threshold at the best pixel F1 (official: the components' threshold)."""
        return float(self._curve()["best_f1_threshold"])

    def curves(self, max_points: int = 500) -> dict[str, np.ndarray]:
        """PR and ROC points for plotting (at most ``max_points`` each)."""
        c = self._curve()
        if "recall" not in c:
            e = np.zeros(0)
            return {"recall": e, "precision": e, "fpr": e, "tpr": e}
        idx = np.unique(np.linspace(0, len(c["recall"]) - 1, max_points).astype(int))
        return {k: np.asarray(c[k])[idx] for k in ("recall", "precision", "fpr", "tpr")}
