"""Anomaly and semantic-segmentation metrics as mergeable objects (torchmetrics-style).

Every metric has ``update``, ``compute``, ``reset`` and ``merge`` (adding states), so per-image,
per-dataset and multi-process results come from one code path.

``AnomalyMetrics`` — pixel-level AuPRC, FPR at 95 % TPR and AUROC; labels 0 normal, 1 anomaly,
255 ignored (numpy or torch, any shape). Scores are used as float32 (the scorers' output type).

* AuPRC is ``sklearn.metrics.average_precision_score``: the step-wise sum
  ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds (ties form one threshold).
* FPR95 is read off ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: the FPR at the
  first (highest) threshold whose TPR >= 0.95. (The ``ood_metrics`` helper of the seed's scripts
  interpolates ``np.interp(0.95, tpr, fpr)`` instead; the two differ by at most the normal pixels
  tied at that one threshold / N_normal: on the shared ERFNet maps they agree to < 1e-5.)
* AUROC is ``sklearn.metrics.roc_auc_score`` (trapezoids = Mann-Whitney with ties counted half).

All three only need, for every distinct score ``u`` held by an anomaly pixel, how many anomaly
pixels score ``u`` and how many normal pixels score ``> u`` and ``== u``. The two modes get these
numbers differently:

``mode="exact"``
    keeps every valid pixel's score (4 bytes each, anomaly and normal apart). ``compute()`` sorts
    the normal scores as order-preserving int32 keys, one chunk per CPU thread, and locates the
    distinct anomaly scores in each sorted chunk with ``searchsorted``; no ``argsort`` of all
    pixels, no float64 copy, no second sort for the ROC curve. Equal to scikit-learn to ~1e-15
    (tested to 1e-6).
``mode="streaming"``
    fixed memory (per bin and class an int64 count and the min/max of the key bits below the
    bin: ~32 MiB at the default 2^20 bins), independent of the pixel count. A float32 score is
    mapped to the uint32 that orders the same way (sign-magnitude -> offset binary, -0.0 ==
    +0.0) and its top ``log2(bins)`` bits are the bin: no score range is needed (entropy in
    [0, 1] and unbounded max-logits alike get ~2^-11 relative resolution at 2^20 bins). A bin
    whose scores are all one value (known from its min/max) is an exact tie; inside a bin that
    holds several values the PR/ROC curve is interpolated linearly (ranks assumed interleaved
    uniformly). Measured error vs exact: <= 2e-6 AuPRC and <= 6e-5 FPR95 on the shared ERFNet
    maps (RoadAnomaly21, fs_static), <= ~2e-4 on synthetic wide-range maps (tests,
    benchmarks/bench_metrics.py).

Distributed use (DDP): every metric is an ``anomseg.metric_base.Metric`` whose states are declared
once with their reduction — ``"sum"``/``"min"``/``"max"`` map to ``torch.distributed.all_reduce``
ops, ``"cat"`` (exact mode) to an all-gather of variable-length tensors. ``merge``,
``state_dict``/``load_state_dict`` and ``sync_distributed()`` follow from those declarations.

``ConfusionMatrix`` — per-class IoU, mIoU (mean over classes present in prediction or ground
truth) and pixel accuracy, label 255 ignored.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from anomseg.errors import InputError
from anomseg.labels import ANOMALY, IGNORE, NORMAL
from anomseg.metric_base import Metric, sync_state, to_numpy

__all__ = ["AnomalyMetrics", "ConfusionMatrix", "Metric", "per_image", "sync_state"]

METRIC_MODES = ("exact", "streaming")
DEFAULT_BINS = 1 << 20
FPR_AT_TPR = 0.95

# label value -> code: 0 normal, 1 anomaly, 2 ignored, 3 invalid
_LABEL_CODE = np.full(256, 3, dtype=np.uint8)
_LABEL_CODE[NORMAL], _LABEL_CODE[ANOMALY], _LABEL_CODE[IGNORE] = 0, 1, 2


# ----------------------------------------------------------------------------- input handling


_to_numpy = to_numpy


def _prepare(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(float32 flat scores, uint8 flat label codes), validated."""
    s = _to_numpy(scores)
    lab = _to_numpy(labels)
    if s.size != lab.size:
        raise InputError(
            f"scores have shape {s.shape} ({s.size} values) but labels have shape {lab.shape} "
            f"({lab.size} values); expected one label per score"
        )
    s = np.ascontiguousarray(s, dtype=np.float32).reshape(-1)
    if np.isnan(s.max(initial=0.0)):  # one reduction instead of an isnan pass + copy
        raise InputError("scores contain NaN; expected finite anomaly scores")
    lab = lab.reshape(-1)
    if lab.dtype == np.bool_:
        codes = lab.view(np.uint8)
    elif lab.dtype == np.uint8:
        codes = _LABEL_CODE[lab]
    else:
        if not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"labels have dtype {lab.dtype}; expected integers in {{0, 1, 255}}")
        codes = np.full(lab.shape, 3, dtype=np.uint8)
        codes[lab == NORMAL] = 0
        codes[lab == ANOMALY] = 1
        codes[lab == IGNORE] = 2
    if codes.size and codes.max() == 3:
        bad = np.unique(lab[codes == 3])[:8].tolist()
        raise InputError(
            f"labels contain values {bad}; expected 0 (normal), 1 (anomaly) or 255 (ignored) "
            "(remap dataset-specific values such as RoadAnomaly's 2 -> 1 when reading)"
        )
    return s, codes


