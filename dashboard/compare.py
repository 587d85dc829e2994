"""Compare tab: every method's anomaly map over one image, side by side.

The model runs once per image (the workspace predictor caches it) and every scored map is kept
in the services' bounded map cache, so the sliders and checkboxes here only re-render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from anomseg.errors import InputError
from dashboard import components_view, render
from dashboard import panels as panel_html
from dashboard.scales import scale_of
from dashboard.services import Services
from dashboard.services.compare import THRESHOLD_MODES, CompareResult, CompareStyle
from dashboard.services.scores import ParamChoice
from dashboard.ui import Context, form_id, guarded, refusing

EMPTY_TABLE = pd.DataFrame(columns=["method", "spec", "AuPRC %", "FPR95 %"])


def params_dict(choices: list[ParamChoice], values: tuple | list) -> dict[str, dict[str, float]]:
    """Slider values -> {scorer: {param: value}}."""
    out: dict[str, dict[str, float]] = {}
    for p, v in zip(choices, values, strict=True):
        if v is None:
            continue
        out.setdefault(p.scorer, {})[p.name] = float(v)
    return out


def method_update(svc: Services, model: str | None, keep: list[str] | None = None) -> Any:
    """CheckboxGroup update listing the methods of ``model`` (keeping still-valid ticks)."""
    if not model:
        return gr.update(choices=[], value=[])
    choices = svc.scores.method_choices(model)
    names = [c.name for c in choices]
    value = [n for n in (keep or []) if n in names]
    if not value:
        value = [c.name for c in choices if c.default_on]
    else:
        # a head version that appeared since (a finished retrain) is ticked too
        value += [c.name for c in choices if c.kind == "head" and c.name not in value]
    return gr.update(choices=[(c.label, c.name) for c in choices], value=value)


def build(ctx: Context) -> None:
    """Build the Compare tab's widgets and wire its events."""
    svc: Services = ctx.svc
    params = svc.scores.param_choices()
    models = svc.catalog.model_names()
    datasets = svc.catalog.dataset_choices()
    model0 = models[0] if models else None
    ds0 = datasets[0][1] if datasets else None

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(models, value=model0, label="Model", elem_id="compare-model")
            dataset = gr.Dropdown(datasets, value=ds0, label="Dataset", elem_id="compare-dataset")
            gallery = gr.Gallery(
                label="Images: click one to compare",
                columns=3,
                height=330,
                allow_preview=False,
                buttons=[],
                object_fit="cover",
                elem_id="compare-gallery",
            )
            gallery_ids = gr.State([])
            upload = gr.File(
                label="…or upload an image (PNG / JPEG / WEBP)",
                file_types=["image"],
                type="filepath",
                elem_id="compare-upload",
            )
            image_id = gr.Number(value=0, precision=0, visible="hidden", elem_id="compare-image-id")
            image_info = gr.Markdown("Pick an image on the left.", elem_id="compare-image-info")
        with gr.Column(scale=3):
            # initial choices: every model's methods, so API clients (gradio_client) pass the
            # server's choice validation without a browser session; a session narrows them to
            # its model's methods on load and on every model change
            init = method_update(svc, model0)
            union = list(init.get("choices", []))
            for m in models[1:]:
                union += [
                    c
                    for c in method_update(svc, m).get("choices", [])
                    if c[1] not in {u[1] for u in union}
                ]
            methods = gr.CheckboxGroup(
                choices=union,
                value=init.get("value", []),
                label="Methods",
                elem_id="compare-methods",
            )
            with gr.Row():
                opacity = gr.Slider(
                    0,
                    1,
                    render.DEFAULT_OPACITY,
                    step=0.05,
                    label="Heat-map opacity (at the top of the colour range)",
                    elem_id="compare-opacity",
                )
                thr_mode = gr.Radio(
                    list(THRESHOLD_MODES),
                    value="off",
                    label="Threshold",
                    elem_id="compare-thr-mode",
                )
                thr = gr.Slider(
                    0,
                    1,
                    0.5,
                    step=0.01,
                    label="Score threshold",
                    info="fraction of each panel's colour range (absolute with a shared scale)",
                    elem_id="compare-thr",
                )
            with gr.Row():
                shared = gr.Checkbox(
                    False,
                    label="Shared colour scale for methods in the same units",
                    elem_id="compare-shared",
                )
                show_gt = gr.Checkbox(
                    True,
                    label="Ground truth: anomaly outline (green), ignore region (darkened)",
                    elem_id="compare-gt",
                )
                cmap = gr.Dropdown(render.COLORMAPS.names(), value="inferno", label="Colour map")
            with gr.Accordion("Method parameters", open=False):
                sliders = [
                    gr.Slider(
                        p.min,
                        p.max,
                        p.default,
                        step=p.step,
                        label=f"{p.scorer} · {p.name}",
                        info=p.help,
                    )
                    for p in params
                ]
            gr.Markdown(
                "**Methods side by side**: click a panel for the full-size view.",
                elem_classes=["anomseg-note"],
            )
            panels = gr.HTML(
                panel_html.panels_html([], "inferno", render.DEFAULT_OPACITY),
                js_on_load=panel_html.PANELS_JS,
                elem_id="compare-panels",
            )
            notes = gr.Markdown(elem_classes=["anomseg-note"], elem_id="compare-notes")
            shown = gr.State([])
            table = gr.Dataframe(
                EMPTY_TABLE, label="Per-image figures", interactive=False, elem_id="compare-table"
            )
            with gr.Row():
                full_method = gr.Dropdown(
                    label="Full-size view of", choices=[], elem_id="compare-full-method"
                )
            full_info = gr.Markdown(elem_id="compare-full-info")
            full = gr.Image(
                label="Full-size view",
                type="numpy",
                format="jpeg",
                interactive=False,
                elem_id="compare-full",
            )
            components_view.build(
                ctx,
                model,
                image_id,
                [c.name for c in svc.scores.method_choices(model0)] if model0 else [],
            )

    style_inputs = [opacity, thr_mode, thr, shared, show_gt, cmap, dataset]

    def _style(op, mode, t, sh, gt, cm, ds) -> CompareStyle:
        return CompareStyle(
            opacity=float(op),
            shared_scale=bool(sh),
            threshold_mode=mode or "off",
            threshold=float(t),
            show_gt=bool(gt),
            cmap=cm or "inferno",
            dataset_id=int(ds) if ds not in (None, "") else None,
        )

    @guarded
    def run_compare(
        m, img, names, op, mode, t, sh, gt, cm, ds, *rest, progress=gr.Progress()
    ):
        *pvals, full_name = rest
        if not m:
            raise InputError("no model is registered in this workspace (see `anomseg add-model`)")
        if (img := form_id(img, "image id")) is None:
            empty = panel_html.panels_html([], cm or "inferno", float(op))
            return (
                empty,
                "Pick an image on the left (or upload one).",
                EMPTY_TABLE,
                [],
                gr.update(choices=[], value=None),
                "",
                None,
                "",
            )
        style = _style(op, mode, t, sh, gt, cm, ds)
        pdict = params_dict(params, pvals)
        res = svc.compare.compare(
            m,
            int(img),
            list(names or []),
            pdict,
            style,
            progress=lambda f, msg: progress(f, desc=msg),
        )
        v = res.view
        info = (
            f"**#{v.image_id} {v.name}** · {v.dataset} ({v.role}) · stored "
            f"{v.full_size[1]}×{v.full_size[0]}, scored at {v.score_size[1]}×{v.score_size[0]}"
            + ("" if v.gt is not None else " · no ground truth")
        )
        note_lines = list(dict.fromkeys(res.notes)) + [f"rendered in {res.seconds * 1000:.0f} ms"]
        html = panel_html.panels_html(
            _cards(res), style.cmap, style.opacity, legend=_legend(res, style)
        )
        shown_names = [p.name for p in res.panels]
        choices = [(p.label, p.name) for p in res.panels]
        # the full-size view always shows the current image: re-rendered with every change,
        # cleared when its method is no longer shown
        keep = full_name if full_name in shown_names else None
        full_img, full_txt = _full(m, res, keep, pdict, style)
        return (
            html,
            " · ".join(note_lines),
            res.table(),
            shown_names,
            gr.update(choices=choices, value=keep),
            info,
            full_img,
            full_txt,
        )

    def _cards(res: CompareResult) -> list[panel_html.PanelCard]:
        return [
            panel_html.PanelCard(
                p.name or p.spec,
                p.label,
                p.image,
                p.vmin,
                p.vmax,
                p.unit or scale_of(p.name or p.spec).unit,
                p.auprc,
                p.fpr95,
                p.threshold,
            )
            for p in res.panels
        ]

    def _legend(res: CompareResult, style: CompareStyle) -> str:
        text = (
            "Colour bars run from each map's median score to its 99.5th percentile (pixels the "
            "ground truth ignores left out); below the median the image shows through."
        )
        if style.shared_scale:
            groups: dict[str, list[str]] = {}
            for p in res.panels:
                groups.setdefault(scale_of(p.name).unit, []).append(p.label)
            shared = [f"{', '.join(ls)} ({u})" for u, ls in groups.items() if len(ls) > 1]
            text += (
                " Shared scale: "
                + ("; ".join(shared) if shared else "no two shown methods share units")
                + "; every other method keeps its own range."
            )
        return text

    def _full(m, res: CompareResult, name, pdict, style) -> tuple:
        if not name:
            return None, ""
        p = next(p for p in res.panels if p.name == name)
        v = res.view
        img = svc.compare.full_view(m, v.image_id, name, pdict, style, vrange=(p.vmin, p.vmax))
        txt = (
            f"Full-size view: **{p.label}** on **#{v.image_id} {v.name}** "
            f"({img.shape[1]}×{img.shape[0]})"
        )
        return img, txt

    compare_inputs = [model, image_id, methods, *style_inputs, *sliders, full_method]
    compare_outputs = [panels, notes, table, shown, full_method, image_info, full, full_info]
    gr.on(
        triggers=[
            image_id.change,
            methods.change,
            thr_mode.change,
            shared.change,
            show_gt.change,
            cmap.change,
            opacity.release,
            thr.release,
            *[s.release for s in sliders],
        ],
        fn=run_compare,
        inputs=compare_inputs,
        outputs=compare_outputs,
        api_name="compare",
        concurrency_limit=4,
        trigger_mode="always_last",
    )

    @guarded
    def on_model(m, keep):
        return method_update(svc, m, keep)

    model.change(on_model, [model, methods], methods, api_name=False)

    @guarded
    def on_dataset(ds):
        if ds in (None, ""):
            return [], []
        ids = [i for _n, i in svc.catalog.image_names(int(ds))][:120]
        return svc.catalog.gallery(int(ds)), ids

    dataset.change(on_dataset, dataset, [gallery, gallery_ids], api_name=False)

    def on_pick(ids, evt: gr.SelectData):
        if evt is None or evt.index is None or not ids:
            return gr.update()
        idx = evt.index if isinstance(evt.index, int) else evt.index[0]
        return ids[int(idx)] if 0 <= int(idx) < len(ids) else gr.update()

    gallery.select(on_pick, gallery_ids, image_id, api_name=False)

    def _user_path(msg: str, path=None, *_rest) -> str:
        # the server's temporary copy (/tmp/gradio/<hash>/name) means nothing to the user:
        # name their own file instead
        if path:
            p = Path(str(path))
            msg = msg.replace(str(p), p.name).replace(str(p.parent) + "/", "")
        return msg

    @refusing(3, status=2, tidy=_user_path)
    def on_upload(path):
        if not path:
            return gr.update(), gr.update(), gr.update()
        new_id = svc.catalog.register_upload(path)
        gr.Info(f"{Path(str(path)).name} uploaded and registered in the 'uploads' dataset.")
        # the upload box is cleared either way, so it never stays in an error state
        return new_id, None, gr.update()

    def _clear_upload():
        return None

    upload.upload(on_upload, upload, [image_id, upload, image_info], api_name="upload").then(
        _clear_upload, None, upload, api_name=False
    )

    @guarded
    def on_full(m, img, names, name, op, mode, t, sh, gt, cm, ds, *pvals):
        if not m or (img := form_id(img, "image id")) is None or not name:
            return None, ""
        style = _style(op, mode, t, sh, gt, cm, ds)
        pdict = params_dict(params, pvals)
        shown_names = [n for n in (names or []) if n]
        if name not in shown_names:
            shown_names.append(name)
        # the same colour range as the method's panel (shared within units when asked)
        view = svc.scores.load_view(m, int(img))
        maps = svc.scores.score_maps(m, view, shown_names, pdict)
        lo, hi = svc.compare.colour_ranges(
            svc.catalog.model_key(m), view, maps, style.shared_scale
        )[name]
        big = svc.compare.full_view(m, int(img), name, pdict, style, vrange=(lo, hi))
        label = {c.name: c.label for c in svc.scores.method_choices(m)}.get(name, name)
        txt = f"Full-size view: **{label}** on **#{view.image_id} {view.name}** "
        return big, txt + f"({big.shape[1]}×{big.shape[0]})"

    full_inputs = [model, image_id, shown, full_method, *style_inputs, *sliders]
    full_method.input(on_full, full_inputs, [full, full_info], api_name="full_view")

    def on_panel(names, evt: gr.SelectData):
        if evt is None or evt.index is None or not names:
            return gr.update()
        idx = evt.index if isinstance(evt.index, int) else evt.index[0]
        return names[int(idx)] if 0 <= int(idx) < len(names) else gr.update()

    panels.select(on_panel, shown, full_method, api_name=False).then(
        on_full, full_inputs, [full, full_info], api_name=False
    )

    ctx["compare.model"] = model
    ctx["compare.dataset"] = dataset
    ctx["compare.image_id"] = image_id
    ctx["compare.methods"] = methods
    ctx["compare.sliders"] = sliders
    ctx["compare.params"] = params
    ctx["compare.gallery"] = gallery
    ctx["compare.gallery_ids"] = gallery_ids
    ctx["compare.on_dataset"] = on_dataset
    ctx["compare.on_model"] = on_model
