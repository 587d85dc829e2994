"""The demo workspace: build the built-in world's data and register it with the demo models.

The first ``anomseg serve`` on an empty workspace (and ``anomseg demo build --workspace``) calls
``bootstrap_demo`` so that a newcomer lands in a populated app; nothing is downloaded. How much
data it builds has one source, ``anomseg.world.demo_data.DEFAULT_COUNTS`` (the README and
``anomseg demo build`` say the same numbers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anomseg
from anomseg.synth.render_cache import cache_entry, revisions_hash
from anomseg.world.demo_data import DEFAULT_COUNTS, DEFAULT_SIZE, build_demo
from db import catalog, pastes
from workbench.workspace import Workspace

DEMO_MODEL_DIR = Path(anomseg.__file__).resolve().parent / "assets" / "demo_models"

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class DemoSizes:
    """How much demo data to build; tests use a tiny one."""

    n_train: int = DEFAULT_COUNTS["train"]
    n_heldout: int = DEFAULT_COUNTS["heldout"]
    n_obstacles: int = DEFAULT_COUNTS["demo-obstacles"]
    n_anomalies: int = DEFAULT_COUNTS["demo-anomalies"]
    size: tuple[int, int] = tuple(DEFAULT_SIZE)
    accepted_fraction: float = 0.75
    workers: int = 2


def bootstrap_demo(
    ws: Workspace, progress: Progress | None = None, sizes: DemoSizes | None = None, seed: int = 0
) -> dict:
    """Build the demo data (if missing), register its datasets, samples and demo models."""
    sizes = sizes or DemoSizes()
    say = progress or (lambda f, m: None)
    info_path = ws.demo_dir / "datasets.json"
    if not info_path.is_file():
        say(0.0, "building the built-in world's demo data")
        build_demo(
            ws.demo_dir,
            n_train=sizes.n_train,
            n_heldout=sizes.n_heldout,
            n_obstacles=sizes.n_obstacles,
            n_anomalies=sizes.n_anomalies,
            size=sizes.size,
            workers=sizes.workers,
            seed=seed,
            progress=lambda k, n: say(0.8 * k / n, f"demo data {k}/{n}"),
        )
    info = json.loads(info_path.read_text())
    say(0.85, "registering demo datasets")
    for d in info["datasets"]:
        root = ws.demo_dir / d["root"]
        if d["role"] == "eval":
            ws.register_benchmark(d["name"], root, role="eval")
        elif d["role"] == "synthetic":
            _register_demo_samples(ws, d, root, sizes.accepted_fraction)
        else:
            ws.register_folder(d["name"], root, d["role"], layout="segmentation")
    say(0.95, "registering demo models")
    register_demo_models(ws)
    say(1.0, "demo workspace ready")
    return info


def _register_demo_samples(ws: Workspace, d: dict, root: Path, accepted_fraction: float) -> None:
    """One synthetic sample per pasted training scene, with its paste records as revisions."""
    by_image: dict[str, list[dict]] = {}
    for line in (root / d["layout"]["pastes"]).read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            by_image.setdefault(item["image"], []).append(item["record"])
    stems = sorted(by_image)
    n_accept = round(len(stems) * accepted_fraction)
    with ws.store.session() as s:
        row = catalog.register_dataset(s, d["name"], "synthetic", root, layout="synthetic")
        catalog.register_images(s, row, [root / "images" / f"{stem}.png" for stem in stems])
        existing = {smp.uid for smp in pastes.list_samples(s, dataset_id=row.id)}
        for k, stem in enumerate(stems):
            uid = f"demo-{stem}"
            if uid in existing:
                continue
            records = sorted(by_image[stem], key=lambda r: r.get("order", 0))
            sample = pastes.create_sample(
                s,
                row.id,
                records[0]["background_id"],
                [(f"p{i}", r) for i, r in enumerate(records)],
                status="accepted" if k < n_accept else "proposed",
                author="demo",
                uid=uid,
            )
            # the world rendered these pastes already: its files are the sample's render cache
            # (paths relative to the dataset root, where the catalog finds the image's row)
            revs = {p.key: r.content_hash for p, r in pastes.current_revisions(s, sample.id)}
            pastes.set_render_cache(
                s,
                sample.id,
                cache_entry(f"images/{stem}.png", f"labels_masks/{stem}.png", revisions_hash(revs)),
            )


def register_demo_models(ws: Workspace) -> list[str]:
    """Register the committed demo checkpoints (safetensors + JSON) under their names."""
    names = []
    for ckpt in sorted(DEMO_MODEL_DIR.glob("*.safetensors")):
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        ws.register_checkpoint(
            meta["name"],
            meta["architecture"],
            ckpt,
            input_size=tuple(meta["input_size"]),
            options=meta.get("options", {}),
            meta={k: v for k, v in meta.items() if k != "options"},
            replace=True,  # newer demo weights: older heads stay with the older weights
        )
        names.append(meta["name"])
    return names
