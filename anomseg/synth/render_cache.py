"""The render cache of a synthetic sample: the one contract between who renders and who trains.

A sample's picture and ground truth are a cache of its paste records. Its store row
(``SyntheticSample.render``) holds ``cache_entry(...)``: ``image`` and ``gt`` (paths, absolute or
relative to the dataset root), the ``revisions_hash`` of the paste revisions they show, and
optionally the image's ``image_sha256`` and ``size``. Files written here are named by that hash
(``<uid>-<hash16>.png`` / ``_gt.png``), so an edit never overwrites a picture another reader
holds. Training takes an entry only while ``is_current`` (its hash equals the sample's current
one); otherwise it re-renders or leaves the sample out. Writers: the generator
(``training.synth_samples``), Curate's edits (``dashboard.services.curate``) and the demo
bootstrap (``workbench.bootstrap``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.atomic import atomic_write
from anomseg.hashing import file_sha256
from anomseg.synth.imageio import encode_image


def revisions_hash(revisions: Mapping[str, str | None]) -> str:
    """sha256 over a sample's current paste revisions (key -> content hash), order-free."""
    h = hashlib.sha256()
    for key in sorted(revisions):
        h.update(f"{key}={revisions[key] or '-'}\n".encode())
    return h.hexdigest()


def render_paths(out_dir: str | Path, uid: str, rev_hash: str) -> tuple[Path, Path]:
    """(image, ground truth) file names of a sample's render at one revisions hash."""
    out = Path(out_dir)
    return out / f"{uid}-{rev_hash[:16]}.png", out / f"{uid}-{rev_hash[:16]}_gt.png"


def cache_entry(
    image: str | Path,
    gt: str | Path,
    rev_hash: str,
    *,
    image_sha256: str | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The ``SyntheticSample.render`` value pointing at a render of ``rev_hash``."""
    entry: dict[str, Any] = {"image": str(image), "gt": str(gt), "revisions_hash": rev_hash}
    if image_sha256 is not None:
        entry["image_sha256"] = image_sha256
    if size is not None:
        entry["size"] = [int(size[0]), int(size[1])]
    return entry


def write_render_cache(
    out_dir: str | Path,
    uid: str,
    revisions: Mapping[str, str | None],
    rgb: np.ndarray,
    gt: np.ndarray,
) -> dict[str, Any]:
    """Write a sample's picture and ground truth (PNG) under ``out_dir``; their cache entry.

    Files already there for the same revisions are kept (same name = same content).
    """
    rh = revisions_hash(revisions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_p, gt_p = render_paths(out, uid, rh)
    for path, arr in ((img_p, rgb), (gt_p, gt)):
        if not path.is_file():
            atomic_write(path, encode_image(arr), durable=False)  # a cache: re-rendered if lost
    return cache_entry(
        img_p, gt_p, rh, image_sha256=file_sha256(img_p), size=tuple(np.asarray(gt).shape[:2])
    )


def is_current(entry: Mapping[str, Any] | None, rev_hash: str) -> bool:
    """Whether a cache entry shows the revisions ``rev_hash`` (an entry without a hash: yes)."""
    return bool(entry) and entry.get("revisions_hash") in (None, rev_hash)
