"""A registered model, from its store row to a network and a Predictor: the one place this happens.

The Workspace's predictors (Compare, Flag, the evaluate job), the trainer's frozen model, the
evaluate job's ranks and the recipes all build through ``build_model`` / ``build_predictor``, so a
row's options, stored input size and checkpoint are read the same way everywhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from anomseg import settings
from anomseg.models import create_model, get_model_entry
from anomseg.predict import PredictionCache, Predictor, resolve_device
from db import catalog
from training.frozen import FrozenModel


@dataclass(frozen=True)
class ModelSpec:
    """What building a registered model needs, detached from the session (picklable for ranks)."""

    id: int
    name: str
    architecture: str
    checkpoint_path: str | None
    checkpoint_sha256: str | None
    input_size: tuple[int, int] | None
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> ModelSpec:
        """The spec of a store ``Model`` row."""
        options = dict((row.meta or {}).get("options") or {})
        return cls(
            int(row.id),
            row.name,
            row.architecture,
            row.checkpoint_path,
            row.checkpoint_sha256,
            (int(row.input_h), int(row.input_w)) if row.input_h and row.input_w else None,
            tuple(sorted(tuple_options(options).items())),
        )

    @property
    def key(self) -> str:
        """``name@checkpoint hash``: a model replaced under its name gets a new key."""
        return f"{self.name}@{self.checkpoint_sha256 or ''}"


def read_spec(store: Any, model: str | int) -> ModelSpec:
    """The spec of a registered model (name or id); InputError naming the known ones if absent."""
    with store.read() as s:
        return ModelSpec.from_row(catalog.get_model(s, model))


def build_model(spec: ModelSpec) -> Any:
    """Build the network and load its checkpoint strictly (``create_model``)."""
    opts = dict(spec.options)
    # the stored input size goes to the builder unless the options name one (or it takes none)
    if spec.input_size is not None and "input_size" not in opts:
        if get_model_entry(spec.architecture).accepts("input_size"):
            opts["input_size"] = tuple(spec.input_size)
    return create_model(spec.architecture, checkpoint=spec.checkpoint_path, **opts)


def build_predictor(
    spec: ModelSpec, device: str = "auto", cache: PredictionCache | None = None
) -> Predictor:
    """A Predictor over a freshly built network, at the stored input size (its predictions in
    ``cache``, e.g. a pool's shared budget; else a private cache of the library default)."""
    return Predictor(build_model(spec), device=device, input_size=spec.input_size, cache=cache)


def frozen_model(
    store: Any, model: str | int, device: str = "auto", predictor: Any = None
) -> FrozenModel:
    """The frozen model training is handed (built on first use; ``predictor`` reuses one)."""
    spec = read_spec(store, model)
    dev = str(resolve_device(device))
    return FrozenModel(
        spec.id,
        spec.name,
        spec.checkpoint_path,
        spec.checkpoint_sha256,
        spec.input_size,
        load=lambda: build_predictor(spec, dev),
        predictor=predictor,
    )


class PredictorPool:
    """The process-wide Predictors of registered models: an LRU of ``max_models`` networks.

    Keyed by checkpoint hash too: a model replaced under its name (add-model --replace) is
    rebuilt by a running app instead of serving the old weights under the new name. All its
    predictors keep their predictions in ONE cache of ``cache_bytes`` (default
    ``anomseg.settings.prediction_cache_bytes()``): the app's bound does not grow with the number
    of loaded models (keys hold the model identity, so models never share entries).
    """

    def __init__(self, store: Any, max_models: int = 2, cache_bytes: int | None = None) -> None:
        self.store = store
        self.max_models = max_models
        budget = settings.prediction_cache_bytes() if cache_bytes is None else cache_bytes
        self.cache = PredictionCache(budget)
        self._predictors: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: str | int) -> Predictor:
        """The Predictor of a registered model (built once per checkpoint)."""
        spec = read_spec(self.store, model)
        with self._lock:
            if spec.key in self._predictors:
                self._predictors.move_to_end(spec.key)
                return self._predictors[spec.key]
        pred = build_predictor(spec, cache=self.cache)
        with self._lock:
            self._predictors[spec.key] = pred
            while len(self._predictors) > self.max_models:
                self._predictors.popitem(last=False)
        return pred

    def clear(self) -> None:
        """Forget every loaded model and every cached prediction (a cold start)."""
        with self._lock:
            self._predictors.clear()
        self.cache.clear()


def tuple_options(options: dict) -> dict:
    """JSON turns tuples into lists; model builders want (H, W) tuples back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
