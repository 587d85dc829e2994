"""Model architectures behind one registry: ``create_model(name, checkpoint=None, **kw)``."""

from anomseg.hashing import file_sha256
from anomseg.models.checkpoints import (
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from anomseg.models.registry import (
    MODEL_KINDS,
    MODELS,
    ModelConfig,
    ModelEntry,
    SegModel,
    count_parameters,
    create_model,
    get_model_entry,
    list_models,
    model_config,
    model_kind,
    register_model,
)

__all__ = [
    "MODELS",
    "MODEL_KINDS",
    "ModelConfig",
    "ModelEntry",
    "SegModel",
    "count_parameters",
    "create_model",
    "file_sha256",
    "get_model_entry",
    "list_models",
    "load_checkpoint",
    "model_config",
    "model_kind",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
