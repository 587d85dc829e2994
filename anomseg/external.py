"""Score maps produced elsewhere, evaluated by the same metric code as our own methods.

``evaluate_maps`` reads one map per frame (``anomseg.scoremaps``: the official HDF5 layout or
.npy) at the label's native size and runs it through ``anomseg.evaluate.DatasetEval`` — the very
object ``anomseg eval`` fills — by wrapping each map as a one-field prediction and the method as
a scorer that returns it. Every frame is checked before any metric work: a missing frame, a map
of the wrong size, NaN or inf is one InputError naming the file.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.data.benchmark import PairedDataset
from anomseg.errors import InputError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,99}")


def check_name(name: str | None) -> str:
    """An external method's name: letters, digits, ``_ . + -`` (no ':' — that is parameter syntax)."""
    if not name or not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"--name {name!r}; expected a method name of letters, digits and _ . + - "
            "(e.g. RbA-SwinB), at most 100 characters"
        )
    return name


class _MapPrediction:
    """What ``scoring.score`` needs of a prediction, holding one precomputed map."""

    def __init__(self, scores: np.ndarray, image_hw: tuple[int, int]) -> None:
        import torch

        self.scores = scores
        self.logits = torch.from_numpy(scores)[None]  # only its shape is read (size)
        self.model_name = "external"
        self.meta = {"image_size": image_hw}

    @property
    def size(self) -> tuple[int, int]:
        return int(self.scores.shape[0]), int(self.scores.shape[1])


def _spec(name: str) -> Any:
    from anomseg.scoring import ScorerSpec

    return ScorerSpec(
        name, lambda pred: pred.scores, (), name, frozenset(), "external score maps"
    )  # fmt: skip


def map_paths(folder: Path, dataset: PairedDataset) -> list[Path]:
    """The file of every frame, checked to exist first (the first few missing ones named)."""
    from anomseg.scoremaps import FORMATS

    suffixes = [fmt.suffix for _, fmt in FORMATS.items()]
    out, missing = [], []
    for name in dataset.names:
        found = next((folder / f"{name}{s}" for s in suffixes if (folder / f"{name}{s}").is_file()),
                     None)  # fmt: skip
        if found is None:
            missing.append(name)
        out.append(found)
    if missing:
        shown = ", ".join(f"{m}{suffixes[0]}" for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(
            f"{folder}: no score map for {len(missing)} of {len(dataset)} frames of "
            f"{dataset.name!r}: {shown}{more} (expected <frame>.hdf5 or <frame>.npy per image)"
        )
    return out


def evaluate_maps(
    folder: Path,
    dataset: PairedDataset,
    name: str,
    metric_mode: str = "exact",
    skip_without_anomaly: bool = True,
    per_image: bool = True,
    progress: bool = True,
) -> Any:
    """One EvalRow for the maps in ``folder`` (one per frame of ``dataset``, native size)."""
    from tqdm.auto import tqdm

    from anomseg.evaluate import DatasetEval, check_metric_mode
    from anomseg.scoremaps import read_map

    check_metric_mode(metric_mode)
    name = check_name(name)
    folder = Path(folder)
    map_paths(folder, dataset)  # every frame present before any work
    extra = {name: _spec(name)}
    acc = DatasetEval(
        dataset.name, [(name, name, {})], metric_mode, per_image, skip_without_anomaly
    )
    t0 = time.perf_counter()
    for i in tqdm(range(len(dataset)), desc=f"eval {name} on {dataset.name}", unit="img",
                  disable=not progress, file=sys.stderr):  # fmt: skip
        label = dataset.read_label(i)
        if label is None:
            raise InputError(f"dataset {dataset.name!r}: image {dataset.names[i]!r} has no label")
        scores = read_map(folder, dataset.names[i], label.shape)  # checks size and NaN first
        if skip_without_anomaly and not (label == 1).any():
            acc.skip()
            continue
        acc.add(i, dataset.names[i], _MapPrediction(scores, label.shape), label, extra)
    acc.wall_seconds = time.perf_counter() - t0
    (row,) = acc.rows(acc.results(), model="external", input_size=None)
    return row
