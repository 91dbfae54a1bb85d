"""The embedded backend: the handler pipelines in-process, one dynamic batcher per model.

Models load in the background after start-up (a thread, so liveness answers meanwhile): read
the checkpoint metadata, build the model, build the pipeline (a non-eager runtime is
parity-checked there), and warm it up with one image. Only then is the model ready. A model that
fails to load stays ``failed`` with the reason, which ``GET /models`` shows and its requests
return as 503.

A model whose batch hangs (the batcher's watchdog) is marked failed with the reason and rebuilt
from its checkpoint (a fresh pipeline and worker threads; the hung thread is abandoned), up to
``watchdog_restarts`` times; after that it stays failed. Every pipeline shares one
:class:`~handlers.decode.PixelBudget` of ``max_pixels`` decoded pixels.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from handlers.decode import PixelBudget
from handlers.pipeline import Pipeline, PipelineConfig
from sepvit import load_model, model_config

from ..batcher import DynamicBatcher
from ..metrics import Metrics
from ..settings import ModelSpec, Settings
from .base import Backend, ModelState, Params, ServedModel

__all__ = ["EmbeddedBackend", "TimedPipeline"]

log = logging.getLogger(__name__)


class TimedPipeline(Pipeline):
    """A :class:`Pipeline` that adds up the time of its phases (one thread per pipeline)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: PipelineConfig | None = None,
        budget: PixelBudget | None = None,
    ) -> None:
        super().__init__(model, config, budget)
        self.phases = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        self._lock = threading.Lock()  # prepare and run may be in two threads at once

    def _timed(self, phase: str, t0: float) -> None:
        elapsed = time.perf_counter() - t0
        with self._lock:
            self.phases[phase] += elapsed

    def decode(self, payload: bytes) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return super().decode(payload)
        finally:
            self._timed("preprocess", t0)

    def preprocess(self, image: np.ndarray) -> Any:
        t0 = time.perf_counter()
        try:
            return super().preprocess(image)
        finally:
            self._timed("preprocess", t0)

    def infer(self, batch: torch.Tensor) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        try:
            return super().infer(batch)
        finally:
            self._timed("inference", t0)

    def postprocess(self, raw: Any, items: Any, hw: tuple[int, int]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            return super().postprocess(raw, items, hw)
        finally:
            self._timed("postprocess", t0)

    def take_phases(self) -> dict[str, float]:
        with self._lock:
            out = dict(self.phases)
            self.phases = dict.fromkeys(out, 0.0)
        return out


def _warmup_image(hw: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class _Model(ServedModel):
    def __init__(self, spec: ModelSpec, settings: Settings, metrics: Metrics) -> None:
        super().__init__(
            spec,
            settings,
            metrics,
            default_batch_size=settings.max_batch_size,
            default_delay_ms=settings.max_delay_ms,
        )
        self.info.batching = {
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay_ms,
            "adaptive": self.adaptive,
            "pipelining": settings.pipelining,
            "max_queue": self.max_queue,
        }
        self.pipeline: TimedPipeline | None = None
        self.batcher: DynamicBatcher | None = None
        self.restarts = 0


class EmbeddedBackend(Backend[_Model]):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics, _Model)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._tasks: list[asyncio.Task[None]] = []
        self.budget = PixelBudget(settings.max_pixels)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        loop = asyncio.get_running_loop()
        for m in self._models.values():
            self._tasks.append(loop.create_task(self._load(m)))

    async def _load(self, m: _Model) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            pipe = await loop.run_in_executor(self._loader, self._build, m)
        except Exception as exc:
            m.set_state(ModelState.FAILED, str(exc) or type(exc).__name__)
            log.error("model %s failed to load: %s", m.name, m.info.error)
            return
        m.pipeline = pipe
        run, prepare = self._runner(m, pipe)
        m.batcher = DynamicBatcher(
            m.spec.name,
            run,
            prepare=prepare,
            phases=pipe.take_phases,
            max_batch_size=m.max_batch_size,
            max_delay_ms=m.max_delay_ms,
            max_queue=m.max_queue,
            metrics=self.metrics,
            retry_after_s=self.settings.retry_after_s,
            adaptive=m.adaptive,
            watchdog_margin_s=self.settings.watchdog_margin_s,
            on_hang=lambda reason: self._hung(m, reason),
        )
        m.batcher.start()
        m.set_state(ModelState.READY)
        log.info(
            "model %s ready (%s, runtime %s) in %.1f s",
            m.spec.name,
            m.info.task,
            m.info.runtime,
            time.perf_counter() - t0,
        )

    def _hung(self, m: _Model, reason: str) -> None:
        """The watchdog found a hung batch: not ready at once, then rebuild (or stay failed)."""
        m.batcher = None
        if m.restarts >= self.settings.watchdog_restarts:
            m.set_state(
                ModelState.FAILED, f"{reason}; not restarted ({m.restarts} restarts already)"
            )
            return
        m.restarts += 1
        limit = self.settings.watchdog_restarts
        m.set_state(ModelState.LOADING, f"restart {m.restarts} of {limit} after: {reason}")
        log.warning("model %s: %s", m.spec.name, m.info.error)
        self._tasks.append(asyncio.get_running_loop().create_task(self._load(m)))

    def _build(self, m: _Model) -> TimedPipeline:
        spec = m.spec
        if not spec.checkpoint.is_file():
            raise FileNotFoundError(
                f"checkpoint {spec.checkpoint} not found (the demo models come from "
                "`make models`; or configure other models)"
            )
        model = load_model(spec.checkpoint)  # native or OpenMMLab
        m.check_task(model_config(model)["task"])
        handler = dict(m.handler)
        limits = dict(handler.pop("limits", None) or {})
        limits.setdefault("max_bytes", self.settings.max_body_bytes)
        limits.setdefault("max_pixels", self.settings.max_pixels)
        handler["limits"] = limits
        cfg = PipelineConfig.from_mapping(handler)
        # batches merge requests: the pipeline's own per-call cap must admit a whole batch
        cfg.max_images = max(cfg.max_images, m.max_batch_size, self.settings.max_images_per_request)
        pipe = TimedPipeline(model, cfg, self.budget)
        if self.settings.warmup:
            pipe.handle([_warmup_image(pipe.input_size)])
            pipe.take_phases()
        m.describe(pipe.task, pipe.labels, pipe.input_size)
        m.info.runtime = pipe.runtime.name
        m.info.runtime_info = pipe.runtime_info
        self.metrics.model_runtime.labels(
            m.name, pipe.runtime.name, pipe.runtime_info["requested"]
        ).set(pipe.runtime_info.get("img_per_s") or 0)
        return pipe

    def _runner(self, m: _Model, pipe: TimedPipeline) -> tuple[Any, Any]:
        """The batcher's ``run`` and ``prepare``: with pipelining, ``pipe.prepare`` is the first
        stage and ``run`` takes its result; without, ``run`` answers the whole batch. Each
        batch's images are counted on its thread."""

        def record(results: list[Any]) -> list[Any]:
            m.record(results)
            return results

        if self.settings.pipelining:
            return (lambda prepared: record(pipe.run(prepared))), pipe.prepare
        return (lambda payloads, params: record(pipe.handle(payloads, params))), None

    async def stop(self, timeout: float) -> None:
        for t in self._tasks:
            t.cancel()
        batchers = [m.batcher for m in self._models.values() if m.batcher is not None]
        await asyncio.gather(*(b.stop(timeout) for b in batchers))
        for m in self._models.values():
            m.stopped()
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- requests ----------------------------------------------------------------------------
    async def execute(
        self, m: _Model, payloads: Sequence[bytes], params: Params, deadline: float
    ) -> list[Any]:
        assert m.batcher is not None  # a ready model has one (set before READY, unset with it)
        return await m.batcher.submit(payloads, params, deadline)
