"""Safe image and label-map reading: every failure is one ``InputError`` naming the file.

Images are decoded fully (a truncated PNG/JPEG/WEBP fails here, not later inside a model), with a
pixel-count limit against decompression bombs (``ANOMSEG_MAX_PIXELS`` or an argument, default
64 MP). Pixels are returned as stored: no EXIF rotation, so label maps stay aligned with images.

Label maps must hold class indices in one 8-bit channel. Accepted: ``L`` (Cityscapes gtFine,
SegmentMeIfYouCan, Fishyscapes), ``P`` (a palette PNG, whose indices *are* the labels, as in
PASCAL-style datasets), ``1`` (a bilevel mask, read as 0/1) and an ``RGB`` file whose three
channels are equal (grey saved as colour). Refused with a message: 16-bit and 32-bit maps
(instance-id maps such as Cityscapes' ``*_instanceIds.png`` look like this), colour maps, and maps
with an alpha channel.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from anomseg.errors import InputError
from anomseg.hashing import file_sha256
from anomseg.settings import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_pixels_env

# LOAD_TRUNCATED_IMAGES is a PIL global that other libraries sometimes switch on; we force it off
# for the duration of a decode, under a lock so that concurrent readers see a consistent value.
_TRUNCATION_LOCK = threading.Lock()

_GREY_LABEL_MODES = {"L", "P", "1"}


def max_pixels(limit: int | None = None) -> int:
    """The pixel-count limit in force: ``limit`` if given, else $ANOMSEG_MAX_PIXELS, else 64 MP."""
    if limit is not None:
        if limit <= 0:
            raise InputError(f"max_pixels must be a positive integer, got {limit}")
        return int(limit)
    from_env = max_pixels_env()
    return DEFAULT_MAX_PIXELS if from_env is None else from_env


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot stat file ({exc.strerror or exc})") from None
    if size == 0:
        raise InputError(f"{path}: file is empty (0 bytes), expected an image")


def open_image(path: str | os.PathLike, limit: int | None = None) -> Image.Image:
    """Open and fully decode an image file; any problem -> ``InputError`` naming the file."""
    path = Path(path)
    _check_file(path)
    limit_px = max_pixels(limit)
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces PIL's global one; its warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise InputError(
            f"{path}: image is too large (a possible decompression bomb); "
            f"limit is {limit_px} pixels (set ${MAX_PIXELS_ENV} to raise it)"
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{path}: not a readable image (expected PNG, JPEG, WEBP or another format Pillow reads)"
        ) from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: image is truncated or corrupt, cannot read its header ({exc})"
        ) from None

    w, h = im.size
    if w * h > limit_px:
        im.close()
        raise InputError(
            f"{path}: image is {w}x{h} = {w * h} pixels, over the limit of {limit_px} "
            f"(a possible decompression bomb; set ${MAX_PIXELS_ENV} to raise it)"
        )
    if w == 0 or h == 0:
        im.close()
        raise InputError(f"{path}: image has zero size ({w}x{h})")
    try:
        with _TRUNCATION_LOCK:
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                im.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except Exception as exc:  # PIL raises OSError, SyntaxError, zlib/struct errors, ...
        im.close()
        raise InputError(
            f"{path}: image is truncated or corrupt, cannot decode it ({type(exc).__name__}: {exc})"
        ) from None
    return im


def read_image(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array of shape (H, W, 3)."""
    path = Path(path)
    im = open_image(path, limit)
    try:
        return pil_to_rgb(im, name=str(path))
    finally:
        im.close()


def pil_to_rgb(im: Image.Image, name: str = "image") -> np.ndarray:
    """Convert a decoded PIL image to RGB ``uint8`` (H, W, 3); 16-bit grey is scaled to 8 bits."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = (np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("I", "F"):
        raise InputError(
            f"{name}: {mode!r} (32-bit) images are not supported; expected an 8-bit RGB or grey image"
        )
    if mode != "RGB":
        im = im.convert("RGB")  # RGBA/LA drop alpha, P/L/1/CMYK/YCbCr are expanded
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_label(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Read a label map as a single-channel ``uint8`` array (H, W) of class indices."""
    path = Path(path)
    im = open_image(path, limit)
    try:
        mode = im.mode
        if mode in _GREY_LABEL_MODES:
            # np.asarray of a 'P' image gives the palette indices, of a '1' image bools (-> 0/1)
            return np.ascontiguousarray(np.asarray(im).astype(np.uint8, copy=False))
        if mode.startswith("I;16") or mode in ("I", "F"):
            bits = "16-bit" if mode.startswith("I;16") else "32-bit"
            raise InputError(
                f"{path}: label map is {bits} (mode {mode!r}); expected an 8-bit single-channel "
                f"PNG of class indices (mode 'L' or 'P') - is this an instance-id map?"
            )
        if mode == "RGB":
            arr = np.asarray(im)
            if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(
                arr[..., 0], arr[..., 2]
            ):
                return np.ascontiguousarray(arr[..., 0])
            raise InputError(
                f"{path}: label map is a colour (RGB) image; expected an 8-bit single-channel PNG "
                f"of class indices (mode 'L' or 'P') - is this a colourised visualisation?"
            )
        raise InputError(
            f"{path}: label map has mode {mode!r}; expected an 8-bit single-channel PNG of class "
            f"indices (mode 'L' or 'P')"
        )
    finally:
        im.close()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header only (cheap); errors name the file."""
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise InputError(f"{path}: image is too large (a possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise InputError(
            f"{path}: not a readable image (expected PNG, JPEG, WEBP or another format Pillow reads)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: image is truncated or corrupt, cannot read its header ({exc})"
        ) from None
    return h, w


def image_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes: THE identity of an image file, the same in the
    store (``Image.sha256``), the Predictor's cache, the feature cache and the protocol card."""
    path = Path(path)
    _check_file(path)
    return file_sha256(path)


def array_sha256(arr: np.ndarray) -> str:
    """sha256 hex digest of an array's content, shape and dtype (equal pixels -> equal digest)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise InputError(f"resize target must be positive (H, W), got {tuple(size)}")
    return h, w


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB ``uint8`` image to ``size`` = (H, W), as Pillow (and
    torchvision's ``Resize`` on PIL images, the seed protocol) does it."""
    h, w = _check_size(size)
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def resize_scores(scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, no antialias: ``F.interpolate`` as methods upsample
    their maps) of an (H, W) float map to ``hw``; float32 out."""
    s = np.asarray(scores, dtype=np.float32)
    if s.shape == tuple(hw):
        return s
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(s))[None, None]
    return F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``uint8`` label map to ``size`` = (H, W) (Pillow NEAREST)."""
    h, w = _check_size(size)
    if label.shape[:2] == (h, w):
        return label
    return np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST))
