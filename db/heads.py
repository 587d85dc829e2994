"""Anomaly head versions: numbering, completion, activation (one per model) and rollback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.models import HEAD_KINDS, HeadVersion, Model


def _lock_model(session: Session, model_id: int) -> Model:
    # serialises version numbering and activation per model on PostgreSQL; NO KEY UPDATE
    # (key_share=True) so concurrent flag inserts referencing the model are not blocked
    model = session.scalar(
        select(Model).where(Model.id == model_id).with_for_update(key_share=True)
    )
    if model is None:
        raise InputError(f"model id {model_id} is not registered")
    return model


def create_head_version(
    session: Session,
    model_id: int,
    kind: str,
    *,
    hparams: Mapping[str, Any] | None = None,
    parent_id: int | None = None,
    job_id: int | None = None,
    snapshot: Mapping[str, Any] | None = None,
) -> HeadVersion:
    """A new head version (status 'training') numbered max + 1 for its model."""
    if kind not in HEAD_KINDS:
        raise InputError(f"head kind {kind!r} is unknown; expected one of {HEAD_KINDS}")
    _lock_model(session, model_id)
    if parent_id is not None:
        parent = session.get(HeadVersion, parent_id)
        if parent is None or parent.model_id != model_id:
            raise InputError(f"parent head id {parent_id} is not a head of model id {model_id}")
    top = session.scalar(
        select(func.max(HeadVersion.version)).where(HeadVersion.model_id == model_id)
    )
    head = HeadVersion(
        model_id=model_id,
        kind=kind,
        version=int(top or 0) + 1,
        parent_id=parent_id,
        job_id=job_id,
        status="training",
        active=False,
    )
    head.hparams = dict(hparams or {})
    head.snapshot = dict(snapshot) if snapshot is not None else None
    session.add(head)
    session.flush()
    return head


def get_head(session: Session, head_id: int) -> HeadVersion:
    """A head version by id."""
    head = session.get(HeadVersion, head_id)
    if head is None:
        raise InputError(f"head version id {head_id} does not exist")
    return head


def get_head_version(session: Session, model_id: int, version: int) -> HeadVersion:
    """A head by model and version number (the ``N`` of ``head:N``)."""
    head = session.scalar(
        select(HeadVersion).where(HeadVersion.model_id == model_id, HeadVersion.version == version)
    )
    if head is None:
        have = list(
            session.scalars(
                select(HeadVersion.version)
                .where(HeadVersion.model_id == model_id)
                .order_by(HeadVersion.version)
            )
        )
        raise InputError(f"model id {model_id} has no head version {version}; have {have}")
    return head


def finish_head_version(
    session: Session,
    head_id: int,
    *,
    checkpoint_path: str,
    checkpoint_sha256: str,
    metrics: Mapping[str, Any] | None = None,
    snapshot: Mapping[str, Any] | None = None,
) -> HeadVersion:
    """Record a trained head's checkpoint (status 'ready')."""
    head = get_head(session, head_id)
    if head.status != "training":
        raise InputError(f"head v{head.version} is {head.status!r}, not 'training'")
    head.checkpoint_path, head.checkpoint_sha256 = checkpoint_path, checkpoint_sha256
    if metrics is not None:
        head.metrics = dict(metrics)
    if snapshot is not None:
        head.snapshot = dict(snapshot)
    head.status = "ready"
    session.flush()
    return head


def fail_head_version(session: Session, head_id: int) -> HeadVersion:
    """Mark a head whose training failed (it can never become active)."""
    head = get_head(session, head_id)
    head.status = "failed"
    head.active = False
    session.flush()
    return head


def set_head_metrics(session: Session, head_id: int, metrics: Mapping[str, Any]) -> HeadVersion:
    """Replace a head's metrics (e.g. after evaluation)."""
    head = get_head(session, head_id)
    head.metrics = dict(metrics)
    session.flush()
    return head


def activate_head(session: Session, head_id: int) -> HeadVersion:
    """Make this head its model's only active head, atomically."""
    head = get_head(session, head_id)
    if head.status != "ready":
        raise InputError(
            f"head v{head.version} is {head.status!r}; only a ready head can be active"
        )
    _lock_model(session, head.model_id)
    # deactivate first and flush, so the partial unique index never sees two active rows
    session.execute(
        update(HeadVersion)
        .where(HeadVersion.model_id == head.model_id, HeadVersion.active.is_(True))
        .values(active=False)
        .execution_options(synchronize_session="fetch")
    )
    session.execute(
        update(HeadVersion)
        .where(HeadVersion.id == head.id)
        .values(active=True)
        .execution_options(synchronize_session="fetch")
    )
    session.flush()
    session.refresh(head)
    return head


def active_head(session: Session, model_id: int) -> HeadVersion | None:
    """The model's active head, if any."""
    return session.scalar(
        select(HeadVersion).where(HeadVersion.model_id == model_id, HeadVersion.active.is_(True))
    )


def rollback_head(session: Session, model_id: int) -> HeadVersion:
    """Activate the parent of the active head (the version it was retrained from)."""
    cur = active_head(session, model_id)
    if cur is None:
        raise InputError(f"model id {model_id} has no active head to roll back")
    if cur.parent_id is None:
        raise InputError(f"head v{cur.version} has no parent version to roll back to")
    return activate_head(session, cur.parent_id)


def list_head_versions(session: Session, model_id: int) -> list[HeadVersion]:
    """A model's head versions, newest first."""
    return list(
        session.scalars(
            select(HeadVersion)
            .where(HeadVersion.model_id == model_id)
            .order_by(HeadVersion.version.desc())
        )
    )


def active_heads(session: Session) -> list[tuple[str, int]]:
    """(model name, version) of every model's active head."""
    rows = session.execute(
        select(Model.name, HeadVersion.version)
        .join(HeadVersion, HeadVersion.model_id == Model.id)
        .where(HeadVersion.active.is_(True))
    )
    return [(str(m), int(v)) for m, v in rows]


def head_checkpoint_for(session: Session, model_sha256: str, version: int) -> tuple[str, str]:
    """(model name, head checkpoint path) of head ``version`` of the registered model whose
    checkpoint has this sha256: how ``anomseg eval --methods head:N`` finds a head from a
    checkpoint file alone."""
    models = list(session.scalars(select(Model).where(Model.checkpoint_sha256 == model_sha256)))
    if not models:
        raise InputError(
            f"no registered model has a checkpoint with sha256 {model_sha256[:12]}…; register it "
            "(`anomseg register model`) and train a head (`anomseg train`) first"
        )
    ready = session.execute(
        select(Model.name, HeadVersion.checkpoint_path)
        .join(HeadVersion, HeadVersion.model_id == Model.id)
        .where(
            Model.id.in_([m.id for m in models]),
            HeadVersion.version == version,
            HeadVersion.status == "ready",
            HeadVersion.checkpoint_path.is_not(None),
        )
    ).first()
    if ready is None:
        names = ", ".join(m.name for m in models)
        raise InputError(
            f"head:{version}: model(s) {names} with this checkpoint have no ready head "
            f"version {version}"
        )
    return ready.name, ready.checkpoint_path
