"""Learned anomaly heads of the seed research (report §3.4): small per-pixel MLPs on frozen outputs.

* ``StatsHead`` ("stats"): MLP 4 -> 64 -> 32 -> 1 (ReLU, dropout 0.1) on the four uncertainty
  statistics of ``anomseg.scoring.uncertainty_stats`` (max prob, entropy, sum of class
  probabilities, 1 - max prob).
* ``FeatureHead`` ("features"): the last backbone block's patch features (D channels, 768 for
  ViT-B) are projected D -> 32 by a 1x1 conv + ReLU, bilinearly resized to the statistics map and
  concatenated with it: the same MLP on 36 inputs.

Both run on whole maps (``forward(stats (B,4,H,W), features (B,D,h,w))``, 1x1 convs) and on
sampled pixels (``forward_pixels``), which training uses: for the feature head a pixel's projected
feature is the bilinear blend of the projections at its four grid corners, exactly what the map
path computes at that pixel (``bilinear_corners`` reproduces ``F.interpolate``'s sampling).

Checkpoints are one safetensors file whose header metadata holds a JSON document (kind, input
size, feature dim, model the head was trained for, version), so weights and metadata are written
and renamed together; a ``<stem>.json`` copy sits next to it for people and tools (the project's
sidecar convention). ``load_head`` reads the embedded copy and checks the kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomseg.atomic import atomic_paths
from anomseg.errors import CheckpointError
from anomseg.head_geometry import STITCHED, WINDOW, check_geometry
from anomseg.models.outlier_exposure import OEHead
from anomseg.registry import Registry

HEAD_FORMAT = "anomseg-head/1"
NUM_STATS = 4
PROJ_DIM = 32
HIDDEN = (64, 32)


def _mlp(in_dim: int, dropout: float) -> nn.Sequential:
    """The per-pixel MLP as 1x1 convs: in -> 64 -> 32 -> 1."""
    h1, h2 = HIDDEN
    return nn.Sequential(
        nn.Conv2d(in_dim, h1, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(h1, h2, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(h2, 1, 1),
    )


def _pixels_as_map(x: torch.Tensor) -> torch.Tensor:
    """(N, C) pixels -> (1, C, N, 1), so the 1x1-conv MLP runs on them as one GEMM."""
    return x.t().unsqueeze(0).unsqueeze(-1)


class StatsHead(nn.Module):
    """Stats-only head: per-pixel MLP on the 4 uncertainty statistics -> 1 anomaly logit."""

    kind = "stats"

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim = NUM_STATS
        self.feat_dim: int | None = None
        self.dropout = float(dropout)
        self.mlp = _mlp(NUM_STATS, dropout)

    def forward(self, stats: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4, H, W) statistics -> (B, 1, H, W) logits (``features`` is ignored)."""
        return self.mlp(stats)

    def forward_pixels(
        self,
        stats: torch.Tensor,
        cell_feats: torch.Tensor | None = None,
        corner_idx: torch.Tensor | None = None,
        corner_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, 4) per-pixel statistics -> (N,) logits."""
        return self.mlp(_pixels_as_map(stats)).reshape(-1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (stored in the checkpoint metadata)."""
        return {"dropout": self.dropout}


