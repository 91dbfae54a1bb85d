"""Model registry: ``create_model(name, task=...)`` and ``list_models()``.

Backbone variants are data (``SEPVIT_VARIANTS``, ``SET_VARIANTS``); the task decides what is
built around them:

* ``classify``: the backbone in its classification layout (SepViT: official key layout).
* ``detect``: :class:`~sepvit.heads.RetinaNet` on the dense layout.
* ``segment``: :class:`~sepvit.heads.SemanticFPN` on the dense layout.

Keyword arguments are routed by name: those the backbone constructor accepts go to it, the rest
to the task model. Built models carry ``pretrained_cfg`` (timm's convention: task, variant,
input_size, mean, std, interpolation, label_names, num_classes) and ``model_args`` (what is
needed to rebuild them from a native checkpoint).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .backbones import set as set_backbone
from .backbones.sepvit import SEPVIT_VARIANTS, SepViT, checkpoint_filter_fn
from .backbones.set import SET_VARIANTS, SeT
from .checkpoint import (
    CheckpointError,
    is_native_checkpoint,
    load_native,
    load_official_into,
    read_official,
)
from .heads import RetinaNet, SemanticFPN

__all__ = [
    "TASKS",
    "UnknownModelError",
    "create_model",
    "filter_checkpoint",
    "list_models",
    "model_config",
    "register_backbone",
]

log = logging.getLogger(__name__)

TASKS = ("classify", "detect", "segment")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_NUM_CLASSES = {"classify": 1000, "detect": 80, "segment": 150}
DEFAULT_INPUT = {"classify": 224, "detect": 512, "segment": 512}


class UnknownModelError(KeyError):
    """No backbone or task of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


# name -> (backbone class, default kwargs)
_BACKBONES: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}


def register_backbone(name: str, cls: Callable[..., nn.Module], defaults: dict[str, Any]) -> None:
    """Register a backbone variant (a class and its default constructor arguments)."""
    _BACKBONES[name] = (cls, dict(defaults))


for _name, _cfg in SEPVIT_VARIANTS.items():
    register_backbone(_name, SepViT, {k: v for k, v in _cfg.items() if k != "official_name"})
for _name, _cfg in SET_VARIANTS.items():
    register_backbone(_name, SeT, _cfg)


