"""Evaluation results and the leaderboard (latest result per model x method x dataset)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.models import Dataset, EvalResult, Model


def _code_version() -> str:
    import anomseg

    return str(getattr(anomseg, "__version__", ""))


# params_json key holding the definition revision a scorer was computed under (absent = 1)
REVISION_KEY = "scorer_revision"


def is_current(method: str, params: Mapping[str, Any] | None) -> bool:
    """False for a result computed under an older definition of its scorer (e.g. RbA before 2)."""
    from anomseg.scoring import scorer_revision

    stored = (params or {}).get(REVISION_KEY, 1)
    return not isinstance(stored, int) or stored >= scorer_revision(method)


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
    from anomseg.scoring import scorer_revision

    row.metrics = dict(metrics)
    revision = scorer_revision(method)
    if revision > 1:  # stamped so that a later change of definition can tell this row apart
        params = {**(params or {}), REVISION_KEY: revision}
    row.params = dict(params) if params is not None else None
    row.per_image = per_image
    session.add(row)
    session.flush()
    return row


def record_eval_rows(
    session: Session,
    model_id: int,
    rows: Iterable[Any],
    dataset_ids: Mapping[str, int],
    *,
    params: Mapping[str, Any] | None = None,
) -> list[EvalResult]:
    """Store evaluation rows of one model: the one way results reach the store.

    ``rows`` are ``anomseg.evaluate.EvalRow`` (or anything with its fields: dataset, method,
    metrics, n_images, per_image, protocol, seconds); ``dataset_ids`` maps a row's dataset
    name to its Dataset id. Each row is stored with its metrics, its per-image values (what a
    leaderboard's worst images read) and its protocol card in ``params["protocol"]``, beside
    ``params``. A row with no image used holds no figure and is not stored. Call it inside one
    write transaction (``Store.session`` / ``transact`` roll back on any error), so a bad row
    leaves none of its siblings stored.
    """
    rows = [r for r in rows if r.n_images]
    missing = sorted({r.dataset for r in rows} - set(dataset_ids))
    if missing:
        raise InputError(
            f"dataset(s) {', '.join(map(repr, missing))} have no dataset id; expected one of: "
            f"{', '.join(map(repr, sorted(dataset_ids))) or 'none given'}"
        )
    out = []
    for r in rows:
        protocol = getattr(r, "protocol", None)
        out.append(
            add_eval_result(
                session,
                model_id,
                r.method,
                dataset_ids[r.dataset],
                r.metrics,
                r.n_images,
                params={**(params or {}), **({"protocol": protocol} if protocol else {})},
                per_image=list(r.per_image) or None,
                seconds=r.seconds,
            )
        )
    return out


def eval_dataset_for(session: Session, bench: Any) -> Dataset:
    """The dataset a result on benchmark ``bench`` (``anomseg.data.BenchmarkDataset``) is stored
    under: the one registered at its root, else an eval dataset registered now under its name,
    with its images (the drill-down's thumbnails). A non-eval dataset at that root is refused:
    results are kept for eval datasets only."""
    from db import catalog

    root = Path(bench.root).resolve()
    found = [d for d in catalog.list_datasets(session) if Path(d.root).resolve() == root]
    if found:
        if found[0].role != "eval":
            raise InputError(
                f"dataset {found[0].name!r} at {root} has role {found[0].role!r}; results are "
                "recorded on eval datasets only"
            )
        return found[0]
    d = catalog.register_dataset(
        session, bench.name, "eval", root, layout="benchmark",
        label_remap={str(k): v for k, v in (bench.remap or {}).items()} or None,
    )  # fmt: skip
    # resolved like the root: a relative --dataset path must not read as escaping it
    catalog.register_images(session, d, [Path(smp.image_path).resolve() for smp in bench.samples])
    return d


def leaderboard(
    session: Session,
    *,
    model_ids: Iterable[int] | None = None,
    dataset_ids: Iterable[int] | None = None,
    methods: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """One dict per (model, method, dataset): the latest result, metrics flattened in.

    Rows are pandas-friendly (``pd.DataFrame(rows)``); metric keys vary with what was computed.
    A result computed under an older definition of its scorer (``is_current``) is left out:
    a board never mixes two definitions of one method.
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
        if not is_current(res.method, res.params):
            continue
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
            "protocol": (res.params or {}).get("protocol"),  # anomseg.protocol card, if any
            "created": res.created,
        }
        for k, v in (res.metrics or {}).items():
            row.setdefault(k, v)
        rows.append(row)
    return rows


def result_history(
    session: Session, model_id: int, method: str, dataset_id: int
) -> list[EvalResult]:
    """Every current-definition result of one (model, method, dataset), oldest first."""
    rows = session.scalars(
        select(EvalResult)
        .where(
            EvalResult.model_id == model_id,
            EvalResult.method == method,
            EvalResult.dataset_id == dataset_id,
        )
        .order_by(EvalResult.id)
    )
    return [r for r in rows if is_current(r.method, r.params)]


def get_result(session: Session, result_id: int) -> EvalResult:
    """An evaluation result by id; InputError when it does not exist."""
    res = session.get(EvalResult, int(result_id))
    if res is None:
        raise InputError(f"evaluation result id {result_id} does not exist")
    return res


def external_methods(session: Session) -> list[str]:
    """Methods recorded from external score maps (models of architecture ``external``), sorted."""
    names = session.scalars(
        select(EvalResult.method).join(Model, EvalResult.model_id == Model.id)
        .where(Model.architecture == "external").distinct()
    )  # fmt: skip
    return sorted(names)


def latest_external_result(session: Session, method: str, dataset_id: int) -> EvalResult | None:
    """The newest result of an external method on a dataset, if any."""
    return session.scalars(
        select(EvalResult).join(Model, EvalResult.model_id == Model.id)
        .where(Model.architecture == "external", EvalResult.method == method,
               EvalResult.dataset_id == dataset_id)
        .order_by(EvalResult.id.desc()).limit(1)
    ).first()  # fmt: skip
