"""Curate tab: review synthetic samples and edit their pastes (every edit a new revision).

Click the preview to move the selected paste's anchor (its bottom centre) there; change scale,
flip, object, feather or photometric matching and apply; undo / redo step through the paste's
history; accept or reject the sample; queue "generate N more" as a background job.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from anomseg.errors import AnomsegError, InputError
from dashboard.services import Services
from dashboard.services.curate import SAMPLE_COLUMNS
from dashboard.ui import (
    Context,
    form_id,
    guarded,
    progress_html,
    refusal_html,
    refusing,
    user_of,
)
from dashboard.wording import job_label

STATUSES = ["all", "proposed", "accepted", "rejected"]
EMPTY_SAMPLES = pd.DataFrame(columns=SAMPLE_COLUMNS)
# the first column is the sample's thumbnail (an <img> of its current render), wide enough
# to show it whole
SAMPLE_TYPES = ["html", "number", "str", "str", "number", "str"]
SAMPLE_WIDTHS = ["104px", "48px", "88px", "136px", "72px", "170px"]
EMPTY_PASTES = pd.DataFrame(
    columns=["key", "object", "x", "y", "scale", "flip", "feather", "photometric"]
)


def build(ctx: Context) -> None:
    """Build the Curate tab's widgets and wire its events."""
    svc: Services = ctx.svc

    with gr.Row():
        status_filter = gr.Radio(
            STATUSES, value="all", label="Show samples", elem_id="curate-filter"
        )
        counts = gr.Markdown(elem_id="curate-counts")
        refresh_btn = gr.Button("Refresh", size="sm")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            samples = gr.Dataframe(
                EMPTY_SAMPLES,
                label="Synthetic samples (click a row)",
                interactive=False,
                datatype=SAMPLE_TYPES,
                column_widths=SAMPLE_WIDTHS,
                max_height=420,
                elem_id="curate-samples",
            )
            sample_id = gr.Number(
                label="Sample id", value=0, precision=0, elem_id="curate-sample-id"
            )
            with gr.Row():
                accept_btn = gr.Button("Accept", variant="primary", elem_id="curate-accept")
                reject_btn = gr.Button("Reject", variant="stop", elem_id="curate-reject")
                propose_btn = gr.Button("Back to proposed", elem_id="curate-propose")
            with gr.Accordion("Generate more samples", open=False):
                n_more = gr.Number(label="How many", value=8, precision=0, minimum=1, maximum=500)
                gen_btn = gr.Button("Generate N more (background job)", elem_id="curate-generate")
                gen_status = gr.HTML(elem_id="curate-gen-status")
        with gr.Column(scale=3):
            preview = gr.Image(
                label="Preview: click to move the selected paste (yellow outline)",
                type="numpy",
                format="jpeg",
                interactive=False,
                height=420,
                elem_id="curate-preview",
            )
            pastes = gr.Dataframe(
                EMPTY_PASTES, label="Pastes", interactive=False, elem_id="curate-pastes"
            )
            with gr.Row():
                key = gr.Dropdown(label="Paste", choices=[], elem_id="curate-paste")
                obj = gr.Dropdown(
                    label="Source object",
                    choices=[],
                    allow_custom_value=True,
                    elem_id="curate-object",
                )
            with gr.Row():
                scale = gr.Slider(0.05, 4.0, 1.0, step=0.01, label="Scale", elem_id="curate-scale")
                feather = gr.Slider(
                    0, 16, 2, step=0.5, label="Feather (px)", elem_id="curate-feather"
                )
            with gr.Row():
                flip = gr.Checkbox(label="Flip left-right", elem_id="curate-flip")
                photometric = gr.Checkbox(
                    label="Photometric matching", elem_id="curate-photometric"
                )
            with gr.Row():
                apply_btn = gr.Button("Apply edit", variant="primary", elem_id="curate-apply")
                undo_btn = gr.Button("Undo", elem_id="curate-undo")
                redo_btn = gr.Button("Redo", elem_id="curate-redo")
            edit_status = gr.Markdown(elem_id="curate-status")

    def _counts_md() -> str:
        c = svc.curate.sample_counts()
        return " · ".join(f"**{k}** {v}" for k, v in c.items())

    @guarded
    def list_samples(status):
        return svc.curate.samples_frame(status), _counts_md()

    status_filter.change(list_samples, status_filter, [samples, counts], api_name=False)
    refresh_btn.click(list_samples, status_filter, [samples, counts], api_name=False)

    def pick_sample(df, evt: gr.SelectData):
        if evt is None or evt.index is None or df is None or len(df) == 0:
            return gr.update()
        row = evt.index[0] if isinstance(evt.index, list | tuple) else int(evt.index)
        return int(df.iloc[int(row)]["id"])

    samples.select(pick_sample, samples, sample_id, api_name=False)

    @guarded
    def show(sid, current_key):
        if (sid := form_id(sid, "sample id")) is None:
            return None, EMPTY_PASTES, gr.update(choices=[], value=None)
        keys = [k for k in svc.curate.sample_view(int(sid))[2]]
        sel = current_key if current_key in keys else (keys[0] if keys else None)
        img, df, _ = svc.curate.sample_view(int(sid), sel)
        return img, df, gr.update(choices=keys, value=sel)

    @guarded
    def fill_fields(sid, k):
        if (sid := form_id(sid, "sample id")) is None or not k:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        rec = svc.curate.paste_record(int(sid), k)
        objects = svc.curate.object_choices(rec["source"])
        if rec["object_id"] not in objects:
            objects = [rec["object_id"], *objects]
        return (
            gr.update(choices=objects, value=rec["object_id"]),
            float(rec["scale"]),
            float(rec["feather"]),
            bool(rec["flip"]),
            bool(rec["photometric"]),
        )

    sample_id.change(show, [sample_id, key], [preview, pastes, key], api_name="show_sample").then(
        fill_fields, [sample_id, key], [obj, scale, feather, flip, photometric], api_name=False
    )

    @guarded
    def select_key(sid, k):
        if (sid := form_id(sid, "sample id")) is None:
            return gr.update()
        return svc.curate.sample_view(int(sid), k)[0]

    key.input(select_key, [sample_id, key], preview, api_name=False).then(
        fill_fields, [sample_id, key], [obj, scale, feather, flip, photometric], api_name=False
    )

    @refusing(3, status=2)
    def apply(sid, k, o, sc, fe, fl, ph, request: gr.Request = None):
        if (sid := form_id(sid, "sample id")) is None or not k:
            raise InputError("select a sample and one of its pastes first")
        changes = {
            "object_id": o,
            "scale": float(sc),
            "feather": float(fe),
            "flip": bool(fl),
            "photometric": bool(ph),
        }
        rev = svc.curate.edit_paste(int(sid), k, changes, user_of(request))
        img, df, _ = svc.curate.sample_view(int(sid), k)
        return img, df, f"Paste **{k}** now at revision {rev}."

    apply_btn.click(
        apply,
        [sample_id, key, obj, scale, feather, flip, photometric],
        [preview, pastes, edit_status],
        api_name="edit_paste",
    )

    @refusing(3, status=2)
    def click_move(sid, k, evt: gr.SelectData, request: gr.Request = None):
        if (sid := form_id(sid, "sample id")) is None or not k:
            raise InputError("select a sample and one of its pastes first")
        if evt is None or evt.index is None:
            return gr.update(), gr.update(), gr.update()
        x, y = int(evt.index[0]), int(evt.index[1])
        rev = svc.curate.move_paste(int(sid), k, x, y, user_of(request))
        img, df, _ = svc.curate.sample_view(int(sid), k)
        return img, df, f"Paste **{k}** moved to ({x}, {y}), revision {rev}."

    preview.select(click_move, [sample_id, key], [preview, pastes, edit_status], api_name=False)

    @refusing(3, status=2)
    def undo(sid, k):
        if (sid := form_id(sid, "sample id")) is None or not k:
            raise InputError("select a sample and one of its pastes first")
        rev = svc.curate.undo_paste(int(sid), k)
        img, df, _ = svc.curate.sample_view(int(sid), k)
        return img, df, f"Undone: paste **{k}** back at revision {rev}."

    @refusing(3, status=2)
    def redo(sid, k):
        if (sid := form_id(sid, "sample id")) is None or not k:
            raise InputError("select a sample and one of its pastes first")
        rev = svc.curate.redo_paste(int(sid), k)
        img, df, _ = svc.curate.sample_view(int(sid), k)
        return img, df, f"Redone: paste **{k}** at revision {rev}."

    for btn, fn in ((undo_btn, undo), (redo_btn, redo)):
        btn.click(fn, [sample_id, key], [preview, pastes, edit_status], api_name=False).then(
            fill_fields, [sample_id, key], [obj, scale, feather, flip, photometric], api_name=False
        )

    def _status_handler(new_status: str):
        @guarded
        def set_status(sid, filt):
            if (sid := form_id(sid, "sample id")) is None:
                raise InputError("select a sample first")
            svc.curate.set_sample_status(int(sid), new_status)
            gr.Info(f"Sample #{int(sid)} is now {new_status}.")
            return svc.curate.samples_frame(filt), _counts_md()

        return set_status

    accept_btn.click(
        _status_handler("accepted"), [sample_id, status_filter], [samples, counts], api_name=False
    )
    reject_btn.click(
        _status_handler("rejected"), [sample_id, status_filter], [samples, counts], api_name=False
    )
    propose_btn.click(
        _status_handler("proposed"), [sample_id, status_filter], [samples, counts], api_name=False
    )

    gen_job = gr.State(0)
    gen_timer = gr.Timer(1.0, active=False)

    def generate(n):
        # a refusal (nothing to generate into) goes to the status line once, with no "Error"
        # badge and no toast repeating it
        try:
            job = svc.curate.queue_generate(int(n or 0))
        except AnomsegError as exc:
            return gr.update(), refusal_html(str(exc)), gr.Timer(active=False)
        gr.Info(f"Job #{job} queued: generating {int(n)} samples.")
        return job, progress_html(0.0, f"job #{job} queued"), gr.Timer(active=True)

    gen_btn.click(generate, n_more, [gen_job, gen_status, gen_timer], api_name=False)

    @guarded
    def poll(job, filt):
        if not job:
            return gr.update(), gr.Timer(active=False), gr.update(), gr.update()
        st = svc.jobs.job_state(int(job))
        label = job_label(st)
        if st.finished:
            df, c = svc.curate.samples_frame(filt), _counts_md()
            return progress_html(st.progress, label), gr.Timer(active=False), df, c
        return progress_html(st.progress, label), gr.Timer(active=True), gr.update(), gr.update()

    gen_timer.tick(
        poll, [gen_job, status_filter], [gen_status, gen_timer, samples, counts], api_name=False
    )

    ctx["curate.list"] = (list_samples, status_filter, [samples, counts])