class FeatureHead(nn.Module):
    """Feature-enriched head: stats + patch features projected D -> 32 (1x1 conv, ReLU)."""

    kind = "features"

    def __init__(self, feat_dim: int = 768, dropout: float = 0.1, proj_dim: int = PROJ_DIM) -> None:
        super().__init__()
        self.in_dim = NUM_STATS + proj_dim
        self.feat_dim = int(feat_dim)
        self.proj_dim = int(proj_dim)
        self.dropout = float(dropout)
        self.proj = nn.Conv2d(self.feat_dim, self.proj_dim, 1)
        self.mlp = _mlp(self.in_dim, dropout)

    def _check_features(self, features: torch.Tensor | None, dim: int) -> torch.Tensor:
        if features is None:
            raise CheckpointError(
                "the feature-enriched head needs backbone patch features, but the model's "
                "prediction has none (use a stats head for pixel models such as ERFNet)"
            )
        if features.shape[dim] != self.feat_dim:
            raise CheckpointError(
                f"feature head expects {self.feat_dim}-channel patch features, got "
                f"{features.shape[dim]}; it was trained for a different backbone"
            )
        return features

    def forward(self, stats: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4, H, W) statistics + (B, D, h, w) patch features -> (B, 1, H, W) logits."""
        features = self._check_features(features, 1)
        proj = F.relu(self.proj(features.to(stats.dtype)))
        proj = F.interpolate(proj, size=stats.shape[-2:], mode="bilinear", align_corners=False)
        return self.mlp(torch.cat([stats, proj], dim=1))

    def forward_pixels(
        self,
        stats: torch.Tensor,
        cell_feats: torch.Tensor | None = None,
        corner_idx: torch.Tensor | None = None,
        corner_w: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, 4) stats -> (N,) logits, given the feature-grid cells the pixels touch:
        ``cell_feats`` (U, D) rows, ``corner_idx`` (N, 4) into them, ``corner_w`` (N, 4) bilinear
        weights (``bilinear_corners``). Each cell is projected once, however many pixels use it.
        """
        cell_feats = self._check_features(cell_feats, 1)
        if corner_idx is None or corner_w is None:
            raise ValueError("forward_pixels needs the corner indices and bilinear weights")
        w = self.proj.weight.reshape(self.proj_dim, self.feat_dim)
        cells = F.relu(F.linear(cell_feats.to(stats.dtype), w, self.proj.bias))  # (U, 32)
        proj = (cells[corner_idx] * corner_w.unsqueeze(-1).to(stats.dtype)).sum(1)
        return self.mlp(_pixels_as_map(torch.cat([stats, proj], dim=1))).reshape(-1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (stored in the checkpoint metadata)."""
        return {"feat_dim": self.feat_dim, "dropout": self.dropout, "proj_dim": self.proj_dim}


Head = StatsHead | FeatureHead | OEHead

# kind -> head class; ``create_head(kind, **config)`` builds one. A class with a
# ``from_checkpoint(path, meta, base)`` classmethod loads itself (outlier exposure: only its tuned
# layers are in the file, the rest comes from the base model's checkpoint).
HEADS: Registry[type[nn.Module]] = Registry("head kind")
HEADS.register("stats", StatsHead)
HEADS.register("features", FeatureHead)
HEADS.register("oe", OEHead)
KIND_LABELS = {"stats": "stats-only", "features": "feature-enriched", "oe": "outlier-exposure"}


def create_head(kind: str, **config: Any) -> Head:
    """Build a head of a registered kind ("stats" or "features")."""
    return HEADS.get(kind)(**config)


def bilinear_corners(
    ys: torch.Tensor, xs: torch.Tensor, out_size: tuple[int, int], grid_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat grid indices (N, 4) and weights (N, 4) that ``F.interpolate(bilinear,
    align_corners=False)`` from ``grid_size`` to ``out_size`` uses at output pixels (ys, xs)."""
    (H, W), (h, w) = out_size, grid_size

    def axis(pos: torch.Tensor, n_out: int, n_in: int) -> tuple[torch.Tensor, ...]:
        src = ((pos.double() + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
        i0 = src.floor().long().clamp_max(n_in - 1)
        i1 = (i0 + 1).clamp_max(n_in - 1)
        l1 = (src - i0.double()).clamp(0.0, 1.0)
        return i0, i1, 1.0 - l1, l1

    y0, y1, wy0, wy1 = axis(ys, H, h)
    x0, x1, wx0, wx1 = axis(xs, W, w)
    idx = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=1)
    wts = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], dim=1).float()
    return idx, wts


# --- checkpoints -------------------------------------------------------------------------------


def head_metadata(head: Head, **extra: Any) -> dict[str, Any]:
    """The JSON metadata written with a head: format, kind, input size, config, plus ``extra``."""
    meta = {
        "format": HEAD_FORMAT,
        "kind": head.kind,
        "in_dim": head.in_dim,
        "feat_dim": head.feat_dim,
        "config": head.config(),
        "head_geometry": getattr(head, "geometry", STITCHED),
    }
    meta.update(extra)
    return meta


