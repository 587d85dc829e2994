"""The store's tables as a typed SQLAlchemy 2 ORM.

Conventions, decided once here:

* Timestamps are UTC (stored naive, returned timezone-aware).
* JSON lives in ``TEXT`` columns named ``*_json`` and is read through a ``JsonField`` accessor
  (``dataset.label_remap``, ``job.params`` ...): a row whose text is not valid JSON (written by
  hand, a crash of another tool) raises ``InputError`` naming the table, the row id and the column,
  instead of breaking every query that touches the table.
* Exactly one active head version per *model* (of either kind), enforced by a partial unique
  index: the active head is the model's default ``head`` scorer; every version stays usable as
  ``head:<version>``.
* A paste's history is append-only. An edit adds revision ``max + 1`` whose parent is the current
  one and moves ``Paste.current_number`` to it; undo moves the pointer to the current revision's
  parent, redo to the newest child; nothing is ever overwritten. A revision with a null record
  means "paste removed" (so removal is undoable too).
* Rows that other rows depend on (datasets, images, models) are never deleted in cascade: the
  foreign keys have no ON DELETE action, so deleting a model that still has flags fails loudly.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from anomseg.errors import InputError

DATASET_ROLES = ("train", "synthetic", "eval", "heldout")
EVAL_ROLES = ("eval", "heldout")  # never used for training, flags on them included
HEAD_KINDS = ("stats", "features", "oe")  # oe: outlier exposure (0003)
HEAD_STATUSES = ("training", "ready", "failed")
SAMPLE_STATUSES = ("proposed", "accepted", "rejected")
FLAG_KINDS = ("false_positive", "false_negative", "ignore")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
JOB_FINAL = ("done", "failed", "cancelled")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


_UID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_uid(uid: str, what: str = "uid") -> str:
    """A stable row id (uuid4 hex by default); it names export files, so it is kept plain."""
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise InputError(f"{what} {uid!r} must be 1..32 letters, digits, '_' or '-'")
    return uid


MAX_ROW_ID = 2**63 - 1  # what an SQLite INTEGER / PostgreSQL bigint primary key can hold


def row_id(value: object, what: str = "id") -> int:
    """``value`` as a row id in 1..MAX_ROW_ID; InputError naming ``what`` otherwise (a larger
    int would raise OverflowError in the driver, a float like 1.5 would silently become 1)."""
    bad = InputError(f"{what} {value!r} is not a whole number; expected an id such as 12")
    if isinstance(value, bool):
        raise bad
    if not isinstance(value, int):
        text = str(value).strip()
        if text.lstrip("+-").isdigit():
            value = int(text)
        else:
            try:
                f = float(text)
            except ValueError:
                raise bad from None
            if not math.isfinite(f) or not f.is_integer():
                raise bad
            value = int(f)
    if not 1 <= value <= MAX_ROW_ID:
        raise InputError(f"{what} {value} is out of range; expected 1..{MAX_ROW_ID}")
    return value


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


def _in(col: str, values: tuple[str, ...]) -> str:
    return f"{col} IN ({', '.join(repr(v) for v in values)})"


def _jsonable(value: Any) -> Any:
    """Plain JSON types; numpy scalars/arrays converted, non-finite floats become null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise InputError(f"value of type {type(value).__name__} cannot be stored as JSON")


