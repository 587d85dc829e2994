"""The workspace bootstrap: the built-in world lands in the store, split roles enforced."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import DatasetError, InputError
from db import catalog, pastes
from workbench.bootstrap import DEMO_MODEL_DIR, DemoSizes, bootstrap_demo
from workbench.workspace import Workspace

TINY = DemoSizes(n_train=6, n_heldout=2, n_obstacles=2, n_anomalies=2, size=(128, 256), workers=1)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace.open(tmp_path_factory.mktemp("ws"))
    bootstrap_demo(w, sizes=TINY)
    yield w
    w.close()


def test_bootstrap_registers_every_split_with_its_role(ws):
    info = json.loads((ws.demo_dir / "datasets.json").read_text())
    with ws.store.read() as s:
        rows = {d.name: d for d in catalog.list_datasets(s)}
        for d in info["datasets"]:
            assert rows[d["name"]].role == d["role"]
            n_files = len(list((ws.demo_dir / d["root"] / "images").glob("*.png")))
            n_rows = len(catalog.list_images(s, d["name"]))
            # the synthetic dataset holds only the pasted scenes of train/
            expected = len(d["stems"]) if d["role"] == "synthetic" else n_files
            assert n_rows == expected == d["count"]


def test_bootstrap_makes_one_sample_per_pasted_scene_with_its_records(ws):
    lines = [
        json.loads(x) for x in (ws.demo_dir / "train" / "pastes.jsonl").read_text().splitlines()
    ]
    by_image: dict[str, int] = {}
    for item in lines:
        by_image[item["image"]] = by_image.get(item["image"], 0) + 1
    with ws.store.read() as s:
        samples = pastes.list_samples(s)
        assert len(samples) == len(by_image)
        for smp in samples:
            stem = smp.uid.removeprefix("demo-")
            assert len(pastes.current_records(s, smp.id)) == by_image[stem]
        statuses = {smp.status for smp in samples}
        assert "accepted" in statuses


def test_bootstrap_is_idempotent(ws):
    with ws.store.read() as s:
        before = (len(pastes.list_samples(s)), len(catalog.list_datasets(s)))
    bootstrap_demo(ws, sizes=TINY)
    with ws.store.read() as s:
        assert (len(pastes.list_samples(s)), len(catalog.list_datasets(s))) == before


def test_eval_images_are_refused_for_training(ws):
    with ws.store.read() as s:
        ids = [im.id for im in catalog.list_images(s, "demo-anomalies")]
    with ws.store.read() as s, pytest.raises(InputError):
        catalog.training_images_allowed(s, ids)


@pytest.mark.skipif(not any(DEMO_MODEL_DIR.glob("*.safetensors")), reason="no demo weights")
def test_demo_models_are_registered_and_load_strictly(ws):
    with ws.store.read() as s:
        names = {m.name for m in catalog.list_models(s)}
    assert {"demo-erfnet", "demo-eomt"} <= names
    pred = ws.predictor("demo-erfnet").predict(np.zeros((64, 128, 3), np.uint8))
    assert pred.logits.shape[-2:] == (128, 256)


def test_register_benchmark_refuses_a_broken_dataset_and_writes_nothing(ws, tmp_path):
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(root / "labels_masks" / "a.png")
    with pytest.raises(DatasetError, match="a.png"):
        ws.register_benchmark("broken", root)
    with ws.store.read() as s:
        assert "broken" not in {d.name for d in catalog.list_datasets(s)}


def test_cli_add_dataset_registers_a_valid_benchmark(ws, tmp_path):
    from workbench.cli import main

    root = tmp_path / "RoadAnomaly"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(np.full((8, 8), 2, np.uint8)).save(root / "labels_masks" / "a.png")
    assert main(["add-dataset", str(root), "--workspace", str(ws.root)]) == 0
    with ws.store.read() as s:
        ds = catalog.get_dataset(s, "RoadAnomaly")
        # RoadAnomaly codes anomalies as 2: the known remap is recorded with the dataset
        assert ds.role == "eval" and ds.label_remap == {"2": 1}
        assert len(catalog.list_images(s, ds)) == 1


def test_demo_samples_carry_a_current_render_cache_that_training_reads(ws):
    from anomseg.synth.render_cache import is_current, revisions_hash
    from training.dataset import training_images_from_store

    with ws.store.read() as s:
        model_id = catalog.get_model(s, "demo-erfnet").id
        rows = pastes.list_samples(s, status="accepted")
        accepted = [(smp.id, smp.uid) for smp in rows]
        for smp in rows:
            revs = {p.key: r.content_hash for p, r in pastes.current_revisions(s, smp.id)}
            stem = smp.uid.removeprefix("demo-")
            assert smp.render["image"] == f"images/{stem}.png"
            assert smp.render["revisions_hash"] == revisions_hash(revs)
            assert is_current(smp.render, revisions_hash(revs))
        images, notes = training_images_from_store(s, model_id)
    got = {im.key for im in images}
    assert {f"sample:{sid}" for sid, _uid in accepted} <= got and not notes
    # the cache is the world's own rendering: training reads exactly the files on disk
    sid, uid = accepted[0]
    stem = uid.removeprefix("demo-")
    one = next(im for im in images if im.key == f"sample:{sid}")
    root = ws.demo_dir / "train"
    np.testing.assert_array_equal(
        one.load_rgb(), np.asarray(Image.open(root / "images" / f"{stem}.png").convert("RGB"))
    )
    gt = np.asarray(Image.open(root / "labels_masks" / f"{stem}.png"))
    assert one.load_target().shape == gt.shape == TINY.size
    assert ((one.load_target() == 1) == (gt == 1)).all() and (gt == 1).any()
