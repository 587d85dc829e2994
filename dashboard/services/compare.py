"""The Compare tab: every chosen method's heat map over one image, its colour ranges and
thresholds (a score value, or the one that keeps 95% of a dataset's anomaly pixels above it)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anomseg.cache import LRU
from anomseg.errors import InputError
from dashboard import render
from dashboard.scales import scale_of
from dashboard.services.catalog import CatalogService
from dashboard.services.context import ServiceContext
from dashboard.services.formatting import pct
from dashboard.services.scores import ImageView, ScoreService
from db import catalog as dbcatalog

GRID_MAX_SIDE = 640  # panels in the side-by-side grid; the full-size view uses the scoring size
TPR_TARGET = 0.95
MAX_TPR_IMAGES = 200
THRESHOLD_MODES = ("off", "score value", "95% TPR on dataset")


@dataclass(frozen=True)
class CompareStyle:
    """Everything a Compare slider or checkbox controls (pure rendering)."""

    opacity: float = render.DEFAULT_OPACITY
    shared_scale: bool = False  # one range per unit (dashboard.scales), never across units
    threshold_mode: str = "off"
    threshold: float = 0.5  # fraction of each panel's colour range in "score value" mode
    show_gt: bool = True
    cmap: str = "inferno"
    dataset_id: int | None = None  # the dataset the 95%-TPR threshold is computed on

    def panel(
        self, vmin: float, vmax: float, threshold: float | None, outline_width: int = 2
    ) -> render.PanelStyle:
        """How one panel of this view is drawn, on its own colour range and threshold."""
        return render.PanelStyle(
            opacity=self.opacity,
            vmin=vmin,
            vmax=vmax,
            threshold=threshold,
            cmap=self.cmap,
            show_gt=self.show_gt,
            outline_width=outline_width,
        )


@dataclass
class Panel:
    """One rendered method panel."""

    spec: str
    label: str
    image: np.ndarray
    vmin: float
    vmax: float
    threshold: float | None
    auprc: float | None
    fpr95: float | None
    name: str = ""  # the method name ("msp", "head:2"), as ticked in Compare
    unit: str = ""  # what the colour bar's values are (dashboard.scales)

    @property
    def caption(self) -> str:
        parts = [self.label]
        if self.auprc is not None:
            parts.append(f"AuPRC {pct(self.auprc)}")
        if self.fpr95 is not None:
            parts.append(f"FPR95 {pct(self.fpr95)}")
        if self.threshold is not None:
            parts.append(f"thr {self.threshold:.3g}")
        return " · ".join(parts)


@dataclass
class CompareResult:
    """The Compare view of one image: panels plus a summary table."""

    view: ImageView
    panels: list[Panel]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self):
        """Per-method figures as a data frame (for the table under the panels)."""
        rows = [
            {
                "method": p.label,
                "spec": p.spec,
                "AuPRC %": None if p.auprc is None else round(100 * p.auprc, 2),
                "FPR95 %": None if p.fpr95 is None else round(100 * p.fpr95, 2),
                "colour min": round(p.vmin, 4),
                "colour max": round(p.vmax, 4),
                "threshold": None if p.threshold is None else round(p.threshold, 4),
            }
            for p in self.panels
        ]
        return pd.DataFrame(rows)


def threshold_at_tpr(pos_scores: np.ndarray, tpr: float = TPR_TARGET) -> float:
    """The highest threshold t with mean(pos >= t) >= tpr (what "95% TPR" means for a map)."""
    pos = np.asarray(pos_scores, dtype=np.float32).reshape(-1)
    if pos.size == 0:
        raise InputError("no anomaly pixels to compute a TPR threshold from")
    k = max(1, math.ceil(tpr * pos.size))  # need at least k positives at or above t
    # the k-th largest value: np.partition avoids a full sort
    return float(np.partition(pos, pos.size - k)[pos.size - k])


class CompareService:
    """Panels, full-size views, colour ranges and dataset thresholds of the Compare tab."""

    def __init__(self, ctx: ServiceContext, catalog: CatalogService, scores: ScoreService) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.catalog = catalog
        self.scores = scores
        self.thresholds = LRU(max_items=256)

    def colour_ranges(
        self, mkey: str, view: ImageView, maps: dict[str, tuple[str, np.ndarray]], shared: bool
    ) -> dict[str, tuple[float, float]]:
        """Each method's colour range; with ``shared``, one range per unit (dashboard.scales)."""
        ranges = {
            n: self.scores.colour_range((mkey, view.sha256, spec), m, view.gt_score)
            for n, (spec, m) in maps.items()
        }
        if shared:
            ranges = render.share_ranges(ranges, {n: scale_of(n).kind for n in ranges})
        return ranges

    def _grid(self, key: tuple, arr: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
        """A downscaled copy of an image, label or map for the panel grid; cached."""
        gkey = ("grid", kind, *key, size)
        hit = self.ctx.maps.get(gkey)
        if hit is not None:
            return hit
        if kind == "rgb":
            out = render.resize_rgb(arr, size)
        elif kind == "gt":
            out = render.resize_labels(arr, size)
        else:
            out = render.resize_map(arr, size)
        self.ctx.maps.put(gkey, out)
        return out

    def _panel_threshold(
        self,
        model: str,
        name: str,
        params: dict | None,
        style: CompareStyle,
        view: ImageView,
        vmin: float,
        vmax: float,
        progress: Callable[[float, str], None] | None = None,
    ) -> float | None:
        if style.threshold_mode == "score value":
            return vmin + float(style.threshold) * (vmax - vmin)
        if style.threshold_mode == "95% TPR on dataset":
            ds = style.dataset_id if style.dataset_id is not None else view.dataset_id
            return self.dataset_threshold(model, name, params, int(ds), progress)
        return None

    def compare(
        self,
        model: str,
        image_id: int,
        names: Sequence[str] | None,
        params: dict[str, dict[str, float]] | None = None,
        style: CompareStyle = CompareStyle(),
        progress: Callable[[float, str], None] | None = None,
    ) -> CompareResult:
        """Every chosen method's heat map over one image, rendered for the panel grid."""
        if style.threshold_mode not in THRESHOLD_MODES:
            raise InputError(
                f"threshold mode {style.threshold_mode!r}; expected one of {', '.join(THRESHOLD_MODES)}"
            )
        t0 = time.perf_counter()
        choices = {c.name: c for c in self.scores.method_choices(model)}
        chosen = [n for n in (names if names is not None else self.scores.default_methods(model))]
        unknown = [n for n in chosen if n not in choices]
        if unknown:
            raise InputError(
                f"method(s) {', '.join(unknown)} are not available for model {model!r}; "
                f"available: {', '.join(choices)}"
            )
        if not chosen:
            raise InputError("no method selected: tick at least one method to compare")
        view = self.scores.load_view(model, image_id)
        mkey = self.catalog.model_key(model)
        maps = self.scores.score_maps(model, view, chosen, params)
        ranges = self.colour_ranges(mkey, view, maps, style.shared_scale)
        if style.threshold_mode == "95% TPR on dataset":
            # every method's threshold in one pass (one forward per image), then cache hits
            ds = style.dataset_id if style.dataset_id is not None else view.dataset_id
            self.dataset_thresholds(model, chosen, params, int(ds), progress)
        (gh, gw), _ = render.fit_size(view.rgb.shape[:2], GRID_MAX_SIDE)
        vkey = (mkey, view.sha256)
        rgb_s = self._grid(vkey, view.rgb, (gh, gw), "rgb")
        gt_s = None if view.gt is None else self._grid(vkey, view.gt, (gh, gw), "gt")
        notes: list[str] = []
        if view.gt_score is None:
            notes.append(f"{view.name}: no ground truth, so no per-image AuPRC / FPR95")
        panels = []
        for name in chosen:
            spec, amap = maps[name]
            key = (mkey, view.sha256, spec)
            vmin, vmax = ranges[name]
            try:
                thr = self._panel_threshold(
                    model, name, (params or {}).get(name), style, view, vmin, vmax, progress
                )
            except InputError as exc:
                notes.append(str(exc))
                thr = None
            met = self.scores.image_metrics(key, amap, view.gt_score)
            pstyle = style.panel(vmin, vmax, thr, outline_width=1)
            img = render.render_panel(rgb_s, self._grid(key, amap, (gh, gw), "map"), pstyle, gt_s)
            panels.append(
                Panel(
                    spec,
                    choices[name].label,
                    img,
                    vmin,
                    vmax,
                    thr,
                    met["auprc"],
                    met["fpr95"],
                    name=name,
                    unit=scale_of(name).unit,
                )
            )
        return CompareResult(view, panels, notes, time.perf_counter() - t0)

    def full_view(
        self,
        model: str,
        image_id: int,
        name: str,
        params: dict[str, dict[str, float]] | None = None,
        style: CompareStyle = CompareStyle(),
        vrange: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """One method's panel at the full scoring resolution (the "full-size view")."""
        view = self.scores.load_view(model, image_id)
        mkey = self.catalog.model_key(model)
        spec, amap = self.scores.score_maps(model, view, [name], params)[name]
        key = (mkey, view.sha256, spec)
        vmin, vmax = (
            vrange if vrange is not None else self.scores.colour_range(key, amap, view.gt_score)
        )
        thr = self._panel_threshold(model, name, (params or {}).get(name), style, view, vmin, vmax)
        pstyle = style.panel(vmin, vmax, thr)
        big = self._grid(key, amap, view.rgb.shape[:2], "map")
        return render.render_panel(view.rgb, big, pstyle, view.gt)

    def dataset_thresholds(
        self,
        model: str,
        names: Sequence[str],
        params: dict[str, dict[str, float]] | None,
        dataset_id: int,
        progress: Callable[[float, str], None] | None = None,
    ) -> None:
        """Fill the 95%-TPR threshold cache for every method in ONE pass over the dataset.

        ``dataset_threshold`` per method re-runs the model on every image for each method once
        the dataset no longer fits the prediction cache (49 s for 4 methods on a 30-image set);
        here each image is forwarded once and scored by all methods still missing a threshold.
        """
        images = self.catalog.image_names(dataset_id)[:MAX_TPR_IMAGES]
        ids = tuple(i for _, i in images)
        mkey = self.catalog.model_key(model)
        mine = {n: (params or {}).get(n) or {} for n in names}
        keys = {
            n: ("tpr", mkey, self.scores.method_spec(n, {n: mine[n]}), int(dataset_id), ids)
            for n in names
        }
        todo = [n for n in names if self.thresholds.get(keys[n]) is None]
        if not todo:
            return
        pos: dict[str, list[np.ndarray]] = {n: [] for n in todo}
        for k, (_fname, image_id) in enumerate(images):
            if progress is not None:
                progress(
                    k / max(len(images), 1), f"95% TPR thresholds: image {k + 1}/{len(images)}"
                )
            view = self.scores.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            anomalous = view.gt_score == 1
            for n, (_spec, amap) in self.scores.score_maps(model, view, todo, mine).items():
                pos[n].append(amap[anomalous])
        for n in todo:
            if pos[n]:  # without anomaly pixels dataset_threshold raises the user's message
                self.thresholds.put(keys[n], threshold_at_tpr(np.concatenate(pos[n]), TPR_TARGET))

    def dataset_threshold(
        self,
        model: str,
        name: str,
        params: dict[str, float] | None,
        dataset_id: int,
        progress: Callable[[float, str], None] | None = None,
    ) -> float:
        """The score threshold that keeps 95% of a dataset's anomaly pixels above it (cached)."""
        images = self.catalog.image_names(dataset_id)[:MAX_TPR_IMAGES]
        spec = self.scores.method_spec(name, {name: params or {}})
        mkey = self.catalog.model_key(model)
        key = ("tpr", mkey, spec, int(dataset_id), tuple(i for _, i in images))
        hit = self.thresholds.get(key)
        if hit is not None:
            return hit
        pos = []
        for n, (_fname, image_id) in enumerate(images):
            if progress is not None:
                progress(n / max(len(images), 1), f"95% TPR threshold: image {n + 1}/{len(images)}")
            view = self.scores.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            _, amap = self.scores.score_maps(model, view, [name], {name: params or {}})[name]
            pos.append(amap[view.gt_score == 1])
        if not pos:
            try:
                with self.store.read() as s:
                    ds_name = dbcatalog.get_dataset(s, int(dataset_id)).name
            except InputError:
                ds_name = f"id {dataset_id}"
            raise InputError(
                f"dataset {ds_name!r} has no ground-truth anomaly pixels, so there is no 95% TPR "
                "threshold; pick an evaluation dataset or use a score threshold"
            )
        thr = threshold_at_tpr(np.concatenate(pos), TPR_TARGET)
        self.thresholds.put(key, thr)
        return thr
