"""Issue 15 §7-§8: what the flag editor sends is checked, saves are idempotent, a second identical
retrain is merged, and drawing the stored flags does not grow with a per-flag full-frame cost.

* a painted layer must have the size of the frame the editor was given (the image fitted into
  PAINT_MAX_SIDE): a 1x1 layer, a second layer of another size and a 13000^2 layer are refused;
* a save carries a client token (stored as Flag.uid): a retry with the same token stores nothing
  new and answers the same flag id;
* a retrain identical to one queued or running answers that job's id instead of a second job;
* the stored-flags overlay equals the independent computation (each full-size mask resized
  nearest to the display frame, unioned per kind).
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import InputError
from db import catalog
from db import flags as dbflags

H, W = 720, 1280  # RoadAnomaly21's frame: painted on a 576x1024 copy


@pytest.fixture
def svc(tmp_path):
    from dashboard.services import Services
    from workbench.workspace import Workspace

    root = tmp_path / "train"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    ws = Workspace.open(tmp_path / "ws")
    ws.register_folder("train", root, "train", layout="segmentation")
    with ws.store.session() as s:
        catalog.register_model(s, "m", "erfnet", None, sha256="ab" * 32)
    yield Services(ws)
    ws.close()


def _image_id(svc) -> int:
    with svc.store.read() as s:
        return catalog.list_images(s, "train")[0].id


def _layer(h: int, w: int, box=None) -> np.ndarray:
    a = np.zeros((h, w, 4), np.uint8)
    y0, x0, y1, x1 = box or (0, 0, h, w)
    a[y0:y1, x0:x1] = (255, 45, 85, 255)
    return a


def _save(svc, layers, token=None):
    value = {"background": None, "layers": layers, "composite": None}
    return svc.flags.save_flag("m", _image_id(svc), "msp", None, "false positive", value, token=token)


def _flags(svc) -> list:
    with svc.store.read() as s:
        return [(f.id, f.uid, f.area) for f in dbflags.list_flags(s)]


# ============================================================================ §7 layer sizes


def test_painted_layer_must_match_the_editor_frame(svc):
    with pytest.raises(InputError, match=r"layer is 1x1 .* expected 1024x576"):
        _save(svc, [_layer(1, 1)])
    with pytest.raises(InputError, match=r"layer 2 is 300x200 .* expected 1024x576"):
        _save(svc, [_layer(576, 1024, (10, 10, 20, 20)), _layer(200, 300)])
    huge = np.broadcast_to(np.full(4, 255, np.uint8), (13000, 13000, 4))  # no memory behind it
    with pytest.raises(InputError, match=r"layer is 13000x13000"):
        _save(svc, [huge])
    assert _flags(svc) == []  # nothing stored by any refused save


def test_a_layer_of_the_frame_size_is_stored_at_full_size(svc):
    from dashboard import render

    box = (100, 200, 160, 330)  # y0, x0, y1, x1 on the 576x1024 frame
    fid = _save(svc, [_layer(576, 1024, box)])
    painted = np.zeros((576, 1024), bool)
    painted[box[0] : box[2], box[1] : box[3]] = True
    expect = render.resize_labels(painted, (H, W))  # the nearest-neighbour map to full size
    with svc.store.read() as s:
        got = dbflags.get_flag(s, fid).decoded_mask()
    assert got.shape == (H, W) and np.array_equal(got, expect)


# ============================================================================ §8 idempotence


def test_a_retried_save_with_the_same_token_stores_one_flag(svc):
    token = uuid.uuid4().hex
    layer = _layer(576, 1024, (10, 10, 50, 50))
    first = _save(svc, [layer], token=token)
    again = _save(svc, [layer], token=token)
    assert again == first
    assert [(fid, uid) for fid, uid, _ in _flags(svc)] == [(first, token)]
    other = _save(svc, [layer], token=uuid.uuid4().hex)  # a new click is a new flag
    assert other != first and len(_flags(svc)) == 2
    # other strokes sent under the stale token (the page missed the new one) are a new flag
    repainted = _save(svc, [_layer(576, 1024, (100, 100, 140, 180))], token=token)
    assert repainted not in (first, other) and len(_flags(svc)) == 3


def test_concurrent_retries_of_one_save_store_one_flag(svc):
    token = uuid.uuid4().hex
    layer = _layer(576, 1024, (30, 30, 90, 90))
    ids, errors = [], []

    def go():
        try:
            ids.append(_save(svc, [layer], token=token))
        except Exception as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(set(ids)) == 1 and len(_flags(svc)) == 1


def test_a_token_cannot_be_reused_for_another_image_or_be_malformed(svc, tmp_path):
    token = uuid.uuid4().hex
    _save(svc, [_layer(576, 1024, (0, 0, 9, 9))], token=token)
    with pytest.raises(InputError, match="token"):
        _save(svc, [_layer(576, 1024, (0, 0, 9, 9))], token="../../etc/passwd")
    with svc.store.session() as s:
        ds = catalog.get_dataset(s, "train")
        img2 = catalog.add_image(s, ds, "images/b.png", "cd" * 32, W, H).id
    value = {"background": None, "layers": [_layer(576, 1024, (0, 0, 9, 9))], "composite": None}
    with pytest.raises(InputError, match="already saved"):
        svc.flags.save_flag("m", img2, "msp", None, "false positive", value, token=token)


def test_a_second_identical_retrain_is_merged_into_the_first(tmp_path):
    from db import Store
    from db import jobs as q
    from workbench.jobs import enqueue_training

    store = Store.open(workspace=tmp_path)
    try:
        with store.session() as s:
            m = catalog.register_model(s, "m", "erfnet", None, sha256="ab" * 32)
            root = tmp_path / "d"
            ds = catalog.register_dataset(s, "d", "train", root, check_root=False)
            img = catalog.add_image(s, ds, "a.png", "ef" * 32, 8, 8)
            mask = np.zeros((8, 8), bool)
            mask[2:4, 2:4] = True
            dbflags.add_flag(s, img.id, m.id, "msp", "false_positive", mask)
        params = {"model": "m", "head": "stats", "epochs": 2, "activate": True}
        first = enqueue_training(store, params)
        assert enqueue_training(store, dict(params)) == first  # the double click
        other = enqueue_training(store, {**params, "epochs": 3})  # a different request
        assert other != first
        with store.read() as s:
            assert len(q.list_jobs(s, kind="train_head")) == 2
        # once the first has ended, the same request is a new job
        store.transact(lambda s: q.cancel_job(s, first))
        assert enqueue_training(store, dict(params)) not in (first, other)
    finally:
        store.close()


# ============================================================================ §8 overlay


def test_stored_flags_overlay_equals_the_per_flag_computation(svc):
    from dashboard import flag_layers, render
    from dashboard.services.flags import FLAG_KIND_SHORT

    rng = np.random.default_rng(1)
    image_id = _image_id(svc)
    with svc.store.session() as s:
        for i in range(40):
            y0, x0 = int(rng.integers(0, H - 60)), int(rng.integers(0, W - 60))
            m = np.zeros((H, W), bool)
            m[y0 : y0 + int(rng.integers(1, 60)), x0 : x0 + int(rng.integers(1, 60))] = True
            kind = ("false_positive", "false_negative", "ignore")[i % 3]
            dbflags.add_flag(s, image_id, 1, "msp", kind, m)
    out_hw = (288, 512)
    layers = flag_layers.kind_layers(svc.flags._flag_crops(image_id), (H, W), out_hw)
    with svc.store.read() as s:
        expect: dict[str, np.ndarray] = {}
        for f in dbflags.list_flags(s, image_id=image_id):
            small = render.resize_labels(f.decoded_mask(), out_hw)
            k = FLAG_KIND_SHORT[f.kind]
            expect[k] = expect.get(k, np.zeros(out_hw, bool)) | small
    assert sorted(layers) == sorted(expect)
    for k in expect:
        assert np.array_equal(layers[k], expect[k]), k
    overlay = svc.flags.flags_overlay(image_id, max_side=512)
    assert overlay.shape == (*out_hw, 3)
    base = render.resize_rgb(np.asarray(Image.open(svc.catalog.image_paths(image_id)[2])), out_hw)
    none = ~(expect["fp"] | expect["fn"] | expect["ignore"])
    assert np.array_equal(overlay[none], base[none])  # untouched outside every flag
    assert not np.array_equal(overlay[expect["fp"]], base[expect["fp"]])


@pytest.mark.parametrize("alpha", [0.25, 0.45])
def test_kind_layer_drawing_equals_render_blend(alpha):
    """The table-driven tint is bit-identical to render.blend + render.paint on each layer."""
    from dashboard import flag_layers, render

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    layers = {k: rng.random((96, 160)) < 0.3 for k in ("fp", "fn", "ignore")}
    expect = rgb
    for kind, m in layers.items():
        color = np.array(render.FLAG_COLORS[kind], np.uint8)
        tinted = render.blend(expect, np.broadcast_to(color, expect.shape), alpha)
        expect = np.where(m[..., None], tinted, expect)
        expect = render.paint(expect, render.outline(m, 2), tuple(int(c) for c in color))
    assert np.array_equal(flag_layers.draw_layers(rgb, layers, alpha), expect)
