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
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anomseg.data.benchmark import ANOMALY, PairedDataset
from anomseg.errors import InputError
from anomseg.imageio import resize_label, resize_scores

METRIC_MODES = ("exact", "streaming", "smiyc")
# where maps and labels meet: "input" = the label resized (nearest) to the map (the seed's
# protocol); "label" = the map resized (bilinear) to the label's native size (SegmentMeIfYouCan's)
SCORE_SIZES = ("input", "label")


@dataclass
class EvalRow:
    """One (dataset, method) result. Metric values are fractions; ``seconds`` is this method's
    share of the dataset's wall time (``wall_seconds``): its own scoring + metric time plus an
    equal share of the forward/loading time, scaled so the rows of one dataset add up to the
    wall time (scoring overlaps the forward, so the parts add up to more)."""

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
    wall_seconds: float = 0.0
    metric_mode: str = "exact"
    input_size: tuple[int, int] | None = None
    per_image: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, Any] = field(default_factory=dict)  # anomseg.components values
    protocol: dict[str, Any] = field(default_factory=dict)  # anomseg.protocol card

    @property
    def metrics(self) -> dict[str, float]:
        """The metric values as a dict (what the result store keeps): pixel and component."""
        return {"auprc": self.auprc, "fpr95": self.fpr95, "auroc": self.auroc, **self.components}

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


# Metric objects kept per (dataset, method): name -> factory(metric mode). Each object has
# ``update(scores, labels)``, ``merge(other)`` and ``compute() -> dict``; the image shards of a
# dataset (the ranks of ``--nproc``) combine with ``merge``, so a metric added here runs in
# multi-process evaluation with no further code. "pixel" fills the rows' AuPRC / FPR95 / AUROC.
METHOD_METRICS: dict[str, Callable[[str], Any]] = {}


def register_method_metric(name: str, factory: Callable[[str], Any]) -> None:
    """Keep one more mergeable metric object per (dataset, method), built as ``factory(mode)``."""
    if name in METHOD_METRICS:
        raise KeyError(f"method metric {name!r} is registered twice")
    METHOD_METRICS[name] = factory


def _pixel_metric(mode: str) -> Any:
    from anomseg.metrics import AnomalyMetrics

    if mode == "smiyc":
        from anomseg.smiyc import SmiycPixelMetrics

        return SmiycPixelMetrics()
    return AnomalyMetrics(mode=mode)


def _component_metric(mode: str) -> Any:
    from anomseg.components import DeferredComponents

    # the threshold comes from "pixel"; smiyc keeps the maps in float16 like the official files
    return DeferredComponents(float16=mode == "smiyc")


register_method_metric("pixel", _pixel_metric)
register_method_metric("components", _component_metric)


