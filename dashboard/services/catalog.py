"""The catalogue the tabs list from: models, datasets, images, thumbnails, uploads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from anomseg.atomic import atomic_write
from anomseg.data.benchmark import natural_key
from anomseg.errors import AnomsegError, InputError
from anomseg.imageio import array_sha256, read_image
from dashboard import render
from dashboard.services.context import ServiceContext
from dashboard.wording import counted
from db import catalog
from db import flags as dbflags
from db import heads as dbheads

THUMB_MAX_SIDE = 192
UPLOADS_DATASET = "uploads"


def safe_display_name(client_name: str, max_len: int = 80) -> str:
    """The user's file name as stored: letters, digits, ``_`` and ``-`` of its stem + ``.png``
    (no dots, slashes or encoded separators survive, so it can never leave its folder)."""
    stem = client_name.rsplit(".", 1)[0] if "." in client_name else client_name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:max_len]
    return f"{stem or 'upload'}.png"


def safe_upload_name(data_hash: str, suffix: str = ".png") -> str:
    """The stored file name of an upload: its content hash, never the client's file name."""
    if not all(c in "0123456789abcdef" for c in data_hash) or len(data_hash) < 16:
        raise InputError("internal error: upload hash is not hexadecimal")
    return f"{data_hash[:32]}{suffix}"


class CatalogService:
    """Registered models and datasets, an image's files and ground truth, uploads."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.ws = ctx.ws
        self.store = ctx.store

    def model_names(self) -> list[str]:
        """Registered models that can run, by name (rows of external score maps, architecture
        ``external``, have no model: they show in the Leaderboard only)."""
        with self.store.read() as s:
            return [m.name for m in catalog.list_models(s) if m.architecture != "external"]

    def dataset_choices(self, roles: Sequence[str] | None = None) -> list[tuple[str, int]]:
        """(label, id) of registered datasets that hold images (optionally of some roles)."""
        with self.store.read() as s:
            rows = catalog.dataset_image_counts(s)
        out = []
        for ds_id, name, role, n in rows:
            if roles is not None and role not in roles:
                continue
            if n == 0:
                continue
            out.append((f"{name} ({role}, {counted(n, 'image')})", ds_id))
        # evaluation data first: it has ground truth, the natural place to compare methods
        out.sort(key=lambda t: (0 if "(eval" in t[0] or "(heldout" in t[0] else 1, t[0]))
        return out

    def dataset_id(self, name: str) -> int:
        """The id of a dataset by name."""
        with self.store.read() as s:
            return int(catalog.get_dataset(s, name).id)

    def header_markdown(self) -> str:
        """One line about the workspace for the app header."""
        with self.store.read() as s:
            n = catalog.row_counts(s)
            n_flags = dbflags.count_flags(s)
            active = dbheads.active_heads(s)
        url = getattr(self.store.engine, "url", None)
        db_txt = url.render_as_string(hide_password=True) if url is not None else "?"
        heads = ", ".join(f"{m} → head v{v}" for m, v in active) or "none"
        return (
            f"**Workspace** `{self.ws.root}` · **DB** `{db_txt}` · {counted(n['models'], 'model')} · "
            f"{counted(n['datasets'], 'dataset')} · {counted(n['images'], 'image')} · "
            f"{counted(n_flags, 'flag')} · "
            f"**active heads:** {heads}"
        )

    def model_key(self, model: str) -> str:
        """Cache identity of a registered model (name + checkpoint hash)."""
        with self.store.read() as s:
            m = catalog.get_model(s, model)
            return f"{m.name}@{(m.checkpoint_sha256 or '')[:16]}"

    def image_names(self, dataset_id: int) -> list[tuple[str, int]]:
        """(file name, image id) of a dataset's images, in natural path order (2 before 10)."""
        with self.store.read() as s:
            rows = catalog.image_ids_and_paths(s, dataset_id)
        rows = sorted(rows, key=lambda r: natural_key(r[1]))
        return [(Path(p).name, i) for i, p in rows]

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
        """(Image row, Dataset row, file path) of a stored image, detached from the session."""
        with self.store.read() as s:
            img = catalog.get_image_by_id(s, image_id)
            ds = img.dataset
            s.expunge_all()
        return img, ds, Path(ds.root) / img.path

    def thumbnail(self, image_id: int) -> Path:
        """A small JPEG of an image, cached on disk by content hash."""
        img, _ds, path = self.image_paths(image_id)
        out = Path(self.ws.cache_dir) / "thumbs" / f"{img.sha256[:32]}.jpg"
        if out.is_file():
            return out
        rgb = read_image(path)
        (h, w), _ = render.fit_size(rgb.shape[:2], THUMB_MAX_SIDE)
        small = PILImage.fromarray(render.resize_rgb(rgb, (h, w)))
        # a cache: rebuilt when lost, so no fsync
        atomic_write(out, lambda tmp: small.save(tmp, format="JPEG", quality=85), durable=False)
        return out

    def register_upload(self, file_path: str | Path, max_pixels: int | None = None) -> int:
        """Validate an uploaded file, store it under its content hash, register it; image id.

        Stored as ``uploads/<content hash>/<the user's file name, sanitised>.png``: the folder
        comes from the pixels (no client path can escape the uploads folder) and the name is the
        one the user knows. A file that is not an image, is truncated, or is larger than the
        pixel limit is refused with the reason, before anything is written.
        """
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
            pic = PILImage.fromarray(rgb)
            atomic_write(dest, lambda tmp: pic.save(tmp, format="PNG", compress_level=1))
        file_hash = catalog.sha256_file(dest)
        rel = f"{folder.name}/{shown}"

        def write(s: Any) -> int:
            ds = catalog.register_dataset(s, UPLOADS_DATASET, "train", uploads, layout="uploads")
            img = catalog.add_image(s, ds, rel, file_hash, rgb.shape[1], rgb.shape[0])
            return int(img.id)

        return self.store.transact(write)
