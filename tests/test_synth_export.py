"""The whole pipeline through ``anomseg synth`` on a tiny Cityscapes tree + COCO file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anomseg.data.classes import TRAIN_ID
from anomseg.synth.cityscapes import CityscapesBackgrounds
from anomseg.synth.coco import CocoObjects
from anomseg.synth.config import load_config
from anomseg.synth.export import load_sample, read_manifest, write_sample
from anomseg.synth.records import PasteRecord
from anomseg.synth.render import render
from anomseg.synth.toydata import write_cityscapes, write_coco
from workbench.cli import main

FORBIDDEN = [
    TRAIN_ID[c]
    for c in ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
]
NOROAD = "train/toyburg/toyburg_000000_000003"


def _config(tmp_path: Path, **overrides) -> Path:
    data = {
        "seed": 11,
        "backgrounds": {"source": "cityscapes", "options": {"root": "cs", "split": "train"}},
        "objects": {
            "source": "coco",
            "options": {
                "annotations": "coco/instances.json",
                "images": "coco/images",
                "categories": ["dog", "cat"],
                "area_ratio": [0.0, 1.0],
            },
        },
        "split": {"synthetic": 1.0, "clean": 0.0},
        "instances": {"min": 2, "max": 3},
        "placement": {"height_top": 0.15, "height_bottom": 0.4, "rotation_range": [-10, 10]},
        "blending": {"feather": 1.5, "photometric_prob": 0.5, "rim": "ignore"},
        "export": {"out": "out"},
    }
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    # a relative export.out is the current folder's (never the config's or the package's)
    monkeypatch.chdir(tmp_path)
    write_cityscapes(tmp_path / "cs")
    write_coco(tmp_path / "coco")
    return tmp_path


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "config.json"
    }


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_pipeline_through_the_cli(tree: Path, capsys) -> None:
    cfg_path = _config(tree)
    assert main(["synth", "--config", str(cfg_path), "--no-progress"]) == 0
    assert "4 backgrounds" in capsys.readouterr().out
    out = tree / "out"
    entries = _lines(out)
    assert [e["background_id"] for e in entries] == sorted(e["background_id"] for e in entries)
    assert len(entries) == 4
    by_id = {e["background_id"]: e for e in entries}
    # the background without road / sidewalk stays clean, and the manifest says why
    assert by_id[NOROAD]["split"] == "clean" and by_id[NOROAD]["placed"] == 0
    assert "no road/sidewalk pixels" in by_id[NOROAD]["reason"]
    synthetic = [e for e in entries if e["split"] == "synthetic"]
    assert len(synthetic) == 3 and all(e["planned"] in (2, 3) for e in synthetic)

    backgrounds = CityscapesBackgrounds(tree / "cs")
    objects = CocoObjects(
        tree / "coco/instances.json",
        tree / "coco/images",
        categories=["dog", "cat"],
        area_ratio=(0.0, 1.0),
    )
    for e in entries:
        rgb, gt, inst = load_sample(out, e)
        bg = backgrounds.load(e["background_id"])
        records = [PasteRecord.from_json(r) for r in e["records"]]
        assert len(records) == e["placed"] and inst.max() == e["placed"]
        # files hold exactly what the pure renderer gives for the manifest's records
        ref = render(bg, records, {"coco": objects}, rim="ignore")
        np.testing.assert_array_equal(rgb, ref.rgb)
        np.testing.assert_array_equal(gt, ref.gt)
        np.testing.assert_array_equal(inst, ref.instances)
        # ground-truth invariants against the background labels
        assert not np.isin(bg.labels[gt == 1], FORBIDDEN).any()
        assert ((gt == 1) <= (inst > 0)).all()
        outside = inst == 0
        np.testing.assert_array_equal(gt[outside], np.where(bg.labels[outside] == 255, 255, 0))
        np.testing.assert_array_equal(rgb[outside], bg.rgb[outside])
        for k in range(1, e["placed"] + 1):
            assert ((inst == k) & (gt == 1)).any(), "every paste leaves visible anomaly pixels"


def test_outputs_are_byte_identical_for_any_worker_count(tree: Path) -> None:
    cfg_path = _config(tree)
    assert (
        main(["synth", "--config", str(cfg_path), "--no-progress", "--out", str(tree / "a")]) == 0
    )
    assert (
        main(
            [
                "synth",
                "--config",
                str(cfg_path),
                "--no-progress",
                "--workers",
                "2",
                "--out",
                str(tree / "b"),
            ]
        )
        == 0
    )
    a, b = _files(tree / "a"), _files(tree / "b")
    assert len(a) == 13 and a == b  # 4 x (image, gt, instances) + manifest


def test_resume_skips_unchanged_and_survives_a_crash(tree: Path, capsys) -> None:
    cfg_path = _config(tree)
    out = tree / "out"
    assert main(["synth", "--config", str(cfg_path), "--no-progress"]) == 0
    first = _files(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    capsys.readouterr()
    assert main(["synth", "--config", str(cfg_path), "--no-progress"]) == 0
    assert "rendered 0, unchanged 4" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    # a crash mid-run: a removed output, duplicate lines and a torn last line
    victim = out / _lines(out)[1]["outputs"]["gt"]
    victim.unlink()
    with open(out / "manifest.jsonl", "a") as f:
        f.write((out / "manifest.jsonl").read_text().splitlines()[0] + "\n")
        f.write('{"background_id": "train/toyb')
    assert main(["synth", "--config", str(cfg_path), "--no-progress"]) == 0
    assert "rendered 1, unchanged 3" in capsys.readouterr().out
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(x)["background_id"] for x in lines}) == 4
    assert _files(out) == first
    assert not list(out.rglob("*.tmp"))
    # a changed seed re-plans every sample, so everything is re-rendered
    cfg_path = _config(tree, seed=12)
    assert main(["synth", "--config", str(cfg_path), "--no-progress", "--limit", "2"]) == 0
    assert "rendered 2, unchanged 0" in capsys.readouterr().out


def test_editing_one_record_changes_only_that_sample(tree: Path) -> None:
    cfg_path = _config(tree)
    assert main(["synth", "--config", str(cfg_path), "--no-progress"]) == 0
    cfg = load_config(cfg_path)
    out = tree / "out"
    entries = read_manifest(out / "manifest.jsonl")
    backgrounds = CityscapesBackgrounds(tree / "cs")
    objects = CocoObjects(
        tree / "coco/instances.json",
        tree / "coco/images",
        categories=["dog", "cat"],
        area_ratio=(0.0, 1.0),
    )
    edited_id = next(b for b, e in entries.items() if e["placed"] >= 2)
    entries[edited_id]["records"][0]["x"] += 1
    copy = tree / "copy"
    for bid, entry in entries.items():
        write_sample(cfg, copy, backgrounds.load(bid), objects, entry)
    before, after = _files(out), _files(copy)
    changed = {k for k in after if before[k] != after[k]}
    edited = entries[edited_id]["outputs"]
    assert changed and changed <= {edited["image"], edited["gt"], edited["instances"]}


def test_limit_and_clean_split(tree: Path) -> None:
    cfg_path = _config(tree, split={"synthetic": 0.0, "clean": 1.0})
    assert main(["synth", "--config", str(cfg_path), "--no-progress", "--limit", "2"]) == 0
    entries = _lines(tree / "out")
    assert len(entries) == 2
    assert all(e["split"] == "clean" and "clean split" in e["reason"] for e in entries)
    gt = np.asarray(Image.open(tree / "out" / entries[0]["outputs"]["gt"]))
    assert set(np.unique(gt)) <= {0, 255}


def test_bad_inputs_through_the_cli(tree: Path, capsys) -> None:
    # COCO file without the named categories
    cfg = _config(tree)
    data = yaml.safe_load(cfg.read_text())
    data["objects"]["options"]["categories"] = ["dog", "unicorn"]
    cfg.write_text(yaml.safe_dump(data))
    assert main(["synth", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unicorn" in err and "available: cat, dog, person" in err
    # invalid YAML value: the message names the key and the allowed range
    cfg = _config(tree, placement={"min_coverage": 1.2})
    assert main(["synth", "--config", str(cfg), "--no-progress"]) == 2
    assert "placement.min_coverage: expected a number in [0, 1], got 1.2" in capsys.readouterr().err
    # an unreadable background image: a clear error naming the file
    bad = tree / "cs/leftImg8bit/train/toyburg/toyburg_000000_000002_leftImg8bit.png"
    bad.write_bytes(b"garbage")
    cfg = _config(tree)
    assert main(["synth", "--config", str(cfg), "--no-progress", "--out", str(tree / "o2")]) == 2
    err = capsys.readouterr().err
    assert "toyburg_000000_000002_leftImg8bit.png" in err and "Traceback" not in err
    argv = [
        "synth",
        "--config",
        str(cfg),
        "--no-progress",
        "--workers",
        "2",
        "--out",
        str(tree / "o3"),
    ]
    assert main(argv) == 2  # raised in a worker process, reported the same way
    assert "toyburg_000000_000002_leftImg8bit.png" in capsys.readouterr().err
    assert main(["synth", "--config", str(cfg), "--workers", "0"]) == 2
