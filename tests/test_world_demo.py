"""The demo data build: benchmark layout, label coding, drivable pastes, manifest, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.data.classes import TRAIN_ID
from anomseg.synth.records import PasteRecord
from anomseg.synth.render import render
from anomseg.world.demo_data import SPECS, build_demo
from anomseg.world.objects import ObjectBank
from anomseg.world.scenes import generate_scene
from workbench.cli import main

SIZE = (128, 256)
DRIVABLE = {TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["terrain"]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "demo"
    build_demo(
        root, n_train=6, seed=3, workers=1, size=SIZE, n_heldout=2, n_obstacles=4, n_anomalies=4
    )
    return root


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _seed(stem: str) -> int:
    return int(stem.split("_")[1])


def test_datasets_json_lists_every_dataset(demo):
    info = json.loads((demo / "datasets.json").read_text())
    roles = {d["name"]: d["role"] for d in info["datasets"]}
    assert roles == {
        "demo-train": "train",
        "demo-synthetic": "synthetic",
        "demo-heldout": "heldout",
        "demo-obstacles": "eval",
        "demo-anomalies": "eval",
    }
    for d in info["datasets"]:
        root = demo / d["root"]
        assert (root / d["layout"]["images"]).is_dir()
        n = len(list((root / "images").glob("*.png")))
        assert d["count"] == (n if d["role"] != "synthetic" else len(d["stems"]))
    assert not list(demo.parent.glob(".demo.building-*"))  # the temporary folder is gone


@pytest.mark.parametrize("name", ["demo-obstacles", "demo-anomalies"])
def test_benchmarks_have_the_real_layout_and_drivable_anomalies(demo, name):
    root = demo / name
    images = sorted((root / "images").glob("*.png"))
    assert len(images) == 4
    total_anomaly = 0
    for img in images:
        gt = _read(root / "labels_masks" / img.name)
        rgb = _read(img)
        assert gt.shape == SIZE and rgb.shape == (*SIZE, 3)
        assert set(np.unique(gt).tolist()) <= {0, 1, 255}
        total_anomaly += int((gt == 1).sum())
        scene = generate_scene(_seed(img.stem), SIZE)
        under = scene.labels[gt == 1]
        if name == "demo-obstacles":
            assert set(np.unique(under).tolist()) <= {TRAIN_ID["road"]}
            # Only the road is evaluated: off-road pixels are ignore unless anomalous.
            assert (gt[(scene.labels != TRAIN_ID["road"]) & (gt != 1)] == 255).all()
        else:
            assert set(np.unique(under).tolist()) <= DRIVABLE
        # Pixels labelled normal are untouched scene pixels (pastes change only their masks).
        normal = gt == 0
        assert np.array_equal(rgb[normal], scene.rgb[normal])
    assert total_anomaly > 0


def test_train_split_labels_and_manifest_reproduce_the_images(demo):
    root = demo / "train"
    lines = [json.loads(x) for x in (root / "pastes.jsonl").read_text().splitlines()]
    assert lines, "some training scenes carry pastes"
    by_image: dict[str, list[PasteRecord]] = {}
    for line in lines:
        by_image.setdefault(line["image"], []).append(PasteRecord.from_dict(line["record"]))
    bank = ObjectBank(SPECS["train"].categories, *SPECS["train"].objects)
    for img in sorted((root / "images").glob("*.png")):
        rgb, labels = _read(img), _read(root / "labels" / img.name)
        gt = _read(root / "labels_masks" / img.name)
        scene = generate_scene(_seed(img.stem), SIZE)
        records = by_image.get(img.stem, [])
        expected = render(scene, records, {"bank": bank}) if records else None
        assert np.array_equal(rgb, expected.rgb if records else scene.rgb)
        assert np.array_equal(gt, expected.gt if records else np.zeros(SIZE, np.uint8))
        # trainId labels: the scene's, with every pasted pixel set to ignore.
        assert np.array_equal(labels, np.where(gt != 0, 255, scene.labels))
    # Training objects never come from the benchmarks' held-out bank indices.
    assert all(
        int(r.object_id[-4:]) < SPECS["demo-anomalies"].objects[0]
        for rs in by_image.values()
        for r in rs
    )


def test_heldout_is_clean_scenes(demo):
    for img in sorted((demo / "heldout" / "images").glob("*.png")):
        scene = generate_scene(_seed(img.stem), SIZE)
        assert np.array_equal(_read(img), scene.rgb)
        assert np.array_equal(_read(demo / "heldout" / "labels" / img.name), scene.labels)


def test_build_is_deterministic_for_any_worker_count(demo, tmp_path):
    other = tmp_path / "again"
    build_demo(
        other, n_train=6, seed=3, workers=2, size=SIZE, n_heldout=2, n_obstacles=4, n_anomalies=4
    )
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        assert (demo / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_cli_demo_build_and_bad_input(tmp_path, capsys):
    out = tmp_path / "d"
    rc = main(
        [
            "demo",
            "build",
            "--dir",
            str(out),
            "--train",
            "1",
            "--heldout",
            "1",
            "--obstacles",
            "1",
            "--anomalies",
            "1",
            "--size",
            "64x128",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (out / "datasets.json").is_file()
    assert len(list((out / "demo-anomalies" / "labels_masks").glob("*.png"))) == 1
    rc = main(["demo", "build", "--dir", str(tmp_path / "e"), "--train", "-3", "--no-progress"])
    assert rc == 2
    assert "n_train" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_cli_demo_pictures_are_small_pngs(tmp_path):
    assert main(["demo", "pictures", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["demo_labels.png", "demo_objects.png", "demo_paste.png", "demo_scene.png"]
    for p in tmp_path.glob("*.png"):
        assert p.stat().st_size < 200_000
    scene, paste = _read(tmp_path / "demo_scene.png"), _read(tmp_path / "demo_paste.png")
    assert scene.shape == paste.shape == (256, 512, 3)
    assert np.abs(scene.astype(int) - paste.astype(int)).sum(axis=2).astype(bool).mean() > 0.002
