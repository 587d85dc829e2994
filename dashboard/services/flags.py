"""The Flag tab: the painting frame, saving what was painted as a flag on the full-size image,
the flags list and overlay, and the store's quarantined rows."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.exc import IntegrityError

from anomseg.cache import LRU
from anomseg.errors import InputError
from anomseg.imageio import read_image
from dashboard import flag_layers, render
from dashboard.services.catalog import CatalogService
from dashboard.services.context import ServiceContext
from dashboard.services.scores import ScoreService
from dashboard.wording import method_label
from db import catalog as dbcatalog
from db import flags as dbflags
from db.integrity import check_store, flag_problem
from db.masks import decode_crop, encode_mask
from db.models import check_uid

PAINT_MAX_SIDE = 1024  # frames larger than this are painted on a downscaled copy
ALPHA_THRESHOLD = 128  # a painted pixel counts when the brush covered at least half of it
FLAG_KIND_LABELS = {
    "false positive": "false_positive",
    "false negative": "false_negative",
    "ignore": "ignore",
}
FLAG_KIND_SHORT = {"false_positive": "fp", "false_negative": "fn", "ignore": "ignore"}


def editor_mask(
    editor_value: Any, min_alpha: int = ALPHA_THRESHOLD, frame_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Boolean mask of what was painted in a gr.ImageEditor value (layers' alpha >= min_alpha).

    The brush is antialiased, so its rim has partial alpha; thresholding at half coverage gives
    the region the user sees. Works on the layers only, never the background. With ``frame_hw``
    (the (H, W) of the frame the editor was given) every layer must have exactly that size: a
    layer of another size would be stretched over the whole image, or cost memory for nothing.
    """
    if not isinstance(editor_value, dict):
        raise InputError("nothing painted: load a map into the editor and paint a region first")
    layers = [layer for layer in (editor_value.get("layers") or []) if layer is not None]
    if not layers:
        raise InputError("the flag is empty: paint the region on the map before saving")
    mask = None
    for n, layer in enumerate(layers, 1):
        arr = np.asarray(layer)
        if frame_hw is not None and tuple(arr.shape[:2]) != tuple(frame_hw):
            which = f"layer {n}" if len(layers) > 1 else "layer"
            raise InputError(
                f"the painted {which} is {arr.shape[1] if arr.ndim > 1 else '?'}x{arr.shape[0]} "
                f"(WxH) but the map in the editor is {frame_hw[1]}x{frame_hw[0]}; expected "
                f"{frame_hw[1]}x{frame_hw[0]}: load the map into the editor again and repaint"
            )
        if arr.ndim == 3 and arr.shape[2] == 4:
            m = arr[..., 3] >= min_alpha
        elif arr.ndim == 3:
            m = arr.max(axis=2) >= min_alpha
        elif arr.ndim == 2:
            m = arr >= min_alpha
        else:
            raise InputError(f"editor layer has shape {arr.shape}; expected an RGBA image")
        mask = m if mask is None else (mask | m if mask.shape == m.shape else mask)
    assert mask is not None
    if not mask.any():
        raise InputError("the flag is empty: paint the region on the map before saving")
    return mask


def mask_to_full_size(mask: np.ndarray, full_size: tuple[int, int]) -> np.ndarray:
    """Map a mask painted on a downscaled frame back to the image's full (H, W), nearest."""
    return render.resize_labels(np.asarray(mask, dtype=bool), full_size)


