"""Flag-mask encoding: exact round trips (property-based) and garbage refused with InputError."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from anomseg.errors import InputError
from db.masks import (
    MAGIC,
    bbox_of,
    decode_mask,
    encode_mask,
    mask_from_png,
    mask_info,
    mask_to_png,
)

masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(bool, hw, elements=st.booleans())
)


@settings(max_examples=200, deadline=None)
@given(masks)
def test_round_trip_exact(m: np.ndarray) -> None:
    data = encode_mask(m)
    out = decode_mask(data, expect_size=(m.shape[1], m.shape[0]))
    assert out.dtype == bool and out.shape == m.shape
    assert np.array_equal(out, m)
    info = mask_info(data)
    assert info.area == int(m.sum())
    # box by brute force over set pixels
    ys, xs = np.nonzero(m)
    want = (0, 0, 0, 0) if len(xs) == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert info.bbox == tuple(int(v) for v in want)
    assert encode_mask(out) == data  # canonical: same mask, same bytes


@settings(max_examples=60, deadline=None)
@given(masks)
def test_png_round_trip(m: np.ndarray) -> None:
    assert np.array_equal(mask_from_png(mask_to_png(m)), m)


def test_sparse_mask_is_compact() -> None:
    m = np.zeros((1024, 2048), bool)
    m[500:540, 1000:1100] = True
    data = encode_mask(m)
    assert len(data) < 200  # vs 262 kB bit-packed full frame
    assert np.array_equal(decode_mask(data), m)


def test_numeric_input_nonzero_is_set() -> None:
    m = np.array([[0, 255], [3, 0]], np.uint8)
    assert np.array_equal(decode_mask(encode_mask(m)), m != 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        out = decode_mask(data)
    except InputError:
        return
    assert out.dtype == bool  # only a well-formed encoding may decode


@settings(max_examples=200, deadline=None)
@given(masks, st.data())
def test_flipped_bytes_are_refused_or_valid(m: np.ndarray, data: st.DataObject) -> None:
    enc = bytearray(encode_mask(m))
    i = data.draw(st.integers(0, len(enc) - 1))
    enc[i] ^= data.draw(st.integers(1, 255))
    try:
        out = decode_mask(bytes(enc))
    except InputError:
        return
    assert out.ndim == 2 and out.dtype == bool


def _hdr(w: int, h: int, box: tuple[int, int, int, int]) -> bytes:
    return struct.pack("<4s6I", MAGIC, w, h, *box)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "header"),
        (b"PNG\x00" + bytes(24), "header"),
        (_hdr(0, 10, (0, 0, 0, 0)), "size"),
        (_hdr(10**6, 10, (0, 0, 0, 0)), "size"),
        (_hdr(10, 10, (0, 0, 0, 0)) + b"x", "empty box"),
        (_hdr(10, 10, (5, 5, 11, 6)), "outside"),
        (_hdr(10, 10, (5, 5, 5, 6)), "outside"),
        (_hdr(10, 10, (0, 0, 2, 2)) + b"notzlib", "corrupt"),
        (_hdr(10, 10, (0, 0, 2, 2)) + zlib.compress(b"\xff" * 100), "wrong length"),
        (_hdr(10, 10, (0, 0, 4, 4)) + zlib.compress(b"\x00\x00"), "tight"),
        ("text", "bytes"),
    ],
)
def test_garbage_is_input_error(data: object, words: str) -> None:
    with pytest.raises(InputError, match=words):
        decode_mask(data)  # type: ignore[arg-type]


def test_zip_bomb_payload_bounded() -> None:
    # a 2x2 box whose payload inflates to 50 MB: refused without inflating it all
    bomb = zlib.compress(bytes(50_000_000), 9)
    with pytest.raises(InputError, match="wrong length"):
        decode_mask(_hdr(10, 10, (0, 0, 2, 2)) + bomb)


def test_expected_size_mismatch() -> None:
    data = encode_mask(np.ones((4, 6), bool))
    with pytest.raises(InputError, match="6x4 does not match the expected 4x6"):
        decode_mask(data, expect_size=(4, 6))


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 3)), np.zeros(5), np.array([["a"]])])
def test_encode_rejects_non_2d_or_non_numeric(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        encode_mask(bad)


def test_png_garbage_and_wrong_format() -> None:
    import io

    from PIL import Image

    with pytest.raises(InputError, match="not a readable PNG"):
        mask_from_png(b"definitely not a png")
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="JPEG")
    with pytest.raises(InputError, match="JPEG"):
        mask_from_png(buf.getvalue())


def test_bbox_of_empty() -> None:
    assert bbox_of(np.zeros((3, 3), bool)) == (0, 0, 0, 0)
