"""Cityscapes' 19 training classes (trainIds), their colours, and the labelId -> trainId map."""

from __future__ import annotations

import numpy as np

from anomseg.labels import IGNORE

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
TRAIN_ID: dict[str, int] = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}

CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Official cityscapesScripts labelId -> trainId (255 = ignored in evaluation).
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``*_labelIds.png`` array to trainIds (unknown ids -> 255)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for lid, tid in LABEL_ID_TO_TRAIN_ID.items():
        lut[lid] = tid
    return lut[label_ids.astype(np.uint8)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) trainIds -> (H, W, 3) uint8 colour image (ignore = black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    return lut[train_ids.astype(np.uint8)]
