"""What moved out of the dashboard's services into the core and the store (issue 13): the ground
truth look-up (``anomseg.data.benchmark.read_anomaly_label``), the hand-edit placement check
(``anomseg.synth.placement.check_placement``) and the store's small queries (``db``), each
checked against an independent computation (the benchmark reader, a pixel count, a brute-force
pass over the rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.data import BenchmarkDataset
from anomseg.data.benchmark import read_anomaly_label
from anomseg.data.classes import TRAIN_ID
from anomseg.errors import DatasetError, InputError
from anomseg.synth.geometry import placed_box, transform_mask
from anomseg.synth.placement import EDIT_MIN_COVERAGE, check_placement
from anomseg.synth.records import PasteRecord
from anomseg.synth.sources import SourceObject

RNG = np.random.default_rng(13)

# ----------------------------------------------------------------------------- ground truth


def _write(root: Path, folder: str, name: str, arr: np.ndarray) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(root / folder / name)


def test_label_lookup_finds_each_layout_and_remaps(tmp_path):
    lab = RNG.choice(np.array([0, 1, 255], np.uint8), size=(12, 16))
    a = tmp_path / "a"
    _write(a, "labels_masks", "x.png", lab)
    assert np.array_equal(read_anomaly_label(a, "images/x.jpg"), lab)
    b = tmp_path / "b"  # the official SegmentMeIfYouCan name, in labels/
    _write(b, "labels", "y_labels_semantic.png", lab)
    assert np.array_equal(read_anomaly_label(b, "images/y.png"), lab)
    assert read_anomaly_label(b, "images/z.png") is None  # no label: None, not an error
    # an explicit remap, and the folder's known one (Road Anomaly codes anomaly as 2)
    coded = np.where(lab == 1, 2, lab).astype(np.uint8)
    c = tmp_path / "c"
    _write(c, "labels_masks", "x.png", coded)
    assert np.array_equal(read_anomaly_label(c, "x.png", {2: 1}), lab)
    ra = tmp_path / "RoadAnomaly"
    _write(ra, "labels_masks", "x.png", coded)
    assert np.array_equal(read_anomaly_label(ra, "x.png"), lab)
    with pytest.raises(DatasetError, match=r"x\.png: unexpected label values 2; expected 0 / 1"):
        read_anomaly_label(c, "x.png")


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["RoadAnomaly21", "fs_static"])
def test_label_lookup_equals_the_benchmark_reader_on_real_data(shared, name):
    root = shared / "data" / "anomaly_val" / name
    bench = BenchmarkDataset(root, check_sizes=False)
    for i, smp in enumerate(bench.samples):
        got = read_anomaly_label(root, f"images/{smp.image_path.name}")
        assert got is not None and np.array_equal(got, bench.read_label(i)), smp.name


# ----------------------------------------------------------------------------- placement

H, W = 60, 80
ROAD, SIDEWALK, SKY = TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["sky"]


def _ground() -> np.ndarray:
    lab = np.full((H, W), SKY, np.uint8)
    lab[30:] = ROAD
    lab[30:, :20] = SIDEWALK
    return lab


BOX = SourceObject("box", np.zeros((10, 6, 3), np.uint8), np.ones((10, 6), bool))


def _rec(x: int, y: int) -> PasteRecord:
    return PasteRecord(background_id="bg", source="bank", object_id="box", x=x, y=y)


def _cover(labels: np.ndarray, rec: PasteRecord) -> float:
    """Share of the object's pixels on road / sidewalk / terrain, counted pixel by pixel."""
    mask = transform_mask(BOX, rec.scale, rec.flip, rec.rotation)
    top, left, _b, _r = placed_box(rec.x, rec.y, *mask.shape)
    ok = {TRAIN_ID[c] for c in ("road", "sidewalk", "terrain")}
    on = [labels[top + i, left + j] in ok for i, j in zip(*np.nonzero(mask), strict=True)]
    return sum(on) / len(on)


def test_placement_check_accepts_the_ground_and_refuses_sky_and_the_frame_edge():
    lab = _ground()
    check_placement(lab, _rec(40, 50), BOX)  # wholly on the road
    half = _rec(40, 34)  # rows 25..34: half sky, half road
    assert _cover(lab, half) < EDIT_MIN_COVERAGE
    with pytest.raises(InputError, match=rf"only {_cover(lab, half):.0%} of the object stands"):
        check_placement(lab, half, BOX)
    mostly = _rec(40, 37)  # rows 28..37, 8 of 10 on road: exactly the minimum
    assert _cover(lab, mostly) == pytest.approx(0.8)
    check_placement(lab, mostly, BOX)
    with pytest.raises(InputError, match="moved off the image"):
        check_placement(lab, _rec(1, 50), BOX)
    with pytest.raises(InputError, match="moved off the image"):
        check_placement(lab, _rec(40, H), BOX)


