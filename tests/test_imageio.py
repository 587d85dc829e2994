"""Safe image / label reading: each bad file gives one InputError that names it."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import InterpolationMode, Resize

from anomseg.errors import InputError
from anomseg.imageio import (
    array_sha256,
    image_sha256,
    max_pixels,
    read_image,
    read_label,
    resize_image,
    resize_label,
)

RNG = np.random.default_rng(0)


def _rgb(h: int = 40, w: int = 56) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path, fmt: str | None = None, **kw) -> Path:
    Image.fromarray(arr).save(path, fmt, **kw)
    return path


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose IHDR claims w x h (no pixel data): what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_png_roundtrip_equals_written_pixels(tmp_path):
    a = _rgb()
    assert np.array_equal(read_image(_save(a, tmp_path / "a.png")), a)


def test_grey_and_rgba_images_become_rgb(tmp_path):
    g = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    out = read_image(_save(g, tmp_path / "g.png"))
    assert out.shape == (20, 30, 3) and all(np.array_equal(out[..., c], g) for c in range(3))
    rgba = np.dstack([_rgb(20, 30), np.full((20, 30), 7, np.uint8)])
    out = read_image(_save(rgba, tmp_path / "rgba.png"))
    assert np.array_equal(out, rgba[..., :3])


def test_missing_file_names_it(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(InputError, match="not found") as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_zero_byte_file_names_it(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_text_named_png_is_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not a picture\n" * 20)
    with pytest.raises(InputError, match="not a readable image") as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_directory_is_refused(tmp_path):
    with pytest.raises(InputError, match="directory") as e:
        read_image(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
@pytest.mark.parametrize("keep", [0.3, 0.8])
def test_truncated_image_names_file(tmp_path, fmt, ext, keep):
    full = _save(_rgb(64, 80), tmp_path / f"full.{ext}", fmt)
    data = full.read_bytes()
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_truncated_png_label_is_refused_too(tmp_path):
    full = _save(RNG.integers(0, 2, (64, 64), dtype=np.uint8), tmp_path / "l.png")
    p = tmp_path / "cut.png"
    p.write_bytes(full.read_bytes()[:-40])
    with pytest.raises(InputError, match="truncated") as e:
        read_label(p)
    assert str(p) in str(e.value)


def test_pixel_limit_argument(tmp_path):
    p = _save(_rgb(40, 50), tmp_path / "big.png")
    with pytest.raises(InputError, match="over the limit of 1999") as e:
        read_image(p, limit=1999)
    assert str(p) in str(e.value) and "2000 pixels" in str(e.value)
    assert read_image(p, limit=2000).shape == (40, 50, 3)


def test_pixel_limit_from_env(tmp_path, monkeypatch):
    p = _save(_rgb(40, 50), tmp_path / "big.png")
    monkeypatch.setenv("ANOMSEG_MAX_PIXELS", "100")
    with pytest.raises(InputError, match="decompression bomb") as e:
        read_label(p)
    assert str(p) in str(e.value)
    monkeypatch.setenv("ANOMSEG_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="ANOMSEG_MAX_PIXELS"):
        max_pixels()


def test_pil_bomb_header_is_an_input_error(tmp_path):
    # 30000 x 30000 = 900 MP: Pillow itself refuses it while opening
    p = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(InputError, match="decompression bomb") as e:
        read_image(p)
    assert str(p) in str(e.value)
    # under PIL's own threshold but over ours: our limit refuses it before decoding anything
    p2 = _png_header_only(tmp_path / "bomb2.png", 9000, 9000)
    with pytest.raises(InputError, match="over the limit") as e:
        read_image(p2)
    assert str(p2) in str(e.value)


def test_label_modes_L_P_1_and_grey_rgb_are_read_as_indices(tmp_path):
    lab = RNG.choice(np.array([0, 1, 2, 255], np.uint8), size=(24, 32))
    assert np.array_equal(read_label(_save(lab, tmp_path / "l.png")), lab)

    pal = Image.fromarray(lab, mode="L").convert("P")  # identity palette of greys
    pal.putpalette([v for i in range(256) for v in ((i * 37) % 256, i, 255 - i)])
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_label(tmp_path / "p.png"), lab)

    bits = RNG.integers(0, 2, (24, 32)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    assert np.array_equal(read_label(tmp_path / "b.png"), bits.astype(np.uint8))

    grey_rgb = np.repeat(lab[..., None], 3, axis=2)
    assert np.array_equal(read_label(_save(grey_rgb, tmp_path / "g.png")), lab)


def test_16bit_label_is_refused(tmp_path):
    p = tmp_path / "inst.png"
    Image.fromarray(np.full((10, 12), 26001, np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I")
    with pytest.raises(InputError, match="16-bit") as e:
        read_label(p)
    assert str(p) in str(e.value)


def test_colour_label_is_refused(tmp_path):
    p = _save(_rgb(10, 12), tmp_path / "colour.png")
    with pytest.raises(InputError, match="colour") as e:
        read_label(p)
    assert str(p) in str(e.value)


def test_rgba_label_is_refused(tmp_path):
    p = _save(np.zeros((10, 12, 4), np.uint8), tmp_path / "alpha.png")
    with pytest.raises(InputError, match="mode 'RGBA'") as e:
        read_label(p)
    assert str(p) in str(e.value)


def test_hashes(tmp_path):
    a = _rgb(8, 9)
    p = _save(a, tmp_path / "h.png")
    assert image_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert array_sha256(a) == array_sha256(a.copy())
    assert array_sha256(a) != array_sha256(a.reshape(9, 8, 3))  # same bytes, other shape
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert array_sha256(a) != array_sha256(b)
    assert array_sha256(np.asfortranarray(a)) == array_sha256(a)


def test_resize_matches_torchvision_on_pil():
    # the seed protocol: torchvision Resize((512, 1024)) on PIL images, bilinear / nearest
    a = _rgb(72, 128)
    lab = RNG.choice(np.array([0, 1, 255], np.uint8), size=(72, 128))
    ref_img = np.asarray(Resize((40, 96), InterpolationMode.BILINEAR)(Image.fromarray(a)))
    ref_lab = np.asarray(Resize((40, 96), InterpolationMode.NEAREST)(Image.fromarray(lab)))
    assert np.array_equal(resize_image(a, (40, 96)), ref_img)
    assert np.array_equal(resize_label(lab, (40, 96)), ref_lab)
    with pytest.raises(InputError, match="positive"):
        resize_image(a, (0, 10))
