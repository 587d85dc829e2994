"""What the dashboard's tabs do, as plain functions of a workspace: no gradio in this module.

Each tab module is a thin layer of widgets and events over a ``Services`` object, so every action
(compare, flag, edit a paste, queue a retrain, read the leaderboard) is testable without a browser.

State lives in the database (``db``); what is kept in memory is a cache with a size bound:

* predictions: the workspace's per-model ``Predictor`` (one forward per image and model);
* scored maps: ``MapCache``, keyed by (model, image hash, method spec) and bounded in bytes, so a
  slider move re-renders from cached maps and never re-runs the model or a scorer;
* loaded heads, decoded images, thumbnails and the per-dataset 95%-TPR thresholds: small LRUs.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.cache import LRU
from anomseg.errors import AnomsegError, InputError
from dashboard import flag_layers, render
from dashboard.wording import REGISTER_TRAINING_HINT, counted, method_label

DEFAULT_MAP_CACHE_BYTES = 384 << 20
GRID_MAX_SIDE = 640  # panels in the side-by-side grid; the full-size view uses the scoring size
PAINT_MAX_SIDE = 1024  # frames larger than this are painted on a downscaled copy
DISPLAY_MAX_SIDE = 1024  # the full-size view and the painting frame
THUMB_MAX_SIDE = 192
ALPHA_THRESHOLD = 128  # a painted pixel counts when the brush covered at least half of it
TPR_TARGET = 0.95
MAX_TPR_IMAGES = 200
UPLOADS_DATASET = "uploads"

FLAG_KIND_LABELS = {
    "false positive": "false_positive",
    "false negative": "false_negative",
    "ignore": "ignore",
}
FLAG_KIND_SHORT = {"false_positive": "fp", "false_negative": "fn", "ignore": "ignore"}
THRESHOLD_MODES = ("off", "score value", "95% TPR on dataset")
# Post-hoc scorers shown by default; the uncertainty statistics (head inputs) can be ticked.
HIDDEN_BY_DEFAULT_PREFIX = "stat_"
# where a pasted object may stand (the drivable / walkable ground the demo pastes use)
TARGET_CLASSES = ("road", "sidewalk", "terrain")
MIN_ROAD_COVERAGE = 0.8


# ============================================================================ small caches

def _map_bytes(entry: Any) -> int:
    arr = entry[0] if isinstance(entry, tuple) else entry
    return int(getattr(arr, "nbytes", 0)) + 256


class MapCache(LRU):
    """Scored maps keyed by (model key, image hash, method spec), bounded in bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAP_CACHE_BYTES) -> None:
        super().__init__(max_items=1 << 16, max_bytes=max_bytes, sizeof=_map_bytes)


# ============================================================================ value types


@dataclass(frozen=True)
class MethodChoice:
    """A method the Compare tab can show: a post-hoc scorer or a head version."""

    name: str  # scorer name ("msp") or head spec ("head:3")
    label: str
    kind: str  # "posthoc" | "head"
    default_on: bool = True
    inverted: bool = False
    description: str = ""


@dataclass(frozen=True)
class ParamChoice:
    """One numeric parameter of a post-hoc scorer (drives a slider)."""

    scorer: str
    name: str
    default: float
    min: float
    max: float
    step: float
    help: str = ""

    @property
    def key(self) -> str:
        return f"{self.scorer}.{self.name}"


@dataclass
class ImageView:
    """One image as one model sees it: display copy, ground truth, sizes.

    Maps are scored at the model's input size (``score_size``) and metrics are computed there
    against ``gt_score`` (labels resized nearest, the evaluation protocol); panels are drawn on
    ``rgb`` / ``gt``, a copy of the stored image at most ``DISPLAY_MAX_SIDE`` wide with its own
    aspect ratio, onto which the maps are upsampled.
    """

    image_id: int
    name: str
    dataset: str
    dataset_id: int
    role: str
    rgb: np.ndarray  # (h, w, 3) display copy
    gt: np.ndarray | None  # (h, w) uint8 0/1/255 at the display size
    gt_score: np.ndarray | None  # ground truth at the scoring size
    score_size: tuple[int, int]
    full_size: tuple[int, int]  # (H, W) of the stored image
    sha256: str


@dataclass(frozen=True)
class CompareStyle:
    """Everything a Compare slider or checkbox controls (pure rendering)."""

    opacity: float = render.DEFAULT_OPACITY
    shared_scale: bool = False  # one range per unit (dashboard.scales), never across units
    threshold_mode: str = "off"
    threshold: float = 0.5  # fraction of each panel's colour range in "score value" mode
    show_gt: bool = True
    cmap: str = "inferno"
    dataset_id: int | None = None  # the dataset the 95%-TPR threshold is computed on


@dataclass
class Panel:
    """One rendered method panel."""

    spec: str
    label: str
    image: np.ndarray
    vmin: float
    vmax: float
    threshold: float | None
    auprc: float | None
    fpr95: float | None
    name: str = ""  # the method name ("msp", "head:2"), as ticked in Compare
    unit: str = ""  # what the colour bar's values are (dashboard.scales)

    @property
    def caption(self) -> str:
        parts = [self.label]
        if self.auprc is not None:
            parts.append(f"AuPRC {_pct(self.auprc)}")
        if self.fpr95 is not None:
            parts.append(f"FPR95 {_pct(self.fpr95)}")
        if self.threshold is not None:
            parts.append(f"thr {self.threshold:.3g}")
        return " · ".join(parts)


@dataclass
class CompareResult:
    """The Compare view of one image: panels plus a summary table."""

    view: ImageView
    panels: list[Panel]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self):
        """Per-method figures as a data frame (for the table under the panels)."""
        import pandas as pd

        rows = [
            {
                "method": p.label,
                "spec": p.spec,
                "AuPRC %": None if p.auprc is None else round(100 * p.auprc, 2),
                "FPR95 %": None if p.fpr95 is None else round(100 * p.fpr95, 2),
                "colour min": round(p.vmin, 4),
                "colour max": round(p.vmax, 4),
                "threshold": None if p.threshold is None else round(p.threshold, 4),
            }
            for p in self.panels
        ]
        return pd.DataFrame(rows)


@dataclass
class JobState:
    """A job row as the Retrain tab shows it."""

    id: int
    kind: str
    status: str
    progress: float
    message: str
    log_tail: str
    error: str | None
    result: dict | None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


def _pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}"


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ============================================================================ pure helpers


def threshold_at_tpr(pos_scores: np.ndarray, tpr: float = TPR_TARGET) -> float:
    """The highest threshold t with mean(pos >= t) >= tpr (what "95% TPR" means for a map)."""
    pos = np.asarray(pos_scores, dtype=np.float32).reshape(-1)
    if pos.size == 0:
        raise InputError("no anomaly pixels to compute a TPR threshold from")
    k = max(1, math.ceil(tpr * pos.size))  # need at least k positives at or above t
    # the k-th largest value: np.partition avoids a full sort
    return float(np.partition(pos, pos.size - k)[pos.size - k])


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


# ============================================================================ services


