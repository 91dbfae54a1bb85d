"""Checkpoint formats.

* **Native**: one ``.safetensors`` file. The tensors are the model's ``state_dict()`` (optionally
  stored as fp16); the header metadata key ``"sepvit"`` holds a JSON document with the variant,
  task, class names, input size, mean/std, constructor arguments and training provenance. Nothing
  is ever unpickled.
* **Official**: the ``.pth`` files of the official SepViT code (a bare state dict, or one under
  ``model``/``state_dict``, with or without a ``module.`` prefix). Read with
  ``torch.load(weights_only=True)`` and converted by the backbone's ``checkpoint_filter_fn``.
* **OpenMMLab**: mmdet 2.x/3.x and mmseg 0.x/1.x checkpoints (``{"state_dict": ..., "meta": ...}``
  or ``{"model": ...}``, optional ``module.``): ``backbone.*`` through the backbone filter (its
  unused classifier ``norm``/``head`` are dropped and reported), every other tensor loaded key for
  key into the head's modules (:func:`load_openmmlab_into`), strictly.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "LoadReport",
    "is_native_checkpoint",
    "load_native",
    "load_official_into",
    "load_openmmlab_into",
    "openmmlab_classes",
    "openmmlab_state",
    "read_metadata",
    "read_official",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

METADATA_KEY = "sepvit"
# 2: detection/segmentation heads in OpenMMLab's layout, ``head`` in the metadata (version-1
# files are converted at load by the head's ``legacy`` rule)
FORMAT_VERSION = 2
_REQUIRED_META = ("variant", "task", "num_classes", "model_args", "pretrained_cfg")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    """What happened when foreign weights were loaded into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: int = 0  # tensors of the source that the filter discarded (e.g. a detector's neck)
    target: str = "model"
    dropped_keys: list[str] = field(default_factory=list)  # their names, where known

    @property
    def exact(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = [f"loaded into {self.target}"]
        parts.append(
            f"missing {len(self.missing)}" + (f" [{short(self.missing)}]" if self.missing else "")
        )
        parts.append(
            f"unexpected {len(self.unexpected)}"
            + (f" [{short(self.unexpected)}]" if self.unexpected else "")
        )
        if self.dropped:
            keys = f" [{short(self.dropped_keys)}]" if self.dropped_keys else ""
            parts.append(f"dropped {self.dropped} tensors not used by this architecture{keys}")
        return "; ".join(parts)


def is_native_checkpoint(path: str | Path) -> bool:
    """True for a safetensors file carrying SepViT metadata."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return False
    return METADATA_KEY in meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a native checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{p} is not a readable safetensors file: {exc}") from exc
    if METADATA_KEY not in meta:
        raise CheckpointError(
            f"{p} has no '{METADATA_KEY}' metadata; not a native SepViT checkpoint"
        )
    try:
        doc = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: metadata is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{p}: metadata is not a JSON object")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{p}: unsupported metadata version {doc.get('format_version')}")
    missing = [k for k in _REQUIRED_META if k not in doc]
    if missing or not isinstance(doc.get("pretrained_cfg"), dict):
        raise CheckpointError(f"{p}: metadata lacks {missing or ['pretrained_cfg']}")
    return doc


def load_native(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a native checkpoint."""
    meta = read_metadata(path)
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[k] = f.get_tensor(k)
    return tensors, meta


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    provenance: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` as a native checkpoint.

    The model must come from :func:`sepvit.create_model` (it carries ``pretrained_cfg`` and
    ``model_args``). ``provenance`` (dataset seed, steps, metrics, ...) is stored verbatim;
    ``half`` stores floating tensors as fp16 (they are cast back to the model dtype on load).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    args = getattr(model, "model_args", None)
    if not isinstance(cfg, dict) or not isinstance(args, dict):
        raise CheckpointError("only models built by sepvit.create_model can be saved natively")
    meta = {
        "format_version": FORMAT_VERSION,
        "variant": cfg["variant"],
        "task": cfg["task"],
        "head": cfg.get("head"),
        "num_classes": cfg["num_classes"],
        "model_args": args,
        "pretrained_cfg": cfg,
        "provenance": dict(provenance or {}),
    }
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(p)
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        tmp.replace(p)  # atomic: a reader never sees a half-written checkpoint
    finally:
        tmp.unlink(missing_ok=True)
    return p


def unique_tmp(path: Path) -> Path:
    """A fresh temporary path beside ``path`` (same filesystem, so a rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _safe_globals() -> list[Any]:
    """Plain containers that training scripts store beside the weights.

    DeiT-style scripts (the official code's) save ``{"model": ..., "args": argparse.Namespace}``
    and sometimes numpy scalars (best accuracy). These only hold data; allowing them keeps
    ``weights_only=True`` loading able to read such files while any other class is refused.
    """
    import argparse

    import numpy as np

    allowed: list[Any] = [argparse.Namespace, np.dtype]
    scalar = getattr(getattr(np, "_core", np), "multiarray", None)
    if scalar is not None and hasattr(scalar, "scalar"):
        allowed.append(scalar.scalar)
    allowed.extend(type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32"))
    return allowed


_SAFE_GLOBALS = _safe_globals()


class _Placeholder:
    """Stands in for a foreign class named in a checkpoint; holds nothing, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).__module__}.{type(self).__name__}>"


# training state that mmengine (mmdet 3.x, mmseg 1.x) saves beside the weights: its message
# hub's HistoryBuffers hold numpy arrays (pickled through numpy's reconstructor and getattr)
_TRAINING_STATE_GLOBALS = frozenset(
    {
        "mmengine.logging.history_buffer.HistoryBuffer",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "builtins.getattr",
    }
)


def _load_with_placeholders(p: Path) -> Any:
    """``weights_only`` loading where the known training-state globals (``_TRAINING_STATE_GLOBALS``)
    become inert placeholders; any other foreign global is still refused.

    Nothing the file names is imported or called: the weights-only unpickler only ever sees
    classes defined here. The tensors and plain metadata (class names) come through.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
        foreign = sorted(set(names) - _TRAINING_STATE_GLOBALS)
        if foreign:
            raise pickle.UnpicklingError(f"unsupported globals {foreign}")
        stand_ins = [
            (type(n.rsplit(".", 1)[-1], (_Placeholder,), {"__module__": n.rsplit(".", 1)[0]}), n)
            for n in names
        ]
        with torch.serialization.safe_globals([*_SAFE_GLOBALS, *stand_ins]):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {p} as a weights-only torch checkpoint: {exc}") from exc
    log.info("%s: read with placeholders for %s", p, ", ".join(names))
    return obj


def read_official(path: str | Path) -> dict[str, Any]:
    """Read an official ``.pth`` checkpoint without unpickling arbitrary objects.

    Foreign objects beside the weights (an mmengine training checkpoint's message hub, numpy
    arrays) are read as inert placeholders, see :func:`_load_with_placeholders`.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = _load_with_placeholders(p)
    except Exception as exc:
        raise CheckpointError(f"cannot read {p} as a weights-only torch checkpoint: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} does not hold a state dict (got {type(obj).__name__})")
    return dict(obj)


def load_official_into(
    model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool | None = None
) -> LoadReport:
    """Load an official SepViT checkpoint into a classifier or a detector/segmenter backbone.

    Classifiers take the weights directly; detectors and segmenters load them into ``.backbone``
    (their necks and heads keep their initialisation). ``strict=None`` means strict for a
    classifier whose class count matches and non-strict otherwise. Returns a :class:`LoadReport`,
    which is also logged.
    """
    from .backbones.base import unwrap_state
    from .backbones.sepvit import SepViT, checkpoint_filter_fn

    target_name = "model"
    target: nn.Module = model
    if not isinstance(model, SepViT):
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, SepViT):
            raise CheckpointError("official SepViT weights need a SepViT model or backbone")
        target, target_name = backbone, "backbone"
    assert isinstance(target, SepViT)
    source = unwrap_state(state_dict)
    filtered = checkpoint_filter_fn(state_dict, target)
    if strict is None:
        strict = target is model and not target.dense and len(filtered) == len(source)
    result = target.load_state_dict(filtered, strict=strict)
    report = LoadReport(
        missing=list(result.missing_keys),
        unexpected=list(result.unexpected_keys),
        dropped=len(source) - len(filtered),
        target=target_name,
    )
    log.info("official checkpoint: %s", report)
    return report


def openmmlab_state(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of an mmdet/mmseg (or official SepViT) checkpoint, ``module.`` stripped."""
    from .backbones.base import unwrap_state

    sd = unwrap_state(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def openmmlab_classes(obj: Mapping[str, Any]) -> list[str] | None:
    """Class names stored in a checkpoint's ``meta`` (mmdet/mmseg 2.x/0.x ``CLASSES``, 3.x/1.x
    ``dataset_meta.classes``), if any."""
    meta = obj.get("meta")
    if not isinstance(meta, Mapping):
        return None
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None
    names = names if names is not None else meta.get("CLASSES")
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        return [n.strip() for n in names]
    return None


def load_openmmlab_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    prefixes: tuple[str, ...],
    unused: tuple[str, ...] = (),
) -> LoadReport:
    """Load an OpenMMLab detector/segmenter state dict into ``model``, every tensor.

    ``backbone.*`` passes through the backbone's checkpoint filter (which drops the official
    backbone's unused classifier ``norm``/``head``); keys under ``prefixes`` (``neck``,
    ``bbox_head``, ...) load as they are; keys under ``unused`` (a training-only
    ``auxiliary_head``) are dropped and reported. A missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` naming the keys.
    """
    from .backbones.sepvit import SepViT, checkpoint_filter_fn

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, SepViT):
        raise CheckpointError("OpenMMLab checkpoints load into SepViT detectors and segmenters")
    source_bb = {k: v for k, v in state.items() if k.startswith("backbone.")}
    filtered = checkpoint_filter_fn(source_bb, backbone)
    dropped = sorted(set(source_bb) - {f"backbone.{k}" for k in filtered})
    mapped = {f"backbone.{k}": v for k, v in filtered.items()}
    unexpected = []
    for k, v in state.items():
        if k.startswith("backbone."):
            continue
        if k.split(".", 1)[0] in unused:
            dropped.append(k)
        elif k.split(".", 1)[0] in prefixes:
            mapped[k] = v
        else:
            unexpected.append(k)
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected += sorted(set(mapped) - set(own))
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        report = LoadReport(missing=missing, unexpected=unexpected, target="model")
        detail = f"; shape mismatches: {', '.join(shapes[:8])}" if shapes else ""
        raise CheckpointError(f"checkpoint does not fit the model: {report}{detail}")
    model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=True)
    report = LoadReport(dropped=len(dropped), dropped_keys=dropped, target="model")
    log.info("OpenMMLab checkpoint: %s", report)
    return report