def signed_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving int32 keys of float32 values (a < b <=> key(a) < key(b); -0.0 == +0.0)."""
    v = np.ascontiguousarray(x, dtype=np.float32).view(np.int32)
    sign = v >> 31  # 0 or -1 (arithmetic shift)
    key = v & np.int32(0x7FFFFFFF)  # magnitude
    key ^= sign  # in place: two temporaries in all
    key -= sign  # -magnitude for negative floats; -0.0 -> 0
    return key


def float_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values (the signed keys in offset binary)."""
    out = signed_keys(x).view(np.uint32)
    out ^= np.uint32(0x80000000)
    return out


# ----------------------------------------------------------------------------- core summary


class _Steps:
    """The positive-score thresholds, highest first, and the counts every metric reads.

    ``dp``: anomaly pixels at the threshold; ``tp``/``fp``: anomaly/normal pixels scoring >= it;
    ``dn``: normal pixels tied with it (exact) or sharing its bin (streaming); ``interp``: True where
    the threshold is a streaming bin holding several distinct values (interpolated inside).
    ``fp_above``: normal pixels scoring above the threshold (strictly; for ROC corners).
    """

    def __init__(self, dp, tp, fp, dn, n_pos, n_neg, interp=None, thr=None):
        self.thr = None if thr is None else np.asarray(thr, dtype=np.float32)  # score per step
        self.dp = np.asarray(dp, dtype=np.float64)
        self.tp = np.asarray(tp, dtype=np.float64)
        self.fp = np.asarray(fp, dtype=np.float64)
        self.dn = np.asarray(dn, dtype=np.float64)
        self.n_pos = int(n_pos)
        self.n_neg = int(n_neg)
        self.interp = np.zeros(len(self.dp), bool) if interp is None else np.asarray(interp, bool)

    def summary(self) -> dict[str, float]:
        P, N = self.n_pos, self.n_neg
        nan = float("nan")
        out = {"auprc": nan, "fpr95": nan, "auroc": nan, "n_anomaly": P, "n_normal": N}
        if P == 0:
            return out
        dp, tp, fp, dn = self.dp, self.tp, self.fp, self.dn
        prec = tp / (tp + fp)
        if self.interp.any():
            # integral of precision along the straight segment the bin spans in (tp, fp):
            # int_0^1 (a + b t) / (c + d t) dt = b/d + (a d - b c) / d^2 * ln(1 + d/c)
            m = self.interp
            a, b = tp[m] - dp[m], dp[m]
            c, d = a + fp[m] - dn[m], dp[m] + dn[m]
            with np.errstate(divide="ignore", invalid="ignore"):
                integ = b / d + (a * d - b * c) / d**2 * np.log1p(d / c)
            prec = prec.copy()
            prec[m] = np.where(c > 0, integ, b / d)  # c == 0 means a == 0: precision b/d flat
        out["auprc"] = float(np.dot(dp, prec) / P)
        if N == 0:
            return out
        tpr = tp / P  # same float division as roc_curve: tps / tps[-1]
        j = int(np.argmax(tpr >= FPR_AT_TPR))
        fp95 = fp[j]
        if self.interp[j]:
            t = (FPR_AT_TPR * P - (tp[j] - dp[j])) / dp[j]
            fp95 = fp[j] - dn[j] + min(max(t, 0.0), 1.0) * dn[j]
        out["fpr95"] = float(fp95 / N)
        out["auroc"] = float(np.dot(dp, N - fp + 0.5 * dn) / (float(P) * N))
        return out

    def best_f1_threshold(self) -> float:
        """The threshold ``p`` at the best pixel F1 for the rule ``score > p`` (the component
        metrics' threshold): the float32 just below the best step's score (NaN if unknown)."""
        if self.thr is None or not len(self.tp):
            return float("nan")
        j = int(np.argmax(self.tp / (self.tp + self.fp + self.n_pos)))  # F1 = 2TP/(TP+FP+P)
        return float(np.nextafter(self.thr[j], np.float32(-np.inf)))

    def curves(self, max_points: int = 500) -> dict[str, np.ndarray]:
        """PR and ROC points (recall/precision, fpr/tpr), each downsampled to <= max_points."""
        P, N = self.n_pos, max(self.n_neg, 1)
        if P == 0:
            e = np.zeros(0)
            return {"recall": e, "precision": e, "fpr": e, "tpr": e}
        recall = np.concatenate([[0.0], self.tp / P])
        precision = np.concatenate([[1.0], self.tp / (self.tp + self.fp)])
        # ROC: before each threshold the normal pixels strictly above it move FPR right
        tp_prev = self.tp - self.dp
        fpr = np.empty(2 * len(self.tp) + 2)
        tpr = np.empty_like(fpr)
        fpr[0], tpr[0] = 0.0, 0.0
        fpr[1:-1:2], tpr[1:-1:2] = (self.fp - self.dn) / N, tp_prev / P
        fpr[2:-1:2], tpr[2:-1:2] = self.fp / N, self.tp / P
        fpr[-1], tpr[-1] = 1.0, 1.0
        ri = _downsample(recall, max_points)
        oi = _downsample(fpr + tpr, max_points)
        return {"recall": recall[ri], "precision": precision[ri], "fpr": fpr[oi], "tpr": tpr[oi]}


