"""Leaderboard tab: model x method x dataset with AuPRC, FPR95, AUROC (and mIoU), plots, drill-down.

Click a row to see that method's worst images on that dataset (click one to open it in Compare)
and the precision-recall curves of every method of that model on that dataset.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from anomseg.errors import AnomsegError
from anomseg.head_methods import is_head_method
from dashboard import render
from dashboard.ranking import rank_and_mark
from dashboard.services import Services
from dashboard.ui import Context, guarded, progress_html
from dashboard.wording import job_label, worst_caption

METRICS = ["AuPRC", "FPR95", "AUROC", "sIoU", "PPV", "F1"]
# drill-down order: per-image key stored with the result -> label
WORST_BY = {"AuPRC": "auprc", "sIoU": "siou", "F1": "f1_mean"}


def build(ctx: Context) -> None:
    """Build the Leaderboard tab's widgets and wire its events."""
    svc: Services = ctx.svc
    models = svc.catalog.model_names()

    with gr.Row():
        f_models = gr.Dropdown(
            models, multiselect=True, label="Models (all when empty)", elem_id="lb-models"
        )
        f_datasets = gr.Dropdown(
            [], multiselect=True, label="Datasets (all when empty)", elem_id="lb-datasets"
        )
        f_method = gr.Textbox(
            label="Method contains", placeholder="e.g. head, msp", elem_id="lb-method"
        )
        metric = gr.Radio(METRICS, value="AuPRC", label="Plot metric", elem_id="lb-metric")
        with gr.Column(min_width=160):
            refresh = gr.Button("Refresh", size="sm", elem_id="lb-refresh")
            ev_model = gr.Dropdown(
                models,
                value=models[0] if models else None,
                label="Evaluate model",
                elem_id="lb-eval-model",
            )
            ev_btn = gr.Button("Evaluate on every eval dataset", size="sm", elem_id="lb-evaluate")
    ev_status = gr.HTML(elem_id="lb-eval-status")
    table = gr.Dataframe(
        label="Results (click a column header to sort, a row to drill down)",
        interactive=False,
        max_height=420,
        show_search="search",
        elem_id="lb-table",
    )
    with gr.Row():
        bars = gr.Plot(label="By method", elem_id="lb-bars")
        curves = gr.Plot(label="Precision-recall", elem_id="lb-curves")
    with gr.Row():
        selected = gr.Markdown("Click a row to see its worst images.", elem_id="lb-selected")
        worst_by = gr.Radio(list(WORST_BY), value="AuPRC", label="Worst images by",
                            elem_id="lb-worst-by")  # fmt: skip
    worst = gr.Gallery(
        label="Worst images of the selected row (click one to open it in Compare)",
        columns=6,
        height=220,
        allow_preview=False,
        object_fit="cover",
        buttons=[],
        elem_id="lb-worst",
    )
    worst_ids = gr.State([])
    sel_row = gr.State({})
    with gr.Accordion("Head versions compared", open=True):
        with gr.Row():
            h_model = gr.Dropdown(
                models, value=models[0] if models else None, label="Model", elem_id="lb-head-model"
            )
        with gr.Row():
            h_plot = gr.Plot(label="AuPRC by head version", elem_id="lb-head-plot")
            h_table = gr.Dataframe(
                label="Head versions x eval datasets", interactive=False, elem_id="lb-head-table"
            )

    @guarded
    def load(ms, ds, meth, met):
        # rank within each dataset and mark the best per metric: the table answers "which is best"
        df = rank_and_mark(svc.leaderboard.leaderboard_frame(ms or None, ds or None, meth or ""))
        all_ds = sorted(svc.leaderboard.leaderboard_frame()["dataset"].unique().tolist())
        return df, render.metric_bars(df, met or "AuPRC"), gr.update(choices=all_ds)

    load_out = [table, bars, f_datasets]
    for ev in (f_models.change, f_datasets.change, f_method.submit, metric.change, refresh.click):
        ev(load, [f_models, f_datasets, f_method, metric], load_out, api_name=False)

    ev_job = gr.State(0)
    ev_timer = gr.Timer(1.0, active=False)

    @guarded
    def evaluate(m):
        if not m:
            return 0, gr.update(), gr.Timer(active=False)
        job = svc.leaderboard.queue_evaluate(m)
        gr.Info(f"Evaluation of {m} queued as job #{job}.")
        return job, progress_html(0.0, f"job #{job} queued"), gr.Timer(active=True)

    ev_btn.click(evaluate, ev_model, [ev_job, ev_status, ev_timer], api_name=False)

    @guarded
    def poll(job, ms, ds, meth, met):
        if not job:
            return gr.update(), gr.Timer(active=False), gr.update(), gr.update(), gr.update()
        st = svc.jobs.job_state(int(job))
        label = job_label(st)
        if not st.finished:
            return (
                progress_html(st.progress, label),
                gr.Timer(active=True),
                gr.update(),
                gr.update(),
                gr.update(),
            )
        return (progress_html(st.progress, label), gr.Timer(active=False), *load(ms, ds, meth, met))

    ev_timer.tick(
        poll,
        [ev_job, f_models, f_datasets, f_method, metric],
        [ev_status, ev_timer, table, bars, f_datasets],
        api_name=False,
    )

    @guarded
    def pick(df, by, evt: gr.SelectData, progress=gr.Progress()):
        if evt is None or evt.index is None or df is None or len(df) == 0:
            return gr.update(), gr.update(), [], [], {}
        row_i = evt.index[0] if isinstance(evt.index, list | tuple) else int(evt.index)
        row = df.iloc[int(row_i)].to_dict()
        by = by if by in WORST_BY else "AuPRC"
        try:
            worst_rows = svc.leaderboard.worst_images(int(row["result"]), 8, WORST_BY[by])
            no_worst = ""
        except AnomsegError as exc:  # stored without per-image values: say so, show the rest
            worst_rows, no_worst = [], str(exc)
        items = []
        for image_id, name, au in worst_rows:
            try:
                thumb = str(svc.catalog.thumbnail(image_id))
                items.append((thumb, worst_caption(name, row["method"], by, au)))
            except Exception:  # an unreadable file: leave it out of the strip
                continue
        ds_id = svc.catalog.dataset_id(row["dataset"])
        names = [
            n
            for n in df[(df["model"] == row["model"]) & (df["dataset"] == row["dataset"])][
                "method id"
            ]
        ]
        available = {c.name for c in svc.scores.method_choices(row["model"])}
        plain = [n for n in names if ":" not in n or is_head_method(n)]
        curve_names = [n for n in plain if n in available][:10]
        try:
            curves_data = svc.leaderboard.pr_curves(
                row["model"], ds_id, curve_names, progress=lambda f, m: progress(f, desc=m)
            )
        except AnomsegError:  # external maps (model "external"): no model here to re-score
            curves_data = []
        fig = render.pr_curves(curves_data, title=f"{row['model']} on {row['dataset']}")
        md = (
            f"**{row['model']} · {row['method']} · {row['dataset']}**: AuPRC {row['AuPRC']} · "
            f"FPR95 {row['FPR95']} · AUROC {row['AUROC']} · sIoU {row.get('sIoU')} · PPV "
            f"{row.get('PPV')} · F1 {row.get('F1')} — worst images by {by} below"
        )
        if no_worst:
            md += f"\n\n{no_worst}"
        if row.get("protocol"):
            md += f"\n\nProtocol: {row['protocol']}"
        same = df[(df["dataset"] == row["dataset"]) & (df["result"] != row["result"])]
        diffs = svc.leaderboard.protocol_differences(
            int(row["result"]), [int(r) for r in same["result"]][:12]
        )
        if diffs:
            md += "\n\n**These rows differ in protocol:**\n" + "\n".join(f"- {d}" for d in diffs)
        return md, fig, items, [i for i, _n, _a in worst_rows[: len(items)]], row

    table.select(
        pick, [table, worst_by], [selected, curves, worst, worst_ids, sel_row], api_name=False
    )

    tabs = ctx.tabs
    cmp_model, cmp_dataset, cmp_image = (
        ctx["compare.model"],
        ctx["compare.dataset"],
        ctx["compare.image_id"],
    )

    def open_in_compare(ids, row, evt: gr.SelectData):
        if evt is None or evt.index is None or not ids or not row:
            return gr.update(), gr.update(), gr.update(), gr.update()
        idx = evt.index if isinstance(evt.index, int) else evt.index[0]
        ds_id = svc.catalog.dataset_id(row["dataset"])
        return gr.Tabs(selected="compare"), row["model"], ds_id, ids[int(idx)]

    worst.select(
        open_in_compare,
        [worst_ids, sel_row],
        [tabs, cmp_model, cmp_dataset, cmp_image],
        api_name=False,
    )

    @guarded
    def heads(m):
        if not m:
            return render.head_history_plot(None), pd.DataFrame()
        df = svc.leaderboard.head_comparison(m)
        wide = (
            df.pivot_table(index="version", columns="dataset", values=["AuPRC", "FPR95"])
            if len(df)
            else df
        )
        if len(df):
            wide.columns = [f"{a} % {b}" for a, b in wide.columns]
            wide = wide.reset_index().sort_values("version", ascending=False)
        return render.head_history_plot(df), wide

    h_model.change(heads, h_model, [h_plot, h_table], api_name=False)

    ctx["leaderboard.load"] = (load, [f_models, f_datasets, f_method, metric], load_out)
    # re-read on each page load with Compare's and Retrain's lists (dashboard.app)
    ctx["leaderboard.model_lists"] = (f_models, ev_model, h_model)
    ctx["leaderboard.heads"] = (heads, h_model, [h_plot, h_table])
