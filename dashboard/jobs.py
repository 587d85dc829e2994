"""Job kinds the dashboard queues besides training: generate samples, evaluate a model.

They plug into the store-backed worker of ``training.jobs`` (``JOB_KINDS``); the app's in-process
worker runs them, and ``anomseg worker`` does too once this module is imported. Each is a plain
function of a ``JobContext`` that reports progress and writes its results to the store.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from anomseg.errors import InputError
from dashboard.wording import counted
from training.jobs import JOB_KINDS, JobContext

POSTHOC_METHODS = ("msp", "maxlogit", "entropy", "energy", "rba")


def _register(name: str):
    def deco(fn):
        if name not in JOB_KINDS:  # the training package may provide its own version
            JOB_KINDS.register(name, fn)
        return fn

    return deco


def _synthetic_dataset(s: Any, name: str | None) -> Any:
    from db import catalog

    if name:
        ds = catalog.get_dataset(s, name)
        if ds.role != "synthetic":
            raise InputError(f"dataset {name!r} has role {ds.role!r}; expected a synthetic dataset")
        return ds
    found = catalog.list_datasets(s, role="synthetic")
    if not found:
        raise InputError("no synthetic dataset is registered to add generated samples to")
    # unnamed: the dataset being curated, i.e. the one holding the newest sample
    from sqlalchemy import select

    from db.models import SyntheticSample

    newest = s.scalar(
        select(SyntheticSample.dataset_id).order_by(SyntheticSample.id.desc()).limit(1)
    )
    return next((d for d in found if d.id == newest), found[0])


@_register("synth_generate")
def synth_generate_job(ctx: JobContext) -> dict[str, Any]:
    """Propose ``n`` new samples for a synthetic dataset (``training.synth_samples``).

    params: ``n`` (1..500), optional ``dataset`` (a synthetic dataset name), ``seed``,
    ``status`` (default ``proposed``). A dataset carrying source specs (CamVid x COCO, a dash-cam
    folder ...) draws from them; one without (the built-in world) gets fresh procedural scenes.
    New samples are stored with their render cache written, ready to curate.
    """
    from training.synth_samples import generate_samples

    n = ctx.params.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 500:
        raise InputError(f"synth_generate: n must be an integer in 1..500, got {n!r}")
    with ctx.store.read() as s:
        name = _synthetic_dataset(s, ctx.params.get("dataset")).name
    made = generate_samples(
        ctx.store,
        name,
        n,
        seed=int(ctx.params.get("seed", 0)),
        status=ctx.params.get("status", "proposed"),
        progress=ctx.progress,
        workspace=ctx.workspace,
    )
    return {"samples": made, "dataset": name}


@_register("evaluate")
def evaluate_job(ctx: JobContext) -> dict[str, Any]:
    """Evaluate a model's post-hoc methods (and its ready heads) on every eval dataset.

    params: ``model``; optional ``methods`` (list of post-hoc specs), ``datasets`` (names),
    ``heads`` (bool, default True). One forward per image for all methods, the protocol of
    ``anomseg.evaluate`` (label resized nearest to the scoring size, images without anomaly
    pixels skipped); results, with per-image figures, go to the leaderboard.
    """
    from anomseg import scoring
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import evaluate
    from anomseg.models.heads import head_spec, load_head
    from db import catalog
    from db import heads as dbheads
    from db.workspace import Workspace

    model = ctx.params.get("model")
    if not model:
        raise InputError("evaluate job needs a 'model' parameter")
    ws = Workspace.open(ctx.workspace, url=ctx.store.url)
    try:
        predictor = ws.predictor(model)
        with ctx.store.read() as s:
            model_row = catalog.get_model(s, model)
            model_id, model_sha = model_row.id, model_row.checkpoint_sha256 or ""
            wanted = ctx.params.get("datasets")
            sets = [
                (d.id, d.name, d.root, d.label_remap)
                for d in catalog.list_datasets(s, role="eval")
                if not wanted or d.name in wanted
            ]
            heads = (
                [
                    (h.version, h.kind, h.checkpoint_path)
                    for h in dbheads.list_head_versions(s, model_id)
                    if h.status == "ready" and h.checkpoint_path
                ]
                if ctx.params.get("heads", True)
                else []
            )
        if not sets:
            raise InputError("no eval dataset is registered")
        extra = {}
        for version, kind, path in heads:
            head, _meta = load_head(path, kind=kind)
            extra[f"head:{version}"] = head_spec(f"head:{version}", head)
        methods = [*(ctx.params.get("methods") or POSTHOC_METHODS), *extra]
        total, done_methods = len(sets), set()
        for k, (ds_id, ds_name, root, remap) in enumerate(sets):
            ds = BenchmarkDataset(
                Path(root), remap={int(a): int(b) for a, b in remap.items()} if remap else "auto"
            )
            if not len(ds):
                continue
            from anomseg.protocol import dataset_sha256

            data_sha = dataset_sha256(ds)
            # methods this model cannot feed (rba on a pixel model) are left out, not failed;
            # the probe is the first image's forward, which the evaluation reuses from the cache
            probe = predictor.predict(ds[0][0])
            usable = [
                m for m in methods
                if scoring.get_scorer(scoring.parse_method(m, extra)[0], extra).applicable(probe)
            ]  # fmt: skip

            def on_image(_name: str, done: int, n: int, k: int = k, ds_name: str = ds_name):
                ctx.progress((k + done / max(n, 1)) / total, f"{model} on {ds_name}: {done}/{n}")

            if ctx.nproc > 1:  # the worker's --nproc: images sharded, metrics merged exactly
                from anomseg.distributed import evaluate_nproc

                setup = functools.partial(
                    _eval_rank_setup, str(ctx.workspace), ctx.store.url, model, heads
                )
                rows, _info = evaluate_nproc(ctx.nproc, setup, [ds], usable, on_image=on_image)
            else:
                rows = evaluate(
                    predictor, [ds], usable, progress=False, on_image=on_image, extra=extra
                )
            for r in rows:
                if not r.n_images:
                    continue
                row = {
                    "model_id": model_id,
                    "method": r.method,
                    "dataset_id": ds_id,
                    "metrics": r.metrics,  # pixel and component (sIoU / PPV / F1) values
                    "params": {"protocol": protocol_for(r, ds, predictor, model_sha, data_sha)},
                    "n_images": r.n_images,
                    "per_image": r.per_image,
                    "seconds": r.seconds,
                }
                ctx.store.transact(lambda s, row=row: _add_result(s, row))
                done_methods.add(r.method)
        ctx.progress(
            1.0,
            f"evaluated {counted(len(done_methods), 'method')} on {counted(total, 'dataset')}",
        )
        return {"datasets": total, "methods": sorted(done_methods)}
    finally:
        ws.close()


def _eval_rank_setup(
    workspace: str, url: str, model: str, heads: list[tuple[int, str, str]], rank: int
) -> tuple[Any, dict[str, Any]]:
    """One rank of a multi-process evaluate job: the model's predictor and its ready heads."""
    import torch

    from anomseg.distributed import rank_device
    from anomseg.models.heads import head_spec, load_head
    from anomseg.predict import Predictor
    from db.workspace import Workspace

    ws = Workspace.open(Path(workspace), url=url)
    try:
        net = ws.load_model(model)
    finally:
        ws.close()
    device = rank_device("cuda" if torch.cuda.is_available() else "cpu", rank)
    extra = {}
    for version, kind, path in heads:
        head, _meta = load_head(path, kind=kind)
        extra[f"head:{version}"] = head_spec(f"head:{version}", head)
    return Predictor(net, device=device), extra


def protocol_for(row: Any, ds: Any, predictor: Any, model_sha: str, data_sha: str) -> dict:
    """The protocol card of a row this job evaluated (``anomseg.protocol``)."""
    from anomseg.components import track_for
    from anomseg.protocol import card

    return card(
        input_size=getattr(predictor, "input_size", None),
        score_size="input",
        skip_empty=True,
        label_remap=ds.remap,
        metric_mode=row.metric_mode,
        track=track_for(row.dataset),
        checkpoint_sha256=model_sha,
        dataset_sha256=data_sha,
    )


def _add_result(s: Any, row: dict[str, Any]) -> None:
    from db import results

    results.add_eval_result(
        s,
        row["model_id"],
        row["method"],
        row["dataset_id"],
        row["metrics"],
        row["n_images"],
        per_image=row["per_image"],
        seconds=row["seconds"],
        params=row.get("params"),
    )
