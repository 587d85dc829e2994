"""Retrain tab: one button that queues a head-training job, with live progress and versioning.

The job runs in the job worker (a thread of the app, or ``anomseg worker``); this tab only writes
the request and then polls the job row every second with a ``gr.Timer`` while it runs. When the
job ends, the head history, the Compare methods and the header refresh, so the new head version
shows up everywhere without a reload.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from anomseg.errors import InputError
from anomseg.head_geometry import STITCHED, WINDOW
from dashboard import render
from dashboard.compare import method_update
from dashboard.services import Services
from dashboard.ui import Context, guarded, progress_html, refusing
from training.recipes import RECIPES
from training.trainer import TrainConfig

# one source of defaults: the same TrainConfig that `anomseg train` and the job worker use
DEFAULTS = TrainConfig()
LOG_LINES = 10
# the history's columns before any version exists (not gradio's placeholder "1 2 3")
EMPTY_HISTORY = pd.DataFrame(
    columns=["version", "kind", "status", "active", "parent", "epochs", "lr", "created"]
)

ACTIVATION = [
    ("activate the new version", "always"),
    ("activate it if its mean AuPRC improves and its mean FPR95 is no worse",
     "auprc_and_fpr95_improve"),  # fmt: skip
    ("keep the current head active", "never"),
]
HEAD_KINDS = [
    ("stats-only (4 uncertainty statistics)", "stats"),
    ("feature-enriched (+ backbone features: EoMT patches, ERFNet encoder)", "features"),
    ("outlier exposure (fine-tunes ERFNet's decoder on the pastes, read by energy)", "oe"),
]
RECIPE_CHOICES = [(f"{name}: {RECIPES.get(name).description}", name) for name in RECIPES.names()]
GEOMETRY_CHOICES = [
    ("once on the stitched maps", STITCHED),
    ("per EoMT window, then stitched (the seed's)", WINDOW),
]


def build(ctx: Context) -> None:
    """Build the Retrain tab's widgets and wire its events."""
    svc: Services = ctx.svc
    models = svc.catalog.model_names()
    cmp_model = ctx["compare.model"]
    cmp_methods = ctx["compare.methods"]

    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            model = gr.Dropdown(
                models, value=models[0] if models else None, label="Model", elem_id="retrain-model"
            )
            gr.Markdown("#### The next training set")
            summary = gr.Markdown(elem_id="retrain-summary")
            with gr.Row():
                head = gr.Radio(HEAD_KINDS, value="stats", label="Head", elem_id="retrain-head")
                activate = gr.Radio(
                    ACTIVATION,
                    value="always",
                    label="When it is trained",
                    elem_id="retrain-activate",
                )
            with gr.Row():
                recipe = gr.Radio(
                    RECIPE_CHOICES,
                    value=DEFAULTS.recipe,
                    label="Recipe",
                    elem_id="retrain-recipe",
                )
                geometry = gr.Radio(
                    GEOMETRY_CHOICES,
                    value=DEFAULTS.head_geometry,
                    label="Apply the head",
                    elem_id="retrain-geometry",
                )
            with gr.Row():
                epochs = gr.Slider(
                    1, 30, DEFAULTS.epochs, step=1, label="Epochs", elem_id="retrain-epochs"
                )
                lr = gr.Number(
                    DEFAULTS.lr,
                    label="Learning rate",
                    minimum=1e-6,
                    maximum=1.0,
                    elem_id="retrain-lr",
                )
                fp_weight = gr.Slider(
                    1,
                    20,
                    DEFAULTS.fp_weight,
                    step=0.5,
                    label="False-positive flag weight",
                    elem_id="retrain-fp-weight",
                )
            with gr.Row():
                go = gr.Button("Retrain", variant="primary", size="lg", elem_id="retrain-go")
                cancel = gr.Button("Cancel job", variant="stop", elem_id="retrain-cancel")
        with gr.Column(scale=3):
            gr.Markdown("#### Job")
            bar = gr.HTML(progress_html(0.0, "no job yet"), elem_id="retrain-progress")
            job_status = gr.Markdown(elem_id="retrain-job-status")
            log = gr.Textbox(
                label=f"Log tail (newest {LOG_LINES} lines)",
                lines=LOG_LINES,
                max_lines=LOG_LINES + 1,
                interactive=False,
                autoscroll=True,
                elem_id="retrain-log",
            )
    gr.Markdown("#### Head versions")
    history = gr.Dataframe(
        EMPTY_HISTORY, label="History (newest first)", interactive=False, elem_id="retrain-history"
    )
    with gr.Row():
        version = gr.Dropdown(label="Version", choices=[], elem_id="retrain-version")
        act_btn = gr.Button("Activate this version", elem_id="retrain-activate-btn")
        rollback_btn = gr.Button(
            "Roll back to the parent of the active head", elem_id="retrain-rollback"
        )
    compare_plot = gr.Plot(label="Head versions compared", elem_id="retrain-plot")

    job_id = gr.State(0)
    timer = gr.Timer(1.0, active=False)

    @guarded
    def overview(m):
        if not m:
            return (
                "No model registered.",
                EMPTY_HISTORY,
                gr.update(choices=[]),
                render.head_history_plot(None),
            )
        versions = svc.retrain.head_versions(m)
        hist = svc.retrain.head_history(m)
        return (
            svc.retrain.training_summary(m),
            hist if len(hist.columns) else EMPTY_HISTORY,
            gr.update(choices=versions, value=versions[0] if versions else None),
            render.head_history_plot(svc.leaderboard.head_comparison(m)),
        )

    overview_out = [summary, history, version, compare_plot]
    model.change(overview, model, overview_out, api_name=False)
    cmp_model.change(lambda m: m, cmp_model, model, api_name=False)

    def _job_view(st):
        label = f"job #{st.id} · {st.status} · {st.message}"
        status = f"**Job #{st.id}** ({st.kind}): **{st.status}**" + (
            f" — {st.error}" if st.error else ""
        )
        # only as many lines as the box shows: the newest line is always in view, with no
        # scroll position to lose between polls
        tail = "\n".join((st.log_tail or "").splitlines()[-LOG_LINES:])
        return progress_html(st.progress, label), status, tail

    # a recipe brings its own learning rate; the box stays editable after the switch
    recipe.change(lambda r: RECIPES.get(r).lr, recipe, lr, api_name=False)

    # a refused request (e.g. nothing to train on) keeps the last job's view and says why in the
    # status line: gr.Error would badge the progress, status and log "Error"
    @refusing(5, status=2)
    def start(m, h, e, rate, fpw, act, rec=None, geo=None):
        if not m:
            raise InputError("no model selected")
        job = svc.retrain.queue_retrain(
            m, h, int(e), float(rate), float(fpw), act, recipe=rec, head_geometry=geo
        )
        gr.Info(f"Retrain queued as job #{job}.")
        st = svc.jobs.job_state(job)
        return (job, *_job_view(st), gr.Timer(active=True))

    go.click(
        start,
        [model, head, epochs, lr, fp_weight, activate, recipe, geometry],
        [job_id, bar, job_status, log, timer],
        api_name="retrain",
    )

    @guarded
    def stop(job):
        if not job:
            raise InputError("no job to cancel")
        svc.jobs.cancel_job(int(job))
        gr.Info(f"Cancel requested for job #{int(job)}.")

    cancel.click(stop, job_id, None, api_name=False)

    @guarded
    def tick(job, m, cm, cur_methods):
        if not job:
            return (gr.update(),) * 3 + (gr.Timer(active=False),) + (gr.update(),) * 6
        st = svc.jobs.job_state(int(job))
        view = _job_view(st)
        if not st.finished:
            return (*view, gr.Timer(active=True)) + (gr.update(),) * 6
        if st.status == "done":
            gr.Info(f"Job #{st.id} finished.")
        elif st.status == "failed":
            gr.Warning(f"Job #{st.id} failed: {st.error}")
        s, hist, ver, plot = overview(m)
        methods = method_update(svc, cm, cur_methods) if cm else gr.update()
        # the header's "active heads" changes with the job's end: refresh it now, not on reload
        header = svc.catalog.header_markdown()
        return (*view, gr.Timer(active=False), s, hist, ver, plot, methods, header)

    timer.tick(
        tick,
        [job_id, model, cmp_model, cmp_methods],
        [
            bar,
            job_status,
            log,
            timer,
            summary,
            history,
            version,
            compare_plot,
            cmp_methods,
            ctx.header,
        ],
        api_name=False,
    )

    @guarded
    def do_activate(m, v):
        if not m or not v:
            raise InputError("pick a head version first")
        svc.retrain.activate_head(m, int(v))
        gr.Info(f"Head v{int(v)} is now active for {m}.")
        return overview(m)

    @guarded
    def do_rollback(m):
        if not m:
            raise InputError("no model selected")
        v = svc.retrain.rollback_head(m)
        gr.Info(f"Rolled back: head v{v} is active again.")
        return overview(m)

    ctx.then_refresh_header(
        act_btn.click(do_activate, [model, version], overview_out, api_name=False)
    )
    ctx.then_refresh_header(rollback_btn.click(do_rollback, model, overview_out, api_name=False))

    @guarded
    def resume():
        """On page load: show (and keep polling) a training job that is still running."""
        job = svc.jobs.latest_job(("train_head",), running_only=True)
        if job is None:
            return 0, gr.update(), gr.update(), gr.update(), gr.Timer(active=False)
        return (job, *_job_view(svc.jobs.job_state(job)), gr.Timer(active=True))

    ctx["retrain.model"] = model
    ctx["retrain.overview"] = (overview, model, overview_out)
    ctx["retrain.resume"] = (resume, None, [job_id, bar, job_status, log, timer])
