"""The backend interface. One async contract: every hook is a coroutine or a plain property."""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Backend", "ModelInfo", "ModelState"]


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # e.g. a remote backend that does not answer


@dataclass
class ModelInfo:
    """What ``GET /models`` and the OIP metadata routes report about a model."""

    name: str
    task: str | None
    state: ModelState = ModelState.LOADING
    labels: list[str] | None = None
    runtime: str | None = None
    # the runtime asked for and the one serving: auto's choice and measured img/s, candidates,
    # or why a gated runtime fell back to eager
    runtime_info: dict[str, Any] | None = None
    input_size: list[int] | None = None
    batching: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    platform: str = "pytorch_sepvit"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "state": self.state.value,
            "ready": self.state is ModelState.READY,
            "labels": self.labels,
            "runtime": self.runtime,
            "runtime_info": self.runtime_info,
            "input_size": self.input_size,
            "batching": self.batching,
            "error": self.error,
        }


class Backend(abc.ABC):
    """Runs N encoded images through a model and returns N results (dict or PipelineError)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin loading models; must return quickly (readiness reports the progress)."""

    @abc.abstractmethod
    async def stop(self, timeout: float) -> None:
        """Finish queued work (up to ``timeout`` seconds) and release resources."""

    @abc.abstractmethod
    def models(self) -> list[ModelInfo]:
        """Every configured model, ready or not, in configuration order."""

    @abc.abstractmethod
    async def infer(
        self,
        model: str,
        payloads: Sequence[bytes],
        params: Sequence[Mapping[str, Any] | None],
        deadline: float,
    ) -> list[Any]:
        """One result per payload (a JSON-ready dict, or the image's ``PipelineError``).
        ``deadline`` is in event-loop time. Raises :mod:`service.errors` for the request."""

    def model(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models() if m.name == name), None)

    def _servable(
        self,
        name: str,
        info: ModelInfo | None,
        ready: bool,
        metrics: Any,
        retry_after: int | None = None,
    ) -> None:
        """Raise the request's error when ``name`` is unknown (404) or not ready (503)."""
        from ..errors import ModelNotFoundError, NotReadyError

        if info is None:
            raise ModelNotFoundError(f"unknown model {name!r}")
        if not ready or info.state is not ModelState.READY:
            detail = f": {info.error}" if info.error else ""
            metrics.rejected.labels(name, "not_ready").inc()
            raise NotReadyError(
                f"model {name!r} is {info.state.value}{detail}", retry_after=retry_after
            )

    async def wait_loaded(self, timeout: float = 120.0) -> None:
        """Wait until no model is still loading (tests and warm starts)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(m.state is ModelState.LOADING for m in self.models()):
            if loop.time() > end:
                raise TimeoutError("models still loading")
            await asyncio.sleep(0.05)
