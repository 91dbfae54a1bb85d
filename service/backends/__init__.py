"""Inference backends behind the data plane, pluggable through :class:`Backend`: ``embedded``
(in-process pipelines with a dynamic batcher per model) and ``torchserve`` (a running TorchServe
over gRPC, which batches server-side)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backend, ModelInfo, ModelState, ServedModel

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..settings import Settings

__all__ = ["Backend", "ModelInfo", "ModelState", "ServedModel", "create_backend"]


def create_backend(settings: Settings, metrics: Metrics) -> Backend:
    """The backend named by ``settings.backend`` (imported lazily: torch loads only here)."""
    if settings.backend == "embedded":
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(settings, metrics)
    if settings.backend == "torchserve":
        from ..torchserve.backend import TorchServeBackend

        return TorchServeBackend(settings, metrics)
    raise ValueError(f"unknown backend {settings.backend!r}")
