"""The Leaderboard tab: latest results per model x method x dataset, a result's worst images,
protocol differences, PR curves, head versions compared, and queueing an evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomseg import protocol
from anomseg.cache import LRU
from anomseg.errors import InputError
from anomseg.head_methods import head_version
from anomseg.metrics import AnomalyMetrics
from dashboard.services.catalog import CatalogService
from dashboard.services.context import ServiceContext
from dashboard.services.formatting import finite, pct, round_pct
from dashboard.services.scores import ScoreService
from dashboard.wording import method_label
from db import catalog as dbcatalog
from db import heads as dbheads
from db import results as dbresults
from workbench.jobs import enqueue_evaluate


class LeaderboardService:
    """Stored evaluation results, ranked and drilled into."""

    def __init__(self, ctx: ServiceContext, catalog: CatalogService, scores: ScoreService) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.catalog = catalog
        self.scores = scores
        self.curves = LRU(max_items=256)  # PR curves per (model, methods, dataset, images)

    def leaderboard_frame(
        self,
        models: Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
        method_filter: str = "",
    ):
        """Latest result per model x method x dataset, metrics in percent."""
        with self.store.read() as s:
            rows = dbresults.leaderboard(s)
            model_meta = {m.name: (m.meta or {}) for m in dbcatalog.list_models(s)}
            # a head row says how its head was trained and applied (recipe · geometry)
            setups = {
                (m.name, f"head:{h.version}"): _head_setup(h.kind, h.hparams or {})
                for m in dbcatalog.list_models(s)
                for h in dbheads.list_head_versions(s, m.id)
            }
        out = []
        needle = (method_filter or "").strip().lower()
        for r in rows:
            if models and r["model"] not in models:
                continue
            if datasets and r["dataset"] not in datasets:
                continue
            if needle and needle not in f"{r['method']} {method_label(r['method'])}".lower():
                continue
            out.append(
                {
                    "model": r["model"],
                    # the name Compare shows; "method id" keeps the stored string the drill-down keys on
                    "method": method_label(r["method"]),
                    "method id": r["method"],
                    "head setup": setups.get((r["model"], r["method"]), ""),
                    "dataset": r["dataset"],
                    "AuPRC": round_pct(r.get("auprc")),
                    "FPR95": round_pct(r.get("fpr95")),
                    "AUROC": round_pct(r.get("auroc")),
                    "sIoU": round_pct(r.get("siou")),
                    "PPV": round_pct(r.get("ppv")),
                    "F1": round_pct(r.get("f1_mean")),
                    "mIoU": round_pct(_miou(r, model_meta.get(r["model"], {}))),
                    "images": r.get("n_images"),
                    "protocol": _protocol_summary(r.get("protocol")),
                    "updated": r["created"].strftime("%Y-%m-%d %H:%M") if r.get("created") else "",
                    "result": r["result_id"],
                }
            )
        cols = [
            "model",
            "method",
            "head setup",
            "dataset",
            "AuPRC",
            "FPR95",
            "AUROC",
            "sIoU",
            "PPV",
            "F1",
            "mIoU",
            "images",
            "protocol",
            "updated",
            "method id",
            "result",
        ]
        df = pd.DataFrame(out, columns=cols)
        if len(df):
            df = df.sort_values(["dataset", "AuPRC"], ascending=[True, False], na_position="last")
        return df.reset_index(drop=True)

    def worst_images(
        self, result_id: int, k: int = 8, key: str = "auprc"
    ) -> list[tuple[int, str, float | None]]:
        """(image id, name, per-image ``key``) of a result's k worst images, worst first
        (``key``: auprc, or siou / ppv / f1_mean for the component metrics).

        Reads the per-image figures stored with the result (every evaluation path records them:
        ``db.results.record_eval_rows``); a result stored without them is refused with what to do,
        never re-scored here.
        """
        with self.store.read() as s:
            res = dbresults.get_result(s, result_id)
            per = res.per_image or []
            what = f"{method_label(res.method)} on {res.dataset.name}"
            imgs = dbcatalog.image_ids_and_paths(s, res.dataset_id)
        if not per:
            raise InputError(
                f"no per-image values stored for {what} (result #{result_id}): evaluate it "
                "again (Leaderboard: Evaluate model) to see its worst images"
            )
        by_stem = {Path(p).stem: i for i, p in imgs}
        by_name = {Path(p).name: i for i, p in imgs}
        scored = []
        for row in per:
            name = str(row.get("name", ""))
            image_id = by_name.get(name) or by_stem.get(Path(name).stem)
            au = finite(row.get(key))
            if image_id is None or au is None:
                continue
            scored.append((image_id, name, au))
        scored.sort(key=lambda t: t[2])
        return scored[:k]

    def protocol_differences(self, result_id: int, others: Sequence[int]) -> list[str]:
        """'these rows differ in protocol' lines: for each other result whose protocol card
        differs from this one's, its model / method and the differing fields."""
        with self.store.read() as s:
            res = dbresults.get_result(s, result_id)
            mine = (res.params or {}).get("protocol")
            lines = []
            for oid in others:
                if int(oid) == res.id:
                    continue
                try:
                    o = dbresults.get_result(s, oid)
                except InputError:  # deleted since the table was drawn
                    continue
                diff = protocol.differences(mine, (o.params or {}).get("protocol"))
                if o.model_id != res.model_id:  # other weights are what a model row compares
                    diff = [d for d in diff if not d.startswith("checkpoint_sha256:")]
                if diff:
                    lines.append(f"{o.model.name} · {o.method}: " + "; ".join(diff))
        return lines

    def pr_curves(
        self,
        model: str,
        dataset_id: int,
        names: Sequence[str],
        params: dict[str, dict[str, float]] | None = None,
        max_images: int = 60,
        progress: Callable[[float, str], None] | None = None,
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Precision-recall curves of several methods on a dataset (computed once, cached)."""
        images = self.catalog.image_names(dataset_id)[:max_images]
        key = (
            "pr",
            self.catalog.model_key(model),
            tuple(self.scores.method_spec(n, params) for n in names),
            int(dataset_id),
            tuple(i for _, i in images),
        )
        hit = self.curves.get(key)
        if hit is not None:
            return hit
        # exact mode: a few dozen maps at the scoring size are cheap to keep, and binning would
        # flatten methods whose scores crowd into a narrow range (MSP near 1)
        acc = {n: AnomalyMetrics(mode="exact") for n in names}
        for n_img, (_fname, image_id) in enumerate(images):
            if progress is not None:
                progress(n_img / max(len(images), 1), f"PR curves: image {n_img + 1}/{len(images)}")
            view = self.scores.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            maps = self.scores.score_maps(model, view, list(names), params)
            for n in names:
                acc[n].update(maps[n][1], view.gt_score)
        out = []
        for n in names:
            if acc[n].n_pixels == 0:
                continue
            c = acc[n].curves(300)
            ap = acc[n].compute().get("auprc")
            out.append((f"{method_label(n)} (AP {pct(ap)})", c["recall"], c["precision"]))
        self.curves.put(key, out)
        return out

    def head_comparison(self, model: str):
        """Head versions x eval datasets (long format: version, dataset, AuPRC, FPR95)."""
        with self.store.read() as s:
            m = dbcatalog.get_model(s, model)
            rows = [
                {
                    "version": head_version(r["method"]),
                    "dataset": r["dataset"],
                    "AuPRC": round_pct(r.get("auprc")),
                    "FPR95": round_pct(r.get("fpr95")),
                }
                for r in dbresults.leaderboard(s, model_ids=[m.id])
                if head_version(r["method"]) is not None
            ]
        df = pd.DataFrame(rows, columns=["version", "dataset", "AuPRC", "FPR95"])
        return df.sort_values(["dataset", "version"]).reset_index(drop=True)

    def queue_evaluate(self, model: str) -> int:
        """Queue an evaluation of a model's methods on every eval dataset; returns the job id."""
        return enqueue_evaluate(self.store, model)


def _protocol_summary(card: Any) -> str:
    return protocol.summary(card) if isinstance(card, dict) else ""


def _miou(row: dict[str, Any], model_meta: dict[str, Any]) -> float | None:
    for src in (row, model_meta, model_meta.get("metrics") or {}):
        for key in ("miou", "mIoU", "heldout_miou"):
            if key in src and finite(src[key]) is not None:
                return finite(src[key])
    return None


def _head_setup(kind: str, hparams: dict[str, Any]) -> str:
    """How a head version was trained and applied, for its leaderboard row."""
    if kind == "oe":  # outlier exposure: which decoder layers were tuned, and the score read
        stage, score = hparams.get("stage", "last"), hparams.get("score", "entropy")
        return f"outlier exposure · {stage} · {score}"
    return f"{hparams.get('recipe', 'default')} · {hparams.get('head_geometry', 'stitched')}"