def save_head(head: Head, path: str | os.PathLike, **meta: Any) -> str:
    """Write ``head`` to ``path`` (safetensors + JSON metadata) atomically; returns its sha256.

    ``meta`` adds fields such as ``model`` (name the head was trained for), ``model_sha256`` and
    ``version``. The file is written next to its destination and renamed, so a crash never
    leaves a half-written checkpoint under the final name.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a kind may keep only part of its weights (outlier exposure: the tuned layers)
    own = getattr(head, "saved_tensors", None)
    state = own() if own is not None else head.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    text = json.dumps(head_metadata(head, **meta), sort_keys=True)
    side = path.with_name(path.stem + ".json")
    with atomic_paths(path, side) as (tmp, side_tmp):
        save_file(tensors, str(tmp), metadata={"anomseg": text})
        with open(tmp, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        side_tmp.write_text(json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n")
    return digest


def read_head_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a head checkpoint (CheckpointError if it is not one)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"head checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("anomseg")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(
            f"head checkpoint {path} is not a readable safetensors file ({exc})"
        ) from None
    if raw is None:
        raise CheckpointError(
            f"{path} has no anomseg head metadata; expected a checkpoint written by save_head"
        )
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(
            f"head checkpoint {path}: metadata is not valid JSON ({exc})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise CheckpointError(
            f"head checkpoint {path}: metadata format {meta.get('format') if isinstance(meta, dict) else meta!r} "
            f"is not {HEAD_FORMAT!r}"
        )
    return meta


def load_head(
    path: str | os.PathLike,
    kind: str | None = None,
    model: str | None = None,
    base: str | os.PathLike | None = None,
) -> tuple[Head, dict[str, Any]]:
    """Load a head checkpoint -> (head in eval mode, metadata).

    ``kind`` / ``model``, when given, must match what the checkpoint was written for; a
    mismatch (e.g. a feature head loaded as a stats head) is a CheckpointError saying both.
    ``base``: the model checkpoint an outlier-exposure file was tuned from (default: the path
    its metadata records); other kinds ignore it.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_head_metadata(path)
    got = meta.get("kind")
    if got not in HEADS:
        raise CheckpointError(
            f"head checkpoint {path} has unknown kind {got!r}; expected one of {HEADS.names()}"
        )
    if kind is not None and got != kind:
        raise CheckpointError(
            f"head checkpoint {path} holds a {got!r} head ({meta.get('in_dim')} inputs) but a "
            f"{kind!r} head was expected; pick a checkpoint of kind {kind!r}"
        )
    if model is not None and meta.get("model") not in (None, model):
        raise CheckpointError(
            f"head checkpoint {path} was trained for model {meta.get('model')!r}, not {model!r}"
        )
    loader = getattr(HEADS.get(got), "from_checkpoint", None)
    if loader is not None:
        return loader(path, meta, base), meta
    try:
        head = create_head(got, **dict(meta.get("config") or {}))
        state = load_file(str(path))
        head.load_state_dict(state, strict=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"head checkpoint {path}: weights do not match a {got!r} head ({exc})"
        ) from None
    head.geometry = check_geometry(meta.get("head_geometry", STITCHED))
    return head.eval(), meta


# --- heads as scorers --------------------------------------------------------------------------


