"""The Retrain tab: what the next training set holds, queueing a head training, and the head
versions (history, activate, roll back)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from anomseg.errors import InputError
from dashboard.services.context import ServiceContext
from dashboard.services.formatting import round_pct
from dashboard.wording import REGISTER_TRAINING_HINT
from db import catalog as dbcatalog
from db import flags as dbflags
from db import heads as dbheads
from db import pastes as dbpastes
from db import results as dbresults
from training.trainer import TrainConfig
from workbench.jobs import enqueue_training


class RetrainService:
    """Head training requests and head versions of a model."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def training_summary(self, model: str) -> str:
        """Markdown: what the next training set of a model's head holds."""
        with self.store.read() as s:
            m = dbcatalog.get_model(s, model)
            counts = dbpastes.sample_counts(s)
            fc = dbflags.flag_counts(s, m.id)
        lines = [
            "| source | trains | stays annotation-only |",
            "| --- | ---: | ---: |",
            f"| accepted synthetic samples | **{counts.get('accepted', 0)}** | "
            f"({counts.get('proposed', 0)} proposed, {counts.get('rejected', 0)} rejected) |",
        ]
        for kind, label in (
            ("false_positive", "false-positive flags (negatives, extra weight)"),
            ("false_negative", "false-negative flags (positives)"),
            ("ignore", "ignore flags (pixels dropped)"),
        ):
            c = fc.get(kind, {})
            lines.append(
                f"| {label} | **{c.get('train', 0)}** ({c.get('train_pixels', 0)} px) | "
                f"{c.get('eval_only', 0)} on eval images |"
            )
        return "\n".join(lines)

    def queue_retrain(
        self,
        model: str,
        head: str = "stats",
        epochs: int | None = None,
        lr: float | None = None,
        fp_weight: float | None = None,
        activate: bool | str = True,
        extra: dict[str, Any] | None = None,
        recipe: str | None = None,
        head_geometry: str | None = None,
    ) -> int:
        """Validate and queue a head-training job; returns its id (no job on a bad request).

        Options left at None take training.trainer.TrainConfig's defaults (as `anomseg train`);
        the learning rate and weight decay default to the recipe's.
        """
        d = TrainConfig(
            recipe=recipe or TrainConfig.recipe,
            head_geometry=head_geometry or TrainConfig.head_geometry,
        )  # validates both names before anything is queued
        epochs = d.epochs if epochs is None else epochs
        lr = d.lr if lr is None else lr
        fp_weight = d.fp_weight if fp_weight is None else fp_weight
        params = {
            "model": model,
            "head": head,
            "epochs": int(epochs),
            "lr": float(lr),
            "recipe": d.recipe,
            "head_geometry": d.head_geometry,
            "fp_weight": float(fp_weight),
            "activate": activate,
            **(extra or {}),
        }
        try:
            return enqueue_training(self.store, params)
        except InputError as exc:
            with self.store.read() as s:
                has_training_sets = any(
                    dbcatalog.list_datasets(s, role=r) for r in ("train", "synthetic")
                )
            if has_training_sets:
                raise
            raise InputError(f"{exc}. {REGISTER_TRAINING_HINT}") from None

    def head_history(self, model: str):
        """A model's head versions, newest first, with their evaluation figures."""
        with self.store.read() as s:
            m = dbcatalog.get_model(s, model)
            heads = dbheads.list_head_versions(s, m.id)
            board = dbresults.leaderboard(s, model_ids=[m.id])
            version_of = {h.id: h.version for h in heads}  # a parent is a version of this model
            rows = []
            for h in heads:
                mine = [r for r in board if r["method"] == f"head:{h.version}"]
                hp = h.hparams or {}
                row = {
                    "version": h.version,
                    "kind": h.kind,
                    "status": h.status,
                    "active": "●" if h.active else "",
                    "parent": "" if h.parent_id is None else version_of.get(h.parent_id, "?"),
                    "recipe": hp.get("recipe", "default"),  # versions before recipes: ours
                    "geometry": hp.get("head_geometry", "stitched"),
                    "epochs": hp.get("epochs"),
                    "lr": hp.get("lr"),
                    "created": h.created.strftime("%Y-%m-%d %H:%M"),
                }
                for r in mine:
                    row[f"AuPRC % {r['dataset']}"] = round_pct(r.get("auprc"))
                    row[f"FPR95 % {r['dataset']}"] = round_pct(r.get("fpr95"))
                rows.append(row)
        return pd.DataFrame(rows)

    def head_versions(self, model: str, ready_only: bool = True) -> list[int]:
        """Version numbers of a model's heads, newest first."""
        with self.store.read() as s:
            m = dbcatalog.get_model(s, model)
            return [
                h.version
                for h in dbheads.list_head_versions(s, m.id)
                if not ready_only or h.status == "ready"
            ]

    def activate_head(self, model: str, version: int) -> None:
        """Make one head version the model's active head."""

        def write(s: Any) -> None:
            m = dbcatalog.get_model(s, model)
            dbheads.activate_head(s, dbheads.get_head_version(s, m.id, int(version)).id)

        self.store.transact(write)

    def rollback_head(self, model: str) -> int:
        """Activate the parent of the active head; returns the version now active."""

        def write(s: Any) -> int:
            m = dbcatalog.get_model(s, model)
            return int(dbheads.rollback_head(s, m.id).version)

        return self.store.transact(write)
