"""On-disk cache of a frozen model's outputs, so retraining a head never re-runs the backbone.

What is kept, per (model checkpoint hash, image content hash, input size):

* ``stats``: the four uncertainty statistics (``anomseg.scoring.uncertainty_stats``: max prob,
  entropy, sum of class probabilities, 1 - max prob) as float16, **sub-sampled, not resized**:
  the exact values at rows/columns ``offset + k * stride`` (``offset = stride // 2``) of the
  scoring-size map. A head is a per-pixel function, so training on a lattice of exact pixels
  sees precisely the inputs it will see at inference; averaging (area resize) would invent
  statistics that never occur. Default stride 2: a quarter of the pixels, 1/8 of the float32
  size (512x1024 -> 4 x 256 x 512 float16 = 1 MiB per image).
* ``features``: the model's patch features (D, h, w) as float16, at their own grid size (they are
  small: ViT-B at 512x1024 -> 768 x 32 x 64 = 3 MiB), absent for pixel models (ERFNet).

Layout::

    <workspace>/cache/features/<model key[:16]>/<H>x<W>-s<stride>/<image hash[:2]>/<image hash>.safetensors

One safetensors file per entry; its header metadata repeats the full key (format, model, image,
size, stride) and the sha256 of the tensor bytes. Writes go through ``anomseg.atomic`` (a
temporary file in the same folder, renamed), so readers never see half a file; a file that fails to parse,
has another key or whose checksum differs (a truncated or bit-flipped write) is deleted and
recomputed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anomseg.atomic import atomic_write

CACHE_FORMAT = "anomseg-features/1"  # bump when the statistics' definition changes
DEFAULT_STRIDE = 2
CACHE_SUBDIR = ("cache", "features")


def lattice_offset(stride: int) -> int:
    """Row/column of the first kept pixel: the centre of each stride x stride cell."""
    return stride // 2


def subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Keep the exact values at the cache lattice (last two dims) of a map."""
    o = lattice_offset(stride)
    return x[..., o::stride, o::stride]


def lattice_coords(size: tuple[int, int], stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution row and column coordinates of the lattice of a (H, W) map."""
    o = lattice_offset(stride)
    return torch.arange(o, size[0], stride), torch.arange(o, size[1], stride)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class CachedFeatures:
    """One cache entry: lattice statistics (4, h, w) f16 and optional features (D, hf, wf) f16."""

    stats: torch.Tensor
    features: torch.Tensor | None
    size: tuple[int, int]  # (H, W) scoring size the lattice lives in
    stride: int

    def coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-resolution (rows, cols) of the lattice."""
        return lattice_coords(self.size, self.stride)


@dataclass
class CacheStats:
    """Counters: entries served from disk, computed, and found corrupt (then recomputed)."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    computed: list[str] = field(default_factory=list)


class FeatureCache:
    """The feature cache under one root folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike, stride: int = DEFAULT_STRIDE) -> None:
        if stride < 1:
            raise ValueError(f"cache stride must be >= 1, got {stride}")
        self.root = Path(root)
        self.stride = int(stride)
        self.counters = CacheStats()

    @classmethod
    def for_workspace(
        cls, workspace: str | os.PathLike, stride: int = DEFAULT_STRIDE
    ) -> FeatureCache:
        """The cache of a workspace: ``<workspace>/cache/features``."""
        return cls(Path(workspace).joinpath(*CACHE_SUBDIR), stride)

    def path(self, model_key: str, image_hash: str, size: tuple[int, int]) -> Path:
        """Where the entry for this key lives."""
        H, W = (int(v) for v in size)
        return (
            self.root
            / model_key[:16]
            / f"{H}x{W}-s{self.stride}"
            / image_hash[:2]
            / f"{image_hash}.safetensors"
        )

    def _meta(self, model_key: str, image_hash: str, size: tuple[int, int]) -> dict[str, str]:
        return {
            "format": CACHE_FORMAT,
            "model": model_key,
            "image": image_hash,
            "size": f"{int(size[0])}x{int(size[1])}",
            "stride": str(self.stride),
        }

    def load(self, model_key: str, image_hash: str, size: tuple[int, int]) -> CachedFeatures | None:
        """The entry if present and intact; None if missing; a corrupt file is deleted (None)."""
        from safetensors import safe_open

        path = self.path(model_key, image_hash, size)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            digest = meta.pop("sha256", None)
            ok = (
                meta == self._meta(model_key, image_hash, size)
                and "stats" in tensors
                and digest == _digest(tensors)
            )
        except Exception:  # truncated / garbled file: safetensors raises various error types
            ok = False
        if not ok:
            self.counters.corrupt += 1
            path.unlink(missing_ok=True)
            return None
        return CachedFeatures(tensors["stats"], tensors.get("features"), tuple(size), self.stride)

    def put(
        self,
        model_key: str,
        image_hash: str,
        size: tuple[int, int],
        stats: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> CachedFeatures:
        """Store full-resolution (4, H, W) stats (sub-sampled here) and optional features."""
        from safetensors.torch import save_file

        if tuple(stats.shape[-2:]) != tuple(size) or stats.ndim != 3:
            raise ValueError(f"stats must be (4, {size[0]}, {size[1]}), got {tuple(stats.shape)}")
        tensors = {"stats": subsample(stats.detach().float(), self.stride).to(torch.float16).cpu()}
        if features is not None:
            tensors["features"] = features.detach().to(torch.float16).cpu()
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        meta = self._meta(model_key, image_hash, size)
        meta["sha256"] = _digest(tensors)
        path = self.path(model_key, image_hash, size)
        # not flushed: a torn or lost entry fails its checksum and is recomputed
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), durable=False)
        return CachedFeatures(tensors["stats"], tensors.get("features"), tuple(size), self.stride)

    def put_prediction(self, model_key: str, image_hash: str, prediction: Any) -> CachedFeatures:
        """Store what a ``Prediction`` gives: its statistics and patch features."""
        from anomseg.scoring import uncertainty_stats

        stats = uncertainty_stats(prediction)
        return self.put(model_key, image_hash, prediction.size, stats, prediction.features)

    def get_or_compute(
        self,
        model_key: str,
        image_hash: str,
        size: tuple[int, int],
        compute: Callable[[], Any],
    ) -> CachedFeatures:
        """The cached entry, or ``compute()`` (-> Prediction at ``size``) stored and returned."""
        hit = self.load(model_key, image_hash, size)
        if hit is not None:
            self.counters.hits += 1
            return hit
        self.counters.misses += 1
        pred = compute()
        if tuple(pred.size) != tuple(size):
            raise ValueError(
                f"prediction for image {image_hash[:12]} has size {pred.size}, expected {tuple(size)}"
            )
        self.counters.computed.append(image_hash)
        return self.put_prediction(model_key, image_hash, pred)

    def size_on_disk(self) -> int:
        """Total bytes of the cache files under the root."""
        return (
            sum(p.stat().st_size for p in self.root.rglob("*.safetensors"))
            if self.root.exists()
            else 0
        )
