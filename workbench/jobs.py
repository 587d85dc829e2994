"""Job kinds: what the worker runs, in one registry (``JOB_KINDS``).

A job kind is a function ``run(ctx: JobContext) -> dict | None``: ``train_head`` (a new head
version), ``synth_generate`` (propose synthetic samples), ``evaluate`` (a model's methods on
every eval dataset). Each reports progress through its context and writes its results to the
store. The dashboard and the CLI queue them here (``enqueue_training``, ``enqueue_evaluate``,
``enqueue_synth_generate``: a bad request is refused before anything is queued);
``workbench.worker.Worker`` runs them, in the app's thread or as ``anomseg worker``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func, select

from anomseg import scoring
from anomseg.data.benchmark import BenchmarkDataset
from anomseg.distributed import evaluate_nproc, rank_device
from anomseg.errors import AnomsegError, InputError
from anomseg.evaluate import attach_protocol, evaluate
from anomseg.head_methods import HeadRef, HeadScorers, head_method
from anomseg.models.heads import HEADS
from anomseg.predict import PredictionCache
from anomseg.registry import Registry
from db import catalog, results
from db import heads as dbheads
from db.flags import flags_for_training
from db.jobs import enqueue_job, update_job
from db.models import Job, SyntheticSample, dump_json
from training.synth_samples import generate_samples
from training.trainer import TrainConfig, train_head
from training.versions import ACTIVATION_RULES
from workbench.models import PredictorPool, build_predictor, frozen_model, read_spec


class JobCancelled(AnomsegError):
    """Raised inside a job when its cancel was requested."""


JobFn = Callable[["JobContext"], dict[str, Any] | None]
JOB_KINDS: Registry[JobFn] = Registry("job kind")


def log_time() -> str:
    """The clock time a job's log lines start with."""
    return time.strftime("%H:%M:%S")


@dataclass
class JobContext:
    """What a running job sees: its parameters, progress reporting, the cancel flag."""

    store: Any
    workspace: Path
    job_id: int
    kind: str
    params: dict[str, Any]
    worker_id: str
    min_report_s: float = 0.5
    nproc: int = 1  # processes a job may spread over (the worker's --nproc): evaluate shards
    _cancel: threading.Event = field(default_factory=threading.Event)
    _last: float = 0.0
    _last_msg: str = ""

    def progress(self, fraction: float, message: str = "", force: bool = False) -> None:
        """Report progress in 0..1 with a message (rate-limited; raises JobCancelled if asked)."""
        frac = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if force or frac >= 1.0 or now - self._last >= self.min_report_s:
            self._last = now
            log = (
                f"{log_time()} {frac:5.1%} {message}\n"
                if message and message != self._last_msg
                else None
            )
            self._last_msg = message or self._last_msg

            def write(s: Any) -> bool:
                return bool(
                    update_job(
                        s, self.job_id, progress=frac, message=message or None, log=log
                    ).cancel_requested
                )

            if self.store.transact(write):
                self._cancel.set()
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.job_id} cancelled")

    def log(self, line: str) -> None:
        """Append a line to the job's log tail."""
        self.store.transact(lambda s: update_job(s, self.job_id, log=f"{log_time()} {line}\n"))

    def cancelled(self) -> bool:
        """True once a cancel was requested (seen by the heartbeat or a progress report)."""
        return self._cancel.is_set()


# --- training -----------------------------------------------------------------------------------

TRAIN_PARAM_KEYS = ("model", "activate", "nproc", "device", "evaluate")


@JOB_KINDS.register("train_head")
def train_head_job(ctx: JobContext) -> dict[str, Any]:
    """Train a head: params = model, head, epochs, lr, ... (TrainConfig fields), activate, nproc."""
    p = dict(ctx.params)
    if "model" not in p:
        raise InputError("train_head job needs a 'model' parameter")
    cfg = _train_config(p)
    device = str(p.get("device", "auto"))
    return train_head(
        ctx.store,
        ctx.workspace,
        frozen_model(ctx.store, p["model"], device),
        cfg,
        activate=p.get("activate", False),
        nproc=int(p.get("nproc", 1)),
        device=device,
        evaluate=bool(p.get("evaluate", True)),
        progress=ctx.progress,
        should_stop=ctx.cancelled,
        job_id=ctx.job_id,
    )


def _train_config(params: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - names - set(TRAIN_PARAM_KEYS))
    if unknown:
        raise InputError(
            f"unknown training parameter(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(names | set(TRAIN_PARAM_KEYS)))}"
        )
    return TrainConfig(**{k: v for k, v in params.items() if k in names})