class Services:
    """Everything the tabs do, over one workspace (``Workspace`` of ``db.workspace``)."""

    def __init__(self, workspace: Any, map_cache_bytes: int = DEFAULT_MAP_CACHE_BYTES) -> None:
        self.ws = workspace
        self.store = workspace.store
        self.maps = MapCache(map_cache_bytes)
        self.views = LRU(max_items=12)
        self.metrics = LRU(max_items=4096)
        self.heads = LRU(max_items=16)
        self.thresholds = LRU(max_items=256)
        self.renders = LRU(max_items=16)
        # decoded flag crops (a flag's box, bool): bounded in bytes, a whole-frame flag is 2 MB
        self.crops = LRU(
            max_items=1 << 14,
            max_bytes=64 << 20,
            sizeof=lambda c: int(getattr(getattr(c, "crop", None), "nbytes", 0)) + 128,
        )
        self._model_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.forward_count = 0

    # ------------------------------------------------------------------ catalogue

    def _lock_for(self, model: str) -> threading.Lock:
        with self._locks_guard:
            return self._model_locks.setdefault(model, threading.Lock())

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

    def _model_row(self, s: Any, model: str) -> Any:
        from db import catalog

        return catalog.get_model(s, model)

    def model_key(self, model: str) -> str:
        """Cache identity of a registered model (name + checkpoint hash)."""
        with self.store.read() as s:
            m = self._model_row(s, model)
            return f"{m.name}@{(m.checkpoint_sha256 or '')[:16]}"

    # ------------------------------------------------------------------ methods

    def method_choices(self, model: str) -> list[MethodChoice]:
        """Post-hoc scorers that apply to this model, then its ready head versions (newest first)."""
        from anomseg import scoring
        from db import heads as dbheads

        needs_mask = self._is_mask_model(model)
        out: list[MethodChoice] = []
        for spec in scoring.list_scorers():
            if ":" in spec.name:
                continue  # dynamic families (heads) are listed from the store below
            if spec.mask_only and not needs_mask:
                continue
            if "features" in spec.needs and not needs_mask:
                continue
            out.append(
                MethodChoice(
                    spec.name,
                    spec.label or spec.name,
                    "posthoc",
                    default_on=not spec.name.startswith(HIDDEN_BY_DEFAULT_PREFIX),
                    inverted=bool(spec.inverted),
                    description=spec.description,
                )
            )
        with self.store.read() as s:
            m = self._model_row(s, model)
            for h in dbheads.list_head_versions(s, m.id):
                if h.status != "ready":
                    continue
                tag = " (active)" if h.active else ""
                out.append(
                    MethodChoice(f"head:{h.version}", f"Head v{h.version} {h.kind}{tag}", "head")
                )
        return out

    @staticmethod
    def param_choices() -> list[ParamChoice]:
        """Every numeric parameter of every post-hoc scorer (one slider each)."""
        from anomseg import scoring

        out = []
        for spec in scoring.list_scorers():
            if ":" in spec.name:
                continue
            for p in spec.params:
                out.append(
                    ParamChoice(
                        spec.name,
                        p.name,
                        float(p.default),
                        float(p.min),
                        float(p.max),
                        float(p.step),
                        p.help,
                    )
                )
        return out

    def _is_mask_model(self, model: str) -> bool:
        with self.store.read() as s:
            m = self._model_row(s, model)
            arch = m.architecture
        try:
            from anomseg.models import get_model_entry

            entry = get_model_entry(arch)
            return "eomt" in entry.name.lower()
        except AnomsegError:
            return "eomt" in arch.lower()

    @staticmethod
    def method_spec(name: str, params: dict[str, dict[str, float]] | None = None) -> str:
        """Canonical spec of a method with its current parameters (``msp:T=2.0``)."""
        from anomseg import scoring

        if name.startswith("head:"):
            return name
        mine = (params or {}).get(name, {})
        return scoring.format_method(name, mine)

    # ------------------------------------------------------------------ images

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

    def _image_paths(self, image_id: int) -> tuple[Any, Any, Path]:
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

        img, _ds, path = self._image_paths(image_id)
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

    def _label_for(self, ds: Any, img: Any) -> np.ndarray | None:
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

    def load_view(self, model: str, image_id: int) -> ImageView:
        """The image (and ground truth) as ``model`` scores it, plus a display copy; cached."""
        from anomseg.imageio import read_image, resize_image, resize_label

        mkey = self.model_key(model)
        img, ds, path = self._image_paths(image_id)
        key = (mkey, img.sha256, int(image_id))
        view = self.views.get(key)
        if view is not None:
            return view
        rgb = read_image(path)
        gt = self._label_for(ds, img)
        size = self._scoring_size(model, rgb.shape[:2])
        disp, _ = render.fit_size(rgb.shape[:2], DISPLAY_MAX_SIDE)
        view = ImageView(
            image_id=int(image_id),
            name=Path(img.path).name,
            dataset=ds.name,
            dataset_id=int(ds.id),
            role=ds.role,
            rgb=resize_image(rgb, disp),
            gt=None if gt is None else resize_label(gt, disp),
            gt_score=None if gt is None else resize_label(gt, size),
            score_size=size,
            full_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            sha256=img.sha256,
        )
        self.views.put(key, view)
        return view

    def _scoring_size(self, model: str, image_hw: tuple[int, int]) -> tuple[int, int]:
        pred = self.ws.predictor(model)
        target = getattr(pred, "target_size", None)
        if callable(target):
            return tuple(int(v) for v in target(image_hw))  # type: ignore[return-value]
        return tuple(image_hw)  # type: ignore[return-value]

    # ------------------------------------------------------------------ uploads

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

    # ------------------------------------------------------------------ scoring

    def _predict_image(self, model: str, image_id: int) -> Any:
        """The model's Prediction for a stored image (the workspace predictor caches it)."""
        from anomseg.imageio import read_image

        _, _, path = self._image_paths(image_id)
        rgb = read_image(path)
        predictor = self.ws.predictor(model)
        # one forward per (model, image) even when two sessions ask at once: the second waits
        # and then hits the predictor's cache
        with self._lock_for(model):
            before = getattr(predictor, "forward_calls", 0)
            pred = predictor.predict(rgb)
            self.forward_count += getattr(predictor, "forward_calls", 0) - before
        return pred

    def _head_fn(self, model: str, version: int) -> tuple[Callable[[Any], np.ndarray], str]:
        from anomseg.models.heads import head_scorer, load_head
        from db import heads as dbheads

        with self.store.read() as s:
            m = self._model_row(s, model)
            h = dbheads.get_head_version(s, m.id, int(version))
            if h.status != "ready" or not h.checkpoint_path:
                raise InputError(f"head v{version} of {model!r} is {h.status!r}, not ready")
            ckpt, sha, kind = h.checkpoint_path, h.checkpoint_sha256 or "", h.kind
        key = (model, int(version), sha)
        fn = self.heads.get(key)
        if fn is None:
            path = Path(ckpt)
            if not path.is_absolute():
                path = Path(self.ws.root) / path
            head, _meta = load_head(path, kind=kind)
            fn = head_scorer(head)
            self.heads.put(key, fn)
        return fn, sha

    def _score(self, model: str, pred: Any, name: str, params: dict | None) -> np.ndarray:
        from anomseg import scoring

        if name.startswith("head:"):
            version = name.split(":", 1)[1].lstrip("v")
            if not version.isdigit():
                raise InputError(f"method {name!r}: expected head:<version number>")
            fn, _ = self._head_fn(model, int(version))
            return np.asarray(fn(pred), dtype=np.float32)
        amap = scoring.score(name, pred, **(params or {}))
        # an inverted statistic (high = normal) is shown negated so every panel reads "hot =
        # anomalous" and its per-image metrics rank the right way
        return -amap if scoring.get_scorer(name).inverted else amap

    def score_maps(
        self,
        model: str,
        view: ImageView,
        names: Sequence[str],
        params: dict[str, dict[str, float]] | None = None,
    ) -> dict[str, tuple[str, np.ndarray]]:
        """name -> (spec, float32 map at the scoring size); cached by (model, image, spec).

        Only methods missing from the cache are scored, and the model runs (at most once, and
        not at all when the predictor still holds the image) only if one is missing.
        """
        mkey = self.model_key(model)
        out: dict[str, tuple[str, np.ndarray]] = {}
        missing: list[tuple[str, str]] = []
        for name in names:
            spec = self.method_spec(name, params)
            hit = self.maps.get((mkey, view.sha256, spec))
            if hit is None:
                missing.append((name, spec))
            else:
                out[name] = (spec, hit)
        if missing:
            pred = self._predict_image(model, view.image_id)
            for name, spec in missing:
                amap = self._score(model, pred, name, (params or {}).get(name))
                if amap.shape != view.score_size:
                    amap = render.resize_map(amap, view.score_size)
                self.maps.put((mkey, view.sha256, spec), amap)
                out[name] = (spec, amap)
        return {n: out[n] for n in names}

    # ------------------------------------------------------------------ compare

    def default_methods(self, model: str) -> list[str]:
        """The methods ticked when a model is picked: every post-hoc scorer and every head."""
        return [c.name for c in self.method_choices(model) if c.default_on]

    def _grid(self, key: tuple, arr: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
        """A downscaled copy of an image, label or map for the panel grid; cached."""
        gkey = ("grid", kind, *key, size)
        hit = self.maps.get(gkey)
        if hit is not None:
            return hit
        if kind == "rgb":
            out = render.resize_rgb(arr, size)
        elif kind == "gt":
            out = render.resize_labels(arr, size)
        else:
            out = render.resize_map(arr, size)
        self.maps.put(gkey, out)
        return out

    def _range(
        self, key: tuple, amap: np.ndarray, gt: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Colour range of a map over the pixels its ground truth does not ignore; cached."""
        valid = None if gt is None or not (gt == 255).any() else gt != 255
        rkey = ("range", *key, valid is not None)
        hit = self.metrics.get(rkey)
        if hit is None:
            hit = render.robust_range(amap, *render.HEAT_RANGE_PCT, valid=valid)
            self.metrics.put(rkey, hit)
        return hit

    def colour_ranges(
        self, mkey: str, view: ImageView, maps: dict[str, tuple[str, np.ndarray]], shared: bool
    ) -> dict[str, tuple[float, float]]:
        """Each method's colour range; with ``shared``, one range per unit (dashboard.scales)."""
        from dashboard.scales import scale_of

        ranges = {
            n: self._range((mkey, view.sha256, spec), m, view.gt_score)
            for n, (spec, m) in maps.items()
        }
        if shared:
            ranges = render.share_ranges(ranges, {n: scale_of(n).kind for n in ranges})
        return ranges

    def _panel_threshold(
        self,
        model: str,
        name: str,
        params: dict | None,
        style: CompareStyle,
        view: ImageView,
        vmin: float,
        vmax: float,
        progress: Callable[[float, str], None] | None = None,
    ) -> float | None:
        if style.threshold_mode == "score value":
            return vmin + float(style.threshold) * (vmax - vmin)
        if style.threshold_mode == "95% TPR on dataset":
            ds = style.dataset_id if style.dataset_id is not None else view.dataset_id
            return self.dataset_threshold(model, name, params, int(ds), progress)
        return None

    def compare(
        self,
        model: str,
        image_id: int,
        names: Sequence[str] | None,
        params: dict[str, dict[str, float]] | None = None,
        style: CompareStyle = CompareStyle(),
        progress: Callable[[float, str], None] | None = None,
    ) -> CompareResult:
        """Every chosen method's heat map over one image, rendered for the panel grid."""
        if style.threshold_mode not in THRESHOLD_MODES:
            raise InputError(
                f"threshold mode {style.threshold_mode!r}; expected one of {', '.join(THRESHOLD_MODES)}"
            )
        t0 = time.perf_counter()
        choices = {c.name: c for c in self.method_choices(model)}
        chosen = [n for n in (names if names is not None else self.default_methods(model))]
        unknown = [n for n in chosen if n not in choices]
        if unknown:
            raise InputError(
                f"method(s) {', '.join(unknown)} are not available for model {model!r}; "
                f"available: {', '.join(choices)}"
            )
        if not chosen:
            raise InputError("no method selected: tick at least one method to compare")
        view = self.load_view(model, image_id)
        mkey = self.model_key(model)
        maps = self.score_maps(model, view, chosen, params)
        from dashboard.scales import scale_of

        ranges = self.colour_ranges(mkey, view, maps, style.shared_scale)
        if style.threshold_mode == "95% TPR on dataset":
            # every method's threshold in one pass (one forward per image), then cache hits
            ds = style.dataset_id if style.dataset_id is not None else view.dataset_id
            self.dataset_thresholds(model, chosen, params, int(ds), progress)
        (gh, gw), _ = render.fit_size(view.rgb.shape[:2], GRID_MAX_SIDE)
        vkey = (mkey, view.sha256)
        rgb_s = self._grid(vkey, view.rgb, (gh, gw), "rgb")
        gt_s = None if view.gt is None else self._grid(vkey, view.gt, (gh, gw), "gt")
        notes: list[str] = []
        if view.gt_score is None:
            notes.append(f"{view.name}: no ground truth, so no per-image AuPRC / FPR95")
        panels = []
        for name in chosen:
            spec, amap = maps[name]
            key = (mkey, view.sha256, spec)
            vmin, vmax = ranges[name]
            try:
                thr = self._panel_threshold(
                    model, name, (params or {}).get(name), style, view, vmin, vmax, progress
                )
            except InputError as exc:
                notes.append(str(exc))
                thr = None
            met = self.image_metrics(key, amap, view.gt_score)
            pstyle = render.PanelStyle(
                opacity=style.opacity,
                vmin=vmin,
                vmax=vmax,
                threshold=thr,
                cmap=style.cmap,
                show_gt=style.show_gt,
                outline_width=1,
            )
            img = render.render_panel(rgb_s, self._grid(key, amap, (gh, gw), "map"), pstyle, gt_s)
            panels.append(
                Panel(
                    spec,
                    choices[name].label,
                    img,
                    vmin,
                    vmax,
                    thr,
                    met["auprc"],
                    met["fpr95"],
                    name=name,
                    unit=scale_of(name).unit,
                )
            )
        return CompareResult(view, panels, notes, time.perf_counter() - t0)

    def full_view(
        self,
        model: str,
        image_id: int,
        name: str,
        params: dict[str, dict[str, float]] | None = None,
        style: CompareStyle = CompareStyle(),
        vrange: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """One method's panel at the full scoring resolution (the "full-size view")."""
        view = self.load_view(model, image_id)
        mkey = self.model_key(model)
        spec, amap = self.score_maps(model, view, [name], params)[name]
        key = (mkey, view.sha256, spec)
        vmin, vmax = vrange if vrange is not None else self._range(key, amap, view.gt_score)
        thr = self._panel_threshold(model, name, (params or {}).get(name), style, view, vmin, vmax)
        pstyle = render.PanelStyle(
            opacity=style.opacity,
            vmin=vmin,
            vmax=vmax,
            threshold=thr,
            cmap=style.cmap,
            show_gt=style.show_gt,
        )
        big = self._grid(key, amap, view.rgb.shape[:2], "map")
        return render.render_panel(view.rgb, big, pstyle, view.gt)

    def image_metrics(
        self, key: tuple, amap: np.ndarray, gt: np.ndarray | None
    ) -> dict[str, float | None]:
        """Per-image AuPRC / FPR95 of one map (None without anomaly ground truth); cached."""
        if gt is None or not (gt == 1).any():
            return {"auprc": None, "fpr95": None}
        hit = self.metrics.get(("img", *key))
        if hit is not None:
            return hit
        from anomseg.metrics import per_image

        res = per_image(amap, gt)
        out = {"auprc": _finite(res.get("auprc")), "fpr95": _finite(res.get("fpr95"))}
        self.metrics.put(("img", *key), out)
        return out

    def dataset_thresholds(
        self,
        model: str,
        names: Sequence[str],
        params: dict[str, dict[str, float]] | None,
        dataset_id: int,
        progress: Callable[[float, str], None] | None = None,
    ) -> None:
        """Fill the 95%-TPR threshold cache for every method in ONE pass over the dataset.

        ``dataset_threshold`` per method re-runs the model on every image for each method once
        the dataset no longer fits the prediction cache (49 s for 4 methods on a 30-image set);
        here each image is forwarded once and scored by all methods still missing a threshold.
        """
        images = self.image_names(dataset_id)[:MAX_TPR_IMAGES]
        ids = tuple(i for _, i in images)
        mkey = self.model_key(model)
        mine = {n: (params or {}).get(n) or {} for n in names}
        keys = {
            n: ("tpr", mkey, self.method_spec(n, {n: mine[n]}), int(dataset_id), ids)
            for n in names
        }
        todo = [n for n in names if self.thresholds.get(keys[n]) is None]
        if not todo:
            return
        pos: dict[str, list[np.ndarray]] = {n: [] for n in todo}
        for k, (_fname, image_id) in enumerate(images):
            if progress is not None:
                progress(k / max(len(images), 1), f"95% TPR thresholds: image {k + 1}/{len(images)}")
            view = self.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            anomalous = view.gt_score == 1
            for n, (_spec, amap) in self.score_maps(model, view, todo, mine).items():
                pos[n].append(amap[anomalous])
        for n in todo:
            if pos[n]:  # without anomaly pixels dataset_threshold raises the user's message
                self.thresholds.put(keys[n], threshold_at_tpr(np.concatenate(pos[n]), TPR_TARGET))

    def dataset_threshold(
        self,
        model: str,
        name: str,
        params: dict[str, float] | None,
        dataset_id: int,
        progress: Callable[[float, str], None] | None = None,
    ) -> float:
        """The score threshold that keeps 95% of a dataset's anomaly pixels above it (cached)."""
        images = self.image_names(dataset_id)[:MAX_TPR_IMAGES]
        spec = self.method_spec(name, {name: params or {}})
        mkey = self.model_key(model)
        key = ("tpr", mkey, spec, int(dataset_id), tuple(i for _, i in images))
        hit = self.thresholds.get(key)
        if hit is not None:
            return hit
        pos = []
        for n, (_fname, image_id) in enumerate(images):
            if progress is not None:
                progress(n / max(len(images), 1), f"95% TPR threshold: image {n + 1}/{len(images)}")
            view = self.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            _, amap = self.score_maps(model, view, [name], {name: params or {}})[name]
            pos.append(amap[view.gt_score == 1])
        if not pos:
            with self.store.read() as s:
                from db.models import Dataset

                ds = s.get(Dataset, int(dataset_id))
                ds_name = ds.name if ds is not None else f"id {dataset_id}"
            raise InputError(
                f"dataset {ds_name!r} has no ground-truth anomaly pixels, so there is no 95% TPR "
                "threshold; pick an evaluation dataset or use a score threshold"
            )
        thr = threshold_at_tpr(np.concatenate(pos), TPR_TARGET)
        self.thresholds.put(key, thr)
        return thr

    # ------------------------------------------------------------------ flags

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
        view = self.load_view(model, image_id)
        spec, amap = self.score_maps(model, view, [name], params)[name]
        (h, w), _scale = render.fit_size(view.full_size, PAINT_MAX_SIDE)
        vmin, vmax = self._range((self.model_key(model), view.sha256, spec), amap)
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
        from db import flags as dbflags

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
        from db.masks import decode_crop

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
        from db.integrity import check_store

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
        from sqlalchemy.exc import IntegrityError

        from db import catalog
        from db import flags as dbflags
        from db.models import Image, check_uid

        kind = FLAG_KIND_LABELS.get(kind, kind)
        if kind not in FLAG_KIND_SHORT:
            raise InputError(f"flag kind {kind!r}; expected one of {', '.join(FLAG_KIND_LABELS)}")
        if token is not None:
            check_uid(token, "flag save token")
        with self.store.read() as s:
            img = s.get(Image, int(image_id))
            if img is None:
                raise InputError(f"image id {image_id} is not registered (deleted?)")
            full = (int(img.height), int(img.width))
            model_id = catalog.get_model(s, model).id
        frame, _ = render.fit_size(full, PAINT_MAX_SIDE)  # what flag_canvas gave the editor
        painted = editor_mask(editor_value, frame_hw=frame)
        mask = mask_to_full_size(painted, full)
        spec = self.method_spec(name, params)
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

    def _saved_flag(
        self, token: str, image_id: int, mask: np.ndarray
    ) -> tuple[int | None, bool]:
        """(id of the flag a save with ``token`` stored on this image with this ``mask`` or None,
        whether the token holds a flag of other strokes); a token of another image is refused."""
        from sqlalchemy import select

        from db.masks import encode_mask
        from db.models import Flag

        with self.store.read() as s:
            row = s.execute(
                select(Flag.id, Flag.image_id, Flag.mask).where(Flag.uid == token)
            ).first()
        if row is None:
            return None, False
        if row.image_id != image_id:
            raise InputError(
                f"flag save token {token!r} was already saved on image #{row.image_id}; "
                "a new save needs a new token (reload the page)"
            )
        if bytes(row.mask) != encode_mask(mask):
            return None, True
        return int(row.id), False

    def flags_frame(self, image_id: int | None = None, model: str | None = None):
        """Flags (of one image, or all) as a data frame, newest first."""
        import pandas as pd

        from db import catalog
        from db import flags as dbflags
        from db.integrity import flag_problem

        with self.store.read() as s:
            model_id = catalog.get_model(s, model).id if model else None
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
        from anomseg.imageio import read_image

        _img, _ds, path = self._image_paths(image_id)
        rgb = read_image(path)
        (h, w), _ = render.fit_size(rgb.shape[:2], max_side)
        small = render.resize_rgb(rgb, (h, w))
        layers = flag_layers.kind_layers(self._flag_crops(image_id), rgb.shape[:2], (h, w))
        return flag_layers.draw_layers(small, layers)

    def update_flag(self, flag_id: int, note: str | None = None, kind: str | None = None) -> None:
        """Edit a flag's note (and/or kind)."""
        from db import flags as dbflags

        k = FLAG_KIND_LABELS.get(kind, kind) if kind else None
        self.store.transact(
            lambda s: dbflags.update_flag(s, int(flag_id), note=note, kind=k) and None
        )

    def delete_flag(self, flag_id: int) -> None:
        """Delete a flag."""
        from db import flags as dbflags

        self.store.transact(lambda s: dbflags.delete_flag(s, int(flag_id)))

    def count_flags(self) -> int:
        """All flags in the store."""
        from sqlalchemy import func, select

        from db.models import Flag

        with self.store.read() as s:
            return int(s.scalar(select(func.count(Flag.id))) or 0)

    # ------------------------------------------------------------------ curate

    def samples_frame(self, status: str | None = None):
        """Synthetic samples (optionally of one status) as a data frame."""
        import pandas as pd

        from db import pastes as dbpastes

        status = None if status in (None, "", "all") else status
        with self.store.read() as s:
            rows = []
            for smp in dbpastes.list_samples(s, status=status):
                live = sum(1 for _p, r in dbpastes.current_revisions(s, smp.id) if r.record_json)
                rows.append(
                    {
                        "id": smp.id,
                        "status": smp.status,
                        "background": smp.background_id,
                        "pastes": live,
                        "updated": smp.updated.strftime("%Y-%m-%d %H:%M:%S"),
                    }
                )
        return pd.DataFrame(rows, columns=["id", "status", "background", "pastes", "updated"])

    def sample_counts(self) -> dict[str, int]:
        """Number of synthetic samples per status."""
        from db import pastes as dbpastes

        with self.store.read() as s:
            return dbpastes.sample_counts(s)

    def _background(self, sample_id: int) -> Any:
        """The background of a sample: from the workspace if it knows, else by source registry."""
        from db import pastes as dbpastes

        with self.store.read() as s:
            smp = dbpastes.get_sample(s, int(sample_id))
            bid, cached, root = smp.background_id, smp.render or {}, smp.dataset.root
        hit = self.renders.get(("bg", bid))
        if hit is not None:
            return hit
        from training.synth_samples import sample_sources

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
            from anomseg.imageio import image_size

            p = Path(cached["image"])
            p = p if p.is_absolute() else Path(root) / p
            if p.is_file():
                return image_size(p)
        size = getattr(self.ws, "demo_size", None)
        return (int(size[0]), int(size[1])) if size else None

    def _registry_background(self, bid: str, size: tuple[int, int] | None) -> Any:
        import anomseg.world  # noqa: F401  (registers the procedural source)
        from anomseg.synth.sources import BACKGROUND_SOURCES

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
        import anomseg.world  # noqa: F401  (registers the bank source)
        from anomseg.synth.sources import OBJECT_SOURCES

        built: dict[str, Any] = {}

        def find(source: str, object_id: str) -> Any:
            if source not in built:
                from training.synth_samples import object_source_for

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
        import anomseg.world  # noqa: F401
        from anomseg.synth.sources import OBJECT_SOURCES
        from training.synth_samples import object_source_for

        stored = object_source_for(self.store, source)  # COCO: a synthetic dataset's spec
        return (stored or OBJECT_SOURCES.get(source)()).ids()[:limit]

    def _records(self, sample_id: int) -> list[tuple[int, str, Any]]:
        """(paste id, key, PasteRecord) of the live pastes of a sample."""
        from anomseg.synth.records import PasteRecord
        from db import pastes as dbpastes

        with self.store.read() as s:
            out = []
            for paste, rev in dbpastes.current_revisions(s, int(sample_id)):
                if rev.record is not None:
                    out.append((paste.id, paste.key, PasteRecord.from_dict(rev.record)))
        return out

    def render_sample(self, sample_id: int) -> Any:
        """The sample rendered from its current records (cached by content)."""
        from anomseg.synth.records import records_hash
        from anomseg.synth.render import render as render_pastes

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
        import pandas as pd

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
        from db import pastes as dbpastes

        with self.store.read() as s:
            paste = dbpastes.get_paste(s, int(sample_id), key)
            return len(dbpastes.paste_history(s, paste.id))

    def check_placement(self, bg: Any, record: Any) -> None:
        """Raise InputError when a paste leaves the frame or does not stand on road/sidewalk."""
        from anomseg.data.classes import TRAIN_ID
        from anomseg.synth.geometry import placed_box, transform_mask

        obj = self._lookup()(record.source, record.object_id)
        mask = transform_mask(obj, record.scale, record.flip, record.rotation)
        if mask.size == 0 or not mask.any():
            raise InputError(
                f"paste {record.object_id}: the object vanishes at scale {record.scale}"
            )
        H, W = bg.labels.shape
        top, left, bottom, right = placed_box(record.x, record.y, *mask.shape)
        if top < 0 or left < 0 or bottom > H or right > W:
            raise InputError(
                f"paste moved off the image: the object would span x {left}..{right}, "
                f"y {top}..{bottom} of a {W}x{H} frame; move it further inside"
            )
        under = bg.labels[top:bottom, left:right][mask]
        ids = [TRAIN_ID[c] for c in TARGET_CLASSES]
        cover = float(np.isin(under, ids).mean())
        if cover < MIN_ROAD_COVERAGE:
            raise InputError(
                f"paste moved off the road: only {cover:.0%} of the object stands on "
                f"{' / '.join(TARGET_CLASSES)} (at least {MIN_ROAD_COVERAGE:.0%} needed); not saved"
            )

    def _paste_id(self, sample_id: int, key: str) -> int:
        from db import pastes as dbpastes

        with self.store.read() as s:
            return int(dbpastes.get_paste(s, int(sample_id), key).id)

    def edit_paste(
        self, sample_id: int, key: str, changes: dict[str, Any], author: str = ""
    ) -> int:
        """Apply field changes to a paste (validated, on the road) as a new revision; its number."""
        from anomseg.synth.records import PasteRecord
        from db import pastes as dbpastes

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
        from PIL import Image as PILImage

        from db import pastes as dbpastes
        from db.catalog import sha256_file
        from training.dataset import revisions_hash

        rendered = self.render_sample(sample_id)
        with self.store.read() as s:
            smp = dbpastes.get_sample(s, int(sample_id))
            uid = smp.uid
            revs = {p.key: r.content_hash for p, r in dbpastes.current_revisions(s, smp.id)}
        rh = revisions_hash(revs)
        out = Path(getattr(self.ws, "renders_dir", Path(self.ws.cache_dir) / "renders"))
        out.mkdir(parents=True, exist_ok=True)
        img_p, gt_p = out / f"{uid}-{rh[:16]}.png", out / f"{uid}-{rh[:16]}_gt.png"
        for path, arr in ((img_p, rendered.rgb), (gt_p, rendered.gt)):
            if not path.is_file():
                tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
                PILImage.fromarray(arr).save(tmp, format="PNG", compress_level=1)
                tmp.replace(path)
        cache = {
            "image": str(img_p),
            "gt": str(gt_p),
            "revisions_hash": rh,
            "image_sha256": sha256_file(img_p),
            "size": list(rendered.gt.shape),
        }
        self.store.transact(lambda s: dbpastes.set_render_cache(s, int(sample_id), cache) and None)
        return cache

    def move_paste(self, sample_id: int, key: str, x: int, y: int, author: str = "") -> int:
        """Put a paste's anchor (bottom centre) at a clicked pixel."""
        return self.edit_paste(sample_id, key, {"x": int(x), "y": int(y)}, author)

    def undo_paste(self, sample_id: int, key: str) -> int:
        """Step a paste back to its previous revision; returns the revision now current."""
        from db import pastes as dbpastes

        paste_id = self._paste_id(sample_id, key)
        number = self.store.transact(lambda s: int(dbpastes.undo_paste(s, paste_id).number))
        self.refresh_render_cache(sample_id)
        return number

    def redo_paste(self, sample_id: int, key: str) -> int:
        """Step a paste forward again after an undo."""
        from db import pastes as dbpastes

        paste_id = self._paste_id(sample_id, key)
        number = self.store.transact(lambda s: int(dbpastes.redo_paste(s, paste_id).number))
        self.refresh_render_cache(sample_id)
        return number

    def set_sample_status(self, sample_id: int, status: str) -> None:
        """Accept / reject / re-propose a sample."""
        from db import pastes as dbpastes

        self.store.transact(
            lambda s: dbpastes.set_sample_status(s, int(sample_id), status) and None
        )

    def queue_generate(self, n: int, params: dict[str, Any] | None = None) -> int:
        """Queue a job that proposes ``n`` more synthetic samples; returns the job id."""
        from db import catalog
        from db.jobs import enqueue_job

        if not isinstance(n, int | float) or int(n) != n or not 1 <= int(n) <= 500:
            raise InputError(f"number of samples to generate: expected 1..500, got {n!r}")
        if not (params or {}).get("dataset"):
            with self.store.read() as s:  # refused here, not as a failed job after the fact
                if not catalog.list_datasets(s, role="synthetic"):
                    raise InputError(
                        "no synthetic dataset is registered to add generated samples to. "
                        + REGISTER_TRAINING_HINT
                    )
        payload = {"n": int(n), **(params or {})}
        return self.store.transact(lambda s: int(enqueue_job(s, "synth_generate", payload).id))

    def queue_evaluate(self, model: str) -> int:
        """Queue an evaluation of a model's methods on every eval dataset; returns the job id."""
        from db import catalog
        from db.jobs import enqueue_job

        with self.store.read() as s:
            catalog.get_model(s, model)  # unknown model -> InputError before anything is queued
            if not catalog.list_datasets(s, role="eval"):
                raise InputError("no evaluation dataset is registered (see `anomseg add-dataset`)")
        return self.store.transact(lambda s: int(enqueue_job(s, "evaluate", {"model": model}).id))

    # ------------------------------------------------------------------ retrain

    def training_summary(self, model: str) -> str:
        """Markdown: what the next training set of a model's head holds."""
        from db import catalog
        from db import flags as dbflags
        from db import pastes as dbpastes

        with self.store.read() as s:
            m = catalog.get_model(s, model)
            counts = dbpastes.sample_counts(s)
            fc = dbflags.flag_counts(s, m.id)
        lines = [
            "| source | trains | stays annotation-only |",
            "| --- | ---: | ---: |",
            f"| accepted synthetic samples | **{counts.get('accepted', 0)}** | "
            f"({counts.get('proposed', 0)} proposed, {counts.get('rejected', 0)} rejected) |",
        ]
        for kind, label in (
            ("false_positive", "false-positive flags (negatives, extra weight)"),
            ("false_negative", "false-negative flags (positives)"),
            ("ignore", "ignore flags (pixels dropped)"),
        ):
            c = fc.get(kind, {})
            lines.append(
                f"| {label} | **{c.get('train', 0)}** ({c.get('train_pixels', 0)} px) | "
                f"{c.get('eval_only', 0)} on eval images |"
            )
        return "\n".join(lines)

    def queue_retrain(
        self,
        model: str,
        head: str = "stats",
        epochs: int | None = None,
        lr: float | None = None,
        fp_weight: float | None = None,
        activate: bool | str = True,
        extra: dict[str, Any] | None = None,
        recipe: str | None = None,
        head_geometry: str | None = None,
    ) -> int:
        """Validate and queue a head-training job; returns its id (no job on a bad request).

        Options left at None take training.trainer.TrainConfig's defaults (as `anomseg train`);
        the learning rate and weight decay default to the recipe's.
        """
        from training.jobs import enqueue_training
        from training.trainer import TrainConfig

        d = TrainConfig(
            recipe=recipe or TrainConfig.recipe,
            head_geometry=head_geometry or TrainConfig.head_geometry,
        )  # validates both names before anything is queued
        epochs = d.epochs if epochs is None else epochs
        lr = d.lr if lr is None else lr
        fp_weight = d.fp_weight if fp_weight is None else fp_weight
        params = {
            "model": model,
            "head": head,
            "epochs": int(epochs),
            "lr": float(lr),
            "recipe": d.recipe,
            "head_geometry": d.head_geometry,
            "fp_weight": float(fp_weight),
            "activate": activate,
            **(extra or {}),
        }
        try:
            return enqueue_training(self.store, params)
        except InputError as exc:
            from db import catalog

            with self.store.read() as s:
                has_training_sets = any(
                    catalog.list_datasets(s, role=r) for r in ("train", "synthetic")
                )
            if has_training_sets:
                raise
            raise InputError(f"{exc}. {REGISTER_TRAINING_HINT}") from None

    def job_state(self, job_id: int) -> JobState:
        """A job's status, progress and log tail, fresh from the store."""
        from db.jobs import get_job, reap_dead_jobs

        with self.store.read() as s:
            running = get_job(s, int(job_id)).status == "running"
        if running:  # a poll that finds the worker dead ends the job instead of waiting on it
            self.store.transact(lambda s: reap_dead_jobs(s))
        with self.store.read() as s:
            j = get_job(s, int(job_id))
            return JobState(
                j.id,
                j.kind,
                j.status,
                float(j.progress),
                j.message or "",
                j.log_tail or "",
                j.error,
                j.result,
            )

    def latest_job(
        self, kinds: Iterable[str] = ("train_head",), running_only: bool = False
    ) -> int | None:
        """The newest job of some kinds (only queued/running ones if asked)."""
        from db.jobs import list_jobs

        with self.store.read() as s:
            for j in list_jobs(s, limit=50):
                if j.kind not in kinds:
                    continue
                if running_only and j.status not in ("queued", "running"):
                    continue
                return int(j.id)
        return None

    def cancel_job(self, job_id: int) -> None:
        """Cancel a queued job, or ask a running one to stop."""
        from db.jobs import cancel_job

        self.store.transact(lambda s: cancel_job(s, int(job_id)) and None)

    def head_history(self, model: str):
        """A model's head versions, newest first, with their evaluation figures."""
        import pandas as pd

        from db import catalog
        from db import heads as dbheads
        from db import results as dbresults

        with self.store.read() as s:
            m = catalog.get_model(s, model)
            heads = dbheads.list_head_versions(s, m.id)
            board = dbresults.leaderboard(s, model_ids=[m.id])
            rows = []
            for h in heads:
                mine = [r for r in board if r["method"] == f"head:{h.version}"]
                hp = h.hparams or {}
                row = {
                    "version": h.version,
                    "kind": h.kind,
                    "status": h.status,
                    "active": "●" if h.active else "",
                    "parent": "" if h.parent_id is None else self._version_of(s, h.parent_id),
                    "recipe": hp.get("recipe", "default"),  # versions before recipes: ours
                    "geometry": hp.get("head_geometry", "stitched"),
                    "epochs": hp.get("epochs"),
                    "lr": hp.get("lr"),
                    "created": h.created.strftime("%Y-%m-%d %H:%M"),
                }
                for r in mine:
                    row[f"AuPRC % {r['dataset']}"] = _round_pct(r.get("auprc"))
                    row[f"FPR95 % {r['dataset']}"] = _round_pct(r.get("fpr95"))
                rows.append(row)
        return pd.DataFrame(rows)

    @staticmethod
    def _version_of(s: Any, head_id: int) -> int | str:
        from db.models import HeadVersion

        h = s.get(HeadVersion, head_id)
        return h.version if h is not None else "?"

    def head_versions(self, model: str, ready_only: bool = True) -> list[int]:
        """Version numbers of a model's heads, newest first."""
        from db import catalog
        from db import heads as dbheads

        with self.store.read() as s:
            m = catalog.get_model(s, model)
            return [
                h.version
                for h in dbheads.list_head_versions(s, m.id)
                if not ready_only or h.status == "ready"
            ]

    def activate_head(self, model: str, version: int) -> None:
        """Make one head version the model's active head."""
        from db import catalog
        from db import heads as dbheads

        def write(s: Any) -> None:
            m = catalog.get_model(s, model)
            dbheads.activate_head(s, dbheads.get_head_version(s, m.id, int(version)).id)

        self.store.transact(write)

    def rollback_head(self, model: str) -> int:
        """Activate the parent of the active head; returns the version now active."""
        from db import catalog
        from db import heads as dbheads

        def write(s: Any) -> int:
            m = catalog.get_model(s, model)
            return int(dbheads.rollback_head(s, m.id).version)

        return self.store.transact(write)

    # ------------------------------------------------------------------ leaderboard

    def leaderboard_frame(
        self,
        models: Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
        method_filter: str = "",
    ):
        """Latest result per model x method x dataset, metrics in percent."""
        import pandas as pd

        from db import catalog
        from db import heads as dbheads
        from db import results as dbresults

        with self.store.read() as s:
            rows = dbresults.leaderboard(s)
            model_meta = {m.name: (m.meta or {}) for m in catalog.list_models(s)}
            # a head row says how its head was trained and applied (recipe · geometry)
            setups = {
                (m.name, f"head:{h.version}"): _head_setup(h.kind, h.hparams or {})
                for m in catalog.list_models(s)
                for h in dbheads.list_head_versions(s, m.id)
            }
        out = []
        needle = (method_filter or "").strip().lower()
        for r in rows:
            if models and r["model"] not in models:
                continue
            if datasets and r["dataset"] not in datasets:
                continue
            if needle and needle not in f"{r['method']} {method_label(r['method'])}".lower():
                continue
            out.append(
                {
                    "model": r["model"],
                    # the name Compare shows; "method id" keeps the stored string the drill-down keys on
                    "method": method_label(r["method"]),
                    "method id": r["method"],
                    "head setup": setups.get((r["model"], r["method"]), ""),
                    "dataset": r["dataset"],
                    "AuPRC": _round_pct(r.get("auprc")),
                    "FPR95": _round_pct(r.get("fpr95")),
                    "AUROC": _round_pct(r.get("auroc")),
                    "sIoU": _round_pct(r.get("siou")),
                    "PPV": _round_pct(r.get("ppv")),
                    "F1": _round_pct(r.get("f1_mean")),
                    "mIoU": _round_pct(_miou(r, model_meta.get(r["model"], {}))),
                    "images": r.get("n_images"),
                    "protocol": _protocol_summary(r.get("protocol")),
                    "updated": r["created"].strftime("%Y-%m-%d %H:%M") if r.get("created") else "",
                    "result": r["result_id"],
                }
            )
        cols = [
            "model",
            "method",
            "head setup",
            "dataset",
            "AuPRC",
            "FPR95",
            "AUROC",
            "sIoU",
            "PPV",
            "F1",
            "mIoU",
            "images",
            "protocol",
            "updated",
            "method id",
            "result",
        ]
        df = pd.DataFrame(out, columns=cols)
        if len(df):
            df = df.sort_values(["dataset", "AuPRC"], ascending=[True, False], na_position="last")
        return df.reset_index(drop=True)

    def worst_images(
        self, result_id: int, k: int = 8, key: str = "auprc"
    ) -> list[tuple[int, str, float | None]]:
        """(image id, name, per-image ``key``) of a result's k worst images, worst first
        (``key``: auprc, or siou / ppv / f1_mean for the component metrics).

        Uses the per-image figures stored with the result; a result stored without them (e.g. a
        head evaluated by the trainer) is scored here from the cached maps instead.
        """
        from sqlalchemy import select

        from db.models import EvalResult, Image

        with self.store.read() as s:
            res = s.get(EvalResult, int(result_id))
            if res is None:
                raise InputError(f"evaluation result id {result_id} does not exist")
            per = res.per_image or []
            method, dataset_id, model = res.method, res.dataset_id, res.model.name
            imgs = s.execute(
                select(Image.id, Image.path).where(Image.dataset_id == res.dataset_id)
            ).all()
        if not per and key == "auprc":
            return self._worst_live(model, method, dataset_id, k)
        by_stem = {Path(p).stem: int(i) for i, p in imgs}
        by_name = {Path(p).name: int(i) for i, p in imgs}
        scored = []
        for row in per:
            name = str(row.get("name", ""))
            image_id = by_name.get(name) or by_stem.get(Path(name).stem)
            au = _finite(row.get(key))
            if image_id is None or au is None:
                continue
            scored.append((image_id, name, au))
        scored.sort(key=lambda t: t[2])
        return scored[:k]

    def protocol_differences(self, result_id: int, others: Sequence[int]) -> list[str]:
        """'these rows differ in protocol' lines: for each other result whose protocol card
        differs from this one's, its model / method and the differing fields."""
        from anomseg.protocol import differences
        from db.models import EvalResult

        with self.store.read() as s:
            res = s.get(EvalResult, int(result_id))
            if res is None:
                raise InputError(f"evaluation result id {result_id} does not exist")
            mine = (res.params or {}).get("protocol")
            lines = []
            for oid in others:
                o = s.get(EvalResult, int(oid))
                if o is None or o.id == res.id:
                    continue
                diff = differences(mine, (o.params or {}).get("protocol"))
                if diff:
                    lines.append(f"{o.model.name} · {o.method}: " + "; ".join(diff))
        return lines

    def component_view(
        self, model: str, image_id: int, name: str, quantile: float = 0.95, siou_t: float = 0.5
    ) -> tuple[np.ndarray, list[dict[str, Any]], str]:
        """Compare's component panel: (overlay, one row per component, summary) of one method's
        map thresholded at its ``quantile`` (``anomseg.components``, official size filters)."""
        from anomseg import scoring
        from anomseg.components import SIZE_FILTERS, image_components, track_for
        from dashboard import components_view

        view = self.load_view(model, image_id)
        if view.gt_score is None:
            raise InputError(f"image #{image_id} has no ground truth; components need one")
        if name.startswith(EXTERNAL_PREFIX):  # recorded external maps, at the label's size
            amap, gt = self._external_map(name[len(EXTERNAL_PREFIX) :], image_id)
        else:
            sname, params = scoring.parse_method(name)
            _spec, amap = self.score_maps(model, view, [sname], {sname: params})[sname]
            if scoring.get_scorer(sname).inverted:
                amap = -amap
            gt = view.gt_score
        q = min(max(float(quantile), 0.0), 1.0)
        thr = float(np.quantile(amap, q))
        min_pred, min_gt = SIZE_FILTERS[track_for(view.dataset)]
        scale = amap.size / float(view.full_size[0] * view.full_size[1])
        comp = image_components(amap, gt, thr, min_pred * scale, min_gt * scale)
        return (
            components_view.overlay(view.rgb, comp, siou_t),
            components_view.table(comp, siou_t),
            components_view.summary(comp, thr, siou_t),
        )

    def external_methods(self) -> list[str]:
        """``external:<name>`` for every method recorded from external score maps."""
        from sqlalchemy import select

        from db.models import EvalResult, Model

        with self.store.read() as s:
            names = s.scalars(
                select(EvalResult.method).join(Model, EvalResult.model_id == Model.id)
                .where(Model.architecture == "external").distinct()
            ).all()  # fmt: skip
        return [f"{EXTERNAL_PREFIX}{n}" for n in sorted(names)]

    def _external_map(self, method: str, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(map, label) of one image from the folder the latest external result was read from."""
        from sqlalchemy import select

        from anomseg.scoremaps import read_map
        from db.models import EvalResult, Model

        img, ds, _path = self._image_paths(image_id)
        with self.store.read() as s:
            res = s.scalars(
                select(EvalResult).join(Model, EvalResult.model_id == Model.id)
                .where(Model.architecture == "external", EvalResult.method == method,
                       EvalResult.dataset_id == ds.id)
                .order_by(EvalResult.id.desc()).limit(1)
            ).first()  # fmt: skip
            folder = (res.params or {}).get("scores_dir") if res is not None else None
        if not folder:
            raise InputError(f"no external maps of {method!r} are recorded for dataset {ds.name!r}")
        gt = self._label_for(ds, img)
        if gt is None:
            raise InputError(f"image #{image_id} has no ground truth; components need one")
        return read_map(Path(folder), Path(img.path).stem, gt.shape), gt

    def _worst_live(
        self, model: str, spec: str, dataset_id: int, k: int, max_images: int = 60
    ) -> list[tuple[int, str, float | None]]:
        from anomseg import scoring

        if spec.startswith("head:"):
            name, params = spec, {}
        else:
            name, params = scoring.parse_method(spec)
        scored = []
        for fname, image_id in self.image_names(dataset_id)[:max_images]:
            view = self.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            got_spec, amap = self.score_maps(model, view, [name], {name: params})[name]
            met = self.image_metrics(
                (self.model_key(model), view.sha256, got_spec), amap, view.gt_score
            )
            if met["auprc"] is not None:
                scored.append((image_id, fname, met["auprc"]))
        scored.sort(key=lambda t: t[2])
        return scored[:k]

    def pr_curves(
        self,
        model: str,
        dataset_id: int,
        names: Sequence[str],
        params: dict[str, dict[str, float]] | None = None,
        max_images: int = 60,
        progress: Callable[[float, str], None] | None = None,
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Precision-recall curves of several methods on a dataset (computed once, cached)."""
        from anomseg.metrics import AnomalyMetrics

        images = self.image_names(dataset_id)[:max_images]
        key = (
            "pr",
            self.model_key(model),
            tuple(self.method_spec(n, params) for n in names),
            int(dataset_id),
            tuple(i for _, i in images),
        )
        hit = self.thresholds.get(key)
        if hit is not None:
            return hit
        # exact mode: a few dozen maps at the scoring size are cheap to keep, and binning would
        # flatten methods whose scores crowd into a narrow range (MSP near 1)
        acc = {n: AnomalyMetrics(mode="exact") for n in names}
        for n_img, (_fname, image_id) in enumerate(images):
            if progress is not None:
                progress(n_img / max(len(images), 1), f"PR curves: image {n_img + 1}/{len(images)}")
            view = self.load_view(model, image_id)
            if view.gt_score is None or not (view.gt_score == 1).any():
                continue
            maps = self.score_maps(model, view, list(names), params)
            for n in names:
                acc[n].update(maps[n][1], view.gt_score)
        out = []
        for n in names:
            if acc[n].n_pixels == 0:
                continue
            c = acc[n].curves(300)
            ap = acc[n].compute().get("auprc")
            out.append((f"{method_label(n)} (AP {_pct(ap)})", c["recall"], c["precision"]))
        self.thresholds.put(key, out)
        return out

    def head_comparison(self, model: str):
        """Head versions x eval datasets (long format: version, dataset, AuPRC, FPR95)."""
        import pandas as pd

        from db import catalog
        from db import results as dbresults

        with self.store.read() as s:
            m = catalog.get_model(s, model)
            rows = [
                {
                    "version": int(r["method"].split(":", 1)[1]),
                    "dataset": r["dataset"],
                    "AuPRC": _round_pct(r.get("auprc")),
                    "FPR95": _round_pct(r.get("fpr95")),
                }
                for r in dbresults.leaderboard(s, model_ids=[m.id])
                if r["method"].startswith("head:") and r["method"].split(":", 1)[1].isdigit()
            ]
        df = pd.DataFrame(rows, columns=["version", "dataset", "AuPRC", "FPR95"])
        return df.sort_values(["dataset", "version"]).reset_index(drop=True)


EXTERNAL_PREFIX = "external:"  # Compare's name for recorded external maps


def _protocol_summary(card: Any) -> str:
    from anomseg.protocol import summary

    return summary(card) if isinstance(card, dict) else ""


def _round_pct(v: Any) -> float | None:
    f = _finite(v)
    return None if f is None else round(100 * f, 2)


def _miou(row: dict[str, Any], model_meta: dict[str, Any]) -> float | None:
    for src in (row, model_meta, model_meta.get("metrics") or {}):
        for key in ("miou", "mIoU", "heldout_miou"):
            if key in src and _finite(src[key]) is not None:
                return _finite(src[key])
    return None


def content_digest(data: bytes) -> str:
    """sha256 hex of bytes (uploads are named by it)."""
    return hashlib.sha256(data).hexdigest()


def _head_setup(kind: str, hparams: dict[str, Any]) -> str:
    """How a head version was trained and applied, for its leaderboard row."""
    if kind == "oe":  # outlier exposure: which decoder layers were tuned, and the score read
        stage, score = hparams.get("stage", "last"), hparams.get("score", "entropy")
        return f"outlier exposure · {stage} · {score}"
    return f"{hparams.get('recipe', 'default')} · {hparams.get('head_geometry', 'stitched')}"