class DatasetEval:
    """What evaluating one dataset accumulates, image by image: per method its metric objects
    (``METHOD_METRICS``), per-image values and scoring seconds; image counts and times.

    Mergeable: the states of disjoint image shards ``merge`` into the state one process would
    reach over all images — metric states add (exact mode: the same pixel pools, so the same
    numbers), counts and seconds add, per-image entries go back in dataset order by image
    index. Picklable, so ranks can ship it (``anomseg.distributed``).
    """

    def __init__(
        self,
        name: str,
        specs: Sequence[tuple[str, str, dict[str, Any]]],
        metric_mode: str = "exact",
        per_image: bool = True,
        skip_without_anomaly: bool = True,
        score_size: str = "input",
    ) -> None:
        if score_size not in SCORE_SIZES:
            raise InputError(
                f"score size {score_size!r}; expected one of: {', '.join(SCORE_SIZES)}"
            )
        self.score_size = score_size
        self.name = name
        self.specs = [(c, n, dict(p)) for c, n, p in specs]
        self.metric_mode = metric_mode
        self.per_image = per_image
        self.skip_without_anomaly = skip_without_anomaly
        self.metrics = {
            canon: {k: make(metric_mode) for k, make in METHOD_METRICS.items()}
            for canon, _, _ in self.specs
        }
        for mine in self.metrics.values():
            for metric in mine.values():
                if hasattr(metric, "for_dataset"):
                    metric.for_dataset(name)
        self.images: dict[str, list[tuple[int, dict[str, Any]]]] = {c: [] for c in self.metrics}
        self.method_seconds = dict.fromkeys(self.metrics, 0.0)
        self.n_used = self.n_skipped = 0
        self.forward_seconds = 0.0  # time the loop waited for decoded, forwarded images
        self.wall_seconds = 0.0

    def skip(self) -> None:
        """Count an image left out before its forward (no anomaly pixel)."""
        self.n_skipped += 1

    def add(
        self,
        index: int,
        name: str,
        prediction: Any,
        label: np.ndarray,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Score image ``index`` of the dataset with every method; update metrics, per-image."""
        from anomseg.metrics import per_image as per_image_metrics

        # native: the label as given (at its own size when score_size == "label"); the size
        # filters of component metrics count pixels of the image's native size
        native = label
        meta = getattr(prediction, "meta", None) or {}
        native_hw = tuple(meta.get("image_size") or label.shape)
        label = _label_at(label, prediction.size)
        n_anom = int((label == ANOMALY).sum())
        if self.skip_without_anomaly and n_anom == 0:  # lost by resizing: as the seed, skip it
            self.n_skipped += 1
            return
        self.n_used += 1
        for canon, sname, params in self.specs:
            t0 = time.perf_counter()
            s = method_scores(sname, params, prediction, extra)
            if self.score_size == "label":
                s, lab = resize_scores(s, native.shape), native
            else:
                lab = _label_at(label, s.shape)
            if self.per_image:
                vals = _per_image_values(per_image_metrics(s, lab)) if n_anom else {}
                self.images[canon].append((index, {"name": name, "n_anomaly": n_anom, **vals}))
            for metric in self.metrics[canon].values():
                if getattr(metric, "takes_hints", False):
                    metric.update(s, lab, index=index, native_hw=native_hw)
                else:
                    metric.update(s, lab)
            self.method_seconds[canon] += time.perf_counter() - t0

    def merge(self, other: DatasetEval) -> DatasetEval:
        """Add the state of another shard of the same dataset and methods; returns self."""
        if (other.name, other.specs, other.metric_mode) != (self.name, self.specs, self.metric_mode):
            raise InputError(
                f"cannot merge the evaluation of {other.name!r} ({other.metric_mode}, "
                f"{len(other.specs)} methods) into {self.name!r} ({self.metric_mode}, "
                f"{len(self.specs)} methods); expected the same dataset, methods and mode"
            )
        for canon, mine in self.metrics.items():
            for key, metric in mine.items():
                metric.merge(other.metrics[canon][key])
            self.images[canon].extend(other.images[canon])
            self.method_seconds[canon] += other.method_seconds[canon]
        self.n_used += other.n_used
        self.n_skipped += other.n_skipped
        self.forward_seconds += other.forward_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        return self

    def results(self) -> dict[str, dict[str, dict[str, Any]]]:
        """method -> metric name -> its ``compute()`` ({} for a dataset with no image used)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for canon, mine in self.metrics.items():
            res = {
                k: (m.compute() if self.n_used else {})
                for k, m in mine.items()
                if not getattr(m, "needs_threshold", False)
            }
            # component metrics threshold the maps at the pixel curve's best F1 (SegmentMeIfYouCan)
            pixel = mine.get("pixel")
            thr = pixel.best_f1_threshold() if self.n_used and pixel is not None else None
            for k, m in mine.items():
                if getattr(m, "needs_threshold", False):
                    res[k] = m.compute(thr) if self.n_used else {}
            out[canon] = res
        return out

    def rows(
        self,
        results: Mapping[str, Mapping[str, Mapping[str, Any]]],
        model: str = "",
        input_size: tuple[int, int] | None = None,
    ) -> list[EvalRow]:
        """One EvalRow per method. ``seconds`` splits the wall time in proportion to each
        method's scoring time plus an equal share of the forward time, so the rows add up to
        the wall time even though scoring overlaps the forward."""
        n = len(self.specs)
        work = sum(self.method_seconds.values()) + self.forward_seconds
        rows = []
        for canon, _, _ in self.specs:
            res = results[canon].get("pixel", {})
            comp = results[canon].get("components", {})
            own = self.method_seconds[canon] + self.forward_seconds / n
            rows.append(
                EvalRow(
                    dataset=self.name,
                    method=canon,
                    auprc=float(res.get("auprc", float("nan"))),
                    fpr95=float(res.get("fpr95", float("nan"))),
                    auroc=float(res.get("auroc", float("nan"))),
                    n_images=self.n_used,
                    n_skipped=self.n_skipped,
                    seconds=self.wall_seconds * own / work if work > 0 else self.wall_seconds / n,
                    forward_seconds=self.forward_seconds,
                    method_seconds=self.method_seconds[canon],
                    wall_seconds=self.wall_seconds,
                    metric_mode=self.metric_mode,
                    model=model,
                    input_size=input_size,
                    components={k: v for k, v in comp.items() if k != "per_image"},
                    per_image=[
                        {**v, **comp.get("per_image", {}).get(i, {})}
                        for i, v in sorted(self.images[canon], key=lambda e: e[0])
                    ],
                )
            )
        return rows


def merge_on_rank0(obj: Any, group: Any = None) -> Any:
    """Gather a mergeable object (anything with ``merge(other)``) from every rank onto rank 0
    and merge them there in rank order; rank 0 gets the merged object, the others None.
    (Here, not in ``anomseg.distributed``: that module runs ``evaluate`` in its ranks.)"""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, parts, dst=0, group=group)
    if parts is None:
        return None
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    return merged


