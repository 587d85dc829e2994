"""Class maps: a labelled road dataset's label values -> Cityscapes trainIds (255 = ignore).

A class map is a small YAML file (the product ships ``anomseg/configs/classmaps/<name>.yaml``;
a user may pass a path to their own)::

    name: camvid
    classes:
      3: [road, road]           # value in the label files: [dataset class, Cityscapes class]
      4: [pavement, sidewalk]
      11: [unlabelled, ignore]  # "ignore" (and every value not listed) -> 255

The Cityscapes side must name one of the 19 training classes (or ``ignore``); anything else is
refused with one message naming the entry and the allowed names, so a typo never silently turns
road into ignore.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomseg.data.classes import CITYSCAPES_CLASSES, IGNORE, TRAIN_ID
from anomseg.errors import InputError

CLASSMAP_DIR = Path(__file__).resolve().parent.parent / "configs" / "classmaps"
IGNORE_NAME = "ignore"


@dataclass(frozen=True)
class ClassMap:
    """A validated map: ``lut[value]`` is the trainId of label value ``value`` (255 = ignore)."""

    name: str
    lut: np.ndarray  # (256,) uint8
    source_names: dict[int, str]  # label value -> the dataset's own class name

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Dataset label values -> trainIds (uint8, same shape)."""
        return self.lut[np.asarray(labels, dtype=np.uint8)]

    def to_cityscapes(self) -> dict[int, int]:
        """The listed values and their trainIds (255 for ignore)."""
        return {v: int(self.lut[v]) for v in self.source_names}


def shipped_class_maps() -> list[str]:
    """Names of the class maps that ship with the product."""
    return sorted(p.stem for p in CLASSMAP_DIR.glob("*.yaml"))


def _entry_error(where: str, key: object, expected: str, got: object) -> InputError:
    return InputError(f"class map {where}: entry {key!r}: expected {expected}, got {got!r}")


def parse_class_map(data: object, where: str = "(inline)") -> ClassMap:
    """Validate a decoded class-map document (see module docstring)."""
    allowed = ", ".join((*CITYSCAPES_CLASSES, IGNORE_NAME))
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise InputError(
            f"class map {where}: expected a mapping with 'classes': {{value: [dataset class, "
            f"Cityscapes class]}}, got {type(data).__name__}"
        )
    name = str(data.get("name") or Path(where).stem)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    names: dict[int, str] = {}
    unknown: list[str] = []
    for key, entry in data["classes"].items():
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= 255:
            raise _entry_error(where, key, "a label value 0..255 as the key", key)
        if isinstance(entry, str):
            src, dst = entry, entry
        elif isinstance(entry, list | tuple) and len(entry) == 2:
            src, dst = entry
        else:
            raise _entry_error(where, key, "[dataset class, Cityscapes class]", entry)
        if not isinstance(dst, str) or (dst != IGNORE_NAME and dst not in TRAIN_ID):
            unknown.append(f"{key}: {dst!r}")
            continue
        names[key] = str(src)
        lut[key] = IGNORE if dst == IGNORE_NAME else TRAIN_ID[dst]
    if unknown:
        raise InputError(
            f"class map {where} names unknown Cityscapes classes ({'; '.join(unknown)}); "
            f"expected one of: {allowed}"
        )
    if not names:
        raise InputError(f"class map {where}: 'classes' is empty; expected at least one entry")
    return ClassMap(name=name, lut=lut, source_names=names)


def load_class_map(name_or_path: str | os.PathLike) -> ClassMap:
    """A shipped class map by name (``camvid``) or a YAML file by path."""
    import yaml

    text_name = str(name_or_path)
    path = Path(text_name).expanduser()
    if not path.is_file():
        shipped = CLASSMAP_DIR / f"{text_name}.yaml"
        if os.sep in text_name or "/" in text_name or text_name.endswith((".yaml", ".yml")):
            raise InputError(f"class map file {path} does not exist")
        if not shipped.is_file():
            raise InputError(
                f"class map {text_name!r} is unknown; expected a YAML file path or one of: "
                f"{', '.join(shipped_class_maps())}"
            )
        path = shipped
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class map {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"class map {path} is not valid YAML: {exc}") from None
    return parse_class_map(data, str(path))
