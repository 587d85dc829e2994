"""Compare's component panel: which components count as found / false at a score threshold.

SegmentMeIfYouCan's component metrics (``anomseg.components``) threshold a map and judge
segments: a ground-truth component is *found* when its sIoU reaches the sIoU threshold (0.5 by
default here, the middle of the benchmark's 0.25..0.75 sweep), a predicted component is *false*
when its precision stays below it. The slider moves the score threshold; the panel paints
found ground truth green, missed ground truth red, true predictions blue outlines and false
ones orange, and lists every component with its numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FOUND, MISSED = (40, 200, 80), (230, 40, 40)
TRUE_PRED, FALSE_PRED = (60, 140, 255), (255, 150, 0)


def _nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map (component ids) to ``hw``."""
    h, w = a.shape
    rows = (np.arange(hw[0]) * h // hw[0]).clip(0, h - 1)
    cols = (np.arange(hw[1]) * w // hw[1]).clip(0, w - 1)
    return a[rows[:, None], cols[None, :]]


def _edges(ids: np.ndarray) -> np.ndarray:
    """Bool: pixels of a component whose 4-neighbour belongs elsewhere (outlines)."""
    e = np.zeros(ids.shape, bool)
    e[1:] |= ids[1:] != ids[:-1]
    e[:-1] |= ids[:-1] != ids[1:]
    e[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    e[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    return e & (ids > 0)


def overlay(rgb: np.ndarray, comp: Any, siou_t: float = 0.5) -> np.ndarray:
    """The display image with ground-truth components filled (found / missed) and predicted
    components outlined (true / false), for an ``anomseg.components.ImageComponents``."""
    hw = rgb.shape[:2]
    out = (rgb.astype(np.float32) * 0.55).astype(np.uint8)
    gt = _nearest(comp.gt, hw)
    found = np.concatenate([[False], comp.found(siou_t)])
    for ids, colour in ((np.nonzero(found)[0], FOUND), (np.nonzero(~found[1:])[0] + 1, MISSED)):
        m = np.isin(gt, ids[ids > 0])
        out[m] = (0.45 * out[m] + 0.55 * np.array(colour)).astype(np.uint8)
    pred = _nearest(comp.pred, hw)
    false_ids = comp.pred_ids[comp.false(siou_t)]
    true_ids = comp.pred_ids[~comp.false(siou_t)]
    edge = _edges(pred)
    for ids, colour in ((true_ids, TRUE_PRED), (false_ids, FALSE_PRED)):
        out[edge & np.isin(pred, ids)] = colour
    return out


def table(comp: Any, siou_t: float = 0.5) -> list[dict[str, Any]]:
    """One row per component: kind, id, pixels, sIoU, precision, verdict."""
    rows = []
    sizes_gt = np.bincount(comp.gt[comp.roi].ravel(), minlength=len(comp.siou_gt) + 1)
    for k, v in enumerate(comp.siou_gt, start=1):
        rows.append({"component": f"GT {k}", "pixels": int(sizes_gt[k]), "sIoU": round(100 * v, 1),
                     "precision": None, "counts as": "found" if v >= siou_t else "missed"})  # fmt: skip
    sizes_pred = np.bincount(comp.pred[comp.roi].ravel(), minlength=int(comp.pred.max()) + 1)
    for j, s, p in zip(comp.pred_ids, comp.siou_pred, comp.prec_pred, strict=True):
        rows.append({"component": f"pred {j}", "pixels": int(sizes_pred[j]),
                     "sIoU": round(100 * s, 1), "precision": round(100 * p, 1),
                     "counts as": "false" if p < siou_t else "true"})  # fmt: skip
    return rows


def summary(comp: Any, threshold: float, siou_t: float = 0.5) -> str:
    """One markdown line: counts at this threshold."""
    found = int(comp.found(siou_t).sum())
    false = int(comp.false(siou_t).sum())
    return (
        f"score > **{threshold:.4g}**: {found} of {len(comp.siou_gt)} ground-truth components "
        f"found, {false} of {len(comp.pred_ids)} predicted components false (sIoU / precision "
        f"< {siou_t:g}); green found, red missed, blue outline true, orange outline false"
    )


def build(ctx: Any, model: Any, image_id: Any, methods: list[str]) -> None:
    """The panel's widgets, wired to ``ctx.svc.components.component_view``; ``model`` /
    ``image_id`` are Compare's own components. Methods recorded from external score maps
    (``anomseg eval --scores``) are offered too, as ``external:<name>``."""
    _build(ctx, model, image_id, [*methods, *ctx.svc.components.external_methods()])


def _build(ctx: Any, model: Any, image_id: Any, methods: list[str]) -> None:
    """The panel's widgets, wired to ``ctx.svc.components.component_view``; ``model`` /
    ``image_id`` are Compare's own components."""
    import gradio as gr
    import pandas as pd

    from dashboard.ui import guarded

    svc = ctx.svc
    with gr.Accordion("Components (SegmentMeIfYouCan): found / false at a threshold", open=False):
        with gr.Row():
            method = gr.Dropdown(methods, value=methods[0] if methods else None,
                                 label="Method", elem_id="cmp-comp-method")  # fmt: skip
            thr = gr.Slider(0.5, 1.0, value=0.95, step=0.001, label="Score threshold (quantile "
                            "of this map; the benchmark's is the dataset's best-F1 point)",
                            elem_id="cmp-comp-threshold")  # fmt: skip
            siou_t = gr.Slider(0.25, 0.75, value=0.5, step=0.05, label="sIoU / precision needed",
                               elem_id="cmp-comp-siou")  # fmt: skip
        note = gr.Markdown(elem_id="cmp-comp-note")
        with gr.Row():
            img = gr.Image(label="Components", interactive=False, elem_id="cmp-comp-image")
            tab = gr.Dataframe(interactive=False, label="Components", elem_id="cmp-comp-table")

    @guarded
    def show(m, iid, name, q, t):
        if not m or iid is None or not name:
            return gr.update(), "", pd.DataFrame()
        rgb, rows, md = svc.components.component_view(m, int(iid), name, quantile=float(q), siou_t=float(t))
        return rgb, md, pd.DataFrame(rows)

    for ev in (thr.release, siou_t.release, method.change, image_id.change):
        ev(show, [model, image_id, method, thr, siou_t], [img, note, tab], api_name=False)
