"""The model registry: ``create_model(name, checkpoint=None, **kw)``, timm style.

A builder is registered with ``@register_model(name, kind=..., **defaults)``; its default
configuration is kept next to it and any keyword given to ``create_model`` overrides it. Every
model returned carries ``model.model_cfg``, a frozen ``ModelConfig`` (architecture, kind
``"pixel"``/``"mask"``, input size, classes), as timm models carry their ``pretrained_cfg``:
code that needs to know what a model is reads it there (or ``get_model_entry(arch).kind`` for a
model not built yet), never guesses it from the name. Every model follows one contract
(``SegModel``): attributes ``arch``, ``num_classes``, ``default_input_size`` and a
``predict_batch(x)`` that turns a float RGB batch in [0, 1] into a dict of tensors:

* ``logits`` (B, C, H, W) at the input resolution (all model output channels; ERFNet: 20),
* mask models only: ``pixel_class_logits`` (B, num_classes, H, W), ``features`` (B, D, h, w) and,
  when a single window covered the image, ``mask_logits`` (B, Q, h4, w4), ``class_logits``
  (B, Q, num_classes + 1).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from anomseg.errors import InputError
from anomseg.registry import Registry

# modules whose import registers the built-in architectures
_BUILTIN_MODULES = ("anomseg.models.erfnet", "anomseg.models.eomt")
# "pixel": per-pixel class logits only (ERFNet); "mask": mask classification (EoMT), whose
# predictions add pixel_class_logits / mask and class logits / features (mask-only scorers: RbA)
MODEL_KINDS = ("pixel", "mask")


class SegModel(Protocol):
    """What every registered model offers to the Predictor."""

    arch: str
    num_classes: int
    default_input_size: tuple[int, int]

    def predict_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class ModelConfig:
    """What a built model is, fixed when ``create_model`` builds it (``model.model_cfg``)."""

    architecture: str
    kind: str  # one of MODEL_KINDS
    input_size: tuple[int, int]  # (H, W) the model scores at by default
    num_classes: int  # classes scored by mIoU (ERFNet's 20th output, void, is not one)

    @property
    def is_mask(self) -> bool:
        """A mask-classification model (EoMT)."""
        return self.kind == "mask"


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder, the default keyword arguments and its kind."""

    name: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # reads constructor options off a checkpoint's state dict (shapes), for entries that build
    # whatever variant the file holds (``eomt``); None: the options are the defaults
    from_state_dict: Callable[[dict[str, torch.Tensor], str], dict[str, Any]] | None = None
    kind: str = "pixel"  # one of MODEL_KINDS

    def accepts(self, option: str) -> bool:
        """Whether the builder takes the keyword argument ``option``."""
        params = inspect.signature(self.builder).parameters
        return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str,
    description: str = "",
    from_state_dict: Callable[[dict[str, torch.Tensor], str], dict[str, Any]] | None = None,
    kind: str = "pixel",
    **defaults: Any,
):
    """Decorator registering ``builder(**defaults)`` under ``name``, a model of ``kind``."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r}; expected one of {MODEL_KINDS}")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
        entry = ModelEntry(name, builder, dict(defaults), doc, from_state_dict, kind)
        MODELS.register(name, entry)
        return builder

    return deco


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    _load_builtins()
    return MODELS.names()


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (InputError naming the known ones if absent)."""
    _load_builtins()
    return MODELS.get(name)


def _check_options(entry: ModelEntry, kw: dict[str, Any]) -> None:
    params = inspect.signature(entry.builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise InputError(
            f"model {entry.name!r} does not accept option(s) {', '.join(unknown)}; "
            f"expected some of: {', '.join(sorted(params))}"
        )


def create_model(name: str, checkpoint: str | Path | None = None, **kw: Any) -> nn.Module:
    """Build a registered model (eval mode), optionally loading a checkpoint strictly.

    For an entry that reads its variant off the checkpoint (``eomt``) the options come from the
    file's shapes, then its metadata, then ``kw``; the file is read once.
    """
    entry = get_model_entry(name)
    state = None
    if checkpoint is not None:
        kw = {**_options_from_metadata(name, checkpoint), **kw}
        if entry.from_state_dict is not None:
            from anomseg.models.checkpoints import read_checkpoint

            state, _ = read_checkpoint(checkpoint)
            # window and input size recorded beside one of our own files (any architecture
            # name) settle what shapes cannot: a non-square window's aspect, the input size
            side = _options_from_metadata(None, checkpoint)
            side = {k: v for k, v in side.items() if k in ("img_size", "input_size")}
            kw = {**entry.from_state_dict(state, str(checkpoint)), **side, **kw}
    _check_options(entry, kw)
    model = entry.builder(**{**entry.defaults, **kw})
    model.arch = name
    model.model_cfg = ModelConfig(
        name,
        entry.kind,
        (int(model.default_input_size[0]), int(model.default_input_size[1])),
        int(model.num_classes),
    )
    if checkpoint is not None:
        from anomseg.models.checkpoints import load_checkpoint, load_state_strict

        if state is not None:
            load_state_strict(model, state, checkpoint)
        else:
            load_checkpoint(model, checkpoint)
    return model.eval()


def _options_from_metadata(name: str | None, checkpoint: str | Path) -> dict[str, Any]:
    """Constructor options recorded next to one of our own checkpoints (``<stem>.json``).

    Our safetensors checkpoints carry the options they were built with (e.g. the demo EoMT's
    depth), so ``create_model(arch, checkpoint=...)`` rebuilds the same shapes without the caller
    repeating them; explicit keyword arguments still win.
    """
    import json

    from anomseg.models.checkpoints import sidecar_path

    side = sidecar_path(checkpoint)
    try:
        meta = json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or (name is not None and meta.get("architecture") != name):
        return {}
    opts = meta.get("options") or {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}


def model_kind(architecture: str) -> str:
    """The kind ("pixel" / "mask") of a registered architecture, without building it."""
    return get_model_entry(architecture).kind


def model_config(model: Any) -> ModelConfig:
    """The frozen config ``create_model`` attached to ``model``.

    A model built outside the registry (a test double, a wrapped module) gets one from its
    ``SegModel`` attributes: kind "pixel" unless it says ``kind = "mask"``.
    """
    cfg = getattr(model, "model_cfg", None)
    if isinstance(cfg, ModelConfig):
        return cfg
    size = getattr(model, "default_input_size", None) or (0, 0)
    return ModelConfig(
        str(getattr(model, "arch", type(model).__name__)),
        str(getattr(model, "kind", "pixel")),
        (int(size[0]), int(size[1])),
        int(getattr(model, "num_classes", 0)),
    )


def count_parameters(name: str, **kw: Any) -> int:
    """Parameter count of a registered model, built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


def check_rgb_batch(x: torch.Tensor, who: str) -> None:
    """Raise InputError unless ``x`` is a float (B, 3, H, W) batch."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{who}.predict_batch expects a (B, 3, H, W) RGB tensor, got {shape}")
    if not x.is_floating_point():
        raise InputError(f"{who}.predict_batch expects float RGB in [0, 1], got dtype {x.dtype}")
