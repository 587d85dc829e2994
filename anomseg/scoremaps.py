"""Anomaly score maps as files: the SegmentMeIfYouCan layout out, and any supported layout in.

Formats (a registry: one writer/reader pair per name):

``smiyc``
    what the official evaluator's ``Evaluation.save_output`` writes and its metrics read:
    ``<out>/anomaly_p/<method>/<dataset>/<frame>.hdf5``, one HDF5 file per frame holding the
    map as dataset ``value``, **float16**, gzip level 9, at the image's native size. Point the
    evaluator's output folder at ``<out>`` (or zip ``anomaly_p/<method>`` for a submission).
``npy``
    ``<out>/<method>/<dataset>/<frame>.npy``, float32: lossless, for round trips.

``<dataset>`` is the benchmark's own name where one is known (RoadAnomaly21 ->
``AnomalyTrack-validation``, RoadObstacle21 -> ``ObstacleTrack-validation``), else the folder
name; ``<frame>`` is the image file's stem. Maps are oriented higher = more anomalous.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.atomic import atomic_write
from anomseg.errors import InputError
from anomseg.imageio import resize_scores  # beside resize_label: evaluate needs it too
from anomseg.registry import Registry

# dataset folder name (case-insensitive) -> the official evaluator's dataset name
OFFICIAL_NAMES: dict[str, str] = {
    "roadanomaly21": "AnomalyTrack-validation",
    "roadobstacle21": "ObstacleTrack-validation",
}


def official_dataset_name(folder_name: str) -> str:
    """The benchmark's dataset name for a folder (the folder name when none is known)."""
    return OFFICIAL_NAMES.get(folder_name.casefold(), folder_name)


def method_dir_name(method: str) -> str:
    """A method spec as one path component ('/' and NUL are the only bytes a name can't hold)."""
    name = method.replace("/", "_").replace("\0", "")
    if name in ("", ".", ".."):
        raise InputError(f"method name {method!r} cannot name a folder")
    return name


def _write_hdf5(path: Path, scores: np.ndarray) -> None:
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("value", data=scores.astype(np.float16), compression=9)

    atomic_write(path, write)


