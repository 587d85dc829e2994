"""The procedural object bank: masks, determinism, sizes, colours, ObjectSource protocol."""

from __future__ import annotations

import colorsys
import re

import numpy as np
import pytest

from anomseg.errors import InputError
from anomseg.synth.sources import OBJECT_SOURCES, ObjectSource
from anomseg.world import objects
from anomseg.world.objects import CATEGORIES, ObjectBank, height_m, make_object, object_id

# Plausible real heights (m) of each category, from the world, not from the code.
HEIGHTS = {
    "dog": (0.3, 1.1),
    "cow": (1.0, 2.2),
    "deer": (1.1, 2.3),
    "box": (0.2, 2.2),
    "tyre": (0.1, 0.9),
    "rock": (0.1, 0.9),
    "debris": (0.03, 0.6),
    "chair": (0.7, 1.1),
    "sofa": (0.6, 1.0),
    "table": (0.6, 0.85),
    "cone": (0.4, 0.8),
    "barrel": (0.8, 1.1),
    "suitcase": (0.5, 1.0),
    "sack": (0.25, 0.75),
}


def test_every_category_is_listed_with_a_height_range():
    assert set(CATEGORIES) == set(HEIGHTS)
    assert {"dog", "cow", "deer", "box", "tyre", "chair", "sofa", "table"} <= set(CATEGORIES)


@pytest.mark.parametrize("category", sorted(HEIGHTS))
def test_objects_have_tight_nonempty_masks_and_plausible_sizes(category):
    for i in (0, 7, 151):
        oid = object_id(category, i)
        obj = make_object(oid)
        assert obj.id == oid and obj.category == category
        assert obj.rgb.dtype == np.uint8 and obj.mask.dtype == bool
        assert obj.rgb.shape == (*obj.mask.shape, 3)
        m = obj.mask
        assert m.sum() > 50
        # Tight crop: the mask touches all four borders of its crop.
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
        assert not obj.rgb[~m].any()  # nothing outside the mask
        lo, hi = HEIGHTS[category]
        assert lo <= height_m(oid) <= hi, (oid, height_m(oid))
        # Textured, not a flat fill.
        assert obj.rgb[m].astype(np.float32).std(axis=0).max() > 3.0


def test_same_id_same_object_and_ids_differ():
    draw = objects._draw.__wrapped__  # bypass the cache: draw twice from scratch
    a, _ = draw("bank:dog-0003")
    b, _ = draw("bank:dog-0003")
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.mask, b.mask)
    c, _ = draw("bank:dog-0004")
    assert a.mask.shape != c.mask.shape or not np.array_equal(a.rgb, c.rgb)


def test_colours_are_muted_not_neon():
    neon = 0
    total = 0
    for cat in CATEGORIES:
        for i in range(4):
            obj = make_object(object_id(cat, i))
            px = obj.rgb[obj.mask][::7].astype(np.float32) / 255
            hsv = np.array([colorsys.rgb_to_hsv(*p) for p in px])
            neon += int(((hsv[:, 1] > 0.9) & (hsv[:, 2] > 0.9)).sum())
            total += len(px)
    assert neon / total < 0.02


def test_object_source_protocol_and_errors():
    bank = OBJECT_SOURCES.get("bank")(categories=["cow", "box"], start=3, stop=6)
    assert isinstance(bank, ObjectSource) and bank.name == "bank"
    ids = bank.ids()
    assert ids == [
        "bank:cow-0003",
        "bank:cow-0004",
        "bank:cow-0005",
        "bank:box-0003",
        "bank:box-0004",
        "bank:box-0005",
    ]
    assert all(re.fullmatch(r"bank:[a-z]+-\d{4}", i) for i in ids)
    assert bank.load("bank:box-0004").category == "box"
    for bad in ("bank:dog-0003", "bank:cow-0006", "bank:unicorn-0001", "cow-0003", "bank:cow-3"):
        with pytest.raises(InputError, match="object"):
            bank.load(bad)
    with pytest.raises(InputError, match="unicorn"):
        ObjectBank(categories=["unicorn"])
    assert len(ObjectBank().ids()) == len(CATEGORIES) * objects.PER_CATEGORY
