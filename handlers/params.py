"""The request vocabulary, defined once for the handlers and the gateway: the tasks a model
serves and the per-request parameters. Torch-free, so the gateway's settings can import it before
torch loads (OpenMP reads its environment once, at that import)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import BadParameterError

__all__ = ["PARAM_KEYS", "SEGMENT_FORMATS", "TASKS", "Format", "RequestParams", "Task"]

Task = Literal["classify", "detect", "segment"]
TASKS: tuple[Task, ...] = get_args(Task)
Format = Literal["rle", "png", "overlay"]  # segment, and detect with instance masks
SEGMENT_FORMATS: tuple[Format, ...] = get_args(Format)


@dataclass
class RequestParams:
    """Per-request options, validated against the task."""

    top_k: int | None = None
    score_threshold: float | None = None
    max_detections: int | None = None
    format: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> RequestParams:
        raw = dict(raw or {})
        out = cls()
        try:
            if raw.get("top_k") is not None:
                out.top_k = int(raw["top_k"])
                if not 1 <= out.top_k <= 1000:
                    raise BadParameterError("top_k must be between 1 and 1000")
            if raw.get("max_detections") is not None:
                out.max_detections = int(raw["max_detections"])
                if not 1 <= out.max_detections <= 1000:
                    raise BadParameterError("max_detections must be between 1 and 1000")
            if raw.get("score_threshold") is not None:
                out.score_threshold = float(raw["score_threshold"])
                if not 0.0 <= out.score_threshold <= 1.0:
                    raise BadParameterError("score_threshold must be between 0 and 1")
        except (TypeError, ValueError, OverflowError) as exc:  # int(inf) is an OverflowError
            raise BadParameterError(f"invalid parameter: {exc}") from exc
        if raw.get("format") is not None:
            out.format = str(raw["format"])
            if out.format not in SEGMENT_FORMATS:
                raise BadParameterError(f"format must be one of {SEGMENT_FORMATS}")
        return out


# the request parameters' names, as query parameters, OIP parameters and TorchServe inputs
PARAM_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RequestParams))
