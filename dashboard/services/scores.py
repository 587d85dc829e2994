"""What a model's methods make of one image: the method list, the image as the model sees it,
and the scored maps (cached by model, image and method spec), shared by every tab that draws maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomseg import scoring
from anomseg.cache import LRU
from anomseg.data.benchmark import read_anomaly_label
from anomseg.errors import AnomsegError, InputError
from anomseg.head_methods import HeadRef, HeadScorers, head_method, is_head_method, require_version
from anomseg.imageio import read_image, resize_image, resize_label
from anomseg.metrics import per_image
from anomseg.models import model_kind
from dashboard import render
from dashboard.services.catalog import CatalogService
from dashboard.services.context import ServiceContext
from dashboard.services.formatting import finite
from db import catalog as dbcatalog
from db import heads as dbheads

DISPLAY_MAX_SIDE = 1024  # the full-size view and the painting frame
# Post-hoc scorers shown by default; the uncertainty statistics (head inputs) can be ticked.
HIDDEN_BY_DEFAULT_PREFIX = "stat_"


@dataclass(frozen=True)
class MethodChoice:
    """A method the Compare tab can show: a post-hoc scorer or a head version."""

    name: str  # scorer name ("msp") or head spec ("head:3")
    label: str
    kind: str  # "posthoc" | "head"
    default_on: bool = True
    inverted: bool = False
    description: str = ""


@dataclass(frozen=True)
class ParamChoice:
    """One numeric parameter of a post-hoc scorer (drives a slider)."""

    scorer: str
    name: str
    default: float
    min: float
    max: float
    step: float
    help: str = ""

    @property
    def key(self) -> str:
        return f"{self.scorer}.{self.name}"


@dataclass
class ImageView:
    """One image as one model sees it: display copy, ground truth, sizes.

    Maps are scored at the model's input size (``score_size``) and metrics are computed there
    against ``gt_score`` (labels resized nearest, the evaluation protocol); panels are drawn on
    ``rgb`` / ``gt``, a copy of the stored image at most ``DISPLAY_MAX_SIDE`` wide with its own
    aspect ratio, onto which the maps are upsampled.
    """

    image_id: int
    name: str
    dataset: str
    dataset_id: int
    role: str
    rgb: np.ndarray  # (h, w, 3) display copy
    gt: np.ndarray | None  # (h, w) uint8 0/1/255 at the display size
    gt_score: np.ndarray | None  # ground truth at the scoring size
    score_size: tuple[int, int]
    full_size: tuple[int, int]  # (H, W) of the stored image
    sha256: str


class ScoreService:
    """Method choices, image views and scored maps over the workspace's predictors."""

    def __init__(self, ctx: ServiceContext, catalog: CatalogService) -> None:
        self.ctx = ctx
        self.ws = ctx.ws
        self.store = ctx.store
        self.catalog = catalog
        self.views = LRU(max_items=12)
        # the learned heads, resolved through the store (loaded once per checkpoint file)
        self.heads = HeadScorers(max_items=16)
        self.forward_count = 0

    def method_choices(self, model: str) -> list[MethodChoice]:
        """Post-hoc scorers that apply to this model, then its ready head versions (newest first)."""
        needs_mask = self._is_mask_model(model)
        out: list[MethodChoice] = []
        for spec in scoring.list_scorers():
            if ":" in spec.name:
                continue  # dynamic families (heads) are listed from the store below
            if spec.mask_only and not needs_mask:
                continue
            if "features" in spec.needs and not needs_mask:
                continue
            out.append(
                MethodChoice(
                    spec.name,
                    spec.label or spec.name,
                    "posthoc",
                    default_on=not spec.name.startswith(HIDDEN_BY_DEFAULT_PREFIX),
                    inverted=bool(spec.inverted),
                    description=spec.description,
                )
            )
        with self.store.read() as s:
            m = dbcatalog.get_model(s, model)
            for h in dbheads.list_head_versions(s, m.id):
                if h.status != "ready":
                    continue
                tag = " (active)" if h.active else ""
                out.append(
                    MethodChoice(f"head:{h.version}", f"Head v{h.version} {h.kind}{tag}", "head")
                )
        return out

    def default_methods(self, model: str) -> list[str]:
        """The methods ticked when a model is picked: every post-hoc scorer and every head."""
        return [c.name for c in self.method_choices(model) if c.default_on]

    @staticmethod
    def param_choices() -> list[ParamChoice]:
        """Every numeric parameter of every post-hoc scorer (one slider each)."""
        out = []
        for spec in scoring.list_scorers():
            if ":" in spec.name:
                continue
            for p in spec.params:
                out.append(
                    ParamChoice(
                        spec.name,
                        p.name,
                        float(p.default),
                        float(p.min),
                        float(p.max),
                        float(p.step),
                        p.help,
                    )
                )
        return out

    def _is_mask_model(self, model: str) -> bool:
        """The registry's kind of the model's architecture (an unregistered one, e.g. external
        scores, has no forward pass: no mask-only method applies)."""
        with self.store.read() as s:
            arch = dbcatalog.get_model(s, model).architecture
        try:
            return model_kind(arch) == "mask"
        except AnomsegError:
            return False

    @staticmethod
    def method_spec(name: str, params: dict[str, dict[str, float]] | None = None) -> str:
        """Canonical spec of a method with its current parameters (``msp:T=2.0``)."""
        if is_head_method(name):
            return name
        mine = (params or {}).get(name, {})
        return scoring.format_method(name, mine)

    def load_view(self, model: str, image_id: int) -> ImageView:
        """The image (and ground truth) as ``model`` scores it, plus a display copy; cached."""
        mkey = self.catalog.model_key(model)
        img, ds, path = self.catalog.image_paths(image_id)
        key = (mkey, img.sha256, int(image_id))
        view = self.views.get(key)
        if view is not None:
            return view
        rgb = read_image(path)
        gt = read_anomaly_label(ds.root, img.path, ds.label_remap)
        size = self._scoring_size(model, rgb.shape[:2])
        disp, _ = render.fit_size(rgb.shape[:2], DISPLAY_MAX_SIDE)
        view = ImageView(
            image_id=int(image_id),
            name=Path(img.path).name,
            dataset=ds.name,
            dataset_id=int(ds.id),
            role=ds.role,
            rgb=resize_image(rgb, disp),
            gt=None if gt is None else resize_label(gt, disp),
            gt_score=None if gt is None else resize_label(gt, size),
            score_size=size,
            full_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            sha256=img.sha256,
        )
        self.views.put(key, view)
        return view

    def _scoring_size(self, model: str, image_hw: tuple[int, int]) -> tuple[int, int]:
        pred = self.ws.predictor(model)
        target = getattr(pred, "target_size", None)
        if callable(target):
            return tuple(int(v) for v in target(image_hw))  # type: ignore[return-value]
        return tuple(image_hw)  # type: ignore[return-value]

    def _predict_image(self, model: str, image_id: int) -> Any:
        """The model's Prediction for a stored image (the workspace predictor caches it)."""
        img, _, path = self.catalog.image_paths(image_id)
        rgb = read_image(path)
        predictor = self.ws.predictor(model)
        # one forward per (model, image) even when two sessions ask at once: the second waits
        # and then hits the predictor's cache
        with self.ctx.lock_for(model):
            before = getattr(predictor, "forward_calls", 0)
            # the store's file hash names the image in the predictor's cache too: a dataset pass
            # (threshold at 95% TPR, evaluation) and this view share one entry
            pred = predictor.predict(rgb, image_sha256=img.sha256)
            self.forward_count += getattr(predictor, "forward_calls", 0) - before
        return pred

    def _head_ref(self, model: str, version: int) -> HeadRef:
        """Where version ``version`` of the model's head is (ready versions only)."""
        with self.store.read() as s:
            m = dbcatalog.get_model(s, model)
            h = dbheads.get_head_version(s, m.id, int(version))
            if h.status != "ready" or not h.checkpoint_path:
                raise InputError(f"head v{version} of {model!r} is {h.status!r}, not ready")
            path, kind = Path(h.checkpoint_path), h.kind
        return HeadRef(path if path.is_absolute() else Path(self.ws.root) / path, kind=kind)

    def _score(self, model: str, pred: Any, name: str, params: dict | None) -> np.ndarray:
        if is_head_method(name):
            version = require_version(name)
            spec = self.heads.spec_for(head_method(version), self._head_ref(model, version))
            return np.asarray(spec.fn(pred), dtype=np.float32)
        amap = scoring.score(name, pred, **(params or {}))
        # an inverted statistic (high = normal) is shown negated so every panel reads "hot =
        # anomalous" and its per-image metrics rank the right way
        return -amap if scoring.get_scorer(name).inverted else amap

    def score_maps(
        self,
        model: str,
        view: ImageView,
        names: Sequence[str],
        params: dict[str, dict[str, float]] | None = None,
    ) -> dict[str, tuple[str, np.ndarray]]:
        """name -> (spec, float32 map at the scoring size); cached by (model, image, spec).

        Only methods missing from the cache are scored, and the model runs (at most once, and
        not at all when the predictor still holds the image) only if one is missing.
        """
        mkey = self.catalog.model_key(model)
        out: dict[str, tuple[str, np.ndarray]] = {}
        missing: list[tuple[str, str]] = []
        for name in names:
            spec = self.method_spec(name, params)
            hit = self.ctx.maps.get((mkey, view.sha256, spec))
            if hit is None:
                missing.append((name, spec))
            else:
                out[name] = (spec, hit)
        if missing:
            pred = self._predict_image(model, view.image_id)
            for name, spec in missing:
                amap = self._score(model, pred, name, (params or {}).get(name))
                if amap.shape != view.score_size:
                    amap = render.resize_map(amap, view.score_size)
                self.ctx.maps.put((mkey, view.sha256, spec), amap)
                out[name] = (spec, amap)
        return {n: out[n] for n in names}

    def image_metrics(
        self, key: tuple, amap: np.ndarray, gt: np.ndarray | None
    ) -> dict[str, float | None]:
        """Per-image AuPRC / FPR95 of one map (None without anomaly ground truth); cached."""
        if gt is None or not (gt == 1).any():
            return {"auprc": None, "fpr95": None}
        hit = self.ctx.metrics.get(("img", *key))
        if hit is not None:
            return hit
        res = per_image(amap, gt)
        out = {"auprc": finite(res.get("auprc")), "fpr95": finite(res.get("fpr95"))}
        self.ctx.metrics.put(("img", *key), out)
        return out

    def colour_range(
        self, key: tuple, amap: np.ndarray, gt: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Colour range of a map over the pixels its ground truth does not ignore; cached."""
        valid = None if gt is None or not (gt == 255).any() else gt != 255
        rkey = ("range", *key, valid is not None)
        hit = self.ctx.metrics.get(rkey)
        if hit is None:
            hit = render.robust_range(amap, *render.HEAT_RANGE_PCT, valid=valid)
            self.ctx.metrics.put(rkey, hit)
        return hit
