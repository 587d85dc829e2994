"""A workspace: one folder holding the store, caches, uploads, head checkpoints and demo data.

``Workspace.open(root)`` creates the folder layout and upgrades the database; the first
``anomseg serve`` on an empty workspace calls ``workbench.bootstrap.bootstrap_demo`` so that a
newcomer lands in a populated app built from the built-in procedural world (nothing is
downloaded). Real datasets and checkpoints are added with ``register_benchmark`` /
``register_checkpoint`` (the ``anomseg add-dataset`` / ``add-model`` commands), after which every
tab sees them.

All durable state is in the store; the only in-process state is a small LRU of loaded models
(``predictor``, a ``workbench.models.PredictorPool``), which is a cache and safe to lose.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anomseg import settings
from anomseg.data.benchmark import BenchmarkDataset
from anomseg.errors import DatasetError, InputError
from anomseg.imageio import open_image
from anomseg.models import create_model
from anomseg.predict import Predictor
from db import catalog
from db.store import Store
from workbench.models import PredictorPool, build_model, read_spec, tuple_options

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class Workspace:
    """Paths and store of one workspace folder (see module docstring)."""

    MAX_LOADED_MODELS = 2

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store
        self._predictors = PredictorPool(store, self.MAX_LOADED_MODELS)

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
        options = dict(options or {})
        if checkpoint is not None:
            checkpoint = Path(checkpoint).expanduser().resolve()
            create_model(architecture, checkpoint=checkpoint, **tuple_options(options))
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

    # --- models ------------------------------------------------------------------------------

    def load_model(self, name: str | int) -> Any:
        """Build a registered model and load its checkpoint strictly (a fresh network)."""
        return build_model(read_spec(self.store, name))

    def predictor(self, name: str | int) -> Predictor:
        """The process-wide Predictor of a registered model (LRU of MAX_LOADED_MODELS)."""
        return self._predictors.get(name)
