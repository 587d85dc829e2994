"""The one output of one forward pass that every scorer reads.

A ``Prediction`` holds tensors for a single image at the *scoring resolution* (the model input
size, e.g. 512x1024). Scorers are pure functions ``Prediction -> float32 HxW``; they never run a
model. Fields that a model does not produce are ``None``.

Conventions (documented once, relied on everywhere):

* ``logits``: (C, H, W) per-pixel class logits. For a pixel model (ERFNet) these are the raw
  network outputs for all of its channels (ERFNet: 20 = 19 Cityscapes classes + void, as the
  seed's evaluation used them). For a mask model (EoMT) they are the per-pixel class scores
  ``einsum(sigmoid(mask_logits), softmax(class_logits)[..., :-1])`` (C = number of classes), the
  quantity the EoMT reference treats as its semantic output.
* ``pixel_class_logits``: (C, H, W) for a mask model, the per-pixel *raw* class logits
  aggregated over queries, ``sum_q sigmoid(mask_logits_q) * class_logits_q[:C]`` (averaged over
  sliding windows), for inspection: RbA reads the class scores ``logits``, as the original
  does. None for pixel models.
* ``mask_logits``: (Q, h, w) mask logits of a mask model at the mask head's own resolution
  (scorers upsample); kept only when inference used a single window, else None.
* ``class_logits``: (Q, C + 1) class logits of a mask model, last column = "no object".
* ``features``: (D, h, w) patch features of the last backbone block (feature-enriched head).
* ``window_scores`` / ``window_features``: (K, C, wh, ww) class scores and (K, D, wh/p, ww/p)
  patch features of each of a mask model's K sliding windows (origins from
  ``anomseg.models.eomt.window_layout(H, W, (wh, ww))``), kept only when the windows are not
  simply the image (several windows, or a rescaled image); a head applied per window
  (``head_geometry="window"``) reads them.
* ``num_classes``: number of semantic classes used for mIoU (19 for Cityscapes).

Scorers share channel reductions of one prediction (max logit, logsumexp per temperature, the
head statistics) through ``Prediction.memo``: at most ``MEMO_MAPS`` (H, W) float32 maps, counted
in ``nbytes()``. A prediction held by a byte-bounded cache (``anomseg.predict.PredictionCache``)
tells the cache when its memo grows or shrinks (``on_resize``), so the cache's byte count is
what the predictions really hold, memo included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

# (H, W) float32 maps a prediction's scoring memo may hold (the head statistics count as 4):
# the stats, amax and lse at T=1 fit (what the default methods read); older entries go first
MEMO_MAPS = 6
_MEMO_LOCK = threading.Lock()  # short critical sections only: the values are computed outside


@dataclass
class Prediction:
    logits: torch.Tensor
    num_classes: int = 19
    pixel_class_logits: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    window_scores: torch.Tensor | None = None
    window_features: torch.Tensor | None = None
    model_name: str = ""
    meta: dict = field(default_factory=dict)
    # scoring's shared reductions, oldest first (see the module doc); not a result, not compared
    _memo: dict = field(default_factory=dict, repr=False, compare=False)
    # called with this prediction after its memo changed size (set by the cache holding it)
    on_resize: Callable[[Prediction], None] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the scoring resolution."""
        return int(self.logits.shape[-2]), int(self.logits.shape[-1])

    def semantic(self) -> torch.Tensor:
        """(H, W) int64 argmax over the first ``num_classes`` channels (for mIoU)."""
        return self.logits[: self.num_classes].argmax(0)

    def to(self, device: str | torch.device) -> Prediction:
        def mv(t):
            return None if t is None else t.to(device)

        return Prediction(
            logits=mv(self.logits),
            num_classes=self.num_classes,
            pixel_class_logits=mv(self.pixel_class_logits),
            mask_logits=mv(self.mask_logits),
            class_logits=mv(self.class_logits),
            features=mv(self.features),
            window_scores=mv(self.window_scores),
            window_features=mv(self.window_features),
            model_name=self.model_name,
            meta=dict(self.meta),
        )  # a fresh memo (on the new device) and no cache listener

    def __getstate__(self) -> dict:
        # the memo and the cache listener belong to this process's copy
        return {**self.__dict__, "_memo": {}, "on_resize": None}

    def memo(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` once per key (a reduction of this prediction's own tensors, so pure),
        kept while it fits in ``MEMO_MAPS`` maps."""
        with _MEMO_LOCK:
            hit = self._memo.get(key)
        if hit is not None:
            return hit
        value = compute()
        hw = max(1, self.size[0] * self.size[1])
        with _MEMO_LOCK:
            self._memo[key] = value
            while sum(-(-t.numel() // hw) for t in self._memo.values()) > MEMO_MAPS:
                del self._memo[next(iter(self._memo))]
        if self.on_resize is not None:
            self.on_resize(self)
        return value

    def memo_nbytes(self) -> int:
        """Bytes the scoring memo holds now (at most ``MEMO_MAPS`` (H, W) float32 maps)."""
        with _MEMO_LOCK:
            return sum(t.element_size() * t.nelement() for t in self._memo.values())

    def nbytes(self) -> int:
        """Memory held by the tensors and the scoring memo (for the size-bounded cache)."""
        total = self.memo_nbytes()
        for t in (
            self.logits,
            self.pixel_class_logits,
            self.mask_logits,
            self.class_logits,
            self.features,
            self.window_scores,
            self.window_features,
        ):
            if t is not None:
                total += t.element_size() * t.nelement()
        return total
