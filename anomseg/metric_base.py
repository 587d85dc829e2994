"""The metric base class, torchmetrics style: each state is declared once with its reduction.

A subclass calls ``add_state(name, default, reduction)`` in ``__init__`` and implements
``update`` and ``compute``; ``reset``, ``merge``, ``merged``, ``state_dict``,
``load_state_dict`` and ``sync_distributed`` then follow from the declarations alone, so a merge
of per-image or per-rank metrics and a ``torch.distributed`` sync cannot disagree.

Reductions: ``"sum"``, ``"min"``, ``"max"`` (an array state, combined element-wise; an
``all_reduce`` across processes) and ``"cat"`` (a list of 1-D chunks of one dtype, concatenated;
an all-gather of variable-length tensors across processes).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Self

import numpy as np

from anomseg.errors import InputError

ELEMENTWISE = {"sum": np.add, "min": np.minimum, "max": np.maximum}
REDUCTIONS = (*ELEMENTWISE, "cat")
# numpy dtypes torch.distributed cannot reduce, and the dtype their tensors travel in
_WIDENED = {np.dtype(np.uint32): np.int64, np.dtype(np.uint16): np.int64}


def to_numpy(a: Any) -> np.ndarray:
    """A numpy view/copy of an array or torch tensor (bf16 / fp16 tensors as float32)."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch
        a = a.detach()
        if a.dtype.is_floating_point and a.dtype.itemsize < 4:
            a = a.float()  # bf16 / fp16 have no numpy twin
        a = a.cpu().numpy()
    return np.asarray(a)


class Metric:
    """Base of the mergeable metrics; see the module doc."""

    def __init__(self) -> None:
        # name -> (default array, or the chunk dtype of a "cat" state; reduction)
        self._defaults: dict[str, tuple[Any, str]] = {}

    # -- declaration
    def add_state(self, name: str, default: Any, reduction: str) -> None:
        """Declare a state: an array ``default`` (sum/min/max) or a dtype (cat: 1-D chunks)."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction {reduction!r}; expected one of {REDUCTIONS}")
        if reduction == "cat":
            default = np.dtype(default)
        else:
            default = np.array(default, copy=True)
        self._defaults[name] = (default, reduction)
        setattr(self, name, self._fresh(name))

    def _fresh(self, name: str) -> Any:
        default, reduction = self._defaults[name]
        return [] if reduction == "cat" else default.copy()

    @property
    def reductions(self) -> dict[str, str]:
        """How each state combines across metrics and processes (sum / min / max / cat)."""
        return {k: how for k, (_, how) in self._defaults.items()}

    # -- hooks for subclasses
    def _changed(self) -> None:
        """Called whenever the state changes (subclasses drop cached results here)."""

    def _check_mergeable(self, other: Any) -> None:
        """Raise InputError unless ``other`` can be merged in (subclasses add their settings)."""
        if type(other) is not type(self) or other.reductions != self.reductions:
            raise InputError(
                f"cannot merge a {type(other).__name__} into a {type(self).__name__}; "
                "expected the same metric with the same settings"
            )

    # -- generic operations
    def reset(self) -> None:
        """Forget everything seen so far."""
        for name in self._defaults:
            setattr(self, name, self._fresh(name))
        self._changed()

    def merge(self, other: Self) -> Self:
        """Add another metric's state into this one (states combined by reduction); self."""
        self._check_mergeable(other)
        for name, how in self.reductions.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if how == "cat":
                mine.extend(theirs)
            else:
                ELEMENTWISE[how](mine, theirs, out=mine)
        self._changed()
        return self

    def empty_like(self) -> Self:
        """A new metric with the same settings and an empty state."""
        out = copy.copy(self)
        out.reset()
        return out

    @classmethod
    def merged(cls, metrics: Iterable[Self]) -> Self:
        """A new metric holding the merge of several (e.g. per-image or per-worker) metrics."""
        metrics = list(metrics)
        if not metrics:
            raise InputError("nothing to merge; expected at least one metric")
        out = metrics[0].empty_like()
        for m in metrics:
            out.merge(m)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The state as torch tensors ("cat" states concatenated), reducible as declared."""
        import torch

        out = {}
        for name, (default, how) in self._defaults.items():
            if how == "cat":
                chunks = getattr(self, name)
                arr = np.concatenate(chunks) if chunks else np.zeros(0, default)
                arr = arr.astype(default, copy=False)
            else:
                arr = getattr(self, name)
            out[name] = torch.from_numpy(arr.astype(_WIDENED.get(arr.dtype, arr.dtype)))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the state with one from ``state_dict`` (possibly reduced across processes)."""
        if set(state) != set(self._defaults):
            raise InputError(
                f"metric state has keys {sorted(state)}; expected {sorted(self._defaults)}"
            )
        new = {}
        for name, (default, how) in self._defaults.items():
            v = to_numpy(state[name])
            if how == "cat":
                new[name] = [np.ascontiguousarray(v.reshape(-1), dtype=default)]
                continue
            if v.shape != default.shape:
                raise InputError(
                    f"metric state {name!r} has shape {v.shape}; expected {default.shape}"
                )
            new[name] = v.astype(default.dtype)
        for name, value in new.items():  # all checked first: a bad state changes nothing
            setattr(self, name, value)
        self._changed()

    def sync_distributed(self, group: Any = None) -> None:
        """Combine the state across all ``torch.distributed`` processes of ``group`` (in place);
        a no-op when torch.distributed is not initialised."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            sync_state(self, group)


def sync_state(metric: Any, group: Any = None) -> None:
    """Combine a metric's ``state_dict`` across ``torch.distributed`` processes as its
    ``reductions`` say (sum / min / max all-reduce; "cat" all-gathers variable lengths)."""
    import torch
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    state = metric.state_dict()
    for key, how in metric.reductions.items():
        t = state[key]
        if how in ops:
            dist.all_reduce(t, op=ops[how], group=group)
            continue
        # "cat": all-gather tensors of different lengths (pad to the longest, then trim)
        world = dist.get_world_size(group)
        n = torch.tensor([t.numel()], dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n, group=group)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=t.dtype)
        padded[: t.numel()] = t
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        state[key] = torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
    metric.load_state_dict(state)
