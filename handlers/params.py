"""The names the handlers and the gateway share, defined once: the tasks a model serves, the CPU
and GPU runtimes, and the per-request parameters. Torch-free, so the gateway's settings can
import it before torch loads (OpenMP reads its environment once, at that import)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from .errors import BadParameterError

__all__ = [
    "PARAM_KEYS",
    "RUNTIMES",
    "SEGMENT_FORMATS",
    "TASKS",
    "Format",
    "RequestParams",
    "RuntimeName",
    "Task",
]

Task = Literal["classify", "detect", "segment"]
TASKS: tuple[Task, ...] = get_args(Task)
RuntimeName = Literal["eager", "onnxruntime", "tensorrt", "bf16", "int8", "auto"]
RUNTIMES: tuple[RuntimeName, ...] = get_args(RuntimeName)
Format = Literal["rle", "png", "overlay"]  # segment, and detect with instance masks
SEGMENT_FORMATS: tuple[Format, ...] = get_args(Format)


def _about(help: str, low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """A request parameter's inclusive range and its help (the REST routes' OpenAPI text)."""
    return {"help": help, "low": low, "high": high}


@dataclass
class RequestParams:
    """Per-request options, each with its range and help: the one definition that the handlers,
    the OIP parameters, TorchServe's inputs and the REST query parameters all use."""

    top_k: int | None = field(
        default=None, metadata=_about("classes per image (classify)", 1, 1000)
    )
    score_threshold: float | None = field(
        default=None, metadata=_about("minimum detection score (detect)", 0.0, 1.0)
    )
    max_detections: int | None = field(
        default=None, metadata=_about("at most this many detections (detect)", 1, 1000)
    )
    format: Format | None = field(
        default=None,
        metadata=_about(
            "segment: COCO RLE (default), PNG label map, or colour overlay PNG; detect with a "
            "Mask R-CNN model: RLE masks (default), PNG instance-id map, or overlay"
        ),
    )

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> RequestParams:
        raw = dict(raw or {})
        out = cls()
        try:
            for name, kind, low, high in _RANGED:
                if raw.get(name) is not None:
                    value = kind(raw[name])
                    if not low <= value <= high:
                        raise BadParameterError(f"{name} must be between {low:g} and {high:g}")
                    setattr(out, name, value)
        except (TypeError, ValueError, OverflowError) as exc:  # int(inf) is an OverflowError
            raise BadParameterError(f"invalid parameter: {exc}") from exc
        if raw.get("format") is not None:
            fmt = str(raw["format"])
            if fmt not in SEGMENT_FORMATS:
                raise BadParameterError(f"format must be one of {SEGMENT_FORMATS}")
            out.format = fmt
        return out


def _ranged() -> list[tuple[str, type, float, float]]:
    """(name, int or float, low, high) of the numeric parameters, in declaration order."""
    hints = get_type_hints(RequestParams)
    out = []
    for f in dataclasses.fields(RequestParams):
        if f.metadata["low"] is not None:
            kind = next(t for t in get_args(hints[f.name]) if t is not type(None))
            out.append((f.name, kind, f.metadata["low"], f.metadata["high"]))
    return out


_RANGED = _ranged()

# the request parameters' names, as query parameters, OIP parameters and TorchServe inputs
PARAM_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RequestParams))
