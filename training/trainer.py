"""The store-facing head training run: ``train_head``.

Training set from the store, cached features, ``training.fit.train_pixels`` (one process, or
DDP ranks through ``training.ddp``), checkpoint (temporary file then rename), a new
``HeadVersion``, evaluation on every eval dataset, activation by request or rule. The frozen
model it reads features from is handed in (``training.frozen.FrozenModel``), built by the
application layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomseg.models.heads import save_head
from anomseg.predict import resolve_device
from db.heads import active_head, create_head_version, fail_head_version, finish_head_version
from training.config import TrainConfig  # the one source of training defaults
from training.dataset import build_pixel_set, training_images_from_store
from training.ddp import train_ddp
from training.features import FeatureCache
from training.fit import Progress, train_pixels
from training.frozen import FrozenModel
from training.outlier_exposure import OEConfig, train_oe_version
from training.recipes import RECIPES
from training.versions import (
    ACTIVATION_RULES,
    eval_datasets,
    evaluate_and_record,
    safe_name,
)


def train_head(
    store: Any,
    workspace: str | Any,
    frozen: FrozenModel,
    config: TrainConfig,
    *,
    activate: bool | str = False,
    nproc: int = 1,
    device: str = "auto",
    evaluate: bool = True,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_id: int | None = None,
    render_sample: Any = None,
) -> dict[str, Any]:
    """Train a new head version of the registered model ``frozen`` from the store; returns a
    summary dict. ``frozen`` comes from the application layer (``workbench.models.frozen_model``)
    and is built only when a feature is not cached.

    Order (so a failure leaves nothing half-done): read the training set (InputError when
    unusable, before any row is written), create the HeadVersion (status 'training'), train, write
    the checkpoint (temporary file + rename), mark it ready, evaluate on every eval dataset
    (EvalResult rows, method ``head:<version>``), then activate if ``activate`` is True or names
    a rule of ``ACTIVATION_RULES`` that agrees. Any exception marks the version failed; the
    active head changes only in the final step.
    """
    if config.head == "oe":  # outlier exposure fine-tunes the model's own layers instead
        return train_oe_version(
            store, workspace, frozen, OEConfig.from_train_config(config), activate=activate,
            device=device, evaluate=evaluate, progress=progress, should_stop=should_stop,
            job_id=job_id, render_sample=render_sample,
        )  # fmt: skip

    device = str(resolve_device(device))
    rule = ("always" if activate else "never") if isinstance(activate, bool) else activate
    rule_fn = ACTIVATION_RULES.get(rule)
    report = progress or (lambda f, m: None)
    workspace = Path(workspace).resolve()  # stored head paths must work from any folder

    model_id = frozen.model_id
    with store.read() as s:
        images, notes = training_images_from_store(s, model_id, render_sample=render_sample)
        parent = active_head(s, model_id)
        parent_id = parent.id if parent is not None else None
        eval_sets = eval_datasets(s) if evaluate else []

    def sub(lo: float, hi: float) -> Progress:
        return lambda f, m: report(lo + (hi - lo) * f, m)

    cache = FeatureCache.for_workspace(workspace, config.cache_stride)
    pixels, snapshot = build_pixel_set(
        images,
        cache,
        frozen.cache_key,
        frozen.size,
        frozen.predict,
        fp_weight=config.fp_weight,
        fn_weight=config.fn_weight,
        need_features=config.head == "features",
        void_as_normal=RECIPES.get(config.recipe).void_as_normal(config.head),
        progress=sub(0.0, 0.3),
    )
    snap = snapshot.to_dict()
    snap["notes"] = notes
    snap["cache"] = {"hits": cache.counters.hits, "computed": cache.counters.misses}

    hparams = {**config.to_dict(), "nproc": nproc, "input_size": list(frozen.size)}
    with store.session() as s:
        hv = create_head_version(
            s,
            model_id,
            config.head,
            hparams=hparams,
            parent_id=parent_id,
            job_id=job_id,
            snapshot=snap,
        )
        head_id, version = hv.id, hv.version
    try:
        train_progress = sub(0.3, 0.8)
        if nproc > 1:
            result = train_ddp(
                pixels,
                config,
                nproc,
                progress=train_progress,
                should_stop=should_stop,
                device=device,
            )
        else:
            result = train_pixels(
                pixels, config, progress=train_progress, should_stop=should_stop, device=device
            )
        result.head.geometry = config.head_geometry  # saved in its metadata, used when scoring
        ckpt = (
            workspace / "heads" / safe_name(frozen.name) / f"v{version}-{config.head}.safetensors"
        )
        digest = save_head(
            result.head,
            ckpt,
            model=frozen.name,
            model_sha256=frozen.checkpoint_sha256,
            version=version,
        )
        train_metrics = {**result.metrics, "history": result.history}
        with store.session() as s:
            finish_head_version(
                s,
                head_id,
                checkpoint_path=str(ckpt),
                checkpoint_sha256=digest,
                metrics={"train": train_metrics},
            )
        out = evaluate_and_record(
            store, result.head, frozen, eval_sets, model_id=model_id, head_id=head_id,
            version=version, kind=config.head, train_metrics=train_metrics, rule=rule,
            rule_fn=rule_fn, report=report, should_stop=should_stop,
            snapshot_counts=snap["counts"],
        )  # fmt: skip
    except BaseException:
        with store.session() as s:
            fail_head_version(s, head_id)
        raise
    report(1.0, f"head:{version} ready{' and active' if out['active'] else ''}")
    return out
