"""Synthetic samples and their pastes, with an append-only revision history per paste.

History model (see also db/models.py): revisions are numbered 1, 2, ... per paste and never
change. ``edit`` appends ``max + 1`` with parent = current and points ``current`` at it;
``undo`` points ``current`` at the current revision's parent; ``redo`` at the newest revision
whose parent is current. An edit after an undo starts a new branch and nothing is lost. An edit
that does not change the record is a no-op (no junk revisions from a slider that did not move).
A ``None`` record marks the paste removed, which undo brings back.

The record is the synthetic-paste issue's PasteRecord as JSON, opaque here; its content hash
(sha256 of the canonical JSON unless the caller supplies one) keys the render cache.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.models import (
    SAMPLE_STATUSES,
    Dataset,
    Paste,
    PasteRevision,
    SyntheticSample,
    check_uid,
    dump_json,
    utcnow,
)

Record = Mapping[str, Any]


def content_hash(record: Record | None) -> str | None:
    """sha256 of the record's canonical JSON (None for a removal)."""
    if record is None:
        return None
    return hashlib.sha256(dump_json(record).encode()).hexdigest()


def _check_record(record: Any, what: str) -> None:
    if record is not None and not isinstance(record, Mapping):
        raise InputError(
            f"{what}: a paste record must be a JSON object, got {type(record).__name__}"
        )


