"""Compact binary encoding of flag region masks.

A flag mask is a full-frame boolean array; most of it is empty, so the store keeps only the
bounding box of the set pixels, bit-packed and deflated::

    b"AMK1" | width u32 | height u32 | x0 u32 | y0 u32 | x1 u32 | y1 u32 | zlib(packbits(crop))

(little endian; the box is half-open, ``x1``/``y1`` exclusive; an empty mask has an empty box and
no payload). ``decode_mask`` validates every field and raises ``InputError`` on anything else, so
a corrupt row or a hostile upload never reaches numpy as garbage. ``mask_to_png`` /
``mask_from_png`` give the 1-bit PNG form used by exports.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from anomseg.errors import InputError

MAGIC = b"AMK1"
_HEADER = struct.Struct("<4s6I")
MAX_SIDE = 1 << 14  # 16384 px: far above any road-scene frame, bounds memory to 256 MiB


@dataclass(frozen=True)
class MaskInfo:
    """Size, bounding box (x0, y0, x1, y1 half-open) and area of an encoded mask."""

    width: int
    height: int
    bbox: tuple[int, int, int, int]
    area: int


def as_bool_mask(mask: object, what: str = "mask") -> np.ndarray:
    """A 2-D boolean copy of ``mask`` (bool, or numbers where non-zero is set)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (height x width), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.copy()
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what} must be boolean or numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return arr != 0


def _check_side(width: int, height: int, what: str) -> None:
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise InputError(f"{what}: size {width}x{height} is outside 1..{MAX_SIDE} pixels per side")


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open bounding box (x0, y0, x1, y1) of the set pixels; (0, 0, 0, 0) when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def encode_mask(mask: object) -> bytes:
    """Encode a 2-D mask into the compact ``AMK1`` bytes form."""
    m = as_bool_mask(mask)
    h, w = m.shape
    _check_side(w, h, "mask")
    x0, y0, x1, y1 = bbox_of(m)
    payload = b""
    if x1 > x0:
        payload = zlib.compress(np.packbits(m[y0:y1, x0:x1], axis=None).tobytes(), 6)
    return _HEADER.pack(MAGIC, w, h, x0, y0, x1, y1) + payload


def mask_info(data: bytes) -> MaskInfo:
    """Validate an encoded mask and return its size, box and area without keeping the array."""
    m = decode_mask(data)
    return MaskInfo(m.shape[1], m.shape[0], bbox_of(m), int(m.sum()))


@dataclass(frozen=True)
class MaskCrop:
    """A decoded mask as its frame size and the tight crop of its set pixels (no full frame)."""

    width: int
    height: int
    x0: int
    y0: int
    crop: np.ndarray  # bool (y1 - y0, x1 - x0); empty (0, 0) for an empty mask

    def full(self) -> np.ndarray:
        """The full-frame boolean (height, width) mask."""
        out = np.zeros((self.height, self.width), dtype=bool)
        h, w = self.crop.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.crop
        return out


def decode_mask(data: bytes, *, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``AMK1`` bytes into a boolean (height, width) array; validates everything.

    ``expect_size`` is (width, height); a mismatch is an ``InputError``.
    """
    return decode_crop(data, expect_size=expect_size).full()


def decode_crop(data: bytes, *, expect_size: tuple[int, int] | None = None) -> MaskCrop:
    """Decode and validate ``AMK1`` bytes like ``decode_mask`` without building the full frame
    (a flag's box is usually a small part of a 2-megapixel image)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"encoded mask must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise InputError("encoded mask is not an anomseg mask (missing 'AMK1' header)")
    _, w, h, x0, y0, x1, y1 = _HEADER.unpack_from(data)
    _check_side(w, h, "encoded mask")
    if expect_size is not None and (w, h) != tuple(expect_size):
        raise InputError(
            f"mask size {w}x{h} does not match the expected {expect_size[0]}x{expect_size[1]}"
        )
    payload = data[_HEADER.size :]
    if (x0, y0, x1, y1) == (0, 0, 0, 0):
        if payload:
            raise InputError("encoded mask has an empty box but carries pixel data")
        return MaskCrop(w, h, 0, 0, np.zeros((0, 0), dtype=bool))
    if not (x0 < x1 <= w and y0 < y1 <= h):
        raise InputError(f"encoded mask box ({x0},{y0},{x1},{y1}) is outside its {w}x{h} frame")
    n = (x1 - x0) * (y1 - y0)
    want = (n + 7) // 8
    dec = zlib.decompressobj()
    try:
        # max_length bounds memory: a hostile payload cannot inflate past what the box needs
        raw = dec.decompress(payload, want + 1)
    except zlib.error as exc:
        raise InputError(f"encoded mask pixel data is corrupt ({exc})") from None
    if len(raw) != want or not dec.eof or dec.unconsumed_tail or dec.unused_data:
        raise InputError(
            f"encoded mask pixel data has the wrong length (expected {want} packed bytes "
            f"for a {x1 - x0}x{y1 - y0} box)"
        )
    crop = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)
    crop = crop.reshape(y1 - y0, x1 - x0)
    # The box must be tight, or two encodings of one mask would differ (and export round trips
    # would not be byte-exact).
    if bbox_of(crop) != (0, 0, x1 - x0, y1 - y0):
        raise InputError("encoded mask box is not the tight bounding box of its pixels")
    return MaskCrop(w, h, x0, y0, crop)


def mask_to_png(mask: object) -> bytes:
    """Encode a mask as a 1-bit PNG (white = set)."""
    from PIL import Image

    m = as_bool_mask(mask)
    _check_side(m.shape[1], m.shape[0], "mask")
    buf = io.BytesIO()
    Image.fromarray(m).convert("1").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def mask_from_png(data: bytes, *, what: str = "mask PNG") -> np.ndarray:
    """Decode a PNG mask (1-bit, grey or RGB(A); non-zero = set) with size and format checks."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise InputError(f"{what} is a {im.format} file, expected PNG")
            _check_side(im.width, im.height, what)
            im.load()
            if im.mode in ("RGBA", "LA"):
                arr = np.asarray(im)[..., -1]
            elif im.mode == "RGB":
                arr = np.asarray(im).max(axis=-1)
            else:
                arr = np.asarray(im.convert("L"))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{what} is not a readable PNG ({exc})") from None
    return arr != 0
