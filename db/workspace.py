"""A workspace: one folder holding the store, caches, uploads, head checkpoints and demo data.

``Workspace.open(root)`` creates the folder layout and upgrades the database; the first
``anomseg serve`` on an empty workspace calls ``bootstrap_demo`` so that a newcomer lands in a
populated app built from the built-in procedural world (nothing is downloaded). Real datasets
and checkpoints are added with ``register_benchmark`` / ``register_checkpoint`` (the
``anomseg add-dataset`` / ``add-model`` commands), after which every tab sees them.

All durable state is in the store; the only in-process state is a small LRU of loaded models
(``predictor``), which is a cache and safe to lose.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomseg import settings
from anomseg.errors import DatasetError, InputError
from db.engine import Store

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "anomseg" / "assets" / "demo_models"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

Progress = Callable[[float, str], None]


def _demo_default(key: str) -> Any:
    from anomseg.world.demo_data import DEFAULT_COUNTS, DEFAULT_SIZE

    return tuple(DEFAULT_SIZE) if key == "size" else DEFAULT_COUNTS[key]


@dataclass(frozen=True)
class DemoSizes:
    """How much demo data to build; tests use a tiny one."""

    # the same numbers as `anomseg demo build` and the README (anomseg.world.demo_data; read
    # when a DemoSizes is made, so importing the store does not import the world)
    n_train: int = field(default_factory=lambda: _demo_default("train"))
    n_heldout: int = field(default_factory=lambda: _demo_default("heldout"))
    n_obstacles: int = field(default_factory=lambda: _demo_default("demo-obstacles"))
    n_anomalies: int = field(default_factory=lambda: _demo_default("demo-anomalies"))
    size: tuple[int, int] = field(default_factory=lambda: _demo_default("size"))
    accepted_fraction: float = 0.75
    workers: int = 2


class Workspace:
    """Paths and store of one workspace folder (see module docstring)."""

    MAX_LOADED_MODELS = 2

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self._predictors: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    # --- layout ------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, url: str | None = None) -> Workspace:
        """Open (creating) a workspace folder and upgrade its store to the newest schema."""
        root_path = settings.workspace_dir(root).expanduser()
        if root_path.exists() and not root_path.is_dir():
            raise InputError(f"workspace {root_path} exists and is not a directory")
        root_path.mkdir(parents=True, exist_ok=True)
        ws = cls(root_path.resolve(), Store.open(url=url, workspace=root_path))
        for d in (ws.cache_dir, ws.uploads_dir, ws.heads_dir, ws.renders_dir):
            d.mkdir(parents=True, exist_ok=True)
        return ws

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def heads_dir(self) -> Path:
        return self.root / "heads"

    @property
    def renders_dir(self) -> Path:
        return self.cache_dir / "renders"

    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()

    # --- registration ------------------------------------------------------------------------

    def is_empty(self) -> bool:
        """True when no dataset and no model is registered yet."""
        from db import catalog

        with self.store.read() as s:
            return not catalog.list_datasets(s) and not catalog.list_models(s)

    def register_benchmark(
        self,
        name: str,
        root: str | os.PathLike,
        role: str = "eval",
        remap: dict[int, int] | None = None,
    ) -> int:
        """Register a dataset in the benchmark layout (images/ + labels_masks/); returns its id.

        The root is validated first (layout, pairing, sizes, label values) so that a broken
        dataset is refused before anything is written to the store.
        """
        from anomseg.data.benchmark import BenchmarkDataset
        from db import catalog

        root_path = Path(root).expanduser().resolve()  # image paths are stored relative to it
        if not root_path.is_dir():
            raise DatasetError(f"dataset {name!r}: root {root_path} is not a directory")
        ds = BenchmarkDataset(root_path, remap="auto" if remap is None else remap)
        ds.validate()  # every label read once: bad values are refused before any write
        remap = ds.remap
        paths = [smp.image_path for smp in ds.samples]
        with self.store.session() as s:
            row = catalog.register_dataset(
                s,
                name,
                role,
                root_path,
                layout="benchmark",
                label_remap={str(k): v for k, v in remap.items()} if remap else None,
            )
            catalog.register_images(s, row, paths)
            return row.id

    def register_folder(self, name: str, root: str | os.PathLike, role: str, layout: str) -> int:
        """Register every image under ``<root>/images`` (segmentation or synthetic layouts).

        Validated like an eval dataset before anything is stored: every image is decoded (bombs,
        truncated files), and anomaly labels (``labels_masks/``), where present, are checked
        for pairing, size and values.
        """
        from anomseg.data.benchmark import BenchmarkDataset
        from anomseg.imageio import open_image
        from db import catalog

        root_path = Path(root).expanduser().resolve()
        images = sorted(
            p for p in (root_path / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise DatasetError(f"dataset {name!r}: no images under {root_path / 'images'}")
        if (root_path / BenchmarkDataset.LABELS_DIR).is_dir():
            BenchmarkDataset(root_path, remap="auto").validate()
        else:
            for p in images:
                open_image(p).close()
        with self.store.session() as s:
            row = catalog.register_dataset(s, name, role, root_path, layout=layout)
            catalog.register_images(s, row, images)
            return row.id

    def register_checkpoint(
        self,
        name: str,
        architecture: str,
        checkpoint: str | os.PathLike | None,
        input_size: tuple[int, int] | None = None,
        options: dict | None = None,
        meta: dict | None = None,
        replace: bool = False,
    ) -> int:
        """Register a model; the checkpoint is loaded once strictly so a wrong one is refused.

        Another checkpoint under an existing name needs ``replace`` (``catalog.register_model``).
        """
        from anomseg.models import create_model
        from db import catalog

        options = dict(options or {})
        if checkpoint is not None:
            checkpoint = Path(checkpoint).expanduser().resolve()
            create_model(architecture, checkpoint=checkpoint, **_tuples(options))
        with self.store.session() as s:
            row = catalog.register_model(
                s,
                name,
                architecture,
                checkpoint,
                input_size=input_size,
                meta={**(meta or {}), "options": options},
                replace=replace,
            )
            return row.id

    # --- the built-in world ------------------------------------------------------------------

    def bootstrap_demo(
        self, progress: Progress | None = None, sizes: DemoSizes | None = None, seed: int = 0
    ) -> dict:
        """Build the demo data (if missing), register its datasets, samples and demo models."""
        sizes = sizes or DemoSizes()
        from anomseg.world.demo_data import build_demo

        say = progress or (lambda f, m: None)
        info_path = self.demo_dir / "datasets.json"
        if not info_path.is_file():
            say(0.0, "building the built-in world's demo data")
            build_demo(
                self.demo_dir,
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
            root = self.demo_dir / d["root"]
            if d["role"] == "eval":
                self.register_benchmark(d["name"], root, role="eval")
            elif d["role"] == "synthetic":
                self._register_demo_samples(d, root, sizes.accepted_fraction)
            else:
                self.register_folder(d["name"], root, d["role"], layout="segmentation")
        say(0.95, "registering demo models")
        self.register_demo_models()
        say(1.0, "demo workspace ready")
        return info

    def _register_demo_samples(self, d: dict, root: Path, accepted_fraction: float) -> None:
        """One synthetic sample per pasted training scene, with its paste records as revisions."""
        from db import catalog, pastes

        by_image: dict[str, list[dict]] = {}
        for line in (root / d["layout"]["pastes"]).read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                by_image.setdefault(item["image"], []).append(item["record"])
        stems = sorted(by_image)
        n_accept = round(len(stems) * accepted_fraction)
        with self.store.session() as s:
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
                sample.render = {"image": f"images/{stem}.png", "gt": f"labels_masks/{stem}.png"}

    def register_demo_models(self) -> list[str]:
        """Register the committed demo checkpoints (safetensors + JSON) under their names."""
        names = []
        for ckpt in sorted(DEMO_MODEL_DIR.glob("*.safetensors")):
            meta = json.loads(ckpt.with_suffix(".json").read_text())
            self.register_checkpoint(
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

    # --- models ------------------------------------------------------------------------------

    def load_model(self, name: str):
        """Build a registered model and load its checkpoint strictly."""
        from anomseg.models import create_model
        from db import catalog

        with self.store.read() as s:
            row = catalog.get_model(s, name)
            arch, ckpt = row.architecture, row.checkpoint_path
            options = dict((row.meta or {}).get("options", {}))
            size = (row.input_h, row.input_w) if row.input_h else None
        if size is not None and "input_size" not in options:
            options["input_size"] = size
        return create_model(arch, checkpoint=ckpt, **_tuples(options))

    def predictor(self, name: str):
        """The process-wide Predictor of a registered model (LRU of MAX_LOADED_MODELS)."""
        from anomseg.predict import Predictor
        from db import catalog

        # keyed by checkpoint hash too: a model replaced under its name (add-model --replace)
        # is reloaded by a running app instead of serving the old weights under the new name
        with self.store.read() as s:
            key = f"{name}@{catalog.get_model(s, name).checkpoint_sha256 or ''}"
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
        pred = Predictor(self.load_model(name))
        with self._lock:
            self._predictors[key] = pred
            while len(self._predictors) > self.MAX_LOADED_MODELS:
                self._predictors.popitem(last=False)
        return pred


def _tuples(options: dict) -> dict:
    """JSON turns tuples into lists; model builders want (H, W) tuples back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
