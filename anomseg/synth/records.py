"""The paste record: one object pasted onto one background, as small, editable, hashable data.

A record says *what* is pasted *where* and *how*; the picture is a pure function of the records
(see ``anomseg.synth.render``). Geometry conventions, shared by placement and renderer:

* ``x``, ``y``: the object's anchor in background pixels (column, row) = the bottom-centre of the
  transformed object: its lowest mask row is row ``y`` and its mask columns span
  ``[x - w // 2, x - w // 2 + w)`` where ``w`` is the width of the transformed mask's tight box.
  Objects stand on the road, so the anchor is where they touch it.
* ``scale``: resize factor applied to the source crop (pasted height = round(scale * crop height)
  before rotation). 1.0 pastes the crop at its native size.
* ``flip``: mirror left-right (applied first); ``rotation``: degrees counter-clockwise about the
  object's centre (applied after scaling).
* ``feather``: width in pixels of the soft edge, which lies *inside* the object mask; the interior
  farther than ``feather`` from the mask boundary is opaque. 0 = hard edge.
* ``photometric``: match the object's lightness to its surroundings (Lab) before compositing.
* ``order``: compositing order; higher orders are pasted later and occlude lower ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from anomseg.errors import InputError

COORD_LIMIT = 1_000_000
SCALE_RANGE = (0.0, 64.0)  # exclusive low, inclusive high
ROTATION_RANGE = (-180.0, 180.0)
FEATHER_RANGE = (0.0, 64.0)
ORDER_RANGE = (0, 2**31 - 1)
MAX_ID_LEN = 1024


def short_repr(value: Any) -> str:
    """A short repr for messages (never raises, even for a 10_000-digit int)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise InputError(
            f"paste record field {name!r}: expected a non-empty string of at most {MAX_ID_LEN} "
            f"characters, got {short_repr(value)}"
        )
    return value


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(
            f"paste record field {name!r}: expected an integer in [{lo}, {hi}], got {short_repr(value)}"
        )
    return value


def _check_float(name: str, value: Any, lo: float, hi: float, *, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if ok:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            value, ok = math.inf, False
        ok = (
            ok
            and math.isfinite(value)
            and (lo < value if open_low else lo <= value)
            and value <= hi
        )
    if not ok:
        rng = f"({lo}, {hi}]" if open_low else f"[{lo}, {hi}]"
        raise InputError(
            f"paste record field {name!r}: expected a number in {rng}, got {short_repr(value)}"
        )
    return value + 0.0  # -0.0 -> 0.0 so equal values hash equally


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(
            f"paste record field {name!r}: expected true or false, got {short_repr(value)}"
        )
    return value


@dataclass(frozen=True)
class PasteRecord:
    """One paste: which object goes where on which background, and how it is blended."""

    background_id: str
    source: str
    object_id: str
    x: int
    y: int
    scale: float = 1.0
    flip: bool = False
    rotation: float = 0.0
    feather: float = 2.0
    photometric: bool = False
    order: int = 0

    def __post_init__(self) -> None:
        # Validate on construction so an invalid record can never exist (and hash).
        checked = {
            "background_id": _check_str("background_id", self.background_id),
            "source": _check_str("source", self.source),
            "object_id": _check_str("object_id", self.object_id),
            "x": _check_int("x", self.x, -COORD_LIMIT, COORD_LIMIT),
            "y": _check_int("y", self.y, -COORD_LIMIT, COORD_LIMIT),
            "scale": _check_float("scale", self.scale, *SCALE_RANGE, open_low=True),
            "flip": _check_bool("flip", self.flip),
            "rotation": _check_float("rotation", self.rotation, *ROTATION_RANGE),
            "feather": _check_float("feather", self.feather, *FEATHER_RANGE),
            "photometric": _check_bool("photometric", self.photometric),
            "order": _check_int("order", self.order, *ORDER_RANGE),
        }
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The record as a plain JSON-able dict (field name -> value)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys, no spaces): equal records give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> PasteRecord:
        """Parse a dict strictly: unknown / missing keys and bad values raise InputError."""
        if not isinstance(data, dict):
            raise InputError(
                f"paste record: expected a JSON object, got {type(data).__name__} {short_repr(data)}"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InputError(
                f"paste record: unknown field(s) {', '.join(map(repr, unknown))}; "
                f"expected fields: {', '.join(known)}"
            )
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise InputError(f"paste record: missing field(s) {', '.join(map(repr, missing))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes | dict[str, Any]) -> PasteRecord:
        """Parse JSON text (or an already-decoded dict); any bad input raises InputError."""
        if isinstance(text, dict):
            return cls.from_dict(text)
        if not isinstance(text, str | bytes | bytearray):
            raise InputError(f"paste record: expected JSON text, got {type(text).__name__}")
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN, deep nest
            raise InputError(f"paste record: invalid JSON ({exc})") from None
        return cls.from_dict(data)

    def content_hash(self) -> str:
        """sha256 hex digest of the canonical JSON; changes when any field changes."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def replace(self, **changes: Any) -> PasteRecord:
        """A copy with some fields changed (validated like a new record)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InputError(
                f"paste record: unknown field(s) {', '.join(map(repr, unknown))}; "
                f"expected fields: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **changes)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def records_hash(records: list[PasteRecord] | tuple[PasteRecord, ...]) -> str:
    """One sha256 over a sequence of records (order-sensitive)."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.content_hash().encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()