def dump_json(value: Any) -> str:
    """Canonical JSON text (sorted keys, compact): equal values give equal text."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


class JsonField:
    """Accessor exposing a ``*_json`` TEXT column as a parsed value with row-naming errors."""

    def __init__(self, column: str) -> None:
        self.column = column

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        raw = getattr(obj, self.column)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{obj.__tablename__} row id={obj.id}: column {self.column!r} holds invalid JSON "
                f"({exc}); expected a JSON document - fix or delete that row"
            ) from None

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.column, None if value is None else dump_json(value))


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime stored as naive UTC, returned as aware UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention (named constraints keep migrations portable)."""

    metadata = MetaData(naming_convention=NAMING)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class Dataset(Base):
    """A registered dataset; ``role`` decides whether its images may train a head."""

    __tablename__ = "datasets"
    __table_args__ = (CheckConstraint(_in("role", DATASET_ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    root: Mapped[str] = mapped_column(Text, nullable=False)
    layout: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    label_remap_json: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = _created()

    label_remap = JsonField("label_remap_json")
    images: Mapped[list[Image]] = relationship(back_populates="dataset")

    def __repr__(self) -> str:
        return f"Dataset(id={self.id}, name={self.name!r}, role={self.role!r})"


class Image(Base):
    """One image file of a dataset: a path relative to the dataset root plus its content hash."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "path"),
        Index(None, "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    created: Mapped[datetime] = _created()

    dataset: Mapped[Dataset] = relationship(back_populates="images")

    def __repr__(self) -> str:
        return f"Image(id={self.id}, dataset_id={self.dataset_id}, path={self.path!r})"


class Model(Base):
    """A segmentation model checkpoint (ERFNet, EoMT ...)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    architecture: Mapped[str] = mapped_column(String(100), nullable=False)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    input_h: Mapped[int | None] = mapped_column(Integer)
    input_w: Mapped[int | None] = mapped_column(Integer)
    meta_json: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = _created()

    meta = JsonField("meta_json")

    def __repr__(self) -> str:
        return f"Model(id={self.id}, name={self.name!r}, architecture={self.architecture!r})"


class Job(Base):
    """A background job (training, synthesis, evaluation) claimed and run by a worker."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index(None, "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    params_json: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    log_tail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    error: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime())  # added by 0002
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created: Mapped[datetime] = _created()
    started: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime())

    params = JsonField("params_json")
    result = JsonField("result_json")

    def __repr__(self) -> str:
        return f"Job(id={self.id}, kind={self.kind!r}, status={self.status!r})"


class HeadVersion(Base):
    """A trained anomaly head: version ``n`` of a model's head, with lineage and its snapshot."""

    __tablename__ = "head_versions"
    __table_args__ = (
        CheckConstraint(_in("kind", HEAD_KINDS), name="kind"),
        CheckConstraint(_in("status", HEAD_STATUSES), name="status"),
        UniqueConstraint("model_id", "version"),
        # at most one active head per model, whatever the kind
        Index(
            "uq_head_versions_active",
            "model_id",
            unique=True,
            sqlite_where=text("active = 1"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("head_versions.id"))
    hparams_json: Mapped[str | None] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    snapshot_json: Mapped[str | None] = mapped_column(Text)
    metrics_json: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="training")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created: Mapped[datetime] = _created()

    hparams = JsonField("hparams_json")
    snapshot = JsonField("snapshot_json")
    metrics = JsonField("metrics_json")
    model: Mapped[Model] = relationship()

    @property
    def method(self) -> str:
        """The scorer spec of this head (``head:<version>``)."""
        return f"head:{self.version}"

    def __repr__(self) -> str:
        return (
            f"HeadVersion(id={self.id}, model_id={self.model_id}, v{self.version}, "
            f"{self.kind}, active={self.active})"
        )


class SyntheticSample(Base):
    """One synthetic training image: a background plus pastes, curated by status."""

    __tablename__ = "synthetic_samples"
    __table_args__ = (
        CheckConstraint(_in("status", SAMPLE_STATUSES), name="status"),
        Index(None, "dataset_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), nullable=False)
    background_id: Mapped[str] = mapped_column(Text, nullable=False)
    seed: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="proposed")
    render_json: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )

    render = JsonField("render_json")
    dataset: Mapped[Dataset] = relationship()
    pastes: Mapped[list[Paste]] = relationship(
        back_populates="sample", cascade="all, delete-orphan", order_by="Paste.id"
    )

    def __repr__(self) -> str:
        return f"SyntheticSample(id={self.id}, status={self.status!r})"


class Paste(Base):
    """A paste of a sample, identified by a stable key; its content lives in revisions."""

    __tablename__ = "pastes"
    __table_args__ = (UniqueConstraint("sample_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(
        ForeignKey("synthetic_samples.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(String(64), nullable=False)
    current_number: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    sample: Mapped[SyntheticSample] = relationship(back_populates="pastes")
    revisions: Mapped[list[PasteRevision]] = relationship(
        back_populates="paste", cascade="all, delete-orphan", order_by="PasteRevision.number"
    )

    def __repr__(self) -> str:
        return f"Paste(id={self.id}, key={self.key!r}, current={self.current_number})"


class PasteRevision(Base):
    """One immutable version of a paste record (opaque PasteRecord JSON; null = removed)."""

    __tablename__ = "paste_revisions"
    __table_args__ = (UniqueConstraint("paste_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    paste_id: Mapped[int] = mapped_column(
        ForeignKey("pastes.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    parent_number: Mapped[int | None] = mapped_column(Integer)
    record_json: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    created: Mapped[datetime] = _created()

    record = JsonField("record_json")
    paste: Mapped[Paste] = relationship(back_populates="revisions")

    def __repr__(self) -> str:
        return f"PasteRevision(id={self.id}, paste_id={self.paste_id}, number={self.number})"


class Flag(Base):
    """A region a user marked on one method's anomaly map of one image."""

    __tablename__ = "flags"
    __table_args__ = (
        CheckConstraint(_in("kind", FLAG_KINDS), name="kind"),
        Index(None, "image_id", "model_id"),  # added by 0002
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    method: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    mask: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    # area and box are added (and back-filled from the masks) by migration 0002
    area: Mapped[int] = mapped_column(Integer, nullable=False)
    bbox_x0: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    bbox_y0: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    bbox_x1: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    bbox_y1: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    author: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )

    image: Mapped[Image] = relationship()
    model: Mapped[Model] = relationship()

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Half-open box (x0, y0, x1, y1) of the flagged pixels."""
        return (self.bbox_x0, self.bbox_y0, self.bbox_x1, self.bbox_y1)

    def decoded_mask(self) -> np.ndarray:
        """The full-frame boolean mask; a corrupt blob raises InputError naming this row."""
        from db.masks import decode_mask

        try:
            return decode_mask(self.mask, expect_size=(self.width, self.height))
        except InputError as exc:
            raise InputError(f"flags row id={self.id}: {exc}") from None

    def __repr__(self) -> str:
        return f"Flag(id={self.id}, image_id={self.image_id}, kind={self.kind!r}, area={self.area})"


class EvalResult(Base):
    """One evaluation of model x method (x params) on a dataset."""

    __tablename__ = "eval_results"
    __table_args__ = (Index(None, "model_id", "method", "dataset_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    method: Mapped[str] = mapped_column(String(200), nullable=False)
    params_json: Mapped[str | None] = mapped_column(Text)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), nullable=False)
    metrics_json: Mapped[str] = mapped_column(Text, nullable=False)
    n_images: Mapped[int] = mapped_column(Integer, nullable=False)
    per_image_json: Mapped[str | None] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    seconds: Mapped[float | None] = mapped_column(Float)
    created: Mapped[datetime] = _created()

    params = JsonField("params_json")
    metrics = JsonField("metrics_json")
    per_image = JsonField("per_image_json")
    model: Mapped[Model] = relationship()
    dataset: Mapped[Dataset] = relationship()

    def __repr__(self) -> str:
        return f"EvalResult(id={self.id}, model_id={self.model_id}, method={self.method!r})"