def check_training_request(store: Any, model: str | int, head: str = "stats") -> dict[str, int]:
    """Cheap pre-check before queueing a training job: InputError when nothing could train."""
    HEADS.get(head)
    with store.read() as s:
        row = catalog.get_model(s, model)
        name = row.name
        n_samples = s.scalar(
            select(func.count(SyntheticSample.id)).where(SyntheticSample.status == "accepted")
        )
        n_flags = len(flags_for_training(s, row.id))
    if not n_samples and not n_flags:
        raise InputError(
            f"no usable training samples for model {name!r}: accept some synthetic samples "
            "or flag regions on training images first (flags on eval/heldout images never train)"
        )
    return {"accepted_samples": int(n_samples or 0), "flags": n_flags}


def enqueue_training(store: Any, params: dict[str, Any]) -> int:
    """Validate a training request and queue it; returns the job id (no job on a bad request).

    A request identical to a queued or running one is merged into it (its id is returned).
    """
    p = dict(params)
    if "model" not in p:
        raise InputError("a training request needs a 'model'")
    cfg = _train_config(p)
    rule = p.get("activate", False)
    if not isinstance(rule, bool):
        ACTIVATION_RULES.get(str(rule))
    check_training_request(store, p["model"], cfg.head)

    def write(s: Any) -> int:
        # two quick clicks (or a client retry) must not train two identical heads: an identical
        # request already queued or running answers with that job (same transaction, no race)
        same = s.scalar(
            select(Job.id)
            .where(
                Job.kind == "train_head",
                Job.status.in_(("queued", "running")),
                Job.params_json == dump_json(p),
            )
            .order_by(Job.id)
            .limit(1)
        )
        return int(same) if same is not None else enqueue_job(s, "train_head", p).id

    return store.transact(write)


# --- synthetic samples ---------------------------------------------------------------------------

MAX_GENERATE = 500


def enqueue_synth_generate(
    store: Any, n: Any, params: dict[str, Any] | None = None, *, hint: str = ""
) -> int:
    """Queue a ``synth_generate`` job for ``n`` samples; the job id (refused before queueing when
    ``n`` is out of range, the named dataset is not synthetic or, with none named, no synthetic
    dataset exists: that message ends with ``hint``, the caller's words on what to do)."""
    if isinstance(n, bool) or not isinstance(n, int | float) or int(n) != n:
        raise InputError(f"number of samples to generate: expected 1..{MAX_GENERATE}, got {n!r}")
    if not 1 <= int(n) <= MAX_GENERATE:
        raise InputError(f"number of samples to generate: expected 1..{MAX_GENERATE}, got {n!r}")
    payload = {"n": int(n), **(params or {})}
    with store.read() as s:  # refused here, not as a failed job after the fact
        if not payload.get("dataset") and not catalog.list_datasets(s, role="synthetic"):
            raise InputError(
                "no synthetic dataset is registered to add generated samples to"
                + (f". {hint}" if hint else "")
            )
        _synthetic_dataset(s, payload.get("dataset"))
    return store.transact(lambda s: int(enqueue_job(s, "synth_generate", payload).id))


def _synthetic_dataset(s: Any, name: str | None) -> Any:
    if name:
        ds = catalog.get_dataset(s, name)
        if ds.role != "synthetic":
            raise InputError(f"dataset {name!r} has role {ds.role!r}; expected a synthetic dataset")
        return ds
    found = catalog.list_datasets(s, role="synthetic")
    if not found:
        raise InputError("no synthetic dataset is registered to add generated samples to")
    # unnamed: the dataset being curated, i.e. the one holding the newest sample
    newest = s.scalar(
        select(SyntheticSample.dataset_id).order_by(SyntheticSample.id.desc()).limit(1)
    )
    return next((d for d in found if d.id == newest), found[0])


@JOB_KINDS.register("synth_generate")
def synth_generate_job(ctx: JobContext) -> dict[str, Any]:
    """Propose ``n`` new samples for a synthetic dataset (``training.synth_samples``).

    params: ``n`` (1..500), optional ``dataset`` (a synthetic dataset name), ``seed``,
    ``status`` (default ``proposed``). A dataset carrying source specs (CamVid x COCO, a dash-cam
    folder ...) draws from them; one without (the built-in world) gets fresh procedural scenes.
    New samples are stored with their render cache written, ready to curate. A folder source's
    frames are labelled by its model (built once for the job).
    """
    n = ctx.params.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_GENERATE:
        raise InputError(f"synth_generate: n must be an integer in 1..{MAX_GENERATE}, got {n!r}")
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
        predictor_for=PredictorPool(ctx.store, max_models=1).get,
    )
    return {"samples": made, "dataset": name}


# --- evaluation ------------------------------------------------------------------------------------

POSTHOC_METHODS = ("msp", "maxlogit", "entropy", "energy", "rba")