def filter_checkpoint(
    state_dict: dict[str, Tensor],
    model: nn.Module,
    source_img_size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Adapt a state dict to ``model`` with its backbone family's ``checkpoint_filter_fn``."""
    if isinstance(model, SeT):
        return set_backbone.checkpoint_filter_fn(state_dict, model)
    if isinstance(model, SepViT):
        return checkpoint_filter_fn(state_dict, model, source_img_size=source_img_size)
    raise TypeError(f"no checkpoint filter for {type(model).__name__}")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``pretrained_cfg`` metadata of a model built by :func:`create_model`."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        raise TypeError("model has no pretrained_cfg; build it with sepvit.create_model")
    return cfg


def list_models(task: str | None = None) -> list[str]:
    """Registered backbone names (every backbone serves every task)."""
    if task is not None and task not in TASKS:
        raise UnknownModelError(f"unknown task {task!r}; expected one of {TASKS}")
    return sorted(_BACKBONES)


def _split_kwargs(cls: Callable[..., nn.Module], kwargs: dict[str, Any]) -> tuple[dict, dict]:
    accepted = set(inspect.signature(cls).parameters)
    backbone = {k: v for k, v in kwargs.items() if k in accepted}
    rest = {k: v for k, v in kwargs.items() if k not in accepted}
    return backbone, rest


def head_args(variant: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """The model arguments of ``variant`` that its backbone does not take (the task head's)."""
    if variant not in _BACKBONES:
        raise UnknownModelError(f"unknown model {variant!r}")
    return _split_kwargs(_BACKBONES[variant][0], model_args)[1]


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    hw = tuple(int(s) for s in size)
    if len(hw) != 2:
        raise ValueError(f"img_size must be an int or (H, W), got {size!r}")
    return (hw[0], hw[1])


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _build(
    name: str,
    task: str,
    num_classes: int,
    img_size: tuple[int, int],
    kwargs: dict[str, Any],
) -> nn.Module:
    cls, defaults = _BACKBONES[name]
    bb_kwargs, head_kwargs = _split_kwargs(cls, kwargs)
    if task == "classify":
        if head_kwargs:
            raise TypeError(f"unexpected arguments for a classifier: {sorted(head_kwargs)}")
        return cls(**{**defaults, **bb_kwargs, "num_classes": num_classes, "img_size": img_size})
    backbone = cls(**{**defaults, **bb_kwargs, "dense": True})
    if not isinstance(backbone, SepViT | SeT):
        raise TypeError(f"{name} has no dense layout for task {task!r}")
    if task == "detect":
        return RetinaNet(backbone, num_classes, **head_kwargs)
    return SemanticFPN(backbone, num_classes, **head_kwargs)


def create_model(
    name: str,
    *,
    task: str = "classify",
    num_classes: int | None = None,
    img_size: int | Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a SepViT or SeT classifier, detector or segmenter, optionally loading weights.

    Args:
        name: backbone variant, see :func:`list_models`.
        task: ``classify``, ``detect`` or ``segment``.
        num_classes: output classes (defaults: 1000 / 80 / 150, or the checkpoint's).
        img_size: serving input size (int or (H, W)). For classifiers it also sizes the
            window-token grids (SepViT) or patch position tables (SeT); dense models run at any
            size and use it for preprocessing.
        checkpoint: a native ``.safetensors`` checkpoint (rebuilt exactly from its metadata) or
            an official ``.pth`` (classification weights, or a detection/segmentation checkpoint
            whose backbone sits under ``backbone.``).
        label_names: class names stored in ``pretrained_cfg`` (length ``num_classes``).
        mean, std, interpolation, crop_pct: preprocessing metadata stored in ``pretrained_cfg``
            (default: the checkpoint's, else ImageNet mean/std, bicubic, and the ImageNet eval
            crop 0.875; ``crop_pct`` is the centre-crop fraction of classification inputs).
        **kwargs: backbone arguments (e.g. ``window_sizes``, ``drop_path_rate``) or task-head
            arguments (e.g. ``fpn_channels``, ``head_convs``, ``score_thresh``).
    """
    if name not in _BACKBONES:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if task not in TASKS:
        raise UnknownModelError(f"unknown task {task!r}; expected one of {TASKS}")

    if "dense" in kwargs:
        raise TypeError("'dense' is chosen by the task; use task='detect' or task='segment'")
    meta: dict[str, Any] | None = None
    saved_hw: tuple[int, int] | None = None
    native = checkpoint is not None and is_native_checkpoint(checkpoint)
    if native:
        assert checkpoint is not None
        state, meta = load_native(checkpoint)
        if meta["variant"] != name:
            raise CheckpointError(f"{checkpoint} holds {meta['variant']!r}, not {name!r}")
        if meta["task"] != task:
            raise CheckpointError(f"{checkpoint} is a {meta['task']!r} model, not {task!r}")
        if num_classes is not None and num_classes != meta["num_classes"]:
            raise CheckpointError(
                f"{checkpoint} has {meta['num_classes']} classes; num_classes={num_classes} given"
            )
        num_classes = meta["num_classes"]
        saved_cfg = meta["pretrained_cfg"]
        kwargs = {**meta["model_args"], **kwargs}
        saved_hw = _as_hw(saved_cfg["input_size"][1:])
        img_size = img_size if img_size is not None else saved_hw
        label_names = label_names if label_names is not None else saved_cfg.get("label_names")
        mean = mean if mean is not None else saved_cfg.get("mean")
        std = std if std is not None else saved_cfg.get("std")
        interpolation = interpolation or saved_cfg.get("interpolation")
        crop_pct = crop_pct if crop_pct is not None else saved_cfg.get("crop_pct")
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    interpolation = interpolation or "bicubic"
    crop_pct = 0.875 if crop_pct is None else float(crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")

    n_cls = DEFAULT_NUM_CLASSES[task] if num_classes is None else int(num_classes)
    if label_names is not None and len(label_names) != n_cls:
        raise ValueError(f"{len(label_names)} label names for {n_cls} classes")
    hw = _as_hw(img_size if img_size is not None else DEFAULT_INPUT[task])

    model = _build(name, task, n_cls, hw, kwargs)
    if native:
        if isinstance(model, SepViT | SeT) and saved_hw != hw:  # classifier at another size
            state = filter_checkpoint(state, model, source_img_size=saved_hw)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{checkpoint} does not fit the model: {exc}") from exc
    elif checkpoint is not None:
        report = load_official_into(model, read_official(checkpoint))
        log.info("%s: %s", checkpoint, report)
        model.load_report = report  # type: ignore[assignment]

    model.pretrained_cfg = {  # type: ignore[assignment]
        "task": task,
        "variant": name,
        "num_classes": n_cls,
        "input_size": [3, hw[0], hw[1]],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "label_names": list(label_names) if label_names is not None else None,
    }
    model.model_args = _jsonable(dict(kwargs))
    return model
