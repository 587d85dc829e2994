"""Head training: BCE-with-logits (pos_weight, per-pixel weights), AdamW, balanced pixel batches.

``train_pixels`` is the pure core (a ``PixelSet`` in, a trained head out); it runs in one process
or as one rank of DistributedDataParallel (``training.ddp``). ``train_head`` is the store-facing
run: training set from the store, cached features, training, checkpoint (temporary file then
rename), a new ``HeadVersion``, evaluation on every eval dataset, activation by request or rule.

DDP equivalence (why a 2-process run matches a 1-process run): every rank draws the same seeded
global batch and takes ``batch[rank::world]`` (equal shares); each rank's loss is the *mean* of
its weighted per-pixel losses, and DDP averages gradients, so the averaged gradient is exactly
the gradient of the global batch's mean loss. The weights start identical (same seed, and DDP
broadcasts rank 0's). Only dropout differs (each rank draws its own masks), so the equivalence
test disables it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.errors import AnomsegError, InputError
from anomseg.models.heads import Head, bilinear_corners, create_head, save_head
from anomseg.registry import Registry
from training.config import TrainConfig  # the one source of training defaults
from training.dataset import BalancedSampler, PixelSet
from training.recipes import RECIPES, ImageSampler

Progress = Callable[[float, str], None]


class Cancelled(AnomsegError):
    """Training was cancelled (by the job's cancel flag)."""


@dataclass
class TrainResult:
    """A trained head and what happened while training it."""

    head: Head
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)  # mean loss per epoch


