"""Renderer: exact ground truth / instances / pixels against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anomseg.errors import InputError
from anomseg.synth.color import lab_to_rgb, match_lightness, rgb_to_lab
from anomseg.synth.geometry import transform_object
from anomseg.synth.records import PasteRecord
from anomseg.synth.render import RenderCache, render
from anomseg.synth.sources import Background, SourceObject

H, W = 40, 60


def _background(seed: int = 0) -> Background:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    labels = np.zeros((H, W), np.uint8)  # road
    labels[:10] = 10  # sky
    labels[30:, 50:] = 255  # an ignore corner
    return Background("bg", rgb, labels)


def _objects() -> dict[tuple[str, str], SourceObject]:
    rng = np.random.default_rng(1)
    # an asymmetric "L" so a wrong flip would show; tight crop (every edge row/col is used)
    m1 = np.zeros((12, 9), bool)
    m1[:, :4] = True
    m1[8:, :] = True
    # a disc
    yy, xx = np.mgrid[:11, :11]
    m2 = (yy - 5) ** 2 + (xx - 5) ** 2 <= 25
    return {
        ("toy", "L"): SourceObject("L", rng.integers(0, 256, (12, 9, 3), dtype=np.uint8), m1),
        ("toy", "disc"): SourceObject(
            "disc", rng.integers(0, 256, (11, 11, 3), dtype=np.uint8), m2
        ),
    }


def _rec(oid: str, x: int, y: int, **kw) -> PasteRecord:
    return PasteRecord("bg", "toy", oid, x=x, y=y, **kw)


def _brute_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
    """alpha = min(1, d / (feather + 1)), d = distance to the nearest pixel outside the mask
    (the crop's surroundings count as outside), by exhaustive search."""
    h, w = mask.shape
    outside = [(i, j) for i in range(-1, h + 1) for j in range(-1, w + 1)
               if not (0 <= i < h and 0 <= j < w) or not mask[i, j]]  # fmt: skip
    alpha = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                d = min(math.hypot(i - a, j - b) for a, b in outside)
                alpha[i, j] = 1.0 if feather <= 0 else min(1.0, d / (feather + 1.0))
    return alpha


def _brute_render(bg: Background, recs: list[PasteRecord], objs, rim: str):
    """Independent reference for scale 1 / no rotation: per-pixel loops, float64."""
    rgb = bg.rgb.astype(np.float64).copy()
    gt = np.where(bg.labels == 255, 255, 0)
    inst = np.zeros((H, W), int)
    rim_px = np.zeros((H, W), bool)
    for k, r in enumerate(sorted(recs, key=lambda r: r.order), start=1):
        o = objs[(r.source, r.object_id)]
        m, c = (o.mask[:, ::-1], o.rgb[:, ::-1]) if r.flip else (o.mask, o.rgb)
        a = _brute_alpha(m, r.feather)
        h, w = m.shape
        top, left = r.y - h + 1, r.x - w // 2
        for i in range(h):
            for j in range(w):
                yy, xx = top + i, left + j
                if not m[i, j] or not (0 <= yy < H and 0 <= xx < W):
                    continue
                rgb[yy, xx] = a[i, j] * c[i, j] + (1 - a[i, j]) * rgb[yy, xx]
                inst[yy, xx] = k
                rim_px[yy, xx] = a[i, j] < 1
                if a[i, j] >= 1:
                    gt[yy, xx] = 1
                elif rim == "anomaly":
                    gt[yy, xx] = 1
                elif rim == "ignore":
                    gt[yy, xx] = 255
    return rgb, gt, inst, rim_px


SCENE = [
    _rec("L", 20, 30, flip=False, feather=2.0, order=0),
    _rec("disc", 24, 33, flip=False, feather=1.5, order=2),  # on top of the L
    _rec("L", 45, 36, flip=True, feather=0.0, order=1),
    _rec("disc", 55, 39, feather=3.0, order=3),  # partly outside, over the ignore corner
]


@pytest.mark.parametrize("rim", ["ignore", "anomaly", "normal"])
def test_ground_truth_instances_and_pixels_match_brute_force(rim: str) -> None:
    bg, objs = _background(), _objects()
    out = render(bg, SCENE, objs, rim=rim)
    ref_rgb, ref_gt, ref_inst, rim_px = _brute_render(bg, SCENE, objs, rim)
    assert out.gt.dtype == np.uint8 and out.instances.dtype == np.uint16
    np.testing.assert_array_equal(out.instances, ref_inst)
    np.testing.assert_array_equal(out.gt, ref_gt)
    # opaque and untouched pixels are exact; blended rim pixels within rounding
    exact = ~rim_px
    np.testing.assert_array_equal(out.rgb[exact], ref_rgb[exact].astype(np.uint8))
    assert np.abs(out.rgb[rim_px].astype(float) - ref_rgb[rim_px]).max() <= 1.0
    assert rim_px.any() and (ref_gt == 1).any()
    assert [r.order for r in out.records] == [0, 1, 2, 3]


def test_flip_and_scale_land_where_expected() -> None:
    objs = _objects()
    bg = _background()
    # scale 2 of the L, flipped: each source pixel becomes a 2x2 block (bilinear of a binary
    # mask thresholded at 0.5 is exact away from the edges, and the L's edges are axis-aligned)
    rec = _rec("L", 30, 35, flip=True, scale=2.0, feather=0.0)
    out = render(bg, [rec], objs)
    m = objs[("toy", "L")].mask[:, ::-1]
    big = np.kron(m, np.ones((2, 2), bool))
    expected = np.zeros((H, W), bool)
    top, left = 35 - big.shape[0] + 1, 30 - big.shape[1] // 2
    expected[top : top + big.shape[0], left : left + big.shape[1]] = big
    np.testing.assert_array_equal(out.instances == 1, expected)
    np.testing.assert_array_equal(out.gt == 1, expected)


def test_bbox_compositing_equals_full_image_reference_with_rotation() -> None:
    objs = _objects()
    bg = _background(3)
    recs = [
        _rec("L", 12, 25, scale=1.7, rotation=33.0, feather=2.5, order=2),
        _rec("disc", 15, 28, scale=0.6, flip=True, feather=1.0, order=1),
        _rec("disc", -2, 45, scale=2.2, rotation=-70.0, feather=2.0, order=3),  # clipped
        _rec("L", 200, 20, order=0),  # entirely outside: no effect
    ]
    out = render(bg, recs, objs, rim="anomaly")
    # full-image float compositing, one whole-image pass per paste
    from anomseg.synth.geometry import alpha_of, placed_box

    rgb = bg.rgb.astype(np.float32)
    inst = np.zeros((H, W), np.uint16)
    for k, r in enumerate(sorted(recs, key=lambda r: r.order), start=1):
        t = transform_object(objs[("toy", r.object_id)], r.scale, r.flip, r.rotation)
        top, left, _, _ = placed_box(r.x, r.y, t.height, t.width)
        a_full = np.zeros((H, W), np.float32)
        o_full = np.zeros((H, W, 3), np.float32)
        a = alpha_of(t.mask, r.feather)
        for i in range(t.height):
            for j in range(t.width):
                if 0 <= top + i < H and 0 <= left + j < W and t.mask[i, j]:
                    a_full[top + i, left + j] = a[i, j]
                    o_full[top + i, left + j] = t.rgb[i, j]
                    inst[top + i, left + j] = k
        rgb = np.rint(a_full[..., None] * o_full + (1 - a_full[..., None]) * rgb)
    np.testing.assert_array_equal(out.instances, inst)
    assert np.abs(out.rgb.astype(np.float32) - rgb).max() <= 1.0
    np.testing.assert_array_equal(out.gt == 1, inst > 0)


def test_border_does_not_create_a_rim() -> None:
    objs = {
        ("toy", "sq"): SourceObject(
            "sq", np.full((20, 20, 3), 9, np.uint8), np.ones((20, 20), bool)
        )
    }
    bg = _background()
    out = render(bg, [_rec("sq", 0, 15, feather=3.0)], objs, rim="ignore")
    # the square spans columns -10..9; the image edge (column 0) is deep inside it
    assert (out.gt[5:12, 0] == 1).all()
    assert (out.gt[5:12, 7:10] == 255).all()  # its real right edge is a rim


def test_deterministic_pure_and_cache() -> None:
    bg, objs = _background(), _objects()
    recs = [r.replace(photometric=True) for r in SCENE]
    bg_copy = bg.rgb.copy()
    a = render(bg, recs, objs)
    b = render(bg, recs, objs)
    for x, y in ((a.rgb, b.rgb), (a.gt, b.gt), (a.instances, b.instances)):
        assert x.tobytes() == y.tobytes()
    np.testing.assert_array_equal(bg.rgb, bg_copy)  # the background is not modified
    cache = RenderCache(maxsize=2)
    c1 = cache.render(bg, recs, objs)
    c2 = cache.render(bg, recs, objs)
    assert c1 is c2 and cache.hits == 1 and cache.misses == 1
    assert c1.rgb.tobytes() == a.rgb.tobytes()
    edited = [recs[0].replace(x=recs[0].x + 1), *recs[1:]]
    c3 = cache.render(bg, edited, objs)
    assert cache.misses == 2 and c3.rgb.tobytes() != c1.rgb.tobytes()
    with pytest.raises(ValueError):
        c1.gt[0, 0] = 7  # cached arrays are shared, so read-only


def test_changing_one_record_changes_only_its_sample() -> None:
    objs = _objects()
    bgs = [Background(f"bg{i}", _background(i).rgb, _background(i).labels) for i in range(3)]
    plans = {b.id: [r.replace(background_id=b.id) for r in SCENE] for b in bgs}
    before = {b.id: render(b, plans[b.id], objs) for b in bgs}
    plans["bg1"][2] = plans["bg1"][2].replace(flip=False)
    after = {b.id: render(b, plans[b.id], objs) for b in bgs}
    for bid in ("bg0", "bg2"):
        assert before[bid].rgb.tobytes() == after[bid].rgb.tobytes()
        assert before[bid].gt.tobytes() == after[bid].gt.tobytes()
    assert before["bg1"].gt.tobytes() != after["bg1"].gt.tobytes()


def test_photometric_changes_only_object_pixels_and_moves_lightness() -> None:
    # a bright object on a dark road: matching pulls its lightness down
    obj = SourceObject("w", np.full((10, 10, 3), 230, np.uint8), np.ones((10, 10), bool))
    bg = Background("bg", np.full((H, W, 3), 40, np.uint8), np.zeros((H, W), np.uint8))
    plain = render(bg, [_rec("w", 30, 30, feather=0.0)], {("toy", "w"): obj})
    matched = render(bg, [_rec("w", 30, 30, feather=0.0, photometric=True)], {("toy", "w"): obj})
    inside = plain.instances == 1
    np.testing.assert_array_equal(plain.rgb[~inside], matched.rgb[~inside])
    assert matched.rgb[inside].mean() < plain.rgb[inside].mean() - 100
    np.testing.assert_array_equal(plain.gt, matched.gt)


def test_lab_against_published_values() -> None:
    # reference Lab (D65) values of sRGB primaries, e.g. from Bruce Lindbloom's calculator
    rgb = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    ref = np.array([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                    [32.30, 79.19, -107.86]])  # fmt: skip
    np.testing.assert_allclose(rgb_to_lab(rgb), ref, atol=0.05)
    grid = np.random.default_rng(0).integers(0, 256, (500, 3), dtype=np.uint8)
    assert np.abs(lab_to_rgb(rgb_to_lab(grid)).astype(int) - grid).max() <= 1
    # match_lightness keeps chroma: a/b unchanged up to rounding
    obj = np.full((4, 4, 3), (200, 60, 60), np.uint8)
    out = match_lightness(obj, np.ones((4, 4), bool), np.full((9, 3), 90, np.uint8))
    assert np.abs(rgb_to_lab(out)[..., 1:] - rgb_to_lab(obj)[..., 1:]).max() < 2.5


def test_bad_inputs() -> None:
    bg, objs = _background(), _objects()
    with pytest.raises(InputError, match="rim"):
        render(bg, SCENE, objs, rim="maybe")
    with pytest.raises(InputError, match="labels"):
        render(bg, SCENE, objs, labels=(0, 1, 1))
    with pytest.raises(InputError, match="background 'other'"):
        render(bg, [SCENE[0].replace(background_id="other")], objs)
    with pytest.raises(InputError, match="not available"):
        render(bg, [SCENE[0].replace(object_id="nope")], objs)
    custom = render(bg, SCENE, objs, rim="ignore", labels=(3, 7, 200))
    ref = render(bg, SCENE, objs, rim="ignore")
    lut = np.arange(256, dtype=np.uint8)
    lut[0], lut[1], lut[255] = 3, 7, 200
    np.testing.assert_array_equal(custom.gt, lut[ref.gt])


def test_alpha_matches_a_full_distance_transform() -> None:
    from scipy import ndimage

    from anomseg.synth.geometry import alpha_of

    rng = np.random.default_rng(5)
    for _ in range(20):
        h, w = rng.integers(1, 40, 2)
        mask = (
            ndimage.binary_opening(rng.random((h, w)) < 0.7)
            if h > 2 and w > 2
            else np.ones((h, w), bool)
        )
        feather = float(rng.choice([0.0, 0.5, 1.0, 1.5, 2.0, 3.7, 6.0]))
        d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        want = np.where(mask, np.minimum(d / (feather + 1), 1.0) if feather > 0 else 1.0, 0.0)
        np.testing.assert_allclose(alpha_of(mask, feather), want, atol=1e-6)


def test_placement_footprint_equals_render_footprint() -> None:
    from anomseg.synth.geometry import transform_mask

    rng = np.random.default_rng(9)
    objs = list(_objects().values())
    yy, xx = np.mgrid[:57, :31]
    blob = ((yy - 28) / 28.5) ** 2 + ((xx - 15) / 15.5) ** 2 <= 1 + 0.2 * np.sin(yy / 3.0)
    objs.append(SourceObject("b", rng.integers(0, 256, (57, 31, 3), dtype=np.uint8), blob))
    for _ in range(60):
        obj = objs[rng.integers(len(objs))]
        scale = float(rng.uniform(0.05, 4.0))
        flip = bool(rng.random() < 0.5)
        rotation = float(rng.choice([0.0, rng.uniform(-180, 180)]))
        t = transform_object(obj, scale, flip, rotation)
        np.testing.assert_array_equal(transform_mask(obj, scale, flip, rotation), t.mask)
        assert t.rgb.shape[:2] == t.mask.shape