def enqueue_evaluate(store: Any, model: str) -> int:
    """Queue an ``evaluate`` job for a registered model; the job id (refused before queueing
    when the model is unknown or no eval dataset is registered)."""
    with store.read() as s:
        catalog.get_model(s, model)  # unknown model -> InputError naming the known ones
        if not catalog.list_datasets(s, role="eval"):
            raise InputError("no evaluation dataset is registered (see `anomseg add-dataset`)")
    return store.transact(lambda s: int(enqueue_job(s, "evaluate", {"model": model}).id))


# the evaluate job's prediction cache: room for its probe (a 20x512x1024 ERFNet output is 40 MB)
EVAL_CACHE_BYTES = 128 << 20


@JOB_KINDS.register("evaluate")
def evaluate_job(ctx: JobContext) -> dict[str, Any]:
    """Evaluate a model's post-hoc methods (and its ready heads) on every eval dataset.

    params: ``model``; optional ``methods`` (list of post-hoc specs), ``datasets`` (names),
    ``heads`` (bool, default True). One forward per image for all methods, the protocol of
    ``anomseg.evaluate`` (label resized nearest to the scoring size, images without anomaly
    pixels skipped); results, with per-image figures, go to the leaderboard.
    """
    model = ctx.params.get("model")
    if not model:
        raise InputError("evaluate job needs a 'model' parameter")
    spec = read_spec(ctx.store, model)
    model_id, model_sha = spec.id, spec.checkpoint_sha256 or ""
    # every image is forwarded once and scored at once: only the per-dataset probe is reused,
    # so the cache holds ~2 predictions, not 1 GiB of outputs nobody reads again
    predictor = build_predictor(spec, cache=PredictionCache(EVAL_CACHE_BYTES))
    with ctx.store.read() as s:
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
    extra = _head_specs(heads)
    methods = [*(ctx.params.get("methods") or POSTHOC_METHODS), *extra]
    total, done_methods = len(sets), set()
    for k, (ds_id, ds_name, root, remap) in enumerate(sets):
        ds = BenchmarkDataset(
            Path(root), remap={int(a): int(b) for a, b in remap.items()} if remap else "auto"
        )
        if not len(ds):
            continue
        # methods this model cannot feed (rba on a pixel model) are left out, not failed;
        # the probe is the first image's forward, which the evaluation reuses from the cache
        # (given as its file: the dataset pass names images by their file's hash too)
        probe = predictor.predict(ds.samples[0].image_path)
        usable = [
            m for m in methods
            if scoring.get_scorer(scoring.parse_method(m, extra)[0], extra).applicable(probe)
        ]  # fmt: skip

        def on_image(_name: str, done: int, n: int, k: int = k, ds_name: str = ds_name):
            ctx.progress((k + done / max(n, 1)) / total, f"{model} on {ds_name}: {done}/{n}")

        if ctx.nproc > 1:  # the worker's --nproc: images sharded, metrics merged exactly
            setup = functools.partial(_eval_rank_setup, spec, heads)
            rows, _info = evaluate_nproc(ctx.nproc, setup, [ds], usable, on_image=on_image)
        else:
            rows = evaluate(predictor, [ds], usable, progress=False, on_image=on_image, extra=extra)
        attach_protocol(
            rows, [ds], getattr(predictor, "input_size", None), checkpoint_sha256=model_sha
        )
        # one transaction per dataset: its rows (figures, per-image values, card) or none
        stored = ctx.store.transact(
            lambda s, rows=rows, ds=ds, ds_id=ds_id: [
                r.method for r in results.record_eval_rows(s, model_id, rows, {ds.name: ds_id})
            ]
        )
        done_methods.update(stored)
    ctx.progress(
        1.0,
        f"evaluated {_counted(len(done_methods), 'method')} on {_counted(total, 'dataset')}",
    )
    return {"datasets": total, "methods": sorted(done_methods)}


def _head_specs(heads: list[tuple[int, str, str]]) -> dict[str, Any]:
    """Scorer specs of the store's ready heads ``(version, kind, checkpoint path)``."""
    refs = {str(v): HeadRef(Path(path), kind=kind) for v, kind, path in heads}
    return HeadScorers(refs.__getitem__).specs(head_method(v) for v, _, _ in heads)


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun if n == 1 else noun + 's'}"


def _eval_rank_setup(
    spec: Any, heads: list[tuple[int, str, str]], rank: int
) -> tuple[Any, dict[str, Any]]:
    """One rank of a multi-process evaluate job: the model's predictor and its ready heads."""
    device = rank_device("cuda" if torch.cuda.is_available() else "cpu", rank)
    return build_predictor(spec, device), _head_specs(heads)