def _downsample(arc: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of ~max_points points evenly spaced along a non-decreasing arc, ends included."""
    n = len(arc)
    if n <= max_points:
        return np.arange(n)
    grid = np.linspace(arc[0], arc[-1], max_points - 1)
    idx = np.unique(np.concatenate([np.searchsorted(arc, grid, side="left"), [n - 1]]))
    return np.minimum(idx, n - 1)


def _n_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _exact_steps(pos: np.ndarray, neg_chunks: list[np.ndarray], threads: int | None) -> _Steps:
    """Steps from raw float32 scores, exactly.

    The normal scores are turned into order-preserving int32 keys and sorted in place, one
    chunk per thread (numpy >= 2 sorts int32 with SIMD and releases the GIL: 10-20x faster than
    ``torch.sort`` on the same keys, benchmarks/bench_eval.py); the distinct anomaly scores are
    then located in each sorted chunk with ``searchsorted``.
    """
    u, cp = np.unique(pos, return_counts=True)  # ascending distinct anomaly scores
    n_neg = sum(len(c) for c in neg_chunks)
    above = np.zeros(len(u), dtype=np.int64)  # normal pixels > u
    tied = np.zeros(len(u), dtype=np.int64)  # normal pixels == u
    if n_neg and len(u):
        uk = signed_keys(u)
        groups = _balanced_groups(neg_chunks, threads or _n_threads())

        def count(group: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            keys = np.empty(sum(len(c) for c in group), dtype=np.int32)
            at = 0
            for c in group:
                keys[at : at + len(c)] = signed_keys(c)
                at += len(c)
            keys.sort()
            srt = keys
            left = np.searchsorted(srt, uk, "left")
            right = np.searchsorted(srt, uk, "right")
            return len(srt) - right, right - left

        if len(groups) == 1:
            results = [count(groups[0])]
        else:
            with ThreadPoolExecutor(len(groups)) as ex:
                results = list(ex.map(count, groups))
        for gt, eq in results:
            above += gt
            tied += eq
    # highest threshold first
    u_desc = slice(None, None, -1)
    dp = cp[u_desc]
    tp = np.cumsum(dp)
    dn = tied[u_desc]
    fp = above[u_desc] + dn  # normal pixels >= u
    return _Steps(dp, tp, fp, dn, len(pos), n_neg, thr=u[u_desc])


def _balanced_groups(chunks: list[np.ndarray], k: int) -> list[list[np.ndarray]]:
    """Split chunks into <= k groups of similar total size (big chunks are split too)."""
    total = sum(len(c) for c in chunks)
    k = max(1, min(k, total // 1_000_000 + 1))  # threads only pay off on big arrays
    target = -(-total // k)
    groups: list[list[np.ndarray]] = [[]]
    filled = 0
    for c in chunks:
        while len(c):
            room = target - filled if len(groups) < k else len(c)
            take, c = c[:room], c[room:]
            groups[-1].append(take)
            filled += len(take)
            if filled >= target and len(groups) < k:
                groups.append([])
                filled = 0
    return [g for g in groups if g]


# ----------------------------------------------------------------------------- AnomalyMetrics


class AnomalyMetrics(Metric):
    """Pixel-level AuPRC / FPR95 / AUROC over any number of ``update`` calls; see module doc.

    ``bins``: streaming mode's bin count (a power of two, 2^8..2^24); ``threads``: sort threads of
    exact mode's ``compute`` (default: CPU count, at most 8).
    """

    def __init__(
        self, mode: str = "exact", bins: int = DEFAULT_BINS, threads: int | None = None
    ) -> None:
        if mode not in METRIC_MODES:
            raise InputError(f"metric mode {mode!r}; expected one of: {', '.join(METRIC_MODES)}")
        if mode == "streaming" and (bins < 256 or bins > (1 << 24) or bins & (bins - 1)):
            raise InputError(f"bins={bins}; expected a power of two in [2^8, 2^24]")
        super().__init__()
        self.mode = mode
        self.bins = int(bins)
        self.threads = threads
        self._shift = np.uint32(32 - self.bins.bit_length() + 1)
        self._cache: _Steps | None = None
        if mode == "exact":  # every valid pixel's score, anomaly and normal apart
            self.add_state("pos", np.float32, "cat")
            self.add_state("neg", np.float32, "cat")
        else:
            # per bin: counts of normal / anomaly; min and max of the key bits below the bin
            # flat slots: [normal bins | anomaly bins | one dump slot for ignored pixels]
            n = 2 * self.bins + 1
            self.add_state("hist", np.zeros(n, dtype=np.int64), "sum")
            self.add_state("lo_min", np.full(n, np.iinfo(np.uint32).max, np.uint32), "min")
            self.add_state("lo_max", np.zeros(n, dtype=np.uint32), "max")

    def _changed(self) -> None:
        self._cache = None

    def _check_mergeable(self, other: AnomalyMetrics) -> None:
        if (
            not isinstance(other, AnomalyMetrics)
            or other.mode != self.mode
            or (self.mode == "streaming" and other.bins != self.bins)
        ):
            raise InputError(
                f"cannot merge a {getattr(other, 'mode', type(other).__name__)} metric "
                f"(bins={getattr(other, 'bins', None)}) into a {self.mode} "
                f"metric (bins={self.bins}); expected the same mode and bins"
            )

    @property
    def n_pixels(self) -> int:
        """Valid (non-ignored) pixels seen."""
        if self.mode == "exact":
            return sum(len(c) for c in self.pos) + sum(len(c) for c in self.neg)
        return int(self.hist[: 2 * self.bins].sum())

    def update(self, scores: Any, labels: Any) -> None:
        """Add pixels: ``scores`` float (any shape), ``labels`` in {0, 1, 255} of the same size."""
        s, codes = _prepare(scores, labels)
        self._cache = None
        if self.mode == "exact":
            pos = s[codes == 1]
            neg = s[codes == 0]
            if len(pos):
                self.pos.append(pos)
            if len(neg):
                self.neg.append(neg)
            return
        k = float_keys(s)
        B = self.bins
        idx = (k >> self._shift).astype(np.intp)
        idx += codes.astype(np.intp) * B
        idx[codes == 2] = 2 * B  # ignored pixels share one dump slot, never read
        if len(idx) > 4 * B:  # bincount's cost grows with the bins, add.at's with the pixels
            self.hist += np.bincount(idx, minlength=2 * B + 1)
        else:
            np.add.at(self.hist, idx, 1)
        lo = k & np.uint32((1 << int(self._shift)) - 1)
        np.minimum.at(self.lo_min, idx, lo)
        np.maximum.at(self.lo_max, idx, lo)

    # -- results
    def _steps(self) -> _Steps:
        if self._cache is None:
            if self.mode == "exact":
                self._cache = _exact_steps(_cat(self.pos), self.neg, self.threads)
            else:
                self._cache = self._streaming_steps()
        return self._cache

    def _streaming_steps(self) -> _Steps:
        B = self.bins
        neg, pos = self.hist[:B][::-1], self.hist[B : 2 * B][::-1]  # highest bin first
        tp, fp = np.cumsum(pos), np.cumsum(neg)
        m = pos > 0
        lo_min = np.minimum(self.lo_min[:B], self.lo_min[B : 2 * B])
        lo_max = np.maximum(self.lo_max[:B], self.lo_max[B : 2 * B])
        multi = (lo_min < lo_max)[::-1]  # the bin holds several distinct scores
        # a bin's threshold: its lowest score (bin bits + the smallest low bits seen in it)
        low = (np.arange(B, dtype=np.uint32)[::-1] << self._shift) | lo_min[::-1]
        thr = _keys_to_float(low[m])
        return _Steps(pos[m], tp[m], fp[m], neg[m], tp[-1], fp[-1], interp=multi[m], thr=thr)

    def compute(self) -> dict[str, float]:
        """{"auprc", "fpr95", "auroc" (fractions; NaN when undefined), "n_anomaly", "n_normal"}."""
        return self._steps().summary()

    def best_f1_threshold(self) -> float:
        """Score threshold ``p`` of the best pixel F1 (pixels ``> p`` predicted anomalous)."""
        return self._steps().best_f1_threshold()

    def curves(self, max_points: int = 500) -> dict[str, np.ndarray]:
        """Precision-recall and ROC points for plotting, each at most ``max_points`` long."""
        return self._steps().curves(max_points)


def _keys_to_float(keys: np.ndarray) -> np.ndarray:
    """Inverse of ``float_keys``: uint32 order keys -> float32 values."""
    k = (np.asarray(keys, dtype=np.uint32) ^ np.uint32(0x80000000)).view(np.int32)
    bits = np.where(k < 0, (-k.astype(np.int64)) | 0x80000000, k).astype(np.uint32)
    return bits.view(np.float32)


def _cat(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def per_image(scores: Any, labels: Any) -> dict[str, float]:
    """Exact AuPRC / FPR95 / AUROC of one image (NaN where it has no anomaly / normal pixel)."""
    m = AnomalyMetrics(mode="exact", threads=1)
    m.update(scores, labels)
    return m.compute()


# ----------------------------------------------------------------------------- ConfusionMatrix


class ConfusionMatrix(Metric):
    """Semantic-segmentation confusion matrix (rows = ground truth, columns = prediction); sums
    across processes with ``sync_distributed``."""

    def __init__(self, num_classes: int = 19, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.add_state("matrix", np.zeros((self.num_classes,) * 2, dtype=np.int64), "sum")

    def update(self, pred: Any, target: Any) -> None:
        """Add pixels: ``pred`` class ids, ``target`` class ids or ``ignore_index``, same size."""
        p = _to_numpy(pred).reshape(-1)
        t = _to_numpy(target).reshape(-1)
        if p.size != t.size:
            raise InputError(
                f"prediction has {p.size} pixels but target has {t.size}; expected the same size"
            )
        C = self.num_classes
        valid = t != self.ignore_index
        t = t[valid].astype(np.intp)
        p = p[valid].astype(np.intp)
        for name, arr in (("target", t), ("prediction", p)):
            if arr.size and (arr.min() < 0 or arr.max() >= C):
                bad = np.unique(arr[(arr < 0) | (arr >= C)])[:8].tolist()
                raise InputError(
                    f"{name} holds class ids {bad}; expected 0..{C - 1}"
                    + (f" or {self.ignore_index} (ignored)" if name == "target" else "")
                )
        self.matrix += np.bincount(t * C + p, minlength=C * C).reshape(C, C)

    def _check_mergeable(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix) or other.num_classes != self.num_classes:
            raise InputError(
                f"cannot merge a {getattr(other, 'num_classes', '?')}-class confusion matrix "
                f"into a {self.num_classes}-class one"
            )

    def compute(self) -> dict[str, Any]:
        """{"iou": (C,) NaN for classes absent from both, "miou", "pixel_accuracy", "n_pixels"}."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = m.sum()
        present = ~np.isnan(iou)
        return {
            "iou": iou,
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "n_pixels": int(total),
        }