class PixelModule(nn.Module):
    """Wraps a head so DDP sees one ``forward`` over sampled pixels."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.head = head

    def forward(
        self,
        stats: torch.Tensor,
        cell_feats: torch.Tensor | None = None,
        corner_idx: torch.Tensor | None = None,
        corner_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head.forward_pixels(stats, cell_feats, corner_idx, corner_w)


def build_head(config: TrainConfig, feat_dim: int | None) -> Head:
    """A freshly initialised head for ``config`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    if config.head == "features":
        if feat_dim is None:
            raise InputError(
                "the feature-enriched head needs patch features, but the training set has none; "
                "use --head stats for pixel models"
            )
        return create_head("features", feat_dim=feat_dim, dropout=config.dropout)
    return create_head(config.head, dropout=config.dropout)


class BatchMaker:
    """Turns global-batch indices into the tensors a head's ``forward_pixels`` takes."""

    def __init__(self, pixels: PixelSet, device: torch.device) -> None:
        self.px = pixels
        self.device = device
        self.flat = None
        if pixels.features is not None:
            n, d, h, w = pixels.features.shape
            # (n * h * w, D) rows: a corner gather is one index_select
            self.flat = pixels.features.permute(0, 2, 3, 1).reshape(n * h * w, d)
            self.grid = (h, w)

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(stats, target, weight, cell features, corner indices, corner weights) of a batch."""
        px = self.px
        stats = px.stats[idx].float()
        target, weight = px.target[idx], px.weight[idx]
        feats = ci = cw = None
        if self.flat is not None:
            W = px.size[1]
            pos = px.pos[idx]
            ci, cw = bilinear_corners(pos // W, pos % W, px.size, self.grid)
            ci = ci + (px.image[idx] * (self.grid[0] * self.grid[1])).unsqueeze(1)
            # pixels share grid cells (16x16 patches): gather and project each cell once
            cells, ci = torch.unique(ci, return_inverse=True)
            feats = self.flat[cells].float().to(self.device)
            ci, cw = ci.to(self.device), cw.to(self.device)
        dev = self.device
        return stats.to(dev), target.to(dev), weight.to(dev), feats, ci, cw


def pixel_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    """Mean over pixels of weight * BCE-with-logits(pos_weight)."""
    pw = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    return (per * weight).mean()


def train_pixels(
    pixels: PixelSet,
    config: TrainConfig,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    rank: int = 0,
    world: int = 1,
    device: str | torch.device = "cpu",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainResult:
    """Train a fresh head on ``pixels``; in DDP each rank calls this with its rank and ``wrap``."""
    before = torch.get_num_threads()
    threads = config.threads or (1 if config.head == "stats" else before)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        return _train(pixels, config, progress, should_stop, rank, world, device, wrap)
    finally:
        if threads != before:
            torch.set_num_threads(before)


def _train(
    pixels: PixelSet,
    config: TrainConfig,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    rank: int,
    world: int,
    device: str | torch.device,
    wrap: Callable[[nn.Module], nn.Module] | None,
) -> TrainResult:
    device = torch.device(device)
    head = build_head(config, pixels.feat_dim).to(device)
    module: nn.Module = PixelModule(head)
    if wrap is not None:
        module = wrap(module)
    # dropout masks: own stream per rank (the init above used the shared seed)
    torch.manual_seed(config.seed * 7919 + 1 + rank)
    opt = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    recipe = RECIPES.get(config.recipe)
    if recipe.sampler == "images":
        sampler: Any = ImageSampler(pixels.image, config.seed)
    else:
        sampler = BalancedSampler(
            pixels.target,
            config.batch_pixels,
            config.seed,
            config.steps_per_epoch,
            world,
            flagged=pixels.flagged,
            flag_share=config.flag_share,
            min_steps=len(pixels.image_hashes),
        )
    make = BatchMaker(pixels, device)
    total = config.epochs * sampler.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: recipe.lr_factor(s, total))
    history: list[float] = []
    t0 = last = time.perf_counter()
    step = 0
    module.train()
    for epoch in range(config.epochs):
        running, count = 0.0, 0
        for batch in sampler.epoch(epoch):
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            local = batch[rank::world]
            stats, target, weight, feats, ci, cw = make(local)
            loss = pixel_loss(module(stats, feats, ci, cw), target, weight, config.pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            running += float(loss.detach())
            count += 1
            step += 1
            now = time.perf_counter()
            if progress is not None and (now - last > 0.5 or step == total):
                last = now
                progress(
                    step / total, f"epoch {epoch + 1}/{config.epochs} loss {running / count:.4f}"
                )
        history.append(running / max(count, 1))
    head.eval()
    metrics = {
        "final_loss": history[-1],
        "steps": total,
        "steps_per_epoch": sampler.steps,
        "batch_pixels": sampler.batch,
        "seconds": round(time.perf_counter() - t0, 3),
        "positives": pixels.n_pos,
        "negatives": pixels.n_neg,
        "world_size": world,
    }
    return TrainResult(head=head.cpu(), metrics=metrics, history=history)


# --- the store-facing run ------------------------------------------------------------------------

# rule name -> f(new head's eval summary, active head's metrics or None) -> activate?
ACTIVATION_RULES: Registry[Callable[[dict[str, Any], dict[str, Any] | None], bool]] = Registry(
    "activation rule"
)
ACTIVATION_RULES.register("never", lambda new, old: False)
ACTIVATION_RULES.register("always", lambda new, old: True)


@ACTIVATION_RULES.register("auprc_improves")
def _auprc_improves(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Activate when the mean AuPRC over eval datasets beats the active head's (or none is)."""
    mean = new.get("eval_mean_auprc")
    if mean is None:
        return False
    prev = (old or {}).get("eval_mean_auprc")
    return prev is None or float(mean) > float(prev)


@ACTIVATION_RULES.register("auprc_and_fpr95_improve")
def _auprc_and_fpr95_improve(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Activate when the mean AuPRC beats the active head's and the mean FPR95 is no worse.

    AuPRC alone once activated a head whose FPR95 went from 10.4 to 41.0 %: a researcher reads
    both, so the rule does too.
    """
    if not _auprc_improves(new, old):
        return False
    fpr, prev = new.get("eval_mean_fpr95"), (old or {}).get("eval_mean_fpr95")
    if prev is None:
        return True
    return fpr is not None and float(fpr) <= float(prev)


@dataclass
class FrozenModel:
    """A registered model, built lazily: training from a warm cache never loads it."""

    name: str
    architecture: str
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    input_size: tuple[int, int] | None
    options: dict[str, Any]
    device: str = "cpu"
    predictor: Any = None

    @classmethod
    def from_row(cls, row: Any, device: str = "cpu", predictor: Any = None) -> FrozenModel:
        """The frozen model of a store ``Model`` row (a given predictor fixes the input size)."""
        frozen = cls(
            row.name,
            row.architecture,
            row.checkpoint_path,
            row.checkpoint_sha256,
            (row.input_h, row.input_w) if row.input_h and row.input_w else None,
            dict((row.meta or {}).get("options") or {}),
            device,
            predictor,
        )
        if predictor is not None and frozen.input_size is None:
            frozen.input_size = tuple(predictor.input_size)
        return frozen

    def get_predictor(self) -> Any:
        """The Predictor (model built on first use)."""
        if self.predictor is None:
            from anomseg.models import create_model
            from anomseg.predict import Predictor

            # as db.workspace.Workspace.load_model: JSON lists back to tuples, the stored input
            # size passed to the builder unless the options name one
            opts = {k: tuple(v) if isinstance(v, list) else v for k, v in self.options.items()}
            if self.input_size is not None and "input_size" not in opts:
                opts.setdefault("input_size", tuple(self.input_size))
                if not _accepts(self.architecture, "input_size"):
                    opts.pop("input_size")
            model = create_model(self.architecture, checkpoint=self.checkpoint_path, **opts)
            self.predictor = Predictor(model, device=self.device, input_size=self.input_size)
        return self.predictor

    @property
    def size(self) -> tuple[int, int]:
        """The input (= scoring) size."""
        if self.input_size is not None:
            return self.input_size
        return tuple(self.get_predictor().input_size)

    @property
    def cache_key(self) -> str:
        """The checkpoint hash, or the weights' fingerprint when there is no checkpoint."""
        return self.checkpoint_sha256 or self.get_predictor().model_key.replace("@", "-")

    def predict(self, rgb: Any) -> Any:
        """One Prediction."""
        return self.get_predictor().predict(rgb)


def _accepts(architecture: str, option: str) -> bool:
    """Whether a registered model builder takes a keyword argument."""
    import inspect

    from anomseg.models.registry import get_model_entry

    params = inspect.signature(get_model_entry(architecture).builder).parameters
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _eval_datasets(session: Any) -> list[dict[str, Any]]:
    from db.catalog import list_datasets

    return [
        {"id": d.id, "name": d.name, "root": d.root, "remap": d.label_remap}
        for d in list_datasets(session, role="eval")
    ]


def train_head(
    store: Any,
    workspace: str | Any,
    model: str | int,
    config: TrainConfig,
    *,
    activate: bool | str = False,
    nproc: int = 1,
    device: str = "auto",
    evaluate: bool = True,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_id: int | None = None,
    predictor: Any = None,
    render_sample: Any = None,
) -> dict[str, Any]:
    """Train a new head version of ``model`` from the store; returns a summary dict.

    Order (so a failure leaves nothing half-done): read the training set (InputError when
    unusable, before any row is written), create the HeadVersion (status 'training'), train, write
    the checkpoint (temporary file + rename), mark it ready, evaluate on every eval dataset
    (EvalResult rows, method ``head:<version>``), then activate if ``activate`` is True or names
    a rule of ``ACTIVATION_RULES`` that agrees. Any exception marks the version failed; the
    active head changes only in the final step.
    """
    from pathlib import Path

    from anomseg.predict import resolve_device
    from db.catalog import get_model
    from db.heads import (
        active_head,
        create_head_version,
        fail_head_version,
        finish_head_version,
    )
    from training.dataset import build_pixel_set, training_images_from_store
    from training.features import FeatureCache

    if config.head == "oe":  # outlier exposure fine-tunes the model's own layers instead
        from training.outlier_exposure import OEConfig, train_oe_version

        return train_oe_version(
            store, workspace, model, OEConfig.from_train_config(config), activate=activate,
            device=device, evaluate=evaluate, progress=progress, should_stop=should_stop,
            job_id=job_id, predictor=predictor, render_sample=render_sample,
        )  # fmt: skip

    device = str(resolve_device(device))
    rule = ("always" if activate else "never") if isinstance(activate, bool) else activate
    rule_fn = ACTIVATION_RULES.get(rule)
    report = progress or (lambda f, m: None)
    workspace = Path(workspace).resolve()  # stored head paths must work from any folder

    with store.read() as s:
        row = get_model(s, model)
        frozen = FrozenModel.from_row(row, device, predictor)
        model_id = row.id
        images, notes = training_images_from_store(s, model_id, render_sample=render_sample)
        parent = active_head(s, model_id)
        parent_id = parent.id if parent is not None else None
        eval_sets = _eval_datasets(s) if evaluate else []

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
            from training.ddp import train_ddp

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
            workspace / "heads" / _safe_name(frozen.name) / f"v{version}-{config.head}.safetensors"
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


def evaluate_and_record(
    store: Any,
    head: Any,
    frozen: FrozenModel,
    eval_sets: list[dict[str, Any]],
    *,
    model_id: int,
    head_id: int,
    version: int,
    kind: str,
    train_metrics: dict[str, Any],
    rule: Any,
    rule_fn: Callable[..., bool],
    report: Progress,
    should_stop: Callable[[], bool] | None,
    snapshot_counts: Any,
) -> dict[str, Any]:
    """Evaluate a trained version on every eval set, store its rows and metrics, apply the
    activation rule: the one post-training path of every learned kind (heads, outlier exposure)."""
    from db.heads import activate_head, active_head, get_head, set_head_metrics
    from db.results import record_eval_rows

    method = f"head:{version}"
    evals, rows = [], []
    for i, ds in enumerate(eval_sets):
        if should_stop is not None and should_stop():
            raise Cancelled("training cancelled")
        report(0.8 + 0.2 * i / len(eval_sets), f"evaluating {method} on {ds['name']}")

        def on_image(_ds: str, done: int, n: int, i: int = i) -> None:
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            report(0.8 + 0.2 * (i + done / max(n, 1)) / len(eval_sets),
                   f"evaluating {method} on {_ds}: {done}/{n}")  # fmt: skip

        entry, row = evaluate_version(head, frozen, ds, method, on_image)
        evals.append(entry)
        rows.extend([row] if row is not None else [])
    summary: dict[str, Any] = {"train": train_metrics, "eval": {e["dataset"]: e for e in evals}}
    for key in ("auprc", "fpr95"):
        vals = [e["metrics"][key] for e in evals if key in e.get("metrics", {})]
        summary[f"eval_mean_{key}"] = sum(vals) / len(vals) if vals else None
    with store.session() as s:
        # per-image values included: the leaderboard's worst images of a version read them
        ids = {e["dataset"]: e["dataset_id"] for e in evals}
        record_eval_rows(s, model_id, rows, ids, params={"kind": kind, "head_id": head_id})
        set_head_metrics(s, head_id, summary)
        old = active_head(s, model_id)
        if rule_fn(summary, old.metrics if old is not None else None):
            activate_head(s, head_id)
        final = get_head(s, head_id)
        return {
            "head_id": head_id,
            "version": version,
            "kind": kind,
            "model": frozen.name,
            "checkpoint": final.checkpoint_path,
            "active": bool(final.active),
            "rule": rule,
            "metrics": summary,
            "snapshot_counts": snapshot_counts,
        }


def _safe_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "model"


def evaluate_version(
    head: Head,
    frozen: FrozenModel,
    ds: dict[str, Any],
    method: str,
    on_image: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, Any], Any]:
    """(summary entry, ``EvalRow`` or None) of a trained version on one eval dataset: scored by
    ``anomseg.evaluate`` with the head as the scorer ``method`` (the protocol of every other
    result), its protocol card attached. A dataset that cannot be read gives an entry holding
    its error and no row, so one broken set does not fail the version. ``frozen`` is anything
    with ``get_predictor()`` and ``checkpoint_sha256`` (a ``FrozenModel``)."""
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import attach_protocol, evaluate
    from anomseg.models.heads import head_spec

    t0 = time.perf_counter()
    entry: dict[str, Any] = {"dataset": ds["name"], "dataset_id": ds["id"]}
    try:
        remap = {int(k): int(v) for k, v in ds["remap"].items()} if ds.get("remap") else "auto"
        bench = BenchmarkDataset(ds["root"], remap=remap, name=ds["name"])
        predictor = frozen.get_predictor()
        (row,) = evaluate(
            predictor, [bench], [method], progress=False, on_image=on_image,
            extra={method: head_spec(method, head)},
        )  # fmt: skip
        attach_protocol(
            [row], [bench], getattr(predictor, "input_size", None),
            checkpoint_sha256=frozen.checkpoint_sha256 or "",
        )  # fmt: skip
    except Cancelled:
        raise
    except AnomsegError as exc:
        entry.update(error=str(exc), metrics={}, n_images=0, seconds=time.perf_counter() - t0)
        return entry, None
    entry.update(
        metrics=dict(row.metrics) if row.n_images else {},
        n_images=row.n_images,
        n_skipped=row.n_skipped,
        protocol=row.protocol,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return entry, row
