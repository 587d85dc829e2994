"""The protocol card: everything that decides a result's numbers besides the method itself.

Two evaluators disagreeing by 20 AP points (DenseHybrid #5) is almost always a protocol
difference: input size, how maps and labels are resized, which images are skipped, how labels
are remapped, what is ignored, which weights, which images. Every stored result carries its card
(``EvalResult.params_json["protocol"]``), the Leaderboard shows it, and two rows of the same
(method, dataset) that disagree are compared field by field (``differences``).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# card field -> what it means (the Leaderboard's legend, and the order fields are shown in)
FIELDS: dict[str, str] = {
    "input_size": "model input HxW ('native': the image's own size)",
    "score_size": "where maps meet labels: 'input' (label resized) or 'label' (map resized)",
    "resize": "resampling of image, label and map",
    "skip_empty": "images without anomaly pixels left out (the seed's rule; official: kept)",
    "label_remap": "label values remapped when reading (e.g. RoadAnomaly 2=1)",
    "ignore": "what is left out of the metrics",
    "metric_mode": "exact / streaming / smiyc (the official binned AP)",
    "components": "component metrics: threshold rule and size filters",
    "checkpoint_sha256": "sha256 of the weights file ('' for external maps)",
    "dataset_sha256": "sha256 over the dataset's image and label files",
    "source": "'model' (scored here) or the folder of external maps",
    "code_version": "anomseg version (+ git commit)",
}


@functools.cache
def code_version() -> str:
    """``anomseg`` version plus the git commit of the checkout it runs from, if any."""
    import anomseg

    version = str(getattr(anomseg, "__version__", ""))
    root = Path(anomseg.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


def dataset_sha256(dataset: Any) -> str:
    """One sha256 over (name, image file hash, label file hash) of every sample, in order."""
    import hashlib

    from anomseg.hashing import file_sha256

    h = hashlib.sha256()
    for s in dataset.samples:
        h.update(s.name.encode())
        h.update(bytes.fromhex(file_sha256(s.image_path)))
        if s.label_path is not None:
            h.update(bytes.fromhex(file_sha256(s.label_path)))
    return h.hexdigest()


def card(
    *,
    input_size: Any,
    score_size: str,
    skip_empty: bool,
    label_remap: Mapping[Any, Any] | None,
    metric_mode: str,
    track: str,
    checkpoint_sha256: str = "",
    dataset_sha256: str = "",
    source: str = "model",
) -> dict[str, Any]:
    """The card of one evaluation (plain JSON values)."""
    from anomseg.components import SIZE_FILTERS

    if isinstance(input_size, list | tuple):
        size = "x".join(str(int(v)) for v in input_size)
    else:
        size = str(input_size or "native")
    min_pred, min_gt = SIZE_FILTERS[track]
    resize = (
        "image bilinear (Pillow), label nearest to the input size"
        if score_size == "input"
        else "image bilinear (Pillow); map bilinear to the label's size (F.interpolate)"
    )
    remap = ",".join(f"{a}={b}" for a, b in sorted((label_remap or {}).items())) or "none"
    return {
        "input_size": size,
        "score_size": score_size,
        "resize": resize if source == "model" else "none (maps at the label's size)",
        "skip_empty": bool(skip_empty),
        "label_remap": remap,
        "ignore": f"label 255; ground-truth components < {min_gt} px",
        "metric_mode": metric_mode,
        "components": f"score > best-F1 threshold; predicted components < {min_pred} px dropped "
        f"({track} track, native pixels)",
        "checkpoint_sha256": checkpoint_sha256,
        "dataset_sha256": dataset_sha256,
        "source": source,
        "code_version": code_version(),
    }


def differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> list[str]:
    """'field: A vs B' for every card field that differs (code version too)."""
    a, b = a or {}, b or {}
    out = []
    for key in [*FIELDS, *sorted((set(a) | set(b)) - set(FIELDS))]:
        va, vb = a.get(key, "—"), b.get(key, "—")
        if va != vb:
            out.append(f"{key}: {_short(va)} vs {_short(vb)}")
    return out


def _short(v: Any) -> Any:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else v  # hashes: a prefix


def summary(c: Mapping[str, Any] | None) -> str:
    """One short line for a table cell."""
    if not c:
        return ""
    parts = [
        str(c.get("input_size", "?")),
        f"score@{c.get('score_size', '?')}",
        "skip-empty" if c.get("skip_empty") else "all-images",
        f"remap {c.get('label_remap', 'none')}",
        str(c.get("metric_mode", "?")),
        f"ckpt {str(c.get('checkpoint_sha256') or '-')[:8]}",
        f"data {str(c.get('dataset_sha256') or '-')[:8]}",
    ]
    return " · ".join(parts)
