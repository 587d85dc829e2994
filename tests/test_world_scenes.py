"""Procedural scenes: determinism, class coverage, geometry, occlusion, textures, source protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from anomseg.data.classes import TRAIN_ID
from anomseg.errors import InputError
from anomseg.synth.sources import BACKGROUND_SOURCES, Background, BackgroundSource
from anomseg.world.scenes import (
    WORLD_CLASSES,
    Thing,
    generate_scene,
    render_scene,
    scene_params,
)

SMALL = (128, 256)


@pytest.fixture(scope="module")
def scenes() -> dict[int, Background]:
    return {s: generate_scene(s, SMALL) for s in range(8)}


def test_same_seed_same_scene_different_seed_different():
    a, b = generate_scene(11, (96, 192)), generate_scene(11, (96, 192))
    assert a.id == "procedural:11"
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.labels, b.labels)
    c = generate_scene(12, (96, 192))
    assert not np.array_equal(a.labels, c.labels)
    assert np.abs(a.rgb.astype(int) - c.rgb.astype(int)).mean() > 5


def test_dtypes_and_shapes(scenes):
    for bg in scenes.values():
        assert bg.rgb.shape == (*SMALL, 3) and bg.rgb.dtype == np.uint8
        assert bg.labels.shape == SMALL and bg.labels.dtype == np.uint8
        assert bg.labels.max() < 19  # every pixel is a real class (no ignore)


def test_layout_does_not_depend_on_size():
    # The same street at two sizes: labels agree once the big one is subsampled.
    small = generate_scene(3, (64, 128)).labels
    big = generate_scene(3, (256, 512)).labels
    sub = big[2::4, 2::4]
    assert (sub == small).mean() > 0.85


def test_required_classes_appear_across_seeds(scenes):
    present = set()
    for bg in scenes.values():
        present |= set(np.unique(bg.labels).tolist())
    required = [
        "road",
        "sidewalk",
        "building",
        "pole",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "car",
    ]
    for name in required:
        assert TRAIN_ID[name] in present, name
    assert present & {TRAIN_ID["wall"], TRAIN_ID["fence"]}
    assert present & {TRAIN_ID["truck"], TRAIN_ID["bus"]}
    # ... and nothing outside the classes the world declares (its mIoU is taken over them)
    assert present == set(WORLD_CLASSES)


def test_road_below_and_sky_above_the_horizon(scenes):
    for seed, bg in scenes.items():
        H = bg.labels.shape[0]
        horizon = scene_params(seed).horizon * H
        road_rows = np.nonzero((bg.labels == TRAIN_ID["road"]).any(axis=1))[0]
        sky_rows = np.nonzero((bg.labels == TRAIN_ID["sky"]).any(axis=1))[0]
        assert (bg.labels[H // 2 :] == TRAIN_ID["road"]).mean() > 0.15, seed
        assert sky_rows.size and sky_rows.min() < H // 4, seed
        # The ground plane cannot be seen above the horizon, nor the sky below it.
        assert road_rows.min() >= int(horizon) - 1, seed
        assert sky_rows.max() <= horizon + 1, seed


def _two_vehicles(seed: int = 5):
    """A straight, clear scene holding only a red truck at 25 m behind a blue car at 10 m."""
    p = scene_params(seed)
    lane = -p.c0  # road coordinate of the camera's own lane centre
    truck = Thing("truck", lane, 25.0, 3.6, 2.45, (200, 30, 30), length=7.0, extra=((200, 30, 30),))
    car = Thing("car", lane, 10.0, 1.45, 1.8, (30, 40, 200), length=4.4, extra=(0.55,))
    return dataclasses.replace(
        p,
        yaw=0.0,
        curve=0.0,
        things=(truck, car),
        lighting="overcast",
        fog_dist=5000.0,
        wet=False,
    )


def test_near_car_occludes_far_truck_and_stands_on_the_road():
    p = _two_vehicles()
    H, W = 256, 512
    rgb, labels = render_scene(p, (H, W))
    f, hz, cx = p.focal * W, p.horizon * H, W / 2
    row = lambda y_m, z: int(hz + f * (p.cam_h - y_m) / z)  # noqa: E731  pinhole projection
    col = int(cx + f * (p.c0 + (-p.c0)) / 10.0)
    # Inside the near car's body, below its window line: car label, blue paint.
    y = row(0.6, 10.0)
    assert labels[y, col] == TRAIN_ID["car"]
    assert rgb[y, col, 2] > rgb[y, col, 0]
    # Above the near car's roof but within the far truck: truck label, red paint.
    y = (row(3.3, 25.0) + row(1.6, 10.0)) // 2
    assert labels[y, col] == TRAIN_ID["truck"]
    assert rgb[y, col, 0] > rgb[y, col, 2]
    # Just below the near car's wheels: road.
    y = row(0.0, 10.0) + 3
    assert labels[y, col - int(f * 0.7 / 10)] == TRAIN_ID["road"]


def test_vehicles_rest_on_ground_rows(scenes):
    from scipy import ndimage

    for seed, bg in scenes.items():
        p = scene_params(seed)
        H = bg.labels.shape[0]
        vehicles = np.isin(bg.labels, [TRAIN_ID["car"], TRAIN_ID["truck"], TRAIN_ID["bus"]])
        comp, n = ndimage.label(vehicles)
        for sl in ndimage.find_objects(comp):
            bottom = sl[0].stop - 1
            assert bottom > p.horizon * H, (seed, sl)  # nothing floats above the horizon


def test_a_car_next_to_the_camera_is_clipped_not_wrapped():
    p = _two_vehicles()
    near = dataclasses.replace(p.things[1], z=0.8)
    _, labels = render_scene(dataclasses.replace(p, things=(near,)), (96, 192))
    car = labels == TRAIN_ID["car"]
    assert car.any()
    # The car fills the bottom of the view; it must not reappear at the top (negative indices).
    assert not car[:10].any()


def test_surfaces_are_textured_not_flat(scenes):
    for seed, bg in scenes.items():
        grey = bg.rgb.astype(np.float32).mean(axis=2)
        road = bg.labels == TRAIN_ID["road"]
        assert grey[road].std() > 4.0, seed
        building = bg.labels == TRAIN_ID["building"]
        if building.sum() > 500:
            assert grey[building].std() > 8.0, seed
    # And no two scenes are lit alike: the mean road colour varies.
    means = [bg.rgb[bg.labels == TRAIN_ID["road"]].mean() for bg in scenes.values()]
    assert np.ptp(means) > 10


def test_background_source_protocol():
    src = BACKGROUND_SOURCES.get("procedural")(start=10, stop=13, size=(64, 128))
    assert isinstance(src, BackgroundSource)
    assert src.ids() == ["procedural:10", "procedural:11", "procedural:12"]
    bg = src.load("procedural:11")
    assert bg.id == "procedural:11" and bg.rgb.shape == (64, 128, 3)
    assert np.array_equal(bg.labels, generate_scene(11, (64, 128)).labels)
    for bad in ("procedural:13", "procedural:x", "coco:1", "procedural:-1"):
        with pytest.raises(InputError, match="procedural"):
            src.load(bad)
    with pytest.raises(InputError, match="size"):
        BACKGROUND_SOURCES.get("procedural")(size=(4, 4))


def test_bad_seed_or_size_is_a_clear_error():
    with pytest.raises(InputError, match="seed"):
        generate_scene(-1, (32, 64))
    with pytest.raises(InputError, match="size"):
        generate_scene(1, (4, 64))
