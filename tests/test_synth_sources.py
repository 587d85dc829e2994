"""COCO object source and Cityscapes background source on tiny hand-made trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import AnomsegError, DatasetError, InputError
from anomseg.synth.cityscapes import CityscapesBackgrounds
from anomseg.synth.coco import CocoObjects, decode_segmentation, solidity
from anomseg.synth.sources import BACKGROUND_SOURCES, OBJECT_SOURCES
from anomseg.synth.toydata import toy_label_ids, write_cityscapes, write_coco


@pytest.fixture
def coco(tmp_path: Path):
    info = write_coco(tmp_path / "coco")
    return tmp_path / "coco", info


def _coco(root: Path, **kw) -> CocoObjects:
    return CocoObjects(root / "instances.json", root / "images", **kw)


def _point_in_triangle_mask(tri: list[float], h: int, w: int) -> np.ndarray:
    (x0, y0), (x1, y1), (x2, y2) = zip(tri[::2], tri[1::2], strict=True)
    yy, xx = np.mgrid[:h, :w] + 0.5  # pixel centres

    def side(ax, ay, bx, by):
        return (bx - ax) * (yy - ay) - (by - ay) * (xx - ax)

    s0, s1, s2 = side(x0, y0, x1, y1), side(x1, y1, x2, y2), side(x2, y2, x0, y0)
    return ((s0 >= 0) & (s1 >= 0) & (s2 >= 0)) | ((s0 <= 0) & (s1 <= 0) & (s2 <= 0))


def test_decoders_polygon_and_both_rle_kinds(coco) -> None:
    root, info = coco
    h, w = info["size"]
    src = _coco(root, area_ratio=(0.0, 1.0))
    ann = {a: src._anns[a]["segmentation"] for a in ("1", "2", "3")}
    ellipse = decode_segmentation(ann["2"], h, w)
    np.testing.assert_array_equal(ellipse, info["ellipse"])  # compressed RLE (string counts)
    rect = decode_segmentation(ann["3"], h, w)
    np.testing.assert_array_equal(rect, info["rect"])  # uncompressed RLE (list counts)
    tri = decode_segmentation(ann["1"], h, w)
    ref = _point_in_triangle_mask(info["triangle"], h, w)
    iou = (tri & ref).sum() / (tri | ref).sum()
    assert iou > 0.9  # polygon rasterisation conventions differ only along the edges


def test_filters(coco) -> None:
    root, _ = coco
    everything = dict(area_ratio=(0.0, 1.0), aspect_ratio=(0.0, 100.0))
    # crowd (4) and border-touching (5) never pass with fully_visible
    assert _coco(root, **everything).ids() == ["1", "2", "3", "6"]
    assert _coco(root, **everything, fully_visible=False).ids() == ["1", "2", "3", "5", "6"]
    assert _coco(root, **everything, categories=["dog", "cat"]).ids() == ["1", "2", "3"]
    # bbox aspect w/h: person 15/40 = 0.375, the others > 0.6
    assert _coco(root, area_ratio=(0.0, 1.0), aspect_ratio=(0.5, 2.0)).ids() == ["1", "2", "3"]
    # area / image area (4800 px): triangle 468 -> 0.0975, rectangle 500 -> 0.104
    ids = _coco(root, aspect_ratio=(0.0, 100.0), area_ratio=(0.1, 1.0)).ids()
    assert "1" not in ids and "3" in ids
    # solidity: the filter keeps exactly the objects whose mask is solid enough
    src = _coco(root, **everything)
    sol = {i: solidity(src.load(i).mask) for i in src.ids()}
    assert sol["3"] == 1.0
    thr = sorted(sol.values())[1]
    kept = _coco(root, **everything, min_solidity=thr).ids()
    assert kept == sorted((i for i, s in sol.items() if s >= thr), key=int)


def test_solidity_of_an_l_shape_matches_the_shoelace_hull() -> None:
    m = np.zeros((12, 9), bool)
    m[:, :4] = True
    m[8:, :] = True
    # hull of the pixel squares: (0,0) (4,0) (9,8) (9,12) (0,12) as (x, y)
    pts = [(0, 0), (4, 0), (9, 8), (9, 12), (0, 12)]
    area = 0.5 * abs(
        sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1], strict=True))
    )
    assert solidity(m) == pytest.approx(m.sum() / area)


def test_load_crops_the_object(coco) -> None:
    root, info = coco
    src = _coco(root, area_ratio=(0.0, 1.0))
    obj = src.load("3")
    img = np.asarray(Image.open(root / "images" / "img2.png").convert("RGB"))
    np.testing.assert_array_equal(obj.rgb, img[20:45, 50:70])
    assert obj.mask.all() and obj.mask.shape == (25, 20) and obj.category == "cat"
    ell = src.load("2")
    ys, xs = np.nonzero(info["ellipse"])
    np.testing.assert_array_equal(
        ell.mask, info["ellipse"][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    )
    with pytest.raises(InputError, match="'4'"):
        src.load("4")  # the crowd annotation is filtered out


def test_unknown_categories_list_the_available_ones(coco) -> None:
    root, _ = coco
    with pytest.raises(InputError) as exc:
        _coco(root, categories=["dog", "giraffe"])
    msg = str(exc.value)
    assert "giraffe" in msg and "available: cat, dog, person" in msg


def test_unreadable_files_are_named(coco, tmp_path: Path) -> None:
    root, _ = coco
    (root / "images" / "img1.png").write_bytes(b"not a png at all")
    src = _coco(root, area_ratio=(0.0, 1.0))
    with pytest.raises(DatasetError, match="img1.png"):
        src.load("1")
    with pytest.raises(DatasetError, match="nope.json"):
        CocoObjects(root / "nope.json", root / "images")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json"):
        CocoObjects(tmp_path / "bad.json", root / "images")


def test_cityscapes_reads_both_label_kinds(tmp_path: Path) -> None:
    kinds = write_cityscapes(tmp_path / "cs")
    src = CityscapesBackgrounds(tmp_path / "cs", split="train")
    assert src.ids() == sorted(kinds)
    bg = src.load("train/toyburg/toyburg_000000_000001")  # labelIds
    lab_ids = toy_label_ids(64, 128, "street")
    # official labelId -> trainId: road 7->0, sidewalk 8->1, sky 23->10, car 26->13, 0->255
    expect = {7: 0, 8: 1, 11: 2, 23: 10, 26: 13, 0: 255}
    for lid, tid in expect.items():
        assert (bg.labels[lab_ids == lid] == tid).all()
    bg2 = src.load("train/toyburg/toyburg_000000_000002")  # labelTrainIds, used as is
    stored = np.asarray(
        Image.open(
            tmp_path / "cs/gtFine/train/toyburg/toyburg_000000_000002_gtFine_labelTrainIds.png"
        )
    )
    np.testing.assert_array_equal(bg2.labels, stored)
    assert bg.rgb.shape == (64, 128, 3) and bg.labels.shape == (64, 128)
    small = CityscapesBackgrounds(tmp_path / "cs", size=(64, 32)).load(bg.id)
    assert small.rgb.shape == (32, 64, 3) and set(np.unique(small.labels)) <= set(expect.values())
    assert CityscapesBackgrounds(tmp_path / "cs", cities=["toyville"]).ids() == [
        "train/toyville/toyville_000000_000001"
    ]
    with pytest.raises(InputError, match="unknown Cityscapes background"):
        src.load("train/x/y")


def test_cityscapes_errors_name_the_files(tmp_path: Path) -> None:
    write_cityscapes(tmp_path / "cs")
    with pytest.raises(DatasetError, match="leftImg8bit/val"):
        CityscapesBackgrounds(tmp_path / "cs", split="val")
    img = tmp_path / "cs/leftImg8bit/train/toyville/toyville_000000_000001_leftImg8bit.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    src = CityscapesBackgrounds(tmp_path / "cs")
    with pytest.raises(AnomsegError, match="toyville_000000_000001_leftImg8bit.png"):
        src.load("train/toyville/toyville_000000_000001")
    (tmp_path / "cs/gtFine/train/toyville/toyville_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="toyville_000000_000001_gtFine_labelIds.png"):
        CityscapesBackgrounds(tmp_path / "cs")


def test_registered_names() -> None:
    assert "coco" in OBJECT_SOURCES and "cityscapes" in BACKGROUND_SOURCES
