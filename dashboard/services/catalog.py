"""The catalogue the tabs list from: models, datasets, images, thumbnails, uploads."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.errors import AnomsegError, InputError
from dashboard import render
from dashboard.services.context import ServiceContext
from dashboard.wording import counted
from db import catalog

THUMB_MAX_SIDE = 192
UPLOADS_DATASET = "uploads"


def safe_display_name(client_name: str, max_len: int = 80) -> str:
    """The user's file name as stored: letters, digits, ``_`` and ``-`` of its stem + ``.png``
    (no dots, slashes or encoded separators survive, so it can never leave its folder)."""
    import re

    stem = client_name.rsplit(".", 1)[0] if "." in client_name else client_name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:max_len]
    return f"{stem or 'upload'}.png"


def safe_upload_name(data_hash: str, suffix: str = ".png") -> str:
    """The stored file name of an upload: its content hash, never the client's file name."""
    if not all(c in "0123456789abcdef" for c in data_hash) or len(data_hash) < 16:
        raise InputError("internal error: upload hash is not hexadecimal")
    return f"{data_hash[:32]}{suffix}"


def content_digest(data: bytes) -> str:
    """sha256 hex of bytes (uploads are named by it)."""
    return hashlib.sha256(data).hexdigest()


class CatalogService:
    """Registered models and datasets, an image's files and ground truth, uploads."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.ws = ctx.ws
        self.store = ctx.store

    def model_names(self) -> list[str]:
        """Registered models that can run, by name (rows of external score maps, architecture
        ``external``, have no model: they show in the Leaderboard only)."""
        from db import catalog

        with self.store.read() as s:
            return [m.name for m in catalog.list_models(s) if m.architecture != "external"]

    def dataset_choices(self, roles: Sequence[str] | None = None) -> list[tuple[str, int]]:
        """(label, id) of registered datasets that hold images (optionally of some roles)."""
        from sqlalchemy import func, select

        from db.models import Dataset, Image

        with self.store.read() as s:
            q = (
                select(Dataset.id, Dataset.name, Dataset.role, func.count(Image.id))
                .join(Image, Image.dataset_id == Dataset.id, isouter=True)
                .group_by(Dataset.id)
                .order_by(Dataset.role, Dataset.name)
            )
            rows = s.execute(q).all()
        out = []
        for ds_id, name, role, n in rows:
            if roles is not None and role not in roles:
                continue
            if n == 0:
                continue
            out.append((f"{name} ({role}, {counted(n, 'image')})", int(ds_id)))
        # evaluation data first: it has ground truth, the natural place to compare methods
        out.sort(key=lambda t: (0 if "(eval" in t[0] or "(heldout" in t[0] else 1, t[0]))
        return out

    def dataset_id(self, name: str) -> int:
        """The id of a dataset by name."""
        from db import catalog

        with self.store.read() as s:
            return int(catalog.get_dataset(s, name).id)

    def header_markdown(self) -> str:
        """One line about the workspace for the app header."""
        from sqlalchemy import func, select

        from db.models import Dataset, Flag, HeadVersion, Image, Model

        with self.store.read() as s:
            n_models = s.scalar(select(func.count(Model.id))) or 0
            n_ds = s.scalar(select(func.count(Dataset.id))) or 0
            n_img = s.scalar(select(func.count(Image.id))) or 0
            n_flags = s.scalar(select(func.count(Flag.id))) or 0
            active = s.execute(
                select(Model.name, HeadVersion.version)
                .join(HeadVersion, HeadVersion.model_id == Model.id)
                .where(HeadVersion.active.is_(True))
            ).all()
        url = getattr(self.store.engine, "url", None)
        db_txt = url.render_as_string(hide_password=True) if url is not None else "?"
        heads = ", ".join(f"{m} → head v{v}" for m, v in active) or "none"
        return (
            f"**Workspace** `{self.ws.root}` · **DB** `{db_txt}` · {counted(n_models, 'model')} · "
            f"{counted(n_ds, 'dataset')} · {counted(n_img, 'image')} · {counted(n_flags, 'flag')} · "
            f"**active heads:** {heads}"
        )

    def model_key(self, model: str) -> str:
        """Cache identity of a registered model (name + checkpoint hash)."""
        with self.store.read() as s:
            m = catalog.get_model(s, model)
            return f"{m.name}@{(m.checkpoint_sha256 or '')[:16]}"

    def image_names(self, dataset_id: int) -> list[tuple[str, int]]:
        """(file name, image id) of a dataset's images, in natural path order (2 before 10)."""
        from sqlalchemy import select

        from anomseg.data.benchmark import natural_key
        from db.models import Image

        with self.store.read() as s:
            rows = s.execute(
                select(Image.id, Image.path).where(Image.dataset_id == dataset_id)
            ).all()
        rows = sorted(rows, key=lambda r: natural_key(str(r[1])))
        return [(Path(p).name, int(i)) for i, p in rows]

    def gallery(self, dataset_id: int, limit: int = 120) -> list[tuple[str, str]]:
        """(thumbnail path, caption) for the first ``limit`` images of a dataset."""
        items = []
        for name, image_id in self.image_names(dataset_id)[:limit]:
            try:
                items.append((str(self.thumbnail(image_id)), f"#{image_id} {name}"))
            except AnomsegError:
                continue  # an unreadable file shows up as an error when opened, not here
        return items

    def image_paths(self, image_id: int) -> tuple[Any, Any, Path]:
        from db.models import Image, row_id

        with self.store.read() as s:
            img = s.get(Image, row_id(image_id, "image id"))
            if img is None:
                raise InputError(f"image id {image_id} is not registered (deleted?)")
            ds = img.dataset
            s.expunge_all()
        return img, ds, Path(ds.root) / img.path

    def thumbnail(self, image_id: int) -> Path:
        """A small JPEG of an image, cached on disk by content hash."""
        from PIL import Image as PILImage

        img, _ds, path = self.image_paths(image_id)
        out = Path(self.ws.cache_dir) / "thumbs" / f"{img.sha256[:32]}.jpg"
        if out.is_file():
            return out
        from anomseg.imageio import read_image

        rgb = read_image(path)
        (h, w), _ = render.fit_size(rgb.shape[:2], THUMB_MAX_SIDE)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{threading.get_ident()}.tmp")
        PILImage.fromarray(render.resize_rgb(rgb, (h, w))).save(tmp, format="JPEG", quality=85)
        tmp.replace(out)
        return out

    def label_for(self, ds: Any, img: Any) -> np.ndarray | None:
        """The ground truth of an image (0/1/255) if its dataset has one, else None."""
        from anomseg.data.benchmark import check_label_values, known_remap
        from anomseg.imageio import read_label

        root = Path(ds.root)
        stem = Path(img.path).stem
        for labels_dir in ("labels_masks", "labels"):
            for cand in (f"{stem}.png", f"{stem}_labels_semantic.png"):
                p = root / labels_dir / cand
                if p.is_file():
                    label = read_label(p)
                    remap = ds.label_remap or known_remap(root.name)
                    if remap:
                        lut = np.arange(256, dtype=np.uint8)
                        for k, v in dict(remap).items():
                            lut[int(k)] = int(v)
                        label = lut[label]
                    allowed = np.zeros(256, bool)
                    allowed[[0, 1, 255]] = True
                    check_label_values(label, allowed, p, "expected 0 / 1 / 255")
                    return label
        return None

    def register_upload(self, file_path: str | Path, max_pixels: int | None = None) -> int:
        """Validate an uploaded file, store it under its content hash, register it; image id.

        Stored as ``uploads/<content hash>/<the user's file name, sanitised>.png``: the folder
        comes from the pixels (no client path can escape the uploads folder) and the name is the
        one the user knows. A file that is not an image, is truncated, or is larger than the
        pixel limit is refused with the reason, before anything is written.
        """
        from PIL import Image as PILImage

        from anomseg.imageio import array_sha256, read_image
        from db import catalog

        if file_path is None:
            raise InputError("no file was uploaded")
        rgb = read_image(Path(file_path), max_pixels)
        digest = array_sha256(rgb)
        uploads = Path(self.ws.uploads_dir).resolve()
        uploads.mkdir(parents=True, exist_ok=True)
        folder = uploads / safe_upload_name(digest, "")
        shown = safe_display_name(Path(str(file_path)).name)
        dest = folder / shown
        if dest.resolve().parent.parent != uploads:
            raise InputError("upload path escapes the workspace")
        if not dest.is_file():
            folder.mkdir(exist_ok=True)
            tmp = folder / f".{shown}.{threading.get_ident()}.tmp"
            PILImage.fromarray(rgb).save(tmp, format="PNG", compress_level=1)
            tmp.replace(dest)
        file_hash = catalog.sha256_file(dest)
        rel = f"{folder.name}/{shown}"

        def write(s: Any) -> int:
            ds = catalog.register_dataset(s, UPLOADS_DATASET, "train", uploads, layout="uploads")
            img = catalog.add_image(s, ds, rel, file_hash, rgb.shape[1], rgb.shape[0])
            return int(img.id)

        return self.store.transact(write)
