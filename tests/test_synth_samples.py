"""Store-backed synthetic samples from source specs, pseudo-labelled folders, class maps, labelled
train datasets, and the bad inputs of each (one clear message, nothing half-written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import AnomsegError, InputError

H, W = 48, 96


def _write_camvid_like(root: Path, n: int = 4) -> None:
    """CamVid layout: sky (0) on top, road (3) below with a car (8); frame 3 has no road."""
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        lab = np.zeros((H, W), np.uint8)
        if i != 3:
            lab[H // 3 :] = 3
            lab[H // 3 + 2 : H // 3 + 8, 10:24] = 8
            lab[-2:] = 11
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "train" / f"f{i}.png")
        Image.fromarray(lab).save(root / "trainannot" / f"f{i}.png")


def _coco_spec(root: Path) -> dict:
    from anomseg.synth.toydata import write_coco

    write_coco(root)
    return {
        "source": "coco",
        "options": {
            "annotations": str(root / "instances.json"),
            "images": str(root / "images"),
            "min_pixels": 16,
        },
    }


SMALL = {"height_top": 0.3, "height_bottom": 0.5, "area_ratio": [0.0, 0.5], "min_coverage": 0.7}


@pytest.fixture
def ws(tmp_path):
    from workbench.workspace import Workspace

    w = Workspace.open(tmp_path / "ws")
    yield w
    w.close()


def test_class_map_files_and_unknown_classes(tmp_path):
    from anomseg.data.classmap import load_class_map, shipped_class_maps

    assert "camvid" in shipped_class_maps()
    cm = load_class_map("camvid")
    assert cm.to_cityscapes()[3] == 0 and cm.to_cityscapes()[4] == 1  # road, sidewalk
    assert cm.apply(np.array([[11, 200]], np.uint8)).tolist() == [[255, 255]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  3: [road, highway]\n  4: [pavement, sidewalk]\n  5: [x, lawn]\n")
    with pytest.raises(InputError) as e:
        load_class_map(bad)
    msg = str(e.value)
    assert "'highway'" in msg and "'lawn'" in msg and "expected one of" in msg and "sidewalk" in msg
    with pytest.raises(InputError, match="unknown; expected a YAML file path or one of: camvid"):
        load_class_map("camvidd")


def test_labelled_source_maps_and_refuses_unknown_class_map(tmp_path):
    from anomseg.errors import DatasetError
    from anomseg.synth.labelled import LabelledBackgrounds

    _write_camvid_like(tmp_path / "cv")
    src = LabelledBackgrounds(tmp_path / "cv")
    bg = src.load("f0")
    raw = np.asarray(Image.open(tmp_path / "cv" / "trainannot" / "f0.png"))
    assert (bg.labels[raw == 3] == 0).all() and (bg.labels[raw == 8] == 13).all()
    assert (bg.labels[raw == 11] == 255).all() and (bg.labels[raw == 0] == 10).all()
    bad = tmp_path / "m.yaml"
    bad.write_text("classes:\n  3: [road, tarmac]\n")
    with pytest.raises(InputError, match="tarmac"):
        LabelledBackgrounds(tmp_path / "cv", class_map=str(bad))
    (tmp_path / "cv" / "trainannot" / "f1.png").unlink()
    with pytest.raises(DatasetError, match="f1.png: image has no label map"):
        LabelledBackgrounds(tmp_path / "cv")


def test_generate_samples_on_labelled_backgrounds_and_train_set(ws, tmp_path):
    from anomseg.imageio import read_image, read_label
    from anomseg.synth.records import PasteRecord
    from anomseg.synth.render import render
    from db import catalog
    from db import pastes as dbpastes
    from training.dataset import training_images_from_store
    from training.synth_samples import generate_samples, sample_sources

    _write_camvid_like(tmp_path / "cv")
    bg_spec = {"source": "labelled", "options": {"root": str(tmp_path / "cv")}}
    obj_spec = _coco_spec(tmp_path / "coco")
    seen = []
    ids = generate_samples(
        ws.store, "cv-coco", 3, backgrounds=bg_spec, objects=obj_spec, placement=SMALL,
        seed=1, status="accepted", progress=lambda f, m: seen.append(f),
    )  # fmt: skip
    assert len(ids) == 3 and seen[-1] == 1.0
    with ws.store.read() as s:
        ds = catalog.get_dataset(s, "cv-coco")
        assert (
            ds.role == "synthetic"
            and ds.label_remap["synth"]["backgrounds"]["source"] == "labelled"
        )
        samples = [
            (i, dbpastes.get_sample(s, i).background_id, dbpastes.get_sample(s, i).render)
            for i in ids
        ]
        recs = {
            i: [PasteRecord.from_dict(r) for r in dbpastes.current_records(s, i).values()]
            for i in ids
        }
    with ws.store.session() as s:
        model = catalog.register_model(s, "m", "erfnet", "/x.pth", sha256="0" * 64)
        items, notes = training_images_from_store(s, model.id)
    assert {bid for _i, bid, _c in samples} <= {"f0", "f1", "f2"}  # f3 has no road
    # the render cache is the re-render of the stored records on the stored sources
    for sid, bid, cache in samples:
        bgs, objs = sample_sources(ws.store, sid)
        out = render(bgs.load(bid), recs[sid], {"coco": objs})
        np.testing.assert_array_equal(read_image(cache["image"]), out.rgb)
        np.testing.assert_array_equal(read_label(cache["gt"]), out.gt)
        assert (out.gt == 1).any()
    # accepted samples are in the training set, read from the render cache
    assert not notes and {it.key for it in items} == {f"sample:{i}" for i in ids}
    for it in items:
        assert set(np.unique(it.load_target())) <= {0, 1, 255}
    # more samples from the stored specs; different sources for the same dataset are refused
    more = generate_samples(ws.store, "cv-coco", 2, seed=2)
    assert len(more) == 2 and not set(more) & set(ids)
    other = {"source": "labelled", "options": {"root": str(tmp_path / "cv"), "class_map": "camvid", "images": "train", "labels": "trainannot", "size": [48, 24]}}  # fmt: skip
    with pytest.raises(InputError, match="already draws backgrounds"):
        generate_samples(ws.store, "cv-coco", 1, backgrounds=other, objects=obj_spec)


def test_generate_job_uses_the_dataset_specs(ws, tmp_path):
    from db.jobs import enqueue_job, get_job
    from training.synth_samples import generate_samples
    from workbench.worker import Worker

    _write_camvid_like(tmp_path / "cv")
    bg_spec = {"source": "labelled", "options": {"root": str(tmp_path / "cv")}}
    from db import catalog

    with ws.store.session() as s:  # an older synthetic dataset that sorts first by name
        catalog.register_dataset(s, "a-procedural", "synthetic", tmp_path)
    generate_samples(ws.store, "cv", 1, backgrounds=bg_spec, objects=_coco_spec(tmp_path / "c"), placement=SMALL)  # fmt: skip
    for params in ({"n": 2, "dataset": "cv"}, {"n": 1}):  # unnamed: the one being curated
        job = ws.store.transact(lambda s, p=params: enqueue_job(s, "synth_generate", p).id)
        assert Worker(ws.store, ws.root, heartbeat_s=60).run_once() == job
        with ws.store.read() as s:
            j = get_job(s, job)
            assert j.status == "done", j.error
            assert len(j.result["samples"]) == params["n"] and j.result["dataset"] == "cv"


def _fake_segmenter(calls: list):
    """A stand-in model: road below the middle row, sky above (as trainIds)."""

    def seg(rgb: np.ndarray) -> np.ndarray:
        calls.append(1)
        out = np.full(rgb.shape[:2], 10, np.uint8)
        out[rgb.shape[0] // 2 :] = 0
        return out

    return seg


def _write_frames(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            folder / f"cam{i}.jpg"
        )


def test_pseudo_labelled_folder_is_deterministic(ws, tmp_path):
    from anomseg.imageio import read_image
    from anomseg.synth.folder import ImageFolderBackgrounds
    from anomseg.synth.records import PasteRecord
    from anomseg.synth.render import render
    from db import pastes as dbpastes
    from training.synth_samples import generate_samples, sample_sources

    _write_frames(tmp_path / "frames")
    calls: list = []
    bg_spec = {"source": "folder", "options": {"root": str(tmp_path / "frames")}}
    obj_spec = _coco_spec(tmp_path / "coco")
    ids = generate_samples(
        ws.store, "dashcam", 2, backgrounds=bg_spec, objects=obj_spec, placement=SMALL,
        seed=4, predictor=_fake_segmenter(calls),
    )  # fmt: skip
    assert len(ids) == 2 and len(calls) == 2
    pseudo = ws.root / "pseudo_labels"
    stored = sorted(pseudo.glob("*.png"))
    assert len(stored) == 1  # the two frames got the same labels: one content-addressed file
    lab = np.asarray(Image.open(stored[0]))
    assert (lab[H // 2 :] == 0).all() and (lab[: H // 2] == 10).all()
    for sid in ids:
        with ws.store.read() as s:
            smp = dbpastes.get_sample(s, sid)
            bid, cache = smp.background_id, smp.render
            recs = [PasteRecord.from_dict(r) for r in dbpastes.current_records(s, sid).values()]
        assert bid.endswith("@" + stored[0].stem) and all(r.background_id == bid for r in recs)
        # re-render without any model (the stored spec has none): pinned labels, same picture
        bgs, objs = sample_sources(ws.store, sid)
        assert bgs.predictor is None
        out = render(bgs.load(bid), recs, {"coco": objs})
        np.testing.assert_array_equal(out.rgb, read_image(cache["image"]))
        # a model that now predicts something else changes nothing for stored samples
        other = ImageFolderBackgrounds(
            tmp_path / "frames", pseudo, predictor=lambda r: np.ones(r.shape[:2], np.uint8)
        )
        np.testing.assert_array_equal(other.load(bid).labels, lab)
        assert not (other.load(bid.split("@")[0]).labels == lab).all()
    assert len(calls) == 2  # re-rendering never ran the stand-in model again
    # the same seed and model plan the same records on a fresh workspace
    from workbench.workspace import Workspace

    ws2 = Workspace.open(tmp_path / "ws2")
    try:
        ids2 = generate_samples(
            ws2.store, "dashcam", 2, backgrounds=bg_spec, objects=obj_spec, placement=SMALL,
            seed=4, predictor=_fake_segmenter([]),
        )  # fmt: skip
        with ws.store.read() as s, ws2.store.read() as s2:
            a = [dbpastes.current_records(s, i) for i in ids]
            b = [dbpastes.current_records(s2, i) for i in ids2]
        assert a == b
    finally:
        ws2.close()
    # a plain id with no model cannot be labelled
    with pytest.raises(InputError, match="no pseudo-labels yet"):
        ImageFolderBackgrounds(tmp_path / "frames", pseudo).load("cam0.jpg")


def test_folder_with_non_images_is_refused_and_nothing_is_stored(ws, tmp_path):
    from db import catalog
    from training.synth_samples import generate_samples

    _write_frames(tmp_path / "frames", 2)
    (tmp_path / "frames" / "notes.txt").write_text("route 3")
    (tmp_path / "frames" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    bg_spec = {"source": "folder", "options": {"root": str(tmp_path / "frames")}}
    with pytest.raises(InputError) as e:
        generate_samples(
            ws.store, "dashcam", 2, backgrounds=bg_spec, objects=_coco_spec(tmp_path / "c"),
            predictor=_fake_segmenter([]),
        )  # fmt: skip
    assert "notes.txt" in str(e.value) and "not images" in str(e.value)
    (tmp_path / "frames" / "notes.txt").unlink()
    (tmp_path / "frames" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        generate_samples(
            ws.store, "dashcam", 2, backgrounds=bg_spec, objects=_coco_spec(tmp_path / "c2"),
            predictor=_fake_segmenter([]),
        )  # fmt: skip
    with ws.store.read() as s:
        assert catalog.list_datasets(s) == []
    assert not (ws.root / "pseudo_labels").exists() or not any(
        (ws.root / "pseudo_labels").iterdir()
    )


def test_coco_with_missing_images_is_refused_and_nothing_is_stored(ws, tmp_path):
    from anomseg.errors import DatasetError
    from anomseg.synth.coco import CocoObjects
    from db import catalog
    from training.synth_samples import generate_samples

    spec = _coco_spec(tmp_path / "coco")
    (tmp_path / "coco" / "images" / "img2.png").unlink()
    with pytest.raises(DatasetError) as e:
        CocoObjects(spec["options"]["annotations"], spec["options"]["images"])
    assert "img2.png" in str(e.value) and "missing" in str(e.value)
    # objects only from img1 (a category filter) need no missing file
    assert CocoObjects(
        spec["options"]["annotations"], spec["options"]["images"], categories=["dog"]
    ).ids()
    _write_camvid_like(tmp_path / "cv")
    bg_spec = {"source": "labelled", "options": {"root": str(tmp_path / "cv")}}
    with pytest.raises(DatasetError, match="img2.png"):
        generate_samples(ws.store, "cv-coco", 2, backgrounds=bg_spec, objects=spec)
    with ws.store.read() as s:
        assert catalog.list_datasets(s) == []
    assert not list((ws.root / "cache" / "renders").glob("*.png"))


def _write_labelled_train(root: Path, n: int, anomaly_value: int = 1) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    rng = np.random.default_rng(len(str(root)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / f"t{i}.png"
        )
        lab = np.zeros((H, W), np.uint8)
        lab[10 + i : 20 + i, 30:50] = anomaly_value
        lab[:3] = 255
        Image.fromarray(lab).save(root / "labels_masks" / f"t{i}.png")


def test_labelled_train_datasets_train_and_eval_ones_do_not(ws, tmp_path, capsys):
    from db import catalog
    from training.dataset import TrainImage, build_pixel_set, training_images_from_store
    from workbench.cli import main

    _write_labelled_train(tmp_path / "roadside", 3)
    _write_labelled_train(tmp_path / "RoadAnomaly", 2, anomaly_value=2)  # remap 2 -> 1 (auto)
    _write_labelled_train(tmp_path / "bench", 2)
    _write_labelled_train(tmp_path / "plain", 2)
    args = ["--workspace", str(ws.root)]
    assert main(["add-dataset", str(tmp_path / "roadside"), "--role", "train", *args]) == 0
    assert main(["add-dataset", str(tmp_path / "RoadAnomaly"), "--role", "train", *args]) == 0
    assert main(["add-dataset", str(tmp_path / "bench"), "--role", "eval", *args]) == 0
    ws.register_folder("plain", tmp_path / "plain", "train", layout="segmentation")
    with ws.store.session() as s:
        model = catalog.register_model(s, "m", "erfnet", "/x.pth", sha256="0" * 64)
        items, notes = training_images_from_store(s, model.id)
        paths = {
            img.id: (ds.name, img.path)
            for ds in catalog.list_datasets(s)
            for img in catalog.list_images(s, ds)
        }
    assert not notes
    used = sorted(paths[it.info["image_id"]] for it in items)
    assert used == [("RoadAnomaly", "images/t0.png"), ("RoadAnomaly", "images/t1.png"),
                    ("roadside", "images/t0.png"), ("roadside", "images/t1.png"), ("roadside", "images/t2.png")]  # fmt: skip
    for it in items:
        name, rel = paths[it.info["image_id"]]
        raw = np.asarray(Image.open(tmp_path / name / "labels_masks" / Path(rel).name))
        expect = np.where(raw == 2, 1, raw) if name == "RoadAnomaly" else raw
        np.testing.assert_array_equal(it.load_target(), expect)
        assert it.role == "train"
    # the guard stays: the same kind of image marked with an eval role never trains
    item = items[0]
    evil = TrainImage("image:x", item.image_hash, item.load_rgb, item.load_target, role="eval")

    class _Cache:
        stride = 1

    with pytest.raises(InputError, match="no usable training samples"):
        build_pixel_set([evil], _Cache(), "k", (H, W), predict=lambda rgb: None)


def test_cli_add_synthetic(tmp_path, capsys):
    from workbench.cli import main
    from workbench.workspace import Workspace

    _write_camvid_like(tmp_path / "cv")
    spec = _coco_spec(tmp_path / "coco")
    wsdir = tmp_path / "w"
    base = ["add-synthetic", "cv-coco", "--workspace", str(wsdir), "--no-progress"]
    rc = main([*base, "--backgrounds", f"labelled:{tmp_path / 'cv'}",
               "--objects", f"coco:{spec['options']['annotations']}", "--coco-images",
               spec["options"]["images"], "--n", "2", "--accept", "--instances", "1-1"])  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "2 accepted samples" in out.out
    assert main([*base, "--n", "1"]) == 0
    assert main([*base, "--backgrounds", "labeled:/x", "--objects", "coco:/y", "--n", "1"]) == 2
    assert "--backgrounds: expected labelled|folder|cityscapes:PATH" in capsys.readouterr().err
    assert (
        main([*base, "--backgrounds", f"folder:{tmp_path}", "--objects", "coco:/y", "--n", "1"])
        == 2
    )
    assert "--model" in capsys.readouterr().err
    ws = Workspace.open(wsdir)
    try:
        from db import pastes as dbpastes

        with ws.store.read() as s:
            assert dbpastes.sample_counts(s) == {"proposed": 1, "accepted": 2, "rejected": 0}
    finally:
        ws.close()


def test_bad_specs_are_named(ws):
    from training.synth_samples import generate_samples

    with pytest.raises(InputError, match="source 'nope' is unknown"):
        generate_samples(
            ws.store, "x", 1, backgrounds={"source": "nope"}, objects={"source": "coco"}
        )
    with pytest.raises(InputError, match="both"):
        generate_samples(ws.store, "x", 1, backgrounds={"source": "labelled"})
    with pytest.raises(InputError, match="n: expected"):
        generate_samples(ws.store, "x", 0)
    with pytest.raises(AnomsegError, match="not registered"):
        generate_samples(ws.store, "x", 1)


def test_curate_services_render_and_edit_samples_on_stored_sources(ws, tmp_path):
    from anomseg.imageio import read_image
    from dashboard.services import Services
    from training.synth_samples import generate_samples

    _write_camvid_like(tmp_path / "cv")
    bg_spec = {"source": "labelled", "options": {"root": str(tmp_path / "cv")}}
    (sid,) = generate_samples(
        ws.store, "cv-coco", 1, backgrounds=bg_spec, objects=_coco_spec(tmp_path / "coco"),
        placement={**SMALL, "max_overlap": 0.0, "min_coverage": 0.95}, instances=(1, 1), seed=3,
    )  # fmt: skip
    svc = Services(ws)
    with ws.store.read() as s:
        from db import pastes as dbpastes

        cache = dbpastes.get_sample(s, sid).render
    # Curate's preview is the stored render (CamVid background, COCO object from the spec)
    np.testing.assert_array_equal(svc.curate.render_sample(sid).rgb, read_image(cache["image"]))
    assert svc.curate.object_choices("coco")  # the object list of the stored COCO source
    rec = svc.curate.paste_record(sid, "p0")
    # a move along the road is stored as a new revision and re-rendered; off the road is refused
    n = svc.curate.edit_paste(sid, "p0", {"x": rec["x"] + (3 if rec["x"] < W // 2 else -3)})
    assert n == 2
    assert svc.curate.refresh_render_cache(sid)["image"] != cache["image"]
    with pytest.raises(InputError, match="off the road"):
        svc.curate.edit_paste(sid, "p0", {"x": 17, "y": H // 3 + 7})  # onto the car and the sky


def test_synth_yaml_config_reads_a_labelled_source(tmp_path):
    from anomseg.synth.config import build_sources, parse_config

    _write_camvid_like(tmp_path / "cv")
    _coco_spec(tmp_path / "coco")
    cfg = parse_config(
        {
            "backgrounds": {"source": "labelled", "options": {"root": "cv", "images": "train"}},
            "objects": {"source": "coco", "options": {"annotations": "coco/instances.json", "images": "coco/images"}},
        },
        tmp_path,
    )  # fmt: skip
    # the root resolves against the config's folder; 'images' stays a folder name under it
    assert cfg.backgrounds.options == {"root": str(tmp_path / "cv"), "images": "train"}
    assert cfg.objects.options["images"] == str(tmp_path / "coco" / "images")
    bgs, objs = build_sources(cfg)
    assert bgs.ids() == ["f0", "f1", "f2", "f3"] and objs.ids()


def test_synthetic_dataset_folder_stays_in_the_workspace(ws, tmp_path):
    from db import catalog
    from training.synth_samples import create_synthetic_dataset, dataset_spec, make_spec

    _write_camvid_like(tmp_path / "cv")
    spec = make_spec(
        {"source": "labelled", "options": {"root": str(tmp_path / "cv")}},
        _coco_spec(tmp_path / "c"),
    )
    create_synthetic_dataset(ws.store, "../../my set", spec, workspace=ws.root)
    with ws.store.read() as s:
        ds = catalog.get_dataset(s, "../../my set")
        root, stored = Path(ds.root), dataset_spec(ds)
    assert root.parent == ws.root / "synthetic" and root.name == "_.._my_set"
    assert stored["backgrounds"]["options"]["root"] == str((tmp_path / "cv").resolve())