def _lock_paste(session: Session, paste_id: int) -> Paste:
    # FOR NO KEY UPDATE (key_share=True) serialises edits of one paste on PostgreSQL without
    # blocking inserts that merely reference the row (SQLite's BEGIN IMMEDIATE already
    # serialises); populate_existing refreshes a copy already in the identity map.
    paste = session.scalar(
        select(Paste)
        .where(Paste.id == paste_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if paste is None:
        raise InputError(f"paste id {paste_id} does not exist")
    return paste


def _revision(session: Session, paste_id: int, number: int) -> PasteRevision:
    rev = session.scalar(
        select(PasteRevision).where(
            PasteRevision.paste_id == paste_id, PasteRevision.number == number
        )
    )
    if rev is None:
        raise InputError(f"paste id {paste_id} has no revision {number}")
    return rev


def _append(
    session: Session,
    paste: Paste,
    record: Record | None,
    author: str,
    hash_: str | None = None,
) -> PasteRevision:
    top = session.scalar(
        select(func.max(PasteRevision.number)).where(PasteRevision.paste_id == paste.id)
    )
    number = int(top or 0) + 1
    rev = PasteRevision(
        paste_id=paste.id,
        number=number,
        parent_number=paste.current_number if top else None,
        content_hash=hash_ or content_hash(record),
        author=author[:100],
    )
    rev.record = dict(record) if record is not None else None
    session.add(rev)
    paste.current_number = number
    paste.sample.updated = utcnow()
    session.flush()
    return rev


def create_sample(
    session: Session,
    dataset_id: int,
    background_id: str,
    pastes: Mapping[str, Record] | Iterable[tuple[str, Record]] = (),
    *,
    seed: int | None = None,
    status: str = "proposed",
    author: str = "",
    uid: str | None = None,
) -> SyntheticSample:
    """A new sample with its pastes (key -> record), each at revision 1."""
    if status not in SAMPLE_STATUSES:
        raise InputError(f"sample status {status!r} is unknown; expected one of {SAMPLE_STATUSES}")
    if session.get(Dataset, dataset_id) is None:
        raise InputError(f"dataset id {dataset_id} is not registered")
    sample = SyntheticSample(
        uid=check_uid(uid) if uid is not None else uuid.uuid4().hex,
        dataset_id=dataset_id,
        background_id=str(background_id),
        seed=seed,
        status=status,
    )
    session.add(sample)
    session.flush()
    items = pastes.items() if isinstance(pastes, Mapping) else pastes
    for key, record in items:
        add_paste(session, sample.id, key, record, author=author)
    return sample


def add_paste(
    session: Session, sample_id: int, key: str, record: Record, *, author: str = ""
) -> Paste:
    """Add a paste (revision 1) to a sample; the key must be new in that sample."""
    _check_record(record, f"paste {key!r}")
    if record is None:
        raise InputError(f"paste {key!r}: a new paste needs a record")
    if not key or len(key) > 64:
        raise InputError(f"paste key {key!r} must be 1..64 characters")
    sample = get_sample(session, sample_id)
    if session.scalar(select(Paste.id).where(Paste.sample_id == sample_id, Paste.key == key)):
        raise InputError(f"sample {sample_id} already has a paste with key {key!r}")
    paste = Paste(sample_id=sample_id, key=key, current_number=0)
    paste.sample = sample
    session.add(paste)
    session.flush()
    _append(session, paste, record, author)
    return paste


def edit_paste(
    session: Session,
    paste_id: int,
    record: Record,
    *,
    author: str = "",
    content_hash_: str | None = None,
) -> PasteRevision:
    """Store an edited record as a new current revision (no-op if unchanged)."""
    _check_record(record, f"paste id {paste_id}")
    if record is None:
        raise InputError(f"paste id {paste_id}: use remove_paste to remove a paste")
    paste = _lock_paste(session, paste_id)
    cur = _revision(session, paste.id, paste.current_number)
    if cur.record_json == dump_json(record):
        return cur
    return _append(session, paste, record, author, content_hash_)


def remove_paste(session: Session, paste_id: int, *, author: str = "") -> PasteRevision:
    """Mark a paste removed (a revision with no record; undo restores it)."""
    paste = _lock_paste(session, paste_id)
    cur = _revision(session, paste.id, paste.current_number)
    if cur.record_json is None:
        return cur
    return _append(session, paste, None, author)


def undo_paste(session: Session, paste_id: int) -> PasteRevision:
    """Move the paste back to the parent of its current revision."""
    paste = _lock_paste(session, paste_id)
    cur = _revision(session, paste.id, paste.current_number)
    if cur.parent_number is None:
        raise InputError(f"paste {paste.key!r} is at its first revision; nothing to undo")
    paste.current_number = cur.parent_number
    paste.sample.updated = utcnow()
    session.flush()
    return _revision(session, paste.id, cur.parent_number)


def redo_paste(session: Session, paste_id: int) -> PasteRevision:
    """Move the paste forward to the newest revision derived from the current one."""
    paste = _lock_paste(session, paste_id)
    child = session.scalar(
        select(PasteRevision)
        .where(
            PasteRevision.paste_id == paste.id,
            PasteRevision.parent_number == paste.current_number,
        )
        .order_by(PasteRevision.number.desc())
        .limit(1)
    )
    if child is None:
        raise InputError(f"paste {paste.key!r} has nothing to redo")
    paste.current_number = child.number
    paste.sample.updated = utcnow()
    session.flush()
    return child


def current_revision(session: Session, paste_id: int) -> PasteRevision:
    """The revision a paste currently points at."""
    paste = session.get(Paste, paste_id)
    if paste is None:
        raise InputError(f"paste id {paste_id} does not exist")
    return _revision(session, paste.id, paste.current_number)


def paste_history(session: Session, paste_id: int) -> list[PasteRevision]:
    """Every revision of a paste, oldest first."""
    return list(
        session.scalars(
            select(PasteRevision)
            .where(PasteRevision.paste_id == paste_id)
            .order_by(PasteRevision.number)
        )
    )


def current_revisions(session: Session, sample_id: int) -> list[tuple[Paste, PasteRevision]]:
    """(paste, current revision) of every paste of a sample, removed ones included."""
    rows = session.execute(
        select(Paste, PasteRevision)
        .join(
            PasteRevision,
            (PasteRevision.paste_id == Paste.id) & (PasteRevision.number == Paste.current_number),
        )
        .where(Paste.sample_id == sample_id)
        .order_by(Paste.id)
    ).all()
    return [(p, r) for p, r in rows]


def current_records(session: Session, sample_id: int) -> dict[str, dict[str, Any]]:
    """key -> current record of each paste of a sample that is not removed (insertion order)."""
    out: dict[str, dict[str, Any]] = {}
    for paste, rev in current_revisions(session, sample_id):
        rec = rev.record
        if rec is not None:
            out[paste.key] = rec
    return out


def get_sample(session: Session, sample_id: int) -> SyntheticSample:
    """A sample by id."""
    sample = session.get(SyntheticSample, sample_id)
    if sample is None:
        raise InputError(f"synthetic sample id {sample_id} does not exist")
    return sample


def get_paste(session: Session, sample_id: int, key: str) -> Paste:
    """A paste by sample and key."""
    paste = session.scalar(select(Paste).where(Paste.sample_id == sample_id, Paste.key == key))
    if paste is None:
        raise InputError(f"sample {sample_id} has no paste {key!r}")
    return paste


def set_sample_status(session: Session, sample_id: int, status: str) -> SyntheticSample:
    """Accept / reject / re-propose a sample."""
    if status not in SAMPLE_STATUSES:
        raise InputError(f"sample status {status!r} is unknown; expected one of {SAMPLE_STATUSES}")
    sample = get_sample(session, sample_id)
    sample.status = status
    session.flush()
    return sample


def set_render_cache(
    session: Session, sample_id: int, render: Mapping[str, Any] | None
) -> SyntheticSample:
    """Remember where the rendered image / labels of a sample are (a cache, may be None)."""
    sample = get_sample(session, sample_id)
    sample.render = dict(render) if render is not None else None
    session.flush()
    return sample


def list_samples(
    session: Session, *, status: str | None = None, dataset_id: int | None = None
) -> list[SyntheticSample]:
    """Samples, optionally filtered, oldest first."""
    q = select(SyntheticSample).order_by(SyntheticSample.id)
    if status is not None:
        if status not in SAMPLE_STATUSES:
            raise InputError(f"sample status {status!r} is unknown; expected {SAMPLE_STATUSES}")
        q = q.where(SyntheticSample.status == status)
    if dataset_id is not None:
        q = q.where(SyntheticSample.dataset_id == dataset_id)
    return list(session.scalars(q))


def sample_counts(session: Session) -> dict[str, int]:
    """Number of samples per status."""
    rows = session.execute(
        select(SyntheticSample.status, func.count(SyntheticSample.id)).group_by(
            SyntheticSample.status
        )
    ).all()
    out = dict.fromkeys(SAMPLE_STATUSES, 0)
    out.update({s: int(n) for s, n in rows})
    return out
