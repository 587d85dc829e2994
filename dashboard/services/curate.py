"""The Curate tab: synthetic samples, their pastes (edit, move, undo, redo, checked to stand on
the road), the render cache training reads, and queueing more samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image as PILImage

import anomseg.world  # noqa: F401  (registers the procedural background and bank object sources)
from anomseg.cache import LRU
from anomseg.errors import InputError
from anomseg.imageio import image_size
from anomseg.synth import placement
from anomseg.synth.records import PasteRecord, records_hash
from anomseg.synth.render import render as render_pastes
from anomseg.synth.render_cache import write_render_cache
from anomseg.synth.sources import BACKGROUND_SOURCES, OBJECT_SOURCES
from dashboard import render
from dashboard.panels import jpeg_data_uri
from dashboard.services.context import ServiceContext
from dashboard.wording import REGISTER_TRAINING_HINT
from db import pastes as dbpastes
from training.synth_samples import object_source_for, sample_sources
from workbench.jobs import enqueue_synth_generate

# the sample list's thumbnails: longest side in pixels, and the cache's bounds (a thumbnail is
# ~3-5 kB of base64 JPEG; keyed by render file, so an edit's new render gets a new one)
THUMB_SIDE = 128
THUMB_SHOWN = 96  # CSS pixels in the list: the 128-px picture stays sharp on a HiDPI screen
THUMB_CACHE_ITEMS = 1024
THUMB_CACHE_BYTES = 8 << 20
# rows of the list that get a thumbnail: the first list of a large set costs one PNG decode each
THUMB_ROWS = 300
SAMPLE_COLUMNS = ["sample", "id", "status", "background", "pastes", "updated"]


def thumbnail_rgb(path: Path, side: int = THUMB_SIDE) -> np.ndarray:
    """A render-cache picture shrunk to fit ``side`` (antialiased: a plain bilinear shrink of a
    1024-wide street scene aliases into noise)."""
    with PILImage.open(path) as im:
        im = im.convert("RGB")
        (h, w), _ = render.fit_size((im.height, im.width), side)
        return np.asarray(im.resize((w, h), PILImage.LANCZOS, reducing_gap=2.0))


def render_image_path(entry: dict[str, Any] | None, root: str) -> Path | None:
    """The picture file of a sample's render-cache entry (absolute, or relative to its dataset)."""
    if not entry or not entry.get("image"):
        return None
    p = Path(entry["image"])
    return p if p.is_absolute() else Path(root) / p


