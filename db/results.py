"""Evaluation results and the leaderboard (latest result per model x method x dataset)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.models import Dataset, EvalResult, Model


def _code_version() -> str:
    import anomseg

    return str(getattr(anomseg, "__version__", ""))


def add_eval_result(
    session: Session,
    model_id: int,
    method: str,
    dataset_id: int,
    metrics: Mapping[str, Any],
    n_images: int,
    *,
    params: Mapping[str, Any] | None = None,
    per_image: Any = None,
    code_version: str | None = None,
    seconds: float | None = None,
) -> EvalResult:
    """Insert one evaluation result row (history is kept; the leaderboard shows the latest)."""
    if session.get(Model, model_id) is None:
        raise InputError(f"model id {model_id} is not registered")
    if session.get(Dataset, dataset_id) is None:
        raise InputError(f"dataset id {dataset_id} is not registered")
    if not method or len(method) > 200:
        raise InputError(f"method {method!r} must be 1..200 characters")
    if n_images < 0:
        raise InputError(f"n_images must be >= 0, got {n_images}")
    row = EvalResult(
        model_id=model_id,
        method=method,
        dataset_id=dataset_id,
        n_images=int(n_images),
        code_version=(code_version if code_version is not None else _code_version())[:64],
        seconds=float(seconds) if seconds is not None else None,
    )
    row.metrics = dict(metrics)
    row.params = dict(params) if params is not None else None
    row.per_image = per_image
    session.add(row)
    session.flush()
    return row


def leaderboard(
    session: Session,
    *,
    model_ids: Iterable[int] | None = None,
    dataset_ids: Iterable[int] | None = None,
    methods: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """One dict per (model, method, dataset): the latest result, metrics flattened in.

    Rows are pandas-friendly (``pd.DataFrame(rows)``); metric keys vary with what was computed.
    """
    latest = select(func.max(EvalResult.id).label("id")).group_by(
        EvalResult.model_id, EvalResult.method, EvalResult.dataset_id
    )
    if model_ids is not None:
        latest = latest.where(EvalResult.model_id.in_(list(model_ids)))
    if dataset_ids is not None:
        latest = latest.where(EvalResult.dataset_id.in_(list(dataset_ids)))
    if methods is not None:
        latest = latest.where(EvalResult.method.in_(list(methods)))
    q = (
        select(EvalResult, Model.name, Model.architecture, Dataset.name, Dataset.role)
        .join(Model, EvalResult.model_id == Model.id)
        .join(Dataset, EvalResult.dataset_id == Dataset.id)
        .where(EvalResult.id.in_(latest.scalar_subquery()))
        .order_by(Model.name, Dataset.name, EvalResult.method)
    )
    rows = []
    for res, model_name, arch, ds_name, role in session.execute(q):
        row: dict[str, Any] = {
            "result_id": res.id,
            "model": model_name,
            "architecture": arch,
            "method": res.method,
            "dataset": ds_name,
            "role": role,
            "n_images": res.n_images,
            "code_version": res.code_version,
            "seconds": res.seconds,
            "created": res.created,
        }
        for k, v in (res.metrics or {}).items():
            row.setdefault(k, v)
        rows.append(row)
    return rows


def result_history(
    session: Session, model_id: int, method: str, dataset_id: int
) -> list[EvalResult]:
    """Every result of one (model, method, dataset), oldest first."""
    return list(
        session.scalars(
            select(EvalResult)
            .where(
                EvalResult.model_id == model_id,
                EvalResult.method == method,
                EvalResult.dataset_id == dataset_id,
            )
            .order_by(EvalResult.id)
        )
    )