def _read_hdf5(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "value" not in f:
                raise InputError(f"{path}: no dataset 'value' (has {sorted(f.keys())})")
            return np.asarray(f["value"][()])
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None


def _write_npy(path: Path, scores: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(scores, dtype=np.float32))

    atomic_write(path, write)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None


@dataclass(frozen=True)
class MapFormat:
    """One on-disk layout of score maps."""

    suffix: str
    write: Callable[[Path, np.ndarray], None]
    read: Callable[[Path], np.ndarray]
    subdir: str  # between <out> and <method>

    def path(self, out: Path, method: str, dataset: str, frame: str) -> Path:
        """Where the map of one frame goes."""
        base = Path(out) / self.subdir if self.subdir else Path(out)
        return base / method_dir_name(method) / dataset / f"{frame}{self.suffix}"


FORMATS: Registry[MapFormat] = Registry("score map format")
FORMATS.register("smiyc", MapFormat(".hdf5", _write_hdf5, _read_hdf5, "anomaly_p"))
FORMATS.register("npy", MapFormat(".npy", _write_npy, _read_npy, ""))


def get_format(name: str) -> MapFormat:
    """The format registered as ``name`` (InputError listing the known ones otherwise)."""
    if name not in FORMATS:
        raise InputError(f"--format {name!r}; expected one of: {', '.join(FORMATS)}")
    return FORMATS.get(name)


def find_map_folder(root: Path, method: str, dataset_folder: str) -> Path:
    """The folder holding one method's maps of one dataset under ``root``: any format's layout
    (``anomaly_p/<method>/<dataset>``, ``<method>/<dataset>``), or ``root`` itself."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--scores {root}: folder not found")
    names = dict.fromkeys([official_dataset_name(dataset_folder), dataset_folder])
    for _, fmt in FORMATS.items():
        for ds in names:
            cand = (root / fmt.subdir if fmt.subdir else root) / method_dir_name(method) / ds
            if cand.is_dir():
                return cand
    return root


def read_map(folder: Path, frame: str, hw: tuple[int, int]) -> np.ndarray:
    """The map of ``frame`` in ``folder`` (.hdf5 or .npy), checked: 2-D (a leading 1 squeezed),
    of size ``hw``, finite. Every problem is one InputError naming the file."""
    found = [folder / f"{frame}{fmt.suffix}" for _, fmt in FORMATS.items()]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        raise InputError(
            f"no score map for frame {frame!r}: expected {found[0]} or {found[1].name} in {folder}"
        )
    fmt = next(f for _, f in FORMATS.items() if f.suffix == path.suffix)
    arr = np.squeeze(fmt.read(path))
    if arr.ndim != 2:
        raise InputError(f"{path}: map has shape {arr.shape}; expected (H, W) = {tuple(hw)}")
    if tuple(arr.shape) != tuple(hw):
        raise InputError(
            f"{path}: map is {arr.shape[0]}x{arr.shape[1]}; expected the image's size "
            f"{hw[0]}x{hw[1]}"
        )
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: map has dtype {arr.dtype}; expected floats")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        kind = "NaN" if np.isnan(arr).any() else "infinite"
        raise InputError(f"{path}: {bad} {kind} value(s); expected finite scores")
    return arr


def describe_bytes(n: int) -> str:
    """'12.3 MB' style size."""
    if n < 1024:
        return f"{n} B"
    e = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**e:.1f} {'BKMGT'[e]}B"


def export_scores(
    predictor: Any,
    dataset: Any,
    methods: list[str],
    out: Path,
    fmt: str = "smiyc",
    extra: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every method's map of every frame of ``dataset`` under ``out`` in format ``fmt``,
    resized bilinearly to the image's native size (what the official evaluator reads); one
    forward per image. Each file is written whole or not at all. Returns a summary."""
    import sys

    from tqdm.auto import tqdm

    from anomseg.evaluate import method_scores, parse_methods

    form = get_format(fmt)
    specs = parse_methods(methods, extra)
    ds_name = official_dataset_name(dataset.name)
    n_files = n_bytes = 0
    it = predictor.predict_dataset(dataset, batch_size=batch_size, num_workers=num_workers)
    for i, (frame, pred, _label) in enumerate(
        tqdm(
            it,
            total=len(dataset),
            desc=f"export {dataset.name}",
            unit="img",
            disable=not progress,
            file=sys.stderr,
        )  # fmt: skip
    ):
        hw = (pred.meta or {}).get("image_size") or dataset.read_image(i).shape[:2]
        for canon, sname, params in specs:
            s = resize_scores(method_scores(sname, params, pred, extra), tuple(hw))
            path = form.path(Path(out), canon, ds_name, frame)
            form.write(path, s)
            n_files += 1
            n_bytes += path.stat().st_size
    return {"files": n_files, "bytes": n_bytes, "dataset": ds_name, "format": fmt}


def images_only(root: str | os.PathLike) -> Any:
    """A dataset of ``<root>/images/*`` without labels (a benchmark's test split, what a
    submission covers): export-scores needs only the images."""
    from anomseg.data.benchmark import PairedDataset, Sample, list_images
    from anomseg.errors import DatasetError

    class ImagesOnly(PairedDataset):
        def __init__(self, root: Path) -> None:
            self.root, self.name, self.size, self.max_pixels = root, root.name, None, None
            self.remap = None
            if not (root / "images").is_dir():
                raise DatasetError(f"{root}: no images/ folder (expected <root>/images/*)")
            files = list_images(root / "images")
            if not files:
                raise DatasetError(f"{root / 'images'}: no images found")
            self.samples = [Sample(p.stem, p, None) for p in files]

        def _check_values(self, label: np.ndarray, path: Path) -> np.ndarray:
            return label

    return ImagesOnly(Path(root))
