"""The Leaderboard tab: latest results per model x method x dataset, a result's worst images,
protocol differences, PR curves, head versions compared, and queueing an evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.cache import LRU
from anomseg.errors import InputError
from dashboard.services.catalog import CatalogService
from dashboard.services.context import ServiceContext
from dashboard.services.formatting import finite, pct, round_pct
from dashboard.services.scores import ScoreService
from dashboard.wording import method_label


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
        import pandas as pd

        from db import catalog
        from db import heads as dbheads
        from db import results as dbresults

        with self.store.read() as s:
            rows = dbresults.leaderboard(s)
            model_meta = {m.name: (m.meta or {}) for m in catalog.list_models(s)}
            # a head row says how its head was trained and applied (recipe · geometry)
            setups = {
                (m.name, f"head:{h.version}"): _head_setup(h.kind, h.hparams or {})
                for m in catalog.list_models(s)
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

        Uses the per-image figures stored with the result; a result stored without them (e.g. a
        head evaluated by the trainer) is scored here from the cached maps instead.
        """
        from sqlalchemy import select

        from db.models import EvalResult, Image

        with self.store.read() as s:
            res = s.get(EvalResult, int(result_id))
            if res is None:
                raise InputError(f"evaluation result id {result_id} does not exist")
            per = res.per_image or []
            method, dataset_id, model = res.method, res.dataset_id, res.model.name
            imgs = s.execute(
                select(Image.id, Image.path).where(Image.dataset_id == res.dataset_id)
            ).all()
        if not per and key == "auprc":
            return self._worst_live(model, method, dataset_id, k)
        by_stem = {Path(p).stem: int(i) for i, p in imgs}
        by_name = {Path(p).name: int(i) for i, p in imgs}
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
        from anomseg.protocol import differences
        from db.models import EvalResult

        with self.store.read() as s:
            res = s.get(EvalResult, int(result_id))
            if res is None:
                raise InputError(f"evaluation result id {result_id} does not exist")
            mine = (res.params or {}).get("protocol")
            lines = []
            for oid in others:
                o = s.get(EvalResult, int(oid))
                if o is None or o.id == res.id:
                    continue
                diff = differences(mine, (o.params or {}).get("protocol"))
                if diff:
                    lines.append(f"{o.model.name} · {o.method}: " + "; ".join(diff))
        return lines

    def _worst_live(
        self, model: str, spec: str, dataset_id: int, k: int, max_images: int = 60
    ) -> list[tuple[int, str, float | None]]:
        from anomseg import scoring

        if spec.startswith("head:"):
            name, params = spec, {}
        else:
            name, params = scoring.parse_method(spec)
        scored = []
        for fname, image_id in self.catalog.image_names(dataset_id)[:max_images]:
            view = self.scores.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            got_spec, amap = self.scores.score_maps(model, view, [name], {name: params})[name]
            met = self.scores.image_metrics(
                (self.catalog.model_key(model), view.sha256, got_spec), amap, view.gt_score
            )
            if met["auprc"] is not None:
                scored.append((image_id, fname, met["auprc"]))
        scored.sort(key=lambda t: t[2])
        return scored[:k]

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
        from anomseg.metrics import AnomalyMetrics

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
        import pandas as pd

        from db import catalog
        from db import results as dbresults

        with self.store.read() as s:
            m = catalog.get_model(s, model)
            rows = [
                {
                    "version": int(r["method"].split(":", 1)[1]),
                    "dataset": r["dataset"],
                    "AuPRC": round_pct(r.get("auprc")),
                    "FPR95": round_pct(r.get("fpr95")),
                }
                for r in dbresults.leaderboard(s, model_ids=[m.id])
                if r["method"].startswith("head:") and r["method"].split(":", 1)[1].isdigit()
            ]
        df = pd.DataFrame(rows, columns=["version", "dataset", "AuPRC", "FPR95"])
        return df.sort_values(["dataset", "version"]).reset_index(drop=True)

    def queue_evaluate(self, model: str) -> int:
        """Queue an evaluation of a model's methods on every eval dataset; returns the job id."""
        from db import catalog
        from db.jobs import enqueue_job

        with self.store.read() as s:
            catalog.get_model(s, model)  # unknown model -> InputError before anything is queued
            if not catalog.list_datasets(s, role="eval"):
                raise InputError("no evaluation dataset is registered (see `anomseg add-dataset`)")
        return self.store.transact(lambda s: int(enqueue_job(s, "evaluate", {"model": model}).id))


def _protocol_summary(card: Any) -> str:
    from anomseg.protocol import summary

    return summary(card) if isinstance(card, dict) else ""


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