class CurateService:
    """Synthetic samples and their pastes."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.ws = ctx.ws
        self.store = ctx.store
        self.renders = LRU(max_items=16)
        self.thumbs = LRU(max_items=THUMB_CACHE_ITEMS, max_bytes=THUMB_CACHE_BYTES, sizeof=len)

    def thumbnail_html(self, sample_id: int, path: Path | None) -> str:
        """An ``<img>`` of a sample's current render (cached per render file); "" without one."""
        if path is None or not path.is_file():
            return ""
        key = str(path)
        uri = self.thumbs.get(key)
        if uri is None:
            try:
                uri = jpeg_data_uri(thumbnail_rgb(path), quality=85)
            except OSError:  # an unreadable cache file: the list still shows, without it
                return ""
            self.thumbs.put(key, uri)
        return (
            f'<img src="{uri}" alt="sample #{int(sample_id)}" class="curate-thumb" '
            f'data-sample="{int(sample_id)}" style="width:{THUMB_SHOWN}px;height:auto;'
            'max-width:none;display:block">'
        )

    def samples_frame(self, status: str | None = None):
        """Synthetic samples (optionally of one status) as a data frame."""
        status = None if status in (None, "", "all") else status
        with self.store.read() as s:
            rows, pictures = [], []
            for smp in dbpastes.list_samples(s, status=status):
                live = sum(1 for _p, r in dbpastes.current_revisions(s, smp.id) if r.record_json)
                if len(pictures) < THUMB_ROWS:
                    pictures.append(render_image_path(smp.render, smp.dataset.root))
                rows.append(
                    {
                        "id": smp.id,
                        "status": smp.status,
                        "background": smp.background_id,
                        "pastes": live,
                        "updated": smp.updated.strftime("%Y-%m-%d %H:%M:%S"),
                    }
                )
        for row, path in zip(rows, pictures, strict=False):
            row["sample"] = self.thumbnail_html(row["id"], path)
        return pd.DataFrame(rows, columns=SAMPLE_COLUMNS).fillna({"sample": ""})

    def sample_counts(self) -> dict[str, int]:
        """Number of synthetic samples per status."""
        with self.store.read() as s:
            return dbpastes.sample_counts(s)

    def _background(self, sample_id: int) -> Any:
        """The background of a sample: from the workspace if it knows, else by source registry."""
        with self.store.read() as s:
            smp = dbpastes.get_sample(s, int(sample_id))
            bid, cached, root = smp.background_id, smp.render or {}, smp.dataset.root
        hit = self.renders.get(("bg", bid))
        if hit is not None:
            return hit
        getter = getattr(self.ws, "background", None)
        stored = sample_sources(self.store, int(sample_id))  # real backgrounds: the dataset's spec
        if stored is not None:
            bg = stored[0].load(bid)
        elif callable(getter):
            bg = getter(bid)
        else:
            bg = self._registry_background(bid, self._sample_size(cached, root))
        self.renders.put(("bg", bid), bg)
        return bg

    def _sample_size(self, cached: dict, root: str) -> tuple[int, int] | None:
        """(H, W) a sample was made at: from its render cache, else the workspace's demo size."""
        if cached.get("size"):
            return int(cached["size"][0]), int(cached["size"][1])
        if cached.get("image"):
            p = Path(cached["image"])
            p = p if p.is_absolute() else Path(root) / p
            if p.is_file():
                return image_size(p)
        size = getattr(self.ws, "demo_size", None)
        return (int(size[0]), int(size[1])) if size else None

    def _registry_background(self, bid: str, size: tuple[int, int] | None) -> Any:
        source = bid.split(":", 1)[0]
        builder = BACKGROUND_SOURCES.get(source)
        kw: dict[str, Any] = {}
        if source == "procedural":
            kw = {"start": 0, "stop": 2**31}
            if size:
                kw["size"] = size
        return builder(**kw).load(bid)

    def _lookup(self) -> Any:
        getter = getattr(self.ws, "object_lookup", None)
        if callable(getter):
            return getter()
        built: dict[str, Any] = {}

        def find(source: str, object_id: str) -> Any:
            if source not in built:
                # a source with options (COCO) is built from a synthetic dataset's stored spec
                stored = object_source_for(self.store, source, object_id)
                built[source] = stored or OBJECT_SOURCES.get(source)()
            return built[source].load(object_id)

        return find

    def object_choices(self, source: str = "bank", limit: int = 400) -> list[str]:
        """Object ids a paste can switch to (of the paste's source)."""
        getter = getattr(self.ws, "object_ids", None)
        if callable(getter):
            return list(getter(source))[:limit]
        stored = object_source_for(self.store, source)  # COCO: a synthetic dataset's spec
        return (stored or OBJECT_SOURCES.get(source)()).ids()[:limit]

    def _records(self, sample_id: int) -> list[tuple[int, str, Any]]:
        """(paste id, key, PasteRecord) of the live pastes of a sample."""
        with self.store.read() as s:
            out = []
            for paste, rev in dbpastes.current_revisions(s, int(sample_id)):
                if rev.record is not None:
                    out.append((paste.id, paste.key, PasteRecord.from_dict(rev.record)))
        return out

    def render_sample(self, sample_id: int) -> Any:
        """The sample rendered from its current records (cached by content)."""
        bg = self._background(sample_id)
        recs = [r for _i, _k, r in self._records(sample_id)]
        key = ("render", bg.id, records_hash(recs))
        hit = self.renders.get(key)
        if hit is None:
            hit = render_pastes(bg, recs, self._lookup())
            self.renders.put(key, hit)
        return hit

    def sample_view(
        self, sample_id: int, selected: str | None = None
    ) -> tuple[np.ndarray, Any, list[str]]:
        """(preview with paste outlines, pastes data frame, paste keys) of a sample."""
        rendered = self.render_sample(sample_id)
        live = self._records(sample_id)
        img = rendered.rgb.copy()
        # instance k is the k-th record in compositing order; outline each in white, the
        # selected one in yellow and thicker
        by_hash = {r.content_hash(): key for _pid, key, r in live}
        for k, rec in enumerate(rendered.records, start=1):
            m = rendered.instances == k
            if not m.any():
                continue
            is_sel = by_hash.get(rec.content_hash()) == selected
            color = (255, 220, 0) if is_sel else (255, 255, 255)
            img = render.paint(img, render.outline(m, 3 if is_sel else 1), color)
        rows = [
            {
                "key": key,
                "object": r.object_id,
                "x": r.x,
                "y": r.y,
                "scale": round(r.scale, 4),
                "flip": r.flip,
                "feather": r.feather,
                "photometric": r.photometric,
            }
            for _pid, key, r in live
        ]
        cols = ["key", "object", "x", "y", "scale", "flip", "feather", "photometric"]
        return img, pd.DataFrame(rows, columns=cols), [key for _pid, key, _r in live]

    def paste_record(self, sample_id: int, key: str) -> dict[str, Any]:
        """The current record of one paste as a dict."""
        for _pid, k, r in self._records(sample_id):
            if k == key:
                return r.to_dict()
        raise InputError(f"sample {sample_id} has no live paste {key!r}")

    def paste_revisions(self, sample_id: int, key: str) -> int:
        """How many revisions a paste has (all of them, undone ones included)."""
        with self.store.read() as s:
            paste = dbpastes.get_paste(s, int(sample_id), key)
            return len(dbpastes.paste_history(s, paste.id))

    def check_placement(self, bg: Any, record: Any) -> None:
        """Raise InputError when a paste leaves the frame or does not stand on the ground
        (``anomseg.synth.placement.check_placement`` on the paste's own object)."""
        obj = self._lookup()(record.source, record.object_id)
        placement.check_placement(bg.labels, record, obj)

    def _paste_id(self, sample_id: int, key: str) -> int:
        with self.store.read() as s:
            return int(dbpastes.get_paste(s, int(sample_id), key).id)

    def edit_paste(
        self, sample_id: int, key: str, changes: dict[str, Any], author: str = ""
    ) -> int:
        """Apply field changes to a paste (validated, on the road) as a new revision; its number."""
        current = PasteRecord.from_dict(self.paste_record(sample_id, key))
        new = current.replace(**changes)
        if new == current:
            return self.paste_revisions(sample_id, key)
        self.check_placement(self._background(sample_id), new)
        paste_id = self._paste_id(sample_id, key)
        number = self.store.transact(
            lambda s: int(
                dbpastes.edit_paste(
                    s,
                    paste_id,
                    new.to_dict(),
                    author=author or "anonymous",
                    content_hash_=new.content_hash(),
                ).number
            )
        )
        self.refresh_render_cache(sample_id)
        return number

    def refresh_render_cache(self, sample_id: int) -> dict[str, Any]:
        """Write the sample's current picture and ground truth, and point its render cache there.

        Training reads accepted samples from this cache; the revisions hash recorded with it
        tells training that the files match the current paste revisions.
        """
        rendered = self.render_sample(sample_id)
        with self.store.read() as s:
            smp = dbpastes.get_sample(s, int(sample_id))
            uid = smp.uid
            revs = {p.key: r.content_hash for p, r in dbpastes.current_revisions(s, smp.id)}
        out = Path(getattr(self.ws, "renders_dir", Path(self.ws.cache_dir) / "renders"))
        cache = write_render_cache(out, uid, revs, rendered.rgb, rendered.gt)
        self.store.transact(lambda s: dbpastes.set_render_cache(s, int(sample_id), cache) and None)
        return cache

    def move_paste(self, sample_id: int, key: str, x: int, y: int, author: str = "") -> int:
        """Put a paste's anchor (bottom centre) at a clicked pixel."""
        return self.edit_paste(sample_id, key, {"x": int(x), "y": int(y)}, author)

    def undo_paste(self, sample_id: int, key: str) -> int:
        """Step a paste back to its previous revision; returns the revision now current."""
        paste_id = self._paste_id(sample_id, key)
        number = self.store.transact(lambda s: int(dbpastes.undo_paste(s, paste_id).number))
        self.refresh_render_cache(sample_id)
        return number

    def redo_paste(self, sample_id: int, key: str) -> int:
        """Step a paste forward again after an undo."""
        paste_id = self._paste_id(sample_id, key)
        number = self.store.transact(lambda s: int(dbpastes.redo_paste(s, paste_id).number))
        self.refresh_render_cache(sample_id)
        return number

    def set_sample_status(self, sample_id: int, status: str) -> None:
        """Accept / reject / re-propose a sample."""
        self.store.transact(
            lambda s: dbpastes.set_sample_status(s, int(sample_id), status) and None
        )

    def queue_generate(self, n: int, params: dict[str, Any] | None = None) -> int:
        """Queue a job that proposes ``n`` more synthetic samples; returns the job id."""
        return enqueue_synth_generate(self.store, n, params, hint=REGISTER_TRAINING_HINT)
