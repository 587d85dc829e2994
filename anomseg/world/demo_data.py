"""The demo data: procedural scenes, with and without pasted anomalies, written to disk.

``build_demo(dir)`` writes, for one master seed (deterministic whatever the number of workers):

* ``train/``: clean scenes and scenes with pastes: ``images/``, ``labels/`` (trainIds; pasted
  pixels are 255), ``labels_masks/`` (anomaly ground truth 0 normal / 1 anomaly / 255 ignore) and
  ``pastes.jsonl`` (one line per paste: ``{"image": stem, "record": PasteRecord}``);
* ``heldout/``: clean scenes (``images/`` + ``labels/``) for the demo models' mIoU;
* ``demo-obstacles/``: small objects on the road, evaluated on the road only (255 elsewhere), like
  RoadObstacle21;
* ``demo-anomalies/``: larger, varied objects anywhere drivable, the whole image evaluated, like
  RoadAnomaly21;
* ``datasets.json``: name, role, root and layout of each, for the store to register.

The two benchmarks use the real benchmarks' layout (``images/*.png`` + ``labels_masks/<stem>.png``).
Every paste goes through the paste engine (``anomseg.synth.placement.propose`` and
``anomseg.synth.render.render``); objects are sized physically (their real height times the
scene's pixels per metre at the anchor row). Splits use disjoint scene seeds, and the benchmarks
use object-bank indices that training never sees.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from anomseg.data.classes import IGNORE, TRAIN_ID
from anomseg.errors import InputError
from anomseg.settings import workspace_dir
from anomseg.synth.geometry import placed_box, transform_mask
from anomseg.synth.placement import PlacementConfig, propose
from anomseg.synth.records import PasteRecord
from anomseg.synth.render import render
from anomseg.synth.sources import Background, SourceObject
from anomseg.world.objects import (
    CATEGORIES,
    LARGE_CATEGORIES,
    PER_CATEGORY,
    SMALL_CATEGORIES,
    ObjectBank,
    height_m,
    object_id,
)
from anomseg.world.scenes import DEFAULT_SIZE, generate_scene, parse_scene_id, scene_params

FORMAT_VERSION = 1
SPLIT_OFFSET = {"train": 0, "heldout": 5000, "demo-obstacles": 6000, "demo-anomalies": 7000}
SPLIT_LIMIT = {"train": 5000, "heldout": 1000, "demo-obstacles": 1000, "demo-anomalies": 1000}
# how much `anomseg demo build`, the app's first run and the README build: one set of numbers
DEFAULT_COUNTS = {"train": 200, "heldout": 40, "demo-obstacles": 25, "demo-anomalies": 25}
SEED_STRIDE = 10_000
TRAIN_OBJECTS = (0, 150)  # object-bank indices used for training pastes
EVAL_OBJECTS = (150, PER_CATEGORY)  # held-out object instances for the benchmarks


@dataclass(frozen=True)
class PasteSpec:
    """How one split pastes: object pool, how many per image, where, how big at least."""

    categories: tuple[str, ...]
    large_share: float  # probability of drawing from the large categories (if mixed)
    objects: tuple[int, int]
    count: tuple[int, int]
    targets: dict
    min_area: float  # smallest pasted area as a fraction of the image
    rotation: tuple[float, float]
    near: float  # nearest anchor distance (m)


SPECS = {
    "train": PasteSpec(
        tuple(CATEGORIES),
        0.5,
        TRAIN_OBJECTS,
        (1, 3),
        {"road": 0.6, "sidewalk": 0.25, "terrain": 0.15},
        0.0004,
        (-6.0, 6.0),
        3.0,
    ),
    "demo-obstacles": PasteSpec(
        SMALL_CATEGORIES, 0.0, EVAL_OBJECTS, (1, 3), {"road": 1.0}, 0.0003, (0.0, 0.0), 7.0
    ),
    "demo-anomalies": PasteSpec(
        tuple(CATEGORIES),
        0.75,
        EVAL_OBJECTS,
        (1, 2),
        {"road": 0.6, "sidewalk": 0.25, "terrain": 0.15},
        0.0015,
        (-5.0, 5.0),
        4.0,
    ),
}


class _OneObject:
    """An ObjectSource view of a single bank object, so placement samples that object only."""

    name = "bank"

    def __init__(self, bank: ObjectBank, oid: str) -> None:
        self.bank, self.oid = bank, oid

    def ids(self) -> list[str]:
        return [self.oid]

    def load(self, object_id: str) -> SourceObject:
        return self.bank.load(object_id)


def scene_seed(seed: int, split: str, index: int) -> int:
    """The procedural scene seed of image ``index`` of ``split`` for master ``seed``."""
    return int(seed) * SEED_STRIDE + SPLIT_OFFSET[split] + int(index)


def stem_of(scene: int) -> str:
    """File stem of a scene: ``procedural_<seed>`` (zero-padded)."""
    return f"procedural_{scene:09d}"


def plan_pastes(background: Background, split: str, rng: np.random.Generator) -> list[PasteRecord]:
    """Paste records for one procedural background of ``split`` (deterministic given ``rng``)."""
    spec = SPECS[split]
    H, W = background.labels.shape
    p = scene_params(parse_scene_id(background.id))
    bank = ObjectBank(spec.categories, *spec.objects)
    small = [c for c in spec.categories if c in SMALL_CATEGORIES]
    large = [c for c in spec.categories if c in LARGE_CATEGORIES]
    n = int(rng.integers(spec.count[0], spec.count[1] + 1))
    feather = round(1.5 * W / 1024, 2)
    hz = p.horizon * H
    # Placement samples anchors among target pixels; hiding the rows nearer than the depth range
    # (in a copy used for placement only) keeps anchors away from the camera. Footprints lie above
    # their anchor, so this never hides a footprint pixel; far anchors fail the minimum area.
    f = p.focal * W
    rows = np.arange(H, dtype=np.float64) + 0.5
    with np.errstate(divide="ignore"):
        depth = np.where(rows > hz, f * p.cam_h / np.maximum(rows - hz, 1e-9), np.inf)
    near = depth < spec.near
    view = Background(
        background.id, background.rgb, np.where(near[:, None], np.uint8(IGNORE), background.labels)
    )
    occupied = np.zeros((H, W), dtype=bool)
    records: list[PasteRecord] = []
    for k in range(n):
        for _attempt in range(8 if k == 0 else 3):
            pool = large if large and (not small or rng.random() < spec.large_share) else small
            oid = object_id(pool[int(rng.integers(len(pool)))], int(rng.integers(*spec.objects)))
            # Real height x pixels per metre at the anchor row = the placement's linear law.
            bottom = height_m(oid) * ((H - 1) - hz) / p.cam_h / H
            cfg = PlacementConfig(
                target_classes=dict(spec.targets),
                forbidden_classes=(),
                min_coverage=1.0,
                max_overlap=1.0,
                horizon=p.horizon,
                height_top=1e-4,
                height_bottom=float(min(max(bottom, 2e-4), 1.0)),
                scale_jitter=0.12,
                area_ratio=(spec.min_area, 0.12),
                flip_prob=0.5,
                rotation_range=spec.rotation,
                feather=feather,
                photometric_prob=0.5,
                max_retries=40,
            )
            found, _why = propose(
                view, _OneObject(bank, oid), 1, cfg, seed=int(rng.integers(2**31))
            )
            if not found:
                continue
            rec = found[0].replace(order=len(records))
            mask = transform_mask(bank.load(oid), rec.scale, rec.flip, rec.rotation)
            top, left, bot, right = placed_box(rec.x, rec.y, *mask.shape)
            occ = occupied[top:bot, left:right]
            if (occ & mask).sum() > 0.05 * mask.sum():
                continue
            occ |= mask
            records.append(rec)
            break
    return records


def paste_split(
    background: Background, split: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[PasteRecord]]:
    """``background`` with the pastes ``split`` plans for it: (rgb, anomaly gt 0/1/255, records)."""
    records = plan_pastes(background, split, rng)
    if not records:
        return background.rgb, np.zeros(background.labels.shape, np.uint8), records
    bank = ObjectBank(SPECS[split].categories, *SPECS[split].objects)
    r = render(background, records, {"bank": bank})
    return r.rgb, r.gt, records


def _write_png(path: Path, array: np.ndarray, level: int = 1) -> None:
    Image.fromarray(array).save(path, "PNG", compress_level=level)


def _make_one(task: tuple) -> dict:
    """Build and write one image of one split; returns its manifest entry."""
    root, split, index, seed, size = task
    root = Path(root)
    scene = scene_seed(seed, split, index)
    stem = stem_of(scene)
    bg = generate_scene(scene, size)
    out = root / split
    entry: dict = {"image": stem, "scene": scene, "records": []}
    if split == "heldout":
        _write_png(out / "images" / f"{stem}.png", bg.rgb)
        _write_png(out / "labels" / f"{stem}.png", bg.labels, 6)
        return entry
    rng = np.random.default_rng([int(seed), SPLIT_OFFSET[split], int(index), 0xD3A0])
    pasted = split != "train" or rng.random() < 0.5
    rgb, gt, records = (
        paste_split(bg, split, rng) if pasted else (bg.rgb, np.zeros(size, np.uint8), [])
    )
    if split == "demo-obstacles":
        # Like RoadObstacle21: only the road is evaluated.
        gt = np.where((bg.labels != TRAIN_ID["road"]) & (gt == 0), np.uint8(IGNORE), gt)
    _write_png(out / "images" / f"{stem}.png", rgb)
    _write_png(out / "labels_masks" / f"{stem}.png", gt.astype(np.uint8), 6)
    if split == "train":
        labels = np.where(gt != 0, np.uint8(IGNORE), bg.labels)
        _write_png(out / "labels" / f"{stem}.png", labels, 6)
    entry["records"] = [rec.to_dict() for rec in records]
    entry["anomaly"] = int((gt == 1).sum())
    entry["valid"] = int((gt != IGNORE).sum())
    return entry


def _check_count(name: str, value: int, limit: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= limit:
        raise InputError(f"{name}: expected an integer in [{minimum}, {limit}], got {value!r}")
    return value


def build_demo(
    dir: str | os.PathLike,
    n_train: int = DEFAULT_COUNTS["train"],
    seed: int = 0,
    workers: int = 2,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    n_heldout: int = DEFAULT_COUNTS["heldout"],
    n_obstacles: int = DEFAULT_COUNTS["demo-obstacles"],
    n_anomalies: int = DEFAULT_COUNTS["demo-anomalies"],
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the demo data under ``dir`` (see module docstring); returns the datasets.json dict.

    The data is built in a temporary sibling directory and moved into place at the end, so an
    interrupted build leaves no half-written dataset behind.
    """
    counts = {
        "train": _check_count("n_train", n_train, SPLIT_LIMIT["train"]),
        "heldout": _check_count("n_heldout", n_heldout, SPLIT_LIMIT["heldout"]),
        "demo-obstacles": _check_count("n_obstacles", n_obstacles, SPLIT_LIMIT["demo-obstacles"]),
        "demo-anomalies": _check_count("n_anomalies", n_anomalies, SPLIT_LIMIT["demo-anomalies"]),
    }
    _check_count("seed", seed, 200_000)
    _check_count("workers", workers, 64, 1)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int) and 32 <= v <= 4096 for v in size)
    ):
        raise InputError(f"size: expected (height, width) integers in [32, 4096], got {size!r}")
    size = (int(size[0]), int(size[1]))
    dest = Path(dir)
    if dest.exists() and not dest.is_dir():
        raise InputError(
            f"{dest}: exists and is not a directory; expected a directory for the demo data"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    t0 = time.perf_counter()
    try:
        for split in counts:
            subdirs = ["images", "labels"] if split in ("train", "heldout") else ["images"]
            if split != "heldout":
                subdirs.append("labels_masks")
            for sub in subdirs:
                (tmp / split / sub).mkdir(parents=True)
        tasks = [
            (str(tmp), split, i, int(seed), size) for split, n in counts.items() for i in range(n)
        ]
        entries: list[dict] = []
        if workers == 1 or len(tasks) < 8:
            for k, task in enumerate(tasks):
                entries.append(_make_one(task))
                if progress:
                    progress(k + 1, len(tasks))
        else:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for k, entry in enumerate(pool.map(_make_one, tasks, chunksize=4)):
                    entries.append(entry)
                    if progress:
                        progress(k + 1, len(tasks))
        by_split: dict[str, list[dict]] = {s: [] for s in counts}
        for task, entry in zip(tasks, entries, strict=True):
            by_split[task[1]].append(entry)
        with open(tmp / "train" / "pastes.jsonl", "w", encoding="utf-8") as fh:
            for e in by_split["train"]:
                for rec in e["records"]:
                    fh.write(
                        json.dumps({"image": e["image"], "record": rec}, sort_keys=True) + "\n"
                    )
        info = _datasets_json(by_split, seed, size)
        (tmp / "datasets.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        dest.mkdir(parents=True, exist_ok=True)
        for name in [*counts, "datasets.json"]:
            target = dest / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Kept out of the file so that a rebuild with the same seed is byte-identical.
    return {**info, "build_seconds": round(time.perf_counter() - t0, 1)}


def _ratio(entries: list[dict]) -> float:
    valid = sum(e.get("valid", 0) for e in entries)
    return round(sum(e.get("anomaly", 0) for e in entries) / valid, 6) if valid else 0.0


def _datasets_json(by_split: dict[str, list[dict]], seed: int, size: tuple[int, int]) -> dict:
    seg = {
        "images": "images",
        "labels": "labels",
        "labels_format": "cityscapes trainIds, 255 ignore",
    }
    anom = {
        "images": "images",
        "labels_masks": "labels_masks",
        "labels_masks_format": "0 normal, 1 anomaly, 255 ignore",
    }
    train = by_split["train"]
    pasted = [e["image"] for e in train if e["records"]]
    datasets = [
        {
            "name": "demo-train",
            "role": "train",
            "root": "train",
            "layout": {**seg, **anom, "pastes": "pastes.jsonl"},
            "count": len(train),
            "description": "procedural scenes, half with pasted bank objects (pasted pixels are 255 in labels/)",
        },
        {
            "name": "demo-synthetic",
            "role": "synthetic",
            "root": "train",
            "layout": {**anom, "pastes": "pastes.jsonl"},
            "count": len(pasted),
            "stems": pasted,
            "anomaly_pixel_ratio": _ratio([e for e in train if e["records"]]),
            "description": "the pasted training scenes; their paste records are in pastes.jsonl",
        },
        {
            "name": "demo-heldout",
            "role": "heldout",
            "root": "heldout",
            "layout": seg,
            "count": len(by_split["heldout"]),
            "description": "clean held-out scenes for the demo models' mIoU",
        },
        {
            "name": "demo-obstacles",
            "role": "eval",
            "root": "demo-obstacles",
            "layout": anom,
            "count": len(by_split["demo-obstacles"]),
            "anomaly_pixel_ratio": _ratio(by_split["demo-obstacles"]),
            "description": "small obstacles on the road; only the road is evaluated (RoadObstacle21-like)",
        },
        {
            "name": "demo-anomalies",
            "role": "eval",
            "root": "demo-anomalies",
            "layout": anom,
            "count": len(by_split["demo-anomalies"]),
            "anomaly_pixel_ratio": _ratio(by_split["demo-anomalies"]),
            "description": "larger, varied objects anywhere drivable; whole image evaluated (RoadAnomaly21-like)",
        },
    ]
    return {
        "format": FORMAT_VERSION,
        "generator": "anomseg.world.demo_data",
        "seed": int(seed),
        "size": list(size),
        "datasets": datasets,
    }


def default_demo_dir() -> Path:
    """``$ANOMSEG_WORKSPACE/demo`` (or ``./workspace/demo``): where ``anomseg demo build`` writes."""
    return workspace_dir() / "demo"


PICTURE_SEED = 4
PICTURE_SIZE = (256, 512)


def _shrink(rgb: np.ndarray, size: tuple[int, int], nearest: bool = False) -> Image.Image:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return Image.fromarray(rgb).resize((size[1], size[0]), resample)


def write_pictures(out: str | os.PathLike, seed: int | None = None) -> list[Path]:
    """Write the README pictures (scene, labels, pasted anomaly, object bank) as small PNGs."""
    from anomseg.data.classes import colorize

    seed = PICTURE_SEED if seed is None else int(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; expected an output folder")
    out.mkdir(parents=True, exist_ok=True)
    bg = generate_scene(seed, DEFAULT_SIZE)
    records: list[PasteRecord] = []
    k = 0
    while not records and k < 20:  # the first draw that places something
        records = plan_pastes(bg, "demo-anomalies", np.random.default_rng([seed, 0x91C, k]))
        k += 1
    pasted = render(
        bg, records, {"bank": ObjectBank(SPECS["demo-anomalies"].categories, *EVAL_OBJECTS)}
    )
    images = {
        "demo_scene.png": _shrink(bg.rgb, PICTURE_SIZE),
        "demo_labels.png": _shrink(colorize(bg.labels), PICTURE_SIZE, nearest=True),
        "demo_paste.png": _shrink(pasted.rgb, PICTURE_SIZE),
        "demo_objects.png": _object_sheet(),
    }
    paths = []
    for name, im in images.items():
        path = out / name
        im.save(path, "PNG", optimize=True)
        paths.append(path)
    return paths


def _object_sheet(per_row: int = 7, cell: int = 96) -> Image.Image:
    """One example of every bank category on a neutral grey, ``per_row`` per row."""
    cats = list(CATEGORIES)
    rows = (len(cats) + per_row - 1) // per_row
    sheet = np.full((rows * cell, per_row * cell, 3), 118, np.uint8)
    for k, cat in enumerate(cats):
        obj = ObjectBank([cat]).load(object_id(cat, 1))
        h, w = obj.mask.shape
        s = (cell - 8) / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = np.asarray(Image.fromarray(obj.rgb).resize(size, Image.Resampling.LANCZOS))
        m = (
            np.asarray(
                Image.fromarray(obj.mask.astype(np.uint8) * 255).resize(
                    size, Image.Resampling.BILINEAR
                )
            )
            > 127
        )
        r, c = divmod(k, per_row)
        y0 = r * cell + cell - 4 - size[1]
        x0 = c * cell + (cell - size[0]) // 2
        sheet[y0 : y0 + size[1], x0 : x0 + size[0]][m] = rgb[m]
    return Image.fromarray(sheet)
