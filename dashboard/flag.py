"""Flag tab: paint false-positive / false-negative / ignore regions on a method's map.

The editor shows the chosen method's heat map over the image currently open in Compare, on a
copy at most ``PAINT_MAX_SIDE`` pixels wide; one fixed layer takes the brush. On save, the layer's
antialiased alpha is thresholded on the server and the mask is mapped back to the full-size image
before it is stored (``db.flags``).
"""

from __future__ import annotations

import uuid

import gradio as gr
import pandas as pd

from anomseg.errors import InputError
from dashboard.compare import params_dict
from dashboard.services import Services
from dashboard.services.flags import FLAG_KIND_LABELS
from dashboard.ui import Context, form_id, guarded, user_of


def new_token() -> str:
    """A fresh client token for one flag save (stored as the flag's uid)."""
    return uuid.uuid4().hex


EMPTY_FLAGS = pd.DataFrame(
    columns=["id", "image", "kind", "method", "model", "area px", "author", "note", "created"]
)


def build(ctx: Context) -> None:
    """Build the Flag tab's widgets and wire its events."""
    svc: Services = ctx.svc
    model = ctx["compare.model"]
    image_id = ctx["compare.image_id"]
    methods = ctx["compare.methods"]
    sliders = ctx["compare.sliders"]
    params = ctx["compare.params"]

    gr.Markdown(
        "Paint on the map of the image open in **Compare**: pick the method and the kind of "
        "mistake, paint the region with the brush, add a note and save. Flags on training images "
        "feed the next retrain; flags on evaluation images stay annotations.",
        elem_classes=["anomseg-note"],
    )
    with gr.Row():
        names0 = list(methods.value or [])
        every = names0 + [c[1] for c in methods.choices if c[1] not in names0]
        method = gr.Dropdown(
            every,
            value=names0[0] if names0 else None,
            label="Method whose map you flag",
            elem_id="flag-method",
        )
        kind = gr.Radio(
            list(FLAG_KIND_LABELS), value="false positive", label="Kind", elem_id="flag-kind"
        )
        load_btn = gr.Button("Load map into the editor", elem_id="flag-load")
    editor_info = gr.Markdown(
        "The editor is empty: open an image in Compare, then load a method's map.",
        elem_id="flag-editor-info",
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                label="Paint the region (the brush paints on the fixed 'flag' layer)",
                type="numpy",
                image_mode="RGBA",
                sources=[],
                transforms=[],
                brush=gr.Brush(
                    colors=["#ff2d55"], default_color="#ff2d55", color_mode="fixed", default_size=18
                ),
                eraser=gr.Eraser(default_size=18),
                layers=gr.LayerOptions(allow_additional_layers=False, layers=["flag"]),
                height=560,
                elem_id="flag-editor",
            )
            with gr.Row():
                note = gr.Textbox(
                    label="Note (optional)",
                    placeholder="e.g. lane marking, not an object",
                    scale=3,
                    elem_id="flag-note",
                )
                save_btn = gr.Button("Save flag", variant="primary", scale=1, elem_id="flag-save")
            status = gr.Markdown(elem_id="flag-status")
            # the client's id of the next save: a retry of a save whose answer was lost sends
            # the same token and stores nothing twice; each stored save hands out a new one
            token = gr.Textbox(value=new_token, visible=False, elem_id="flag-token")
            with gr.Accordion("Corrupt rows (quarantine)", open=False):
                quarantine = gr.Markdown(elem_id="flag-quarantine")
                check_btn = gr.Button("Check the store for corrupt rows", elem_id="flag-check")
        with gr.Column(scale=2):
            overlay = gr.Image(
                label="Stored flags on this image",
                type="numpy",
                format="jpeg",
                interactive=False,
                elem_id="flag-overlay",
            )
            flags = gr.Dataframe(
                EMPTY_FLAGS,
                label="Flags of this image (click a row to edit)",
                interactive=False,
                elem_id="flag-table",
            )
            with gr.Row():
                sel_id = gr.Number(
                    label="Selected flag id", precision=0, value=0, elem_id="flag-selected"
                )
                sel_kind = gr.Radio(list(FLAG_KIND_LABELS), label="Kind", elem_id="flag-edit-kind")
            edit_note = gr.Textbox(label="Note", elem_id="flag-edit-note")
            with gr.Row():
                update_btn = gr.Button("Save changes", elem_id="flag-update")
                delete_btn = gr.Button("Delete flag", variant="stop", elem_id="flag-delete")

    def _methods_update(names, current):
        names = list(names or [])
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=value)

    methods.change(_methods_update, [methods, method], method, api_name=False)

    @guarded
    def load_map(m, img, name, *pvals):
        if not m:
            raise InputError("no model selected (pick one in Compare)")
        if (img := form_id(img, "image id")) is None:
            raise InputError("no image open: pick or upload one in the Compare tab first")
        if not name:
            raise InputError("pick the method whose map you want to flag")
        canvas = svc.flags.flag_canvas(m, int(img), name, params_dict(params, pvals))
        view = svc.scores.load_view(m, int(img))
        label = {c.name: c.label for c in svc.scores.method_choices(m)}.get(name, name)
        # say which map is being painted: the editor itself shows no names
        info = (
            f"Editor: the **{label}** map of **#{view.image_id} {view.name}** "
            f"({view.dataset}, {view.role}) by model **{m}**"
        )
        return canvas, info

    @guarded
    def refresh(img):
        if (img := form_id(img, "image id")) is None:
            return None, EMPTY_FLAGS
        return svc.flags.flags_overlay(int(img)), svc.flags.flags_frame(int(img))

    load_btn.click(
        load_map, [model, image_id, method, *sliders], [editor, editor_info], api_name=False
    ).then(
        refresh, image_id, [overlay, flags], api_name=False
    )
    image_id.change(refresh, image_id, [overlay, flags], api_name=False)

    @guarded
    def save(m, img, name, k, value, text, tok, *pvals, request: gr.Request = None):
        if (img := form_id(img, "image id")) is None:
            raise InputError("no image open: pick or upload one in the Compare tab first")
        if not name:
            raise InputError("pick the method whose map you flagged")
        fid = svc.flags.save_flag(
            m,
            int(img),
            name,
            params_dict(params, pvals),
            k,
            value,
            text or "",
            user_of(request),
            token=tok or None,
        )
        gr.Info(f"Flag #{fid} saved ({k}).")
        ov, df = svc.flags.flags_overlay(int(img)), svc.flags.flags_frame(int(img))
        # a fresh canvas, so the same strokes are not saved twice by a second click
        return (
            f"Saved flag **#{fid}** ({k}) on image #{int(img)}.",
            ov,
            df,
            svc.flags.flag_canvas(m, int(img), name, params_dict(params, pvals)),
            "",
            new_token(),
        )

    saved = ctx.then_refresh_header(
        save_btn.click(
            save,
            [model, image_id, method, kind, editor, note, token, *sliders],
            [status, overlay, flags, editor, note, token],
            api_name="save_flag",
            concurrency_limit=8,
        )
    )

    def pick(df, evt: gr.SelectData):
        if evt is None or evt.index is None or df is None or len(df) == 0:
            return gr.update(), gr.update(), gr.update()
        row = evt.index[0] if isinstance(evt.index, list | tuple) else int(evt.index)
        rec = df.iloc[int(row)]
        return int(rec["id"]), str(rec["kind"]), str(rec["note"] or "")

    flags.select(pick, flags, [sel_id, sel_kind, edit_note], api_name=False)

    @guarded
    def update(img, fid, k, text):
        if (fid := form_id(fid, "flag id")) is None:
            raise InputError("select a flag in the table first")
        svc.flags.update_flag(int(fid), note=text or "", kind=k or None)
        gr.Info(f"Flag #{int(fid)} updated.")
        return refresh(img)

    updated = update_btn.click(
        update, [image_id, sel_id, sel_kind, edit_note], [overlay, flags], api_name=False
    )

    @guarded
    def delete(img, fid):
        if (fid := form_id(fid, "flag id")) is None:
            raise InputError("select a flag in the table first")
        svc.flags.delete_flag(int(fid))
        gr.Info(f"Flag #{int(fid)} deleted.")
        ov, df = refresh(img)
        return ov, df, 0, ""

    deleted = ctx.then_refresh_header(
        delete_btn.click(
            delete, [image_id, sel_id], [overlay, flags, sel_id, edit_note], api_name=False
        )
    )

    @guarded
    def check_store():
        return svc.flags.quarantine_markdown()

    check_btn.click(check_store, None, quarantine, api_name=False)

    # every flag of the store, not only the open image's: what has been flagged, where, by whom
    with gr.Accordion("All flags in the store (newest first)", open=True):
        all_table = gr.Dataframe(
            EMPTY_FLAGS, interactive=False, max_height=320, elem_id="flag-all"
        )

    @guarded
    def all_flags():
        return svc.flags.flags_frame()

    for done in (saved, updated, deleted):
        done.then(all_flags, None, all_table, api_name=False)

    ctx["flag.all"] = (all_flags, None, all_table)
    ctx["flag.method"] = method
    ctx["flag.load"] = (load_map, [model, image_id, method, *sliders], [editor, editor_info])
    ctx["flag.refresh"] = (refresh, image_id, [overlay, flags])