class _Background:
    """One worker thread running submitted calls in order, at most ``depth`` waiting.

    The scoring of image i runs while the main thread decodes and forwards image i+1 (torch
    and numpy release the GIL in their kernels); ``depth`` bounds the predictions held in
    memory. An exception of a call is raised in the main thread at the next submit or drain.
    """

    def __init__(self, enabled: bool = True, depth: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.depth = depth
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="anomseg-score") if enabled else None
        self._pending: deque[Any] = deque()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._ex is None:
            fn(*args)
            return
        self._pending.append(self._ex.submit(fn, *args))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        if self._ex is not None:
            for f in self._pending:
                f.cancel()
            self._ex.shutdown(wait=True)
            self._pending.clear()


def _timed(it: Iterator[Any], acc: DatasetEval) -> Iterator[Any]:
    """Yield from ``it``, adding the time spent waiting for each item to ``acc``."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        acc.forward_seconds += time.perf_counter() - t0
        yield item


def evaluate(
    predictor: Any,
    datasets: Sequence[PairedDataset],
    methods: Sequence[str],
    metric_mode: str = "exact",
    progress: bool = True,
    batch_size: int | str = 1,
    num_workers: int = 0,
    skip_without_anomaly: bool = True,
    per_image: bool = True,
    on_image: Callable[[str, int, int], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    overlap: bool = True,
    rank: int = 0,
    world: int = 1,
    score_size: str = "input",
) -> list[EvalRow]:
    """Evaluate every method on every dataset from ONE forward per image; rows dataset x method.

    ``on_image(dataset_name, done, total)`` is called once per image, after its forward (job
    progress bars; it may raise to cancel the run). ``extra`` maps names such as ``head:3`` to
    scorer specs known only to this run (``anomseg.models.heads.head_spec``). ``overlap``
    scores image i in a background thread while image i+1 is forwarded. ``batch_size`` may be
    ``"auto"`` (from free device memory, ``Predictor.auto_batch_size``). ``score_size``:
    ``"input"`` scores at the model's input size (label resized nearest, the seed's protocol),
    ``"label"`` resizes each map bilinearly to the label's native size (SegmentMeIfYouCan's).

    Multi-process (``rank``/``world`` > 1, a ``torch.distributed`` group initialised, see
    ``anomseg.distributed``): this rank evaluates images ``rank, rank + world, ...`` and the
    shards are merged on rank 0, which returns the rows a single process would; other ranks
    return [].
    """
    from tqdm.auto import tqdm

    check_metric_mode(metric_mode)
    specs = parse_methods(methods, extra)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"rank {rank} of world size {world}; expected 0 <= rank < world")
    if batch_size == "auto":
        batch_size = predictor.auto_batch_size()
    rows: list[EvalRow] = []
    for ds in datasets:
        acc = DatasetEval(
            ds.name, specs, metric_mode, per_image, skip_without_anomaly, score_size=score_size
        )
        shard = range(rank, len(ds), world)
        t_start = time.perf_counter()
        bar = tqdm(
            total=len(shard), desc=f"eval {ds.name}", unit="img", disable=not progress,
            file=sys.stderr,
        )  # fmt: skip
        # images without anomaly pixels are skipped before their forward, not after it
        skip = _has_no_anomaly if skip_without_anomaly else None
        it = predictor.predict_dataset(
            ds, batch_size=batch_size, num_workers=num_workers, skip=skip, indices=shard
        )
        scorer = _Background(enabled=overlap)
        try:
            for done, (index, (name, pred, label)) in enumerate(
                zip(shard, _timed(iter(it), acc), strict=True), start=1
            ):
                bar.update(1)
                if on_image is not None:
                    on_image(ds.name, done, len(shard))
                if label is None:
                    raise InputError(f"dataset {ds.name!r}: image {name!r} has no label to score")
                if pred is None:
                    scorer.submit(acc.skip)
                else:
                    if score_size == "label":  # the maps go to the label's native size
                        label = ds.read_label(index)
                    scorer.submit(acc.add, index, name, pred, label, extra)
            scorer.drain()
        finally:
            scorer.close()
            bar.close()
        acc.wall_seconds = time.perf_counter() - t_start
        if world > 1:
            acc = merge_on_rank0(acc)
            if acc is None:  # not rank 0: its shard now lives in rank 0's result
                continue
        results = acc.results()
        acc.wall_seconds = time.perf_counter() - t_start
        rows.extend(
            acc.rows(
                results,
                model=getattr(predictor, "model_key", ""),
                input_size=getattr(predictor, "input_size", None),
            )
        )
    return rows


def attach_protocol(
    rows: Sequence[EvalRow],
    datasets: Sequence[PairedDataset],
    input_size: Any,
    *,
    checkpoint_sha256: str = "",
    skip_empty: bool = True,
    score_size: str = "input",
) -> None:
    """Fill every row's protocol card (``anomseg.protocol``): what ``anomseg eval``, the
    evaluate job and the trainer's post-training evaluation all store beside their figures.
    ``input_size`` is the predictor's; the metric mode is the row's own."""
    from anomseg.components import track_for
    from anomseg.protocol import card, dataset_sha256

    by_name = {d.name: d for d in datasets}
    hashes: dict[str, str] = {}  # a dataset's files are hashed once, however many methods
    for r in rows:
        ds = by_name.get(r.dataset)
        if ds is not None and r.dataset not in hashes:
            hashes[r.dataset] = dataset_sha256(ds)
        r.protocol = card(
            input_size=input_size,
            score_size=score_size,
            skip_empty=skip_empty,
            label_remap=getattr(ds, "remap", None),
            metric_mode=r.metric_mode,
            track=track_for(r.dataset),
            checkpoint_sha256=checkpoint_sha256,
            dataset_sha256=hashes.get(r.dataset, ""),
        )


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
