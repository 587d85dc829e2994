"""Evaluation loop as a library: one forward per image, every method scored from it.

``evaluate`` is what ``anomseg eval``, the result store and the dashboard call. Protocol (the
seed's): the image is resized bilinearly to the predictor's input size (512x1024 for ERFNet), the
label with nearest neighbour to the scoring size; label 255 is ignored. Like the seed's
``evalAnomaly.py``, images whose label holds no anomaly pixel are skipped by default
(``skip_without_anomaly=False`` keeps their normal pixels in the pool).

Metric values are **fractions** in [0, 1] everywhere in the library (rows, JSON and CSV files);
only the command-line table prints them in percent, as the papers do.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anomseg.data.benchmark import ANOMALY, PairedDataset
from anomseg.errors import InputError
from anomseg.imageio import resize_label

METRIC_MODES = ("exact", "streaming")


@dataclass
class EvalRow:
    """One (dataset, method) result. Metric values are fractions; ``seconds`` is this method's
    own scoring + metric time plus an equal share of the dataset's forward/loading time, so the
    rows of one dataset add up to its wall time."""

    dataset: str
    method: str
    auprc: float
    fpr95: float
    auroc: float
    n_images: int
    seconds: float
    model: str = ""
    n_skipped: int = 0
    forward_seconds: float = 0.0
    method_seconds: float = 0.0
    metric_mode: str = "exact"
    input_size: tuple[int, int] | None = None
    per_image: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        """The metric values as a dict (what the result store keeps)."""
        return {"auprc": self.auprc, "fpr95": self.fpr95, "auroc": self.auroc}

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (NaN -> None)."""
        d = asdict(self)
        if not per_image:
            d.pop("per_image")
        d["input_size"] = list(self.input_size) if self.input_size else None
        return _json_safe(d)

    def worst_images(self, k: int = 5, key: str = "auprc") -> list[dict[str, Any]]:
        """The k images with the lowest per-image ``key`` (highest for fpr95): drill-down."""
        rows = [r for r in self.per_image if r.get(key) is not None and not _isnan(r[key])]
        return sorted(rows, key=lambda r: r[key], reverse=key == "fpr95")[:k]


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_metric_mode(mode: str) -> str:
    """Validate a metric mode name."""
    if mode not in METRIC_MODES:
        raise InputError(f"metric mode {mode!r}; expected one of: {', '.join(METRIC_MODES)}")
    return mode