@torch.no_grad()
def head_anomaly_map(
    head: Head, stats: torch.Tensor, features: torch.Tensor | None = None, rows_per_chunk: int = 128
) -> torch.Tensor:
    """(4, H, W) stats (+ (D, h, w) features) -> (H, W) float32 sigmoid probabilities.

    Rows are processed in chunks so a 512x1024 map never holds all 64-wide activations at once;
    for the feature head the projection is resized once for the whole map.
    """
    head = head.eval()
    stats = stats.float()
    H, W = stats.shape[-2:]
    proj = None
    if isinstance(head, FeatureHead):
        feats = head._check_features(features, 0).to(stats.device, torch.float32)
        proj = F.relu(head.proj(feats.unsqueeze(0)))
        proj = F.interpolate(proj, size=(H, W), mode="bilinear", align_corners=False)[0]
    out = torch.empty(H, W, dtype=torch.float32, device=stats.device)
    for r0 in range(0, H, rows_per_chunk):
        x = stats[:, r0 : r0 + rows_per_chunk]
        if proj is not None:
            x = torch.cat([x, proj[:, r0 : r0 + rows_per_chunk]], dim=0)
        out[r0 : r0 + rows_per_chunk] = torch.sigmoid(head.mlp(x.unsqueeze(0))[0, 0])
    return out


@torch.no_grad()
def head_window_map(head: Head, prediction: Any) -> torch.Tensor:
    """(H, W) probabilities of ``head`` applied per sliding window, averaged over overlaps.

    Reads ``window_scores`` / ``window_features``; the windows' origins and the rescaled canvas
    are EoMT's own layout for the prediction's size, and the canvas is resized to (H, W) like
    the class scores are. A prediction without per-window maps (one window covering the image
    as it is) gives the stitched map, which is then the same thing.
    """
    from anomseg.models.eomt import window_layout
    from anomseg.scoring import stats_of_scores, uncertainty_stats

    scores, feats = prediction.window_scores, prediction.window_features
    if scores is None:
        return head_anomaly_map(head, uncertainty_stats(prediction), prediction.features)
    H, W = prediction.size
    wh, ww = scores.shape[-2:]
    (hs, ws), origins = window_layout(H, W, (wh, ww))
    total = torch.zeros(hs, ws, dtype=torch.float32, device=scores.device)
    count = torch.zeros_like(total)
    for k, (t, l) in enumerate(origins):  # noqa: E741
        stats = stats_of_scores(scores[k], mask_model=True)
        f = None if feats is None else feats[k]
        total[t : t + wh, l : l + ww] += head_anomaly_map(head, stats, f)
        count[t : t + wh, l : l + ww] += 1
    amap = total / count
    if (hs, ws) != (H, W):
        amap = F.interpolate(amap[None, None], (H, W), mode="bilinear")[0, 0]
    return amap


def head_scorer(head: Head) -> Callable[[Any], np.ndarray]:
    """A scorer ``Prediction -> float32 (H, W)`` (sigmoid probability, higher = anomalous; an
    outlier-exposure head scores its own tuned output)."""
    from anomseg.scoring import uncertainty_stats

    own = getattr(head, "scorer", None)
    if own is not None:
        return own()

    window = getattr(head, "geometry", STITCHED) == WINDOW

    def score(prediction: Any) -> np.ndarray:
        device = prediction.logits.device
        if next(head.parameters()).device != device:
            head.to(device)
        if window:
            amap = head_window_map(head, prediction)
        else:
            amap = head_anomaly_map(head, uncertainty_stats(prediction), prediction.features)
        return amap.cpu().numpy().astype(np.float32, copy=False)

    score.__name__ = f"head_{head.kind}"
    return score


def head_spec(name: str, head: Head, label: str = "", description: str = "") -> Any:
    """The head as an ``anomseg.scoring.ScorerSpec`` called ``name`` (e.g. ``head:3``).

    Pass it as ``scoring.score(name, pred, extra={name: spec})``; ``head:`` method strings are
    resolved to these specs by ``anomseg.head_methods``.
    """
    from anomseg.scoring import ScorerSpec

    uses_features = isinstance(head, FeatureHead) or getattr(head, "needs_features", False)
    needs = {"logits"} | ({"features"} if uses_features else set())
    kind = KIND_LABELS.get(head.kind, head.kind)
    what = (
        f"{getattr(head, 'score', 'entropy')} of the tuned output"
        if head.kind == "oe"
        else "sigmoid probability"
    )
    return ScorerSpec(
        name,
        head_scorer(head),
        (),
        label or name,
        frozenset(needs),
        description or f"learned {kind} anomaly head ({what})",
    )
