"""Quarantine of corrupt rows: find them, name them, repair or delete them.

One damaged row (a flag whose mask blob is garbage, a paste revision or render cache whose JSON
does not parse) must not block the operations that read its neighbours. Readers call the
``*_problem`` helpers and skip what they return a reason for (with a note); ``check_store``
lists every such row with its id and reason (``anomseg db check``, the Flag tab), and
``fix_problems`` repairs what can be repaired and deletes what cannot:

* a flag with a corrupt mask is deleted (nothing in it can be trusted);
* a corrupt paste revision becomes a removal (``record`` null), so the paste's history chain
  stays intact and undo still brings back the previous record;
* a corrupt render cache is cleared (it is rebuilt from the paste records).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from anomseg.errors import InputError
from db.masks import decode_crop
from db.models import Flag, Image, PasteRevision, SyntheticSample


@dataclass(frozen=True)
class Problem:
    """One quarantined row: table, id, why, and what ``fix_problems`` does about it."""

    table: str
    id: int
    reason: str
    fix: str

    def line(self) -> str:
        return f"{self.table} id={self.id}: {self.reason} (fix: {self.fix})"


def flag_problem(flag: Flag, image: Image | None = None) -> str | None:
    """Why this flag cannot be used (corrupt mask, size unlike its image), or None."""
    try:
        decode_crop(flag.mask, expect_size=(flag.width, flag.height))
    except InputError as exc:
        return str(exc)
    image = image if image is not None else flag.image
    if image is not None and (flag.width, flag.height) != (image.width, image.height):
        return f"mask is {flag.width}x{flag.height} but its image is {image.width}x{image.height}"
    return None


def json_problem(row: Any, field: str) -> str | None:
    """Why a JSON column of ``row`` (accessed as ``field``) does not parse to an object, or None."""
    try:
        value = getattr(row, field)
    except InputError as exc:
        return str(exc).split(": ", 1)[-1]
    if value is not None and not isinstance(value, dict):
        return f"{field} is a JSON {type(value).__name__}, expected an object"
    return None


def check_store(session: Session) -> list[Problem]:
    """Every corrupt flag, paste revision and render cache in the store, by table and id."""
    out: list[Problem] = []
    images = {i.id: i for i in session.scalars(select(Image))}
    for f in session.scalars(select(Flag).order_by(Flag.id)):
        why = flag_problem(f, images.get(f.image_id))
        if why:
            out.append(Problem("flags", f.id, why, "delete the flag"))
    for r in session.scalars(select(PasteRevision).order_by(PasteRevision.id)):
        why = json_problem(r, "record")
        if why:
            out.append(
                Problem(
                    "paste_revisions",
                    r.id,
                    f"paste {r.paste_id} revision {r.number}: {why}",
                    "turn it into a removal (undo brings back the previous record)",
                )
            )
    for sm in session.scalars(select(SyntheticSample).order_by(SyntheticSample.id)):
        why = json_problem(sm, "render")
        if why:
            out.append(Problem("synthetic_samples", sm.id, why, "clear the render cache"))
    return out


def fix_problems(session: Session, problems: list[Problem]) -> list[str]:
    """Repair or delete the rows of ``problems`` (re-checked first); returns what was done."""
    done = []
    for p in problems:
        if p.table == "flags":
            f = session.get(Flag, p.id)
            if f is not None and flag_problem(f):
                session.delete(f)
                done.append(f"deleted flag {p.id}")
        elif p.table == "paste_revisions":
            r = session.get(PasteRevision, p.id)
            if r is not None and json_problem(r, "record"):
                r.record_json, r.content_hash = None, None
                done.append(f"paste revision {p.id} is now a removal")
        elif p.table == "synthetic_samples":
            sm = session.get(SyntheticSample, p.id)
            if sm is not None and json_problem(sm, "render"):
                sm.render_json = None
                done.append(f"cleared the render cache of sample {p.id}")
    session.flush()
    return done