def parse_methods(
    methods: Sequence[str], extra: Mapping[str, Any] | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """Method specs -> (canonical spec, scorer name, params); unknown names / parameters and
    out-of-range values are InputErrors raised here, before any forward pass. ``extra`` holds
    scorers known only to this run (learned heads, ``head:N``)."""
    from anomseg import scoring

    out = []
    seen: set[str] = set()
    for spec in methods:
        name, params = scoring.parse_method(spec, extra)
        scoring.get_scorer(name, extra).resolve_params(params)  # range check now, not mid-run
        canon = scoring.format_method(name, params)
        if canon in seen:
            continue
        seen.add(canon)
        out.append((canon, name, params))
    if not out:
        raise InputError("no methods given; expected at least one, e.g. msp,maxlogit,entropy")
    return out


def _has_no_anomaly(label: np.ndarray | None) -> bool:
    return label is not None and not (label == ANOMALY).any()


def _label_at(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return label if label.shape == hw else resize_label(label, hw)


def _per_image_values(result: dict[str, float]) -> dict[str, float]:
    return {k: float(result[k]) for k in ("auprc", "fpr95", "auroc") if k in result}


def method_scores(
    name: str, params: dict[str, Any], prediction: Any, extra: Mapping[str, Any] | None = None
) -> np.ndarray:
    """The anomaly map of one method, oriented so that higher = more anomalous for the metrics
    (a statistic registered as ``inverted``, such as ``stat_max_prob``, is negated)."""
    from anomseg import scoring

    s = scoring.score(name, prediction, extra, **params)
    return -s if scoring.get_scorer(name, extra).inverted else s


def evaluate(
    predictor: Any,
    datasets: Sequence[PairedDataset],
    methods: Sequence[str],
    metric_mode: str = "exact",
    progress: bool = True,
    batch_size: int = 1,
    num_workers: int = 0,
    skip_without_anomaly: bool = True,
    per_image: bool = True,
    on_image: Callable[[str, int, int], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[EvalRow]:
    """Evaluate every method on every dataset from ONE forward per image; rows dataset x method.

    ``on_image(dataset_name, done, total)`` is called once per image, after its forward (job
    progress bars; it may raise to cancel the run). ``extra`` maps names such as ``head:3`` to
    scorer specs known only to this run (``anomseg.models.heads.head_spec``).
    """
    from tqdm.auto import tqdm

    from anomseg.metrics import AnomalyMetrics
    from anomseg.metrics import per_image as per_image_metrics

    check_metric_mode(metric_mode)
    specs = parse_methods(methods, extra)
    rows: list[EvalRow] = []
    for ds in datasets:
        metrics = {canon: AnomalyMetrics(mode=metric_mode) for canon, _, _ in specs}
        per_img: dict[str, list[dict[str, Any]]] = {canon: [] for canon, _, _ in specs}
        method_s = dict.fromkeys(metrics, 0.0)
        n_used = n_skipped = 0
        t_start = time.perf_counter()
        bar = tqdm(
            total=len(ds), desc=f"eval {ds.name}", unit="img", disable=not progress, file=sys.stderr
        )
        # images without anomaly pixels are skipped before their forward, not after it
        skip = _has_no_anomaly if skip_without_anomaly else None
        it = predictor.predict_dataset(
            ds, batch_size=batch_size, num_workers=num_workers, skip=skip
        )
        for done, (name, pred, label) in enumerate(it, start=1):
            bar.update(1)
            if on_image is not None:
                on_image(ds.name, done, len(ds))
            if label is None:
                raise InputError(f"dataset {ds.name!r}: image {name!r} has no label to score")
            if pred is None:
                n_skipped += 1
                continue
            label = _label_at(label, pred.size)
            n_anom = int((label == ANOMALY).sum())
            if skip_without_anomaly and n_anom == 0:  # lost by resizing: as the seed, skip it
                n_skipped += 1
                continue
            n_used += 1
            for canon, sname, params in specs:
                t0 = time.perf_counter()
                s = method_scores(sname, params, pred, extra)
                lab = _label_at(label, s.shape)
                if per_image:
                    vals = _per_image_values(per_image_metrics(s, lab)) if n_anom else {}
                    per_img[canon].append({"name": name, "n_anomaly": n_anom, **vals})
                metrics[canon].update(s, lab)
                method_s[canon] += time.perf_counter() - t0
        bar.close()
        wall = time.perf_counter() - t_start
        forward_s = max(wall - sum(method_s.values()), 0.0)
        for canon, _, _ in specs:
            res = metrics[canon].compute() if n_used else {}
            rows.append(
                EvalRow(
                    dataset=ds.name,
                    method=canon,
                    auprc=float(res.get("auprc", float("nan"))),
                    fpr95=float(res.get("fpr95", float("nan"))),
                    auroc=float(res.get("auroc", float("nan"))),
                    n_images=n_used,
                    n_skipped=n_skipped,
                    seconds=method_s[canon] + forward_s / len(specs),
                    forward_seconds=forward_s,
                    method_seconds=method_s[canon],
                    metric_mode=metric_mode,
                    model=getattr(predictor, "model_key", ""),
                    input_size=getattr(predictor, "input_size", None),
                    per_image=per_img[canon],
                )
            )
    return rows


def evaluate_segmentation(
    predictor: Any,
    dataset: PairedDataset,
    progress: bool = True,
    batch_size: int = 1,
    num_workers: int = 0,
) -> dict[str, Any]:
    """mIoU of the model's closed-set prediction (argmax over its classes) on a trainId dataset."""
    from tqdm.auto import tqdm

    from anomseg.metrics import ConfusionMatrix

    cm = None
    n = 0
    t0 = time.perf_counter()
    it = predictor.predict_dataset(dataset, batch_size=batch_size, num_workers=num_workers)
    for name, pred, label in tqdm(
        it, total=len(dataset), desc=f"mIoU {dataset.name}", disable=not progress, file=sys.stderr
    ):
        if label is None:
            raise InputError(f"dataset {dataset.name!r}: image {name!r} has no label")
        if cm is None:
            cm = ConfusionMatrix(num_classes=pred.num_classes, ignore_index=255)
        cm.update(pred.semantic().numpy(), _label_at(label, pred.size))
        n += 1
    if cm is None:
        raise InputError(f"dataset {dataset.name!r} is empty")
    out = dict(cm.compute())
    out.update({"dataset": dataset.name, "n_images": n, "seconds": time.perf_counter() - t0})
    return out
