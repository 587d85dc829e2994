"""Strict, safe checkpoint loading and atomic safetensors saving.

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` are read with ``torch.load(weights_only=True)``: a pickle
  that would run code is refused. Common containers (``{"state_dict": ...}``, ``{"model": ...}``)
  are unwrapped and ``module.`` / ``network.`` prefixes are stripped when the model's own keys
  lack them. A Lightning training module's file (EoMT's ``.ckpt``, or a ``.bin`` saved from the
  module) holds the network under ``network.`` beside other parts' buffers such as
  ``criterion.empty_weight``: only the ``network.`` entries are kept, as the official loader
  does, and the load stays strict on them.
* ``.safetensors`` are our own format, with metadata in a sidecar ``<stem>.json``.
* Loading is all-or-nothing: keys and shapes are checked against the model before anything is
  copied, so a mismatch leaves the model untouched and names what differs.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomseg.atomic import atomic_paths
from anomseg.errors import CheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "module", "net")
STRIP_PREFIXES = ("module.", "network.", "model.", "_orig_mod.")
MAX_LISTED = 10


def sidecar_path(path: str | Path) -> Path:
    """The JSON metadata file that goes with a safetensors checkpoint: ``<stem>.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".json")


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor state dict inside common training-checkpoint containers."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key])
        keys = ", ".join(map(str, list(obj)[:MAX_LISTED]))
        raise CheckpointError(
            f"{path}: no tensor state dict found; top-level keys are [{keys}], expected tensors "
            f"or one of {', '.join(CONTAINER_KEYS)} holding tensors"
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a tensor state dict")


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg:
            reason = next(
                (ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln or "Unsupported" in ln),
                "",
            )
            raise CheckpointError(
                f"refused: {path} is not a plain tensor state dict (its pickle would build "
                f"arbitrary objects or run code){': ' + reason[:200] if reason else ''}"
            ) from None
        raise CheckpointError(
            f"{path}: cannot be read, truncated or corrupt ({msg[:200]})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: cannot be read, truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'unexpected end of file'})"
        ) from None
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot be read, truncated or corrupt ({exc})") from None
    meta: dict[str, Any] = {}
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{side}: metadata is not valid JSON ({exc})") from None
    return state, meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file into (tensor state dict on CPU, metadata dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a file)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    return _read_torch(path), {}


# the attribute a Lightning module keeps its network under (EoMT's training module); entries
# outside it (criterion.empty_weight, metrics' buffers) belong to the training, not the model
MODULE_NETWORK_PREFIX = "network."


def network_entries(
    state: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Only the ``network.*`` entries of a training module's state dict the model lacks a
    ``network.`` for (the rest is the criterion's / metrics' buffers); else ``state`` itself."""
    p = MODULE_NETWORK_PREFIX
    if any(k.startswith(p) for k in state) and not any(k.startswith(p) for k in model_keys):
        return {k: v for k, v in state.items() if k.startswith(p)}
    return state


def _strip_prefixes(
    state: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (DataParallel ``module.``, EoMT's ``network.``) the model lacks."""
    state = network_entries(state, model_keys)
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if (
                state
                and all(k.startswith(prefix) for k in state)
                and not any(k.startswith(prefix) for k in model_keys)
            ):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def match_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | Path
) -> dict[str, torch.Tensor]:
    """Return ``state`` with prefixes fixed; CheckpointError unless keys and shapes match exactly."""
    expected = model.state_dict()
    state = _strip_prefixes(state, set(expected))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        arch = getattr(model, "arch", type(model).__name__)
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if items
        ]
        raise CheckpointError(
            f"{source} does not match model {arch!r} (nothing was loaded): " + "; ".join(parts)
        )
    return state


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint strictly into ``model`` (all or nothing); return its metadata."""
    state, meta = read_checkpoint(path)
    load_state_strict(model, state, path)
    return meta


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load an already read state dict strictly into ``model`` (all or nothing)."""
    state = match_state_dict(model, state, source)
    expected = model.state_dict()
    if any(t.is_meta for t in expected.values()):
        # a meta-built model is materialised from the file (a copy into meta is a no-op)
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
    else:
        model.load_state_dict(state, strict=True)


def save_checkpoint(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    fp16: bool = False,
) -> Path:
    """Write ``<path>.safetensors`` + ``<stem>.json`` atomically (both temp files, then replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: our checkpoints are .safetensors files")
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if fp16 and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous().clone()  # clone: safetensors refuses shared storage
    meta = dict(metadata or {})
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"metadata for {path} is not JSON-serialisable ({exc})") from None
    with atomic_paths(path, sidecar_path(path)) as (tmp_w, tmp_j):
        save_file(tensors, str(tmp_w), metadata={"format": "pt"})
        tmp_j.write_text(meta_text + "\n")
    return path
