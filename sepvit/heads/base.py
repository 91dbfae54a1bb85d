"""The head registry: what ``create_model(name, task=..., head=...)`` can build around a backbone.

Each task head registers one :class:`HeadSpec` (at the bottom of its module). The spec says how
to build the model, which top-level state-dict prefixes an OpenMMLab checkpoint of that
architecture holds besides ``backbone.`` (its key-prefix table), how to recognise such a
checkpoint, and how to read its class count and widths from the tensors. Adding a head (Mask
R-CNN, UperNet, ...) means adding a module with a model class and its spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..backbones.base import Backbone

__all__ = [
    "DEFAULT_HEADS",
    "HEADS",
    "DenseModel",
    "HeadSpec",
    "count_modules",
    "get_head",
    "head_for_state",
    "norm_of",
    "register_head",
]

StateDict = Mapping[str, Tensor]
LegacyFn = Callable[[dict[str, Tensor], dict[str, Any]], tuple[dict[str, Tensor], dict[str, Any]]]

# the head built when ``head`` is not given (and no checkpoint names another)
DEFAULT_HEADS = {"detect": "retinanet", "segment": "semantic_fpn"}


@dataclass(frozen=True)
class HeadSpec:
    """How one task head is built and how its OpenMMLab checkpoints are read.

    Attributes:
        task: ``detect`` or ``segment``.
        name: the ``head=`` value (``retinanet``, ``semantic_fpn``, ...).
        build: ``build(backbone, num_classes, **kwargs) -> nn.Module``; the model's attribute
            names are OpenMMLab's, so its ``state_dict()`` is the checkpoint's.
        prefixes: top-level modules besides ``backbone`` (``("neck", "bbox_head")``).
        signature: a key that only this head's checkpoints hold (recognises the head).
        num_classes: the class count of a state dict of this head.
        infer_kwargs: constructor arguments readable from a state dict (widths, depth, norm),
            used when the caller does not give them.
        legacy: converts a version-1 native checkpoint (written before the heads took
            OpenMMLab's layout) to this layout: ``(state, model_args) -> (state, model_args)``.
        preset: the dataset preset (``sepvit.presets``) of this head's official configs.
        unused: top-level modules that the checkpoints hold but inference never runs (mmseg's
            ``auxiliary_head``): accepted, dropped and listed in the load report.
    """

    task: str
    name: str
    build: Callable[..., nn.Module]
    prefixes: tuple[str, ...]
    signature: str
    num_classes: Callable[[StateDict], int]
    infer_kwargs: Callable[[StateDict], dict[str, Any]] = field(default=lambda sd: {})
    legacy: LegacyFn | None = None
    preset: str | None = None
    unused: tuple[str, ...] = ()


HEADS: dict[tuple[str, str], HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """Register ``spec`` under ``(spec.task, spec.name)``."""
    HEADS[(spec.task, spec.name)] = spec
    return spec


def get_head(task: str, name: str | None) -> HeadSpec:
    """The spec of ``head=name`` for ``task`` (``None``: the task's default head)."""
    name = DEFAULT_HEADS.get(task) if name is None else name
    spec = HEADS.get((task, name or ""))
    if spec is None:
        known = sorted(n for t, n in HEADS if t == task)
        raise KeyError(f"unknown head {name!r} for task {task!r}; available: {known}")
    return spec


def head_for_state(task: str, state: StateDict) -> HeadSpec | None:
    """The registered head of ``task`` whose signature key ``state`` holds, if any."""
    return next((s for (t, _), s in HEADS.items() if t == task and s.signature in state), None)


def count_modules(state: StateDict, prefix: str) -> int:
    """How many numbered children ``prefix.0``, ``prefix.1``, ... a state dict holds."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in state):
        n += 1
    return n


def norm_of(state: StateDict, prefix: str) -> str | None:
    """The norm (``"bn"``, ``"gn"`` or ``None``) of the ``ConvModule`` at ``prefix``."""
    for norm in ("bn", "gn"):
        if f"{prefix}.{norm}.weight" in state:
            return norm
    return None


class DenseModel(nn.Module):
    """Base of the detectors and segmenters: a dense-layout ``backbone`` and ``num_classes``.

    Both are checked here, the way every dense model checks them: the backbone must have the
    dense layout, and there must be at least ``min_classes`` classes (detectors 1; segmenters
    2, background included).
    """

    def __init__(self, backbone: Backbone, num_classes: int, min_classes: int = 1) -> None:
        super().__init__()
        if not getattr(backbone, "dense", False):
            name = type(self).__name__
            raise ValueError(f"{name} needs a dense-layout backbone (SepViT(dense=True))")
        if num_classes < min_classes:
            raise ValueError(f"num_classes must be >= {min_classes}, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
