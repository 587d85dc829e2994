"""Image reading and atomic writing for the paste engine (PIL; errors name the file)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from anomseg.errors import DatasetError


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8; unreadable files raise DatasetError naming them."""
    path = Path(path)
    im = _open(path)
    try:
        with im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:  # truncated data shows up on decode, not on open
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG as (H, W) uint8 (values > 255 are an error)."""
    path = Path(path)
    im = _open(path)
    try:
        with im:
            if im.mode in ("RGB", "RGBA"):
                raise DatasetError(f"label image {path} has mode {im.mode}; expected one channel")
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    if arr.ndim != 2:
        raise DatasetError(f"label image {path} has shape {arr.shape}; expected (H, W)")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(f"label image {path} has values outside 0..255")
        arr = arr.astype(np.uint8)
    return arr


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


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
