"""The training set of an anomaly head: labelled pixels from curated samples plus flags.

Sources (``TrainImage``): an accepted synthetic sample brings its ground truth (0 normal,
1 anomaly, 255 ignore), and so does an image of a ``train`` dataset registered in the labelled
layout (``images/`` + ``labels_masks/``); an image of a ``train`` / ``synthetic`` dataset
without ground truth brings only its flagged pixels. Flags are applied in creation order on top (the latest word wins):

* false positive -> normal, with loss weight ``fp_weight`` (the user said "this is not an anomaly,
  and it matters"),
* false negative -> anomaly (weight ``fn_weight``),
* ignore -> dropped.

Flagged pixels are also *sampled* more often: a flag covers a tiny fraction of all normal pixels
(one region in a few images against millions of pixels), so under uniform sampling its weight
would hardly ever reach the loss. ``BalancedSampler`` therefore fills ``flag_share`` of each
batch's negative (positive) half from false-positive (false-negative) flagged pixels when there
are any.

Images of ``eval`` / ``heldout`` datasets never train; their flags stay in the store as
annotations (``training.store_set`` enforces it when it reads the store, and ``build_pixel_set``
refuses any ``TrainImage`` marked with such a role as a second line of defence).

Labels are resized with nearest neighbour to the model's input size (the protocol of the eval)
and read on the feature cache's lattice, so each labelled pixel pairs with the exact statistics
the cache holds for it. ``PixelSet`` is the result: flat per-pixel arrays, plus the patch feature
grids for the feature head. ``BalancedSampler`` draws seeded batches with equal numbers of
positives and negatives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomseg.errors import InputError
from anomseg.labels import ANOMALY, IGNORE, NORMAL
from anomseg.synth.render_cache import is_current, revisions_hash
from training.features import CachedFeatures, FeatureCache, subsample

# internal codes: normal / anomaly kept as 0 / 1; flagged pixels get their own codes so one
# nearest resize carries both label and weight
_FP, _FN = 2, 3
FLAG_KINDS = ("false_positive", "false_negative", "ignore")
NO_TRAIN_ROLES = ("eval", "heldout")


@dataclass(frozen=True)
class FlagRegion:
    """A flagged region of one image (mask at the image's own size)."""

    id: int
    kind: str  # false_positive | false_negative | ignore
    mask: Callable[[], np.ndarray] | np.ndarray

    def load(self) -> np.ndarray:
        """The boolean (H, W) mask."""
        m = self.mask() if callable(self.mask) else self.mask
        return np.asarray(m, dtype=bool)


@dataclass
class TrainImage:
    """One image that may train a head: pixels, optional ground truth, flags, provenance."""

    key: str  # stable id for the snapshot, e.g. "sample:12" or "image:5"
    image_hash: str
    load_rgb: Callable[[], np.ndarray]
    load_target: Callable[[], np.ndarray] | None = None  # uint8 0/1/255 at image size
    flags: list[FlagRegion] = field(default_factory=list)
    role: str = "synthetic"
    info: dict[str, Any] = field(default_factory=dict)  # extra snapshot fields (revision hashes)


def label_codes(
    image_hw: tuple[int, int], target: np.ndarray | None, flags: Sequence[FlagRegion]
) -> np.ndarray:
    """uint8 (H, W) codes at image size: 0 normal, 1 anomaly, 2 FP-flag, 3 FN-flag, 255 ignore."""
    H, W = image_hw
    if target is None:
        codes = np.full((H, W), IGNORE, dtype=np.uint8)
    else:
        target = np.asarray(target)
        if target.shape != (H, W):
            raise InputError(
                f"ground truth of shape {target.shape} does not match its image ({H}, {W})"
            )
        bad = ~np.isin(target, (NORMAL, ANOMALY, IGNORE))
        if bad.any():
            raise InputError(
                f"ground truth holds values {sorted(np.unique(target[bad]).tolist())[:5]}; "
                "expected 0 (normal), 1 (anomaly) or 255 (ignore)"
            )
        codes = target.astype(np.uint8, copy=True)
    for flag in sorted(flags, key=lambda f: f.id):
        m = flag.load()
        if m.shape != (H, W):
            raise InputError(
                f"flag {flag.id}: mask of size {m.shape[1]}x{m.shape[0]} does not match its "
                f"image {W}x{H}"
            )
        if flag.kind == "false_positive":
            codes[m] = _FP
        elif flag.kind == "false_negative":
            codes[m] = _FN
        elif flag.kind == "ignore":
            codes[m] = IGNORE
        else:
            raise InputError(f"flag {flag.id}: kind {flag.kind!r}; expected one of {FLAG_KINDS}")
    return codes


def lattice_labels(
    codes: np.ndarray, size: tuple[int, int], stride: int, fp_weight: float, fn_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Codes at image size -> (target 0/1, weight, flagged, flat lattice index) of the labelled
    pixels.

    Codes are resized to the model input ``size`` with nearest neighbour (as eval labels are),
    then read at the cache lattice.
    """
    from anomseg.imageio import resize_label

    lat = subsample(torch.from_numpy(np.array(resize_label(codes, size))), stride).numpy()
    flat = lat.reshape(-1)
    keep = np.flatnonzero(flat != IGNORE)
    c = flat[keep]
    target = ((c == ANOMALY) | (c == _FN)).astype(np.uint8)
    weight = np.ones(c.shape, dtype=np.float32)
    weight[c == _FP] = fp_weight
    weight[c == _FN] = fn_weight
    return target, weight, (c == _FP) | (c == _FN), keep


@dataclass
class PixelSet:
    """Labelled lattice pixels of many images, flat; everything a head needs to train."""

    stats: torch.Tensor  # (N, 4) float32
    target: torch.Tensor  # (N,) float32 0/1
    weight: torch.Tensor  # (N,) float32
    image: torch.Tensor  # (N,) int64 index into ``image_hashes``
    pos: torch.Tensor  # (N,) int64 flat full-resolution position y * W + x
    size: tuple[int, int]  # model input size (H, W)
    features: torch.Tensor | None = None  # (n_images, D, h, w) float16
    image_hashes: list[str] = field(default_factory=list)
    flagged: torch.Tensor | None = None  # (N,) bool: labelled by a FP / FN flag

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def n_pos(self) -> int:
        """Number of anomalous pixels."""
        return int(self.target.sum().item())

    @property
    def n_neg(self) -> int:
        """Number of normal pixels."""
        return len(self) - self.n_pos

    @property
    def feat_dim(self) -> int | None:
        """Channels of the patch features, or None when the set has none."""
        return None if self.features is None else int(self.features.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        """Write to a safetensors file (how DDP ranks receive the data)."""
        from safetensors.torch import save_file

        tensors = {
            "stats": self.stats,
            "target": self.target,
            "weight": self.weight,
            "image": self.image,
            "pos": self.pos,
        }
        if self.features is not None:
            tensors["features"] = self.features
        if self.flagged is not None:
            tensors["flagged"] = self.flagged
        meta = {"size": f"{self.size[0]}x{self.size[1]}", "images": ",".join(self.image_hashes)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PixelSet:
        """Read a set written by ``save``."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
        h, w = (int(v) for v in meta["size"].split("x"))
        hashes = [s for s in meta.get("images", "").split(",") if s]
        return cls(
            t["stats"],
            t["target"],
            t["weight"],
            t["image"],
            t["pos"],
            (h, w),
            t.get("features"),
            hashes,
            t.get("flagged"),
        )


@dataclass
class Snapshot:
    """What a training run saw; stored on the HeadVersion."""

    images: list[dict[str, Any]] = field(default_factory=list)  # key, image hash, info
    flag_ids: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # keys of eval/heldout images skipped
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "images": self.images,
            "flag_ids": sorted(self.flag_ids),
            "refused": self.refused,
            "counts": self.counts,
        }


def build_pixel_set(
    images: Sequence[TrainImage],
    cache: FeatureCache,
    model_key: str,
    size: tuple[int, int],
    predict: Callable[[np.ndarray], Any],
    *,
    fp_weight: float = 2.0,
    fn_weight: float = 2.0,
    need_features: bool = False,
    progress: Callable[[float, str], None] | None = None,
    void_as_normal: bool = False,
) -> tuple[PixelSet, Snapshot]:
    """Cached statistics + labels of every usable image -> (PixelSet, Snapshot).

    ``predict(rgb) -> Prediction`` runs only for images missing from the cache. Raises
    InputError when nothing usable remains (no positives or no negatives). ``void_as_normal``:
    ground-truth void (255) trains as normal (the seed's stats head) instead of being ignored;
    pixels of an image without ground truth stay unlabelled either way.
    """
    snap = Snapshot()
    keys = ("stats", "target", "weight", "image", "pos", "flagged")
    parts: dict[str, list[Any]] = {k: [] for k in keys}
    feats: list[torch.Tensor] = []
    hashes: list[str] = []
    H, W = size
    for n, item in enumerate(images):
        if progress is not None:
            progress(n / max(len(images), 1), f"features and labels {n}/{len(images)}")
        if item.role in NO_TRAIN_ROLES:
            snap.refused.append(item.key)
            continue
        target = item.load_target() if item.load_target is not None else None
        rgb = None
        if target is None and not item.flags:
            continue
        if target is not None:
            hw = tuple(np.asarray(target).shape[:2])
        else:
            rgb = item.load_rgb()
            hw = rgb.shape[:2]
        codes = label_codes(hw, target, item.flags)
        if void_as_normal and target is not None:
            codes[(np.asarray(target) == IGNORE) & (codes == IGNORE)] = NORMAL
        y, w, flg, keep = lattice_labels(codes, size, cache.stride, fp_weight, fn_weight)
        if keep.size == 0:
            continue

        def compute(item: TrainImage = item, rgb: np.ndarray | None = rgb) -> Any:
            return predict(item.load_rgb() if rgb is None else rgb)

        entry: CachedFeatures = cache.get_or_compute(model_key, item.image_hash, size, compute)
        if need_features and entry.features is None:
            raise InputError(
                "the feature-enriched head needs patch features, but this model gives none "
                "(pixel models such as ERFNet); train a stats head instead (--head stats)"
            )
        idx = len(hashes)
        hashes.append(item.image_hash)
        st = entry.stats.float().reshape(4, -1)[:, keep].t()
        ys, xs = entry.coords()
        wl = xs.numel()
        keep_t = torch.from_numpy(keep)
        full = ys[keep_t // wl] * W + xs[keep_t % wl]
        parts["stats"].append(st)
        parts["target"].append(torch.from_numpy(y).float())
        parts["weight"].append(torch.from_numpy(w))
        parts["flagged"].append(torch.from_numpy(flg))
        parts["image"].append(torch.full((keep.size,), idx, dtype=torch.int64))
        parts["pos"].append(full.long())
        if need_features:
            feats.append(entry.features)
        snap.images.append({"key": item.key, "image_sha256": item.image_hash, **item.info})
        snap.flag_ids.extend(f.id for f in item.flags)

    if not hashes:
        raise InputError(
            "no usable training samples: accept some synthetic samples (with anomalies) or flag "
            "regions on images of training datasets; images of eval/heldout datasets never train"
        )
    cat = {k: torch.cat(v) for k, v in parts.items()}
    features = None
    if need_features:
        shapes = {tuple(f.shape) for f in feats}
        if len(shapes) != 1:
            raise InputError(f"patch feature grids differ between images: {sorted(shapes)}")
        features = torch.stack(feats)
    pixels = PixelSet(
        cat["stats"],
        cat["target"],
        cat["weight"],
        cat["image"],
        cat["pos"],
        (H, W),
        features,
        hashes,
        cat["flagged"],
    )
    n_pos, n_neg = pixels.n_pos, pixels.n_neg
    snap.counts = {
        "images": len(hashes),
        "refused": len(snap.refused),
        "flags": len(snap.flag_ids),
        "pixels": len(pixels),
        "positives": n_pos,
        "negatives": n_neg,
        "fp_flag_pixels": int((pixels.flagged & (pixels.target == 0)).sum().item()),
        "fn_flag_pixels": int((pixels.flagged & (pixels.target == 1)).sum().item()),
    }
    if n_pos == 0 or n_neg == 0:
        missing = "anomalous" if n_pos == 0 else "normal"
        raise InputError(
            f"no usable training samples: the {len(hashes)} usable image(s) hold no {missing} "
            "pixels; balanced training needs both (accept samples with pastes, or add "
            "false-negative flags)"
        )
    if progress is not None:
        progress(1.0, f"{len(hashes)} images, {n_pos} positive / {n_neg} negative pixels")
    return pixels, snap


class BalancedSampler:
    """Seeded global batches: half positives, half negatives.

    Within each half, ``flag_share`` of the slots come from flagged pixels of that class (when
    there are any; ``flagged`` marks them) and the rest from the unflagged ones. Every pool is
    drawn without replacement from a fresh seeded permutation, cycled when the epoch needs more.
    An epoch is one balanced pass: every anomalous pixel once and as many normal pixels, i.e.
    ``ceil(2 * n_positive / batch)`` steps, but at least ``min_steps`` (the trainer passes the
    number of images: never fewer updates than the seed's one-image-per-step loop), unless
    ``steps_per_epoch`` says otherwise. Normal
    pixels, the vast majority, are undersampled: each epoch draws fresh ones from the permutation
    stream, so over several epochs a different share of them is seen. (Neighbouring pixels carry
    nearly the same statistics; a pass over every normal pixel would mostly repeat itself.)

    Every DDP rank builds the same sampler with the same seed and takes ``batch[rank::world]``,
    so the union over ranks is exactly the single-process batch.
    """

    def __init__(
        self,
        target: torch.Tensor,
        batch_pixels: int,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        world: int = 1,
        flagged: torch.Tensor | None = None,
        flag_share: float = 0.0,
        min_steps: int = 1,
    ) -> None:
        is_pos = target > 0.5
        flg = flagged if flagged is not None else torch.zeros_like(is_pos)
        if not bool(is_pos.any()) or bool(is_pos.all()):
            raise InputError("balanced sampling needs both anomalous and normal pixels")
        unit = 2 * world  # equal halves, and an equal share per rank
        self.batch = max(unit, (int(batch_pixels) // unit) * unit)
        half = self.batch // 2
        self.pools: list[tuple[torch.Tensor, int]] = []  # (indices, slots per batch)
        for cls in (is_pos, ~is_pos):
            plain = torch.nonzero(cls & ~flg).reshape(-1)
            marked = torch.nonzero(cls & flg).reshape(-1)
            n_marked = round(flag_share * half) if marked.numel() else 0
            if plain.numel() == 0:
                n_marked = half
            if n_marked:
                self.pools.append((marked, n_marked))
            if half - n_marked:
                self.pools.append((plain, half - n_marked))
        self.seed = int(seed)
        n_pos = int(is_pos.sum())
        balanced = math.ceil(2 * n_pos / self.batch)
        self.steps = int(steps_per_epoch or max(1, int(min_steps), balanced))

    def _stream(self, idx: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
        reps = math.ceil(count / idx.numel())
        perm = torch.cat([idx[torch.randperm(idx.numel(), generator=gen)] for _ in range(reps)])
        return perm[:count]

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        """The global batches (index tensors of length ``batch``) of one epoch."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        streams = [
            self._stream(idx, k * self.steps, gen).view(self.steps, k) for idx, k in self.pools
        ]
        for s in range(self.steps):
            yield torch.cat([st[s] for st in streams])


def load_target_file(path: str | os.PathLike) -> np.ndarray:
    """Read a 0/1/255 ground-truth PNG."""
    from anomseg.imageio import read_label

    return read_label(Path(path))


# --- reading the training set from the store ----------------------------------------------------

RenderFn = Callable[[Any, dict[str, dict[str, Any]]], tuple[np.ndarray, np.ndarray]]


def _resolve(root: str, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else Path(root) / path


def _read_rgb(path: Path) -> Callable[[], np.ndarray]:
    from anomseg.imageio import read_image

    return lambda: read_image(path)


def _mask_loader(blob: bytes, width: int, height: int, flag_id: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from db.masks import decode_mask

        try:
            return decode_mask(blob, expect_size=(width, height))
        except InputError as exc:
            raise InputError(f"flags row id={flag_id}: {exc}") from None

    return load


LABELLED_LAYOUT = "benchmark"  # images/ + labels_masks/, validated when registered


def _label_loader(path: Path, remap: dict[int, int] | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        label = load_target_file(path)
        if remap:
            lut = np.arange(256, dtype=np.uint8)
            for k, v in remap.items():
                lut[k] = v
            label = lut[label]
        return label

    return load


def labelled_train_images(
    session: Any, flags_by_image: dict[int, list[FlagRegion]] | None = None
) -> list[TrainImage]:
    """Every registered image of a ``train`` dataset in the labelled layout, with its labels.

    Such a dataset (``anomseg add-dataset ROOT --role train`` on an ``images/`` +
    ``labels_masks/`` folder: 0 normal, 1 anomaly, 255 ignore, after the dataset's value remap)
    trains directly, next to accepted pastes; its images' flags apply on top. Only the ``train``
    role is read here: eval / heldout datasets never train, whatever their layout.
    """
    from anomseg.data.benchmark import BenchmarkDataset, known_remap
    from db.catalog import list_datasets, list_images

    flags_by_image = flags_by_image or {}
    out: list[TrainImage] = []
    for ds in list_datasets(session, role="train"):
        if ds.layout != LABELLED_LAYOUT:
            continue
        root = Path(ds.root)
        stored = ds.label_remap
        remap = (
            {int(k): int(v) for k, v in stored.items()}
            if isinstance(stored, dict) and stored
            else known_remap(root.name)
        )
        for img in list_images(session, ds):
            label = BenchmarkDataset._find_label(root / "labels_masks", Path(img.path).stem)
            if label is None:
                continue
            out.append(
                TrainImage(
                    f"image:{img.id}",
                    img.sha256,
                    _read_rgb(_resolve(ds.root, img.path)),
                    _label_loader(label, remap),
                    flags_by_image.get(img.id, []),
                    role=ds.role,
                    info={"image_id": img.id, "path": img.path, "dataset": ds.name},
                )
            )
    return out


def training_images_from_store(
    session: Any, model_id: int, *, render_sample: RenderFn | None = None
) -> tuple[list[TrainImage], list[str]]:
    """The ``TrainImage`` list for a model's head -> (images, notes on samples left out).

    * every *accepted* synthetic sample: image and ground truth from its render cache
      (``SyntheticSample.render`` = {"image": path, "gt": path, optional "image_id",
      "image_sha256", "revisions_hash"}; paths relative to the sample's dataset root), or from
      ``render_sample(sample, current records)`` when the cache is missing or stale;
    * every image of a ``train`` dataset in the labelled layout (``labelled_train_images``):
      its ``labels_masks/`` ground truth, flags on top;
    * every image of a train / synthetic dataset with flags of this model (flags of eval /
      heldout images are never read: ``db.flags.flags_for_training``).

    The ids of all images used pass ``db.catalog.training_images_allowed`` (the store's split
    guard). Everything returned reads files only, so it stays valid after the session closes.
    """
    from sqlalchemy import select

    from db.catalog import sha256_file, training_images_allowed
    from db.flags import flags_for_training
    from db.integrity import flag_problem, json_problem
    from db.models import Dataset, Image
    from db.pastes import current_revisions, list_samples

    out: list[TrainImage] = []
    notes: list[str] = []
    flags_by_image: dict[int, list[FlagRegion]] = {}
    for f in flags_for_training(session, model_id):
        why = flag_problem(f)
        if why:  # one corrupt row must not stop every retrain of the model
            notes.append(f"flag {f.id}: quarantined ({why}); skipped - see 'anomseg db check'")
            continue
        region = FlagRegion(f.id, f.kind, _mask_loader(bytes(f.mask), f.width, f.height, f.id))
        flags_by_image.setdefault(f.image_id, []).append(region)

    used_image_ids: list[int] = []
    covered: set[int] = set()
    for sample in list_samples(session, status="accepted"):
        ds = sample.dataset
        current = current_revisions(session, sample.id)
        why = json_problem(sample, "render") or next(
            (json_problem(r, "record") for _p, r in current if json_problem(r, "record")), None
        )
        if why:
            notes.append(f"sample:{sample.id}: quarantined ({why}); skipped")
            continue
        revs = {p.key: r.content_hash for p, r in current}
        rh = revisions_hash(revs)
        info = {"sample_id": sample.id, "revisions": revs, "revisions_hash": rh}
        cache = sample.render or {}
        img_row = None
        if cache.get("image_id") is not None:
            img_row = session.get(Image, int(cache["image_id"]))
        elif cache.get("image"):
            img_row = session.scalar(
                select(Image).where(Image.dataset_id == ds.id, Image.path == str(cache["image"]))
            )
        key = f"sample:{sample.id}"
        if is_current(cache, rh) and cache.get("image") and cache.get("gt"):
            img_path, gt_path = _resolve(ds.root, cache["image"]), _resolve(ds.root, cache["gt"])
            if not img_path.is_file() or not gt_path.is_file():
                notes.append(f"{key}: render cache files missing ({img_path}, {gt_path})")
                continue
            digest = cache.get("image_sha256") or (img_row.sha256 if img_row else None)
            item = TrainImage(
                key,
                digest or sha256_file(img_path),
                _read_rgb(img_path),
                lambda p=gt_path: load_target_file(p),
                role=ds.role,
                info=info,
            )
        elif render_sample is not None:
            from anomseg.imageio import array_sha256

            records = {
                p.key: r.record for p, r in current_revisions(session, sample.id) if r.record
            }
            rgb, gt = render_sample(sample, records)
            item = TrainImage(
                key, array_sha256(rgb), lambda a=rgb: a, lambda g=gt: g, role=ds.role, info=info
            )
        else:
            notes.append(f"{key}: not rendered (no render cache, or it is stale)")
            continue
        if img_row is not None:
            item.flags = flags_by_image.get(img_row.id, [])
            item.info["image_id"] = img_row.id
            covered.add(img_row.id)
            if ds.role not in NO_TRAIN_ROLES:
                used_image_ids.append(img_row.id)
        out.append(item)

    for item in labelled_train_images(session, flags_by_image):
        covered.add(item.info["image_id"])
        used_image_ids.append(item.info["image_id"])
        out.append(item)

    rest = [i for i in flags_by_image if i not in covered]
    if rest:
        rows = session.execute(
            select(Image, Dataset)
            .join(Dataset, Image.dataset_id == Dataset.id)
            .where(Image.id.in_(rest))
            .order_by(Image.id)
        ).all()
        for img, ds in rows:
            out.append(
                TrainImage(
                    f"image:{img.id}",
                    img.sha256,
                    _read_rgb(_resolve(ds.root, img.path)),
                    None,
                    flags_by_image[img.id],
                    role=ds.role,
                    info={"image_id": img.id, "path": img.path},
                )
            )
            used_image_ids.append(img.id)
    training_images_allowed(session, used_image_ids)
    return out, notes
