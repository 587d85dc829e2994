"""Compare's component panel: a method's map cut into connected components (sIoU / PPV / F1),
for the model's own methods and for recorded external score maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anomseg import scoring
from anomseg.components import SIZE_FILTERS, image_components, track_for
from anomseg.data.benchmark import read_anomaly_label
from anomseg.errors import InputError
from anomseg.scoremaps import read_map
from dashboard import components_view
from dashboard.services.catalog import CatalogService
from dashboard.services.context import ServiceContext
from dashboard.services.scores import ScoreService
from db import results as dbresults

EXTERNAL_PREFIX = "external:"  # Compare's name for recorded external maps


class ComponentService:
    """Component tables and overlays of one image under one method."""

    def __init__(self, ctx: ServiceContext, catalog: CatalogService, scores: ScoreService) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.catalog = catalog
        self.scores = scores

    def external_methods(self) -> list[str]:
        """``external:<name>`` for every method recorded from external score maps."""
        with self.store.read() as s:
            names = dbresults.external_methods(s)
        return [f"{EXTERNAL_PREFIX}{n}" for n in names]

    def component_view(
        self, model: str, image_id: int, name: str, quantile: float = 0.95, siou_t: float = 0.5
    ) -> tuple[np.ndarray, list[dict[str, Any]], str]:
        """Compare's component panel: (overlay, one row per component, summary) of one method's
        map thresholded at its ``quantile`` (``anomseg.components``, official size filters)."""
        view = self.scores.load_view(model, image_id)
        if view.gt_score is None:
            raise InputError(f"image #{image_id} has no ground truth; components need one")
        if name.startswith(EXTERNAL_PREFIX):  # recorded external maps, at the label's size
            amap, gt = self._external_map(name[len(EXTERNAL_PREFIX) :], image_id)
        else:
            sname, params = scoring.parse_method(name)
            _spec, amap = self.scores.score_maps(model, view, [sname], {sname: params})[sname]
            if scoring.get_scorer(sname).inverted:
                amap = -amap
            gt = view.gt_score
        q = min(max(float(quantile), 0.0), 1.0)
        thr = float(np.quantile(amap, q))
        min_pred, min_gt = SIZE_FILTERS[track_for(view.dataset)]
        scale = amap.size / float(view.full_size[0] * view.full_size[1])
        comp = image_components(amap, gt, thr, min_pred * scale, min_gt * scale)
        return (
            components_view.overlay(view.rgb, comp, siou_t),
            components_view.table(comp, siou_t),
            components_view.summary(comp, thr, siou_t),
        )

    def _external_map(self, method: str, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(map, label) of one image from the folder the latest external result was read from."""
        img, ds, _path = self.catalog.image_paths(image_id)
        with self.store.read() as s:
            res = dbresults.latest_external_result(s, method, ds.id)
            folder = (res.params or {}).get("scores_dir") if res is not None else None
        if not folder:
            raise InputError(f"no external maps of {method!r} are recorded for dataset {ds.name!r}")
        gt = read_anomaly_label(ds.root, img.path, ds.label_remap)
        if gt is None:
            raise InputError(f"image #{image_id} has no ground truth; components need one")
        return read_map(Path(folder), Path(img.path).stem, gt.shape), gt
