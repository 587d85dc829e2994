"""Model architectures behind one registry: ``create_model(name, checkpoint=None, **kw)``."""

from anomseg.hashing import file_sha256
from anomseg.models.checkpoints import (
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from anomseg.models.registry import (
    MODELS,
    ModelEntry,
    SegModel,
    count_parameters,
    create_model,
    get_model_entry,
    list_models,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelEntry",
    "SegModel",
    "count_parameters",
    "create_model",
    "file_sha256",
    "get_model_entry",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
    "save_checkpoint",
]