class FlagService:
    """Flags painted on a method's map: canvas, save, list, overlay, edit, delete."""

    def __init__(self, ctx: ServiceContext, catalog: CatalogService, scores: ScoreService) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.catalog = catalog
        self.scores = scores
        # decoded flag crops (a flag's box, bool): bounded in bytes, a whole-frame flag is 2 MB
        self.crops = LRU(
            max_items=1 << 14,
            max_bytes=64 << 20,
            sizeof=lambda c: int(getattr(getattr(c, "crop", None), "nbytes", 0)) + 128,
        )

    def flag_canvas(
        self,
        model: str,
        image_id: int,
        name: str,
        params: dict[str, dict[str, float]] | None = None,
        opacity: float = 0.55,
    ) -> dict[str, Any]:
        """An ImageEditor value: the method's map over the image, at most PAINT_MAX_SIDE wide.

        The frame keeps the stored image's aspect ratio (the scoring size may not), so a mask
        painted on it maps back to the full image by a plain resize.
        """
        view = self.scores.load_view(model, image_id)
        spec, amap = self.scores.score_maps(model, view, [name], params)[name]
        (h, w), _scale = render.fit_size(view.full_size, PAINT_MAX_SIDE)
        vmin, vmax = self.scores.colour_range(
            (self.catalog.model_key(model), view.sha256, spec), amap
        )
        bg = render.render_panel(
            render.resize_rgb(view.rgb, (h, w)),
            render.resize_map(amap, (h, w)),
            render.PanelStyle(opacity=opacity, vmin=vmin, vmax=vmax, show_gt=False),
        )
        layers = flag_layers.kind_layers(self._flag_crops(image_id), view.full_size, (h, w))
        if layers:
            bg = flag_layers.draw_layers(bg, layers, alpha=0.25)
        return {"background": bg, "layers": [], "composite": None}

    def _flag_crops(self, image_id: int) -> list[tuple[str, Any]]:
        """(short kind, MaskCrop) of the image's flags; quarantined rows are left out, so one
        bad blob never hides the rest."""
        out = []
        with self.store.read() as s:
            for f in dbflags.list_flags(s, image_id=int(image_id)):
                crop = self._decoded_crop(f)
                if crop is not None:
                    out.append((FLAG_KIND_SHORT[f.kind], crop))
        return out

    def _flag_problem(self, flag: Any, check: Callable[[Any], str | None]) -> str | None:
        # the memoised decode answers the common case (a good blob) without decoding again
        same_size = (flag.width, flag.height) == (flag.image.width, flag.image.height)
        return None if same_size and self._decoded_crop(flag) is not None else check(flag)

    def _decoded_crop(self, flag: Any) -> Any:
        """A flag's MaskCrop (None when its blob is corrupt), memoised by the blob's digest so
        a save does not decode every flag already on the image again."""
        blob = bytes(flag.mask)
        key = ("flag-crop", hashlib.blake2b(blob, digest_size=16).digest(), flag.width, flag.height)
        hit = self.crops.get(key)
        if hit is None:
            try:
                hit = decode_crop(blob, expect_size=(flag.width, flag.height))
            except InputError:
                hit = False
            self.crops.put(key, hit)
        return hit or None

    def quarantine_markdown(self) -> str:
        """The store's corrupt rows (``db.integrity``) with id and reason, for the Flag tab."""
        with self.store.read() as s:
            problems = check_store(s)
        if not problems:
            return "No corrupt rows in the store."
        what = {
            "flags": "flag",
            "paste_revisions": "paste revision",
            "synthetic_samples": "sample render cache",
        }
        lines = [
            f"* {what.get(p.table, p.table)} #{p.id}: {p.reason} - fix: {p.fix}" for p in problems
        ]
        return (
            f"**{len(problems)} corrupt row(s) quarantined** (skipped by training and export; "
            "delete a flag below, or run `anomseg db check --fix`):\n" + "\n".join(lines)
        )

    def save_flag(
        self,
        model: str,
        image_id: int,
        name: str,
        params: dict[str, dict[str, float]] | None,
        kind: str,
        editor_value: Any,
        note: str = "",
        author: str = "",
        token: str | None = None,
    ) -> int:
        """Store what was painted as a flag on the full-size image; returns the flag id.

        ``token`` is the client's id of this save (stored as the flag's uid): a retry of a save
        whose answer was lost stores nothing new and answers the same flag id.
        """
        kind = FLAG_KIND_LABELS.get(kind, kind)
        if kind not in FLAG_KIND_SHORT:
            raise InputError(f"flag kind {kind!r}; expected one of {', '.join(FLAG_KIND_LABELS)}")
        if token is not None:
            check_uid(token, "flag save token")
        with self.store.read() as s:
            img = dbcatalog.get_image_by_id(s, image_id)
            full = (int(img.height), int(img.width))
            model_id = dbcatalog.get_model(s, model).id
        frame, _ = render.fit_size(full, PAINT_MAX_SIDE)  # what flag_canvas gave the editor
        painted = editor_mask(editor_value, frame_hw=frame)
        mask = mask_to_full_size(painted, full)
        spec = self.scores.method_spec(name, params)
        if token is not None:
            # one read decides: the same strokes under this token are a retry (answer its id),
            # other strokes a new save under a stale token (two reads let a concurrent retry
            # land between them and be stored twice)
            done, other = self._saved_flag(token, int(image_id), mask)
            if done is not None:
                return done
            if other:
                token = None

        def write(s: Any) -> int:
            f = dbflags.add_flag(
                s,
                int(image_id),
                model_id,
                spec,
                kind,
                mask,
                author=author or "anonymous",
                note=note or "",
                uid=token,
            )
            return int(f.id)

        try:
            return self.store.transact(write)
        except IntegrityError:
            # a concurrent retry of the same save stored it first
            done, other = self._saved_flag(token, int(image_id), mask) if token else (None, False)
            if done is not None:
                return done
            if not other:
                raise
            token = None  # other strokes won the race for this token: store these as new
            return self.store.transact(write)

    def _saved_flag(self, token: str, image_id: int, mask: np.ndarray) -> tuple[int | None, bool]:
        """(id of the flag a save with ``token`` stored on this image with this ``mask`` or None,
        whether the token holds a flag of other strokes); a token of another image is refused."""
        with self.store.read() as s:
            flag = dbflags.find_flag_by_uid(s, token)
            if flag is None:
                return None, False
            flag_id, flag_image, blob = int(flag.id), int(flag.image_id), bytes(flag.mask)
        if flag_image != image_id:
            raise InputError(
                f"flag save token {token!r} was already saved on image #{flag_image}; "
                "a new save needs a new token (reload the page)"
            )
        if blob != encode_mask(mask):
            return None, True
        return flag_id, False

    def flags_frame(self, image_id: int | None = None, model: str | None = None):
        """Flags (of one image, or all) as a data frame, newest first."""
        with self.store.read() as s:
            model_id = dbcatalog.get_model(s, model).id if model else None
            rows = [
                {
                    "id": f.id,
                    "image": f"#{f.image_id} {Path(f.image.path).name}",
                    "kind": f.kind.replace("_", " "),
                    "method": method_label(f.method),
                    "model": f.model.name,
                    "area px": f.area,
                    "author": f.author,
                    # a corrupt row stays listed (so it can be selected and deleted), marked
                    "note": (
                        f"⚠ quarantined: {why} - delete it"
                        if (why := self._flag_problem(f, flag_problem))
                        else f.note
                    ),
                    "created": f.created.strftime("%Y-%m-%d %H:%M:%S"),
                }
                for f in dbflags.list_flags(
                    s, image_id=None if image_id is None else int(image_id), model_id=model_id
                )
            ]
        cols = ["id", "image", "kind", "method", "model", "area px", "author", "note", "created"]
        df = pd.DataFrame(rows, columns=cols)
        return df.iloc[::-1].reset_index(drop=True)

    def flags_overlay(self, image_id: int, max_side: int = PAINT_MAX_SIDE) -> np.ndarray:
        """The stored image with its flags drawn in their kinds' colours."""
        _img, _ds, path = self.catalog.image_paths(image_id)
        rgb = read_image(path)
        (h, w), _ = render.fit_size(rgb.shape[:2], max_side)
        small = render.resize_rgb(rgb, (h, w))
        layers = flag_layers.kind_layers(self._flag_crops(image_id), rgb.shape[:2], (h, w))
        return flag_layers.draw_layers(small, layers)

    def update_flag(self, flag_id: int, note: str | None = None, kind: str | None = None) -> None:
        """Edit a flag's note (and/or kind)."""
        k = FLAG_KIND_LABELS.get(kind, kind) if kind else None
        self.store.transact(
            lambda s: dbflags.update_flag(s, int(flag_id), note=note, kind=k) and None
        )

    def delete_flag(self, flag_id: int) -> None:
        """Delete a flag."""
        self.store.transact(lambda s: dbflags.delete_flag(s, int(flag_id)))

    def count_flags(self) -> int:
        """All flags in the store."""
        with self.store.read() as s:
            return dbflags.count_flags(s)