# ----------------------------------------------------------------------------- store queries


@pytest.fixture()
def store(tmp_path):
    from db import Store, catalog, flags, heads, results

    st = Store.open(workspace=tmp_path)

    for d in "abc":
        (tmp_path / d).mkdir()

    def fill(s):
        a = catalog.register_dataset(s, "a-eval", "eval", tmp_path / "a")
        b = catalog.register_dataset(s, "b-train", "train", tmp_path / "b")
        catalog.register_dataset(s, "c-empty", "train", tmp_path / "c")
        for i in (10, 2, 1):
            catalog.add_image(s, a, f"images/{i}.png", f"{i:064x}", 8, 4)
        catalog.add_image(s, b, "images/0.png", "f" * 64, 8, 4)
        m = catalog.register_model(s, "m", "erfnet", None, sha256="a" * 64)
        ext = catalog.register_model(s, "ext", "external", None, sha256="b" * 64)
        img = catalog.list_images(s, a)[0]
        flags.add_flag(s, img.id, m.id, "msp", "ignore", np.ones((4, 8), bool), uid="tok-1")
        flags.add_flag(s, img.id, m.id, "msp", "ignore", np.ones((4, 8), bool))
        hv = heads.create_head_version(s, m.id, "stats")
        heads.finish_head_version(s, hv.id, checkpoint_path="h.safetensors", checkpoint_sha256="0")
        heads.activate_head(s, hv.id)
        r1 = results.add_eval_result(s, ext.id, "rba", a.id, {"auprc": 0.1}, 3)
        r2 = results.add_eval_result(s, ext.id, "rba", a.id, {"auprc": 0.2}, 3)
        results.add_eval_result(s, ext.id, "jsr", a.id, {"auprc": 0.3}, 3)
        results.add_eval_result(s, m.id, "msp", a.id, {"auprc": 0.4}, 3)
        return int(a.id), int(r1.id), int(r2.id)

    st.ids = st.transact(fill)
    yield st
    st.close()


def test_store_queries_match_a_brute_force_pass(store):
    from db import catalog, flags, heads, results
    from db.models import Dataset, EvalResult, Flag, Image, Model

    a_id, r1, r2 = store.ids
    with store.read() as s:
        every = {
            t: s.query(t).all() for t in (Dataset, Image, Model, Flag, EvalResult)
        }  # fmt: skip
        counts = {
            d.id: sum(1 for i in every[Image] if i.dataset_id == d.id) for d in every[Dataset]
        }
        assert catalog.dataset_image_counts(s) == sorted(
            [(d.id, d.name, d.role, counts[d.id]) for d in every[Dataset]],
            key=lambda t: (t[2], t[1]),
        )
        assert catalog.row_counts(s) == {
            "models": len(every[Model]), "datasets": len(every[Dataset]),
            "images": len(every[Image]),
        }  # fmt: skip
        assert sorted(catalog.image_ids_and_paths(s, a_id)) == sorted(
            (i.id, i.path) for i in every[Image] if i.dataset_id == a_id
        )
        some = every[Image][0]
        assert catalog.get_image_by_id(s, some.id) is some
        assert flags.count_flags(s) == len(every[Flag]) == 2
        assert flags.find_flag_by_uid(s, "tok-1").uid == "tok-1"
        assert flags.find_flag_by_uid(s, "tok-2") is None
        assert heads.active_heads(s) == [("m", 1)]
        assert results.get_result(s, r1).id == r1
        assert results.external_methods(s) == ["jsr", "rba"]  # sorted, msp is not external
        assert results.latest_external_result(s, "rba", a_id).id == r2 == max(r1, r2)
        assert results.latest_external_result(s, "msp", a_id) is None
        for bad, what in ((2**40, "image id"), ("x", "image id")):
            with pytest.raises(InputError, match=what):
                catalog.get_image_by_id(s, bad)
        with pytest.raises(InputError, match=r"image id 999 is not registered"):
            catalog.get_image_by_id(s, 999)
        with pytest.raises(InputError, match=r"evaluation result id 999 does not exist"):
            results.get_result(s, 999)
