"""Model library: SepViT and SeT backbones, task heads, checkpoints, export (pure PyTorch)."""

from .backbones.sepvit import SEPVIT_VARIANTS, SepViT, checkpoint_filter_fn
from .backbones.set import SET_VARIANTS, SeT
from .checkpoint import CheckpointError, LoadReport, read_metadata, save_checkpoint
from .registry import (
    TASKS,
    UnknownModelError,
    checkpoint_info,
    create_model,
    list_heads,
    list_models,
    load_model,
    model_config,
)

__all__ = [
    "SEPVIT_VARIANTS",
    "SET_VARIANTS",
    "TASKS",
    "CheckpointError",
    "LoadReport",
    "SeT",
    "SepViT",
    "UnknownModelError",
    "checkpoint_filter_fn",
    "checkpoint_info",
    "create_model",
    "list_heads",
    "list_models",
    "load_model",
    "model_config",
    "read_metadata",
    "save_checkpoint",
]

__version__ = "0.1.0"
