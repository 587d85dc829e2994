"""A trained version's tail, shared by every learned kind (heads, outlier exposure): evaluate it
on every eval dataset through ``anomseg.evaluate`` (the head as a scorer), record the rows with
their per-image values (``db.results.record_eval_rows``), store its metrics and apply the
activation rule (``ACTIVATION_RULES``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from anomseg.data.benchmark import BenchmarkDataset
from anomseg.errors import AnomsegError
from anomseg.evaluate import attach_protocol, evaluate
from anomseg.models.heads import Head, head_spec
from anomseg.registry import Registry
from db.catalog import list_datasets
from db.heads import activate_head, active_head, get_head, set_head_metrics
from db.results import record_eval_rows
from training.fit import Cancelled, Progress
from training.frozen import FrozenModel

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


def eval_datasets(session: Any) -> list[dict[str, Any]]:
    """The eval datasets a new version is scored on (plain dicts: valid after the session)."""
    return [
        {"id": d.id, "name": d.name, "root": d.root, "remap": d.label_remap}
        for d in list_datasets(session, role="eval")
    ]


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


def safe_name(name: str) -> str:
    """A model name as a folder name."""
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
