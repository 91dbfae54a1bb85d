"""The transport-neutral data plane: REST routes and the gRPC servicer both build an
:class:`InferenceRequest` and call :meth:`DataPlane.infer`; health, metadata and readiness come
from here too. It checks what can be checked before queueing (model, task, image count,
parameters), then hands the images to the backend. It times every request that names a known
model for the statistics extension (:mod:`service.stats`), and answers its queries.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handlers.errors import BadParameterError, PipelineError, TooManyImagesError
from handlers.params import RequestParams

from . import __version__
from .backends import Backend, ModelInfo, ModelState
from .errors import BadRequestError, ModelNotFoundError, describe
from .settings import Settings
from .stats import InferenceStats
from .watchdog import LoopWatch

__all__ = ["DataPlane", "InferenceRequest", "InferenceResponse", "encode_result"]

SERVER_NAME = "sepvit-serving"
EXTENSIONS = ["binary_tensor_data", "statistics"]
INPUT_NAME = "IMAGE"
OUTPUT_NAME = "RESULT"


@dataclass
class InferenceRequest:
    """N encoded images for one model, whichever transport they came by."""

    images: list[bytes]
    model: str | None = None  # None: the first model serving ``task``
    task: str | None = None  # set by the task routes: the model must serve it
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None  # the client's; capped by the server's
    request_id: str | None = None


@dataclass
class InferenceResponse:
    model: str
    task: str
    results: list[dict[str, Any] | PipelineError]


def encode_result(item: dict[str, Any] | PipelineError) -> dict[str, Any]:
    """One image's answer as JSON: the result, or ``{"error": {code, message}}``; PNG bytes
    (segmentation ``format=png|overlay``) become base64 text."""
    if isinstance(item, PipelineError):
        return dict(describe(item).image_body())
    if isinstance(item.get("data"), bytes | bytearray):
        return {
            "media_type": item["media_type"],
            "data_base64": base64.b64encode(item["data"]).decode(),
        }
    return item


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        stats: InferenceStats | None = None,
        watch: LoopWatch | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.stats = stats or InferenceStats()
        self.watch = watch
        self.draining = False  # set once by the drain (service/app.py): not ready, no new work

    # -- health and metadata -----------------------------------------------------------------
    def live(self) -> bool:
        """False when the event loop has stalled for ``liveness_stall_s`` (service/watchdog)."""
        return self.watch is None or not self.watch.stalled()

    def ready(self) -> bool:
        if self.draining:
            return False
        states = [m.state is ModelState.READY for m in self.backend.models()]
        if not states:
            return False
        return all(states) if self.settings.require_all_models else any(states)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def models(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.backend.models()]

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        info = self.backend.model(name)
        if info is None:
            raise ModelNotFoundError(f"unknown model {name!r}")
        if version not in (None, "", "1"):
            raise ModelNotFoundError(f"model {name!r} has no version {version!r} (only '1')")
        return info

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.model(name, version).state is ModelState.READY and not self.draining

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        info = self.model(name, version)
        return {
            "name": info.name,
            "versions": ["1"],
            "platform": info.platform,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"task": info.task, "labels": info.labels},
        }

    def statistics(self, name: str = "", version: str | None = None) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for one model, or every configured model (``name`` empty)."""
        models = [self.model(name, version)] if name else self.backend.models()
        return {"model_stats": [self.stats.model_stats(m.name) for m in models]}

    def resolve(self, model: str | None, task: str | None) -> ModelInfo:
        """The model a request names, or the first (preferably ready) one serving ``task``."""
        if model is not None:
            info = self.model(model)
            if task is not None and info.task is not None and info.task != task:
                raise BadRequestError(
                    f"model {model!r} is a {info.task} model; send it to /{info.task}"
                )
            return info
        candidates = [m for m in self.backend.models() if m.task == task]
        if not candidates:
            raise ModelNotFoundError(f"no {task} model is configured")
        ready = [m for m in candidates if m.state is ModelState.READY]
        return (ready or candidates)[0]

    # -- inference ---------------------------------------------------------------------------
    def check_params(self, params: Mapping[str, Any], task: str | None) -> dict[str, Any]:
        parsed = RequestParams.parse(params)
        if parsed.format is not None and task not in ("segment", "detect"):
            raise BadParameterError("format applies to segmentation and instance segmentation")
        return {k: v for k, v in vars(parsed).items() if v is not None}

    async def infer(self, req: InferenceRequest) -> InferenceResponse:
        info = self.resolve(req.model, req.task)
        t0, ok = time.perf_counter(), False
        try:
            resp = await self._infer(info, req)
            ok = True
            return resp
        finally:  # failures include refusals, deadlines and clients that went away
            self.stats.finished(info.name, ok, time.perf_counter() - t0)

    async def _infer(self, info: ModelInfo, req: InferenceRequest) -> InferenceResponse:
        if not req.images:
            raise BadRequestError("no image in the request")
        limit = self.settings.max_images_per_request
        if len(req.images) > limit:
            raise TooManyImagesError(
                f"{len(req.images)} images in one request; the limit is {limit}"
            )
        params = self.check_params(req.params, info.task)
        timeout = self.settings.request_timeout_s
        if req.timeout_s is not None:
            timeout = min(timeout, max(req.timeout_s, 0.0))
        deadline = asyncio.get_running_loop().time() + timeout
        results = await self.backend.infer(
            info.name, req.images, [params] * len(req.images), deadline
        )
        return InferenceResponse(info.name, str(info.task), results)
