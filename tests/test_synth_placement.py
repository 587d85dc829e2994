"""Placement sampler on hand-made backgrounds: determinism, class rules, geometry, reasons."""

from __future__ import annotations

import numpy as np
import pytest

from anomseg.data.classes import TRAIN_ID
from anomseg.errors import InputError
from anomseg.synth.placement import PlacementConfig, propose
from anomseg.synth.render import render
from anomseg.synth.sources import Background, SourceObject

H, W = 96, 192
ROAD, SIDEWALK, SKY, CAR, PERSON = (
    TRAIN_ID[c] for c in ("road", "sidewalk", "sky", "car", "person")
)
FORBIDDEN = {TRAIN_ID[c] for c in PlacementConfig().forbidden_classes}


def street(bid: str = "street", seed: int = 0) -> Background:
    rng = np.random.default_rng(seed)
    lab = np.full((H, W), SKY, np.uint8)
    lab[40:] = ROAD
    lab[40:, :30] = SIDEWALK
    lab[55:75, 60:100] = CAR  # a car in the middle of the road
    lab[50:90, 140:150] = PERSON
    lab[70:80, 110:125] = 255
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return Background(bid, rgb, lab)


class Bank:
    """Three hand-made objects of different shapes."""

    name = "bank"

    def __init__(self) -> None:
        yy, xx = np.mgrid[:20, :14]
        blob = ((yy - 9.5) / 10) ** 2 + ((xx - 6.5) / 7) ** 2 <= 1
        tall = np.ones((30, 8), bool)
        wide = np.ones((10, 24), bool)
        self._objs = {
            f"o{i}": SourceObject(f"o{i}", np.full((*m.shape, 3), 50 * i, np.uint8), m)
            for i, m in enumerate((blob, tall, wide))
        }

    def ids(self) -> list[str]:
        return sorted(self._objs)

    def load(self, object_id: str) -> SourceObject:
        return self._objs[object_id]


def test_deterministic_per_seed_and_background() -> None:
    bank, cfg = Bank(), PlacementConfig(rotation_range=(-15.0, 15.0))
    a, _ = propose(street("s1"), bank, 4, cfg, seed=5)
    propose(street("other"), bank, 4, cfg, seed=5)  # interleaved work must not matter
    b, _ = propose(street("s1"), bank, 4, cfg, seed=5)
    c, _ = propose(street("s1"), bank, 4, cfg, seed=6)
    d, _ = propose(street("s2"), bank, 4, cfg, seed=5)
    assert a == b and len(a) == 4
    strip = [[r.replace(background_id="x") for r in rs] for rs in (a, c, d)]
    assert strip[0] != strip[1] and strip[0] != strip[2]


@pytest.mark.parametrize("seed", range(6))
def test_placed_objects_respect_classes_border_area_and_coverage(seed: int) -> None:
    bank, bg = Bank(), street(seed=seed)
    cfg = PlacementConfig(rotation_range=(-20.0, 20.0), height_top=0.1, height_bottom=0.35)
    records, _ = propose(bg, bank, 5, cfg, seed=seed)
    assert records, "the street has plenty of road"
    lookup = {"bank": bank}
    for rec in records:
        # the renderer's own footprint of this paste alone, checked against the labels
        fp = render(bg, [rec], lookup, rim="anomaly").instances == 1
        under = bg.labels[fp]
        assert np.isin(under, [ROAD, SIDEWALK]).mean() >= 0.8
        assert not np.isin(under, list(FORBIDDEN)).any()
        rows, cols = np.nonzero(fp)
        assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= H - 2 and cols.max() <= W - 2
        assert rows.max() == rec.y  # anchored at the bottom
        assert cfg.area_ratio[0] <= fp.sum() / (H * W) <= cfg.area_ratio[1]
    out = render(bg, records, lookup, rim="anomaly")
    assert not np.isin(bg.labels[out.gt == 1], list(FORBIDDEN)).any()
    assert set(np.unique(out.instances)) == set(range(len(records) + 1))


def test_perspective_law_sets_the_height() -> None:
    bank = Bank()
    cfg = PlacementConfig(scale_jitter=0.0, horizon=0.4, height_top=0.05, height_bottom=0.3,
                          area_ratio=(0.0, 1.0), min_coverage=0.5, max_overlap=1.0)  # fmt: skip
    records, _ = propose(street(), bank, 12, cfg, seed=1)
    assert len(records) >= 6
    for r in records:
        crop_h = bank.load(r.object_id).mask.shape[0]
        t = min(max((r.y - 0.4 * H) / ((H - 1) - 0.4 * H), 0.0), 1.0)
        want = H * (0.05 + 0.25 * t)
        assert abs(r.scale * crop_h - want) <= 0.01 * crop_h  # scale is rounded to 4 decimals
    ys = np.array([r.y for r in records])
    hs = np.array([r.scale * bank.load(r.object_id).mask.shape[0] for r in records])
    assert np.corrcoef(ys, hs)[0, 1] > 0.99  # grows with the row


def test_no_target_pixels_gives_a_reason() -> None:
    lab = np.full((H, W), SKY, np.uint8)
    lab[50:] = CAR
    bg = Background("b", np.zeros((H, W, 3), np.uint8), lab)
    records, reason = propose(bg, Bank(), 3, PlacementConfig(), seed=0)
    assert records == [] and "no road/sidewalk pixels" in reason


def test_unplaceable_objects_give_a_reason() -> None:
    # road only in the bottom row: every object would touch the border
    lab = np.full((H, W), SKY, np.uint8)
    lab[-1:] = ROAD
    bg = Background("b", np.zeros((H, W, 3), np.uint8), lab)
    records, reason = propose(bg, Bank(), 2, PlacementConfig(max_retries=7), seed=0)
    assert records == [] and "placed 0 of 2" in reason and "touches the border x14" in reason


def test_max_overlap_limits_occlusion() -> None:
    bank = Bank()
    cfg = PlacementConfig(max_overlap=0.0, height_top=0.2, height_bottom=0.4, area_ratio=(0.0, 1.0))
    bg = street()
    records, _ = propose(bg, bank, 6, cfg, seed=3)
    masks = [render(bg, [r], {"bank": bank}).instances == 1 for r in records]
    total = np.sum(masks, axis=0)
    assert total.max() <= 1


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"min_coverage": 1.5}, "placement.min_coverage: expected a number in [0, 1]"),
        ({"target_classes": {"lawn": 1.0}}, "placement.target_classes.lawn"),
        ({"forbidden_classes": ["road"]}, "placement.forbidden_classes"),
        ({"area_ratio": (0.5, 0.1)}, "placement.area_ratio: expected [low, high]"),
        ({"rotation_range": (-200.0, 0.0)}, "-180.0 <= low"),
        ({"max_retries": 0}, "placement.max_retries: expected an integer in [1, 100000]"),
        ({"horizon": 1.0}, "placement.horizon: expected a number in [0, 1)"),
        ({"border_margin": -1}, "placement.border_margin"),
    ],
)
def test_config_validation_names_the_key(kw, needle) -> None:
    with pytest.raises(InputError) as exc:
        PlacementConfig(**kw)
    assert needle in str(exc.value)
