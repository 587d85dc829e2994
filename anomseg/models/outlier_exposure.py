"""Outlier exposure (Meta-OoD, Chan et al., ICCV 2021) as a learned kind, ``"oe"``.

The segmentation model's last layers are fine-tuned so that pasted objects get a flat posterior
(training: ``training.outlier_exposure``); the anomaly score is then the entropy or the max-logit
of the *fine-tuned* output, as ``anomseg.scoring`` defines them for the post-hoc methods.

What a checkpoint holds: only the fine-tuned parameters (one safetensors file, the head format of
``anomseg.models.heads`` with kind ``"oe"``) and JSON metadata: architecture, which ``stage`` was
tuned, the score, and the base checkpoint's path and sha256. The frozen rest comes from the base
checkpoint when the file is loaded, and its hash must match: a tuned decoder stage on top of
another model's weights would score garbage.

Scoring needs no second forward of the encoder: ERFNet's ``predict_batch`` keeps the encoder's
output in ``Prediction.features``; the decoder (base weights with the tuned ones swapped in)
re-runs from it.

Only ERFNet is supported here. EoMT (tuning its class / mask heads) would need the query states
of its last block in the Prediction; it is refused with a clear message.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomseg.errors import CheckpointError

KIND = "oe"
OE_SCORES = ("entropy", "maxlogit", "energy")
# ERFNet decoder stage -> parameter name prefixes (inside the decoder) that are fine-tuned.
# "last" is the final 1/2-resolution stage (upsampler 64->16, two residual blocks) + classifier.
ERFNET_STAGES: dict[str, tuple[str, ...]] = {
    "classifier": ("output_conv.",),
    "last": ("layers.3.", "layers.4.", "layers.5.", "output_conv."),
    "decoder": ("",),
}
ENCODER_CHANNELS = 128


class OEHead(nn.Module):
    """ERFNet's decoder with a fine-tuned ``stage``; scores entropy / max-logit of its output."""

    kind = KIND

    def __init__(
        self,
        num_outputs: int = 20,
        stage: str = "last",
        score: str = "entropy",
        arch: str = "erfnet",
    ) -> None:
        super().__init__()
        if arch != "erfnet":
            raise CheckpointError(
                f"outlier exposure supports the ERFNet architecture only, not {arch!r}"
            )
        if stage not in ERFNET_STAGES:
            raise CheckpointError(
                f"outlier-exposure stage {stage!r}; expected one of {', '.join(ERFNET_STAGES)}"
            )
        if score not in OE_SCORES:
            raise CheckpointError(f"outlier-exposure score {score!r}; expected one of {OE_SCORES}")
        from anomseg.models.erfnet import Decoder

        self.arch, self.stage, self.score = arch, stage, score
        self.num_outputs = int(num_outputs)
        self.in_dim = ENCODER_CHANNELS  # what head_metadata records
        self.feat_dim = ENCODER_CHANNELS
        self.needs_features = True
        self.decoder = Decoder(self.num_outputs)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (stored in the checkpoint metadata)."""
        return {
            "num_outputs": self.num_outputs,
            "stage": self.stage,
            "score": self.score,
            "arch": self.arch,
        }

    def tuned_names(self) -> list[str]:
        """Names (in ``state_dict``) of the parameters this stage fine-tunes."""
        prefixes = ERFNET_STAGES[self.stage]
        return [
            f"decoder.{n}"
            for n, _ in self.decoder.named_parameters()
            if any(n.startswith(p) for p in prefixes)
        ]

    def tuned_parameters(self) -> list[nn.Parameter]:
        """The fine-tuned parameters (the rest stays frozen)."""
        named = dict(self.named_parameters())
        return [named[n] for n in self.tuned_names()]

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """What the checkpoint holds: the tuned parameters only."""
        state = self.state_dict()
        return {n: state[n] for n in self.tuned_names()}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 128, h, w) encoder output -> (B, C, 8h, 8w) logits."""
        return self.decoder(features)

    def load_base(self, model: nn.Module) -> OEHead:
        """Copy the base model's decoder weights (all of them; tuned ones are overwritten later)."""
        decoder = getattr(model, "decoder", None)
        if decoder is None:
            raise CheckpointError(
                f"outlier exposure needs an ERFNet base model, got {type(model).__name__}"
            )
        self.decoder.load_state_dict(decoder.state_dict(), strict=True)
        return self

    @torch.no_grad()
    def anomaly_map(self, prediction: Any, score: str | None = None) -> np.ndarray:
        """Prediction (with ERFNet encoder features) -> float32 (H, W), higher = anomalous;
        ``score`` overrides the configured one (the tuned logits of the last prediction are
        kept, so several scores of one image run the decoder once)."""
        from anomseg import scoring
        from anomseg.prediction import Prediction

        score = score or self.score
        if score not in OE_SCORES:
            raise CheckpointError(f"outlier-exposure score {score!r}; expected one of {OE_SCORES}")
        feats = prediction.features
        if feats is None or feats.dim() != 3 or feats.shape[0] != ENCODER_CHANNELS:
            got = None if feats is None else tuple(feats.shape)
            raise CheckpointError(
                f"the outlier-exposure head re-runs ERFNet's decoder from its {ENCODER_CHANNELS}-"
                f"channel encoder output, but the prediction's features are {got}; use it with "
                "the ERFNet it was tuned from"
            )
        H, W = prediction.size
        # the memo holds the features tensor itself: identity cannot be recycled while it lives
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] is feats:
            tuned = memo[1]
        else:
            param = next(self.parameters())
            logits = self.eval()(feats.unsqueeze(0).to(param.device, param.dtype))[0, :, :H, :W]
            tuned = Prediction(logits=logits.float(), num_classes=prediction.num_classes)
            self._memo = (feats, tuned)
        return scoring.score(score, tuned).astype(np.float32, copy=False)

    def scorer(self, score: str | None = None) -> Callable[[Any], np.ndarray]:
        """A scorer ``Prediction -> float32 (H, W)`` (what ``head_scorer`` returns for this kind);
        ``score`` picks entropy / maxlogit / energy instead of the configured one."""
        name = score or self.score

        def fn(prediction: Any) -> np.ndarray:
            return self.anomaly_map(prediction, name)

        fn.__name__ = f"head_oe_{name}"
        return fn

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, meta: dict[str, Any], base: str | os.PathLike | None = None
    ) -> OEHead:
        """The head of an ``oe`` checkpoint on top of its base checkpoint (``base`` or the path
        recorded in the metadata); the base's sha256 must be the recorded one."""
        from safetensors.torch import load_file

        from anomseg.hashing import file_sha256

        head = cls(**dict(meta.get("config") or {}))
        want = meta.get("model_sha256")
        base_path = Path(base) if base is not None else None
        if base_path is None and meta.get("base_checkpoint"):
            base_path = Path(meta["base_checkpoint"])
        if base_path is None or not base_path.is_file():
            raise CheckpointError(
                f"outlier-exposure checkpoint {path} holds only the tuned layers; its base model "
                f"checkpoint {base_path} (sha256 {str(want)[:12]}…) is not there; pass the base "
                "checkpoint (anomseg eval --checkpoint)"
            )
        sha = file_sha256(base_path)
        if want and sha != want:
            raise CheckpointError(
                f"outlier-exposure checkpoint {path} was tuned from the checkpoint with sha256 "
                f"{want[:12]}…, not {base_path} ({sha[:12]}…)"
            )
        head.load_base(_base_model(str(base_path), sha, head.arch))
        try:
            tuned = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"outlier-exposure checkpoint {path}: {exc}") from None
        names = set(head.tuned_names())
        if set(tuned) != names:
            extra, missing = sorted(set(tuned) - names), sorted(names - set(tuned))
            raise CheckpointError(
                f"outlier-exposure checkpoint {path}: tensors do not match stage "
                f"{head.stage!r} (unexpected {extra[:3]}, missing {missing[:3]})"
            )
        head.load_state_dict({**head.state_dict(), **tuned}, strict=True)
        return head.eval()


@functools.lru_cache(maxsize=4)
def _base_model(path: str, sha256: str, arch: str) -> nn.Module:
    """The base model of a checkpoint, loaded once per (path, content)."""
    from anomseg.models.registry import create_model

    return create_model(arch, checkpoint=path).eval()
