"""Flags: regions a user marked false-positive / false-negative / ignore on a method's map.

Deletion is a hard delete (``anomseg db export`` / ``backup`` are the safety net); edits keep
the row and bump ``updated``.
"""

from __future__ import annotations

import uuid

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.masks import as_bool_mask, bbox_of, encode_mask
from db.models import EVAL_ROLES, FLAG_KINDS, Dataset, Flag, Image, Model, check_uid, row_id


def _check_kind(kind: str) -> None:
    if kind not in FLAG_KINDS:
        raise InputError(f"flag kind {kind!r} is unknown; expected one of {FLAG_KINDS}")


def _check_method(method: str) -> None:
    if not isinstance(method, str) or not method.strip() or len(method) > 200:
        raise InputError(f"flag method {method!r} must be a scorer spec of 1..200 characters")


def _set_mask(flag: Flag, image: Image, mask: object) -> None:
    m = as_bool_mask(mask, "flag mask")
    if m.shape != (image.height, image.width):
        raise InputError(
            f"flag mask is {m.shape[1]}x{m.shape[0]} but image {image.path!r} is "
            f"{image.width}x{image.height} (width x height); map the mask to full size first"
        )
    area = int(np.count_nonzero(m))
    if area == 0:
        raise InputError("flag mask is empty: paint at least one pixel")
    flag.mask = encode_mask(m)
    flag.width, flag.height = image.width, image.height
    flag.area = area
    flag.bbox_x0, flag.bbox_y0, flag.bbox_x1, flag.bbox_y1 = bbox_of(m)


def add_flag(
    session: Session,
    image_id: int,
    model_id: int,
    method: str,
    kind: str,
    mask: object,
    *,
    author: str = "",
    note: str = "",
    uid: str | None = None,
) -> Flag:
    """Store a flag; the mask must be full-size for the image and non-empty."""
    _check_kind(kind)
    _check_method(method)
    image = session.get(Image, image_id)
    if image is None:
        raise InputError(f"image id {image_id} is not registered")
    if session.get(Model, model_id) is None:
        raise InputError(f"model id {model_id} is not registered")
    flag = Flag(
        uid=check_uid(uid) if uid is not None else uuid.uuid4().hex,
        image_id=image_id,
        model_id=model_id,
        method=method,
        kind=kind,
        author=author[:100],
        note=note,
    )
    _set_mask(flag, image, mask)
    session.add(flag)
    session.flush()
    return flag


def get_flag(session: Session, flag_id: int) -> Flag:
    """A flag by id."""
    flag = session.get(Flag, row_id(flag_id, "flag id"))
    if flag is None:
        raise InputError(f"flag id {flag_id} does not exist (deleted?)")
    return flag


def find_flag_by_uid(session: Session, uid: str) -> Flag | None:
    """The flag stored under a client's save token, if any."""
    return session.scalar(select(Flag).where(Flag.uid == uid))


def count_flags(session: Session) -> int:
    """All flags in the store."""
    return int(session.scalar(select(func.count(Flag.id))) or 0)


def list_flags(
    session: Session,
    *,
    image_id: int | None = None,
    model_id: int | None = None,
    method: str | None = None,
    kind: str | None = None,
    dataset_id: int | None = None,
) -> list[Flag]:
    """Flags matching every given filter, oldest first."""
    q = select(Flag).order_by(Flag.id)
    if image_id is not None:
        q = q.where(Flag.image_id == image_id)
    if model_id is not None:
        q = q.where(Flag.model_id == model_id)
    if method is not None:
        q = q.where(Flag.method == method)
    if kind is not None:
        _check_kind(kind)
        q = q.where(Flag.kind == kind)
    if dataset_id is not None:
        q = q.join(Image, Flag.image_id == Image.id).where(Image.dataset_id == dataset_id)
    return list(session.scalars(q))


def update_flag(
    session: Session,
    flag_id: int,
    *,
    kind: str | None = None,
    note: str | None = None,
    mask: object | None = None,
) -> Flag:
    """Change a flag's kind, note or mask."""
    flag = get_flag(session, flag_id)
    if kind is not None:
        _check_kind(kind)
        flag.kind = kind
    if note is not None:
        flag.note = note
    if mask is not None:
        _set_mask(flag, flag.image, mask)
    session.flush()
    return flag


def delete_flag(session: Session, flag_id: int) -> None:
    """Delete a flag for good."""
    session.delete(get_flag(session, flag_id))
    session.flush()


def flags_for_training(
    session: Session, model_id: int, kinds: tuple[str, ...] = FLAG_KINDS
) -> list[Flag]:
    """Flags of a model usable for training: those on eval / heldout images are left out."""
    for k in kinds:
        _check_kind(k)
    q = (
        select(Flag)
        .join(Image, Flag.image_id == Image.id)
        .join(Dataset, Image.dataset_id == Dataset.id)
        .where(Flag.model_id == model_id, Flag.kind.in_(kinds), Dataset.role.not_in(EVAL_ROLES))
        .order_by(Flag.id)
    )
    return list(session.scalars(q))


def flag_counts(session: Session, model_id: int | None = None) -> dict[str, dict[str, int]]:
    """Per kind: how many flags (and pixels) would train vs. stay annotation-only."""
    trains = Dataset.role.not_in(EVAL_ROLES)
    q = (
        select(Flag.kind, trains.label("trains"), func.count(Flag.id), func.sum(Flag.area))
        .join(Image, Flag.image_id == Image.id)
        .join(Dataset, Image.dataset_id == Dataset.id)
        .group_by(Flag.kind, trains)
    )
    if model_id is not None:
        q = q.where(Flag.model_id == model_id)
    out = {k: {"train": 0, "train_pixels": 0, "eval_only": 0} for k in FLAG_KINDS}
    for kind, is_train, n, px in session.execute(q):
        if is_train:
            out[kind]["train"] += int(n)
            out[kind]["train_pixels"] += int(px or 0)
        else:
            out[kind]["eval_only"] += int(n)
    return out
