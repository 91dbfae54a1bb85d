"""Model registry: ``create_model(name, task=...)`` and ``list_models()``.

Backbone variants are data (``SEPVIT_VARIANTS``, ``SET_VARIANTS``); the task decides what is
built around them:

* ``classify``: the backbone in its classification layout (SepViT: official key layout).
* ``detect`` / ``segment``: a registered head (:data:`sepvit.heads.HEADS`, keyed by
  ``(task, head)``: ``retinanet``, ``semantic_fpn``) on the dense layout, in OpenMMLab's module
  layout so mmdet/mmseg checkpoints load key for key.

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
    load_openmmlab_into,
    openmmlab_classes,
    openmmlab_state,
    read_metadata,
    read_official,
)
from .heads import HEADS, HeadSpec, get_head
from .presets import PRESETS, preset_cfg

__all__ = [
    "TASKS",
    "UnknownModelError",
    "checkpoint_info",
    "create_model",
    "filter_checkpoint",
    "list_heads",
    "list_models",
    "load_model",
    "model_config",
    "register_backbone",
    "upgrade_native",
]

log = logging.getLogger(__name__)

TASKS = ("classify", "detect", "segment")  # handlers.params.Task (torch-free) spells them too
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


def list_heads(task: str) -> list[str]:
    """Registered heads of a dense task (``detect``, ``segment``)."""
    return sorted(n for t, n in HEADS if t == task)


def _variant_of(state: dict[str, Tensor]) -> str:
    """The SepViT variant whose widths and depths the ``backbone.*`` tensors have."""
    dims, depths = [], []
    for s in range(4):
        w = state.get(f"backbone.patch_embeds.{s}.proj.weight")
        if w is None:
            raise CheckpointError("checkpoint has no SepViT backbone (backbone.patch_embeds.*)")
        dims.append(int(w.shape[0]))
        n = 0
        while f"backbone.blocks.{s}.{n}.norm1.weight" in state:
            n += 1
        depths.append(n)
    for name, cfg in SEPVIT_VARIANTS.items():
        if list(cfg["embed_dims"]) == dims and list(cfg["depths"]) == depths:
            return name
    raise CheckpointError(f"no SepViT variant has widths {dims} and depths {depths}")


def checkpoint_info(checkpoint: str | Path) -> dict[str, Any]:
    """``variant``, ``task`` and ``head`` of a native or OpenMMLab checkpoint: what
    :func:`create_model` needs to rebuild it (the variant of an OpenMMLab checkpoint is read from
    its backbone's shapes)."""
    if is_native_checkpoint(checkpoint):
        meta = read_metadata(checkpoint)
        head = meta.get("head") or meta["pretrained_cfg"].get("head")
        if head is None and meta["task"] != "classify":
            head = get_head(meta["task"], None).name
        return {"variant": meta["variant"], "task": meta["task"], "head": head}
    state = openmmlab_state(read_official(checkpoint))
    spec = next((s for s in HEADS.values() if s.signature in state), None)
    if spec is None:
        raise CheckpointError(
            f"{checkpoint} is neither a native checkpoint nor an mmdet/mmseg checkpoint of a "
            f"registered head ({', '.join(f'{t}/{n}' for t, n in sorted(HEADS))})"
        )
    return {"variant": _variant_of(state), "task": spec.task, "head": spec.name}


def load_model(checkpoint: str | Path, task: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a model from a native or OpenMMLab checkpoint alone (see :func:`checkpoint_info`);
    ``task``, when given, must be the checkpoint's."""
    info = checkpoint_info(checkpoint)
    if task is not None and task != info["task"]:
        raise CheckpointError(f"{checkpoint} is a {info['task']} model, not {task}")
    return create_model(
        info["variant"], task=info["task"], head=info["head"], checkpoint=checkpoint, **kwargs
    )


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
    spec: HeadSpec | None,
    num_classes: int,
    img_size: tuple[int, int],
    kwargs: dict[str, Any],
) -> nn.Module:
    cls, defaults = _BACKBONES[name]
    bb_kwargs, head_kwargs = _split_kwargs(cls, kwargs)
    if spec is None:
        if head_kwargs:
            raise TypeError(f"unexpected arguments for a classifier: {sorted(head_kwargs)}")
        return cls(**{**defaults, **bb_kwargs, "num_classes": num_classes, "img_size": img_size})
    backbone = cls(**{**defaults, **bb_kwargs, "dense": True})
    if not isinstance(backbone, SepViT | SeT):
        raise TypeError(f"{name} has no dense layout for task {spec.task!r}")
    return spec.build(backbone, num_classes, **head_kwargs)


def upgrade_native(
    state: dict[str, Tensor], meta: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A native checkpoint's state and metadata in the current layout.

    Version-1 detectors and segmenters (no ``head`` in the metadata: written before the heads took
    OpenMMLab's module layout) are converted by their head's ``legacy`` rule, which renames the
    keys and adds the model arguments that keep their answers; other checkpoints pass through.
    """
    if meta["task"] == "classify" or meta.get("head") or meta["pretrained_cfg"].get("head"):
        head = meta.get("head") or meta["pretrained_cfg"].get("head")
        return state, ({**meta, "head": head} if head else meta)
    spec = get_head(meta["task"], None)
    if spec.legacy is None:
        raise CheckpointError(f"no conversion of version-1 checkpoints for head {spec.name!r}")
    state, args = spec.legacy(state, dict(meta["model_args"]))
    return state, {**meta, "head": spec.name, "model_args": args}


def _openmmlab_head(task: str, head: str | None, state: dict[str, Tensor]) -> HeadSpec | None:
    """The registered head whose checkpoints look like ``state``; ``None`` for a backbone-only
    checkpoint. A head of another task or name than asked for is a :class:`CheckpointError`."""
    found = next((s for s in HEADS.values() if s.signature in state), None)
    if found is None:
        heads = sorted({k.split(".", 1)[0] for k in state} - {"backbone"})
        if not any(h.endswith(("neck", "_head")) for h in heads):
            return None
        asked = get_head(task, head)
        if not set(heads) <= set(asked.prefixes + asked.unused):
            raise CheckpointError(f"checkpoint holds a head no registered model matches: {heads}")
        return asked  # a damaged checkpoint of the asked head: the strict load names the keys
    if found.task != task or (head is not None and head != found.name):
        raise CheckpointError(
            f"checkpoint holds a {found.task!r} model with head {found.name!r}, "
            f"not task={task!r}" + (f" head={head!r}" if head else "")
        )
    return found


def create_model(
    name: str,
    *,
    task: str = "classify",
    head: str | None = None,
    num_classes: int | None = None,
    img_size: int | Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    preset: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a SepViT or SeT classifier, detector or segmenter, optionally loading weights.

    Args:
        name: backbone variant, see :func:`list_models`.
        task: ``classify``, ``detect`` or ``segment``.
        head: the task head (``detect``: ``retinanet``; ``segment``: ``semantic_fpn``; default:
            the checkpoint's, else the task's first). Not for ``classify``.
        num_classes: output classes (defaults: 1000 / 80 / 150, or the checkpoint's).
        img_size: serving input size (int or (H, W)). For classifiers it also sizes the
            window-token grids (SepViT) or patch position tables (SeT); dense models run at any
            size and use it for preprocessing.
        checkpoint: a native ``.safetensors`` checkpoint (rebuilt exactly from its metadata),
            an official classification ``.pth`` (a detector's or segmenter's backbone is
            initialised from it), or an mmdet/mmseg checkpoint of a registered head, loaded
            strictly (widths, depth and class count read from its tensors; its dataset preset
            becomes the preprocessing). The load is reported in ``model.load_report``.
        label_names: class names stored in ``pretrained_cfg`` (length ``num_classes``).
        mean, std, interpolation, crop_pct: preprocessing metadata stored in ``pretrained_cfg``
            (default: the checkpoint's, else ImageNet mean/std, bicubic, and the ImageNet eval
            crop 0.875; ``crop_pct`` is the centre-crop fraction of classification inputs).
        preset: a dataset preset of :data:`sepvit.presets.PRESETS` (``coco``, ``ade20k``): the
            official test pipeline's preprocessing and class names (default for OpenMMLab
            checkpoints: their head's preset).
        **kwargs: backbone arguments (e.g. ``window_sizes``, ``drop_path_rate``) or task-head
            arguments (e.g. ``fpn_channels``, ``head_convs``, ``score_thresh``).
    """
    if name not in _BACKBONES:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if task not in TASKS:
        raise UnknownModelError(f"unknown task {task!r}; expected one of {TASKS}")

    if "dense" in kwargs:
        raise TypeError("'dense' is chosen by the task; use task='detect' or task='segment'")
    if task == "classify" and head is not None:
        raise TypeError("head applies to task='detect' or task='segment'")
    if preset is not None and preset not in PRESETS:
        raise UnknownModelError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
    spec = None if task == "classify" else get_head(task, head)
    meta: dict[str, Any] | None = None
    saved_hw: tuple[int, int] | None = None
    saved_cfg: dict[str, Any] = {}
    mm_state: dict[str, Tensor] | None = None
    backbone_only: dict[str, Any] | None = None
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
        model_args = dict(meta["model_args"])
        if task != "classify":
            saved_head = meta.get("head") or saved_cfg.get("head")
            if head is not None and saved_head is not None and head != saved_head:
                raise CheckpointError(f"{checkpoint} has head {saved_head!r}, not {head!r}")
            state, meta = upgrade_native(state, meta)
            spec = get_head(task, meta["head"])
            model_args = dict(meta["model_args"])
        kwargs = {**model_args, **kwargs}
        saved_hw = _as_hw(saved_cfg["input_size"][1:])
        img_size = img_size if img_size is not None else saved_hw
        label_names = label_names if label_names is not None else saved_cfg.get("label_names")
        mean = mean if mean is not None else saved_cfg.get("mean")
        std = std if std is not None else saved_cfg.get("std")
        interpolation = interpolation or saved_cfg.get("interpolation")
        crop_pct = crop_pct if crop_pct is not None else saved_cfg.get("crop_pct")
        preset = preset or saved_cfg.get("dataset")
    elif checkpoint is not None:
        raw = read_official(checkpoint)
        if task == "classify":
            backbone_only = raw
        else:
            mm_state = openmmlab_state(raw)
            found = _openmmlab_head(task, head, mm_state)
            if found is None:
                backbone_only = raw
            else:
                spec = found
                try:
                    ckpt_classes = spec.num_classes(mm_state)
                    inferred = spec.infer_kwargs(mm_state)
                except KeyError as exc:
                    raise CheckpointError(f"{checkpoint}: missing key {exc}") from exc
                if num_classes is not None and num_classes != ckpt_classes:
                    raise CheckpointError(
                        f"{checkpoint} has {ckpt_classes} classes; num_classes={num_classes} given"
                    )
                num_classes = ckpt_classes
                kwargs = {**inferred, **kwargs}
                names = openmmlab_classes(raw)
                if label_names is None and names is not None and len(names) == num_classes:
                    label_names = names
                preset = preset or spec.preset

    n_cls = DEFAULT_NUM_CLASSES[task] if num_classes is None else int(num_classes)
    preset_values = preset_cfg(preset, n_cls) if preset else {}
    if label_names is None:
        label_names = preset_values.get("label_names")
    mean = preset_values.get("mean", IMAGENET_MEAN) if mean is None else mean
    std = preset_values.get("std", IMAGENET_STD) if std is None else std
    interpolation = interpolation or preset_values.get("interpolation", "bicubic")
    crop_pct = preset_values.get("crop_pct", 0.875) if crop_pct is None else float(crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if label_names is not None and len(label_names) != n_cls:
        raise ValueError(f"{len(label_names)} label names for {n_cls} classes")
    if img_size is None:
        img_size = preset_values["input_size"][1:] if preset_values else DEFAULT_INPUT[task]
    hw = _as_hw(img_size)

    model = _build(name, spec, n_cls, hw, kwargs)
    if native:
        if isinstance(model, SepViT | SeT) and saved_hw != hw:  # classifier at another size
            state = filter_checkpoint(state, model, source_img_size=saved_hw)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{checkpoint} does not fit the model: {exc}") from exc
    elif mm_state is not None and backbone_only is None:
        assert spec is not None
        try:
            report = load_openmmlab_into(model, mm_state, spec.prefixes, spec.unused)
        except CheckpointError as exc:
            raise CheckpointError(f"{checkpoint}: {exc}") from exc
        log.info("%s: %s", checkpoint, report)
        model.load_report = report  # type: ignore[assignment]
    elif backbone_only is not None:
        report = load_official_into(model, backbone_only)
        log.info("%s: %s", checkpoint, report)
        model.load_report = report  # type: ignore[assignment]

    cfg: dict[str, Any] = {
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
    if spec is not None:
        cfg["head"] = spec.name
    for key in ("resize", "pad_divisor", "dataset"):
        value = saved_cfg.get(key, preset_values.get(key))
        if value is not None:
            cfg[key] = value
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    model.model_args = _jsonable(dict(kwargs))
    return model
