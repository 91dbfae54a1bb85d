"""The served-model core that both backends share, and the backend interface.

:class:`ServedModel` is one configured model as the gateway serves it, whichever backend runs
it: its settings merged once (the model entry, then its ``model-config.yaml``, then the server's
defaults; a setting is unset only when it is ``None``, so a 0 is kept), its metadata and state
for ``GET /models`` (:class:`ModelInfo`), its readiness, and its per-image metrics.
:class:`Backend` holds one per model and answers ``models``, ``model`` and ``infer``; a backend
implements only its lifecycle and :meth:`Backend.execute`: how a request's images run.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from handlers.errors import DECODE_KINDS, PipelineError

from ..errors import ModelNotFoundError, NotReadyError
from ..loader import read_model_config
from ..metrics import Metrics
from ..settings import ModelSpec, Settings

__all__ = ["Backend", "ModelInfo", "ModelState", "Params", "ServedModel"]

Params = Sequence[Mapping[str, Any] | None]
T = TypeVar("T")


def first(*values: T | None, default: T) -> T:
    """The first value that is set (not ``None``): a 0 or ``False`` counts as set."""
    return next((v for v in values if v is not None), default)


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


class ServedModel:
    """One configured model: merged settings, metadata, state, readiness and metrics.

    ``default_batch_size`` and ``default_delay_ms`` are the backend's batch defaults for what
    neither the entry nor the ``model-config.yaml`` sets."""

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        metrics: Metrics,
        *,
        default_batch_size: int,
        default_delay_ms: float,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        file = read_model_config(spec)
        self.handler: dict[str, Any] = {**file.handler, **spec.handler}  # PipelineConfig options
        if spec.runtime is not None:
            self.handler["runtime"] = spec.runtime
        self.max_batch_size = first(
            spec.max_batch_size, file.batch_size, default=default_batch_size
        )
        self.max_delay_ms = first(
            spec.max_delay_ms, file.max_batch_delay_ms, default=default_delay_ms
        )
        self.max_queue = first(spec.max_queue, default=settings.max_queue)
        self.adaptive = first(spec.adaptive_batching, default=settings.adaptive_batching)
        self.retry_after_s = settings.retry_after_s
        self.info = ModelInfo(
            name=spec.name, task=spec.task, runtime=self.handler.get("runtime") or "eager"
        )
        self._metrics = metrics
        self._ready = metrics.model_ready.labels(self.name)
        self._ready.set(0)
        self._not_ready = metrics.rejected.labels(self.name, "not_ready")
        self._decode_errors = metrics.decode_errors.labels(self.name)
        self._images: tuple[str, Any, Any] | None = None  # (task, ok counter, error counter)

    # -- metadata and state ------------------------------------------------------------------
    def check_task(self, task: str) -> None:
        """Refuse a checkpoint of another task than the entry's."""
        if self.spec.task is not None and task != self.spec.task:
            raise ValueError(f"{self.spec.checkpoint} is a {task} model, not {self.spec.task}")

    def describe(
        self, task: str, labels: list[str] | None, input_size: Sequence[int] | None
    ) -> None:
        """What the checkpoint says: task, class names, input size (H, W)."""
        self.info.task = task
        self.info.labels = labels
        self.info.input_size = None if input_size is None else [int(v) for v in input_size]

    def set_state(self, state: ModelState, error: str | None = None) -> None:
        self.info.state, self.info.error = state, error
        self._ready.set(int(state is ModelState.READY))

    def stopped(self) -> None:
        """The backend stopped: a ready model is no longer."""
        if self.info.state is ModelState.READY:
            self.set_state(ModelState.UNAVAILABLE, "the gateway is stopping")
        self._ready.set(0)

    def check_ready(self) -> None:
        """Raise the request's 503 unless the model is ready."""
        info = self.info
        if info.state is not ModelState.READY:
            self._not_ready.inc()
            detail = f": {info.error}" if info.error else ""
            raise NotReadyError(
                f"model {self.name!r} is {info.state.value}{detail}", retry_after=self.retry_after_s
            )

    # -- metrics -----------------------------------------------------------------------------
    def record(self, results: Sequence[Any]) -> None:
        """Count answered images: ok, per-image errors, and which of those are decode errors."""
        errors = decode = 0
        for r in results:
            if isinstance(r, PipelineError):
                errors += 1
                decode += r.kind in DECODE_KINDS
        task = self.info.task or ""
        if self._images is None or self._images[0] != task:
            images = self._metrics.images
            self._images = (
                task,
                images.labels(self.name, task, "ok"),
                images.labels(self.name, task, "error"),
            )
        _, ok, failed = self._images
        if errors:
            failed.inc(errors)
        if decode:
            self._decode_errors.inc(decode)
        ok.inc(len(results) - errors)


M = TypeVar("M", bound=ServedModel)


class Backend(abc.ABC, Generic[M]):
    """Runs N encoded images through a model and returns N results (dict or PipelineError)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        model: Callable[[ModelSpec, Settings, Metrics], M],
    ) -> None:
        """``model`` builds the backend's :class:`ServedModel` for one entry."""
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, M] = {s.name: model(s, settings, metrics) for s in settings.models}

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin loading models; must return quickly (readiness reports the progress)."""

    @abc.abstractmethod
    async def stop(self, timeout: float) -> None:
        """Finish queued work (up to ``timeout`` seconds) and release resources."""

    @abc.abstractmethod
    async def execute(
        self, m: M, payloads: Sequence[bytes], params: Params, deadline: float
    ) -> list[Any]:
        """Run a ready model on one request's images: one result per payload (a JSON-ready
        dict, or the image's ``PipelineError``); the backend records them (:meth:`record`)."""

    def models(self) -> list[ModelInfo]:
        """Every configured model, ready or not, in configuration order."""
        return [m.info for m in self._models.values()]

    def model(self, name: str) -> ModelInfo | None:
        m = self._models.get(name)
        return None if m is None else m.info

    async def infer(
        self, model: str, payloads: Sequence[bytes], params: Params, deadline: float
    ) -> list[Any]:
        """One result per payload. ``deadline`` is in event-loop time. Raises
        :mod:`service.errors` for the request: 404 unknown model, 503 not ready, ..."""
        m = self._models.get(model)
        if m is None:
            raise ModelNotFoundError(f"unknown model {model!r}")
        m.check_ready()
        return await self.execute(m, payloads, params, deadline)

    async def wait_loaded(self, timeout: float = 120.0) -> None:
        """Wait until no model is still loading (tests and warm starts)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(m.state is ModelState.LOADING for m in self.models()):
            if loop.time() > end:
                raise TimeoutError("models still loading")
            await asyncio.sleep(0.05)
