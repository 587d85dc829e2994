"""Synth YAML config: defaults, path resolution, and error messages naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anomseg.errors import InputError
from anomseg.shared import REPO_ROOT
from anomseg.synth.config import load_config, parse_config
from anomseg.synth.toydata import write_cityscapes, write_coco


def _base(root: Path) -> dict:
    return {
        "seed": 1,
        "backgrounds": {"source": "cityscapes", "options": {"root": "cs"}},
        "objects": {
            "source": "coco",
            "options": {"annotations": "coco/instances.json", "images": "coco/images"},
        },
    }


def test_default_yaml_parses_with_the_documented_defaults() -> None:
    path = REPO_ROOT / "anomseg" / "configs" / "synth_default.yaml"
    cfg = parse_config(yaml.safe_load(path.read_text()), path.parent)
    assert cfg.placement.target_classes == {"road": 0.7, "sidewalk": 0.3}
    assert cfg.placement.min_coverage == 0.8
    assert set(cfg.placement.forbidden_classes) == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    }  # fmt: skip
    assert cfg.synthetic_ratio == 0.8 and cfg.instances == (1, 3) and cfg.rim == "ignore"
    assert Path(cfg.backgrounds.options["root"]) == path.parent / "data" / "cityscapes"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "cfgs"
    sub.mkdir()
    data = _base(tmp_path)
    data["export"] = {"out": "out"}
    (sub / "c.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(sub / "c.yaml")
    assert cfg.backgrounds.options["root"] == str(sub / "cs")
    assert cfg.objects.options["images"] == str(sub / "coco" / "images")
    # the output is the command's: relative to the current folder, never to the config's
    assert cfg.export.out == Path.cwd() / "out"
    assert cfg.synthetic_ratio == 1.0 and cfg.labels == (0, 1, 255)


BAD = [
    ("seed", -1, "seed: expected an integer in [0, 9223372036854775807]"),
    ("split", {"synthetic": 1.5}, "split.synthetic: expected a number in [0.0, 1.0]"),
    ("split", {"synthetic": 0.7, "clean": 0.2}, "split.clean: expected 1 - split.synthetic = 0.3"),
    ("instances", {"min": 3, "max": 2}, "instances.max: expected an integer in [3, 1000]"),
    ("instances", {"min": -1}, "instances.min: expected an integer in [0, 1000]"),
    ("placement", {"min_coverage": 2}, "placement.min_coverage: expected a number in [0, 1]"),
    ("placement", {"area_ratio": [0.2, 0.1]}, "placement.area_ratio: expected [low, high]"),
    ("placement", {"colour": 1}, "placement.colour: unknown key"),
    ("placement", {"feather": 1}, "placement.feather: set it under blending.feather"),
    ("blending", {"rim": "soft"}, "blending.rim: expected one of ignore, anomaly, normal"),
    ("blending", {"feather": 100}, "blending.feather: expected a number in [0.0, 64.0]"),
    ("blending", {"photometric_prob": -0.1}, "blending.photometric_prob: expected a number in [0.0, 1.0]"),
    ("labels", {"anomaly": 300}, "labels.anomaly: expected an integer in [0, 255]"),
    ("labels", {"anomaly": 0}, "labels: expected three distinct values"),
    ("export", {"image_format": "bmp"}, "export.image_format: expected one of png, jpg"),
    ("export", {"jpg_quality": 0}, "export.jpg_quality: expected an integer in [1, 100]"),
    ("nonsense", 1, "nonsense: unknown key"),
    ("backgrounds", {"source": "mars", "options": {}}, "backgrounds.source: expected one of"),
    ("objects", {"source": "coco", "options": {"annotations": "a", "images": "b", "colour": 1}},
     "objects.options.colour: unknown option"),
    ("objects", {"source": "coco", "options": {"images": "b"}},
     "objects.options.annotations: required"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "needle"), BAD, ids=[b[2].split(":")[0] for b in BAD])
def test_invalid_values_name_the_key_and_range(tmp_path: Path, key, value, needle) -> None:
    data = _base(tmp_path) | {key: value}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as exc:
        load_config(tmp_path / "c.yaml")
    assert needle in str(exc.value)


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("seed: [1,\n")
    with pytest.raises(InputError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(InputError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_builder_errors_are_prefixed_with_the_section(tmp_path: Path) -> None:
    from anomseg.synth.config import build_sources

    write_cityscapes(tmp_path / "cs")
    write_coco(tmp_path / "coco")
    data = _base(tmp_path)
    data["objects"]["options"]["categories"] = ["zebra"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"objects \(coco\): .*zebra.*available: cat, dog, person"):
        build_sources(load_config(tmp_path / "c.yaml"))
