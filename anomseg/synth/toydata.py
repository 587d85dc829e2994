"""Tiny on-disk Cityscapes-layout and COCO-format trees, for tests and smoke runs.

Everything is hand-made with PIL and pycocotools so the paste pipeline can be exercised end to
end without the real data sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Cityscapes labelIds used below
ROAD_ID, SIDEWALK_ID, BUILDING_ID, SKY_ID, CAR_ID, UNLABELED_ID = 7, 8, 11, 23, 26, 0


def toy_label_ids(h: int, w: int, kind: str) -> np.ndarray:
    """A labelId map: sky on top, then road (with a sidewalk strip and a car) or no road."""
    lab = np.full((h, w), SKY_ID, dtype=np.uint8)
    lab[h // 3 :] = BUILDING_ID
    if kind == "street":
        lab[h // 2 :] = ROAD_ID
        lab[h // 2 :, : w // 6] = SIDEWALK_ID
        lab[h // 2 + 4 : h // 2 + 16, w // 2 : w // 2 + 20] = CAR_ID
        lab[-2:, :] = UNLABELED_ID  # ego-vehicle strip -> ignore
    return lab


def write_cityscapes(root: str | Path, size: tuple[int, int] = (128, 64)) -> dict[str, str]:
    """Write 4 frames under ``root`` (split ``train``); returns background id -> kind.

    Frames: three streets (two with ``labelIds``, one with ``labelTrainIds``) and one frame with
    no road or sidewalk at all.
    """
    from anomseg.data.classes import label_ids_to_train_ids

    root = Path(root)
    w, h = size
    frames = {
        "toyburg_000000_000001": ("street", "labelIds"),
        "toyburg_000000_000002": ("street", "labelTrainIds"),
        "toyburg_000000_000003": ("noroad", "labelIds"),
        "toyville_000000_000001": ("street", "labelIds"),
    }
    out = {}
    for i, (frame, (kind, label_kind)) in enumerate(frames.items()):
        city = frame.split("_")[0]
        img_dir = root / "leftImg8bit" / "train" / city
        gt_dir = root / "gtFine" / "train" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(100 + i)
        lab = toy_label_ids(h, w, kind)
        base = np.where(lab[..., None] == ROAD_ID, 90, 150).astype(np.int16)
        rgb = np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(img_dir / f"{frame}_leftImg8bit.png")
        if label_kind == "labelIds":
            Image.fromarray(lab).save(gt_dir / f"{frame}_gtFine_labelIds.png")
        else:
            Image.fromarray(label_ids_to_train_ids(lab)).save(
                gt_dir / f"{frame}_gtFine_labelTrainIds.png"
            )
        out[f"train/{city}/{frame}"] = kind
    return out


def write_coco(root: str | Path) -> dict[str, object]:
    """Write ``root/images/*.png`` and ``root/instances.json``; returns a description.

    Annotations: a polygon "dog", a compressed-RLE "cat", an uncompressed-RLE "cat", a crowd
    "cat" (filtered), a border-touching "dog" (filtered) and a "person".
    """
    from pycocotools import mask as mask_utils

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    W, H = 80, 60
    rng = np.random.default_rng(7)
    for i in (1, 2):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        rgb[10:50, 10:40] = (200, 40, 40) if i == 1 else (40, 40, 200)
        Image.fromarray(rgb).save(root / "images" / f"img{i}.png")

    # compressed RLE of an ellipse on image 2
    yy, xx = np.mgrid[:H, :W]
    ellipse = ((yy - 30) / 18.0) ** 2 + ((xx - 25) / 12.0) ** 2 <= 1.0
    rle = mask_utils.encode(np.asfortranarray(ellipse.astype(np.uint8)))
    rle_c = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    # uncompressed RLE (column-major run lengths starting with zeros) of a rectangle
    rect = np.zeros((H, W), dtype=bool)
    rect[20:45, 50:70] = True
    flat = rect.flatten(order="F").astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)

    def bbox(m: np.ndarray) -> list[float]:
        ys, xs = np.nonzero(m)
        return [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]

    tri = [12.0, 48.0, 38.0, 48.0, 25.0, 12.0]  # polygon x0,y0,x1,y1,... (triangle)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 18, "segmentation": [tri], "iscrowd": 0,
         "bbox": [12.0, 12.0, 26.0, 36.0], "area": 468.0},
        {"id": 2, "image_id": 2, "category_id": 17, "segmentation": rle_c, "iscrowd": 0,
         "bbox": bbox(ellipse), "area": float(ellipse.sum())},
        {"id": 3, "image_id": 2, "category_id": 17, "segmentation": {"size": [H, W], "counts": counts},
         "iscrowd": 0, "bbox": bbox(rect), "area": float(rect.sum())},
        {"id": 4, "image_id": 1, "category_id": 17, "segmentation": {"size": [H, W], "counts": counts},
         "iscrowd": 1, "bbox": bbox(rect), "area": float(rect.sum())},
        {"id": 5, "image_id": 1, "category_id": 18, "segmentation": [[0.0, 0.0, 30.0, 0.0, 0.0, 30.0]],
         "iscrowd": 0, "bbox": [0.0, 0.0, 30.0, 30.0], "area": 450.0},
        {"id": 6, "image_id": 1, "category_id": 1, "segmentation": [[45.0, 10.0, 60.0, 10.0, 60.0, 50.0, 45.0, 50.0]],
         "iscrowd": 0, "bbox": [45.0, 10.0, 15.0, 40.0], "area": 600.0},
    ]  # fmt: skip
    data = {
        "images": [
            {"id": 1, "file_name": "img1.png", "width": W, "height": H},
            {"id": 2, "file_name": "img2.png", "width": W, "height": H},
        ],
        "annotations": anns,
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 17, "name": "cat"},
            {"id": 18, "name": "dog"},
        ],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return {"ellipse": ellipse, "rect": rect, "triangle": tri, "size": (H, W)}
