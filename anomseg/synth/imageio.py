"""Image reading (via ``anomseg.imageio``) and deterministic encoding for the paste engine.

Files are written with ``anomseg.atomic.atomic_write``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from anomseg import imageio as _io
from anomseg.errors import DatasetError, InputError


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8; unreadable files raise DatasetError naming them.

    Decoding (full decode, truncation and pixel-bomb checks) is ``anomseg.imageio``'s; a source
    file that cannot be read is a dataset problem here, hence the error type.
    """
    try:
        return _io.read_image(path)
    except InputError as exc:
        raise DatasetError(str(exc)) from None


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG as (H, W) uint8 (see ``read_rgb`` for errors)."""
    try:
        return _io.read_label(path)
    except InputError as exc:
        raise DatasetError(str(exc)) from None


def encode_image(arr: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode uint8 RGB / L or uint16 arrays deterministically (PNG: no timestamps)."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(arr))  # uint16 (H, W) -> mode I;16
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpg":
        im.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()

